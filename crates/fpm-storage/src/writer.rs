//! The single writer: takes samples and events from a bounded channel, appends them in one
//! transaction per flush (at least every second), and between flushes does the scheduled
//! maintenance in small steps: compaction of completed minutes into chunks and rollups,
//! retention pruning and incremental vacuum. [`Writer`] is the synchronous core with the
//! time passed in (tests and benchmarks drive it directly); [`WriterTask`] is the thin loop
//! that reads the clock and the channel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use crate::codec;
use crate::error::StorageError;
use crate::model::{Event, MetricKind, Retention, Sample, TimestampMs};
use crate::rollup::{self, admit, bucket_start, cutoffs, Agg, Reject, HOUR_MS, MINUTE_MS};
use crate::Conn;

/// Tuning of the writer; the defaults suit a manager with a few hundred series.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Capacity of the channel in messages (one `record` call is one message).
    pub channel_capacity: usize,
    /// Longest time a received sample waits before it is committed.
    pub flush_interval: Duration,
    /// How often completed minutes are compacted into chunks and rollups.
    pub compact_interval: Duration,
    /// How often retention pruning starts a pass.
    pub prune_interval: Duration,
    /// Rows deleted per pruning transaction; small so a flush is never kept waiting long.
    pub prune_batch_rows: usize,
    /// Staged samples compacted per transaction.
    pub compact_batch_rows: usize,
    /// Pages returned to the filesystem per pruning pass.
    pub vacuum_pages: u32,
    /// Samples kept in memory while the database cannot be written (full disk); beyond it
    /// the oldest are dropped and counted.
    pub max_pending_samples: usize,
    /// A flush starts early once this many samples wait.
    pub max_batch_samples: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            channel_capacity: 1024,
            flush_interval: Duration::from_millis(500),
            compact_interval: Duration::from_secs(10),
            prune_interval: Duration::from_secs(60),
            prune_batch_rows: 2000,
            compact_batch_rows: 20_000,
            vacuum_pages: 256,
            max_pending_samples: 2_000_000,
            max_batch_samples: 50_000,
        }
    }
}

/// Counters shared between the writer and its handles, readable at any time (for
/// `/metrics` and health): a failing writer is visible, never silent.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    channel_dropped: AtomicU64,
    overflow_dropped: AtomicU64,
    rejected: AtomicU64,
    samples_written: AtomicU64,
    events_written: AtomicU64,
    events_dropped: AtomicU64,
    write_errors: AtomicU64,
    pending: AtomicU64,
    failing: AtomicBool,
    committed_until_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
}

/// A snapshot of the writer's counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriterStatus {
    /// Samples dropped because the channel was full (the collector never waits).
    pub channel_dropped: u64,
    /// Samples dropped because too many waited while the database could not be written.
    pub overflow_dropped: u64,
    /// Samples refused: not finite, older than the raw retention, or too far in the future.
    pub rejected: u64,
    pub samples_written: u64,
    pub events_written: u64,
    /// Events dropped because the channel or the in-memory backlog was full.
    pub events_dropped: u64,
    /// Failed flushes or maintenance steps since start.
    pub write_errors: u64,
    /// Samples received but not yet committed.
    pub pending: u64,
    /// True while the last write attempt failed.
    pub failing: bool,
    /// The error of the last failed attempt (kept after recovery for diagnosis).
    pub last_error: Option<String>,
    /// Newest sample timestamp committed so far.
    pub committed_until_ms: TimestampMs,
}

impl Stats {
    fn snapshot(&self) -> WriterStatus {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStatus {
            channel_dropped: l(&self.channel_dropped),
            overflow_dropped: l(&self.overflow_dropped),
            rejected: l(&self.rejected),
            samples_written: l(&self.samples_written),
            events_written: l(&self.events_written),
            events_dropped: l(&self.events_dropped),
            write_errors: l(&self.write_errors),
            pending: l(&self.pending),
            failing: self.failing.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .map(|g| g.clone())
                .unwrap_or_default(),
            committed_until_ms: self.committed_until_ms.load(Ordering::Relaxed),
        }
    }

