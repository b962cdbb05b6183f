//! The built-in web page at `/`: an overview of every pool, one pool in
//! depth, the autoscaler's reasoning and the events timeline, all drawn in
//! the browser from the REST API (`web/app.js`).
//!
//! The page and its assets (`crates/phpfpm-manager/web/`, with a vendored
//! uPlot for the charts) are compiled into the binary: nothing is fetched
//! from anywhere but the manager, and a strict Content-Security-Policy says
//! so to the browser (no inline script or style, connections to the
//! manager only). The page holds no data itself, so it is served to anyone
//! who may reach the API; every figure comes from `/api/v1`.
//!
//! One read-only route is added for the page, `GET /api/v1/overview`: the
//! figures of each pool that the rest of the API does not carry (OPcache
//! hit rate and fill, request times from the workers' last requests).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use fpm_core::status::{ProcessState, ProcessStatus};

use crate::opcache::OpcacheStats;
use crate::state::AppState;

/// What the page may load and connect to: its own files and the manager's
/// API, nothing inline, nothing from elsewhere, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One file of the page, compiled in.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("../../../web/index.html");

/// Served under `/assets/<name>`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/app.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/vendor/uplot/uPlot.min.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../web/favicon.svg"),
    },
];

/// The page's routes: `/`, `/assets/{name}`, `/favicon.ico`, and the
/// read-only `GET /api/v1/overview`. Merged with the API (served only with
/// `server.api.enabled`, since the page is a client of the API).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
        .route("/favicon.ico", get(favicon))
        .route("/api/v1/overview", get(overview))
}

/// The headers every page response carries.
fn page_headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // The files change only with the binary; revalidating each load
        // keeps a browser from running an older page against a newer API.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

async fn index() -> Response {
    (page_headers("text/html; charset=utf-8"), INDEX).into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (page_headers(a.content_type), a.body).into_response(),
        None => super::ApiError::not_found("no such file").into_response(),
    }
}

