//! Domain types shared by the writer, the reader and their callers: samples, events,
//! retention settings and query results.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// Milliseconds since the Unix epoch; every timestamp in this crate uses it.
pub type TimestampMs = i64;

/// How a series' values are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A value that goes up and down (busy workers, memory).
    Gauge,
    /// A monotonically increasing total that resets to zero when php-fpm restarts
    /// (accepted connections, slow requests); read as a rate.
    Counter,
}

impl MetricKind {
    pub(crate) fn as_i64(self) -> i64 {
        match self {
            MetricKind::Gauge => 0,
            MetricKind::Counter => 1,
        }
    }

    pub(crate) fn from_i64(v: i64) -> MetricKind {
        if v == 1 {
            MetricKind::Counter
        } else {
            MetricKind::Gauge
        }
    }
}

/// One measured value of one series, as the collector hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, for example `phpfpm_active_processes`.
    pub name: Cow<'static, str>,
    /// Label pairs sorted by name (the writer sorts them again, so order is not a contract).
    /// A `pool` label makes the series reachable through the per-pool history API.
    pub labels: Vec<(String, String)>,
    /// The value; non-finite values are rejected by the writer and counted.
    pub value: f64,
    pub kind: MetricKind,
}

impl Sample {
    pub fn gauge(
        name: impl Into<Cow<'static, str>>,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> Sample {
        Sample {
            name: name.into(),
            labels,
            value,
            kind: MetricKind::Gauge,
        }
    }

    pub fn counter(
        name: impl Into<Cow<'static, str>>,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> Sample {
        Sample {
            name: name.into(),
            labels,
            value,
            kind: MetricKind::Counter,
        }
    }
}

/// How long each tier keeps its rows (`storage.retention.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw samples (default 24h).
    pub raw: Duration,
    /// 1-minute rollups (default 7d).
    pub minute: Duration,
    /// 1-hour rollups (default 365d).
    pub hour: Duration,
    /// Events (default 365d).
    pub events: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw: Duration::from_secs(24 * 3600),
            minute: Duration::from_secs(7 * 24 * 3600),
            hour: Duration::from_secs(365 * 24 * 3600),
            events: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// A retention setting that cannot work, naming the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("storage.retention.{key} '{value}' is not a duration like '36h' or '7d': {reason}")]
    Parse {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("storage.retention.raw '{raw}' must be at least 2m so that every minute is rolled up before its raw samples expire")]
    RawTooShort { raw: String },
    #[error("storage.retention.minute '{minute}' must be at least storage.retention.raw '{raw}' plus 1h, because hourly rollups are recomputed from minute rows when late samples arrive")]
    MinuteTooShort { minute: String, raw: String },
    #[error(
        "storage.retention.hour '{hour}' must be at least storage.retention.minute '{minute}'"
    )]
    HourTooShort { hour: String, minute: String },
    #[error("storage.retention.{key} '{value}' is longer than 100 years")]
    TooLong { key: &'static str, value: String },
}

