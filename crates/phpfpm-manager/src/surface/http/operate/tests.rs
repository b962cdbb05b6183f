//! The operator's routes through the whole router, with real pool actors
//! whose supervisor is a test-held channel: what each answer says, that a
//! change in flight is refused, and that bad input of every kind gets a 4xx
//! in the error shape and changes nothing.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use fpm_storage::{Storage, StorageConfig};
use prometheus::IntCounter;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::*;
use crate::config::{self, LoadInput};
use crate::pool::{Board, PoolActor};
use crate::supervisor::{ApplyReport, Command, SupervisorHandle};
use crate::surface::http::QueryGate;

const LOOPBACK: &str = "127.0.0.1:40000";

/// A manager with a supervised pool `sup` and an observed pool `obs`, its
/// runtime directory in `dir`.
fn state(dir: &std::path::Path) -> Arc<AppState> {
    let text = format!(
        "phpfpm:\n  runtime_dir: {}\npools:\n  - name: sup\n  - name: obs\n    supervise: false\n    fastcgi_endpoint: 127.0.0.1:9\n",
        dir.display()
    );
    let cfg = config::load(&LoadInput {
        file: Some((PathBuf::from("test.yaml"), text)),
        cwd: PathBuf::from("/srv/app"),
        ..LoadInput::default()
    })
    .unwrap();
    AppState::new(cfg)
}

fn app(state: &Arc<AppState>, storage: &Storage) -> Router {
    let gate = QueryGate::new(
        vec![storage.reader().unwrap()],
        4,
        IntCounter::new("r", "r").unwrap(),
    );
    super::super::router(state.clone(), Some(gate))
}

/// Starts the actor of `name`; a supervised pool's supervisor is the
/// returned receiver.
fn actor(
    state: &Arc<AppState>,
    name: &str,
) -> (CancellationToken, Option<mpsc::Receiver<Command>>) {
    let pool = state
        .config()
        .pools
        .iter()
        .find(|p| p.name.as_str() == name)
        .unwrap()
        .clone();
    let (sup, rx) = match pool.spec {
        Some(_) => {
            let (h, rx) = SupervisorHandle::detached(pool.name.clone());
            (Some(h), Some(rx))
        }
        None => (None, None),
    };
    let (actor, handle) =
        PoolActor::new(pool, state.clone(), sup, Arc::new(Board::default()), None);
    state
        .handles
        .write()
        .unwrap()
        .insert(handle.name.clone(), handle);
    let stop = CancellationToken::new();
    tokio::spawn(actor.run(stop.clone()));
    (stop, rx)
}

fn request(
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: &str,
    peer: &str,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let mut req = b.body(Body::from(body.to_owned())).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    req
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn post(app: &Router, uri: &str, body: &str) -> (StatusCode, Value) {
    send(
        app,
        request("POST", uri, Some("application/json"), body, LOOPBACK),
    )
    .await
}

/// The error shape, with this code and a message containing `text`.
#[track_caller]
fn assert_error(v: &Value, code: &str, text: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains(text), "{text:?} not in {v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
}

fn report(new_pid: u32) -> ApplyReport {
    ApplyReport {
        old_pid: Some(100),
        new_pid,
        took: Duration::from_millis(42),
        generation: 2,
        unchanged: false,
        previous_stopped: None,
        stopping_workers: Some(0),
    }
}

/// Answers the next command the pool's supervisor gets; returns its reason.
async fn answer_next(
    rx: &mut mpsc::Receiver<Command>,
    answer: Result<ApplyReport, ApplyError>,
) -> (String, bool) {
    let cmd = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the supervisor got no command")
        .unwrap();
    let Command::Apply {
        reason,
        renew,
        reply,
        ..
    } = cmd;
    reply.send(answer).unwrap();
    (reason, renew)
}

#[tokio::test]
async fn a_pool_reload_is_a_hand_over_with_the_current_spec() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);
    let (_stop, rx) = actor(&st, "sup");
    let mut rx = rx.unwrap();
    let call = tokio::spawn({
        let app = app.clone();
        async move {
            post(
                &app,
                "/api/v1/pools/sup/reload",
                r#"{"reason": "deploy 4.2"}"#,
            )
            .await
        }
    });
    let (reason, renew) = answer_next(&mut rx, Ok(report(123))).await;
    assert!(
        renew,
        "a reload starts a new master even with the same spec"
    );
    assert_eq!(reason, "reload by api: deploy 4.2");
    let (st_code, v) = call.await.unwrap();
    assert_eq!(st_code, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["pool"], "sup");
    assert_eq!(v["action"], "reload");
    assert_eq!(
        (v["old_pid"].as_u64(), v["new_pid"].as_u64()),
        (Some(100), Some(123))
    );
    assert_eq!(v["took_ms"], 42);
    // No body at all, or JSON null, is fine too.
    for (ct, body) in [(None, ""), (Some("application/json"), "null")] {
        let call = tokio::spawn({
            let app = app.clone();
            async move {
                send(
                    &app,
                    request("POST", "/api/v1/pools/sup/reload", ct, body, LOOPBACK),
                )
                .await
            }
        });
        let (reason, _) = answer_next(&mut rx, Ok(report(124))).await;
        assert_eq!(reason, "reload by api");
        assert_eq!(call.await.unwrap().0, StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn a_restart_empties_the_compiled_script_cache_first() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let cache = dir.path().join("opcache-cache/sup/system-id");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("index.php.bin"), b"compiled").unwrap();
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);
    let (_stop, rx) = actor(&st, "sup");
    let mut rx = rx.unwrap();
    let call = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/api/v1/pools/sup/restart", "{}").await }
    });
    let cmd = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    // By the time the supervisor is asked, nothing compiled is left.
    assert!(!dir.path().join("opcache-cache/sup").exists());
    let Command::Apply {
        reason,
        renew,
        reply,
        ..
    } = cmd;
    assert!(renew);
    assert_eq!(reason, "restart by api");
    reply.send(Ok(report(200))).unwrap();
    let (code, v) = call.await.unwrap();
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["action"], "restart");
}

