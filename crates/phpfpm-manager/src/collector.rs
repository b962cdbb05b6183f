//! The collector: one task per pool that asks php-fpm for its status page and
//! ping on an interval and records the result in the shared state.
//!
//! Pools never wait for each other: each has its own task, and every request
//! is bounded by the pool's connect and total timeouts, so a pool that accepts
//! connections and never answers costs only its own task's time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fpm_core::status::{parse_ping, parse_status, PoolStatus};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Pool;
use crate::fastcgi::{self, Timeouts};
use crate::state::{AppState, ScrapeError};

/// While a pool is down it is retried at least this often, so a pool that
/// is starting (or recovering) shows up within a second.
const DOWN_RETRY: Duration = Duration::from_secs(1);

/// Runs collections of `pool` every `interval` until `cancel` fires.
pub async fn run_pool(
    pool: Pool,
    state: Arc<AppState>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let probe = ProbeMarker::new();
    loop {
        let started = Instant::now();
        // Shutdown does not wait for a collection in flight.
        let up = tokio::select! {
            _ = cancel.cancelled() => break,
            up = collect_once(&pool, &state, &probe) => up,
        };
        let period = if up {
            interval
        } else {
            interval.min(DOWN_RETRY)
        };
        // Measured from the start of the collection, so the period holds
        // however long the collection took (a slow one delays the next
        // instead of causing a burst).
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(started + period) => {}
        }
    }
}

/// A random token added to the status request's query string, so the worker
/// serving it can be recognised in the process list and not counted as load.
#[derive(Debug, Clone)]
pub struct ProbeMarker(String);

impl ProbeMarker {
    pub fn new() -> ProbeMarker {
        let mut bytes = [0u8; 8];
        // Without randomness the marker is still unique enough per process.
        if getrandom::fill(&mut bytes).is_err() {
            bytes = u64::from(std::process::id()).to_le_bytes();
        }
        ProbeMarker(format!(
            "pfm={}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }

    pub fn query(&self) -> String {
        format!("json&full&{}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ProbeMarker {
    fn default() -> Self {
        ProbeMarker::new()
    }
}

/// Consecutive failures of a pool that was never up before a warning is
/// logged: a pool whose master is still starting fails its first attempts.
const WARN_AFTER_FAILURES: u64 = 3;

/// One collection: status page, then ping, then one state update.
/// Returns whether the status page was read.
pub async fn collect_once(pool: &Pool, state: &AppState, probe: &ProbeMarker) -> bool {
    let started = Instant::now();
    // One after the other: on a pool without a status listener both requests
    // need a worker, and the ping must not show up as load in the status.
    let status = fetch_status(pool, probe).await;
    let ping_ok = ping(pool).await;
    record(pool, state, probe, status, ping_ok, started)
}

fn timeouts(pool: &Pool) -> Timeouts {
    Timeouts {
        connect: pool.connect_timeout,
        total: pool.request_timeout,
    }
}

/// Requests and parses the status page.
pub async fn fetch_status(pool: &Pool, probe: &ProbeMarker) -> Result<PoolStatus, ScrapeError> {
    let reply = fastcgi::get(
        &pool.status_endpoint,
        &pool.status_path,
        &probe.query(),
        timeouts(pool),
    )
    .await
    .map_err(|e| ScrapeError {
        kind: e.kind(),
        message: e.to_string(),
    })?;
    parse_status(&reply.stdout).map_err(|e| ScrapeError {
        kind: e.kind(),
        message: with_stderr(e.to_string(), &reply.stderr),
    })
}

/// Does the pool answer its ping path with the expected response?
pub async fn ping(pool: &Pool) -> bool {
    match fastcgi::get(&pool.status_endpoint, &pool.ping_path, "", timeouts(pool)).await {
        Ok(reply) => parse_ping(&reply.stdout, &pool.ping_response).is_ok(),
        Err(_) => false,
    }
}

/// Records one collection's outcome in the state and metrics; returns
/// whether the status page was read.
pub fn record(
    pool: &Pool,
    state: &AppState,
    probe: &ProbeMarker,
    status: Result<PoolStatus, ScrapeError>,
    ping_ok: bool,
    started: Instant,
) -> bool {
    let elapsed = started.elapsed();
    let name = pool.name.as_str();
    state
        .metrics
        .scrape_duration
        .with_label_values(&[name])
        .observe(elapsed.as_secs_f64());

    match status {
        Ok(st) => {
            let derived = st.derived(Some(probe.as_str()));
            let was_down = state
                .update(&pool.name, |s| {
                    let was_down = !s.up && s.scrape_failures > 0;
                    s.up = true;
                    s.consecutive_failures = 0;
                    s.ping_ok = ping_ok;
                    s.last_error = None;
                    s.derived = derived;
                    s.status = Some(st);
                    s.last_success = Some(SystemTime::now());
                    was_down
                })
                .unwrap_or(false);
            if was_down {
                tracing::info!(pool = name, "Pool answers its status page.");
            }
            true
        }
        Err(err) => {
            state
                .metrics
                .scrape_errors
                .with_label_values(&[name, err.kind])
                .inc();
            let first = state
                .update(&pool.name, |s| {
                    s.consecutive_failures += 1;
                    let first = s.up
                        || (s.last_success.is_none()
                            && s.consecutive_failures == WARN_AFTER_FAILURES);
                    s.up = false;
                    s.ping_ok = ping_ok;
                    s.scrape_failures += 1;
                    s.last_error = Some(err.clone());
                    first
                })
                .unwrap_or(false);
            // Log the transition, not every failed tick of a long outage.
            if first {
                tracing::warn!(
                    pool = name,
                    kind = err.kind,
                    "Pool status collection failed: {}.",
                    err.message
                );
            } else {
                tracing::debug!(
                    pool = name,
                    kind = err.kind,
                    "Pool status collection failed: {}.",
                    err.message
                );
            }
            false
        }
    }
}

/// php-fpm explains some failures on stderr ("Primary script unknown").
fn with_stderr(msg: String, stderr: &[u8]) -> String {
    let extra = String::from_utf8_lossy(stderr);
    let extra = extra.trim();
    if extra.is_empty() {
        msg
    } else {
        format!(
            "{msg} (php-fpm stderr: {})",
            extra.chars().take(200).collect::<String>()
        )
    }
}
