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
use fpm_storage::EventKind;
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

/// One event: when, which pool, and what happened.
#[derive(Debug, Clone)]
pub struct ManagerEvent {
    pub at: SystemTime,
    pub pool: Option<String>,
    /// Who caused it: `collector`, `supervisor`, `autoscaler`, `manager`,
    /// or an operator (`api`, `config`).
    pub actor: &'static str,
    pub what: What,
}

/// Everything that can happen, with the figures behind it. The stored kind,
/// the severity and the message are derived from the variant, so a new
/// variant without a stored kind does not compile.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// Something the collector saw (saturation, a master restart, ...).
    Pool(PoolEvent),
    /// A supervised master exited unexpectedly.
    MasterCrash {
        pid: Option<u32>,
        status: String,
        restart_in_ms: u64,
        /// Too many exits in the crash-loop window: retried slowly.
        crash_loop: bool,
    },
    /// A change was refused; the pool keeps running as it was.
    ChangeRefused {
        /// `php-fpm -t`, `start` or `sockets`.
        stage: &'static str,
        message: String,
    },
    /// New pool settings were applied by a hand-over.
    PoolChange {
        old_pid: Option<u32>,
        new_pid: u32,
        generation: u64,
        took_ms: u64,
        pm: &'static str,
        max_children: u32,
        /// Why the change was asked for (config, autoscaler rule, operator).
        reason: String,
    },
    /// A master left running by an earlier manager was taken over.
    Adoption {
        pid: u32,
        generation: u64,
        sockets_recovered: bool,
    },
    /// The autoscaler decided (to change, or to hold with a new reason).
    ScaleDecision(Box<serde_json::Value>),
    /// An operator's scaling control (pin, unpin, pause, resume).
    ScalingControl {
        action: &'static str,
        workers: Option<u32>,
        until_ms: Option<i64>,
        reason: Option<String>,
    },
    /// An operator's mark (a deploy), shown in history and Grafana.
    Annotation {
        text: String,
        tags: Vec<String>,
    },
    /// A pool's master stopped making progress, recovered, or was
    /// restarted by the supervisor because of it.
    MasterStall {
        pid: u32,
        /// `stopped` (the master is stopped by a signal, state T/t) or
        /// `no_progress` (connections wait, nothing is accepted).
        reason: &'static str,
        /// `detected`, `recovered` or `restart`.
        action: &'static str,
        /// How long the master had made no progress.
        stalled_ms: u64,
    },
    /// The configuration was reloaded (SIGHUP) or the reload was refused.
    ConfigReload {
        accepted: bool,
        problems: Vec<String>,
    },
    ManagerStart {
        pid: u32,
        pools: usize,
    },
    ManagerStop {
        pid: u32,
        /// Left php-fpm running for the next manager (`--replace`).
        detached: bool,
    },
    /// The previous manager on this runtime directory is gone without having
    /// removed its record: it was killed (SIGKILL, OOM) or crashed.
    PreviousManagerUnclean {
        pid: u32,
    },
    /// A mutating HTTP call, allowed or refused (the audit trail). Holds
    /// who and what, never a credential.
    Audit(Box<Audit>),
    /// The HTTP server's TLS certificate was reloaded (SIGHUP), or the
    /// reload failed and the previous certificate stays in use.
    TlsReload {
        accepted: bool,
        message: String,
    },
    /// A pool socket any local user can write to (`listen_mode` with the
    /// world-writable bit): anyone on the host can run PHP as the pool user.
    WorldWritableSocket {
        path: String,
        mode: u32,
    },
}

/// One audited HTTP call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The key's or certificate's principal name, `cert:<CN>` for a
    /// certificate that maps to none, or `anonymous`.
    pub principal: String,
    /// `key`, `certificate` or `none`.
    pub via: &'static str,
    pub method: String,
    /// The route's pattern (`/api/v1/pools/{pool}/scaling`), or the path
    /// (shortened) when no route matched.
    pub route: String,
    /// `allowed`, `unauthenticated`, `forbidden`, `loopback_only` or
    /// `rate_limited`.
    pub outcome: &'static str,
    /// The HTTP status answered.
    pub status: u16,
    pub request_id: String,
    /// The client's address.
    pub client: Option<String>,
}

impl ManagerEvent {
    pub fn new(pool: Option<&str>, actor: &'static str, what: What) -> ManagerEvent {
        ManagerEvent {
            at: SystemTime::now(),
            pool: pool.map(str::to_owned),
            actor,
            what,
        }
    }

    /// When it happened, in milliseconds since the Unix epoch.
    pub fn ts_ms(&self) -> i64 {
        unix_ms(self.at)
    }

