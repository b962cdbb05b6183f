//! The goals, checked through the simulator with fixed seeds, on
//! the full-length standard traces (the same runs as the recorded table).

use fpm_autoscale::sim::{run, simulate_all, Manager, Scenario, SimResult};
use fpm_autoscale::{simulate_report, Policy, TraceSpec};

/// Seeds checked by every scenario test (seed 1 is the recorded table).
const SEEDS: [u64; 2] = [1, 2];

fn results(trace: &TraceSpec, seed: u64) -> [SimResult; 4] {
    let scenario = Scenario::standard(seed);
    let all = simulate_all(trace, &Policy::default(), &scenario).expect("simulation runs");
    all.try_into().expect("four managers")
}

#[test]
fn spike_manager_p99_is_at_most_half_of_dynamic() {
    for seed in SEEDS {
        let [manager, _, dynamic, _] = results(&TraceSpec::Spike, seed);
        assert!(
            manager.p99_wait_s <= 0.5 * dynamic.p99_wait_s,
            "seed {seed}: manager p99 {:.3} s, dynamic p99 {:.3} s",
            manager.p99_wait_s,
            dynamic.p99_wait_s
        );
    }
}

/// The other spike goal: not worse than `static` at max, whose p99
/// is 0 (32 warm workers for at most 20 erlangs). The manager gets there
/// because it sizes for "p99 wait = 0" (at most 1 % of requests wait at
/// all, Erlang C) and its collector probes the accept queue at 4 Hz, so
/// the requests that wait while the surge is detected and the new master
/// starts stay below 1 % of the trace.
#[test]
fn spike_manager_p99_is_not_worse_than_static_at_max() {
    for seed in SEEDS {
        let [manager, static_max, _, _] = results(&TraceSpec::Spike, seed);
        assert!(
            manager.p99_wait_s <= static_max.p99_wait_s,
            "seed {seed}: manager p99 {:.4} s, static p99 {:.4} s; {} of {} requests waited",
            manager.p99_wait_s,
            static_max.p99_wait_s,
            manager.waited,
            manager.requests
        );
        // The goal is met by keeping the share of waiting requests under 1 %,
        // not by a loose percentile: check that share directly too.
        assert!(
            manager.waited * 100 < manager.requests,
            "seed {seed}: {} of {} requests waited",
            manager.waited,
            manager.requests
        );
    }
}

#[test]
fn steady_and_diurnal_use_at_most_70_percent_of_static_memory_within_target() {
    // The default target is "p99 wait = 0": the strictest reading of
    // "p99 wait within the target".
    let target = Policy::default().wait_target_s();
    assert_eq!(target, 0.0);
    for trace in [TraceSpec::Steady, TraceSpec::Diurnal] {
        for seed in SEEDS {
            let [manager, static_max, _, _] = results(&trace, seed);
            let ratio = manager.memory_gib_seconds / static_max.memory_gib_seconds;
            assert!(
                ratio <= 0.7,
                "{} seed {seed}: memory ratio {ratio:.2}",
                trace.name()
            );
            assert!(
                manager.p99_wait_s <= target,
                "{} seed {seed}: p99 {:.3} s above the target",
                trace.name(),
                manager.p99_wait_s
            );
        }
    }
}

#[test]
fn steady_changes_at_most_once_per_five_minutes() {
    for seed in SEEDS {
        let [manager, ..] = results(&TraceSpec::Steady, seed);
        let most = manager.max_changes_within(300.0);
        assert!(
            most <= 1,
            "seed {seed}: {most} changes within 5 minutes: {:?}",
            manager.change_log
        );
    }
}

fn manager_on(name: &str, seed: u64) -> SimResult {
    let trace = TraceSpec::builtin(name).expect("built-in");
    run(
        &trace,
        &Manager::Policy(Policy::default()),
        &Scenario::standard(seed),
    )
    .expect("simulation runs")
}

