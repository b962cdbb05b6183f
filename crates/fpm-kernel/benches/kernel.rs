//! Cost of the kernel-side reads next to the status-page request they
//! complement, on a real php-fpm master with 32 static workers:
//! one accept-queue read (sock_diag, unix and TCP), one full `/proc` sample
//! of the master and its 32 workers, one budget read, and one status-page
//! FastCGI request (`?json` and `?json&full`) through `pm.status_listen`.
//! Prints medians, p90, CPU time per operation and ratios in one table.
//!
//! Run: `cargo bench -p fpm-kernel --bench kernel`

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use fpm_kernel::budget::read_budget;
use fpm_kernel::queue::{accept_queue, Listener, QueueReader};
use fpm_kernel::workers::{
    list_children, sample_pool, sample_pool_with, MemoryDetail, SampleContext,
};
use rustix::time::{clock_gettime, ClockId};

const MAX_ITERATIONS: usize = 2_000;
const MAX_TIME: Duration = Duration::from_secs(4);

struct Row {
    name: String,
    iterations: usize,
    median: Duration,
    p90: Duration,
    cpu_per_op: Duration,
}

fn process_cpu() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `op` up to MAX_ITERATIONS times or MAX_TIME, after a short warm-up.
fn measure(name: &str, max_iterations: usize, mut op: impl FnMut()) -> Row {
    for _ in 0..10 {
        op();
    }
    let mut times = Vec::with_capacity(max_iterations);
    let cpu_start = process_cpu();
    let start = Instant::now();
    while times.len() < max_iterations && start.elapsed() < MAX_TIME {
        let t = Instant::now();
        op();
        times.push(t.elapsed());
    }
    let cpu = process_cpu() - cpu_start;
    times.sort_unstable();
    let n = times.len();
    Row {
        name: name.to_owned(),
        iterations: n,
        median: times[n / 2],
        p90: times[(n * 9 / 10).min(n - 1)],
        cpu_per_op: cpu / n as u32,
    }
}

fn worker_ticks(master: u32) -> u64 {
    list_children(Path::new("/proc"), master)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|t| fpm_kernel::procfs::parse_stat(&t).ok())
        .map(|s| s.cpu_ticks())
        .sum()
}

fn main() {
    let fpm = common::Fpm::start("bench", 32);
    let proc_root = Path::new("/proc");
    let ctx = SampleContext::from_host(proc_root).unwrap();
    let unix = Listener::UnixPath(fpm.socket.clone());
    let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = Listener::Tcp(tcp_listener.local_addr().unwrap());
    let mut reader = QueueReader::new(Duration::from_secs(1)).unwrap();
    let unix_listening = reader.unix_listeners().unwrap().len();

    let sample = sample_pool(proc_root, fpm.pid(), &ctx, SystemTime::now());
    assert_eq!(sample.workers.len(), 32, "32 workers sampled");
    assert!(sample.workers.iter().all(|w| w.memory.is_ok()));
    let one_worker = sample.workers[0].key.pid;
    let vmas = std::fs::read_to_string(format!("/proc/{one_worker}/maps"))
        .unwrap()
        .lines()
        .count();
    let opcache_on = std::process::Command::new("php")
        .args([
            "-d",
            "opcache.enable_cli=0",
            "-r",
            "echo ini_get('opcache.enable');",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    let mut rows = vec![
        measure("accept queue, unix (sock_diag)", MAX_ITERATIONS, || {
            assert_eq!(accept_queue(&unix).unwrap().current, 0);
        }),
        measure("accept queue, tcp (inet_diag)", MAX_ITERATIONS, || {
            assert_eq!(accept_queue(&tcp).unwrap().current, 0);
        }),
        measure(
            "accept queue, unix, kept QueueReader",
            MAX_ITERATIONS,
            || {
                assert_eq!(reader.accept_queue(&unix).unwrap().current, 0);
            },
        ),
        measure("/proc sample, master + 32 workers", 500, || {
            let s = sample_pool(proc_root, fpm.pid(), &ctx, SystemTime::now());
            assert_eq!(s.workers.len(), 32);
        }),
        measure("/proc sample, stat only (no smaps)", 500, || {
            let s = sample_pool_with(
                proc_root,
                fpm.pid(),
                &ctx,
                SystemTime::now(),
                MemoryDetail::Skip,
            );
            assert_eq!(s.workers.len(), 32);
        }),
        measure(
            "smaps_rollup read+parse, one worker",
            MAX_ITERATIONS,
            || {
                let t =
                    std::fs::read_to_string(format!("/proc/{one_worker}/smaps_rollup")).unwrap();
                fpm_kernel::procfs::parse_smaps_rollup(&t).unwrap();
            },
        ),
        measure(
            "budget (cgroup + meminfo + loadavg)",
            MAX_ITERATIONS,
            || {
                read_budget().unwrap();
            },
        ),
    ];
    let status = |query: &'static str| {
        let socket = fpm.status_socket.clone();
        move || {
            let body =
                common::fcgi_get(&socket, Path::new("/status"), query, Duration::from_secs(5));
            assert!(body.contains("\"pool\""), "{body}");
        }
    };
    // php-fpm's own CPU for the status requests is spent in the status pool's
    // worker, a child of the master: count its ticks around each run.
    let mut fpm_cpu = Vec::new();
    for query in ["json", "json&full"] {
        let before = worker_ticks(fpm.pid());
        let row = measure(
            &format!("status page ?{query} (FastCGI)"),
            1_000,
            status(query),
        );
        let ticks = worker_ticks(fpm.pid()) - before;
        // +10 warm-up requests.
        let per_request_ms =
            ticks as f64 * 1000.0 / ctx.clk_tck as f64 / (row.iterations + 10) as f64;
        fpm_cpu.push((query, per_request_ms));
        rows.push(row);
    }

    let base = rows[0].median.as_secs_f64();
    println!(
        "host: {} unix listening sockets in this namespace; clk_tck {}",
        unix_listening, ctx.clk_tck
    );
    println!("one worker has {vmas} mappings; opcache.enable = {opcache_on:?}");
    let agg = fpm_kernel::workers::aggregate(&sample, &[]);
    let (pss, rss, uss) = (agg.pss.unwrap(), agg.rss.unwrap(), agg.uss.unwrap());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "32 idle workers: sum RSS {:.1} MiB, sum PSS {:.1} MiB (p50 {:.2}, p95 {:.2}, max {:.2}), sum USS {:.1} MiB; master PSS {:.1} MiB",
        mib(rss.sum),
        mib(pss.sum),
        mib(pss.p50),
        mib(pss.p95),
        mib(pss.max),
        mib(uss.sum),
        mib(agg.master_memory.unwrap().pss)
    );
    println!(
        "{:<38} {:>6} {:>11} {:>11} {:>13} {:>9}",
        "operation", "n", "median", "p90", "our CPU/op", "x unix"
    );
    for r in &rows {
        println!(
            "{:<38} {:>6} {:>9.1}µs {:>9.1}µs {:>11.1}µs {:>8.1}x",
            r.name,
            r.iterations,
            r.median.as_secs_f64() * 1e6,
            r.p90.as_secs_f64() * 1e6,
            r.cpu_per_op.as_secs_f64() * 1e6,
            r.median.as_secs_f64() / base
        );
    }
    for (query, ms) in fpm_cpu {
        println!(
            "php-fpm worker CPU per ?{query} status request: {:.3} ms (tick-resolution estimate)",
            ms
        );
    }
}
