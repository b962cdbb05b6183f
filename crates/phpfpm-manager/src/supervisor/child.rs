//! The one place that starts php-fpm processes, and the only code that signals
//! them. Every process is either the manager's own child, or a master adopted
//! from an earlier manager run after checking its identity (pid, start time,
//! and a command line naming this runtime directory's config). Processes are
//! signalled by pid or by the process group created for them at spawn, never
//! looked up by name.
//!
//! A master runs in its own process group: a Ctrl-C on the manager's terminal
//! then reaches only the manager, which stops php-fpm gracefully, instead of
//! reaching php-fpm as SIGINT (php-fpm's fast, request-cutting stop). It also
//! means a manager killed with SIGKILL leaves its masters serving, to be
//! adopted by the next manager (issue: no downtime when the manager dies).

// The one place that starts and signals php-fpm (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fpm_core::watch::{child_line, ChildLine, WorkerExits};
use fpm_core::PoolName;
use fpm_kernel::procfs::read_stat;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// `php-fpm -t` refused a configuration; the text is php-fpm's own reason.
/// Retrying the same configuration cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRefused(pub String);

impl std::fmt::Display for ConfigRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigRefused {}

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

    /// Runs `php-fpm -v` and checks that this is php-fpm (the fpm-fcgi SAPI)
    /// at least 8.0, which `pm.status_listen` needs. Returns the version.
    pub async fn check_version(&self) -> Result<(u32, u32, u32), String> {
        let out = self
            .command(Path::new("/"))
            .arg("-v")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(Duration::from_secs(10), out).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("cannot run {}: {e}", self.path.display())),
            Err(_) => {
                return Err(format!(
                    "{} -v did not answer within 10s",
                    self.path.display()
                ))
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        parse_version(&text).ok_or_else(|| {
            format!(
                "{} is not php-fpm: `-v` printed {:?}; set phpfpm.binary to a php-fpm binary (for example /usr/sbin/php-fpm8.2)",
                self.path.display(),
                text.lines().next().unwrap_or("")
            )
        }).and_then(|v| {
            if v < (8, 0, 0) {
                Err(format!(
                    "{} is php-fpm {}.{}.{}; phpfpm-manager needs 8.0 or newer (pm.status_listen)",
                    self.path.display(), v.0, v.1, v.2
                ))
            } else {
                Ok(v)
            }
        })
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

    /// Starts a master in the foreground (`-F`) with the listening sockets
    /// `inherit` (fd, as given in `fpm_sockets`) and its output forwarded to
    /// the manager's log, tagged with the pool. The returned receiver fires
    /// when php-fpm says it is ready to handle connections.
    pub fn spawn_master(
        &self,
        pool: &PoolName,
        conf: &Path,
        cwd: &Path,
        inherit: &[RawFd],
        fpm_sockets: &str,
    ) -> std::io::Result<(Master, oneshot::Receiver<()>)> {
        let mut cmd = self.command(cwd);
        cmd.arg("-F")
            .arg("-y")
            .arg(conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // Killing on drop is done by `Master`'s own guard, which can be
            // disarmed for a hand-over to a new manager.
            .kill_on_drop(false);
        if !fpm_sockets.is_empty() {
            cmd.env("FPM_SOCKETS", fpm_sockets);
        }
        keep_fds_open_across_exec(&mut cmd, inherit.to_vec());
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("php-fpm exited before its pid was read"))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(follow_log(pool.clone(), stderr, Some(ready_tx)));
        }
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(follow_log(pool.clone(), stdout, None));
        }
        let start_ticks = start_ticks(pid).unwrap_or(0);
        Ok((
            Master {
                pid,
                start_ticks,
                child: Some(child),
                armed: true,
            },
            ready_rx,
        ))
    }
}

