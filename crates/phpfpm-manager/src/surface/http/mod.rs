//! The HTTP surface: `/metrics`, `/health/*` and the REST API under
//! `/api/v1`, including the history routes (`history`) answered from
//! `fpm-storage`'s queries. Every error answers with one JSON shape,
//! `{"error": {"code": "<stable_code>", "message": "<text>"}}` (`error`).
//! The listener, its timeouts and its connection cap live in `serve`;
//! authentication, scopes, per-client limits and the audit trail in `auth`.

pub mod auth;
pub mod error;
pub mod gate;
pub mod head;
pub mod history;
pub mod limit;
pub mod openapi;
pub mod operate;
pub mod page;
pub mod params;
pub mod reject;
pub mod scrape;
pub mod serve;
pub mod tls;

use std::borrow::Cow;
use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Json, Router};
use serde::Serialize;
use serde_json::json;

pub use error::ApiError;
pub use gate::QueryGate;

use crate::state::{AppState, PoolState};

/// Builds the router over the shared state. `history` answers the history
/// routes; they are served only with the rest of the API
/// (`server.api.enabled`).
pub fn router(state: Arc<AppState>, history: Option<Arc<QueryGate>>) -> Router {
    let cfg = state.config();
    let max_body = usize::try_from(cfg.server.max_body_bytes).unwrap_or(usize::MAX);
    let request_timeout = cfg.server.limits.request_timeout;
    let guard = auth::Guard::new(&state);
    let mut app = Router::new()
        .route("/metrics", get(metrics(scrape::Coalescer::new())))
        .route("/health", get(ready))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready));
    if cfg.server.api_enabled {
        app = app
            .route("/api/v1/health", get(ready))
            .route("/api/v1/health/live", get(live))
            .route("/api/v1/health/ready", get(ready))
            .route("/api/v1/status", get(status))
            .route("/api/v1/pools", get(pools))
            .route("/api/v1/pools/{pool}", get(pool))
            .route("/api/v1/pools/{pool}/workers", get(workers))
            .route("/api/v1/pools/{pool}/scale", get(scale))
            .route(
                "/api/v1/pools/{pool}/scaling",
                get(scale).post(scaling_control),
            )
            .route("/api/v1/autoscaling", get(autoscaling))
            .route("/api/v1/events/recent", get(recent_events))
            .merge(crate::opcache::routes())
            .merge(page::router());
    }
    let mut app = app
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state.clone());
    if let (true, Some(gate)) = (cfg.server.api_enabled, history) {
        app = app.merge(history::router(gate));
    }
    if cfg.server.api_enabled {
        app = operate::extend(app.merge(openapi::router()), state);
    }
    // Every route is added above this line: the auth layer wraps only the
    // routes that exist when it is applied.
    auth::protect(app, guard)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        // A handler that outlives `server.limits.request_timeout` is dropped
        // and answered with 503 `timeout`.
        .layer(
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(on_timeout))
                .timeout(request_timeout),
        )
        .layer(axum::middleware::map_response(reject::error_shape))
        .layer(axum::middleware::from_fn(
            crate::telemetry::http::trace_request,
        ))
}

async fn on_timeout(err: BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::timeout("the request took too long and was abandoned; retry later")
    } else {
        tracing::error!(error = %err, "HTTP request failed.");
        ApiError::internal("the request failed unexpectedly; see the manager's log")
    }
}

/// A request URI with its query string replaced by `<redacted>`: query
/// strings carry API keys, tokens and personal data, and the manager shows
/// php-fpm's view of requests to anyone who can reach its API.
pub fn redact_query(uri: &str) -> Cow<'_, str> {
    match uri.split_once('?') {
        Some((path, q)) if !q.is_empty() => Cow::Owned(format!("{path}?<redacted>")),
        _ => Cow::Borrowed(uri),
    }
}

