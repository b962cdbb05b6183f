//! The supervisor: one actor per supervised pool that writes the pool's
//! php-fpm config, validates it with `php-fpm -t`, runs the pool's own master
//! in the foreground as the manager's child, restarts it with backoff when it
//! exits unexpectedly, and stops it gracefully on shutdown.
//!
//! One master per pool (see ARCHITECTURE.md): a change to one pool then never
//! reloads, restarts or flushes the OPcache of another.

mod backoff;
pub mod binary;
pub mod child;
pub mod files;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fpm_core::fpm_conf::{self, PoolSpec};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Pool};
use crate::state::AppState;
use backoff::Backoff;
use child::{FpmBinary, StopOutcome};
use files::{write_atomic, Layout};

/// A master that ran at least this long before exiting resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Creates the runtime directory and the shared files, and finds php-fpm.
pub fn prepare_runtime(cfg: &Config) -> anyhow::Result<(Layout, FpmBinary)> {
    let layout = Layout::new(&cfg.phpfpm.runtime_dir);
    let path = binary::find(
        cfg.phpfpm.binary.as_deref(),
        std::env::var("PATH").ok().as_deref(),
    )?;
    layout
        .create_dirs()
        .context("cannot create the runtime directory (phpfpm.runtime_dir)")?;
    write_atomic(
        &layout.global_conf(),
        fpm_conf::render_global(&cfg.phpfpm.global).as_bytes(),
        0o644,
    )?;
    if cfg.zero_config {
        let index = layout.www().join("index.php");
        if !index.exists() {
            write_atomic(&index, DEMO_INDEX.as_bytes(), 0o644)?;
        }
    }
    let as_root = nix::unistd::geteuid().is_root();
    Ok((layout, FpmBinary { path, as_root }))
}

/// The demo pool's page: a short response with a little work in it.
const DEMO_INDEX: &str = "<?php\n// Served by the phpfpm-manager demo pool.\n$ms = min(2000, max(0, (int)($_GET['ms'] ?? 0)));\nif ($ms > 0) { usleep($ms * 1000); }\nheader('Content-Type: text/plain');\necho \"hello from pool demo, pid \", getmypid(), \"\\n\";\n";

/// Runs one pool's master for the life of the manager.
pub struct Supervisor {
    pub pool: Pool,
    pub layout: Layout,
    pub binary: FpmBinary,
    pub stop_timeout: Duration,
    pub state: Arc<AppState>,
}