/// Clears close-on-exec on the listening sockets in the forked child, so
/// php-fpm inherits exactly these fds (and no other fd of the manager).
#[allow(unsafe_code)]
fn keep_fds_open_across_exec(cmd: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe operations are allowed. It only calls fcntl(2) on fds
    // that the parent keeps open for the duration of the spawn, and it does
    // not allocate (the Vec was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                let rc = nix::libc::fcntl(*fd, nix::libc::F_SETFD, 0);
                if rc == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Forwards one output pipe of a master to the manager's log, tagged with
/// the pool, until the pipe closes. Child lifecycle lines are counted and
/// summarised (see [`LifecycleSummary`]); `ready` fires at php-fpm's "ready
/// to handle connections".
async fn follow_log<R>(pool: PoolName, output: R, mut ready: Option<oneshot::Sender<()>>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(output).lines();
    let mut summary = LifecycleSummary::new(pool.clone());
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // Until it is ready, php-fpm writes some notices twice: to its
    // error_log (our stderr, opened as /proc/self/fd/2) and to stderr
    // itself. The same line twice in a row then is one.
    let mut starting = ready.is_some().then(String::new);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                if let Some(prev) = starting.as_mut() {
                    if *prev == line {
                        continue;
                    }
                    prev.clone_from(&line);
                }
                if line.contains("ready to handle connections") {
                    starting = None;
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                if let Some(kind) = forward_line(&pool, &line) {
                    summary.count(kind);
                }
            }
            _ = tick.tick() => summary.flush(),
        }
    }
    summary.flush();
}

/// Follows the output of an adopted master again. The pipes it writes its
/// log to (`error_log = /proc/self/fd/2`, and stdout) were read by the
/// manager that started it; once that manager is gone they have no reader,
/// and php-fpm (which ignores SIGPIPE) loses each line with `EPIPE` but keeps
/// serving. Opening the master's own `/proc/<pid>/fd/{1,2}` for reading
/// gives such a pipe a reader again (the kernel opens a pipe reached through
/// `/proc` like a FIFO), so its lines reach this manager's log from then on;
/// lines written while no manager ran are lost. Only pipes are opened: a
/// master whose output is a terminal or a file is left alone. Returns how
/// many pipes are followed.
pub fn follow_adopted_output(pool: &PoolName, pid: u32) -> Result<usize, String> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut followed = 0;
    let mut problems = Vec::new();
    for fd in [2, 1] {
        let path = format!("/proc/{pid}/fd/{fd}");
        // `metadata` follows the magic link to the pipe itself.
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_fifo() => {}
            Ok(_) => continue,
            Err(e) => {
                problems.push(format!("{path}: {e}"));
                continue;
            }
        }
        let opened = rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::NOCTTY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .and_then(tokio::net::unix::pipe::Receiver::from_owned_fd);
        match opened {
            Ok(rx) => {
                tokio::spawn(follow_log(pool.clone(), rx, None));
                followed += 1;
            }
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    if followed == 0 && !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(followed)
}

/// php-fpm refuses to run workers as root: when the manager runs as root, a
/// pool without `user`/`group` runs as www-data (or nobody).
pub fn default_account(spec: &mut fpm_core::fpm_conf::PoolSpec) {
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
}