/// Oscillation, as the "no oscillation on any trace" is checked
/// here: three consecutive changes that alternate in direction (up, down,
/// up or down, up, down) with the first and the third less than 10 minutes
/// apart (`SimResult::oscillations_within(600.0)`). This is also the
/// policy's default `oscillation_window_s`: no scale-down within 10 minutes
/// of a scale-up, which rules such a sequence out.
const OSCILLATION_WINDOW_S: f64 = 600.0;

#[test]
fn the_manager_does_not_oscillate_on_any_trace() {
    assert_eq!(
        Policy::default().spec().oscillation_window_s,
        OSCILLATION_WINDOW_S
    );
    for name in TraceSpec::BUILTIN {
        for seed in SEEDS {
            let manager = manager_on(name, seed);
            assert_eq!(
                manager.oscillations_within(OSCILLATION_WINDOW_S),
                0,
                "{name} seed {seed}: {:?}",
                manager.changes_detail
            );
            // The rule behind it: every scale-down comes at least the window
            // after the previous scale-up.
            let mut last_up: Option<f64> = None;
            for change in &manager.changes_detail {
                if change.to > change.from {
                    last_up = Some(change.at_s);
                } else if let Some(up) = last_up {
                    assert!(
                        change.at_s - up >= OSCILLATION_WINDOW_S,
                        "{name} seed {seed}: down at {} s, {} s after an up",
                        change.at_s,
                        change.at_s - up
                    );
                }
            }
        }
    }
}

/// The step trace used to show down, up, down: learning ended, the model
/// took the pool from 8 to 6 a minute before the load tripled, the
/// emergency jumped to 32 and came back down. Sized for no wait, 2 erlangs
/// need the learning cap of 8, so learning ends without a change; the
/// first change on the step trace is the reaction to the higher load.
#[test]
fn step_trace_reacts_to_the_step_without_a_prior_scale_down() {
    for seed in SEEDS {
        let manager = manager_on("step", seed);
        let first_down = manager
            .changes_detail
            .iter()
            .position(|change| change.to < change.from);
        let ups_before = first_down.unwrap_or(manager.changes_detail.len());
        assert!(ups_before >= 1, "seed {seed}: {:?}", manager.changes_detail);
        // The load triples at minute 10 and falls back at minute 20: the
        // pool grows before it shrinks, and shrinks only after the fall.
        for change in &manager.changes_detail[ups_before..] {
            assert!(
                change.to < change.from && change.at_s >= 1200.0,
                "seed {seed}: {:?}",
                manager.changes_detail
            );
        }
    }
}

#[test]
fn runs_are_deterministic_per_seed() {
    let short = |seed| {
        let mut scenario = Scenario::standard(seed);
        scenario.duration_s = Some(120.0);
        run(&TraceSpec::Spike, &Manager::Dynamic, &scenario).expect("runs")
    };
    assert_eq!(short(7), short(7));
    assert_ne!(short(7).requests, short(8).requests);
}

#[test]
fn baselines_behave_like_php_fpm() {
    let mut scenario = Scenario::standard(1);
    scenario.duration_s = Some(300.0);
    let spike = TraceSpec::Spike;
    let static_max = run(&spike, &Manager::Static, &scenario).expect("runs");
    assert_eq!(static_max.peak_workers, 32);
    assert_eq!(static_max.spawns, 32);
    let dynamic = run(&spike, &Manager::Dynamic, &scenario).expect("runs");
    // The surge needs 20 busy workers; dynamic gets there in steps of at
    // most min_spare per second, so requests queue meanwhile.
    assert!(dynamic.peak_workers > 20, "{}", dynamic.peak_workers);
    assert!(dynamic.p99_wait_s > static_max.p99_wait_s);
    let ondemand = run(&spike, &Manager::Ondemand, &scenario).expect("runs");
    assert!(ondemand.spawns >= u64::from(ondemand.peak_workers));
    assert!(ondemand.worker_seconds < static_max.worker_seconds);
}

