//! OpenTelemetry traces against a real OTLP receiver in the test: a gRPC
//! server (tonic) and an HTTP/protobuf server (axum), both decoding the
//! OTLP protobufs with `opentelemetry-proto`. A collection, a hand-over and
//! an API request (with a client's `traceparent`) arrive as spans with the
//! right names, attributes and parents. A collector that refuses or hangs
//! costs the manager neither its collection interval nor unbounded memory:
//! the spans are dropped and counted, and the log says why.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;

use crate::supervisor::{pools_up, prepare};
use crate::support::{
    manager_bin, proc_status_field, promtool_check, rt, wait_for, TestDaemon, TestDir,
};

/// A trace id and span id a client would send.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One span as received, flattened.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attrs: BTreeMap<String, Attr>,
    resource: BTreeMap<String, Attr>,
}

#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
    Float(f64),
    Other,
}

impl Got {
    fn str(&self, key: &str) -> Option<&str> {
        match self.attrs.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(Attr::Int(n)) => Some(*n),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.attrs.get(key) {
            Some(Attr::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, Attr> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Attr::Str(s.clone()),
                Some(Value::IntValue(n)) => Attr::Int(*n),
                Some(Value::BoolValue(b)) => Attr::Bool(*b),
                Some(Value::DoubleValue(f)) => Attr::Float(*f),
                _ => Attr::Other,
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything the receiver was sent.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

impl Received {
    fn push(&self, req: ExportTraceServiceRequest) {
        self.0.lock().unwrap().push(req);
    }

    fn spans(&self) -> Vec<Got> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| attrs(&r.attributes))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(Got {
                            name: s.name.clone(),
                            kind: s.kind,
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent_span_id: hex(&s.parent_span_id),
                            attrs: attrs(&s.attributes),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The first span that satisfies `pred`, waiting up to 60 s for it.
    fn wait(&self, what: &str, d: &TestDaemon, pred: impl Fn(&Got) -> bool) -> Got {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let names: std::collections::BTreeSet<String> =
            self.spans().into_iter().map(|s| s.name).collect();
        panic!(
            "no {what} span within 60s; received span names: {names:?}\nlog:\n{}",
            d.log()
        );
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A receiver running on its own thread until dropped.
struct Receiver {
    addr: SocketAddr,
    got: Received,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// OTLP/gRPC on a free loopback port.
    fn grpc() -> Receiver {
        let got = Received::default();
        let service = TraceServiceServer::new(got.clone());
        Receiver::run(got, move |listener, stop| async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
        })
    }

    /// OTLP/HTTP with protobuf bodies on a free loopback port.
    fn http() -> Receiver {
        let got = Received::default();
        let store = got.clone();
        Receiver::run(got, move |listener, stop| async move {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let store = store.clone();
                    async move {
                        match ExportTraceServiceRequest::decode(body) {
                            Ok(req) => {
                                store.push(req);
                                (
                                    axum::http::StatusCode::OK,
                                    [("content-type", "application/x-protobuf")],
                                    ExportTraceServiceResponse::default().encode_to_vec(),
                                )
                            }
                            Err(_) => (
                                axum::http::StatusCode::BAD_REQUEST,
                                [("content-type", "text/plain")],
                                b"not an ExportTraceServiceRequest".to_vec(),
                            ),
                        }
                    }
                }),
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
        })
    }

    fn run<F, Fut>(got: Received, serve: F) -> Receiver
    where
        F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = rt();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                serve(listener, stop_rx).await;
            });
        });
        Receiver {
            addr,
            got,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A "collector" that accepts connections and never answers (nor reads).
struct Hanging {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded: the test stops it, and at most 10 minutes.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            held.len()
        });
        Hanging {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting; returns how many connections it held.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One autoscaled pool `a` (a pin is then a hand-over), collected every
/// second, traces to `endpoint`.
fn config(dir: &TestDir, telemetry: &str) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n  busy_interval: 1s\n  idle_interval: 1s\n\
         scaling:\n  memory_budget: 1GiB\n\
         telemetry:\n  service_name: phpfpm-otel-test\n{telemetry}\
         pools:\n\
         \x20 - name: a\n    max_workers: 6\n    chdir: {www}\n\
         \x20   scaling:\n      enabled: true\n      min_workers: 1\n      max_workers: 6\n",
        www = dir.join("www").display()
    )
}