async fn favicon() -> Response {
    match ASSETS.iter().find(|a| a.name == "favicon.svg") {
        Some(a) => (page_headers(a.content_type), a.body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /api/v1/overview`: per pool, what the page shows beside
/// `/api/v1/pools` and that no other route carries.
async fn overview(State(state): State<Arc<AppState>>) -> Json<Value> {
    let pools = state.pools();
    let list: Vec<Value> = pools
        .values()
        .map(|p| {
            let opcache = match &p.opcache {
                None => Value::Null,
                Some(Ok(s)) => opcache_json(s),
                Some(Err(e)) => json!({ "error": e.kind(), "message": e.to_string() }),
            };
            let times = p
                .status
                .as_ref()
                .and_then(|st| request_times(&st.processes));
            json!({
                "pool": p.name.as_str(),
                "opcache": opcache,
                "request_time": times.map(|t| json!({
                    "samples": t.samples,
                    "p50_ms": t.p50_ms,
                    "p95_ms": t.p95_ms,
                    "max_ms": t.max_ms,
                })),
            })
        })
        .collect();
    Json(json!({ "pools": list }))
}

fn opcache_json(s: &OpcacheStats) -> Value {
    json!({
        "hit_rate": s.hit_rate,
        "memory_used_bytes": s.memory_used,
        "memory_free_bytes": s.memory_free,
        "memory_wasted_bytes": s.memory_wasted,
        "memory_size_bytes": s.memory_size,
        "fill": opcache_fill(s),
        "cached_scripts": s.cached_scripts,
        "cache_full": s.cache_full,
    })
}

/// Used share of OPcache's memory, 0 to 1: wasted memory counts as used,
/// since only a restart gives it back.
fn opcache_fill(s: &OpcacheStats) -> Option<f64> {
    let used = s.memory_used + s.memory_wasted;
    let total = s
        .memory_size
        .unwrap_or(s.memory_used + s.memory_free + s.memory_wasted);
    (total > 0).then(|| (used as f64 / total as f64).min(1.0))
}

/// Request times of finished requests, from php-fpm's scoreboard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestTimes {
    /// Workers whose last request is known.
    pub samples: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// Percentiles of the last request of every idle worker that served one
/// (an idle worker's `request duration` is its last request's; a busy
/// worker's is still growing). A small sample with many workers idle since
/// the start, so it reads as "recent requests", not as a full histogram.
pub fn request_times(processes: &[ProcessStatus]) -> Option<RequestTimes> {
    let mut ms: Vec<f64> = processes
        .iter()
        .filter(|p| p.state == ProcessState::Idle && p.requests > 0)
        .map(|p| p.request_duration_us as f64 / 1000.0)
        .collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    // Nearest rank: the smallest value with at least q of the samples at
    // or below it.
    let rank = |q: f64| {
        let idx = (q * ms.len() as f64).ceil() as usize;
        ms[idx.clamp(1, ms.len()) - 1]
    };
    Some(RequestTimes {
        samples: ms.len(),
        p50_ms: rank(0.50),
        p95_ms: rank(0.95),
        max_ms: ms[ms.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(state: ProcessState, requests: u64, duration_us: u64) -> ProcessStatus {
        ProcessStatus {
            pid: 1,
            state,
            start_time: 0,
            start_since: 0,
            requests,
            request_duration_us: duration_us,
            request_method: String::new(),
            request_uri: String::new(),
            content_length: 0,
            user: String::new(),
            script: String::new(),
            last_request_cpu: 0.0,
            last_request_memory: 0,
            dropped: Vec::new(),
        }
    }

    #[test]
    fn request_times_use_finished_requests_only() {
        let mut list: Vec<ProcessStatus> = (1..=20)
            .map(|i| worker(ProcessState::Idle, 3, i * 1000))
            .collect();
        // Busy, and idle since the start: neither is a finished request.
        list.push(worker(ProcessState::Running, 5, 900_000));
        list.push(worker(ProcessState::Idle, 0, 500_000));
        let t = request_times(&list).unwrap();
        assert_eq!(t.samples, 20);
        assert_eq!(t.p50_ms, 10.0);
        assert_eq!(t.p95_ms, 19.0);
        assert_eq!(t.max_ms, 20.0);
        assert_eq!(request_times(&list[20..]), None);
        let one = request_times(&[worker(ProcessState::Idle, 1, 2500)]).unwrap();
        assert_eq!((one.p50_ms, one.p95_ms, one.max_ms), (2.5, 2.5, 2.5));
    }

    #[test]
    fn opcache_fill_counts_wasted_memory_and_never_passes_one() {
        let mut s = OpcacheStats {
            enabled: true,
            cache_full: false,
            restart_pending: false,
            restart_in_progress: false,
            hits: 0,
            misses: 0,
            hit_rate: None,
            memory_size: Some(100),
            memory_used: 30,
            memory_free: 60,
            memory_wasted: 10,
            memory_wasted_ratio: None,
            cached_scripts: 0,
            cached_keys: 0,
            max_cached_keys: 0,
            interned_strings: None,
            restarts_oom: 0,
            restarts_hash: 0,
            restarts_manual: 0,
            start_time: 0,
            last_restart_time: None,
        };
        assert_eq!(opcache_fill(&s), Some(0.4));
        s.memory_size = None;
        assert_eq!(opcache_fill(&s), Some(0.4));
        s.memory_size = Some(20);
        assert_eq!(opcache_fill(&s), Some(1.0));
        s.memory_size = None;
        (s.memory_used, s.memory_free, s.memory_wasted) = (0, 0, 0);
        assert_eq!(opcache_fill(&s), None);
    }

    #[test]
    fn the_policy_allows_nothing_inline_and_nothing_from_elsewhere() {
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(part), "{part}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        let index = std::str::from_utf8(INDEX).unwrap();
        // Every script is a file of its own.
        assert_eq!(
            index.matches("<script").count(),
            index.matches("<script src=\"/assets/").count()
        );
        assert!(!index.contains("style="), "inline style in index.html");
    }
}
