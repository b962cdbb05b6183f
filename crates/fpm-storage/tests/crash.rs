//! `kill -9` in the middle of heavy writes, 20 times on the same file: every time the
//! database opens, `PRAGMA integrity_check` is `ok`, each committed batch is complete,
//! batches are contiguous, at most the last unflushed 1.5 s are missing, and the data of
//! earlier runs is untouched.
// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
// Helpers outside #[test] functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fpm_storage::{Storage, StorageConfig};
use support::TempDir;

const SERIES_PER_RUN: usize = 320;

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Per run label: for each series, its stored (timestamp, value) samples.
fn stored_run(reader: &fpm_storage::Reader, run: usize) -> Vec<Vec<(i64, f64)>> {
    let mut out = Vec::new();
    for p in 0..8 {
        for m in 0..40 {
            let labels = vec![
                ("pool".to_owned(), format!("pool{p}")),
                ("run".to_owned(), run.to_string()),
            ];
            let samples = match reader
                .series_id(&format!("stress_metric_{m}"), &labels)
                .unwrap()
            {
                Some(id) => reader.raw_samples(id, 0, i64::MAX).unwrap(),
                None => Vec::new(),
            };
            out.push(samples);
        }
    }
    out
}

#[test]
fn kill_9_during_heavy_writes_twenty_times() {
    let dir = TempDir::new("crash");
    let path = dir.join("data.db");
    let cfg = StorageConfig {
        path: Some(path.clone()),
        ..StorageConfig::default()
    };
    let mut fingerprints: BTreeMap<usize, Vec<Vec<(i64, f64)>>> = BTreeMap::new();
    // Kill after 1.1 .. 2.7 s of writing, a different moment each run.
    for run in 0..20usize {
        let mut child = support::stress::spawn("stress_child", &path, &run.to_string(), 30);
        std::thread::sleep(Duration::from_millis(1100 + (run as u64 * 397) % 1600));
        let killed_at = wall_ms();
        child.kill().unwrap(); // SIGKILL, to our own child by pid
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "run {run}: the child should have died from the signal"
        );

        let t = Instant::now();
        let storage =
            Storage::open(&cfg).unwrap_or_else(|e| panic!("run {run}: reopening failed: {e}"));
        let reader = storage.reader().unwrap();
        assert_eq!(reader.integrity_check().unwrap(), "ok", "run {run}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "run {run}: reopening took {:?}",
            t.elapsed()
        );

        let series = stored_run(&reader, run);
        let counts: Vec<usize> = series.iter().map(Vec::len).collect();
        assert_eq!(counts.len(), SERIES_PER_RUN);
        // Transactions hold whole batches: every series has the same number of samples.
        assert!(
            counts.iter().all(|&c| c == counts[0]),
            "run {run}: a batch was torn: {counts:?}"
        );
        let batch_ts: Vec<i64> = series[0].iter().map(|s| s.0).collect();
        assert!(
            batch_ts.len() >= 2,
            "run {run}: almost nothing stored ({} batches)",
            batch_ts.len()
        );
        // Batches are stored without holes (simulated seconds, advanced for
        // every batch handed over, accepted or not: a dropped one is a hole).
        assert!(
            batch_ts.windows(2).all(|w| w[1] - w[0] == 1000),
            "run {run}: gap in stored batches"
        );
        // Values are the wall time each batch was handed over: the newest stored one tells
        // how much real time was lost.
        let newest = series
            .iter()
            .flat_map(|s| s.iter().map(|x| x.1 as i64))
            .max()
            .unwrap();
        let lost_ms = killed_at - newest;
        // The writer commits every 500 ms; a commit (fsync) on a busy
        // 2-core machine can take as long again, so up to 1.5 s of the
        // newest samples may be in flight when the process dies.
        assert!(
            lost_ms <= 1500,
            "run {run}: {lost_ms} ms of samples lost (limit 1500)"
        );
        eprintln!(
            "run {run}: {} batches stored, last {lost_ms} ms lost",
            batch_ts.len()
        );
        // Earlier runs are untouched by later crashes.
        for (r, before) in &fingerprints {
            assert_eq!(
                &stored_run(&reader, *r),
                before,
                "run {run}: data of run {r} changed"
            );
        }
        fingerprints.insert(run, series);
        drop(reader);
        drop(storage);
    }
}

/// The writer under load in a child process that the test above kills; not a
/// check by itself (started by that test with its arguments).
#[test]
#[ignore = "the child process of kill_9_during_heavy_writes_twenty_times"]
fn stress_child() {
    support::stress::child_main();
}
