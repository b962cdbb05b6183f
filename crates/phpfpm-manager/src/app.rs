//! Wiring and lifecycle: builds the runtime, starts the HTTP server, the
//! supervisors and the collectors, reloads the configuration on SIGHUP, and
//! runs the shutdown sequence.
//!
//! Shutdown order (each step bounded):
//! 1. SIGTERM or SIGINT cancels the root token (every such signal, not only
//!    the first; a later one also sets `hurry`, which shortens step 3).
//! 2. The HTTP server stops accepting and the collectors stop.
//! 3. Supervisors stop their masters: SIGQUIT, up to `phpfpm.stop_timeout`,
//!    then SIGTERM, then SIGKILL of the master's process group.
//! 4. The runtime is dropped, then the trace exporter sends what is queued
//!    (bounded); `run` returns and `main` maps the outcome to an exit code.
//!
//! SIGUSR1 instead *detaches*: the manager exits and leaves every php-fpm
//! master serving, for a new manager to adopt (`run --replace` sends it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fpm_core::PoolName;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::collect;
use crate::config::{self, Config, Pool};
use crate::events::{ManagerEvent, What};
use crate::pool::{Board, PoolActor, PoolHandle};
use crate::state::AppState;
use crate::supervisor::child::FpmBinary;
use crate::supervisor::files::Layout;
use crate::supervisor::{self, Supervisor};
use crate::surface::http;

/// How the manager was started, beyond the configuration itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// `--runtime-dir`, kept for reloads.
    pub runtime_dir: Option<String>,
    /// Take over from a manager running on the same runtime directory,
    /// adopting its php-fpm masters without restarting them.
    pub replace: bool,
}

/// Runs the manager until a shutdown signal.
pub fn run(cfg: Config, opts: RunOptions) -> anyhow::Result<()> {
    // Two worker threads are plenty: the work is a few short requests per
    // second, and each thread costs memory.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Spans queued since logging started go out from here on; the exporter
    // stops last, after every pool and the storage, so the spans of the
    // stop itself are sent too.
    let traces = crate::telemetry::start_export();
    let res = rt.block_on(run_async(cfg, opts));
    drop(rt);
    traces.shutdown(TRACES_FLUSH);
    res
}

/// How long the last spans may take to reach the collector at a stop.
const TRACES_FLUSH: Duration = Duration::from_secs(5);

/// Everything running for one pool.
struct PoolRun {
    pool: Pool,
    actor: PoolHandle,
    /// Stops the pool actor and the supervisor (its master).
    stop: CancellationToken,
    collector: CancellationToken,
}

/// The set of running pools and what is needed to start more.
struct Pools {
    runs: BTreeMap<PoolName, PoolRun>,
    runtime: Option<(Layout, FpmBinary)>,
    board: Arc<Board>,
    supervisors: JoinSet<()>,
    actors: JoinSet<()>,
    collectors: JoinSet<()>,
    cancel: CancellationToken,
    detach: CancellationToken,
    hurry: CancellationToken,
}

impl Pools {
    /// Starts a pool: its actor (which decides the spec the master starts
    /// with, from the config and what an earlier manager remembered), its
    /// supervisor for a supervised pool, and its collector.
    fn start(&mut self, pool: &Pool, cfg: &Config, state: &Arc<AppState>) {
        let stop = self.cancel.child_token();
        let layout = self.runtime.as_ref().map(|(l, _)| l.clone());
        let remember_at = layout.as_ref().map(|l| l.scale_state(&pool.name));
        let (supervisor, handle) = match (&pool.spec, &self.runtime) {
            (Some(_), Some((layout, binary))) => {
                let (sup, handle) = Supervisor::new(
                    pool.clone(),
                    layout.clone(),
                    binary.clone(),
                    cfg,
                    state.clone(),
                );
                (Some(sup), Some(handle))
            }
            _ => (None, None),
        };
        let (mut actor, actor_handle) = PoolActor::new(
            pool.clone(),
            state.clone(),
            handle,
            self.board.clone(),
            remember_at,
        );
        if let Some(sup) = supervisor {
            let first = actor.desired();
            self.supervisors.spawn(sup.run(
                first,
                stop.clone(),
                self.detach.clone(),
                self.hurry.clone(),
            ));
        }
        // The actor outlives a detach only as long as the process does; it
        // stops with the pool or at shutdown.
        self.actors.spawn(actor.run(stop.clone()));
        state
            .handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pool.name.clone(), actor_handle.clone());
        let collector = self.start_collector(pool, state);
        self.runs.insert(
            pool.name.clone(),
            PoolRun {
                pool: pool.clone(),
                actor: actor_handle,
                stop,
                collector,
            },
        );
    }

    /// The collector reads its settings from the state's current config.
    fn start_collector(&mut self, pool: &Pool, state: &Arc<AppState>) -> CancellationToken {
        let token = self.cancel.child_token();
        self.collectors.spawn(collect::run_pool(
            pool.clone(),
            state.clone(),
            token.clone(),
        ));
        token
    }

    fn stop(&mut self, name: &PoolName, state: &AppState) {
        if let Some(run) = self.runs.remove(name) {
            run.collector.cancel();
            run.stop.cancel();
        }
        state
            .handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.board.remove(name);
    }
}

