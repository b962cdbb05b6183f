//! Storage benchmark: this crate's schema against a naive baseline (one row per sample
//! with the metric name and a JSON label string, indexes on name and time), side by side
//! in one run. Prints insert throughput, bytes on disk per raw sample, the median time of
//! a 24 h query of one series at a 1-minute step, and the file size over simulated days
//! of 8 pools x 40 series at 1 s with retention applied.
//!
//! `cargo bench -p fpm-storage` runs the default (a few minutes on 2 cores); set
//! `FPM_BENCH_SERIES_PER_POOL=40` for the full-size multi-day simulation (slow) and
//! `FPM_BENCH_DAYS` to change its length (default 9, so the 7-day minute tier is seen
//! full and flat).

// A benchmark's purpose is to print its results.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use fpm_storage::{Sample, Storage, StorageConfig, Writer, WriterOptions};
use rusqlite::{params, Connection};

const POOLS: usize = 8;
const SERIES_PER_POOL: usize = 40;
const DAY_MS: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;

/// xorshift64*: deterministic data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What php-fpm metrics look like: small integer gauges (process counts, queue), counters
/// (accepted connections), large integers (memory bytes) and fractional gauges (CPU %).
#[derive(Clone)]
struct Series {
    name: &'static str,
    pool: String,
    kind: u8,
    value: f64,
}

const NAMES: [&str; 40] = [
    "m00", "m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09", "m10", "m11", "m12",
    "m13", "m14", "m15", "m16", "m17", "m18", "m19", "m20", "m21", "m22", "m23", "m24", "m25",
    "m26", "m27", "m28", "m29", "m30", "m31", "m32", "m33", "m34", "m35", "m36", "m37", "m38",
    "m39",
];

fn make_series(per_pool: usize) -> Vec<Series> {
    let mut out = Vec::new();
    for p in 0..POOLS {
        for (m, name) in NAMES.iter().enumerate().take(per_pool) {
            // The kind follows the overall index, so a scaled-down run keeps the same mix.
            let kind = ((p * per_pool + m) % 10) as u8;
            out.push(Series {
                name,
                pool: format!("pool{p}"),
                kind,
                value: 0.0,
            });
        }
    }
    out
}

impl Series {
    fn step(&mut self, rng: &mut Rng) -> Sample {
        let labels = vec![("pool".to_owned(), self.pool.clone())];
        match self.kind {
            // Small integer gauges: 30 %.
            0..=2 => {
                self.value = (self.value + rng.below(5) as f64 - 2.0).clamp(0.0, 64.0);
                Sample::gauge(self.name, labels, self.value)
            }
            // Counters: 30 %.
            3..=5 => {
                self.value += rng.below(40) as f64;
                Sample::counter(self.name, labels, self.value)
            }
            // Memory in bytes, moving by pages: 20 %.
            6 | 7 => {
                if self.value == 0.0 {
                    self.value = 60_000_000.0;
                }
                self.value += (rng.below(64) as f64 - 32.0) * 4096.0;
                Sample::gauge(self.name, labels, self.value)
            }
            // CPU percent with two decimals: 20 %.
            _ => Sample::gauge(self.name, labels, rng.below(10_000) as f64 / 100.0),
        }
    }
}

fn tmp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("fpm-storage-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn file_size(path: &Path) -> u64 {
    let mut s = PathBuf::from(path).into_os_string();
    s.push("-wal");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(&s).map(|m| m.len()).unwrap_or(0)
}