    fn record_result<T>(&self, what: &str, r: &Result<T, StorageError>) {
        match r {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("Storage writes succeed again.");
                }
            }
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, step = what, "Storage write failed; retrying.");
                }
                if let Ok(mut g) = self.last_error.lock() {
                    *g = Some(format!("{what}: {e}"));
                }
            }
        }
    }
}

struct SeriesInfo {
    name: String,
    labels_json: String,
    pool: Option<String>,
    kind: MetricKind,
    id: Option<i64>,
}

/// What one maintenance step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaintenanceReport {
    pub compacted_samples: usize,
    pub pruned_rows: usize,
    /// True if more work is waiting (the next tick continues it).
    pub more: bool,
}

/// The synchronous writer core. Every method takes `now` so tests need no clock.
pub struct Writer {
    conn: Conn,
    path: PathBuf,
    retention: Retention,
    opts: WriterOptions,
    keys: HashMap<String, u32>,
    series: Vec<SeriesInfo>,
    pending: Vec<(u32, TimestampMs, f64)>,
    pending_events: Vec<Event>,
    stats: Arc<Stats>,
    next_compact_ms: TimestampMs,
    next_prune_ms: TimestampMs,
    /// Where the current pruning pass resumes: (table index, series id).
    prune_cursor: Option<(usize, i64)>,
    _lock: Option<Arc<crate::db::ProcessLock>>,
    /// Declared last: dropped after the fields above, stopping the checkpoint thread.
    _checkpointer: Option<crate::checkpoint::Checkpointer>,
}

const MAX_PENDING_EVENTS: usize = 10_000;

/// Series looked at per pruning step (see `prune`).
const MAX_SERIES_VISITS_PER_PRUNE: usize = 300;

/// Tables pruned by series and bucket, with their bucket width.
const TIERS: [(&str, i64); 3] = [
    ("raw_chunk", MINUTE_MS),
    ("rollup_1m", MINUTE_MS),
    ("rollup_1h", HOUR_MS),
];

fn series_key(name: &str, labels: &[(String, String)]) -> String {
    let mut k = String::with_capacity(name.len() + 32);
    k.push_str(name);
    for (a, b) in labels {
        k.push('\0');
        k.push_str(a);
        k.push('\0');
        k.push_str(b);
    }
    k
}

impl Writer {
    pub(crate) fn new(
        mut conn: Conn,
        path: PathBuf,
        retention: Retention,
        opts: WriterOptions,
        lock: Option<Arc<crate::db::ProcessLock>>,
    ) -> Writer {
        let checkpointer = match &conn {
            Conn::Owned(_) => {
                let cp = crate::checkpoint::Checkpointer::start(&path);
                if cp.is_some() {
                    // Checkpoints normally happen beside the writer instead of inside its
                    // commits. The writer keeps a high automatic threshold as a backstop:
                    // under a write load that never pauses, a checkpoint from another
                    // connection can never finish before the next write, and only a
                    // checkpoint by the writer itself lets the WAL start over. Most pages
                    // are already copied by then, so the backstop is cheap.
                    let _ = conn.with(|c| c.execute_batch("PRAGMA wal_autocheckpoint = 4000"));
                }
                cp
            }
            Conn::Shared(_) => None,
        };
        Writer {
            conn,
            path,
            retention,
            opts,
            keys: HashMap::new(),
            series: Vec::new(),
            pending: Vec::new(),
            pending_events: Vec::new(),
            stats: Arc::new(Stats::default()),
            next_compact_ms: i64::MIN,
            next_prune_ms: i64::MIN,
            prune_cursor: None,
            _checkpointer: checkpointer,
            _lock: lock,
        }
    }

    /// Current counters.
    pub fn status(&self) -> WriterStatus {
        self.stats.snapshot()
    }

    /// Samples waiting for the next flush.
    pub fn pending_samples(&self) -> usize {
        self.pending.len()
    }

