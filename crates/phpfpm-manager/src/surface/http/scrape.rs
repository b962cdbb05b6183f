//! `GET /metrics` under many concurrent scrapers: renders are coalesced.
//!
//! Rendering the page builds every series afresh from the state (with
//! per-process metrics on, 8 pools × 32 workers take about 1.3 ms of CPU).
//! Rendered once per request, 50 clients asking back to back kept both
//! runtime threads busy rendering and queued each other for 100–200 ms.
//! Here one render runs at a time, and every request that arrived before a
//! render *started* is answered with that render's page: an answer is never
//! older than its request (a change made before the scrape is in it), and
//! a flood of scrapes costs at most one render in progress, whatever the
//! number of scrapers.
//!
//! The render lock is tokio's fair (FIFO) mutex: the requests queued behind
//! a render take its page in turn without rendering again.
//!
//! A scraper that accepts gzip (Prometheus does) gets the page compressed,
//! once per render: the page with per-process series is hundreds of KB of
//! text that compresses about tenfold, and writing it to many scrapers
//! costs more than rendering it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::state::{AppState, PoolState};
use crate::surface::metrics::CONTENT_TYPE;

/// The last page and the requests it answers.
#[derive(Debug, Default)]
pub struct Coalescer {
    /// Tickets handed to arriving requests, in order.
    arrived: AtomicU64,
    /// Held while rendering.
    render: tokio::sync::Mutex<()>,
    /// The last page, and the last ticket handed out before its render
    /// started (every request with a ticket up to it may take it).
    last: Mutex<Option<Rendered>>,
}

#[derive(Debug, Clone)]
struct Rendered {
    covers: u64,
    plain: Bytes,
    /// Compressed on the first request that accepts gzip.
    gzip: Option<Bytes>,
}

impl Coalescer {
    pub fn new() -> Arc<Coalescer> {
        Arc::new(Coalescer::default())
    }

    /// The page for a request arriving now, compressed when `gzip` (and
    /// whether it is).
    pub async fn page(&self, state: &AppState, gzip: bool) -> (Bytes, bool) {
        let ticket = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        let _rendering = self.render.lock().await;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = last.as_ref().is_some_and(|r| r.covers >= ticket);
        if !fresh {
            // Rendering under the std lock is fine: only a request holding
            // the render lock ever takes it.
            let covers = self.arrived.load(Ordering::SeqCst);
            *last = Some(Rendered {
                covers,
                plain: Bytes::from(render(state)),
                gzip: None,
            });
        }
        let Some(r) = last.as_mut() else {
            return (Bytes::new(), false);
        };
        if !gzip {
            return (r.plain.clone(), false);
        }
        if r.gzip.is_none() {
            r.gzip = compress(&r.plain);
        }
        match &r.gzip {
            Some(gz) => (gz.clone(), true),
            None => (r.plain.clone(), false),
        }
    }

    /// The answer to `GET /metrics`.
    pub async fn answer(&self, state: &AppState, headers: &HeaderMap) -> Response {
        let (body, gzip) = self.page(state, accepts_gzip(headers)).await;
        let mut response = ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response();
        let h = response.headers_mut();
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        if gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }
}

/// The page gzipped at the fastest level (a tenfold smaller page in about
/// a millisecond); `None` if compressing fails, and the plain page is sent.
fn compress(page: &[u8]) -> Option<Bytes> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(page.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(page).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

/// `Accept-Encoding` names gzip (or `*`) without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// One rendering of the whole page from the current state.
pub fn render(state: &AppState) -> String {
    let per_process = {
        let cfg = state.config();
        cfg.monitoring
            .per_process_metrics
            .then_some(cfg.monitoring.max_process_series)
    };
    let host = state.host.read().unwrap_or_else(|e| e.into_inner()).clone();
    let pools = state.pools();
    let list: Vec<&PoolState> = pools.values().collect();
    let storage = state.storage_status();
    state
        .metrics
        .render(&list, per_process, host.as_ref(), storage.as_ref())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::PathBuf;

    use super::*;
    use crate::config::{self, LoadInput};

    fn state() -> Arc<AppState> {
        let text =
            "pools:\n  - name: www\n    supervise: false\n    fastcgi_endpoint: 127.0.0.1:9\n";
        let cfg = config::load(&LoadInput {
            file: Some((PathBuf::from("test.yaml"), text.to_owned())),
            cwd: PathBuf::from("/srv/app"),
            ..LoadInput::default()
        })
        .unwrap();
        AppState::new(cfg)
    }

    #[tokio::test]
    async fn requests_queued_behind_a_render_share_it_and_a_later_one_sees_a_change() {
        let state = state();
        let c = Coalescer::new();
        // Requests arriving together: one render answers all of them.
        let guard = c.render.lock().await;
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let (c, s) = (c.clone(), state.clone());
                tokio::spawn(async move { c.page(&s, false).await.0 })
            })
            .collect();
        while c.arrived.load(Ordering::SeqCst) < 5 {
            tokio::task::yield_now().await;
        }
        drop(guard);
        let mut pages = Vec::new();
        for w in waiting {
            pages.push(w.await.unwrap());
        }
        assert!(pages
            .iter()
            .all(|p| p.as_ptr() == pages[0].as_ptr() && p.len() == pages[0].len()));
        assert!(String::from_utf8_lossy(&pages[0]).contains("phpfpm_up"));
        // A request after a change renders again and shows it.
        let counter = prometheus::IntCounter::new("scrape_test_total", "t").unwrap();
        state.metrics.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let after = c.page(&state, false).await.0;
        assert_ne!(after.as_ptr(), pages[0].as_ptr());
        assert!(String::from_utf8_lossy(&after).contains("scrape_test_total 1"));
    }

    #[tokio::test]
    async fn a_scraper_that_accepts_gzip_gets_the_same_page_compressed() {
        use std::io::Read as _;
        let state = state();
        let c = Coalescer::new();
        let (plain, gz) = c.page(&state, false).await;
        assert!(!gz);
        let (packed, gz) = c.page(&state, true).await;
        assert!(gz);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert!(String::from_utf8_lossy(&unpacked).contains("phpfpm_up"));
        assert!(packed.len() < plain.len());
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(accepts_gzip(&h("gzip")));
        assert!(accepts_gzip(&h("deflate, GZIP;q=0.5")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
