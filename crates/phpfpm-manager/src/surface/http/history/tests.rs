//! The history routes through the real router and a real (in-memory) database: shapes of
//! the answers, filters, every accepted time form, Grafana's own annotation requests, and
//! the one error format for bad input.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fpm_storage::{Event, EventKind, Sample, Severity, Storage, StorageConfig, WriterOptions};
use prometheus::IntCounter;
use serde_json::Value;
use tower::ServiceExt;

use super::super::params::format_time;
use super::*;

const MIN: i64 = 60_000;

fn labels(pool: &str) -> Vec<(String, String)> {
    vec![("pool".to_owned(), pool.to_owned())]
}

/// Ten minutes of history ending now: a gauge and a counter for pool `www`, and events.
fn fixture() -> (Storage, Arc<QueryGate>, i64) {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    let now = fpm_storage::wall_clock_ms();
    let start = now - 10 * MIN;
    for i in 0..600 {
        let t = start + i * 1000;
        w.ingest(
            now,
            t,
            vec![
                Sample::gauge("phpfpm_active_processes", labels("www"), (i % 5) as f64),
                Sample::counter("phpfpm_accepted_connections", labels("www"), (i * 2) as f64),
            ],
        );
    }
    let mut e = Event::new(
        now - 5 * MIN,
        EventKind::Reload,
        Severity::Info,
        "reloaded www",
    );
    e.pool = Some("www".into());
    w.add_event(e);
    let mut e = Event::new(
        now - 4 * MIN,
        EventKind::Crash,
        Severity::Error,
        "master died",
    );
    e.pool = Some("api".into());
    e.details = serde_json::json!({"exit_code": 255});
    w.add_event(e);
    let mut e = Event::new(
        now - 3 * MIN,
        EventKind::ApiAction,
        Severity::Warning,
        "scale www to 9",
    );
    e.pool = Some("www".into());
    e.actor = Some("deploy-bot".into());
    w.add_event(e);
    w.maintain_fully(now).unwrap();
    let readers = vec![storage.reader().unwrap(), storage.reader().unwrap()];
    let gate = QueryGate::new(readers, 8, IntCounter::new("rejected", "rejected").unwrap());
    (storage, gate, now)
}

