//! A deterministic discrete-event simulator of PHP-FPM pools, used to
//! compare the manager's policy with php-fpm's own process managers.
//!
//! The model (all figures are [`Scenario`] fields, defaults in
//! [`Scenario::standard`]):
//! - arrivals: Poisson with the time-varying rate of a [`TraceSpec`]
//!   (thinning), pre-drawn once per seed so every manager sees exactly the
//!   same requests with the same service demands (common random numbers);
//! - service: lognormal, mean 50 ms, log-sd 0.6;
//! - an accept queue (the listen backlog); requests beyond it fail and are
//!   counted;
//! - a forked worker is ready after `fork_s` and shares its master's
//!   OPcache (`dynamic`, `ondemand`, and `ondemand` under the manager's
//!   cap);
//! - a manager change is a hand-over as the supervisor does it (facts 4,
//!   5a): `apply_delay_s` after the decision a new master starts on the
//!   inherited socket, it is ready `master_start_s` later, and at that
//!   moment the old master is stopped gracefully: its idle workers exit at
//!   once, its busy ones finish their request and exit (fact 3). Until the
//!   new master is ready only the old one serves. A `static` master forks
//!   all its workers at start; an `ondemand` one starts with none;
//! - with `phpfpm.additive_scale_up` (off by default;
//!   `Manager::Daemon::additive`) the daemon's manager applies a cap
//!   additively where it can: two masters on one listening
//!   socket both accept from it, so a pool runs a *primary* master (cap
//!   P) and at most one *extra* master (cap E), for a cap of P + E. A cap
//!   W above P starts an extra master with cap W - P (replacing an extra
//!   master with another cap: it is stopped once the new one is ready),
//!   and the primary serves on with its workers and its warm OPcache; W
//!   equal to P stops the extra master and starts none; only W below P is
//!   a hand-over of the primary, and the extra master is stopped with the
//!   old primary when the new one is ready. Every start and stop comes
//!   `apply_delay_s` after the decision and a new master, extra or not, is
//!   ready `master_start_s` after its start, as in a hand-over;
//! - the serving masters share one accept queue: a request goes to the
//!   longest-idle worker of either, and an `ondemand` master forks for
//!   queued requests up to its own cap (both see the queued connection:
//!   with room in both, their forks alternate) and reaps its own idle
//!   workers. A stopped master's busy workers finish their request and
//!   their memory counts, as after a hand-over, until they have exited;
//! - a new master has a cold OPcache (facts 2 and 18): its `n`-th request
//!   takes `cold_start_s * exp(-n / cold_requests)` seconds longer
//!   (`file_cache_cold_start_s` instead when `opcache.file_cache` was
//!   filled by the running master). The penalty is per master: an extra
//!   master's requests pay it, the primary's do not. Fact 18 measured 0.8
//!   to 1.0 s for the first requests into a fresh MediaWiki master against
//!   25 ms warm, and 0.23 s with the file cache;
//! - memory: each worker's PSS is drawn at fork (normal, clamped), the
//!   master and OPcache shared memory are fixed.
//!
//! What the manager sees is what the collector can see: the status page
//! at each collection (the `accepted conn` counter, which restarts with
//! every master; busy, idle and total; each worker's request count and,
//! for a worker seen idle, its last request's duration; with an extra
//! master, both serving masters' pages added up), the kernel's accept
//! queue, and worker PSS. Service times of requests whose worker
//! was not seen idle are estimated the way the daemon's advisor does
//! (busy workers times the interval over the requests completed).
//!
//! Collections: every 1 s when the pool was busy at the previous one,
//! every 5 s otherwise, plus a probe of the accept queue every `probe_s`
//! (250 ms) that collects at once when anything is queued.
//!
//! Every response time is scored: queue wait (including a fork or a
//! master start) plus service (including the cold-OPcache penalty).

mod engine;
mod report;
mod rng;
mod trace;

use thiserror::Error;

use crate::policy::{Policy, PolicyError};

pub use engine::{run, run_shared, SharedPool, SharedResult};
pub use report::{
    render_shared, render_table, shared_runs, simulate_all, simulate_report,
    simulate_report_policy, simulate_report_with, simulate_shared,
};
pub use trace::{TraceSpec, BASE_RATE};

