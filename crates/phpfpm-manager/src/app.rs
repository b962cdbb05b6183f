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
//! 4. `run` returns and `main` maps the outcome to an exit code.
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

use crate::collector;
use crate::config::{self, Config, Pool};
use crate::state::AppState;
use crate::supervisor::child::FpmBinary;
use crate::supervisor::files::{write_atomic, Layout};
use crate::supervisor::{self, Supervisor, SupervisorHandle};
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
    rt.block_on(run_async(cfg, opts))
}

/// Everything running for one pool.
struct PoolRun {
    pool: Pool,
    supervisor: Option<(SupervisorHandle, CancellationToken)>,
    collector: CancellationToken,
}

/// The set of running pools and what is needed to start more.
struct Pools {
    runs: BTreeMap<PoolName, PoolRun>,
    runtime: Option<(Layout, FpmBinary)>,
    supervisors: JoinSet<()>,
    collectors: JoinSet<()>,
    cancel: CancellationToken,
    detach: CancellationToken,
    hurry: CancellationToken,
}

impl Pools {
    fn start(&mut self, pool: &Pool, cfg: &Config, state: &Arc<AppState>) {
        let supervisor = match (&pool.spec, &self.runtime) {
            (Some(_), Some((layout, binary))) => {
                let token = self.cancel.child_token();
                let (sup, handle) = Supervisor::new(
                    pool.clone(),
                    layout.clone(),
                    binary.clone(),
                    cfg,
                    state.clone(),
                );
                self.supervisors.spawn(sup.run(
                    token.clone(),
                    self.detach.clone(),
                    self.hurry.clone(),
                ));
                Some((handle, token))
            }
            _ => None,
        };
        let collector = self.start_collector(pool, state);
        self.runs.insert(
            pool.name.clone(),
            PoolRun {
                pool: pool.clone(),
                supervisor,
                collector,
            },
        );
    }

    /// The collector reads its settings from the state's current config.
    fn start_collector(&mut self, pool: &Pool, state: &Arc<AppState>) -> CancellationToken {
        let token = self.cancel.child_token();
        self.collectors.spawn(collector::run_pool(
            pool.clone(),
            state.clone(),
            token.clone(),
        ));
        token
    }

