//! Logs and traces. Logs: text or JSON on stderr. Traces: OpenTelemetry
//! spans exported over OTLP (gRPC or HTTP/protobuf) when
//! `telemetry.otlp_endpoint` is set.
//!
//! Log messages are capitalised sentences ending with a period; error values
//! inside them are lowercase without a period.
//!
//! Spans and logs are separate: logs are the `tracing` events the fmt layer
//! prints, spans exist only for the trace layer. Without an endpoint there
//! is no trace layer, so every span callsite is disabled once and creating
//! a span costs one cached interest check.
//!
//! Life cycle: [`init`] installs both layers before anything runs (spans end
//! in a bounded queue, [`export`]); [`start_export`] starts the exporter
//! once the manager's runtime exists; [`Traces::shutdown`] flushes the queue
//! after the manager has stopped everything else.

pub mod export;
pub mod http;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtlpProtocol, Telemetry};
use crate::surface::metrics::Metrics;

/// Spans of this crate at this level or more severe are traced.
const SPAN_LEVEL: Level = Level::INFO;

/// Log events inside a traced span at this level or more severe are also
/// recorded on the span (a warning during a collection shows in its trace).
const SPAN_EVENT_LEVEL: Level = Level::WARN;

/// The exporter waiting for the runtime, and the provider to shut down.
struct Pipeline {
    provider: SdkTracerProvider,
    worker: Mutex<Option<export::Worker>>,
    counters: export::Counters,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

/// Installs the global subscriber: logs always, traces when an OTLP
/// endpoint is configured. `RUST_LOG` overrides the configured log level.
pub fn init(cfg: &Telemetry) {
    // A second init (tests) is not an error worth reporting.
    let _ = subscriber(cfg).try_init();
}

/// Logs always; traces when an OTLP endpoint is configured. Without one the
/// trace layer is left out rather than present as `None`: a `None` layer
/// still leaves every span callsite enabled.
fn subscriber(cfg: &Telemetry) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},hyper=warn", cfg.log_level)));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let fmt = match cfg.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // Spans are for traces: the log lines stay as they are without them.
    let fmt = fmt.with_filter(filter.and(filter_fn(|meta| meta.is_event())));
    let logs = tracing_subscriber::registry().with(fmt);
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Box::new(logs);
    };
    let traces = {
        let pipeline = PIPELINE.get_or_init(|| pipeline(cfg, endpoint));
        let tracer = pipeline.provider.tracer_with_scope(
            opentelemetry::InstrumentationScope::builder("phpfpm-manager")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(filter_fn(traced))
    };
    Box::new(logs.with(traces))
}

/// What the trace layer sees: this crate's spans, and its warnings and
/// errors inside them. Never the exporter's own libraries (h2, tonic,
/// hyper), whose spans during an export would feed the export.
fn traced(meta: &tracing::Metadata<'_>) -> bool {
    let ours = meta.target().starts_with(env!("CARGO_CRATE_NAME"));
    let level = if meta.is_span() {
        SPAN_LEVEL
    } else {
        SPAN_EVENT_LEVEL
    };
    ours && *meta.level() <= level
}

fn pipeline(cfg: &Telemetry, endpoint: &str) -> Pipeline {
    let counters = export::Counters::new();
    let resource = resource(&cfg.service_name);
    let (processor, worker) = export::queue(
        export::Settings {
            endpoint: endpoint.to_owned(),
            protocol: cfg.otlp_protocol,
            timeout: cfg.otlp_timeout,
            resource: resource.clone(),
        },
        counters.clone(),
    );
    // A trace an API client started keeps the client's decision; the
    // manager's own traces are kept at the configured ratio.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampling_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    Pipeline {
        provider,
        worker: Mutex::new(Some(worker)),
        counters,
    }
}

/// `service.name` from the config, `service.version` of this build,
/// `host.name` of this machine; `OTEL_RESOURCE_ATTRIBUTES` may add more.
fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", host_name()),
        ])
        .build()
}

