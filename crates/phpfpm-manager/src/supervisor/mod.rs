//! The supervisor: one actor per supervised pool. It owns the pool's listening
//! sockets, writes and validates the pool's php-fpm config, runs the pool's own
//! master, restarts it with backoff when it dies, changes its settings by a
//! zero-drop hand-over between masters, adopts a master left running by an
//! earlier manager, and stops it gracefully on shutdown.
//!
//! One master per pool (see ARCHITECTURE.md): a change to one pool never
//! reloads, restarts or flushes the OPcache of another.
//!
//! Hand-over ("apply pool spec"): validate the new config with `php-fpm -t`,
//! start a second master on the same inherited sockets, wait until it says it
//! is ready, then SIGQUIT the old one, which finishes its requests in flight
//! (up to `process_control_timeout`). Both accept from one kernel queue in the
//! meantime, so no connection is refused and no request is cut.
//!
//! With `phpfpm.additive_scale_up`, more workers for an `ondemand` pool come
//! from a second master on the same sockets instead (`extra.rs`): the warm
//! master keeps serving and only the added workers start cold.

mod backoff;
pub mod binary;
pub mod child;
mod extra;
pub mod files;
pub mod sockets;
mod trace;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fpm_core::fpm_conf::{self, PoolSpec};
use fpm_core::PoolName;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Endpoint, Pool};
use crate::events::{ManagerEvent, What};
use crate::state::AppState;
use backoff::Backoff;
use child::{FpmBinary, Master, StopOutcome};
use files::{write_atomic, Layout};
use sockets::{Access, PoolSocket};

/// A master that ran at least this long before exiting resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How often a crash-looping pool is still retried.
const SLOW_RETRY: Duration = Duration::from_secs(60);
/// How often the supervisor checks whether its master was found stalled.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// How long a new master may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Finds the php-fpm binary `phpfpm.binary` names (or the usual places).
pub fn find_binary(cfg: &Config) -> anyhow::Result<FpmBinary> {
    let path = binary::find(
        cfg.phpfpm.binary.as_deref(),
        std::env::var("PATH").ok().as_deref(),
    )?;
    let as_root = nix::unistd::geteuid().is_root();
    Ok(FpmBinary { path, as_root })
}

