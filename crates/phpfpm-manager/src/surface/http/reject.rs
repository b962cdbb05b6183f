//! Keeps the one error shape for answers the handlers do not write: axum's
//! own rejections (a query string or path that does not parse, a body over
//! the limit), 405 for a method a route does not have, and anything else
//! that leaves the router as a 4xx or 5xx without a JSON body. Each becomes
//! `{"error": {"code", "message"}}` with a stable code for its status; the
//! original text is kept as the message, and `Allow` and `Retry-After`
//! headers are kept.
//!
//! Not covered: requests hyper refuses before the router sees them (a
//! request head over the connection's buffer, such as a 1 MB query string,
//! is answered `431` with no body and the connection is closed).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Most of a rejection's text kept in the message.
const MAX_MESSAGE: usize = 512;

/// `map_response` layer: rewrites error answers that are not JSON.
pub async fn error_shape(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut out = shaped(status, &text).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.remove(&name) {
            out.headers_mut().insert(name, v);
        }
    }
    out
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The error for a status and the text axum (or a layer) answered with.
/// Pure.
pub fn shaped(status: StatusCode, text: &str) -> ApiError {
    let (code, default) = code_of(status);
    let text = text.trim();
    let message = if text.is_empty() {
        default.to_owned()
    } else if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_owned()
    };
    ApiError::new(status, code, message)
}

/// The stable code and a default message of an error status.
fn code_of(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => ("invalid_parameter", "the request is malformed"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "authentication is required"),
        StatusCode::FORBIDDEN => ("forbidden", "not allowed"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take this method (see the Allow header)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the body is larger than server.max_body_bytes",
        ),
        StatusCode::URI_TOO_LONG => ("uri_too_long", "the request URI is too long"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "the body must be JSON sent with Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_parameter", "the body cannot be used"),
        StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "too many requests; retry later"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            ("headers_too_large", "the request headers are too large")
        }
        StatusCode::SERVICE_UNAVAILABLE => ("not_ready", "the manager cannot answer now"),
        s if s.is_server_error() => (
            "internal_error",
            "the request failed unexpectedly; see the manager's log",
        ),
        _ => ("invalid_request", "the request cannot be answered"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use axum::body::Body;

    use super::*;

    async fn body_of(resp: Response) -> serde_json::Value {
        let b = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn axum_rejections_get_the_error_shape_with_their_text() {
        let resp = (
            StatusCode::BAD_REQUEST,
            "Failed to deserialize query string: invalid digit found in string",
        )
            .into_response();
        let out = error_shape(resp).await;
        assert_eq!(out.status(), StatusCode::BAD_REQUEST);
        assert_eq!(out.headers()[header::CONTENT_TYPE], "application/json");
        let v = body_of(out).await;
        assert_eq!(v["error"]["code"], "invalid_parameter");
        assert_eq!(
            v["error"]["message"],
            "Failed to deserialize query string: invalid digit found in string"
        );
    }

    #[tokio::test]
    async fn an_empty_405_keeps_its_allow_header() {
        let resp = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET,HEAD")
            .body(Body::empty())
            .unwrap();
        let out = error_shape(resp).await;
        assert_eq!(out.headers()[header::ALLOW], "GET,HEAD");
        let v = body_of(out).await;
        assert_eq!(v["error"]["code"], "method_not_allowed");
        assert!(v["error"]["message"].as_str().unwrap().contains("Allow"));
    }

    #[tokio::test]
    async fn json_errors_and_successes_pass_untouched() {
        let ok = (StatusCode::OK, "plain text").into_response();
        assert_eq!(
            error_shape(ok).await.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let api = ApiError::not_found("no pool named \"x\"").into_response();
        let v = body_of(error_shape(api).await).await;
        assert_eq!(v["error"]["message"], "no pool named \"x\"");
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let text = "é".repeat(1000);
        let e = shaped(StatusCode::PAYLOAD_TOO_LARGE, &text);
        assert_eq!(e.code(), "payload_too_large");
        assert!(e.message().len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(e.message().ends_with('…'));
        let e = shaped(StatusCode::from_u16(418).unwrap(), "");
        assert_eq!(e.code(), "invalid_request");
        let e = shaped(StatusCode::BAD_GATEWAY, "");
        assert_eq!(e.code(), "internal_error");
    }
}
