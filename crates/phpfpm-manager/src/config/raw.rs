//! The configuration file as written by the user: serde structs, defaults and docs.
//!
//! Every field has a default, so an empty file (or no file) is a valid start.
//! Types here are loose on purpose (durations and addresses are text); the
//! checks that need several fields or the outside world happen in
//! `validate.rs`, which turns a `RawConfig` into a `Config`.
//! `docs/configuration.md` describes every key; a test keeps the two in step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawConfig {
    pub phpfpm: RawPhpFpm,
    pub server: RawServer,
    pub pools: Vec<RawPool>,
    pub monitoring: RawMonitoring,
    pub storage: RawStorage,
    pub telemetry: RawTelemetry,
    pub scaling: RawScalingGlobal,
}

/// What the autoscaler shares between pools.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawScalingGlobal {
    /// Memory all autoscaled pools' workers may use together: `auto` (the
    /// cgroup's or host's memory, minus `memory_reserve`) or a size such as
    /// `4GiB`, `960MiB` or a number of bytes. Caps are planned so that every
    /// pool at its cap stays within it.
    #[serde(deserialize_with = "scalar_text")]
    pub memory_budget: String,
    /// Memory kept free for everything else (masters, OPcache, the system)
    /// when `memory_budget` is `auto`.
    #[serde(deserialize_with = "scalar_text")]
    pub memory_reserve: String,
}

impl Default for RawScalingGlobal {
    fn default() -> Self {
        RawScalingGlobal {
            memory_budget: "auto".into(),
            memory_reserve: "256MiB".into(),
        }
    }
}

/// How php-fpm itself is run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawPhpFpm {
    /// php-fpm binary; `auto` searches PATH and /usr/sbin for php-fpm, php-fpmX.Y.
    pub binary: String,
    /// The manager's own directory: generated configs, sockets, pid files, logs.
    pub runtime_dir: String,
    /// An existing php-fpm main config (for example /etc/php/8.2/fpm/php-fpm.conf)
    /// whose pools are observed. Never written to.
    pub global_config_path: Option<String>,
    /// Written into every generated config; must be above 0 (fact 3).
    pub process_control_timeout: String,
    /// How long a graceful stop (SIGQUIT) may take before SIGTERM, then SIGKILL.
    pub stop_timeout: String,
    /// php-fpm's own log level: alert, error, warning, notice, debug.
    pub log_level: String,
    /// Give every supervised pool an `opcache.file_cache` in the runtime
    /// directory, so a new master (hand-over, restart) starts from the
    /// scripts the previous one compiled instead of a cold OPcache.
    pub warm_handover: bool,
    /// Add capacity to a loaded `ondemand` pool with a second master on the
    /// same socket (the warm one keeps serving) instead of handing the pool
    /// over to a bigger master; the second master is stopped when the pool
    /// shrinks and folded into one master by the next hand-over. Off by
    /// default: each master has its own OPcache, and under a memory budget
    /// shared by pools it measured worse (docs/bench/realload.md).
    pub additive_scale_up: bool,
    /// Delay before restarting a master that exited unexpectedly; doubles
    /// on each further exit up to `restart_backoff_max`.
    pub restart_backoff_initial: String,
    pub restart_backoff_max: String,
    /// This many unexpected exits within `crash_loop_window` mark the pool
    /// failed; it is then retried once a minute.
    pub crash_loop_exits: u32,
    pub crash_loop_window: String,
    /// A supervised master stalled this long (stopped by a signal, or
    /// accepting nothing while connections wait) is killed and restarted;
    /// `0s` only reports it.
    pub stall_restart_after: String,
}

impl Default for RawPhpFpm {
    fn default() -> Self {
        RawPhpFpm {
            binary: "auto".into(),
            runtime_dir: "./var/phpfpm-manager".into(),
            global_config_path: None,
            process_control_timeout: "10s".into(),
            stop_timeout: "10s".into(),
            log_level: "notice".into(),
            warm_handover: true,
            additive_scale_up: false,
            restart_backoff_initial: "100ms".into(),
            restart_backoff_max: "30s".into(),
            crash_loop_exits: 5,
            crash_loop_window: "2m".into(),
            stall_restart_after: "30s".into(),
        }
    }
}

