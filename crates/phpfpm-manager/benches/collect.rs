//! Benchmark of the collector against real php-fpm (`cargo bench -p
//! phpfpm-manager --bench collect`, or `make bench`):
//!
//! 1. One full collection of a 50-worker pool (status `?json&full` request,
//!    parse, state and metrics update) against a bare FastCGI round trip of
//!    the same request with no parsing, interleaved in one run; medians and
//!    their ratio (goal: at most 1.3x).
//! 2. The daemon's footprint while it collects 4 pools every second: resident
//!    memory (goal: at most 20 MB) and CPU (goal: at most 1 % of one core),
//!    read from `/proc/<pid>/status` and `/proc/<pid>/stat` of the manager
//!    process only (php-fpm's own CPU is not the manager's).

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::expect_used)]

use std::time::{Duration, Instant};

use fpm_testkit::{FpmOpts, TestDaemon, TestFpm};
use phpfpm_manager::collector::{fetch_status, record, ProbeMarker};
use phpfpm_manager::config::{self, LoadInput};
use phpfpm_manager::fastcgi::{self, Timeouts};
use phpfpm_manager::state::AppState;

const ROUNDS: usize = 400;

fn main() {
    println!("# phpfpm-manager collector benchmark");
    println!("date: {}", now_text());
    println!(
        "cpus: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    collection_vs_round_trip();
    footprint();
}

fn collection_vs_round_trip() {
    let fpm = TestFpm::start(FpmOpts {
        name: "bench50",
        max_children: 50,
        ..FpmOpts::default()
    });
    let pool = fpm.pool();
    let mut cfg = config::load(&LoadInput {
        cwd: "/tmp".into(),
        ..LoadInput::default()
    })
    .unwrap();
    cfg.pools = vec![pool.clone()];
    let state = AppState::new(cfg);
    let probe = ProbeMarker::new();
    let query = probe.query();
    let t = Timeouts {
        connect: Duration::from_millis(250),
        total: Duration::from_secs(2),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut bare, mut full) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    rt.block_on(async {
        let mut bytes = 0;
        for i in 0..ROUNDS + 40 {
            // Interleaved, so drift in php-fpm or the machine hits both alike.
            let started = Instant::now();
            let reply = fastcgi::get(&pool.status_endpoint, &pool.status_path, &query, t)
                .await
                .unwrap();
            let a = started.elapsed();
            bytes = reply.stdout.len();

            let started = Instant::now();
            let status = fetch_status(&pool, &probe).await;
            assert!(status.is_ok(), "{status:?}");
            assert!(record(
                &pool,
                &state,
                &probe,
                status,
                true,
                tokio::time::Instant::from_std(started)
            ));
            let b = started.elapsed();
            // The first rounds warm caches and php-fpm's workers.
            if i >= 40 {
                bare.push(a);
                full.push(b);
            }
        }
        println!(
            "\n## 1. full collection vs bare round trip (50 workers, {bytes} bytes of status)"
        );
    });
    let workers = state.pools()[&pool.name].derived.total;
    assert_eq!(workers, 50);
    let (mb, mf) = (median(&mut bare), median(&mut full));
    println!("rounds: {ROUNDS} (after 40 warm-up), interleaved");
    println!("| measure | median | p90 |");
    println!("|---|---|---|");
    println!(
        "| bare FastCGI round trip | {:.1} µs | {:.1} µs |",
        us(mb),
        us(p90(&mut bare))
    );
    println!(
        "| full collection (request + parse + update) | {:.1} µs | {:.1} µs |",
        us(mf),
        us(p90(&mut full))
    );
    println!(
        "ratio of medians (full / bare): {:.3} (goal <= 1.3)",
        mf.as_secs_f64() / mb.as_secs_f64()
    );
}

fn footprint() {
    let window = Duration::from_secs(30);
    let config = "monitoring:\n  collect_interval: 1s\n\
                  pools:\n\
                  \x20 - {name: p1, pm: static, max_workers: 4}\n\
                  \x20 - {name: p2, pm: static, max_workers: 4}\n\
                  \x20 - {name: p3, pm: static, max_workers: 4}\n\
                  \x20 - {name: p4, pm: static, max_workers: 4}\n";
    let d = TestDaemon::start("footprint", Some(config), &[("RUST_LOG", "warn")]);
    let all_up = |b: &str| {
        ["p1", "p2", "p3", "p4"].iter().all(|p| {
            b.lines()
                .any(|l| l.starts_with(&format!("phpfpm_up{{pool=\"{p}\"")) && l.ends_with(" 1"))
        })
    };
    d.wait_metrics(Duration::from_secs(20), all_up)
        .expect("4 pools up within 20s");
    // Settle, then measure over the window.
    std::thread::sleep(Duration::from_secs(3));
    let pid = d.child.id();
    let clk = 100.0; // USER_HZ on Linux
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < window {
        rss.push(rss_kib(pid));
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / clk;
    let secs = t0.elapsed().as_secs_f64();
    let collections = collections_count(&d);
    let max_rss = rss.iter().copied().max().unwrap_or(0);
    println!("\n## 2. daemon footprint: 4 pools collected every 1 s, {secs:.0} s window");
    println!("| measure | value | goal |");
    println!("|---|---|---|");
    println!(
        "| resident memory (max VmRSS) | {:.1} MB | <= 20 MB |",
        max_rss as f64 / 1024.0
    );
    println!(
        "| CPU (utime+stime / wall) | {:.2} % of one core | <= 1 % |",
        100.0 * cpu / secs
    );
    println!("| collections done since start | {collections} | |");
}

fn collections_count(d: &TestDaemon) -> u64 {
    let (_, body) = d.get("/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with("phpfpm_manager_scrape_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0], utime [11], stime [12].
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() * 9 / 10]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn now_text() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
