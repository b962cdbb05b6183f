//! Parsing of the history API's query parameters, pure and with `now` passed in.
//!
//! Times are accepted in every form a dashboard sends them: RFC 3339
//! (`2026-11-26T10:00:00Z`, any offset), unix epoch milliseconds (what
//! Grafana's `${__from}`/`${__to}` expand to), unix epoch seconds, and
//! Grafana's relative times (`now`, `now-1h`, `now-15m`, `now+5m`). Steps are
//! durations (`60s`, `5m`) or seconds. Every error message names the
//! parameter and the value.

use std::collections::BTreeMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use fpm_storage::TimestampMs;

/// Largest `limit` the events endpoints accept.
pub const MAX_LIMIT: u32 = 10_000;

/// A bare number at or above this is read as epoch milliseconds, below it as
/// epoch seconds. 1e11 s is the year 5138, 1e11 ms is 1973-03-03: no time
/// this manager stores is ambiguous.
const MS_THRESHOLD: f64 = 1e11;

/// Query parameters by name, refusing unknown and repeated ones.
pub fn collect(
    pairs: Vec<(String, String)>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown parameter '{k}' (expected one of: {})",
                allowed.join(", ")
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("parameter '{k}' is given more than once"));
        }
    }
    Ok(out)
}

/// A time as RFC 3339, unix epoch milliseconds or seconds (fractions
/// allowed), `now`, or `now` plus or minus a duration (`now-1h`, `now-15m`,
/// `now-7d`, `now+5m`; units as Grafana writes them).
pub fn parse_time(name: &str, value: &str, now: TimestampMs) -> Result<TimestampMs, String> {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix("now") {
        return relative(name, value, rest.trim(), now);
    }
    if let Ok(n) = v.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return Err(format!(
                "parameter '{name}' value '{value}' must be a non-negative unix time (milliseconds or seconds)"
            ));
        }
        let ms = if n >= MS_THRESHOLD { n } else { n * 1000.0 };
        if ms > i64::MAX as f64 {
            return Err(format!(
                "parameter '{name}' value '{value}' is out of range"
            ));
        }
        return Ok(ms.round() as i64);
    }
    match OffsetDateTime::parse(v, &Rfc3339) {
        Ok(t) => Ok((t.unix_timestamp_nanos() / 1_000_000) as i64),
        Err(e) => Err(format!(
            "parameter '{name}' value '{value}' is not a time: give RFC 3339 (like 2026-11-26T10:00:00Z), unix milliseconds or seconds, or a relative time like now-1h ({e})"
        )),
    }
}

/// The part after `now`: empty, or a sign and a duration.
fn relative(name: &str, value: &str, rest: &str, now: TimestampMs) -> Result<TimestampMs, String> {
    if rest.is_empty() {
        return Ok(now);
    }
    let bad = |why: String| {
        format!(
            "parameter '{name}' value '{value}' is not a relative time like now-1h or now-15m: {why}"
        )
    };
    let (sign, dur) = match rest.split_at(1) {
        ("-", d) => (-1, d.trim()),
        ("+", d) => (1, d.trim()),
        _ => return Err(bad("expected '-' or '+' after 'now'".to_owned())),
    };
    // Grafana's rounding (`now/d`) is not supported: say so rather than guess.
    if dur.contains('/') {
        return Err(bad("rounding with '/' is not supported".to_owned()));
    }
    let d = humantime::parse_duration(dur).map_err(|e| bad(e.to_string()))?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| bad("too large".to_owned()))?;
    Ok(now.saturating_add(sign * ms))
}

/// Formats a timestamp as RFC 3339 in UTC (for annotations and responses meant for people).
pub fn format_time(ts: TimestampMs) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ts.to_string())
}

/// A step as a duration (`30s`, `5m`, `1h`) or a number of seconds; at least 1 s.
pub fn parse_step(value: &str) -> Result<i64, String> {
    let v = value.trim();
    let ms = match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() => (secs * 1000.0).round() as i64,
        Ok(_) => -1,
        Err(_) => humantime::parse_duration(v)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .map_err(|e| {
                format!("parameter 'step' value '{value}' is not a duration like 60s or 5m: {e}")
            })?,
    };
    if ms < 1000 {
        return Err(format!(
            "parameter 'step' value '{value}' must be at least 1s"
        ));
    }
    Ok(ms)
}

