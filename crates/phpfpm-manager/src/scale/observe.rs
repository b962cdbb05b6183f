//! From a look to an autoscaler observation: the figures the pure
//! `fpm_autoscale::decide` needs, derived from what the collector saw
//! (counter deltas, service times of finished requests, worker memory and
//! CPU). Only what a look shows is used; nothing is peeked from php-fpm.

use std::collections::HashMap;

use fpm_autoscale::{accepted_delta, decide, Decision, Observation, Policy, ScalerState};
use fpm_core::status::ProcessState;

use crate::state::Look;

/// What the model needs beyond the look.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Wall-clock milliseconds (kept across restarts with the state).
    pub now_ms: u64,
    /// The cap the pool runs with: the most workers it can have.
    pub cap: u32,
    /// The memory for all autoscaled pools' workers, if known.
    pub memory_budget: Option<u64>,
    /// CPU cores available to the pool's workers, if limited.
    pub cpu_cores_limit: Option<f64>,
    pub change_in_flight: bool,
}

/// One pool's model between looks: the scaler's state and the counters
/// of the previous look.
#[derive(Debug, Clone)]
pub struct Model {
    policy: Policy,
    pub state: Option<ScalerState>,
    prev_accepted: Option<(u64, u64)>,
    /// Requests served by each worker pid at the previous look, to find the
    /// requests that finished since.
    prev_requests: HashMap<u32, u64>,
    prev_ms: Option<u64>,
}

