//! The decision function: `decide(policy, state, observation)` returns what
//! to do with a pool and the scaler's next state, and nothing else.
//!
//! Order of the rules (each one returns):
//! 1. an observation that is not newer than the previous one is ignored;
//! 2. estimates are updated (always, even while paused or pinned, so the
//!    model keeps learning);
//! 3. the effective cap is `min(max_workers, memory ceiling, CPU ceiling,
//!    budget share)`; if it is below `min_workers` the scaler holds and
//!    says so, because no size satisfies both;
//! 4. a pin (manual override) sets the size, clamped to the caps;
//!    pause holds; a change in flight holds;
//! 5. a size outside `[min, cap]` is corrected at once (the budget shrank);
//! 6. the emergency rule: every worker busy (with `pm = ondemand`, the
//!    cap reached), the queue growing (longer than at the last look, or
//!    the short window's arrivals beyond what the workers serve), and the
//!    queue alone worth more than `emergency_wait_ms` (or the wait target
//!    if that is larger): scale up at once to the cap, only the cooldown
//!    applies;
//!    A CPU-bound pool (its workers use at least `cpu_bound_fraction` of
//!    the CPU available) gets no worker from this rule or the next ones:
//!    more workers would share the same cores and slow every request;
//!    the hold says so with the figures;
//! 7. while learning nothing else happens (no scale-down, no model-based
//!    scale-up), and emergencies are capped at the learning cap;
//! 8. otherwise, at most one change per stabilisation window: up as soon
//!    as the pool has fewer workers than the model needs (to the model's
//!    size with headroom); down to the largest recommendation of the whole
//!    window when that is below the pool by more than the tolerance band,
//!    only if the saving over a window beats the change's cost, and never
//!    within `oscillation_window_s` of the last scale-up.
//!
//! Sizing: the model's size is the smallest that keeps `wait_quantile` of
//! the requests under `wait_target_ms`; the default target of 0 means
//! "p99 wait = 0" (at most 1 % of requests wait at all).
//!
//! Why no oscillation: ups cannot wait (requests would), downs can (only
//! memory is spent). A down at least `oscillation_window_s` after the last
//! up means that of any three consecutive changes alternating in direction
//! the first and the third are at least that far apart: up, down, up has
//! the down a window after the first up; down, up, down has the second
//! down a window after the up. Only forced changes (a shrinking budget, an
//! operator's pin) are exempt.
//!
//! Why a change is expensive: every `pm.*` change reloads the master, which
//! restarts all workers and flushes OPcache (facts 1 and 2), so the policy
//! counts a change as `change_cost_s` seconds of the whole pool.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::erlang::servers_for_wait;
use crate::learn::Estimates;
use crate::observe::Observation;
use crate::policy::Policy;

/// Observations further apart than this do not yield a rate sample: the
/// counter delta then spans an unknown gap (a stalled collector, a
/// suspended machine) and would distort the average.
const MAX_RATE_GAP_MS: u64 = 60_000;
/// The span of looks `Figures::needed_now` reads its rate from: a few
/// seconds, so that it drops within seconds of a peak's end while one
/// look's noise does not decide it (and a quarter of it for the fast
/// reading).
const NOW_WINDOW_MS: u64 = 4_000;

/// An observation this much older than the previous one is not a stale
/// look but a clock that stepped back (the daemon passes wall-clock time,
/// and a restored state may come from before an NTP correction): the
/// stored times are moved back with it instead of ignoring every look
/// until the clock catches up.
const CLOCK_STEP_MS: u64 = MAX_RATE_GAP_MS;

/// Where the scaler is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Gathering baselines; only emergencies change the pool.
    Learning,
    /// Model-based decisions.
    Steady,
}

/// Operator control over a pool's scaler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The policy decides.
    Auto,
    /// Decisions are held until resumed.
    Paused {
        /// Why the operator paused it.
        reason: String,
    },
    /// The pool is held at `workers` until released or until `until_ms`.
    Pinned {
        /// Requested size (clamped to the caps when applied).
        workers: u32,
        /// Time at which the pin ends by itself.
        until_ms: Option<u64>,
    },
}

