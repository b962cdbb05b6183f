//! Embedded history for phpfpm-manager: a SQLite timeseries (raw samples compacted into
//! per-minute chunks, 1-minute and 1-hour rollups, retention per tier) and an event log,
//! with the queries that read them back. It knows nothing of HTTP: the daemon's HTTP
//! surface turns requests into these queries.
//!
//! Shape: [`Storage::open`] checks and migrates the file; one [`Writer`] (run as a task
//! through [`Storage::spawn_writer`]) owns all writes; any number of [`Reader`]s query on
//! connections of their own. The maths (rollups, tier choice, step fitting, retention,
//! counter resets) is in [`rollup`], pure and with the time passed in.

mod checkpoint;
pub mod codec;
mod db;
mod error;
mod model;
mod reader;
pub mod rollup;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use db::SCHEMA_VERSION;
pub use error::StorageError;
pub use model::{
    Event, EventFilter, EventKind, EventStats, MetricKind, Point, QueryResult, Retention,
    RetentionError, Sample, SeriesPoints, Severity, StoredEvent, Tier, TimestampMs, UnknownName,
};
pub use reader::{QueryError, Reader};
pub use writer::{
    wall_clock_ms, MaintenanceReport, Writer, WriterHandle, WriterOptions, WriterStatus, WriterTask,
};

/// `storage.*` settings.
#[derive(Debug, Clone, Default)]
pub struct StorageConfig {
    /// The database file (`storage.database_path`); `None` keeps everything in memory
    /// (development: lost at exit).
    pub path: Option<PathBuf>,
    pub retention: Retention,
}

/// The default database file in zero-config mode, relative to the working directory.
pub const DEFAULT_DATABASE_PATH: &str = "./var/phpfpm-manager/data.db";

/// A connection either owned by the writer (file) or shared by everyone (memory).
pub(crate) enum Conn {
    Owned(Connection),
    Shared(Arc<Mutex<Connection>>),
}

impl Conn {
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(&mut Connection) -> R) -> R {
        match self {
            Conn::Owned(c) => f(c),
            Conn::Shared(m) => {
                let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut g)
            }
        }
    }
}

/// An open database. Cheap to share behind an `Arc`; the writer can be started once.
pub struct Storage {
    path: PathBuf,
    file_backed: bool,
    retention: Retention,
    writer_conn: Mutex<Option<Conn>>,
    shared: Option<Arc<Mutex<Connection>>>,
    lock: Option<Arc<db::ProcessLock>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .finish()
    }
}

impl Storage {
    /// Opens (creating if needed) and migrates the database. Refuses, with an error
    /// naming the file and what to do, a file that is not SQLite, belongs to another
    /// application, has a newer schema, is read-only, or is in use by another process.
    pub fn open(cfg: &StorageConfig) -> Result<Storage, StorageError> {
        cfg.retention.validate()?;
        match &cfg.path {
            None => {
                let conn = Arc::new(Mutex::new(db::open_memory()?));
                Ok(Storage {
                    path: PathBuf::from(":memory:"),
                    file_backed: false,
                    retention: cfg.retention,
                    writer_conn: Mutex::new(Some(Conn::Shared(conn.clone()))),
                    shared: Some(conn),
                    lock: None,
                })
            }
            Some(path) => {
                db::precheck_file(path)?;
                let lock = db::take_process_lock(path)?;
                let conn = db::open_file_writer(path)?;
                Ok(Storage {
                    path: path.clone(),
                    file_backed: true,
                    retention: cfg.retention,
                    writer_conn: Mutex::new(Some(Conn::Owned(conn))),
                    shared: None,
                    lock: Some(Arc::new(lock)),
                })
            }
        }
    }

    /// The database file (`:memory:` for an in-memory database).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// A reader with a connection of its own (file) or the shared one (memory).
    pub fn reader(&self) -> Result<Reader, StorageError> {
        let conn = match &self.shared {
            Some(c) => c.clone(),
            None => Arc::new(Mutex::new(db::open_file_reader(&self.path)?)),
        };
        Ok(Reader::new(conn, self.path.clone(), self.retention))
    }

    /// Takes the write connection for the single writer; a second call fails.
    pub fn writer(&self, opts: WriterOptions) -> Result<Writer, StorageError> {
        let conn = self
            .writer_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| StorageError::WriterTaken {
                path: self.path.clone(),
            })?;
        Ok(Writer::new(
            conn,
            self.path.clone(),
            self.retention,
            opts,
            self.lock.clone(),
        ))
    }

    /// Starts the writer on tokio's blocking pool. The task ends, after committing
    /// everything received, once every [`WriterHandle`] clone is dropped.
    /// Must be called from within a tokio runtime.
    pub fn spawn_writer(
        &self,
        opts: WriterOptions,
    ) -> Result<
        (
            WriterHandle,
            tokio::task::JoinHandle<Result<(), StorageError>>,
        ),
        StorageError,
    > {
        let (handle, task) = self.writer(opts)?.into_task();
        Ok((handle, tokio::task::spawn_blocking(move || task.run())))
    }

    /// True if backed by a file (false for in-memory).
    pub fn is_file_backed(&self) -> bool {
        self.file_backed
    }
}
