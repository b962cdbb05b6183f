//! What observe mode needs from a system php-fpm setup it does not run:
//! each pool's addresses and pages, read with the same parser as the import.
//! Pure; env values are not part of the result.

use crate::model::{FpmConfig, Origin};

/// One pool of a running system php-fpm, as the manager would watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPool {
    /// The section name as php-fpm has it (may not be a valid manager pool
    /// name; see [`crate::ImportError::PoolName`]).
    pub name: String,
    pub origin: Origin,
    /// `listen`: where FastCGI requests go (None: php-fpm would refuse the pool).
    pub listen: Option<String>,
    /// `pm.status_listen`, if the pool has a separate status socket.
    pub status_listen: Option<String>,
    /// `pm.status_path`; None means the pool has no status page.
    pub status_path: Option<String>,
    /// `ping.path`; None means the pool has no ping page.
    pub ping_path: Option<String>,
    /// What the ping page answers (php-fpm's default is `pong`).
    pub ping_response: String,
}

/// The pools php-fpm would run from `model`, in definition order.
pub fn observed_pools(model: &FpmConfig) -> Vec<ObservedPool> {
    model
        .pools
        .iter()
        .map(|p| {
            let get = |k: &str| p.get(k).map(|d| d.value.clone());
            let status_listen = get("pm.status_listen");
            // php-fpm 8.2 serves the status page at `/` when only
            // pm.status_listen is set (seen in `php-fpm -tt`).
            let status_path =
                get("pm.status_path").or_else(|| status_listen.as_ref().map(|_| "/".to_owned()));
            ObservedPool {
                name: p.name.clone(),
                origin: p.origin.clone(),
                listen: get("listen"),
                status_listen,
                status_path,
                ping_path: get("ping.path"),
                ping_response: get("ping.response").unwrap_or_else(|| "pong".to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::reader::{load_config, MemorySource, ReadOptions};

    #[test]
    fn pools_with_their_addresses() {
        let src = MemorySource::new([(
            "/etc/fpm.conf",
            "[www]\nlisten = /run/$pool.sock\npm.status_path = /st\nenv[K] = secret\n[b]\nlisten = 127.0.0.1:9001\npm.status_listen = /run/b.st\nping.path = /p\nping.response = ok\n",
        )]);
        let m = load_config(Path::new("/etc/fpm.conf"), &ReadOptions::default(), &src).unwrap();
        let pools = observed_pools(&m);
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].listen.as_deref(), Some("/run/www.sock"));
        assert_eq!(pools[0].status_path.as_deref(), Some("/st"));
        assert_eq!(pools[0].ping_path, None);
        assert_eq!(pools[1].status_listen.as_deref(), Some("/run/b.st"));
        assert_eq!(pools[1].status_path.as_deref(), Some("/"));
        assert_eq!(pools[1].ping_response, "ok");
        assert!(!format!("{pools:?}").contains("secret"));
    }
}
