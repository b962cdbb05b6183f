//! A deterministic discrete-event simulator of one PHP-FPM pool, used to
//! compare the manager's policy with php-fpm's own process managers.
//!
//! The model (all figures are [`Scenario`] fields, defaults in
//! [`Scenario::standard`]):
//! - arrivals: Poisson with the time-varying rate of a [`TraceSpec`]
//!   (thinning), pre-drawn once per seed so every manager sees exactly the
//!   same requests with the same service demands (common random numbers);
//! - service: lognormal, mean 50 ms, log-sd 0.6;
//! - an accept queue (the listen backlog); requests beyond it are dropped
//!   and counted;
//! - a forked worker is ready after `fork_s` (`dynamic`, `ondemand`);
//! - a manager change starts a new master with the new `pm.max_children`
//!   on the inherited socket and stops the old one gracefully half a
//!   second later (facts 4 and 5a): `apply_delay_s` after the decision the
//!   new master starts, its workers accept after `master_start_s`, and
//!   both masters serve meanwhile. [`ChangeMechanism::Reload`] models a
//!   plain `SIGUSR2` instead (facts 1 and 3): every worker is replaced and
//!   nothing is accepted for `reload_stall_s`;
//! - a new master has a cold OPcache (fact 2): its `n`-th request takes
//!   `1 + cold_extra * exp(-n / cold_requests)` times longer, because
//!   OPcache warms as requests compile scripts; forks of a running master
//!   share its warm OPcache;
//! - memory: each worker's PSS is drawn at spawn (normal, clamped), the
//!   master and OPcache shared memory are fixed.
//!
//! Managers: the policy of this crate (a collection every 1 s when the
//! pool was busy at the previous one, every 5 s otherwise, plus an
//! immediate collection when the collector's probe of the accept queue,
//! every 250 ms (`probe_s`), finds every worker busy and requests waiting,
//! as the collector does on a saturation event; one sock_diag read of the
//! queue costs about 21 µs, `docs/bench/kernel.md`); `static` at max;
//! `dynamic` (fact 16: 1 s tick, spawn rate 1, 2, 4 … 32 while
//! idle < min_spare, one idle kill per tick when idle > max_spare); `ondemand` (fact 17: fork when a request finds no
//! idle worker, reap one worker idle for 10 s per 1 s tick).

mod engine;
mod report;
mod rng;
mod trace;

use thiserror::Error;

use crate::decide::ResizeReason;
use crate::policy::{Policy, PolicyError};

pub use engine::{run, run_shared, SharedPool, SharedResult};
pub use report::{render_table, simulate_all, simulate_report, simulate_report_with};
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

/// How the manager applies a change of `pm.max_children`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeMechanism {
    /// Start a new master on the inherited socket, then stop the old one
    /// gracefully (facts 4 and 5a): no stall, only the new master is cold.
    Handover,
    /// `SIGUSR2` (facts 1-3): every worker restarts, a short stall.
    Reload,
}

/// Which process manager runs the simulated pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Manager {
    /// This crate's policy.
    Policy(Policy),
    /// `pm = static` with `max_workers` workers.
    Static,
    /// `pm = dynamic` with the scenario's spare settings.
    Dynamic,
    /// `pm = ondemand` with a 10 s idle timeout.
    Ondemand,
}

impl Manager {
    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Manager::Policy(_) => "manager",
            Manager::Static => "static@max",
            Manager::Dynamic => "dynamic",
            Manager::Ondemand => "ondemand",
        }
    }
}

