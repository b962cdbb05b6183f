//! Stall detection: a php-fpm master that is stopped by a signal or hung
//! while connections wait is no longer serving, but its hidden status pool
//! (`pm.status_listen`) keeps answering with a frozen scoreboard, so the
//! status page alone reports it healthy. Workers that reach
//! `pm.max_requests` exit and are not replaced; serving stops within
//! seconds.
//!
//! Two signs, each read at every look:
//! - the master's `/proc/<pid>/stat` state is `T` (stopped) or `t` (traced);
//! - connections wait in the kernel's accept queue, `accepted conn` does not
//!   move, and the page still shows idle workers (or no worker is alive):
//!   a pool that is merely saturated has no idle worker, and one that
//!   serves moves `accepted conn`.
//!
//! A sign must hold for `monitoring.stall_after` before the pool is marked
//! stalled. Pure: time is passed in.

use std::time::Duration;

/// Why a master is considered stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
    Stopped,
    /// Connections wait and nothing is accepted.
    NoProgress,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Stopped => "stopped",
            Reason::NoProgress => "no_progress",
        }
    }
}

/// A pool marked stalled: published in its look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// The master that makes no progress.
    pub pid: u32,
    pub reason: Reason,
    /// When the sign was first seen, ms since the Unix epoch.
    pub since_ms: u64,
}

/// What one look shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signs {
    pub master_pid: Option<u32>,
    /// The master's `stat` state letter.
    pub master_state: Option<char>,
    /// Connections waiting in the accept queue.
    pub queue: Option<u32>,
    /// `accepted conn` of this look's status page.
    pub accepted: Option<u64>,
    /// Idle workers on this look's status page.
    pub idle: Option<u64>,
    /// Workers alive in `/proc` (not zombies).
    pub live_workers: Option<usize>,
}