/// Row counts per table and the raw chunk payload, read on a connection of our own.
fn table_rows(path: &Path) -> String {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let n = |t: &str| {
        c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    format!(
        "chunks {} (raw samples {}), staged {}, 1m {}, 1h {}",
        n("raw_chunk"),
        raw_samples_in_chunks(&c),
        n("raw_recent"),
        n("rollup_1m"),
        n("rollup_1h")
    )
}

fn raw_samples_in_chunks(c: &Connection) -> i64 {
    let mut st = c.prepare("SELECT data FROM raw_chunk").unwrap();
    let blobs = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    blobs
        .map(|b| fpm_storage::codec::decode(&b.unwrap()).unwrap().len() as i64)
        .sum()
}

fn chunk_payload(path: &Path) -> i64 {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT sum(length(data)) FROM raw_chunk", [], |r| r.get(0))
        .unwrap()
}

fn wal_size(path: &Path) -> u64 {
    let mut s = PathBuf::from(path).into_os_string();
    s.push("-wal");
    std::fs::metadata(&s).map(|m| m.len()).unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

// === The naive baseline ===

struct Naive {
    conn: Connection,
    path: PathBuf,
}

impl Naive {
    fn open(path: &Path) -> Naive {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE samples (id INTEGER PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL,
                                   ts INTEGER NOT NULL, value REAL NOT NULL);
             CREATE INDEX samples_name ON samples (name);
             CREATE INDEX samples_ts ON samples (ts);",
        )
        .unwrap();
        Naive {
            conn,
            path: path.to_owned(),
        }
    }

    fn insert(&mut self, batch: &[(i64, Vec<Sample>)]) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO samples (name, labels, ts, value) VALUES (?1, ?2, ?3, ?4)",
                )
                .unwrap();
            for (ts, samples) in batch {
                for s in samples {
                    let labels: std::collections::BTreeMap<&str, &str> = s
                        .labels
                        .iter()
                        .map(|(a, b)| (a.as_str(), b.as_str()))
                        .collect();
                    st.execute(params![
                        s.name.as_ref(),
                        serde_json::to_string(&labels).unwrap(),
                        ts,
                        s.value
                    ])
                    .unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }

    fn query_minutes(&self, name: &str, pool: &str, from: i64, to: i64) -> usize {
        let labels = format!("{{\"pool\":\"{pool}\"}}");
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT ts / 60000 * 60000 AS b, avg(value), min(value), max(value), count(*) FROM samples
                 WHERE name = ?1 AND labels = ?2 AND ts >= ?3 AND ts < ?4 GROUP BY b ORDER BY b",
            )
            .unwrap();
        let rows = st
            .query_map(params![name, labels, from, to], |r| r.get::<_, f64>(1))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.len()
    }

    fn checkpoint(&self) {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
}

// === Our schema through the real writer (channel and clock aside) ===

fn open_ours(path: &Path) -> (Storage, Writer) {
    let storage = Storage::open(&StorageConfig {
        path: Some(path.to_owned()),
        ..Default::default()
    })
    .unwrap();
    let w = storage.writer(WriterOptions::default()).unwrap();
    (storage, w)
}

/// Generates `seconds` of samples at 1 s for `series`, in flush batches of `batch_s`
/// seconds, starting at `start`. Timestamps jitter by a few ms, as a real collector's do.
fn generate(
    series: &mut [Series],
    rng: &mut Rng,
    start: i64,
    seconds: i64,
    batch_s: i64,
) -> Vec<Vec<(i64, Vec<Sample>)>> {
    let mut batches = Vec::new();
    let mut cur = Vec::new();
    for s in 0..seconds {
        let ts = start + s * 1000 + rng.below(7) as i64;
        cur.push((
            ts,
            series.iter_mut().map(|x| x.step(rng)).collect::<Vec<_>>(),
        ));
        if cur.len() as i64 == batch_s {
            batches.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// Feeds batches through our writer: ingest, one flush per batch, compaction of the
/// completed minutes once per simulated minute (as the running writer would).
fn feed_ours(w: &mut Writer, batches: Vec<Vec<(i64, Vec<Sample>)>>, longest: &mut Longest) {
    let mut last_compact: Option<i64> = None;
    for batch in batches {
        let mut now = 0;
        for (ts, samples) in batch {
            now = ts;
            w.ingest(ts, ts, samples);
        }
        w.flush().unwrap();
        if last_compact.is_none_or(|l| now - l >= 60_000) {
            loop {
                let t = Instant::now();
                let more = w.compact(now).unwrap().more;
                longest.compact = longest.compact.max(t.elapsed());
                if !more {
                    break;
                }
            }
            last_compact = Some(now);
        }
    }
}

/// The longest single maintenance step seen: the writer flushes between steps, so this
/// is the longest a flush can be delayed by maintenance.
#[derive(Default)]
struct Longest {
    compact: std::time::Duration,
    prune: std::time::Duration,
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not need.
    let per_pool: usize = std::env::var("FPM_BENCH_SERIES_PER_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let days: i64 = std::env::var("FPM_BENCH_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let dir = tmp_dir();
    println!(
        "fpm-storage benchmark (release build, SQLite {})",
        rusqlite::version()
    );
    println!();

    // --- 1 + 2: insert throughput and bytes per raw sample -----------------------------
    let seconds = 1800; // 30 minutes of 8 pools x 40 series at 1 s: 576 000 samples
    let batch_s = 10; // one transaction per 3 200 samples
    let mut ours_rates = Vec::new();
    let mut naive_rates = Vec::new();
    let mut ours_bytes = 0.0;
    let mut ours_payload = 0.0;
    let mut naive_bytes = 0.0;
    let mut n_samples = 0usize;
    for rep in 0..3 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + rep);
        let mut series = make_series(SERIES_PER_POOL);
        let batches = generate(&mut series, &mut rng, T0, seconds, batch_s);
        n_samples = batches.iter().flatten().map(|b| b.1.len()).sum();
        let naive_batches = batches.clone();

        let p = dir.join(format!("ours-insert-{rep}.db"));
        let (_s, mut w) = open_ours(&p);
        let mut longest = Longest::default();
        let t = Instant::now();
        feed_ours(&mut w, batches, &mut longest);
        // The last minute too, so the file holds chunks and rollups for everything.
        while w.compact(T0 + seconds * 1000 + 60_000).unwrap().more {}
        let el = t.elapsed();
        ours_rates.push(n_samples as f64 / el.as_secs_f64());
        w.checkpoint().unwrap();
        ours_bytes = file_size(&p) as f64 / n_samples as f64;
        ours_payload = chunk_payload(&p) as f64 / n_samples as f64;

        let p = dir.join(format!("naive-insert-{rep}.db"));
        let mut naive = Naive::open(&p);
        let t = Instant::now();
        for b in &naive_batches {
            naive.insert(b);
        }
        let el = t.elapsed();
        naive_rates.push(n_samples as f64 / el.as_secs_f64());
        naive.checkpoint();
        naive_bytes = file_size(&naive.path) as f64 / n_samples as f64;
    }
    let (o, n) = (median(ours_rates), median(naive_rates));
    println!("insert: {n_samples} samples (8 pools x 40 series x 30 min at 1 s), transactions of {} samples, median of 3", batch_s as usize * POOLS * SERIES_PER_POOL);
    println!("  {:<34} {:>14} {:>14} {:>8}", "", "ours", "naive", "ratio");
    println!(
        "  {:<34} {:>14.0} {:>14.0} {:>7.2}x",
        "samples/s (incl. compaction)",
        o,
        n,
        o / n
    );
    println!(
        "  {:<34} {:>14.2} {:>14.2} {:>7.2}x",
        "bytes on disk per raw sample",
        ours_bytes,
        naive_bytes,
        naive_bytes / ours_bytes
    );
    println!("  (both: whole file after a checkpoint; ours includes the 1-minute and 1-hour rollups and the series table;");
    println!("   the encoded raw chunks alone take {ours_payload:.2} bytes per sample)");
    println!();

    // --- 3: 24 h query of one series at a 1-minute step ---------------------------------
    let mut rng = Rng(42);
    // One metric in 8 pools (so the naive name index matches 8 series) for 24 h at 1 s.
    let mut series: Vec<Series> = (0..POOLS)
        .map(|p| Series {
            name: "phpfpm_active_processes",
            pool: format!("pool{p}"),
            kind: 0,
            value: 0.0,
        })
        .collect();
    let batches = generate(&mut series, &mut rng, T0, 86_400, 60);
    let qn: usize = batches.iter().flatten().map(|b| b.1.len()).sum();
    let naive_batches = batches.clone();
    let p = dir.join("ours-query.db");
    let (storage, mut w) = open_ours(&p);
    let mut longest = Longest::default();
    feed_ours(&mut w, batches, &mut longest);
    w.maintain_fully(T0 + DAY_MS + 60_000).unwrap();
    let reader = storage.reader().unwrap();
    let mut naive = Naive::open(&dir.join("naive-query.db"));
    for b in &naive_batches {
        naive.insert(b);
    }
    naive.checkpoint();
    let now = T0 + DAY_MS + 60_000;
    let (from, to) = (T0, T0 + DAY_MS);
    let mut ours_q = Vec::new();
    let mut naive_q = Vec::new();
    let mut points = (0, 0);
    for _ in 0..21 {
        let t = Instant::now();
        let r = reader
            .query_series("pool3", "phpfpm_active_processes", from, to, 60_000, now)
            .unwrap();
        ours_q.push(t.elapsed().as_secs_f64() * 1000.0);
        points.0 = r.series[0].points.len();
        let t = Instant::now();
        points.1 = naive.query_minutes("phpfpm_active_processes", "pool3", from, to);
        naive_q.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (o, n) = (median(ours_q), median(naive_q));
    println!("query: 24 h of one series at a 1-minute step ({qn} samples stored: 8 series x 24 h at 1 s), median of 21");
    println!("  {:<34} {:>14} {:>14} {:>8}", "", "ours", "naive", "ratio");
    println!(
        "  {:<34} {:>14.3} {:>14.3} {:>7.1}x",
        "ms per query",
        o,
        n,
        n / o
    );
    println!(
        "  {:<34} {:>14} {:>14}",
        "points returned", points.0, points.1
    );
    println!();
    drop(reader);
    drop(w);
    drop(storage);

    // --- 4: size over simulated days with retention --------------------------------------
    println!("size: {days} simulated days of {POOLS} pools x {per_pool} series at 1 s, default retention (raw 24h, 1m 7d, 1h 365d)");
    let p = dir.join("ours-days.db");
    let (_storage, mut w) = open_ours(&p);
    let mut longest = Longest::default();
    let mut rng = Rng(7);
    let mut series = make_series(per_pool);
    let t = Instant::now();
    let mut sizes = Vec::new();
    for day in 0..days {
        // One simulated hour at a time keeps memory small.
        for hour in 0..24 {
            let start = T0 + day * DAY_MS + hour * 3_600_000;
            let batches = generate(&mut series, &mut rng, start, 3600, 10);
            feed_ours(&mut w, batches, &mut longest);
            // Retention as the running writer does it: bounded steps until done.
            let now = start + 3_600_000;
            loop {
                let t = Instant::now();
                let more = w.prune(now).unwrap().more;
                longest.prune = longest.prune.max(t.elapsed());
                if !more {
                    break;
                }
            }
        }
        // The WAL as the running writer leaves it (bounded by the checkpoints), then the
        // file after a full checkpoint.
        let wal = wal_size(&p);
        w.checkpoint().unwrap();
        let size = file_size(&p);
        sizes.push(size);
        let rows = table_rows(&p);
        println!(
            "  end of day {:>2}: {:>8.1} MiB (WAL before checkpoint {:.1} MiB)   rows: {}   [{:.0} s elapsed]",
            day + 1,
            size as f64 / 1_048_576.0,
            wal as f64 / 1_048_576.0,
            rows,
            t.elapsed().as_secs_f64()
        );
    }
    if per_pool != SERIES_PER_POOL {
        let scale = SERIES_PER_POOL as f64 / per_pool as f64;
        println!(
            "  estimate for 8 pools x 40 series (size scales with the series count): day 7 {:.0} MiB, last day {:.0} MiB",
            sizes.get(6).copied().unwrap_or(0) as f64 * scale / 1_048_576.0,
            sizes.last().copied().unwrap_or(0) as f64 * scale / 1_048_576.0
        );
    }
    if sizes.len() >= 9 {
        let d7 = sizes[6] as f64;
        let last = *sizes.last().unwrap() as f64;
        println!(
            "  growth from day 7 to day {days}: {:+.1} %",
            (last - d7) / d7 * 100.0
        );
    }
    println!(
        "  longest single maintenance step (a flush waits at most this long): compaction {:.1} ms, pruning {:.1} ms",
        longest.compact.as_secs_f64() * 1000.0,
        longest.prune.as_secs_f64() * 1000.0
    );
    if std::env::var_os("FPM_BENCH_KEEP").is_some() {
        println!("  (files kept in {})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
