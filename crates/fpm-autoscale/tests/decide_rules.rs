//! The decision rules one by one, and how bad input is handled, through
//! the public API only.

use fpm_autoscale::{
    decide, Action, HoldReason, Mode, Observation, Phase, Policy, ResizeReason, ScalerState,
};

const MIB: u64 = 1024 * 1024;

/// Owned parts of an observation, so tests can tweak fields.
#[derive(Clone)]
struct Obs {
    now_ms: u64,
    accepted: u64,
    queue_len: u32,
    busy: u32,
    idle: u32,
    total: u32,
    pss: Vec<u64>,
    service: Vec<f64>,
    cpu_used: Option<f64>,
    cpu_limit: Option<f64>,
    budget: Option<u64>,
    in_flight: bool,
}

impl Obs {
    /// A calm pool of `total` workers: 40 req/s of 50 ms over `dt` seconds.
    fn calm(now_ms: u64, dt_s: u64, total: u32) -> Obs {
        let accepted = 40 * dt_s;
        Obs {
            now_ms,
            accepted,
            queue_len: 0,
            busy: 2.min(total),
            idle: total.saturating_sub(2),
            total,
            pss: vec![60 * MIB; total as usize],
            service: vec![0.05; accepted as usize],
            cpu_used: None,
            cpu_limit: None,
            budget: Some(4096 * MIB),
            in_flight: false,
        }
    }

    fn view(&self) -> Observation<'_> {
        Observation {
            now_ms: self.now_ms,
            accepted: self.accepted,
            queue_len: self.queue_len,
            busy: self.busy,
            idle: self.idle,
            total: self.total,
            worker_pss_bytes: &self.pss,
            finished_service_s: &self.service,
            cpu_cores_used: self.cpu_used,
            cpu_cores_limit: self.cpu_limit,
            memory_budget_bytes: self.budget,
            shared_memory_bytes: 128 * MIB,
            share_cap_workers: None,
            change_in_flight: self.in_flight,
        }
    }
}

fn quick_policy(extra: &str) -> Policy {
    let text = format!(
        "min_workers: 2\nmax_workers: 32\nlearning:\n  min_samples: 100\n  min_duration_s: 30\n  min_confidence: 0.5\n{extra}"
    );
    Policy::from_yaml(&text).expect("valid policy")
}

/// Feeds calm observations every 5 s until `until_ms`; returns the state.
fn run_calm(policy: &Policy, mut state: ScalerState, from_ms: u64, until_ms: u64) -> ScalerState {
    let mut now = from_ms;
    while now < until_ms {
        now += 5000;
        let obs = Obs::calm(now, 5, state.workers());
        let (_, next) = decide(policy, &state, &obs.view());
        state = next;
    }
    state
}

#[test]
fn learning_ends_only_when_samples_time_and_confidence_are_reached() {
    let policy = quick_policy("");
    let mut state = ScalerState::new(0, 8);
    // Plenty of samples at once, but no time has passed.
    let mut obs = Obs::calm(1000, 1, 8);
    obs.service = vec![0.05; 1000];
    let (decision, next) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.figures.phase, Phase::Learning);
    assert_eq!(decision.action, Action::Hold(HoldReason::Learning));
    state = next;
    state = run_calm(&policy, state, 1000, 20_000);
    assert_eq!(
        state.phase(),
        Phase::Learning,
        "20 s is below the 30 s minimum"
    );
    state = run_calm(&policy, state, 20_000, 60_000);
    assert_eq!(state.phase(), Phase::Steady);
    assert!(state.estimates().confidence() >= 0.5);
}

#[test]
fn steady_pool_sizes_by_the_model_and_scales_down_once() {
    let policy = quick_policy("stabilisation_window_s: 60\n");
    let state = run_calm(&policy, ScalerState::new(0, 16), 0, 600_000);
    // 2 erlangs of 50 ms requests sized for no wait at p99 need 7 (Erlang
    // C: 1.8 % wait at 6, 0.5 % at 7), 8 with 10 % headroom.
    assert!((7..=9).contains(&state.workers()), "{}", state.workers());
    assert_eq!(state.changes(), 1, "one step down, no flapping");
}

