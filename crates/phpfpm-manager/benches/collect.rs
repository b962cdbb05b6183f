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
//! 3. Deep collection: one cycle over 8 pools x 32 workers (status, ping,
//!    accept queue, /proc of every worker, with and without smaps_rollup):
//!    wall and CPU time per cycle; then the daemon doing that every second
//!    (goal: at most 2 % of one core, at most 25 MB resident).
//! 4. One accept-queue read (sock_diag) against one status-page request.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::expect_used)]

use std::time::{Duration, Instant};

use fpm_testkit::{proc_status_field, utc_now_text, FpmOpts, TestDaemon, TestFpm};
use phpfpm_manager::collect::{fetch_status, record, ProbeMarker};
use phpfpm_manager::config::{self, LoadInput};
use phpfpm_manager::fastcgi::{self, Timeouts};
use phpfpm_manager::state::AppState;

const ROUNDS: usize = 400;

fn main() {
    println!("# phpfpm-manager collector benchmark");
    println!("date: {}", utc_now_text());
    println!(
        "cpus: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    collection_vs_round_trip();
    footprint();
    deep_cycle();
    deep_footprint();
}

fn deep_cycle() {
    use phpfpm_manager::collect::PoolCollector;
    let pools: Vec<TestFpm> = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"]
        .into_iter()
        .map(|name| {
            TestFpm::start(FpmOpts {
                name,
                max_children: 32,
                ..FpmOpts::default()
            })
        })
        .collect();
    let mut cfg = config::load(&LoadInput {
        cwd: "/tmp".into(),
        ..LoadInput::default()
    })
    .unwrap();
    cfg.pools = pools.iter().map(|f| f.pool()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    for (label, memory_every) in [
        ("stat only (CPU, state)", Duration::from_secs(3600)),
        ("with smaps_rollup (memory)", Duration::ZERO),
    ] {
        let mut c2 = cfg.clone();
        c2.monitoring.memory_interval = memory_every;
        let state = AppState::new(c2.clone());
        let mut collectors: Vec<PoolCollector> = c2
            .pools
            .iter()
            .map(|p| PoolCollector::new(p.clone(), state.clone(), &c2.monitoring))
            .collect();
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        rt.block_on(async {
            for round in 0..25 {
                let (c0, t0) = (self_cpu_secs(), Instant::now());
                let futs = collectors.iter_mut().map(|c| c.collect());
                futures_join_all(futs).await;
                if round >= 5 {
                    wall.push(t0.elapsed());
                    cpu.push(Duration::from_secs_f64(self_cpu_secs() - c0));
                }
            }
        });
        let sampled: usize = state
            .pools()
            .values()
            .filter_map(|s| s.kernel.workers.as_ref().ok().map(|a| a.workers))
            .sum();
        results.push((label, median(&mut wall), median(&mut cpu), sampled));
    }
    println!("\n## 3. one collection cycle, 8 pools x 32 workers (20 cycles after 5 warm-up)");
    println!("| cycle | wall median | manager CPU median | workers sampled |");
    println!("|---|---|---|---|");
    for (label, w, c, n) in results {
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {n} |",
            w.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3
        );
    }

    // 4. The queue read against a status request, interleaved.
    let f = &pools[0];
    let mut reader = fpm_kernel::queue::QueueReader::new(Duration::from_secs(1)).unwrap();
    let listener = fpm_kernel::queue::Listener::UnixPath(f.socket.clone());
    let ep = phpfpm_manager::config::Endpoint::Unix(f.status_socket.clone());
    let t = Timeouts {
        connect: Duration::from_millis(250),
        total: Duration::from_secs(2),
    };
    let (mut q, mut st) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for i in 0..440 {
            let t0 = Instant::now();
            reader.accept_queue(&listener).unwrap();
            let a = t0.elapsed();
            let t0 = Instant::now();
            fastcgi::get(&ep, "/status", "json", t).await.unwrap();
            let b = t0.elapsed();
            if i >= 40 {
                q.push(a);
                st.push(b);
            }
        }
    });
    let (mq, ms) = (median(&mut q), median(&mut st));
    println!("\n## 4. accept-queue read vs status request (400 rounds, interleaved)");
    println!("| read | median |");
    println!("|---|---|");
    println!("| sock_diag accept queue | {:.1} µs |", us(mq));
    println!(
        "| status page `?json` via pm.status_listen | {:.1} µs |",
        us(ms)
    );
    println!(
        "status / queue: {:.1}x",
        ms.as_secs_f64() / mq.as_secs_f64()
    );
}

