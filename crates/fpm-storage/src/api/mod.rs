//! The history part of `/api/v1`: metrics of a pool over time, events, Grafana
//! annotations and event statistics. Handlers parse (pure, `params`), then run the query
//! on tokio's blocking pool so SQLite never stalls the async workers.

pub mod error;
pub mod params;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::model::{EventFilter, TimestampMs};
use crate::reader::Reader;
use crate::rollup;
use error::ApiError;

/// Default range of event queries without `from`.
const DEFAULT_EVENT_RANGE_MS: i64 = 24 * 3_600_000;
/// Default range of metric queries without `from`.
const DEFAULT_METRIC_RANGE_MS: i64 = 3_600_000;
const DEFAULT_EVENT_LIMIT: u32 = 500;

/// Routes under `/api/v1` (full paths), ready to `merge` into the daemon's router.
pub fn router(reader: Reader) -> Router {
    Router::new()
        .route("/api/v1/pools/{pool}/metrics", get(pool_metrics))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/annotations", get(annotations))
        .route("/api/v1/events/stats", get(event_stats))
        .with_state(reader)
}

fn now_ms() -> TimestampMs {
    crate::writer::wall_clock_ms()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "History query task failed.");
        ApiError::internal("the history query failed unexpectedly; see the manager's log")
    })?
}

type Pairs = Query<Vec<(String, String)>>;

/// `from`/`to` with defaults: `to` = now, `from` = `to` - `default_range`.
fn range(
    p: &std::collections::BTreeMap<String, String>,
    now: TimestampMs,
    default_range: i64,
) -> Result<(TimestampMs, TimestampMs), ApiError> {
    let to = match p.get("to") {
        Some(v) => params::parse_time("to", v, now).map_err(ApiError::invalid_parameter)?,
        None => now,
    };
    let from = match p.get("from") {
        Some(v) => params::parse_time("from", v, now).map_err(ApiError::invalid_parameter)?,
        None => to.saturating_sub(default_range),
    };
    if from >= to {
        return Err(ApiError::invalid_parameter(format!(
            "parameter 'from' ({}) must be before 'to' ({})",
            params::format_time(from),
            params::format_time(to)
        )));
    }
    Ok((from, to))
}

async fn pool_metrics(
    State(reader): State<Reader>,
    Path(pool): Path<String>,
    Query(q): Pairs,
) -> Result<Json<Value>, ApiError> {
    let now = now_ms();
    let p = params::collect(q, &["metric", "from", "to", "step"])
        .map_err(ApiError::invalid_parameter)?;
    let metric = p
        .get("metric")
        .filter(|m| !m.is_empty())
        .cloned()
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "parameter 'metric' is required (for example metric=phpfpm_active_processes)",
            )
        })?;
    let (from, to) = range(&p, now, DEFAULT_METRIC_RANGE_MS)?;
    let step = match p.get("step") {
        Some(s) => params::parse_step(s).map_err(ApiError::invalid_parameter)?,
        None => rollup::default_step(from, to),
    };
    let result = blocking(move || {
        let r = reader.query_series(&pool, &metric, from, to, step, now)?;
        Ok(json!({
            "pool": pool,
            "metric": metric,
            "from": params::format_time(r.from_ms),
            "to": params::format_time(r.to_ms),
            "from_ms": r.from_ms,
            "to_ms": r.to_ms,
            "step_seconds": r.step_ms as f64 / 1000.0,
            "tier": r.tier,
            "series": r.series,
        }))
    })
    .await?;
    Ok(Json(result))
}

fn event_filter(
    q: Vec<(String, String)>,
    now: TimestampMs,
    with_limit: bool,
) -> Result<EventFilter, ApiError> {
    let allowed: &[&str] = if with_limit {
        &["from", "to", "pool", "type", "severity", "limit"]
    } else {
        &["from", "to", "pool", "type", "severity"]
    };
    let p = params::collect(q, allowed).map_err(ApiError::invalid_parameter)?;
    let (from, to) = range(&p, now, DEFAULT_EVENT_RANGE_MS)?;
    Ok(EventFilter {
        from_ms: Some(from),
        to_ms: Some(to),
        pool: p.get("pool").filter(|s| !s.is_empty()).cloned(),
        kinds: match p.get("type") {
            Some(v) => params::parse_list("type", v).map_err(ApiError::invalid_parameter)?,
            None => Vec::new(),
        },
        severities: match p.get("severity") {
            Some(v) => params::parse_list("severity", v).map_err(ApiError::invalid_parameter)?,
            None => Vec::new(),
        },
        limit: if with_limit {
            Some(match p.get("limit") {
                Some(v) => params::parse_limit(v).map_err(ApiError::invalid_parameter)?,
                None => DEFAULT_EVENT_LIMIT,
            })
        } else {
            None
        },
    })
}

async fn events(State(reader): State<Reader>, Query(q): Pairs) -> Result<Json<Value>, ApiError> {
    let f = event_filter(q, now_ms(), true)?;
    let out = blocking(move || {
        let evs = reader.events(&f)?;
        Ok(json!({
            "from": f.from_ms.map(params::format_time),
            "to": f.to_ms.map(params::format_time),
            "count": evs.len(),
            "limit": f.limit,
            "events": evs,
        }))
    })
    .await?;
    Ok(Json(out))
}

/// Grafana annotations: a flat array of `{time, timeEnd, title, text, tags}` (times in
/// ms), which both the JSON API and the Infinity data sources read.
async fn annotations(
    State(reader): State<Reader>,
    Query(q): Pairs,
) -> Result<Json<Value>, ApiError> {
    let f = event_filter(q, now_ms(), true)?;
    let out = blocking(move || {
        let evs = reader.events(&f)?;
        let items: Vec<Value> = evs
            .into_iter()
            .map(|s| {
                let e = s.event;
                let mut tags = vec![e.kind.as_str().to_owned(), e.severity.as_str().to_owned()];
                if let Some(p) = &e.pool {
                    tags.push(format!("pool:{p}"));
                }
                json!({
                    "id": s.id,
                    "time": e.ts_ms,
                    "timeEnd": e.ts_ms,
                    "title": format!("{}{}", e.kind, e.pool.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()),
                    "text": e.message,
                    "tags": tags,
                    "severity": e.severity,
                    "pool": e.pool,
                })
            })
            .collect();
        Ok(Value::Array(items))
    })
    .await?;
    Ok(Json(out))
}

async fn event_stats(
    State(reader): State<Reader>,
    Query(q): Pairs,
) -> Result<Json<Value>, ApiError> {
    let f = event_filter(q, now_ms(), false)?;
    let out = blocking(move || {
        let s = reader.event_stats(&f)?;
        Ok(json!({
            "from": f.from_ms.map(params::format_time),
            "to": f.to_ms.map(params::format_time),
            "total": s.total,
            "by_type": s.by_kind,
            "by_severity": s.by_severity,
            "by_pool": s.by_pool,
        }))
    })
    .await?;
    Ok(Json(out))
}
