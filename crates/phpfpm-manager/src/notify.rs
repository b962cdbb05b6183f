//! systemd's service notifications (`sd_notify`): `READY=1` once every pool
//! has settled, `WATCHDOG=1` from the main loop at half of `WATCHDOG_USEC`,
//! `RELOADING=1` then `READY=1` around a SIGHUP reload, `STOPPING=1` when the
//! manager begins to stop. Without `NOTIFY_SOCKET` (not started by systemd
//! with `Type=notify`) nothing is sent and the main loop is never woken.
//!
//! The datagrams go out through the `sd-notify` crate; what to say and when
//! ([`startup`]) is decided here without I/O.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

use crate::state::{AppState, PoolState};

/// How often the main loop looks at the pools until `READY=1` is sent.
const STARTUP_POLL: Duration = Duration::from_millis(200);

/// Where the pools are in their start, as the service manager needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// Some pools are still starting (named).
    Starting { waiting: Vec<String> },
    /// Every pool is ready, or is in a state that waiting does not change: a
    /// supervised pool marked failed (a crash loop, a config php-fpm
    /// refuses; it is retried once a minute), an observed pool that was
    /// looked at and does not answer. `not_ready` says why, per pool.
    Settled {
        ready: usize,
        not_ready: Vec<String>,
    },
}

impl Startup {
    /// The `STATUS=` line for `systemctl status`.
    pub fn status(&self) -> String {
        match self {
            Startup::Starting { waiting } => format!("starting: {}", waiting.join(", ")),
            Startup::Settled { ready, not_ready } if not_ready.is_empty() => {
                format!("{ready} pools ready")
            }
            Startup::Settled { ready, not_ready } => format!(
                "{ready} of {} pools ready; not ready: {}",
                ready + not_ready.len(),
                not_ready.join("; ")
            ),
        }
    }
}

/// Whether the pools have settled. Pure: reads the state passed in.
///
/// Ready is what `/health/ready` says. A pool that is not ready holds the
/// start back only while its start can still succeed: otherwise one broken
/// pool would keep every other pool's service from starting, and systemd
/// would kill them all at `TimeoutStartSec`.
pub fn startup(pools: &[&PoolState]) -> Startup {
    let mut ready = 0;
    let mut not_ready = Vec::new();
    let mut waiting = Vec::new();
    for p in pools {
        let Some(why) = crate::surface::http::not_ready(p) else {
            ready += 1;
            continue;
        };
        let settled = p.master.failed.is_some() || (!p.master.supervised && p.seq > 0);
        if settled {
            not_ready.push(why);
        } else {
            waiting.push(p.name.to_string());
        }
    }
    if waiting.is_empty() {
        Startup::Settled { ready, not_ready }
    } else {
        Startup::Starting { waiting }
    }
}

