//! The scaler state survives a restart: it serialises, reads back equal,
//! and the restored scaler decides exactly as the original would have.
//! Also the stable rule names used for events and metric labels, and a
//! wall clock that steps back.

use std::collections::HashSet;

use fpm_autoscale::{
    decide, Action, HoldReason, Mode, Observation, Phase, Policy, ResizeReason, ScalerState,
};

const MIB: u64 = 1024 * 1024;
/// A wall-clock epoch in milliseconds (2026-12-02), as the daemon passes.
const EPOCH_MS: u64 = 1_795_000_000_000;

struct Look {
    now_ms: u64,
    accepted: u64,
    queue: u32,
    busy: u32,
    total: u32,
    pss: Vec<u64>,
    service: Vec<f64>,
}

impl Look {
    fn calm(now_ms: u64, total: u32) -> Look {
        Look {
            now_ms,
            accepted: 200,
            queue: 0,
            busy: 2.min(total),
            total,
            pss: vec![60 * MIB; total as usize],
            service: vec![0.05; 200],
        }
    }

    fn view(&self) -> Observation<'_> {
        Observation {
            now_ms: self.now_ms,
            accepted: self.accepted,
            queue_len: self.queue,
            busy: self.busy,
            idle: self.total.saturating_sub(self.busy),
            total: self.total,
            worker_pss_bytes: &self.pss,
            finished_service_s: &self.service,
            cpu_cores_used: Some(0.4),
            cpu_cores_limit: Some(2.0),
            memory_budget_bytes: Some(4096 * MIB),
            shared_memory_bytes: 128 * MIB,
            share_cap_workers: None,
            change_in_flight: false,
        }
    }
}

fn policy() -> Policy {
    Policy::from_yaml(
        "min_workers: 2\nmax_workers: 32\nstabilisation_window_s: 60\nlearning:\n  min_samples: 100\n  min_duration_s: 30\n  min_confidence: 0.5\n",
    )
    .expect("valid policy")
}

/// A scaler that has learned, changed the pool and holds recommendations.
fn seasoned() -> ScalerState {
    let policy = policy();
    let mut state = ScalerState::new(EPOCH_MS, 16);
    let mut now = EPOCH_MS;
    for _ in 0..120 {
        now += 5000;
        let look = Look::calm(now, state.workers());
        state = decide(&policy, &state, &look.view()).1;
    }
    assert_eq!(state.phase(), Phase::Steady);
    assert!(state.changes() >= 1, "the scaler moved the pool");
    state
}

#[test]
fn state_round_trips_through_json_and_decides_the_same() {
    let policy = policy();
    let mut state = seasoned();
    state.pin(12, Some(EPOCH_MS + 3_600_000));
    let text = serde_json::to_string(&state).expect("serialise");
    let restored: ScalerState = serde_json::from_str(&text).expect("deserialise");
    assert_eq!(restored, state);
    assert_eq!(restored.workers(), state.workers());
    assert_eq!(
        restored.mode(),
        &Mode::Pinned {
            workers: 12,
            until_ms: Some(EPOCH_MS + 3_600_000)
        }
    );
    assert!(text.contains("\"pinned\""), "{text}");

    // The restored scaler goes on exactly like the original.
    let mut a = state;
    let mut b = restored;
    a.release();
    b.release();
    let start = 600_000 + EPOCH_MS + 5000;
    for i in 0..40u64 {
        let mut look = Look::calm(start + i * 5000, a.workers());
        if i == 20 {
            look.busy = look.total;
            look.queue = 200;
        }
        let (da, na) = decide(&policy, &a, &look.view());
        let (db, nb) = decide(&policy, &b, &look.view());
        assert_eq!(da, db);
        assert_eq!(na, nb);
        a = na;
        b = nb;
    }
    assert!(a.changes() > 1, "the emergency moved the pool");
}

