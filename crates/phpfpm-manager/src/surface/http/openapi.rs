//! The API's contract: an OpenAPI 3.1 document generated from the code with
//! `utoipa` and served at `GET /api/v1/openapi.json`.
//!
//! The operator's routes (`operate`) carry their own `#[utoipa::path]`
//! next to their handlers. The older routes (`mod.rs`, `history.rs`) are
//! described here, in [`contract`], because several paths share one handler
//! there (`/health`, `/health/ready`, `/api/v1/health/ready`). Two tests keep
//! the document honest: one compares the router's route table with the
//! document both ways (a route missing from either fails), and the
//! integration test drives `schemathesis` over every operation of the
//! document against a running manager, checking every answer against it.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The route serving the document (with the rest of the API).
pub fn router() -> Router {
    Router::new().route(PATH, get(serve))
}

/// The document, built from the code.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON text, rendered once: it cannot change while the
/// manager runs.
pub fn document_json() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        document().to_json().unwrap_or_else(|e| {
            // Cannot happen for a document of plain strings and maps; the
            // answer then says so instead of failing the route.
            tracing::error!(error = %e, "Cannot render the OpenAPI document.");
            "{}".to_owned()
        })
    })
}

async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "phpfpm-manager",
        description = "Runs PHP-FPM, watches every pool, scales workers and exports metrics. \
            Every error answers `{\"error\": {\"code\": \"<stable_code>\", \"message\": \"<text>\"}}`; \
            clients switch on `code`, `message` is for people."
    ),
    paths(
        contract::metrics,
        contract::health,
        contract::health_live,
        contract::health_ready,
        contract::api_health,
        contract::api_health_live,
        contract::api_health_ready,
        contract::status,
        contract::pools,
        contract::pool,
        contract::workers,
        contract::scale,
        contract::scaling_get,
        contract::scaling_post,
        contract::autoscaling,
        contract::events_recent,
        contract::pool_metrics,
        contract::events,
        contract::annotations_get,
        contract::annotations_post,
        contract::event_stats,
        contract::openapi_json,
        contract::pool_opcache,
        contract::overview,
        contract::page,
        contract::page_asset,
        contract::favicon,
        super::operate::pool_reload,
        super::operate::pool_restart,
        super::operate::config_reload,
    ),
    modifiers(&BearerAuth),
    security((), ("bearerAuth" = [])),
    tags(
        (name = "health", description = "Liveness and readiness, for orchestrators and load balancers."),
        (name = "metrics", description = "Prometheus exposition."),
        (name = "pools", description = "What every pool is doing now."),
        (name = "scaling", description = "The autoscaler's advice and the operator's controls."),
        (name = "operate", description = "Operator actions: reload and restart pools, reload the configuration, mark deploys. Answered to loopback clients only until the API has authentication."),
        (name = "history", description = "Metrics and events over time, from the history database; Grafana annotations."),
        (name = "meta", description = "This document."),
        (name = "page", description = "The web page served at `/` and its assets (embedded in the binary)."),
    )
)]
struct ApiDoc;

/// Declares the `bearerAuth` scheme (`Authorization: Bearer <key>`).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key sent as `Authorization: Bearer <key>`.".to_owned(),
                ))
                .build(),
        );
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearerAuth", scheme);
    }
}

/// The wire form of the older routes, for the document only: the handlers
/// build the same JSON, and the fuzz test checks every answer against these
/// schemas. Nothing here is called or constructed.
#[allow(dead_code)]
pub mod contract {
    use std::collections::BTreeMap;

    use utoipa::ToSchema;

    use crate::surface::http::operate::{AnnotationCreated, AnnotationRequest};

    /// The one error shape of the whole HTTP surface.
    #[derive(ToSchema)]
    pub struct Error {
        pub error: ErrorDetail,
    }

    #[derive(ToSchema)]
    pub struct ErrorDetail {
        /// Stable snake_case code: `invalid_parameter`, `not_found`,
        /// `forbidden`, `conflict`, `observed`, `change_refused`,
        /// `config_invalid`, `not_ready`, `busy`, `timeout`,
        /// `storage_unavailable`, `payload_too_large`,
        /// `unsupported_media_type`, `method_not_allowed`, ...
        pub code: String,
        /// For people; may change between versions.
        pub message: String,
    }

