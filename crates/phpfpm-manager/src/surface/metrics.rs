//! Prometheus `/metrics`: the de-facto php-fpm exporter's series, unchanged in
//! name and labels, plus the manager's own `phpfpm_manager_*` series.
//!
//! Exporter compatibility: dashboards and alerts query `phpfpm_accepted_connections`
//! (no `_total`), labelled `pool` and `scrape_uri`. Typing those cumulative
//! series as `counter` would make `promtool check metrics` reject them for the
//! missing suffix, and renaming them would break every existing query. They
//! are exported with TYPE `gauge`: PromQL ignores the declared type, so
//! `rate()` and `increase()` work on them exactly as before, and promtool
//! accepts them. (`untyped` would say it more precisely, but the `prometheus`
//! crate has deprecated it.) The manager's own counters are proper counters
//! with `_total`.
//!
//! Pool series are built at scrape time from the shared state, so a pool that
//! shrinks loses its per-process series at once and nothing is ever counted
//! twice. The manager's own counters and histograms live in a `Registry`.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use fpm_kernel::budget::Budget;

use crate::state::PoolState;
use crate::surface::names;

/// The manager's own metrics that are updated as events happen.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub scrape_duration: HistogramVec,
    pub scrape_errors: IntCounterVec,
    /// Values left out of pool status pages (the page itself was used).
    pub status_fields_dropped: IntCounterVec,
    pub master_restarts: IntCounterVec,
    pub events: IntCounterVec,
    pub events_dropped: IntCounter,
    pub scale_changes: IntCounterVec,
    /// Configuration reloads (SIGHUP) refused.
    pub config_reload_failures: IntCounter,
    /// 1 when the last reload was applied (or none was asked for), 0 when
    /// it was refused.
    pub config_last_reload_success: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let scrape_duration = HistogramVec::new(
            HistogramOpts::new(
                "phpfpm_manager_scrape_duration_seconds",
                "Time taken by one collection of a pool (status page and ping).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["pool"],
        )
        .expect("static histogram options are valid");
        let scrape_errors = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_scrape_errors_total",
                "Failed collections by pool and kind of failure.",
            ),
            &["pool", "kind"],
        )
        .expect("static counter options are valid");
        let status_fields_dropped = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_status_fields_dropped_total",
                "Values of a pool's status page that were unusable (negative, out of range, wrong type) and left out; field is php-fpm's key, processes.<key> for a worker's.",
            ),
            &["pool", "field", "reason"],
        )
        .expect("static counter options are valid");
        let master_restarts = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_master_restarts_total",
                "Unexpected exits of a supervised php-fpm master that led to a restart.",
            ),
            &["pool"],
        )
        .expect("static counter options are valid");
        let events = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_events_total",
                "Events recorded, by pool and kind (saturation_begin, master_crash, ...).",
            ),
            &["pool", "kind"],
        )
        .expect("static counter options are valid");
        let events_dropped = IntCounter::new(
            "phpfpm_manager_events_dropped_total",
            "Events dropped because the event channel was full.",
        )
        .expect("static counter options are valid");
        let scale_changes = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_autoscaler_changes_total",
                "Caps the autoscaler applied to a pool, by the rule that decided them.",
            ),
            &["pool", "rule"],
        )
        .expect("static counter options are valid");
        let config_reload_failures = IntCounter::new(
            "phpfpm_manager_config_reload_failures_total",
            "Configuration reloads (SIGHUP) refused because the new configuration is invalid; nothing was changed.",
        )
        .expect("static counter options are valid");
        let config_last_reload_success = IntGauge::new(
            "phpfpm_manager_config_last_reload_success",
            "Whether the last configuration reload was applied (1; also before any reload) or refused (0).",
        )
        .expect("static gauge options are valid");
        config_last_reload_success.set(1);
        for c in [
            Box::new(scale_changes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_reload_failures.clone()),
            Box::new(config_last_reload_success.clone()),
            Box::new(scrape_duration.clone()),
            Box::new(scrape_errors.clone()),
            Box::new(status_fields_dropped.clone()),
            Box::new(master_restarts.clone()),
            Box::new(events.clone()),
            Box::new(events_dropped.clone()),
        ] {
            registry
                .register(c)
                .expect("each metric is registered once with a unique name");
        }
        Metrics {
            registry,
            scrape_duration,
            scrape_errors,
            status_fields_dropped,
            master_restarts,
            events,
            events_dropped,
            scale_changes,
            config_reload_failures,
            config_last_reload_success,
        }
    }

    /// Adds a series kept elsewhere (the HTTP server's own) to `/metrics`.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    /// Renders everything in the classic text format (version 0.0.4).
    pub fn render(
        &self,
        pools: &[&PoolState],
        per_process: Option<usize>,
        host: Option<&Result<Budget, String>>,
        storage: Option<&fpm_storage::WriterStatus>,
    ) -> String {
        let mut families = self.registry.gather();
        families.extend(pool_families(pools, per_process));
        families.extend(host_families(host));
        families.extend(storage_families(storage));
        let ok: Vec<(&str, &crate::opcache::OpcacheStats)> = pools
            .iter()
            .filter_map(|p| match &p.opcache {
                Some(Ok(s)) => Some((p.name.as_str(), s)),
                _ => None,
            })
            .collect();
        let bad: Vec<(&str, &crate::opcache::OpcacheError)> = pools
            .iter()
            .filter_map(|p| match &p.opcache {
                Some(Err(e)) => Some((p.name.as_str(), e.as_ref())),
                _ => None,
            })
            .collect();
        families.extend(crate::opcache::families_with_unavailable(&ok, &bad));
        families.push(build_info());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on an invalid family, which the
        // builders above never produce; an empty page is the safe fallback.
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            out.clear();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The storage writer's figures: what was written, dropped and failed.
pub fn storage_families(st: Option<&fpm_storage::WriterStatus>) -> Vec<MetricFamily> {
    let Some(st) = st else { return Vec::new() };
    use MetricType::{COUNTER, GAUGE};
    let mut out = Vec::new();
    for (name, help, kind, v) in [
        (
            "phpfpm_manager_storage_samples_written_total",
            "Samples committed to the history database.",
            COUNTER,
            st.samples_written as f64,
        ),
        (
            "phpfpm_manager_storage_events_written_total",
            "Events committed to the history database.",
            COUNTER,
            st.events_written as f64,
        ),
        (
            "phpfpm_manager_storage_write_errors_total",
            "Failed flushes or maintenance steps (disk full, I/O errors).",
            COUNTER,
            st.write_errors as f64,
        ),
        (
            "phpfpm_manager_storage_events_dropped_total",
            "Events dropped because the writer's queue was full.",
            COUNTER,
            st.events_dropped as f64,
        ),
        (
            "phpfpm_manager_storage_failing",
            "1 while the last write to the history database failed.",
            GAUGE,
            if st.failing { 1.0 } else { 0.0 },
        ),
        (
            "phpfpm_manager_storage_pending_samples",
            "Samples received and not yet committed.",
            GAUGE,
            st.pending as f64,
        ),
    ] {
        let mut f = Family::new(name, help, kind);
        f.push(&[], v);
        out.push(f.done());
    }
    let mut dropped = Family::new(
        "phpfpm_manager_storage_samples_dropped_total",
        "Samples not stored, by reason: channel full, backlog overflow while the database could not be written, rejected (not finite, too old, in the future).",
        COUNTER,
    );
    for (reason, v) in [
        ("channel_full", st.channel_dropped),
        ("overflow", st.overflow_dropped),
        ("rejected", st.rejected),
    ] {
        dropped.push(&[("reason", reason)], v as f64);
    }
    out.push(dropped.done());
    out
}

/// The host's memory and CPU budget (cgroup v2/v1, else /proc/meminfo).
pub fn host_families(host: Option<&Result<Budget, String>>) -> Vec<MetricFamily> {
    let Some(Ok(b)) = host else {
        let mut f = Family::new(
            "phpfpm_manager_host_budget_available",
            "Whether the host's memory and CPU budget could be read (1) or not (0).",
            MetricType::GAUGE,
        );
        if host.is_some() {
            f.push(&[], 0.0);
        }
        return vec![f.done()]
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect();
    };
    let mut out = Vec::new();
    let items: [(&str, &str, Option<f64>); 9] = [
        (
            "phpfpm_manager_host_memory_limit_bytes",
            "Hard memory limit of the manager's cgroup (memory.max), absent when unlimited.",
            b.memory_limit.map(|v| v as f64),
        ),
        (
            "phpfpm_manager_host_memory_high_bytes",
            "Throttling threshold of the manager's cgroup (memory.high), absent when unlimited.",
            b.memory_high.map(|v| v as f64),
        ),
        (
            "phpfpm_manager_host_memory_current_bytes",
            "Memory used by the manager's cgroup.",
            b.memory_current.map(|v| v as f64),
        ),
        (
            "phpfpm_manager_host_memory_total_bytes",
            "MemTotal from /proc/meminfo.",
            b.mem_total.map(|v| v as f64),
        ),
        (
            "phpfpm_manager_host_memory_available_bytes",
            "MemAvailable from /proc/meminfo.",
            b.mem_available.map(|v| v as f64),
        ),
        (
            "phpfpm_manager_host_cpu_quota_cores",
            "CPU quota of the manager's cgroup in cores, absent when unlimited.",
            b.cpu_quota_cores,
        ),
        (
            "phpfpm_manager_host_cpus",
            "CPUs the manager may run on (affinity).",
            Some(f64::from(b.cpus)),
        ),
        (
            "phpfpm_manager_host_load1",
            "1-minute load average.",
            Some(b.loadavg[0]),
        ),
        (
            "phpfpm_manager_host_load5",
            "5-minute load average.",
            Some(b.loadavg[1]),
        ),
    ];
    for (name, help, v) in items {
        if let Some(v) = v {
            let mut f = Family::new(name, help, MetricType::GAUGE);
            f.push(&[], v);
            out.push(f.done());
        }
    }
    let mut avail = Family::new(
        "phpfpm_manager_host_budget_available",
        "Whether the host's memory and CPU budget could be read (1) or not (0).",
        MetricType::GAUGE,
    );
    avail.push(&[], 1.0);
    out.push(avail.done());
    out
}

fn build_info() -> MetricFamily {
    let mut f = Family::new(
        "phpfpm_manager_build_info",
        "Version of the running phpfpm-manager; always 1.",
        MetricType::GAUGE,
    );
    f.push(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    f.done()
}

/// A metric family under construction (gauge or counter samples). Shared
/// by every module that renders series from state at scrape time.
pub(crate) struct Family {
    family: MetricFamily,
}

impl Family {
    pub(crate) fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Family { family }
    }

    pub(crate) fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_owned());
                    l.set_value((*v).to_owned());
                    l
                })
                .collect(),
        );
        if self.family.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.family.mut_metric().push(m);
    }

    pub(crate) fn done(self) -> MetricFamily {
        self.family
    }
}

