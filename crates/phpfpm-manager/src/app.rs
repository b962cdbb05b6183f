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
use crate::supervisor::files::Layout;
use crate::supervisor::{self, BinaryCell, Supervisor};
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
    runtime: Option<(Layout, BinaryCell)>,
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
            (Some(_), Some((layout, binaries))) => {
                let (sup, handle) = Supervisor::new(
                    pool.clone(),
                    layout.clone(),
                    binaries.clone(),
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
        Some((layout, BinaryCell::new(binary)))
    } else {
        None
    };
    if runtime.is_none() && cfg.monitoring.enable_opcache {
        // Observed pools only: probe scripts a killed manager left (with
        // supervised pools, `prepare_runtime` cleans them).
        if let Err(e) = crate::opcache::remove_stale(&cfg.phpfpm.runtime_dir.join("opcache")) {
            tracing::warn!("Cannot clean the OPcache probe directory: {e}.");
        }
    }
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

    // The HTTP servers stop at shutdown and at a detach alike.
    let http_stop = CancellationToken::new();
    {
        let (token, detach, http_stop) = (cancel.clone(), detach.clone(), http_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = detach.cancelled() => {}
            }
            http_stop.cancel();
        });
    }
    let mut server = http::serve::HttpServer::start(listener, state.clone(), readers, http_stop)
        .context("cannot serve HTTP on the bound listener")?;

    // Reloads asked over the API take the same path as SIGHUP.
    let mut api_reloads = state.config_reloads.take_receiver();
    // Step 1: run until a signal says stop (or detach). systemd hears of
    // readiness, reloads and the stop, and gets its watchdog from this loop.
    let mut notifier = crate::notify::Notifier::from_env();
    let detaching = loop {
        tokio::select! {
            _ = sigterm.recv() => break false,
            _ = sigint.recv() => break false,
            _ = sigusr1.recv() => break true,
            _ = sighup.recv() => {
                notifier.reloading();
                let mut live = Live { pools: &mut pools, server: &mut server, storage: &storage };
                reload(&opts, &state, &mut live).await;
                notifier.reloaded(&state);
            }
            Some(reply) = api_reloads.recv() => {
                notifier.reloading();
                let mut live = Live { pools: &mut pools, server: &mut server, storage: &storage };
                reload(&opts, &state, &mut live).await;
                notifier.reloaded(&state);
                if let Some(outcome) = state.last_reload() {
                    let _ = reply.send(outcome);
                }
            }
            _ = notifier.tick() => notifier.on_tick(&state),
            // Reap finished tasks so the sets do not grow with reloads.
            Some(_) = pools.collectors.join_next(), if !pools.collectors.is_empty() => {}
            Some(_) = pools.actors.join_next(), if !pools.actors.is_empty() => {}
        }
    };
    notifier.stopping();
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
    if !server.stopped(Duration::from_secs(2)).await {
        tracing::warn!("HTTP server did not stop within 2s.");
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

/// What a reload may change besides the configuration in the state.
struct Live<'a> {
    pools: &'a mut Pools,
    server: &'a mut http::serve::HttpServer,
    /// History readers for a new HTTP server.
    storage: &'a fpm_storage::Storage,
}

/// Changes a reload cannot apply while the manager runs, as problems
/// (`key: 'value': what is wrong; how to fix`). Pure.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.phpfpm.runtime_dir != new.phpfpm.runtime_dir {
        out.push(
            config::Problem::new(
                "phpfpm.runtime_dir",
                Some(new.phpfpm.runtime_dir.display().to_string()),
                &format!(
                    "cannot change while the manager runs (it holds the lock, the pool sockets and the masters' records in {})",
                    old.phpfpm.runtime_dir.display()
                ),
                "restart the manager to use another runtime directory, or put the old value back",
            )
            .to_string(),
        );
    }
    out
}

