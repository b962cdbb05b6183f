//! Events: typed records of what happened to a pool (saturation, a master
//! restart, a refused change, ...) with the figures that triggered them.
//!
//! Producers (collector, supervisor, API) call [`EventSink::emit`], which
//! never blocks: the channel is bounded, and an event that does not fit is
//! counted in `phpfpm_manager_events_dropped_total` instead of stalling a
//! collection. One consumer task logs each event, counts it by kind, keeps
//! the most recent ones in memory and hands them to storage.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use fpm_core::watch::PoolEvent;
use prometheus::IntCounter;
use serde_json::json;
use tokio::sync::mpsc;

/// How bad it is. Error means an operator should act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One event.
#[derive(Debug, Clone)]
pub struct ManagerEvent {
    pub at: SystemTime,
    pub pool: Option<String>,
    /// Stable snake_case kind (`saturation_begin`, `master_crash`, ...).
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
    /// The figures behind it. Never holds secrets (env values, API keys).
    pub details: serde_json::Value,
}

impl ManagerEvent {
    pub fn new(
        pool: Option<&str>,
        kind: &'static str,
        severity: Severity,
        message: String,
        details: serde_json::Value,
    ) -> ManagerEvent {
        ManagerEvent {
            at: SystemTime::now(),
            pool: pool.map(str::to_owned),
            kind,
            severity,
            message,
            details,
        }
    }

    /// When it happened, in milliseconds since the Unix epoch.
    pub fn ts_ms(&self) -> i64 {
        unix_ms(self.at)
    }

    /// The event for something the collector saw.
    pub fn from_pool(pool: &str, ev: &PoolEvent) -> ManagerEvent {
        let (severity, message, details) = match ev {
            PoolEvent::SaturationBegan { busy, total, queue } => (
                Severity::Warning,
                format!(
                    "pool saturated: {busy} of {total} workers busy, {queue} connections waiting"
                ),
                json!({"busy": busy, "total": total, "queue": queue}),
            ),
            PoolEvent::SaturationEnded {
                busy,
                total,
                lasted_ms,
            } => (
                Severity::Info,
                format!(
                    "saturation ended after {:.1}s ({busy} of {total} busy)",
                    *lasted_ms as f64 / 1000.0
                ),
                json!({"busy": busy, "total": total, "lasted_ms": lasted_ms}),
            ),
            PoolEvent::MaxChildrenReached { times } => (
                Severity::Warning,
                format!("pm.max_children reached {times} more time(s)"),
                json!({"times": times}),
            ),
            PoolEvent::SlowRequests { count } => (
                Severity::Warning,
                format!("{count} new slow request(s)"),
                json!({"count": count}),
            ),
            PoolEvent::MasterRestarted {
                old_start,
                new_start,
            } => (
                Severity::Info,
                "the pool's master (re)started; its counters restart from 0".to_owned(),
                json!({"old_start_time": old_start, "new_start_time": new_start}),
            ),
            PoolEvent::CounterReset {
                counter,
                before,
                after,
            } => (
                Severity::Info,
                format!("php-fpm's {counter} counter went down from {before} to {after} without a master restart; counted as a reset"),
                json!({"counter": counter, "before": before, "after": after}),
            ),
            PoolEvent::RespawnStorm {
                new_workers,
                window_ms,
            } => (
                Severity::Warning,
                format!(
                    "{new_workers} workers replaced within {}s",
                    window_ms / 1000
                ),
                json!({"new_workers": new_workers, "window_ms": window_ms}),
            ),
            PoolEvent::ScrapeFailing { kind, message } => (
                Severity::Warning,
                format!("status collection failing: {message}"),
                json!({"error_kind": kind}),
            ),
            PoolEvent::ScrapeRecovered { after_failures } => (
                Severity::Info,
                format!("status collection works again after {after_failures} failure(s)"),
                json!({"after_failures": after_failures}),
            ),
            PoolEvent::CircuitOpened {
                failures,
                retry_in_ms,
            } => (
                Severity::Error,
                format!(
                    "circuit opened after {failures} failures; next probe in {}s",
                    retry_in_ms / 1000
                ),
                json!({"failures": failures, "retry_in_ms": retry_in_ms}),
            ),
            PoolEvent::CircuitClosed => (
                Severity::Info,
                "circuit closed: the pool answers again".to_owned(),
                json!({}),
            ),
        };
        ManagerEvent::new(Some(pool), ev.kind(), severity, message, details)
    }
}

/// Milliseconds since the Unix epoch (0 for a time before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The producers' end.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<ManagerEvent>,
    dropped: IntCounter,
}

impl EventSink {
    pub fn new(capacity: usize, dropped: IntCounter) -> (EventSink, mpsc::Receiver<ManagerEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventSink { tx, dropped }, rx)
    }

    /// Queues an event without waiting; counts it as dropped when full.
    pub fn emit(&self, ev: ManagerEvent) {
        if self.tx.try_send(ev).is_err() {
            self.dropped.inc();
        }
    }
}

/// The last events, newest last, for the API while storage is not there.
#[derive(Debug, Default)]
pub struct Recent {
    events: Mutex<VecDeque<ManagerEvent>>,
}

/// How many events [`Recent`] keeps.
pub const RECENT_CAPACITY: usize = 512;

impl Recent {
    pub fn push(&self, ev: ManagerEvent) {
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == RECENT_CAPACITY {
            q.pop_front();
        }
        q.push_back(ev);
    }

    pub fn snapshot(&self) -> Vec<ManagerEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_counts_drops_and_never_blocks() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let (sink, mut rx) = EventSink::new(2, dropped.clone());
        for _ in 0..5 {
            sink.emit(ManagerEvent::from_pool("www", &PoolEvent::CircuitClosed));
        }
        assert_eq!(dropped.get(), 3);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn recent_keeps_the_newest() {
        let r = Recent::default();
        for i in 0..(RECENT_CAPACITY + 10) {
            r.push(ManagerEvent::from_pool(
                "p",
                &PoolEvent::SlowRequests { count: i as u64 },
            ));
        }
        let snap = r.snapshot();
        assert_eq!(snap.len(), RECENT_CAPACITY);
        assert_eq!(
            snap.last().unwrap().details["count"],
            (RECENT_CAPACITY + 9) as u64
        );
    }
}
