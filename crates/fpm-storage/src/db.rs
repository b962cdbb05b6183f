//! Opening the database file: refusing files that are not ours (not SQLite, another
//! application's, a newer schema, read-only, in use), the process lock, pragmas, and the
//! versioned migrations. Nothing here ever truncates, overwrites or deletes a file.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::StorageError;

/// Marks a database as phpfpm-manager's (`PRAGMA application_id`, "FPMM").
pub(crate) const APPLICATION_ID: i64 = 0x4650_4d4d;

/// How long a connection waits for a lock held by another connection before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; migration `i` (0-based) brings the schema to version `i + 1`.
/// Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[
    // Version 1: series identified once; raw samples first land in `raw_recent` (cheap
    // appends, flushed every second) and are compacted per series and minute into
    // `raw_chunk` blobs (see codec.rs) together with the 1-minute rollup; hourly rollups
    // are recomputed from minute rows; events with JSON details.
    "CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        pool TEXT,
        kind INTEGER NOT NULL,
        UNIQUE (name, labels)
    );
    CREATE INDEX series_pool ON series (pool, name);
    CREATE TABLE raw_recent (
        series_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        value REAL NOT NULL
    );
    CREATE TABLE raw_chunk (
        series_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (series_id, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_1m (
        series_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sum REAL NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        first REAL NOT NULL,
        last REAL NOT NULL,
        increase REAL,
        PRIMARY KEY (series_id, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_1h (
        series_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sum REAL NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        first REAL NOT NULL,
        last REAL NOT NULL,
        increase REAL,
        PRIMARY KEY (series_id, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        pool TEXT,
        correlation_id TEXT,
        actor TEXT,
        message TEXT NOT NULL,
        details TEXT
    );
    CREATE INDEX events_ts ON events (ts);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// An exclusive `flock` on `<database>.lock`, held while the storage is open, so a second
/// manager on the same file fails at start instead of interleaving writes. A separate file
/// because closing any descriptor of the database itself would drop SQLite's own POSIX
/// locks; the kernel releases it when the process dies, so a stale file is harmless.
#[derive(Debug)]
pub(crate) struct ProcessLock {
    _file: File,
}

pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

pub(crate) fn take_process_lock(path: &Path) -> Result<ProcessLock, StorageError> {
    let lp = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lp)
        .map_err(|e| match e.raw_os_error() {
            Some(c)
                if c == rustix::io::Errno::ROFS.raw_os_error()
                    || c == rustix::io::Errno::ACCESS.raw_os_error() =>
            {
                StorageError::ReadOnly {
                    path: path.to_owned(),
                    reason: format!("cannot create lock file '{}': {e}", lp.display()),
                }
            }
            _ => StorageError::Io {
                path: lp.clone(),
                source: e,
            },
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(ProcessLock { _file: file }),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StorageError::Locked {
            path: path.to_owned(),
            lock_path: lp,
        }),
        Err(e) => Err(StorageError::Io {
            path: lp,
            source: e.into(),
        }),
    }
}

/// Looks at an existing file before SQLite does: SQLite would happily turn an empty
/// path into a database, and we want to name the problem before touching anything.
pub(crate) fn precheck_file(path: &Path) -> Result<(), StorageError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StorageError::Io {
                    path: dir.to_owned(),
                    source: e,
                })?;
            }
            return Ok(());
        }
        Err(e) => {
            return Err(StorageError::Io {
                path: path.to_owned(),
                source: e,
            })
        }
    };
    if !meta.is_file() {
        return Err(StorageError::NotSqlite {
            path: path.to_owned(),
        });
    }
    if meta.permissions().mode() & 0o222 == 0 {
        return Err(StorageError::ReadOnly {
            path: path.to_owned(),
            reason: format!(
                "file mode {:o} has no write permission",
                meta.permissions().mode() & 0o7777
            ),
        });
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut header = [0u8; 16];
    let mut f = File::open(path).map_err(|e| StorageError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    if meta.len() < 16 || f.read_exact(&mut header).is_err() || &header != b"SQLite format 3\0" {
        return Err(StorageError::NotSqlite {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Pragmas every writing connection gets. In-memory databases have no WAL.
fn configure(conn: &Connection, path: &Path, file_backed: bool) -> Result<(), StorageError> {
    let e = |c| move |err| StorageError::sqlite(path, c, err);
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(e("setting busy timeout"))?;
    if file_backed {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(e("enabling WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::ReadOnly {
                path: path.to_owned(),
                reason: format!("journal mode stayed '{mode}' instead of 'wal'"),
            });
        }
        // WAL + NORMAL: a commit survives a killed process; only a power loss may lose the
        // last transactions, never corrupt the file.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA journal_size_limit = 67108864;")
            .map_err(e("setting pragmas"))?;
    }
    conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16000;")
        .map_err(e("setting pragmas"))?;
    Ok(())
}

/// Refuses foreign databases and newer schemas using reads only, so a file we refuse is
/// not even given a journal mode. Returns the schema version and the number of tables.
fn inspect(conn: &Connection, path: &Path) -> Result<(i64, i64), StorageError> {
    let e = |c| move |err| StorageError::sqlite(path, c, err);
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(e("reading application id"))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(e("reading schema"))?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(StorageError::ForeignDatabase {
            path: path.to_owned(),
            application_id: app_id,
        });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(e("reading schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok((version, tables))
}

/// On a new database, chooses incremental auto-vacuum. It must come before anything
/// initialises the file (even switching to WAL does), or it would need a full VACUUM.
fn choose_vacuum_mode(conn: &Connection, path: &Path, tables: i64) -> Result<(), StorageError> {
    if tables == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(|e| StorageError::sqlite(path, "enabling incremental vacuum", e))?;
    }
    Ok(())
}

/// Runs the migrations after `version`, each in its own transaction.
fn migrate(conn: &mut Connection, path: &Path, version: i64) -> Result<(), StorageError> {
    let e = |c| move |err| StorageError::sqlite(path, c, err);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction().map_err(e("starting migration"))?;
        tx.execute_batch(sql).map_err(e("running migration"))?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {};",
            i + 1
        ))
        .map_err(e("recording schema version"))?;
        tx.commit().map_err(e("committing migration"))?;
        tracing::info!(path = %path.display(), version = i + 1, "Migrated the storage schema.");
    }
    Ok(())
}

/// Opens the writer's connection to a file and migrates it.
pub(crate) fn open_file_writer(path: &Path) -> Result<Connection, StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // A new database starts as an empty file of mode 0600 (SQLite would create it
    // 0644): history holds pool names, request figures and event messages that other
    // local users have no business reading. SQLite gives the WAL and shared-memory
    // files the database file's mode. If this fails, SQLite's own open names the
    // problem.
    let _ = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StorageError::sqlite(path, "opening", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StorageError::sqlite(path, "setting busy timeout", e))?;
    let (version, tables) = inspect(&conn, path)?;
    choose_vacuum_mode(&conn, path, tables)?;
    configure(&conn, path, true)?;
    migrate(&mut conn, path, version)?;
    restrict_modes(path);
    Ok(conn)
}

/// Takes the "other" permission bits off the database and its WAL and shared-memory
/// files (a file from an older version, or one created 0644 by hand); group bits an
/// operator set are kept.
fn restrict_modes(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            if let Err(e) =
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !0o007))
            {
                tracing::warn!(path = %p.display(), "Cannot make the history file private: {e}.");
            }
        }
    }
}

/// A read-only connection for queries; in WAL mode it never blocks the writer.
pub(crate) fn open_file_reader(path: &Path) -> Result<Connection, StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StorageError::sqlite(path, "opening for reading", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StorageError::sqlite(path, "setting busy timeout", e))?;
    Ok(conn)
}

/// The single shared connection of an in-memory database.
pub(crate) fn open_memory() -> Result<Connection, StorageError> {
    let path = Path::new(":memory:");
    let mut conn =
        Connection::open_in_memory().map_err(|e| StorageError::sqlite(path, "opening", e))?;
    let (version, tables) = inspect(&conn, path)?;
    choose_vacuum_mode(&conn, path, tables)?;
    configure(&conn, path, false)?;
    migrate(&mut conn, path, version)?;
    Ok(conn)
}
