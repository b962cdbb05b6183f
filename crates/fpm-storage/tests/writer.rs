//! The writer and reader end to end on real SQLite: the task loop, the channel's drop
//! counter, counter rates across resets, tier choice, and retention with time passed in.
// Helpers outside #[test] functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use fpm_storage::{
    Event, EventFilter, EventKind, QueryError, Retention, Severity, Storage, StorageConfig, Tier,
    WriterOptions,
};
use support::{counter, gauge, TempDir, HOUR, MIN, T0};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn write_and_read_back(cfg: StorageConfig) {
    let storage = Storage::open(&cfg).unwrap();
    let reader = storage.reader().unwrap();
    let opts = WriterOptions {
        flush_interval: Duration::from_millis(20),
        ..WriterOptions::default()
    };
    let (handle, join) = storage.spawn_writer(opts).unwrap();
    let now = now_ms();
    for i in 0..50 {
        assert!(handle.record(
            now - 5000 + i * 100,
            vec![gauge("phpfpm_active_processes", "www", i as f64)]
        ));
    }
    let mut ev = Event::new(
        now,
        EventKind::ApiAction,
        Severity::Info,
        "scaled www to 8 workers",
    );
    ev.pool = Some("www".into());
    ev.actor = Some("ops-key".into());
    ev.correlation_id = Some("req-1".into());
    ev.details = serde_json::json!({"workers": 8, "reason": "manual"});
    assert!(handle.event(ev.clone()));
    // A reader on its own connection sees committed data while the writer runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match reader.query_series(
            "www",
            "phpfpm_active_processes",
            now - 10_000,
            now + 1000,
            1000,
            now,
        ) {
            Ok(r) if r.series[0].points.iter().map(|p| p.count).sum::<u64>() == 50 => {
                assert_eq!(r.tier, Tier::Raw);
                break;
            }
            // Not committed yet.
            Ok(_) | Err(QueryError::NotFound { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "samples not visible in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = handle.status();
    drop(handle);
    join.await.unwrap().unwrap();
    assert_eq!(status.channel_dropped, 0);
    let evs = reader.events(&EventFilter::default()).unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event, ev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_database_round_trip() {
    let dir = TempDir::new("rt");
    write_and_read_back(StorageConfig {
        path: Some(dir.join("data.db")),
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_database_is_one_shared_database() {
    write_and_read_back(StorageConfig::default()).await;
}

#[test]
fn a_full_channel_drops_and_counts_instead_of_blocking() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let w = storage
        .writer(WriterOptions {
            channel_capacity: 2,
            ..Default::default()
        })
        .unwrap();
    let (handle, task) = w.into_task();
    let t = std::time::Instant::now();
    let accepted: Vec<bool> = (0..5)
        .map(|i| handle.record(i, vec![gauge("m", "www", 1.0), gauge("n", "www", 1.0)]))
        .collect();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "record must never wait"
    );
    assert_eq!(accepted, vec![true, true, false, false, false]);
    assert_eq!(handle.status().channel_dropped, 6);
    assert!(!handle.event(Event::new(0, EventKind::Reload, Severity::Info, "x")));
    assert_eq!(handle.status().events_dropped, 1);
    drop(handle);
    task.run().unwrap();
}

#[test]
fn rejected_samples_are_counted() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    let now = T0;
    w.ingest(
        now,
        now,
        vec![
            gauge("m", "www", f64::NAN),
            gauge("m", "www", f64::INFINITY),
        ],
    );
    w.ingest(now, now - 25 * HOUR, vec![gauge("m", "www", 1.0)]);
    w.ingest(now, now + HOUR, vec![gauge("m", "www", 1.0)]);
    w.ingest(now, now, vec![gauge("m", "www", 1.0)]);
    w.flush().unwrap();
    let s = w.status();
    assert_eq!((s.rejected, s.samples_written), (4, 1));
}

#[test]
fn counter_rates_never_go_negative_across_reloads_in_any_tier() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let reader = storage.reader().unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    // Accepted connections every 5 s for 3 hours, +7 each time; php-fpm reloads (counter
    // back to 0) every 17 minutes.
    let mut v = 0.0;
    let mut expected_total = 0.0;
    let start = T0;
    let end = T0 + 3 * HOUR;
    let mut t = start;
    while t < end {
        if (t - start) % (17 * MIN) == 0 && t != start {
            v = 0.0;
            expected_total += 0.0;
        } else if t != start {
            v += 7.0;
            expected_total += 7.0;
        }
        w.ingest(t, t, vec![counter("phpfpm_accepted_connections", "www", v)]);
        t += 5000;
        if (t - start) % MIN == 0 {
            w.tick(t).unwrap();
        }
    }
    w.maintain_fully(end + MIN).unwrap();
    let now = end + MIN;
    for (step, tier) in [(5000, Tier::Raw), (MIN, Tier::Minute), (HOUR, Tier::Hour)] {
        let r = reader
            .query_series("www", "phpfpm_accepted_connections", start, end, step, now)
            .unwrap();
        assert_eq!(r.tier, tier);
        let pts = &r.series[0].points;
        assert!(
            pts.iter().all(|p| p.value >= 0.0),
            "negative rate in {tier:?}"
        );
        let total: f64 = pts.iter().filter_map(|p| p.increase).sum();
        assert_eq!(total, expected_total, "total increase in {tier:?}");
    }
    // A 5 s step should show a steady 7/5 per second rate except at reload points.
    let r = reader
        .query_series(
            "www",
            "phpfpm_accepted_connections",
            start + MIN,
            start + 2 * MIN,
            5000,
            now,
        )
        .unwrap();
    assert!(r.series[0]
        .points
        .iter()
        .skip(1)
        .all(|p| (p.value - 1.4).abs() < 1e-9));
}

#[test]
fn query_limits_and_unknown_metrics_are_errors() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let reader = storage.reader().unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    w.ingest(T0, T0, vec![gauge("phpfpm_idle_processes", "www", 3.0)]);
    w.flush().unwrap();
    let e = reader
        .query_series(
            "www",
            "phpfpm_idle_processes",
            T0 - 7 * 24 * HOUR,
            T0,
            1000,
            T0,
        )
        .unwrap_err();
    assert!(matches!(e, QueryError::Range(_)), "{e}");
    let e = reader
        .query_series("www", "nope", T0 - HOUR, T0, 1000, T0)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("stored metrics: phpfpm_idle_processes"),
        "{e}"
    );
    let e = reader
        .query_series("other", "nope", T0 - HOUR, T0, 1000, T0)
        .unwrap_err();
    assert!(
        e.to_string().contains("the pool has no stored metrics"),
        "{e}"
    );
}