impl Supervisor {
    /// Runs until `cancel`; `hurry` cuts the graceful stop short.
    pub async fn run(self, cancel: CancellationToken, hurry: CancellationToken) {
        let name = self.pool.name.clone();
        let Some(spec) = self.pool.spec.clone() else {
            return;
        };
        let spec = self.with_account_defaults(spec);
        if let Err(e) = self.write_config(&spec).await {
            tracing::error!(pool = name.as_str(), "Pool cannot start: {e:#}.");
            self.state
                .update(&name, |s| s.master.failed = Some(format!("{e:#}")));
            cancel.cancelled().await;
            return;
        }
        self.stop_leftover().await;
        let conf = self.layout.master_conf(&name);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        while !cancel.is_cancelled() {
            let started = Instant::now();
            let mut master = match self.binary.spawn_master(&name, &conf, &self.layout.root) {
                Ok(m) => m,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!(
                        pool = name.as_str(),
                        "Cannot start php-fpm: {e}; retrying in {delay:?}."
                    );
                    self.state
                        .update(&name, |s| s.master.failed = Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = cancel.cancelled() => break,
                    }
                }
            };
            let pid = master.pid;
            tracing::info!(pool = name.as_str(), pid, "Started php-fpm master.");
            self.state.update(&name, |s| {
                s.master.running = true;
                s.master.pid = Some(pid);
                s.master.failed = None;
            });
            tokio::select! {
                status = master.wait() => {
                    let status = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    if started.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(pool = name.as_str(), pid, "php-fpm master exited unexpectedly ({status}); restarting in {delay:?}.");
                    self.state.metrics.master_restarts.with_label_values(&[name.as_str()]).inc();
                    self.state.update(&name, |s| {
                        s.master.running = false;
                        s.master.pid = None;
                        s.master.restarts += 1;
                        s.master.last_exit = Some(status);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
                _ = cancel.cancelled() => {
                    let t = Instant::now();
                    let outcome = master.stop(self.stop_timeout, &hurry).await;
                    match outcome {
                        StopOutcome::Graceful => tracing::info!(pool = name.as_str(), pid, "Stopped php-fpm master gracefully in {:?}.", t.elapsed()),
                        other => tracing::warn!(pool = name.as_str(), pid, "Stopped php-fpm master forcefully ({other:?}) after {:?}.", t.elapsed()),
                    }
                    self.state.update(&name, |s| {
                        s.master.running = false;
                        s.master.pid = None;
                    });
                    break;
                }
            }
        }
    }

    /// As root, php-fpm requires an account for the workers; pick a
    /// conventional unprivileged one when the config names none.
    fn with_account_defaults(&self, mut spec: PoolSpec) -> PoolSpec {
        if !self.binary.as_root {
            return spec;
        }
        if spec.user.is_none() {
            let user = ["www-data", "nobody"]
                .into_iter()
                .find(|u| matches!(nix::unistd::User::from_name(u), Ok(Some(_))))
                .unwrap_or("nobody");
            spec.user = Some(user.to_owned());
        }
        if spec.group.is_none() {
            let group = [
                spec.user.as_deref().unwrap_or("nobody"),
                "nogroup",
                "nobody",
            ]
            .into_iter()
            .find(|g| matches!(nix::unistd::Group::from_name(g), Ok(Some(_))))
            .unwrap_or("nogroup");
            spec.group = Some(group.to_owned());
        }
        spec
    }

    /// Renders the pool and master files, checks them with `php-fpm -t` under
    /// temporary names, and only then puts them in place.
    async fn write_config(&self, spec: &PoolSpec) -> anyhow::Result<()> {
        let name = &self.pool.name;
        let pool_text = fpm_conf::render_pool(spec)?;
        let pool_path = self.layout.pool_conf(name);
        let master_path = self.layout.master_conf(name);
        let global = self.layout.global_conf();
        let pid = self.layout.pid_file(name);
        let check_pool = pool_path.with_file_name(format!(".{name}.conf.check"));
        let check_master = master_path.with_file_name(format!(".{name}.conf.check"));
        // 0640: the pool file can hold env[...] secrets.
        write_atomic(&check_pool, pool_text.as_bytes(), 0o640)?;
        let master_text =
            |p: &Path| fpm_conf::render_master(&lossy(&global), &lossy(p), &lossy(&pid));
        write_atomic(&check_master, master_text(&check_pool).as_bytes(), 0o644)?;
        let verdict = self
            .binary
            .test_config(&check_master, &self.layout.root)
            .await;
        let _ = std::fs::remove_file(&check_master);
        let _ = std::fs::remove_file(&check_pool);
        verdict.map_err(anyhow::Error::msg)?;
        write_atomic(&pool_path, pool_text.as_bytes(), 0o640)?;
        write_atomic(&master_path, master_text(&pool_path).as_bytes(), 0o644)?;
        Ok(())
    }

    /// A master of this pool left running by an earlier manager (killed
    /// without a chance to stop it) would hold the pool's socket. It is
    /// recognised by its pid file *and* its command line naming this pool's
    /// master config in this runtime directory, and stopped gracefully.
    async fn stop_leftover(&self) {
        let name = &self.pool.name;
        let pid_path = self.layout.pid_file(name);
        let Ok(text) = std::fs::read_to_string(&pid_path) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let conf = self.layout.master_conf(name);
        if !is_our_master(pid, &conf) {
            return;
        }
        tracing::warn!(
            pool = name.as_str(),
            pid,
            "Stopping a php-fpm master left by an earlier manager run."
        );
        let p = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + self.stop_timeout;
        while is_our_master(pid, &conf) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if is_our_master(pid, &conf) {
            let _ = nix::sys::signal::killpg(p, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Is `pid` a live php-fpm master started with exactly `conf`? Checked on
/// the command line so that a reused pid is never mistaken for ours.
fn is_our_master(pid: i32, conf: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // php-fpm rewrites its title to "php-fpm: master process (<conf>)".
    let text = String::from_utf8_lossy(&cmdline);
    text.contains("master process") && text.contains(&*conf.to_string_lossy())
}