    /// The event for something the collector saw.
    pub fn from_pool(pool: &str, ev: &PoolEvent) -> ManagerEvent {
        ManagerEvent::new(Some(pool), "collector", What::Pool(ev.clone()))
    }

    /// The stable snake_case kind, as stored and served.
    pub fn kind(&self) -> &'static str {
        self.stored_kind().as_str()
    }

    /// The events table's kind. Total: every variant names one.
    pub fn stored_kind(&self) -> EventKind {
        match &self.what {
            What::Pool(ev) => match ev {
                PoolEvent::SaturationBegan { .. } => EventKind::SaturationBegin,
                PoolEvent::SaturationEnded { .. } => EventKind::SaturationEnd,
                PoolEvent::MaxChildrenReached { .. } => EventKind::MaxChildrenReached,
                PoolEvent::SlowRequests { .. } => EventKind::SlowRequests,
                PoolEvent::MasterRestarted { .. } => EventKind::MasterRestart,
                PoolEvent::CounterReset { .. } => EventKind::CounterReset,
                PoolEvent::RespawnStorm { .. } => EventKind::RespawnStorm,
                PoolEvent::ScrapeFailing { .. } => EventKind::ScrapeFailing,
                PoolEvent::ScrapeRecovered { .. } => EventKind::ScrapeRecovered,
                PoolEvent::CircuitOpened { .. } => EventKind::CircuitOpen,
                PoolEvent::CircuitClosed => EventKind::CircuitClose,
            },
            What::MasterCrash {
                crash_loop: false, ..
            } => EventKind::Crash,
            What::MasterCrash {
                crash_loop: true, ..
            } => EventKind::CrashLoop,
            What::ChangeRefused { .. } => EventKind::ChangeRefused,
            What::PoolChange { .. } => EventKind::PoolChange,
            What::Adoption { .. } => EventKind::Adoption,
            What::ScaleDecision(_) => EventKind::ScaleDecision,
            What::ScalingControl { .. } => EventKind::ApiAction,
            What::Annotation { .. } => EventKind::Annotation,
            What::ConfigReload { .. } => EventKind::ConfigChange,
            What::MasterStall { .. } => EventKind::MasterStall,
            What::ManagerStart { .. } => EventKind::ManagerStart,
            What::ManagerStop { .. } => EventKind::ManagerStop,
            What::PreviousManagerUnclean { .. } => EventKind::ManagerUncleanStop,
            What::WorldWritableSocket { .. } => EventKind::InsecureSocket,
            What::Audit(_) => EventKind::Audit,
            What::TlsReload { .. } => EventKind::ConfigChange,
        }
    }

    pub fn severity(&self) -> Severity {
        match &self.what {
            What::Pool(ev) => match ev {
                PoolEvent::SaturationBegan { .. }
                | PoolEvent::MaxChildrenReached { .. }
                | PoolEvent::SlowRequests { .. }
                | PoolEvent::RespawnStorm { .. }
                | PoolEvent::ScrapeFailing { .. } => Severity::Warning,
                PoolEvent::CircuitOpened { .. } => Severity::Error,
                PoolEvent::SaturationEnded { .. }
                | PoolEvent::MasterRestarted { .. }
                | PoolEvent::CounterReset { .. }
                | PoolEvent::ScrapeRecovered { .. }
                | PoolEvent::CircuitClosed => Severity::Info,
            },
            What::MasterCrash { crash_loop, .. } => {
                if *crash_loop {
                    Severity::Error
                } else {
                    Severity::Warning
                }
            }
            What::ChangeRefused { .. } => Severity::Error,
            What::PreviousManagerUnclean { .. } | What::WorldWritableSocket { .. } => {
                Severity::Warning
            }
            What::MasterStall { action, .. } => match *action {
                "recovered" => Severity::Info,
                _ => Severity::Error,
            },
            What::ConfigReload { accepted, .. } | What::TlsReload { accepted, .. } => {
                if *accepted {
                    Severity::Info
                } else {
                    Severity::Error
                }
            }
            What::Audit(a) => {
                if a.outcome == "allowed" {
                    Severity::Info
                } else {
                    Severity::Warning
                }
            }
            What::PoolChange { .. }
            | What::Adoption { .. }
            | What::ScaleDecision(_)
            | What::ScalingControl { .. }
            | What::Annotation { .. }
            | What::ManagerStart { .. }
            | What::ManagerStop { .. } => Severity::Info,
        }
    }

    /// One sentence, lowercase, no final period.
    pub fn message(&self) -> String {
        match &self.what {
            What::Pool(ev) => pool_message(ev),
            What::MasterCrash { status, .. } => {
                format!("php-fpm master exited unexpectedly ({status})")
            }
            What::ChangeRefused { stage, message } => {
                format!("pool change refused at {stage}: {message}")
            }
            What::PoolChange {
                took_ms,
                pm,
                max_children,
                reason,
                ..
            } => format!(
                "pool settings applied by hand-over in {took_ms} ms (pm {pm}, max_children {max_children}): {reason}"
            ),
            What::Adoption { pid, .. } => format!("adopted the running php-fpm master {pid}"),
            What::MasterStall {
                pid,
                reason,
                action,
                stalled_ms,
            } => {
                let why = match *reason {
                    "stopped" => "is stopped by a signal",
                    _ => "accepts nothing while connections wait",
                };
                let secs = stalled_ms / 1000;
                match *action {
                    "recovered" => format!("php-fpm master {pid} makes progress again after {secs} s"),
                    "restart" => format!("php-fpm master {pid} {why} since {secs} s; killing and restarting it"),
                    _ => format!("php-fpm master {pid} {why} since {secs} s; the pool is not ready"),
                }
            }
            What::ScaleDecision(d) => d
                .get("summary")
                .and_then(|s| s.as_str())
                .unwrap_or("autoscaler decision")
                .to_owned(),
            What::ScalingControl {
                action, workers, ..
            } => match workers {
                Some(n) => format!("scaling {action} to {n} workers"),
                None => format!("scaling {action}"),
            },
            What::Annotation { text, .. } => text.clone(),
            What::ConfigReload { accepted, problems } => {
                if *accepted {
                    "configuration reloaded".to_owned()
                } else {
                    format!(
                        "configuration reload refused ({} problem(s)); nothing was changed",
                        problems.len()
                    )
                }
            }
            What::ManagerStart { .. } => {
                format!("manager {} started", env!("CARGO_PKG_VERSION"))
            }
            What::ManagerStop { detached, .. } => {
                if *detached {
                    "manager exited, php-fpm left running".to_owned()
                } else {
                    "manager stopped".to_owned()
                }
            }
            What::PreviousManagerUnclean { pid } => {
                format!("the previous manager (pid {pid}) stopped without cleaning up")
            }
            What::WorldWritableSocket { path, mode } => format!(
                "pool socket {path} has mode {mode:04o}: every local user can run PHP as the pool user through it"
            ),
            What::Audit(a) => format!(
                "{} {} by {}: {} ({})",
                a.method, a.route, a.principal, a.outcome, a.status
            ),
            What::TlsReload { accepted, message } => {
                if *accepted {
                    format!("TLS certificate reloaded: {message}")
                } else {
                    format!("TLS certificate reload refused, the previous certificate stays in use: {message}")
                }
            }
        }
    }

    /// The figures behind it. Never holds secrets (env values, API keys).
    pub fn details(&self) -> serde_json::Value {
        match &self.what {
            What::Pool(ev) => pool_details(ev),
            What::MasterCrash {
                pid,
                status,
                restart_in_ms,
                crash_loop,
            } => {
                json!({"pid": pid, "status": status, "restart_in_ms": restart_in_ms, "crash_loop": crash_loop})
            }
            What::ChangeRefused { stage, message } => {
                json!({"stage": stage, "message": message})
            }
            What::PoolChange {
                old_pid,
                new_pid,
                generation,
                took_ms,
                pm,
                max_children,
                reason,
            } => json!({
                "old_pid": old_pid, "new_pid": new_pid, "generation": generation,
                "took_ms": took_ms, "pm": pm, "max_children": max_children, "reason": reason,
            }),
            What::Adoption {
                pid,
                generation,
                sockets_recovered,
            } => {
                json!({"pid": pid, "generation": generation, "sockets_recovered": sockets_recovered})
            }
            What::ScaleDecision(d) => (**d).clone(),
            What::ScalingControl {
                action,
                workers,
                until_ms,
                reason,
            } => {
                json!({"action": action, "workers": workers, "until_ms": until_ms, "reason": reason})
            }
            What::Annotation { tags, .. } => json!({ "tags": tags }),
            What::ConfigReload { accepted, problems } => {
                json!({"accepted": accepted, "problems": problems})
            }
            What::MasterStall {
                pid,
                reason,
                action,
                stalled_ms,
            } => {
                json!({"pid": pid, "reason": reason, "action": action, "stalled_ms": stalled_ms})
            }
            What::ManagerStart { pid, pools } => json!({"pid": pid, "pools": pools}),
            What::ManagerStop { pid, detached } => json!({"pid": pid, "detached": detached}),
            What::PreviousManagerUnclean { pid } => json!({"pid": pid}),
            What::WorldWritableSocket { path, mode } => {
                json!({"path": path, "mode": format!("{mode:04o}")})
            }
            What::Audit(a) => json!({
                "principal": a.principal, "via": a.via, "method": a.method,
                "route": a.route, "outcome": a.outcome, "status": a.status,
                "request_id": a.request_id, "client": a.client,
            }),
            What::TlsReload { accepted, message } => {
                json!({"tls": true, "accepted": accepted, "message": message})
            }
        }
    }

    /// Ties the event to others caused by the same request.
    pub fn correlation_id(&self) -> Option<String> {
        match &self.what {
            What::Audit(a) => Some(a.request_id.clone()),
            _ => None,
        }
    }

    /// The events table's form.
    pub fn to_stored(&self) -> fpm_storage::Event {
        fpm_storage::Event {
            ts_ms: self.ts_ms(),
            kind: self.stored_kind(),
            severity: match self.severity() {
                Severity::Info => fpm_storage::Severity::Info,
                Severity::Warning => fpm_storage::Severity::Warning,
                Severity::Error => fpm_storage::Severity::Error,
            },
            pool: self.pool.clone(),
            correlation_id: self.correlation_id(),
            actor: Some(self.actor.to_owned()),
            message: self.message(),
            details: self.details(),
        }
    }
}