#[test]
fn the_newest_minute_shows_in_rollup_tiers_before_it_is_compacted() {
    let storage = Storage::open(&StorageConfig::default()).unwrap();
    let reader = storage.reader().unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    // Three full minutes, compacted; then 20 s of the current minute, only staged.
    let start = T0;
    for i in 0..200 {
        let t = start + i * 1000;
        w.ingest(
            t,
            t,
            vec![gauge(
                "phpfpm_active_processes",
                "www",
                1.0 + (i / 60) as f64,
            )],
        );
        if i == 180 {
            w.flush().unwrap();
            w.compact(t).unwrap();
        }
    }
    w.flush().unwrap();
    let now = start + 200_000;
    for tier_step in [MIN, HOUR] {
        let r = reader
            .query_series("www", "phpfpm_active_processes", start, now, tier_step, now)
            .unwrap();
        let count: u64 = r.series[0].points.iter().map(|p| p.count).sum();
        assert_eq!(
            count, 200,
            "step {tier_step}: every sample counted exactly once"
        );
    }
    let r = reader
        .query_series("www", "phpfpm_active_processes", start, now, MIN, now)
        .unwrap();
    let last = r.series[0].points.last().unwrap();
    assert_eq!(
        (last.t_ms, last.count, last.value),
        (start + 3 * MIN, 20, 4.0)
    );
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Retention with time passed in: every tier loses its old rows on schedule, events too,
/// and once all tiers are at their retention the file stops growing.
#[test]
fn retention_prunes_each_tier_and_the_file_stops_growing() {
    let dir = TempDir::new("retention");
    let path = dir.join("data.db");
    let retention = Retention {
        raw: Duration::from_secs(3600),
        minute: Duration::from_secs(3 * 3600),
        hour: Duration::from_secs(6 * 3600),
        events: Duration::from_secs(2 * 3600),
    };
    let storage = Storage::open(&StorageConfig {
        path: Some(path.clone()),
        retention,
    })
    .unwrap();
    let reader = storage.reader().unwrap();
    let opts = WriterOptions {
        prune_batch_rows: 500,
        ..WriterOptions::default()
    };
    let mut w = storage.writer(opts).unwrap();
    let pools = ["a", "b", "c", "d"];
    let names: [&'static str; 5] = ["m0", "m1", "m2", "m3", "m4"];
    let mut sizes = Vec::new();
    let mut t = T0;
    let hours = 14;
    for hour in 0..hours {
        for step in 0..360 {
            // Every 10 s, 20 series; an event every 10 minutes.
            let batch = pools
                .iter()
                .flat_map(|p| {
                    names
                        .iter()
                        .map(move |n| gauge(n, p, ((step * 7 + hour) % 23) as f64 + 0.5))
                })
                .collect();
            w.ingest(t, t, batch);
            if step % 60 == 0 {
                w.add_event(Event::new(
                    t,
                    EventKind::ScaleDecision,
                    Severity::Info,
                    "kept size",
                ));
            }
            t += 10_000;
            if step % 6 == 0 {
                // The running writer ticks every 0.5 s; once a minute is enough here.
                w.tick(t).unwrap();
            }
        }
        w.checkpoint().unwrap();
        sizes.push(file_len(&path));
        // After each simulated hour: nothing older than each tier's cut-off remains,
        // allowing for the bucket that straddles it.
        let sid = reader
            .series_id("m0", &support::labels("a"))
            .unwrap()
            .unwrap();
        let oldest_raw = reader
            .raw_samples(sid, 0, i64::MAX)
            .unwrap()
            .first()
            .map(|s| s.0)
            .unwrap();
        let oldest_min = reader.tier_rows(Tier::Minute, sid, 0, i64::MAX).unwrap()[0].0;
        let oldest_hour = reader.tier_rows(Tier::Hour, sid, 0, i64::MAX).unwrap()[0].0;
        assert!(
            oldest_raw >= t - HOUR - 2 * MIN,
            "hour {hour}: raw sample at {} is too old",
            t - oldest_raw
        );
        assert!(
            oldest_min >= t - 3 * HOUR - 2 * MIN,
            "hour {hour}: minute row too old"
        );
        assert!(
            oldest_hour >= t - 6 * HOUR - HOUR - MIN,
            "hour {hour}: hour row too old"
        );
        if hour >= 2 {
            assert!(
                oldest_raw <= t - HOUR + 2 * MIN,
                "hour {hour}: raw pruned too early"
            );
        }
        let evs = reader.events(&EventFilter::default()).unwrap();
        assert!(
            evs.iter().all(|e| e.event.ts_ms >= t - 2 * HOUR - 2 * MIN),
            "hour {hour}: old event kept"
        );
    }
    // After the longest retention (6 h) plus a margin the file must not grow any more:
    // freed pages are reused or returned by incremental vacuum.
    eprintln!("file size after each simulated hour: {sizes:?}");
    let plateau = &sizes[8..];
    let first = plateau[0];
    assert!(
        plateau.iter().all(|&s| s <= first + first / 10),
        "file keeps growing after retention applies: {sizes:?}"
    );
    assert!(
        sizes[7] > sizes[0],
        "the file grew while filling up: {sizes:?}"
    );
    assert_eq!(reader.integrity_check().unwrap(), "ok");
}

/// A series whose samples all aged out of every tier loses its row; a live series keeps
/// its row and id throughout; a series that comes back later gets a new row and is read
/// back normally.
#[test]
fn series_with_nothing_left_in_any_tier_are_removed() {
    let dir = TempDir::new("series-gc");
    let retention = Retention {
        raw: Duration::from_secs(3600),
        minute: Duration::from_secs(2 * 3600),
        hour: Duration::from_secs(3 * 3600),
        events: Duration::from_secs(3600),
    };
    let storage = Storage::open(&StorageConfig {
        path: Some(dir.join("data.db")),
        retention,
    })
    .unwrap();
    let reader = storage.reader().unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    let mut t = T0;
    // Ten minutes of a pool that is then removed, beside one that stays.
    for _ in 0..60 {
        w.ingest(t, t, vec![gauge("m", "gone", 1.0), gauge("m", "live", 2.0)]);
        t += 10_000;
    }
    w.maintain_fully(t).unwrap();
    let live_id = reader.series_id("m", &support::labels("live")).unwrap();
    assert!(live_id.is_some());
    assert!(reader
        .series_id("m", &support::labels("gone"))
        .unwrap()
        .is_some());
    assert_eq!(reader.count_rows("series").unwrap(), 2);
    // Five simulated hours of the live pool only: past every tier of the removed one.
    for step in 0..(5 * 360) {
        w.ingest(t, t, vec![gauge("m", "live", 2.0)]);
        t += 10_000;
        if step % 6 == 0 {
            w.tick(t).unwrap();
        }
    }
    w.maintain_fully(t).unwrap();
    assert_eq!(
        reader.series_id("m", &support::labels("gone")).unwrap(),
        None,
        "a series with no rows left in any tier keeps its row"
    );
    assert_eq!(reader.count_rows("series").unwrap(), 1);
    assert_eq!(
        reader.series_id("m", &support::labels("live")).unwrap(),
        live_id,
        "a live series changed id"
    );
    // The removed pool comes back: a new row, and its samples are there.
    let back_at = t;
    for _ in 0..12 {
        w.ingest(t, t, vec![gauge("m", "gone", 3.0), gauge("m", "live", 2.0)]);
        t += 10_000;
    }
    w.maintain_fully(t).unwrap();
    let back = reader
        .series_id("m", &support::labels("gone"))
        .unwrap()
        .unwrap();
    let samples = reader.raw_samples(back, back_at, t).unwrap();
    assert_eq!(samples.len(), 12, "{samples:?}");
    assert_eq!(
        reader.series_id("m", &support::labels("live")).unwrap(),
        live_id
    );
    assert_eq!(reader.integrity_check().unwrap(), "ok");
}

/// WAL: a reader in the middle of a long read transaction does not block the writer's
/// flushes, compactions or pruning, and keeps seeing its own snapshot.
#[test]
fn a_long_read_transaction_never_blocks_the_writer() {
    let dir = TempDir::new("readers");
    let path = dir.join("data.db");
    let storage = Storage::open(&StorageConfig {
        path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    w.ingest(T0, T0, vec![gauge("m", "www", 1.0)]);
    w.flush().unwrap();
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM raw_recent", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 1);
    let t = std::time::Instant::now();
    for i in 1..200 {
        let ts = T0 + i * 1000;
        w.ingest(ts, ts, vec![gauge("m", "www", i as f64)]);
        w.tick(ts).unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "writer was held up: {:?}",
        t.elapsed()
    );
    assert_eq!(w.status().samples_written, 200);
    let still: i64 = reader
        .query_row("SELECT count(*) FROM raw_recent", [], |r| r.get(0))
        .unwrap();
    assert_eq!(still, 1, "the reader keeps its snapshot");
    reader.execute_batch("COMMIT").unwrap();
    let fresh = storage.reader().unwrap();
    let id = fresh
        .series_id("m", &support::labels("www"))
        .unwrap()
        .unwrap();
    assert_eq!(fresh.raw_samples(id, 0, i64::MAX).unwrap().len(), 200);
}

/// The writer does not checkpoint inside its commits; a background connection copies the
/// WAL into the database file about every second. Seen from outside: shortly after a
/// flush, the database file alone (without its WAL) holds the data.
#[test]
fn the_wal_is_checkpointed_in_the_background() {
    let dir = TempDir::new("checkpoint");
    let path = dir.join("data.db");
    let storage = Storage::open(&StorageConfig {
        path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    let mut w = storage.writer(WriterOptions::default()).unwrap();
    for i in 0..100 {
        let ts = T0 + i * 1000;
        w.ingest(ts, ts, vec![gauge("m", "www", i as f64)]);
    }
    w.flush().unwrap();
    let copy = dir.join("copy.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        std::fs::copy(&path, &copy).unwrap();
        let n: i64 = rusqlite::Connection::open(&copy)
            .and_then(|c| c.query_row("SELECT count(*) FROM raw_recent", [], |r| r.get(0)))
            .unwrap_or(0);
        if n == 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not checkpointed ({n} rows in the file)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
