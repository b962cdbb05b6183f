//! The goals, checked through the simulator over 20 seeds (and the
//! two-pool budget comparison on one seed). The model is the fair one: the
//! policy sees only what the collector sees, a hand-over stops the old
//! master as soon as the new one is ready, a new master starts with a
//! cold OPcache, and response time (wait plus service) is scored.
//!
//! Traces are shortened where the goal allows it (the spike at 600 s of
//! 1200, after the learning phase; 900 s of steady load) so that 20 seeds
//! stay affordable in a debug build. The recorded tables in
//! `docs/bench/autoscaler.md` are the full-length runs.

use std::sync::OnceLock;

use fpm_autoscale::sim::{run, shared_runs, DynamicSpec, Manager, Scenario, SimResult};
use fpm_autoscale::{simulate_report, Policy, TraceSpec};

const SEEDS: u64 = 20;
const OSCILLATION_WINDOW_S: f64 = 600.0;

fn manager() -> Manager {
    Manager::PolicyOndemand {
        policy: Policy::default(),
        file_cache: false,
    }
}

fn manager_file_cache() -> Manager {
    Manager::PolicyOndemand {
        policy: Policy::default(),
        file_cache: true,
    }
}

/// Runs `managers` on `trace` of `duration_s` for seeds 1 to 20, on two
/// threads. Result: per seed, one result per manager.
fn sweep(trace: &TraceSpec, duration_s: f64, managers: &[Manager]) -> Vec<Vec<SimResult>> {
    let run_seed = |seed: u64| -> Vec<SimResult> {
        let mut scenario = Scenario::standard(seed);
        scenario.duration_s = Some(duration_s);
        managers
            .iter()
            .map(|m| run(trace, m, &scenario).expect("simulation runs"))
            .collect()
    };
    let seeds: Vec<u64> = (1..=SEEDS).collect();
    let (odd, even): (Vec<u64>, Vec<u64>) = seeds.iter().partition(|&&s| s % 2 == 1);
    let (mut a, mut b) = std::thread::scope(|scope| {
        let first = scope.spawn(|| odd.iter().map(|&s| (s, run_seed(s))).collect::<Vec<_>>());
        let second: Vec<_> = even.iter().map(|&s| (s, run_seed(s))).collect();
        (first.join().expect("thread"), second)
    });
    a.append(&mut b);
    a.sort_by_key(|(seed, _)| *seed);
    a.into_iter().map(|(_, results)| results).collect()
}

/// Spike: manager, manager+file_cache, static@max, dynamic tuned, dynamic
/// Debian.
fn spike() -> &'static Vec<Vec<SimResult>> {
    static RESULTS: OnceLock<Vec<Vec<SimResult>>> = OnceLock::new();
    RESULTS.get_or_init(|| {
        sweep(
            &TraceSpec::Spike,
            1200.0,
            &[
                manager(),
                manager_file_cache(),
                Manager::Static,
                Manager::Dynamic(DynamicSpec::tuned()),
                Manager::Dynamic(DynamicSpec::debian()),
            ],
        )
    })
}

/// Steady: manager, static@max, ondemand@max.
fn steady() -> &'static Vec<Vec<SimResult>> {
    static RESULTS: OnceLock<Vec<Vec<SimResult>>> = OnceLock::new();
    RESULTS.get_or_init(|| {
        sweep(
            &TraceSpec::Steady,
            900.0,
            &[manager(), Manager::Static, Manager::Ondemand],
        )
    })
}

fn ms(seconds: f64) -> f64 {
    seconds * 1000.0
}

