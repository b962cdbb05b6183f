//! Against a real php-fpm master (2 static workers, run as `nobody`):
//! the kernel's accept queue while every worker is busy versus what the
//! status page says, and per-worker sampling compared with `/proc` read
//! directly by the test.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{fcgi_get, fcgi_send, Fpm};
use fpm_kernel::procfs::parse_smaps_rollup;
use fpm_kernel::queue::{accept_queue, Listener};
use fpm_kernel::workers::{aggregate, cpu_percent, cpu_readings, sample_pool, SampleContext};

fn status_json(fpm: &Fpm) -> String {
    fcgi_get(
        &fpm.status_socket,
        Path::new("/status"),
        "json",
        Duration::from_secs(5),
    )
}

fn json_number(body: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    let start = body
        .find(&needle)
        .unwrap_or_else(|| panic!("{key} in {body}"))
        + needle.len();
    body[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn kernel_sees_waiting_connections_that_status_page_does_not() {
    let fpm = Fpm::start("queue", 2);
    let sleep = fpm.script("sleep.php");
    // Two requests occupy both workers for 3 s; eight more wait in the queue.
    let in_service: Vec<_> = (0..2)
        .map(|_| fcgi_send(&fpm.socket, &sleep, "us=3000000"))
        .collect();
    // Let the workers accept the first two before queueing the rest. The
    // status request goes to the hidden `pm.status_listen` pool, so it is
    // answered while the pool is saturated and is not counted as active.
    let deadline = Instant::now() + Duration::from_secs(2);
    while json_number(&status_json(&fpm), "active processes") < 2 {
        assert!(Instant::now() < deadline, "workers never became busy");
        thread::sleep(Duration::from_millis(20));
    }
    let waiting: Vec<_> = (0..8)
        .map(|_| fcgi_send(&fpm.socket, &sleep, "us=1"))
        .collect();

    let listener = Listener::UnixPath(fpm.socket.clone());
    let started = Instant::now();
    let mut queue = accept_queue(&listener).unwrap();
    while !(7..=9).contains(&queue.current) && started.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(10));
        queue = accept_queue(&listener).unwrap();
    }
    let status = status_json(&fpm);
    eprintln!("kernel: {queue:?}; status page: {status}");
    assert!(
        (7..=9).contains(&queue.current),
        "kernel accept queue {queue:?}"
    );
    assert_eq!(queue.limit, Some(64), "listen.backlog = 64 in the config");
    assert_eq!(json_number(&status, "listen queue"), 0, "{status}");
    assert_eq!(json_number(&status, "active processes"), 2, "{status}");

    for mut s in in_service.into_iter().chain(waiting) {
        let _ = common::fcgi_read_response(&mut s);
    }
    assert_eq!(accept_queue(&listener).unwrap().current, 0);
}

fn smaps_pss_rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let r = parse_smaps_rollup(&text).unwrap();
    (r.pss, r.rss)
}

#[test]
fn worker_sampling_matches_proc_and_measures_cpu() {
    let fpm = Fpm::start("workers", 2);
    let proc_root = Path::new("/proc");
    let ctx = SampleContext::from_host(proc_root).unwrap();

    // Freshly forked workers still touch pages for a moment; sample until the
    // test's own reads of smaps_rollup just before and just after the sample
    // agree with each other, then the sample must agree with them exactly.
    let mut attempt = 0;
    let (first, first_at) = loop {
        attempt += 1;
        assert!(attempt <= 50, "worker memory never settled");
        let pids = fpm_kernel::workers::list_children(proc_root, fpm.pid());
        let before: Vec<_> = pids.iter().map(|p| (*p, smaps_pss_rss(*p))).collect();
        let at = Instant::now();
        let sample = sample_pool(proc_root, fpm.pid(), &ctx, SystemTime::now());
        let after: Vec<_> = pids.iter().map(|p| (*p, smaps_pss_rss(*p))).collect();
        if before != after {
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        for (pid, (pss, rss)) in &after {
            let w = sample.workers.iter().find(|w| w.key.pid == *pid).unwrap();
            let mem = w.memory.as_ref().unwrap();
            assert_eq!((mem.pss, mem.rss), (*pss, *rss), "worker {pid}");
        }
        break (sample, at);
    };
    let master = first.master.as_ref().unwrap();
    assert_eq!(master.key.pid, fpm.pid());
    assert_eq!(first.workers.len(), 2);
    assert!(first.unavailable.is_empty());
    for w in &first.workers {
        assert_eq!(w.ppid, fpm.pid());
        assert_ne!(w.key.pid, fpm.pid());
        let age = w.age.expect("worker started in the past");
        assert!(age < Duration::from_secs(60), "{age:?}");
        let mem = w.memory.as_ref().unwrap();
        assert!(mem.uss <= mem.pss && mem.pss <= mem.rss);
    }

    // Burn ~300 ms of CPU in one worker, then sample again.
    let out = fcgi_get(
        &fpm.socket,
        &fpm.script("burn.php"),
        "",
        Duration::from_secs(10),
    );
    assert!(out.contains("\r\n\r\n"), "{out}");
    let second = sample_pool(proc_root, fpm.pid(), &ctx, SystemTime::now());
    let elapsed = first_at.elapsed();
    let rates = cpu_percent(
        &cpu_readings(&first),
        &cpu_readings(&second),
        elapsed,
        ctx.clk_tck,
    );
    let agg = aggregate(&second, &rates);
    assert_eq!(agg.workers, 2);
    assert_eq!(agg.workers_with_cpu, 2);
    let total = agg.cpu_percent_total.unwrap();
    // The script reports the CPU time its loop used (getrusage); the rate
    // over the interval must account for it, within the 10 ms tick
    // granularity of both samples plus a little request handling.
    let script_cpu: f64 = out.rsplit("cpu=").next().unwrap().trim().parse().unwrap();
    let measured_cpu = total / 100.0 * elapsed.as_secs_f64();
    assert!(script_cpu > 0.02, "the loop used CPU: {out}");
    assert!(
        measured_cpu >= script_cpu - 0.025 && measured_cpu <= script_cpu + 0.06,
        "rate {total:.1}% over {elapsed:?} = {measured_cpu:.3}s CPU, script used {script_cpu:.3}s"
    );
    let pss = agg.pss.unwrap();
    let rss = agg.rss.unwrap();
    assert_eq!(pss.count, 2);
    assert!(pss.sum < rss.sum, "shared pages make PSS smaller than RSS");
    assert!(pss.max >= pss.p50 && pss.p95 == pss.max);
    assert_eq!(
        agg.total_pss,
        Some(agg.master_memory.unwrap().pss + pss.sum)
    );
}