    fn stop(&mut self, name: &PoolName) {
        if let Some(run) = self.runs.remove(name) {
            run.collector.cancel();
            if let Some((_, token)) = run.supervisor {
                token.cancel();
            }
        }
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
    if opts.replace {
        replace_running_manager(&cfg).await?;
    }
    let needs_fpm = cfg.pools.iter().any(|p| p.spec.is_some());
    // One manager per runtime directory: a second one would adopt and
    // supervise the first one's masters. Held until this process exits.
    let _runtime_lock = if needs_fpm {
        Some(lock_runtime_dir(&cfg)?)
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
    if runtime.is_some() {
        write_atomic(
            &pid_file,
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )?;
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
    for pool in cfg.pools.iter().filter(|p| p.scaling.enabled) {
        tracing::warn!(pool = pool.name.as_str(), "scaling.enabled is set, but this version only advises (GET /api/v1/pools/{}/scale); the pool keeps its configured size.", pool.name);
    }
    if let Some(ep) = &cfg.telemetry.otlp_endpoint {
        tracing::warn!("telemetry.otlp_endpoint is set ({ep}), but OpenTelemetry export is not available in this version; traces are not sent.");
    }
    state.events.emit(crate::events::ManagerEvent::new(
        None,
        "manager_start",
        crate::events::Severity::Info,
        format!("manager {} started", env!("CARGO_PKG_VERSION")),
        serde_json::json!({"pid": std::process::id(), "pools": cfg.pools.len()}),
    ));
    tracing::info!(
        address = %cfg.server.bind_address,
        pools = cfg.pools.len(),
        mode = if cfg.zero_config { "zero-config" } else { "config" },
        "Manager started; serving /metrics, /health and /api/v1."
    );

    let mut pools = Pools {
        runs: BTreeMap::new(),
        runtime,
        supervisors: JoinSet::new(),
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
    // The host's memory and CPU budget, read on the normal interval.
    if cfg.monitoring.enable_system_metrics {
        let st = state.clone();
        let token = cancel.clone();
        let every = cfg.monitoring.collect_interval;
        tokio::spawn(async move {
            loop {
                let budget = tokio::task::spawn_blocking(fpm_kernel::budget::read_budget)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                *st.host.write().unwrap_or_else(|e| e.into_inner()) = Some(budget);
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
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
    state.events.emit(crate::events::ManagerEvent::new(
        None,
        "manager_stop",
        crate::events::Severity::Info,
        if detaching {
            "manager exited, php-fpm left running".to_owned()
        } else {
            "manager stopped".to_owned()
        },
        serde_json::json!({"pid": std::process::id()}),
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
    if std::fs::read_to_string(&pid_file).is_ok_and(|t| t.trim() == std::process::id().to_string())
    {
        let _ = std::fs::remove_file(&pid_file);
    }
    tracing::info!("Manager stopped.");
    Ok(())
}

/// Logs an event (capitalised sentence, severity as level), counts it, and
/// keeps it for `GET /api/v1/events`.
fn consume_event(state: &AppState, ev: crate::events::ManagerEvent) {
    use crate::events::Severity;
    let pool = ev.pool.as_deref().unwrap_or("-");
    state
        .metrics
        .events
        .with_label_values(&[pool, ev.kind])
        .inc();
    match ev.severity {
        Severity::Info => {
            tracing::info!(pool, kind = ev.kind, details = %ev.details, "Event: {}.", ev.message)
        }
        Severity::Warning => {
            tracing::warn!(pool, kind = ev.kind, details = %ev.details, "Event: {}.", ev.message)
        }
        Severity::Error => {
            tracing::error!(pool, kind = ev.kind, details = %ev.details, "Event: {}.", ev.message)
        }
    }
    if let Some(w) = state
        .storage
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        w.event(to_stored(&ev));
    }
    state.recent_events.push(ev);
}

/// The storage form of an event. A kind the events table does not know is
/// stored as `config_change` with the original kind in the details.
fn to_stored(ev: &crate::events::ManagerEvent) -> fpm_storage::Event {
    use crate::events::Severity;
    let kind = match ev.kind {
        "master_crash" => Some(fpm_storage::EventKind::Crash),
        k => k.parse::<fpm_storage::EventKind>().ok(),
    };
    let mut details = ev.details.clone();
    let kind = kind.unwrap_or_else(|| {
        if let Some(map) = details.as_object_mut() {
            map.insert("event".to_owned(), serde_json::Value::from(ev.kind));
        }
        fpm_storage::EventKind::ConfigChange
    });
    fpm_storage::Event {
        ts_ms: ev.ts_ms(),
        kind,
        severity: match ev.severity {
            Severity::Info => fpm_storage::Severity::Info,
            Severity::Warning => fpm_storage::Severity::Warning,
            Severity::Error => fpm_storage::Severity::Error,
        },
        pool: ev.pool.clone(),
        correlation_id: None,
        actor: Some(
            if ev.pool.is_some() {
                "collector"
            } else {
                "manager"
            }
            .to_owned(),
        ),
        message: ev.message.clone(),
        details,
    }
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
            return;
        }
    };
    let old = state.config();
    for (what, changed) in [
        ("server", old.server != new.server),
        ("phpfpm", old.phpfpm != new.phpfpm),
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
                return;
            }
        }
    }
    let monitoring_changed = old.monitoring != new.monitoring;
    state.set_config(new.clone());
    let wanted: BTreeMap<&PoolName, &Pool> = new.pools.iter().map(|p| (&p.name, p)).collect();
    let running: Vec<PoolName> = pools.runs.keys().cloned().collect();
    for name in running {
        if !wanted.contains_key(&name) {
            tracing::info!(
                pool = name.as_str(),
                "Pool removed from the configuration; stopping it."
            );
            pools.stop(&name);
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
            pools.stop(&pool.name);
            state.remove_pool(&pool.name);
            state.add_pool(pool);
            pools.start(pool, &new, state);
            continue;
        }
        let handle = run.supervisor.as_ref().map(|(h, _)| h.clone());
        let spec_changed = run.pool.spec != pool.spec;
        run.collector.cancel();
        let collector = pools.start_collector(pool, state);
        if let Some(run) = pools.runs.get_mut(&pool.name) {
            run.collector = collector;
            run.pool = pool.clone();
        }
        if let (true, Some(handle), Some(spec)) = (spec_changed, handle, pool.spec.clone()) {
            let name = pool.name.clone();
            tokio::spawn(async move {
                match handle.apply(spec).await {
                    Ok(r) if r.unchanged => {}
                    Ok(r) => tracing::info!(
                        pool = name.as_str(),
                        took_ms = r.took.as_millis() as u64,
                        "Pool change applied."
                    ),
                    Err(e) => tracing::error!(pool = name.as_str(), "Pool change refused: {e}."),
                }
            });
        }
    }
}

/// Takes an exclusive lock on `<runtime_dir>/manager.lock`, or says which
/// manager holds it.
fn lock_runtime_dir(cfg: &Config) -> anyhow::Result<std::fs::File> {
    let dir = &cfg.phpfpm.runtime_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
    let path = dir.join("manager.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let pid = std::fs::read_to_string(Layout::new(dir).manager_pid()).unwrap_or_default();
            anyhow::bail!(
                "another phpfpm-manager (pid {}) runs on {}; stop it, or start this one with --replace to take over",
                pid.trim(),
                dir.display()
            )
        }
        Err(e) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

/// `run --replace`: asks the manager recorded in the runtime directory to
/// exit without stopping php-fpm (SIGUSR1), and waits for it.
async fn replace_running_manager(cfg: &Config) -> anyhow::Result<()> {
    let pid_file = Layout::new(&cfg.phpfpm.runtime_dir).manager_pid();
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        tracing::info!(
            "No running manager recorded in {}; starting normally.",
            pid_file.display()
        );
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        anyhow::bail!("{} does not hold a pid", pid_file.display());
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if pid == std::process::id() as i32
        || !String::from_utf8_lossy(&cmdline).contains("phpfpm-manager")
    {
        tracing::info!(
            pid,
            "The recorded manager is not running; starting normally."
        );
        return Ok(());
    }
    tracing::info!(pid, "Asking the running manager to hand over.");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .with_context(|| format!("cannot signal the running manager (pid {pid})"))?;
    let deadline = tokio::time::Instant::now() + cfg.phpfpm.stop_timeout + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the running manager (pid {pid}) did not exit; it is still in charge");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
