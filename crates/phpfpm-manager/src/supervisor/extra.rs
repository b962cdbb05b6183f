//! The additive scale-up: a second master on a pool's socket.
//!
//! Two masters given the same listening socket both accept from its one
//! kernel queue (fact 4), so capacity can be added to a loaded pool without
//! replacing its master: the first master keeps serving with its warm
//! OPcache and only the added workers start cold. Measured on real load
//! (`benches/handover.rs`, docs/bench/realload.md): p99 in the 5 s after the
//! change 175 ms, against 261 ms for a warm hand-over to a bigger master.
//!
//! A pool has its first master (cap P) and at most one second master (cap E);
//! what it runs is P + E. Which way a wanted spec is reached is [`step`]
//! (pure). The second master is replaced when the cap moves again above P,
//! stopped when it falls back to P, and folded into one master by every
//! hand-over (a cap below P, any other setting, the renewal that sheds idle
//! workers, or the second master's own unexpected exit).

use std::time::Duration;

use fpm_core::fpm_conf::{PmMode, PoolSpec};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::child::{self, Master};
use super::files::write_atomic;
use super::sockets::{self, Access};
use super::{ApplyError, ApplyReport, Stopped, Supervisor};
use crate::events::What;
use crate::state::ExtraMaster;

/// A second master serving beside the pool's first one.
#[derive(Debug)]
pub(super) struct Extra {
    pub master: Master,
    /// Its `pm.max_children`.
    pub workers: u32,
    /// Numbers its pid files.
    pub generation: u64,
}

/// How a wanted spec is reached from what runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// What runs is what is wanted.
    Unchanged,
    /// Start a second master with this cap; one already running with
    /// another cap is stopped once the new one is ready.
    AddExtra(u32),
    /// Stop the second master: the first one's cap is the wanted one.
    DropExtra,
    /// A new first master with the wanted spec; the second master (if any)
    /// stops with the old first one.
    HandOver,
}

/// The spec a pool runs: its first master's, with the second master's
/// workers added to the cap.
pub(super) fn effective(primary: &PoolSpec, extra: Option<u32>) -> PoolSpec {
    let mut spec = primary.clone();
    if let Some(extra) = extra {
        spec.max_children += extra;
    }
    spec
}

/// Chooses how to reach `wanted`. `primary` is the first master's spec
/// (`None`: none known), `extra` the second master's cap; `renew` asks for a
/// new master even when nothing changes; `additive` is whether a second
/// master may be used now (setting on, a live first master, its sockets
/// held by the manager).
pub(super) fn step(
    primary: Option<&PoolSpec>,
    extra: Option<u32>,
    wanted: &PoolSpec,
    renew: bool,
    additive: bool,
) -> Step {
    let Some(primary) = primary else {
        return Step::HandOver;
    };
    if renew {
        return Step::HandOver;
    }
    let total = primary.max_children + extra.unwrap_or(0);
    if *primary == *wanted && extra.is_none() {
        return Step::Unchanged;
    }
    // Both masters fork on demand: a second `static` or `dynamic` master
    // would start its workers at once, and its spare settings would not add
    // up with the first one's. The start and spare settings follow the cap
    // in the config but mean nothing to `ondemand` (they are not rendered).
    let ondemand = primary.pm == PmMode::Ondemand && wanted.pm == PmMode::Ondemand;
    let only_cap = {
        let mut same = wanted.clone();
        same.max_children = primary.max_children;
        same.start_servers = primary.start_servers;
        same.min_spare_servers = primary.min_spare_servers;
        same.max_spare_servers = primary.max_spare_servers;
        same == *primary
    };
    if ondemand && only_cap && wanted.max_children == total {
        return Step::Unchanged;
    }
    if !additive || !ondemand || !only_cap {
        return Step::HandOver;
    }
    match wanted.max_children.cmp(&primary.max_children) {
        std::cmp::Ordering::Greater => Step::AddExtra(wanted.max_children - primary.max_children),
        std::cmp::Ordering::Equal => Step::DropExtra,
        std::cmp::Ordering::Less => Step::HandOver,
    }
}

/// The record the next manager adopts a second master by.
fn record_text(m: &Master, generation: u64, workers: u32) -> String {
    format!("{} {} {} {}\n", m.pid, m.start_ticks, generation, workers)
}