/// Why a simulation could not run.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SimError {
    /// The policy text was rejected.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A CSV trace line is wrong (line 0: the file as a whole).
    #[error("csv trace line {line}: '{text}': {message}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// The line as written.
        text: String,
        /// What is wrong.
        message: String,
    },
    /// A trace duration that is not a positive number.
    #[error("trace duration '{0}' is not a positive number of seconds")]
    Duration(f64),
    /// The trace asks for more requests than the simulator will hold.
    #[error("trace would generate about {expected} requests, more than the limit of {limit}; shorten it or lower its rates")]
    TooLarge {
        /// Expected arrivals.
        expected: u64,
        /// The limit.
        limit: u64,
    },
}

/// `pm = dynamic` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicSpec {
    /// Name in tables.
    pub name: &'static str,
    /// `pm.start_servers`.
    pub start: u32,
    /// `pm.min_spare_servers`.
    pub min_spare: u32,
    /// `pm.max_spare_servers`.
    pub max_spare: u32,
}

impl DynamicSpec {
    /// Debian's `www.conf`: start 2, spare 1 to 3 (its `max_children` of
    /// 5 is replaced by the scenario's cap, so only the spares differ).
    pub fn debian() -> DynamicSpec {
        DynamicSpec {
            name: "dynamic-debian",
            start: 2,
            min_spare: 1,
            max_spare: 3,
        }
    }

    /// As a careful operator would tune it for this load (2 erlangs
    /// base, 20 at the surge): start 16, spare 12 to 24.
    pub fn tuned() -> DynamicSpec {
        DynamicSpec {
            name: "dynamic-tuned",
            start: 16,
            min_spare: 12,
            max_spare: 24,
        }
    }
}

/// Which process manager runs the simulated pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Manager {
    /// The daemon as it runs an autoscaled pool: `pm = ondemand` under a
    /// cap (`pm.max_children`). At each look `decide` runs as the model
    /// only (its figures: recommended workers, p95 PSS; its resizes are
    /// not applied), then [`crate::caps::next_cap`] plans the cap as the
    /// pool's share of the memory budget with the default damping. The
    /// first cap is what the budget allows at the assumed worker size,
    /// within the pool's limits, as the daemon starts a pool. With
    /// `file_cache` a new master's OPcache starts from the file cache the
    /// running master filled (the daemon's `phpfpm.warm_handover`, on by
    /// default).
    ///
    /// With `additive` (`phpfpm.additive_scale_up`, off by default) a larger cap is applied by
    /// an extra master beside the primary one, a return to the primary's
    /// cap by stopping the extra master, and only a cap below the
    /// primary's by a hand-over; without it every change is a hand-over.
    Daemon {
        /// The pool's policy (limits, headroom, weight, priority).
        policy: Policy,
        /// `opcache.file_cache` filled by the running master.
        file_cache: bool,
        /// Changes applied additively where the cap allows it.
        additive: bool,
    },
    /// An earlier design, kept for comparison: `decide`'s resizes applied
    /// as the cap, starting at the learning cap (in a shared budget the
    /// cap also comes from [`crate::share_budget_protecting_needs`]).
    /// Every change is a hand-over, as that design applied them.
    ModelCap {
        /// The policy.
        policy: Policy,
        /// `opcache.file_cache` filled by the previous master.
        file_cache: bool,
    },
    /// `pm = static` with `max_workers` workers.
    Static,
    /// `pm = dynamic`.
    Dynamic(DynamicSpec),
    /// `pm = ondemand` with `max_workers` as `pm.max_children`.
    Ondemand,
}

impl Manager {
    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Manager::Daemon {
                file_cache: true,
                additive: false,
                ..
            } => "manager",
            Manager::Daemon {
                file_cache: true,
                additive: true,
                ..
            } => "manager-additive",
            Manager::Daemon {
                file_cache: false,
                additive: false,
                ..
            } => "manager-cold",
            Manager::Daemon {
                file_cache: false,
                additive: true,
                ..
            } => "manager-cold-additive",
            Manager::ModelCap {
                file_cache: true, ..
            } => "model-cap",
            Manager::ModelCap {
                file_cache: false, ..
            } => "model-cap-cold-handover",
            Manager::Static => "static@max",
            Manager::Dynamic(spec) => spec.name,
            Manager::Ondemand => "ondemand@max",
        }
    }

    /// The policy, for the managers that have one.
    pub fn policy(&self) -> Option<&Policy> {
        match self {
            Manager::Daemon { policy, .. } | Manager::ModelCap { policy, .. } => Some(policy),
            _ => None,
        }
    }

    /// The daemon's manager as it runs by default: every change a
    /// hand-over, a new master's OPcache warmed from the file cache.
    pub fn daemon(policy: &Policy) -> Manager {
        Manager::Daemon {
            policy: policy.clone(),
            file_cache: true,
            additive: false,
        }
    }

    /// The daemon's manager with `phpfpm.additive_scale_up` on: a bigger
    /// cap by a second master beside the warm one.
    pub fn daemon_additive(policy: &Policy) -> Manager {
        Manager::Daemon {
            policy: policy.clone(),
            file_cache: true,
            additive: true,
        }
    }

    /// Every contender of the comparison table, in table order.
    pub fn contenders(policy: &Policy) -> Vec<Manager> {
        vec![
            Manager::daemon(policy),
            Manager::daemon_additive(policy),
            Manager::ModelCap {
                policy: policy.clone(),
                file_cache: true,
            },
            Manager::Static,
            Manager::Dynamic(DynamicSpec::tuned()),
            Manager::Dynamic(DynamicSpec::debian()),
            Manager::Ondemand,
        ]
    }
}

