//! Property: whatever the order of writes (gaps, late samples, duplicates), wherever
//! compaction happens and however often the storage is closed and reopened between
//! writes, the stored chunks and rollups equal a direct computation over the raw samples.
// Helpers outside #[test] functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use fpm_storage::rollup::{bucket_start, dedupe_last_wins, Agg};
use fpm_storage::{Storage, StorageConfig, Tier, WriterOptions};
use proptest::prelude::*;
use support::{gauge, TempDir, HOUR, MIN, T0};

const NAMES: [&str; 2] = ["phpfpm_active_processes", "phpfpm_listen_queue"];

#[derive(Debug, Clone)]
struct Write {
    series: usize,
    /// Seconds after T0 (3 hours of range, so hours and minutes both get several buckets).
    offset_s: i64,
    /// Quarter units: every sum of such values is exact in f64, so "equal" can be exact.
    quarters: i64,
    compact_after: bool,
    restart_after: bool,
}

fn write() -> impl Strategy<Value = Write> {
    (
        0..2usize,
        0..3 * 3600i64,
        -40..400i64,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.03),
    )
        .prop_map(
            |(series, offset_s, quarters, compact_after, restart_after)| Write {
                series,
                offset_s,
                quarters,
                compact_after,
                restart_after,
            },
        )
}

/// The aggregate written out longhand, independent of the crate's merge code.
fn direct_agg(vs: &[f64]) -> Agg {
    let mut increase = 0.0;
    for pair in vs.windows(2) {
        // A drop is a counter reset: the new value is all increase.
        increase += if pair[1] >= pair[0] {
            pair[1] - pair[0]
        } else {
            pair[1].max(0.0)
        };
    }
    Agg {
        count: vs.len() as u64,
        sum: vs.iter().sum(),
        min: vs.iter().copied().fold(f64::INFINITY, f64::min),
        max: vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        first: vs[0],
        last: vs[vs.len() - 1],
        increase,
    }
}

fn run(writes: &[Write], gaps: &[(i64, i64)]) -> Result<(), TestCaseError> {
    let dir = TempDir::new("prop");
    let cfg = StorageConfig {
        path: Some(dir.join("data.db")),
        ..StorageConfig::default()
    };
    let mut storage = Storage::open(&cfg).unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    let mut now = T0;
    // Direct model: every write in order, per series.
    let mut model: Vec<Vec<(i64, f64)>> = vec![Vec::new(), Vec::new()];
    for wr in writes {
        let ts = T0 + wr.offset_s * 1000;
        // Gaps: whole stretches with no samples at all.
        if gaps
            .iter()
            .any(|&(a, b)| wr.offset_s >= a && wr.offset_s < a + b)
        {
            continue;
        }
        let v = wr.quarters as f64 / 4.0;
        // Time moves forward with the newest sample; older ones arrive late.
        now = now.max(ts + 1000);
        w.ingest(now, ts, vec![gauge(NAMES[wr.series], "www", v)]);
        model[wr.series].push((ts, v));
        if wr.compact_after {
            w.flush().unwrap();
            w.compact(now).unwrap();
        }
        if wr.restart_after {
            w.flush().unwrap();
            drop(w);
            drop(storage);
            storage = Storage::open(&cfg).unwrap();
            w = storage.writer(WriterOptions::default()).unwrap();
        }
    }
    w.maintain_fully(now + 2 * MIN).unwrap();
    let reader = storage.reader().unwrap();
    for (s, samples) in model.into_iter().enumerate() {
        let direct = dedupe_last_wins(samples);
        let Some(id) = reader.series_id(NAMES[s], &support::labels("www")).unwrap() else {
            prop_assert!(direct.is_empty());
            continue;
        };
        let stored = reader.raw_samples(id, 0, i64::MAX).unwrap();
        prop_assert_eq!(&stored, &direct, "raw samples of series {}", s);
        for (tier, width) in [(Tier::Minute, MIN), (Tier::Hour, HOUR)] {
            let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for &(t, v) in &direct {
                buckets.entry(bucket_start(t, width)).or_default().push(v);
            }
            let expected: Vec<(i64, Agg)> = buckets
                .into_iter()
                .map(|(b, vs)| (b, direct_agg(&vs)))
                .collect();
            let got = reader.tier_rows(tier, id, 0, i64::MAX).unwrap();
            prop_assert_eq!(&got, &expected, "{:?} of series {}", tier, s);
        }
    }
    // Nothing left behind in staging once every minute is complete.
    prop_assert_eq!(reader.count_rows("raw_recent").unwrap(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rollups_equal_direct_computation(
        writes in prop::collection::vec(write(), 1..400),
        gaps in prop::collection::vec((0..3 * 3600i64, 60..1800i64), 0..3),
    ) {
        run(&writes, &gaps)?;
    }
}

/// The same property on a fixed, hand-written history that is known to contain every
/// case at once (duplicates across a compaction and a restart, a sample late by an hour).
#[test]
fn late_duplicate_across_restart_and_compaction() {
    let mk = |series, offset_s, quarters, compact_after, restart_after| Write {
        series,
        offset_s,
        quarters,
        compact_after,
        restart_after,
    };
    let writes = vec![
        mk(0, 10, 4, false, false),
        mk(0, 70, 8, true, false),
        mk(0, 3700, 12, true, true),
        mk(0, 10, 20, false, false), // late duplicate of an already compacted sample
        mk(0, 65, -4, true, true),   // late sample in a compacted minute, after a restart
        mk(1, 7200, 1, false, false),
    ];
    run(&writes, &[]).unwrap();
}
