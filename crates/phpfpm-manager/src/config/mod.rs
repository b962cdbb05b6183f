//! Configuration: YAML file + `PHPFPM_MANAGER_*` environment overrides, checked
//! in full before anything starts.
//!
//! Loading runs in stages, each collecting problems rather than stopping:
//! parse the YAML into a tree (`tree.rs`), apply environment overrides, report
//! unknown keys with a "did you mean", deserialise into `RawConfig` (`raw.rs`)
//! collecting every type error, then check values and their relations
//! (`validate.rs`) into the typed [`Config`] the rest of the daemon uses.
//! Every problem is reported as `key: 'value': what is wrong; how to fix`.

mod auth;
mod check;
mod raw;
mod tree;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fpm_core::fpm_conf::{GlobalSpec, PoolSpec};
use fpm_core::PoolName;

pub use auth::{parse_sha256_hex, valid_principal_name, ApiKey, Auth, ClientCert, Scope, Tls};
pub use check::{check_system, SystemReport};
pub use raw::RawConfig;
pub use tree::ENV_PREFIX;

/// The example configuration shipped in the binary (`example-config`).
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/example.yaml");

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: Option<String>,
    pub problem: String,
    pub fix: String,
}

impl Problem {
    pub(crate) fn new(key: &str, value: Option<String>, problem: &str, fix: &str) -> Problem {
        Problem {
            key: key.to_owned(),
            value,
            problem: problem.to_owned(),
            fix: fix.to_owned(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: '{}': {}; {}", self.key, v, self.problem, self.fix),
            None => write!(f, "{}: {}; {}", self.key, self.problem, self.fix),
        }
    }
}

/// Every problem found, in the order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "invalid configuration: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where a pool is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`; the host may be a name, resolved on every connect.
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Started without a config file: one supervised demo pool.
    pub zero_config: bool,
    pub phpfpm: PhpFpm,
    pub server: Server,
    pub pools: Vec<Pool>,
    pub monitoring: Monitoring,
    pub storage: Storage,
    pub telemetry: Telemetry,
    pub scaling: ScalingGlobal,
}

/// The memory budget shared by autoscaled pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBudget {
    /// The cgroup's or host's memory, minus the reserve.
    Auto { reserve_bytes: u64 },
    /// A fixed number of bytes for all autoscaled pools' workers.
    Fixed(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingGlobal {
    pub memory_budget: MemoryBudget,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PhpFpm {
    /// None: search the usual places.
    pub binary: Option<PathBuf>,
    /// Absolute.
    pub runtime_dir: PathBuf,
    pub global_config_path: Option<PathBuf>,
    pub global: GlobalSpec,
    pub stop_timeout: Duration,
    pub restart_backoff_initial: Duration,
    pub restart_backoff_max: Duration,
    pub crash_loop_exits: u32,
    pub crash_loop_window: Duration,
    pub warm_handover: bool,
    /// Grow an `ondemand` pool by a second master on the same socket.
    pub additive_scale_up: bool,
    /// Zero: a stalled master is only reported.
    pub stall_restart_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub bind_address: SocketAddr,
    pub api_enabled: bool,
    pub max_body_bytes: u64,
    pub limits: ServerLimits,
    /// `server.allow_unauthenticated`: a non-loopback address without
    /// authentication was asked for on purpose.
    pub allow_unauthenticated: bool,
    pub auth: Auth,
    /// None: plain HTTP.
    pub tls: Option<Tls>,
}

/// `server.limits`: what HTTP clients may cost the manager.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// As configured; the server lowers it to fit the open-files limit.
    pub max_connections: usize,
    /// Per client address (IPv6: its /64).
    pub max_connections_per_client: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_queries: usize,
    pub max_queued_queries: usize,
    /// Per-client request rate and burst (429 beyond).
    pub client_requests_per_second: u32,
    pub client_burst: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: PoolName,
    /// Some for supervised pools: what the supervisor renders and runs.
    pub spec: Option<PoolSpec>,
    pub endpoint: Endpoint,
    pub status_endpoint: Endpoint,
    pub status_path: String,
    pub ping_path: String,
    pub ping_response: String,
    pub max_workers: u32,
    pub scaling: Scaling,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Cap of every FastCGI reply read from this pool
    /// (`monitoring.max_reply_bytes`, the same for every pool).
    pub max_reply_bytes: u64,
    /// Group of the pool's unix socket file; None: the web server's group
    /// when running as root (see `supervisor::socket_group`).
    pub listen_group: Option<String>,
}

impl Pool {
    /// The `scrape_uri` label, in the form the de-facto php-fpm exporter uses.
    pub fn scrape_uri(&self) -> String {
        match &self.status_endpoint {
            Endpoint::Unix(p) => format!("unix://{};{}", p.display(), self.status_path),
            Endpoint::Tcp(a) => format!("tcp://{a}{}", self.status_path),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub enabled: bool,
    pub min_workers: u32,
    pub max_workers: u32,
    pub target_utilization: f64,
    pub weight: f64,
    pub priority: i32,
    /// An operator's pin from the config: (workers, until).
    pub pin: Option<(u32, Option<std::time::SystemTime>)>,
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Monitoring {
    pub collect_interval: Duration,
    pub interval: fpm_core::watch::IntervalPolicy,
    pub queue_probe_interval: Duration,
    pub memory_interval: Duration,
    pub circuit_failures: u32,
    pub circuit_cooldown: Duration,
    pub respawn_storm_threshold: u32,
    pub enable_opcache: bool,
    pub enable_system_metrics: bool,
    pub per_process_metrics: bool,
    /// Workers with per-process series per scrape, over all pools.
    pub max_process_series: usize,
    pub stall_after: Duration,
    pub expose_query_strings: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    /// None: in memory.
    pub database_path: Option<PathBuf>,
    pub retention_raw: Duration,
    pub retention_minute: Duration,
    pub retention_hour: Duration,
    pub retention_events: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where traces go; `None`: no traces (spans are not even created).
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    pub otlp_timeout: Duration,
    pub sampling_ratio: f64,
    pub service_name: String,
}

/// How traces reach the OTLP collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    Grpc,
    /// OTLP/HTTP: protobuf bodies POSTed to `<endpoint>/v1/traces`.
    HttpProtobuf,
}

/// What the loader needs from the outside world, passed in so that tests
/// never touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct LoadInput {
    /// The config file's path and text; None starts in zero-config mode.
    pub file: Option<(PathBuf, String)>,
    /// Environment variables (only `PHPFPM_MANAGER_*` are used).
    pub env: Vec<(String, String)>,
    /// Directory relative paths are resolved against.
    pub cwd: PathBuf,
    /// `--runtime-dir` given on the command line.
    pub runtime_dir: Option<String>,
}

/// Reads the config file (if any) and loads it with the process environment.
pub fn load_from_system(
    file: Option<&Path>,
    runtime_dir: Option<String>,
) -> Result<Config, ConfigError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let file = match file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some((path.to_owned(), text)),
            Err(e) => {
                return Err(ConfigError {
                    problems: vec![Problem::new(
                        &path.display().to_string(),
                        None,
                        &format!("cannot read the config file: {e}"),
                        "check the path, or run without --config for zero-config mode",
                    )],
                })
            }
        },
    };
    load(&LoadInput {
        file,
        env: std::env::vars().collect(),
        cwd,
        runtime_dir,
    })
}