async fn send(gate: &Arc<QueryGate>, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(gate.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get(gate: &Arc<QueryGate>, uri: &str) -> (StatusCode, Value) {
    send(gate, Request::get(uri).body(Body::empty()).unwrap()).await
}

fn assert_error(v: &Value, code: &str, mentions: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(mentions),
        "message {msg:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn metrics_of_a_pool_pick_the_tier_by_step() {
    let (_s, gate, now) = fixture();
    let from = (now - 10 * MIN) / 1000;
    let (st, v) = get(
        &gate,
        &format!("/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from={from}&step=60s"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["tier"], "minute");
    assert_eq!(v["step_seconds"], 60.0);
    assert_eq!(v["requested_step_seconds"], 60.0);
    assert_eq!(v["step_widened"], false);
    let pts = v["series"][0]["points"].as_array().unwrap();
    assert!((9..=11).contains(&pts.len()), "{} points", pts.len());
    let full = pts
        .iter()
        .find(|p| p["count"] == 60)
        .expect("a full minute");
    assert_eq!(full["value"], 2.0, "average of 0..4 repeated");
    assert_eq!(
        (full["min"].as_f64(), full["max"].as_f64()),
        (Some(0.0), Some(4.0))
    );
    assert_eq!(v["series"][0]["labels"]["pool"], "www");

    let (st, v) = get(
        &gate,
        &format!(
            "/api/v1/pools/www/metrics?metric=phpfpm_accepted_connections&from={from}&step=10"
        ),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["tier"], "raw");
    let pts = v["series"][0]["points"].as_array().unwrap();
    // Counter: +2 per second, read as a rate. The buckets at the edges of the data are
    // partial (fewer samples than the step holds), so they may read lower, never higher
    // and never negative.
    let inner = &pts[1..pts.len() - 1];
    assert!(inner.len() >= 55, "{} points", pts.len());
    assert!(inner.iter().all(|p| p["value"] == 2.0), "{pts:?}");
    for edge in [&pts[0], &pts[pts.len() - 1]] {
        let r = edge["value"].as_f64().unwrap();
        assert!((0.0..=2.0).contains(&r), "edge rate {r}");
    }

    // RFC 3339 works too.
    let from_rfc = format_time(now - 10 * MIN);
    let (st, _) = get(
        &gate,
        &format!("/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from={from_rfc}"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn every_time_form_reads_the_same_range() {
    let (_s, gate, now) = fixture();
    let from_ms = now - 10 * MIN;
    let forms = [
        format!("from={from_ms}&to={now}"),
        format!("from={}&to={}", from_ms / 1000, now / 1000 + 1),
        format!(
            "from={}&to={}",
            format_time(from_ms).replace('+', "%2B"),
            format_time(now + 1000)
        ),
        "from=now-10m&to=now".to_owned(),
        "from=now-15m".to_owned(),
        "from=now-1h&to=now%2B1m".to_owned(),
    ];
    for q in forms {
        let (st, v) = get(
            &gate,
            &format!("/api/v1/pools/www/metrics?metric=phpfpm_active_processes&step=60s&{q}"),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{q}: {v}");
        let n = v["series"][0]["points"].as_array().unwrap().len();
        assert!((9..=11).contains(&n), "{q}: {n} points");
        let (st, v) = get(&gate, &format!("/api/v1/events?{q}")).await;
        assert_eq!(st, StatusCode::OK, "{q}: {v}");
        assert_eq!(v["count"], 3, "{q}: {v}");
    }
}

#[tokio::test]
async fn a_range_too_long_for_the_step_is_answered_at_a_wider_step() {
    let (_s, gate, _) = fixture();
    // 56 years at 1 s would be 1.7 billion points.
    let (st, v) = get(
        &gate,
        "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from=0&step=1s",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["requested_step_seconds"], 1.0);
    assert_eq!(v["step_widened"], true);
    let step = v["step_seconds"].as_f64().unwrap();
    let span_s = (v["to_ms"].as_i64().unwrap() - v["from_ms"].as_i64().unwrap()) as f64 / 1000.0;
    assert!(span_s / step <= 11_000.0, "step {step}s over {span_s}s");
    assert_eq!(step % 3600.0, 0.0, "a whole number of hours: {step}");
    let pts = v["series"][0]["points"].as_array().unwrap();
    assert!(!pts.is_empty() && pts.len() <= 11_000, "{}", pts.len());
    // The same from year 1, and without a step.
    for q in [
        "from=0001-01-01T00:00:00Z&step=1h",
        "from=0001-01-01T00:00:00Z",
    ] {
        let (st, v) = get(
            &gate,
            &format!("/api/v1/pools/www/metrics?metric=phpfpm_active_processes&{q}"),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{q}: {v}");
        assert!(v["step_seconds"].as_f64().unwrap() <= 366.0 * 86_400.0);
    }
}

#[tokio::test]
async fn bad_metric_queries_are_400_or_404_with_the_reason() {
    let (_s, gate, _) = fixture();
    let cases = [
        (
            "/api/v1/pools/www/metrics",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "'metric' is required",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "'from'",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from=now-1x",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "'now-1x'",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&step=fast",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "'step'",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from=100&to=50",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "before 'to'",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&step=1000000000y",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "at most 366 days",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&stpe=1s",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "unknown parameter 'stpe'",
        ),
        (
            "/api/v1/pools/www/metrics?metric=nope",
            StatusCode::NOT_FOUND,
            "not_found",
            "phpfpm_accepted_connections",
        ),
        (
            "/api/v1/pools/ghost/metrics?metric=phpfpm_active_processes",
            StatusCode::NOT_FOUND,
            "not_found",
            "'ghost'",
        ),
    ];
    for (uri, status, code, mentions) in cases {
        let (st, v) = get(&gate, uri).await;
        assert_eq!(st, status, "{uri}: {v}");
        assert_error(&v, code, mentions);
    }
}

#[tokio::test]
async fn events_filter_by_pool_type_severity_and_limit() {
    let (_s, gate, _) = fixture();
    let (st, v) = get(&gate, "/api/v1/events").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 3);
    let evs = v["events"].as_array().unwrap();
    // Newest first.
    assert_eq!(evs[0]["kind"], "api_action");
    assert_eq!(evs[0]["actor"], "deploy-bot");
    assert_eq!(evs[1]["details"]["exit_code"], 255);

    let (_, v) = get(&gate, "/api/v1/events?pool=www").await;
    assert_eq!(v["count"], 2);
    let (_, v) = get(&gate, "/api/v1/events?type=crash,reload").await;
    assert_eq!(v["count"], 2);
    let (_, v) = get(&gate, "/api/v1/events?severity=error").await;
    assert_eq!(v["events"][0]["message"], "master died");
    let (_, v) = get(&gate, "/api/v1/events?limit=1").await;
    assert_eq!(v["count"], 1);
    let (st, v) = get(&gate, "/api/v1/events?type=reboot").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_parameter", "unknown event type 'reboot'");
    let (st, v) = get(&gate, "/api/v1/events?limit=0").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_parameter", "'limit'");
}

#[tokio::test]
async fn annotations_are_in_grafana_format() {
    let (_s, gate, now) = fixture();
    let (st, v) = get(&gate, "/api/v1/events/annotations?pool=www").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items = v.as_array().expect("a flat JSON array");
    assert_eq!(items.len(), 2);
    for a in items {
        let t = a["time"].as_i64().expect("time in ms");
        assert!(t > now - 11 * MIN && t <= now);
        assert_eq!(a["timeEnd"], a["time"]);
        assert!(a["title"].is_string() && a["text"].is_string());
        assert!(a["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "pool:www"));
        assert!(a.get("annotation").is_none());
    }
}

/// What the JSON API and Infinity data sources send for an annotation query with
/// `from=${__from}&to=${__to}`: the dashboard's range in epoch milliseconds.
#[tokio::test]
async fn grafana_annotation_request_with_epoch_milliseconds_is_answered() {
    let (_s, gate, now) = fixture();
    let uri = format!(
        "/api/v1/events/annotations?from={}&to={}&pool=www",
        now - 6 * 3_600_000,
        now
    );
    let (st, v) = get(&gate, &uri).await;
    assert_eq!(st, StatusCode::OK, "{uri}: {v}");
    let items = v.as_array().expect("a flat JSON array");
    assert_eq!(items.len(), 2, "{v}");
    assert!(items.iter().all(|a| a["time"].as_i64().unwrap() <= now));
    // A range that holds none of the events gives an empty array, not an error.
    let uri = format!(
        "/api/v1/events/annotations?from={}&to={}",
        now - 48 * 3_600_000,
        now - 47 * 3_600_000
    );
    let (st, v) = get(&gate, &uri).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, Value::Array(vec![]));
}

/// The SimpleJSON data source's annotation request, as its documentation shows it.
#[tokio::test]
async fn simplejson_annotation_request_is_answered_with_the_annotation_echoed() {
    let (_s, gate, now) = fixture();
    let body = serde_json::json!({
        "range": {
            "from": format_time(now - 3_600_000),
            "to": format_time(now),
        },
        "rangeRaw": { "from": "now-1h", "to": "now" },
        "annotation": {
            "name": "deploy",
            "datasource": "Simple JSON Datasource",
            "iconColor": "rgba(255, 96, 96, 1)",
            "enable": true,
            "query": "pool=www&type=reload",
        },
    });
    let req = Request::post("/api/v1/events/annotations")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (st, v) = send(&gate, req).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items = v.as_array().expect("a flat JSON array");
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["annotation"], body["annotation"]);
    assert_eq!(items[0]["text"], "reloaded www");
    assert!(items[0]["time"].is_i64());

    // Without a range, the relative one the user typed is used; an empty query is no filter.
    let body = serde_json::json!({
        "rangeRaw": { "from": "now-1h", "to": "now" },
        "annotation": { "name": "all", "enable": true, "query": "" },
    });
    let req = Request::post("/api/v1/events/annotations")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (st, v) = send(&gate, req).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");

    // A body that is not JSON, and a filter that is not one, say why.
    let req = Request::post("/api/v1/events/annotations")
        .body(Body::from("range=now"))
        .unwrap();
    let (st, v) = send(&gate, req).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_error(&v, "invalid_parameter", "not a JSON object");
    let body = serde_json::json!({
        "annotation": { "name": "x", "query": "pol=www" },
    });
    let req = Request::post("/api/v1/events/annotations")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (st, v) = send(&gate, req).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_error(&v, "invalid_parameter", "unknown parameter 'pol'");
}

#[tokio::test]
async fn event_stats_count_by_type_severity_and_pool() {
    let (_s, gate, _) = fixture();
    let (st, v) = get(&gate, "/api/v1/events/stats").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 3);
    assert_eq!(v["by_type"]["crash"], 1);
    assert_eq!(v["by_severity"]["warning"], 1);
    assert_eq!(v["by_pool"]["www"], 2);
    let (st, v) = get(&gate, "/api/v1/events/stats?limit=3").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_parameter", "unknown parameter 'limit'");
}
