//! `phpfpm-manager status`: one table of the running manager's pools, built
//! from its API answers (`/api/v1/pools`, `/api/v1/autoscaling`,
//! `/api/v1/events/recent`, and each pool's `/workers`).
//!
//! Reading the answers ([`rows`]) and rendering the table ([`render`]) are
//! pure: the time is passed in, so both are tested on fixed answers.

use std::collections::BTreeMap;

use serde_json::Value;

use super::client::{Client, ClientError};

/// The manager's answers the table is made of; `--json` prints them as
/// they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answers {
    /// `GET /api/v1/pools`.
    pub pools: Value,
    /// `GET /api/v1/autoscaling`.
    pub autoscaling: Value,
    /// `GET /api/v1/events/recent`.
    pub events: Value,
    /// `GET /api/v1/pools/{pool}/workers`, by pool.
    pub workers: BTreeMap<String, Value>,
}

impl Answers {
    /// Asks the manager.
    pub fn fetch(client: &Client) -> Result<Answers, ClientError> {
        let pools = client.get("/api/v1/pools")?;
        let autoscaling = client.get("/api/v1/autoscaling")?;
        let events = client.get("/api/v1/events/recent?limit=500")?;
        let mut workers = BTreeMap::new();
        for name in pools
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
        {
            // Names come from the manager, which only accepts names safe
            // in a path; a pool removed meanwhile is just left out.
            if fpm_core::PoolName::new(name).is_err() {
                continue;
            }
            if let Ok(w) = client.get(&format!("/api/v1/pools/{name}/workers")) {
                workers.insert(name.to_owned(), w);
            }
        }
        Ok(Answers {
            pools,
            autoscaling,
            events,
            workers,
        })
    }

    /// The `--json` document.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "pools": self.pools,
            "autoscaling": self.autoscaling,
            "events": self.events,
            "workers": self.workers,
        })
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub pool: String,
    /// `up`, `down`, `failed`, `stalled`, `circuit open`.
    pub state: &'static str,
    pub busy: Option<u64>,
    pub idle: Option<u64>,
    pub total: Option<u64>,
    /// Connections waiting in the kernel's accept queue.
    pub queue: Option<u64>,
    /// Requests per second (the autoscaler's short window, else its smoothed rate).
    pub rate: Option<f64>,
    /// 95th percentile of the workers' latest request times, in ms.
    pub p95_ms: Option<f64>,
    /// 95th percentile of the workers' PSS, in bytes.
    pub pss: Option<u64>,
    pub recommended: Option<u64>,
    /// `pm.max_children` the running master has.
    pub applied: Option<u64>,
    /// The pool's most recent event and how long ago.
    pub last_event: Option<String>,
}

/// The rows of the table from the answers. Pure: `now_ms` is the clock.
pub fn rows(a: &Answers, now_ms: i64) -> Vec<Row> {
    let scaling: BTreeMap<&str, &Value> = a.autoscaling["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["pool"].as_str()?, s)))
        .collect();
    a.pools
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("?");
            let s = scaling.get(name).copied().unwrap_or(&Value::Null);
            Row {
                pool: name.to_owned(),
                state: state_of(p),
                busy: p["workers"]["active"].as_u64(),
                idle: p["workers"]["idle"].as_u64(),
                total: p["workers"]["total"].as_u64(),
                queue: p["kernel"]["accept_queue"].as_u64(),
                rate: s["short_rate_per_s"]
                    .as_f64()
                    .or_else(|| s["arrival_rate_per_s"].as_f64()),
                p95_ms: a.workers.get(name).and_then(p95_request_ms),
                pss: p["kernel"]["worker_pss_p95_bytes"].as_u64(),
                recommended: s["recommended_workers"].as_u64(),
                applied: s["applied_workers"]
                    .as_u64()
                    .or_else(|| p["pm"]["max_children"].as_u64()),
                last_event: last_event(&a.events, name, now_ms),
            }
        })
        .collect()
}

