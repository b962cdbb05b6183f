//! The one error format of the whole HTTP surface: an HTTP status and
//! `{"error":{"code":"<stable_snake_case_code>","message":"<human text>"}}`.
//! Codes are a contract (clients switch on them); messages are for people and may change.
//! Internal details (SQLite errors, file paths) are logged, not sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use fpm_storage::{QueryError, StorageError};

/// An API failure, ready to be returned from any handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (overload answers).
    retry_after: Option<u32>,
}

impl ApiError {
    /// Any status with a stable code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_parameter`: a query parameter or body field is malformed.
    pub fn invalid_parameter(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `storage_unavailable`: the history database cannot answer now.
    pub fn storage_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            message,
        )
    }

    /// 503 `busy` with `Retry-After`: the manager refuses more work of this
    /// kind for now, so that supervision and collection keep their share.
    pub fn busy(message: impl Into<String>, retry_after_s: u32) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message);
        e.retry_after = Some(retry_after_s);
        e
    }

    /// 503 `timeout` with `Retry-After`: the request took longer than
    /// `server.limits.request_timeout` and was abandoned.
    pub fn timeout(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", message);
        e.retry_after = Some(1);
        e
    }

    /// 500 `internal_error`: a bug; the details go to the log only.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body this error is sent as.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        tracing::error!(error = %e, "History query failed.");
        ApiError::storage_unavailable(
            "the history database could not answer; see the manager's log",
        )
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::Range(r) => ApiError::invalid_parameter(r.to_string()),
            e @ QueryError::NotFound { .. } => ApiError::not_found(e.to_string()),
            QueryError::Storage(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn parts(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn renders_the_documented_shape() {
        let (status, retry, v) = parts(ApiError::invalid_parameter("parameter 'from': bad")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(retry, None);
        assert_eq!(v["error"]["code"], "invalid_parameter");
        assert_eq!(v["error"]["message"], "parameter 'from': bad");
        assert_eq!(v.as_object().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn overload_answers_say_when_to_retry() {
        let (status, retry, v) = parts(ApiError::busy("too many", 2)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("2"));
        assert_eq!(v["error"]["code"], "busy");
        let (_, retry, v) = parts(ApiError::timeout("slow")).await;
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(v["error"]["code"], "timeout");
    }
}
