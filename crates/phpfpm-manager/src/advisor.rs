//! The autoscaler in advise-only mode: after each look at a pool, the pure
//! `fpm_autoscale::decide` is fed what the collector saw and says how many
//! workers the pool needs ("this pool would need max_children = 14").
//! Nothing is applied yet; applying a decision through the supervisor's
//! hand-over is later work, so `scaling.enabled` only logs that.

use std::collections::HashMap;

use fpm_autoscale::{accepted_delta, decide, Action, Observation, Policy, PolicySpec, ScalerState};
use fpm_core::status::{Derived, PoolStatus, ProcessState};

use crate::config::Pool;
use crate::state::WorkerView;

/// What the advisor thinks of a pool now.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// `learning` or `steady`.
    pub phase: &'static str,
    /// 0 to 1.
    pub confidence: f64,
    pub current_workers: u32,
    /// The size the model recommends now (the current size when holding).
    pub recommended_workers: u32,
    /// `hold` or `resize`.
    pub action: &'static str,
    /// Why, in words.
    pub reason: String,
    pub arrival_rate: Option<f64>,
    pub mean_service_s: Option<f64>,
    pub memory_ceiling: Option<u32>,
}

/// What the collector saw in one look at a pool.
#[derive(Debug, Clone, Copy)]
pub struct Look<'a> {
    /// A monotonic clock in milliseconds.
    pub now_ms: u64,
    pub status: &'a PoolStatus,
    pub derived: Derived,
    /// Connections waiting in the kernel's accept queue.
    pub queue: u32,
    pub workers: &'a [WorkerView],
    /// The memory limit of the host or cgroup, if any.
    pub memory_budget: Option<u64>,
    /// The master's own memory (PSS), which does not grow with workers.
    pub shared_memory: u64,
}

/// One pool's advisor state between looks.
pub struct Advisor {
    policy: Policy,
    state: Option<ScalerState>,
    prev_accepted: Option<(u64, u64)>,
    /// Requests served by each worker pid at the previous look, to find the
    /// requests that finished since.
    prev_requests: HashMap<u32, u64>,
    prev_ms: Option<u64>,
}

impl Advisor {
    /// An advisor bounded by the pool's `scaling.min_workers` and
    /// `scaling.max_workers`.
    pub fn new(pool: &Pool) -> Result<Advisor, String> {
        let spec = PolicySpec {
            min_workers: pool.scaling.min_workers.max(1),
            max_workers: pool
                .scaling
                .max_workers
                .max(pool.scaling.min_workers.max(1)),
            advise_only: true,
            ..PolicySpec::default()
        };
        let policy = Policy::new(spec).map_err(|e| e.to_string())?;
        Ok(Advisor {
            policy,
            state: None,
            prev_accepted: None,
            prev_requests: HashMap::new(),
            prev_ms: None,
        })
    }

    /// Feeds one look at the pool.
    pub fn observe(&mut self, look: &Look<'_>) -> Advice {
        let Look {
            now_ms,
            status,
            derived,
            queue,
            workers,
            memory_budget,
            shared_memory,
        } = *look;
        // `accepted conn` restarts with each master: a new start time is a reset.
        let accepted = match self.prev_accepted {
            Some((start, prev)) if start == status.start_time => {
                accepted_delta(Some(prev), status.accepted_conn)
            }
            Some(_) => status.accepted_conn,
            None => 0,
        };
        self.prev_accepted = Some((status.start_time, status.accepted_conn));
        // A worker whose request count went up finished requests. If it is
        // idle now, php-fpm shows the last one's duration (µs). A worker of a
        // saturated pool is never seen idle: it went straight to the next
        // request, and the finished one's duration is gone. For those, the
        // busy time over the interval divided by the requests finished in it
        // (Little's law on the workers) is the estimate.
        let mut finished = Vec::new();
        let mut seen = HashMap::new();
        let (mut completed, mut unseen) = (0u64, 0u64);
        for p in &status.processes {
            if let Some(prev) = self.prev_requests.get(&p.pid) {
                let delta = p.requests.saturating_sub(*prev);
                completed += delta;
                if delta > 0 && p.state == ProcessState::Idle {
                    finished.push(p.request_duration_us as f64 / 1e6);
                    unseen += delta - 1;
                } else {
                    unseen += delta;
                }
            }
            seen.insert(p.pid, p.requests);
        }
        self.prev_requests = seen;
        if let (Some(prev_ms), true) = (self.prev_ms, unseen > 0 && completed > 0) {
            let busy_s = derived.active as f64 * (now_ms.saturating_sub(prev_ms) as f64 / 1000.0);
            let estimate = busy_s / completed as f64;
            if estimate > 0.0 {
                finished.extend(std::iter::repeat_n(estimate, unseen.min(1000) as usize));
            }
        }
        self.prev_ms = Some(now_ms);
        let pss: Vec<u64> = workers.iter().filter_map(|w| w.pss_bytes).collect();
        let cpu: Option<f64> = {
            let known: Vec<f64> = workers.iter().filter_map(|w| w.cpu_percent).collect();
            (!known.is_empty()).then(|| known.iter().sum::<f64>() / 100.0)
        };
        let total = u32::try_from(derived.total).unwrap_or(u32::MAX);
        let obs = Observation {
            now_ms,
            accepted,
            queue_len: queue,
            busy: u32::try_from(derived.active).unwrap_or(u32::MAX),
            idle: u32::try_from(derived.idle).unwrap_or(u32::MAX),
            total,
            worker_pss_bytes: &pss,
            finished_service_s: &finished,
            cpu_cores_used: cpu,
            cpu_cores_limit: None,
            memory_budget_bytes: memory_budget,
            shared_memory_bytes: shared_memory,
            share_cap_workers: None,
            change_in_flight: false,
        };
        let state = self
            .state
            .take()
            .unwrap_or_else(|| ScalerState::new(now_ms.saturating_sub(1), total.max(1)));
        let (decision, next) = decide(&self.policy, &state, &obs);
        self.state = Some(next);
        let f = &decision.figures;
        let (action, recommended, reason) = match &decision.action {
            Action::Hold(why) => ("hold", total, why.to_string()),
            Action::Resize { workers, reason } | Action::Advise { workers, reason } => {
                ("resize", *workers, reason.to_string())
            }
        };
        Advice {
            phase: match f.phase {
                fpm_autoscale::Phase::Learning => "learning",
                fpm_autoscale::Phase::Steady => "steady",
            },
            confidence: f.confidence,
            current_workers: total,
            recommended_workers: recommended,
            action,
            reason,
            arrival_rate: f.arrival_rate,
            mean_service_s: f.mean_service_s,
            memory_ceiling: f.memory_ceiling,
        }
    }
}