fn state_of(p: &Value) -> &'static str {
    if p["master"]["failed"].is_string() {
        "failed"
    } else if !p["stalled"].is_null() {
        "stalled"
    } else if p["circuit_open"].as_bool() == Some(true) {
        "circuit open"
    } else if p["up"].as_bool() == Some(true) {
        "up"
    } else {
        "down"
    }
}

/// p95 of the latest request time of every worker that has served one
/// (for a worker busy now: its request so far).
fn p95_request_ms(workers: &Value) -> Option<f64> {
    let mut times: Vec<u64> = workers["workers"]
        .as_array()?
        .iter()
        .filter(|w| w["requests"].as_u64().unwrap_or(0) > 0)
        .filter_map(|w| w["request_duration_us"].as_u64())
        .collect();
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    // Nearest rank: the smallest time with at least 95 % at or below it.
    let rank = (times.len() * 95).div_ceil(100).max(1);
    Some(times[rank - 1] as f64 / 1000.0)
}

fn last_event(events: &Value, pool: &str, now_ms: i64) -> Option<String> {
    // Newest first, as the API serves them.
    let e = events["events"]
        .as_array()?
        .iter()
        .find(|e| e["pool"].as_str() == Some(pool))?;
    let kind = e["type"].as_str().unwrap_or("event");
    let age_s = (now_ms - e["ts_ms"].as_i64()?).max(0) / 1000;
    Some(format!("{kind} {} ago", short_duration(age_s)))
}

fn short_duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

const HEADERS: [&str; 9] = [
    "POOL",
    "STATE",
    "BUSY/IDLE/TOTAL",
    "QUEUE",
    "REQ/S",
    "P95",
    "WORKER PSS",
    "RECOMMENDED/APPLIED",
    "LAST EVENT",
];

/// The table, one line per pool under a header line; `-` where a figure is
/// not known. Pure.
pub fn render(rows: &[Row]) -> String {
    let dash = || "-".to_owned();
    let opt = |v: Option<u64>| v.map_or_else(dash, |n| n.to_string());
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.pool.clone(),
                r.state.to_owned(),
                format!("{}/{}/{}", opt(r.busy), opt(r.idle), opt(r.total)),
                opt(r.queue),
                r.rate.map_or_else(dash, |x| format!("{x:.1}")),
                r.p95_ms.map_or_else(dash, format_ms),
                r.pss.map_or_else(dash, format_bytes),
                format!("{}/{}", opt(r.recommended), opt(r.applied)),
                r.last_event.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Figures are right-aligned, words left-aligned.
    let right = [false, false, true, true, true, true, true, true, false];
    let mut out = String::new();
    let header = HEADERS.map(str::to_owned);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - c.chars().count();
            if right[i] {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no pools)\n");
    }
    out
}

fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

