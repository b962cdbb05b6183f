//! The supervisor's spans: one per hand-over (`pool.handover`) and one per
//! start or restart of a master (`pool.start`, `pool.restart`), each with
//! the pool, the generation it produced and the outcome. A hand-over is a
//! child of the span that asked for it (an API request, an autoscaler
//! decision), carried in the command.

use fpm_core::fpm_conf::PoolSpec;
use tracing::field::Empty;
use tracing::Instrument as _;

use super::{ApplyError, ApplyReport, Master, Supervisor};
use crate::telemetry::int;

impl Supervisor {
    /// [`Supervisor::apply`] inside a `pool.handover` span under `parent`.
    pub(super) async fn apply_traced(
        &mut self,
        current: &mut Option<Master>,
        spec: PoolSpec,
        reason: &str,
        renew: bool,
        parent: &tracing::Span,
    ) -> Result<ApplyReport, ApplyError> {
        let span = tracing::info_span!(
            parent: parent,
            "pool.handover",
            pool = self.name(),
            reason,
            renew,
            generation = Empty,
            outcome = Empty,
            old_pid = Empty,
            new_pid = Empty,
            took_ms = Empty,
            otel.status_code = Empty,
        );
        let res = self
            .apply(current, spec, reason, renew)
            .instrument(span.clone())
            .await;
        match &res {
            Ok(r) => {
                span.record("generation", int(r.generation));
                span.record(
                    "outcome",
                    if r.unchanged {
                        "unchanged"
                    } else {
                        "handed_over"
                    },
                );
                span.record("old_pid", r.old_pid.map(i64::from));
                span.record("new_pid", i64::from(r.new_pid));
                span.record(
                    "took_ms",
                    i64::try_from(r.took.as_millis()).unwrap_or(i64::MAX),
                );
            }
            Err(e) => {
                span.record("generation", int(self.generation));
                span.record("outcome", outcome_of(e));
                span.record("otel.status_code", "error");
            }
        }
        res
    }

    /// [`Supervisor::cold_start`] inside a `pool.start` span (the first
    /// start) or a `pool.restart` span (after an exit or a failed start).
    pub(super) async fn start_traced(
        &mut self,
        spec: &PoolSpec,
        restart: bool,
    ) -> anyhow::Result<Master> {
        let span = if restart {
            tracing::info_span!(
                "pool.restart",
                pool = self.name(),
                generation = Empty,
                outcome = Empty,
                pid = Empty,
                otel.status_code = Empty,
            )
        } else {
            tracing::info_span!(
                "pool.start",
                pool = self.name(),
                generation = Empty,
                outcome = Empty,
                pid = Empty,
                otel.status_code = Empty,
            )
        };
        let res = self.cold_start(spec).instrument(span.clone()).await;
        match &res {
            Ok(m) => {
                span.record("generation", int(self.generation));
                span.record("outcome", "started");
                span.record("pid", i64::from(m.pid));
            }
            Err(_) => {
                span.record("outcome", "failed");
                span.record("otel.status_code", "error");
            }
        }
        res
    }
}

fn outcome_of(e: &ApplyError) -> &'static str {
    match e {
        ApplyError::Refused(_) => "refused",
        ApplyError::StartFailed(_) => "start_failed",
        ApplyError::Sockets(_) => "sockets_failed",
        ApplyError::Gone => "gone",
    }
}
