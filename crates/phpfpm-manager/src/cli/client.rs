//! The CLI's HTTP client for a running manager's API: where the manager is
//! (a flag, `PHPFPM_MANAGER_URL`, or the config's `server.bind_address`),
//! the API key (`PHPFPM_MANAGER_KEY`, sent as `Authorization: Bearer`, never
//! printed), and the mapping of answers to exit codes: 0 done, 64 refused
//! as bad input (HTTP 400 or 404), 1 anything else.

use std::path::PathBuf;
use std::time::Duration;

use crate::config;

/// Environment variable holding the API key.
pub const KEY_ENV: &str = "PHPFPM_MANAGER_KEY";

/// What went wrong, with the exit code it maps to.
#[derive(Debug)]
pub enum ClientError {
    /// The manager refused the request as invalid (HTTP 400 or 404), or the
    /// config naming the manager is invalid.
    Refused(String),
    /// No manager answered, or it failed (HTTP 5xx, 401, 403, 409, 422).
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

/// Where the running manager is, for the commands that talk to it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ManagerArgs {
    /// The manager's API: `host:port` or `http://host:port` (default: the
    /// config's server.bind_address).
    #[arg(long, env = "PHPFPM_MANAGER_URL")]
    pub url: Option<String>,
    /// YAML configuration file (to find the address).
    #[arg(long, short, env = "PHPFPM_MANAGER_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ManagerArgs {
    /// A client for the manager these arguments name, with the key from
    /// the environment.
    pub fn client(&self) -> Result<Client, ClientError> {
        let base = match &self.url {
            Some(u) => u.clone(),
            None => config::load_from_system(self.config.as_deref(), None)
                .map_err(|e| ClientError::Refused(e.to_string().trim_end().to_owned()))?
                .server
                .bind_address
                .to_string(),
        };
        let key = std::env::var(KEY_ENV).ok().filter(|k| !k.is_empty());
        Ok(Client::new(&base, key))
    }
}

/// One manager's API.
pub struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    // The key is a secret: never shown, not even in a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Client {
    /// `address` is `host:port` or a URL (`http://host:port`).
    pub fn new(address: &str, key: Option<String>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A hand-over waits for the new master to be ready (up to 15 s).
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client {
            base: base_url(address),
            key,
            agent,
        }
    }

    /// The API's base, as in error messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET {base}{path}`: the JSON answer of a 2xx.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        self.answer(req.call())
    }

    /// `POST {base}{path}` with a JSON body: the JSON answer of a 2xx.
    pub fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        self.answer(req.send_json(body))
    }

    fn answer(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut response = sent.map_err(|e| {
            ClientError::Failed(format!(
                "cannot reach the manager at {}: {e} (is it running? --url, PHPFPM_MANAGER_URL or the config's server.bind_address)",
                self.base
            ))
        })?;
        let status = response.status().as_u16();
        let answer: serde_json::Value = response
            .body_mut()
            .read_json()
            .map_err(|e| ClientError::Failed(format!("the manager's answer is not JSON: {e}")))?;
        classify(status, answer)
    }
}

/// A 2xx answer, or the error its status and body say. Pure.
pub fn classify(status: u16, answer: serde_json::Value) -> Result<serde_json::Value, ClientError> {
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

/// `host:port` → `http://host:port`; a URL is kept, without a final `/`.
pub fn base_url(address: &str) -> String {
    let a = address.trim().trim_end_matches('/');
    if a.contains("://") {
        a.to_owned()
    } else {
        format!("http://{a}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_base_urls() {
        assert_eq!(base_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(base_url("[::1]:9"), "http://[::1]:9");
    }

    #[test]
    fn answers_map_to_exit_codes() {
        let ok = classify(202, serde_json::json!({"pool": "www"}));
        assert!(matches!(ok, Ok(v) if v["pool"] == "www"));
        let err =
            serde_json::json!({"error": {"code": "not_found", "message": "no pool named \"x\""}});
        let e = classify(404, err.clone())
            .err()
            .map(|e| (e.exit_code(), e.message().to_owned()));
        assert_eq!(
            e,
            Some((
                64,
                "the manager refused (404): no pool named \"x\"".to_owned()
            ))
        );
        for status in [409, 422, 503, 401] {
            let e = classify(status, err.clone()).err().map(|e| e.exit_code());
            assert_eq!(e, Some(1), "{status}");
        }
    }

    #[test]
    fn the_key_never_shows_in_a_debug_print() {
        let c = Client::new("127.0.0.1:1", Some("s3cret-key".to_owned()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }
}