    #[derive(ToSchema)]
    pub struct Ready {
        /// `ready`.
        pub status: String,
    }

    #[derive(ToSchema)]
    pub struct NotReady {
        /// `not_ready`.
        pub status: String,
        pub error: ErrorDetail,
        /// The pools that are not ready.
        pub pools: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct Live {
        /// `ok`.
        pub status: String,
    }

    #[derive(ToSchema)]
    pub struct Status {
        /// The host's memory and CPU budget (cgroup or /proc), `{"error": ...}`
        /// when it cannot be read, null when not read.
        #[schema(value_type = Value)]
        pub host: (),
        /// The history writer's figures; null without storage.
        #[schema(value_type = Value)]
        pub storage: (),
        /// The last configuration reload: `at`, `at_ms`, `accepted`, `problems`.
        #[schema(value_type = Value)]
        pub last_reload: (),
        pub version: String,
        pub uptime_seconds: u64,
        /// `config` or `zero-config`.
        pub mode: String,
        pub pools_total: u64,
        pub pools_up: u64,
    }

    #[derive(ToSchema)]
    pub struct Pool {
        pub name: String,
        pub supervised: bool,
        /// The last status request succeeded.
        pub up: bool,
        pub ping_ok: bool,
        pub scrape_uri: String,
        pub scrape_failures: u64,
        pub last_error: Option<ScrapeError>,
        pub process_manager: Option<String>,
        pub workers: Option<Workers>,
        pub accepted_connections: Option<u64>,
        pub max_children_reached: Option<u64>,
        pub slow_requests: Option<u64>,
        pub master: Master,
        pub pm: Option<Pm>,
        pub kernel: Kernel,
        pub collect_interval_ms: u64,
        pub circuit_open: bool,
        /// Set while the pool's master makes no progress: `pid`, `reason`, `since_ms`.
        #[schema(value_type = Value)]
        pub stalled: (),
    }

    #[derive(ToSchema)]
    pub struct ScrapeError {
        pub kind: String,
        pub message: String,
    }

    #[derive(ToSchema)]
    pub struct Workers {
        pub idle: u64,
        pub active: u64,
        pub total: u64,
        pub reported_idle: u64,
        pub reported_active: u64,
        pub reported_total: u64,
    }

    #[derive(ToSchema)]
    pub struct Master {
        pub running: bool,
        pub pid: Option<u32>,
        pub restarts: u64,
        pub last_exit: Option<String>,
        pub failed: Option<String>,
        pub last_apply_error: Option<String>,
        pub generation: u64,
        pub adopted: bool,
        /// A second master on the pool's socket, added to grow an
        /// `ondemand` pool without replacing its warm master.
        pub second: Option<SecondMaster>,
    }

    #[derive(ToSchema)]
    pub struct SecondMaster {
        pub pid: u32,
        /// Its `pm.max_children`, part of the pool's cap.
        pub workers: u32,
    }

    #[derive(ToSchema)]
    pub struct Pm {
        /// `static`, `dynamic` or `ondemand`.
        pub pm: String,
        pub max_children: u32,
        pub start_servers: u32,
        pub min_spare_servers: u32,
        pub max_spare_servers: u32,
        pub max_requests: u32,
    }

    #[derive(ToSchema)]
    pub struct Kernel {
        pub accept_queue: Option<u32>,
        pub accept_queue_limit: Option<u32>,
        pub accept_queue_error: Option<String>,
        pub workers_sampled: Option<u64>,
        pub worker_pss_sum_bytes: Option<u64>,
        pub worker_pss_p95_bytes: Option<u64>,
        pub worker_rss_sum_bytes: Option<u64>,
        pub pool_pss_bytes: Option<u64>,
        pub worker_cpu_percent: Option<f64>,
        pub workers_error: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct PoolWorkers {
        pub pool: String,
        pub workers: Vec<Worker>,
    }