/// Writes the `[global]` file every master includes. Running masters keep
/// what they read at their start; the next start or hand-over reads this.
pub fn write_global(layout: &Layout, cfg: &Config) -> anyhow::Result<()> {
    write_atomic(
        &layout.global_conf(),
        fpm_conf::render_global(&cfg.phpfpm.global).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// The php-fpm binary every supervisor starts its next master with. A
/// reload that changes `phpfpm.binary` replaces it; masters running keep
/// the binary they were started from.
#[derive(Debug, Clone)]
pub struct BinaryCell(Arc<std::sync::RwLock<FpmBinary>>);

impl BinaryCell {
    pub fn new(binary: FpmBinary) -> BinaryCell {
        BinaryCell(Arc::new(std::sync::RwLock::new(binary)))
    }

    pub fn get(&self) -> FpmBinary {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, binary: FpmBinary) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = binary;
    }
}

/// Creates the runtime directory and the shared files, and finds php-fpm.
pub fn prepare_runtime(cfg: &Config) -> anyhow::Result<(Layout, FpmBinary)> {
    let layout = Layout::new(&cfg.phpfpm.runtime_dir);
    let binary = find_binary(cfg)?;
    layout
        .create_dirs()
        .context("cannot create the runtime directory (phpfpm.runtime_dir)")?;
    // Probe scripts left by a manager that was killed.
    if let Err(e) = crate::opcache::remove_stale(&layout.root.join("opcache")) {
        tracing::warn!("Cannot clean the OPcache probe directory: {e}.");
    }
    write_global(&layout, cfg)?;
    if cfg.zero_config {
        let index = layout.www().join("index.php");
        if !index.exists() {
            write_atomic(&index, DEMO_INDEX.as_bytes(), 0o644)?;
        }
    }
    Ok((layout, binary))
}

/// The demo pool's page: a short response with a little work in it.
const DEMO_INDEX: &str = "<?php\n// Served by the phpfpm-manager demo pool.\n$ms = min(2000, max(0, (int)($_GET['ms'] ?? 0)));\nif ($ms > 0) { usleep($ms * 1000); }\nheader('Content-Type: text/plain');\necho \"hello from pool demo, pid \", getmypid(), \"\\n\";\n";

/// What a supervisor can be asked to do.
#[derive(Debug)]
pub enum Command {
    /// Change the pool's settings through a hand-over.
    Apply {
        spec: Box<PoolSpec>,
        /// Why, for the `pool_change` event (config, autoscaler rule, pin).
        reason: String,
        /// Start a new master even when the spec is the one running (to
        /// shed the idle workers an ondemand master keeps).
        renew: bool,
        reply: oneshot::Sender<Result<ApplyReport, ApplyError>>,
        /// The requester's span: the hand-over's span is its child.
        span: tracing::Span,
    },
}

/// Why a change was not applied. In every case the running master (if any)
/// keeps serving with its old settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// `php-fpm -t` (or rendering) refused the new config.
    #[error("refused by php-fpm -t: {0}")]
    Refused(String),
    /// The new master did not become ready.
    #[error("the new master failed to start: {0}")]
    StartFailed(String),
    /// The listening sockets could not be opened.
    #[error("cannot open the pool's sockets: {0}")]
    Sockets(String),
    /// The supervisor is not running (the pool is being stopped).
    #[error("the pool's supervisor is gone")]
    Gone,
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyReport {
    pub old_pid: Option<u32>,
    pub new_pid: u32,
    /// From the request to the new master being ready to serve.
    pub took: Duration,
    pub generation: u64,
    /// Nothing needed to change.
    pub unchanged: bool,
    /// Set once the master this change replaced has exited: until then its
    /// workers finish their requests and their memory is not free.
    pub previous_stopped: Option<Stopped>,
    /// The workers (caps) of the masters this change stops; `None` when
    /// the cap of one of them is not known (a master adopted with settings
    /// other than its pool file's).
    pub stopping_workers: Option<u32>,
}

/// A flag set once a replaced master has exited.
#[derive(Debug, Clone, Default)]
pub struct Stopped(Arc<std::sync::atomic::AtomicBool>);

impl Stopped {
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl PartialEq for Stopped {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The way to talk to a running supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    pub pool: PoolName,
    tx: mpsc::Sender<Command>,
}

impl SupervisorHandle {
    /// A handle whose commands arrive on the returned receiver: for tests of
    /// what drives a supervisor, without running php-fpm.
    pub fn detached(pool: PoolName) -> (SupervisorHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(8);
        (SupervisorHandle { pool, tx }, rx)
    }

    /// Applies `spec` to the pool (zero-drop hand-over) and reports.
    pub async fn apply(&self, spec: PoolSpec, reason: &str) -> Result<ApplyReport, ApplyError> {
        self.send_apply(spec, reason, false).await
    }

    /// Hands the pool over to a new master with `spec`, even if the running
    /// one has it already.
    pub async fn renew(&self, spec: PoolSpec, reason: &str) -> Result<ApplyReport, ApplyError> {
        self.send_apply(spec, reason, true).await
    }

    async fn send_apply(
        &self,
        spec: PoolSpec,
        reason: &str,
        renew: bool,
    ) -> Result<ApplyReport, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Apply {
                spec: Box::new(spec),
                reason: reason.to_owned(),
                renew,
                reply,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| ApplyError::Gone)?;
        rx.await.map_err(|_| ApplyError::Gone)?
    }
}

/// Runs one pool's master for the life of the manager.
///
/// The `phpfpm` settings (binary, timeouts, backoff, crash loop, stall
/// restart, warm hand-over) are read again from the current configuration
/// whenever something happens, so a reload applies them to the next start,
/// hand-over or stop without touching the running master.
pub struct Supervisor {
    pool: Pool,
    layout: Layout,
    /// Where a reload puts a new `phpfpm.binary`.
    binaries: BinaryCell,
    /// The binary the next master starts from.
    binary: FpmBinary,
    stop_timeout: Duration,
    /// php-fpm's process_control_timeout: how long an old master may take to
    /// finish its requests after a hand-over.
    control_timeout: Duration,
    /// Give new masters the previous masters' compiled scripts.
    warm_handover: bool,
    /// Grow an `ondemand` pool by a second master (`extra.rs`).
    additive: bool,
    /// The second master serving beside the first, if any.
    extra: Option<extra::Extra>,
    /// The second master's own status listener, bound once and kept.
    extra_status: Option<PoolSocket>,
    state: Arc<AppState>,
    /// The settings the current master runs with.
    spec: Option<PoolSpec>,
    /// The pool socket, then the status socket (unix or TCP).
    sockets: Vec<PoolSocket>,
    generation: u64,
    crashes: VecDeque<Instant>,
    backoff: Backoff,
    /// Unexpected exits within `crash_loop_window` that mark the pool failed.
    crash_loop_exits: usize,
    crash_loop_window: Duration,
    /// A stalled master is killed and restarted after this (zero: never).
    stall_restart_after: Duration,
    rx: mpsc::Receiver<Command>,
}

/// Why the supervisor's loop woke up.
enum Event {
    Cancel,
    Detach,
    Cmd(Option<Command>),
    Exited(String),
    /// The second master exited on its own.
    ExtraExited(String),
    Retry,
    /// Time to check whether the collector found the master stalled.
    StallCheck,
}

impl Supervisor {
    pub fn new(
        pool: Pool,
        layout: Layout,
        binaries: BinaryCell,
        cfg: &Config,
        state: Arc<AppState>,
    ) -> (Supervisor, SupervisorHandle) {
        let (tx, rx) = mpsc::channel(8);
        let handle = SupervisorHandle {
            pool: pool.name.clone(),
            tx,
        };
        let sup = Supervisor {
            pool,
            layout,
            binary: binaries.get(),
            binaries,
            stop_timeout: cfg.phpfpm.stop_timeout,
            control_timeout: Duration::from_secs(cfg.phpfpm.global.process_control_timeout_secs),
            warm_handover: cfg.phpfpm.warm_handover,
            additive: cfg.phpfpm.additive_scale_up,
            extra: None,
            extra_status: None,
            state,
            spec: None,
            sockets: Vec::new(),
            generation: 0,
            crashes: VecDeque::new(),
            backoff: Backoff::new(
                cfg.phpfpm.restart_backoff_initial,
                cfg.phpfpm.restart_backoff_max,
                STABLE_AFTER,
            ),
            crash_loop_exits: cfg.phpfpm.crash_loop_exits as usize,
            crash_loop_window: cfg.phpfpm.crash_loop_window,
            stall_restart_after: cfg.phpfpm.stall_restart_after,
            rx,
        };
        (sup, handle)
    }

    fn name(&self) -> &str {
        self.pool.name.as_str()
    }

    /// Takes the `phpfpm` settings of the configuration in force now (a
    /// reload may have changed them since this supervisor started).
    fn refresh_settings(&mut self) {
        let cfg = self.state.config();
        let p = &cfg.phpfpm;
        self.binary = self.binaries.get();
        self.stop_timeout = p.stop_timeout;
        self.control_timeout = Duration::from_secs(p.global.process_control_timeout_secs);
        self.warm_handover = p.warm_handover;
        self.additive = p.additive_scale_up;
        self.backoff
            .set_limits(p.restart_backoff_initial, p.restart_backoff_max);
        self.crash_loop_exits = p.crash_loop_exits as usize;
        self.crash_loop_window = p.crash_loop_window;
        self.stall_restart_after = p.stall_restart_after;
    }

    /// Runs until `cancel` (stop the master) or `detach` (leave it running
    /// for the next manager). `hurry` cuts a graceful stop short.
    /// `first` is the spec to start (or keep an adopted master) with: the
    /// pool actor's desired spec.
    pub async fn run(
        mut self,
        first: Option<PoolSpec>,
        cancel: CancellationToken,
        detach: CancellationToken,
        hurry: CancellationToken,
    ) {
        let Some(wanted) = first.or_else(|| self.pool.spec.clone()) else {
            return;
        };
        let wanted = self.complete_spec(wanted);
        self.adopt_extra().await;
        let mut current = self.adopt(&wanted).await;
        if current.is_none() {
            // A second master without its first one: start over with one.
            self.stop_extra_now(&hurry).await;
        }
        self.publish_extra();
        let mut retry_at = None;
        if current.is_none() {
            match self.start_traced(&wanted, false).await {
                Ok(m) => current = Some(m),
                Err(e) => retry_at = Some(self.on_start_failure(&e)),
            }
        } else if self.running().as_ref() != Some(&wanted) {
            // Adopted a master whose settings differ from the config now.
            match self
                .apply_traced(
                    &mut current,
                    wanted.clone(),
                    "adopted master differs from the desired settings",
                    false,
                    &tracing::Span::none(),
                )
                .await
            {
                Ok(r) => tracing::info!(
                    pool = self.name(),
                    new_pid = r.new_pid,
                    "Applied the configured settings to the adopted pool in {:?}.",
                    r.took
                ),
                Err(e) => tracing::error!(
                    pool = self.name(),
                    "Cannot apply the configured settings to the adopted pool: {e}."
                ),
            }
        }
        let mut commands_open = true;
        let mut stall_tick = tokio::time::interval(STALL_CHECK);
        stall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The stalled master already killed, until its exit is collected.
        let mut killed: Option<u32> = None;
        loop {
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => Event::Cancel,
                _ = detach.cancelled() => Event::Detach,
                cmd = self.rx.recv(), if commands_open => Event::Cmd(cmd),
                status = wait_master(current.as_mut()) => Event::Exited(status),
                status = wait_master(self.extra.as_mut().map(|e| &mut e.master)) => Event::ExtraExited(status),
                _ = sleep_until(retry_at) => Event::Retry,
                _ = stall_tick.tick(), if !self.stall_restart_after.is_zero() && current.is_some() => Event::StallCheck,
            };
            self.refresh_settings();
            match event {
                Event::Cancel => {
                    if let Some(mut m) = current.take() {
                        self.stop_master(&mut m, &hurry).await;
                    }
                    self.stop_extra_now(&hurry).await;
                    if let Some(s) = &self.extra_status {
                        s.remove_files();
                    }
                    // A clean stop leaves no socket file behind (a detach
                    // keeps them: the next manager serves on them).
                    for s in &self.sockets {
                        s.remove_files();
                    }
                    self.state.update_master(&self.pool.name, |m| {
                        m.running = false;
                        m.pid = None;
                    });
                    break;
                }
                Event::Detach => {
                    if let Some(e) = self.extra.as_mut() {
                        // Its record stays: the next manager adopts it too.
                        e.master.disarm();
                    }
                    if let Some(m) = current.as_mut() {
                        m.disarm();
                        tracing::info!(
                            pool = self.name(),
                            pid = m.pid,
                            "Leaving php-fpm master running for the next manager."
                        );
                    }
                    break;
                }
                Event::Cmd(None) => commands_open = false,
                Event::Cmd(Some(Command::Apply {
                    spec,
                    reason,
                    renew,
                    reply,
                    span,
                })) => {
                    let spec = self.complete_spec(*spec);
                    let res = self
                        .apply_traced(&mut current, spec, &reason, renew, &span)
                        .await;
                    if res.is_ok() {
                        retry_at = None;
                    }
                    let _ = reply.send(res);
                }
                Event::Exited(status) => {
                    let pid = current.take().map(|mut m| {
                        m.disarm();
                        m.pid
                    });
                    if let Some(pid) = pid {
                        child::kill_orphaned_workers(pid);
                    }
                    retry_at = Some(self.on_crash(pid, &status));
                }
                Event::ExtraExited(status) => {
                    let Some(spec) = self.on_extra_exit(&status) else {
                        continue;
                    };
                    if current.is_some() {
                        let why = "the second master exited; its workers go to one new master";
                        if let Err(e) = self
                            .apply_traced(&mut current, spec, why, true, &tracing::Span::none())
                            .await
                        {
                            tracing::error!(pool = self.name(), "Cannot fold the pool into one master: {e}; it runs with its first master's workers.");
                        }
                    }
                }
                Event::StallCheck => {
                    if let Some(m) = current.as_mut() {
                        if killed != Some(m.pid) && self.restart_if_stalled(m) {
                            killed = Some(m.pid);
                        }
                    }
                }
                Event::Retry => {
                    retry_at = None;
                    let spec = self.spec.clone().unwrap_or_else(|| wanted.clone());
                    match self.start_traced(&spec, true).await {
                        Ok(m) => current = Some(m),
                        Err(e) => retry_at = Some(self.on_start_failure(&e)),
                    }
                }
            }
        }
    }

    /// Kills `m` when the collector has found it stalled for
    /// `stall_restart_after`; its exit then takes the normal restart path.
    /// Returns whether it was killed.
    fn restart_if_stalled(&self, m: &mut Master) -> bool {
        let Some(st) = self.state.pool(&self.pool.name).and_then(|p| p.stalled) else {
            return false;
        };
        let now_ms = crate::events::unix_ms(std::time::SystemTime::now()) as u64;
        // A look about an earlier master says nothing about this one.
        if st.pid != m.pid
            || !crate::collect::stall::restart_due(&st, self.stall_restart_after, now_ms)
        {
            return false;
        }
        let stalled_ms = now_ms.saturating_sub(st.since_ms);
        tracing::error!(
            pool = self.name(),
            pid = m.pid,
            reason = st.reason.as_str(),
            "php-fpm master has made no progress for {} s; killing its process group and restarting it.",
            stalled_ms / 1000
        );
        self.event(What::MasterStall {
            pid: m.pid,
            reason: st.reason.as_str(),
            action: "restart",
            stalled_ms,
        });
        m.kill();
        true
    }

    /// Fills in what the config leaves to the supervisor: the account to run
    /// as when root, and the addresses php-fpm knows the sockets by.
    fn complete_spec(&self, mut spec: PoolSpec) -> PoolSpec {
        if self.binary.as_root {
            child::default_account(&mut spec);
        }
        if self.warm_handover {
            self.add_file_cache(&mut spec);
        }
        // php-fpm listens on the private paths (the FPM_SOCKETS keys); clients
        // use the public ones, which php-fpm never unlinks.
        if let Endpoint::Unix(p) = &self.pool.endpoint {
            spec.listen = sockets::private_path(p).to_string_lossy().into_owned();
        }
        if let Endpoint::Unix(p) = &self.pool.status_endpoint {
            spec.status_listen = Some(sockets::private_path(p).to_string_lossy().into_owned());
        }
        spec
    }

    /// Points `opcache.file_cache` at the pool's own directory in the runtime
    /// directory, unless the pool sets it: a new master (hand-over, restart)
    /// then loads compiled scripts from disk instead of compiling every one
    /// again while it takes the load (fact 18: worst request 0.23 s instead
    /// of 0.8-1.0 s on a real app). Workers forked by a running master share
    /// its shared-memory cache and do not need it.
    fn add_file_cache(&self, spec: &mut PoolSpec) {
        let set_by_pool = spec
            .php_values
            .iter()
            .chain(&spec.php_admin_values)
            .any(|(k, _)| k == "opcache.file_cache");
        if set_by_pool {
            return;
        }
        let dir = self.layout.opcache_file_cache(&self.pool.name);
        if let Err(e) = self.prepare_cache_dir(&dir, spec) {
            tracing::warn!(
                pool = self.name(),
                "Cannot prepare the OPcache file cache {}: {e}; new masters start with a cold OPcache.",
                dir.display()
            );
            return;
        }
        spec.php_admin_values
            .push(("opcache.file_cache".to_owned(), lossy(&dir)));
    }

    /// Creates the cache directory, private to the pool's account.
    fn prepare_cache_dir(&self, dir: &Path, spec: &PoolSpec) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if self.binary.as_root {
            let (uid, gid) = account_ids(spec);
            std::os::unix::fs::chown(dir, uid, gid)?;
        }
        Ok(())
    }

    fn fail(&self, why: &str) {
        self.state
            .update_master(&self.pool.name, |m| m.failed = Some(why.to_owned()));
    }

    fn crash_looping(&self) -> bool {
        self.crashes.len() >= self.crash_loop_exits
    }

    /// A start that failed marks the pool failed with the reason and returns
    /// when to try again: slowly (`SLOW_RETRY`) when php-fpm refused the
    /// config (it will refuse it again until the config changes, which a
    /// reload applies at once) or when starts keep failing, else with backoff.
    fn on_start_failure(&mut self, e: &anyhow::Error) -> Instant {
        let now = Instant::now();
        self.note_exit(now);
        let refused = e.downcast_ref::<child::ConfigRefused>().is_some();
        let delay = self.backoff.start_failed();
        let delay = if refused || self.crash_looping() {
            SLOW_RETRY
        } else {
            delay
        };
        let why = format!("{e:#}");
        tracing::error!(
            pool = self.name(),
            "Cannot start the pool: {why}; retrying in {delay:?}."
        );
        self.fail(&why);
        now + delay
    }

    /// Counts an exit (or failed start) in the crash-loop window.
    fn note_exit(&mut self, now: Instant) {
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.crash_loop_window)
        {
            self.crashes.pop_front();
        }
    }

    /// Records an unexpected exit and returns when to restart.
    fn on_crash(&mut self, pid: Option<u32>, status: &str) -> Instant {
        let now = Instant::now();
        self.note_exit(now);
        self.state
            .metrics
            .master_restarts
            .with_label_values(&[self.name()])
            .inc();
        let looping = self.crash_looping();
        let delay = self.backoff.exited(now);
        let delay = if looping { SLOW_RETRY } else { delay };
        self.state.update_master(&self.pool.name, |m| {
            m.running = false;
            m.pid = None;
            m.restarts += 1;
            m.last_exit = Some(status.to_owned());
            if looping {
                m.failed = Some(format!(
                    "crash loop: {} exits within {}s; retrying every {}s",
                    self.crash_loop_exits,
                    self.crash_loop_window.as_secs(),
                    SLOW_RETRY.as_secs()
                ));
            }
        });
        self.event(What::MasterCrash {
            pid,
            status: status.to_owned(),
            restart_in_ms: delay.as_millis() as u64,
            crash_loop: looping,
        });
        if looping {
            tracing::error!(pool = self.name(), pid, "php-fpm master exited unexpectedly ({status}); the pool is crash-looping, retrying every {:?}.", SLOW_RETRY);
        } else {
            tracing::warn!(
                pool = self.name(),
                pid,
                "php-fpm master exited unexpectedly ({status}); restarting in {delay:?}."
            );
        }
        now + delay
    }

    /// Writes and validates the config, opens the sockets if needed, starts
    /// a master and waits until it is ready.
    async fn cold_start(&mut self, spec: &PoolSpec) -> anyhow::Result<Master> {
        self.write_config(spec, self.generation + 1).await?;
        if self.sockets.is_empty() {
            self.sockets = self.open_sockets(spec)?;
            self.check_socket_mode();
        }
        let started = Instant::now();
        let master = self.start_master().await?;
        self.generation += 1;
        self.spec = Some(spec.clone());
        self.after_start(&master, started);
        Ok(master)
    }

    fn after_start(&mut self, master: &Master, started: Instant) {
        self.backoff.started(Instant::now());
        self.write_record(master);
        let spec = self.spec.clone();
        let generation = self.generation;
        self.state.update_master(&self.pool.name, |m| {
            m.running = true;
            m.pid = Some(master.pid);
            m.failed = None;
            m.generation = generation;
            // This manager started this master: it is no longer the adopted one.
            m.adopted = false;
            if let Some(spec) = spec {
                m.applied = Some(spec);
            }
        });
        tracing::info!(
            pool = self.name(),
            pid = master.pid,
            generation,
            "php-fpm master ready in {:?}.",
            started.elapsed()
        );
        // A second master still serving adds its workers to what runs.
        self.publish_extra();
        // Look at the new master at once rather than at the next interval.
        self.state.kick(&self.pool.name);
    }

    fn event(&self, what: What) {
        self.state
            .events
            .emit(ManagerEvent::new(Some(self.name()), "supervisor", what));
    }

    /// Spawns a master on the current sockets and waits for it to be ready.
    async fn start_master(&mut self) -> anyhow::Result<Master> {
        let conf = self.layout.master_conf(&self.pool.name);
        let sockets: Vec<&PoolSocket> = self.sockets.iter().collect();
        self.spawn_ready(&conf, &sockets).await
    }

    /// Spawns a master of `conf` on `sockets` and waits for it to be ready.
    async fn spawn_ready(&self, conf: &Path, sockets: &[&PoolSocket]) -> anyhow::Result<Master> {
        let fds: Vec<_> = sockets.iter().map(|s| s.raw()).collect();
        let env = sockets::fpm_sockets_env(sockets);
        let (mut master, ready) = self
            .binary
            .spawn_master(&self.pool.name, conf, &self.layout.root, &fds, &env)
            .with_context(|| format!("cannot run {}", self.binary.path.display()))?;
        tokio::select! {
            r = ready => {
                if r.is_err() {
                    // Output closed without the ready line: it is exiting.
                    let status = master.wait().await;
                    anyhow::bail!("php-fpm exited while starting ({status})");
                }
                Ok(master)
            }
            status = master.wait() => anyhow::bail!("php-fpm exited while starting ({status})"),
            _ = tokio::time::sleep(READY_TIMEOUT) => {
                master.stop(Duration::from_secs(1), &CancellationToken::new()).await;
                anyhow::bail!("php-fpm did not report ready within {READY_TIMEOUT:?}")
            }
        }
    }

    async fn stop_master(&self, m: &mut Master, hurry: &CancellationToken) {
        let t = Instant::now();
        let pid = m.pid;
        match m.stop(self.stop_timeout, hurry).await {
            StopOutcome::Graceful => tracing::info!(
                pool = self.name(),
                pid,
                "Stopped php-fpm master gracefully in {:?}.",
                t.elapsed()
            ),
            other => tracing::warn!(
                pool = self.name(),
                pid,
                "Stopped php-fpm master forcefully ({other:?}) after {:?}.",
                t.elapsed()
            ),
        }
        let _ = std::fs::remove_file(self.record_path());
    }

    /// The zero-drop hand-over. On any failure before the new master is
    /// ready, the old master keeps serving and the files on disk are put
    /// back as they were.
    async fn apply(
        &mut self,
        current: &mut Option<Master>,
        spec: PoolSpec,
        reason: &str,
        renew: bool,
    ) -> Result<ApplyReport, ApplyError> {
        let started = Instant::now();
        let live = current.as_ref().filter(|m| m.alive()).map(|m| m.pid);
        let additive = self.additive && live.is_some() && !self.sockets.is_empty();
        let primary = live.and(self.spec.as_ref());
        let extra = self.extra.as_ref().map(|e| e.workers);
        match extra::step(primary, extra, &spec, renew, additive) {
            extra::Step::Unchanged => {
                return Ok(ApplyReport {
                    old_pid: live,
                    new_pid: live.unwrap_or(0),
                    took: started.elapsed(),
                    generation: self.generation,
                    unchanged: true,
                    previous_stopped: None,
                    stopping_workers: Some(0),
                })
            }
            extra::Step::AddExtra(workers) => {
                let pid = live.unwrap_or(0);
                return self.add_extra(pid, workers, reason, started).await;
            }
            extra::Step::DropExtra => {
                return Ok(self.drop_extra(live.unwrap_or(0), reason, started));
            }
            extra::Step::HandOver => {}
        }
        let backup = self.read_files();
        if let Err(e) = self.write_config(&spec, self.generation + 1).await {
            return Err(self.not_applied(ApplyError::Refused(format!("{e:#}"))));
        }
        if self.sockets.is_empty() {
            // An adopted master whose sockets could not be recovered: the
            // only way is stop, then start (a short gap, said in the log).
            if let Some(mut old) = current.take() {
                tracing::warn!(pool = self.name(), "Restarting the pool (its sockets could not be recovered, so no hand-over is possible).");
                self.stop_master(&mut old, &CancellationToken::new()).await;
            }
            match self.open_sockets(&spec) {
                Ok(s) => self.sockets = s,
                Err(e) => return Err(ApplyError::Sockets(format!("{e:#}"))),
            }
        } else {
            self.refresh_access(&spec);
        }
        let new = match self.start_master().await {
            Ok(m) => m,
            Err(e) => {
                self.restore_files(backup);
                return Err(self.not_applied(ApplyError::StartFailed(format!("{e:#}"))));
            }
        };
        let took = started.elapsed();
        self.generation += 1;
        let before = self.spec.replace(spec);
        self.after_start(&new, started);
        self.state
            .update_master(&self.pool.name, |m| m.last_apply_error = None);
        let old = current.replace(new);
        let old_pid = old.as_ref().map(|m| m.pid);
        // The old master, and a second master beside it, finish their
        // requests in flight, then exit: the new master has all the workers.
        let old_extra = self.take_extra();
        // An old master whose settings are not known (adopted) has an
        // unknown cap.
        let old_cap = match &old {
            Some(_) => before.as_ref().map(|s| s.max_children),
            None => Some(0),
        };
        let stopping_workers = old_cap.map(|c| c + old_extra.as_ref().map_or(0, |e| e.workers));
        let stopping: Vec<Master> = old.into_iter().chain(old_extra.map(|e| e.master)).collect();
        let previous_stopped = (!stopping.is_empty()).then(|| self.stop_in_background(stopping));
        tracing::info!(
            pool = self.name(),
            old_pid,
            new_pid = current.as_ref().map(|m| m.pid),
            generation = self.generation,
            "Applied new pool settings by hand-over in {took:?}."
        );
        self.change_event(old_pid, current.as_ref().map_or(0, |m| m.pid), took, reason);
        Ok(ApplyReport {
            old_pid,
            new_pid: current.as_ref().map(|m| m.pid).unwrap_or(0),
            took,
            generation: self.generation,
            unchanged: false,
            previous_stopped,
            stopping_workers,
        })
    }

    /// Records a change that was not applied (the running masters keep
    /// serving): refused by `php-fpm -t` or rendering, or a new master that
    /// did not become ready.
    fn not_applied(&self, err: ApplyError) -> ApplyError {
        let (stage, msg) = match &err {
            ApplyError::Refused(m) => ("php-fpm -t", m),
            ApplyError::StartFailed(m) => ("start", m),
            ApplyError::Sockets(_) | ApplyError::Gone => return err,
        };
        tracing::error!(
            pool = self.name(),
            "Pool change not applied: {err}. The running master keeps serving unchanged."
        );
        self.event(What::ChangeRefused {
            stage,
            message: msg.clone(),
        });
        self.state
            .update_master(&self.pool.name, |m| m.last_apply_error = Some(msg.clone()));
        err
    }

    fn open_sockets(&self, spec: &PoolSpec) -> anyhow::Result<Vec<PoolSocket>> {
        let access = self.access(spec)?;
        // Only the manager talks to the status listener, and php-fpm's hidden
        // status pool runs any script it is asked for without the pool's
        // php_admin_values: keep that socket to the manager's own user.
        let status_access = Access {
            mode: 0o600,
            ..Access::default()
        };
        let mut out = Vec::new();
        for (ep, access) in [
            (&self.pool.endpoint, &access),
            (&self.pool.status_endpoint, &status_access),
        ] {
            let s = match ep {
                Endpoint::Unix(public) => {
                    sockets::bind_unix(&sockets::private_path(public), public, access)
                }
                Endpoint::Tcp(addr) => sockets::bind_tcp(addr),
            }
            .with_context(|| format!("cannot open the listening socket {ep}"))?;
            out.push(s);
        }
        Ok(out)
    }

    /// The pool's `listen_group` as configured now (a reload may have
    /// changed it since this supervisor started).
    fn listen_group(&self) -> Option<String> {
        self.state
            .config()
            .pools
            .iter()
            .find(|p| p.name == self.pool.name)
            .map_or_else(
                || self.pool.listen_group.clone(),
                |p| p.listen_group.clone(),
            )
    }

    /// Socket file mode and owner: php-fpm's `listen.mode`, owned by the pool
    /// account, group [`socket_group`]. Only root can give a file away; a
    /// manager running as another user still applies `listen_group` (the
    /// kernel allows it for a group the user is in).
    fn access(&self, spec: &PoolSpec) -> anyhow::Result<Access> {
        let mode = u32::from_str_radix(&spec.listen_mode, 8).unwrap_or(0o660);
        let configured = self.listen_group();
        let group = socket_group(
            configured.as_deref(),
            self.binary.as_root,
            spec.group.as_deref(),
            |g| matches!(nix::unistd::Group::from_name(g), Ok(Some(_))),
        );
        let gid = group
            .map(|g| {
                nix::unistd::Group::from_name(&g)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
                    .ok_or_else(|| {
                        anyhow::anyhow!("listen_group {g:?}: no such group on this host")
                    })
            })
            .transpose()?;
        let uid = if self.binary.as_root {
            spec.user
                .as_deref()
                .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
                .map(|u| u.uid.as_raw())
        } else {
            None
        };
        Ok(Access { mode, uid, gid })
    }

    /// Applies the current `listen_mode`/`listen_group` to the public socket
    /// file (the socket itself outlives hand-overs, so a changed setting is
    /// applied to it here) and warns about a world-writable one.
    fn refresh_access(&self, spec: &PoolSpec) {
        let Endpoint::Unix(public) = &self.pool.endpoint else {
            return;
        };
        let world_writable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o002 != 0)
        };
        let was_open = world_writable(public);
        match self.access(spec) {
            Ok(a) => {
                if let Err(e) = sockets::apply_access(public, &a) {
                    tracing::warn!(
                        pool = self.name(),
                        "Cannot set the socket's owner and mode: {e}."
                    );
                }
            }
            Err(e) => tracing::warn!(
                pool = self.name(),
                "{e:#}; the socket keeps its owner and mode."
            ),
        }
        // Reported when it becomes world-writable, not at every hand-over
        // (the autoscaler may hand over often).
        if !was_open {
            self.check_socket_mode();
        }
    }

    /// A world-writable pool socket lets every local user run PHP as the
    /// pool's account (and read what that account reads): say so loudly.
    fn check_socket_mode(&self) {
        use std::os::unix::fs::PermissionsExt as _;
        let Endpoint::Unix(public) = &self.pool.endpoint else {
            return;
        };
        let Ok(meta) = std::fs::metadata(public) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o002 != 0 {
            self.event(What::WorldWritableSocket {
                path: lossy(public),
                mode,
            });
        }
    }

    /// Renders the pool and master files, checks them with `php-fpm -t` under
    /// temporary names, and only then puts them in place.
    async fn write_config(&self, spec: &PoolSpec, generation: u64) -> anyhow::Result<()> {
        let name = &self.pool.name;
        let pool_path = self.layout.pool_conf(name);
        let master_path = self.layout.master_conf(name);
        let pid = self.layout.pid_file(name, generation);
        self.write_checked(spec, &pool_path, &master_path, &pid)
            .await
    }

    /// Renders a pool file and the master file that includes it, checks them
    /// under temporary names, then puts them at `pool_path`/`master_path`.
    async fn write_checked(
        &self,
        spec: &PoolSpec,
        pool_path: &Path,
        master_path: &Path,
        pid: &Path,
    ) -> anyhow::Result<()> {
        let pool_text = fpm_conf::render_pool(spec)?;
        let global = self.layout.global_conf();
        let check = |p: &Path| {
            let file = p.file_name().map(|n| n.to_string_lossy().into_owned());
            p.with_file_name(format!(".{}.check", file.unwrap_or_default()))
        };
        let check_pool = check(pool_path);
        let check_master = check(master_path);
        // 0640: the pool file can hold env[...] secrets.
        write_atomic(&check_pool, pool_text.as_bytes(), 0o640)?;
        let master_text =
            |p: &Path| fpm_conf::render_master(&lossy(&global), &lossy(p), &lossy(pid));
        // 0600: only the manager (and php-fpm's master, which it starts) reads them.
        write_atomic(&check_master, master_text(&check_pool).as_bytes(), 0o600)?;
        let verdict = self
            .binary
            .test_config(&check_master, &self.layout.root)
            .await;
        let _ = std::fs::remove_file(&check_master);
        let _ = std::fs::remove_file(&check_pool);
        verdict.map_err(|m| anyhow::Error::new(child::ConfigRefused(m)))?;
        write_atomic(pool_path, pool_text.as_bytes(), 0o640)?;
        write_atomic(master_path, master_text(pool_path).as_bytes(), 0o600)?;
        Ok(())
    }

    fn read_files(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let name = &self.pool.name;
        [self.layout.pool_conf(name), self.layout.master_conf(name)]
            .into_iter()
            .map(|p| {
                let old = std::fs::read(&p).ok();
                (p, old)
            })
            .collect()
    }

    fn restore_files(&self, backup: Vec<(PathBuf, Option<Vec<u8>>)>) {
        for (path, old) in backup {
            if let Some(bytes) = old {
                if let Err(e) = write_atomic(&path, &bytes, 0o640) {
                    tracing::error!(
                        pool = self.name(),
                        "Cannot restore {}: {e}.",
                        path.display()
                    );
                }
            }
        }
    }

    fn record_path(&self) -> PathBuf {
        self.layout.master_record(&self.pool.name)
    }

    /// Remembers which master runs this pool, for the next manager.
    fn write_record(&self, m: &Master) {
        let text = format!("{} {} {}\n", m.pid, m.start_ticks, self.generation);
        if let Err(e) = write_atomic(&self.record_path(), text.as_bytes(), 0o600) {
            tracing::warn!(pool = self.name(), "Cannot record the master's pid: {e}.");
        }
    }

    /// Adopts the master recorded by an earlier manager if it is still the
    /// same process running this pool's config, with its sockets.
    async fn adopt(&mut self, wanted: &PoolSpec) -> Option<Master> {
        let text = std::fs::read_to_string(self.record_path()).ok()?;
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        let (pid, ticks, generation) = (it.next()??, it.next()??, it.next()??);
        let conf = self.layout.master_conf(&self.pool.name);
        let pid = u32::try_from(pid).ok()?;
        let Some(master) = Master::adopt(pid, ticks, &conf) else {
            tracing::info!(
                pool = self.name(),
                pid,
                "The recorded php-fpm master is gone; starting a new one."
            );
            return None;
        };
        // Its log went to the previous manager through pipes that now have
        // no reader: read them again.
        match child::follow_adopted_output(&self.pool.name, pid) {
            Ok(0) => tracing::info!(
                pool = self.name(),
                pid,
                "The adopted master's output is not a pipe; its log is not followed."
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                pool = self.name(),
                pid,
                "Cannot follow the adopted master's log ({e}); its lines are lost until it is restarted."
            ),
        }
        let mut recovered = Vec::new();
        for ep in [&self.pool.endpoint, &self.pool.status_endpoint] {
            let res = match ep {
                Endpoint::Unix(public) => sockets::recover_from_master(
                    pid,
                    public,
                    &sockets::private_path(public).to_string_lossy(),
                ),
                Endpoint::Tcp(addr) => sockets::recover_tcp_from_master(pid, addr),
            };
            match res {
                Ok(s) => recovered.push(s),
                Err(e) => {
                    tracing::warn!(pool = self.name(), pid, "Adopted master's socket {ep} could not be recovered ({e}); the next change will restart the pool.");
                    recovered.clear();
                    break;
                }
            }
        }
        self.sockets = recovered;
        self.generation = generation;
        self.backoff.started(Instant::now());
        // What it runs is what its pool file says; the current config may differ.
        // With a second master adopted too, the first one runs the rest of
        // the cap.
        let mut wanted = wanted.clone();
        let extra = self.extra.as_ref().map_or(0, |e| e.workers);
        if wanted.max_children > extra {
            wanted.max_children -= extra;
        }
        let on_disk = std::fs::read_to_string(self.layout.pool_conf(&self.pool.name)).ok();
        let wanted_text = fpm_conf::render_pool(&wanted).ok();
        self.spec = if on_disk.is_some() && on_disk == wanted_text {
            Some(wanted)
        } else {
            None
        };
        self.state.update_master(&self.pool.name, |m| {
            m.running = true;
            m.pid = Some(pid);
            m.adopted = true;
            m.generation = generation;
        });
        tracing::info!(
            pool = self.name(),
            pid,
            generation,
            "Adopted the running php-fpm master."
        );
        self.event(What::Adoption {
            pid,
            generation,
            sockets_recovered: !self.sockets.is_empty(),
        });
        self.check_socket_mode();
        Some(master)
    }
}