/// SIGHUP: re-read the config. An invalid config, or one with a change that
/// cannot be applied live (see [`fixed_changes`], a `server.bind_address`
/// that cannot be bound, a `phpfpm.binary` that is not php-fpm), changes
/// nothing: the whole reload is refused with every reason. A valid one moves
/// the HTTP server when the `server` section changed, takes the `phpfpm`
/// settings for the next master start or hand-over, starts added pools,
/// stops removed ones, hands changed ones over without dropping requests,
/// and leaves unchanged ones alone.
async fn reload(opts: &RunOptions, state: &Arc<AppState>, live: &mut Live<'_>) {
    tracing::info!("SIGHUP received; reloading the configuration.");
    let new = match config::load_from_system(opts.config_path.as_deref(), opts.runtime_dir.clone())
    {
        Ok(c) => c,
        Err(e) => {
            refuse(state, e.problems.iter().map(ToString::to_string).collect());
            return;
        }
    };
    let old = state.config();
    let problems = fixed_changes(&old, &new);
    if !problems.is_empty() {
        refuse(state, problems);
        return;
    }
    let needs_fpm = new.pools.iter().any(|p| p.spec.is_some());
    // Everything that can fail is done before anything changes.
    let binary_changed = old.phpfpm.binary != new.phpfpm.binary;
    let binary = if needs_fpm && (binary_changed || live.pools.runtime.is_none()) {
        match check_binary(&new).await {
            Ok(b) => Some(b),
            Err(problem) => {
                refuse(state, vec![problem]);
                return;
            }
        }
    } else {
        None
    };
    let moved = old.server.bind_address != new.server.bind_address;
    let listener = if moved {
        match tokio::net::TcpListener::bind(new.server.bind_address).await {
            Ok(l) => Some(l),
            Err(e) => {
                let problem = config::Problem::new(
                    "server.bind_address",
                    Some(new.server.bind_address.to_string()),
                    &format!("cannot listen there: {e}"),
                    &format!(
                        "choose a free address; the manager keeps serving on {}",
                        old.server.bind_address
                    ),
                );
                refuse(state, vec![problem.to_string()]);
                return;
            }
        }
    } else {
        None
    };
    let server_changed = old.server != new.server;
    let readers = if server_changed {
        match (0..new.server.limits.max_concurrent_queries)
            .map(|_| live.storage.reader())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(r) => r,
            Err(e) => {
                refuse(
                    state,
                    vec![format!("storage: cannot open history readers: {e}")],
                );
                return;
            }
        }
    } else {
        Vec::new()
    };
    let pools = &mut *live.pools;
    if needs_fpm && pools.runtime.is_none() {
        match supervisor::prepare_runtime(&new) {
            Ok((layout, found)) => {
                pools.runtime = Some((layout, BinaryCell::new(binary.unwrap_or(found))));
            }
            Err(e) => {
                refuse(state, vec![format!("cannot run php-fpm: {e:#}")]);
                return;
            }
        }
    } else if let Some((layout, binaries)) = &pools.runtime {
        if old.phpfpm.global != new.phpfpm.global {
            if let Err(e) = supervisor::write_global(layout, &new) {
                refuse(
                    state,
                    vec![format!("cannot write php-fpm's global settings: {e:#}")],
                );
                return;
            }
        }
        if let Some(b) = binary {
            tracing::info!(binary = %b.path.display(), "Masters started from now on use this php-fpm binary.");
            binaries.set(b);
        }
    }

    // From here on the reload is accepted.
    let monitoring_changed = old.monitoring != new.monitoring;
    state.set_config(new.clone());
    if server_changed {
        match live.server.restart(listener, readers) {
            Ok(()) if moved => tracing::info!(
                old = %old.server.bind_address,
                new = %new.server.bind_address,
                "Serving /metrics, /health and /api/v1 at the new address."
            ),
            Ok(()) => tracing::info!("The HTTP server now runs with the new `server` settings."),
            // The new listener is bound: this is a descriptor running out.
            Err(e) => tracing::error!("Cannot restart the HTTP server with the new `server` settings ({e}); the previous one keeps serving."),
        }
    }
    if old.phpfpm != new.phpfpm {
        tracing::info!(
            "The `phpfpm` section changed; it applies to the next master start or hand-over of each pool."
        );
    }
    for (what, changed) in [
        ("storage", old.storage != new.storage),
        ("telemetry", old.telemetry != new.telemetry),
    ] {
        if changed {
            tracing::warn!(
                "The `{what}` section changed; it takes effect when the manager restarts."
            );
        }
    }
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

/// Finds the php-fpm binary of `cfg` and checks that it is php-fpm 8 or
/// newer; the problem otherwise.
async fn check_binary(cfg: &Config) -> Result<supervisor::child::FpmBinary, String> {
    let b = supervisor::find_binary(cfg).map_err(|e| {
        config::Problem::new(
            "phpfpm.binary",
            cfg.phpfpm.binary.as_ref().map(|p| p.display().to_string()),
            &format!("{e:#}"),
            "name a php-fpm binary (for example /usr/sbin/php-fpm8.2) or `auto`",
        )
        .to_string()
    })?;
    b.check_version().await.map_err(|e| {
        config::Problem::new(
            "phpfpm.binary",
            Some(b.path.display().to_string()),
            &e,
            "name a php-fpm binary (for example /usr/sbin/php-fpm8.2) or `auto`",
        )
        .to_string()
    })?;
    Ok(b)
}

/// Logs and records a refused reload; nothing was changed.
fn refuse(state: &AppState, problems: Vec<String>) {
    for p in &problems {
        tracing::error!("Config reload rejected: {p}");
    }
    tracing::error!(
        "The new configuration cannot be applied ({} problem{}); nothing was changed.",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    refuse_reload(state, problems);
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
