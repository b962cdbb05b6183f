//! Test helper: writes samples through the real writer as fast as a busy manager would,
//! until killed (or a time limit), so the crash test can `kill -9` it mid-write.
//!
//! Usage: `fpm-storage-stress DB_PATH RUN_LABEL [MAX_SECONDS]`. Writes 320 series (8 pools x
//! 40) every 10 ms. Sample timestamps are simulated seconds (batch k at start + k s, so
//! compaction of completed minutes happens every 0.6 s of real time); every value is the
//! wall-clock ms at which its batch was handed to the writer, so the test can tell how
//! much real time of data was lost.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fpm_storage::{Sample, Storage, StorageConfig, WriterOptions};

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(run)) = (args.get(1), args.get(2)) else {
        let _ = writeln!(
            std::io::stderr(),
            "usage: fpm-storage-stress DB_PATH RUN_LABEL [MAX_SECONDS]"
        );
        return ExitCode::from(2);
    };
    let max = Duration::from_secs(args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60));
    let cfg = StorageConfig {
        path: Some(path.into()),
        ..StorageConfig::default()
    };
    let storage = match Storage::open(&cfg) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "fpm-storage-stress: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = WriterOptions {
        compact_interval: Duration::from_millis(200),
        ..WriterOptions::default()
    };
    let writer = match storage.writer(opts) {
        Ok(w) => w,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "fpm-storage-stress: {e}");
            return ExitCode::from(1);
        }
    };
    let (handle, task) = writer.into_task();
    let thread = std::thread::spawn(move || task.run());
    let series: Vec<(String, String)> = (0..8)
        .flat_map(|p| (0..40).map(move |m| (format!("pool{p}"), format!("stress_metric_{m}"))))
        .collect();
    let start_sim = wall_ms() - 20 * 3_600_000;
    let started = Instant::now();
    let _ = writeln!(std::io::stdout(), "ready");
    let _ = std::io::stdout().flush();
    let mut k: i64 = 0;
    while started.elapsed() < max {
        let sent = wall_ms();
        let batch: Vec<Sample> = series
            .iter()
            .map(|(pool, name)| {
                Sample::gauge(
                    name.clone(),
                    vec![("pool".into(), pool.clone()), ("run".into(), run.clone())],
                    sent as f64,
                )
            })
            .collect();
        if handle.record(start_sim + k * 1000, batch) {
            k += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(handle);
    match thread.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}
