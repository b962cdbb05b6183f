//! The latest known state of every pool, read by `/metrics`, health checks,
//! the API and the autoscaler.
//!
//! A pool's state has three parts, each with exactly one writer:
//! - [`Look`]: what the collector saw in one look, published whole as an
//!   immutable `Arc` (never patched field by field, never read back by the
//!   collector), so a reader sees one look or the next, never a mix;
//! - [`MasterState`]: the supervisor's view of the pool's php-fpm master;
//! - [`Control`]: the pool actor's desired spec and the autoscaler's view.
//!
//! A plain `std::sync::RwLock` is enough: every critical section is a few
//! pointer or field copies and none is held across an `.await`.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use fpm_core::fpm_conf::PoolSpec;
use fpm_core::status::{Derived, PoolStatus};
use fpm_core::PoolName;
use fpm_kernel::budget::Budget;
use fpm_kernel::workers::PoolAggregate;
use tokio::sync::{mpsc, Notify};

use crate::config::{Config, Pool};
use crate::events::{EventSink, ManagerEvent, Recent};
use crate::opcache::{OpcacheError, OpcacheStats};
use crate::surface::metrics::Metrics;

/// What is known about one pool: its three parts, read as one value.
///
/// Dereferences to the latest [`Look`], so surfaces read `s.up` or
/// `s.kernel` directly; the master and control parts are named.
#[derive(Debug, Clone)]
pub struct PoolState {
    pub name: PoolName,
    pub scrape_uri: String,
    /// Written by the supervisor only.
    pub master: MasterState,
    /// Written by the pool actor only.
    pub control: Arc<Control>,
    /// Written by the collector only, replaced whole after each look.
    pub look: Arc<Look>,
}

impl Deref for PoolState {
    type Target = Look;

    fn deref(&self) -> &Look {
        &self.look
    }
}

/// One look at a pool by the collector: immutable once published.
#[derive(Debug, Clone, Default)]
pub struct Look {
    /// Increases by one with every look at this pool (0: not looked at yet).
    pub seq: u64,
    /// When the look started.
    pub at: Option<SystemTime>,
    /// The status request succeeded.
    pub up: bool,
    /// The last ping succeeded.
    pub ping_ok: bool,
    /// Failed collections since the manager started (never decreases).
    pub scrape_failures: u64,
    /// Failed collections since the last success.
    pub consecutive_failures: u64,
    /// The most recent failure, kept until the next success.
    pub last_error: Option<ScrapeError>,
    /// The status page of this look; `None` while the pool is down, so no
    /// stale figures are exported with `phpfpm_up 0`.
    pub status: Option<PoolStatus>,
    pub derived: Derived,
    pub last_success: Option<SystemTime>,
    /// What the kernel says about the pool.
    pub kernel: KernelView,
    /// The interval the collector uses now (adaptive).
    pub interval: Duration,
    pub circuit_open: bool,
    /// OPcache of the pool's master, when `monitoring.enable_opcache`.
    pub opcache: Option<Result<OpcacheStats, Arc<OpcacheError>>>,
    /// Set while the pool's master makes no progress (stopped, or hung
    /// while connections wait): the pool is not ready, and a supervised
    /// master is restarted after `phpfpm.stall_restart_after`.
    pub stalled: Option<crate::collect::stall::Stalled>,
}

/// The pool as the kernel sees it: the listen backlog and the workers' CPU
/// and memory. Each part is `Err(reason)` when it cannot be read here.
#[derive(Debug, Clone)]
pub struct KernelView {
    /// (waiting, limit) of the pool's listening socket.
    pub accept_queue: Result<(u32, Option<u32>), String>,
    pub workers: Result<PoolAggregate, String>,
    /// Each worker as `/proc` showed it at the last look.
    pub per_worker: Vec<WorkerView>,
}

/// One worker from `/proc` (memory as of the last memory reading).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub pid: u32,
    /// `stat` state letter: R running, S sleeping, D disk wait, Z zombie.
    pub proc_state: char,
    pub age_secs: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    pub uss_bytes: Option<u64>,
}

impl Default for KernelView {
    fn default() -> Self {
        KernelView {
            accept_queue: Err("not read yet".to_owned()),
            workers: Err("not read yet".to_owned()),
            per_worker: Vec::new(),
        }
    }
}

/// A failed collection.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeError {
    /// Stable label: connect, timeout, http_status, not_json, truncated, ...
    pub kind: &'static str,
    pub message: String,
}

