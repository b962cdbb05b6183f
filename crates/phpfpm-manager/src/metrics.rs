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

use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::state::PoolState;

/// The manager's own metrics that are updated as events happen.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub scrape_duration: HistogramVec,
    pub scrape_errors: IntCounterVec,
    pub master_restarts: IntCounterVec,
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
        let master_restarts = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_master_restarts_total",
                "Unexpected exits of a supervised php-fpm master that led to a restart.",
            ),
            &["pool"],
        )
        .expect("static counter options are valid");
        for c in [
            Box::new(scrape_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(scrape_errors.clone()),
            Box::new(master_restarts.clone()),
        ] {
            registry
                .register(c)
                .expect("each metric is registered once with a unique name");
        }
        Metrics {
            registry,
            scrape_duration,
            scrape_errors,
            master_restarts,
        }
    }

    /// Renders everything in the classic text format (version 0.0.4).
    pub fn render(&self, pools: &[&PoolState], per_process: bool) -> String {
        let mut families = self.registry.gather();
        families.extend(pool_families(pools, per_process));
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

fn build_info() -> MetricFamily {
    let mut f = Family::new(
        "phpfpm_manager_build_info",
        "Version of the running phpfpm-manager; always 1.",
        MetricType::GAUGE,
    );
    f.push(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    f.done()
}

/// A metric family under construction.
struct Family {
    family: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Family { family }
    }

    fn push(&mut self, labels: &[(&str, &str)], value: f64) {
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
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        self.family.mut_metric().push(m);
    }

    fn done(self) -> MetricFamily {
        self.family
    }
}

/// The exporter-compatible pool series and the manager's per-pool gauges.
/// Pure: built from the state passed in.
pub fn pool_families(pools: &[&PoolState], per_process: bool) -> Vec<MetricFamily> {
    use MetricType::GAUGE;
    // Cumulative exporter series; see the module docs for why not `counter`.
    const CUMULATIVE: MetricType = MetricType::GAUGE;
    let mut up = Family::new(
        "phpfpm_up",
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
        ("phpfpm_accepted_connections", "Requests accepted by the pool since its master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.accepted_conn as f64)),
        ("phpfpm_listen_queue", "Connections waiting for a worker, as php-fpm reports it (always 0 on unix sockets; see phpfpm_manager_accept_queue).", GAUGE, |s| s.status.as_ref().map(|st| st.listen_queue as f64)),
        ("phpfpm_max_listen_queue", "Highest listen queue php-fpm saw since its master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.max_listen_queue as f64)),
        ("phpfpm_listen_queue_length", "Size of the pool's listen backlog as php-fpm reports it.", GAUGE, |s| s.status.as_ref().map(|st| st.listen_queue_len as f64)),
        ("phpfpm_idle_processes", "Idle workers, counted from the process list (the collector's own request excluded).", GAUGE, |s| s.status.as_ref().map(|_| s.derived.idle as f64)),
        ("phpfpm_active_processes", "Busy workers, counted from the process list (the collector's own request excluded).", GAUGE, |s| s.status.as_ref().map(|_| s.derived.active as f64)),
        ("phpfpm_total_processes", "Workers of the pool, counted from the process list.", GAUGE, |s| s.status.as_ref().map(|_| s.derived.total as f64)),
        ("phpfpm_max_active_processes", "Highest number of busy workers since the pool's master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.max_active_processes as f64)),
        ("phpfpm_max_children_reached", "Times the pool hit pm.max_children since its master started (dynamic and ondemand only).", CUMULATIVE, |s| s.status.as_ref().map(|st| st.max_children_reached as f64)),
        ("phpfpm_slow_requests", "Requests slower than request_slowlog_timeout since the pool's master started.", CUMULATIVE, |s| s.status.as_ref().map(|st| st.slow_requests as f64)),
        ("phpfpm_manager_ping_up", "Whether the pool answered its ping path (1) or not (0).", GAUGE, |s| Some(if s.ping_ok { 1.0 } else { 0.0 })),
        ("phpfpm_manager_last_success_timestamp_seconds", "Unix time of the last successful collection of the pool.", GAUGE, |s| s.last_success.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64())),
        ("phpfpm_manager_master_up", "Whether the manager's php-fpm master for this pool is running (supervised pools).", GAUGE, |s| s.master.supervised.then_some(if s.master.running { 1.0 } else { 0.0 })),
        ("phpfpm_manager_pool_failed", "1 when the manager cannot run this pool (for example its config fails php-fpm -t).", GAUGE, |s| s.master.supervised.then_some(if s.master.failed.is_some() { 1.0 } else { 0.0 })),
        ("phpfpm_manager_pm_max_children", "Configured pm.max_children of a supervised pool.", GAUGE, |s| s.spec.as_ref().map(|p| f64::from(p.max_children))),
        ("phpfpm_manager_pm_start_servers", "Configured pm.start_servers of a supervised pool.", GAUGE, |s| s.spec.as_ref().map(|p| f64::from(p.start_servers))),
        ("phpfpm_manager_pm_min_spare_servers", "Configured pm.min_spare_servers of a supervised pool.", GAUGE, |s| s.spec.as_ref().map(|p| f64::from(p.min_spare_servers))),
        ("phpfpm_manager_pm_max_spare_servers", "Configured pm.max_spare_servers of a supervised pool.", GAUGE, |s| s.spec.as_ref().map(|p| f64::from(p.max_spare_servers))),
        ("phpfpm_manager_pm_max_requests", "Configured pm.max_requests of a supervised pool.", GAUGE, |s| s.spec.as_ref().map(|p| f64::from(p.max_requests))),
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

    for s in pools {
        let pool = s.name.as_str();
        let uri = s.scrape_uri.as_str();
        let labels = [("pool", pool), ("scrape_uri", uri)];
        up.push(&labels, if s.up { 1.0 } else { 0.0 });
        failures.push(&labels, s.scrape_failures as f64);
        for (fam, (_, _, _, get)) in families.iter_mut().zip(pool_series) {
            if let Some(v) = get(s) {
                fam.push(&labels, v);
            }
        }
        let pm = s
            .status
            .as_ref()
            .map(|st| st.process_manager.as_str())
            .or_else(|| s.spec.as_ref().map(|p| p.pm.as_str()))
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
        if !per_process {
            continue;
        }
        // Labelled by slot index, not pid, so the number of series stays
        // bounded by max_children however often workers are recycled.
        for (slot, p) in st.processes.iter().enumerate() {
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

    let mut out = vec![up.done(), failures.done(), reported.done(), pm_info.done()];
    out.extend(families.into_iter().map(Family::done));
    if per_process {
        out.extend(process_families.into_iter().map(Family::done));
        out.push(process_state.done());
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
            spec: None,
            up,
            ping_ok: up,
            scrape_failures: if up { 0 } else { 3 },
            consecutive_failures: 0,
            last_error: None,
            derived: st.derived(Some("json&full")),
            status: Some(st),
            last_success: None,
            master: MasterState::default(),
        }
    }

    #[test]
    fn exporter_names_and_labels_are_exact() {
        let s = state(true);
        let text = Metrics::new().render(&[&s], false);
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
        let text = Metrics::new().render(&[&s], true);
        assert!(text.contains(
            r#"phpfpm_process_state{child="1",pool="www",scrape_uri="unix:///run/www.sock;/status",state="Running"} 1"#
        ) || text.contains(
            r#"phpfpm_process_state{pool="www",child="1",state="Running",scrape_uri="unix:///run/www.sock;/status"} 1"#
        ), "{text}");
        assert_eq!(text.matches("phpfpm_process_requests{").count(), 3);
    }

    #[test]
    fn a_down_pool_keeps_its_series() {
        let s = state(false);
        let text = Metrics::new().render(&[&s], false);
        assert!(
            text.contains(r#"phpfpm_up{pool="www",scrape_uri="unix:///run/www.sock;/status"} 0"#)
        );
        assert!(text.contains(
            r#"phpfpm_scrape_failures{pool="www",scrape_uri="unix:///run/www.sock;/status"} 3"#
        ));
        assert!(text.contains("phpfpm_accepted_connections{"));
    }
}
