//! The arrival rate follows the load within a few looks.
//!
//! The trace is the one measured on a real application through the
//! advisor: open loop at 8 req/s, then 50 req/s for 20 s, then 8 again. An
//! exponential average with a one-minute time constant read 3.1 req/s
//! after 30 s at 8, at most 15.9 during the surge and still 12-14 forty
//! seconds after it. The short window must read each level within a few
//! looks; the long window is the exact mean of its last minute.

use fpm_autoscale::{decide, Decision, Observation, Policy, ScalerState};

const MIB: u64 = 1024 * 1024;

/// Arrival rate of the trace at second `t`: idle for a minute, 8 req/s
/// for 30 s, 50 req/s for 20 s, then 8.
fn rate_at(t: u64) -> u64 {
    match t {
        0..60 => 0,
        60..90 => 8,
        90..110 => 50,
        _ => 8,
    }
}

/// Feeds one look every `look_s` seconds up to `until_s`, with exactly
/// the trace's arrivals in between (the counter is exact; noise would only
/// blur the assertions). Returns the decision of every look by time.
fn run(look_s: u64, until_s: u64) -> Vec<(u64, Decision)> {
    let policy = Policy::default();
    let mut state = ScalerState::new(0, 8);
    let mut out = Vec::new();
    let pss = vec![60 * MIB; 8];
    let mut t = 0;
    while t < until_s {
        let accepted: u64 = (t..t + look_s).map(rate_at).sum();
        t += look_s;
        let service = vec![0.025; accepted as usize];
        let obs = Observation {
            now_ms: t * 1000,
            accepted,
            queue_len: 0,
            busy: 1,
            idle: 7,
            total: 8,
            worker_pss_bytes: &pss,
            finished_service_s: &service,
            cpu_cores_used: Some(0.2),
            cpu_cores_limit: Some(2.0),
            memory_budget_bytes: Some(4096 * MIB),
            shared_memory_bytes: 128 * MIB,
            share_cap_workers: None,
            change_in_flight: false,
        };
        let (decision, next) = decide(&policy, &state, &obs);
        state = next;
        out.push((t, decision));
    }
    out
}

fn at(looks: &[(u64, Decision)], second: u64) -> &Decision {
    &looks
        .iter()
        .find(|(t, _)| *t == second)
        .expect("a look at that second")
        .1
}

fn close(value: Option<f64>, expected: f64, tolerance: f64) -> bool {
    value.is_some_and(|v| (v - expected).abs() <= tolerance)
}

#[test]
fn the_short_window_reads_every_level_within_two_looks() {
    for look_s in [1, 5] {
        let looks = run(look_s, 240);
        let short = |second| at(&looks, second).figures.short_rate;
        // 10 s into each level the short window (10 s) holds only it.
        for (second, level) in [(70, 8.0), (90, 8.0), (100, 50.0), (110, 50.0), (120, 8.0)] {
            assert!(
                close(short(second), level, 0.01),
                "looks every {look_s} s: short rate at {second} s is {:?}, expected {level}",
                short(second)
            );
        }
        // The sizing never plans below the short window: during the surge
        // the planned rate is at least the surge.
        let planned = at(&looks, 105).figures.planned_rate.expect("planned");
        assert!(planned >= 50.0, "planned {planned}");
    }
}

#[test]
fn the_long_window_is_the_exact_mean_of_its_last_minute() {
    let looks = run(5, 240);
    let long = |second| at(&looks, second).figures.long_rate;
    // At 90 s the minute holds 30 s idle and 30 s at 8.
    assert!(close(long(90), 4.0, 0.01), "{:?}", long(90));
    // At 150 s (40 s after the surge): 20 s of 50 and 40 s of 8.
    let expected = (20.0 * 50.0 + 40.0 * 8.0) / 60.0;
    assert!(close(long(150), expected, 0.01), "{:?}", long(150));
    // A minute after the surge it is gone from the long window.
    assert!(close(long(170), 8.0, 0.01), "{:?}", long(170));
    assert!(close(long(240), 8.0, 0.01), "{:?}", long(240));
    // The mean the advisor shows is the long window's.
    assert_eq!(
        at(&looks, 150).figures.arrival_rate,
        at(&looks, 150).figures.long_rate
    );
}

#[test]
fn the_old_average_was_too_slow_to_act_on() {
    // What the advisor reported before: the exponential average (time
    // constant 60 s) still in the state for the trend, for comparison.
    let policy = Policy::default();
    assert_eq!(policy.spec().rate_time_constant_s, 60.0);
    let looks = run(5, 240);
    let short = at(&looks, 90).figures.short_rate.expect("short");
    assert!((short - 8.0).abs() < 0.01);
    // After 30 s at 8 from idle, 1 - e^(-1/2) of the step: about 3.1.
    let mut state = ScalerState::new(0, 8);
    let pss = vec![60 * MIB; 8];
    for t in (5..=90).step_by(5) {
        let accepted: u64 = (t - 5..t).map(rate_at).sum();
        let obs = Observation {
            now_ms: t * 1000,
            accepted,
            queue_len: 0,
            busy: 1,
            idle: 7,
            total: 8,
            worker_pss_bytes: &pss,
            finished_service_s: &[],
            cpu_cores_used: None,
            cpu_cores_limit: None,
            memory_budget_bytes: None,
            shared_memory_bytes: 0,
            share_cap_workers: None,
            change_in_flight: false,
        };
        state = decide(&policy, &state, &obs).1;
    }
    let smoothed = state.estimates().smoothed_rate().expect("smoothed");
    assert!((2.5..4.0).contains(&smoothed), "{smoothed}");
}

#[test]
fn a_gap_clears_the_windows() {
    let policy = Policy::default();
    let pss = vec![60 * MIB; 4];
    let look = |now_ms, accepted| Observation {
        now_ms,
        accepted,
        queue_len: 0,
        busy: 1,
        idle: 3,
        total: 4,
        worker_pss_bytes: &pss,
        finished_service_s: &[],
        cpu_cores_used: None,
        cpu_cores_limit: None,
        memory_budget_bytes: None,
        shared_memory_bytes: 0,
        share_cap_workers: None,
        change_in_flight: false,
    };
    let mut state = ScalerState::new(0, 4);
    for t in 1..=20u64 {
        state = decide(&policy, &state, &look(t * 1000, 100)).1;
    }
    assert_eq!(state.estimates().short_rate(), Some(100.0));
    // Two minutes without a look, then 5 req/s.
    state = decide(&policy, &state, &look(140_000, 50)).1;
    assert_eq!(state.estimates().short_rate(), None);
    state = decide(&policy, &state, &look(141_000, 5)).1;
    assert_eq!(state.estimates().short_rate(), Some(5.0));
    assert_eq!(state.estimates().long_rate(), Some(5.0));
}
