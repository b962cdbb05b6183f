//! The autoscaling policy of one pool: a validated configuration.
//!
//! A `Policy` can only be built through [`Policy::new`] (from a
//! [`PolicySpec`]) or [`Policy::from_yaml`], both of which report every
//! problem at once, each as `key: 'value': what is wrong; how to fix`, like
//! the main configuration does. Durations carry their unit in the key name
//! (`_ms`, `_s`) so a policy file never needs a duration syntax.

use serde::Deserialize;
use thiserror::Error;

/// Raw, unvalidated policy as written in a `--policy FILE` (YAML).
///
/// Every field has a default, so an empty document is a valid policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySpec {
    /// Fewest workers the pool may run (at least 1).
    pub min_workers: u32,
    /// Most workers the pool may run (the pool's `pm.max_children` cap).
    pub max_workers: u32,
    /// Wait (time in the accept queue) that `wait_quantile` of the requests
    /// should stay under. 0 (the default) means they should not wait at
    /// all: the pool is sized so that the Erlang C probability of waiting
    /// is at most `1 - wait_quantile` (p99 wait = 0, like `static` at max).
    pub wait_target_ms: f64,
    /// Share of requests that must wait less than the target (0.99 = p99).
    pub wait_quantile: f64,
    /// Emergency threshold: the queue alone (every worker busy, the queue
    /// growing) is worth more than this wait. The effective threshold is
    /// the larger of this and `wait_target_ms`, so that the noise of a
    /// well-sized pool (a request or two queued for a moment) is no
    /// emergency.
    pub emergency_wait_ms: f64,
    /// Extra capacity on top of the model, as a fraction (0.1 = 10 %).
    pub headroom: f64,
    /// How many standard deviations of extra-Poisson arrival variability
    /// are added to the planned arrival rate.
    pub variability_z: f64,
    /// Non-emergency changes are at least this far apart, and a scale-down
    /// must be recommended during the whole window.
    pub stabilisation_window_s: f64,
    /// Time after any change (even an emergency one) before the next one.
    pub cooldown_s: f64,
    /// A scale-down waits at least this long after the last scale-up
    /// (emergency or model). Since downs are the only changes the policy
    /// can postpone without letting requests wait, this alone rules out
    /// three changes alternating in direction (up-down-up or
    /// down-up-down) within the window. 0 disables the rule.
    pub oscillation_window_s: f64,
    /// Relative band around the current size inside which nothing changes.
    pub tolerance: f64,
    /// Cost of one change in seconds of the whole pool's capacity (the
    /// reload stall plus the cold OPcache); a scale-down must save more.
    pub change_cost_s: f64,
    /// Time constant of the smoothed arrival rate, which gives the trend
    /// and the variability beyond Poisson noise (not the rate itself).
    pub rate_time_constant_s: f64,
    /// The short window: the arrival rate over the last looks spanning
    /// this long, exact from the accepted-connections counter. The pool is
    /// never sized below it, so a surge is followed within a few looks.
    pub short_window_s: f64,
    /// The long window: the rate the pool is sized for (plus variability
    /// headroom and the trend).
    pub long_window_s: f64,
    /// Time constant of the service-time average.
    pub service_time_constant_s: f64,
    /// Learning phase thresholds.
    pub learning: LearningSpec,
    /// Memory kept free for everything that is not a pool worker.
    pub memory_reserve_mb: f64,
    /// Busy workers allowed per available CPU core's worth of demand
    /// (1.0 = never plan more CPU demand than the limit).
    pub cpu_overcommit: f64,
    /// The pool counts as CPU-bound when its workers use at least this
    /// share of the CPU available to it (`Observation::cpu_cores_limit`):
    /// more workers would then only share the same cores, so the policy
    /// adds none (fraction in (0, 1]).
    pub cpu_bound_fraction: f64,
    /// Share of a common memory budget, relative to other pools.
    pub weight: f64,
    /// Higher priority pools are served first when a budget is short.
    pub priority: i32,
    /// Compute decisions but never apply them (observed pools).
    pub advise_only: bool,
}