/// The modelled pool and machine; the same for every manager in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Seed of every random stream.
    pub seed: u64,
    /// Trace length (None: the trace's default).
    pub duration_s: Option<f64>,
    /// Mean service time, seconds.
    pub mean_service_s: f64,
    /// Log-space standard deviation of the service time.
    pub service_sigma: f64,
    /// `pm.max_children` of every manager.
    pub max_workers: u32,
    /// `dynamic`: `pm.start_servers`, `min_spare_servers`, `max_spare_servers`.
    pub dynamic_start: u32,
    /// See `dynamic_start`.
    pub dynamic_min_spare: u32,
    /// See `dynamic_start`.
    pub dynamic_max_spare: u32,
    /// `pm.max_spawn_rate`.
    pub max_spawn_rate: u32,
    /// `ondemand`: `pm.process_idle_timeout`, seconds.
    pub ondemand_idle_timeout_s: f64,
    /// Time for a forked worker to accept its first request.
    pub fork_s: f64,
    /// Decision to the new master's start (write and test the config).
    pub apply_delay_s: f64,
    /// How a change is applied.
    pub change: ChangeMechanism,
    /// Hand-over: time for a new master's workers to accept.
    pub master_start_s: f64,
    /// Hand-over: the old master is stopped this long after the new one
    /// was started (0.5 s in fact 5a).
    pub handover_s: f64,
    /// Reload: old idle workers gone until the new ones are ready.
    pub reload_stall_s: f64,
    /// Cold-OPcache slowdown of a new master's first request (1.0 = twice
    /// as slow).
    pub cold_extra: f64,
    /// Requests after which the slowdown has fallen to 1/e: OPcache warms
    /// as scripts are compiled, which requests do, not time.
    pub cold_requests: f64,
    /// Listen backlog (accept queue length).
    pub backlog: u32,
    /// Mean and standard deviation of one worker's PSS, bytes.
    pub pss_mean_bytes: f64,
    /// See `pss_mean_bytes`.
    pub pss_sd_bytes: f64,
    /// Master plus OPcache shared memory, bytes.
    pub shared_bytes: u64,
    /// Memory budget of the pool, bytes.
    pub memory_budget_bytes: u64,
    /// Period of the collector's accept-queue probe (a saturated pool is
    /// collected at the next probe), seconds. 0.25 in the standard
    /// scenario: 4 sock_diag reads a second cost about 0.01 % of a core.
    pub probe_s: f64,
    /// Threshold of the table's "waited > target" column: the policy's
    /// acceptable wait (`Policy::emergency_wait_s`, 50 ms by default).
    pub slow_wait_s: f64,
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
            dynamic_start: 8,
            dynamic_min_spare: 4,
            dynamic_max_spare: 12,
            max_spawn_rate: 32,
            ondemand_idle_timeout_s: 10.0,
            fork_s: 0.02,
            apply_delay_s: 0.1,
            change: ChangeMechanism::Handover,
            master_start_s: 0.2,
            handover_s: 0.5,
            reload_stall_s: 0.25,
            cold_extra: 1.0,
            cold_requests: 200.0,
            backlog: 4096,
            pss_mean_bytes: 60.0 * MIB,
            pss_sd_bytes: 6.0 * MIB,
            shared_bytes: 128 * 1024 * 1024,
            memory_budget_bytes: 3 * 1024 * 1024 * 1024,
            slow_wait_s: 0.05,
            probe_s: 0.25,
        }
    }
}

/// One change the manager decided in a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// Simulated time of the decision, seconds.
    pub at_s: f64,
    /// Size before the change.
    pub from: u32,
    /// Size after the change.
    pub to: u32,
    /// Why the policy changed the size.
    pub reason: ResizeReason,
}

/// What one manager achieved on one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    /// Manager name.
    pub manager: &'static str,
    /// Requests that arrived.
    pub requests: u64,
    /// Requests dropped because the backlog was full.
    pub dropped: u64,
    /// Wait percentiles of served requests, seconds.
    pub p50_wait_s: f64,
    /// See `p50_wait_s`.
    pub p95_wait_s: f64,
    /// See `p50_wait_s`.
    pub p99_wait_s: f64,
    /// Largest wait, seconds.
    pub max_wait_s: f64,
    /// Requests that waited at all (more than 0 µs in the accept queue).
    pub waited: u64,
    /// Requests that waited longer than `Scenario::slow_wait_s`.
    pub over_target: u64,
    /// Integral of running workers over time.
    pub worker_seconds: f64,
    /// Integral of the workers' PSS over time, GiB·s.
    pub memory_gib_seconds: f64,
    /// Reloads (manager changes) applied.
    pub changes: u64,
    /// Times of the changes and their direction (+1 up, -1 down).
    pub change_log: Vec<(f64, i8)>,
    /// The same changes with their sizes and reasons.
    pub changes_detail: Vec<ChangeRecord>,
    /// Workers forked.
    pub spawns: u64,
    /// Most workers alive at once.
    pub peak_workers: u32,
}

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
