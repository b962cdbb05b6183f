//! A pool served by two masters (the additive scale-up) read as one pool.
//!
//! Each master has its own scoreboard and status listener, so the collector
//! reads both pages and adds them up here (pure). Worker counts and the
//! workers' lines add up. The since-start counters (`accepted conn`, `max
//! children reached`, `slow requests`) need care: a second master comes and
//! goes while the first keeps running, and its counters start at zero each
//! time. What the pool's page shows is the first master's counters plus what
//! the second masters served since the first one started, so the sum only
//! falls when the first master changes, which the rest of the collector
//! already reads as a reset (its start time changes).

use fpm_core::status::PoolStatus;

/// The since-start counters that are added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    accepted: u64,
    max_children_reached: u64,
    slow: u64,
}

impl Counts {
    fn of(st: &PoolStatus) -> Counts {
        Counts {
            accepted: st.accepted_conn,
            max_children_reached: st.max_children_reached,
            slow: st.slow_requests,
        }
    }

    /// Each counter of `self` and `o` through `f`.
    fn with(self, o: Counts, f: fn(u64, u64) -> u64) -> Counts {
        Counts {
            accepted: f(self.accepted, o.accepted),
            max_children_reached: f(self.max_children_reached, o.max_children_reached),
            slow: f(self.slow, o.slow),
        }
    }

    fn plus(self, o: Counts) -> Counts {
        self.with(o, u64::saturating_add)
    }

    fn since(self, base: Counts) -> Counts {
        self.with(base, u64::saturating_sub)
    }
}

/// The second master being counted.
#[derive(Debug, Clone, Copy)]
struct Seen {
    pid: u32,
    /// Its counts when it began to count (not zero when it was already
    /// running as the first master started, or as this collector began).
    base: Counts,
    last: Counts,
}

/// Adds a second master's page to the first one's, look after look.
#[derive(Debug, Default)]
pub(super) struct Combined {
    /// The first master's start time the counts belong to.
    primary_start: Option<u64>,
    extra: Option<Seen>,
    /// What second masters that are gone served since the first started.
    past: Counts,
}

impl Combined {
    /// The pool's page: `primary` with the second master's added. `extra`
    /// is the second master's pid and its page (`None` when it could not be
    /// read this look: its counts are carried, its workers left out).
    pub(super) fn page(
        &mut self,
        mut primary: PoolStatus,
        extra: Option<(u32, Option<PoolStatus>)>,
    ) -> PoolStatus {
        let restarted = self.primary_start != Some(primary.start_time);
        if restarted {
            // Counting starts again with this first master: a second master
            // running across the change counts from its present counts.
            self.primary_start = Some(primary.start_time);
            self.past = Counts::default();
            if let Some(seen) = self.extra.as_mut() {
                seen.base = seen.last;
            }
        }
        let first_sight = self.extra.is_none() && restarted;
        let (pid, page) = match extra {
            Some((pid, page)) => (Some(pid), page),
            None => (None, None),
        };
        if self.extra.is_some_and(|s| Some(s.pid) != pid) {
            let gone = self.extra.take().expect("checked");
            self.past = self.past.plus(gone.last.since(gone.base));
        }
        if let Some(pid) = pid {
            let now = page.as_ref().map(Counts::of);
            let seen = self.extra.get_or_insert_with(|| {
                // A second master already running when this count began
                // served before it: only what it serves from now counts.
                let base = if first_sight {
                    now.unwrap_or_default()
                } else {
                    Counts::default()
                };
                Seen {
                    pid,
                    base,
                    last: base,
                }
            });
            if let Some(now) = now {
                // A page whose counter went back is not believed.
                if now.accepted >= seen.last.accepted {
                    seen.last = now;
                }
            }
        }
        let added = self
            .past
            .plus(self.extra.map(|s| s.last.since(s.base)).unwrap_or_default());
        primary.accepted_conn = primary.accepted_conn.saturating_add(added.accepted);
        primary.max_children_reached = primary
            .max_children_reached
            .saturating_add(added.max_children_reached);
        primary.slow_requests = primary.slow_requests.saturating_add(added.slow);
        if let Some(page) = page {
            primary.idle_processes += page.idle_processes;
            primary.active_processes += page.active_processes;
            primary.total_processes += page.total_processes;
            primary.max_active_processes += page.max_active_processes;
            primary.memory_peak = primary.memory_peak.max(page.memory_peak);
            primary.processes.extend(page.processes);
            primary.dropped.extend(page.dropped);
        }
        primary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(start: u64, accepted: u64, pids: &[u32]) -> PoolStatus {
        // A page captured from php-fpm 8.2's status listener.
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fpm-core/test_data/status/php82-idle-status-listen.cgi"
        ))
        .unwrap();
        let mut st = fpm_core::status::parse_status(&bytes).unwrap();
        st.start_time = start;
        st.accepted_conn = accepted;
        st.slow_requests = 0;
        st.max_children_reached = 0;
        let mut proc = st.processes[0].clone();
        st.processes.clear();
        for &pid in pids {
            proc.pid = pid;
            st.processes.push(proc.clone());
        }
        st.total_processes = pids.len() as u64;
        st.idle_processes = pids.len() as u64;
        st.active_processes = 0;
        st
    }

    #[test]
    fn workers_add_up_and_the_counter_never_goes_back_across_second_masters() {
        let mut c = Combined::default();
        let a = c.page(page(100, 50, &[1, 2]), None);
        assert_eq!((a.accepted_conn, a.total_processes), (50, 2));
        // A second master starts: its workers and what it serves count.
        let b = c.page(
            page(100, 60, &[1, 2]),
            Some((9, Some(page(200, 5, &[10, 11, 12])))),
        );
        assert_eq!(b.accepted_conn, 65);
        assert_eq!(b.total_processes, 5);
        assert_eq!(b.processes.len(), 5);
        // Its page cannot be read this look: counts carried, workers left out.
        let c2 = c.page(page(100, 61, &[1, 2]), Some((9, None)));
        assert_eq!((c2.accepted_conn, c2.total_processes), (66, 2));
        // It is replaced by another second master, which starts from zero.
        let d = c.page(
            page(100, 70, &[1, 2]),
            Some((20, Some(page(300, 3, &[21])))),
        );
        assert_eq!(d.accepted_conn, 70 + 5 + 3);
        // It stops: what it served stays counted.
        let e = c.page(page(100, 80, &[1, 2]), None);
        assert_eq!(e.accepted_conn, 80 + 5 + 3);
        // A new first master (a hand-over): counting starts again.
        let f = c.page(page(400, 2, &[30]), None);
        assert_eq!(f.accepted_conn, 2);
    }

    #[test]
    fn a_second_master_running_before_the_count_began_adds_only_what_follows() {
        let mut c = Combined::default();
        let a = c.page(page(100, 50, &[1]), Some((9, Some(page(90, 1000, &[10])))));
        assert_eq!(a.accepted_conn, 50);
        let b = c.page(page(100, 51, &[1]), Some((9, Some(page(90, 1004, &[10])))));
        assert_eq!(b.accepted_conn, 55);
        // The first master changes while the second keeps running: what
        // the second served since the last look counts in the new count.
        let d = c.page(page(500, 1, &[2]), Some((9, Some(page(90, 1010, &[10])))));
        assert_eq!(d.accepted_conn, 1 + 6);
        let e = c.page(page(500, 3, &[2]), Some((9, Some(page(90, 1012, &[10])))));
        assert_eq!(e.accepted_conn, 3 + 8);
    }
}