fn format_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = b as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1}GiB", mib / 1024.0)
    } else {
        format!("{mib:.1}MiB")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    fn answers() -> Answers {
        let pool = |name: &str, up: bool| {
            json!({
                "name": name, "up": up, "supervised": true, "circuit_open": false,
                "stalled": null,
                "workers": if up { json!({"active": 2, "idle": 3, "total": 5}) } else { Value::Null },
                "kernel": {"accept_queue": if up { json!(4) } else { Value::Null },
                           "worker_pss_p95_bytes": if up { json!(40 * 1024 * 1024) } else { Value::Null }},
                "master": {"failed": null},
                "pm": {"max_children": 8},
            })
        };
        let mut workers = BTreeMap::new();
        // 20 workers that served 1..=20 ms, and one that never served.
        let mut list: Vec<Value> = (1..=20)
            .map(|ms| json!({"requests": 3, "request_duration_us": ms * 1000}))
            .collect();
        list.push(json!({"requests": 0, "request_duration_us": 999_000_000}));
        workers.insert("www".to_owned(), json!({"pool": "www", "workers": list}));
        Answers {
            pools: json!([pool("www", true), pool("api", false)]),
            autoscaling: json!({"pools": [
                {"pool": "www", "short_rate_per_s": 12.34, "recommended_workers": 6, "applied_workers": 5},
                {"pool": "api", "mode": "advise", "advice": null},
            ]}),
            events: json!({"events": [
                {"ts_ms": NOW - 125_000, "pool": "www", "type": "pool_change"},
                {"ts_ms": NOW - 7_200_000, "pool": "www", "type": "crash"},
                {"ts_ms": NOW - 30_000, "pool": null, "type": "config_change"},
            ]}),
            workers,
        }
    }

    #[test]
    fn rows_take_each_figure_from_its_answer() {
        let r = rows(&answers(), NOW);
        assert_eq!(r.len(), 2);
        let www = &r[0];
        assert_eq!(www.pool, "www");
        assert_eq!(www.state, "up");
        assert_eq!((www.busy, www.idle, www.total), (Some(2), Some(3), Some(5)));
        assert_eq!(www.queue, Some(4));
        assert_eq!(www.rate, Some(12.34));
        // Nearest-rank p95 of 1..=20 ms is 19 ms; the idle worker that
        // never served is left out.
        assert_eq!(www.p95_ms, Some(19.0));
        assert_eq!(www.pss, Some(40 * 1024 * 1024));
        assert_eq!((www.recommended, www.applied), (Some(6), Some(5)));
        assert_eq!(www.last_event.as_deref(), Some("pool_change 2m ago"));
        let api = &r[1];
        assert_eq!(api.state, "down");
        assert_eq!(
            (api.busy, api.queue, api.rate, api.p95_ms),
            (None, None, None, None)
        );
        // No autoscaler figure: the running master's max_children.
        assert_eq!((api.recommended, api.applied), (None, Some(8)));
        assert_eq!(api.last_event, None);
    }

    #[test]
    fn failed_and_stalled_pools_say_so() {
        let mut a = answers();
        a.pools[0]["master"]["failed"] = json!("crash loop");
        a.pools[1]["stalled"] = json!({"pid": 1, "reason": "stopped"});
        let r = rows(&a, NOW);
        assert_eq!((r[0].state, r[1].state), ("failed", "stalled"));
    }

    #[test]
    fn the_table_aligns_columns_and_shows_unknowns_as_dashes() {
        let text = render(&rows(&answers(), NOW));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("POOL  STATE  BUSY/IDLE/TOTAL  QUEUE"),
            "{text}"
        );
        assert!(lines[1].starts_with("www   up"), "{text}");
        assert!(lines[1].contains("2/3/5"), "{text}");
        assert!(lines[1].contains("12.3"), "{text}");
        assert!(lines[1].contains("19ms"), "{text}");
        assert!(lines[1].contains("40.0MiB"), "{text}");
        assert!(lines[1].contains("6/5"), "{text}");
        assert!(lines[1].ends_with("pool_change 2m ago"), "{text}");
        assert!(lines[2].starts_with("api   down"), "{text}");
        assert!(lines[2].contains("-/-/-"), "{text}");
        assert!(lines[2].contains("-/8"), "{text}");
        // Right-aligned figures end under the end of their header.
        let end = lines[0].find("QUEUE").unwrap() + "QUEUE".len();
        assert!(lines[1][..end].ends_with(" 4"), "{text}");
        assert!(lines[2][..end].ends_with(" -"), "{text}");
    }

    #[test]
    fn no_pools_is_said() {
        assert_eq!(render(&[]).lines().nth(1), Some("(no pools)"));
    }

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(3 * 3600 + 5), "3h");
        assert_eq!(short_duration(2 * 86_400), "2d");
        assert_eq!(format_ms(1234.0), "1.23s");
        assert_eq!(format_bytes(3 * 1024 * 1024 * 1024), "3.0GiB");
    }
}
