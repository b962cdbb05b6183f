//! Semantic checks: values, ranges and relations between keys, turning a
//! `RawConfig` into a `Config`. Pure: the working directory is passed in.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use fpm_core::fpm_conf::{GlobalSpec, PmMode, PoolSpec};
use fpm_core::PoolName;

use super::raw::{RawConfig, RawPool};
use super::{
    Config, Endpoint, LogFormat, MemoryBudget, Monitoring, OtlpProtocol, PhpFpm, Pool, Problem,
    Scaling, ScalingGlobal, Server, ServerLimits, Storage, Telemetry,
};

/// Less memory than any php-fpm worker takes (a bare php-fpm 8.2 worker
/// has a PSS of several MiB; a real application's, tens).
const SMALLEST_WORKER_BYTES: u64 = 16 << 20;

/// The pool zero-config mode supervises.
pub(super) fn demo_pool() -> RawPool {
    let mut pool = RawPool {
        name: "demo".into(),
        max_workers: 4,
        ..RawPool::default()
    };
    // The demo shows the product at work: its size follows the load.
    pool.scaling.enabled = true;
    pool
}

/// Bounds of `monitoring.max_reply_bytes`: a status page of one worker is
/// about 1 KiB with its headers; beyond 1 GiB the cap no longer protects.
const MIN_REPLY_BYTES: u64 = 4096;
const MAX_REPLY_BYTES: u64 = 1 << 30;