/// The supervisor's view of a pool's php-fpm master.
#[derive(Debug, Clone, Default)]
pub struct MasterState {
    pub supervised: bool,
    pub running: bool,
    pub pid: Option<u32>,
    /// Unexpected exits since the manager started.
    pub restarts: u64,
    pub last_exit: Option<String>,
    /// Set when the pool cannot be started (for example `php-fpm -t` failed).
    pub failed: Option<String>,
    /// Why the last requested change was refused (the pool kept running).
    pub last_apply_error: Option<String>,
    /// Incremented by every start or hand-over.
    pub generation: u64,
    /// Taken over from an earlier manager run rather than started.
    pub adopted: bool,
    /// The settings the pool runs with (supervised pools): the master's,
    /// with a second master's workers added to the cap.
    pub applied: Option<PoolSpec>,
    /// A second master serving beside the first (additive scale-up).
    pub extra: Option<ExtraMaster>,
}

/// A second master on a pool's socket: its own workers and scoreboard.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraMaster {
    pub pid: u32,
    pub workers: u32,
    /// Its own status listener (unix socket).
    pub status: std::path::PathBuf,
}

/// The pool actor's part: what the pool should run and why.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// The spec the pool should run (config, operator override and the
    /// autoscaler's cap combined); `None` for observed pools.
    pub spec: Option<PoolSpec>,
    /// The autoscaler's view of the pool, once it has looked at it.
    pub scaling: Option<crate::scale::ScalingView>,
}

impl PoolState {
    fn new(pool: &Pool) -> PoolState {
        PoolState {
            name: pool.name.clone(),
            scrape_uri: pool.scrape_uri(),
            master: MasterState {
                supervised: pool.spec.is_some(),
                ..MasterState::default()
            },
            control: Arc::new(Control {
                spec: pool.spec.clone(),
                scaling: None,
            }),
            look: Arc::new(Look::default()),
        }
    }

    /// The spec the pool should run, if supervised.
    pub fn spec(&self) -> Option<&PoolSpec> {
        self.control.spec.as_ref()
    }

    /// The spec the running master has, else the one it should have.
    pub fn running_spec(&self) -> Option<&PoolSpec> {
        self.master.applied.as_ref().or(self.control.spec.as_ref())
    }
}

/// Everything the surfaces need, shared behind an `Arc`.
#[derive(Debug)]
pub struct AppState {
    pools: RwLock<BTreeMap<PoolName, PoolState>>,
    pub metrics: Metrics,
    config: RwLock<Arc<Config>>,
    pub started: Instant,
    pub events: EventSink,
    events_rx: Mutex<Option<mpsc::Receiver<ManagerEvent>>>,
    pub recent_events: Recent,
    /// The host's memory and CPU budget (cgroup or /proc), when read.
    pub host: RwLock<Option<Result<Budget, String>>>,
    kicks: Mutex<BTreeMap<PoolName, Arc<Notify>>>,
    /// Per pool, woken after every published look (its actor waits on it).
    looks: Mutex<BTreeMap<PoolName, Arc<Notify>>>,
    /// The pool actors, for the API's controls (kept by `app`).
    pub handles: RwLock<BTreeMap<PoolName, crate::pool::PoolHandle>>,
    /// The storage writer, while storage runs (taken at shutdown so that the
    /// writer drains and commits).
    pub storage: RwLock<Option<fpm_storage::WriterHandle>>,
    /// The outcome of the last configuration reload (SIGHUP), if any.
    last_reload: RwLock<Option<ReloadOutcome>>,
    /// Configuration reloads asked over the API, for the reload loop.
    pub config_reloads: crate::surface::http::operate::ConfigReloads,
}

/// What the last configuration reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadOutcome {
    pub at: SystemTime,
    pub accepted: bool,
    /// Every problem of a refused config, each naming its key.
    pub problems: Vec<String>,
}

impl AppState {
    pub fn new(config: Config) -> Arc<AppState> {
        let pools = config
            .pools
            .iter()
            .map(|p| (p.name.clone(), PoolState::new(p)))
            .collect();
        let metrics = Metrics::new();
        let (events, rx) = EventSink::new(1024, metrics.events_dropped.clone());
        Arc::new(AppState {
            pools: RwLock::new(pools),
            metrics,
            config: RwLock::new(Arc::new(config)),
            started: Instant::now(),
            events,
            events_rx: Mutex::new(Some(rx)),
            recent_events: Recent::default(),
            host: RwLock::new(None),
            kicks: Mutex::new(BTreeMap::new()),
            looks: Mutex::new(BTreeMap::new()),
            handles: RwLock::new(BTreeMap::new()),
            storage: RwLock::new(None),
            last_reload: RwLock::new(None),
            config_reloads: Default::default(),
        })
    }

