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
/// drop never yields a negative rate. A drop is itself a reset (the
/// [`Watcher`] reports it as [`PoolEvent::CounterReset`]).
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
    /// How the pool's workers exited so far, from php-fpm's log (known for
    /// masters the manager runs; None for observed pools).
    pub worker_exits: Option<WorkerExits>,
}

/// Worker exits counted from php-fpm's log since the manager started
/// (cumulative, never decreasing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerExits {
    /// Exits php-fpm asked for: code 0 after `pm.max_requests`, or SIGQUIT
    /// (idle workers of a dynamic pool, a graceful stop).
    pub recycled: u64,
    /// Everything else: a signal such as SIGSEGV or SIGKILL, a non-zero code.
    pub crashed: u64,
}

/// What one of php-fpm's child lifecycle lines says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildLine {
    Started,
    Recycled,
    Crashed,
}

/// Reads php-fpm's child lifecycle lines (after the level prefix):
/// `[pool www] child 12 started`,
/// `[pool www] child 12 exited with code 0 after 3.1 seconds from start`,
/// `[pool www] child 12 exited on signal 11 (SIGSEGV - core dumped) after ...`.
pub fn child_line(msg: &str) -> Option<ChildLine> {
    let rest = msg.strip_prefix("[pool ")?;
    let (_, rest) = rest.split_once("] child ")?;
    let (pid, what) = rest.split_once(' ')?;
    pid.parse::<u32>().ok()?;
    if what == "started" {
        return Some(ChildLine::Started);
    }
    let how = what.strip_prefix("exited ")?;
    if how.starts_with("with code 0 ") || how.starts_with("on signal 3 ") {
        Some(ChildLine::Recycled)
    } else if how.starts_with("with code ") || how.starts_with("on signal ") {
        Some(ChildLine::Crashed)
    } else {
        None
    }
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
    /// A "since start" counter went down while the master's start time stayed
    /// the same: php-fpm reset it (or another master answered). The deltas
    /// count the new value from 0.
    CounterReset {
        counter: &'static str,
        before: u64,
        after: u64,
    },
    /// Many workers replaced in a short time. With php-fpm's log at hand
    /// (supervised pools) only crashed workers count, never the recycling
    /// of `pm.max_requests`; for observed pools, new worker pids.
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
            PoolEvent::CounterReset { .. } => "counter_reset",
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
#[derive(Debug, Clone)]
pub struct Watcher {
    prev: Option<Figures>,
    saturated_since: Option<u64>,
    /// Consecutive calm looks while saturated (saturation ends after two).
    calm_looks: u32,
    /// (time, workers replaced at that look) over the storm window.
    respawns: VecDeque<(u64, u64)>,
    storm_reported_at: Option<u64>,
    /// Replaced workers within the window that make a respawn storm.
    storm_threshold: u64,
    /// Counter resets seen without a master restart.
    counter_resets: u64,
}

impl Default for Watcher {
    fn default() -> Self {
        Watcher::new(DEFAULT_STORM_THRESHOLD)
    }
}

/// Window of the respawn-storm rule, and its default threshold.
const STORM_WINDOW_MS: u64 = 60_000;
pub const DEFAULT_STORM_THRESHOLD: u64 = 5;

/// Saturation begins when a look is hot, and ends after two consecutive calm
/// looks, so that one connection caught in the queue between two accepts
/// does not make a begin/end pair on every look. Utilisation at or above
/// `HOT_UTILIZATION` with anything queued is hot; below `CALM_UTILIZATION`
/// with nothing queued is calm; in between the state stays as it was.
const HOT_UTILIZATION: f64 = 0.9;
const CALM_UTILIZATION: f64 = 0.75;
const CALM_LOOKS_TO_END: u32 = 2;

impl Watcher {
    /// `storm_threshold`: replaced workers within 60 s that make a
    /// respawn storm (at least 1).
    pub fn new(storm_threshold: u64) -> Watcher {
        Watcher {
            prev: None,
            saturated_since: None,
            calm_looks: 0,
            respawns: VecDeque::new(),
            storm_reported_at: None,
            storm_threshold: storm_threshold.max(1),
            counter_resets: 0,
        }
    }

    /// Counter resets seen while the master's start time stayed the same.
    pub fn counter_resets(&self) -> u64 {
        self.counter_resets
    }

    /// Is the pool saturated in these figures? Every worker busy at the
    /// maximum; or connections waiting while (nearly) every worker is busy;
    /// or as many connections waiting as the pool has workers, whatever the
    /// status page says (it can lag the kernel).
    pub fn saturated(f: &Figures) -> bool {
        let all_busy =
            f.total > 0 && f.busy >= f.total && f.max_children.is_none_or(|m| f.total >= m);
        let queue = u64::from(f.queue.unwrap_or(0));
        let util = utilization(f);
        all_busy || (queue > 0 && util >= HOT_UTILIZATION) || (queue > 0 && queue >= f.total.max(2))
    }

    /// Clearly not saturated: nothing queued and utilisation well below the
    /// point where saturation begins.
    fn calm(f: &Figures) -> bool {
        f.queue.unwrap_or(0) == 0 && utilization(f) < CALM_UTILIZATION
    }

    pub fn observe(&mut self, cur: Figures) -> Vec<PoolEvent> {
        let mut out = Vec::new();
        let sat = Watcher::saturated(&cur);
        if self.saturated_since.is_some() {
            if Watcher::calm(&cur) {
                self.calm_looks += 1;
            } else {
                self.calm_looks = 0;
            }
        }
        let ended = self.calm_looks >= CALM_LOOKS_TO_END;
        match (self.saturated_since, sat) {
            (None, true) => {
                self.calm_looks = 0;
                self.saturated_since = Some(cur.at_ms);
                out.push(PoolEvent::SaturationBegan {
                    busy: cur.busy,
                    total: cur.total,
                    queue: cur.queue.unwrap_or(0),
                });
            }
            (Some(since), _) if ended => {
                self.saturated_since = None;
                self.calm_looks = 0;
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
            } else {
                for (counter, before, after) in [
                    ("accepted_conn", prev.accepted_conn, cur.accepted_conn),
                    (
                        "max_children_reached",
                        prev.max_children_reached,
                        cur.max_children_reached,
                    ),
                    ("slow_requests", prev.slow_requests, cur.slow_requests),
                ] {
                    if after < before {
                        self.counter_resets += 1;
                        out.push(PoolEvent::CounterReset {
                            counter,
                            before,
                            after,
                        });
                    }
                }
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
            // Replaced workers: crashes from php-fpm's log when known (so
            // pm.max_requests recycling never counts), else new worker pids,
            // not counting a whole new set after a restart.
            let replaced = match (prev.worker_exits, cur.worker_exits) {
                (Some(p), Some(c)) => c.crashed.saturating_sub(p.crashed),
                (None, Some(_)) => 0,
                _ if restarted => 0,
                _ => cur.worker_pids.difference(&prev.worker_pids).count() as u64,
            };
            if replaced > 0 {
                self.respawns.push_back((cur.at_ms, replaced));
            }
            while self
                .respawns
                .front()
                .is_some_and(|(t, _)| cur.at_ms.saturating_sub(*t) > STORM_WINDOW_MS)
            {
                self.respawns.pop_front();
            }
            let recent: u64 = self.respawns.iter().map(|(_, n)| n).sum();
            // Counting pids, a whole pool replaced at once (a reload seen
            // as one look) is not a storm; counting crashes, every one is.
            let threshold = if cur.worker_exits.is_some() {
                self.storm_threshold
            } else {
                self.storm_threshold.max(cur.total)
            };
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

fn utilization(f: &Figures) -> f64 {
    if f.total == 0 {
        0.0
    } else {
        f.busy as f64 / f.total as f64
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
        // It ends after two calm looks in a row.
        assert!(w.observe(fig(3500, 2, 4)).is_empty());
        let ev = w.observe(fig(4500, 2, 4));
        assert_eq!(
            ev,
            vec![PoolEvent::SaturationEnded {
                busy: 2,
                total: 4,
                lasted_ms: 3500
            }]
        );
        // A queue as long as the pool is saturation, even with idle-looking
        // counts (the status page lags the kernel).
        let mut q = fig(5000, 1, 4);
        q.queue = Some(8);
        assert!(matches!(
            w.observe(q)[0],
            PoolEvent::SaturationBegan { queue: 8, .. }
        ));
    }

    #[test]
    fn one_queued_connection_at_half_load_does_not_flap() {
        let mut w = Watcher::default();
        let mut events = Vec::new();
        // 4 of 8 busy, and now and then one connection caught between accepts.
        for i in 0..20u64 {
            let mut f = fig(i * 1000, 4, 8);
            f.queue = Some((i % 2) as u32);
            events.extend(w.observe(f));
        }
        assert!(events.is_empty(), "{events:?}");
        // Hovering around busy: once saturated, a dip to 7 of 8 with nothing
        // queued, or a single calm look, does not end it.
        let mut w = Watcher::default();
        let mut kinds = Vec::new();
        let looks = [
            (8, 2),
            (7, 0),
            (8, 1),
            (5, 0),
            (8, 0),
            (5, 0),
            (5, 0),
            (5, 0),
        ];
        for (i, (busy, queue)) in looks.into_iter().enumerate() {
            let mut f = fig(i as u64 * 1000, busy, 8);
            f.queue = Some(queue);
            kinds.extend(w.observe(f).iter().map(PoolEvent::kind));
        }
        assert_eq!(kinds, ["saturation_begin", "saturation_end"]);
    }

    #[test]
    fn a_counter_that_goes_down_without_a_restart_is_a_reset() {
        let mut w = Watcher::default();
        let mut a = fig(0, 0, 2);
        a.accepted_conn = 1000;
        a.slow_requests = 4;
        w.observe(a);
        let mut b = fig(1000, 0, 2);
        b.accepted_conn = 10;
        b.slow_requests = 2;
        let ev = w.observe(b);
        assert_eq!(
            ev,
            vec![
                PoolEvent::CounterReset {
                    counter: "accepted_conn",
                    before: 1000,
                    after: 10
                },
                PoolEvent::CounterReset {
                    counter: "slow_requests",
                    before: 4,
                    after: 2
                },
                // The 2 slow requests since the reset are new.
                PoolEvent::SlowRequests { count: 2 },
            ]
        );
        assert_eq!(w.counter_resets(), 2);
        // And counting goes on from the new value.
        let mut c = fig(2000, 0, 2);
        c.accepted_conn = 15;
        c.slow_requests = 3;
        assert_eq!(w.observe(c), vec![PoolEvent::SlowRequests { count: 1 }]);
    }

    #[test]
    fn recycling_is_not_a_respawn_storm_but_crashes_are() {
        let exits = |recycled, crashed| Some(WorkerExits { recycled, crashed });
        // pm.max_requests recycling: every worker new at every look.
        let mut w = Watcher::new(3);
        let mut f = fig(0, 0, 4);
        f.worker_exits = exits(0, 0);
        w.observe(f);
        for i in 1..=30u64 {
            let mut f = fig(i * 1000, 0, 4);
            f.worker_pids = (0..4).map(|k| 1000 + (i * 4 + k) as u32).collect();
            f.worker_exits = exits(i * 4, 0);
            assert!(w.observe(f).is_empty(), "look {i}");
        }
        // Three crashes within the window make a storm (threshold 3).
        let mut storms = Vec::new();
        for (i, crashed) in [(31u64, 1), (40, 2), (50, 3), (55, 4)] {
            let mut f = fig(i * 1000, 0, 4);
            f.worker_exits = exits(120, crashed);
            storms.extend(w.observe(f));
        }
        assert_eq!(
            storms,
            vec![PoolEvent::RespawnStorm {
                new_workers: 3,
                window_ms: 60_000
            }]
        );
    }

    #[test]
    fn child_lines() {
        let l = |m| child_line(m);
        assert_eq!(l("[pool www] child 12 started"), Some(ChildLine::Started));
        assert_eq!(
            l("[pool www] child 12 exited with code 0 after 3.100000 seconds from start"),
            Some(ChildLine::Recycled)
        );
        assert_eq!(
            l("[pool www] child 12 exited on signal 3 (SIGQUIT) after 1.0 seconds from start"),
            Some(ChildLine::Recycled)
        );
        assert_eq!(
            l("[pool www] child 12 exited on signal 11 (SIGSEGV - core dumped) after 1.0 seconds from start"),
            Some(ChildLine::Crashed)
        );
        assert_eq!(
            l("[pool www] child 12 exited with code 255 after 1.0 seconds from start"),
            Some(ChildLine::Crashed)
        );
        assert_eq!(l("[pool www] child 12 said hello"), None);
        assert_eq!(l("fpm is running, pid 5"), None);
        assert_eq!(l("[pool www] child x started"), None);
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