async fn run_async(cfg: Config, opts: RunOptions) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let detach = CancellationToken::new();
    let hurry = CancellationToken::new();

    // Signals first, so that a SIGTERM during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    let mut sigusr1 =
        signal(SignalKind::user_defined1()).context("cannot install SIGUSR1 handler")?;

    // Before anything opens files or starts php-fpm, so every part runs with it.
    match http::serve::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!("Raised the open-files limit from {before} to {after}.")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("Cannot raise the open-files limit: {e}."),
    }
    let needs_fpm = cfg.pools.iter().any(|p| p.spec.is_some());
    // One manager per runtime directory: a second one would adopt and
    // supervise the first one's masters. Held until this process exits;
    // `--replace` takes it over from the running manager.
    let _runtime_lock = if needs_fpm {
        let wait = cfg.phpfpm.stop_timeout + Duration::from_secs(10);
        Some(crate::replace::lock_runtime_dir(&cfg.phpfpm.runtime_dir, opts.replace, wait).await?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(cfg.server.bind_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.bind_address); is another manager running? (`run --replace` takes over from it)",
                cfg.server.bind_address
            )
        })?;
    let runtime = if needs_fpm {
        let (layout, binary) = supervisor::prepare_runtime(&cfg)?;
        let v = binary.check_version().await.map_err(anyhow::Error::msg)?;
        tracing::info!(binary = %binary.path.display(), "Using php-fpm {}.{}.{}.", v.0, v.1, v.2);
        Some((layout, binary))
    } else {
        None
    };
    let pid_file = Layout::new(&cfg.phpfpm.runtime_dir).manager_pid();
    // Read before this manager's own record replaces it.
    let unclean_previous = runtime
        .as_ref()
        .and_then(|_| crate::replace::previous_unclean(&pid_file));
    if runtime.is_some() {
        crate::replace::write_record(&pid_file)?;
    }

    // History: opened before anything runs, so a bad database file stops the
    // start with a message naming it (it is never overwritten or deleted).
    if let Some(dir) = cfg.storage.database_path.as_ref().and_then(|p| p.parent()) {
        std::fs::create_dir_all(dir).ok();
    }
    let storage = fpm_storage::Storage::open(&fpm_storage::StorageConfig {
        path: cfg.storage.database_path.clone(),
        retention: fpm_storage::Retention {
            raw: cfg.storage.retention_raw,
            minute: cfg.storage.retention_minute,
            hour: cfg.storage.retention_hour,
            events: cfg.storage.retention_events,
        },
    })
    .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    let readers = (0..cfg.server.limits.max_concurrent_queries)
        .map(|_| storage.reader())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    let (writer, writer_task) = storage
        .spawn_writer(fpm_storage::WriterOptions::default())
        .map_err(|e| anyhow::anyhow!("storage: {e}"))?;

    let state = AppState::new(cfg);
    *state.storage.write().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    let cfg = state.config();
    crate::telemetry::register_metrics(&state.metrics);
    if cfg.monitoring.enable_system_metrics {
        // The budget is read before the pools start: an autoscaled pool's
        // first cap is planned from it.
        let budget = tokio::task::spawn_blocking(fpm_kernel::budget::read_budget)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        *state.host.write().unwrap_or_else(|e| e.into_inner()) = Some(budget);
    }
    state.events.emit(ManagerEvent::new(
        None,
        "manager",
        What::ManagerStart {
            pid: std::process::id(),
            pools: cfg.pools.len(),
        },
    ));
    if let Some(pid) = unclean_previous {
        state.events.emit(ManagerEvent::new(
            None,
            "manager",
            What::PreviousManagerUnclean { pid },
        ));
    }
    tracing::info!(
        address = %cfg.server.bind_address,
        pools = cfg.pools.len(),
        mode = if cfg.zero_config { "zero-config" } else { "config" },
        "Manager started; serving /metrics, /health and /api/v1."
    );

    let mut pools = Pools {
        runs: BTreeMap::new(),
        runtime,
        board: Arc::new(Board::default()),
        supervisors: JoinSet::new(),
        actors: JoinSet::new(),
        collectors: JoinSet::new(),
        cancel: cancel.clone(),
        detach: detach.clone(),
        hurry: hurry.clone(),
    };
    for pool in &cfg.pools {
        pools.start(pool, &cfg, &state);
    }

    // Events: log, count and keep them (and, with storage, persist them).
    if let Some(mut rx) = state.take_events() {
        let st = state.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                consume_event(&st, ev);
            }
        });
    }
    // The host's memory and CPU budget, read on the normal interval (the
    // first reading was taken before the pools started).
    if cfg.monitoring.enable_system_metrics {
        let st = state.clone();
        let token = cancel.clone();
        let every = cfg.monitoring.collect_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let budget = tokio::task::spawn_blocking(fpm_kernel::budget::read_budget)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                *st.host.write().unwrap_or_else(|e| e.into_inner()) = Some(budget);
            }
        });
    }

    let server = {
        let token = cancel.clone();
        let detach = detach.clone();
        http::serve::spawn(listener, state.clone(), readers, async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = detach.cancelled() => {}
            }
        })
    };

    // Step 1: run until a signal says stop (or detach).
    let detaching = loop {
        tokio::select! {
            _ = sigterm.recv() => break false,
            _ = sigint.recv() => break false,
            _ = sigusr1.recv() => break true,
            _ = sighup.recv() => reload(&opts, &state, &mut pools).await,
            // Reap finished tasks so the sets do not grow with reloads.
            Some(_) = pools.collectors.join_next(), if !pools.collectors.is_empty() => {}
            Some(_) = pools.actors.join_next(), if !pools.actors.is_empty() => {}
        }
    };
    if detaching {
        tracing::info!(
            "SIGUSR1 received; exiting and leaving php-fpm running for the next manager."
        );
        detach.cancel();
        // Collectors are children of `cancel`; stop them without stopping masters.
        for run in pools.runs.values() {
            run.collector.cancel();
        }
    } else {
        tracing::info!("Shutdown signal received; stopping gracefully.");
        cancel.cancel();
    }

    // Steps 2 and 3; further signals shorten the masters' grace.
    let grace = state.config().phpfpm.stop_timeout + Duration::from_secs(3);
    let mut supervisors = std::mem::take(&mut pools.supervisors);
    let mut collectors = std::mem::take(&mut pools.collectors);
    let forced = {
        let shutdown = async {
            while supervisors.join_next().await.is_some() {}
            while collectors.join_next().await.is_some() {}
        };
        tokio::pin!(shutdown);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        let mut forced = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = sigterm.recv() => { tracing::info!("Another shutdown signal; stopping php-fpm without waiting for requests."); hurry.cancel(); }
                _ = sigint.recv() => { tracing::info!("Another shutdown signal; stopping php-fpm without waiting for requests."); hurry.cancel(); }
                _ = &mut deadline => {
                    tracing::warn!("Shutdown took longer than {grace:?}; forcing.");
                    hurry.cancel();
                    forced = true;
                    break;
                }
            }
        }
        forced
    };
    if forced {
        // Dropping a supervisor's task drops its master, whose guard kills
        // the master's process group.
        supervisors.abort_all();
        while supervisors.join_next().await.is_some() {}
    }
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("HTTP server task failed: {e}."),
        Err(_) => tracing::warn!("HTTP server did not stop within 2s."),
    }
    // Step 4: storage drains what it received and commits.
    // Pool actors write down what they learned as they stop.
    let mut actors = std::mem::take(&mut pools.actors);
    for run in pools.runs.values() {
        run.stop.cancel();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while actors.join_next().await.is_some() {}
    })
    .await;
    state.events.emit(ManagerEvent::new(
        None,
        "manager",
        What::ManagerStop {
            pid: std::process::id(),
            detached: detaching,
        },
    ));
    // Let the event consumer hand the last events to the writer.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(
        state
            .storage
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    match tokio::time::timeout(Duration::from_secs(5), writer_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("Storage writer ended with an error: {e}."),
        Ok(Err(e)) => tracing::warn!("Storage writer task failed: {e}."),
        Err(_) => tracing::warn!(
            "Storage writer did not finish within 5s; the last second of samples may be missing."
        ),
    }
    crate::replace::remove_record(&pid_file);
    tracing::info!("Manager stopped.");
    Ok(())
}