/// A raw HTTP/1.1 request with extra headers; the status and body.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    crate::support::http_request(
        addr,
        method,
        path,
        headers,
        Some(body),
        Duration::from_secs(30),
    )
    .unwrap()
}

fn traceparent() -> String {
    format!("traceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\n")
}

/// The value of a series without labels beyond `labels` in a page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// A `collect` span of pool `a` that found it up, and its steps as
/// children in the same trace.
fn check_collection(rx: &Received, d: &TestDaemon) -> Got {
    let collect = rx.wait("collect", d, |s| {
        s.name == "collect" && s.str("pool") == Some("a") && s.bool("up") == Some(true)
    });
    assert!(collect.int("seq").is_some_and(|n| n >= 1), "{collect:?}");
    assert!(collect.int("interval_ms").is_some(), "{collect:?}");
    assert!(collect.int("workers.total").is_some(), "{collect:?}");
    assert_eq!(
        collect.parent_span_id, "",
        "a collection starts its own trace"
    );
    for step in ["collect.status", "collect.queue", "collect.proc"] {
        let child = rx.wait(step, d, |s| {
            s.name == step && s.parent_span_id == collect.span_id
        });
        assert_eq!(child.trace_id, collect.trace_id, "{child:?}");
    }
    // The resource names the service, its version and the host.
    let res = &collect.resource;
    assert_eq!(
        res.get("service.name"),
        Some(&Attr::Str("phpfpm-otel-test".to_owned())),
        "{res:?}"
    );
    assert_eq!(
        res.get("service.version"),
        Some(&Attr::Str(env!("CARGO_PKG_VERSION").to_owned())),
        "{res:?}"
    );
    assert_eq!(
        res.get("host.name"),
        Some(&Attr::Str(hostname())),
        "{res:?}"
    );
    collect
}

/// The API request's server span: a child of the client's span.
fn check_api_span(rx: &Received, d: &TestDaemon, name: &str, method: &str, status: i64) -> Got {
    let api = rx.wait(name, d, |s| s.name == name && s.trace_id == CLIENT_TRACE);
    assert_eq!(api.parent_span_id, CLIENT_SPAN, "{api:?}");
    // SPAN_KIND_SERVER
    assert_eq!(api.kind, 2, "{api:?}");
    assert_eq!(api.str("http.request.method"), Some(method), "{api:?}");
    assert_eq!(
        api.int("http.response.status_code"),
        Some(status),
        "{api:?}"
    );
    api
}