/// The modelled pool and machine; the same for every manager in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Seed of every random stream.
    pub seed: u64,
    /// Trace length (None: the trace's default).
    pub duration_s: Option<f64>,
    /// Mean service time of a warm worker, seconds.
    pub mean_service_s: f64,
    /// Log-space standard deviation of the service time.
    pub service_sigma: f64,
    /// `pm.max_children` of the baselines and `max_workers` of the policy.
    pub max_workers: u32,
    /// `pm.max_spawn_rate` (`dynamic`).
    pub max_spawn_rate: u32,
    /// `pm.process_idle_timeout`, seconds (`ondemand`).
    pub ondemand_idle_timeout_s: f64,
    /// Time for a forked worker to accept its first request.
    pub fork_s: f64,
    /// Decision to the new master's start (write and test the config), or
    /// to the extra master's stop when a change starts no master.
    pub apply_delay_s: f64,
    /// Start of a new master to "ready to handle connections"; the master
    /// it replaces (the old primary, or the previous extra master) is
    /// stopped at that moment.
    pub master_start_s: f64,
    /// Extra service time of a new master's first request with a cold
    /// OPcache, seconds.
    pub cold_start_s: f64,
    /// The same when `opcache.file_cache` was filled by the running
    /// master, seconds.
    pub file_cache_cold_start_s: f64,
    /// Requests into a new master after which the cold penalty has fallen
    /// to 1/e (OPcache warms as requests compile scripts).
    pub cold_requests: f64,
    /// Listen backlog (accept queue length).
    pub backlog: u32,
    /// Mean and standard deviation of one worker's PSS, bytes.
    pub pss_mean_bytes: f64,
    /// See `pss_mean_bytes`.
    pub pss_sd_bytes: f64,
    /// Master plus OPcache shared memory, bytes.
    pub shared_bytes: u64,
    /// Memory budget, bytes. The daemon's manager plans its cap over it
    /// as `scaling.memory_budget` (memory for the workers); the model-cap
    /// design passes it to `decide`, which takes the shared memory and
    /// the policy's reserve off first.
    pub memory_budget_bytes: u64,
    /// Period of the collector's accept-queue probe, seconds. 0.25 in the
    /// standard scenario: 4 sock_diag reads a second cost about 0.01 % of
    /// a core (`docs/bench/kernel.md`).
    pub probe_s: f64,
    /// Threshold of the table's "waited > target" column: the policy's
    /// acceptable wait (`Policy::emergency_wait_s`, 50 ms by default).
    pub slow_wait_s: f64,
    /// The trace's first seconds are a warm-up, as in the real benchmark:
    /// their requests are served but left out of every figure, and so are
    /// the memory, the time over budget and the changes before this.
    pub measure_from_s: f64,
    /// A client that gives up after this long (the real benchmark's 10 s):
    /// a request answered later counts as failed and as this long in the
    /// response figures, though its worker still serves it whole. `None`:
    /// clients wait for ever.
    pub client_timeout_s: Option<f64>,
}

