//! Checks of a valid configuration against this machine, for `validate`: what
//! `run` would otherwise only find out when a pool fails to start. Directories
//! a pool needs must exist, and every supervised pool is rendered exactly as
//! the supervisor renders it and given to `php-fpm -t` (when php-fpm is
//! installed). Every problem is collected; nothing stops at the first.
//!
//! Nothing is written into the runtime directory: the rendered files go to a
//! private temporary directory (mode 0700, files 0600 since pool files can
//! hold `env[...]` values) that is removed afterwards.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fpm_core::fpm_conf;

use super::{Config, Endpoint, Problem};
use crate::supervisor::binary;
use crate::supervisor::child::{self, FpmBinary};

/// What the checks found: problems (the config cannot run here) and notes
/// (what could not be checked, and why).
#[derive(Debug, Default)]
pub struct SystemReport {
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

/// Runs every check. `path_var` is `PATH`, for finding php-fpm as `run` does.
pub async fn check_system(cfg: &Config, path_var: Option<&str>) -> SystemReport {
    let mut report = SystemReport::default();
    check_dirs(cfg, &mut report.problems);
    let supervised = cfg.pools.iter().any(|p| p.spec.is_some());
    if !supervised {
        return report;
    }
    let path = match binary::find(cfg.phpfpm.binary.as_deref(), path_var) {
        Ok(p) => p,
        Err(e @ binary::BinaryError::NotExecutable(_)) => {
            report.problems.push(Problem::new(
                "phpfpm.binary",
                cfg.phpfpm.binary.as_ref().map(|p| p.display().to_string()),
                &e.to_string(),
                "install php-fpm there, or set phpfpm.binary to auto",
            ));
            return report;
        }
        Err(e) => {
            report
                .notes
                .push(format!("pools were not checked with php-fpm -t: {e}"));
            return report;
        }
    };
    let fpm = FpmBinary {
        path,
        as_root: nix::unistd::geteuid().is_root(),
    };
    if let Err(e) = fpm.check_version().await {
        report.problems.push(Problem::new(
            "phpfpm.binary",
            Some(fpm.path.display().to_string()),
            &e,
            "set phpfpm.binary to a php-fpm 8.0 or newer binary",
        ));
        return report;
    }
    match TempDir::create() {
        Ok(tmp) => {
            for (i, pool) in cfg.pools.iter().enumerate() {
                let Some(spec) = &pool.spec else { continue };
                if let Err(why) = test_pool(cfg, &fpm, &tmp.0, spec).await {
                    report.problems.push(Problem::new(
                        &format!("pools[{i}] ({})", pool.name),
                        None,
                        &why,
                        "fix or remove the setting php-fpm names (extra_settings, php_values, php_admin_values, ...)",
                    ));
                }
            }
        }
        Err(e) => report.notes.push(format!(
            "pools were not checked with php-fpm -t: cannot create a temporary directory: {e}"
        )),
    }
    report
}

/// Directories the pools need and the manager does not create.
fn check_dirs(cfg: &Config, problems: &mut Vec<Problem>) {
    let runtime = &cfg.phpfpm.runtime_dir;
    if runtime.exists() && !runtime.is_dir() {
        problems.push(Problem::new(
            "phpfpm.runtime_dir",
            Some(runtime.display().to_string()),
            "exists and is not a directory",
            "point it at a directory (it is created if missing)",
        ));
    }
    for (i, pool) in cfg.pools.iter().enumerate() {
        let Some(spec) = &pool.spec else { continue };
        for (field, ep) in [
            ("fastcgi_endpoint", &pool.endpoint),
            ("status_endpoint", &pool.status_endpoint),
        ] {
            let Endpoint::Unix(path) = ep else { continue };
            // The manager creates its own sockets directory.
            if path.starts_with(runtime) {
                continue;
            }
            if let Some(dir) = path.parent() {
                if !dir.is_dir() {
                    problems.push(Problem::new(
                        &format!("pools[{i}].{field}"),
                        Some(format!("unix:{}", path.display())),
                        &format!("the directory {} does not exist", dir.display()),
                        "create it (the manager binds the socket there), or choose another path",
                    ));
                }
            }
        }
        if let Some(chdir) = &spec.chdir {
            if !chdir.is_dir() {
                problems.push(Problem::new(
                    &format!("pools[{i}].chdir"),
                    Some(chdir.display().to_string()),
                    "is not an existing directory",
                    "create it, or point chdir at the application's directory",
                ));
            }
        }
    }
}

/// Renders the pool as the supervisor would and runs `php-fpm -t` on it.
async fn test_pool(
    cfg: &Config,
    fpm: &FpmBinary,
    dir: &Path,
    spec: &fpm_conf::PoolSpec,
) -> Result<(), String> {
    let mut spec = spec.clone();
    if fpm.as_root {
        child::default_account(&mut spec);
    }
    // A missing chdir is reported by `check_dirs` already; php-fpm would
    // stop at it and say nothing about the pool's other settings.
    if spec.chdir.as_ref().is_some_and(|d| !d.is_dir()) {
        spec.chdir = None;
    }
    let pool_text = fpm_conf::render_pool(&spec).map_err(|e| e.to_string())?;
    let name = spec.name.as_str();
    let global = dir.join(format!("{name}.global.conf"));
    let pool = dir.join(format!("{name}.pool.conf"));
    let master = dir.join(format!("{name}.master.conf"));
    let pid = dir.join(format!("{name}.pid"));
    let lossy = |p: &PathBuf| p.to_string_lossy().into_owned();
    write_private(&global, &fpm_conf::render_global(&cfg.phpfpm.global))?;
    write_private(&pool, &pool_text)?;
    write_private(
        &master,
        &fpm_conf::render_master(&lossy(&global), &lossy(&pool), &lossy(&pid)),
    )?;
    fpm.test_config(&master, dir).await
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A private temporary directory, removed on drop. (A dozen lines here
/// rather than a dependency on `tempfile` for the binary.)
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> std::io::Result<TempDir> {
        let mut buf = [0u8; 8];
        getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
        let dir = std::env::temp_dir().join(format!(
            "phpfpm-manager-validate-{}-{}",
            std::process::id(),
            u64::from_le_bytes(buf)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