pub(super) fn validate(
    raw: &RawConfig,
    zero_config: bool,
    cwd: &Path,
    problems: &mut Vec<Problem>,
) -> Config {
    let mut c = Checker { problems, cwd };

    let runtime_dir = c
        .path("phpfpm.runtime_dir", &raw.phpfpm.runtime_dir, true)
        .unwrap_or_else(|| cwd.join("var/phpfpm-manager"));
    let binary = match raw.phpfpm.binary.as_str() {
        "auto" | "" => None,
        b => c.path("phpfpm.binary", b, false),
    };
    let global_config_path = raw
        .phpfpm
        .global_config_path
        .as_deref()
        .and_then(|p| c.path("phpfpm.global_config_path", p, false));
    let pct = c.duration(
        "phpfpm.process_control_timeout",
        &raw.phpfpm.process_control_timeout,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    let stop_timeout = c.duration(
        "phpfpm.stop_timeout",
        &raw.phpfpm.stop_timeout,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let backoff_initial = c.duration(
        "phpfpm.restart_backoff_initial",
        &raw.phpfpm.restart_backoff_initial,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    let backoff_max = c.duration(
        "phpfpm.restart_backoff_max",
        &raw.phpfpm.restart_backoff_max,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    if backoff_initial > backoff_max
        && c.usable(&[
            "phpfpm.restart_backoff_initial",
            "phpfpm.restart_backoff_max",
        ])
    {
        c.problem(
            "phpfpm.restart_backoff_initial",
            &raw.phpfpm.restart_backoff_initial,
            "is longer than phpfpm.restart_backoff_max",
            "make restart_backoff_initial <= restart_backoff_max",
        );
    }
    if raw.phpfpm.crash_loop_exits < 2 {
        c.problem(
            "phpfpm.crash_loop_exits",
            &raw.phpfpm.crash_loop_exits.to_string(),
            "must be at least 2",
            "the default is 5",
        );
    }
    let crash_loop_window = c.duration(
        "phpfpm.crash_loop_window",
        &raw.phpfpm.crash_loop_window,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    );
    let stall_restart_after = c.duration(
        "phpfpm.stall_restart_after",
        &raw.phpfpm.stall_restart_after,
        Duration::ZERO,
        Duration::from_secs(86_400),
    );
    c.one_of(
        "phpfpm.log_level",
        &raw.phpfpm.log_level,
        &["alert", "error", "warning", "notice", "debug"],
    );

    let bind_address = match raw.server.bind_address.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.problem(
                "server.bind_address",
                &raw.server.bind_address,
                "not an IP address and port",
                "write it as 127.0.0.1:8080 or [::1]:8080",
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };
    let bind_usable = c.usable(&["server.bind_address"]);
    let tls_paths = super::auth::TlsPaths {
        cert: raw
            .server
            .tls
            .cert_path
            .as_deref()
            .and_then(|p| c.path("server.tls.cert_path", p, true)),
        key: raw
            .server
            .tls
            .key_path
            .as_deref()
            .and_then(|p| c.path("server.tls.key_path", p, true)),
        client_ca: raw
            .server
            .tls
            .client_ca_path
            .as_deref()
            .and_then(|p| c.path("server.tls.client_ca_path", p, true)),
        ca: raw
            .server
            .tls
            .ca_path
            .as_deref()
            .and_then(|p| c.path("server.tls.ca_path", p, true)),
    };
    let (auth, tls) = super::auth::check(
        &raw.server,
        bind_address,
        bind_usable,
        tls_paths,
        c.problems,
    );
    if raw.server.api.max_body_bytes == 0 {
        c.problem(
            "server.api.max_body_bytes",
            "0",
            "must be at least 1",
            "the default is 65536",
        );
    }

    let lim = &raw.server.limits;
    let header_read_timeout = c.duration(
        "server.limits.header_read_timeout",
        &lim.header_read_timeout,
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    let request_timeout = c.duration(
        "server.limits.request_timeout",
        &lim.request_timeout,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let idle_timeout = c.duration(
        "server.limits.idle_timeout",
        &lim.idle_timeout,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    for (key, value, max) in [
        (
            "server.limits.max_connections",
            lim.max_connections,
            1_000_000,
        ),
        (
            "server.limits.max_connections_per_client",
            lim.max_connections_per_client,
            1_000_000,
        ),
        (
            "server.limits.max_concurrent_queries",
            lim.max_concurrent_queries,
            64,
        ),
        (
            "server.limits.client_requests_per_second",
            lim.client_requests_per_second,
            1_000_000,
        ),
        ("server.limits.client_burst", lim.client_burst, 1_000_000),
    ] {
        if value == 0 || value > max {
            c.problem(
                key,
                &value.to_string(),
                &format!("out of range 1 to {max}"),
                "pick a value inside that range",
            );
        }
    }

    let collect_interval = c.duration(
        "monitoring.collect_interval",
        &raw.monitoring.collect_interval,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );

    let ms = Duration::from_millis;
    let busy_interval = c.duration(
        "monitoring.busy_interval",
        &raw.monitoring.busy_interval,
        ms(100),
        Duration::from_secs(3600),
    );
    let idle_interval = c.duration(
        "monitoring.idle_interval",
        &raw.monitoring.idle_interval,
        ms(100),
        Duration::from_secs(3600),
    );
    if busy_interval > collect_interval
        && c.usable(&["monitoring.busy_interval", "monitoring.collect_interval"])
    {
        c.problem(
            "monitoring.busy_interval",
            &raw.monitoring.busy_interval,
            "is longer than monitoring.collect_interval",
            "a busy pool is looked at more often: make busy_interval <= collect_interval",
        );
    }
    if idle_interval < collect_interval
        && c.usable(&["monitoring.idle_interval", "monitoring.collect_interval"])
    {
        c.problem(
            "monitoring.idle_interval",
            &raw.monitoring.idle_interval,
            "is shorter than monitoring.collect_interval",
            "an idle pool is looked at less often: make idle_interval >= collect_interval",
        );
    }
    let stall_after = c.duration(
        "monitoring.stall_after",
        &raw.monitoring.stall_after,
        ms(100),
        Duration::from_secs(3600),
    );
    let (bu, iu) = (
        raw.monitoring.busy_utilization,
        raw.monitoring.idle_utilization,
    );
    for (key, v) in [
        ("monitoring.busy_utilization", bu),
        ("monitoring.idle_utilization", iu),
    ] {
        if !(0.0..=1.0).contains(&v) {
            c.problem(
                key,
                &v.to_string(),
                "must be between 0 and 1",
                "for example 0.8 and 0.3",
            );
        }
    }
    if iu > bu {
        c.problem(
            "monitoring.idle_utilization",
            &iu.to_string(),
            "is above monitoring.busy_utilization",
            "make idle_utilization <= busy_utilization",
        );
    }
    let queue_probe_interval = c.duration(
        "monitoring.queue_probe_interval",
        &raw.monitoring.queue_probe_interval,
        ms(50),
        Duration::from_secs(60),
    );
    let memory_interval = c.duration(
        "monitoring.memory_interval",
        &raw.monitoring.memory_interval,
        ms(100),
        Duration::from_secs(3600),
    );
    if raw.monitoring.circuit_failures == 0 {
        c.problem(
            "monitoring.circuit_failures",
            "0",
            "must be at least 1",
            "the default is 3",
        );
    }
    if raw.monitoring.respawn_storm_threshold == 0 {
        c.problem(
            "monitoring.respawn_storm_threshold",
            "0",
            "must be at least 1",
            "the default is 5",
        );
    }
    let circuit_cooldown = c.duration(
        "monitoring.circuit_cooldown",
        &raw.monitoring.circuit_cooldown,
        ms(100),
        Duration::from_secs(3600),
    );

    let database_path = match raw.storage.database_path.as_str() {
        ":memory:" => None,
        // History follows the runtime directory (and `--runtime-dir`).
        "auto" | "" => Some(runtime_dir.join("data.db")),
        p => c.path("storage.database_path", p, true),
    };
    let day = Duration::from_secs(86_400);
    let retention_raw = c.duration(
        "storage.retention.raw",
        &raw.storage.retention.raw,
        Duration::from_secs(60),
        365 * day,
    );
    let retention_minute = c.duration(
        "storage.retention.minute",
        &raw.storage.retention.minute,
        Duration::from_secs(3600),
        3650 * day,
    );
    let retention_hour = c.duration(
        "storage.retention.hour",
        &raw.storage.retention.hour,
        day,
        3650 * day,
    );
    let retention_events = c.duration(
        "storage.retention.events",
        &raw.storage.retention.events,
        day,
        3650 * day,
    );
    if retention_minute < retention_raw
        && c.usable(&["storage.retention.minute", "storage.retention.raw"])
    {
        c.problem(
            "storage.retention.minute",
            &raw.storage.retention.minute,
            "is shorter than storage.retention.raw",
            "keep 1-minute rollups at least as long as raw samples",
        );
    }
    if retention_hour < retention_minute
        && c.usable(&["storage.retention.hour", "storage.retention.minute"])
    {
        c.problem(
            "storage.retention.hour",
            &raw.storage.retention.hour,
            "is shorter than storage.retention.minute",
            "keep 1-hour rollups at least as long as 1-minute rollups",
        );
    }

    c.one_of(
        "telemetry.log_level",
        &raw.telemetry.log_level,
        &["trace", "debug", "info", "warn", "error"],
    );
    let log_format = match raw.telemetry.log_format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            c.problem(
                "telemetry.log_format",
                other,
                "unknown log format",
                "use text or json",
            );
            LogFormat::Text
        }
    };
    let otlp_protocol = match raw.telemetry.otlp_protocol.as_str() {
        "grpc" => OtlpProtocol::Grpc,
        "http" | "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            c.problem(
                "telemetry.otlp_protocol",
                other,
                "unknown OTLP protocol",
                "use grpc (port 4317) or http (HTTP/protobuf, port 4318)",
            );
            OtlpProtocol::Grpc
        }
    };
    if let Some(ep) = &raw.telemetry.otlp_endpoint {
        if let Err((what, fix)) = check_otlp_endpoint(ep, otlp_protocol) {
            c.problem(
                "telemetry.otlp_endpoint",
                &without_credentials(ep),
                &what,
                fix,
            );
        }
    }
    let otlp_timeout = c.duration(
        "telemetry.otlp_timeout",
        &raw.telemetry.otlp_timeout,
        Duration::from_millis(100),
        Duration::from_secs(60),
    );
    let sampling_ratio = raw.telemetry.sampling_ratio;
    if !(0.0..=1.0).contains(&sampling_ratio) {
        c.problem(
            "telemetry.sampling_ratio",
            &sampling_ratio.to_string(),
            "must be between 0 and 1",
            "use 1 to keep every trace, 0.1 to keep one in ten",
        );
    }

    if raw.pools.is_empty() {
        c.problems.push(Problem::new(
            "pools",
            None,
            "no pool is configured",
            "add at least one pool under `pools:` (see `phpfpm-manager example-config`)",
        ));
    }
    let max_reply_bytes = raw.monitoring.max_reply_bytes;
    if !(MIN_REPLY_BYTES..=MAX_REPLY_BYTES).contains(&max_reply_bytes) {
        c.problem(
            "monitoring.max_reply_bytes",
            &max_reply_bytes.to_string(),
            &format!("must be between {MIN_REPLY_BYTES} and {MAX_REPLY_BYTES}"),
            "the default, 33554432 (32 MiB), fits the full status page of 10,000 workers",
        );
    }
    let mut names = BTreeSet::new();
    let mut status_addrs = BTreeSet::new();
    let mut pools = Vec::new();
    for (i, rp) in raw.pools.iter().enumerate() {
        if let Some(mut pool) = c.pool(i, rp, &runtime_dir, pct) {
            pool.max_reply_bytes = max_reply_bytes;
            let unique = names.insert(pool.name.clone());
            if !unique {
                c.problem(
                    &format!("pools[{i}].name"),
                    pool.name.as_str(),
                    "another pool has the same name",
                    "give every pool a unique name",
                );
            }
            // Two pools cannot share one pm.status_listen address (fact 8).
            // A duplicate name is reported once: its default addresses,
            // derived from the name, clash as a consequence.
            if unique
                && pool.spec.is_some()
                && !status_addrs.insert(pool.status_endpoint.to_string())
            {
                c.problem(
                    &format!("pools[{i}].status_endpoint"),
                    &pool.status_endpoint.to_string(),
                    "another supervised pool uses the same status address",
                    "give every supervised pool its own status_endpoint",
                );
            }
            pools.push(pool);
        }
    }

    let memory_budget = match raw.scaling.memory_budget.trim() {
        "auto" | "" => MemoryBudget::Auto {
            reserve_bytes: c
                .size("scaling.memory_reserve", &raw.scaling.memory_reserve)
                .unwrap_or(0),
        },
        text => match c.size("scaling.memory_budget", text) {
            Some(0) => {
                c.problem(
                    "scaling.memory_budget",
                    text,
                    "a budget of 0 leaves no room for any worker",
                    "write `auto` or a size such as 2GiB",
                );
                MemoryBudget::Auto { reserve_bytes: 0 }
            }
            Some(n) if n < SMALLEST_WORKER_BYTES => {
                c.problem(
                    "scaling.memory_budget",
                    text,
                    "is smaller than one php-fpm worker (a worker needs at least 16MiB)",
                    "give the pools' workers at least a few hundred MiB, or write `auto`",
                );
                MemoryBudget::Auto { reserve_bytes: 0 }
            }
            Some(n) => MemoryBudget::Fixed(n),
            None => MemoryBudget::Auto { reserve_bytes: 0 },
        },
    };

    Config {
        zero_config,
        phpfpm: PhpFpm {
            binary,
            runtime_dir,
            global_config_path,
            global: GlobalSpec {
                process_control_timeout_secs: pct.as_secs().max(1),
                log_level: raw.phpfpm.log_level.clone(),
            },
            stop_timeout,
            restart_backoff_initial: backoff_initial,
            restart_backoff_max: backoff_max,
            crash_loop_exits: raw.phpfpm.crash_loop_exits,
            crash_loop_window,
            warm_handover: raw.phpfpm.warm_handover,
            additive_scale_up: raw.phpfpm.additive_scale_up,
            stall_restart_after,
        },
        server: Server {
            bind_address,
            api_enabled: raw.server.api.enabled,
            max_body_bytes: raw.server.api.max_body_bytes,
            limits: ServerLimits {
                max_connections: lim.max_connections.max(1) as usize,
                max_connections_per_client: lim.max_connections_per_client.max(1) as usize,
                header_read_timeout,
                request_timeout,
                idle_timeout,
                max_concurrent_queries: lim.max_concurrent_queries.clamp(1, 64) as usize,
                max_queued_queries: lim.max_queued_queries as usize,
                client_requests_per_second: lim.client_requests_per_second.max(1),
                client_burst: lim.client_burst.max(1),
            },
            allow_unauthenticated: raw.server.allow_unauthenticated,
            auth,
            tls,
        },
        pools,
        scaling: ScalingGlobal { memory_budget },
        monitoring: Monitoring {
            collect_interval,
            interval: fpm_core::watch::IntervalPolicy {
                busy: busy_interval,
                normal: collect_interval,
                idle: idle_interval,
                busy_above: bu,
                idle_below: iu,
            },
            queue_probe_interval,
            memory_interval,
            circuit_failures: raw.monitoring.circuit_failures.max(1),
            circuit_cooldown,
            respawn_storm_threshold: raw.monitoring.respawn_storm_threshold.max(1),
            enable_opcache: raw.monitoring.enable_opcache,
            enable_system_metrics: raw.monitoring.enable_system_metrics,
            per_process_metrics: raw.monitoring.per_process_metrics,
            max_process_series: raw.monitoring.max_process_series as usize,
            stall_after,
            expose_query_strings: raw.monitoring.expose_query_strings,
        },
        storage: Storage {
            database_path,
            retention_raw,
            retention_minute,
            retention_hour,
            retention_events,
        },
        telemetry: Telemetry {
            log_level: raw.telemetry.log_level.clone(),
            log_format,
            otlp_endpoint: raw.telemetry.otlp_endpoint.clone(),
            otlp_protocol,
            otlp_timeout,
            sampling_ratio,
            service_name: raw.telemetry.service_name.clone(),
        },
    }
}

/// The OTLP collector's URL: plain http with a host (the exporter speaks
/// no TLS yet), no credentials (the URL is logged), and no path for gRPC
/// (the service path is fixed). For HTTP a path is the full traces URL; an
/// empty one means `/v1/traces`.
fn check_otlp_endpoint(ep: &str, protocol: OtlpProtocol) -> Result<(), (String, &'static str)> {
    const FIX: &str = "write it as http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http)";
    let url = url::Url::parse(ep.trim()).map_err(|e| (format!("not a URL ({e})"), FIX))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err((
                "TLS to the collector is not available in this version".to_owned(),
                "send to a collector on this host or a trusted network over http://, for example an OpenTelemetry Collector",
            ))
        }
        other => return Err((format!("not an http:// URL (scheme {other})"), FIX)),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(("the URL has no host".to_owned(), FIX));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err((
            "the URL carries credentials".to_owned(),
            "remove them: the endpoint is written to the log",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(("the URL has a query or a fragment".to_owned(), FIX));
    }
    if protocol == OtlpProtocol::Grpc && url.path() != "/" {
        return Err((
            format!("a gRPC endpoint has no path (found {})", url.path()),
            "write only the scheme, host and port, for example http://127.0.0.1:4317",
        ));
    }
    Ok(())
}

/// The URL as it may be shown: user and password replaced.
fn without_credentials(ep: &str) -> String {
    match url::Url::parse(ep.trim()) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_password(None);
            let _ = url.set_username("redacted");
            url.to_string()
        }
        _ => ep.to_owned(),
    }
}

struct Checker<'a> {
    problems: &'a mut Vec<Problem>,
    cwd: &'a Path,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, value: &str, what: &str, fix: &str) {
        self.problems
            .push(Problem::new(key, Some(value.to_owned()), what, fix));
    }

    /// Whether none of `keys` has a problem so far. A relation between two
    /// values is checked only when both were usable: a value that failed to
    /// parse stands in as a placeholder, and comparing it would report a
    /// second, misleading problem.
    fn usable(&self, keys: &[&str]) -> bool {
        !self.problems.iter().any(|p| keys.contains(&p.key.as_str()))
    }

    fn one_of(&mut self, key: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            self.problem(
                key,
                value,
                "not an allowed value",
                &format!("use one of: {}", allowed.join(", ")),
            );
        }
    }

    /// A size in bytes: a number, or a number with a unit (K, M, G, T with
    /// an optional `iB`/`B`; all binary: 1M = 1MiB = 1048576 bytes).
    fn size(&mut self, key: &str, value: &str) -> Option<u64> {
        match parse_size(value) {
            Some(n) => Some(n),
            None => {
                self.problem(
                    key,
                    value,
                    "not a size",
                    "write a number of bytes or a number with a unit, for example 512MiB or 4GiB",
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, value: &str, min: Duration, max: Duration) -> Duration {
        match humantime::parse_duration(value.trim()) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                self.problem(
                    key,
                    value,
                    &format!("out of range {} to {}", short(min), short(max)),
                    "pick a value inside that range",
                );
                min
            }
            Err(e) => {
                self.problem(
                    key,
                    value,
                    &format!("not a duration ({e})"),
                    "write a number with a unit, for example 250ms, 5s, 36h or 7d",
                );
                min
            }
        }
    }

    /// Checks a filesystem path: no NUL, no `..`. Relative paths are allowed
    /// only where `relative_ok` and are made absolute against the working dir.
    fn path(&mut self, key: &str, value: &str, relative_ok: bool) -> Option<PathBuf> {
        if value.is_empty() {
            self.problem(key, value, "empty path", "write an absolute path");
            return None;
        }
        if value.contains('\0') {
            self.problems.push(Problem::new(
                key,
                Some(value.replace('\0', "\\0")),
                "path contains a NUL byte",
                "remove it",
            ));
            return None;
        }
        let p = Path::new(value);
        if p.components().any(|c| c == Component::ParentDir) {
            self.problem(
                key,
                value,
                "path contains '..'",
                "write the path without '..' components",
            );
            return None;
        }
        if p.is_absolute() {
            return Some(normalize(p));
        }
        if relative_ok {
            return Some(normalize(&self.cwd.join(p)));
        }
        self.problem(
            key,
            value,
            "relative path",
            "write an absolute path, starting with /",
        );
        None
    }

    fn endpoint(&mut self, key: &str, value: &str) -> Option<Endpoint> {
        let v = value.trim();
        let unix = v
            .strip_prefix("unix://")
            .or_else(|| v.strip_prefix("unix:"));
        if let Some(path) = unix {
            if !path.starts_with('/') {
                self.problem(
                    key,
                    value,
                    "relative socket path",
                    "write an absolute path, for example unix:/run/php/php-fpm.sock",
                );
                return None;
            }
            return self.path(key, path, false).map(Endpoint::Unix);
        }
        if v.starts_with('/') {
            return self.path(key, v, false).map(Endpoint::Unix);
        }
        let tcp = v.strip_prefix("tcp://").unwrap_or(v);
        let ok = match tcp.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
                    && !host.contains('/')
                    && host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            }
            None => false,
        };
        if ok {
            Some(Endpoint::Tcp(tcp.to_owned()))
        } else {
            self.problem(
                key,
                value,
                "not a FastCGI address",
                "write unix:/path/to/php-fpm.sock, /path/to/php-fpm.sock or 127.0.0.1:9000",
            );
            None
        }
    }

    fn url_path(&mut self, key: &str, value: &str) {
        if !value.starts_with('/')
            || value.contains(|c: char| c.is_whitespace() || c == '?' || c == '"' || c == '\0')
        {
            self.problem(
                key,
                value,
                "not a URL path",
                "write a path starting with / and without spaces or '?', for example /status",
            );
        }
    }

    fn pool(&mut self, i: usize, rp: &RawPool, runtime_dir: &Path, pct: Duration) -> Option<Pool> {
        let k = |field: &str| format!("pools[{i}].{field}");
        let name = match PoolName::new(&rp.name) {
            Ok(n) => Some(n),
            Err(e) => {
                let fix = if rp.name.is_empty() {
                    "add `name: www` (letters, digits, '_' and '-')"
                } else {
                    "use only letters, digits, '_' and '-' (it becomes a file name)"
                };
                self.problem(&k("name"), &rp.name, &e.to_string(), fix);
                None
            }
        };
        self.url_path(&k("fastcgi_status_path"), &rp.fastcgi_status_path);
        self.url_path(&k("ping_path"), &rp.ping_path);
        if rp.max_workers == 0 || rp.max_workers > 10_000 {
            self.problem(
                &k("max_workers"),
                &rp.max_workers.to_string(),
                "must be between 1 and 10000",
                "set pm.max_children for this pool, for example 10",
            );
        }
        let max = rp.max_workers.max(1);
        let scaling_max = rp.scaling.max_workers.unwrap_or(max);
        if rp.scaling.min_workers > scaling_max {
            self.problem(
                &k("scaling.min_workers"),
                &rp.scaling.min_workers.to_string(),
                &format!("is above scaling.max_workers ({scaling_max})"),
                "make min_workers <= max_workers",
            );
        }
        if scaling_max > max {
            self.problem(
                &k("scaling.max_workers"),
                &scaling_max.to_string(),
                &format!("is above the pool's max_workers ({max})"),
                "raise max_workers or lower scaling.max_workers",
            );
        }
        let tu = rp.scaling.target_utilization;
        if !(tu > 0.0 && tu <= 1.0) {
            self.problem(
                &k("scaling.target_utilization"),
                &tu.to_string(),
                "must be above 0 and at most 1",
                "a common choice is 0.7",
            );
        }
        let weight = rp.scaling.weight;
        if !(weight.is_finite() && weight > 0.0 && weight <= 1000.0) {
            self.problem(
                &k("scaling.weight"),
                &weight.to_string(),
                "must be above 0 and at most 1000",
                "1 gives every pool the same share",
            );
        }
        let pin = rp.scaling.pin;
        if let Some(n) = pin {
            if n < rp.scaling.min_workers.max(1) || n > scaling_max {
                self.problem(
                    &k("scaling.pin"),
                    &n.to_string(),
                    &format!(
                        "is outside scaling.min_workers..max_workers ({}..{scaling_max})",
                        rp.scaling.min_workers.max(1)
                    ),
                    "pin within the pool's limits, or change the limits",
                );
            }
            if !rp.supervise {
                self.problem(
                    &k("scaling.pin"),
                    &n.to_string(),
                    "an observed pool cannot be pinned: the manager does not run it",
                    "remove the pin, or let the manager supervise the pool",
                );
            }
        }
        let pin_until = rp.scaling.pin_until.as_deref().and_then(|t| {
            match humantime::parse_rfc3339_weak(t.trim()) {
                Ok(at) => Some(at),
                Err(e) => {
                    self.problem(
                        &k("scaling.pin_until"),
                        t,
                        &format!("not a time ({e})"),
                        "write an RFC 3339 time such as 2026-12-24T08:00:00Z",
                    );
                    None
                }
            }
        });
        if pin_until.is_some() && pin.is_none() {
            self.problems.push(Problem::new(
                &k("scaling.pin_until"),
                rp.scaling.pin_until.clone(),
                "has no scaling.pin to end",
                "add scaling.pin, or remove pin_until",
            ));
        }
        let connect_timeout = self.duration(
            &k("timeouts.connect"),
            &rp.timeouts.connect,
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
        let request_timeout = self.duration(
            &k("timeouts.request"),
            &rp.timeouts.request,
            Duration::from_millis(1),
            Duration::from_secs(300),
        );
        if connect_timeout > request_timeout
            && self.usable(&[&k("timeouts.connect"), &k("timeouts.request")])
        {
            self.problem(
                &k("timeouts.connect"),
                &rp.timeouts.connect,
                "is longer than timeouts.request, which includes the connect",
                "make timeouts.connect <= timeouts.request",
            );
        }
        if let Some(p) = &rp.config_path {
            self.path(&k("config_path"), p, false);
        }

        let pm = match rp.pm.as_str() {
            "static" => PmMode::Static,
            "dynamic" => PmMode::Dynamic,
            "ondemand" => PmMode::Ondemand,
            other => {
                self.problem(
                    &k("pm"),
                    other,
                    "unknown process manager",
                    "use static, dynamic or ondemand",
                );
                PmMode::Dynamic
            }
        };

        let name = name?;
        let sockets = runtime_dir.join("sockets");
        let (endpoint, status_endpoint) = if rp.supervise {
            let ep = match &rp.fastcgi_endpoint {
                Some(e) => self.endpoint(&k("fastcgi_endpoint"), e),
                None => Some(Endpoint::Unix(sockets.join(format!("{name}.sock")))),
            };
            let st = match &rp.status_endpoint {
                Some(e) => self.endpoint(&k("status_endpoint"), e),
                None => Some(Endpoint::Unix(sockets.join(format!("{name}.status.sock")))),
            };
            (ep, st)
        } else {
            let ep = match &rp.fastcgi_endpoint {
                Some(e) => self.endpoint(&k("fastcgi_endpoint"), e),
                None => {
                    self.problems.push(Problem::new(
                        &k("fastcgi_endpoint"),
                        None,
                        "an observed pool (supervise: false) needs an address",
                        "set fastcgi_endpoint to the pool's listen address, for example unix:/run/php/php8.2-fpm.sock",
                    ));
                    None
                }
            };
            let st = match &rp.status_endpoint {
                Some(e) => self.endpoint(&k("status_endpoint"), e),
                None => ep.clone(),
            };
            (ep, st)
        };

        let spec = if rp.supervise {
            self.spec(
                i,
                rp,
                &name,
                pm,
                endpoint.as_ref(),
                status_endpoint.as_ref(),
                pct,
            )
        } else {
            None
        };
        if rp.supervise && spec.is_none() {
            return None;
        }
        Some(Pool {
            name,
            spec,
            endpoint: endpoint?,
            status_endpoint: status_endpoint?,
            status_path: rp.fastcgi_status_path.clone(),
            ping_path: rp.ping_path.clone(),
            ping_response: rp.ping_response.clone(),
            max_workers: max,
            scaling: Scaling {
                enabled: rp.scaling.enabled,
                min_workers: rp.scaling.min_workers,
                max_workers: scaling_max,
                target_utilization: tu,
                weight: rp.scaling.weight,
                priority: rp.scaling.priority,
                pin: pin.map(|n| (n, pin_until)),
                paused: rp.scaling.paused,
            },
            connect_timeout,
            request_timeout,
            max_reply_bytes: crate::fastcgi::DEFAULT_MAX_REPLY_BYTES,
            listen_group: rp.listen_group.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn spec(
        &mut self,
        i: usize,
        rp: &RawPool,
        name: &PoolName,
        pm: PmMode,
        endpoint: Option<&Endpoint>,
        status: Option<&Endpoint>,
        _pct: Duration,
    ) -> Option<PoolSpec> {
        let k = |field: &str| format!("pools[{i}].{field}");
        let max = rp.max_workers.max(1);
        // php-fpm's own rule of thumb for dynamic pools.
        let min_spare = rp.min_spare_workers.unwrap_or(1.max(max / 4));
        let max_spare = rp
            .max_spare_workers
            .unwrap_or(min_spare.max(max / 2).min(max));
        let start = rp
            .start_workers
            .unwrap_or(min_spare + (max_spare - min_spare.min(max_spare)) / 2);
        if pm == PmMode::Dynamic {
            if min_spare == 0 {
                self.problem(
                    &k("min_spare_workers"),
                    "0",
                    "a dynamic pool needs at least 1 spare worker",
                    "set it to 1 or more",
                );
            }
            if min_spare > max_spare {
                self.problem(
                    &k("min_spare_workers"),
                    &min_spare.to_string(),
                    &format!("is above max_spare_workers ({max_spare})"),
                    "make min_spare_workers <= max_spare_workers",
                );
            }
            if max_spare > max {
                self.problem(
                    &k("max_spare_workers"),
                    &max_spare.to_string(),
                    &format!("is above max_workers ({max})"),
                    "make max_spare_workers <= max_workers",
                );
            }
            if start < min_spare || start > max_spare {
                self.problem(
                    &k("start_workers"),
                    &start.to_string(),
                    &format!("must be between min_spare_workers ({min_spare}) and max_spare_workers ({max_spare})"),
                    "php-fpm refuses to start otherwise",
                );
            }
        }
        let idle = self.duration(
            &k("process_idle_timeout"),
            &rp.process_idle_timeout,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
        let terminate = match rp.request_terminate_timeout.as_str() {
            "0" | "0s" => Duration::ZERO,
            v => self.duration(
                &k("request_terminate_timeout"),
                v,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            ),
        };
        let mode_ok = rp.listen_mode.len() == 4
            && rp.listen_mode.starts_with('0')
            && rp.listen_mode.chars().all(|c| ('0'..='7').contains(&c));
        if !mode_ok {
            self.problem(
                &k("listen_mode"),
                &rp.listen_mode,
                "not an octal file mode",
                "write four octal digits, for example 0660",
            );
        }
        for (field, v) in [
            ("user", &rp.user),
            ("group", &rp.group),
            ("listen_group", &rp.listen_group),
        ] {
            if let Some(v) = v {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    self.problem(
                        &k(field),
                        v,
                        "not a valid user or group name",
                        "use a system account name such as www-data",
                    );
                }
            }
        }
        let chdir = rp
            .chdir
            .as_deref()
            .and_then(|p| self.path(&k("chdir"), p, false));
        for key in rp.extra_settings.keys() {
            if let Some(own) = managed_directive(key) {
                self.problem(
                    &format!("{}.{key}", k("extra_settings")),
                    key,
                    "is a directive the manager writes itself",
                    &format!("use the pool key `{own}` instead"),
                );
            }
        }
        for (field, map) in [
            ("php_values", &rp.php_values),
            ("php_admin_values", &rp.php_admin_values),
            ("extra_settings", &rp.extra_settings),
            ("env", &rp.env),
        ] {
            for (key, value) in map.iter() {
                let key_ok = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                if !key_ok {
                    self.problem(
                        &format!("{}.{key}", k(field)),
                        key,
                        "not a valid ini key",
                        "use letters, digits, '_' and '.'",
                    );
                }
                if value.contains(['\n', '\r', '"', '\0']) {
                    // env values may be secrets: never echo them back.
                    let shown = if field == "env" { "<redacted>" } else { value };
                    self.problem(
                        &format!("{}.{key}", k(field)),
                        shown,
                        "contains a newline, '\"' or NUL, which php-fpm's ini format cannot hold",
                        "remove those characters",
                    );
                }
            }
        }
        let addr = |e: &Endpoint| match e {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp(a) => a.clone(),
        };
        Some(PoolSpec {
            name: name.clone(),
            listen: addr(endpoint?),
            status_listen: Some(addr(status?)),
            status_path: rp.fastcgi_status_path.clone(),
            ping_path: rp.ping_path.clone(),
            ping_response: rp.ping_response.clone(),
            user: rp.user.clone(),
            group: rp.group.clone(),
            listen_mode: rp.listen_mode.clone(),
            pm,
            max_children: max,
            start_servers: start,
            min_spare_servers: min_spare,
            max_spare_servers: max_spare,
            max_requests: rp.max_requests,
            process_idle_timeout_secs: idle.as_secs().max(1),
            request_terminate_timeout_secs: terminate.as_secs(),
            chdir,
            php_values: rp.php_values.clone().into_iter().collect(),
            php_admin_values: rp.php_admin_values.clone().into_iter().collect(),
            extra: rp.extra_settings.clone().into_iter().collect(),
            env: rp.env.clone().into_iter().collect(),
        })
    }
}

/// Pool directives the manager writes from its own keys; returns that key.
fn managed_directive(directive: &str) -> Option<&'static str> {
    let d = directive.to_ascii_lowercase();
    let own = match d.as_str() {
        "listen" => "fastcgi_endpoint",
        "listen.mode" => "listen_mode",
        "listen.group" => "listen_group",
        "user" => "user",
        "group" => "group",
        "pm" => "pm",
        "pm.max_children" => "max_workers",
        "pm.start_servers" => "start_workers",
        "pm.min_spare_servers" => "min_spare_workers",
        "pm.max_spare_servers" => "max_spare_workers",
        "pm.max_requests" => "max_requests",
        "pm.process_idle_timeout" => "process_idle_timeout",
        "pm.status_path" => "fastcgi_status_path",
        "pm.status_listen" => "status_endpoint",
        "ping.path" => "ping_path",
        "ping.response" => "ping_response",
        "request_terminate_timeout" => "request_terminate_timeout",
        "chdir" => "chdir",
        "catch_workers_output" | "decorate_workers_output" => {
            "(managed: worker output goes to the manager's log)"
        }
        _ if d.starts_with("php_value[") => "php_values",
        _ if d.starts_with("php_admin_value[") => "php_admin_values",
        _ if d.starts_with("env[") => "env",
        _ if d.starts_with("php_flag[") => "php_values",
        _ if d.starts_with("php_admin_flag[") => "php_admin_values",
        _ => return None,
    };
    Some(own)
}

/// `90d`, `36h`, `250ms`: the largest unit that divides the duration exactly.
/// (humantime would print 365 days as months and hours.)
pub(crate) fn short(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Removes `.` components without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

/// Parses `512MiB`, `4G`, `1.5GiB`, `1048576`: binary units, case-insensitive.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let bytes = value * factor as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("960MiB"), Some(960 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("512 mb"), Some(512 << 20));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("-1G"), None);
    }
}
