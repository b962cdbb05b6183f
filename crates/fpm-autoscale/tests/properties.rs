//! Property tests of `decide` over random (and often nonsensical)
//! observation sequences: caps, minimum, spacing of changes (stabilisation
//! window, cooldown, no scale-down within the oscillation window after a
//! scale-up), purity.

use fpm_autoscale::{decide, Action, Observation, Policy, PolicySpec, ResizeReason, ScalerState};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    accepted: u64,
    queue_len: u32,
    busy: u32,
    total: u32,
    pss: Vec<u64>,
    service: Vec<f64>,
    cpu_used: Option<f64>,
    cpu_limit: Option<f64>,
    budget: Option<u64>,
    share_cap: Option<u32>,
    in_flight: bool,
}

fn odd_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => 0.0..2.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0),
        1 => Just(0.0),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        (
            prop_oneof![1 => Just(0u64), 8 => 100u64..12_000, 1 => 50_000u64..200_000],
            0u64..3000,
            prop_oneof![3 => Just(0u32), 2 => 0u32..400],
            0u32..48,
            0u32..48,
        ),
        (
            prop::collection::vec(
                prop_oneof![1 => Just(0u64), 6 => (20 * MIB)..(200 * MIB)],
                0..6,
            ),
            prop::collection::vec(odd_float(), 0..30),
            prop::option::of(odd_float()),
            prop::option::of(prop_oneof![Just(0.0), 0.5..16.0f64, Just(f64::NAN)]),
        ),
        (
            prop::option::of(0u64..(8 * 1024 * MIB)),
            prop::option::of(0u32..40),
            prop::bool::weighted(0.1),
        ),
    )
        .prop_map(
            |(
                (dt_ms, accepted, queue_len, busy, total),
                (pss, service, cpu_used, cpu_limit),
                (budget, share_cap, in_flight),
            )| Step {
                dt_ms,
                accepted,
                queue_len,
                busy,
                total,
                pss,
                service,
                cpu_used,
                cpu_limit,
                budget,
                share_cap,
                in_flight,
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        (1u32..6, 0u32..60, 10.0..300.0f64, 0.5..10.0f64, 0.0..0.3f64),
        (
            prop_oneof![Just(0.0), 0.0..400.0f64],
            prop_oneof![Just(0.0), 1.0..100.0f64],
        ),
    )
        .prop_map(
            |((min, extra, window, cooldown, tolerance), (oscillation, wait_target))| {
                let mut spec = PolicySpec {
                    min_workers: min,
                    max_workers: min + extra,
                    stabilisation_window_s: window,
                    cooldown_s: cooldown,
                    tolerance,
                    oscillation_window_s: oscillation,
                    wait_target_ms: wait_target,
                    ..PolicySpec::default()
                };
                // Learn fast so that random sequences reach the steady phase.
                spec.learning.min_samples = 20;
                spec.learning.min_duration_s = 5.0;
                spec.learning.min_confidence = 0.3;
                Policy::new(spec).expect("valid by construction")
            },
        )
}

fn observation(step: &Step, now_ms: u64) -> Observation<'_> {
    Observation {
        now_ms,
        accepted: step.accepted,
        queue_len: step.queue_len,
        busy: step.busy.min(step.total),
        idle: step.total.saturating_sub(step.busy),
        total: step.total,
        worker_pss_bytes: &step.pss,
        finished_service_s: &step.service,
        cpu_cores_used: step.cpu_used,
        cpu_cores_limit: step.cpu_limit,
        memory_budget_bytes: step.budget,
        shared_memory_bytes: 128 * MIB,
        share_cap_workers: step.share_cap,
        change_in_flight: step.in_flight,
    }
}