/// Raw thresholds of the learning phase.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningSpec {
    /// Finished requests needed before learning can end.
    pub min_samples: u64,
    /// Observed time needed before learning can end.
    pub min_duration_s: f64,
    /// Confidence (0..1) needed before learning can end.
    pub min_confidence: f64,
    /// While learning, scale up only to this fraction of `max_workers`.
    pub cap_fraction: f64,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            min_workers: 2,
            max_workers: 32,
            wait_target_ms: 0.0,
            wait_quantile: 0.99,
            emergency_wait_ms: 50.0,
            headroom: 0.1,
            variability_z: 2.0,
            stabilisation_window_s: 180.0,
            cooldown_s: 3.0,
            oscillation_window_s: 600.0,
            tolerance: 0.1,
            change_cost_s: 5.0,
            rate_time_constant_s: 60.0,
            short_window_s: 10.0,
            long_window_s: 60.0,
            service_time_constant_s: 300.0,
            learning: LearningSpec::default(),
            memory_reserve_mb: 256.0,
            cpu_overcommit: 1.0,
            cpu_bound_fraction: 0.9,
            weight: 1.0,
            priority: 0,
            advise_only: false,
        }
    }
}

impl Default for LearningSpec {
    fn default() -> Self {
        LearningSpec {
            min_samples: 1000,
            min_duration_s: 300.0,
            min_confidence: 0.8,
            cap_fraction: 0.25,
        }
    }
}

/// A validated policy. Fields are public for reading; build one with
/// [`Policy::new`] or [`Policy::from_yaml`] so the invariants hold
/// (`1 <= min <= max`, positive durations, fractions in range).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    spec: PolicySpec,
}

/// One problem found in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The key, dotted for nested ones (`learning.min_confidence`).
    pub key: String,
    /// The value as written.
    pub value: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: '{}': {}", self.key, self.value, self.message)
    }
}

/// Why a policy was rejected.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PolicyError {
    /// The text is not YAML of the expected shape (unknown key, wrong type).
    #[error("policy file is not valid: {0}")]
    Syntax(String),
    /// The values are out of range; every problem is listed.
    #[error("policy has {} problem(s): {}", .0.len(), join_problems(.0))]
    Invalid(Vec<PolicyProblem>),
}

fn join_problems(problems: &[PolicyProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Policy {
    /// Validates a spec, returning every problem found.
    pub fn new(spec: PolicySpec) -> Result<Policy, PolicyError> {
        let mut problems = Vec::new();
        validate(&spec, &mut problems);
        if problems.is_empty() {
            Ok(Policy { spec })
        } else {
            Err(PolicyError::Invalid(problems))
        }
    }

    /// Parses and validates a YAML policy document. An empty document
    /// gives the default policy.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        let spec = if text.trim().is_empty() {
            PolicySpec::default()
        } else {
            serde_yaml_ng::from_str::<PolicySpec>(text)
                .map_err(|error| PolicyError::Syntax(error.to_string()))?
        };
        Policy::new(spec)
    }

    /// The validated values.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// Wait target in seconds.
    pub fn wait_target_s(&self) -> f64 {
        self.spec.wait_target_ms / 1000.0
    }

    /// Queue wait beyond which a saturated, growing queue is an emergency:
    /// the larger of `emergency_wait_ms` and `wait_target_ms`, in seconds.
    pub fn emergency_wait_s(&self) -> f64 {
        self.spec.emergency_wait_ms.max(self.spec.wait_target_ms) / 1000.0
    }

    /// Share of requests allowed to wait longer than the target.
    pub fn tail_prob(&self) -> f64 {
        1.0 - self.spec.wait_quantile
    }

    /// Upper cap while learning: at least the minimum, at least one worker.
    pub fn learning_cap(&self) -> u32 {
        let cap = (f64::from(self.spec.max_workers) * self.spec.learning.cap_fraction).ceil();
        // cap_fraction is validated to (0, 1], so the cast cannot overflow.
        (cap as u32).clamp(self.spec.min_workers, self.spec.max_workers)
    }
}

