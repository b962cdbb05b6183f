//! Parsing of the history API's query parameters, pure and with `now` passed in: times
//! as RFC 3339 or unix seconds, steps as durations (`60s`, `5m`) or seconds, limits.
//! Every error message names the parameter and the value.

use std::collections::BTreeMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::model::TimestampMs;

/// Largest `limit` the events endpoints accept.
pub const MAX_LIMIT: u32 = 10_000;

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

/// A time as RFC 3339 (`2026-11-26T10:00:00Z`, any offset) or unix seconds (`1764151200`,
/// fractions allowed), or `now`.
pub fn parse_time(name: &str, value: &str, now: TimestampMs) -> Result<TimestampMs, String> {
    let v = value.trim();
    if v == "now" {
        return Ok(now);
    }
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!(
                "parameter '{name}' value '{value}' must be a non-negative unix time in seconds"
            ));
        }
        // Year 5138 in seconds: almost certainly milliseconds by mistake.
        if secs >= 1e11 {
            return Err(format!(
                "parameter '{name}' value '{value}' looks like milliseconds; give unix seconds or RFC 3339"
            ));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    match OffsetDateTime::parse(v, &Rfc3339) {
        Ok(t) => Ok((t.unix_timestamp_nanos() / 1_000_000) as i64),
        Err(e) => Err(format!(
            "parameter '{name}' value '{value}' is neither RFC 3339 (like 2026-11-26T10:00:00Z) nor unix seconds: {e}"
        )),
    }
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
    use super::*;
    use crate::model::EventKind;

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
    fn bad_times_name_the_parameter_and_value() {
        for bad in [
            "yesterday",
            "2025-13-01T00:00:00Z",
            "-5",
            "NaN",
            "",
            "1764151200000",
        ] {
            let e = parse_time("from", bad, NOW).unwrap_err();
            assert!(
                e.contains("'from'") && e.contains(&format!("'{bad}'")),
                "{e}"
            );
        }
        assert!(parse_time("to", "1764151200000", NOW)
            .unwrap_err()
            .contains("milliseconds"));
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
