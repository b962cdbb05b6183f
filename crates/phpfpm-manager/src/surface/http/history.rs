//! The history part of `/api/v1`: metrics of a pool over time, events, Grafana
//! annotations and event statistics, answered from `fpm-storage`'s queries.
//! Handlers parse (pure, `params`), then run the query through the
//! [`QueryGate`], which keeps SQLite off the async workers and bounds how many
//! queries run and wait.
//!
//! Grafana reaches the annotations two ways: the JSON API and Infinity data
//! sources `GET /api/v1/events/annotations?from=${__from}&to=${__to}` (epoch
//! milliseconds), and the SimpleJSON data source, pointed at
//! `/api/v1/events`, `POST`s its annotation query (`range.from`/`range.to` in
//! RFC 3339) to `/api/v1/events/annotations`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::Value;

use fpm_storage::rollup::{self, MAX_STEP_MS};
use fpm_storage::{EventFilter, EventKind, SeriesPoints, Severity, StoredEvent, Tier, TimestampMs};

use super::error::ApiError;
use super::gate::QueryGate;
use super::params;

/// Default range of event queries without `from`.
const DEFAULT_EVENT_RANGE_MS: i64 = 24 * 3_600_000;
/// Default range of metric queries without `from`.
const DEFAULT_METRIC_RANGE_MS: i64 = 3_600_000;
const DEFAULT_EVENT_LIMIT: u32 = 500;

/// The history routes (full paths), to be merged into the API router.
pub fn router(gate: Arc<QueryGate>) -> Router {
    Router::new()
        .route("/api/v1/pools/{pool}/metrics", get(pool_metrics))
        .route("/api/v1/events", get(events))
        .route(
            "/api/v1/events/annotations",
            get(annotations).post(simplejson_annotations),
        )
        .route("/api/v1/events/stats", get(event_stats))
        .with_state(gate)
}

type Pairs = Query<Vec<(String, String)>>;

/// A reply serialised to JSON text on the blocking thread that read it: a
/// `serde_json::Value` tree of 10,000 events weighs several times the text,
/// and the async workers never spend time on it. Fields of the reply structs
/// are in alphabetical order, the order the answers have always had.
struct JsonBytes(Vec<u8>);

impl JsonBytes {
    fn of(v: &impl Serialize) -> Result<JsonBytes, ApiError> {
        serde_json::to_vec(v).map(JsonBytes).map_err(|e| {
            tracing::error!(error = %e, "Cannot encode a history answer.");
            ApiError::internal("the answer could not be encoded; see the manager's log")
        })
    }
}

impl IntoResponse for JsonBytes {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

#[derive(Serialize)]
struct MetricsReply {
    from: String,
    from_ms: TimestampMs,
    metric: String,
    pool: String,
    requested_step_seconds: Option<f64>,
    series: Vec<SeriesPoints>,
    step_seconds: f64,
    step_widened: bool,
    tier: Tier,
    to: String,
    to_ms: TimestampMs,
}

#[derive(Serialize)]
struct EventsReply {
    count: usize,
    events: Vec<StoredEvent>,
    from: Option<String>,
    limit: Option<u32>,
    to: Option<String>,
}

#[derive(Serialize)]
struct StatsReply {
    by_pool: BTreeMap<String, u64>,
    by_severity: BTreeMap<String, u64>,
    by_type: BTreeMap<String, u64>,
    from: Option<String>,
    to: Option<String>,
    total: u64,
}

/// One Grafana annotation: `{time, timeEnd, title, text, tags}` (times in ms),
/// which the JSON API, Infinity and SimpleJSON data sources all read;
/// SimpleJSON also wants its `annotation` object back.
#[derive(Serialize)]
struct Annotation<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    annotation: Option<&'a Value>,
    id: i64,
    pool: Option<String>,
    severity: Severity,
    tags: Vec<String>,
    text: String,
    time: TimestampMs,
    #[serde(rename = "timeEnd")]
    time_end: TimestampMs,
    title: String,
}

impl<'a> Annotation<'a> {
    fn new(s: StoredEvent, annotation: Option<&'a Value>) -> Annotation<'a> {
        let e = s.event;
        let mut tags = vec![e.kind.as_str().to_owned(), e.severity.as_str().to_owned()];
        if let Some(p) = &e.pool {
            tags.push(format!("pool:{p}"));
        }
        // An operator's annotation carries its own tags.
        if e.kind == EventKind::Annotation {
            let own = e.details.get("tags").and_then(Value::as_array);
            tags.extend(
                own.into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned),
            );
        }
        Annotation {
            annotation,
            id: s.id,
            title: match &e.pool {
                Some(p) => format!("{} ({p})", e.kind),
                None => e.kind.to_string(),
            },
            pool: e.pool,
            severity: e.severity,
            tags,
            text: e.message,
            time: e.ts_ms,
            time_end: e.ts_ms,
        }
    }
}

