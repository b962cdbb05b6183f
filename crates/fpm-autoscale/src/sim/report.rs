//! Runs every manager on a trace and renders the comparison table that
//! `phpfpm-manager simulate` prints.

use std::fmt::Write as _;

use super::engine::run;
use super::trace::TraceSpec;
use super::{ChangeMechanism, Manager, Scenario, SimError, SimResult};
use crate::decide::ResizeReason;
use crate::policy::Policy;

/// Runs the manager's policy (from `policy_yaml`, default policy when
/// `None`) and php-fpm's `static`, `dynamic` and `ondemand` on `trace`
/// with the standard scenario and `seed`, and returns the printed table.
///
/// Every manager gets the policy's `max_workers` as its maximum.
pub fn simulate_report(
    trace: TraceSpec,
    policy_yaml: Option<&str>,
    seed: u64,
) -> Result<String, SimError> {
    simulate_report_with(trace, policy_yaml, Scenario::standard(seed))
}

/// [`simulate_report`] with a non-standard scenario (its `max_workers` and
/// `slow_wait_s` are taken from the policy).
pub fn simulate_report_with(
    trace: TraceSpec,
    policy_yaml: Option<&str>,
    mut scenario: Scenario,
) -> Result<String, SimError> {
    let policy = match policy_yaml {
        Some(text) => Policy::from_yaml(text)?,
        None => Policy::default(),
    };
    scenario.max_workers = policy.spec().max_workers;
    scenario.slow_wait_s = policy.emergency_wait_s();
    let results = simulate_all(&trace, &policy, &scenario)?;
    Ok(render_table(&trace, &scenario, &results))
}

/// Runs the four managers on one trace, in table order.
pub fn simulate_all(
    trace: &TraceSpec,
    policy: &Policy,
    scenario: &Scenario,
) -> Result<Vec<SimResult>, SimError> {
    let managers = [
        Manager::Policy(policy.clone()),
        Manager::Static,
        Manager::Dynamic,
        Manager::Ondemand,
    ];
    managers
        .iter()
        .map(|manager| run(trace, manager, scenario))
        .collect()
}

/// Renders results as a Markdown table with a heading line.
pub fn render_table(trace: &TraceSpec, scenario: &Scenario, results: &[SimResult]) -> String {
    let mut out = String::new();
    let duration = scenario
        .duration_s
        .unwrap_or_else(|| trace.default_duration_s());
    let change = match scenario.change {
        ChangeMechanism::Handover => "hand-over",
        ChangeMechanism::Reload => "reload",
    };
    let _ = writeln!(
        out,
        "trace {} ({duration:.0} s), seed {}, max {} workers, changes by {change}, manager's queue probe every {:.0} ms",
        trace.name(),
        scenario.seed,
        scenario.max_workers,
        scenario.probe_s * 1000.0
    );
    let _ = writeln!(
        out,
        "| policy | requests | p50 wait ms | p95 wait ms | p99 wait ms | max wait ms | waited > 0 | waited > {:.0} ms | dropped | worker-s | memory GiB-s | changes | forks | peak workers |",
        scenario.slow_wait_s * 1000.0
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for result in results {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |",
            result.manager,
            result.requests,
            result.p50_wait_s * 1000.0,
            result.p95_wait_s * 1000.0,
            result.p99_wait_s * 1000.0,
            result.max_wait_s * 1000.0,
            result.waited,
            result.over_target,
            result.dropped,
            result.worker_seconds,
            result.memory_gib_seconds,
            result.changes,
            result.spawns,
            result.peak_workers,
        );
    }
    for result in results
        .iter()
        .filter(|result| !result.changes_detail.is_empty())
    {
        let changes: Vec<String> = result
            .changes_detail
            .iter()
            .map(|change| {
                let reason = match change.reason {
                    ResizeReason::Emergency => "emergency",
                    ResizeReason::ScaleUp => "up",
                    ResizeReason::ScaleDown => "down",
                    ResizeReason::OutOfBounds => "bounds",
                    ResizeReason::Pinned => "pin",
                };
                format!(
                    "{:.1} s {}->{} {reason}",
                    change.at_s, change.from, change.to
                )
            })
            .collect();
        let _ = writeln!(out, "{} changes: {}", result.manager, changes.join(", "));
    }
    out
}