/// What the scaler remembers between observations.
///
/// Serialisable so that the daemon can store it (with the size it applied)
/// and restore it after a restart instead of learning the pool again. The
/// stored times are the caller's `now_ms` clock: a state restored under a
/// different clock is handled as a clock step (see [`decide`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// Size the scaler last set (or was created with).
    workers: u32,
    phase: Phase,
    mode: Mode,
    started_ms: u64,
    last_ms: Option<u64>,
    last_queue: u32,
    last_change_ms: Option<u64>,
    /// Time of the last change that made the pool bigger.
    last_up_ms: Option<u64>,
    changes: u64,
    /// Recent clamped model recommendations `(time, workers)`.
    recommendations: VecDeque<(u64, u32)>,
    steady_since_ms: Option<u64>,
    estimates: Estimates,
}

impl ScalerState {
    /// A fresh scaler for a pool currently running `workers` workers.
    pub fn new(now_ms: u64, workers: u32) -> ScalerState {
        ScalerState {
            workers,
            phase: Phase::Learning,
            mode: Mode::Auto,
            started_ms: now_ms,
            last_ms: None,
            last_queue: 0,
            last_change_ms: None,
            last_up_ms: None,
            changes: 0,
            recommendations: VecDeque::new(),
            steady_since_ms: None,
            estimates: Estimates::default(),
        }
    }

    /// Pins the pool to `workers` until released or until `until_ms`.
    pub fn pin(&mut self, workers: u32, until_ms: Option<u64>) {
        self.mode = Mode::Pinned { workers, until_ms };
    }

    /// Ends a pin or a pause.
    pub fn release(&mut self) {
        self.mode = Mode::Auto;
    }

    /// Holds every decision until [`ScalerState::resume`].
    pub fn pause(&mut self, reason: &str) {
        self.mode = Mode::Paused {
            reason: reason.to_owned(),
        };
    }

    /// Same as [`ScalerState::release`]; reads better after a pause.
    pub fn resume(&mut self) {
        self.release();
    }

    /// Size the scaler last set.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// Learning or steady.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Auto, paused or pinned.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Changes decided so far (resizes, not holds or advice).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Time of the last change.
    pub fn last_change_ms(&self) -> Option<u64> {
        self.last_change_ms
    }

    /// Time of the last change that made the pool bigger.
    pub fn last_up_ms(&self) -> Option<u64> {
        self.last_up_ms
    }

    /// The running estimates.
    pub fn estimates(&self) -> &Estimates {
        &self.estimates
    }

    /// Moves every stored time back by `back_ms`, keeping the intervals
    /// between them (cooldowns, windows, pins) as they were.
    fn shift_back(&mut self, back_ms: u64) {
        let shift = |t: u64| t.saturating_sub(back_ms);
        self.started_ms = shift(self.started_ms);
        // No rate sample across the step: the gap is unknown.
        self.last_ms = None;
        self.last_change_ms = self.last_change_ms.map(shift);
        self.last_up_ms = self.last_up_ms.map(shift);
        self.steady_since_ms = self.steady_since_ms.map(shift);
        for (at, _) in &mut self.recommendations {
            *at = shift(*at);
        }
        if let Mode::Pinned {
            until_ms: Some(until),
            ..
        } = &mut self.mode
        {
            *until = shift(*until);
        }
        self.estimates.shift_back(back_ms);
    }
}