/// The HTTP server (metrics, health, API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawServer {
    pub bind_address: String,
    /// Serve an address beyond loopback without authentication, on purpose.
    pub allow_unauthenticated: bool,
    pub tls: RawTls,
    pub auth: RawAuth,
    pub api: RawApi,
    pub limits: RawLimits,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            bind_address: "127.0.0.1:8080".into(),
            allow_unauthenticated: false,
            tls: RawTls::default(),
            auth: RawAuth::default(),
            api: RawApi::default(),
            limits: RawLimits::default(),
        }
    }
}

/// What the HTTP server lets clients cost the manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawLimits {
    /// Most connections open at once; lowered at start to half of the
    /// open-files limit left after a reserve for php-fpm supervision,
    /// collection and storage.
    pub max_connections: u32,
    /// Most connections one client address (IPv6: its /64) keeps open at
    /// once; a new one beyond takes the place of that client's own
    /// quietest connection, or is closed if all of them are being answered.
    pub max_connections_per_client: u32,
    /// From a request's first byte until its headers are complete.
    pub header_read_timeout: String,
    /// How long a handler may run before the request is answered 503.
    pub request_timeout: String,
    /// A connection that moves no byte for this long while none of its
    /// requests is being answered is closed.
    pub idle_timeout: String,
    /// History queries running at once (one SQLite connection each).
    pub max_concurrent_queries: u32,
    /// History queries waiting for a free slot; beyond, 503 with Retry-After.
    pub max_queued_queries: u32,
    /// Requests per second each client (principal, or address when
    /// anonymous) may make; beyond, 429 with Retry-After.
    pub client_requests_per_second: u32,
    /// Requests a client may make at once above that rate.
    pub client_burst: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: 512,
            max_connections_per_client: 64,
            header_read_timeout: "10s".into(),
            request_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            max_concurrent_queries: 4,
            max_queued_queries: 64,
            client_requests_per_second: 50,
            client_burst: 100,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawTls {
    pub enabled: bool,
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
    pub client_ca_path: Option<String>,
    /// The CA that signed `cert_path` (PEM), for the CLI commands reading
    /// this config to trust; the server does not use it.
    pub ca_path: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawAuth {
    pub enabled: bool,
    pub metrics_require_auth: bool,
    pub health_require_auth: bool,
    /// API keys, by name, scope and the SHA-256 of the key.
    pub keys: Vec<RawApiKey>,
    /// Client certificates (mTLS) mapped to principals by subject CN.
    pub certificates: Vec<RawClientCert>,
}

/// One API key as `phpfpm-manager key new` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawApiKey {
    pub name: String,
    /// read, operate or admin.
    pub scope: String,
    /// SHA-256 of the key, 64 hex digits (never the key itself).
    pub sha256: String,
}