/// Loads and validates a configuration from its inputs. Pure apart from
/// nothing: no file or environment is read here.
pub fn load(input: &LoadInput) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let (mut tree, zero_config) = match &input.file {
        Some((path, text)) => match tree::parse_yaml(text, &path.display().to_string()) {
            Ok(t) => (t, false),
            Err(p) => return Err(ConfigError { problems: vec![p] }),
        },
        None => (serde_yaml_ng::Value::Mapping(Default::default()), true),
    };
    let from_env = tree::apply_env(&mut tree, &input.env, &mut problems);
    let before = problems.len();
    tree::unknown_keys(&tree, &mut problems);
    tree_env_origin(&mut problems[before..], &from_env);
    let before = problems.len();
    let mut raw: RawConfig = tree::deserialize_all(tree, &mut problems);
    tree_env_origin(&mut problems[before..], &from_env);
    if let Some(dir) = &input.runtime_dir {
        raw.phpfpm.runtime_dir = dir.clone();
    }
    if zero_config && raw.pools.is_empty() {
        raw.pools.push(validate::demo_pool());
    }
    let config = validate::validate(&raw, zero_config, &input.cwd, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems })
    }
}

/// Says which environment variable a value came from, when it did.
fn tree_env_origin(problems: &mut [Problem], from_env: &[(Vec<tree::Seg>, String)]) {
    for p in problems {
        if let Some((_, var)) = from_env
            .iter()
            .find(|(path, _)| tree::path_text(path) == p.key)
        {
            p.key = format!("{} (from {var})", p.key);
        }
    }
}

impl Config {
    /// A few lines describing the effective configuration, for `validate`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mode = if self.zero_config {
            "zero-config (no file given)"
        } else {
            "from file"
        };
        out.push_str(&format!("configuration is valid ({mode})\n"));
        let scheme = if self.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        out.push_str(&format!(
            "  server: {scheme}://{}\n",
            self.server.bind_address
        ));
        let auth = &self.server.auth;
        if auth.enabled {
            out.push_str(&format!(
                "  auth: {} key(s), {} client certificate mapping(s)\n",
                auth.keys.len(),
                auth.certificates.len()
            ));
        } else {
            out.push_str("  auth: off (changes from loopback clients only)\n");
        }
        out.push_str(&format!(
            "  runtime dir: {}\n",
            self.phpfpm.runtime_dir.display()
        ));
        out.push_str(&format!(
            "  collect interval: {}\n",
            validate::short(self.monitoring.collect_interval)
        ));
        out.push_str(&format!("  pools: {}\n", self.pools.len()));
        for p in &self.pools {
            let (mode, pm) = match &p.spec {
                Some(spec) => ("supervised", spec.pm.as_str()),
                None => ("observed", "-"),
            };
            out.push_str(&format!(
                "    - {} ({mode}, pm {pm}, max workers {}, endpoint {}, status {})\n",
                p.name, p.max_workers, p.endpoint, p.status_endpoint
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
