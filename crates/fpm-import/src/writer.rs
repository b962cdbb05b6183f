//! Writes an [`Imported`] result into an output directory, one file at a time
//! and atomically: temp file (created exclusively, never through a symlink),
//! fsync, rename, fsync of the directory. Nothing is written until every
//! target has been checked, so a refused import leaves the directory as it
//! was; a failure half-way (disk full) leaves whole files only, never a
//! half-written one.
//!
//! Layout:
//!
//! ```text
//! <out>/phpfpm-manager.yaml   the manager config (0600 if it holds env values, else 0644)
//! <out>/pools.d/<pool>.conf   the pool files the manager will render (0600 if env, else 0644)
//! <out>/env/<pool>.yaml       env values kept out of the config (0600, directory 0700)
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use fpm_core::PoolName;
use thiserror::Error;

use crate::mapping::Imported;

/// The config file's name inside the output directory.
pub const CONFIG_FILE: &str = "phpfpm-manager.yaml";

/// What [`write_import`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub config: PathBuf,
    pub pool_files: Vec<PathBuf>,
    pub env_files: Vec<PathBuf>,
}

/// Why the output could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("{path}: {what}")]
    BadPath { path: String, what: String },
    #[error("{0} already exists; pass overwrite (--force) to replace it")]
    Exists(String),
    #[error("{0} is a symbolic link; refusing to write through it")]
    Symlink(String),
    #[error("{0} exists and is not a regular file")]
    NotAFile(String),
    #[error("{0} exists and is not a directory")]
    NotADir(String),
    #[error("pool name {0:?} cannot be a file name")]
    BadPoolName(String),
    #[error("cannot {op} {path}: {error}")]
    Io {
        op: &'static str,
        path: String,
        error: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |error| WriteError::Io {
        op,
        path: path.display().to_string(),
        error,
    }
}

/// Writes `imported` under `out_dir` (created if missing). Existing files are
/// refused unless `overwrite`; symbolic links inside `out_dir` are never
/// followed or replaced.
pub fn write_import(
    imported: &Imported,
    out_dir: &Path,
    overwrite: bool,
) -> Result<Written, WriteError> {
    if out_dir.as_os_str().as_encoded_bytes().contains(&0)
        || out_dir.components().any(|c| c == Component::ParentDir)
    {
        return Err(WriteError::BadPath {
            path: out_dir.display().to_string(),
            what: "output directory contains '..' or a NUL byte".into(),
        });
    }
    // Plan every file first.
    let mut plan: Vec<(PathBuf, &str, u32)> = Vec::new();
    let config = out_dir.join(CONFIG_FILE);
    let config_mode = if imported.config_has_secrets {
        0o600
    } else {
        0o644
    };
    for (name, _) in imported.pool_files.iter().chain(&imported.env_files) {
        PoolName::new(name).map_err(|_| WriteError::BadPoolName(name.clone()))?;
    }
    let pools_dir = out_dir.join("pools.d");
    let env_dir = out_dir.join("env");
    for (name, text) in &imported.pool_files {
        let secret = text.contains("\nenv[");
        plan.push((
            pools_dir.join(format!("{name}.conf")),
            text,
            if secret { 0o600 } else { 0o644 },
        ));
    }
    for (name, text) in &imported.env_files {
        plan.push((env_dir.join(format!("{name}.yaml")), text, 0o600));
    }
    plan.push((config.clone(), &imported.config_yaml, config_mode));

    // Directories: created if missing, never symlinks.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(out_dir)
        .map_err(io("create directory", out_dir))?;
    ensure_dir(&pools_dir, 0o755)?;
    if !imported.env_files.is_empty() {
        ensure_dir(&env_dir, 0o700)?;
    }
    // Targets: refuse before writing anything.
    for (path, _, _) in &plan {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(WriteError::Symlink(path.display().to_string()))
            }
            Ok(m) if !m.is_file() => return Err(WriteError::NotAFile(path.display().to_string())),
            Ok(_) if !overwrite => return Err(WriteError::Exists(path.display().to_string())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect", path)(e)),
        }
    }
    let mut written = Written {
        config: config.clone(),
        pool_files: Vec::new(),
        env_files: Vec::new(),
    };
    for (path, text, mode) in &plan {
        write_atomic(path, text.as_bytes(), *mode)?;
        if path.starts_with(&pools_dir) {
            written.pool_files.push(path.clone());
        } else if path.starts_with(&env_dir) {
            written.env_files.push(path.clone());
        }
    }
    Ok(written)
}

fn ensure_dir(dir: &Path, mode: u32) -> Result<(), WriteError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(WriteError::Symlink(dir.display().to_string())),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(WriteError::NotADir(dir.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(mode)
            .create(dir)
            .map_err(io("create directory", dir)),
        Err(e) => Err(io("inspect", dir)(e)),
    }
}

/// temp file (O_EXCL: never opens an existing file or a symlink), fsync,
/// rename over the target (replaces a name, never writes through a link),
/// fsync of the directory so the rename survives a crash.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        // The umask may have removed bits; set the mode exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("set mode of", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename into place", path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