#[test]
fn a_paused_state_and_a_decision_serialise_with_stable_names() {
    let mut state = ScalerState::new(EPOCH_MS, 4);
    state.pause("deploy");
    let text = serde_json::to_string(&state).expect("serialise");
    assert!(
        text.contains("\"paused\":{\"reason\":\"deploy\"}"),
        "{text}"
    );
    assert!(text.contains("\"learning\""), "{text}");
    let back: ScalerState = serde_json::from_str(&text).expect("deserialise");
    assert_eq!(back, state);

    let look = Look::calm(EPOCH_MS + 5000, 4);
    let (decision, _) = decide(&policy(), &state, &look.view());
    assert_eq!(decision.action.rule(), "paused");
    let text = serde_json::to_string(&decision).expect("serialise");
    let back = serde_json::from_str(&text).expect("deserialise");
    assert_eq!(decision, back);
}

#[test]
fn a_broken_state_file_is_an_error_not_a_panic() {
    let text = serde_json::to_string(&seasoned()).expect("serialise");
    let truncated = &text[..text.len() / 2];
    assert!(serde_json::from_str::<ScalerState>(truncated).is_err());
    let wrong = text.replace("\"workers\":", "\"workers\":\"many\",\"x\":");
    assert!(serde_json::from_str::<ScalerState>(&wrong).is_err());
}

#[test]
fn every_rule_has_a_distinct_snake_case_name() {
    let holds = [
        HoldReason::NotNewer,
        HoldReason::Paused("x".to_owned()),
        HoldReason::Pinned,
        HoldReason::ChangeInFlight,
        HoldReason::CapBelowMin { upper: 1, min: 2 },
        HoldReason::Learning,
        HoldReason::Cooldown,
        HoldReason::NoServiceTime,
        HoldReason::WithinTolerance,
        HoldReason::Stabilising,
        HoldReason::NotWorthIt,
        HoldReason::AfterScaleUp,
        HoldReason::CpuBound {
            used_millicores: 1990,
            limit_millicores: 2000,
        },
    ];
    let resizes = [
        ResizeReason::Emergency,
        ResizeReason::ScaleUp,
        ResizeReason::ScaleDown,
        ResizeReason::OutOfBounds,
        ResizeReason::Pinned,
    ];
    let mut hold_names = HashSet::new();
    for hold in &holds {
        let name = hold.rule();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name}"
        );
        assert!(hold_names.insert(name), "duplicate {name}");
        assert_eq!(Action::Hold(hold.clone()).rule(), name);
    }
    let mut resize_names = HashSet::new();
    for reason in resizes {
        let name = reason.rule();
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        assert!(resize_names.insert(name), "duplicate {name}");
        let action = Action::Resize { workers: 3, reason };
        assert_eq!(action.rule(), name);
    }
    assert_eq!(ResizeReason::Emergency.rule(), "emergency");
    assert_eq!(ResizeReason::ScaleUp.rule(), "scale_up");
    assert_eq!(HoldReason::Learning.rule(), "learning");
    let cpu = HoldReason::CpuBound {
        used_millicores: 1990,
        limit_millicores: 2000,
    };
    assert_eq!(cpu.rule(), "cpu_bound");
    assert!(cpu.to_string().contains("1.99 of 2.00 cores"), "{cpu}");
}

#[test]
fn a_clock_stepping_back_does_not_freeze_the_scaler() {
    let policy = policy();
    let state = seasoned();
    let last_change = state.last_change_ms().expect("changed");
    // The wall clock steps back one hour (NTP, or a state restored on a
    // machine whose clock was ahead).
    let now = EPOCH_MS + 600_000 - 3_600_000;
    let look = Look::calm(now, state.workers());
    let (decision, next) = decide(&policy, &state, &look.view());
    assert_ne!(decision.action, Action::Hold(HoldReason::NotNewer));
    let moved = next.last_change_ms().expect("kept");
    assert_eq!(
        last_change - moved,
        EPOCH_MS + 600_000 - now,
        "times moved back with the clock"
    );
    // Later looks on the stepped clock are newer and used.
    let look = Look::calm(now + 5000, next.workers());
    let (decision, _) = decide(&policy, &next, &look.view());
    assert_ne!(decision.action, Action::Hold(HoldReason::NotNewer));
    assert!(decision.figures.recent_rate.is_some());
}