    /// One worker from php-fpm's status page joined with `/proc` by pid.
    #[derive(ToSchema)]
    pub struct Worker {
        pub slot: u64,
        pub pid: u32,
        /// php-fpm's state: `Idle`, `Running`, `Reading headers`, ...
        pub state: String,
        pub requests: u64,
        pub request_duration_us: u64,
        pub request_method: String,
        /// Query string redacted unless `monitoring.expose_query_strings`.
        pub request_uri: String,
        pub script: String,
        pub last_request_cpu: Option<f64>,
        pub last_request_memory: u64,
        pub age_seconds: u64,
        pub proc_state: Option<String>,
        pub cpu_percent: Option<f64>,
        pub rss_bytes: Option<u64>,
        pub pss_bytes: Option<u64>,
        pub uss_bytes: Option<u64>,
    }

    /// The autoscaler's view of one pool. Before its first look only
    /// `pool`, `mode` and `advice: null` are present.
    #[derive(ToSchema, serde::Serialize)]
    pub struct Scale {
        pub pool: String,
        /// `apply` (the manager sizes the pool) or `advise`.
        pub mode: String,
        /// `auto`, `pinned` or `paused`.
        #[serde(rename = "override")]
        #[schema(required = false)]
        pub override_: Option<String>,
        #[schema(required = false)]
        pub pinned_workers: Option<u32>,
        #[schema(required = false)]
        pub pinned_until_ms: Option<i64>,
        #[schema(required = false)]
        pub override_reason: Option<String>,
        /// `learning` or `steady`.
        #[schema(required = false)]
        pub phase: Option<String>,
        #[schema(required = false)]
        pub confidence: Option<f64>,
        #[schema(required = false)]
        pub current_workers: Option<u32>,
        #[schema(required = false)]
        pub applied_workers: Option<u32>,
        #[schema(required = false)]
        pub recommended_workers: Option<u32>,
        #[schema(required = false)]
        pub planned_workers: Option<u32>,
        #[schema(required = false)]
        pub rule: Option<String>,
        #[schema(required = false)]
        pub reason: Option<String>,
        #[schema(required = false)]
        pub model_rule: Option<String>,
        #[schema(required = false)]
        pub action: Option<String>,
        #[schema(required = false)]
        pub cpu_bound: Option<bool>,
        #[schema(required = false)]
        pub arrival_rate_per_s: Option<f64>,
        #[schema(required = false)]
        pub short_rate_per_s: Option<f64>,
        #[schema(required = false)]
        pub mean_service_s: Option<f64>,
        #[schema(required = false)]
        pub offered_load: Option<f64>,
        #[schema(required = false)]
        pub worker_pss_p95_bytes: Option<u64>,
        #[schema(required = false)]
        pub memory_budget_bytes: Option<u64>,
        #[schema(required = false)]
        pub memory_ceiling_workers: Option<u32>,
        #[schema(required = false)]
        pub cpu_ceiling_workers: Option<u32>,
        #[schema(required = false)]
        pub changes: Option<u64>,
        #[schema(required = false)]
        pub last_change_ms: Option<i64>,
        #[schema(required = false)]
        pub last_error: Option<String>,
        /// Null until the autoscaler has looked at the pool.
        #[schema(required = false, value_type = Value)]
        pub advice: (),
    }

    #[derive(ToSchema)]
    pub struct Autoscaling {
        pub pools: Vec<Scale>,
    }

    /// Body of `POST /api/v1/pools/{pool}/scaling`.
    #[derive(ToSchema, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ScalingRequest {
        /// `pin`, `unpin`, `pause` or `resume`.
        pub action: String,
        /// With `pin`: the pool's exact size.
        pub workers: Option<u32>,
        /// With `pin`: when it ends, RFC 3339 or a duration from now (`30m`).
        pub until: Option<String>,
        /// Why, for the event (at most 500 characters; stored and shown).
        #[schema(max_length = 500)]
        pub reason: Option<String>,
    }

    #[derive(ToSchema, serde::Serialize)]
    pub struct ScalingReply {
        pub pool: String,
        /// `auto`, `pinned` or `paused`.
        #[serde(rename = "override")]
        pub override_: String,
        pub applied_workers: Option<u32>,
        pub scaling: Scale,
    }

    #[derive(ToSchema)]
    pub struct RecentEvents {
        pub events: Vec<RecentEvent>,
    }

