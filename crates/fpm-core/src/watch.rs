//! Pure decisions of the collector: how often to look at a pool (adaptive
//! interval), what changed between two looks (events), counter deltas that
//! survive php-fpm's resets, and a circuit breaker around a failing pool.
//! Time comes in as milliseconds from the caller; nothing here sleeps.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// When to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalPolicy {
    /// While busy: utilisation above `busy_above` or anything queued.
    pub busy: Duration,
    pub normal: Duration,
    /// While utilisation is below `idle_below`.
    pub idle: Duration,
    pub busy_above: f64,
    pub idle_below: f64,
}

impl Default for IntervalPolicy {
    fn default() -> Self {
        IntervalPolicy {
            busy: Duration::from_secs(1),
            normal: Duration::from_secs(5),
            idle: Duration::from_secs(15),
            busy_above: 0.8,
            idle_below: 0.3,
        }
    }
}

/// The next collection interval. `utilization` is busy / total workers
/// (None when unknown), `queue` what waits in the accept queue.
pub fn next_interval(p: &IntervalPolicy, utilization: Option<f64>, queue: u32) -> Duration {
    match utilization {
        _ if queue > 0 => p.busy,
        Some(u) if u > p.busy_above => p.busy,
        Some(u) if u < p.idle_below => p.idle,
        Some(_) => p.normal,
        None => p.normal,
    }
}

/// Increase of a php-fpm "since start" counter. A reload resets these
/// counters (fact 13): after a reset the whole current value is new, and a
/// drop never yields a negative rate.
pub fn counter_delta(prev: u64, cur: u64, reset: bool) -> u64 {
    if reset || cur < prev {
        cur
    } else {
        cur - prev
    }
}

/// The figures of one look at a pool that events are derived from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    pub at_ms: u64,
    /// php-fpm's `start time`: changes when the master (re)starts.
    pub start_time: u64,
    pub accepted_conn: u64,
    pub max_children_reached: u64,
    pub slow_requests: u64,
    pub busy: u64,
    pub total: u64,
    /// pm.max_children, when known.
    pub max_children: Option<u64>,
    /// From the kernel, when known.
    pub queue: Option<u32>,
    pub worker_pids: BTreeSet<u32>,
}

/// Something worth recording about a pool, with the figures behind it.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolEvent {
    SaturationBegan {
        busy: u64,
        total: u64,
        queue: u32,
    },
    SaturationEnded {
        busy: u64,
        total: u64,
        lasted_ms: u64,
    },
    MaxChildrenReached {
        times: u64,
    },
    SlowRequests {
        count: u64,
    },
    MasterRestarted {
        old_start: u64,
        new_start: u64,
    },
    /// Many workers replaced in a short time (pm.max_requests too low,
    /// crashing scripts, memory limits).
    RespawnStorm {
        new_workers: u64,
        window_ms: u64,
    },
    ScrapeFailing {
        kind: String,
        message: String,
    },
    ScrapeRecovered {
        after_failures: u64,
    },
    CircuitOpened {
        failures: u32,
        retry_in_ms: u64,
    },
    CircuitClosed,
}

impl PoolEvent {
    /// Stable snake_case name, for metrics labels and storage.
    pub fn kind(&self) -> &'static str {
        match self {
            PoolEvent::SaturationBegan { .. } => "saturation_begin",
            PoolEvent::SaturationEnded { .. } => "saturation_end",
            PoolEvent::MaxChildrenReached { .. } => "max_children_reached",
            PoolEvent::SlowRequests { .. } => "slow_requests",
            PoolEvent::MasterRestarted { .. } => "master_restart",
            PoolEvent::RespawnStorm { .. } => "respawn_storm",
            PoolEvent::ScrapeFailing { .. } => "scrape_failing",
            PoolEvent::ScrapeRecovered { .. } => "scrape_recovered",
            PoolEvent::CircuitOpened { .. } => "circuit_open",
            PoolEvent::CircuitClosed => "circuit_close",
        }
    }

    /// Whether the collector should look again at once.
    pub fn wants_collection(&self) -> bool {
        matches!(
            self,
            PoolEvent::SaturationBegan { .. }
                | PoolEvent::MaxChildrenReached { .. }
                | PoolEvent::MasterRestarted { .. }
        )
    }
}

/// Remembers the last look at a pool and turns each new one into events.
#[derive(Debug, Clone, Default)]
pub struct Watcher {
    prev: Option<Figures>,
    saturated_since: Option<u64>,
    /// (time, workers new at that look) over the storm window.
    respawns: VecDeque<(u64, u64)>,
    storm_reported_at: Option<u64>,
}

/// Window and threshold of the respawn-storm rule.
const STORM_WINDOW_MS: u64 = 60_000;
const STORM_MIN_NEW: u64 = 5;