/// Reads a record: pid, start ticks, generation, workers.
fn parse_record(text: &str) -> Option<(u32, u64, u64, u32)> {
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let ticks = it.next()?.parse().ok()?;
    let generation = it.next()?.parse().ok()?;
    let workers = it.next()?.parse().ok()?;
    it.next()
        .is_none()
        .then_some((pid, ticks, generation, workers))
}

impl Supervisor {
    /// What the pool runs now, both masters together.
    pub(super) fn running(&self) -> Option<PoolSpec> {
        let extra = self.extra.as_ref().map(|e| e.workers);
        self.spec.as_ref().map(|p| effective(p, extra))
    }

    /// Publishes the second master (or its absence) and what the pool runs.
    pub(super) fn publish_extra(&self) {
        let extra = self.extra.as_ref().map(|e| ExtraMaster {
            pid: e.master.pid,
            workers: e.workers,
            status: self.layout.extra_status_socket(&self.pool.name),
        });
        let applied = self.running();
        self.state.update_master(&self.pool.name, |m| {
            m.extra = extra;
            if applied.is_some() {
                m.applied = applied;
            }
        });
    }

    /// Starts a second master with `workers` beside the running one; a
    /// second master already running is stopped once the new one is ready.
    pub(super) async fn add_extra(
        &mut self,
        primary_pid: u32,
        workers: u32,
        reason: &str,
        started: Instant,
    ) -> Result<ApplyReport, ApplyError> {
        let name = self.pool.name.clone();
        let Some(mut spec) = self.spec.clone() else {
            return Err(ApplyError::StartFailed("no running settings".to_owned()));
        };
        if self.extra_status.is_none() {
            let public = self.layout.extra_status_socket(&name);
            let access = Access {
                mode: 0o600,
                ..Access::default()
            };
            match sockets::bind_unix(&sockets::private_path(&public), &public, &access) {
                Ok(s) => self.extra_status = Some(s),
                Err(e) => return Err(ApplyError::Sockets(e.to_string())),
            }
        }
        let status = self.extra_status.as_ref().expect("bound above");
        spec.max_children = workers;
        spec.status_listen = Some(status.fpm_address.clone());
        let generation = self.extra.as_ref().map_or(0, |e| e.generation) + 1;
        let (pool_path, master_path) = (
            self.layout.extra_pool_conf(&name),
            self.layout.extra_master_conf(&name),
        );
        let pid_file = self.layout.extra_pid_file(&name, generation);
        if let Err(e) = self
            .write_checked(&spec, &pool_path, &master_path, &pid_file)
            .await
        {
            return Err(self.not_applied(ApplyError::Refused(format!("{e:#}"))));
        }
        let new = match self
            .spawn_ready(&master_path, &[&self.sockets[0], status])
            .await
        {
            Ok(m) => m,
            Err(e) => return Err(self.not_applied(ApplyError::StartFailed(format!("{e:#}")))),
        };
        let took = started.elapsed();
        let new_pid = new.pid;
        let text = record_text(&new, generation, workers);
        if let Err(e) = write_atomic(&self.layout.extra_record(&name), text.as_bytes(), 0o600) {
            tracing::warn!(
                pool = self.name(),
                "Cannot record the second master's pid: {e}."
            );
        }
        let old = self.extra.replace(Extra {
            master: new,
            workers,
            generation,
        });
        let old_pid = old.as_ref().map(|e| e.master.pid);
        let stopping_workers = Some(old.as_ref().map_or(0, |e| e.workers));
        let previous_stopped = old.map(|e| self.stop_in_background(vec![e.master]));
        self.publish_extra();
        self.state
            .update_master(&self.pool.name, |m| m.last_apply_error = None);
        self.state.kick(&self.pool.name);
        tracing::info!(
            pool = self.name(),
            primary_pid,
            new_pid,
            old_pid,
            workers,
            "Added a second php-fpm master with {workers} workers beside master {primary_pid} in {took:?}."
        );
        self.change_event(
            old_pid.or(Some(primary_pid)),
            new_pid,
            took,
            &format!(
            "{reason}; a second master with {workers} workers serves beside master {primary_pid}"
        ),
        );
        Ok(ApplyReport {
            old_pid: Some(primary_pid),
            new_pid,
            took,
            generation: self.generation,
            unchanged: false,
            previous_stopped,
            stopping_workers,
        })
    }