impl Scenario {
    /// The scenario of the recorded benchmark tables.
    pub fn standard(seed: u64) -> Scenario {
        const MIB: f64 = 1024.0 * 1024.0;
        Scenario {
            seed,
            duration_s: None,
            mean_service_s: 0.05,
            service_sigma: 0.6,
            max_workers: 32,
            max_spawn_rate: 32,
            ondemand_idle_timeout_s: 10.0,
            fork_s: 0.02,
            apply_delay_s: 0.1,
            master_start_s: 0.2,
            cold_start_s: 0.9,
            file_cache_cold_start_s: 0.2,
            cold_requests: 8.0,
            backlog: 4096,
            pss_mean_bytes: 60.0 * MIB,
            pss_sd_bytes: 6.0 * MIB,
            shared_bytes: 128 * 1024 * 1024,
            memory_budget_bytes: 3 * 1024 * 1024 * 1024,
            slow_wait_s: 0.05,
            probe_s: 0.25,
            measure_from_s: 0.0,
            client_timeout_s: None,
        }
    }

    /// The end of the warm-up, in the engine's microseconds.
    pub(crate) fn measure_from_us(&self) -> u64 {
        (self.measure_from_s * 1e6) as u64
    }
}

/// One change the manager decided in a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// Simulated time of the decision, seconds.
    pub at_s: f64,
    /// Size (or cap) before the change.
    pub from: u32,
    /// Size (or cap) after the change.
    pub to: u32,
    /// The rule behind the change (`caps::next_cap`'s or `decide`'s).
    pub rule: &'static str,
}

/// What one manager achieved on one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    /// Manager name.
    pub manager: &'static str,
    /// Requests that arrived.
    pub requests: u64,
    /// Requests that failed: the backlog was full.
    pub failed: u64,
    /// Wait percentiles of served requests (time in the accept queue,
    /// including a fork or a new master's start), seconds.
    pub p50_wait_s: f64,
    /// See `p50_wait_s`.
    pub p99_wait_s: f64,
    /// Largest wait, seconds.
    pub max_wait_s: f64,
    /// Response time percentiles (wait plus service, the cold-OPcache
    /// penalty included), seconds.
    pub p50_response_s: f64,
    /// See `p50_response_s`.
    pub p99_response_s: f64,
    /// Largest response time, seconds.
    pub max_response_s: f64,
    /// Requests that waited at all.
    pub waited: u64,
    /// Requests that waited longer than `Scenario::slow_wait_s`.
    pub over_target: u64,
    /// Requests served by a cold master (penalty above 10 ms).
    pub cold_served: u64,
    /// Integral of running workers over time.
    pub worker_seconds: f64,
    /// Integral of the workers' PSS over time, GiB·s.
    pub memory_gib_seconds: f64,
    /// Changes applied: hand-overs, extra masters started or replaced,
    /// extra masters stopped.
    pub changes: u64,
    /// New masters started (a hand-over's or an extra one); stopping an
    /// extra master starts none.
    pub master_starts: u64,
    /// Times of the changes and their direction (+1 up, -1 down).
    pub change_log: Vec<(f64, i8)>,
    /// The same changes with their sizes and reasons.
    pub changes_detail: Vec<ChangeRecord>,
    /// Workers forked.
    pub spawns: u64,
    /// Most workers alive at once (every master's, including those of a
    /// master finishing its requests after it was stopped).
    pub peak_workers: u32,
    /// Most workers of the serving masters (the primary and the extra
    /// one) at once.
    pub peak_serving_workers: u32,
    /// Requests that arrived within [`AFTER_SCALE_UP_S`] of a decision to
    /// raise the size or cap.
    pub after_scale_up_requests: u64,
    /// p99 response time of those requests, seconds (0 without any).
    pub after_scale_up_p99_response_s: f64,
}

/// The window after a scale-up decision whose requests are scored apart
/// ([`SimResult::after_scale_up_p99_response_s`]): a new master's start and
/// its cold OPcache fall within it.
pub const AFTER_SCALE_UP_S: f64 = 5.0;

impl SimResult {
    /// Oscillations: three consecutive changes that alternate direction
    /// (up, down, up or down, up, down) within `window_s` seconds. A single
    /// reversal (up to a peak, then down) is how a pool follows a daily
    /// curve; flapping is going back and forth.
    pub fn oscillations_within(&self, window_s: f64) -> usize {
        self.change_log
            .windows(3)
            .filter(|three| {
                let alternating = three[0].1 != three[1].1 && three[1].1 != three[2].1;
                alternating && three[2].0 - three[0].0 < window_s
            })
            .count()
    }

    /// Most changes in any `window_s` seconds.
    pub fn max_changes_within(&self, window_s: f64) -> usize {
        let times: Vec<f64> = self.change_log.iter().map(|&(t, _)| t).collect();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|&&t| t - times[i] < window_s)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}