/// The kernel's host name (what `hostname` prints).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The running exporter; [`Traces::shutdown`] is the last step of a stop.
#[must_use = "traces are flushed only by Traces::shutdown"]
pub struct Traces {
    running: bool,
}

/// Starts exporting the spans queued since [`init`]: on its own thread, so a
/// slow or hanging collector never holds one of the manager's runtime
/// threads. Without an endpoint this does nothing.
pub fn start_export() -> Traces {
    let Some(pipeline) = PIPELINE.get() else {
        return Traces { running: false };
    };
    let worker = pipeline
        .worker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(worker) = worker else {
        return Traces { running: false };
    };
    let target = worker.describe();
    match worker.spawn() {
        Ok(()) => {
            tracing::info!("Exporting traces to {target}.");
            Traces { running: true }
        }
        Err(e) => {
            tracing::warn!("Cannot start the trace exporter: {e}; spans are dropped and counted.");
            Traces { running: false }
        }
    }
}

impl Traces {
    /// Exports what is queued (bounded by `timeout`) and stops the exporter.
    pub fn shutdown(self, timeout: Duration) {
        let Some(pipeline) = PIPELINE.get() else {
            return;
        };
        if !self.running {
            return;
        }
        if let Err(e) = pipeline.provider.shutdown_with_timeout(timeout) {
            tracing::warn!("Traces were not all exported at shutdown: {e}.");
        }
    }
}

/// Adds the exporter's counters to `/metrics` (when traces are on).
pub fn register_metrics(metrics: &Metrics) {
    let Some(pipeline) = PIPELINE.get() else {
        return;
    };
    for c in pipeline.counters.collectors() {
        if let Err(e) = metrics.register(c) {
            tracing::warn!("Cannot add the trace exporter's counters to /metrics: {e}.");
        }
    }
}

/// An integer as a span attribute: the trace layer records unsigned values
/// as text, so they are given to it as i64.
pub fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The URL spans are sent to: the endpoint itself for gRPC; for HTTP the
/// endpoint when it names a path, else `<endpoint>/v1/traces` (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read by other OpenTelemetry SDKs).
pub fn traces_url(endpoint: &str, protocol: OtlpProtocol) -> String {
    let endpoint = endpoint.trim();
    match protocol {
        OtlpProtocol::Grpc => endpoint.trim_end_matches('/').to_owned(),
        OtlpProtocol::HttpProtobuf => match url::Url::parse(endpoint) {
            Ok(url) if url.path() != "/" => endpoint.to_owned(),
            _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_without_a_path_get_the_traces_path() {
        let url = |e| traces_url(e, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/custom/traces"),
            "http://collector:4318/custom/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4317/", OtlpProtocol::Grpc),
            "http://127.0.0.1:4317"
        );
    }

    #[test]
    fn without_an_endpoint_no_span_is_created() {
        let cfg = Telemetry {
            log_level: "trace".to_owned(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            otlp_timeout: Duration::from_secs(1),
            sampling_ratio: 1.0,
            service_name: "test".to_owned(),
        };
        tracing::subscriber::with_default(subscriber(&cfg), || {
            // Even with every log level on, spans stay disabled: the log
            // layer takes events only, and there is no trace layer.
            assert!(tracing::info_span!("collect", pool = "a").is_disabled());
            assert!(tracing::error_span!("pool.handover").is_disabled());
            // Log events still are.
            assert!(tracing::event_enabled!(tracing::Level::INFO));
        });
    }

    #[test]
    fn only_this_crates_spans_and_warnings_are_traced() {
        // A subscriber that enables everything, so each span has metadata.
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let traced_by = |span: tracing::Span| span.metadata().map(traced);
            assert_eq!(traced_by(tracing::info_span!("probe")), Some(true));
            assert_eq!(traced_by(tracing::warn_span!("probe")), Some(true));
            assert_eq!(traced_by(tracing::debug_span!("probe")), Some(false));
            assert_eq!(
                traced_by(tracing::info_span!(target: "h2::proto", "probe")),
                Some(false)
            );
        });
    }
}