/// Waits for a master to exit; never returns when there is none.
async fn wait_master(master: Option<&mut Master>) -> String {
    match master {
        Some(m) => m.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The uid and gid of the pool's account, where the system knows them.
fn account_ids(spec: &PoolSpec) -> (Option<u32>, Option<u32>) {
    let uid = spec
        .user
        .as_deref()
        .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
        .map(|u| u.uid.as_raw());
    let gid = spec
        .group
        .as_deref()
        .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
        .map(|g| g.gid.as_raw());
    (uid, gid)
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The group owning a pool's unix socket file. An explicit `listen_group`
/// wins. As root, the default is the web server's group (`www-data`, else
/// `nginx`, else the pool's own group), so that the web server can connect
/// to a 0660 socket: a world-writable socket (0666) would instead let every
/// local user run PHP as the pool's account. Not root: the manager's own
/// group (nothing to change).
pub fn socket_group(
    configured: Option<&str>,
    as_root: bool,
    pool_group: Option<&str>,
    exists: impl Fn(&str) -> bool,
) -> Option<String> {
    if let Some(g) = configured {
        return Some(g.to_owned());
    }
    if !as_root {
        return None;
    }
    ["www-data", "nginx"]
        .into_iter()
        .find(|g| exists(g))
        .map(str::to_owned)
        .or_else(|| pool_group.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_group_defaults_to_the_web_servers() {
        let all = |_: &str| true;
        let only_nginx = |g: &str| g == "nginx";
        let none = |_: &str| false;
        assert_eq!(
            socket_group(Some("web"), true, Some("app"), all).as_deref(),
            Some("web")
        );
        assert_eq!(
            socket_group(Some("web"), false, None, none).as_deref(),
            Some("web")
        );
        assert_eq!(
            socket_group(None, true, Some("app"), all).as_deref(),
            Some("www-data")
        );
        assert_eq!(
            socket_group(None, true, Some("app"), only_nginx).as_deref(),
            Some("nginx")
        );
        assert_eq!(
            socket_group(None, true, Some("app"), none).as_deref(),
            Some("app")
        );
        assert_eq!(socket_group(None, false, Some("app"), all), None);
    }
}
