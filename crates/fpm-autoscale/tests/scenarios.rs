//! The goals, checked through the simulator over 20 seeds. The manager is
//! the daemon's logic: `decide` as the model, `caps::next_cap` moving the
//! `ondemand` cap over the memory budget, changes applied additively (an
//! extra master beside the primary one; a hand-over below the primary's
//! cap) with a warm OPcache file cache. The model is the fair one: the
//! policy sees only what the collector sees, a replaced master is stopped
//! as soon as the new one is ready, a new master starts with a cold (or
//! file-cache warmed) OPcache, and response time (wait plus service) is
//! scored.
//!
//! Traces are shortened where the goal allows it (the spike at 600 s of
//! 1200, after the learning phase; 900 s of steady load) so that 20 seeds
//! stay affordable in a debug build. The recorded tables in
//! `docs/bench/autoscaler.md` are the full-length runs.

use std::sync::OnceLock;

use fpm_autoscale::sim::{
    run, shared_runs, DynamicSpec, Manager, Scenario, SharedResult, SimResult,
};
use fpm_autoscale::{simulate_report, simulate_report_policy, Policy, TraceSpec};

const SEEDS: u64 = 20;
const OSCILLATION_WINDOW_S: f64 = 600.0;
const MIB: u64 = 1024 * 1024;

/// The daemon's manager with the default policy.
fn manager() -> Manager {
    Manager::daemon(&Policy::default())
}

