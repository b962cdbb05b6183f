//! Restart backoff for a pool's master: 100 ms doubling up to a cap, back to
//! the first delay once a master has run stably (60 s by default), so that
//! isolated crashes months apart each restart at once instead of walking the
//! delay up to the cap. Pure: the caller passes the times in.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    /// A master that ran at least this long resets the delay.
    stable_after: Duration,
    /// When the running master started; None while none runs.
    running_since: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration, stable_after: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            stable_after,
            running_since: None,
        }
    }

    /// New first delay and cap (a reload); the delay in progress is kept
    /// within them.
    pub(crate) fn set_limits(&mut self, first: Duration, max: Duration) {
        if (first, max) == (self.first, self.max) {
            return;
        }
        self.first = first;
        self.max = max;
        self.next = self.next.clamp(first, max.max(first));
    }

    /// A master became ready at `at`.
    pub(crate) fn started(&mut self, at: Instant) {
        self.running_since = Some(at);
    }

    /// The running master exited at `at`: the delay before the restart. A
    /// master that ran stably first resets the sequence.
    pub(crate) fn exited(&mut self, at: Instant) -> Duration {
        if let Some(since) = self.running_since.take() {
            if at.saturating_duration_since(since) >= self.stable_after {
                self.next = self.first;
            }
        }
        self.next_delay()
    }

    /// A start attempt failed: the delay before the next one (no master ran,
    /// so nothing resets).
    pub(crate) fn start_failed(&mut self) -> Duration {
        self.running_since = None;
        self.next_delay()
    }

    /// The delay to wait now; the following one doubles, up to the cap.
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_to_the_cap_while_masters_die_young() {
        let t0 = Instant::now();
        let mut b = Backoff::new(MS(100), MS(30_000), S(60));
        let mut t = t0;
        let mut got = Vec::new();
        for _ in 0..11 {
            b.started(t);
            t += S(1);
            got.push(b.exited(t).as_millis());
            t += S(1);
        }
        assert_eq!(
            got,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
    }

    #[test]
    fn stable_running_resets_the_delay() {
        let t0 = Instant::now();
        let mut b = Backoff::new(MS(100), MS(30_000), S(60));
        // Walk it up with quick deaths.
        let mut t = t0;
        for _ in 0..8 {
            b.started(t);
            t += MS(500);
            b.exited(t);
        }
        // Isolated crashes far apart: each restarts after the first delay.
        for _ in 0..20 {
            b.started(t);
            t += S(30 * 86_400);
            assert_eq!(b.exited(t), MS(100));
        }
        // Just under the stable time does not reset; exactly at it does.
        b.started(t);
        t += S(1);
        assert_eq!(b.exited(t), MS(200));
        b.started(t);
        t += S(59);
        assert_eq!(b.exited(t), MS(400));
        b.started(t);
        t += S(60);
        assert_eq!(b.exited(t), MS(100));
    }

    #[test]
    fn new_limits_from_a_reload_bound_the_delay_in_progress() {
        let mut b = Backoff::new(MS(100), S(30), S(60));
        for _ in 0..8 {
            b.start_failed();
        }
        assert_eq!(b.start_failed(), MS(25_600));
        b.set_limits(MS(100), S(5));
        assert_eq!(b.start_failed(), S(5));
        b.set_limits(S(10), S(20));
        assert_eq!(b.start_failed(), S(10));
        assert_eq!(b.start_failed(), S(20));
    }

    #[test]
    fn failed_starts_keep_doubling() {
        let t0 = Instant::now();
        let mut b = Backoff::new(MS(100), S(1), S(60));
        b.started(t0);
        assert_eq!(b.exited(t0 + S(3600)), MS(100));
        let got: Vec<_> = (0..6).map(|_| b.start_failed().as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1000, 1000, 1000]);
        // An exit without a recorded start (adopted master) does not reset.
        assert_eq!(b.exited(t0 + S(7200)), S(1));
    }
}
