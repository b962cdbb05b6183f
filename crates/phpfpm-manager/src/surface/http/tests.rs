//! The router as a whole: which routes exist with the API on and off, the
//! request timeout, and the redaction of query strings.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use fpm_storage::{Storage, StorageConfig};
use prometheus::IntCounter;
use tower::ServiceExt;

use super::*;
use crate::config::{self, LoadInput};

/// The state of a manager observing one pool, with `yaml` added to its config.
fn state(yaml: &str) -> Arc<AppState> {
    let text = format!(
        "{yaml}pools:\n  - name: www\n    supervise: false\n    fastcgi_endpoint: 127.0.0.1:9\n"
    );
    let cfg = config::load(&LoadInput {
        file: Some((PathBuf::from("test.yaml"), text)),
        cwd: PathBuf::from("/srv/app"),
        ..LoadInput::default()
    })
    .unwrap();
    AppState::new(cfg)
}

fn gate(storage: &Storage) -> Arc<QueryGate> {
    QueryGate::new(
        vec![storage.reader().unwrap()],
        4,
        IntCounter::new("r", "r").unwrap(),
    )
}

async fn status_of(app: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

const HISTORY: [&str; 4] = [
    "/api/v1/pools/www/metrics?metric=phpfpm_active_processes",
    "/api/v1/events",
    "/api/v1/events/annotations",
    "/api/v1/events/stats",
];

#[tokio::test]
async fn a_disabled_api_serves_no_history_route() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = router(
        state("server:\n  api:\n    enabled: false\n"),
        Some(gate(&storage)),
    );
    for uri in HISTORY {
        let (st, v) = status_of(&app, uri).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{uri}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{uri}: {v}");
    }
    let resp = app
        .clone()
        .oneshot(
            Request::post("/api/v1/events/annotations")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The rest of the API is off too; metrics and health stay.
    assert_eq!(
        status_of(&app, "/api/v1/pools").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(status_of(&app, "/metrics").await.0, StatusCode::OK);
    assert_eq!(status_of(&app, "/health/live").await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_enabled_api_serves_every_history_route() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = router(
        state("server:\n  api:\n    enabled: true\n"),
        Some(gate(&storage)),
    );
    for uri in HISTORY {
        let (st, v) = status_of(&app, uri).await;
        // The metric is not stored in an empty database: 404 from the query, not the router.
        if uri.contains("/metrics") {
            assert_eq!(st, StatusCode::NOT_FOUND, "{uri}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no metric"),
                "{uri}: {v}"
            );
        } else {
            assert_eq!(st, StatusCode::OK, "{uri}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_its_time_is_answered_503_timeout() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let g = gate(&storage);
    let app = router(
        state("server:\n  limits:\n    request_timeout: 200ms\n"),
        Some(g.clone()),
    );
    // The only reader is busy, so the history request waits past its time.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let busy = tokio::spawn({
        let g = g.clone();
        async move {
            g.run(move |_| {
                let _ = wait.recv_timeout(std::time::Duration::from_secs(30));
                Ok(())
            })
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let resp = app
        .oneshot(Request::get("/api/v1/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "timeout", "{v}");
    release.send(()).unwrap();
    busy.await.unwrap().unwrap();
}

#[test]
fn query_strings_are_redacted_and_paths_kept() {
    assert_eq!(
        redact_query("/index.php?api_key=s3cret&x=1"),
        "/index.php?<redacted>"
    );
    assert_eq!(redact_query("/index.php"), "/index.php");
    assert_eq!(redact_query("/index.php?"), "/index.php?");
    assert_eq!(redact_query("/a?b?c"), "/a?<redacted>");
    assert_eq!(redact_query(""), "");
}