    /// The receiving end of the event channel (taken once, by the consumer).
    pub fn take_events(&self) -> Option<mpsc::Receiver<ManagerEvent>> {
        self.events_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The notifier that makes a pool's collector look at once.
    pub fn kick_handle(&self, pool: &PoolName) -> Arc<Notify> {
        self.kicks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pool.clone())
            .or_default()
            .clone()
    }

    /// The notifier woken after each look at `pool` is published.
    pub fn look_handle(&self, pool: &PoolName) -> Arc<Notify> {
        self.looks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pool.clone())
            .or_default()
            .clone()
    }

    /// Asks for an immediate collection of `pool` (after a start or change).
    pub fn kick(&self, pool: &PoolName) {
        self.kick_handle(pool).notify_one();
    }

    /// The configuration in force (replaced by a runtime reload).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// Starts tracking a pool added by a reload.
    pub fn add_pool(&self, pool: &Pool) {
        let mut guard = self.pools.write().unwrap_or_else(|e| e.into_inner());
        guard.insert(pool.name.clone(), PoolState::new(pool));
    }

    /// Forgets a pool removed by a reload; its series leave `/metrics`.
    pub fn remove_pool(&self, pool: &PoolName) {
        let mut guard = self.pools.write().unwrap_or_else(|e| e.into_inner());
        guard.remove(pool);
    }

    /// Read access. A poisoned lock means a writer panicked mid-update; the
    /// data is plain values, so reading it is still safe.
    pub fn pools(&self) -> RwLockReadGuard<'_, BTreeMap<PoolName, PoolState>> {
        self.pools.read().unwrap_or_else(|e| e.into_inner())
    }

    /// One pool's state, cloned (cheap: the look and control are shared).
    pub fn pool(&self, pool: &PoolName) -> Option<PoolState> {
        self.pools().get(pool).cloned()
    }

    /// The collector's write: replaces the pool's look whole. Returns the
    /// published look, which the collector may keep (it never reads it back
    /// from the state).
    pub fn publish_look(&self, pool: &PoolName, look: Look) -> Arc<Look> {
        let look = Arc::new(look);
        {
            let mut guard = self.pools.write().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = guard.get_mut(pool) {
                s.look = look.clone();
            }
        }
        self.look_handle(pool).notify_one();
        look
    }

    /// The supervisor's write: changes the master part only.
    pub fn update_master<R>(
        &self,
        pool: &PoolName,
        f: impl FnOnce(&mut MasterState) -> R,
    ) -> Option<R> {
        let mut guard = self.pools.write().unwrap_or_else(|e| e.into_inner());
        guard.get_mut(pool).map(|s| f(&mut s.master))
    }

    /// The pool actor's write: replaces the control part whole.
    pub fn publish_control(&self, pool: &PoolName, control: Control) {
        let mut guard = self.pools.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.get_mut(pool) {
            s.control = Arc::new(control);
        }
    }
}

impl AppState {
    /// Hands samples to the storage writer, if storage runs. Never blocks.
    pub fn store(&self, ts_ms: i64, samples: Vec<fpm_storage::Sample>) {
        if let Some(w) = self
            .storage
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w.record(ts_ms, samples);
        }
    }

    /// Records a reload's outcome for the API and `/metrics`.
    pub fn record_reload(&self, accepted: bool, problems: Vec<String>) {
        if accepted {
            self.metrics.config_last_reload_success.set(1);
        } else {
            self.metrics.config_reload_failures.inc();
            self.metrics.config_last_reload_success.set(0);
        }
        *self.last_reload.write().unwrap_or_else(|e| e.into_inner()) = Some(ReloadOutcome {
            at: SystemTime::now(),
            accepted,
            problems,
        });
    }

    /// The last reload's outcome (`None` until the first SIGHUP).
    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Storage writer figures for /metrics and the API.
    pub fn storage_status(&self) -> Option<fpm_storage::WriterStatus> {
        self.storage
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|w| w.status())
    }
}