    /// Queues samples taken at `ts` (received at `now`) for the next flush.
    pub fn ingest(&mut self, now: TimestampMs, ts: TimestampMs, samples: Vec<Sample>) {
        for mut s in samples {
            if let Err(why) = admit(ts, s.value, now, &self.retention) {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                if why != Reject::NotFinite {
                    tracing::debug!(metric = %s.name, ts, ?why, "Sample refused.");
                }
                continue;
            }
            if !s.labels.is_sorted() {
                s.labels.sort();
            }
            let key = series_key(&s.name, &s.labels);
            let idx = match self.keys.get(&key) {
                Some(&i) => i,
                None => {
                    let i = self.series.len() as u32;
                    let map: BTreeMap<&str, &str> = s
                        .labels
                        .iter()
                        .map(|(a, b)| (a.as_str(), b.as_str()))
                        .collect();
                    self.series.push(SeriesInfo {
                        name: s.name.into_owned(),
                        labels_json: serde_json::to_string(&map).unwrap_or_default(),
                        pool: map.get("pool").map(|p| (*p).to_owned()),
                        kind: s.kind,
                        id: None,
                    });
                    self.keys.insert(key, i);
                    i
                }
            };
            self.pending.push((idx, ts, s.value));
        }
        if self.pending.len() > self.opts.max_pending_samples {
            let excess = self.pending.len() - self.opts.max_pending_samples;
            self.pending.drain(..excess);
            self.stats
                .overflow_dropped
                .fetch_add(excess as u64, Ordering::Relaxed);
        }
        self.stats
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Queues an event for the next flush.
    pub fn add_event(&mut self, e: Event) {
        if self.pending_events.len() >= MAX_PENDING_EVENTS {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.pending_events.push(e);
    }

    /// Commits everything queued in one transaction. On failure nothing is lost from
    /// memory: the same batch is retried by the next flush.
    pub fn flush(&mut self) -> Result<usize, StorageError> {
        let r = self.flush_inner();
        self.stats.record_result("flush", &r);
        r
    }

    fn flush_inner(&mut self) -> Result<usize, StorageError> {
        if self.pending.is_empty() && self.pending_events.is_empty() {
            return Ok(0);
        }
        let path = self.path.clone();
        let pr = path.as_path();
        let e = |c| move |err| StorageError::sqlite(pr, c, err);
        let series = &self.series;
        let pending = &self.pending;
        let events = &self.pending_events;
        let new_ids = self.conn.with(|conn| -> Result<Vec<(u32, i64)>, StorageError> {
            let tx = conn.transaction().map_err(e("starting flush"))?;
            let mut new_ids: Vec<(u32, i64)> = Vec::new();
            let mut local: HashMap<u32, i64> = HashMap::new();
            {
                let mut ins_series = tx
                    .prepare_cached(
                        "INSERT INTO series (name, labels, pool, kind) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (name, labels) DO UPDATE SET kind = kind RETURNING id",
                    )
                    .map_err(e("preparing series insert"))?;
                let mut ins = tx
                    .prepare_cached("INSERT INTO raw_recent (series_id, ts, value) VALUES (?1, ?2, ?3)")
                    .map_err(e("preparing sample insert"))?;
                for &(idx, ts, v) in pending {
                    let info = &series[idx as usize];
                    let id = match info.id.or_else(|| local.get(&idx).copied()) {
                        Some(id) => id,
                        None => {
                            let id: i64 = ins_series
                                .query_row(
                                    params![info.name, info.labels_json, info.pool, info.kind.as_i64()],
                                    |r| r.get(0),
                                )
                                .map_err(e("inserting series"))?;
                            local.insert(idx, id);
                            new_ids.push((idx, id));
                            id
                        }
                    };
                    ins.execute(params![id, ts, v]).map_err(e("inserting samples"))?;
                }
                let mut ins_ev = tx
                    .prepare_cached(
                        "INSERT INTO events (ts, kind, severity, pool, correlation_id, actor, message, details)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .map_err(e("preparing event insert"))?;
                for ev in events {
                    let details = if ev.details.is_null() { None } else { Some(ev.details.to_string()) };
                    ins_ev
                        .execute(params![
                            ev.ts_ms,
                            ev.kind.as_str(),
                            ev.severity.as_str(),
                            ev.pool,
                            ev.correlation_id,
                            ev.actor,
                            ev.message,
                            details
                        ])
                        .map_err(e("inserting events"))?;
                }
            }
            tx.commit().map_err(e("committing flush"))?;
            Ok(new_ids)
        })?;
        // Only now, after the commit, are new series ids real.
        for (idx, id) in new_ids {
            self.series[idx as usize].id = Some(id);
        }
        let n = self.pending.len();
        if let Some(max_ts) = self.pending.iter().map(|p| p.1).max() {
            self.stats
                .committed_until_ms
                .fetch_max(max_ts, Ordering::Relaxed);
        }
        self.stats
            .samples_written
            .fetch_add(n as u64, Ordering::Relaxed);
        self.stats
            .events_written
            .fetch_add(self.pending_events.len() as u64, Ordering::Relaxed);
        self.pending.clear();
        self.pending_events.clear();
        self.stats.pending.store(0, Ordering::Relaxed);
        Ok(n)
    }

    /// Moves staged samples of completed minutes (before the minute holding `now`) into
    /// chunks, recomputing the minute rollup of every touched minute and the hour rollup of
    /// every touched hour, in one transaction of at most `compact_batch_rows` samples.
    /// Rollups are keyed by (series, bucket), so a bucket can never be counted twice, and
    /// a late sample just causes its buckets to be recomputed.
    pub fn compact(&mut self, now: TimestampMs) -> Result<MaintenanceReport, StorageError> {
        let r = self.compact_inner(now);
        self.stats.record_result("compaction", &r);
        r
    }

    fn compact_inner(&mut self, now: TimestampMs) -> Result<MaintenanceReport, StorageError> {
        let boundary = bucket_start(now, MINUTE_MS);
        let limit = self.opts.compact_batch_rows.max(1) as i64;
        let path = self.path.clone();
        let pr = path.as_path();
        let e = |c| move |err| StorageError::sqlite(pr, c, err);
        self.conn.with(|conn| {
            let tx = conn.transaction().map_err(e("starting compaction"))?;
            let mut groups: BTreeMap<(i64, i64), Vec<(i64, f64)>> = BTreeMap::new();
            let mut max_rowid = i64::MIN;
            let mut n = 0usize;
            {
                let mut sel = tx
                    .prepare_cached(
                        "SELECT rowid, series_id, ts, value FROM raw_recent WHERE ts < ?1 ORDER BY rowid LIMIT ?2",
                    )
                    .map_err(e("reading staged samples"))?;
                let mut rows = sel.query(params![boundary, limit]).map_err(e("reading staged samples"))?;
                while let Some(r) = rows.next().map_err(e("reading staged samples"))? {
                    let (rowid, sid, ts, v): (i64, i64, i64, f64) =
                        (r.get(0).map_err(e("reading staged samples"))?, r.get(1).map_err(e("reading staged samples"))?,
                         r.get(2).map_err(e("reading staged samples"))?, r.get(3).map_err(e("reading staged samples"))?);
                    max_rowid = max_rowid.max(rowid);
                    groups.entry((sid, bucket_start(ts, MINUTE_MS))).or_default().push((ts, v));
                    n += 1;
                }
            }
            if n == 0 {
                return Ok(MaintenanceReport::default());
            }
            let mut hours: BTreeSet<(i64, i64)> = BTreeSet::new();
            {
                let mut get_chunk = tx
                    .prepare_cached("SELECT data FROM raw_chunk WHERE series_id = ?1 AND bucket = ?2")
                    .map_err(e("reading chunk"))?;
                let mut put_chunk = tx
                    .prepare_cached("INSERT OR REPLACE INTO raw_chunk (series_id, bucket, data) VALUES (?1, ?2, ?3)")
                    .map_err(e("writing chunk"))?;
                let mut put_min = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO rollup_1m (series_id, bucket, count, sum, min, max, first, last, increase)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(e("writing minute rollup"))?;
                for ((sid, minute), new) in groups {
                    let existing: Option<Vec<u8>> = get_chunk
                        .query_row(params![sid, minute], |r| r.get(0))
                        .optional()
                        .map_err(e("reading chunk"))?;
                    let mut all: Vec<(i64, f64)> = match existing {
                        Some(blob) => codec::decode(&blob)
                            .map_err(|source| StorageError::Corrupt {
                                path: path.clone(),
                                series_id: sid,
                                bucket_ms: minute,
                                source,
                            })?
                            .into_iter()
                            .map(|(off, v)| (minute + off, v))
                            .collect(),
                        None => Vec::new(),
                    };
                    all.extend(new);
                    let all = rollup::dedupe_last_wins(all);
                    let rel: Vec<(i64, f64)> = all.iter().map(|&(t, v)| (t - minute, v)).collect();
                    put_chunk.execute(params![sid, minute, codec::encode(&rel)]).map_err(e("writing chunk"))?;
                    if let Some(a) = Agg::of_values(all.iter().map(|s| s.1)) {
                        put_min
                            .execute(params![sid, minute, a.count as i64, a.sum, a.min, a.max, a.first, a.last, a.increase])
                            .map_err(e("writing minute rollup"))?;
                    }
                    hours.insert((sid, bucket_start(minute, HOUR_MS)));
                }
                let mut get_mins = tx
                    .prepare_cached(
                        "SELECT count, sum, min, max, first, last, increase FROM rollup_1m
                         WHERE series_id = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket",
                    )
                    .map_err(e("reading minute rollups"))?;
                let mut put_hour = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO rollup_1h (series_id, bucket, count, sum, min, max, first, last, increase)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(e("writing hour rollup"))?;
                for (sid, hour) in hours {
                    let mut acc: Option<Agg> = None;
                    let mut rows = get_mins.query(params![sid, hour, hour + HOUR_MS]).map_err(e("reading minute rollups"))?;
                    while let Some(r) = rows.next().map_err(e("reading minute rollups"))? {
                        let a = crate::reader::agg_from_row(r).map_err(e("reading minute rollups"))?;
                        acc = Some(match acc {
                            Some(p) => p.then(&a),
                            None => a,
                        });
                    }
                    if let Some(a) = acc {
                        put_hour
                            .execute(params![sid, hour, a.count as i64, a.sum, a.min, a.max, a.first, a.last, a.increase])
                            .map_err(e("writing hour rollup"))?;
                    }
                }
            }
            tx.execute("DELETE FROM raw_recent WHERE rowid <= ?1 AND ts < ?2", params![max_rowid, boundary])
                .map_err(e("removing compacted samples"))?;
            tx.commit().map_err(e("committing compaction"))?;
            Ok(MaintenanceReport { compacted_samples: n, pruned_rows: 0, more: n as i64 >= limit })
        })
    }

    /// One bounded step of retention pruning at `now`: deletes at most `prune_batch_rows`
    /// rows in one transaction, resuming where the previous step stopped, then returns
    /// free pages to the filesystem.
    pub fn prune(&mut self, now: TimestampMs) -> Result<MaintenanceReport, StorageError> {
        let r = self.prune_inner(now);
        self.stats.record_result("pruning", &r);
        r
    }

    fn prune_inner(&mut self, now: TimestampMs) -> Result<MaintenanceReport, StorageError> {
        let c = cutoffs(now, &self.retention);
        let budget = self.opts.prune_batch_rows.max(1);
        let vacuum_pages = self.opts.vacuum_pages;
        let (mut table, mut after_id) = self.prune_cursor.unwrap_or((0, i64::MIN));
        let path = self.path.clone();
        let pr = path.as_path();
        let e = |c| move |err| StorageError::sqlite(pr, c, err);
        // Series with samples waiting in memory keep their row (and id) whatever the
        // database holds for them.
        let waiting: BTreeSet<i64> = self
            .pending
            .iter()
            .filter_map(|&(idx, _, _)| self.series[idx as usize].id)
            .collect();
        let mut gone_series: Vec<i64> = Vec::new();
        let (deleted, done) = self.conn.with(|conn| -> Result<(usize, bool), StorageError> {
            let tx = conn.transaction().map_err(e("starting pruning"))?;
            let mut deleted = 0usize;
            let mut done = false;
            // Visiting a series costs two index look-ups even when nothing expires; bound
            // those too, so a step stays short with thousands of series.
            let mut visits = 0usize;
            while deleted < budget && visits < MAX_SERIES_VISITS_PER_PRUNE {
                visits += 1;
                if table == TIERS.len() {
                    let n = tx
                        .execute(
                            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
                            params![c.events, (budget - deleted) as i64],
                        )
                        .map_err(e("pruning events"))?;
                    deleted += n;
                    if deleted < budget {
                        done = true;
                    }
                    break;
                }
                let (name, width) = TIERS[table];
                let cutoff = match table {
                    0 => c.raw,
                    1 => c.minute,
                    _ => c.hour,
                };
                // A bucket goes once all of it is older than the cut-off.
                let below = cutoff.saturating_sub(width - 1);
                let next: Option<i64> = tx
                    .query_row("SELECT min(id) FROM series WHERE id > ?1", [after_id], |r| r.get(0))
                    .map_err(e("listing series"))?;
                let Some(sid) = next else {
                    table += 1;
                    after_id = i64::MIN;
                    continue;
                };
                let sql = format!(
                    "DELETE FROM {name} WHERE series_id = ?1 AND bucket IN
                     (SELECT bucket FROM {name} WHERE series_id = ?1 AND bucket < ?2 ORDER BY bucket LIMIT ?3)"
                );
                let n = tx
                    .prepare_cached(&sql)
                    .and_then(|mut s| s.execute(params![sid, below, (budget - deleted) as i64]))
                    .map_err(e("pruning rollups"))?;
                deleted += n;
                if deleted < budget {
                    // This series is clean in this table; go on with the next one.
                    after_id = sid;
                    // The last tier's pass also removes series that have nothing left in
                    // any tier (a removed pool, a worker-count label that went away), so
                    // the series table does not grow forever. A live series always has
                    // its current hour row, so the first look-up settles it.
                    if table == TIERS.len() - 1 && !waiting.contains(&sid) {
                        let n = tx
                            .prepare_cached(
                                "DELETE FROM series WHERE id = ?1
                                 AND NOT EXISTS (SELECT 1 FROM rollup_1h WHERE series_id = ?1)
                                 AND NOT EXISTS (SELECT 1 FROM rollup_1m WHERE series_id = ?1)
                                 AND NOT EXISTS (SELECT 1 FROM raw_chunk WHERE series_id = ?1)
                                 AND NOT EXISTS (SELECT 1 FROM raw_recent WHERE series_id = ?1)",
                            )
                            .and_then(|mut s| s.execute([sid]))
                            .map_err(e("removing empty series"))?;
                        if n > 0 {
                            gone_series.push(sid);
                            deleted += n;
                        }
                    }
                }
            }
            tx.commit().map_err(e("committing pruning"))?;
            if deleted > 0 {
                conn.execute_batch(&format!("PRAGMA incremental_vacuum({vacuum_pages})"))
                    .map_err(e("incremental vacuum"))?;
            }
            Ok((deleted, done))
        })?;
        self.prune_cursor = if done { None } else { Some((table, after_id)) };
        // A removed series that comes back gets a new row (and id) at its next flush.
        for info in &mut self.series {
            if info.id.is_some_and(|id| gone_series.contains(&id)) {
                info.id = None;
            }
        }
        Ok(MaintenanceReport {
            compacted_samples: 0,
            pruned_rows: deleted,
            more: !done,
        })
    }

    /// Flushes, then runs whatever maintenance is due at `now` (one bounded step each).
    pub fn tick(&mut self, now: TimestampMs) -> Result<MaintenanceReport, StorageError> {
        self.flush()?;
        let mut report = MaintenanceReport::default();
        if now >= self.next_compact_ms {
            let r = self.compact(now)?;
            report.compacted_samples = r.compacted_samples;
            report.more |= r.more;
            self.next_compact_ms = if r.more {
                now
            } else {
                now + crate::model::duration_ms(self.opts.compact_interval)
            };
        }
        if now >= self.next_prune_ms {
            let r = self.prune(now)?;
            report.pruned_rows = r.pruned_rows;
            report.more |= r.more;
            self.next_prune_ms = if r.more {
                now
            } else {
                now + crate::model::duration_ms(self.opts.prune_interval)
            };
        }
        Ok(report)
    }

    /// Runs compaction and pruning at `now` until nothing is left (tests, benchmarks and
    /// shutdown; the running writer uses [`Writer::tick`]).
    pub fn maintain_fully(&mut self, now: TimestampMs) -> Result<(), StorageError> {
        self.flush()?;
        while self.compact(now)?.more {}
        while self.prune(now)?.more {}
        Ok(())
    }

    /// Copies the whole WAL into the main file and truncates it (benchmarks measure the
    /// file after it). Retries while the background checkpoint holds the lock.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        let path = self.path.clone();
        for _ in 0..100 {
            let busy: i64 = self.conn.with(|c| {
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .map_err(|e| StorageError::sqlite(&path, "checkpointing", e))
            })?;
            if busy == 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(StorageError::Busy {
            path,
            waited_ms: 2000,
        })
    }

    /// Turns the core into a channel-fed task and the handle producers use.
    pub fn into_task(self) -> (WriterHandle, WriterTask) {
        let (tx, rx) = std::sync::mpsc::sync_channel(self.opts.channel_capacity.max(1));
        let handle = WriterHandle {
            tx,
            stats: self.stats.clone(),
        };
        (handle, WriterTask { writer: self, rx })
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

enum Msg {
    Samples(TimestampMs, Vec<Sample>),
    Event(Box<Event>),
}

/// What producers hold: cheap to clone, never blocks.
#[derive(Clone)]
pub struct WriterHandle {
    tx: SyncSender<Msg>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// Hands samples taken at `ts_ms` to the writer. Never blocks: if the channel is full
    /// they are dropped and counted (`status().channel_dropped`); returns whether accepted.
    pub fn record(&self, ts_ms: TimestampMs, samples: Vec<Sample>) -> bool {
        let n = samples.len() as u64;
        match self.tx.try_send(Msg::Samples(ts_ms, samples)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.channel_dropped.fetch_add(n, Ordering::Relaxed);
                false
            }
        }
    }

    /// Hands an event to the writer; like [`WriterHandle::record`] it never blocks.
    pub fn event(&self, event: Event) -> bool {
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => true,
            Err(_) => {
                self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The writer's counters and error state.
    pub fn status(&self) -> WriterStatus {
        self.stats.snapshot()
    }
}

/// The writer loop: run it on a thread of its own ([`WriterTask::run`]) or through
/// `Storage::spawn_writer`. It ends when every [`WriterHandle`] is dropped, after
/// draining the channel and committing.
pub struct WriterTask {
    writer: Writer,
    rx: Receiver<Msg>,
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it):
/// the "now" of ingestion and of queries.
pub fn wall_clock_ms() -> TimestampMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl WriterTask {
    /// Blocks until the channel closes. Errors while running are retried and visible in
    /// the status; the result reports only a final flush that could not be committed.
    pub fn run(mut self) -> Result<(), StorageError> {
        let flush_every = self
            .writer
            .opts
            .flush_interval
            .max(Duration::from_millis(10));
        let mut next_flush = Instant::now() + flush_every;
        tracing::debug!(path = %self.writer.path().display(), "Storage writer started.");
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Samples(ts, samples)) => self.writer.ingest(wall_clock_ms(), ts, samples),
                Ok(Msg::Event(e)) => self.writer.add_event(*e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_flush
                || self.writer.pending_samples() >= self.writer.opts.max_batch_samples
            {
                // Errors are recorded in the status and retried on the next tick.
                let _ = self.writer.tick(wall_clock_ms());
                next_flush = Instant::now() + flush_every;
            }
        }
        // Channel closed: everything sent is already received; commit it.
        let r = self.writer.flush();
        let _ = self.writer.compact(wall_clock_ms());
        tracing::debug!(path = %self.writer.path().display(), "Storage writer stopped.");
        r.map(|_| ())
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<WriterTask>();
    is_send::<Connection>();
}