/// A running php-fpm master: a child of this manager, or adopted.
#[derive(Debug)]
pub struct Master {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22):
    /// with the pid, the identity of the process.
    pub start_ticks: u64,
    child: Option<Child>,
    /// Kill the process group when dropped (a panic, an aborted task).
    armed: bool,
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
    /// A master started by an earlier manager, checked to be exactly the
    /// process recorded (pid, start time) and running `conf`.
    pub fn adopt(pid: u32, recorded_start_ticks: u64, conf: &Path) -> Option<Master> {
        if start_ticks(pid)? != recorded_start_ticks || !runs_conf(pid, conf) {
            return None;
        }
        Some(Master {
            pid,
            start_ticks: recorded_start_ticks,
            child: None,
            armed: true,
        })
    }

    /// Whether the process is still the one this value stands for.
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Leaves the process running when this value is dropped (hand-over to
    /// a new manager).
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Waits for the master to exit and describes how it ended.
    pub async fn wait(&mut self) -> String {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            },
            // Not our child: no exit status to collect, so watch /proc.
            None => {
                while self.alive() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                "exited (adopted master; exit status unknown)".to_owned()
            }
        }
    }

    async fn wait_for(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }

    /// SIGQUIT, wait up to `grace` (cut short by `hurry`), then SIGTERM, wait
    /// 1 s, then SIGKILL to the master's process group so that no worker is
    /// left behind.
    pub async fn stop(&mut self, grace: Duration, hurry: &CancellationToken) -> StopOutcome {
        let outcome = self.stop_inner(grace, hurry).await;
        self.armed = false;
        outcome
    }

    async fn stop_inner(&mut self, grace: Duration, hurry: &CancellationToken) -> StopOutcome {
        if self.signal(Signal::SIGQUIT) {
            let waited = tokio::select! {
                ok = self.wait_for(grace) => ok,
                _ = hurry.cancelled() => false,
            };
            if waited {
                return StopOutcome::Graceful;
            }
        } else if !self.alive() {
            return StopOutcome::Graceful;
        }
        if self.signal(Signal::SIGTERM) && self.wait_for(Duration::from_secs(1)).await {
            return StopOutcome::Terminated;
        }
        self.kill_group();
        let _ = self.wait_for(Duration::from_secs(2)).await;
        StopOutcome::Killed
    }

    /// Sends `sig` to the master if it is still the same process (a reaped
    /// child's pid could belong to someone else by now).
    pub fn signal(&mut self, sig: Signal) -> bool {
        let ours = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => self.alive(),
        };
        ours && kill(Pid::from_raw(self.pid as i32), sig).is_ok()
    }

    /// Kills the master's process group at once: a master that is stopped
    /// or hung acts on neither SIGQUIT nor SIGTERM, and its workers must
    /// not outlive it.
    pub fn kill(&mut self) {
        self.kill_group();
    }

    fn kill_group(&mut self) {
        // The group id is the master's pid (process_group(0) at spawn, kept
        // by an adopted master too). Checked first: never signal a group
        // whose leader is gone and whose id may have been reused.
        let group_alive = self.alive() || group_has_members(self.pid);
        if group_alive {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.armed {
            self.kill_group();
        }
    }
}

/// After a master died without stopping its workers (SIGKILL, a crash), its
/// workers are still in its process group: end them. The group id cannot
/// have been reused while any of them lives.
pub fn kill_orphaned_workers(master_pid: u32) {
    if group_has_members(master_pid) {
        let _ = killpg(Pid::from_raw(master_pid as i32), Signal::SIGKILL);
    }
}

/// Start time of `pid` in clock ticks since boot, if it exists.
pub fn start_ticks(pid: u32) -> Option<u64> {
    read_stat(pid).map(|st| st.starttime)
}

/// Is `pid` a php-fpm master started with `conf`? php-fpm rewrites its title
/// to "php-fpm: master process (<conf>)".
fn runs_conf(pid: u32, conf: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&cmdline);
    text.contains("master process") && text.contains(&*conf.to_string_lossy())
}

/// Does any live process still belong to process group `pgid`? (Workers of
/// a master that died are still in its group.)
fn group_has_members(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .parse::<u32>()
            .ok()
            .and_then(read_stat)
            .is_some_and(|st| st.pgrp == pgid)
    })
}

/// `PHP 8.2.36 (fpm-fcgi) (built: ...)` gives (8, 2, 36); any other SAPI or
/// text gives None.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let first = text.lines().next()?;
    let rest = first.strip_prefix("PHP ")?;
    if !first.contains("(fpm-fcgi)") {
        return None;
    }
    let version = rest.split_whitespace().next()?;
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().and_then(Result::ok).unwrap_or(0),
    ))
}

