//! The collector's spans: one `collect` span per look at a pool, with the
//! steps as children (`collect.status`, `collect.ping`, `collect.queue`,
//! `collect.proc`, `collect.opcache`). The `collect` span carries what the
//! look found; a failed status request marks it as an error.

use crate::state::Look;
use crate::telemetry::int;

/// Records on the current `collect` span what `look` found.
pub(super) fn record_look(look: &Look) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("seq", int(look.seq));
    span.record("up", look.up);
    span.record("circuit_open", look.circuit_open);
    span.record(
        "interval_ms",
        i64::try_from(look.interval.as_millis()).unwrap_or(i64::MAX),
    );
    span.record("workers.busy", int(look.derived.active));
    span.record("workers.total", int(look.derived.total));
    if let Ok((waiting, _)) = &look.kernel.accept_queue {
        span.record("queue", i64::from(*waiting));
    }
    if let Some(e) = look.last_error.as_ref().filter(|_| !look.up) {
        span.record("scrape.error", e.kind);
        span.record("otel.status_code", "error");
    }
}