#[test]
fn a_collection_a_handover_and_an_api_request_arrive_over_grpc() {
    let rx = Receiver::grpc();
    let dir = prepare("otel-grpc");
    let cfg = config(
        &dir,
        &format!(
            "  otlp_endpoint: http://{}\n  otlp_protocol: grpc\n",
            rx.addr
        ),
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["a"]);
    check_collection(&rx.got, &d);

    // The pin is a hand-over; the client's trace holds the request and the
    // hand-over it caused.
    let (code, body) = request(
        d.addr,
        "POST",
        "/api/v1/pools/a/scaling",
        &traceparent(),
        r#"{"action":"pin","workers":3,"reason":"trace test"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let api = check_api_span(
        &rx.got,
        &d,
        "POST /api/v1/pools/{pool}/scaling",
        "POST",
        200,
    );
    assert_eq!(
        api.str("http.route"),
        Some("/api/v1/pools/{pool}/scaling"),
        "{api:?}"
    );
    assert_eq!(api.str("url.path"), Some("/api/v1/pools/a/scaling"));
    let handover = rx.got.wait("pool.handover", &d, |s| {
        s.name == "pool.handover" && s.trace_id == CLIENT_TRACE
    });
    assert_eq!(handover.parent_span_id, api.span_id, "{handover:?}");
    assert_eq!(handover.str("pool"), Some("a"), "{handover:?}");
    assert_eq!(handover.str("outcome"), Some("handed_over"), "{handover:?}");
    assert!(
        handover.int("generation").is_some_and(|g| g >= 2),
        "{handover:?}"
    );
    assert!(
        handover.int("new_pid").is_some_and(|p| p > 0),
        "{handover:?}"
    );
    assert!(
        handover.str("reason").is_some_and(|r| r.contains("pin")),
        "{handover:?}"
    );

    // The first master's start, and the autoscaler's decisions with figures.
    let start = rx.got.wait("pool.start", &d, |s| s.name == "pool.start");
    assert_eq!(start.str("outcome"), Some("started"), "{start:?}");
    assert_eq!(start.int("generation"), Some(1), "{start:?}");
    let decide = rx.got.wait("autoscale.decide", &d, |s| {
        s.name == "autoscale.decide" && s.str("pool") == Some("a")
    });
    assert!(decide.str("rule").is_some(), "{decide:?}");
    assert!(decide.int("from_workers").is_some(), "{decide:?}");

    // The exporter's counters are on /metrics, valid for promtool.
    let page = d
        .wait_metrics(Duration::from_secs(30), |b| {
            metric(b, "phpfpm_manager_otlp_exported_spans_total").is_some_and(|n| n > 0.0)
        })
        .unwrap_or_else(|| panic!("no exported spans counted; log:\n{}", d.log()));
    assert_eq!(
        metric(
            &page,
            "phpfpm_manager_otlp_dropped_spans_total{reason=\"export_failed\"}"
        ),
        Some(0.0)
    );
    promtool_check(&page).unwrap();
    assert!(
        d.log().contains("Exporting traces to http://"),
        "{}",
        d.log()
    );
}

#[test]
fn an_api_request_and_a_collection_arrive_over_http_protobuf() {
    let rx = Receiver::http();
    let dir = prepare("otel-http");
    let cfg = config(
        &dir,
        &format!(
            "  otlp_endpoint: http://{}\n  otlp_protocol: http\n",
            rx.addr
        ),
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["a"]);
    check_collection(&rx.got, &d);
    let (code, body) = request(
        d.addr,
        "GET",
        "/api/v1/pools/a?token=secret",
        &traceparent(),
        "",
    );
    assert_eq!(code, 200, "{body}");
    let api = check_api_span(&rx.got, &d, "GET /api/v1/pools/{pool}", "GET", 200);
    // The query string (tokens) never leaves the manager.
    assert!(
        !format!("{api:?}").contains("secret"),
        "query string recorded: {api:?}"
    );
}