/// Runs `decide` over `steps` and checks every decision; returns how many
/// resizes of each kind happened (emergency, up, down) so that callers can
/// make sure the interesting rules were exercised.
fn check_sequence(
    policy: &Policy,
    initial: u32,
    steps: &[Step],
) -> Result<[usize; 3], TestCaseError> {
    let spec = policy.spec().clone();
    let mut state = ScalerState::new(0, initial);
    let mut now_ms = 0u64;
    let mut last_resize_ms: Option<u64> = None;
    let mut last_up_ms: Option<u64> = None;
    let mut counts = [0; 3];
    for step in steps {
        now_ms += step.dt_ms;
        let obs = observation(step, now_ms);
        let (decision, next) = decide(policy, &state, &obs);

        // Pure: the same inputs give the same outputs.
        let (again, next_again) = decide(policy, &state, &obs);
        prop_assert_eq!(format!("{decision:?}"), format!("{again:?}"));
        prop_assert_eq!(format!("{next:?}"), format!("{next_again:?}"));

        if decision.figures.cpu_bound {
            // A CPU-bound pool is never grown by the policy itself.
            let grown = matches!(
                decision.action,
                Action::Resize {
                    reason: ResizeReason::Emergency | ResizeReason::ScaleUp,
                    ..
                }
            );
            prop_assert!(!grown, "{:?} while CPU-bound", decision.action);
        }
        if let Action::Resize { workers, reason } = decision.action {
            prop_assert!(workers >= spec.min_workers, "{workers} below min");
            prop_assert!(workers <= spec.max_workers, "{workers} above max");
            prop_assert!(workers <= decision.figures.upper);
            if let Some(ceiling) = decision.figures.memory_ceiling {
                prop_assert!(
                    workers <= ceiling,
                    "{workers} above memory ceiling {ceiling}"
                );
            }
            prop_assert!(!step.in_flight, "no change while one is in flight");
            let since_s = last_resize_ms.map(|last| (now_ms - last) as f64 / 1000.0);
            if reason == ResizeReason::ScaleDown {
                // No scale-down within the oscillation window after a
                // scale-up of any kind: the rule that rules out up-down-up
                // and down-up-down within the window.
                let since_up_s = last_up_ms.map(|up| (now_ms - up) as f64 / 1000.0);
                prop_assert!(
                    since_up_s.is_none_or(|s| s >= spec.oscillation_window_s),
                    "scale-down {since_up_s:?} s after a scale-up"
                );
            }
            if workers > state.workers() {
                last_up_ms = Some(now_ms);
            }
            match reason {
                ResizeReason::ScaleUp | ResizeReason::ScaleDown => {
                    prop_assert!(
                        since_s.is_none_or(|s| s >= spec.stabilisation_window_s),
                        "{reason:?} {since_s:?} s after the previous change"
                    );
                    counts[if reason == ResizeReason::ScaleUp {
                        1
                    } else {
                        2
                    }] += 1;
                }
                ResizeReason::Emergency => {
                    prop_assert!(since_s.is_none_or(|s| s >= spec.cooldown_s));
                    prop_assert!(decision.figures.emergency);
                    counts[0] += 1;
                }
                // Safety (the cap shrank) and operator pins are not damped;
                // neither happens without a cause in the input.
                ResizeReason::OutOfBounds | ResizeReason::Pinned => {}
            }
            prop_assert_eq!(next.workers(), workers);
            last_resize_ms = Some(now_ms);
        } else {
            prop_assert_eq!(next.workers(), state.workers());
        }
        state = next;
    }
    Ok(counts)
}

/// A plausible workload: segments of constant rate, observed every 1 to
/// 5 s, with a pool that serves what it can and queues the rest.
fn workload() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec((1.0..200.0f64, 20usize..120, prop::bool::ANY), 2..6).prop_map(
        |segments| {
            let mut steps = Vec::new();
            let mut total = 8u32;
            for (index, (rate, count, fast)) in segments.into_iter().enumerate() {
                for i in 0..count {
                    let dt_s = if fast { 1 } else { 5 };
                    let offered = rate * 0.05;
                    let busy = (offered.ceil() as u32).min(total);
                    let overloaded = offered > f64::from(total);
                    let queue_len = if overloaded { (i as u32 + 1) * 20 } else { 0 };
                    let accepted = (rate * dt_s as f64) as u64;
                    steps.push(Step {
                        dt_ms: dt_s * 1000,
                        accepted,
                        queue_len,
                        busy,
                        total,
                        pss: vec![60 * MIB; total as usize],
                        service: vec![0.05; accepted.min(500) as usize],
                        cpu_used: None,
                        cpu_limit: None,
                        budget: Some(4096 * MIB),
                        share_cap: None,
                        in_flight: false,
                    });
                    // The pool follows whatever it was told, roughly.
                    total = total.max(1 + index as u32);
                }
            }
            steps
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn decisions_respect_caps_spacing_and_purity(
        policy in policy(),
        initial in 0u32..80,
        steps in prop::collection::vec(step(), 1..150),
    ) {
        check_sequence(&policy, initial, &steps)?;
    }

    #[test]
    fn plausible_workloads_respect_the_same_rules(
        policy in policy(),
        steps in workload(),
    ) {
        check_sequence(&policy, 8, &steps)?;
    }
}

/// The random tests above only mean something if they reach every rule:
/// this replays fixed plausible workloads and requires all three kinds.
#[test]
fn the_rules_are_exercised() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut totals = [0; 3];
    for _ in 0..100 {
        let policy = policy().new_tree(&mut runner).expect("tree").current();
        let steps = workload().new_tree(&mut runner).expect("tree").current();
        let counts = check_sequence(&policy, 8, &steps).expect("rules hold");
        for (total, count) in totals.iter_mut().zip(counts) {
            *total += count;
        }
    }
    assert!(
        totals.iter().all(|&count| count > 0),
        "emergency, up, down: {totals:?}"
    );
}
