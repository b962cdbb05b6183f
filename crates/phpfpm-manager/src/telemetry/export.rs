//! The way a finished span leaves the manager: a bounded queue that never
//! blocks the code that ended the span, and one exporter thread that sends
//! batches to the OTLP collector.
//!
//! Written here rather than taken from the SDK's batch processor because
//! the manager must count what it drops (`/metrics`) and say in its log why,
//! and the SDK keeps its drop count to itself. The exporters themselves
//! (gRPC and HTTP/protobuf) are the SDK's.
//!
//! A collector that refuses costs one failed connection per batch; one that
//! accepts and never answers costs the export timeout per batch. Either way
//! only the exporter thread waits: spans that do not fit in the queue
//! meanwhile are dropped and counted, so memory stays bounded by the queue.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::OtlpProtocol;

/// Finished spans waiting for the exporter; more are dropped.
pub const QUEUE_SPANS: usize = 2048;

/// The most spans sent in one request.
const BATCH_SPANS: usize = 512;

/// How long a span waits at most before it is sent (unless the batch fills
/// first).
const EXPORT_EVERY: Duration = Duration::from_secs(2);

/// A failing collector is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub timeout: Duration,
    pub resource: Resource,
}

/// What the exporter did, for `/metrics`.
#[derive(Debug, Clone)]
pub struct Counters {
    pub exported: IntCounter,
    pub dropped: IntCounterVec,
}

impl Counters {
    pub fn new() -> Counters {
        let exported = IntCounter::new(
            "phpfpm_manager_otlp_exported_spans_total",
            "Spans the OTLP collector accepted.",
        )
        .expect("a valid metric name");
        let dropped = IntCounterVec::new(
            Opts::new(
                "phpfpm_manager_otlp_dropped_spans_total",
                "Spans not exported: queue_full (the exporter was behind), export_failed (the collector refused, failed or did not answer in time), stopped (ended after the exporter stopped).",
            ),
            &["reason"],
        )
        .expect("a valid metric name");
        // Present from the start, so a rate() over them works at once.
        for reason in ["queue_full", "export_failed", "stopped"] {
            dropped.with_label_values(&[reason]);
        }
        Counters { exported, dropped }
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.exported.clone()),
            Box::new(self.dropped.clone()),
        ]
    }

    fn drop_spans(&self, reason: &str, n: u64) {
        self.dropped.with_label_values(&[reason]).inc_by(n);
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.dropped.with_label_values(&[reason]).get()
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

/// Asks the exporter thread to send what it has.
#[derive(Debug)]
enum Control {
    Flush(std::sync::mpsc::SyncSender<()>),
    Shutdown(std::sync::mpsc::SyncSender<()>),
}

/// The span processor the SDK calls when a span ends: it only queues.
#[derive(Debug)]
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    counters: Counters,
}

/// The receiving end, started by [`Worker::spawn`] once the runtime exists.
#[derive(Debug)]
pub struct Worker {
    settings: Settings,
    spans: mpsc::Receiver<SpanData>,
    control: mpsc::UnboundedReceiver<Control>,
    counters: Counters,
}

/// The queue between the two.
pub fn queue(settings: Settings, counters: Counters) -> (QueueProcessor, Worker) {
    queue_with(settings, counters, QUEUE_SPANS)
}

fn queue_with(settings: Settings, counters: Counters, capacity: usize) -> (QueueProcessor, Worker) {
    let (spans_tx, spans_rx) = mpsc::channel(capacity);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    (
        QueueProcessor {
            spans: spans_tx,
            control: control_tx,
            counters: counters.clone(),
        },
        Worker {
            settings,
            spans: spans_rx,
            control: control_rx,
            counters,
        },
    )
}

impl QueueProcessor {
    /// Sends `make(ack)` to the exporter and waits for the ack.
    fn ask(
        &self,
        make: fn(std::sync::mpsc::SyncSender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        self.control
            .send(make(ack))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    /// Never waits: a full queue drops the span and counts it.
    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.counters.drop_spans("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.counters.drop_spans("stopped", 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

impl Worker {
    /// Where spans go, for the log.
    pub fn describe(&self) -> String {
        let how = match self.settings.protocol {
            OtlpProtocol::Grpc => "OTLP/gRPC",
            OtlpProtocol::HttpProtobuf => "OTLP/HTTP (protobuf)",
        };
        format!(
            "{} over {how}",
            super::traces_url(&self.settings.endpoint, self.settings.protocol)
        )
    }

    /// Runs the exporter on its own thread with a small runtime of its own.
    pub fn spawn(self) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("otlp-export".to_owned())
            .spawn(move || rt.block_on(self.run()))?;
        Ok(())
    }

    async fn run(mut self) {
        let target = self.describe();
        let exporter = match build_exporter(&self.settings) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(
                    "Cannot set up trace export to {target}: {e}; spans are dropped and counted."
                );
                None
            }
        };
        let mut out = Outbox {
            exporter,
            counters: self.counters.clone(),
            timeout: self.settings.timeout,
            target,
            last_warning: None,
            failing: false,
            queue_full_seen: 0,
            last_queue_warning: None,
        };
        let mut batch = Vec::with_capacity(BATCH_SPANS);
        let mut tick = tokio::time::interval(EXPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                control = self.control.recv() => {
                    // Everything queued so far goes out before the answer.
                    while let Ok(span) = self.spans.try_recv() {
                        batch.push(span);
                        if batch.len() >= BATCH_SPANS {
                            out.send(&mut batch).await;
                        }
                    }
                    out.send(&mut batch).await;
                    match control {
                        Some(Control::Flush(ack)) => {
                            let _ = ack.send(());
                        }
                        Some(Control::Shutdown(ack)) => {
                            out.shutdown();
                            self.spans.close();
                            let _ = ack.send(());
                            return;
                        }
                        None => return,
                    }
                }
                span = self.spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH_SPANS {
                            out.send(&mut batch).await;
                        }
                    }
                    None => {
                        out.send(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    out.send(&mut batch).await;
                    out.report_queue_drops();
                }
            }
        }
    }
}