/// The earlier design (`decide`'s resizes as the cap), for the hand-over
/// and file-cache checks: the daemon's manager rarely hands over alone.
fn model_cap(file_cache: bool) -> Manager {
    Manager::ModelCap {
        policy: Policy::default(),
        file_cache,
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
    on_two_threads(1..=SEEDS, run_seed)
}

/// `run(seed)` for every seed, odd seeds on a second thread; results in
/// seed order.
fn on_two_threads<T: Send>(
    seeds: std::ops::RangeInclusive<u64>,
    run: impl Fn(u64) -> T + Sync,
) -> Vec<T> {
    let seeds: Vec<u64> = seeds.collect();
    let (odd, even): (Vec<u64>, Vec<u64>) = seeds.iter().partition(|&&s| s % 2 == 1);
    let run = &run;
    let (mut a, mut b) = std::thread::scope(|scope| {
        let first = scope.spawn(move || odd.iter().map(|&s| (s, run(s))).collect::<Vec<_>>());
        let second: Vec<_> = even.iter().map(|&s| (s, run(s))).collect();
        (first.join().expect("thread"), second)
    });
    a.append(&mut b);
    a.sort_by_key(|(seed, _)| *seed);
    a.into_iter().map(|(_, results)| results).collect()
}

/// Spike: manager, ondemand@max, static@max, dynamic Debian, model-cap
/// without and with the file cache.
fn spike() -> &'static Vec<Vec<SimResult>> {
    static RESULTS: OnceLock<Vec<Vec<SimResult>>> = OnceLock::new();
    RESULTS.get_or_init(|| {
        sweep(
            &TraceSpec::Spike,
            1200.0,
            &[
                manager(),
                Manager::Ondemand,
                Manager::Static,
                Manager::Dynamic(DynamicSpec::debian()),
                model_cap(false),
                model_cap(true),
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

/// One pool alone under the standard budget (3 GiB, room for 48 workers
/// at the assumed 64 MiB): its share is its maximum, so the daemon starts
/// it at the cap of 32 and never moves it. It then is `ondemand` at the
/// maximum, no better and no worse: the tolerance of 5 % is the goal's
/// margin, the sweep finds the two identical.
#[test]
fn spike_alone_under_the_budget_matches_ondemand_at_max() {
    for (index, seed_results) in spike().iter().enumerate() {
        let seed = index + 1;
        let [manager, ondemand, static_max, debian, ..] = &seed_results[..] else {
            panic!("six results");
        };
        assert_eq!(manager.failed, 0, "seed {seed}");
        assert!(
            manager.p99_response_s <= 1.05 * ondemand.p99_response_s,
            "seed {seed}: manager p99 {:.0} ms, ondemand@max {:.0} ms",
            ms(manager.p99_response_s),
            ms(ondemand.p99_response_s)
        );
        assert_eq!(
            manager.changes, 0,
            "seed {seed}: {:?}",
            manager.changes_detail
        );
        assert!(manager.peak_serving_workers <= 32, "seed {seed}");
        // Far ahead of Debian's dynamic defaults (spare 1 to 3: one fork a
        // second), which queue for seconds.
        assert!(
            manager.p99_response_s <= 0.1 * debian.p99_response_s,
            "seed {seed}: manager p99 {:.0} ms, dynamic-debian {:.0} ms",
            ms(manager.p99_response_s),
            ms(debian.p99_response_s)
        );
        // Forks on demand: less memory than static at max.
        let memory = manager.memory_gib_seconds / static_max.memory_gib_seconds;
        assert!(memory <= 0.8, "seed {seed}: memory {memory:.2}x static");
    }
}

#[test]
fn spike_an_opcache_file_cache_shortens_the_cold_start() {
    let (mut cold, mut warm) = (0.0, 0.0);
    for seed_results in spike() {
        let [.., without, with_file_cache] = &seed_results[..] else {
            panic!("six results");
        };
        assert!(without.cold_served > 0, "a hand-over serves cold requests");
        cold += without.max_response_s;
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
fn steady_uses_far_less_memory_than_static_for_the_same_response_time() {
    for (index, seed_results) in steady().iter().enumerate() {
        let seed = index + 1;
        let [manager, static_max, ondemand] = &seed_results[..] else {
            panic!("three results");
        };
        let memory = manager.memory_gib_seconds / static_max.memory_gib_seconds;
        assert!(memory <= 0.7, "seed {seed}: memory {memory:.2}x static");
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
        assert_eq!(manager.oscillations_within(OSCILLATION_WINDOW_S), 0);
        assert_eq!(manager.failed, 0);
        // Alone under its budget the manager is ondemand at the maximum.
        let ratio = manager.memory_gib_seconds / ondemand.memory_gib_seconds;
        assert!((0.95..1.05).contains(&ratio), "seed {seed}: {ratio:.2}");
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
        }
    }
}

/// A budget below the pool's maximum: 1280 MiB is 20 workers at the
/// assumed 64 MiB, 18 at the measured p95 PSS (about 70 MiB). The daemon
/// starts at 20, comes down once the PSS is known (the cap no longer fits:
/// at once), and the spike is served within the budget's cap.
///
/// Not a clean result: during the spike the cap can go up by one
/// (`pressing_cap`, room computed with the p95 PSS of that look) and down
/// again a second later (`over_budget`: the new workers moved the p95 PSS
/// up, and the over-budget rule is not damped). Seed 2 does that: one
/// up-down-up alternation, two extra hand-overs. What is asserted is what
/// holds.
#[test]
fn a_pool_alone_under_a_tight_budget_stays_within_it() {
    for seed in [1, 2, 3] {
        let mut scenario = Scenario::standard(seed);
        scenario.duration_s = Some(1200.0);
        scenario.memory_budget_bytes = 1280 * MIB;
        let result = run(&TraceSpec::Spike, &manager(), &scenario).expect("runs");
        assert_eq!(result.failed, 0, "seed {seed}");
        assert!(
            result.peak_serving_workers <= 20,
            "seed {seed}: {}",
            result.peak_serving_workers
        );
        let first = result.changes_detail.first().expect("the cap comes down");
        assert_eq!((first.from, first.rule), (20, "over_budget"), "seed {seed}");
        assert!(first.to <= 19, "seed {seed}: {first:?}");
        assert!(
            result.oscillations_within(OSCILLATION_WINDOW_S) <= 1 && result.changes <= 5,
            "seed {seed}: {:?}",
            result.changes_detail
        );
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
/// old master's requests in flight finishing. An ondemand master forks for
/// what is queued. (The earlier model-cap design, whose spike is an
/// emergency hand-over.)
#[test]
fn a_hand_over_overlaps_only_by_requests_in_flight() {
    for seed in [1, 2, 3] {
        let mut scenario = Scenario::standard(seed);
        scenario.duration_s = Some(1200.0);
        let result = run(&TraceSpec::Spike, &model_cap(false), &scenario).expect("runs");
        let emergency = result
            .changes_detail
            .iter()
            .find(|c| c.rule == "emergency")
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
        "| manager-additive |",
        "| model-cap |",
        "static@max",
        "dynamic-tuned",
        "dynamic-debian",
        "ondemand@max",
        "seed 3",
        "pm.max_children 8",
        "memory budget 3072 MiB",
        "p99 response ms",
        "the serving master's own peak is in brackets (the primary and the extra master together)",
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

/// The daemon's entry point: a policy built from its config and the
/// budget of `scaling.memory_budget`. A budget of 4 workers' worth caps
/// the manager at 4 while php-fpm's managers run the policy's maximum.
#[test]
fn report_from_a_policy_and_a_budget() {
    let csv = TraceSpec::Csv("time,rate\n0,20\n60,20\n".to_owned());
    let mut spec = Policy::default().spec().clone();
    spec.max_workers = 12;
    spec.advise_only = true;
    let policy = Policy::new(spec).expect("valid");
    let table = simulate_report_policy(csv.clone(), &policy, Some(256 * MIB), 5).expect("report");
    assert!(table.contains("memory budget 256 MiB"), "{table}");
    assert!(table.contains("pm.max_children 12"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("| manager | ") && !l.contains("requests"))
        .expect("manager row");
    // The last column is the peak workers, the serving master's in
    // brackets: at most the budget's 4.
    let peak: u32 = row
        .rsplit('|')
        .nth(1)
        .and_then(|cell| cell.split('(').nth(1))
        .and_then(|n| n.trim_end_matches([')', ' ']).parse().ok())
        .unwrap_or_else(|| panic!("no peak column in {row}"));
    assert!(peak <= 4, "{row}");
    let ondemand = table
        .lines()
        .find(|l| l.starts_with("| ondemand@max | "))
        .expect("ondemand row");
    assert_ne!(
        ondemand.rsplit('|').nth(1),
        row.rsplit('|').nth(1),
        "{table}"
    );
    // Without a budget, the standard scenario's.
    let table = simulate_report_policy(csv, &policy, None, 5).expect("report");
    assert!(table.contains("memory budget 3072 MiB"), "{table}");
}

/// Two pools, one budget, seeds 1 to 5 (the five configurations of a
/// 30-minute run per seed are the costliest test here). shop (priority 1)
/// gets the spike, admin (priority 0) steady load; the workers of both get
/// 2100 MiB. The manager is checked with additive changes and with every
/// change a hand-over.
#[test]
fn two_pools_one_budget() {
    for seed in 1..=5 {
        let runs = shared_runs(seed).expect("runs");
        let [(_, additive), (_, handover), _, (_, split), (_, over)] = &runs[..] else {
            panic!("five configurations");
        };
        for managed in [additive, handover] {
            let [shop, admin] = &managed.pools[..] else {
                panic!("two pools");
            };
            let name = shop.manager;
            // The busy pool is served far better than by a static equal
            // split (which starves it: 14 workers for 20 erlangs).
            assert!(
                shop.p99_response_s <= 0.5 * split.pools[0].p99_response_s,
                "seed {seed} {name}: shop p99 {:.0} ms managed, {:.0} ms split",
                ms(shop.p99_response_s),
                ms(split.pools[0].p99_response_s)
            );
            // Within the budget but for the transients of a change (the
            // replaced master's requests finishing while the new one
            // forks).
            assert!(
                managed.over_budget_s < 5.0,
                "seed {seed} {name}: {} s over",
                managed.over_budget_s
            );
            assert!(shop.failed == 0 && admin.failed == 0, "seed {seed} {name}");
            // The lower-priority pool gives way during the surge.
            assert_eq!(managed.granted_low[1], 2, "seed {seed} {name}");
        }
        // Ondemand pools whose caps add up to more than the budget breach
        // it for a long time (an OOM risk the table reports).
        assert!(
            over.over_budget_s > 60.0,
            "seed {seed}: {}",
            over.over_budget_s
        );
        assert!(over.peak_memory_bytes > over.worker_budget_bytes);
    }
}

/// Two pools under a budget of 24 workers whose peaks alternate (16 busy
/// workers' worth for two minutes, then 2, and the other way round), as
/// the real-load benchmark's `shared` scenario, with its app's figures
/// (mean request 172.5 ms, lognormal sigma 0.5, 20.2 MiB per worker,
/// cold OPcache +223 ms, +139 ms from the file cache). The equal static
/// split (12 + 12) cannot serve a peak; the manager, with additive
/// changes and with hand-overs alike, moves the memory to the busy pool
/// within seconds of each switch.
#[test]
fn alternating_peaks_move_the_budget_to_the_busy_pool() {
    use fpm_autoscale::sim::{run_shared, SharedPool};
    use fpm_autoscale::PolicySpec;

    let pss = 20.2 * MIB as f64;
    let (base, peak, warm_up, phase) = (11.6, 92.8, 20.0, 120.0);
    let csv = |rates: [f64; 3]| {
        let mut out = String::from("time_s,rate\n");
        let mut t = 0.0;
        for (rate, length) in rates.into_iter().zip([warm_up, phase, phase]) {
            out.push_str(&format!(
                "{t:.3},{rate}\n{:.3},{rate}\n",
                t + length - 0.001
            ));
            t += length;
        }
        TraceSpec::Csv(out)
    };
    let policy = Policy::new(PolicySpec {
        min_workers: 1,
        max_workers: 24,
        headroom: 1.0 / 0.7 - 1.0,
        memory_reserve_mb: 0.0,
        ..PolicySpec::default()
    })
    .expect("policy");
    let run_seed = |seed: u64| {
        let mut scenario = Scenario::standard(seed);
        scenario.mean_service_s = 0.1725;
        scenario.service_sigma = 0.5;
        scenario.cold_start_s = 0.223;
        scenario.file_cache_cold_start_s = 0.139;
        scenario.backlog = 511;
        scenario.pss_mean_bytes = pss;
        scenario.pss_sd_bytes = pss * 0.02;
        scenario.shared_bytes = 0;
        scenario.memory_budget_bytes = (24.0 * pss) as u64;
        let pools = |manager: &Manager, max_workers: u32| {
            [
                (csv([base, peak, base]), "a"),
                (csv([base, base, peak]), "b"),
            ]
            .map(|(trace, name)| SharedPool {
                name: name.to_owned(),
                trace,
                manager: manager.clone(),
                max_workers,
            })
        };
        let managed = run_shared(&pools(&Manager::daemon_additive(&policy), 24), &scenario)
            .expect("additive manager runs");
        let handover =
            run_shared(&pools(&Manager::daemon(&policy), 24), &scenario).expect("manager runs");
        let split = run_shared(&pools(&Manager::Static, 12), &scenario).expect("static runs");
        (managed, handover, split)
    };
    let results: Vec<_> = (1..=10).zip(on_two_threads(1..=10, run_seed)).collect();
    for (seed, (additive, handover, split)) in &results {
        for managed in [additive, handover] {
            for (index, (mine, equal)) in managed.pools.iter().zip(&split.pools).enumerate() {
                let name = mine.manager;
                assert!(
                    equal.failed > 1000,
                    "seed {seed}: the equal split should not keep up ({} failed)",
                    equal.failed
                );
                assert_eq!(mine.failed, 0, "seed {seed} pool {index} {name}");
                assert!(
                    mine.p99_response_s <= 0.5 * equal.p99_response_s,
                    "seed {seed} pool {index} {name}: p99 {:.0} ms managed, {:.0} ms equal split",
                    ms(mine.p99_response_s),
                    ms(equal.p99_response_s)
                );
                // Each switch moves the memory in a few changes, not a
                // stream of them.
                assert!(
                    mine.changes <= 20,
                    "seed {seed} pool {index} {name}: {} changes {:?}",
                    mine.changes,
                    mine.changes_detail
                );
            }
            // Within the budget but for the transients of a change and the
            // workers' own spread of memory (the budget is exactly 24 mean
            // workers).
            assert!(
                managed.over_budget_s < 5.0,
                "seed {seed} {}: {} s over",
                managed.pools[0].manager,
                managed.over_budget_s
            );
        }
    }
    compare_additive_with_hand_over(&results);
}

type SharedRuns = (SharedResult, SharedResult, SharedResult);

/// The alternating peaks with additive changes and with every change a
/// hand-over (the default), on the same seeds: the p99 response of the
/// requests that arrive within 5 s of a scale-up, where a new master's
/// cold OPcache shows. Printed per seed with `--nocapture`.
///
/// Not asserted either way: on these seeds the model puts additive
/// changes slightly behind in the median (about 1.09 s against 0.98 s for
/// the first pool, 2.05 s against 1.96 s for the second). Here a peak's
/// end shrinks a pool below its primary master's cap, so the next peak is
/// carried by an extra master that starts as cold as a hand-over's new
/// one (the cold penalty follows the requests a master has served, not
/// its size), and the waits for the other pool to give way dominate the
/// first seconds; the two then drift apart seed by seed with the looks'
/// timing.
fn compare_additive_with_hand_over(results: &[(u64, SharedRuns)]) {
    let mut additive = [Vec::new(), Vec::new()];
    let mut handover = [Vec::new(), Vec::new()];
    for (seed, (with_extra, with_handover, _)) in results {
        for index in 0..2 {
            let (a, h) = (&with_extra.pools[index], &with_handover.pools[index]);
            assert!(
                a.after_scale_up_requests > 0 && h.after_scale_up_requests > 0,
                "seed {seed} pool {index}: every peak starts with a scale-up"
            );
            eprintln!(
                "seed {seed} pool {index}: p99 within 5 s of a scale-up {:.0} ms additive \
                 ({} requests, {} changes, {} master starts, {} cold), \
                 {:.0} ms hand-over ({} requests, {} changes, {} master starts, {} cold); \
                 p99 overall {:.0} / {:.0} ms; over budget {:.1} / {:.1} s",
                ms(a.after_scale_up_p99_response_s),
                a.after_scale_up_requests,
                a.changes,
                a.master_starts,
                a.cold_served,
                ms(h.after_scale_up_p99_response_s),
                h.after_scale_up_requests,
                h.changes,
                h.master_starts,
                h.cold_served,
                ms(a.p99_response_s),
                ms(h.p99_response_s),
                with_extra.over_budget_s,
                with_handover.over_budget_s,
            );
            additive[index].push(a.after_scale_up_p99_response_s);
            handover[index].push(h.after_scale_up_p99_response_s);
        }
    }
    for index in 0..2 {
        eprintln!(
            "pool {index}: median over seeds of the p99 within 5 s of a scale-up: \
             {:.0} ms additive, {:.0} ms hand-over",
            ms(median(&additive[index])),
            ms(median(&handover[index]))
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
