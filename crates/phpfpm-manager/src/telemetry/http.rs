//! One server span per HTTP request (`GET /api/v1/pools/{pool}`), a child
//! of the client's span when the request carries a W3C `traceparent`.
//!
//! The span is named after the matched route, never the raw path, so its
//! name does not grow with pool names; the path is an attribute, and the
//! query string (which may carry tokens) is never recorded.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The middleware (`axum::middleware::from_fn(trace_request)`): with
/// traces off the span is disabled and the request passes straight through.
pub async fn trace_request(req: Request, next: Next) -> Response {
    // Borrowed, and formatted only inside the macro: nothing is allocated
    // when the span is disabled.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "http.request",
        otel.name = %match route {
            Some(r) => format!("{} {r}", req.method()),
            None => req.method().to_string(),
        },
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    if span.is_disabled() {
        return next.run(req).await;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let res = next.run(req).instrument(span.clone()).await;
    span.record(
        "http.response.status_code",
        i64::from(res.status().as_u16()),
    );
    if res.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    res
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