/// The manager's side of the protocol, driven by the main loop: it polls
/// [`Notifier::tick`] in its `select!` and calls the other methods at the
/// moments they name.
#[derive(Debug)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd asks for keep-alives.
    watchdog: Option<Duration>,
    ready_sent: bool,
    next_poll: Instant,
    next_watchdog: Instant,
    /// A send failed once (logged); later failures are not logged again.
    failed: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the
    /// environment. They are not passed on: php-fpm masters start with a
    /// clean environment.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = if enabled {
            sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
        } else {
            None
        };
        if let Some(every) = watchdog {
            tracing::info!("systemd watchdog on: WATCHDOG=1 every {every:?}.");
        }
        let now = Instant::now();
        Notifier {
            enabled,
            watchdog,
            ready_sent: false,
            next_poll: now,
            next_watchdog: now,
            failed: false,
        }
    }

    /// Resolves when [`Notifier::on_tick`] has something to do; never when
    /// there is nothing to tell. Cancel-safe (a `select!` branch).
    pub async fn tick(&self) {
        match self.next_wake() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        if !self.enabled {
            return None;
        }
        let poll = (!self.ready_sent).then_some(self.next_poll);
        let dog = self.watchdog.map(|_| self.next_watchdog);
        match (poll, dog) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends what is due: `WATCHDOG=1` (the main loop is turning), and
    /// `READY=1` once the pools have settled.
    pub fn on_tick(&mut self, state: &AppState) {
        let now = Instant::now();
        if let Some(every) = self.watchdog {
            if now >= self.next_watchdog {
                self.send(&[NotifyState::Watchdog]);
                self.next_watchdog = now + every;
            }
        }
        if !self.ready_sent && now >= self.next_poll {
            let settled = {
                let pools = state.pools();
                let list: Vec<&PoolState> = pools.values().collect();
                startup(&list)
            };
            if let Startup::Settled { .. } = settled {
                let status = settled.status();
                self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
                tracing::info!("Told systemd the manager is ready ({status}).");
                self.ready_sent = true;
            }
            self.next_poll = now + STARTUP_POLL;
        }
    }

    /// A SIGHUP reload begins. Nothing is said before `READY=1`: systemd
    /// would take the `READY=1` that ends a reload for the end of the start.
    pub fn reloading(&mut self) {
        if self.ready_sent {
            self.send(&[
                NotifyState::Reloading,
                NotifyState::monotonic_usec_now()
                    .unwrap_or(NotifyState::Status("reloading the configuration")),
            ]);
        }
    }

    /// The reload is over, applied or refused: the manager serves again.
    pub fn reloaded(&mut self, state: &AppState) {
        if !self.ready_sent {
            return;
        }
        let status = match state.last_reload() {
            Some(r) if !r.accepted => format!(
                "configuration reload refused ({} problems); running the previous one",
                r.problems.len()
            ),
            _ => "configuration reloaded".to_owned(),
        };
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// The manager begins to stop (or to detach from its masters).
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            if !self.failed {
                tracing::warn!("Cannot notify systemd through NOTIFY_SOCKET: {e}.");
                self.failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fpm_core::PoolName;

    use super::*;
    use crate::state::{Control, Look, MasterState};

    fn pool(name: &str, supervised: bool, seq: u64, ping_ok: bool) -> PoolState {
        PoolState {
            name: PoolName::new(name).unwrap(),
            scrape_uri: String::new(),
            master: MasterState {
                supervised,
                running: supervised && ping_ok,
                ..MasterState::default()
            },
            control: Arc::new(Control::default()),
            look: Arc::new(Look {
                seq,
                up: ping_ok,
                ping_ok,
                ..Look::default()
            }),
        }
    }

    #[test]
    fn ready_once_every_pool_answers() {
        let a = pool("a", true, 3, true);
        let b = pool("b", true, 0, false);
        assert_eq!(
            startup(&[&a, &b]),
            Startup::Starting {
                waiting: vec!["b".into()]
            }
        );
        let b = pool("b", true, 2, true);
        let s = startup(&[&a, &b]);
        assert_eq!(
            s,
            Startup::Settled {
                ready: 2,
                not_ready: vec![]
            }
        );
        assert_eq!(s.status(), "2 pools ready");
    }

    #[test]
    fn a_supervised_pool_waits_until_it_answers_or_is_marked_failed() {
        let a = pool("a", true, 3, true);
        // Looked at, not answering yet: the master may still be starting.
        let mut b = pool("b", true, 5, false);
        assert!(matches!(startup(&[&a, &b]), Startup::Starting { .. }));
        b.master.failed = Some("php-fpm -t refused the config".into());
        let s = startup(&[&a, &b]);
        assert_eq!(
            s,
            Startup::Settled {
                ready: 1,
                not_ready: vec!["b: failed".into()]
            }
        );
        assert_eq!(s.status(), "1 of 2 pools ready; not ready: b: failed");
    }

    #[test]
    fn an_observed_pool_settles_once_looked_at() {
        let a = pool("a", true, 3, true);
        let obs = pool("legacy", false, 0, false);
        assert!(matches!(startup(&[&a, &obs]), Startup::Starting { .. }));
        let obs = pool("legacy", false, 1, false);
        assert!(matches!(
            startup(&[&a, &obs]),
            Startup::Settled { ready: 1, .. }
        ));
    }

    #[test]
    fn a_stalled_master_holds_the_start_back() {
        let mut a = pool("a", true, 3, true);
        a.look = Arc::new(Look {
            stalled: Some(crate::collect::stall::Stalled {
                pid: 7,
                reason: crate::collect::stall::Reason::Stopped,
                since_ms: 1,
            }),
            ..(*a.look).clone()
        });
        assert!(matches!(startup(&[&a]), Startup::Starting { .. }));
    }

    #[test]
    fn without_notify_socket_nothing_wakes_the_loop() {
        let n = Notifier {
            enabled: false,
            watchdog: Some(Duration::from_secs(1)),
            ready_sent: false,
            next_poll: Instant::now(),
            next_watchdog: Instant::now(),
            failed: false,
        };
        assert_eq!(n.next_wake(), None);
    }

    #[test]
    fn after_ready_only_the_watchdog_wakes_the_loop() {
        let now = Instant::now();
        let mut n = Notifier {
            enabled: true,
            watchdog: None,
            ready_sent: true,
            next_poll: now,
            next_watchdog: now,
            failed: false,
        };
        assert_eq!(n.next_wake(), None);
        n.watchdog = Some(Duration::from_secs(15));
        n.next_watchdog = now + Duration::from_secs(15);
        assert_eq!(n.next_wake(), Some(now + Duration::from_secs(15)));
        n.ready_sent = false;
        assert_eq!(n.next_wake(), Some(now));
    }
}
