//! Errors of the storage layer. Messages name the file and, where the operator can act,
//! what to do; the file itself is never overwritten or deleted on any of them.

use std::path::PathBuf;

use crate::codec::DecodeError;
use crate::model::RetentionError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database file '{path}' is not a SQLite database; it was left untouched: move it away or set storage.database_path to another file")]
    NotSqlite { path: PathBuf },
    #[error("database file '{path}' belongs to another application (SQLite application_id {application_id:#x}, tables present); it was left untouched: set storage.database_path to another file")]
    ForeignDatabase { path: PathBuf, application_id: i64 },
    #[error("database file '{path}' has schema version {found}, newer than the {supported} this phpfpm-manager knows; upgrade phpfpm-manager or set storage.database_path to another file")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database file '{path}' cannot be written ({reason}); make it and its directory writable or set storage.database_path to another file")]
    ReadOnly { path: PathBuf, reason: String },
    #[error("database file '{path}' is in use by another process (lock '{lock_path}' is held); stop the other phpfpm-manager or set storage.database_path to another file")]
    Locked { path: PathBuf, lock_path: PathBuf },
    #[error("database file '{path}' stayed locked by another connection for {waited_ms} ms; close the other program using it")]
    Busy { path: PathBuf, waited_ms: u64 },
    #[error("disk full while writing database file '{path}'; free space on its filesystem (samples are kept in memory and written when space returns)")]
    DiskFull { path: PathBuf },
    #[error("cannot access '{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database file '{path}': {context}: {source}")]
    Sqlite {
        path: PathBuf,
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("database file '{path}': stored chunk of series {series_id} at {bucket_ms} is damaged: {source}")]
    Corrupt {
        path: PathBuf,
        series_id: i64,
        bucket_ms: i64,
        source: DecodeError,
    },
    #[error("invalid retention: {0}")]
    Retention(#[from] RetentionError),
    #[error("the storage writer was already started for '{path}'")]
    WriterTaken { path: PathBuf },
    #[error("the storage writer stopped: {reason}")]
    WriterGone { reason: String },
}

impl StorageError {
    /// Classifies a SQLite error from an operation on `path` during `context`.
    pub(crate) fn sqlite(
        path: &std::path::Path,
        context: &'static str,
        e: rusqlite::Error,
    ) -> StorageError {
        use rusqlite::ErrorCode as C;
        let path = path.to_owned();
        match e.sqlite_error_code() {
            Some(C::NotADatabase) => StorageError::NotSqlite { path },
            Some(C::DiskFull) => StorageError::DiskFull { path },
            Some(C::ReadOnly) | Some(C::CannotOpen) | Some(C::PermissionDenied) => {
                StorageError::ReadOnly {
                    path,
                    reason: e.to_string(),
                }
            }
            Some(C::DatabaseBusy) | Some(C::DatabaseLocked) => StorageError::Busy {
                path,
                waited_ms: crate::db::BUSY_TIMEOUT.as_millis() as u64,
            },
            _ => StorageError::Sqlite {
                path,
                context,
                source: e,
            },
        }
    }

    /// True for errors that may go away by themselves (full disk, a lock held for a while):
    /// the writer keeps its batch and retries.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::DiskFull { .. } | StorageError::Busy { .. } | StorageError::Io { .. }
        ) || matches!(self, StorageError::Sqlite { source, .. }
                if matches!(source.sqlite_error_code(), Some(rusqlite::ErrorCode::SystemIoFailure)))
    }
}