/// A result limit in `1..=MAX_LIMIT`.
pub fn parse_limit(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "parameter 'limit' value '{value}' must be a whole number from 1 to {MAX_LIMIT}"
        )),
    }
}

/// A comma-separated list of names parsed with `FromStr` (`type=reload,crash`).
pub fn parse_list<T: std::str::FromStr>(name: &str, value: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| format!("parameter '{name}': {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fpm_storage::EventKind;

    const NOW: i64 = 1_764_151_200_000; // 2025-11-26T10:00:00Z

    #[test]
    fn times_accept_rfc3339_with_offsets_and_unix_seconds() {
        assert_eq!(parse_time("from", "2025-11-26T10:00:00Z", 0), Ok(NOW));
        assert_eq!(parse_time("from", "2025-11-26T11:00:00+01:00", 0), Ok(NOW));
        assert_eq!(
            parse_time("from", "2025-11-26T10:00:00.250Z", 0),
            Ok(NOW + 250)
        );
        assert_eq!(parse_time("from", "1764151200", 0), Ok(NOW));
        assert_eq!(parse_time("from", "1764151200.5", 0), Ok(NOW + 500));
        assert_eq!(parse_time("to", "now", NOW), Ok(NOW));
        assert_eq!(format_time(NOW), "2025-11-26T10:00:00Z");
    }

    #[test]
    fn times_accept_epoch_milliseconds_as_grafana_sends_them() {
        assert_eq!(parse_time("from", "1764151200000", 0), Ok(NOW));
        assert_eq!(parse_time("to", "1764151200123", 0), Ok(NOW + 123));
        // The smallest millisecond value is early 1973; anything below is seconds.
        assert_eq!(parse_time("from", "100000000000", 0), Ok(100_000_000_000));
        assert_eq!(parse_time("from", "99999999999", 0), Ok(99_999_999_999_000));
    }

    #[test]
    fn times_accept_relative_forms() {
        assert_eq!(parse_time("from", "now-1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_time("from", "now-15m", NOW), Ok(NOW - 900_000));
        assert_eq!(parse_time("from", "now-7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_time("to", "now+5m", NOW), Ok(NOW + 300_000));
        assert_eq!(parse_time("to", " now ", NOW), Ok(NOW));
        for bad in ["now-", "now-1x", "now*2", "now/d", "now-1d/d"] {
            let e = parse_time("from", bad, NOW).unwrap_err();
            assert!(
                e.contains("'from'") && e.contains(&format!("'{bad}'")),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_times_name_the_parameter_and_value() {
        for bad in [
            "yesterday",
            "2025-13-01T00:00:00Z",
            "-5",
            "NaN",
            "",
            "1e300",
        ] {
            let e = parse_time("from", bad, NOW).unwrap_err();
            assert!(
                e.contains("'from'") && e.contains(&format!("'{bad}'")),
                "{e}"
            );
        }
    }

    #[test]
    fn steps_and_limits() {
        assert_eq!(parse_step("60s"), Ok(60_000));
        assert_eq!(parse_step("5m"), Ok(300_000));
        assert_eq!(parse_step("15"), Ok(15_000));
        assert!(parse_step("0.5").is_err());
        assert!(parse_step("fast").unwrap_err().contains("'fast'"));
        assert!(parse_step("inf").is_err());
        assert_eq!(parse_limit("10"), Ok(10));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("10001").is_err());
        assert!(parse_limit("-1").is_err());
    }

    #[test]
    fn lists_and_unknown_parameters() {
        assert_eq!(
            parse_list::<EventKind>("type", "reload, crash"),
            Ok(vec![EventKind::Reload, EventKind::Crash])
        );
        assert!(parse_list::<EventKind>("type", "reboot")
            .unwrap_err()
            .contains("unknown event type 'reboot'"));
        let e = collect(vec![("form".into(), "1".into())], &["from", "to"]).unwrap_err();
        assert!(e.contains("unknown parameter 'form'"), "{e}");
        let e = collect(
            vec![("to".into(), "1".into()), ("to".into(), "2".into())],
            &["from", "to"],
        )
        .unwrap_err();
        assert!(e.contains("more than once"), "{e}");
    }
}
