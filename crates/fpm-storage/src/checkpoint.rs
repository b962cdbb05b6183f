//! Background WAL checkpoints on a connection of their own. SQLite's automatic
//! checkpoint runs inside the committing transaction, so the writer would pay for copying
//! pages into the database file and the fsync, now and then for hundreds of ms; a passive
//! checkpoint from another connection runs beside the writer instead and never blocks it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How often the WAL is copied back into the database file.
const INTERVAL: Duration = Duration::from_secs(1);

/// Runs until dropped; dropping stops and joins the thread.
pub(crate) struct Checkpointer {
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `path`; `None` if the thread cannot start, in which case the
    /// caller keeps SQLite's automatic checkpoints.
    pub(crate) fn start(path: &Path) -> Option<Checkpointer> {
        let (tx, rx) = sync_channel::<()>(1);
        let path: PathBuf = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("fpm-storage-checkpoint".into())
            .spawn(move || {
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = match Connection::open_with_flags(&path, flags) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "Cannot open the checkpoint connection.");
                        return;
                    }
                };
                // Each round waits for the interval unless told to stop (message or drop).
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(INTERVAL) {
                    // A failure (full disk, a reader holding old pages) only delays the copy;
                    // the next round retries and the writer reports real write failures.
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::debug!(path = %path.display(), error = %e, "WAL checkpoint failed.");
                    }
                }
            })
            .ok()?;
        Some(Checkpointer {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