#[test]
fn spike_response_time_against_php_fpm_managers() {
    let mut ratios = Vec::new();
    for (index, seed_results) in spike().iter().enumerate() {
        let seed = index + 1;
        let [manager, file_cache, static_max, tuned, debian] = &seed_results[..] else {
            panic!("five results");
        };
        assert_eq!(manager.failed, 0, "seed {seed}");
        // Far ahead of Debian's dynamic defaults (spare 1 to 3: one fork a
        // second), which queue for seconds.
        assert!(
            manager.p99_response_s <= 0.1 * debian.p99_response_s,
            "seed {seed}: manager p99 {:.0} ms, dynamic-debian {:.0} ms",
            ms(manager.p99_response_s),
            ms(debian.p99_response_s)
        );
        // Behind static at max (1.1x to 1.6x over seeds 1 to 20, median
        // 1.3x) and about level with a well-tuned dynamic (0.9x to 1.45x):
        // the surge is met by an emergency hand-over to a cold master with
        // no worker forked yet.
        let ratio = manager.p99_response_s / static_max.p99_response_s;
        ratios.push(ratio);
        assert!(ratio <= 1.75, "seed {seed}: {ratio:.2}x static@max");
        assert!(
            manager.p99_response_s <= 1.6 * tuned.p99_response_s,
            "seed {seed}: manager p99 {:.0} ms, dynamic-tuned {:.0} ms",
            ms(manager.p99_response_s),
            ms(tuned.p99_response_s)
        );
        // With the OPcache file cache the gap to static shrinks to 1.25x.
        assert!(
            file_cache.p99_response_s <= 1.3 * static_max.p99_response_s,
            "seed {seed}: file cache p99 {:.0} ms, static {:.0} ms",
            ms(file_cache.p99_response_s),
            ms(static_max.p99_response_s)
        );
        // For far less memory than static at max (0.62x to 0.65x).
        let memory = manager.memory_gib_seconds / static_max.memory_gib_seconds;
        assert!(memory <= 0.7, "seed {seed}: memory {memory:.2}x static");
        assert_eq!(
            manager.oscillations_within(OSCILLATION_WINDOW_S),
            0,
            "seed {seed}: {:?}",
            manager.changes_detail
        );
        // The serving master never runs more than the cap.
        assert!(manager.peak_serving_workers <= 32, "seed {seed}");
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    assert!(median <= 1.4, "median {median:.2}x static: {ratios:?}");
}

#[test]
fn spike_an_opcache_file_cache_shortens_the_cold_start() {
    let (mut cold, mut warm) = (0.0, 0.0);
    for seed_results in spike() {
        let [manager, with_file_cache, ..] = &seed_results[..] else {
            panic!("five results");
        };
        assert!(manager.cold_served > 0, "a hand-over serves cold requests");
        cold += manager.max_response_s;
        warm += with_file_cache.max_response_s;
    }
    // The worst response of a run is the first request into a cold
    // master (+0.9 s); the file cache takes 0.7 s off it.
    assert!(
        warm <= 0.8 * cold,
        "mean max response: {:.0} ms with the file cache, {:.0} ms without",
        ms(warm / SEEDS as f64),
        ms(cold / SEEDS as f64)
    );
}

#[test]
fn steady_uses_a_third_of_static_memory_for_the_same_response_time() {
    for (index, seed_results) in steady().iter().enumerate() {
        let seed = index + 1;
        let [manager, static_max, ondemand] = &seed_results[..] else {
            panic!("three results");
        };
        let memory = manager.memory_gib_seconds / static_max.memory_gib_seconds;
        assert!(memory <= 0.4, "seed {seed}: memory {memory:.2}x static");
        assert!(
            manager.p99_response_s <= 1.05 * static_max.p99_response_s,
            "seed {seed}: p99 {:.1} ms vs static {:.1} ms",
            ms(manager.p99_response_s),
            ms(static_max.p99_response_s)
        );
        assert!(
            manager.max_changes_within(300.0) <= 1,
            "seed {seed}: {:?}",
            manager.change_log
        );
        // Plain ondemand at the maximum needs no manager for a pool alone
        // under its budget: it is about as lean (within 1.5x either way).
        let ratio = manager.memory_gib_seconds / ondemand.memory_gib_seconds;
        assert!((0.67..1.5).contains(&ratio), "seed {seed}: {ratio:.2}");
    }
}

#[test]
fn the_manager_does_not_oscillate_or_fail_on_any_full_trace() {
    for name in TraceSpec::BUILTIN {
        let trace = TraceSpec::builtin(name).expect("built-in");
        for seed in [1, 2] {
            let result = run(&trace, &manager(), &Scenario::standard(seed)).expect("runs");
            assert_eq!(result.failed, 0, "{name} seed {seed}");
            assert_eq!(
                result.oscillations_within(OSCILLATION_WINDOW_S),
                0,
                "{name} seed {seed}: {:?}",
                result.changes_detail
            );
            let mut last_up: Option<f64> = None;
            for change in &result.changes_detail {
                if change.to > change.from {
                    last_up = Some(change.at_s);
                } else if let Some(up) = last_up {
                    assert!(
                        change.at_s - up >= OSCILLATION_WINDOW_S,
                        "{name} seed {seed}: down {} s after an up",
                        change.at_s - up
                    );
                }
            }
        }
    }
}

#[test]
fn runs_are_deterministic_per_seed() {
    let short = |seed| {
        let mut scenario = Scenario::standard(seed);
        scenario.duration_s = Some(120.0);
        run(&TraceSpec::Spike, &manager(), &scenario).expect("runs")
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
    assert_eq!(static_max.cold_served, 0);
    let tuned = run(&spike, &Manager::Dynamic(DynamicSpec::tuned()), &scenario).expect("runs");
    // The surge needs 20 busy workers; dynamic gets there in steps, so
    // requests queue meanwhile.
    assert!(tuned.peak_workers > 20, "{}", tuned.peak_workers);
    assert!(tuned.p99_wait_s >= static_max.p99_wait_s);
    // Debian's min_spare 1 forks at most one worker a second (fact 16:
    // min(spawn rate, min_spare - idle)): the surge queues for seconds.
    let debian = run(&spike, &Manager::Dynamic(DynamicSpec::debian()), &scenario).expect("runs");
    assert!(debian.p99_response_s > 1.0, "{}", debian.p99_response_s);
    let ondemand = run(&spike, &Manager::Ondemand, &scenario).expect("runs");
    assert!(ondemand.spawns >= u64::from(ondemand.peak_workers));
    assert!(ondemand.worker_seconds < static_max.worker_seconds);
    assert_eq!(ondemand.changes, 0);
}

/// The hand-over is modelled as the supervisor does it: the old master
/// is stopped the moment the new one is ready, so the only overlap is the
/// old master's requests in flight finishing. A static master forks all
/// its workers at start; an ondemand one forks for what is queued.
#[test]
fn a_hand_over_overlaps_only_by_requests_in_flight() {
    for seed in [1, 2, 3] {
        let mut scenario = Scenario::standard(seed);
        scenario.duration_s = Some(1200.0);
        let result = run(&TraceSpec::Spike, &manager(), &scenario).expect("runs");
        let emergency = result
            .changes_detail
            .iter()
            .find(|c| c.reason.rule() == "emergency")
            .expect("the spike is an emergency");
        // Old master at its cap, all busy, and the new one at its cap.
        assert!(
            result.peak_workers <= emergency.from + emergency.to,
            "seed {seed}: peak {} after {} -> {}",
            result.peak_workers,
            emergency.from,
            emergency.to
        );
        assert!(result.peak_serving_workers <= emergency.to);
    }
}

#[test]
fn report_prints_every_contender_and_rejects_bad_input() {
    let csv = TraceSpec::Csv("time,rate\n0,20\n60,20\n".to_owned());
    let table = simulate_report(csv, Some("max_workers: 8\n"), 3).expect("report");
    for name in [
        "| manager |",
        "manager+file_cache",
        "manager-static",
        "static@max",
        "dynamic-tuned",
        "dynamic-debian",
        "ondemand@max",
        "seed 3",
        "pm.max_children 8",
        "p99 response ms",
        "the serving master's own peak is in brackets",
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
fn two_pools_one_budget() {
    let runs = shared_runs(1).expect("runs");
    let [(_, managed), (_, split), (_, over)] = &runs[..] else {
        panic!("three configurations");
    };
    // Caps from share_budget keep both pools within the budget but for
    // hand-over transients (old requests finishing).
    assert!(managed.over_budget_s < 5.0, "{}", managed.over_budget_s);
    // Ondemand pools whose caps add up to more than the budget breach it
    // for a long time (an OOM risk the table reports).
    assert!(over.over_budget_s > 60.0, "{}", over.over_budget_s);
    assert!(over.peak_memory_bytes > over.worker_budget_bytes);
    // A static equal split starves the pool that gets the surge.
    let [shop, admin] = &managed.pools[..] else {
        panic!("two pools");
    };
    assert!(
        shop.p99_response_s * 10.0 < split.pools[0].p99_response_s,
        "shop p99 {:.0} ms managed, {:.0} ms split",
        ms(shop.p99_response_s),
        ms(split.pools[0].p99_response_s)
    );
    // The lower-priority pool gives way: cut to its minimum.
    assert_eq!(managed.granted_low[1], 2);
    assert!(admin.failed == 0 && shop.failed == 0);
    assert_eq!(shop.oscillations_within(OSCILLATION_WINDOW_S), 0);
}
