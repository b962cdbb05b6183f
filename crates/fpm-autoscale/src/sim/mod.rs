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
//! - a forked worker is ready after `fork_s`; a manager change is a reload
//!   (fact 1): `apply_delay_s` after the decision the master re-executes,
//!   idle workers stop, busy ones finish their request (the manager sets
//!   `process_control_timeout`, fact 3), and the new workers are ready
//!   `reload_stall_s` later;
//! - a reload flushes OPcache (fact 2): requests that start `x` seconds
//!   after it take `1 + cold_extra * exp(-x / cold_tau_s)` times longer;
//! - memory: each worker's PSS is drawn at spawn (normal, clamped), the
//!   master and OPcache shared memory are fixed.
//!
//! Managers: the policy of this crate (a collection every 1 s when the
//! pool was busy at the previous one, every 5 s otherwise, plus an
//! immediate collection when a 1 s probe of the accept queue finds every
//! worker busy and requests waiting, as the collector does on a saturation
//! event); `static` at max; `dynamic` (fact 16: 1 s tick, spawn rate
//! 1, 2, 4 … 32 while idle < min_spare, one idle kill per tick when
//! idle > max_spare); `ondemand` (fact 17: fork when a request finds no
//! idle worker, reap one worker idle for 10 s per 1 s tick).

mod engine;
mod report;
mod rng;
mod trace;

use thiserror::Error;

use crate::policy::{Policy, PolicyError};

pub use engine::run;
pub use report::{render_table, simulate_all, simulate_report};
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
    /// Decision to reload signal (write and test the config).
    pub apply_delay_s: f64,
    /// Reload: old idle workers gone until the new ones are ready.
    pub reload_stall_s: f64,
    /// Cold-OPcache slowdown right after a reload (1.0 = twice as slow).
    pub cold_extra: f64,
    /// Time constant of the cold-OPcache slowdown.
    pub cold_tau_s: f64,
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
    /// Wait target used for the "waited more than the target" column.
    pub wait_target_s: f64,
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
            reload_stall_s: 0.25,
            cold_extra: 1.0,
            cold_tau_s: 2.0,
            backlog: 4096,
            pss_mean_bytes: 60.0 * MIB,
            pss_sd_bytes: 6.0 * MIB,
            shared_bytes: 128 * 1024 * 1024,
            memory_budget_bytes: 3 * 1024 * 1024 * 1024,
            wait_target_s: 0.05,
        }
    }
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
    /// Requests that waited longer than the wait target.
    pub over_target: u64,
    /// Integral of running workers over time.
    pub worker_seconds: f64,
    /// Integral of the workers' PSS over time, GiB·s.
    pub memory_gib_seconds: f64,
    /// Reloads (manager changes) applied.
    pub changes: u64,
    /// Times of the changes and their direction (+1 up, -1 down).
    pub change_log: Vec<(f64, i8)>,
    /// Workers forked.
    pub spawns: u64,
    /// Most workers alive at once.
    pub peak_workers: u32,
}

impl SimResult {
    /// Changes that reverse the previous one within `window_s` seconds
    /// (up then down, or down then up): the oscillation count.
    pub fn reversals_within(&self, window_s: f64) -> usize {
        self.change_log
            .windows(2)
            .filter(|pair| pair[0].1 != pair[1].1 && pair[1].0 - pair[0].0 < window_s)
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