/// `GET /metrics`, renders coalesced (`scrape.rs`).
fn metrics(
    scrape: Arc<scrape::Coalescer>,
) -> impl Fn(
    State<Arc<AppState>>,
    axum::http::HeaderMap,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap| {
        let scrape = scrape.clone();
        Box::pin(async move { scrape.answer(&state, &headers).await })
    }
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Why a pool is not ready, if it is not.
pub(crate) fn not_ready(p: &PoolState) -> Option<String> {
    // A stalled master's hidden status pool still answers the ping with a
    // frozen scoreboard while nothing is served; a pool marked failed
    // (crash loop, config refused) is not ready even if an old master
    // still answers.
    if let Some(st) = &p.stalled {
        Some(format!(
            "{}: php-fpm master {} is stalled ({})",
            p.name,
            st.pid,
            st.reason.as_str()
        ))
    } else if p.master.failed.is_some() {
        Some(format!("{}: failed", p.name))
    } else if !p.ping_ok {
        Some(format!("{}: not answering ping", p.name))
    } else {
        None
    }
}

/// Ready when every pool answers its ping and no master is stalled.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let pools = state.pools();
    let (failing, reasons): (Vec<&str>, Vec<String>) = pools
        .values()
        .filter_map(|p| not_ready(p).map(|why| (p.name.as_str(), why)))
        .unzip();
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        let body = json!({
            "status": "not_ready",
            "error": {
                "code": "pools_not_ready",
                "message": format!("pools not ready: {}", reasons.join("; ")),
            },
            "pools": failing,
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The wire form of a pool (domain types stay free of serde).
#[derive(Debug, Serialize)]
struct PoolDto {
    name: String,
    supervised: bool,
    up: bool,
    ping_ok: bool,
    scrape_uri: String,
    scrape_failures: u64,
    last_error: Option<ErrorDto>,
    process_manager: Option<String>,
    workers: Option<WorkersDto>,
    accepted_connections: Option<u64>,
    max_children_reached: Option<u64>,
    slow_requests: Option<u64>,
    master: MasterDto,
    pm: Option<PmDto>,
    kernel: KernelDto,
    collect_interval_ms: u64,
    circuit_open: bool,
    /// Set while the pool's master makes no progress.
    stalled: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct KernelDto {
    accept_queue: Option<u32>,
    accept_queue_limit: Option<u32>,
    /// Why the accept queue cannot be read here.
    accept_queue_error: Option<String>,
    workers_sampled: Option<usize>,
    worker_pss_sum_bytes: Option<u64>,
    worker_pss_p95_bytes: Option<u64>,
    worker_rss_sum_bytes: Option<u64>,
    pool_pss_bytes: Option<u64>,
    worker_cpu_percent: Option<f64>,
    workers_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ErrorDto {
    kind: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct WorkersDto {
    idle: u64,
    active: u64,
    total: u64,
    /// As php-fpm printed them.
    reported_idle: u64,
    reported_active: u64,
    reported_total: u64,
}

#[derive(Debug, Serialize)]
struct MasterDto {
    running: bool,
    pid: Option<u32>,
    restarts: u64,
    last_exit: Option<String>,
    failed: Option<String>,
    last_apply_error: Option<String>,
    generation: u64,
    adopted: bool,
    /// A second master serving beside this one (additive scale-up).
    second: Option<SecondMasterDto>,
}

#[derive(Debug, Serialize)]
struct SecondMasterDto {
    pid: u32,
    /// Its `pm.max_children`, part of the pool's.
    workers: u32,
}

#[derive(Debug, Serialize)]
struct PmDto {
    pm: &'static str,
    max_children: u32,
    start_servers: u32,
    min_spare_servers: u32,
    max_spare_servers: u32,
    max_requests: u32,
}

impl PoolDto {
    fn from_state(s: &PoolState) -> PoolDto {
        PoolDto {
            name: s.name.to_string(),
            supervised: s.master.supervised,
            up: s.up,
            ping_ok: s.ping_ok,
            scrape_uri: s.scrape_uri.clone(),
            scrape_failures: s.scrape_failures,
            last_error: s.last_error.as_ref().map(|e| ErrorDto {
                kind: e.kind,
                message: e.message.clone(),
            }),
            process_manager: s.status.as_ref().map(|st| st.process_manager.clone()),
            workers: s.status.as_ref().map(|st| WorkersDto {
                idle: s.derived.idle,
                active: s.derived.active,
                total: s.derived.total,
                reported_idle: st.idle_processes,
                reported_active: st.active_processes,
                reported_total: st.total_processes,
            }),
            accepted_connections: s.status.as_ref().map(|st| st.accepted_conn),
            max_children_reached: s.status.as_ref().map(|st| st.max_children_reached),
            slow_requests: s.status.as_ref().map(|st| st.slow_requests),
            master: MasterDto {
                running: s.master.running,
                pid: s.master.pid,
                restarts: s.master.restarts,
                last_exit: s.master.last_exit.clone(),
                failed: s.master.failed.clone(),
                last_apply_error: s.master.last_apply_error.clone(),
                generation: s.master.generation,
                adopted: s.master.adopted,
                second: s.master.extra.as_ref().map(|x| SecondMasterDto {
                    pid: x.pid,
                    workers: x.workers,
                }),
            },
            kernel: KernelDto {
                accept_queue: s.kernel.accept_queue.as_ref().ok().map(|q| q.0),
                accept_queue_limit: s.kernel.accept_queue.as_ref().ok().and_then(|q| q.1),
                accept_queue_error: s.kernel.accept_queue.as_ref().err().cloned(),
                workers_sampled: s.kernel.workers.as_ref().ok().map(|a| a.workers),
                worker_pss_sum_bytes: s
                    .kernel
                    .workers
                    .as_ref()
                    .ok()
                    .and_then(|a| a.pss.map(|d| d.sum)),
                worker_pss_p95_bytes: s
                    .kernel
                    .workers
                    .as_ref()
                    .ok()
                    .and_then(|a| a.pss.map(|d| d.p95)),
                worker_rss_sum_bytes: s
                    .kernel
                    .workers
                    .as_ref()
                    .ok()
                    .and_then(|a| a.rss.map(|d| d.sum)),
                pool_pss_bytes: s.kernel.workers.as_ref().ok().and_then(|a| a.total_pss),
                worker_cpu_percent: s
                    .kernel
                    .workers
                    .as_ref()
                    .ok()
                    .and_then(|a| a.cpu_percent_total),
                workers_error: s.kernel.workers.as_ref().err().cloned(),
            },
            collect_interval_ms: s.interval.as_millis() as u64,
            circuit_open: s.circuit_open,
            stalled: s.stalled.map(
                |st| json!({"pid": st.pid, "reason": st.reason.as_str(), "since_ms": st.since_ms}),
            ),
            pm: s.running_spec().map(|p| PmDto {
                pm: p.pm.as_str(),
                max_children: p.max_children,
                start_servers: p.start_servers,
                min_spare_servers: p.min_spare_servers,
                max_spare_servers: p.max_spare_servers,
                max_requests: p.max_requests,
            }),
        }
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let host = match state
        .host
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        Some(Ok(b)) => json!({
            "memory_limit_bytes": b.memory_limit,
            "memory_high_bytes": b.memory_high,
            "memory_current_bytes": b.memory_current,
            "memory_total_bytes": b.mem_total,
            "memory_available_bytes": b.mem_available,
            "cpu_quota_cores": b.cpu_quota_cores,
            "cpus": b.cpus,
            "loadavg": b.loadavg,
        }),
        Some(Err(e)) => json!({ "error": e }),
        None => serde_json::Value::Null,
    };
    let storage = state.storage_status().map(|s| {
        json!({
            "samples_written": s.samples_written,
            "events_written": s.events_written,
            "failing": s.failing,
            "last_error": s.last_error,
        })
    });
    // Time as RFC 3339, like the rest of the API's answers for people.
    let last_reload = state.last_reload().map(|r| {
        json!({
            "at": humantime::format_rfc3339_millis(r.at).to_string(),
            "at_ms": crate::events::unix_ms(r.at),
            "accepted": r.accepted,
            "problems": r.problems,
        })
    });
    let pools = state.pools();
    let up = pools.values().filter(|p| p.up).count();
    Json(json!({
        "host": host,
        "storage": storage,
        "last_reload": last_reload,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "mode": if state.config().zero_config { "zero-config" } else { "config" },
        "pools_total": pools.len(),
        "pools_up": up,
    }))
}

async fn pools(State(state): State<Arc<AppState>>) -> Json<Vec<PoolDto>> {
    let pools = state.pools();
    Json(pools.values().map(PoolDto::from_state).collect())
}

async fn pool(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<PoolDto>, ApiError> {
    let pools = state.pools();
    pools
        .values()
        .find(|p| p.name.as_str() == name)
        .map(|p| Json(PoolDto::from_state(p)))
        .ok_or_else(|| ApiError::not_found(format!("no pool named {name:?}")))
}

/// Query of `GET /api/v1/events/recent`.
#[derive(Debug, serde::Deserialize)]
struct RecentQuery {
    pool: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
}

/// The most recent events kept in memory (newest first), whatever storage
/// is configured; `GET /api/v1/events` serves the stored history.
async fn recent_events(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(q): axum::extract::Query<RecentQuery>,
) -> Json<serde_json::Value> {
    let limit = q.limit.unwrap_or(100).min(crate::events::RECENT_CAPACITY);
    let events: Vec<serde_json::Value> = state
        .recent_events
        .snapshot()
        .into_iter()
        .rev()
        .filter(|e| {
            q.pool
                .as_deref()
                .is_none_or(|p| e.pool.as_deref() == Some(p))
        })
        .filter(|e| q.kind.as_deref().is_none_or(|k| e.kind() == k))
        .take(limit)
        .map(|e| {
            json!({
                "ts_ms": e.ts_ms(),
                "pool": e.pool,
                "type": e.kind(),
                "severity": e.severity().as_str(),
                "actor": e.actor,
                "message": e.message(),
                "details": e.details(),
            })
        })
        .collect();
    Json(json!({ "events": events }))
}

/// `GET /api/v1/pools/{pool}/workers`: each worker from php-fpm's status page
/// (state, requests, current request) joined with `/proc` (CPU, memory,
/// age) by pid. Slots are the order of the status page. Query strings of
/// request URIs are redacted unless `monitoring.expose_query_strings`.
async fn workers(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pools = state.pools();
    let s = pools
        .values()
        .find(|p| p.name.as_str() == name)
        .ok_or_else(|| ApiError::not_found(format!("no pool named {name:?}")))?;
    let procs = s
        .status
        .as_ref()
        .map(|st| st.processes.as_slice())
        .unwrap_or(&[]);
    let expose = state.config().monitoring.expose_query_strings;
    let list: Vec<serde_json::Value> = procs
        .iter()
        .enumerate()
        .map(|(slot, p)| {
            let k = s.kernel.per_worker.iter().find(|w| w.pid == p.pid);
            let uri = if expose {
                Cow::Borrowed(p.request_uri.as_str())
            } else {
                redact_query(&p.request_uri)
            };
            json!({
                "slot": slot,
                "pid": p.pid,
                "state": p.state.as_str(),
                "requests": p.requests,
                "request_duration_us": p.request_duration_us,
                "request_method": p.request_method,
                "request_uri": uri,
                "script": p.script,
                "last_request_cpu": p.last_request_cpu,
                "last_request_memory": p.last_request_memory,
                "age_seconds": k.and_then(|k| k.age_secs).unwrap_or(p.start_since),
                "proc_state": k.map(|k| k.proc_state.to_string()),
                "cpu_percent": k.and_then(|k| k.cpu_percent),
                "rss_bytes": k.and_then(|k| k.rss_bytes),
                "pss_bytes": k.and_then(|k| k.pss_bytes),
                "uss_bytes": k.and_then(|k| k.uss_bytes),
            })
        })
        .collect();
    Ok(Json(json!({ "pool": s.name.as_str(), "workers": list })))
}

fn advice_json(s: &PoolState) -> serde_json::Value {
    let Some(a) = &s.control.scaling else {
        return json!({ "pool": s.name.as_str(), "mode": "advise", "advice": null });
    };
    let (pinned_workers, pinned_until_ms, override_reason) = match &a.override_ {
        crate::scale::Override::Pinned {
            workers,
            until_ms,
            reason,
        } => (Some(*workers), *until_ms, reason.clone()),
        crate::scale::Override::Paused { reason } => (None, None, reason.clone()),
        crate::scale::Override::Auto => (None, None, None),
    };
    json!({
        "pool": s.name.as_str(),
        "mode": a.mode,
        "override": a.override_.name(),
        "pinned_workers": pinned_workers,
        "pinned_until_ms": pinned_until_ms,
        "override_reason": override_reason,
        "phase": a.phase,
        "confidence": a.confidence,
        "current_workers": a.applied_workers.or_else(|| {
            s.status.as_ref().map(|_| u32::try_from(s.derived.total).unwrap_or(u32::MAX))
        }),
        "applied_workers": a.applied_workers,
        "recommended_workers": a.recommended_workers,
        "planned_workers": a.planned_cap,
        "rule": a.rule,
        "reason": a.reason,
        "model_rule": a.model_rule,
        "action": a.action,
        "cpu_bound": a.cpu_bound,
        "arrival_rate_per_s": a.long_rate,
        "short_rate_per_s": a.short_rate,
        "mean_service_s": a.mean_service_s,
        "offered_load": a.offered_load,
        "worker_pss_p95_bytes": a.p95_pss_bytes,
        "memory_budget_bytes": a.memory_budget_bytes,
        "memory_ceiling_workers": a.memory_ceiling,
        "cpu_ceiling_workers": a.cpu_ceiling,
        "changes": a.changes,
        "last_change_ms": a.last_change.map(crate::events::unix_ms),
        "last_error": a.last_error,
    })
}

/// `GET /api/v1/pools/{pool}/scale`: the current size and the autoscaler's
/// advice, with the figures behind it.
async fn scale(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pools = state.pools();
    pools
        .values()
        .find(|p| p.name.as_str() == name)
        .map(|p| Json(advice_json(p)))
        .ok_or_else(|| ApiError::not_found(format!("no pool named {name:?}")))
}

/// `GET /api/v1/autoscaling`: the advice for every pool.
async fn autoscaling(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let pools = state.pools();
    let list: Vec<serde_json::Value> = pools.values().map(advice_json).collect();
    Json(json!({ "pools": list }))
}

/// Body of `POST /api/v1/pools/{pool}/scaling`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalingRequest {
    /// `pin`, `unpin`, `pause` or `resume`.
    action: String,
    /// With `pin`: the pool's exact size.
    workers: Option<u32>,
    /// With `pin`: when it ends, RFC 3339 (`2026-12-24T08:00:00Z`) or a
    /// duration from now (`30m`).
    until: Option<String>,
    /// Why, for the event (never a secret: it is stored and shown).
    reason: Option<String>,
}

/// `POST /api/v1/pools/{pool}/scaling`: pin, unpin, pause or resume a pool's
/// autoscaler. Needs the `operate` scope (loopback clients only while
/// authentication is off: `auth`).
async fn scaling_control(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<ScalingRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::pool::{ControlAction, ControlError};
    let Json(req) = body.map_err(|e| ApiError::invalid_parameter(e.body_text()))?;
    let handle = {
        let handles = state.handles.read().unwrap_or_else(|e| e.into_inner());
        handles
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, h)| h.clone())
    }
    .ok_or_else(|| ApiError::not_found(format!("no pool named {name:?}")))?;
    if let Some(r) = &req.reason {
        if r.len() > 500 || r.chars().any(char::is_control) {
            return Err(ApiError::invalid_parameter(
                "reason: at most 500 characters, no control characters",
            ));
        }
    }
    let only_pin =
        |what: &str| ApiError::invalid_parameter(format!("{what} goes with action \"pin\" only"));
    let action = match req.action.as_str() {
        "pin" => {
            let workers = req.workers.ok_or_else(|| {
                ApiError::invalid_parameter("workers: required with action \"pin\"")
            })?;
            let until = req.until.as_deref().map(parse_until).transpose()?;
            ControlAction::Pin {
                workers,
                until,
                reason: req.reason,
            }
        }
        other => {
            if req.workers.is_some() {
                return Err(only_pin("workers"));
            }
            if req.until.is_some() {
                return Err(only_pin("until"));
            }
            match other {
                "unpin" => ControlAction::Unpin,
                "pause" => ControlAction::Pause { reason: req.reason },
                "resume" => ControlAction::Resume,
                _ => {
                    return Err(ApiError::invalid_parameter(format!(
                        "action: {other:?} is not one of pin, unpin, pause, resume"
                    )))
                }
            }
        }
    };
    match handle.control(action, "api").await {
        Ok(outcome) => {
            let view = state
                .pools()
                .get(&handle.name)
                .map(advice_json)
                .unwrap_or_default();
            Ok(Json(json!({
                "pool": handle.name.as_str(),
                "override": outcome.override_.name(),
                "applied_workers": outcome.applied_workers,
                "scaling": view,
            })))
        }
        Err(e) => Err(match &e {
            ControlError::Observed(_)
            | ControlError::OutOfRange { .. }
            | ControlError::NotAutoscaled(_)
            | ControlError::UntilInPast => ApiError::invalid_parameter(e.to_string()),
            ControlError::Apply(crate::supervisor::ApplyError::Refused(_)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "change_refused",
                e.to_string(),
            ),
            ControlError::Apply(_) | ControlError::Gone => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())
            }
        }),
    }
}

/// `until` as RFC 3339 or as a duration from now.
fn parse_until(text: &str) -> Result<std::time::SystemTime, ApiError> {
    let t = text.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        return Ok(at);
    }
    humantime::parse_duration(t)
        .map(|d| std::time::SystemTime::now() + d)
        .map_err(|_| {
            ApiError::invalid_parameter(format!(
                "until: {t:?} is neither an RFC 3339 time (2026-12-24T08:00:00Z) nor a duration (30m)"
            ))
        })
}

#[cfg(test)]
mod tests;
