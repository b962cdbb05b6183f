//! Finding the php-fpm binary: the configured path, else `php-fpm` or the
//! newest `php-fpmX.Y` on `PATH` and in the sbin directories where
//! distributions install it (Debian's `/usr/sbin/php-fpm8.2`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The usual places, searched after `PATH`.
const EXTRA_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/local/sbin",
    "/sbin",
    "/usr/bin",
    "/usr/local/bin",
];

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("php-fpm binary {0} does not exist or is not executable")]
    NotExecutable(PathBuf),
    #[error("no php-fpm binary found on PATH or in {dirs}; install it (Debian/Ubuntu: apt-get install php8.2-fpm) or set phpfpm.binary")]
    NotFound { dirs: String },
}

/// Resolves the binary to run.
pub fn find(configured: Option<&Path>, path_var: Option<&str>) -> Result<PathBuf, BinaryError> {
    if let Some(p) = configured {
        return if is_executable(p) {
            Ok(p.to_owned())
        } else {
            Err(BinaryError::NotExecutable(p.to_owned()))
        };
    }
    let mut dirs: Vec<PathBuf> = path_var
        .unwrap_or("")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    let mut names: Vec<(Option<(u32, u32)>, PathBuf)> = Vec::new();
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(version) = candidate_version(name) else {
                continue;
            };
            let path = entry.path();
            if is_executable(&path) {
                names.push((version, path));
            }
        }
        // The first directory with a match wins, as PATH lookup does.
        if !names.is_empty() {
            break;
        }
    }
    // Plain `php-fpm` first (it is what the admin chose), then the newest.
    names.sort_by(|a, b| match (a.0, b.0) {
        (None, None) => a.1.cmp(&b.1),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(&x),
    });
    names
        .into_iter()
        .next()
        .map(|(_, p)| p)
        .ok_or_else(|| BinaryError::NotFound {
            dirs: EXTRA_DIRS.join(", "),
        })
}

/// `php-fpm` gives `Some(None)`, `php-fpm8.2` gives `Some(Some((8, 2)))`,
/// anything else `None`.
fn candidate_version(name: &str) -> Option<Option<(u32, u32)>> {
    let rest = name.strip_prefix("php-fpm")?;
    if rest.is_empty() {
        return Some(None);
    }
    let (major, minor) = rest.split_once('.')?;
    Some(Some((major.parse().ok()?, minor.parse().ok()?)))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        assert_eq!(candidate_version("php-fpm"), Some(None));
        assert_eq!(candidate_version("php-fpm8.2"), Some(Some((8, 2))));
        assert_eq!(candidate_version("php-fpm8.10"), Some(Some((8, 10))));
        assert_eq!(candidate_version("php-fpm-helper"), None);
        assert_eq!(candidate_version("php"), None);
    }

    #[test]
    fn newest_version_in_first_dir_wins() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["php-fpm7.4", "php-fpm8.2", "php-fpm8.10", "notes.txt"] {
            let p = dir.path().join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let got = find(None, Some(dir.path().to_str().unwrap())).unwrap();
        assert_eq!(got, dir.path().join("php-fpm8.10"));
    }

    #[test]
    fn configured_but_missing_is_an_error() {
        let err = find(Some(Path::new("/nonexistent/php-fpm")), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/php-fpm"));
    }
}