#[tokio::test]
async fn refusals_map_to_honest_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);

    // Known pools whose actors are not running yet: not ready.
    let (code, v) = post(&app, "/api/v1/pools/sup/reload", "").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, "not_ready", "starting or stopping");

    let (_s1, rx) = actor(&st, "sup");
    let mut rx = rx.unwrap();
    let (_s2, _) = actor(&st, "obs");

    let (code, v) = post(&app, "/api/v1/pools/nope/reload", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
    assert_error(&v, "not_found", "no pool named \"nope\"");

    let (code, v) = post(&app, "/api/v1/pools/obs/restart", "").await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "observed", "does not run its master");

    // php-fpm -t refused: 422 with php-fpm's own words.
    let fpm_says =
        "[02-Dec-2026 05:00:00] ERROR: [pool sup] pm.max_children must be a positive value";
    let call = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/api/v1/pools/sup/reload", "").await }
    });
    answer_next(&mut rx, Err(ApplyError::Refused(fpm_says.to_owned()))).await;
    let (code, v) = call.await.unwrap();
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "change_refused", fpm_says);

    // A master that does not start: not ready, the old one keeps serving.
    let call = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/api/v1/pools/sup/reload", "").await }
    });
    answer_next(&mut rx, Err(ApplyError::StartFailed("exited".into()))).await;
    let (code, v) = call.await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, "not_ready", "failed to start");

    // Not a loopback client.
    let (code, v) = send(
        &app,
        request(
            "POST",
            "/api/v1/pools/sup/reload",
            None,
            "",
            "192.0.2.7:5000",
        ),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    assert_error(&v, "forbidden", "loopback");
    assert!(
        rx.try_recv().is_err(),
        "a refused call reached the supervisor"
    );
}