/// Drops php-fpm's `[26-Nov-2026 10:23:37] ` prefix; the log has its own time.
fn strip_fpm_date(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((_, rest)) => rest,
        None => line,
    }
}

/// How often the count of recycled workers is logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Worker exits per pool, counted from the log of every master this manager
/// started, for the collector's respawn-storm rule (which must tell
/// `pm.max_requests` recycling from crashes). Keyed by pool name; counts
/// only grow.
static WORKER_EXITS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, WorkerExits>>,
> = std::sync::LazyLock::new(Default::default);

/// How the workers of `pool` exited so far; None when no master of it was
/// started or adopted by this manager (an observed pool: its log is not
/// read).
pub fn worker_exits(pool: &PoolName) -> Option<WorkerExits> {
    WORKER_EXITS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(pool.as_str())
        .copied()
}

/// Counts worker starts and exits of one master, and logs them as one line
/// a minute instead of a line per worker.
struct LifecycleSummary {
    pool: PoolName,
    started: u64,
    recycled: u64,
    crashed: u64,
}

impl LifecycleSummary {
    fn new(pool: PoolName) -> LifecycleSummary {
        WORKER_EXITS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pool.as_str().to_owned())
            .or_default();
        LifecycleSummary {
            pool,
            started: 0,
            recycled: 0,
            crashed: 0,
        }
    }

    fn count(&mut self, kind: ChildLine) {
        match kind {
            ChildLine::Started => self.started += 1,
            ChildLine::Recycled => self.recycled += 1,
            ChildLine::Crashed => self.crashed += 1,
        }
        if kind != ChildLine::Started {
            let mut all = WORKER_EXITS.lock().unwrap_or_else(|e| e.into_inner());
            let e = all.entry(self.pool.as_str().to_owned()).or_default();
            if kind == ChildLine::Recycled {
                e.recycled += 1;
            } else {
                e.crashed += 1;
            }
        }
    }

    fn flush(&mut self) {
        if self.recycled > 0 || self.crashed > 0 {
            tracing::info!(
                pool = self.pool.as_str(),
                recycled = self.recycled,
                crashed = self.crashed,
                started = self.started,
                "{} workers recycled, {} crashed, {} started in the last minute.",
                self.recycled,
                self.crashed,
                self.started
            );
        }
        self.started = 0;
        self.recycled = 0;
        self.crashed = 0;
    }
}

/// Logs one line of php-fpm's output at the level php-fpm gave it, tagged
/// with the pool. Child lifecycle lines ("child N started", "child N exited
/// with code 0") are routine and go to debug (a crashed worker stays a
/// warning); they are returned for counting.
fn forward_line(pool: &PoolName, line: &str) -> Option<ChildLine> {
    let line = strip_fpm_date(line);
    let pool = pool.as_str();
    let body = line.split_once(": ").map_or(line, |(_, m)| m);
    if let Some(kind) = child_line(body) {
        if kind == ChildLine::Crashed {
            tracing::warn!(pool, source = "php-fpm", "{body}");
        } else {
            tracing::debug!(pool, source = "php-fpm", "{body}");
        }
        return Some(kind);
    }
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
    None
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

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("PHP 8.2.36 (fpm-fcgi) (built: Nov 18 2026)\nCopyright"),
            Some((8, 2, 36))
        );
        assert_eq!(
            parse_version("PHP 8.4.0-dev (fpm-fcgi) (built: x)"),
            Some((8, 4, 0))
        );
        assert_eq!(parse_version("PHP 8.2.36 (cli) (built: x)"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("hello"), None);
    }

    #[test]
    fn own_start_time_is_readable_and_adoption_checks_the_command_line() {
        let me = std::process::id();
        let t = start_ticks(me).unwrap();
        assert!(t > 0);
        // This test process is not a php-fpm master.
        assert!(Master::adopt(me, t, Path::new("/x/masters/a.conf")).is_none());
        assert!(Master::adopt(me, t + 1, Path::new("/x")).is_none());
    }
}