#[test]
fn report_prints_every_manager_and_rejects_bad_input() {
    let csv = TraceSpec::Csv("time,rate\n0,20\n60,20\n".to_owned());
    let table = simulate_report(csv, Some("max_workers: 8\n"), 3).expect("report");
    for name in [
        "manager",
        "static@max",
        "dynamic",
        "ondemand",
        "seed 3",
        "max 8 workers",
        "waited > 0",
    ] {
        assert!(table.contains(name), "{name} missing from:\n{table}");
    }
    let error = simulate_report(
        TraceSpec::Steady,
        Some("min_workers: 9\nmax_workers: 3\n"),
        1,
    )
    .expect_err("invalid policy");
    assert!(error.to_string().contains("min_workers: '9'"), "{error}");
    let error = simulate_report(TraceSpec::Csv("0,1\n5,oops\n".to_owned()), None, 1)
        .expect_err("invalid csv");
    assert!(error.to_string().contains("csv trace line 2"), "{error}");
}

#[test]
fn under_a_shared_budget_the_lower_priority_pool_gives_way() {
    use fpm_autoscale::sim::{run_shared, SharedPool};
    const MIB: u64 = 1024 * 1024;
    let pool = |name: &str, trace, priority| SharedPool {
        name: name.to_owned(),
        trace,
        policy: Policy::from_yaml(&format!("priority: {priority}\n")).expect("valid"),
    };
    let pools = [
        pool("shop", TraceSpec::Spike, 1),
        pool("admin", TraceSpec::Steady, 0),
    ];
    let mut scenario = Scenario::standard(1);
    // Room for about 30 workers of 60-70 MiB next to 128 MiB shared and
    // the 256 MiB reserve: not enough for both pools at their maximum.
    scenario.memory_budget_bytes = 384 * MIB + 30 * 70 * MIB;
    let shared = run_shared(&pools, &scenario).expect("runs");
    let [shop, admin] = [&shared.pools[0], &shared.pools[1]];
    let total_granted = shared.granted_peak[0] + shared.granted_low[1];
    assert!(
        shared.granted_peak[0] >= 24,
        "shop got {:?}",
        shared.granted_peak
    );
    assert!(total_granted <= 31, "{total_granted}");
    assert_eq!(
        shared.granted_low[1], 2,
        "admin is cut to its minimum during the surge"
    );
    let during_surge = |&(t, d): &(f64, i8)| (900.0..960.0).contains(&t) && d < 0;
    assert!(
        admin.change_log.iter().any(during_surge),
        "{:?}",
        admin.change_log
    );
    // The caps never push the high-priority pool around.
    assert_eq!(shop.oscillations_within(600.0), 0, "{:?}", shop.change_log);
    assert!(shop.changes <= 5, "{:?}", shop.change_log);
}

/// Why the collector's accept-queue probe runs at 4 Hz (the default of the
/// standard scenario): at php-fpm's own 1 Hz pace the surge is seen up to a
/// second later and more than 1 % of the spike trace waits, so the p99 is
/// no longer 0. The sizing alone does not meet the static goal.
#[test]
fn a_one_hertz_probe_would_miss_the_static_goal() {
    let policy = Policy::default();
    let standard = Scenario::standard(1);
    assert_eq!(standard.probe_s, 0.25);
    let four_hz = run(
        &TraceSpec::Spike,
        &Manager::Policy(policy.clone()),
        &standard,
    )
    .expect("simulation runs");
    let mut slow = standard.clone();
    slow.probe_s = 1.0;
    let one_hz = run(&TraceSpec::Spike, &Manager::Policy(policy), &slow).expect("simulation runs");
    assert!(
        one_hz.waited > four_hz.waited && one_hz.p99_wait_s > four_hz.p99_wait_s,
        "1 Hz: {} waited, p99 {:.4} s; 4 Hz: {} waited, p99 {:.4} s",
        one_hz.waited,
        one_hz.p99_wait_s,
        four_hz.waited,
        four_hz.p99_wait_s
    );
    assert!(one_hz.waited * 100 > one_hz.requests, "{}", one_hz.waited);
}
