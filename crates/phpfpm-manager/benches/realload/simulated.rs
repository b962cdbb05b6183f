//! The simulator (`fpm_autoscale::sim`) on the benchmark's own traces,
//! calibrated from the app figures this run measured, printed next to the
//! real figures so that a model that strays from php-fpm shows.
//!
//! Calibration: the mean and spread of a request are the app's measured
//! mean and its lognormal wait's sigma; the cold-OPcache penalty of a new
//! master is the measured cold median less the warm median (and the same
//! with a pre-filled `opcache.file_cache`); a worker's PSS is the measured
//! median; the budget and every cap are the real run's; the backlog is
//! the real pools' listen backlog. The manager's policy comes from the
//! same config text the real manager runs with, read by the daemon's own
//! `scale::policy_for`. Like the real run, every contender first gets the
//! warm-up at base rate, which is left out of the figures (the simulator's
//! `measure_from_s`): a manager that has learned its workers' size there
//! starts the measured run as the real one does. A request answered after
//! the load generator's 10 s timeout counts as failed in both.

use std::fmt::Write as _;
use std::time::Duration;

use fpm_autoscale::sim::{run, run_shared, DynamicSpec, Manager, Scenario, SharedPool, SimResult};
use fpm_autoscale::{Policy, TraceSpec};
use fpm_loadgen::Phase;

use crate::fleet::{manager_config, tuned_spares, Kind, Setup, DEBIAN_SPARES};

/// What the run measured that the simulator needs.
pub(crate) struct Calibration {
    pub(crate) mean_service_s: f64,
    pub(crate) sigma: f64,
    pub(crate) cold_extra_s: f64,
    pub(crate) file_cache_extra_s: f64,
    pub(crate) worker_pss_bytes: u64,
    pub(crate) backlog: u32,
}

/// One contender's simulated figures, per pool.
pub(crate) struct Simulated {
    pub(crate) kind: Kind,
    pub(crate) pools: Vec<SimResult>,
}

impl Simulated {
    pub(crate) fn p99_each(&self) -> Vec<Duration> {
        self.pools
            .iter()
            .map(|r| Duration::from_secs_f64(r.p99_response_s))
            .collect()
    }

    pub(crate) fn mem_gib_seconds(&self) -> f64 {
        self.pools.iter().map(|r| r.memory_gib_seconds).sum()
    }

    pub(crate) fn changes(&self) -> u64 {
        self.pools.iter().map(|r| r.changes).sum()
    }

    pub(crate) fn failed(&self) -> u64 {
        self.pools.iter().map(|r| r.failed).sum()
    }

    pub(crate) fn requests(&self) -> u64 {
        self.pools.iter().map(|r| r.requests).sum()
    }
}

/// A step schedule as the simulator's CSV trace (rates hold within a
/// phase; a step takes a millisecond).
fn csv(phases: &[Phase]) -> String {
    let mut out = String::from("time_s,rate\n");
    let mut t = 0.0;
    for p in phases {
        let end = t + p.duration.as_secs_f64();
        let _ = writeln!(out, "{t:.3},{}", p.rate);
        let _ = writeln!(out, "{:.3},{}", end - 0.001, p.rate);
        t = end;
    }
    out
}

fn scenario(cal: &Calibration, setup: &Setup) -> Scenario {
    let mut s = Scenario::standard(crate::SEED);
    s.mean_service_s = cal.mean_service_s;
    s.service_sigma = cal.sigma;
    s.max_workers = setup.cap_per_pool;
    s.cold_start_s = cal.cold_extra_s.max(0.0);
    s.file_cache_cold_start_s = cal.file_cache_extra_s.max(0.0);
    s.backlog = cal.backlog;
    s.pss_mean_bytes = cal.worker_pss_bytes as f64;
    s.pss_sd_bytes = cal.worker_pss_bytes as f64 * 0.02;
    // The budget is the workers' memory (`scaling.memory_budget`); the
    // measured PSS already holds each worker's share of OPcache.
    s.shared_bytes = 0;
    s.memory_budget_bytes = setup.budget;
    s
}

