//! The autoscaler's span: one `autoscale.decide` per decision of a pool's
//! actor, carrying the figures it decided on. A change the decision makes
//! (a hand-over) is its child.

use crate::scale::ScalingView;
use crate::telemetry::int;

/// The span of one decision: from `from_workers` (the cap in force) to
/// `to_workers` (set only when the cap changes).
pub(super) fn decision(
    pool: &str,
    from_workers: u32,
    to_workers: Option<u32>,
    renew: bool,
    view: &ScalingView,
) -> tracing::Span {
    tracing::info_span!(
        "autoscale.decide",
        pool,
        rule = view.rule.as_str(),
        model_rule = view.model_rule,
        action = view.action,
        phase = view.phase,
        confidence = view.confidence,
        operator_override = view.override_.name(),
        from_workers = i64::from(from_workers),
        to_workers = to_workers.map(i64::from),
        renew,
        recommended_workers = view.recommended_workers.map(i64::from),
        planned_cap = view.planned_cap.map(i64::from),
        short_rate_per_s = view.short_rate,
        long_rate_per_s = view.long_rate,
        mean_service_s = view.mean_service_s,
        offered_load = view.offered_load,
        p95_pss_bytes = view.p95_pss_bytes.map(int),
        memory_budget_bytes = view.memory_budget_bytes.map(int),
        memory_ceiling = view.memory_ceiling.map(i64::from),
        cpu_ceiling = view.cpu_ceiling.map(i64::from),
        cpu_bound = view.cpu_bound,
    )
}