/// Polls a set of futures to completion concurrently (what the daemon's
/// per-pool tasks do), without pulling in a futures crate for one call.
async fn futures_join_all<F: std::future::Future<Output = Duration>>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut remaining: Vec<_> = set.iter_mut().collect();
    std::future::poll_fn(|cx| {
        remaining.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if remaining.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

fn self_cpu_secs() -> f64 {
    cpu_ticks(std::process::id()) as f64 / 100.0
}

fn deep_footprint() {
    let mut config = String::from(
        "monitoring:\n  collect_interval: 1s\n  busy_interval: 1s\n  idle_interval: 1s\npools:\n",
    );
    for i in 1..=8 {
        config.push_str(&format!(
            "  - {{name: q{i}, pm: static, max_workers: 32}}\n"
        ));
    }
    // Past the first memory reading of every pool before measuring.
    let (_d, rss_mb, cpu, secs) = measure_daemon("deepfoot", &config, 8, Duration::from_secs(12));
    println!("\n## 3b. daemon with 8 pools x 32 workers collected every 1 s (memory every 30 s, the default), {secs:.0} s window");
    println!("| measure | value | goal |");
    println!("|---|---|---|");
    println!("| resident memory (max VmRSS) | {rss_mb:.1} MB | <= 25 MB |");
    println!("| CPU | {cpu:.2} % of one core | <= 2 % |");
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
            assert!(
                record(
                    &pool,
                    &state,
                    &probe,
                    status,
                    true,
                    tokio::time::Instant::from_std(started)
                )
                .up
            );
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
    let config = "monitoring:\n  collect_interval: 1s\n  idle_interval: 1s\n\
                  pools:\n\
                  \x20 - {name: p1, pm: static, max_workers: 4}\n\
                  \x20 - {name: p2, pm: static, max_workers: 4}\n\
                  \x20 - {name: p3, pm: static, max_workers: 4}\n\
                  \x20 - {name: p4, pm: static, max_workers: 4}\n";
    let (d, rss_mb, cpu, secs) = measure_daemon("footprint", config, 4, Duration::from_secs(3));
    println!("\n## 2. daemon footprint: 4 pools collected every 1 s, {secs:.0} s window");
    println!("| measure | value | goal |");
    println!("|---|---|---|");
    println!("| resident memory (max VmRSS) | {rss_mb:.1} MB | <= 20 MB |");
    println!("| CPU (utime+stime / wall) | {cpu:.2} % of one core | <= 1 % |");
    println!(
        "| collections done since start | {} | |",
        collections_count(&d)
    );
}

/// Runs the daemon with `config` (pools named p1..pN or q1..qN), waits
/// until all are up and `settle` more, then measures the manager process
/// alone over 30 s: max resident memory (MB) and CPU (% of one core).
fn measure_daemon(
    tag: &str,
    config: &str,
    pools: usize,
    settle: Duration,
) -> (TestDaemon, f64, f64, f64) {
    let window = Duration::from_secs(30);
    let d = TestDaemon::start(tag, Some(config), &[("RUST_LOG", "warn")]);
    let prefix = if tag == "footprint" { "p" } else { "q" };
    let all_up = |b: &str| {
        (1..=pools).all(|i| {
            b.lines().any(|l| {
                l.starts_with(&format!("phpfpm_up{{pool=\"{prefix}{i}\"")) && l.ends_with(" 1")
            })
        })
    };
    d.wait_metrics(Duration::from_secs(60), all_up)
        .expect("all pools up within 60s");
    std::thread::sleep(settle);
    let pid = d.child.id();
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < window {
        rss.push(proc_status_field(pid, "VmRSS:").unwrap_or(0));
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0; // USER_HZ on Linux
    let secs = t0.elapsed().as_secs_f64();
    let max_rss = rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    (d, max_rss, 100.0 * cpu / secs, secs)
}

fn collections_count(d: &TestDaemon) -> u64 {
    let (_, body) = d.get("/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with("phpfpm_manager_scrape_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn cpu_ticks(pid: u32) -> u64 {
    fpm_kernel::procfs::read_stat(pid).unwrap().cpu_ticks()
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
