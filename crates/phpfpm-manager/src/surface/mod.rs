//! What the daemon shows the outside world over HTTP: the axum router for
//! `/health`, `/api/v1` and `/metrics` (`http`) and the Prometheus rendering
//! behind `/metrics` (`metrics`).

pub mod http;
pub mod metrics;
pub mod names;
