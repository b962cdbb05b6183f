//! The runtime directory's layout and crash-safe file writes.
//!
//! Every generated file is written to a temporary name in the same directory,
//! fsynced, then renamed over the target, and the directory is fsynced: a
//! crash or a full disk leaves either the old file or the new one, never half
//! of one, and php-fpm is never pointed at a half-written config.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fpm_core::PoolName;

/// Paths inside the manager's runtime directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
        }
    }

    pub fn global_conf(&self) -> PathBuf {
        self.root.join("php-fpm.conf")
    }

    pub fn pool_conf(&self, pool: &PoolName) -> PathBuf {
        self.root.join("pools.d").join(format!("{pool}.conf"))
    }

    pub fn master_conf(&self, pool: &PoolName) -> PathBuf {
        self.root.join("masters").join(format!("{pool}.conf"))
    }

    /// php-fpm's own pid file for one generation of a pool's master: two
    /// masters run side by side during a hand-over.
    pub fn pid_file(&self, pool: &PoolName, generation: u64) -> PathBuf {
        self.root
            .join("pids")
            .join(format!("{pool}.{generation}.pid"))
    }

    /// The manager's record of the master running a pool (pid, start time,
    /// generation), read by the next manager to adopt it.
    pub fn master_record(&self, pool: &PoolName) -> PathBuf {
        self.root.join("pids").join(format!("{pool}.master"))
    }

    /// The second master's files (additive scale-up): its pool file, its
    /// master file, its pid file per generation, the record the next
    /// manager adopts it by, and its own status socket (each master has its
    /// own scoreboard, so each needs its own status listener). Pool names
    /// hold no dot, so these never meet another pool's files.
    pub fn extra_pool_conf(&self, pool: &PoolName) -> PathBuf {
        self.root.join("pools.d").join(format!("{pool}.extra.conf"))
    }

    pub fn extra_master_conf(&self, pool: &PoolName) -> PathBuf {
        self.root.join("masters").join(format!("{pool}.extra.conf"))
    }

    pub fn extra_pid_file(&self, pool: &PoolName, generation: u64) -> PathBuf {
        self.root
            .join("pids")
            .join(format!("{pool}.extra.{generation}.pid"))
    }

    pub fn extra_record(&self, pool: &PoolName) -> PathBuf {
        self.root.join("pids").join(format!("{pool}.extra"))
    }

    pub fn extra_status_socket(&self, pool: &PoolName) -> PathBuf {
        self.root
            .join("sockets")
            .join(format!("{pool}.extra-status.sock"))
    }

    /// The running manager's pid.
    /// `opcache.file_cache` of a pool: compiled scripts a new master of the
    /// pool starts from, so a hand-over does not start cold (fact 18).
    pub fn opcache_file_cache(&self, pool: &PoolName) -> PathBuf {
        self.root.join("opcache-cache").join(pool.as_str())
    }

    /// The autoscaler's remembered state of a pool (applied size, learned
    /// figures, operator override), kept across manager restarts.
    pub fn scale_state(&self, pool: &PoolName) -> PathBuf {
        self.root.join("scale").join(format!("{pool}.json"))
    }

    pub fn manager_pid(&self) -> PathBuf {
        self.root.join("manager.pid")
    }

    pub fn www(&self) -> PathBuf {
        self.root.join("www")
    }

    /// Creates the directories. They are world-traversable (0755) because the
    /// pool user must reach its sockets and scripts; nothing secret lives in
    /// them except pool files, which are written 0640.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        for sub in [
            "", "pools.d", "masters", "sockets", "pids", "logs", "www", "opcache",
        ] {
            let dir = self.root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| annotate(&dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| annotate(&dir, e))?;
        }
        Ok(())
    }
}

fn annotate(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes `contents` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(|e| annotate(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.conf");
        write_atomic(&p, b"one", 0o640).unwrap();
        write_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("a.conf");
        assert!(write_atomic(&p, b"x", 0o640).is_err());
        let err = write_atomic(&p, b"x", 0o640).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
