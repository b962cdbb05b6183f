//! The history API through the real router and a real (in-memory) database: shapes of
//! the answers, filters, and the one error format for bad input.
// Helpers outside #[test] functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fpm_storage::{Event, EventKind, Reader, Severity, Storage, StorageConfig, WriterOptions};
use serde_json::Value;
use support::{counter, gauge, MIN};
use tower::ServiceExt;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Ten minutes of history ending now: a gauge and a counter for pool `www`, and events.
fn fixture() -> (Storage, Reader, i64) {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let reader = storage.reader().unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    let now = now_ms();
    let start = now - 10 * MIN;
    for i in 0..600 {
        let t = start + i * 1000;
        w.ingest(
            now,
            t,
            vec![
                gauge("phpfpm_active_processes", "www", (i % 5) as f64),
                counter("phpfpm_accepted_connections", "www", (i * 2) as f64),
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
    (storage, reader, now)
}

async fn get(reader: &Reader, uri: &str) -> (StatusCode, Value) {
    let resp = fpm_storage::api::router(reader.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
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
    let (_s, reader, now) = fixture();
    let from = (now - 10 * MIN) / 1000;
    let (st, v) = get(
        &reader,
        &format!("/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from={from}&step=60s"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["tier"], "minute");
    assert_eq!(v["step_seconds"], 60.0);
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
        &reader,
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
    let from_rfc = fpm_storage::api::params::format_time(now - 10 * MIN);
    let (st, _) = get(
        &reader,
        &format!("/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from={from_rfc}"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn bad_metric_queries_are_400_or_404_with_the_reason() {
    let (_s, reader, _) = fixture();
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
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&to=1764151200000",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "milliseconds",
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
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from=0&step=1s",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "limit of 11000",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&step=1000000000y",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "at most 366 days",
        ),
        (
            "/api/v1/pools/www/metrics?metric=phpfpm_active_processes&from=0001-01-01T00:00:00Z&step=1h",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "limit of 11000",
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
        let (st, v) = get(&reader, uri).await;
        assert_eq!(st, status, "{uri}: {v}");
        assert_error(&v, code, mentions);
    }
}

#[tokio::test]
async fn events_filter_by_pool_type_severity_and_limit() {
    let (_s, reader, _) = fixture();
    let (st, v) = get(&reader, "/api/v1/events").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 3);
    let evs = v["events"].as_array().unwrap();
    // Newest first.
    assert_eq!(evs[0]["kind"], "api_action");
    assert_eq!(evs[0]["actor"], "deploy-bot");
    assert_eq!(evs[1]["details"]["exit_code"], 255);

    let (_, v) = get(&reader, "/api/v1/events?pool=www").await;
    assert_eq!(v["count"], 2);
    let (_, v) = get(&reader, "/api/v1/events?type=crash,reload").await;
    assert_eq!(v["count"], 2);
    let (_, v) = get(&reader, "/api/v1/events?severity=error").await;
    assert_eq!(v["events"][0]["message"], "master died");
    let (_, v) = get(&reader, "/api/v1/events?limit=1").await;
    assert_eq!(v["count"], 1);
    let (st, v) = get(&reader, "/api/v1/events?type=reboot").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_parameter", "unknown event type 'reboot'");
    let (st, v) = get(&reader, "/api/v1/events?limit=0").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_parameter", "'limit'");
}

#[tokio::test]
async fn annotations_are_in_grafana_format() {
    let (_s, reader, now) = fixture();
    let (st, v) = get(&reader, "/api/v1/events/annotations?pool=www").await;
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
    }
}

#[tokio::test]
async fn event_stats_count_by_type_severity_and_pool() {
    let (_s, reader, _) = fixture();
    let (st, v) = get(&reader, "/api/v1/events/stats").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 3);
    assert_eq!(v["by_type"]["crash"], 1);
    assert_eq!(v["by_severity"]["warning"], 1);
    assert_eq!(v["by_pool"]["www"], 2);
    let (st, v) = get(&reader, "/api/v1/events/stats?limit=3").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_parameter", "unknown parameter 'limit'");
}
