//! Opening the database: new files, reopening, and every kind of file we must refuse
//! (not SQLite, another application's, a newer schema, read-only, in use) without
//! touching it.
// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
// Helpers outside #[test] functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;

use fpm_storage::{Storage, StorageConfig, StorageError, SCHEMA_VERSION};
use support::TempDir;

fn cfg(path: &std::path::Path) -> StorageConfig {
    StorageConfig {
        path: Some(path.to_owned()),
        ..StorageConfig::default()
    }
}

#[test]
fn creates_missing_directories_and_reopens_with_wal() {
    let dir = TempDir::new("open");
    let path = dir.join("var/phpfpm-manager/data.db");
    drop(Storage::open(&cfg(&path)).unwrap());
    let s = Storage::open(&cfg(&path)).unwrap();
    assert!(s.is_file_backed());
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let vacuum: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(vacuum, 2, "incremental auto-vacuum");
    assert_eq!(s.reader().unwrap().integrity_check().unwrap(), "ok");
}

#[test]
fn refuses_a_file_that_is_not_sqlite_and_leaves_it_alone() {
    let dir = TempDir::new("notdb");
    let path = dir.join("data.db");
    let content = b"this is my precious config, not a database\n".repeat(20);
    std::fs::write(&path, &content).unwrap();
    let e = Storage::open(&cfg(&path)).unwrap_err();
    assert!(matches!(e, StorageError::NotSqlite { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("storage.database_path"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), content);
    // A short non-SQLite file too.
    std::fs::write(&path, b"x").unwrap();
    assert!(matches!(
        Storage::open(&cfg(&path)).unwrap_err(),
        StorageError::NotSqlite { .. }
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}

#[test]
fn refuses_a_newer_schema_unchanged() {
    let dir = TempDir::new("newer");
    let path = dir.join("data.db");
    drop(Storage::open(&cfg(&path)).unwrap());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 7))
            .unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = Storage::open(&cfg(&path)).unwrap_err();
    match &e {
        StorageError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!(*found, SCHEMA_VERSION + 7);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(e.to_string().contains("upgrade phpfpm-manager"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn refuses_another_applications_database() {
    let dir = TempDir::new("foreign");
    let path = dir.join("data.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, 'x');")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = Storage::open(&cfg(&path)).unwrap_err();
    assert!(matches!(e, StorageError::ForeignDatabase { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn refuses_a_read_only_file() {
    let dir = TempDir::new("ro");
    let path = dir.join("data.db");
    drop(Storage::open(&cfg(&path)).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = Storage::open(&cfg(&path)).unwrap_err();
    assert!(matches!(e, StorageError::ReadOnly { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot be written"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Storage::open(&cfg(&path)).unwrap();
}

/// A read-only filesystem, which even root cannot write: the real case of a volume
/// mounted read-only.
#[test]
fn refuses_a_file_on_a_read_only_filesystem() {
    let dir = TempDir::new("rofs");
    let mnt = support::Mount::tmpfs(&dir.join("mnt"), "4m");
    let path = dir.join("mnt/data.db");
    drop(Storage::open(&cfg(&path)).unwrap());
    mnt.remount_read_only();
    let e = Storage::open(&cfg(&path)).unwrap_err();
    assert!(matches!(e, StorageError::ReadOnly { .. }), "{e:?}");
}

#[test]
fn refuses_a_file_in_use_by_another_opener() {
    let dir = TempDir::new("locked");
    let path = dir.join("data.db");
    let first = Storage::open(&cfg(&path)).unwrap();
    let e = Storage::open(&cfg(&path)).unwrap_err();
    assert!(matches!(e, StorageError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(first);
    Storage::open(&cfg(&path)).unwrap();
}

#[test]
fn refuses_a_file_locked_by_another_process() {
    let dir = TempDir::new("locked-proc");
    let path = dir.join("data.db");
    let mut child = support::stress::spawn("stress_child", &path, "holder", 20);
    let e = Storage::open(&cfg(&path)).unwrap_err();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(e, StorageError::Locked { .. }), "{e:?}");
    // The lock dies with the process.
    Storage::open(&cfg(&path)).unwrap();
}

#[test]
fn second_writer_is_refused() {
    let s = Storage::open(&StorageConfig::default()).unwrap();
    let _w = s.writer(Default::default()).unwrap();
    assert!(matches!(
        s.writer(Default::default()),
        Err(StorageError::WriterTaken { .. })
    ));
}

#[test]
fn invalid_retention_is_refused_before_touching_anything() {
    let dir = TempDir::new("ret");
    let path = dir.join("data.db");
    let mut c = cfg(&path);
    c.retention.minute = std::time::Duration::from_secs(3600);
    let e = Storage::open(&c).unwrap_err();
    assert!(e.to_string().contains("storage.retention.minute"), "{e}");
    assert!(!path.exists());
}

/// The writer holding the database in a child process, for the test above;
/// not a check by itself.
#[test]
#[ignore = "the child process of refuses_a_file_locked_by_another_process"]
fn stress_child() {
    support::stress::child_main();
}

fn mode_of(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// History is private to the manager's account: a new database, its WAL and
/// shared-memory files are 0600, and an existing world-readable file loses the "other"
/// bits (group bits an operator chose are kept).
#[test]
fn database_files_are_not_world_readable() {
    let dir = TempDir::new("modes");
    let path = dir.join("data.db");
    let s = Storage::open(&cfg(&path)).unwrap();
    let mut w = s.writer(fpm_storage::WriterOptions::default()).unwrap();
    w.ingest(
        support::T0,
        support::T0,
        vec![support::gauge("m", "a", 1.0)],
    );
    w.flush().unwrap();
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let p = dir.join(&format!("data.db{suffix}"));
        assert_eq!(mode_of(&p), 0o600, "{}", p.display());
    }
    drop(w);
    drop(s);
    let old = dir.join("old.db");
    drop(Storage::open(&cfg(&old)).unwrap());
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Storage::open(&cfg(&old)).unwrap());
    assert_eq!(mode_of(&old), 0o640);
}