fn validate(spec: &PolicySpec, problems: &mut Vec<PolicyProblem>) {
    let mut push = |key: &str, value: String, message: &str| {
        problems.push(PolicyProblem {
            key: key.to_owned(),
            value,
            message: message.to_owned(),
        });
    };
    if spec.min_workers == 0 {
        push(
            "min_workers",
            spec.min_workers.to_string(),
            "a pool needs at least one worker; set 1 or more",
        );
    }
    if spec.max_workers == 0 {
        push(
            "max_workers",
            spec.max_workers.to_string(),
            "a pool needs at least one worker; set 1 or more",
        );
    } else if spec.min_workers > spec.max_workers {
        push(
            "min_workers",
            spec.min_workers.to_string(),
            &format!(
                "is above max_workers '{}'; lower min_workers or raise max_workers",
                spec.max_workers
            ),
        );
    }
    if spec.max_workers > 100_000 {
        push(
            "max_workers",
            spec.max_workers.to_string(),
            "is unrealistically large; set at most 100000",
        );
    }
    let mut positive = |key: &str, value: f64, hint: &str| {
        if !(value.is_finite() && value > 0.0) {
            push(
                key,
                value.to_string(),
                &format!("must be a positive number; {hint}"),
            );
        }
    };
    positive(
        "emergency_wait_ms",
        spec.emergency_wait_ms,
        "for example 50",
    );
    positive(
        "stabilisation_window_s",
        spec.stabilisation_window_s,
        "for example 180",
    );
    positive("cooldown_s", spec.cooldown_s, "for example 3");
    positive(
        "rate_time_constant_s",
        spec.rate_time_constant_s,
        "for example 60",
    );
    positive("short_window_s", spec.short_window_s, "for example 10");
    positive("long_window_s", spec.long_window_s, "for example 60");
    positive(
        "service_time_constant_s",
        spec.service_time_constant_s,
        "for example 300",
    );
    positive("cpu_overcommit", spec.cpu_overcommit, "for example 1.0");
    positive("weight", spec.weight, "for example 1.0");
    positive(
        "learning.min_duration_s",
        spec.learning.min_duration_s,
        "for example 300",
    );
    let mut non_negative = |key: &str, value: f64, hint: &str| {
        if !(value.is_finite() && value >= 0.0) {
            push(
                key,
                value.to_string(),
                &format!("must be zero or a positive number; {hint}"),
            );
        }
    };
    non_negative(
        "wait_target_ms",
        spec.wait_target_ms,
        "0 means no wait, for example 0 or 20",
    );
    non_negative("headroom", spec.headroom, "for example 0.1");
    non_negative("variability_z", spec.variability_z, "for example 2");
    non_negative("tolerance", spec.tolerance, "for example 0.1");
    non_negative(
        "oscillation_window_s",
        spec.oscillation_window_s,
        "for example 600",
    );
    non_negative("change_cost_s", spec.change_cost_s, "for example 5");
    non_negative(
        "memory_reserve_mb",
        spec.memory_reserve_mb,
        "for example 256",
    );
    let mut open_fraction = |key: &str, value: f64, hint: &str| {
        if !(value.is_finite() && value > 0.0 && value < 1.0) {
            push(
                key,
                value.to_string(),
                &format!("must be between 0 and 1 (exclusive); {hint}"),
            );
        }
    };
    open_fraction("wait_quantile", spec.wait_quantile, "for example 0.99");
    open_fraction(
        "learning.min_confidence",
        spec.learning.min_confidence,
        "for example 0.8",
    );
    if !(spec.learning.cap_fraction.is_finite()
        && spec.learning.cap_fraction > 0.0
        && spec.learning.cap_fraction <= 1.0)
    {
        push(
            "learning.cap_fraction",
            spec.learning.cap_fraction.to_string(),
            "must be above 0 and at most 1; for example 0.25",
        );
    }
    // NaN is reported by the range check above.
    if spec.tolerance >= 1.0 {
        push(
            "tolerance",
            spec.tolerance.to_string(),
            "must be below 1 or the pool never changes; for example 0.1",
        );
    }
    if !(spec.cpu_bound_fraction.is_finite()
        && spec.cpu_bound_fraction > 0.0
        && spec.cpu_bound_fraction <= 1.0)
    {
        push(
            "cpu_bound_fraction",
            spec.cpu_bound_fraction.to_string(),
            "must be above 0 and at most 1; for example 0.9",
        );
    }
    if spec.short_window_s > spec.long_window_s {
        push(
            "short_window_s",
            spec.short_window_s.to_string(),
            &format!(
                "is longer than long_window_s '{}'; lower it",
                spec.long_window_s
            ),
        );
    }
    if spec.cooldown_s > spec.stabilisation_window_s {
        push(
            "cooldown_s",
            spec.cooldown_s.to_string(),
            &format!(
                "is longer than stabilisation_window_s '{}'; lower it",
                spec.stabilisation_window_s
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_the_default() {
        assert_eq!(Policy::from_yaml("").expect("valid"), Policy::default());
        assert!(Policy::new(PolicySpec::default()).is_ok());
    }

    #[test]
    fn reads_yaml() {
        let policy = Policy::from_yaml(
            "min_workers: 4\nmax_workers: 40\nwait_target_ms: 20\nlearning:\n  min_samples: 10\n",
        )
        .expect("valid");
        assert_eq!(policy.spec().min_workers, 4);
        assert_eq!(policy.spec().max_workers, 40);
        assert_eq!(policy.spec().learning.min_samples, 10);
        assert_eq!(policy.spec().learning.cap_fraction, 0.25);
        assert_eq!(policy.learning_cap(), 10);
    }

    #[test]
    fn reports_every_problem() {
        let error = Policy::from_yaml(
            "min_workers: 10\nmax_workers: 5\nwait_quantile: 1.5\nheadroom: -1\nlearning:\n  cap_fraction: 0\n",
        )
        .expect_err("invalid");
        let PolicyError::Invalid(problems) = &error else {
            panic!("expected Invalid, got {error:?}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "min_workers",
                "headroom",
                "wait_quantile",
                "learning.cap_fraction"
            ]
        );
        let text = error.to_string();
        assert!(
            text.contains("min_workers: '10': is above max_workers '5'; lower min_workers"),
            "{text}"
        );
        assert!(!text.ends_with('.'));
    }

    #[test]
    fn zero_wait_target_is_valid_and_the_emergency_needs_a_positive_wait() {
        let policy = Policy::default();
        assert_eq!(policy.wait_target_s(), 0.0);
        assert_eq!(policy.emergency_wait_s(), 0.05);
        // A target above the emergency wait raises the emergency threshold.
        let relaxed = Policy::from_yaml("wait_target_ms: 200\n").expect("valid");
        assert_eq!(relaxed.emergency_wait_s(), 0.2);
        let error = Policy::from_yaml(
            "wait_target_ms: -1\nemergency_wait_ms: 0\noscillation_window_s: -5\n",
        )
        .expect_err("invalid");
        let PolicyError::Invalid(problems) = &error else {
            panic!("expected Invalid, got {error:?}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "emergency_wait_ms",
                "wait_target_ms",
                "oscillation_window_s"
            ]
        );
        assert!(Policy::from_yaml("oscillation_window_s: 0\n").is_ok());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_types() {
        let error = Policy::from_yaml("max_worker: 5\n").expect_err("unknown key");
        assert!(error.to_string().contains("max_worker"), "{error}");
        let error = Policy::from_yaml("max_workers: many\n").expect_err("bad type");
        assert!(matches!(error, PolicyError::Syntax(_)));
        let error = Policy::from_yaml("wait_target_ms: .nan\n").expect_err("nan");
        assert!(
            error.to_string().contains("wait_target_ms: 'NaN'"),
            "{error}"
        );
    }
}