/// The exporter and what it remembers about its failures.
struct Outbox {
    exporter: Option<opentelemetry_otlp::SpanExporter>,
    counters: Counters,
    timeout: Duration,
    target: String,
    last_warning: Option<Instant>,
    failing: bool,
    queue_full_seen: u64,
    last_queue_warning: Option<Instant>,
}

impl Outbox {
    /// Sends `batch` (emptying it); a failure drops and counts its spans.
    async fn send(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::replace(batch, Vec::with_capacity(BATCH_SPANS));
        let n = spans.len() as u64;
        let Some(exporter) = &self.exporter else {
            self.counters.drop_spans("export_failed", n);
            return;
        };
        match tokio::time::timeout(self.timeout, exporter.export(spans)).await {
            Ok(Ok(())) => {
                self.counters.exported.inc_by(n);
                if self.failing {
                    self.failing = false;
                    tracing::info!("Traces reach {} again.", self.target);
                }
            }
            Ok(Err(e)) => self.failed(n, &e.to_string()),
            Err(_) => self.failed(n, &format!("no answer within {:?}", self.timeout)),
        }
    }

    fn failed(&mut self, n: u64, why: &str) {
        self.counters.drop_spans("export_failed", n);
        self.failing = true;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            self.last_warning = Some(now);
            tracing::warn!(
                "Cannot export traces to {}: {why}; {n} spans dropped (phpfpm_manager_otlp_dropped_spans_total). Collection and supervision go on; next report in a minute if it persists.",
                self.target
            );
        }
    }

    /// Says (at most once a minute) that spans were dropped because the
    /// queue was full.
    fn report_queue_drops(&mut self) {
        let now_dropped = self.counters.dropped("queue_full");
        let new = now_dropped.saturating_sub(self.queue_full_seen);
        if new == 0 {
            return;
        }
        let now = Instant::now();
        if self
            .last_queue_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            self.last_queue_warning = Some(now);
            self.queue_full_seen = now_dropped;
            tracing::warn!(
                "The trace export queue ({QUEUE_SPANS} spans) was full; {new} spans dropped (phpfpm_manager_otlp_dropped_spans_total{{reason=\"queue_full\"}})."
            );
        }
    }

    fn shutdown(&mut self) {
        if let Some(e) = self.exporter.take() {
            let _ = e.shutdown();
        }
    }
}

fn build_exporter(
    s: &Settings,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
    let url = super::traces_url(&s.endpoint, s.protocol);
    let mut exporter = match s.protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .with_timeout(s.timeout)
            .build()?,
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(s.timeout)
            .with_http_client(http_client(s.timeout))
            .build()?,
    };
    exporter.set_resource(&s.resource);
    Ok(exporter)
}

/// A hyper client on the exporter's own runtime (the SDK's default HTTP
/// client is a blocking one with a runtime of its own).
fn http_client(timeout: Duration) -> opentelemetry_http::hyper::HyperClient {
    opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            endpoint: "http://127.0.0.1:9".to_owned(),
            protocol: OtlpProtocol::Grpc,
            timeout: Duration::from_secs(1),
            resource: Resource::builder_empty().build(),
        }
    }

    fn sampled_span() -> SpanData {
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1u128),
                SpanId::from(1u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "probe".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let counters = Counters::new();
        // Nobody reads the queue: the worker was never started.
        let (processor, _worker) = queue_with(settings(), counters.clone(), 4);
        let started = std::time::Instant::now();
        for _ in 0..10 {
            processor.on_end(sampled_span());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(counters.dropped("queue_full"), 6);
        assert_eq!(counters.exported.get(), 0);
    }

    #[test]
    fn spans_after_the_exporter_stopped_are_counted() {
        let counters = Counters::new();
        let (processor, worker) = queue_with(settings(), counters.clone(), 4);
        drop(worker);
        processor.on_end(sampled_span());
        assert_eq!(counters.dropped("stopped"), 1);
    }

    #[test]
    fn a_refusing_collector_drops_and_counts_batches() {
        // Port 9 (discard) on loopback: nothing listens there in a test.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let counters = Counters::new();
        let (processor, worker) = queue_with(
            Settings {
                endpoint,
                ..settings()
            },
            counters.clone(),
            16,
        );
        worker.spawn().unwrap();
        for _ in 0..3 {
            processor.on_end(sampled_span());
        }
        processor.force_flush().unwrap();
        assert_eq!(counters.dropped("export_failed"), 3);
        processor
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
    }
}