#[test]
fn emergency_goes_to_the_cap_and_is_capped_while_learning() {
    let policy = quick_policy("");
    // Learning: the cap is 25 % of 32 = 8.
    let state = run_calm(&policy, ScalerState::new(0, 4), 0, 10_000);
    assert_eq!(state.phase(), Phase::Learning);
    let mut obs = Obs::calm(11_000, 1, 4);
    obs.busy = 4;
    obs.idle = 0;
    obs.queue_len = 40;
    let (decision, learning_state) = decide(&policy, &state, &obs.view());
    assert!(decision.figures.emergency);
    assert_eq!(
        decision.action,
        Action::Resize {
            workers: 8,
            reason: ResizeReason::Emergency
        }
    );
    assert_eq!(learning_state.workers(), 8);

    // Steady: the cap is max_workers.
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 120_000);
    assert_eq!(state.phase(), Phase::Steady);
    let mut obs = Obs::calm(121_000, 1, state.workers());
    obs.busy = obs.total;
    obs.idle = 0;
    obs.queue_len = 100;
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.resize_to(), Some(32));
}

#[test]
fn the_default_target_means_no_wait_at_p99() {
    use fpm_autoscale::erlang::prob_wait;
    let no_wait = quick_policy("");
    assert_eq!(no_wait.spec().wait_target_ms, 0.0);
    let state = run_calm(&no_wait, ScalerState::new(0, 8), 0, 120_000);
    let obs = Obs::calm(125_000, 5, state.workers());
    let (decision, _) = decide(&no_wait, &state, &obs.view());
    let figures = decision.figures;
    let offered = figures.offered_load.expect("load known");
    let needed = figures.needed_workers.expect("model sized");
    // The smallest size at which at most 1 % of requests wait at all.
    assert!(prob_wait(needed, offered) <= 0.01, "{needed} for {offered}");
    assert!(
        prob_wait(needed - 1, offered) > 0.01,
        "{needed} for {offered}"
    );

    // A 50 ms target at p99 accepts short waits and needs fewer workers.
    let short_waits = quick_policy("wait_target_ms: 50\n");
    let state = run_calm(&short_waits, ScalerState::new(0, 8), 0, 120_000);
    let (decision, _) = decide(&short_waits, &state, &obs.view());
    let relaxed = decision.figures.needed_workers.expect("model sized");
    assert!(relaxed < needed, "{relaxed} vs {needed}");
}

#[test]
fn a_queue_shorter_than_the_emergency_wait_is_no_emergency() {
    // The target is "no wait", but a request or two queued for a moment
    // in a well-sized pool is noise, not an emergency: the threshold is
    // emergency_wait_ms (50 ms of queue).
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 8), 0, 120_000);
    let mut obs = Obs::calm(121_000, 1, state.workers());
    obs.busy = obs.total;
    obs.idle = 0;
    obs.queue_len = 4; // 4 x 50 ms / 8 workers = 25 ms of queue
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert!(!decision.figures.emergency);
    assert!(decision.figures.queue_wait_s < policy.emergency_wait_s());
    assert_eq!(decision.resize_to(), None);
}