#[tokio::test]
async fn a_second_change_while_one_is_in_flight_is_409() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);
    let (_stop, rx) = actor(&st, "sup");
    let mut rx = rx.unwrap();
    let first = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/api/v1/pools/sup/reload", "").await }
    });
    // The first reload has reached the supervisor and waits there.
    let cmd = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let (code, v) = post(&app, "/api/v1/pools/sup/restart", "").await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "conflict", "already in flight");
    let Command::Apply { reply, .. } = cmd;
    reply.send(Ok(report(7))).unwrap();
    assert_eq!(first.await.unwrap().0, StatusCode::ACCEPTED);
    // Done: the pool takes changes again.
    let again = tokio::spawn({
        let app = app.clone();
        async move { post(&app, "/api/v1/pools/sup/reload", "").await }
    });
    answer_next(&mut rx, Ok(report(8))).await;
    assert_eq!(again.await.unwrap().0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_config_reload_goes_to_the_reload_loop_and_reports_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);

    // No reload loop yet: not ready, and nothing is queued.
    let (code, v) = post(&app, "/api/v1/config/reload", "").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, "not_ready", "starting or stopping");

    let mut requests = st.config_reloads.take_receiver();
    let outcomes = [
        ReloadOutcome {
            at: std::time::SystemTime::now(),
            accepted: true,
            problems: vec![],
        },
        ReloadOutcome {
            at: std::time::SystemTime::now(),
            accepted: false,
            problems: vec![
                "pools[0].max_workers: '0': must be at least 1".into(),
                "server.bogus: unknown key".into(),
            ],
        },
    ];
    let loop_task = tokio::spawn(async move {
        for o in outcomes {
            let reply = requests.recv().await.unwrap();
            reply.send(o).unwrap();
        }
        requests
    });
    let (code, v) = post(&app, "/api/v1/config/reload", r#"{"reason": "new pool"}"#).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], true);
    assert!(v["at"].as_str().unwrap().ends_with('Z'), "{v}");
    let (code, v) = post(&app, "/api/v1/config/reload", "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(
        &v,
        "config_invalid",
        "must be at least 1; server.bogus: unknown key",
    );
    let mut requests = loop_task.await.unwrap();

    // Bad input never reaches the loop.
    for (ct, body) in [
        (Some("application/json"), "{\"reason\": 1}"),
        (Some("application/json"), "{\"force\": true}"),
        (Some("text/plain"), "reload please"),
    ] {
        let (code, v) = send(
            &app,
            request("POST", "/api/v1/config/reload", ct, body, LOOPBACK),
        )
        .await;
        assert!(code.is_client_error(), "{body}: {code} {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    assert!(requests.try_recv().is_err());
}

#[tokio::test]
async fn bad_bodies_get_a_4xx_naming_the_problem_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);
    let (_stop, rx) = actor(&st, "sup");
    let mut rx = rx.unwrap();
    let uri = "/api/v1/pools/sup/reload";
    let cases: [(Option<&str>, &str, StatusCode, &str, &str); 8] = [
        (
            Some("application/json"),
            "{\"reason\": ",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "not valid JSON",
        ),
        (
            Some("application/json"),
            "{\"reason\": \"x\"} trailing",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "not valid JSON",
        ),
        (
            Some("application/json"),
            "{\"reason\": \"x\", \"workers\": 3}",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "unknown field `workers`",
        ),
        (
            Some("application/json"),
            "{\"reason\": 12}",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "reason: invalid type",
        ),
        (
            Some("application/json"),
            "[1, 2]",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "must be a JSON object",
        ),
        (
            Some("text/plain"),
            "{\"reason\": \"x\"}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        (
            None,
            "{\"reason\": \"x\"}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        (
            Some("application/json"),
            "{\"reason\": \"a\\u0000b\"}",
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "control characters",
        ),
    ];
    for (ct, body, status, code, text) in cases {
        let (got, v) = send(&app, request("POST", uri, ct, body, LOOPBACK)).await;
        assert_eq!(got, status, "{body}: {v}");
        assert_error(&v, code, text);
    }
    let long = json!({ "reason": "x".repeat(1001) }).to_string();
    let (got, v) = post(&app, uri, &long).await;
    assert_eq!(got, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_parameter", "at most 1000 characters");
    // Larger than server.max_body_bytes (64 KiB).
    let huge = json!({ "reason": "x".repeat(100_000) }).to_string();
    let (got, v) = post(&app, uri, &huge).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert!(rx.try_recv().is_err(), "bad input reached the supervisor");
}

#[tokio::test]
async fn hostile_pool_names_are_404_in_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);
    let (_stop, rx) = actor(&st, "sup");
    let mut rx = rx.unwrap();
    let long = "p".repeat(10 * 1024);
    for name in ["..", "%2e%2e", "%00", "sup%00", "..%2fsup", &long] {
        for route in ["reload", "restart"] {
            let uri = format!("/api/v1/pools/{name}/{route}");
            let (code, v) = post(&app, &uri, "").await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{uri}: {v}");
            assert_error(&v, "not_found", "no pool named");
            // A 10 KB name is not echoed whole.
            assert!(v.to_string().len() < 300, "{v}");
        }
        let uri = format!("/api/v1/pools/{name}");
        let (code, v) = send(&app, request("GET", &uri, None, "", LOOPBACK)).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
    // Not UTF-8 once decoded: axum's own rejection, in the error shape.
    let (code, v) = post(&app, "/api/v1/pools/%FF%FE/reload", "").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_parameter", "{v}");
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn malformed_and_repeated_query_parameters_are_400_in_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);
    for uri in [
        "/api/v1/events/recent?limit=many",
        "/api/v1/events/recent?pool=a&pool=b",
        "/api/v1/events?pool=a&pool=b",
        "/api/v1/events?limit=0",
        "/api/v1/events/stats?from=yesterday",
        "/api/v1/pools/sup/metrics?metric=a&metric=b",
        "/api/v1/events/annotations?bogus=1",
    ] {
        let (code, v) = send(&app, request("GET", uri, None, "", LOOPBACK)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["error"]["code"], "invalid_parameter", "{uri}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().len() > 10,
            "{uri}: {v}"
        );
    }
    // A method a route does not have.
    let resp = app
        .clone()
        .oneshot(request("DELETE", "/api/v1/pools/sup", None, "", LOOPBACK))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.headers().contains_key(header::ALLOW));
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
}