/// Logs an event (capitalised sentence, severity as level), counts it, and
/// keeps it for `GET /api/v1/events`.
fn consume_event(state: &AppState, ev: ManagerEvent) {
    use crate::events::Severity;
    let pool = ev.pool.as_deref().unwrap_or("-");
    let kind = ev.kind();
    state.metrics.events.with_label_values(&[pool, kind]).inc();
    let (message, details) = (ev.message(), ev.details());
    match ev.severity() {
        Severity::Info => {
            tracing::info!(pool, kind, actor = ev.actor, details = %details, "Event: {message}.")
        }
        Severity::Warning => {
            tracing::warn!(pool, kind, actor = ev.actor, details = %details, "Event: {message}.")
        }
        Severity::Error => {
            tracing::error!(pool, kind, actor = ev.actor, details = %details, "Event: {message}.")
        }
    }
    if let Some(w) = state
        .storage
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        w.event(ev.to_stored());
    }
    state.recent_events.push(ev);
}

/// SIGHUP: re-read the config. An invalid config changes nothing; a valid one
/// starts added pools, stops removed ones, hands changed ones over without
/// dropping requests, and leaves unchanged ones alone.
async fn reload(opts: &RunOptions, state: &Arc<AppState>, pools: &mut Pools) {
    tracing::info!("SIGHUP received; reloading the configuration.");
    let new = match config::load_from_system(opts.config_path.as_deref(), opts.runtime_dir.clone())
    {
        Ok(c) => c,
        Err(e) => {
            for p in &e.problems {
                tracing::error!("Config reload rejected: {p}");
            }
            tracing::error!(
                "The new configuration is invalid ({} problems); nothing was changed.",
                e.problems.len()
            );
            refuse_reload(state, e.problems.iter().map(ToString::to_string).collect());
            return;
        }
    };
    let old = state.config();
    for (what, changed) in [
        ("server", old.server != new.server),
        ("phpfpm", old.phpfpm != new.phpfpm),
        ("telemetry", old.telemetry != new.telemetry),
    ] {
        if changed {
            tracing::warn!(
                "The `{what}` section changed; it takes effect when the manager restarts."
            );
        }
    }
    if new.pools.iter().any(|p| p.spec.is_some()) && pools.runtime.is_none() {
        match supervisor::prepare_runtime(&new) {
            Ok(rt) => pools.runtime = Some(rt),
            Err(e) => {
                tracing::error!(
                    "Config reload rejected: cannot run php-fpm: {e:#}; nothing was changed."
                );
                refuse_reload(state, vec![format!("cannot run php-fpm: {e:#}")]);
                return;
            }
        }
    }
    let monitoring_changed = old.monitoring != new.monitoring;
    state.set_config(new.clone());
    state.record_reload(true, Vec::new());
    state.events.emit(ManagerEvent::new(
        None,
        "config",
        What::ConfigReload {
            accepted: true,
            problems: Vec::new(),
        },
    ));
    let wanted: BTreeMap<&PoolName, &Pool> = new.pools.iter().map(|p| (&p.name, p)).collect();
    let running: Vec<PoolName> = pools.runs.keys().cloned().collect();
    for name in running {
        if !wanted.contains_key(&name) {
            tracing::info!(
                pool = name.as_str(),
                "Pool removed from the configuration; stopping it."
            );
            pools.stop(&name, state);
            state.remove_pool(&name);
        }
    }
    for pool in &new.pools {
        let Some(run) = pools.runs.get(&pool.name) else {
            tracing::info!(
                pool = pool.name.as_str(),
                "Pool added to the configuration; starting it."
            );
            state.add_pool(pool);
            pools.start(pool, &new, state);
            continue;
        };
        if run.pool == *pool && !monitoring_changed {
            continue;
        }
        let same_place = run.pool.endpoint == pool.endpoint
            && run.pool.status_endpoint == pool.status_endpoint
            && run.pool.spec.is_some() == pool.spec.is_some();
        if !same_place {
            tracing::info!(
                pool = pool.name.as_str(),
                "Pool address or mode changed; restarting it."
            );
            pools.stop(&pool.name, state);
            state.remove_pool(&pool.name);
            state.add_pool(pool);
            pools.start(pool, &new, state);
            continue;
        }
        // Same identity: the actor keeps what it learned and the applied
        // cap, and hands the supervisor the new desired spec (nothing
        // happens when it renders the same).
        let actor = run.actor.clone();
        let restart_collector = monitoring_changed || run.pool.status_path != pool.status_path;
        if restart_collector {
            run.collector.cancel();
            let collector = pools.start_collector(pool, state);
            if let Some(run) = pools.runs.get_mut(&pool.name) {
                run.collector = collector;
            }
        }
        if let Some(run) = pools.runs.get_mut(&pool.name) {
            run.pool = pool.clone();
        }
        let pool = pool.clone();
        tokio::spawn(async move { actor.apply_config(pool).await });
    }
}

/// Records a refused reload: for `GET /api/v1/status`, the metrics and
/// the events.
fn refuse_reload(state: &AppState, problems: Vec<String>) {
    state.record_reload(false, problems.clone());
    state.events.emit(ManagerEvent::new(
        None,
        "config",
        What::ConfigReload {
            accepted: false,
            problems,
        },
    ));
}
