//! Shared helpers of the integration tests: temporary directories and sample builders.
// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fpm_storage::Sample;

pub mod stress;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "fpm-storage-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn labels(pool: &str) -> Vec<(String, String)> {
    vec![("pool".to_owned(), pool.to_owned())]
}

pub fn gauge(name: &'static str, pool: &str, v: f64) -> Sample {
    Sample::gauge(name, labels(pool), v)
}

pub fn counter(name: &'static str, pool: &str, v: f64) -> Sample {
    Sample::counter(name, labels(pool), v)
}

/// 2026-01-01T00:00:00Z in ms; tests run at simulated times around it.
pub const T0: i64 = 1_767_225_600_000;
pub const MIN: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;

/// A tmpfs mounted for one test; unmounted on drop, also when an assertion fails.
/// Needs root (the tests run as root here and in CI); failing to mount fails the test.
pub struct Mount(PathBuf);

impl Mount {
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount")
            .success();
        assert!(
            ok,
            "mounting a tmpfs at {} failed: this test needs root",
            at.display()
        );
        Mount(at.to_owned())
    }

    pub fn remount_read_only(&self) {
        let ok = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .expect("running mount")
            .success();
        assert!(ok, "remounting {} read-only failed", self.0.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