impl Watcher {
    /// Is the pool saturated in these figures? Every worker busy at the
    /// maximum, or connections waiting in the kernel's queue.
    pub fn saturated(f: &Figures) -> bool {
        let all_busy =
            f.total > 0 && f.busy >= f.total && f.max_children.is_none_or(|m| f.total >= m);
        all_busy || f.queue.is_some_and(|q| q > 0)
    }

    pub fn observe(&mut self, cur: Figures) -> Vec<PoolEvent> {
        let mut out = Vec::new();
        let sat = Watcher::saturated(&cur);
        match (self.saturated_since, sat) {
            (None, true) => {
                self.saturated_since = Some(cur.at_ms);
                out.push(PoolEvent::SaturationBegan {
                    busy: cur.busy,
                    total: cur.total,
                    queue: cur.queue.unwrap_or(0),
                });
            }
            (Some(since), false) => {
                self.saturated_since = None;
                out.push(PoolEvent::SaturationEnded {
                    busy: cur.busy,
                    total: cur.total,
                    lasted_ms: cur.at_ms.saturating_sub(since),
                });
            }
            _ => {}
        }
        if let Some(prev) = &self.prev {
            let restarted = prev.start_time != cur.start_time;
            if restarted {
                out.push(PoolEvent::MasterRestarted {
                    old_start: prev.start_time,
                    new_start: cur.start_time,
                });
            }
            let reached = counter_delta(
                prev.max_children_reached,
                cur.max_children_reached,
                restarted,
            );
            if reached > 0 {
                out.push(PoolEvent::MaxChildrenReached { times: reached });
            }
            let slow = counter_delta(prev.slow_requests, cur.slow_requests, restarted);
            if slow > 0 {
                out.push(PoolEvent::SlowRequests { count: slow });
            }
            // New worker pids, not counting a whole new set after a restart.
            if !restarted {
                let new = cur.worker_pids.difference(&prev.worker_pids).count() as u64;
                if new > 0 {
                    self.respawns.push_back((cur.at_ms, new));
                }
            }
            while self
                .respawns
                .front()
                .is_some_and(|(t, _)| cur.at_ms.saturating_sub(*t) > STORM_WINDOW_MS)
            {
                self.respawns.pop_front();
            }
            let recent: u64 = self.respawns.iter().map(|(_, n)| n).sum();
            let threshold = STORM_MIN_NEW.max(cur.total);
            let quiet = self
                .storm_reported_at
                .is_none_or(|t| cur.at_ms.saturating_sub(t) > STORM_WINDOW_MS);
            if recent >= threshold && quiet {
                self.storm_reported_at = Some(cur.at_ms);
                out.push(PoolEvent::RespawnStorm {
                    new_workers: recent,
                    window_ms: STORM_WINDOW_MS,
                });
            }
        }
        self.prev = Some(cur);
        out
    }
}

/// A circuit breaker: after `threshold` consecutive failures the pool is left
/// alone for `cooldown` (doubling up to `max_cooldown` while it keeps
/// failing), then one probe is let through (half-open); a success closes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Circuit {
    threshold: u32,
    cooldown_ms: u64,
    max_cooldown_ms: u64,
    failures: u32,
    state: CircuitState,
    current_cooldown_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open { until_ms: u64 },
    HalfOpen,
}

impl Circuit {
    pub fn new(threshold: u32, cooldown: Duration, max_cooldown: Duration) -> Circuit {
        let cooldown_ms = cooldown.as_millis() as u64;
        Circuit {
            threshold: threshold.max(1),
            cooldown_ms,
            max_cooldown_ms: (max_cooldown.as_millis() as u64).max(cooldown_ms),
            failures: 0,
            state: CircuitState::Closed,
            current_cooldown_ms: cooldown_ms,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, CircuitState::Closed)
    }