#[test]
fn no_scale_down_within_the_oscillation_window_after_a_scale_up() {
    let policy = quick_policy("stabilisation_window_s: 60\noscillation_window_s: 300\n");
    let mut state = run_calm(&policy, ScalerState::new(0, 8), 0, 120_000);
    assert_eq!(state.phase(), Phase::Steady);
    let mut obs = Obs::calm(121_000, 1, state.workers());
    obs.busy = obs.total;
    obs.idle = 0;
    obs.queue_len = 100;
    let (decision, next) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.resize_to(), Some(32));
    assert_eq!(next.last_up_ms(), Some(121_000));
    state = next;
    // Calm again: the stabilisation window (60 s) would allow a scale-down
    // after a minute, the oscillation window holds it for 300 s.
    let mut now = 121_000;
    let mut held_after_up = false;
    while now < 121_000 + 300_000 - 5_000 {
        now += 5_000;
        let obs = Obs::calm(now, 5, state.workers());
        let (decision, next) = decide(&policy, &state, &obs.view());
        assert_eq!(decision.resize_to(), None, "at {now} ms");
        held_after_up |= decision.action == Action::Hold(HoldReason::AfterScaleUp);
        state = next;
    }
    assert!(held_after_up, "the rule, not another one, held the pool");
    let state = run_calm(&policy, state, now, 121_000 + 330_000);
    assert!(state.workers() < 32, "{}", state.workers());
    assert!(state.last_change_ms() >= Some(121_000 + 300_000));
}

#[test]
fn a_short_queue_with_idle_workers_is_no_emergency() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 120_000);
    let mut obs = Obs::calm(121_000, 1, state.workers());
    obs.queue_len = 3; // workers still idle: a race, not saturation
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert!(!decision.figures.emergency);
    assert_eq!(decision.resize_to(), None);
}

#[test]
fn observations_that_are_not_newer_are_ignored() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 50_000);
    let obs = Obs::calm(50_000, 5, 6);
    let (decision, next) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.action, Action::Hold(HoldReason::NotNewer));
    assert_eq!(next, state);
    let older = Obs::calm(1_000, 5, 6);
    let (decision, next) = decide(&policy, &state, &older.view());
    assert_eq!(decision.action, Action::Hold(HoldReason::NotNewer));
    assert_eq!(next, state);
}

#[test]
fn a_gap_yields_no_rate_sample() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 60_000);
    let rate_before = state.estimates().arrival_rate();
    // Ten minutes later with a huge counter delta: not a rate sample.
    let mut obs = Obs::calm(660_000, 600, 6);
    obs.accepted = 1_000_000;
    let (_, next) = decide(&policy, &state, &obs.view());
    assert_eq!(next.estimates().arrival_rate(), rate_before);
}

#[test]
fn non_finite_and_negative_figures_are_ignored() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 60_000);
    let mut obs = Obs::calm(65_000, 5, 6);
    obs.service = vec![f64::NAN, f64::INFINITY, -1.0, f64::NEG_INFINITY];
    obs.cpu_used = Some(f64::NAN);
    obs.cpu_limit = Some(f64::INFINITY);
    obs.pss = vec![0, 0];
    let (decision, next) = decide(&policy, &state, &obs.view());
    let service = decision.figures.mean_service_s.expect("kept from before");
    assert!((service - 0.05).abs() < 1e-9);
    assert_eq!(decision.figures.cpu_ceiling, None);
    assert!(decision.figures.confidence.is_finite());
    assert_eq!(
        next.estimates().service_samples(),
        state.estimates().service_samples()
    );
}

#[test]
fn zero_arrivals_and_a_draining_queue_give_a_zero_rate_not_a_negative_one() {
    let policy = quick_policy("");
    let mut state = ScalerState::new(0, 6);
    let mut obs = Obs::calm(1000, 1, 6);
    obs.queue_len = 50;
    let (_, next) = decide(&policy, &state, &obs.view());
    state = next;
    let mut obs = Obs::calm(2000, 1, 6);
    obs.accepted = 0;
    obs.queue_len = 0;
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.figures.recent_rate, Some(0.0));
}

#[test]
fn a_budget_smaller_than_one_worker_holds_and_says_why() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 60_000);
    let mut obs = Obs::calm(65_000, 5, 6);
    obs.budget = Some(400 * MIB); // reserve 256 + shared 128 leave 16 MiB
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.figures.memory_ceiling, Some(0));
    assert_eq!(
        decision.action,
        Action::Hold(HoldReason::CapBelowMin { upper: 0, min: 2 })
    );
}