impl Retention {
    /// Parses the three configured durations (`36h`, `7d`, `1y 2d`), keeping the event
    /// retention at its default; then validates them together.
    pub fn parse(raw: &str, minute: &str, hour: &str) -> Result<Retention, RetentionError> {
        let p = |key: &'static str, value: &str| {
            humantime::parse_duration(value.trim()).map_err(|e| RetentionError::Parse {
                key,
                value: value.to_owned(),
                reason: e.to_string(),
            })
        };
        let r = Retention {
            raw: p("raw", raw)?,
            minute: p("minute", minute)?,
            hour: p("hour", hour)?,
            ..Retention::default()
        };
        r.validate()?;
        Ok(r)
    }

    /// Checks the tiers fit together (see each error's text for the reason).
    pub fn validate(&self) -> Result<(), RetentionError> {
        let h = |d: Duration| humantime::format_duration(d).to_string();
        const CENTURY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
        for (key, d) in [
            ("raw", self.raw),
            ("minute", self.minute),
            ("hour", self.hour),
            ("events", self.events),
        ] {
            if d > CENTURY {
                return Err(RetentionError::TooLong { key, value: h(d) });
            }
        }
        if self.raw < Duration::from_secs(120) {
            return Err(RetentionError::RawTooShort { raw: h(self.raw) });
        }
        if self.minute < self.raw + Duration::from_secs(3600) {
            return Err(RetentionError::MinuteTooShort {
                minute: h(self.minute),
                raw: h(self.raw),
            });
        }
        if self.hour < self.minute {
            return Err(RetentionError::HourTooShort {
                hour: h(self.hour),
                minute: h(self.minute),
            });
        }
        Ok(())
    }
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $variant:ident => $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant,)* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable snake_case name stored in the database and used by the API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s,)* }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($s => Ok($name::$variant),)*
                    _ => Err(UnknownName {
                        what: $what,
                        value: s.to_owned(),
                        expected: [$($s,)*].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

/// A name that is not one of the known event kinds or severities.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}' (expected one of: {expected})")]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

string_enum!(
    /// What happened; stored as its snake_case name.
    EventKind, "event type" {
        /// The autoscaler changed (or decided not to change) a pool's size; details hold its
        /// inputs and reason.
        ScaleDecision => "scale_decision",
        Reload => "reload",
        Crash => "crash",
        Restart => "restart",
        Adoption => "adoption",
        ConfigChange => "config_change",
        /// A mutating API call; `actor` is the API key's name.
        ApiAction => "api_action",
        /// A mutating HTTP call, allowed or refused: principal, route, outcome and request id
        /// (never a key).
        Audit => "audit",
        /// An operator's mark (a deploy); details hold its `tags`.
        Annotation => "annotation",
        CircuitOpen => "circuit_open",
        CircuitClose => "circuit_close",
        SaturationBegin => "saturation_begin",
        SaturationEnd => "saturation_end",
        MaxChildrenReached => "max_children_reached",
        ManagerStart => "manager_start",
        ManagerStop => "manager_stop",
        /// At start: the previous manager's record names a process that is gone and was
        /// never removed, so that manager ended without its shutdown (SIGKILL, a crash).
        ManagerUncleanStop => "manager_unclean_stop",
        /// A pool's socket file is writable by every local user, who can then run PHP as
        /// the pool's account through it.
        InsecureSocket => "insecure_socket",
        /// The collector's own observations and the supervisor's actions.
        SlowRequests => "slow_requests",
        MasterRestart => "master_restart",
        /// A since-start counter went down without a master restart.
        CounterReset => "counter_reset",
        RespawnStorm => "respawn_storm",
        ScrapeFailing => "scrape_failing",
        ScrapeRecovered => "scrape_recovered",
        CrashLoop => "crash_loop",
        ChangeRefused => "change_refused",
        PoolChange => "pool_change",
        /// A master stopped making progress (stopped by a signal, or hung
        /// while connections wait), recovered, or was restarted for it.
        MasterStall => "master_stall",
    }
);

string_enum!(
    /// How much attention an event deserves.
    Severity, "severity" {
        Info => "info",
        Warning => "warning",
        Error => "error",
        Critical => "critical",
    }
);

/// Something that happened, recorded in the events table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub ts_ms: TimestampMs,
    pub kind: EventKind,
    pub severity: Severity,
    pub pool: Option<String>,
    /// Ties together events caused by one action (an API call and the reload it caused).
    pub correlation_id: Option<String>,
    /// Who caused it: an API key's NAME (never the key), `autoscaler`, `supervisor`.
    pub actor: Option<String>,
    pub message: String,
    pub details: serde_json::Value,
}

impl Event {
    /// An event with no pool, correlation id, actor or details.
    pub fn new(
        ts_ms: TimestampMs,
        kind: EventKind,
        severity: Severity,
        message: impl Into<String>,
    ) -> Event {
        Event {
            ts_ms,
            kind,
            severity,
            pool: None,
            correlation_id: None,
            actor: None,
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }
}

/// An event read back, with its row id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub id: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// Which events to read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventFilter {
    /// Inclusive lower bound.
    pub from_ms: Option<TimestampMs>,
    /// Exclusive upper bound.
    pub to_ms: Option<TimestampMs>,
    pub pool: Option<String>,
    pub kinds: Vec<EventKind>,
    pub severities: Vec<Severity>,
    /// At most this many, newest first; `None` = no limit (the API always sets one).
    pub limit: Option<u32>,
}

/// Counts of events in a time range.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct EventStats {
    pub total: u64,
    pub by_kind: std::collections::BTreeMap<String, u64>,
    pub by_severity: std::collections::BTreeMap<String, u64>,
    pub by_pool: std::collections::BTreeMap<String, u64>,
}

/// The storage tier a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Raw,
    Minute,
    Hour,
}

impl Tier {
    /// Bucket width of the tier (raw samples have no bucket: 1 ms).
    pub fn resolution_ms(self) -> i64 {
        match self {
            Tier::Raw => 1,
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
        }
    }
}

/// One point of a queried series: the bucket `[t_ms, t_ms + step)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub t_ms: TimestampMs,
    /// Gauge: the average over the bucket. Counter: the increase per second, across resets.
    pub value: f64,
    /// Gauge only: the lowest and highest sample in the bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Counter only: the increase over the bucket, across resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub increase: Option<f64>,
    /// Raw samples the point summarises.
    pub count: u64,
}

/// One series (a label set) with its points.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoints {
    pub labels: std::collections::BTreeMap<String, String>,
    pub kind: MetricKind,
    pub points: Vec<Point>,
}

/// The answer to a history query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    pub tier: Tier,
    pub from_ms: TimestampMs,
    pub to_ms: TimestampMs,
    pub step_ms: i64,
    pub series: Vec<SeriesPoints>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_human_durations() {
        let r = Retention::parse("36h", "7d", "1y").unwrap();
        assert_eq!(r.raw, Duration::from_secs(36 * 3600));
        assert_eq!(r.minute, Duration::from_secs(7 * 86_400));
        assert!(r.hour >= Duration::from_secs(365 * 86_400));
        assert_eq!(
            Retention::parse("24h", "7d", "365d").unwrap(),
            Retention::default()
        );
    }

    #[test]
    fn retention_errors_name_the_key_and_value() {
        let e = Retention::parse("36 hours please", "7d", "365d").unwrap_err();
        assert!(
            e.to_string()
                .contains("storage.retention.raw '36 hours please'"),
            "{e}"
        );
        let e = Retention::parse("1m", "7d", "365d").unwrap_err();
        assert!(matches!(e, RetentionError::RawTooShort { .. }), "{e}");
        let e = Retention::parse("24h", "24h", "365d").unwrap_err();
        assert!(
            e.to_string().contains("storage.retention.minute '1day'"),
            "{e}"
        );
        let e = Retention::parse("24h", "7d", "1d").unwrap_err();
        assert!(matches!(e, RetentionError::HourTooShort { .. }), "{e}");
        let e = Retention::parse("24h", "7d", "200y").unwrap_err();
        assert!(
            matches!(e, RetentionError::TooLong { key: "hour", .. }),
            "{e}"
        );
    }

    #[test]
    fn kind_and_severity_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(*k));
        }
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>(), Ok(*s));
        }
        let e = "fatal".parse::<Severity>().unwrap_err();
        assert!(e.to_string().contains("unknown severity 'fatal'"), "{e}");
    }
}