impl Model {
    pub fn new(policy: Policy, restored: Option<ScalerState>) -> Model {
        Model {
            policy,
            state: restored,
            prev_accepted: None,
            prev_requests: HashMap::new(),
            prev_ms: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (a reload changed the limits); what was learned
    /// is kept.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Feeds one look; `None` when the look has no status page (the pool is
    /// down: nothing to learn from).
    pub fn observe(&mut self, look: &Look, ctx: Context) -> Option<Decision> {
        let status = look.status.as_ref()?;
        // A page that lacked a since-start counter (dropped as unusable, then
        // carried forward or zero) would read as no traffic now and a burst
        // at the next look: learn nothing from it, so that the next look is
        // compared with the last complete one.
        if status.counters_dropped() {
            return None;
        }
        let derived = look.derived;
        let now_ms = ctx.now_ms;
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
        let workers = &look.kernel.per_worker;
        // A worker that has not served a request yet has not built the
        // memory a request leaves behind (a fresh ondemand worker is a few
        // MiB against tens once it has served one): sizing the budget by it
        // would plan several times too many workers. Only workers the
        // status page lists count: with no worker forked yet, the master's
        // other children (the status listener's own worker) would.
        let pss: Vec<u64> = served_workers(look).filter_map(|w| w.pss_bytes).collect();
        let cpu: Option<f64> = {
            let known: Vec<f64> = workers.iter().filter_map(|w| w.cpu_percent).collect();
            (!known.is_empty()).then(|| known.iter().sum::<f64>() / 100.0)
        };
        let shared = look
            .kernel
            .workers
            .as_ref()
            .ok()
            .and_then(|a| a.master_memory.map(|m| m.pss))
            .unwrap_or(0);
        let queue = look.kernel.accept_queue.as_ref().map(|q| q.0).unwrap_or(0);
        let busy = u32::try_from(derived.active).unwrap_or(u32::MAX);
        let obs = Observation {
            now_ms,
            accepted,
            queue_len: queue,
            busy,
            // The cap is the pool's size as far as waiting goes: ondemand
            // forks up to it, so "every worker busy" means the cap is hit.
            idle: ctx.cap.saturating_sub(busy),
            total: ctx.cap.max(1),
            worker_pss_bytes: &pss,
            finished_service_s: &finished,
            cpu_cores_used: cpu,
            cpu_cores_limit: ctx.cpu_cores_limit,
            memory_budget_bytes: ctx.memory_budget,
            shared_memory_bytes: shared,
            share_cap_workers: None,
            change_in_flight: ctx.change_in_flight,
        };
        let state = self
            .state
            .take()
            .unwrap_or_else(|| ScalerState::new(now_ms.saturating_sub(1), ctx.cap.max(1)));
        let (decision, next) = decide(&self.policy, &state, &obs);
        self.state = Some(next);
        Some(decision)
    }
}

/// The workers of `look` its status page lists that have served a
/// request: only they have built the memory a request leaves behind.
fn served_workers(look: &Look) -> impl Iterator<Item = &crate::state::WorkerView> {
    let served: std::collections::HashSet<u32> = look
        .status
        .iter()
        .flat_map(|s| &s.processes)
        .filter(|p| p.requests > 0)
        .map(|p| p.pid)
        .collect();
    look.kernel
        .per_worker
        .iter()
        .filter(move |w| served.contains(&w.pid))
}

/// What the pool's workers cost in memory, from one look: `(p95 private
/// memory of one worker, memory they share)`; pure. `None` when the look
/// carries no memory reading of a worker that served a request.
///
/// One more worker costs its private memory (USS); what the workers share
/// (code, OPcache, the master's pages; their PSS beyond their USS) is
/// there whatever their number. Sizing by PSS alone would charge every
/// worker its slice of the shared pages again: measured on a master of a
/// few workers, that slice is large and the budget looks far smaller than
/// it is.
pub fn worker_memory(look: &Look) -> Option<(u64, u64)> {
    let mut private = Vec::new();
    let mut shared = 0u64;
    for w in served_workers(look) {
        if let (Some(pss), Some(uss)) = (w.pss_bytes, w.uss_bytes) {
            private.push(uss.max(1));
            shared += pss.saturating_sub(uss);
        }
    }
    if private.is_empty() {
        return None;
    }
    private.sort_unstable();
    let index = (private.len() * 95).div_ceil(100).saturating_sub(1);
    Some((private[index], shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpm_autoscale::{Policy, PolicySpec};

    fn look(accepted: &str, requests: &str) -> Look {
        let body = format!(
            "Content-type: application/json\r\n\r\n{{\"pool\":\"a\",\"process manager\":\"static\",\"start time\":1,\"start since\":10,\"accepted conn\":{accepted},\"processes\":[{{\"pid\":100,\"state\":\"Idle\",\"requests\":{requests},\"request duration\":20000}}]}}"
        );
        let status = fpm_core::status::parse_status(body.as_bytes()).unwrap();
        Look {
            up: true,
            derived: status.derived(None),
            status: Some(status),
            ..Look::default()
        }
    }

    fn ctx(now_ms: u64) -> Context {
        Context {
            now_ms,
            cap: 4,
            memory_budget: None,
            cpu_cores_limit: None,
            change_in_flight: false,
        }
    }

    #[test]
    fn a_page_with_a_dropped_counter_is_not_learned_from() {
        let mut m = Model::new(Policy::new(PolicySpec::default()).unwrap(), None);
        assert!(m.observe(&look("100", "5"), ctx(1_000)).is_some());
        // 2^64+1 and -3 are dropped from the page: no decision, and the
        // previous look's counters stay the reference.
        let bad = look("18446744073709551617", "-3");
        assert!(bad.status.as_ref().unwrap().counters_dropped());
        assert!(m.observe(&bad, ctx(2_000)).is_none());
        assert_eq!(m.prev_accepted, Some((1, 100)));
        assert_eq!(m.prev_requests.get(&100), Some(&5));
        assert!(m.observe(&look("130", "8"), ctx(3_000)).is_some());
        assert_eq!(m.prev_accepted, Some((1, 130)));
    }

    #[test]
    fn only_workers_that_served_a_request_size_the_budget() {
        let mut m = Model::new(Policy::new(PolicySpec::default()).unwrap(), None);
        let with_workers = |requests: &str| {
            let mut l = look("10", requests);
            l.kernel.per_worker = [(100, 20 << 20), (200, 3 << 20)]
                .into_iter()
                .map(|(pid, pss)| crate::state::WorkerView {
                    pid,
                    proc_state: 'S',
                    age_secs: None,
                    cpu_percent: None,
                    rss_bytes: None,
                    pss_bytes: Some(pss),
                    uss_bytes: None,
                })
                .collect();
            l
        };
        // Worker 100 has served nothing yet; 200 (a child the status page
        // does not list, such as the status listener's) never counts.
        let d = m.observe(&with_workers("0"), ctx(1_000)).unwrap();
        assert_eq!(d.figures.p95_pss_bytes, None);
        let d = m.observe(&with_workers("3"), ctx(2_000)).unwrap();
        assert_eq!(d.figures.p95_pss_bytes, Some(20 << 20));
    }

    #[test]
    fn a_worker_costs_its_private_memory_and_the_shared_pages_count_once() {
        let mut l = look("10", "3");
        assert_eq!(worker_memory(&l), None, "no memory reading yet");
        l.kernel.per_worker = [(100, 20u64 << 20, 14u64 << 20), (200, 9 << 20, 2 << 20)]
            .into_iter()
            .map(|(pid, pss, uss)| crate::state::WorkerView {
                pid,
                proc_state: 'S',
                age_secs: None,
                cpu_percent: None,
                rss_bytes: None,
                pss_bytes: Some(pss),
                uss_bytes: Some(uss),
            })
            .collect();
        // Only pid 100 is on the status page (200 is not a pool worker).
        assert_eq!(worker_memory(&l), Some((14 << 20, 6 << 20)));
        let idle = look("10", "0");
        assert_eq!(
            worker_memory(&Look {
                kernel: l.kernel.clone(),
                ..idle
            }),
            None,
            "a worker that served nothing is not measured"
        );
    }
}