/// A change worth an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The pool was just marked stalled.
    Detected(Stalled),
    /// A pool marked stalled makes progress again.
    Recovered { stalled: Stalled, stalled_ms: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Began {
    pid: u32,
    at_ms: u64,
    reason: Reason,
    /// `accepted conn` when a no-progress sign was first seen.
    accepted: Option<u64>,
}

/// Follows one pool's master from look to look.
#[derive(Debug, Clone)]
pub struct StallDetector {
    after: Duration,
    began: Option<Began>,
    reported: bool,
}

impl StallDetector {
    pub fn new(after: Duration) -> StallDetector {
        StallDetector {
            after,
            began: None,
            reported: false,
        }
    }

    /// True while a sign is seen, marked or not (the collector then looks
    /// more often).
    pub fn watching(&self) -> bool {
        self.began.is_some()
    }

    /// Takes one look's signs; returns the stall to publish (if marked) and
    /// the change, if any.
    pub fn observe(&mut self, s: &Signs, now_ms: u64) -> (Option<Stalled>, Option<Change>) {
        let Some(pid) = s.master_pid else {
            return (None, self.clear(now_ms));
        };
        // A new master starts afresh; what the old one did is over.
        if self.began.is_some_and(|b| b.pid != pid) {
            self.began = None;
            self.reported = false;
        }
        let stopped = matches!(s.master_state, Some('T' | 't'));
        let waiting = s.queue.is_some_and(|q| q > 0);
        let contradiction = s.idle.is_some_and(|i| i > 0) || s.live_workers.is_some_and(|n| n == 0);
        let reason = if stopped {
            Some(Reason::Stopped)
        } else if waiting && contradiction && s.accepted.is_some() {
            // Progress is `accepted conn` moving since the sign appeared.
            let moved = self
                .began
                .and_then(|b| b.accepted)
                .is_some_and(|a| Some(a) != s.accepted);
            (!moved).then_some(Reason::NoProgress)
        } else {
            None
        };
        let Some(reason) = reason else {
            return (None, self.clear(now_ms));
        };
        let began = *self.began.get_or_insert(Began {
            pid,
            at_ms: now_ms,
            reason,
            accepted: s.accepted,
        });
        if began.accepted.is_none() {
            // Stopped first, counters read later: compare from now on.
            if let Some(b) = self.began.as_mut() {
                b.accepted = s.accepted;
            }
        }
        let held = Duration::from_millis(now_ms.saturating_sub(began.at_ms));
        if held < self.after {
            return (None, None);
        }
        let stalled = Stalled {
            pid,
            reason,
            since_ms: began.at_ms,
        };
        let change = (!self.reported).then_some(Change::Detected(stalled));
        self.reported = true;
        (Some(stalled), change)
    }

    fn clear(&mut self, now_ms: u64) -> Option<Change> {
        let began = self.began.take()?;
        let reported = std::mem::replace(&mut self.reported, false);
        reported.then(|| Change::Recovered {
            stalled: Stalled {
                pid: began.pid,
                reason: began.reason,
                since_ms: began.at_ms,
            },
            stalled_ms: now_ms.saturating_sub(began.at_ms),
        })
    }
}

/// Whether a supervised pool's stalled master is due for a restart:
/// `restart_after` zero disables it.
pub fn restart_due(stalled: &Stalled, restart_after: Duration, now_ms: u64) -> bool {
    !restart_after.is_zero()
        && Duration::from_millis(now_ms.saturating_sub(stalled.since_ms)) >= restart_after
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(10);

    fn serving(accepted: u64) -> Signs {
        Signs {
            master_pid: Some(100),
            master_state: Some('S'),
            queue: Some(0),
            accepted: Some(accepted),
            idle: Some(2),
            live_workers: Some(4),
        }
    }

    #[test]
    fn a_stopped_master_is_marked_after_the_grace_and_recovers() {
        let mut d = StallDetector::new(AFTER);
        let stopped = Signs {
            master_state: Some('T'),
            ..serving(5)
        };
        assert_eq!(d.observe(&stopped, 1_000), (None, None));
        assert!(d.watching());
        assert_eq!(d.observe(&stopped, 10_999), (None, None));
        let (s, c) = d.observe(&stopped, 11_000);
        let want = Stalled {
            pid: 100,
            reason: Reason::Stopped,
            since_ms: 1_000,
        };
        assert_eq!(s, Some(want));
        assert_eq!(c, Some(Change::Detected(want)));
        // Reported once.
        assert_eq!(d.observe(&stopped, 12_000), (Some(want), None));
        // SIGCONT: the state is S again.
        let (s, c) = d.observe(&serving(5), 13_000);
        assert_eq!(s, None);
        assert_eq!(
            c,
            Some(Change::Recovered {
                stalled: want,
                stalled_ms: 12_000
            })
        );
        assert!(!d.watching());
    }

    #[test]
    fn waiting_connections_with_a_frozen_counter_and_idle_workers_stall() {
        let mut d = StallDetector::new(AFTER);
        let frozen = Signs {
            queue: Some(8),
            ..serving(40)
        };
        assert_eq!(d.observe(&frozen, 0).0, None);
        let (s, c) = d.observe(&frozen, 10_000);
        assert_eq!(s.map(|s| s.reason), Some(Reason::NoProgress));
        assert!(matches!(c, Some(Change::Detected(_))));
    }

    #[test]
    fn a_saturated_pool_that_serves_is_not_stalled() {
        let mut d = StallDetector::new(AFTER);
        // Every worker busy: no idle worker, nothing contradicts the queue.
        let busy = |accepted| Signs {
            queue: Some(50),
            idle: Some(0),
            ..serving(accepted)
        };
        for (i, t) in (0..60_000).step_by(1_000).enumerate() {
            assert_eq!(d.observe(&busy(i as u64 / 5), t), (None, None));
        }
        // Idle workers shown and a queue, but accepted conn moves: serving.
        let mut d = StallDetector::new(AFTER);
        for (i, t) in (0..60_000).step_by(1_000).enumerate() {
            let s = Signs {
                queue: Some(3),
                ..serving(i as u64)
            };
            assert_eq!(d.observe(&s, t).0, None, "at {t}");
        }
    }

    #[test]
    fn no_live_worker_with_a_queue_stalls_and_a_new_master_starts_afresh() {
        let mut d = StallDetector::new(AFTER);
        let dead = Signs {
            queue: Some(2),
            idle: Some(0),
            live_workers: Some(0),
            ..serving(7)
        };
        d.observe(&dead, 0);
        assert!(d.observe(&dead, 10_000).0.is_some());
        let new_master = Signs {
            master_pid: Some(200),
            ..dead.clone()
        };
        // A different pid: the grace starts again.
        assert_eq!(d.observe(&new_master, 11_000), (None, None));
        assert!(d.observe(&new_master, 21_000).0.is_some());
    }

    #[test]
    fn without_a_status_page_only_the_stopped_state_counts() {
        let mut d = StallDetector::new(AFTER);
        let down = Signs {
            queue: Some(9),
            accepted: None,
            idle: None,
            ..serving(0)
        };
        d.observe(&down, 0);
        assert_eq!(d.observe(&down, 20_000), (None, None));
    }

    #[test]
    fn restart_is_due_after_its_own_grace_and_zero_disables_it() {
        let s = Stalled {
            pid: 1,
            reason: Reason::Stopped,
            since_ms: 1_000,
        };
        let g = Duration::from_secs(30);
        assert!(!restart_due(&s, g, 30_999));
        assert!(restart_due(&s, g, 31_000));
        assert!(!restart_due(&s, Duration::ZERO, 1_000_000));
    }
}