fn pool_message(ev: &PoolEvent) -> String {
    match ev {
        PoolEvent::SaturationBegan { busy, total, queue } => {
            format!("pool saturated: {busy} of {total} workers busy, {queue} connections waiting")
        }
        PoolEvent::SaturationEnded {
            busy,
            total,
            lasted_ms,
        } => format!(
            "saturation ended after {:.1}s ({busy} of {total} busy)",
            *lasted_ms as f64 / 1000.0
        ),
        PoolEvent::MaxChildrenReached { times } => {
            format!("pm.max_children reached {times} more time(s)")
        }
        PoolEvent::SlowRequests { count } => format!("{count} new slow request(s)"),
        PoolEvent::MasterRestarted { .. } => {
            "the pool's master (re)started; its counters restart from 0".to_owned()
        }
        PoolEvent::CounterReset {
            counter,
            before,
            after,
        } => format!(
            "php-fpm's {counter} counter went down from {before} to {after} without a master restart; counted as a reset"
        ),
        PoolEvent::RespawnStorm {
            new_workers,
            window_ms,
        } => format!(
            "{new_workers} workers replaced within {}s",
            window_ms / 1000
        ),
        PoolEvent::ScrapeFailing { message, .. } => {
            format!("status collection failing: {message}")
        }
        PoolEvent::ScrapeRecovered { after_failures } => {
            format!("status collection works again after {after_failures} failure(s)")
        }
        PoolEvent::CircuitOpened {
            failures,
            retry_in_ms,
        } => format!(
            "circuit opened after {failures} failures; next probe in {}s",
            retry_in_ms / 1000
        ),
        PoolEvent::CircuitClosed => "circuit closed: the pool answers again".to_owned(),
    }
}