    /// May a request go out now? Moves an expired open circuit to half-open.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        match self.state {
            CircuitState::Closed | CircuitState::HalfOpen => true,
            CircuitState::Open { until_ms } if now_ms >= until_ms => {
                self.state = CircuitState::HalfOpen;
                true
            }
            CircuitState::Open { .. } => false,
        }
    }

    /// Records an outcome; returns the event when the circuit opens or closes.
    pub fn record(&mut self, ok: bool, now_ms: u64) -> Option<PoolEvent> {
        match (self.state, ok) {
            (CircuitState::HalfOpen, true) => {
                self.state = CircuitState::Closed;
                self.failures = 0;
                self.current_cooldown_ms = self.cooldown_ms;
                Some(PoolEvent::CircuitClosed)
            }
            (_, true) => {
                self.failures = 0;
                None
            }
            (CircuitState::HalfOpen, false) => {
                self.current_cooldown_ms = (self.current_cooldown_ms * 2).min(self.max_cooldown_ms);
                self.state = CircuitState::Open {
                    until_ms: now_ms + self.current_cooldown_ms,
                };
                None
            }
            (CircuitState::Closed, false) => {
                self.failures += 1;
                if self.failures >= self.threshold {
                    self.state = CircuitState::Open {
                        until_ms: now_ms + self.current_cooldown_ms,
                    };
                    Some(PoolEvent::CircuitOpened {
                        failures: self.failures,
                        retry_in_ms: self.current_cooldown_ms,
                    })
                } else {
                    None
                }
            }
            (CircuitState::Open { .. }, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(at_ms: u64, busy: u64, total: u64) -> Figures {
        Figures {
            at_ms,
            start_time: 100,
            busy,
            total,
            max_children: Some(total),
            worker_pids: (1..=total as u32).collect(),
            ..Figures::default()
        }
    }

    #[test]
    fn interval_follows_load_and_queue() {
        let p = IntervalPolicy::default();
        assert_eq!(next_interval(&p, Some(0.9), 0), Duration::from_secs(1));
        assert_eq!(next_interval(&p, Some(0.1), 3), Duration::from_secs(1));
        assert_eq!(next_interval(&p, Some(0.5), 0), Duration::from_secs(5));
        assert_eq!(next_interval(&p, Some(0.1), 0), Duration::from_secs(15));
        assert_eq!(next_interval(&p, None, 0), Duration::from_secs(5));
    }

    #[test]
    fn counters_survive_resets() {
        assert_eq!(counter_delta(10, 15, false), 5);
        assert_eq!(counter_delta(10, 3, false), 3);
        assert_eq!(counter_delta(10, 12, true), 12);
    }

    #[test]
    fn saturation_begins_and_ends_once() {
        let mut w = Watcher::default();
        assert!(w.observe(fig(0, 1, 4)).is_empty());
        let ev = w.observe(fig(1000, 4, 4));
        assert_eq!(
            ev,
            vec![PoolEvent::SaturationBegan {
                busy: 4,
                total: 4,
                queue: 0
            }]
        );
        assert!(ev[0].wants_collection());
        assert!(w.observe(fig(2000, 4, 4)).is_empty());
        let ev = w.observe(fig(3500, 2, 4));
        assert_eq!(
            ev,
            vec![PoolEvent::SaturationEnded {
                busy: 2,
                total: 4,
                lasted_ms: 2500
            }]
        );
        // A queue alone is saturation, even with idle-looking counts.
        let mut q = fig(4000, 1, 4);
        q.queue = Some(8);
        assert!(matches!(
            w.observe(q)[0],
            PoolEvent::SaturationBegan { queue: 8, .. }
        ));
    }

    #[test]
    fn restart_resets_counters_without_negative_events() {
        let mut w = Watcher::default();
        let mut a = fig(0, 0, 2);
        a.max_children_reached = 7;
        a.slow_requests = 3;
        w.observe(a);
        let mut b = fig(1000, 0, 2);
        b.start_time = 200;
        b.max_children_reached = 1;
        b.worker_pids = [50, 51].into_iter().collect();
        let ev = w.observe(b);
        assert_eq!(
            ev,
            vec![
                PoolEvent::MasterRestarted {
                    old_start: 100,
                    new_start: 200
                },
                PoolEvent::MaxChildrenReached { times: 1 }
            ]
        );
    }

    #[test]
    fn respawn_storm_is_reported_once_per_window() {
        let mut w = Watcher::default();
        w.observe(fig(0, 0, 2));
        let mut storms = 0;
        for i in 1..=20u64 {
            let mut f = fig(i * 1000, 0, 2);
            f.worker_pids = [100 + i as u32 * 2, 101 + i as u32 * 2]
                .into_iter()
                .collect();
            storms += w
                .observe(f)
                .iter()
                .filter(|e| matches!(e, PoolEvent::RespawnStorm { .. }))
                .count();
        }
        assert_eq!(storms, 1);
    }

    #[test]
    fn circuit_opens_half_opens_and_closes() {
        let mut c = Circuit::new(3, Duration::from_secs(10), Duration::from_secs(60));
        assert!(c.allow(0));
        assert_eq!(c.record(false, 0), None);
        assert_eq!(c.record(false, 1), None);
        assert!(matches!(
            c.record(false, 2),
            Some(PoolEvent::CircuitOpened {
                failures: 3,
                retry_in_ms: 10_000
            })
        ));
        assert!(!c.allow(5_000));
        assert!(c.allow(10_002));
        assert_eq!(c.state(), CircuitState::HalfOpen);
        // Still failing: open again for twice as long.
        assert_eq!(c.record(false, 10_003), None);
        assert!(!c.allow(25_000));
        assert!(c.allow(30_003));
        assert_eq!(c.record(true, 30_004), Some(PoolEvent::CircuitClosed));
        assert!(!c.is_open());
    }
}
