//! One manager per runtime directory, and `run --replace`.
//!
//! The running manager is identified by something that cannot be stale: the
//! holder of the exclusive `flock` on `<runtime_dir>/manager.lock` (the kernel
//! releases it when the process dies, even by SIGKILL, and names its holder in
//! `/proc/locks`). The manager also records its pid *and* start time in
//! `manager.pid`; `--replace` signals the lock holder only when it is exactly
//! the process recorded there (same pid, same start time), through a pidfd
//! opened after that check, so a reused pid can never be signalled. Nothing is
//! ever found by process name or file name: a manager started from a binary
//! with any name is replaced, and an unrelated process whose command line
//! happens to contain the product's name is never touched.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::supervisor::child::start_ticks;
use crate::supervisor::files::{write_atomic, Layout};

/// The lock file's name inside the runtime directory.
const LOCK_FILE: &str = "manager.lock";

/// A running manager as recorded in `manager.pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

/// Parses `manager.pid`: `PID START_TICKS`. Anything else (an older bare
/// pid, garbage) is None: a record that cannot be verified is not trusted.
pub fn parse_record(text: &str) -> Option<Record> {
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start_ticks = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some(Record { pid, start_ticks })
}

/// The pids holding a `FLOCK` on the file with this device and inode,
/// according to `/proc/locks` text. Waiters (`->` lines) are not holders.
/// The kernel prints the device as hexadecimal `major:minor`, the inode in
/// decimal.
pub fn flock_holders(proc_locks: &str, major: u32, minor: u32, ino: u64) -> Vec<u32> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    proc_locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "1: FLOCK ADVISORY WRITE 1234 fe:00:5325177 0 EOF"
            match fields.as_slice() {
                [_, "FLOCK", _, _, pid, dev, ..] if *dev == want => pid.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// Holds `manager.lock` for as long as it lives (the process, in practice).
#[derive(Debug)]
pub struct RuntimeLock {
    _file: File,
}

/// Takes the runtime directory's lock. When another manager holds it: with
/// `replace`, asks that manager to exit without stopping php-fpm (SIGUSR1)
/// and waits up to `wait` for the lock; without, says who holds it.
pub async fn lock_runtime_dir(
    dir: &Path,
    replace: bool,
    wait: Duration,
) -> anyhow::Result<RuntimeLock> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if try_lock(&file, &path)? {
        if replace {
            tracing::info!("No manager runs on {}; starting normally.", dir.display());
        }
        return Ok(RuntimeLock { _file: file });
    }
    let holder = lock_holder(&file);
    let record_path = Layout::new(dir).manager_pid();
    let record = std::fs::read_to_string(&record_path)
        .ok()
        .as_deref()
        .and_then(parse_record);
    if !replace {
        anyhow::bail!(
            "another phpfpm-manager (pid {}) runs on {}; stop it, or start this one with --replace to take over",
            holder.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            dir.display()
        );
    }
    let Some(holder) = holder else {
        anyhow::bail!(
            "{} is locked, but /proc/locks does not name its holder; stop the running manager by hand",
            path.display()
        );
    };
    let target = match record {
        Some(r) if r.pid == holder && start_ticks(r.pid) == Some(r.start_ticks) => r,
        _ => anyhow::bail!(
            "{} is locked by pid {holder}, which is not the manager recorded in {} ({}); refusing to signal it",
            path.display(),
            record_path.display(),
            record.map_or_else(|| "no valid record".to_owned(), |r| format!("pid {} started at tick {}", r.pid, r.start_ticks)),
        ),
    };
    signal_detach(target)?;
    tracing::info!(
        pid = target.pid,
        "Asked the running manager to hand over (SIGUSR1)."
    );
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if try_lock(&file, &path)? {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the running manager (pid {}) did not exit within {wait:?}; it is still in charge",
                target.pid
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The lock goes when its file is closed, a moment before the process is
    // gone (and its HTTP port free): wait for that too, briefly.
    let gone_by = tokio::time::Instant::now() + Duration::from_secs(5);
    while start_ticks(target.pid) == Some(target.start_ticks) {
        if tokio::time::Instant::now() > gone_by {
            tracing::warn!(
                pid = target.pid,
                "The previous manager released its lock but is still running."
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(RuntimeLock { _file: file })
}

fn try_lock(file: &File, path: &Path) -> anyhow::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
    }
}

/// The pid holding the flock on `file`, from `/proc/locks`.
fn lock_holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let (major, minor) = (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev()));
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let holders = flock_holders(&text, major, minor, meta.ino());
    // An exclusive lock has one holder; anything else is not trusted.
    match holders.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Sends SIGUSR1 through a pidfd opened *after* checking the start time, so
/// the signal reaches exactly the verified process (a pidfd never follows a
/// reused pid).
fn signal_detach(target: Record) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(target.pid as i32)
        .ok_or_else(|| anyhow::anyhow!("invalid pid {}", target.pid))?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .with_context(|| format!("cannot open the running manager (pid {})", target.pid))?;
    if start_ticks(target.pid) != Some(target.start_ticks) {
        anyhow::bail!(
            "the running manager (pid {}) exited while being replaced; start again",
            target.pid
        );
    }
    rustix::process::pidfd_send_signal(pidfd.as_fd(), rustix::process::Signal::USR1)
        .with_context(|| format!("cannot signal the running manager (pid {})", target.pid))
}