/// `from`/`to` with defaults: `to` = now, `from` = `to` - `default_range`.
fn range(
    from: Option<&str>,
    to: Option<&str>,
    now: TimestampMs,
    default_range: i64,
) -> Result<(TimestampMs, TimestampMs), ApiError> {
    let to = match to {
        Some(v) => params::parse_time("to", v, now).map_err(ApiError::invalid_parameter)?,
        None => now,
    };
    let from = match from {
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

fn range_of(
    p: &BTreeMap<String, String>,
    now: TimestampMs,
    default_range: i64,
) -> Result<(TimestampMs, TimestampMs), ApiError> {
    range(
        p.get("from").map(String::as_str),
        p.get("to").map(String::as_str),
        now,
        default_range,
    )
}

async fn pool_metrics(
    State(gate): State<Arc<QueryGate>>,
    Path(pool): Path<String>,
    Query(q): Pairs,
) -> Result<JsonBytes, ApiError> {
    let now = fpm_storage::wall_clock_ms();
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
    let (from, to) = range_of(&p, now, DEFAULT_METRIC_RANGE_MS)?;
    let requested = p
        .get("step")
        .map(|s| params::parse_step(s))
        .transpose()
        .map_err(ApiError::invalid_parameter)?;
    // A range that is too long for the step asked for is answered at a wider
    // step (said in the reply) rather than refused.
    let asked = requested.unwrap_or_else(|| rollup::default_step(from, to).min(MAX_STEP_MS));
    let step = rollup::fit_step(from, to, asked);
    gate.run(move |reader| {
        let r = reader.query_series(&pool, &metric, from, to, step, now)?;
        JsonBytes::of(&MetricsReply {
            from: params::format_time(r.from_ms),
            from_ms: r.from_ms,
            metric,
            pool,
            requested_step_seconds: requested.map(|s| s as f64 / 1000.0),
            series: r.series,
            step_seconds: r.step_ms as f64 / 1000.0,
            step_widened: step != asked,
            tier: r.tier,
            to: params::format_time(r.to_ms),
            to_ms: r.to_ms,
        })
    })
    .await
}

/// The filter of the events endpoints from their parameters.
fn event_filter(
    p: &BTreeMap<String, String>,
    now: TimestampMs,
    with_limit: bool,
) -> Result<EventFilter, ApiError> {
    let (from, to) = range_of(p, now, DEFAULT_EVENT_RANGE_MS)?;
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

const FILTER_WITH_LIMIT: &[&str] = &["from", "to", "pool", "type", "severity", "limit"];
const FILTER: &[&str] = &["from", "to", "pool", "type", "severity"];

async fn events(
    State(gate): State<Arc<QueryGate>>,
    Query(q): Pairs,
) -> Result<JsonBytes, ApiError> {
    let p = params::collect(q, FILTER_WITH_LIMIT).map_err(ApiError::invalid_parameter)?;
    let f = event_filter(&p, fpm_storage::wall_clock_ms(), true)?;
    gate.run(move |reader| {
        let events = reader.events(&f)?;
        JsonBytes::of(&EventsReply {
            count: events.len(),
            events,
            from: f.from_ms.map(params::format_time),
            limit: f.limit,
            to: f.to_ms.map(params::format_time),
        })
    })
    .await
}

/// Grafana annotations as a flat array.
async fn annotations(
    State(gate): State<Arc<QueryGate>>,
    Query(q): Pairs,
) -> Result<JsonBytes, ApiError> {
    let p = params::collect(q, FILTER_WITH_LIMIT).map_err(ApiError::invalid_parameter)?;
    let f = event_filter(&p, fpm_storage::wall_clock_ms(), true)?;
    gate.run(move |reader| {
        let items: Vec<Annotation> = reader
            .events(&f)?
            .into_iter()
            .map(|s| Annotation::new(s, None))
            .collect();
        JsonBytes::of(&items)
    })
    .await
}

/// The SimpleJSON data source's annotation request: the dashboard's range in
/// `range` (RFC 3339; `rangeRaw` holds what the user typed, like `now-1h`)
/// and the annotation query in `annotation`, whose `query` text may hold the
/// same filters as the GET form (`pool=www&type=crash`). Each answer echoes
/// the `annotation` object, as that data source expects.
async fn simplejson_annotations(
    State(gate): State<Arc<QueryGate>>,
    body: axum::body::Bytes,
) -> Result<JsonBytes, ApiError> {
    // Parsed here rather than by axum's `Json`, so a bad body gets the API's error shape.
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_parameter(format!("the request body is not a JSON object: {e}"))
    })?;
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let field =
        |section: &str, key: &str| body.get(section).and_then(|r| r.get(key)).and_then(text);
    let mut p = BTreeMap::new();
    for key in ["from", "to"] {
        if let Some(v) = field("range", key).or_else(|| field("rangeRaw", key)) {
            p.insert(key.to_owned(), v);
        }
    }
    let echo = body.get("annotation").cloned().unwrap_or(Value::Null);
    let query = echo
        .get("query")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    if !query.is_empty() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| {
            ApiError::invalid_parameter(format!(
                "annotation query '{query}' is not like pool=www&type=crash: {e}"
            ))
        })?;
        let filters = params::collect(pairs, &["pool", "type", "severity", "limit"])
            .map_err(|e| ApiError::invalid_parameter(format!("annotation query: {e}")))?;
        p.extend(filters);
    }
    let f = event_filter(&p, fpm_storage::wall_clock_ms(), true)?;
    gate.run(move |reader| {
        let items: Vec<Annotation> = reader
            .events(&f)?
            .into_iter()
            .map(|s| Annotation::new(s, Some(&echo)))
            .collect();
        JsonBytes::of(&items)
    })
    .await
}

async fn event_stats(
    State(gate): State<Arc<QueryGate>>,
    Query(q): Pairs,
) -> Result<JsonBytes, ApiError> {
    let p = params::collect(q, FILTER).map_err(ApiError::invalid_parameter)?;
    let f = event_filter(&p, fpm_storage::wall_clock_ms(), false)?;
    gate.run(move |reader| {
        let s = reader.event_stats(&f)?;
        JsonBytes::of(&StatsReply {
            by_pool: s.by_pool,
            by_severity: s.by_severity,
            by_type: s.by_kind,
            from: f.from_ms.map(params::format_time),
            to: f.to_ms.map(params::format_time),
            total: s.total,
        })
    })
    .await
}

#[cfg(test)]
mod tests;
