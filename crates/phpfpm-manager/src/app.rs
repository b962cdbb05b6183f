//! Wiring and lifecycle: builds the runtime, starts the HTTP server, the
//! supervisors and the collectors, and runs the shutdown sequence.
//!
//! Shutdown order (each step bounded):
//! 1. SIGTERM or SIGINT cancels the root token (every such signal, not only
//!    the first; a second one also sets `hurry`, which shortens step 3).
//! 2. The HTTP server stops accepting and the collectors stop.
//! 3. Supervisors stop their masters: SIGQUIT, up to `phpfpm.stop_timeout`,
//!    then SIGTERM, then SIGKILL of the master's process group.
//! 4. `run` returns and `main` maps the outcome to an exit code.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::state::AppState;
use crate::supervisor::{self, Supervisor};
use crate::{collector, http};

/// Runs the manager until a shutdown signal.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // Two worker threads are plenty: the work is a few short requests per
    // second, and each thread costs memory.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(cfg))
}

async fn run_async(cfg: Config) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let hurry = CancellationToken::new();

    // Signals first, so that a SIGTERM during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;

    let listener = tokio::net::TcpListener::bind(cfg.server.bind_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.bind_address); is another manager running?",
                cfg.server.bind_address
            )
        })?;
    let needs_fpm = cfg.pools.iter().any(|p| p.spec.is_some());
    let runtime = if needs_fpm {
        Some(supervisor::prepare_runtime(&cfg)?)
    } else {
        None
    };

    let state = AppState::new(cfg);
    let cfg = &state.config;
    tracing::info!(
        address = %cfg.server.bind_address,
        pools = cfg.pools.len(),
        mode = if cfg.zero_config { "zero-config" } else { "config" },
        "Manager started; serving /metrics, /health and /api/v1."
    );

    let mut supervisors = JoinSet::new();
    if let Some((layout, binary)) = runtime {
        for pool in cfg.pools.iter().filter(|p| p.spec.is_some()) {
            let sup = Supervisor {
                pool: pool.clone(),
                layout: layout.clone(),
                binary: binary.clone(),
                stop_timeout: cfg.phpfpm.stop_timeout,
                state: state.clone(),
            };
            supervisors.spawn(sup.run(cancel.clone(), hurry.clone()));
        }
    }

    let mut collectors = JoinSet::new();
    for pool in &cfg.pools {
        collectors.spawn(collector::run_pool(
            pool.clone(),
            state.clone(),
            cfg.monitoring.collect_interval,
            cancel.clone(),
        ));
    }

    let server = {
        let app = http::router(state.clone());
        let token = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        })
    };

    // Step 1: wait for a signal. Every SIGTERM/SIGINT is handled the same way.
    let mut signals = 0u32;
    loop {
        tokio::select! {
            _ = sigterm.recv() => signals += 1,
            _ = sigint.recv() => signals += 1,
            _ = sighup.recv() => {
                tracing::warn!("SIGHUP received; reloading the configuration at runtime is not available in this version, nothing changed.");
                continue;
            }
        }
        if signals == 1 {
            tracing::info!("Shutdown signal received; stopping gracefully.");
            cancel.cancel();
            break;
        }
    }

    // Steps 2 and 3 run together; further signals shorten the masters' grace.
    let grace = state.config.phpfpm.stop_timeout + Duration::from_secs(3);
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
        // Dropping the supervisors' tasks drops their children, and
        // kill_on_drop ends any master still running.
        supervisors.abort_all();
        while supervisors.join_next().await.is_some() {}
    }
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("HTTP server ended with an error: {e}."),
        Ok(Err(e)) => tracing::warn!("HTTP server task failed: {e}."),
        Err(_) => tracing::warn!("HTTP server did not stop within 2s."),
    }
    tracing::info!("Manager stopped.");
    Ok(())
}