#[tokio::test]
async fn an_annotation_is_recorded_as_an_event_and_the_simplejson_query_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(dir.path());
    let mut events = st.take_events().unwrap();
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&st, &storage);
    let body = json!({"text": "deploy 4.2.1", "pool": "sup", "tags": ["deploy", "v4.2.1"]});
    let (code, v) = post(&app, ANNOTATIONS, &body.to_string()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["text"], "deploy 4.2.1");
    assert_eq!(v["title"], "annotation (sup)");
    assert_eq!(
        v["tags"],
        json!(["annotation", "info", "pool:sup", "deploy", "v4.2.1"])
    );
    let ev = events.try_recv().unwrap();
    assert_eq!(ev.kind(), "annotation");
    assert_eq!(ev.pool.as_deref(), Some("sup"));
    assert_eq!(ev.actor, "api");
    assert_eq!(ev.message(), "deploy 4.2.1");
    assert_eq!(ev.details(), json!({"tags": ["deploy", "v4.2.1"]}));

    // Grafana SimpleJSON's query (no `text`) is still answered by history.
    let query = json!({"rangeRaw": {"from": "now-1h", "to": "now"}, "annotation": {"name": "a", "query": ""}});
    let (code, v) = post(&app, ANNOTATIONS, &query.to_string()).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(v.is_array(), "{v}");
    let (code, v) = post(&app, ANNOTATIONS, "{}").await;
    assert_eq!(code, StatusCode::OK, "{v}");

    // Bad annotations: refused, naming the problem; nothing recorded.
    let cases = [
        (
            json!({"text": "x", "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "unknown field `colour`",
        ),
        (
            json!({"text": ""}),
            StatusCode::BAD_REQUEST,
            "text: must not be empty",
        ),
        (
            json!({"text": "x".repeat(1001)}),
            StatusCode::BAD_REQUEST,
            "at most 1000",
        ),
        (
            json!({"text": 5}),
            StatusCode::BAD_REQUEST,
            "text: invalid type",
        ),
        (
            json!({"text": "x", "tags": ["no spaces"]}),
            StatusCode::BAD_REQUEST,
            "tags[0]",
        ),
        (
            json!({"text": "x", "tags": vec!["t"; 17]}),
            StatusCode::BAD_REQUEST,
            "at most 16",
        ),
        (
            json!({"text": "x", "pool": "nope"}),
            StatusCode::NOT_FOUND,
            "no pool named \"nope\"",
        ),
    ];
    for (body, status, text) in cases {
        let (code, v) = post(&app, ANNOTATIONS, &body.to_string()).await;
        assert_eq!(code, status, "{body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(text),
            "{body}: {v}"
        );
    }
    let (code, v) = send(
        &app,
        request(
            "POST",
            ANNOTATIONS,
            Some("text/plain"),
            r#"{"text": "x"}"#,
            LOOPBACK,
        ),
    )
    .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    let (code, v) = send(
        &app,
        request(
            "POST",
            ANNOTATIONS,
            Some("application/json"),
            r#"{"text": "x"}"#,
            "192.0.2.7:1",
        ),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    // Refused calls leave their audit event, never an annotation.
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e.what, crate::events::What::Annotation { .. }),
            "a refused annotation was recorded: {:?}",
            e.kind()
        );
    }
}

#[test]
fn names_in_messages_are_cut() {
    assert_eq!(shown("www"), "www");
    let s = shown(&"é".repeat(100));
    assert_eq!(s.chars().count(), SHOWN + 1);
}