/// The figures a decision was made from, for events and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Learning or steady.
    pub phase: Phase,
    /// Confidence in the estimates, 0 to 1.
    pub confidence: f64,
    /// Size before this decision.
    pub current_workers: u32,
    /// Mean arrival rate (requests per second): the long window's rate.
    pub arrival_rate: Option<f64>,
    /// Arrival rate over the last interval, queue growth included.
    pub recent_rate: Option<f64>,
    /// Arrival rate over the short window (the last few looks), exact
    /// from the counter: what the emergency rule and a surge see.
    pub short_rate: Option<f64>,
    /// Arrival rate over the long window, exact from the counter: what
    /// the pool is sized for.
    pub long_rate: Option<f64>,
    /// CPU the pool's workers used over the last interval, in cores.
    pub cpu_cores_used: Option<f64>,
    /// CPU available to the pool (host or cgroup), in cores.
    pub cpu_cores_limit: Option<f64>,
    /// Rate the model plans for: mean plus variability headroom.
    pub planned_rate: Option<f64>,
    /// Mean service time, seconds.
    pub mean_service_s: Option<f64>,
    /// Squared coefficient of variation of the service time.
    pub service_scv: f64,
    /// Offered load: planned rate times mean service time (erlangs).
    pub offered_load: Option<f64>,
    /// Fewest workers that meet the wait target under the model, before
    /// caps; the pool scales up only when it has fewer than this.
    pub needed_workers: Option<u32>,
    /// `needed_workers` plus headroom: the size a change goes to.
    pub model_workers: Option<u32>,
    /// Fewest workers that meet the wait target at the rate of now: the
    /// larger of the last second's and the last four seconds' (queue
    /// growth included), without the windows' memory of a past peak. A
    /// pool with waiting requests claims this on a shared budget
    /// (`caps::board_demand`).
    pub needed_now: Option<u32>,
    /// The same at the last four seconds' rate, or the last second's when
    /// that fell below half of it: what a pool without waiting requests
    /// claims, so that it gives way within a look or two of its peak's
    /// end.
    pub needed_now_low: Option<u32>,
    /// Workers that fit in the memory budget, if known.
    pub memory_ceiling: Option<u32>,
    /// Workers the CPU limit can keep busy, if known.
    pub cpu_ceiling: Option<u32>,
    /// Effective cap: the smallest of max, ceilings and budget share.
    pub upper: u32,
    /// 95th percentile of per-worker PSS, bytes.
    pub p95_pss_bytes: Option<u64>,
    /// Estimated wait of the last request in the queue, seconds.
    pub queue_wait_s: f64,
    /// The emergency condition held in this observation.
    pub emergency: bool,
    /// The pool's workers use the CPU available to them (at least
    /// `cpu_bound_fraction` of `cpu_cores_limit`): no worker is added.
    pub cpu_bound: bool,
}

/// Why the scaler holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    /// The observation is not newer than the previous one.
    NotNewer,
    /// The operator paused the scaler.
    Paused(String),
    /// The pool is pinned and already at the pinned size.
    Pinned,
    /// A previous change is still being applied.
    ChangeInFlight,
    /// The caps leave no size at or above the minimum.
    CapBelowMin {
        /// The effective cap.
        upper: u32,
        /// The configured minimum.
        min: u32,
    },
    /// Learning; no queueing that would justify a change.
    Learning,
    /// Too soon after the previous change.
    Cooldown,
    /// No finished request yet, so no service time to size with.
    NoServiceTime,
    /// The recommendation is within the tolerance band.
    WithinTolerance,
    /// A scale-down is not recommended for a whole window yet.
    Stabilising,
    /// A scale-down would save less than the change costs.
    NotWorthIt,
    /// A scale-down so soon after a scale-up could start an oscillation.
    AfterScaleUp,
    /// The model needs more workers but the pool already uses all the CPU
    /// it may use: more workers would only share the same cores and make
    /// every request slower, so none are added.
    CpuBound {
        /// CPU the pool's workers used over the last interval, in
        /// thousandths of a core.
        used_millicores: u32,
        /// CPU available to the pool (host cores or cgroup quota), in
        /// thousandths of a core.
        limit_millicores: u32,
    },
}

impl HoldReason {
    /// Stable snake_case name of the rule, for events and metric labels.
    pub fn rule(&self) -> &'static str {
        match self {
            HoldReason::NotNewer => "not_newer",
            HoldReason::Paused(_) => "paused",
            HoldReason::Pinned => "pinned",
            HoldReason::ChangeInFlight => "change_in_flight",
            HoldReason::CapBelowMin { .. } => "cap_below_min",
            HoldReason::Learning => "learning",
            HoldReason::Cooldown => "cooldown",
            HoldReason::NoServiceTime => "no_service_time",
            HoldReason::WithinTolerance => "within_tolerance",
            HoldReason::Stabilising => "stabilising",
            HoldReason::NotWorthIt => "not_worth_it",
            HoldReason::AfterScaleUp => "after_scale_up",
            HoldReason::CpuBound { .. } => "cpu_bound",
        }
    }
}

/// Why the scaler resizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeReason {
    /// Every worker busy and the queue growing beyond the emergency wait.
    Emergency,
    /// The queueing model needs more workers.
    ScaleUp,
    /// The model has needed fewer workers for a whole window.
    ScaleDown,
    /// The size was above the cap (budget shrank) or below the minimum.
    OutOfBounds,
    /// An operator pin.
    Pinned,
}