/// Samples `phpfpm_manager_last_success_timestamp_seconds` of pool `a` for
/// `period` while the API is kept busy (each request is a span); returns
/// the distinct collection times seen.
fn collections_under_span_load(d: &TestDaemon, period: Duration) -> Vec<f64> {
    let addr = d.addr;
    let busy = std::thread::spawn(move || {
        // Bounded in count and time.
        let deadline = Instant::now() + period;
        let mut n = 0u32;
        while Instant::now() < deadline && n < 20_000 {
            let _ = crate::support::http_get(addr, "/health/live");
            n += 1;
        }
        n
    });
    let mut seen: Vec<f64> = Vec::new();
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if let Ok((200, page)) = d.get("/metrics") {
            if let Some(t) = metric(
                &page,
                "phpfpm_manager_last_success_timestamp_seconds{pool=\"a\"}",
            ) {
                if seen.last() != Some(&t) {
                    seen.push(t);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let requests = busy.join().unwrap();
    assert!(requests > 100, "only {requests} API requests were made");
    seen
}

/// With the collector unusable, collection keeps its 1 s interval (bounds
/// generous for a loaded machine), memory stays bounded, and the spans are
/// dropped, counted and reported.
fn collector_down(tag: &str, telemetry: &str) {
    let dir = prepare(tag);
    let cfg = config(&dir, telemetry);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["a"]);
    // Let start-up allocations settle before the baseline.
    std::thread::sleep(Duration::from_secs(3));
    let pid = d.child.id();
    let before = proc_status_field(pid, "VmRSS:").unwrap();
    let period = Duration::from_secs(20);
    let seen = collections_under_span_load(&d, period);
    let after = proc_status_field(pid, "VmRSS:").unwrap();

    assert!(
        seen.len() >= 8,
        "only {} collections in {period:?}: {seen:?}\nlog:\n{}",
        seen.len(),
        d.log()
    );
    let worst = seen.windows(2).map(|w| w[1] - w[0]).fold(0.0_f64, f64::max);
    assert!(
        worst <= 5.0,
        "a gap of {worst:.1}s between collections (interval 1s): {seen:?}"
    );
    // The queue holds at most 2048 spans: a few MiB (about 4 MiB measured,
    // exporter included). Keeping every span of the period (over ten
    // thousand, about 1 KiB each) would pass the bound.
    let grew_mib = after.saturating_sub(before) / 1024;
    assert!(
        grew_mib < 16,
        "RSS grew by {grew_mib} MiB ({before} -> {after} KiB)"
    );
    let page = d
        .wait_metrics(Duration::from_secs(30), |b| {
            metric(
                b,
                "phpfpm_manager_otlp_dropped_spans_total{reason=\"export_failed\"}",
            )
            .is_some_and(|n| n > 0.0)
        })
        .unwrap_or_else(|| panic!("no failed export counted; log:\n{}", d.log()));
    promtool_check(&page).unwrap();
    assert_eq!(
        metric(&page, "phpfpm_manager_otlp_exported_spans_total"),
        Some(0.0)
    );
    let dropped = |reason: &str| {
        metric(
            &page,
            &format!("phpfpm_manager_otlp_dropped_spans_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    eprintln!(
        "{tag}: {} collections in {period:?}, largest gap {worst:.2}s, RSS {before} -> {after} KiB, spans dropped: export_failed {}, queue_full {}",
        seen.len(),
        dropped("export_failed"),
        dropped("queue_full"),
    );
    assert!(
        wait_for(Duration::from_secs(30), || d
            .log()
            .contains("Cannot export traces to http://")),
        "no warning about the collector; log:\n{}",
        d.log()
    );
    // Still serving and ready.
    assert_eq!(d.get("/health/ready").unwrap().0, 200);
}

#[test]
fn a_refusing_collector_costs_no_collection_and_no_memory() {
    // A port nothing listens on: connections are refused.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    collector_down(
        "otel-refused",
        &format!(
            "  otlp_endpoint: http://127.0.0.1:{port}\n  otlp_protocol: grpc\n  otlp_timeout: 1s\n"
        ),
    );
}

#[test]
fn a_hanging_collector_costs_no_collection_and_no_memory() {
    let hanging = Hanging::start();
    collector_down(
        "otel-hanging",
        &format!(
            "  otlp_endpoint: http://{}\n  otlp_protocol: http\n  otlp_timeout: 1s\n",
            hanging.addr
        ),
    );
    assert!(hanging.stop() >= 1, "the manager never connected");
}

#[test]
fn an_endpoint_that_is_not_a_url_is_refused_at_start() {
    let dir = TestDir::new("otel-bad-url");
    let cfg = "telemetry:\n  otlp_endpoint: collector port 4317\npools:\n  - name: a\n    supervise: false\n    fastcgi_endpoint: tcp://127.0.0.1:9\n";
    std::fs::write(dir.join("c.yaml"), cfg).unwrap();
    let out = std::process::Command::new(manager_bin())
        .args(["run", "--config", "c.yaml"])
        .current_dir(&dir.path)
        .env(
            "PHPFPM_MANAGER_SERVER__BIND_ADDRESS",
            format!("127.0.0.1:{}", crate::support::free_port()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("telemetry.otlp_endpoint: 'collector port 4317': not a URL"),
        "{err}"
    );
}