/// The series of a pool that is down (`phpfpm_up 0`): besides `up` and the
/// failure counter, only gauges that describe the failure itself. Every
/// other figure would be a reading from an earlier look, shown as current.
const WHILE_DOWN: &[&str] = &[
    "phpfpm_manager_pool_failed",
    "phpfpm_manager_circuit_open",
    "phpfpm_manager_master_stalled",
];

/// How many workers of each pool get per-process series when all pools
/// together may have at most `cap`: every pool gets an equal share, and
/// what a small pool leaves is shared by the larger ones. `counts` are the
/// pools' workers; the result has the same order.
pub fn process_series_shares(counts: &[usize], cap: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| counts[i]);
    let mut shares = vec![0; counts.len()];
    let mut left = cap;
    for (done, &i) in order.iter().enumerate() {
        let fair = left / (counts.len() - done);
        shares[i] = counts[i].min(fair);
        left -= shares[i];
    }
    shares
}

/// The exporter-compatible pool series and the manager's per-pool gauges.
/// Pure: built from the state passed in. `per_process`: export the
/// `phpfpm_process_*` series for at most this many workers in all (each
/// worker is five series); the workers left out are counted in
/// `phpfpm_manager_process_series_omitted`.
pub fn pool_families(pools: &[&PoolState], per_process: Option<usize>) -> Vec<MetricFamily> {
    use MetricType::GAUGE;
    // Cumulative exporter series; see the module docs for why not `counter`.
    const CUMULATIVE: MetricType = MetricType::GAUGE;
    let mut up = Family::new(
        names::UP,
        "Whether the last collection of the pool's status page succeeded (1) or not (0).",
        GAUGE,
    );
    let mut failures = Family::new(
        "phpfpm_scrape_failures",
        "Failed collections of the pool's status page since the manager started.",
        CUMULATIVE,
    );
    // (name, help, type, getter) for the pool-level figures of the status page.
    type Get = fn(&PoolState) -> Option<f64>;
    let pool_series: &[(&str, &str, MetricType, Get)] = &[
        ("phpfpm_start_since", "Seconds since the pool's php-fpm master (re)started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.start_since as f64)),
        (names::ACCEPTED_CONNECTIONS, "Requests accepted by the pool since its master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.accepted_conn as f64)),
        (names::LISTEN_QUEUE, "Connections waiting for a worker, as php-fpm reports it (always 0 on unix sockets; see phpfpm_manager_accept_queue).", GAUGE, |s| s.status.as_ref().map(|st| st.listen_queue as f64)),
        ("phpfpm_max_listen_queue", "Highest listen queue php-fpm saw since its master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.max_listen_queue as f64)),
        ("phpfpm_listen_queue_length", "Size of the pool's listen backlog as php-fpm reports it.", GAUGE, |s| s.status.as_ref().map(|st| st.listen_queue_len as f64)),
        (names::IDLE_PROCESSES, "Idle workers, counted from the process list (the collector's own request excluded).", GAUGE, |s| s.status.as_ref().map(|_| s.derived.idle as f64)),
        (names::ACTIVE_PROCESSES, "Busy workers, counted from the process list (the collector's own request excluded).", GAUGE, |s| s.status.as_ref().map(|_| s.derived.active as f64)),
        (names::TOTAL_PROCESSES, "Workers of the pool, counted from the process list.", GAUGE, |s| s.status.as_ref().map(|_| s.derived.total as f64)),
        ("phpfpm_max_active_processes", "Highest number of busy workers since the pool's master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.max_active_processes as f64)),
        (names::MAX_CHILDREN_REACHED, "Times the pool hit pm.max_children since its master started (dynamic and ondemand only).", CUMULATIVE, |s| s.status.as_ref().map(|st| st.max_children_reached as f64)),
        (names::SLOW_REQUESTS, "Requests slower than request_slowlog_timeout since the pool's master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.slow_requests as f64)),
        ("phpfpm_manager_ping_up", "Whether the pool answered its ping path (1) or not (0).", GAUGE, |s| Some(if s.ping_ok { 1.0 } else { 0.0 })),
        ("phpfpm_manager_last_success_timestamp_seconds", "Unix time of the last successful collection of the pool.", GAUGE, |s| s.last_success.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64())),
        ("phpfpm_manager_master_up", "Whether the manager's php-fpm master for this pool is running (supervised pools).", GAUGE, |s| s.master.supervised.then_some(if s.master.running { 1.0 } else { 0.0 })),
        ("phpfpm_manager_pool_failed", "1 when the manager cannot run this pool (for example its config fails php-fpm -t).", GAUGE, |s| s.master.supervised.then_some(if s.master.failed.is_some() { 1.0 } else { 0.0 })),
        (names::PM_MAX_CHILDREN, "pm.max_children the pool's master runs with (supervised pools).", GAUGE, |s| s.running_spec().map(|p| f64::from(p.max_children))),
        ("phpfpm_manager_pm_start_servers", "pm.start_servers the pool's master runs with (supervised pools).", GAUGE, |s| s.running_spec().map(|p| f64::from(p.start_servers))),
        ("phpfpm_manager_pm_min_spare_servers", "pm.min_spare_servers the pool's master runs with (supervised pools).", GAUGE, |s| s.running_spec().map(|p| f64::from(p.min_spare_servers))),
        ("phpfpm_manager_pm_max_spare_servers", "pm.max_spare_servers the pool's master runs with (supervised pools).", GAUGE, |s| s.running_spec().map(|p| f64::from(p.max_spare_servers))),
        ("phpfpm_manager_pm_max_requests", "pm.max_requests the pool's master runs with (supervised pools).", GAUGE, |s| s.running_spec().map(|p| f64::from(p.max_requests))),
        ("phpfpm_manager_autoscaler_recommended_workers", "Workers the autoscaler's model says the pool's traffic needs now, with headroom.", GAUGE, |s| s.control.scaling.as_ref().and_then(|a| a.recommended_workers.map(f64::from))),
        ("phpfpm_manager_autoscaler_applied_workers", "pm.max_children the pool's master runs with (the cap the autoscaler or a pin set).", GAUGE, |s| s.control.scaling.as_ref().and_then(|a| a.applied_workers.map(f64::from))),
        ("phpfpm_manager_autoscaler_planned_workers", "The cap the pool's share of the memory budget gives it now.", GAUGE, |s| s.control.scaling.as_ref().and_then(|a| a.planned_cap.map(f64::from))),
        ("phpfpm_manager_autoscaler_confidence", "Confidence of the autoscaler's model of the pool, 0 to 1 (learning until it is high enough).", GAUGE, |s| s.control.scaling.as_ref().map(|a| a.confidence)),
        ("phpfpm_manager_autoscaler_learning", "1 while the autoscaler is still learning the pool.", GAUGE, |s| s.control.scaling.as_ref().map(|a| if a.phase == "learning" { 1.0 } else { 0.0 })),
        ("phpfpm_manager_autoscaler_pinned", "1 while an operator pins the pool's size.", GAUGE, |s| s.control.scaling.as_ref().map(|a| if a.override_.name() == "pinned" { 1.0 } else { 0.0 })),
        ("phpfpm_manager_autoscaler_paused", "1 while an operator pauses the pool's autoscaler.", GAUGE, |s| s.control.scaling.as_ref().map(|a| if a.override_.name() == "paused" { 1.0 } else { 0.0 })),
        ("phpfpm_manager_autoscaler_last_change_timestamp_seconds", "Unix time of the autoscaler's last change of the pool's cap.", GAUGE, |s| s.control.scaling.as_ref().and_then(|a| a.last_change).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64())),
        ("phpfpm_manager_memory_budget_bytes", "Memory for all autoscaled pools' workers (scaling.memory_budget).", GAUGE, |s| s.control.scaling.as_ref().and_then(|a| a.memory_budget_bytes.map(|b| b as f64))),
        (names::ACCEPT_QUEUE, "Connections waiting in the kernel's accept queue of the pool's socket (sock_diag; works when every worker is busy and on unix sockets, unlike phpfpm_listen_queue).", GAUGE, |s| s.kernel.accept_queue.as_ref().ok().map(|(n, _)| f64::from(*n))),
        ("phpfpm_manager_accept_queue_limit", "Backlog limit of the pool's listening socket, from the kernel.", GAUGE, |s| s.kernel.accept_queue.as_ref().ok().and_then(|(_, l)| l.map(f64::from))),
        ("phpfpm_manager_collect_interval_seconds", "The collector's current (adaptive) interval for the pool.", GAUGE, |s| (!s.interval.is_zero()).then_some(s.interval.as_secs_f64())),
        ("phpfpm_manager_circuit_open", "1 while the pool's circuit breaker is open (collections paused after repeated failures).", GAUGE, |s| Some(if s.circuit_open { 1.0 } else { 0.0 })),
        ("phpfpm_manager_master_stalled", "1 while the pool's php-fpm master makes no progress (stopped by a signal, or accepting nothing while connections wait); the pool is then not ready.", GAUGE, |s| Some(if s.stalled.is_some() { 1.0 } else { 0.0 })),
        (names::WORKER_CPU_PERCENT, "CPU used by the pool's workers, percent of one core, over the last interval.", GAUGE, |s| s.kernel.workers.as_ref().ok().and_then(|a| a.cpu_percent_total)),
        ("phpfpm_manager_master_cpu_percent", "CPU used by the pool's master process, percent of one core.", GAUGE, |s| s.kernel.workers.as_ref().ok().and_then(|a| a.master_cpu_percent)),
        ("phpfpm_manager_workers_sampled", "Workers found by process ancestry and read from /proc.", GAUGE, |s| s.kernel.workers.as_ref().ok().map(|a| a.workers as f64)),
        ("phpfpm_manager_master_pss_bytes", "Proportional set size of the pool's master process.", GAUGE, |s| s.kernel.workers.as_ref().ok().and_then(|a| a.master_memory.as_ref()).map(|m| m.pss as f64)),
        (names::POOL_PSS_BYTES, "Proportional set size of the master and all workers: what the pool really costs (shared OPcache memory counted once).", GAUGE, |s| s.kernel.workers.as_ref().ok().and_then(|a| a.total_pss).map(|v| v as f64)),
    ];
    let mut families: Vec<Family> = pool_series
        .iter()
        .map(|(name, help, kind, _)| Family::new(name, help, *kind))
        .collect();
    let mut reported = Family::new(
        "phpfpm_manager_fpm_reported_processes",
        "Worker counts exactly as php-fpm's status page printed them (can include the collector's own request).",
        GAUGE,
    );
    let mut kernel_ok = Family::new(
        "phpfpm_manager_kernel_available",
        "Whether a kernel reading of the pool works here (1) or not (0); the API says why not.",
        GAUGE,
    );
    let mut pss = Family::new(
        names::WORKER_PSS_BYTES,
        "Proportional set size of the pool's workers: sum, p50, p95 and max over workers.",
        GAUGE,
    );
    let mut rss = Family::new(
        "phpfpm_manager_worker_rss_bytes",
        "Resident set size of the pool's workers (counts shared memory once per worker): sum, p50, p95, max.",
        GAUGE,
    );
    let mut uss = Family::new(
        "phpfpm_manager_worker_uss_bytes",
        "Unique (private) memory of the pool's workers: sum, p50, p95, max.",
        GAUGE,
    );
    let mut pm_info = Family::new(
        "phpfpm_manager_pool_info",
        "Static facts about a pool; always 1.",
        GAUGE,
    );

    let process_names: &[(&str, &str, MetricType)] = &[
        (
            "phpfpm_process_requests",
            "Requests served by the worker in this slot since it started.",
            CUMULATIVE,
        ),
        (
            "phpfpm_process_last_request_memory",
            "PHP allocator peak of the slot's last request, in bytes (not RSS).",
            GAUGE,
        ),
        (
            "phpfpm_process_last_request_cpu",
            "CPU percent of the slot's last request.",
            GAUGE,
        ),
        (
            "phpfpm_process_request_duration",
            "Duration of the slot's current or last request, in microseconds.",
            GAUGE,
        ),
    ];
    let mut process_families: Vec<Family> = process_names
        .iter()
        .map(|(n, h, k)| Family::new(n, h, *k))
        .collect();
    let mut process_state = Family::new(
        "phpfpm_process_state",
        "State of the worker in this slot; the series with the current state is 1.",
        GAUGE,
    );
    let mut omitted = Family::new(
        "phpfpm_manager_process_series_omitted",
        "Workers of the pool left out of the phpfpm_process_* series in this scrape (monitoring.max_process_series).",
        GAUGE,
    );
    let counts: Vec<usize> = pools
        .iter()
        .map(|s| match (s.up, &s.status) {
            (true, Some(st)) => st.processes.len(),
            _ => 0,
        })
        .collect();
    let shares = process_series_shares(&counts, per_process.unwrap_or(0));

    for (s, share) in pools.iter().zip(shares) {
        let pool = s.name.as_str();
        let uri = s.scrape_uri.as_str();
        let labels = [("pool", pool), ("scrape_uri", uri)];
        up.push(&labels, if s.up { 1.0 } else { 0.0 });
        failures.push(&labels, s.scrape_failures as f64);
        for (fam, (name, _, _, get)) in families.iter_mut().zip(pool_series) {
            if !s.up && !WHILE_DOWN.contains(name) {
                continue;
            }
            if let Some(v) = get(s) {
                // The manager's own series are labelled by pool only;
                // scrape_uri belongs to the exporter-compatible ones.
                if name.starts_with("phpfpm_manager_") {
                    fam.push(&[("pool", pool)], v);
                } else {
                    fam.push(&labels, v);
                }
            }
        }
        if !s.up {
            continue;
        }
        for (what, ok) in [
            ("accept_queue", s.kernel.accept_queue.is_ok()),
            ("workers", s.kernel.workers.is_ok()),
        ] {
            kernel_ok.push(
                &[("pool", pool), ("what", what)],
                if ok { 1.0 } else { 0.0 },
            );
        }
        if let Ok(agg) = &s.kernel.workers {
            for (fam, dist) in [
                (&mut pss, agg.pss),
                (&mut rss, agg.rss),
                (&mut uss, agg.uss),
            ] {
                if let Some(d) = dist {
                    for (stat, v) in [
                        ("sum", d.sum),
                        ("p50", d.p50),
                        ("p95", d.p95),
                        ("max", d.max),
                    ] {
                        fam.push(&[("pool", pool), ("stat", stat)], v as f64);
                    }
                }
            }
        }
        let pm = s
            .status
            .as_ref()
            .map(|st| st.process_manager.as_str())
            .or_else(|| s.running_spec().map(|p| p.pm.as_str()))
            .unwrap_or("unknown");
        let supervised = if s.master.supervised { "true" } else { "false" };
        pm_info.push(
            &[("pool", pool), ("pm", pm), ("supervised", supervised)],
            1.0,
        );
        let Some(st) = &s.status else { continue };
        for (state, v) in [
            ("idle", st.idle_processes),
            ("active", st.active_processes),
            ("total", st.total_processes),
        ] {
            reported.push(&[("pool", pool), ("state", state)], v as f64);
        }
        if per_process.is_none() {
            continue;
        }
        omitted.push(&[("pool", pool)], (st.processes.len() - share) as f64);
        // Labelled by slot index, not pid, so the number of series stays
        // bounded by max_children however often workers are recycled; the
        // first `share` slots, so the same series stay from scrape to scrape.
        for (slot, p) in st.processes.iter().enumerate().take(share) {
            let child = slot.to_string();
            let l = [
                ("pool", pool),
                ("child", child.as_str()),
                ("scrape_uri", uri),
            ];
            let values = [
                p.requests as f64,
                p.last_request_memory as f64,
                p.last_request_cpu,
                p.request_duration_us as f64,
            ];
            for (fam, v) in process_families.iter_mut().zip(values) {
                fam.push(&l, v);
            }
            process_state.push(
                &[
                    ("pool", pool),
                    ("child", child.as_str()),
                    ("state", p.state.as_str()),
                    ("scrape_uri", uri),
                ],
                1.0,
            );
        }
    }

    let mut out = vec![
        up.done(),
        failures.done(),
        reported.done(),
        pm_info.done(),
        kernel_ok.done(),
        pss.done(),
        rss.done(),
        uss.done(),
    ];
    out.extend(families.into_iter().map(Family::done));
    if per_process.is_some() {
        out.extend(process_families.into_iter().map(Family::done));
        out.push(process_state.done());
        out.push(omitted.done());
    }
    // A family with no sample prints a bare HELP/TYPE pair, which promtool
    // accepts but which says nothing: leave it out.
    out.retain(|f| !f.get_metric().is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MasterState, PoolState};
    use fpm_core::status::parse_status;
    use fpm_core::PoolName;

    fn state(up: bool) -> PoolState {
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fpm-core/test_data/status/php82-busy-main-socket.cgi"
        ))
        .unwrap();
        let st = parse_status(&raw).unwrap();
        PoolState {
            name: PoolName::new("www").unwrap(),
            scrape_uri: "unix:///run/www.sock;/status".into(),
            master: MasterState::default(),
            control: std::sync::Arc::new(crate::state::Control::default()),
            look: std::sync::Arc::new(crate::state::Look {
                seq: 1,
                at: None,
                up,
                ping_ok: up,
                scrape_failures: if up { 0 } else { 3 },
                consecutive_failures: 0,
                last_error: None,
                derived: st.derived(Some("json&full")),
                status: up.then_some(st),
                last_success: None,
                kernel: crate::state::KernelView::default(),
                interval: std::time::Duration::from_secs(5),
                circuit_open: false,
                opcache: None,
                stalled: None,
            }),
        }
    }

    #[test]
    fn exporter_names_and_labels_are_exact() {
        let s = state(true);
        let text = Metrics::new().render(&[&s], None, None, None);
        for line in [
            r#"phpfpm_up{pool="www",scrape_uri="unix:///run/www.sock;/status"} 1"#,
            r#"phpfpm_accepted_connections{pool="www",scrape_uri="unix:///run/www.sock;/status"} 3"#,
            r#"phpfpm_active_processes{pool="www",scrape_uri="unix:///run/www.sock;/status"} 2"#,
            r#"phpfpm_idle_processes{pool="www",scrape_uri="unix:///run/www.sock;/status"} 1"#,
            r#"phpfpm_scrape_failures{pool="www",scrape_uri="unix:///run/www.sock;/status"} 0"#,
            r#"phpfpm_manager_fpm_reported_processes{pool="www",state="active"} 3"#,
            "# TYPE phpfpm_accepted_connections gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("phpfpm_accepted_connections_total"));
        assert!(
            !text.contains("phpfpm_process_requests"),
            "per-process is opt-in"
        );
    }

    #[test]
    fn per_process_series_use_slots() {
        let s = state(true);
        let text = Metrics::new().render(&[&s], Some(1000), None, None);
        assert!(text.contains(
            r#"phpfpm_process_state{child="1",pool="www",scrape_uri="unix:///run/www.sock;/status",state="Running"} 1"#
        ) || text.contains(
            r#"phpfpm_process_state{pool="www",child="1",state="Running",scrape_uri="unix:///run/www.sock;/status"} 1"#
        ), "{text}");
        assert_eq!(text.matches("phpfpm_process_requests{").count(), 3);
    }

    #[test]
    fn a_down_pool_exports_only_up_and_failures() {
        let s = state(false);
        let text = Metrics::new().render(&[&s], None, None, None);
        assert!(
            text.contains(r#"phpfpm_up{pool="www",scrape_uri="unix:///run/www.sock;/status"} 0"#)
        );
        assert!(text.contains(
            r#"phpfpm_scrape_failures{pool="www",scrape_uri="unix:///run/www.sock;/status"} 3"#
        ));
        // While down, only `up` and the failure counters are exported: no
        // frozen figures that look current.
        assert!(!text.contains("phpfpm_accepted_connections{"), "{text}");
        assert!(!text.contains("phpfpm_active_processes{"), "{text}");
    }

    /// A down pool with readings from earlier looks (kernel, settings,
    /// collect interval) exports none of them: only `up`, the failure
    /// counter and the gauges that describe the failure.
    #[test]
    fn a_down_pool_exports_nothing_stale() {
        let mut s = state(false);
        let mut look = (*s.look).clone();
        look.kernel.accept_queue = Ok((4, Some(511)));
        look.stalled = Some(crate::collect::stall::Stalled {
            pid: 7,
            reason: crate::collect::stall::Reason::Stopped,
            since_ms: 1,
        });
        s.look = std::sync::Arc::new(look);
        s.master.supervised = true;
        let text = Metrics::new().render(&[&s], Some(1000), None, None);
        let allowed = [
            "phpfpm_up{",
            "phpfpm_scrape_failures{",
            "phpfpm_manager_pool_failed{",
            "phpfpm_manager_circuit_open{",
            "phpfpm_manager_master_stalled{",
        ];
        let mut seen = Vec::new();
        for line in text.lines().filter(|l| l.contains("pool=\"www\"")) {
            assert!(
                allowed.iter().any(|a| line.starts_with(a)),
                "stale series of a down pool: {line}\n{text}"
            );
            seen.push(line);
        }
        assert!(
            text.contains("phpfpm_manager_master_stalled{pool=\"www\"} 1"),
            "{text}"
        );
        assert_eq!(seen.len(), allowed.len(), "{seen:#?}");
    }

    #[test]
    fn process_series_shares_are_fair_and_within_the_cap() {
        assert_eq!(process_series_shares(&[10_000], 1000), vec![1000]);
        assert_eq!(
            process_series_shares(&[10, 5000, 3000], 1000),
            vec![10, 495, 495]
        );
        assert_eq!(process_series_shares(&[10, 20], 1000), vec![10, 20]);
        assert_eq!(process_series_shares(&[], 1000), Vec::<usize>::new());
        assert_eq!(process_series_shares(&[3, 3], 0), vec![0, 0]);
    }

    /// 10,000 workers: without the cap 50,000 per-process series; with the
    /// default cap of 1,000 workers, 5,000, and the rest counted.
    #[test]
    fn per_process_series_are_capped_with_the_overflow_counted() {
        let mut s = state(true);
        let mut look = (*s.look).clone();
        let st = look.status.as_mut().unwrap();
        let one = st.processes[0].clone();
        st.processes = vec![one; 10_000];
        s.look = std::sync::Arc::new(look);
        let uncapped = Metrics::new().render(&[&s], Some(usize::MAX), None, None);
        let capped = Metrics::new().render(&[&s], Some(1000), None, None);
        let series = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with("phpfpm_process_"))
                .count()
        };
        assert_eq!(series(&uncapped), 50_000);
        assert_eq!(series(&capped), 5_000);
        assert!(
            capped.contains("phpfpm_manager_process_series_omitted{pool=\"www\"} 9000"),
            "no overflow count"
        );
        assert!(uncapped.contains("phpfpm_manager_process_series_omitted{pool=\"www\"} 0"));
        eprintln!(
            "10,000 workers: {} bytes per scrape uncapped, {} with the default cap",
            uncapped.len(),
            capped.len()
        );
        assert!(capped.len() * 5 < uncapped.len());
    }
}