impl ResizeReason {
    /// Stable snake_case name of the rule, for events and metric labels.
    pub fn rule(&self) -> &'static str {
        match self {
            ResizeReason::Emergency => "emergency",
            ResizeReason::ScaleUp => "scale_up",
            ResizeReason::ScaleDown => "scale_down",
            ResizeReason::OutOfBounds => "out_of_bounds",
            ResizeReason::Pinned => "pinned",
        }
    }
}

/// What to do with the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep the current size.
    Hold(HoldReason),
    /// Apply `workers` as the pool's cap (`pm.max_children`).
    Resize {
        /// New size.
        workers: u32,
        /// Why.
        reason: ResizeReason,
    },
    /// Advise-only mode: this resize would have been applied.
    Advise {
        /// Advised size.
        workers: u32,
        /// Why.
        reason: ResizeReason,
    },
}

/// A decision with the figures that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// The numbers behind it.
    pub figures: Figures,
}

impl Action {
    /// Stable snake_case name of the rule behind this action (the hold or
    /// resize reason's [`HoldReason::rule`] / [`ResizeReason::rule`]).
    pub fn rule(&self) -> &'static str {
        match self {
            Action::Hold(reason) => reason.rule(),
            Action::Resize { reason, .. } | Action::Advise { reason, .. } => reason.rule(),
        }
    }
}

impl Decision {
    /// The size to apply, if this decision changes the pool.
    pub fn resize_to(&self) -> Option<u32> {
        match self.action {
            Action::Resize { workers, .. } => Some(workers),
            _ => None,
        }
    }
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldReason::NotNewer => write!(f, "observation is not newer than the previous one"),
            HoldReason::Paused(reason) => write!(f, "paused: {reason}"),
            HoldReason::Pinned => write!(f, "pinned by an operator"),
            HoldReason::ChangeInFlight => write!(f, "a change is being applied"),
            HoldReason::CapBelowMin { upper, min } => write!(
                f,
                "budget and limits allow {upper} workers, below the minimum of {min}"
            ),
            HoldReason::Learning => write!(f, "learning"),
            HoldReason::Cooldown => write!(f, "cooling down after the last change"),
            HoldReason::NoServiceTime => write!(f, "no finished request yet"),
            HoldReason::WithinTolerance => write!(f, "within the tolerance band"),
            HoldReason::Stabilising => write!(f, "stabilising after the last change"),
            HoldReason::NotWorthIt => write!(f, "a change would cost more than it saves"),
            HoldReason::AfterScaleUp => {
                write!(f, "too soon after a scale-up to scale down again")
            }
            HoldReason::CpuBound {
                used_millicores,
                limit_millicores,
            } => write!(
                f,
                "CPU-bound: the pool uses {:.2} of {:.2} cores; more workers would not serve more",
                f64::from(*used_millicores) / 1000.0,
                f64::from(*limit_millicores) / 1000.0
            ),
        }
    }
}

impl fmt::Display for ResizeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ResizeReason::Emergency => "every worker busy and the queue growing",
            ResizeReason::ScaleUp => "the model needs more workers",
            ResizeReason::ScaleDown => "the model needed fewer workers for a whole window",
            ResizeReason::OutOfBounds => "size outside the allowed range",
            ResizeReason::Pinned => "pinned by an operator",
        };
        f.write_str(text)
    }
}

/// Decides what to do with a pool. Pure: the same inputs always give the
/// same outputs; the caller stores the returned state for the next call.
pub fn decide(
    policy: &Policy,
    state: &ScalerState,
    obs: &Observation<'_>,
) -> (Decision, ScalerState) {
    if let Some(last) = state.last_ms {
        if obs.now_ms.saturating_add(CLOCK_STEP_MS) < last {
            let mut rebased = state.clone();
            rebased.shift_back(last - obs.now_ms);
            return decide(policy, &rebased, obs);
        }
    }
    if state.last_ms.is_some_and(|last| obs.now_ms <= last) {
        let figures = figures(policy, state, obs, None, false);
        let decision = Decision {
            action: Action::Hold(HoldReason::NotNewer),
            figures,
        };
        return (decision, state.clone());
    }
    let mut next = state.clone();
    let recent_rate = update_estimates(policy, &mut next, obs);
    update_phase(policy, &mut next, obs.now_ms);

    let emergency = is_emergency(policy, state, &next, obs);
    let figures = figures(policy, &next, obs, recent_rate, emergency);
    next.last_queue = obs.queue_len;

    let action = choose(policy, &mut next, obs, &figures);
    let action = finish(policy, &mut next, obs, action);
    (Decision { action, figures }, next)
}