/// A client certificate's subject common name and what it may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawClientCert {
    pub common_name: String,
    /// The principal's name in the audit trail; defaults to the common name.
    pub name: Option<String>,
    pub scope: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawApi {
    pub enabled: bool,
    pub max_body_bytes: u64,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            enabled: true,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// One pool, supervised (the manager runs its php-fpm master) or observed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawPool {
    pub name: String,
    /// true: the manager runs this pool's php-fpm master. false: it only observes.
    pub supervise: bool,
    /// An existing php-fpm pool file describing this pool (observe mode).
    pub config_path: Option<String>,
    /// Where the pool accepts FastCGI: `unix:/path`, `/path`, or `host:port`.
    /// Supervised pools default to `<runtime_dir>/sockets/<name>.sock`.
    pub fastcgi_endpoint: Option<String>,
    /// Where the status page is asked for. Supervised pools get a private
    /// `pm.status_listen` socket so the page answers under saturation (fact 8).
    pub status_endpoint: Option<String>,
    pub fastcgi_status_path: String,
    pub ping_path: String,
    pub ping_response: String,
    /// pm.max_children.
    pub max_workers: u32,
    /// static, dynamic or ondemand.
    pub pm: String,
    pub start_workers: Option<u32>,
    pub min_spare_workers: Option<u32>,
    pub max_spare_workers: Option<u32>,
    pub max_requests: u32,
    pub process_idle_timeout: String,
    pub request_terminate_timeout: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub listen_mode: String,
    /// Group owning the pool's unix socket file (php-fpm's `listen.group`).
    pub listen_group: Option<String>,
    /// Working directory of the workers (php-fpm's `chdir`).
    pub chdir: Option<String>,
    #[serde(deserialize_with = "scalar_map")]
    pub php_values: BTreeMap<String, String>,
    #[serde(deserialize_with = "scalar_map")]
    pub php_admin_values: BTreeMap<String, String>,
    /// Other php-fpm pool directives, written verbatim (for example
    /// `request_slowlog_timeout: 5s`). Directives the manager manages itself
    /// (listen, pm.*, user, ...) must use their own keys.
    #[serde(deserialize_with = "scalar_map")]
    pub extra_settings: BTreeMap<String, String>,
    /// Environment of the workers. Values may be secrets: they are written to
    /// the generated pool file and nowhere else.
    #[serde(deserialize_with = "scalar_map")]
    pub env: BTreeMap<String, String>,
    pub scaling: RawScaling,
    pub timeouts: RawTimeouts,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            name: String::new(),
            supervise: true,
            config_path: None,
            fastcgi_endpoint: None,
            status_endpoint: None,
            fastcgi_status_path: "/status".into(),
            ping_path: "/ping".into(),
            ping_response: "pong".into(),
            max_workers: 5,
            pm: "dynamic".into(),
            start_workers: None,
            min_spare_workers: None,
            max_spare_workers: None,
            max_requests: 500,
            process_idle_timeout: "10s".into(),
            request_terminate_timeout: "60s".into(),
            user: None,
            group: None,
            listen_mode: "0660".into(),
            listen_group: None,
            chdir: None,
            php_values: BTreeMap::new(),
            php_admin_values: BTreeMap::new(),
            extra_settings: BTreeMap::new(),
            env: BTreeMap::new(),
            scaling: RawScaling::default(),
            timeouts: RawTimeouts::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawScaling {
    /// The autoscaler sets this pool's cap (supervised pools: `pm =
    /// ondemand`, `pm.max_children` moved within min/max and the memory
    /// budget). Observed pools are only advised on.
    pub enabled: bool,
    pub min_workers: u32,
    /// Defaults to the pool's max_workers.
    pub max_workers: Option<u32>,
    /// Busy share of the cap the model plans for, in (0, 1]: the cap is the
    /// workers the traffic needs divided by this (0.7 leaves 43 % headroom).
    pub target_utilization: f64,
    /// Share of the memory budget relative to other pools of equal priority.
    pub weight: f64,
    /// Pools of higher priority get their share of the budget first.
    pub priority: i32,
    /// Hold the pool at exactly this many workers (an operator's pin).
    pub pin: Option<u32>,
    /// When the pin ends by itself (RFC 3339, e.g. 2026-12-24T08:00:00Z).
    pub pin_until: Option<String>,
    /// Keep the current size; the autoscaler still learns and advises.
    pub paused: bool,
}

impl Default for RawScaling {
    fn default() -> Self {
        RawScaling {
            enabled: false,
            min_workers: 1,
            max_workers: None,
            target_utilization: 0.7,
            weight: 1.0,
            priority: 0,
            pin: None,
            pin_until: None,
            paused: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawTimeouts {
    pub connect: String,
    pub request: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: "250ms".into(),
            request: "2s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawMonitoring {
    /// The normal interval between collections of a pool.
    pub collect_interval: String,
    /// Used while a pool is busy (utilisation above `busy_utilization`, or
    /// anything in the accept queue).
    pub busy_interval: String,
    /// Used while utilisation is below `idle_utilization`.
    pub idle_interval: String,
    pub busy_utilization: f64,
    pub idle_utilization: f64,
    /// How often the kernel's accept queue is read between collections
    /// (cheap: one netlink request); anything queued triggers a collection.
    pub queue_probe_interval: String,
    /// How often worker memory (`smaps_rollup`) is read; CPU and state are
    /// read at every collection.
    pub memory_interval: String,
    /// Consecutive failures that open a pool's circuit breaker.
    pub circuit_failures: u32,
    /// How long an open circuit leaves the pool alone before one probe.
    pub circuit_cooldown: String,
    /// Crashed workers within a minute that raise a `respawn_storm` event
    /// (recycling after `pm.max_requests` never counts for supervised pools).
    pub respawn_storm_threshold: u32,
    pub enable_opcache: bool,
    pub enable_system_metrics: bool,
    /// Per-worker `phpfpm_process_*` series (labelled by slot, not pid).
    pub per_process_metrics: bool,
    /// Most workers, over all pools, with `phpfpm_process_*` series in one
    /// scrape (five series each); the rest are counted, not exported.
    pub max_process_series: u32,
    /// How long a master must show no progress before its pool is marked
    /// stalled (not ready).
    pub stall_after: String,
    /// Largest FastCGI reply (status page, ping, OPcache probe) read from a
    /// pool, in bytes; a longer one is abandoned and counted as
    /// `reply_too_large`. The default fits a 10,000-worker `?json&full` page.
    pub max_reply_bytes: u64,
    /// Show the query strings of the requests workers are serving (API keys,
    /// tokens). Off: `/index.php?<redacted>`.
    pub expose_query_strings: bool,
}

impl Default for RawMonitoring {
    fn default() -> Self {
        RawMonitoring {
            collect_interval: "5s".into(),
            busy_interval: "1s".into(),
            idle_interval: "15s".into(),
            busy_utilization: 0.8,
            idle_utilization: 0.3,
            queue_probe_interval: "250ms".into(),
            memory_interval: "30s".into(),
            circuit_failures: 3,
            circuit_cooldown: "10s".into(),
            respawn_storm_threshold: 5,
            enable_opcache: false,
            enable_system_metrics: true,
            per_process_metrics: false,
            max_process_series: 1000,
            stall_after: "10s".into(),
            max_reply_bytes: crate::fastcgi::DEFAULT_MAX_REPLY_BYTES,
            expose_query_strings: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawStorage {
    /// SQLite file; `auto` is `<runtime_dir>/data.db`, `:memory:` keeps
    /// history in memory only.
    pub database_path: String,
    pub retention: RawRetention,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            database_path: "auto".into(),
            retention: RawRetention::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawRetention {
    pub raw: String,
    pub minute: String,
    pub hour: String,
    /// How long events (scale decisions, crashes, changes, ...) are kept.
    pub events: String,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            raw: "24h".into(),
            minute: "7d".into(),
            hour: "365d".into(),
            events: "365d".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RawTelemetry {
    /// trace, debug, info, warn or error; RUST_LOG overrides it.
    pub log_level: String,
    /// text or json.
    pub log_format: String,
    /// OTLP collector for traces, for example http://127.0.0.1:4317.
    pub otlp_endpoint: Option<String>,
    /// grpc (OTLP/gRPC, usually port 4317) or http (OTLP/HTTP with
    /// protobuf bodies, usually port 4318).
    pub otlp_protocol: String,
    /// How long one export may take before it is abandoned and its spans
    /// are counted as dropped.
    pub otlp_timeout: String,
    /// The share of traces the manager starts that are kept, 0.0 to 1.0. A
    /// trace started by an API client keeps the client's decision.
    pub sampling_ratio: f64,
    /// `service.name` of the traces.
    pub service_name: String,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            log_level: "info".into(),
            log_format: "text".into(),
            otlp_endpoint: None,
            otlp_protocol: "grpc".into(),
            otlp_timeout: "10s".into(),
            sampling_ratio: 1.0,
            service_name: "phpfpm-manager".into(),
        }
    }
}

impl RawConfig {
    /// A config with one pool, used to learn the full tree of known keys.
    pub(crate) fn key_tree_example() -> RawConfig {
        let mut server = RawServer::default();
        server.auth.keys = vec![RawApiKey::default()];
        server.auth.certificates = vec![RawClientCert::default()];
        RawConfig {
            pools: vec![RawPool::default()],
            server,
            ..RawConfig::default()
        }
    }
}

/// A value written as text, a number or a boolean, kept as text.
struct Scalar(String);
impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("text, a number or true/false")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            // php's ini reads 1 and 0 as on and off.
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(if v { "1" } else { "0" }.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a size or other text that may be written as a bare number
/// (`memory_budget: 1073741824`).
fn scalar_text<'de, D>(d: D) -> Result<String, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Scalar::deserialize(d).map(|s| s.0)
}

/// Reads a map whose values may be written as text, numbers or booleans
/// (`memory_limit: 256M`, `opcache.enable: 1`, `display_errors: false`) and
/// keeps them as the text php-fpm's ini format expects.
fn scalar_map<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let m: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(m.into_iter().map(|(k, v)| (k, v.0)).collect())
}
