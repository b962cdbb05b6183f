//! The writer under a busy manager's load, as a child process the crash tests
//! can `kill -9` mid-write. It is the test binary itself, run again with one
//! ignored test selected and `FPM_STORAGE_STRESS` set (so nothing of it ships
//! with the library).
//!
//! Writes 320 series (8 pools x 40) every 10 ms until killed or `max`
//! passes. Sample timestamps are simulated seconds: batch k is at start + k s
//! whether or not the writer accepted it, so a dropped batch is a gap the
//! test sees (and compaction of completed minutes happens every 0.6 s of real
//! time). Every value is the wall-clock ms at which its batch was handed to
//! the writer, so the test can tell how much real time of data was lost.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fpm_storage::{Sample, Storage, StorageConfig, WriterOptions};

/// The environment variable that carries the child's arguments.
const ENV: &str = "FPM_STORAGE_STRESS";
/// What the child prints once it writes.
const READY: &str = "stress writer ready";

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Starts the stress child writing to `path` under the `run` label for at
/// most `max_secs`, and waits until it says it is writing. `test_name` is
/// the ignored test of the calling test binary that calls [`child_main`].
pub fn spawn(test_name: &str, path: &Path, run: &str, max_secs: u64) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            test_name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, format!("{}\t{run}\t{max_secs}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the stress child");
    // The test harness prints its own lines first.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..50 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        // libtest may have written "test NAME ... " on the same line.
        if line.trim_end().ends_with(READY) {
            // Keep the pipe open (the child writes nothing more).
            std::mem::forget(out);
            return child;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the stress child did not start");
}

/// The child's body: writes until `max`; panics (failing the ignored test
/// it runs in) when started without [`spawn`]'s environment.
pub fn child_main() {
    let args = std::env::var(ENV)
        .unwrap_or_else(|_| panic!("run by the crash tests as a child process ({ENV} not set)"));
    let mut parts = args.split('\t');
    let (Some(path), Some(run), Some(max)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{ENV}: expected PATH<TAB>RUN<TAB>MAX_SECONDS");
    };
    let max = Duration::from_secs(max.parse().unwrap());
    let storage = Storage::open(&StorageConfig {
        path: Some(path.into()),
        ..StorageConfig::default()
    })
    .unwrap();
    let writer = storage
        .writer(WriterOptions {
            compact_interval: Duration::from_millis(200),
            ..WriterOptions::default()
        })
        .unwrap();
    let (handle, task) = writer.into_task();
    let thread = std::thread::spawn(move || task.run());
    let series: Vec<(String, String)> = (0..8)
        .flat_map(|p| (0..40).map(move |m| (format!("pool{p}"), format!("stress_metric_{m}"))))
        .collect();
    let start_sim = wall_ms() - 20 * 3_600_000;
    let started = Instant::now();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{READY}").unwrap();
    stdout.flush().unwrap();
    let mut dropped = 0u64;
    let mut k: i64 = 0;
    while started.elapsed() < max {
        let sent = wall_ms();
        let batch: Vec<Sample> = series
            .iter()
            .map(|(pool, name)| {
                Sample::gauge(
                    name.clone(),
                    vec![
                        ("pool".into(), pool.clone()),
                        ("run".into(), run.to_owned()),
                    ],
                    sent as f64,
                )
            })
            .collect();
        if !handle.record(start_sim + k * 1000, batch) {
            dropped += 1;
        }
        k += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(handle);
    thread.join().unwrap().unwrap();
    assert_eq!(dropped, 0, "the writer dropped {dropped} batches");
}