fn pool_details(ev: &PoolEvent) -> serde_json::Value {
    match ev {
        PoolEvent::SaturationBegan { busy, total, queue } => {
            json!({"busy": busy, "total": total, "queue": queue})
        }
        PoolEvent::SaturationEnded {
            busy,
            total,
            lasted_ms,
        } => json!({"busy": busy, "total": total, "lasted_ms": lasted_ms}),
        PoolEvent::MaxChildrenReached { times } => json!({"times": times}),
        PoolEvent::SlowRequests { count } => json!({"count": count}),
        PoolEvent::MasterRestarted {
            old_start,
            new_start,
        } => json!({"old_start_time": old_start, "new_start_time": new_start}),
        PoolEvent::CounterReset {
            counter,
            before,
            after,
        } => json!({"counter": counter, "before": before, "after": after}),
        PoolEvent::RespawnStorm {
            new_workers,
            window_ms,
        } => json!({"new_workers": new_workers, "window_ms": window_ms}),
        PoolEvent::ScrapeFailing { kind, .. } => json!({"error_kind": kind}),
        PoolEvent::ScrapeRecovered { after_failures } => {
            json!({"after_failures": after_failures})
        }
        PoolEvent::CircuitOpened {
            failures,
            retry_in_ms,
        } => json!({"failures": failures, "retry_in_ms": retry_in_ms}),
        PoolEvent::CircuitClosed => json!({}),
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
            snap.last().unwrap().details()["count"],
            (RECENT_CAPACITY + 9) as u64
        );
    }
}
