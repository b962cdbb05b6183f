//! The autoscaler's parts that are not I/O: the model fed from each look
//! (`observe`), the cap planner over the shared memory budget (`plan`), the
//! operator's override, what is remembered across restarts (`persist`),
//! and the view published for the surfaces. The pool actor (`crate::pool`)
//! runs them and applies the result.

pub mod observe;
pub mod persist;

/// The cap planner lives in `fpm_autoscale::caps`, where the simulator runs
/// the very same code.
pub use fpm_autoscale::caps as plan;

use std::time::SystemTime;

use fpm_autoscale::{Decision, Policy, PolicySpec};
use fpm_kernel::budget::Budget;
use serde::{Deserialize, Serialize};

use crate::config::{MemoryBudget, Pool};

/// An operator's hold on a pool's size.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Override {
    /// The autoscaler decides.
    #[default]
    Auto,
    /// Exactly `workers` workers (`pm = static`) until released or until
    /// `until_ms` (Unix ms).
    Pinned {
        workers: u32,
        until_ms: Option<i64>,
        reason: Option<String>,
    },
    /// The cap stays where it is; the autoscaler still learns and advises.
    Paused { reason: Option<String> },
}

impl Override {
    /// The override the config asks for.
    pub fn from_config(pool: &Pool) -> Override {
        if let Some((workers, until)) = pool.scaling.pin {
            return Override::Pinned {
                workers,
                until_ms: until.map(crate::events::unix_ms),
                reason: Some("pinned in the configuration".to_owned()),
            };
        }
        if pool.scaling.paused {
            return Override::Paused {
                reason: Some("paused in the configuration".to_owned()),
            };
        }
        Override::Auto
    }

    pub fn name(&self) -> &'static str {
        match self {
            Override::Auto => "auto",
            Override::Pinned { .. } => "pinned",
            Override::Paused { .. } => "paused",
        }
    }
}

/// The autoscaler's view of one pool, for the API, `/metrics` and events.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingView {
    /// `apply` (supervised, autoscaling on) or `advise`.
    pub mode: &'static str,
    pub override_: Override,
    /// `learning` or `steady`.
    pub phase: &'static str,
    pub confidence: f64,
    /// The cap the running master has (`pm.max_children`).
    pub applied_workers: Option<u32>,
    /// What the model recommends now (workers the traffic needs, with
    /// headroom); `None` while unknown.
    pub recommended_workers: Option<u32>,
    /// The cap the budget share would give the pool now.
    pub planned_cap: Option<u32>,
    /// The rule behind the last decision (`pressing_cap`, `stabilising`, ...).
    pub rule: String,
    /// The model's own words for its last decision.
    pub reason: String,
    /// The model's rule (`learning`, `cpu_bound`, `scale_up`, ...).
    pub model_rule: &'static str,
    /// The model's verdict: `hold` or `resize` (to `recommended_workers`).
    pub action: &'static str,
    /// The workers use all the CPU there is: more workers would not help.
    pub cpu_bound: bool,
    /// Requests per second over the last look (the emergency window).
    pub short_rate: Option<f64>,
    /// Smoothed requests per second (the sizing window).
    pub long_rate: Option<f64>,
    pub mean_service_s: Option<f64>,
    pub offered_load: Option<f64>,
    pub p95_pss_bytes: Option<u64>,
    pub memory_budget_bytes: Option<u64>,
    pub memory_ceiling: Option<u32>,
    pub cpu_ceiling: Option<u32>,
    /// Changes applied since the manager started.
    pub changes: u64,
    pub last_change: Option<SystemTime>,
    /// Why the last change was refused, if it was.
    pub last_error: Option<String>,
}

impl ScalingView {
    /// The figures of a decision, in the view's terms.
    pub fn with_decision(mut self, d: &Decision) -> ScalingView {
        let f = &d.figures;
        self.phase = match f.phase {
            fpm_autoscale::Phase::Learning => "learning",
            fpm_autoscale::Phase::Steady => "steady",
        };
        self.confidence = f.confidence;
        self.recommended_workers = match &d.action {
            fpm_autoscale::Action::Resize { workers, .. }
            | fpm_autoscale::Action::Advise { workers, .. } => Some(*workers),
            fpm_autoscale::Action::Hold(_) => f.model_workers.or(Some(f.current_workers)),
        };
        self.short_rate = f.short_rate;
        self.long_rate = f.long_rate.or(f.arrival_rate);
        self.cpu_bound = f.cpu_bound;
        self.model_rule = d.action.rule();
        self.action = match d.action {
            fpm_autoscale::Action::Hold(_) => "hold",
            _ => "resize",
        };
        self.mean_service_s = f.mean_service_s;
        self.offered_load = f.offered_load;
        self.p95_pss_bytes = f.p95_pss_bytes;
        self.memory_ceiling = f.memory_ceiling;
        self.cpu_ceiling = f.cpu_ceiling;
        self.reason = match &d.action {
            fpm_autoscale::Action::Hold(why) => why.to_string(),
            fpm_autoscale::Action::Resize { reason, .. }
            | fpm_autoscale::Action::Advise { reason, .. } => reason.to_string(),
        };
        self
    }
}

/// The pool's policy from its config: its limits, and the headroom that
/// `scaling.target_utilization` asks for. Observed pools are advise-only.
pub fn policy_for(pool: &Pool) -> Result<Policy, fpm_autoscale::PolicyError> {
    let min = pool.scaling.min_workers.max(1);
    let spec = PolicySpec {
        min_workers: min,
        max_workers: pool.scaling.max_workers.max(min),
        headroom: (1.0 / pool.scaling.target_utilization - 1.0).clamp(0.0, 10.0),
        weight: pool.scaling.weight,
        priority: pool.scaling.priority,
        advise_only: pool.spec.is_none() || !pool.scaling.enabled,
        ..PolicySpec::default()
    };
    Policy::new(spec)
}

/// The memory for all autoscaled pools' workers: the fixed budget, or the
/// cgroup's limit (else the host's memory) minus the reserve.
pub fn budget_bytes(cfg: &MemoryBudget, host: Option<&Budget>) -> Option<u64> {
    match *cfg {
        MemoryBudget::Fixed(n) => Some(n),
        MemoryBudget::Auto { reserve_bytes } => {
            let host = host?;
            let limit = host.memory_limit.or(host.mem_total)?;
            Some(limit.saturating_sub(reserve_bytes))
        }
    }
}