#[test]
fn a_shrinking_budget_shrinks_the_pool_at_once() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 8), 0, 20_000);
    let mut obs = Obs::calm(25_000, 5, 8);
    // 384 MiB fixed + 5 workers of 60 MiB.
    obs.budget = Some(384 * MIB + 5 * 60 * MIB);
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.figures.memory_ceiling, Some(5));
    assert_eq!(
        decision.action,
        Action::Resize {
            workers: 5,
            reason: ResizeReason::OutOfBounds
        }
    );
}

#[test]
fn cpu_limit_caps_the_pool() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 60_000);
    let mut obs = Obs::calm(65_000, 5, 6);
    obs.cpu_used = Some(1.0); // 2 busy workers use 0.5 core each
    obs.cpu_limit = Some(2.0);
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.figures.cpu_ceiling, Some(4));
    assert_eq!(decision.figures.upper, 4);
    assert_eq!(decision.resize_to(), Some(4));
}

#[test]
fn pin_pause_and_advise_only() {
    let policy = quick_policy("");
    let mut state = run_calm(&policy, ScalerState::new(0, 6), 0, 60_000);

    state.pin(100, Some(80_000));
    let obs = Obs::calm(65_000, 5, 6);
    let (decision, next) = decide(&policy, &state, &obs.view());
    assert_eq!(
        decision.action,
        Action::Resize {
            workers: 32,
            reason: ResizeReason::Pinned
        },
        "a pin is clamped to the caps"
    );
    let obs = Obs::calm(70_000, 5, 32);
    let (decision, next) = decide(&policy, &next, &obs.view());
    assert_eq!(decision.action, Action::Hold(HoldReason::Pinned));
    let obs = Obs::calm(85_000, 5, 32);
    let (_, next) = decide(&policy, &next, &obs.view());
    assert_eq!(next.mode(), &Mode::Auto, "the pin expired");

    let mut paused = next.clone();
    paused.pause("maintenance");
    let mut obs = Obs::calm(90_000, 5, 32);
    obs.busy = 32;
    obs.idle = 0;
    obs.queue_len = 500;
    let (decision, after) = decide(&policy, &paused, &obs.view());
    assert_eq!(
        decision.action,
        Action::Hold(HoldReason::Paused("maintenance".to_owned()))
    );
    let mut resumed = after;
    resumed.resume();
    assert_eq!(resumed.mode(), &Mode::Auto);

    let advise = quick_policy("advise_only: true\n");
    let state = run_calm(&advise, ScalerState::new(0, 6), 0, 60_000);
    let mut obs = Obs::calm(61_000, 1, 6);
    obs.busy = 6;
    obs.idle = 0;
    obs.queue_len = 200;
    let (decision, next) = decide(&advise, &state, &obs.view());
    assert!(matches!(
        decision.action,
        Action::Advise { workers: 32, .. }
    ));
    assert_eq!(next.workers(), 6, "advice changes nothing");
    assert_eq!(next.changes(), 0);
}

#[test]
fn a_change_in_flight_holds() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 60_000);
    let mut obs = Obs::calm(61_000, 1, 6);
    obs.busy = 6;
    obs.idle = 0;
    obs.queue_len = 200;
    obs.in_flight = true;
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.action, Action::Hold(HoldReason::ChangeInFlight));
}

#[test]
fn no_finished_request_keeps_learning() {
    let policy = quick_policy("");
    let mut state = ScalerState::new(0, 6);
    let mut now = 0;
    for _ in 0..100 {
        now += 5000;
        let mut obs = Obs::calm(now, 5, 6);
        obs.service.clear();
        let (decision, next) = decide(&policy, &state, &obs.view());
        assert_eq!(decision.figures.mean_service_s, None);
        assert_eq!(decision.figures.model_workers, None);
        assert_eq!(decision.action, Action::Hold(HoldReason::Learning));
        state = next;
    }
    // Long requests that never finish still trigger the emergency rule
    // once every worker is busy and a request waits per worker.
    let mut obs = Obs::calm(now + 1000, 1, 6);
    obs.service.clear();
    obs.busy = 6;
    obs.idle = 0;
    obs.queue_len = 6;
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert_eq!(decision.resize_to(), Some(8));
}

