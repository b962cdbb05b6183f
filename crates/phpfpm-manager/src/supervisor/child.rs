//! The one place that starts php-fpm processes, and the only code that signals
//! them. Every process is the manager's own child, signalled by pid (or by the
//! process group it was placed in at spawn), never looked up by name.
//!
//! A master runs in its own process group: a Ctrl-C on the manager's terminal
//! then reaches only the manager, which stops php-fpm gracefully, instead of
//! reaching php-fpm as SIGINT (php-fpm's fast, request-cutting stop).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use fpm_core::PoolName;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How to invoke php-fpm.
#[derive(Debug, Clone)]
pub struct FpmBinary {
    pub path: PathBuf,
    /// Pass `-R` (php-fpm refuses to run as root without it).
    pub as_root: bool,
}

impl FpmBinary {
    fn command(&self, cwd: &Path) -> Command {
        let mut cmd = Command::new(&self.path);
        // A clean environment: the manager's own variables (which may hold
        // API keys) never reach PHP. Pool env comes from env[...] settings.
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C")
            .current_dir(cwd)
            .stdin(Stdio::null());
        if self.as_root {
            cmd.arg("-R");
        }
        cmd
    }

    /// Runs `php-fpm -t -y <conf>`; on failure returns php-fpm's own message.
    pub async fn test_config(&self, conf: &Path, cwd: &Path) -> Result<(), String> {
        let out = self
            .command(cwd)
            .arg("-t")
            .arg("-y")
            .arg(conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(Duration::from_secs(30), out).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("cannot run {}: {e}", self.path.display())),
            Err(_) => {
                return Err(format!(
                    "{} -t did not finish within 30s",
                    self.path.display()
                ))
            }
        };
        if out.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        // php-fpm prints "[date] ERROR: ..." lines; those are the reason.
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR:") || l.contains("ALERT:"))
            .map(strip_fpm_date)
            .collect();
        let msg = if errors.is_empty() {
            text.trim().to_owned()
        } else {
            errors.join("; ")
        };
        Err(format!(
            "php-fpm -t rejected the configuration ({}): {msg}",
            out.status
        ))
    }

    /// Starts a master in the foreground (`-F`) with its stderr forwarded to
    /// the manager's log, tagged with the pool.
    pub fn spawn_master(
        &self,
        pool: &PoolName,
        conf: &Path,
        cwd: &Path,
    ) -> std::io::Result<Master> {
        let mut child = self
            .command(cwd)
            .arg("-F")
            .arg("-y")
            .arg(conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // If the manager panics, the master goes with it.
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("php-fpm exited before its pid was read"))?;
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    forward_line(&pool, &line);
                }
            });
        }
        Ok(Master { child, pid })
    }
}

/// A running php-fpm master.
#[derive(Debug)]
pub struct Master {
    child: Child,
    pub pid: u32,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// Exited after SIGQUIT: requests in flight finished.
    Graceful,
    /// Needed SIGTERM.
    Terminated,
    /// Needed SIGKILL of the whole process group.
    Killed,
}

impl Master {
    /// Waits for the master to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGQUIT, wait up to `grace` (cut short by `hurry`), then SIGTERM, wait
    /// 1 s, then SIGKILL to the master's process group so that no worker is
    /// left behind.
    pub async fn stop(&mut self, grace: Duration, hurry: &CancellationToken) -> StopOutcome {
        let pid = Pid::from_raw(self.pid as i32);
        if self.signal(pid, Signal::SIGQUIT) {
            let waited = tokio::select! {
                r = tokio::time::timeout(grace, self.child.wait()) => r.is_ok(),
                _ = hurry.cancelled() => false,
            };
            if waited {
                return StopOutcome::Graceful;
            }
        }
        if self.signal(pid, Signal::SIGTERM)
            && tokio::time::timeout(Duration::from_secs(1), self.child.wait())
                .await
                .is_ok()
        {
            return StopOutcome::Terminated;
        }
        // The group id is the master's pid (process_group(0) at spawn).
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.wait().await;
        StopOutcome::Killed
    }

    /// Sends `sig` unless the child has already been reaped (its pid could
    /// then belong to someone else).
    fn signal(&mut self, pid: Pid, sig: Signal) -> bool {
        match self.child.try_wait() {
            Ok(None) => kill(pid, sig).is_ok(),
            _ => false,
        }
    }
}

/// Drops php-fpm's `[26-Nov-2026 10:23:37] ` prefix; the log has its own time.
fn strip_fpm_date(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((_, rest)) => rest,
        None => line,
    }
}

fn forward_line(pool: &PoolName, line: &str) {
    let line = strip_fpm_date(line);
    let pool = pool.as_str();
    if let Some(msg) = line
        .strip_prefix("ERROR: ")
        .or_else(|| line.strip_prefix("ALERT: "))
    {
        tracing::error!(pool, source = "php-fpm", "{msg}");
    } else if let Some(msg) = line.strip_prefix("WARNING: ") {
        tracing::warn!(pool, source = "php-fpm", "{msg}");
    } else if let Some(msg) = line.strip_prefix("NOTICE: ") {
        tracing::info!(pool, source = "php-fpm", "{msg}");
    } else if !line.trim().is_empty() {
        tracing::debug!(pool, source = "php-fpm", "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpm_date_prefix_is_removed() {
        assert_eq!(
            strip_fpm_date("[26-Nov-2026 10:23:37] NOTICE: fpm is running, pid 5"),
            "NOTICE: fpm is running, pid 5"
        );
        assert_eq!(strip_fpm_date("no prefix"), "no prefix");
    }
}