fn update_estimates(policy: &Policy, next: &mut ScalerState, obs: &Observation<'_>) -> Option<f64> {
    let spec = policy.spec();
    let dt_ms = next.last_ms.map(|last| obs.now_ms - last);
    next.last_ms = Some(obs.now_ms);
    let dt_s = dt_ms.map(|ms| ms as f64 / 1000.0);

    // Service and memory samples do not depend on the gap.
    next.estimates.add_service(
        obs.finished_service_s,
        dt_s.unwrap_or(0.0),
        spec.service_time_constant_s,
    );
    next.estimates.add_pss(obs.worker_pss_bytes);
    if let Some(used) = obs.cpu_cores_used {
        next.estimates.add_cpu(used, obs.busy);
    }

    let usable_gap = dt_ms.is_some_and(|ms| ms <= MAX_RATE_GAP_MS);
    if !usable_gap {
        next.estimates.clear_window();
    }
    let dt_s = dt_s.filter(|_| usable_gap)?;
    // Queued requests are not in `accepted` yet: arrivals are what the
    // workers took plus what the queue grew by. A shrinking queue lowers the
    // count (those requests arrived earlier and were counted then).
    let queue_growth = f64::from(obs.queue_len) - f64::from(next.last_queue);
    // u64 -> f64 is exact below 2^53 connections per interval.
    let arrivals = (obs.accepted as f64 + queue_growth).max(0.0);
    next.estimates
        .add_arrivals(arrivals, dt_s, spec.rate_time_constant_s);
    next.estimates.add_window_sample(
        obs.now_ms,
        dt_ms.unwrap_or(0),
        arrivals,
        seconds_to_ms(spec.short_window_s),
        seconds_to_ms(spec.long_window_s),
    );
    Some(arrivals / dt_s)
}

/// Whole milliseconds of a validated (positive, finite) duration.
fn seconds_to_ms(seconds: f64) -> u64 {
    (seconds * 1000.0).round().clamp(1.0, u64::MAX as f64) as u64
}

fn update_phase(policy: &Policy, next: &mut ScalerState, now_ms: u64) {
    if next.phase == Phase::Steady {
        return;
    }
    let learning = &policy.spec().learning;
    let elapsed_s = now_ms.saturating_sub(next.started_ms) as f64 / 1000.0;
    let done = next.estimates.service_samples() >= learning.min_samples
        && elapsed_s >= learning.min_duration_s
        && next.estimates.confidence() >= learning.min_confidence
        && next.estimates.arrival_rate().is_some();
    if done {
        next.phase = Phase::Steady;
        next.steady_since_ms = Some(now_ms);
    }
}

fn is_emergency(
    policy: &Policy,
    previous: &ScalerState,
    next: &ScalerState,
    obs: &Observation<'_>,
) -> bool {
    let all_busy = obs.total > 0 && obs.busy >= obs.total;
    // Growing: longer than at the previous look, or still queued while the
    // short window's arrivals are more than every worker can serve (the
    // queue then grows between looks even when a look catches it shorter).
    let overloaded = match (next.estimates.short_rate(), next.estimates.mean_service_s()) {
        (Some(rate), Some(service)) => rate * service > f64::from(obs.total),
        _ => false,
    };
    let growing = obs.queue_len > previous.last_queue || (obs.queue_len > 0 && overloaded);
    // Without a service time yet (no request finished), a queue of at
    // least one request per worker counts as beyond the target.
    let beyond_target = match next.estimates.mean_service_s() {
        Some(_) => queue_wait_s(next, obs) > policy.emergency_wait_s(),
        None => obs.queue_len >= obs.total,
    };
    all_busy && growing && beyond_target
}

/// Time the last queued request would wait if the pool kept its size.
fn queue_wait_s(state: &ScalerState, obs: &Observation<'_>) -> f64 {
    let workers = obs.total.max(1);
    let service = state.estimates.mean_service_s().unwrap_or(0.0);
    f64::from(obs.queue_len) * service / f64::from(workers)
}

