//! Runs every contender on a trace and renders the comparison tables that
//! `phpfpm-manager simulate` and the `simulate` example print.

use std::fmt::Write as _;

use super::engine::{run, run_shared, SharedPool, SharedResult};
use super::trace::TraceSpec;
use super::{Manager, Scenario, SimError, SimResult};
use crate::policy::Policy;

/// The oscillation window of the tables: the default policy's.
const OSCILLATION_WINDOW_S: f64 = 600.0;

/// Runs the manager's policy (from `policy_yaml`, default policy when
/// `None`) and php-fpm's own managers on `trace` with the standard
/// scenario and `seed`, and returns the printed table.
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

/// Runs the contenders with a policy already built (for example from the
/// daemon's configuration) and the memory budget the manager plans its cap
/// over (`None`: the standard scenario's), on `trace` with `seed`, and
/// returns the printed table. The simulated manager runs the pool, so an
/// advise-only policy is simulated as if its changes were applied.
pub fn simulate_report_policy(
    trace: TraceSpec,
    policy: &Policy,
    memory_budget_bytes: Option<u64>,
    seed: u64,
) -> Result<String, SimError> {
    let mut spec = policy.spec().clone();
    spec.advise_only = false;
    let policy = Policy::new(spec)?;
    let mut scenario = Scenario::standard(seed);
    if let Some(budget) = memory_budget_bytes {
        scenario.memory_budget_bytes = budget;
    }
    scenario.max_workers = policy.spec().max_workers;
    scenario.slow_wait_s = policy.emergency_wait_s();
    let results = simulate_all(&trace, &policy, &scenario)?;
    Ok(render_table(&trace, &scenario, &results))
}

/// Runs every contender ([`Manager::contenders`]) on one trace, in table
/// order.
pub fn simulate_all(
    trace: &TraceSpec,
    policy: &Policy,
    scenario: &Scenario,
) -> Result<Vec<SimResult>, SimError> {
    Manager::contenders(policy)
        .iter()
        .map(|manager| run(trace, manager, scenario))
        .collect()
}

/// Renders results as a Markdown table with a heading line and notes.
pub fn render_table(trace: &TraceSpec, scenario: &Scenario, results: &[SimResult]) -> String {
    let mut out = String::new();
    let duration = scenario
        .duration_s
        .unwrap_or_else(|| trace.default_duration_s());
    let _ = writeln!(
        out,
        "trace {} ({duration:.0} s), seed {}, pm.max_children {} for every manager (the manager moves its cap within it); \
         memory budget {} MiB (the manager's cap is its share of it, 64 MiB a worker until PSS is measured); \
         hand-over: new master ready {:.1} s after its start, old one stopped then; \
         manager: every change of cap a hand-over (manager-additive: a cap above the primary master's by an extra master beside it, \
         the primary's by stopping the extra one, below it by a hand-over); \
         cold OPcache: +{:.2} s on a new master's first request (+{:.2} s with file_cache), falling to 1/e after {:.0} requests; \
         queue probe every {:.0} ms",
        trace.name(),
        scenario.seed,
        scenario.max_workers,
        scenario.memory_budget_bytes / (1024 * 1024),
        scenario.master_start_s,
        scenario.cold_start_s,
        scenario.file_cache_cold_start_s,
        scenario.cold_requests,
        scenario.probe_s * 1000.0
    );
    let _ = writeln!(
        out,
        "| manager | requests | failed | p50 response ms | p99 response ms | max response ms | p99 wait ms | waited > 0 | waited > {:.0} ms | cold requests | memory GiB-s | changes | oscillations | forks | peak workers (serving master) |",
        scenario.slow_wait_s * 1000.0
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for result in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {} | {} | {} | {:.0} | {} | {} | {} | {} ({}) |",
            result.manager,
            result.requests,
            result.failed,
            result.p50_response_s * 1000.0,
            result.p99_response_s * 1000.0,
            result.max_response_s * 1000.0,
            result.p99_wait_s * 1000.0,
            result.waited,
            result.over_target,
            result.cold_served,
            result.memory_gib_seconds,
            result.changes,
            result.oscillations_within(OSCILLATION_WINDOW_S),
            result.spawns,
            result.peak_workers,
            result.peak_serving_workers,
        );
    }
    let _ = writeln!(
        out,
        "peak workers counts every process at once: during a hand-over the old master's busy workers finish their requests after the new master serves \
         (and a replaced or stopped extra master's after it was stopped), \
         and a static master forks all its workers while the old one still serves, so it can exceed pm.max_children; \
         the serving master's own peak is in brackets (the primary and the extra master together)"
    );
    for result in results
        .iter()
        .filter(|result| !result.changes_detail.is_empty())
    {
        let changes: Vec<String> = result
            .changes_detail
            .iter()
            .map(|change| {
                format!(
                    "{:.1} s {}->{} {}",
                    change.at_s, change.from, change.to, change.rule
                )
            })
            .collect();
        let _ = writeln!(out, "{} changes: {}", result.manager, changes.join(", "));
    }
    out
}

