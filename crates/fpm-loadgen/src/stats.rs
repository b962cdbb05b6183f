//! What happened to each request, and the figures drawn from that (pure).
//!
//! Latency is measured from the request's *scheduled* time, not from when the
//! generator got round to sending it: a generator that falls behind then
//! shows up as latency instead of silently thinning the load (the
//! "coordinated omission" a closed loop suffers from). The send lag is kept
//! separately so a run whose generator lagged can be recognised.

use std::collections::BTreeMap;
use std::time::Duration;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A complete HTTP response with this status.
    Status(u16),
    /// No complete response.
    Error(ErrorKind),
}

/// Why a request got no complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connection could not be made.
    Connect,
    /// The connection broke or the reply was not valid HTTP.
    Http,
    /// No complete response within the per-request timeout.
    Timeout,
    /// Not sent: the in-flight cap was reached when it was due.
    InFlightCap,
    /// Still unanswered at the run's hard deadline.
    Deadline,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Http => "http",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InFlightCap => "in-flight cap",
            ErrorKind::Deadline => "deadline",
        }
    }
}

impl Outcome {
    /// 2xx and 3xx responses are successes; anything else is a failure.
    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Status(s) if (200..400).contains(&s))
    }

    pub fn label(self) -> String {
        match self {
            Outcome::Status(s) => s.to_string(),
            Outcome::Error(k) => k.label().to_owned(),
        }
    }
}

/// One request of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// Index of the stream (target) it belongs to.
    pub stream: usize,
    /// When it was due, from the start of the run.
    pub scheduled: Duration,
    /// When it was actually sent (equal to `scheduled` plus the generator's
    /// lag); `None` if it was never sent (in-flight cap).
    pub sent: Option<Duration>,
    /// From `scheduled` to the end of the response body, or to the timeout.
    /// `None` when there is no meaningful time (not sent, deadline).
    pub latency: Option<Duration>,
    pub outcome: Outcome,
}

/// Latency figures of a set of requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failures by kind: an HTTP status (`502`) or an error label.
    pub failures: BTreeMap<String, u64>,
    /// Percentiles over every request with a latency: answered ones (any
    /// status) and timed-out ones (counted at the timeout, a lower bound).
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The largest delay between a request's due time and its sending.
    pub max_send_lag: Duration,
}

/// Nearest-rank percentile of sorted values (`q` in [0, 1]); zero when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises the records `keep` selects.
pub fn summarize<'a>(records: impl IntoIterator<Item = &'a Record>) -> Summary {
    let mut s = Summary::default();
    let mut lat = Vec::new();
    for r in records {
        s.requests += 1;
        if r.outcome.is_ok() {
            s.ok += 1;
        } else {
            s.failed += 1;
            *s.failures.entry(r.outcome.label()).or_insert(0) += 1;
        }
        if let Some(l) = r.latency {
            lat.push(l);
        }
        if let Some(sent) = r.sent {
            s.max_send_lag = s.max_send_lag.max(sent.saturating_sub(r.scheduled));
        }
    }
    lat.sort_unstable();
    s.p50 = percentile(&lat, 0.50);
    s.p90 = percentile(&lat, 0.90);
    s.p99 = percentile(&lat, 0.99);
    s.max = lat.last().copied().unwrap_or_default();
    s
}

/// One second of a run, by scheduled time.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// Seconds from the start of the run.
    pub second: u64,
    pub requests: u64,
    pub failed: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Per-second series of the given records (seconds without requests are
/// included, with zeros, so the series has no holes).
pub fn per_second<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<Second> {
    let mut buckets: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for r in records {
        buckets.entry(r.scheduled.as_secs()).or_default().push(r);
    }
    let last = buckets.keys().next_back().copied();
    let Some(last) = last else {
        return Vec::new();
    };
    (0..=last)
        .map(|sec| {
            let rs = buckets.get(&sec).map(Vec::as_slice).unwrap_or(&[]);
            let s = summarize(rs.iter().copied());
            Second {
                second: sec,
                requests: s.requests,
                failed: s.failed,
                p50: s.p50,
                p99: s.p99,
                max: s.max,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn rec(at: u64, lat: Option<u64>, outcome: Outcome) -> Record {
        Record {
            stream: 0,
            scheduled: ms(at),
            sent: Some(ms(at + 1)),
            latency: lat.map(ms),
            outcome,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&v, 0.5), ms(50));
        assert_eq!(percentile(&v, 0.99), ms(99));
        assert_eq!(percentile(&v, 1.0), ms(100));
        assert_eq!(percentile(&v, 0.0), ms(1));
        assert_eq!(percentile(&[ms(7)], 0.99), ms(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        // 10 values: p90 is the 9th, p99 the 10th.
        let v: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(percentile(&v, 0.9), ms(9));
        assert_eq!(percentile(&v, 0.99), ms(10));
    }

    #[test]
    fn summary_counts_failures_and_keeps_timeouts_in_the_tail() {
        let mut rs: Vec<Record> = (0..97)
            .map(|i| rec(i * 10, Some(10 + i), Outcome::Status(200)))
            .collect();
        rs.push(rec(1000, Some(5), Outcome::Status(502)));
        rs.push(rec(1010, Some(10_000), Outcome::Error(ErrorKind::Timeout)));
        rs.push(Record {
            stream: 0,
            scheduled: ms(1020),
            sent: None,
            latency: None,
            outcome: Outcome::Error(ErrorKind::InFlightCap),
        });
        let s = summarize(&rs);
        assert_eq!(s.requests, 100);
        assert_eq!(s.ok, 97);
        assert_eq!(s.failed, 3);
        assert_eq!(s.failures.get("502"), Some(&1));
        assert_eq!(s.failures.get("timeout"), Some(&1));
        assert_eq!(s.failures.get("in-flight cap"), Some(&1));
        // 99 latencies: the timeout is the maximum and the p99.
        assert_eq!(s.max, ms(10_000));
        assert_eq!(s.p99, ms(10_000));
        assert_eq!(s.p50, ms(58));
        assert_eq!(s.max_send_lag, ms(1));
        assert!(Outcome::Status(304).is_ok());
        assert!(!Outcome::Status(404).is_ok());
    }

    #[test]
    fn per_second_series_has_no_holes() {
        let rs = vec![
            rec(100, Some(10), Outcome::Status(200)),
            rec(900, Some(30), Outcome::Status(200)),
            rec(2500, Some(50), Outcome::Error(ErrorKind::Connect)),
        ];
        let s = per_second(&rs);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].second, s[0].requests, s[0].failed), (0, 2, 0));
        assert_eq!(s[0].max, ms(30));
        assert_eq!((s[1].second, s[1].requests), (1, 0));
        assert_eq!((s[2].second, s[2].requests, s[2].failed), (2, 1, 1));
        assert!(per_second(&[]).is_empty());
    }
}
