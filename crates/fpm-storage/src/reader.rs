//! Read side: history queries on their own connection (WAL lets them run while the
//! writer commits), events and event statistics. The maths lives in `rollup`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{params, types::Value, Connection, Row};

use crate::codec;
use crate::error::StorageError;
use crate::model::{
    Event, EventFilter, EventKind, EventStats, MetricKind, QueryResult, Retention, SeriesPoints,
    Severity, StoredEvent, Tier, TimestampMs,
};
use crate::rollup::{self, bucket_start, Agg, RangeError, MINUTE_MS};

/// A history query that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("no metric '{metric}' stored for pool '{pool}'{}", known_hint(.known))]
    NotFound {
        pool: String,
        metric: String,
        known: Vec<String>,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn known_hint(known: &[String]) -> String {
    if known.is_empty() {
        " (the pool has no stored metrics)".to_owned()
    } else {
        format!(" (stored metrics: {})", known.join(", "))
    }
}

/// A query connection. Clones share one connection (queries from clones take turns);
/// `Storage::reader()` opens a new one.
#[derive(Clone)]
pub struct Reader {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    retention: Retention,
}

pub(crate) fn agg_from_row(r: &Row<'_>) -> rusqlite::Result<Agg> {
    Ok(Agg {
        count: r.get::<_, i64>(0)?.max(0) as u64,
        sum: r.get(1)?,
        min: r.get(2)?,
        max: r.get(3)?,
        first: r.get(4)?,
        last: r.get(5)?,
        increase: r.get::<_, Option<f64>>(6)?.unwrap_or(0.0),
    })
}

impl Reader {
    pub(crate) fn new(conn: Arc<Mutex<Connection>>, path: PathBuf, retention: Retention) -> Reader {
        Reader {
            conn,
            path,
            retention,
        }
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        // A panic elsewhere while holding the lock leaves the connection itself usable.
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    fn err(&self, context: &'static str) -> impl Fn(rusqlite::Error) -> StorageError + '_ {
        move |e| StorageError::sqlite(&self.path, context, e)
    }

    /// The retention this storage runs with (tier choice depends on it).
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Names of the metrics stored for a pool.
    pub fn metrics_of_pool(&self, pool: &str) -> Result<Vec<String>, StorageError> {
        self.with(|c| {
            let mut st = c
                .prepare_cached("SELECT DISTINCT name FROM series WHERE pool = ?1 ORDER BY name")
                .map_err(self.err("listing metrics"))?;
            let names = st
                .query_map([pool], |r| r.get(0))
                .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
                .map_err(self.err("listing metrics"))?;
            Ok(names)
        })
    }

    /// All series of `metric` in `pool` between `from` (inclusive) and `to` (exclusive)
    /// at `step` (ms), read from the tier [`rollup::choose_tier`] picks at `now`.
    pub fn query_series(
        &self,
        pool: &str,
        metric: &str,
        from: TimestampMs,
        to: TimestampMs,
        step: i64,
        now: TimestampMs,
    ) -> Result<QueryResult, QueryError> {
        rollup::check_range(from, to, step)?;
        let tier = rollup::choose_tier(now, from, step, &self.retention);
        let series: Vec<(i64, String, MetricKind)> = self.with(|c| {
            let mut st = c
                .prepare_cached("SELECT id, labels, kind FROM series WHERE pool = ?1 AND name = ?2 ORDER BY labels")
                .map_err(self.err("finding series"))?;
            let rows = st
                .query_map(params![pool, metric], |r| Ok((r.get(0)?, r.get(1)?, MetricKind::from_i64(r.get(2)?))))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(self.err("finding series"))?;
            Ok(rows)
        })?;
        if series.is_empty() {
            return Err(QueryError::NotFound {
                pool: pool.to_owned(),
                metric: metric.to_owned(),
                known: self.metrics_of_pool(pool)?,
            });
        }
        let mut out = Vec::with_capacity(series.len());
        for (id, labels_json, kind) in series {
            // One step more before the range, so the first point of a counter knows the
            // value before it and counts the increase across its start.
            let first_bucket = bucket_start(from, step);
            let rows = self.tier_rows(tier, id, first_bucket.saturating_sub(step), to)?;
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&labels_json).unwrap_or_default();
            // Rows are aligned to their own bucket; points are aligned to the step.
            let pts = rollup::points(&rows, first_bucket, to, step, kind)
                .into_iter()
                .filter(|p| p.t_ms >= first_bucket && p.t_ms < to)
                .collect();
            out.push(SeriesPoints {
                labels,
                kind,
                points: pts,
            });
        }
        Ok(QueryResult {
            tier,
            from_ms: from,
            to_ms: to,
            step_ms: step,
            series: out,
        })
    }

    /// Raw samples of one series in `[from, to)`: compacted chunks plus the staged
    /// samples not compacted yet (staged values win, they were written later).
    pub fn raw_samples(
        &self,
        series_id: i64,
        from: TimestampMs,
        to: TimestampMs,
    ) -> Result<Vec<(TimestampMs, f64)>, StorageError> {
        self.with(|c| {
            let mut all: Vec<(i64, f64)> = Vec::new();
            let mut st = c
                .prepare_cached("SELECT bucket, data FROM raw_chunk WHERE series_id = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket")
                .map_err(self.err("reading chunks"))?;
            let mut rows = st.query(params![series_id, bucket_start(from, MINUTE_MS), to]).map_err(self.err("reading chunks"))?;
            while let Some(r) = rows.next().map_err(self.err("reading chunks"))? {
                let bucket: i64 = r.get(0).map_err(self.err("reading chunks"))?;
                let blob: Vec<u8> = r.get(1).map_err(self.err("reading chunks"))?;
                let samples = codec::decode(&blob).map_err(|source| StorageError::Corrupt {
                    path: self.path.clone(),
                    series_id,
                    bucket_ms: bucket,
                    source,
                })?;
                all.extend(samples.into_iter().map(|(off, v)| (bucket + off, v)));
            }
            let mut st = c
                .prepare_cached("SELECT ts, value FROM raw_recent WHERE series_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY rowid")
                .map_err(self.err("reading staged samples"))?;
            let staged = st
                .query_map(params![series_id, from, to], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<(i64, f64)>, _>>())
                .map_err(self.err("reading staged samples"))?;
            all.extend(staged);
            all.retain(|s| s.0 >= from && s.0 < to);
            Ok(rollup::dedupe_last_wins(all))
        })
    }

    /// Rows of one series in `[from, to)` from one tier, as time-ordered aggregates: raw
    /// samples each as their own aggregate; rollup rows whose bucket starts in
    /// `[from rounded down to the bucket, to)`, followed by the staged samples of the minutes
    /// not compacted yet, so the newest minute shows up before its rollup exists.
    pub fn tier_rows(
        &self,
        tier: Tier,
        id: i64,
        from: TimestampMs,
        to: TimestampMs,
    ) -> Result<Vec<(TimestampMs, Agg)>, StorageError> {
        let table = match tier {
            Tier::Raw => {
                return Ok(self
                    .raw_samples(id, from, to)?
                    .into_iter()
                    .map(|(t, v)| (t, Agg::single(v)))
                    .collect());
            }
            Tier::Minute => "rollup_1m",
            Tier::Hour => "rollup_1h",
        };
        self.with(|c| {
            let sql = format!(
                "SELECT count, sum, min, max, first, last, increase, bucket FROM {table}
                 WHERE series_id = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket"
            );
            let mut st = c.prepare_cached(&sql).map_err(self.err("reading rollups"))?;
            let mut rows = st
                .query_map(params![id, bucket_start(from, tier.resolution_ms()), to], |r| {
                    Ok((r.get::<_, i64>(7)?, agg_from_row(r)?))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(self.err("reading rollups"))?;
            // Everything from the minute after the newest compacted one is only staged.
            let compacted_until: Option<i64> = c
                .query_row("SELECT max(bucket) FROM rollup_1m WHERE series_id = ?1", [id], |r| r.get(0))
                .map_err(self.err("reading rollups"))?;
            let tail_from = compacted_until.map_or(from, |b| from.max(b + MINUTE_MS));
            let mut st = c
                .prepare_cached(
                    "SELECT ts, value FROM raw_recent WHERE series_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY rowid",
                )
                .map_err(self.err("reading staged samples"))?;
            let staged = st
                .query_map(params![id, tail_from, to], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<(i64, f64)>, _>>())
                .map_err(self.err("reading staged samples"))?;
            rows.extend(rollup::dedupe_last_wins(staged).into_iter().map(|(t, v)| (t, Agg::single(v))));
            Ok(rows)
        })
    }

    /// Id of the series `name` with exactly these labels (sorted or not).
    pub fn series_id(
        &self,
        name: &str,
        labels: &[(String, String)],
    ) -> Result<Option<i64>, StorageError> {
        let map: BTreeMap<&str, &str> = labels
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let json = serde_json::to_string(&map).unwrap_or_default();
        self.with(|c| {
            use rusqlite::OptionalExtension;
            c.query_row(
                "SELECT id FROM series WHERE name = ?1 AND labels = ?2",
                params![name, json],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("finding series"))
        })
    }

    fn where_clause(f: &EventFilter) -> (String, Vec<Value>) {
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(from) = f.from_ms {
            args.push(Value::Integer(from));
            conds.push(format!("ts >= ?{}", args.len()));
        }
        if let Some(to) = f.to_ms {
            args.push(Value::Integer(to));
            conds.push(format!("ts < ?{}", args.len()));
        }
        if let Some(pool) = &f.pool {
            args.push(Value::Text(pool.clone()));
            conds.push(format!("pool = ?{}", args.len()));
        }
        for (col, vals) in [
            (
                "kind",
                f.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            ),
            (
                "severity",
                f.severities.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            ),
        ] {
            if vals.is_empty() {
                continue;
            }
            let mut ph = Vec::new();
            for v in vals {
                args.push(Value::Text(v.to_owned()));
                ph.push(format!("?{}", args.len()));
            }
            conds.push(format!("{col} IN ({})", ph.join(", ")));
        }
        let w = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        (w, args)
    }

    /// Events matching the filter, newest first.
    pub fn events(&self, f: &EventFilter) -> Result<Vec<StoredEvent>, StorageError> {
        let (w, mut args) = Self::where_clause(f);
        let limit = f.limit.map_or(-1, i64::from);
        args.push(Value::Integer(limit));
        let sql = format!(
            "SELECT id, ts, kind, severity, pool, correlation_id, actor, message, details FROM events {w}
             ORDER BY ts DESC, id DESC LIMIT ?{}",
            args.len()
        );
        self.with(|c| {
            let mut st = c.prepare_cached(&sql).map_err(self.err("reading events"))?;
            let mut rows = st
                .query(rusqlite::params_from_iter(args))
                .map_err(self.err("reading events"))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(self.err("reading events"))? {
                let get = |i| -> Result<Value, StorageError> {
                    r.get::<_, Value>(i).map_err(self.err("reading events"))
                };
                let text = |v: Value| match v {
                    Value::Text(s) => Some(s),
                    _ => None,
                };
                let (kind, severity) = (
                    text(get(2)?).unwrap_or_default(),
                    text(get(3)?).unwrap_or_default(),
                );
                // Rows of kinds a newer version wrote are skipped rather than failing the query.
                let (Ok(kind), Ok(severity)) =
                    (kind.parse::<EventKind>(), severity.parse::<Severity>())
                else {
                    tracing::debug!(kind, severity, "Skipping an event of unknown kind.");
                    continue;
                };
                let details = match text(get(8)?) {
                    Some(s) => serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s)),
                    None => serde_json::Value::Null,
                };
                let id = match get(0)? {
                    Value::Integer(i) => i,
                    _ => 0,
                };
                let ts_ms = match get(1)? {
                    Value::Integer(i) => i,
                    _ => 0,
                };
                out.push(StoredEvent {
                    id,
                    event: Event {
                        ts_ms,
                        kind,
                        severity,
                        pool: text(get(4)?),
                        correlation_id: text(get(5)?),
                        actor: text(get(6)?),
                        message: text(get(7)?).unwrap_or_default(),
                        details,
                    },
                });
            }
            Ok(out)
        })
    }

    /// Counts of events matching the filter (its limit is ignored).
    pub fn event_stats(&self, f: &EventFilter) -> Result<EventStats, StorageError> {
        let (w, args) = Self::where_clause(f);
        let sql = format!(
            "SELECT kind, severity, pool, count(*) FROM events {w} GROUP BY kind, severity, pool"
        );
        self.with(|c| {
            let mut st = c
                .prepare_cached(&sql)
                .map_err(self.err("counting events"))?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(self.err("counting events"))?;
            let mut s = EventStats::default();
            for (kind, sev, pool, n) in rows {
                let n = n.max(0) as u64;
                s.total += n;
                *s.by_kind.entry(kind).or_default() += n;
                *s.by_severity.entry(sev).or_default() += n;
                *s.by_pool
                    .entry(pool.unwrap_or_else(|| "-".to_owned()))
                    .or_default() += n;
            }
            Ok(s)
        })
    }

    /// `PRAGMA integrity_check`: "ok" for a sound file.
    pub fn integrity_check(&self) -> Result<String, StorageError> {
        self.with(|c| {
            let mut st = c
                .prepare("PRAGMA integrity_check")
                .map_err(self.err("checking integrity"))?;
            let lines = st
                .query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(self.err("checking integrity"))?;
            Ok(lines.join("\n"))
        })
    }

    /// Counts rows of a table (tests and benchmarks).
    pub fn count_rows(&self, table: &str) -> Result<i64, StorageError> {
        let allowed = [
            "series",
            "raw_recent",
            "raw_chunk",
            "rollup_1m",
            "rollup_1h",
            "events",
        ];
        let Some(t) = allowed.iter().find(|t| **t == table) else {
            return Ok(0);
        };
        self.with(|c| {
            c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .map_err(self.err("counting rows"))
        })
    }
}