/// The real manager's policy for `pool`, read from its own config text.
fn policy(setup: &Setup, pool: &str) -> Policy {
    let text = manager_config(&setup.app_dir, 1, setup, true, false);
    let cfg = phpfpm_manager::config::load(&phpfpm_manager::config::LoadInput {
        file: Some((setup.app_dir.join("sim.yaml"), text)),
        env: Vec::new(),
        cwd: setup.app_dir.clone(),
        runtime_dir: None,
    })
    .unwrap_or_else(|e| panic!("the manager's config does not load for the simulator: {e}"));
    let p = cfg
        .pools
        .iter()
        .find(|p| p.name.as_str() == pool)
        .expect("pool in config");
    let policy = phpfpm_manager::scale::policy_for(p).expect("policy");
    // A fixed `scaling.memory_budget` is used whole by the daemon (no
    // reserve is taken off it); the simulator's shared runs take the
    // policy's reserve off, so it is 0 here as in the daemon.
    let mut spec = policy.spec().clone();
    spec.memory_reserve_mb = 0.0;
    Policy::new(spec).expect("policy without reserve")
}

fn dynamic(name: &'static str, (start, min_spare, max_spare): (u32, u32, u32)) -> Manager {
    Manager::Dynamic(DynamicSpec {
        name,
        start,
        min_spare,
        max_spare,
    })
}

fn manager_of(kind: Kind, setup: &Setup, pool: &str) -> Manager {
    match kind {
        Kind::Static => Manager::Static,
        Kind::Dynamic => dynamic("dynamic", DEBIAN_SPARES),
        Kind::DynamicTuned => dynamic("dynamic-tuned", tuned_spares(setup.cap_per_pool)),
        Kind::Ondemand | Kind::OndemandOver => Manager::Ondemand,
        Kind::Manager | Kind::ManagerCold | Kind::ManagerAdditive => {
            let (file_cache, additive) = kind.manager_settings().expect("a manager contender");
            Manager::Daemon {
                policy: policy(setup, pool),
                file_cache,
                additive,
            }
        }
    }
}

/// Every contender of `kinds` on the scenario's traces.
pub(crate) fn simulate(
    cal: &Calibration,
    setup: &Setup,
    phases: &[Vec<Phase>],
    (base, warmup): (f64, Duration),
    kinds: &[Kind],
) -> Vec<Simulated> {
    let mut sc = scenario(cal, setup);
    sc.measure_from_s = warmup.as_secs_f64();
    // The load generator gives up after 10 s and counts the request failed.
    sc.client_timeout_s = Some(crate::REQUEST_TIMEOUT.as_secs_f64());
    let phases: Vec<Vec<Phase>> = phases
        .iter()
        .map(|ph| {
            let mut with_warm_up = vec![Phase::new(base, warmup)];
            with_warm_up.extend(ph.iter().cloned());
            with_warm_up
        })
        .collect();
    kinds
        .iter()
        .map(|&kind| {
            let pools = if setup.pools.len() == 1 {
                let trace = TraceSpec::Csv(csv(&phases[0]));
                vec![run(&trace, &manager_of(kind, setup, setup.pools[0]), &sc)
                    .expect("simulation runs")]
            } else {
                let shared: Vec<SharedPool> = setup
                    .pools
                    .iter()
                    .zip(&phases)
                    .map(|(pool, ph)| SharedPool {
                        name: (*pool).to_owned(),
                        trace: TraceSpec::Csv(csv(ph)),
                        manager: manager_of(kind, setup, pool),
                        max_workers: if kind.manager_settings().is_some()
                            || kind == Kind::OndemandOver
                        {
                            setup.manager_max_per_pool
                        } else {
                            setup.cap_per_pool
                        },
                    })
                    .collect();
                run_shared(&shared, &sc)
                    .expect("shared simulation runs")
                    .pools
            };
            Simulated { kind, pools }
        })
        .collect()
}