fn figures(
    policy: &Policy,
    state: &ScalerState,
    obs: &Observation<'_>,
    recent_rate: Option<f64>,
    emergency: bool,
) -> Figures {
    let spec = policy.spec();
    let estimates = &state.estimates;
    let mean_service_s = estimates.mean_service_s();
    let service_scv = estimates.service_scv();
    // Plan for the long window's rate a window from now on a rising trend
    // (the window lags a ramp by half its length, and the next
    // non-emergency change is a stabilisation window away), at most double
    // the rate; a falling trend is left to the stabilisation window. Never
    // plan below the short window's rate: a surge is sized within a few
    // looks instead of after the long window has filled. Downs are not
    // hurried by this: they wait for a whole window of recommendations.
    let horizon_s = spec.long_window_s / 2.0 + spec.stabilisation_window_s;
    let long_rate = estimates.long_rate();
    let short_rate = estimates.short_rate();
    let planned_rate = estimates.arrival_rate().map(|rate| {
        let rise = (estimates.rate_trend().max(0.0) * horizon_s).min(rate);
        let long = rate + rise + spec.variability_z * estimates.excess_rate_sd();
        short_rate.map_or(long, |short| long.max(short))
    });
    let offered_load = match (planned_rate, mean_service_s) {
        (Some(rate), Some(service)) => Some(rate * service),
        _ => None,
    };
    let p95_pss_bytes = estimates.p95_pss_bytes();
    let memory_ceiling = memory_ceiling(policy, obs, p95_pss_bytes);
    let cpu_ceiling = cpu_ceiling(policy, obs, estimates.cpu_per_busy_worker());
    let upper = [
        Some(spec.max_workers),
        memory_ceiling,
        cpu_ceiling,
        obs.share_cap_workers,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(spec.max_workers);
    let sizes = match (offered_load, mean_service_s) {
        (Some(offered), Some(service)) => Some(model_size(policy, offered, service, service_scv)),
        _ => None,
    };
    let needed_workers = sizes.map(|(needed, _)| needed);
    let model_workers = sizes.map(|(_, with_headroom)| with_headroom);
    // The last second's rate moves first (a look can be a fraction of a
    // second after the previous one: too few arrivals to read a rate
    // from); the last few seconds' is steadier. The larger of the two is
    // what a pool with waiting requests needs; a pool without reads the
    // steadier one unless the last second fell below half of it (a peak
    // ended: Poisson noise at ten requests a second goes that low about
    // once in thirty seconds).
    let steady = estimates.window_rate(NOW_WINDOW_MS);
    let fast = estimates.window_rate(NOW_WINDOW_MS / 4).or(recent_rate);
    let now_size = |rate: Option<f64>| {
        let service = mean_service_s?;
        Some(model_size(policy, rate? * service, service, service_scv).0)
    };
    let needed_now = now_size(match (steady, fast) {
        (Some(s), Some(f)) => Some(s.max(f)),
        (s, f) => s.or(f),
    });
    let needed_now_low = now_size(match (steady, fast) {
        (Some(s), Some(f)) if f < s / 2.0 => Some(f),
        (s, f) => s.or(f),
    });
    Figures {
        phase: state.phase,
        confidence: estimates.confidence(),
        current_workers: state.workers,
        arrival_rate: estimates.arrival_rate(),
        recent_rate,
        short_rate,
        long_rate,
        cpu_cores_used: obs.cpu_cores_used.filter(|c| c.is_finite() && *c >= 0.0),
        cpu_cores_limit: obs.cpu_cores_limit.filter(|c| c.is_finite() && *c > 0.0),
        planned_rate,
        mean_service_s,
        service_scv,
        offered_load,
        needed_workers,
        model_workers,
        needed_now,
        needed_now_low,
        memory_ceiling,
        cpu_ceiling,
        upper,
        p95_pss_bytes,
        queue_wait_s: queue_wait_s(state, obs),
        emergency,
        cpu_bound: is_cpu_bound(policy, obs),
    }
}

/// The pool's workers use (nearly) all the CPU it may use. Unknown or
/// nonsensical readings never count as CPU-bound.
fn is_cpu_bound(policy: &Policy, obs: &Observation<'_>) -> bool {
    match (obs.cpu_cores_used, obs.cpu_cores_limit) {
        (Some(used), Some(limit))
            if used.is_finite() && limit.is_finite() && used >= 0.0 && limit > 0.0 =>
        {
            used >= policy.spec().cpu_bound_fraction * limit
        }
        _ => false,
    }
}

/// The hold that replaces a scale-up of a CPU-bound pool.
fn cpu_bound_hold(figures: &Figures) -> Action {
    let millicores = |cores: Option<f64>| {
        let m = (cores.unwrap_or(0.0) * 1000.0).round();
        // Clamped into u32's range first, so the cast is exact.
        m.clamp(0.0, f64::from(u32::MAX)) as u32
    };
    Action::Hold(HoldReason::CpuBound {
        used_millicores: millicores(figures.cpu_cores_used),
        limit_millicores: millicores(figures.cpu_cores_limit),
    })
}

/// Workers the model needs for `offered` erlangs, without and with
/// headroom. When even `max_workers` cannot meet the target the answer is
/// `max_workers`.
fn model_size(policy: &Policy, offered: f64, service_s: f64, scv: f64) -> (u32, u32) {
    let spec = policy.spec();
    let limit = spec.max_workers;
    let base = servers_for_wait(
        offered,
        service_s,
        scv,
        policy.wait_target_s(),
        policy.tail_prob(),
        limit,
    )
    .unwrap_or(limit);
    let with_headroom = (f64::from(base) * (1.0 + spec.headroom)).ceil();
    let with_headroom = if with_headroom >= f64::from(limit) {
        limit
    } else {
        // Non-negative and below `limit`, so the cast is exact.
        with_headroom as u32
    };
    (base, with_headroom)
}

fn memory_ceiling(policy: &Policy, obs: &Observation<'_>, p95_pss: Option<u64>) -> Option<u32> {
    let budget = obs.memory_budget_bytes?;
    let per_worker = p95_pss.filter(|&bytes| bytes > 0)?;
    let reserve = (policy.spec().memory_reserve_mb * 1024.0 * 1024.0) as u64;
    let available = budget
        .saturating_sub(reserve)
        .saturating_sub(obs.shared_memory_bytes);
    Some(u32::try_from(available / per_worker).unwrap_or(u32::MAX))
}

fn cpu_ceiling(policy: &Policy, obs: &Observation<'_>, per_busy: Option<f64>) -> Option<u32> {
    let limit = obs
        .cpu_cores_limit
        .filter(|cores| cores.is_finite() && *cores > 0.0)?;
    let per_busy = per_busy.filter(|cores| cores.is_finite() && *cores > 1e-6)?;
    let ceiling = (limit * policy.spec().cpu_overcommit / per_busy).floor();
    if ceiling >= f64::from(u32::MAX) {
        Some(u32::MAX)
    } else {
        Some(ceiling.max(0.0) as u32)
    }
}

fn choose(
    policy: &Policy,
    next: &mut ScalerState,
    obs: &Observation<'_>,
    figures: &Figures,
) -> Action {
    let spec = policy.spec();
    let min = spec.min_workers;
    let upper = figures.upper;
    let current = next.workers;
    let now = obs.now_ms;

    if let Mode::Pinned {
        until_ms: Some(until),
        ..
    } = next.mode
    {
        if now >= until {
            next.mode = Mode::Auto;
        }
    }
    if upper < min {
        return Action::Hold(HoldReason::CapBelowMin { upper, min });
    }
    match &next.mode {
        Mode::Paused { reason } => return Action::Hold(HoldReason::Paused(reason.clone())),
        Mode::Pinned { workers, .. } => {
            if obs.change_in_flight {
                return Action::Hold(HoldReason::ChangeInFlight);
            }
            let target = (*workers).clamp(min, upper);
            if target == current {
                return Action::Hold(HoldReason::Pinned);
            }
            return Action::Resize {
                workers: target,
                reason: ResizeReason::Pinned,
            };
        }
        Mode::Auto => {}
    }
    if obs.change_in_flight {
        return Action::Hold(HoldReason::ChangeInFlight);
    }
    if current > upper || current < min {
        return Action::Resize {
            workers: current.clamp(min, upper),
            reason: ResizeReason::OutOfBounds,
        };
    }

    let since_change_s = next
        .last_change_ms
        .map(|last| now.saturating_sub(last) as f64 / 1000.0);
    let cooled = since_change_s.is_none_or(|s| s >= spec.cooldown_s);
    let stabilised = since_change_s.is_none_or(|s| s >= spec.stabilisation_window_s);
    let cap = match next.phase {
        Phase::Learning => upper.min(policy.learning_cap()),
        Phase::Steady => upper,
    };

    // A pool that wants more workers while its workers already use the
    // CPU it may use is CPU-bound: say so instead of adding workers (or
    // holding silently because the CPU ceiling caps the size).
    let wants_more = figures.emergency
        || (next.phase == Phase::Steady && figures.needed_workers.is_some_and(|n| n > current));
    if figures.cpu_bound && wants_more {
        return cpu_bound_hold(figures);
    }

    // In an emergency the pool goes to its cap at once: the rate of the
    // last interval underestimates a fresh surge, a second change would
    // cost a second cold start, and any size within the cap is affordable
    // by definition. The stabilisation window brings it down afterwards.
    if figures.emergency && cooled {
        let target = cap.max(min);
        if target > current {
            return Action::Resize {
                workers: target,
                reason: ResizeReason::Emergency,
            };
        }
    }
    if next.phase == Phase::Learning {
        return Action::Hold(HoldReason::Learning);
    }
    let Some(model) = figures.model_workers else {
        return Action::Hold(HoldReason::NoServiceTime);
    };
    let recommendation = model.clamp(min, upper);
    next.recommendations.push_back((now, recommendation));
    let window_ms = (spec.stabilisation_window_s * 1000.0) as u64;
    while next
        .recommendations
        .front()
        .is_some_and(|&(at, _)| now.saturating_sub(at) > window_ms)
    {
        next.recommendations.pop_front();
    }

    if !cooled {
        return Action::Hold(HoldReason::Cooldown);
    }
    // Dead zone: up only when the pool misses the target under the model
    // (fewer workers than needed), down only when even the size with
    // headroom is below the pool by more than the tolerance band. Between
    // the two nothing changes, so the model's integer steps cannot flap.
    // The band is at least two workers: the size with headroom is a
    // rounded-up product, so a one-worker difference is within the
    // model's own rounding and not worth a cold start.
    let band = ((spec.tolerance * f64::from(current)).ceil() as u32).max(2);
    let needed = figures.needed_workers.unwrap_or(model).min(upper);
    if needed > current && recommendation > current {
        if !stabilised {
            return Action::Hold(HoldReason::Stabilising);
        }
        return Action::Resize {
            workers: recommendation,
            reason: ResizeReason::ScaleUp,
        };
    }
    // Scale down only to what the whole window asked for at most.
    let window_max = next
        .recommendations
        .iter()
        .map(|&(_, workers)| workers)
        .max()
        .unwrap_or(current);
    let window_min = next
        .recommendations
        .iter()
        .map(|&(_, workers)| workers)
        .min()
        .unwrap_or(current);
    let steady_for_window = next
        .steady_since_ms
        .is_some_and(|since| now.saturating_sub(since) >= window_ms);
    // While the recommendations are still falling (an average decaying
    // after a surge), going down in steps would cost a change per step:
    // wait until they settle, unless the pool is more than twice as big.
    let settled = window_max - window_min <= band || window_max <= current / 2;
    // No scale-down within the oscillation window after a scale-up: the
    // next change after this one could be an up again (the load is not
    // ours to choose), and up, down, up inside the window is flapping.
    let after_up = next
        .last_up_ms
        .is_some_and(|up| now.saturating_sub(up) as f64 / 1000.0 < spec.oscillation_window_s);
    if window_max < current && current - window_max >= band {
        if !stabilised || !steady_for_window || !settled {
            return Action::Hold(HoldReason::Stabilising);
        }
        if after_up {
            return Action::Hold(HoldReason::AfterScaleUp);
        }
        let saving = f64::from(current - window_max) * spec.stabilisation_window_s;
        let cost = spec.change_cost_s * f64::from(current);
        if saving <= cost {
            return Action::Hold(HoldReason::NotWorthIt);
        }
        return Action::Resize {
            workers: window_max,
            reason: ResizeReason::ScaleDown,
        };
    }
    Action::Hold(HoldReason::WithinTolerance)
}

fn finish(
    policy: &Policy,
    next: &mut ScalerState,
    obs: &Observation<'_>,
    action: Action,
) -> Action {
    match action {
        Action::Resize { workers, reason } if policy.spec().advise_only => {
            // Observed pools: the size is whatever the pool runs.
            next.workers = obs.total;
            Action::Advise { workers, reason }
        }
        Action::Resize { workers, reason } => {
            if workers > next.workers {
                next.last_up_ms = Some(obs.now_ms);
            }
            next.workers = workers;
            next.last_change_ms = Some(obs.now_ms);
            next.changes += 1;
            Action::Resize { workers, reason }
        }
        other => {
            if policy.spec().advise_only {
                next.workers = obs.total;
            }
            other
        }
    }
}
