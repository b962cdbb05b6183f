//! The CLI's HTTP client for a running manager's API: where the manager is
//! (a flag, `PHPFPM_MANAGER_URL`, or the config's `server.bind_address`),
//! the API key (`PHPFPM_MANAGER_KEY`, sent as `Authorization: Bearer`, never
//! printed), and the mapping of answers to exit codes: 0 done, 64 refused
//! as bad input (HTTP 400 or 404), 1 anything else.
//!
//! A manager serving TLS (`server.tls` in the config, or an `https://` URL)
//! is reached over https, trusting only the CA named by `--ca-file`,
//! `PHPFPM_MANAGER_CA_FILE` or the config's `server.tls.ca_path` (never the
//! system's roots: the manager's certificate is the operator's own), with
//! the client certificate of `--client-cert`/`--client-key` for mTLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// The manager's API: `host:port`, `http://host:port` or
    /// `https://host:port` (default: the config's server.bind_address,
    /// https when the config's server.tls is enabled).
    #[arg(long, env = "PHPFPM_MANAGER_URL")]
    pub url: Option<String>,
    /// YAML configuration file (to find the address).
    #[arg(long, short, env = "PHPFPM_MANAGER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// What the CLI needs to reach a manager serving TLS.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the manager's certificate, the only
    /// one trusted (default: the config's server.tls.ca_path). Implies https.
    #[arg(long, env = "PHPFPM_MANAGER_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a manager that asks for one (mTLS).
    #[arg(long, env = "PHPFPM_MANAGER_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "PHPFPM_MANAGER_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
}

impl ManagerArgs {
    /// A client for the manager these arguments name, with the key from
    /// the environment.
    pub fn client(&self) -> Result<Client, ClientError> {
        let target = match &self.url {
            Some(u) => Target {
                address: u.clone(),
                tls: None,
            },
            None => {
                let cfg = config::load_from_system(self.config.as_deref(), None)
                    .map_err(|e| ClientError::Refused(e.to_string().trim_end().to_owned()))?;
                Target {
                    address: cfg.server.bind_address.to_string(),
                    tls: cfg.server.tls.as_ref().map(|t| ServerTls {
                        ca_path: t.ca_path.clone(),
                        wants_client_cert: t.client_ca_path.is_some(),
                    }),
                }
            }
        };
        let key = std::env::var(KEY_ENV).ok().filter(|k| !k.is_empty());
        Client::connect(&target, &self.tls, key)
    }
}

/// The manager to reach: an address or URL, and what its config says about
/// its TLS when the address came from the config.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub address: String,
    pub tls: Option<ServerTls>,
}

/// The config's `server.tls`, as the CLI needs it.
#[derive(Debug, Clone, Default)]
pub struct ServerTls {
    pub ca_path: Option<PathBuf>,
    pub wants_client_cert: bool,
}

/// The files to use for https, once decided. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Whether to use https and with which files: https for an `https://` URL,
/// a config with TLS, or a CA or client certificate given (an `http://`
/// URL stays plain); the CA from the flag, else the config; a client
/// certificate only with both of its files. Pure.
pub fn tls_files(target: &Target, args: &TlsArgs) -> Result<Option<TlsFiles>, ClientError> {
    let url_https = target
        .address
        .trim()
        .to_ascii_lowercase()
        .starts_with("https://");
    let url_http = target
        .address
        .trim()
        .to_ascii_lowercase()
        .starts_with("http://");
    let client = match (&args.client_cert, &args.client_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(ClientError::Refused(
                "a client certificate needs both --client-cert and --client-key (or PHPFPM_MANAGER_CLIENT_CERT and PHPFPM_MANAGER_CLIENT_KEY)".to_owned(),
            ))
        }
    };
    // An explicit http:// URL is plain HTTP whatever else is set.
    let wanted = !url_http
        && (url_https || target.tls.is_some() || args.ca_file.is_some() || client.is_some());
    if !wanted {
        return Ok(None);
    }
    let from_config = target.tls.as_ref().and_then(|t| t.ca_path.clone());
    let Some(ca) = args.ca_file.clone().or(from_config) else {
        return Err(ClientError::Refused(
            "the manager serves TLS: give the CA certificate that signed its certificate with --ca-file, PHPFPM_MANAGER_CA_FILE or the config's server.tls.ca_path".to_owned(),
        ));
    };
    if client.is_none() && target.tls.as_ref().is_some_and(|t| t.wants_client_cert) {
        return Err(ClientError::Refused(
            "the manager asks for a client certificate (server.tls.client_ca_path): give --client-cert and --client-key (or PHPFPM_MANAGER_CLIENT_CERT and PHPFPM_MANAGER_CLIENT_KEY)".to_owned(),
        ));
    }
    Ok(Some(TlsFiles { ca, client }))
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<ureq::tls::PemItem<'static>>, ClientError> {
    let bytes = std::fs::read(path).map_err(|e| {
        ClientError::Refused(format!("cannot read the {what} {}: {e}", path.display()))
    })?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Refused(format!("the {what} {} is not PEM: {e}", path.display())))
}