    /// Stops the second master: the first one alone has the wanted cap.
    pub(super) fn drop_extra(
        &mut self,
        primary_pid: u32,
        reason: &str,
        started: Instant,
    ) -> ApplyReport {
        let old = self.take_extra();
        let old_pid = old.as_ref().map(|e| e.master.pid);
        let stopping_workers = Some(old.as_ref().map_or(0, |e| e.workers));
        let previous_stopped = old.map(|e| self.stop_in_background(vec![e.master]));
        let took = started.elapsed();
        tracing::info!(
            pool = self.name(),
            primary_pid,
            old_pid,
            "Stopping the second php-fpm master; master {primary_pid} serves alone."
        );
        self.change_event(
            old_pid,
            primary_pid,
            took,
            &format!("{reason}; the second master stops and master {primary_pid} serves alone"),
        );
        ApplyReport {
            old_pid,
            new_pid: primary_pid,
            took,
            generation: self.generation,
            unchanged: false,
            previous_stopped,
            stopping_workers,
        }
    }

    /// Stops masters gracefully in a task of their own (their workers
    /// finish their requests); the flag is set once all have exited, and a
    /// look then publishes their memory as free.
    pub(super) fn stop_in_background(&self, masters: Vec<Master>) -> Stopped {
        let grace = self.control_timeout + Duration::from_secs(2);
        let pool = self.pool.name.clone();
        let stopped = Stopped::default();
        let flag = stopped.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            for mut old in masters {
                let pid = old.pid;
                let outcome = old.stop(grace, &CancellationToken::new()).await;
                tracing::info!(
                    pool = pool.as_str(),
                    pid,
                    "Previous php-fpm master stopped ({outcome:?})."
                );
            }
            flag.set();
            state.kick(&pool);
        });
        stopped
    }

    /// The second master exited on its own: its workers are gone. Returns
    /// the spec to fold the pool into one master with (what it ran).
    pub(super) fn on_extra_exit(&mut self, status: &str) -> Option<PoolSpec> {
        let mut gone = self.take_extra()?;
        gone.master.disarm();
        child::kill_orphaned_workers(gone.master.pid);
        let wanted = self.spec.as_ref().map(|p| effective(p, Some(gone.workers)));
        tracing::warn!(
            pool = self.name(),
            pid = gone.master.pid,
            "The second php-fpm master exited unexpectedly ({status}); folding its {} workers into one master.",
            gone.workers
        );
        self.event(What::MasterCrash {
            pid: Some(gone.master.pid),
            status: status.to_owned(),
            restart_in_ms: 0,
            crash_loop: false,
        });
        wanted
    }

    /// Adopts the second master an earlier manager left running, with its
    /// status socket; one that cannot be taken over whole is stopped.
    pub(super) async fn adopt_extra(&mut self) {
        let record = self.layout.extra_record(&self.pool.name);
        let Some(text) = std::fs::read_to_string(&record).ok() else {
            return;
        };
        // Whatever cannot be adopted leaves no record behind.
        let forget = || {
            let _ = std::fs::remove_file(&record);
        };
        let Some((pid, ticks, generation, workers)) = parse_record(&text) else {
            forget();
            tracing::warn!(
                pool = self.name(),
                "Ignoring an unreadable record of a second master: {}.",
                record.display()
            );
            return;
        };
        let conf = self.layout.extra_master_conf(&self.pool.name);
        let Some(mut master) = Master::adopt(pid, ticks, &conf) else {
            forget();
            return;
        };
        let public = self.layout.extra_status_socket(&self.pool.name);
        let status = sockets::recover_from_master(
            pid,
            &public,
            &sockets::private_path(&public).to_string_lossy(),
        );
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    pool = self.name(),
                    pid,
                    "Cannot take over the second master's status socket ({e}); stopping it."
                );
                master
                    .stop(self.stop_timeout, &CancellationToken::new())
                    .await;
                forget();
                return;
            }
        };
        if let Err(e) = child::follow_adopted_output(&self.pool.name, pid) {
            tracing::warn!(
                pool = self.name(),
                pid,
                "Cannot follow the adopted second master's log ({e})."
            );
        }
        self.extra_status = Some(status);
        self.extra = Some(Extra {
            master,
            workers,
            generation,
        });
        tracing::info!(
            pool = self.name(),
            pid,
            workers,
            "Adopted the running second php-fpm master."
        );
    }

    /// Stops the second master now (the pool stops, or its first master
    /// could not be adopted).
    pub(super) async fn stop_extra_now(&mut self, hurry: &CancellationToken) {
        if let Some(mut e) = self.take_extra() {
            let outcome = e.master.stop(self.stop_timeout, hurry).await;
            tracing::info!(
                pool = self.name(),
                pid = e.master.pid,
                "Stopped the second php-fpm master ({outcome:?})."
            );
        }
    }

    /// Takes the second master out of the pool (it is being stopped, or
    /// has exited): its record goes, and the state says so.
    pub(super) fn take_extra(&mut self) -> Option<Extra> {
        let gone = self.extra.take();
        if gone.is_some() {
            let _ = std::fs::remove_file(self.layout.extra_record(&self.pool.name));
            self.publish_extra();
        }
        gone
    }

    pub(super) fn change_event(
        &self,
        old_pid: Option<u32>,
        new_pid: u32,
        took: Duration,
        reason: &str,
    ) {
        let applied = self.running();
        self.event(What::PoolChange {
            old_pid,
            new_pid,
            generation: self.generation,
            took_ms: took.as_millis() as u64,
            pm: applied.as_ref().map(|s| s.pm.as_str()).unwrap_or("unknown"),
            max_children: applied.as_ref().map(|s| s.max_children).unwrap_or(0),
            reason: reason.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ondemand(cap: u32) -> PoolSpec {
        let mut s = crate::pool::tests::base();
        s.pm = PmMode::Ondemand;
        s.max_children = cap;
        s
    }

    #[test]
    fn growth_of_an_ondemand_pool_adds_a_second_master() {
        let p = ondemand(8);
        assert_eq!(
            step(Some(&p), None, &ondemand(20), false, true),
            Step::AddExtra(12)
        );
        // A second master already there is replaced by one of the new size.
        assert_eq!(
            step(Some(&p), Some(4), &ondemand(20), false, true),
            Step::AddExtra(12)
        );
        assert_eq!(
            step(Some(&p), Some(12), &ondemand(20), false, true),
            Step::Unchanged
        );
    }

    #[test]
    fn back_to_the_first_masters_cap_stops_the_second_and_below_it_hands_over() {
        let p = ondemand(8);
        assert_eq!(
            step(Some(&p), Some(12), &ondemand(8), false, true),
            Step::DropExtra
        );
        assert_eq!(
            step(Some(&p), None, &ondemand(8), false, true),
            Step::Unchanged
        );
        assert_eq!(
            step(Some(&p), Some(12), &ondemand(6), false, true),
            Step::HandOver
        );
        assert_eq!(
            step(Some(&p), None, &ondemand(6), false, true),
            Step::HandOver
        );
    }

    #[test]
    fn anything_but_the_cap_of_an_ondemand_pool_is_a_hand_over() {
        let p = ondemand(8);
        let mut other = ondemand(20);
        other.max_requests += 1;
        assert_eq!(step(Some(&p), None, &other, false, true), Step::HandOver);
        let mut dynamic = ondemand(8);
        dynamic.pm = PmMode::Dynamic;
        let mut bigger = dynamic.clone();
        bigger.max_children = 20;
        assert_eq!(
            step(Some(&dynamic), None, &bigger, false, true),
            Step::HandOver
        );
        // Off, renewing, or nothing known: a hand-over, which folds a
        // second master into one.
        assert_eq!(
            step(Some(&p), None, &ondemand(20), false, false),
            Step::HandOver
        );
        assert_eq!(
            step(Some(&p), Some(12), &ondemand(20), true, true),
            Step::HandOver
        );
        assert_eq!(step(None, None, &ondemand(20), false, true), Step::HandOver);
    }

    #[test]
    fn records_read_back_and_damaged_ones_are_refused() {
        assert_eq!(parse_record("12 345 3 8\n"), Some((12, 345, 3, 8)));
        for bad in ["", "12 345 3", "12 345 3 8 9", "x 345 3 8", "12 345 3 -1"] {
            assert_eq!(parse_record(bad), None, "{bad:?}");
        }
    }
}