/// Records this process (pid and start time) as the runtime directory's
/// manager.
pub fn write_record(path: &Path) -> anyhow::Result<()> {
    let pid = std::process::id();
    let ticks = start_ticks(pid).context("cannot read this process's start time")?;
    write_atomic(path, format!("{pid} {ticks}\n").as_bytes(), 0o640)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The pid of a previous manager that ended without its shutdown: its
/// record is still there (a clean stop or a detach removes it, see
/// [`remove_record`]) and names a process that is gone (pid free, or reused
/// by a process with another start time). Called with the runtime lock held,
/// before this manager writes its own record.
pub fn previous_unclean(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    unclean_from(parse_record(&text)?, start_ticks)
}

/// The decision of [`previous_unclean`], with the process table passed in.
pub fn unclean_from(record: Record, ticks_of: impl Fn(u32) -> Option<u64>) -> Option<u32> {
    (ticks_of(record.pid) != Some(record.start_ticks)).then_some(record.pid)
}

/// Removes the record if it is this process's own.
pub fn remove_record(path: &PathBuf) {
    let mine = std::fs::read_to_string(path)
        .ok()
        .as_deref()
        .and_then(parse_record)
        .is_some_and(|r| r.pid == std::process::id());
    if mine {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_need_pid_and_start_time() {
        assert_eq!(
            parse_record("123 456\n"),
            Some(Record {
                pid: 123,
                start_ticks: 456
            })
        );
        assert_eq!(parse_record("123\n"), None);
        assert_eq!(parse_record("123 x"), None);
        assert_eq!(parse_record("1 2 3"), None);
        assert_eq!(parse_record(""), None);
    }

    #[test]
    fn a_record_of_a_gone_process_is_an_unclean_stop() {
        let r = Record {
            pid: 42,
            start_ticks: 1000,
        };
        // Still running (a replaced manager that released its lock): clean.
        assert_eq!(unclean_from(r, |_| Some(1000)), None);
        // Gone, or the pid now belongs to another process.
        assert_eq!(unclean_from(r, |_| None), Some(42));
        assert_eq!(unclean_from(r, |_| Some(2000)), Some(42));
    }

    #[test]
    fn holders_are_read_by_device_and_inode() {
        let text = "1: FLOCK  ADVISORY  WRITE 12283 fe:00:5325177 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 999 fe:00:42 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 777 fe:00:42 0 EOF\n\
                    3: -> FLOCK  ADVISORY  WRITE 778 fe:00:42 0 EOF\n\
                    4: FLOCK  ADVISORY  WRITE 555 08:01:42 0 EOF\n";
        assert_eq!(flock_holders(text, 0xfe, 0, 42), vec![777]);
        assert_eq!(flock_holders(text, 8, 1, 42), vec![555]);
        assert_eq!(flock_holders(text, 0xfe, 0, 5325177), vec![12283]);
        assert!(flock_holders(text, 0xfe, 0, 43).is_empty());
    }

    #[test]
    fn own_lock_is_found_in_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("l")).unwrap();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        assert_eq!(lock_holder(&f), Some(std::process::id()));
    }
}
