//! A full disk while writing, on a small tmpfs the test mounts: producers keep going and
//! never block, queries keep working, the error is visible in the writer's status,
//! writing resumes by itself when space returns, and nothing is lost, neither what was
//! stored before nor what arrived while the disk was full.
// Helpers outside #[test] functions are test code too; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use fpm_storage::{Sample, Storage, StorageConfig, WriterOptions};
use support::{Mount, TempDir};

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn batch(n: usize, v: f64) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            Sample::gauge(
                "phpfpm_active_processes",
                vec![("pool".into(), format!("p{i}"))],
                v,
            )
        })
        .collect()
}

/// Fills the filesystem until `write` fails with "no space" (bounded by the mount size).
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    let mut written = 0u64;
    for _ in 0..4096 {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                return written;
            }
        }
    }
    panic!("the 64 MiB bound was reached without filling the tmpfs");
}

#[test]
fn full_disk_is_visible_survived_and_recovered_from() {
    let dir = TempDir::new("fulldisk");
    let mnt = dir.join("mnt");
    let _mount = Mount::tmpfs(&mnt, "12m");
    let path = mnt.join("data.db");
    let cfg = StorageConfig {
        path: Some(path.clone()),
        ..StorageConfig::default()
    };
    let storage = Storage::open(&cfg).unwrap();
    let reader = storage.reader().unwrap();
    let opts = WriterOptions {
        flush_interval: Duration::from_millis(50),
        compact_interval: Duration::from_millis(100),
        channel_capacity: 4096,
        ..WriterOptions::default()
    };
    let (handle, task) = storage.writer(opts).unwrap().into_task();
    let thread = std::thread::spawn(move || task.run());
    let series = 100;
    let base = wall_ms();
    let mut k: i64 = 0;
    let mut accepted = 0u64;
    let mut send = |handle: &fpm_storage::WriterHandle, k: &mut i64| {
        if handle.record(base + *k, batch(series, *k as f64)) {
            accepted += series as u64;
        }
        *k += 1;
    };

    // 1. Normal writing.
    for _ in 0..200 {
        send(&handle, &mut k);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.status().samples_written < 200 * series as u64 {
        assert!(
            Instant::now() < deadline,
            "initial samples not written: {:?}",
            handle.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stored_before = reader
        .query_series(
            "p0",
            "phpfpm_active_processes",
            base,
            base + 1_000_000,
            1000,
            base,
        )
        .unwrap();

    // 2. The disk fills up; producers keep sending until the writer reports the failure.
    let filler = mnt.join("filler");
    fill(&filler);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !handle.status().failing {
        assert!(
            Instant::now() < deadline,
            "no write failure seen on a full disk: {:?}",
            handle.status()
        );
        let t = Instant::now();
        send(&handle, &mut k);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "record blocked on a full disk"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = handle.status();
    let err = status.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("disk full") && err.contains("data.db"),
        "error not visible or unclear: {err}"
    );
    // Collection goes on while the disk is full: sends are accepted and kept in memory.
    for _ in 0..100 {
        send(&handle, &mut k);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    let during = handle.status();
    assert!(during.failing && during.pending > 0, "{during:?}");
    assert_eq!(during.channel_dropped, 0, "{during:?}");
    // Reads keep working.
    let while_full = reader
        .query_series(
            "p0",
            "phpfpm_active_processes",
            base,
            base + 1_000_000,
            1000,
            base,
        )
        .unwrap();
    assert!(while_full.series[0].points.len() >= stored_before.series[0].points.len());

    // 3. Space returns: writing resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = handle.status();
        if !s.failing && s.pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "writing did not resume: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        send(&handle, &mut k);
    }
    let final_status = handle.status();
    drop(handle);
    thread.join().unwrap().unwrap();
    assert_eq!(final_status.overflow_dropped, 0);

    // 4. Nothing lost: everything accepted is stored, and the file is sound.
    drop(reader);
    drop(storage);
    let storage = Storage::open(&cfg).unwrap();
    let reader = storage.reader().unwrap();
    assert_eq!(reader.integrity_check().unwrap(), "ok");
    let mut stored = 0u64;
    for i in 0..series {
        let id = reader
            .series_id(
                "phpfpm_active_processes",
                &[("pool".into(), format!("p{i}"))],
            )
            .unwrap()
            .unwrap();
        let samples = reader.raw_samples(id, 0, i64::MAX).unwrap();
        // Every batch k is there with value k.
        assert!(
            samples
                .iter()
                .enumerate()
                .all(|(j, s)| s.0 == base + j as i64 && s.1 == j as f64),
            "series p{i}"
        );
        stored += samples.len() as u64;
    }
    assert_eq!(stored, accepted, "samples lost (sent {k} batches)");
    eprintln!(
        "full disk: {k} batches, {} write errors while full",
        final_status.write_errors
    );
}
