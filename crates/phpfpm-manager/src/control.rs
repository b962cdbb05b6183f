//! The CLI's side of the operator controls: `phpfpm-manager scaling POOL
//! pin N` and friends send one request to the running manager's API and
//! print its answer. The manager validates everything; this side maps the
//! answer to an exit code (0 done, 64 refused as bad input, 1 anything else).

use std::time::Duration;

/// What went wrong, with the exit code it maps to.
#[derive(Debug)]
pub enum ClientError {
    /// The manager refused the request as invalid (HTTP 400 or 404).
    Refused(String),
    /// No manager answered, or it failed (HTTP 5xx, 409, 422).
    Failed(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused(_) => 64,
            ClientError::Failed(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ClientError::Refused(m) | ClientError::Failed(m) => m,
        }
    }
}

/// Sends `body` to `POST http://{address}/api/v1/pools/{pool}/scaling` and
/// returns the manager's JSON answer.
pub fn scaling(
    address: &str,
    pool: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, ClientError> {
    // The pool name is checked like the config checks it, so it is safe in
    // a URL path.
    fpm_core::PoolName::new(pool)
        .map_err(|e| ClientError::Refused(format!("pool {pool:?}: {e}")))?;
    let url = format!("http://{address}/api/v1/pools/{pool}/scaling");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A hand-over waits for the new master to be ready (up to 15 s).
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent.post(&url).send_json(body).map_err(|e| {
        ClientError::Failed(format!(
            "cannot reach the manager at {address}: {e} (is it running? --address or the config's server.bind_address)"
        ))
    })?;
    let status = response.status().as_u16();
    let answer: serde_json::Value = response
        .body_mut()
        .read_json()
        .map_err(|e| ClientError::Failed(format!("the manager's answer is not JSON: {e}")))?;
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned();
    let text = format!("the manager refused ({status}): {message}");
    Err(if status == 400 || status == 404 {
        ClientError::Refused(text)
    } else {
        ClientError::Failed(text)
    })
}
