//! Per-client request rates (`server.limits.client_requests_per_second` and
//! `client_burst`), with `governor`'s keyed GCRA limiter: one small state per
//! client, no timer, no task.
//!
//! A client is its principal when it authenticated (an API key or a mapped
//! certificate: the same key from many addresses shares one allowance), else
//! its address (IPv6 by its /64, which one host usually holds whole).
//! Anonymous loopback clients are not limited: they are this host's own
//! processes, and behind a local reverse proxy every client is loopback, so
//! one shared allowance would throttle everybody together; such a proxy
//! limits its own clients.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Whom a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Principal(String),
    Address(IpAddr),
}

/// The key a request counts against, if it is limited at all.
pub fn client_key(principal: Option<&str>, peer: Option<IpAddr>) -> Option<ClientKey> {
    if let Some(name) = principal {
        return Some(ClientKey::Principal(name.to_owned()));
    }
    match peer {
        Some(ip) if ip.is_loopback() => None,
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => None,
            Some(v4) => Some(ClientKey::Address(IpAddr::V4(v4))),
            None => {
                // The /64: one host is usually given a whole one.
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                Some(ClientKey::Address(IpAddr::V6(bits.into())))
            }
        },
        Some(ip) => Some(ClientKey::Address(ip)),
        // No address (a request not from the listener): nothing to key on.
        None => None,
    }
}

/// How often (in checks) states of clients that went quiet are dropped, so
/// that the table does not grow with every address ever seen.
const RETAIN_EVERY: u64 = 4096;

/// The per-client limiter.
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<ClientKey>,
    checks: AtomicU64,
}

impl std::fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl ClientLimiter {
    pub fn new(per_second: u32, burst: u32) -> ClientLimiter {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        ClientLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key`; `Err(wait)` when over the limit.
    pub fn check(&self, key: &ClientKey) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u32 {
    let ms = wait.as_millis().max(1);
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_share_one_allowance_and_loopback_anonymous_is_free() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            client_key(Some("deploy"), Some(far)),
            Some(ClientKey::Principal("deploy".into()))
        );
        // A principal is limited even on loopback.
        assert_eq!(
            client_key(Some("deploy"), Some(lo)),
            Some(ClientKey::Principal("deploy".into()))
        );
        assert_eq!(client_key(None, Some(lo)), None);
        assert_eq!(client_key(None, Some("::1".parse().unwrap())), None);
        assert_eq!(
            client_key(None, Some("::ffff:127.0.0.1".parse().unwrap())),
            None
        );
        assert_eq!(client_key(None, Some(far)), Some(ClientKey::Address(far)));
        // Two addresses of one /64 are one client.
        let a = client_key(None, Some("2001:db8:1:2::5".parse().unwrap()));
        let b = client_key(None, Some("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(
            a,
            client_key(None, Some("2001:db8:1:3::5".parse().unwrap()))
        );
    }

    #[test]
    fn a_burst_beyond_the_allowance_is_told_when_to_come_back() {
        let l = ClientLimiter::new(1, 3);
        let k = ClientKey::Principal("p".into());
        for _ in 0..3 {
            assert!(l.check(&k).is_ok());
        }
        let wait = l.check(&k).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        // Another client is not affected.
        assert!(l.check(&ClientKey::Principal("q".into())).is_ok());
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