    #[derive(ToSchema, serde::Serialize)]
    pub struct RecentEvent {
        pub ts_ms: i64,
        pub pool: Option<String>,
        #[serde(rename = "type")]
        pub kind: String,
        /// `info`, `warning` or `error`.
        pub severity: String,
        pub actor: String,
        pub message: String,
        #[schema(value_type = Value)]
        pub details: (),
    }

    #[derive(ToSchema)]
    pub struct MetricHistory {
        pub from: String,
        pub from_ms: i64,
        pub metric: String,
        pub pool: String,
        pub requested_step_seconds: Option<f64>,
        /// One entry per label set: `labels`, `kind`, `points` (`t_ms`, `value`, `min`, `max`).
        #[schema(value_type = Vec<Object>)]
        pub series: (),
        pub step_seconds: f64,
        pub step_widened: bool,
        /// `raw`, `minute` or `hour`.
        pub tier: String,
        pub to: String,
        pub to_ms: i64,
    }

    #[derive(ToSchema)]
    pub struct StoredEvent {
        pub id: i64,
        pub ts_ms: i64,
        pub kind: String,
        pub severity: String,
        pub pool: Option<String>,
        pub correlation_id: Option<String>,
        pub actor: Option<String>,
        pub message: String,
        #[schema(value_type = Value)]
        pub details: (),
    }

    #[derive(ToSchema)]
    pub struct Events {
        pub count: u64,
        pub events: Vec<StoredEvent>,
        pub from: Option<String>,
        pub limit: Option<u32>,
        pub to: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct EventStats {
        pub by_pool: BTreeMap<String, u64>,
        pub by_severity: BTreeMap<String, u64>,
        pub by_type: BTreeMap<String, u64>,
        pub from: Option<String>,
        pub to: Option<String>,
        pub total: u64,
    }

    /// One Grafana annotation (times in ms).
    #[derive(ToSchema, serde::Serialize)]
    pub struct Annotation {
        /// SimpleJSON requests only: their `annotation`, echoed as sent.
        #[schema(required = false, value_type = Value)]
        pub annotation: (),
        pub id: i64,
        pub pool: Option<String>,
        pub severity: String,
        pub tags: Vec<String>,
        pub text: String,
        pub time: i64,
        #[serde(rename = "timeEnd")]
        pub time_end: i64,
        pub title: String,
    }

    /// Grafana SimpleJSON's annotation request.
    #[derive(ToSchema, serde::Deserialize)]
    pub struct SimpleJsonQuery {
        /// `from`/`to` as RFC 3339.
        #[schema(value_type = Object, required = false)]
        pub range: (),
        /// What the user typed (`now-1h`), used without `range`.
        #[serde(rename = "rangeRaw")]
        #[schema(value_type = Object, required = false)]
        pub range_raw: (),
        /// Echoed in every answer; its `query` may filter like the GET form
        /// (`pool=www&type=crash`).
        #[schema(value_type = Object, required = false)]
        pub annotation: (),
    }

    /// The two bodies `POST /api/v1/events/annotations` takes: an
    /// operator's annotation (it has `text`) or a SimpleJSON query.
    #[derive(ToSchema, serde::Deserialize)]
    #[serde(untagged)]
    pub enum AnnotationPost {
        Create(AnnotationRequest),
        Query(SimpleJsonQuery),
    }

    /// `GET /api/v1/pools/{pool}/opcache`: the pool's OPcache figures, or
    /// why there are none (`state`, `reason`).
    #[derive(ToSchema)]
    pub struct PoolOpcache {
        pub pool: String,
        #[schema(value_type = Object, required = false)]
        pub opcache: (),
    }

    /// `GET /api/v1/overview`: per pool, what the web page's overview shows
    /// beyond `/api/v1/pools` (OPcache, request times of the scoreboard).
    #[derive(ToSchema)]
    pub struct Overview {
        #[schema(value_type = Vec<Object>)]
        pub pools: (),
    }

    #[utoipa::path(get, path = "/api/v1/pools/{pool}/opcache", tag = "pools", summary = "A pool's OPcache",
        description = "Hits, misses, memory and fill of the pool master's OPcache, or the reason they cannot be read (disabled, restricted, chroot, ...).",
        params(("pool" = String, Path, description = "The pool's name.", example = "www")),
        responses(
            (status = 200, description = "The figures or the reason.", body = Object),
            (status = 404, description = "No pool has this name.", body = Error)))]
    pub(super) fn pool_opcache() {}

