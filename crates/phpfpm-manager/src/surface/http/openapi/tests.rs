//! The document against the router: the same operations on both sides, an
//! OpenAPI 3.1 document with the `bearerAuth` scheme, and every error answer
//! described by the one error shape.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use fpm_storage::{Storage, StorageConfig};
use prometheus::IntCounter;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::config::{self, LoadInput};
use crate::state::AppState;
use crate::surface::http::QueryGate;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn app(storage: &Storage) -> Router {
    let text = "pools:\n  - name: www\n    supervise: false\n    fastcgi_endpoint: 127.0.0.1:9\n";
    let cfg = config::load(&LoadInput {
        file: Some((PathBuf::from("test.yaml"), text.to_owned())),
        cwd: PathBuf::from("/srv/app"),
        ..LoadInput::default()
    })
    .unwrap();
    let gate = QueryGate::new(
        vec![storage.reader().unwrap()],
        4,
        IntCounter::new("r", "r").unwrap(),
    );
    crate::surface::http::router(AppState::new(cfg), Some(gate))
}

fn doc() -> Value {
    serde_json::from_str(document_json()).unwrap()
}

/// `(METHOD, path)` of every operation of the document.
fn documented() -> BTreeSet<(String, String)> {
    let doc = doc();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// The paths in the router's route table. axum has no API to list routes;
/// its debug form prints the table as `RouteId(n): "/path"`, which is read
/// here (the fallback's own table comes after the routes' and is left out).
fn routed_paths(app: &Router) -> BTreeSet<String> {
    let text = format!("{app:?}");
    let start = text
        .find("Node {")
        .expect("a route table in the router's debug form");
    let end = text[start..]
        .find("fallback_router")
        .map_or(text.len(), |i| start + i);
    let table = &text[start..end];
    let mut out = BTreeSet::new();
    let mut rest = table;
    while let Some(i) = rest.find("): \"") {
        rest = &rest[i + 4..];
        let Some(close) = rest.find('"') else { break };
        let path = &rest[..close];
        if path.starts_with('/') && !path.contains("__private__") {
            out.insert(path.to_owned());
        }
        rest = &rest[close..];
    }
    out
}

/// Is `method path` answered by a route (rather than 405 or the fallback)?
async fn has_route(app: &Router, method: &str, path: &str) -> bool {
    let uri = path.replace("{pool}", "www");
    let mut req = Request::builder()
        .method(method)
        .uri(&uri)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("127.0.0.1:1".parse::<SocketAddr>().unwrap()));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fallback = status == StatusCode::NOT_FOUND && v["error"]["message"] == "no such route";
    status != StatusCode::METHOD_NOT_ALLOWED && !fallback
}

#[tokio::test]
async fn the_router_and_the_document_list_the_same_operations() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&storage);
    let paths = routed_paths(&app);
    // The reader of the debug form must see the whole table.
    assert!(paths.len() >= 20, "{paths:?}");
    assert!(paths.contains("/api/v1/events/annotations"), "{paths:?}");
    let mut routed = BTreeSet::new();
    for path in &paths {
        for m in METHODS {
            let m = m.to_uppercase();
            if has_route(&app, &m, path).await {
                routed.insert((m, path.clone()));
            }
        }
    }
    let documented = documented();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "operations of the document the router does not answer: {unrouted:?}"
    );
}

#[test]
fn the_document_is_openapi_3_1_with_the_bearer_scheme() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    assert_eq!(d["info"]["version"], env!("CARGO_PKG_VERSION"));
    let scheme = &d["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    // Every operation names its responses and a tag.
    for (path, item) in d["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
}

#[test]
fn every_error_answer_is_the_error_shape() {
    let d = doc();
    let error = &d["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]), "{error}");
    for (path, item) in d["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            for (status, resp) in responses {
                let code: u16 = status.parse().unwrap();
                // Readiness answers 503 with its own body naming the pools.
                if code < 400 || path.contains("health") {
                    continue;
                }
                let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/Error",
                    "{method} {path} {status}: {resp}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_document_is_served_as_json() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let app = app(&storage);
    let resp = app
        .oneshot(Request::get(PATH).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, doc());
    assert!(v["paths"][PATH]["get"].is_object());
    // The routes that act are described with their bodies and answers.
    let reload = &v["paths"]["/api/v1/pools/{pool}/reload"]["post"];
    for status in ["202", "404", "409", "422", "503"] {
        assert!(
            reload["responses"][status].is_object(),
            "{status}: {reload}"
        );
    }
}