/// The TLS configuration for `files`: their CA alone trusted.
fn tls_config(files: &TlsFiles) -> Result<ureq::tls::TlsConfig, ClientError> {
    use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig, TlsProvider};
    let roots: Vec<_> = read_pem("CA file", &files.ca)?
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if roots.is_empty() {
        return Err(ClientError::Refused(format!(
            "the CA file {} holds no certificate",
            files.ca.display()
        )));
    }
    let client = match &files.client {
        None => None,
        Some((cert, key)) => {
            let chain: Vec<_> = read_pem("client certificate", cert)?
                .into_iter()
                .filter_map(|i| match i {
                    PemItem::Certificate(c) => Some(c),
                    _ => None,
                })
                .collect();
            let key_item = read_pem("client key", key)?
                .into_iter()
                .find_map(|i| match i {
                    PemItem::PrivateKey(k) => Some(k),
                    _ => None,
                });
            let (false, Some(k)) = (chain.is_empty(), key_item) else {
                return Err(ClientError::Refused(format!(
                    "{} and {} must hold a certificate and its private key (PEM)",
                    cert.display(),
                    key.display()
                )));
            };
            Some(ClientCert::new_with_certs(&chain, k))
        }
    };
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&roots))
        .client_cert(client)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
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
    /// Plain HTTP: `address` is `host:port` or a URL (`http://host:port`).
    pub fn new(address: &str, key: Option<String>) -> Client {
        Client {
            base: base_url(address),
            key,
            agent: agent(None),
        }
    }

    /// A client for `target`, over https when it serves TLS (see
    /// [`tls_files`]).
    pub fn connect(
        target: &Target,
        args: &TlsArgs,
        key: Option<String>,
    ) -> Result<Client, ClientError> {
        let Some(files) = tls_files(target, args)? else {
            return Ok(Client::new(&target.address, key));
        };
        let config = tls_config(&files)?;
        Ok(Client {
            base: https_url(&target.address),
            key,
            agent: agent(Some(config)),
        })
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
            let hint = if self.base.starts_with("https://") {
                "is it running? is --ca-file the CA that signed its certificate? does it ask for a client certificate (--client-cert, --client-key)?"
            } else {
                "is it running? --url, PHPFPM_MANAGER_URL or the config's server.bind_address; if it serves TLS, https:// and --ca-file"
            };
            ClientError::Failed(format!(
                "cannot reach the manager at {}: {e} ({hint})",
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

fn agent(tls: Option<ureq::tls::TlsConfig>) -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A hand-over waits for the new master to be ready (up to 15 s).
        .timeout_global(Some(Duration::from_secs(30)));
    if let Some(t) = tls {
        b = b.tls_config(t);
    }
    b.build().into()
}

/// `host:port` or `https://host:port` → `https://host:port`. Pure.
pub fn https_url(address: &str) -> String {
    let a = address.trim().trim_end_matches('/');
    match a.split_once("://") {
        Some((_, rest)) => format!("https://{rest}"),
        None => format!("https://{a}"),
    }
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
    fn https_is_chosen_by_the_url_the_config_or_a_ca_and_needs_a_ca() {
        let args = |ca: Option<&str>| TlsArgs {
            ca_file: ca.map(PathBuf::from),
            ..TlsArgs::default()
        };
        let at = |a: &str, tls: Option<ServerTls>| Target {
            address: a.to_owned(),
            tls,
        };
        let plain = at("127.0.0.1:9", None);
        assert_eq!(tls_files(&plain, &args(None)).ok(), Some(None));
        let ca = Some(TlsFiles {
            ca: "/ca.pem".into(),
            client: None,
        });
        assert_eq!(
            tls_files(&plain, &args(Some("/ca.pem"))).ok(),
            Some(ca.clone())
        );
        // The config says TLS and names the CA.
        let cfg = ServerTls {
            ca_path: Some("/ca.pem".into()),
            wants_client_cert: false,
        };
        assert_eq!(
            tls_files(&at("127.0.0.1:9", Some(cfg)), &args(None)).ok(),
            Some(ca)
        );
        // TLS without any CA, a client certificate half given, mTLS without
        // one, an http URL with a CA: each refused with what to do.
        let msg = |r: Result<Option<TlsFiles>, ClientError>| {
            r.err().map(|e| (e.exit_code(), e.message().to_owned()))
        };
        let (code, m) = msg(tls_files(&at("https://h:1", None), &args(None))).unwrap();
        assert_eq!(code, 64);
        assert!(m.contains("--ca-file"), "{m}");
        let half = TlsArgs {
            client_cert: Some("/c.pem".into()),
            ..args(Some("/ca.pem"))
        };
        assert!(msg(tls_files(&plain, &half))
            .unwrap()
            .1
            .contains("--client-key"));
        let mtls = ServerTls {
            ca_path: Some("/ca.pem".into()),
            wants_client_cert: true,
        };
        let m = msg(tls_files(&at("127.0.0.1:9", Some(mtls)), &args(None)))
            .unwrap()
            .1;
        assert!(m.contains("client certificate"), "{m}");
        assert_eq!(
            tls_files(&at("http://h:1", None), &args(Some("/ca.pem"))).ok(),
            Some(None)
        );
        assert_eq!(https_url("127.0.0.1:9"), "https://127.0.0.1:9");
        assert_eq!(https_url("https://h:1/"), "https://h:1");
    }

    #[test]
    fn the_key_never_shows_in_a_debug_print() {
        let c = Client::new("127.0.0.1:1", Some("s3cret-key".to_owned()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }
}