    #[utoipa::path(get, path = "/api/v1/overview", tag = "pools", summary = "What the web page's overview shows",
        responses((status = 200, description = "One entry per pool.", body = Overview)))]
    pub(super) fn overview() {}

    #[utoipa::path(get, path = "/", tag = "page", summary = "The web page",
        responses((status = 200, description = "The page.", body = String, content_type = "text/html")))]
    pub(super) fn page() {}

    #[utoipa::path(get, path = "/assets/{name}", tag = "page", summary = "A file of the web page",
        params(("name" = String, Path, description = "The file's name.", example = "app.js")),
        responses(
            (status = 200, description = "The file.", content(
                (String = "text/javascript"),
                (String = "text/css"),
                (String = "image/svg+xml"))),
            (status = 404, description = "No such file.", body = Error)))]
    pub(super) fn page_asset() {}

    #[utoipa::path(get, path = "/favicon.ico", tag = "page", summary = "The page's icon",
        responses((status = 200, description = "The icon.", body = String, content_type = "image/svg+xml")))]
    pub(super) fn favicon() {}

    /// `GET /api/v1/openapi.json`.
    #[derive(ToSchema)]
    pub struct Document {
        /// `3.1.0`.
        pub openapi: String,
        #[schema(value_type = Object)]
        pub info: (),
        #[schema(value_type = Object)]
        pub paths: (),
    }

    #[utoipa::path(get, path = "/metrics", tag = "metrics",
        summary = "Prometheus metrics",
        description = "Every pool (php-fpm exporter names and labels) and the manager itself.",
        responses((status = 200, description = "The exposition text.", body = String, content_type = "text/plain")))]
    pub(super) fn metrics() {}

    #[utoipa::path(get, path = "/health", tag = "health", summary = "Readiness (as /health/ready)",
        responses(
            (status = 200, description = "Every pool answers its ping and no master is stalled.", body = Ready),
            (status = 503, description = "Some pool is not ready; they are named.", body = NotReady)))]
    pub(super) fn health() {}

    #[utoipa::path(get, path = "/health/live", tag = "health", summary = "Liveness",
        responses((status = 200, description = "The manager runs.", body = Live)))]
    pub(super) fn health_live() {}

    #[utoipa::path(get, path = "/health/ready", tag = "health", summary = "Readiness",
        responses(
            (status = 200, description = "Every pool answers its ping and no master is stalled.", body = Ready),
            (status = 503, description = "Some pool is not ready; they are named.", body = NotReady)))]
    pub(super) fn health_ready() {}

    #[utoipa::path(get, path = "/api/v1/health", tag = "health", summary = "Readiness (as /health/ready)",
        responses(
            (status = 200, description = "Ready.", body = Ready),
            (status = 503, description = "Some pool is not ready.", body = NotReady)))]
    pub(super) fn api_health() {}

    #[utoipa::path(get, path = "/api/v1/health/live", tag = "health", summary = "Liveness",
        responses((status = 200, description = "The manager runs.", body = Live)))]
    pub(super) fn api_health_live() {}

    #[utoipa::path(get, path = "/api/v1/health/ready", tag = "health", summary = "Readiness",
        responses(
            (status = 200, description = "Ready.", body = Ready),
            (status = 503, description = "Some pool is not ready.", body = NotReady)))]
    pub(super) fn api_health_ready() {}

    #[utoipa::path(get, path = "/api/v1/status", tag = "pools", summary = "The manager: version, host budget, storage, last reload",
        responses((status = 200, description = "The manager's status.", body = Status)))]
    pub(super) fn status() {}

    #[utoipa::path(get, path = "/api/v1/pools", tag = "pools", summary = "Every pool",
        responses((status = 200, description = "Every pool's latest look, master and kernel view.", body = [Pool])))]
    pub(super) fn pools() {}

    #[utoipa::path(get, path = "/api/v1/pools/{pool}", tag = "pools", summary = "One pool",
        params(("pool" = String, Path, description = "The pool's name.", example = "www")),
        responses(
            (status = 200, description = "The pool.", body = Pool),
            (status = 404, description = "No pool has this name.", body = Error)))]
    pub(super) fn pool() {}

    #[utoipa::path(get, path = "/api/v1/pools/{pool}/workers", tag = "pools", summary = "A pool's workers",
        description = "Each worker from php-fpm's status page (state, requests, current request) joined with /proc (CPU, memory, age) by pid.",
        params(("pool" = String, Path, description = "The pool's name.", example = "www")),
        responses(
            (status = 200, description = "The workers.", body = PoolWorkers),
            (status = 404, description = "No pool has this name.", body = Error)))]
    pub(super) fn workers() {}

    #[utoipa::path(get, path = "/api/v1/pools/{pool}/scale", tag = "scaling", summary = "A pool's size and the autoscaler's advice",
        params(("pool" = String, Path, description = "The pool's name.", example = "www")),
        responses(
            (status = 200, description = "The advice with the figures behind it.", body = Scale),
            (status = 404, description = "No pool has this name.", body = Error)))]
    pub(super) fn scale() {}

    #[utoipa::path(get, path = "/api/v1/pools/{pool}/scaling", tag = "scaling", summary = "A pool's size and the autoscaler's advice (as /scale)",
        params(("pool" = String, Path, description = "The pool's name.", example = "www")),
        responses(
            (status = 200, description = "The advice with the figures behind it.", body = Scale),
            (status = 404, description = "No pool has this name.", body = Error)))]
    pub(super) fn scaling_get() {}

    #[utoipa::path(post, path = "/api/v1/pools/{pool}/scaling", tag = "scaling", summary = "Pin, unpin, pause or resume a pool's autoscaler",
        params(("pool" = String, Path, description = "The pool's name.", example = "www")),
        request_body(content = ScalingRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "Done; the pool's new override and size.", body = ScalingReply),
            (status = 400, description = "A malformed body or a control the pool cannot take (observed, out of its limits).", body = Error),
            (status = 403, description = "Not a loopback client.", body = Error),
            (status = 404, description = "No pool has this name.", body = Error),
            (status = 413, description = "The body is larger than server.max_body_bytes.", body = Error),
            (status = 422, description = "php-fpm -t refused the change; the pool keeps running as it was.", body = Error),
            (status = 503, description = "The pool cannot take a change now.", body = Error)))]
    pub(super) fn scaling_post() {}

    #[utoipa::path(get, path = "/api/v1/autoscaling", tag = "scaling", summary = "The advice for every pool",
        responses((status = 200, description = "Every pool's advice.", body = Autoscaling)))]
    pub(super) fn autoscaling() {}

    #[utoipa::path(get, path = "/api/v1/events/recent", tag = "history", summary = "Recent events kept in memory, newest first",
        params(
            ("pool" = Option<String>, Query, description = "Only this pool's events."),
            ("type" = Option<String>, Query, description = "Only events of this type (`pool_change`, `crash`, ...)."),
            ("limit" = Option<u32>, Query, description = "At most this many (default 100).")),
        responses(
            (status = 200, description = "The events.", body = RecentEvents),
            (status = 400, description = "A malformed or repeated parameter.", body = Error)))]
    pub(super) fn events_recent() {}

    #[utoipa::path(get, path = "/api/v1/pools/{pool}/metrics", tag = "history", summary = "A pool's metric over time",
        params(
            ("pool" = String, Path, description = "The pool's name.", example = "www"),
            ("metric" = String, Query, description = "A series name, as on /metrics.", example = "phpfpm_active_processes"),
            ("from" = Option<String>, Query, description = "RFC 3339, unix ms or s, or `now-1h` (default: an hour before `to`)."),
            ("to" = Option<String>, Query, description = "As `from` (default: now)."),
            ("step" = Option<String>, Query, description = "A duration (`60s`, `5m`) or seconds; widened when the range would give too many points.")),
        responses(
            (status = 200, description = "The series.", body = MetricHistory),
            (status = 400, description = "A malformed, unknown or repeated parameter.", body = Error),
            (status = 404, description = "No such metric for this pool in the history.", body = Error),
            (status = 503, description = "The history database cannot answer now (`busy` with Retry-After, `storage_unavailable`).", body = Error)))]
    pub(super) fn pool_metrics() {}

    #[utoipa::path(get, path = "/api/v1/events", tag = "history", summary = "Stored events",
        params(
            ("from" = Option<String>, Query, description = "RFC 3339, unix ms or s, or `now-1h` (default: a day before `to`)."),
            ("to" = Option<String>, Query, description = "As `from` (default: now)."),
            ("pool" = Option<String>, Query, description = "Only this pool's events."),
            ("type" = Option<String>, Query, description = "Comma-separated event types."),
            ("severity" = Option<String>, Query, description = "Comma-separated severities."),
            ("limit" = Option<u32>, Query, description = "1 to 10000 (default 500).", minimum = 1, maximum = 10000)),
        responses(
            (status = 200, description = "The events, newest first.", body = Events),
            (status = 400, description = "A malformed, unknown or repeated parameter.", body = Error),
            (status = 503, description = "The history database cannot answer now.", body = Error)))]
    pub(super) fn events() {}

    #[utoipa::path(get, path = "/api/v1/events/annotations", tag = "history", summary = "Events as Grafana annotations",
        description = "For Grafana's JSON API and Infinity data sources: `?from=${__from}&to=${__to}`.",
        params(
            ("from" = Option<String>, Query, description = "RFC 3339, unix ms or s, or `now-1h`."),
            ("to" = Option<String>, Query, description = "As `from` (default: now)."),
            ("pool" = Option<String>, Query, description = "Only this pool's events."),
            ("type" = Option<String>, Query, description = "Comma-separated event types (`annotation` for operators' marks)."),
            ("severity" = Option<String>, Query, description = "Comma-separated severities."),
            ("limit" = Option<u32>, Query, description = "1 to 10000 (default 500).", minimum = 1, maximum = 10000)),
        responses(
            (status = 200, description = "A flat array of annotations.", body = [Annotation]),
            (status = 400, description = "A malformed, unknown or repeated parameter.", body = Error),
            (status = 503, description = "The history database cannot answer now.", body = Error)))]
    pub(super) fn annotations_get() {}

    #[utoipa::path(post, path = "/api/v1/events/annotations", tag = "history",
        summary = "Mark a deploy, or answer Grafana SimpleJSON's annotation query",
        description = "A body with `text` is an operator's annotation: it is recorded as an `annotation` event (in the history and in every annotation answer) and answered 202; loopback clients only until the API has authentication. Any other JSON object is Grafana SimpleJSON's annotation query, answered like the GET form.",
        request_body(content = AnnotationPost, content_type = "application/json"),
        responses(
            (status = 200, description = "SimpleJSON query: the annotations, each echoing the request's `annotation`.", body = [Annotation]),
            (status = 202, description = "Annotation recorded.", body = AnnotationCreated),
            (status = 400, description = "A malformed body, an unknown field (named), or a bad filter.", body = Error),
            (status = 403, description = "Not a loopback client (annotations only).", body = Error),
            (status = 404, description = "The annotation names a pool that does not exist.", body = Error),
            (status = 413, description = "The body is larger than server.max_body_bytes.", body = Error),
            (status = 415, description = "An annotation not sent as application/json.", body = Error),
            (status = 503, description = "The history database cannot answer now.", body = Error)))]
    pub(super) fn annotations_post() {}

    #[utoipa::path(get, path = "/api/v1/events/stats", tag = "history", summary = "Event counts by type, severity and pool",
        params(
            ("from" = Option<String>, Query, description = "RFC 3339, unix ms or s, or `now-1h`."),
            ("to" = Option<String>, Query, description = "As `from` (default: now)."),
            ("pool" = Option<String>, Query, description = "Only this pool's events."),
            ("type" = Option<String>, Query, description = "Comma-separated event types."),
            ("severity" = Option<String>, Query, description = "Comma-separated severities.")),
        responses(
            (status = 200, description = "The counts.", body = EventStats),
            (status = 400, description = "A malformed, unknown or repeated parameter.", body = Error),
            (status = 503, description = "The history database cannot answer now.", body = Error)))]
    pub(super) fn event_stats() {}

    #[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", summary = "This document (OpenAPI 3.1)",
        responses((status = 200, description = "The document.", body = Document)))]
    pub(super) fn openapi_json() {}
}

#[cfg(test)]
mod tests;