#[test]
fn policy_with_min_above_max_is_rejected_with_every_problem() {
    let error =
        Policy::from_yaml("min_workers: 9\nmax_workers: 3\ncooldown_s: 0\n").expect_err("invalid");
    let text = error.to_string();
    assert!(
        text.contains("min_workers: '9': is above max_workers '3'"),
        "{text}"
    );
    assert!(
        text.contains("cooldown_s: '0': must be a positive number"),
        "{text}"
    );
}

#[test]
fn a_cpu_bound_pool_gets_no_more_workers() {
    let policy = quick_policy("");
    let state = run_calm(&policy, ScalerState::new(0, 6), 0, 120_000);
    assert_eq!(state.phase(), Phase::Steady);
    // Saturated with a growing queue: an emergency by the queue alone.
    let mut obs = Obs::calm(121_000, 1, state.workers());
    obs.busy = obs.total;
    obs.idle = 0;
    obs.queue_len = 60;
    obs.cpu_limit = Some(2.0);

    // The workers leave CPU to spare: more workers help.
    obs.cpu_used = Some(1.2);
    let (decision, _) = decide(&policy, &state, &obs.view());
    assert!(decision.figures.emergency);
    assert!(!decision.figures.cpu_bound);
    assert_eq!(decision.action.rule(), "emergency");

    // The workers use both cores: more workers would only share them.
    obs.cpu_used = Some(1.95);
    let (decision, next) = decide(&policy, &state, &obs.view());
    assert!(decision.figures.emergency && decision.figures.cpu_bound);
    assert_eq!(
        decision.action,
        Action::Hold(HoldReason::CpuBound {
            used_millicores: 1950,
            limit_millicores: 2000
        })
    );
    assert_eq!(decision.action.rule(), "cpu_bound");
    assert_eq!(decision.figures.cpu_cores_used, Some(1.95));
    assert_eq!(decision.figures.cpu_cores_limit, Some(2.0));
    assert_eq!(next.workers(), state.workers());
    assert_eq!(next.changes(), state.changes());

    // The model's scale-up is held the same way: three times the load.
    let mut busy = Obs::calm(121_000, 1, state.workers());
    busy.accepted = 400;
    busy.service = vec![0.05; 400];
    busy.busy = busy.total;
    busy.idle = 0;
    busy.cpu_limit = Some(2.0);
    busy.cpu_used = Some(2.0);
    let (decision, _) = decide(&policy, &state, &busy.view());
    assert!(
        decision.figures.needed_workers.expect("needed") > state.workers(),
        "{:?}",
        decision.figures
    );
    assert_eq!(decision.action.rule(), "cpu_bound");
    busy.cpu_used = Some(1.0);
    let (decision, _) = decide(&policy, &state, &busy.view());
    // Not CPU-bound: the usual rules (a change a minute ago is still
    // within its stabilisation window).
    assert!(
        matches!(decision.action.rule(), "scale_up" | "stabilising"),
        "{:?}",
        decision.action
    );

    // Unknown or nonsensical CPU figures never block a scale-up.
    for (used, limit) in [
        (None, Some(2.0)),
        (Some(1.9), None),
        (Some(f64::NAN), Some(2.0)),
    ] {
        obs.cpu_used = used;
        obs.cpu_limit = limit;
        let (decision, _) = decide(&policy, &state, &obs.view());
        assert!(!decision.figures.cpu_bound, "{used:?} {limit:?}");
        assert_eq!(decision.action.rule(), "emergency");
    }
}
