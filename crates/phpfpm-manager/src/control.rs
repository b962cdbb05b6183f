//! The CLI's side of the operator controls: `phpfpm-manager scaling POOL
//! pin N` and friends send one request to the running manager's API and
//! print its answer. The manager validates everything; this side maps the
//! answer to an exit code (0 done, 64 refused as bad input, 1 anything
//! else) through the CLI's shared client (`cli::client`).

pub use crate::cli::client::ClientError;
use crate::cli::client::{Client, ManagerArgs};

/// Sends `body` to `POST {manager}/api/v1/pools/{pool}/scaling` and
/// returns the manager's JSON answer.
pub fn scaling(
    manager: &ManagerArgs,
    pool: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, ClientError> {
    // The pool name is checked like the config checks it, so it is safe in
    // a URL path.
    fpm_core::PoolName::new(pool)
        .map_err(|e| ClientError::Refused(format!("pool {pool:?}: {e}")))?;
    let client: Client = manager.client()?;
    client.post(&format!("/api/v1/pools/{pool}/scaling"), body)
}
