//! The bound on history queries: SQLite reads block a thread, so each runs on
//! tokio's blocking pool, and this gate keeps how many run at once and how
//! many wait in line bounded. Without it every HTTP connection asking for
//! `/api/v1/events?limit=10000` got a blocking thread of its own (hundreds of
//! threads, each with its own stack and allocator arena).
//!
//! Each running query holds one reader (one SQLite connection) of a fixed
//! pool, so queries run in parallel instead of queueing on one connection's
//! mutex inside the blocking threads. A request that finds the line full gets
//! 503 `busy` with `Retry-After` at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fpm_storage::Reader;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Runs history queries on the blocking pool, a bounded number at a time.
pub struct QueryGate {
    readers: Mutex<Vec<Reader>>,
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    rejected: IntCounter,
}

impl std::fmt::Debug for QueryGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryGate")
            .field("running", &self.running.available_permits())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("max_waiting", &self.max_waiting)
            .finish()
    }
}

/// A reader taken from the pool with its slot. On drop (even if the query
/// panicked) the reader goes back first, then the slot is released with the
/// permit field, so a slot always finds a reader.
struct Lease {
    gate: Arc<QueryGate>,
    reader: Option<Reader>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            self.gate
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r);
        }
    }
}

/// Counts a request waiting in line for as long as it waits.
struct InLine<'a>(&'a AtomicUsize);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl QueryGate {
    /// One query runs per reader at a time; at most `max_waiting` more wait.
    /// `rejected` counts requests refused because the line was full.
    pub fn new(readers: Vec<Reader>, max_waiting: usize, rejected: IntCounter) -> Arc<QueryGate> {
        Arc::new(QueryGate {
            running: Arc::new(Semaphore::new(readers.len())),
            readers: Mutex::new(readers),
            waiting: AtomicUsize::new(0),
            max_waiting,
            rejected,
        })
    }

    /// Runs `f` with a reader on the blocking pool once a slot is free, or
    /// refuses with 503 `busy` if the line is full. Dropping the returned
    /// future (a request timeout) leaves a running query to finish; its slot
    /// is held until it does, so the bound stays true.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Reader) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = match self.running.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
                let _in_line = InLine(&self.waiting);
                if ahead >= self.max_waiting {
                    self.rejected.inc();
                    return Err(ApiError::busy(
                        "too many history queries at once; retry shortly",
                        1,
                    ));
                }
                self.running
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ApiError::internal("the history query gate is closed"))?
            }
        };
        let reader = self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or_else(|| ApiError::internal("no history reader is free"))?;
        let lease = Lease {
            gate: self.clone(),
            reader: Some(reader),
            _slot: permit,
        };
        tokio::task::spawn_blocking(move || {
            let out = match &lease.reader {
                Some(r) => f(r),
                None => Err(ApiError::internal("no history reader is free")),
            };
            drop(lease);
            out
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "History query task failed.");
            ApiError::internal("the history query failed unexpectedly; see the manager's log")
        })?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    fn gate(readers: usize, max_waiting: usize) -> Arc<QueryGate> {
        let storage = fpm_storage::Storage::open(&fpm_storage::StorageConfig::default()).unwrap();
        let rs = (0..readers).map(|_| storage.reader().unwrap()).collect();
        QueryGate::new(rs, max_waiting, IntCounter::new("x", "x").unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_the_pool_size_at_once_and_refuses_beyond_the_line() {
        let g = gate(2, 3);
        let now = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (g, now, peak, rx) = (g.clone(), now.clone(), peak.clone(), release_rx.clone());
            tasks.push(tokio::spawn(async move {
                g.run(move |_| {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(20));
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }));
        }
        // Two run, three wait: the line is full, the next is refused at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while g.waiting.load(Ordering::SeqCst) < 3 {
            assert!(std::time::Instant::now() < deadline, "{g:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = g.run(|_| Ok(())).await.unwrap_err();
        assert_eq!(refused.code(), "busy");
        assert_eq!(g.rejected.get(), 1);
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        // Every reader is back.
        assert_eq!(g.readers.lock().unwrap().len(), 2);
        g.run(|_| Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn a_panicking_query_gives_its_reader_back() {
        let g = gate(1, 1);
        let err = g
            .run(|_| -> Result<(), ApiError> { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(err.code(), "internal_error");
        assert_eq!(g.readers.lock().unwrap().len(), 1);
        g.run(|_| Ok(())).await.unwrap();
    }
}