/// The two-pool budget comparison: "shop" (priority 1, spike trace) and
/// "admin" (priority 0, steady trace) under one budget that leaves 2100
/// MiB for the workers of both (about 35 workers of 60 MiB), managed five
/// ways: the daemon's manager (`ondemand` caps from
/// [`crate::caps::next_cap`] over one board, the worker budget as
/// `scaling.memory_budget`), with additive changes and with every change a
/// hand-over; the earlier model-cap design (caps from
/// `decide` and [`crate::share_budget_protecting_needs`]); `static` pools
/// splitting the budget equally; `ondemand` pools whose caps (32 each) add
/// up to more than the budget. Returns the printed tables.
pub fn simulate_shared(seed: u64) -> Result<String, SimError> {
    let results = shared_runs(seed)?;
    Ok(render_shared(seed, &results))
}

/// The configurations of [`simulate_shared`], by name, in table order.
pub fn shared_runs(seed: u64) -> Result<Vec<(&'static str, SharedResult)>, SimError> {
    const MIB: u64 = 1024 * 1024;
    let mut scenario = Scenario::standard(seed);
    let shop_policy = Policy::from_yaml("priority: 1\n")?;
    let admin_policy = Policy::from_yaml("priority: 0\n")?;
    // The reserve, both masters and 35 workers of 60 MiB.
    scenario.memory_budget_bytes = 256 * MIB + 2 * scenario.shared_bytes + 35 * 60 * MIB;
    let worker_budget = scenario.memory_budget_bytes
        - 2 * scenario.shared_bytes
        - (shop_policy.spec().memory_reserve_mb * 1024.0 * 1024.0) as u64;
    // An operator splitting the budget equally sizes by a large worker
    // (mean plus two standard deviations) so the pools never exceed it.
    let careful_worker = scenario.pss_mean_bytes + 2.0 * scenario.pss_sd_bytes;
    let half = ((worker_budget / 2) as f64 / careful_worker).floor() as u32;
    let pool = |name: &str, trace: TraceSpec, manager: Manager, max_workers: u32| SharedPool {
        name: name.to_owned(),
        trace,
        manager,
        max_workers,
    };
    let configurations = [
        (
            "manager: ondemand, caps from caps::next_cap over one board",
            [
                pool("shop", TraceSpec::Spike, Manager::daemon(&shop_policy), 32),
                pool(
                    "admin",
                    TraceSpec::Steady,
                    Manager::daemon(&admin_policy),
                    32,
                ),
            ],
        ),
        (
            "manager-additive: the same, a bigger cap by a second master",
            [
                pool(
                    "shop",
                    TraceSpec::Spike,
                    Manager::daemon_additive(&shop_policy),
                    32,
                ),
                pool(
                    "admin",
                    TraceSpec::Steady,
                    Manager::daemon_additive(&admin_policy),
                    32,
                ),
            ],
        ),
        (
            "model-cap: caps from decide within shares (earlier design)",
            [
                pool(
                    "shop",
                    TraceSpec::Spike,
                    Manager::ModelCap {
                        policy: shop_policy.clone(),
                        file_cache: true,
                    },
                    32,
                ),
                pool(
                    "admin",
                    TraceSpec::Steady,
                    Manager::ModelCap {
                        policy: admin_policy.clone(),
                        file_cache: true,
                    },
                    32,
                ),
            ],
        ),
        (
            "static, budget split equally",
            [
                pool("shop", TraceSpec::Spike, Manager::Static, half),
                pool("admin", TraceSpec::Steady, Manager::Static, half),
            ],
        ),
        (
            "ondemand, caps 32 + 32 over the budget",
            [
                pool("shop", TraceSpec::Spike, Manager::Ondemand, 32),
                pool("admin", TraceSpec::Steady, Manager::Ondemand, 32),
            ],
        ),
    ];
    configurations
        .into_iter()
        .map(|(name, pools)| Ok((name, run_shared(&pools, &scenario)?)))
        .collect()
}

/// Renders the shared-budget runs as one Markdown table.
pub fn render_shared(seed: u64, results: &[(&'static str, SharedResult)]) -> String {
    const MIB: u64 = 1024 * 1024;
    let mut out = String::new();
    let budget = results
        .first()
        .map_or(0, |(_, result)| result.worker_budget_bytes);
    let _ = writeln!(
        out,
        "two pools, one budget: {} MiB for the workers of both (about {} workers of 60 MiB), seed {seed}; shop: spike trace, priority 1; admin: steady trace, priority 0",
        budget / MIB,
        budget / (60 * MIB)
    );
    let _ = writeln!(
        out,
        "| configuration | pool | failed | p50 response ms | p99 response ms | max response ms | memory GiB-s | changes | oscillations | cap low..high | peak memory MiB (both pools) | time over budget s |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, shared) in results {
        for (index, pool) in shared.pools.iter().enumerate() {
            let pool_name = if index == 0 { "shop" } else { "admin" };
            let (peak, over) = if index == 0 {
                (
                    format!("{}", shared.peak_memory_bytes / MIB),
                    format!("{:.1}", shared.over_budget_s),
                )
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(
                out,
                "| {name} | {pool_name} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} | {}..{} | {peak} | {over} |",
                pool.failed,
                pool.p50_response_s * 1000.0,
                pool.p99_response_s * 1000.0,
                pool.max_response_s * 1000.0,
                pool.memory_gib_seconds,
                pool.changes,
                pool.oscillations_within(OSCILLATION_WINDOW_S),
                shared.granted_low[index],
                shared.granted_peak[index],
            );
        }
    }
    out
}
