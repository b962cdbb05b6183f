//! Deep collection through the running daemon: the kernel's accept queue
//! while php-fpm's status page says 0, worker memory against
//! `smaps_rollup`, the adaptive interval, and saturation events.

use std::time::{Duration, Instant};

use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

use crate::support::{TestDaemon, TestDir, HOLD_PHP, SLEEP_PHP};

fn daemon(tag: &str, workers: u32, extra: &str) -> TestDaemon {
    let dir = TestDir::new(tag);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/sleep.php"), SLEEP_PHP).unwrap();
    std::fs::write(dir.join("www/hold.php"), HOLD_PHP).unwrap();
    let cfg = format!(
        "monitoring:\n  collect_interval: 5s\n{extra}pools:\n  - name: a\n    pm: static\n    max_workers: {workers}\n    chdir: {}\n",
        dir.join("www").display()
    );
    std::fs::write(dir.join("config.yaml"), cfg).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    d.wait_metrics(Duration::from_secs(15), |b| {
        b.lines()
            .any(|l| l.starts_with("phpfpm_up{pool=\"a\"") && l.ends_with(" 1"))
    })
    .unwrap_or_else(|| panic!("pool not up; log:\n{}", d.log()));
    d
}

fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Starts `n` requests of `sleep.php?ms=..` on pool `a`'s socket in threads.
fn hold(d: &TestDaemon, n: usize, ms: u64) -> Vec<std::thread::JoinHandle<()>> {
    hold_on(
        &d.dir.join("var/phpfpm-manager/sockets/a.sock"),
        &d.dir.join("www/sleep.php").display().to_string(),
        n,
        ms,
    )
}

/// Starts `n` requests that keep pool `a`'s workers busy until [`release`]
/// (or a minute).
fn hold_until_released(d: &TestDaemon, n: usize) -> Vec<std::thread::JoinHandle<()>> {
    hold_on(
        &d.dir.join("var/phpfpm-manager/sockets/a.sock"),
        &d.dir.join("www/hold.php").display().to_string(),
        n,
        60_000,
    )
}

/// Lets every held request finish, and waits for them.
pub(crate) fn release(www: &std::path::Path, held: Vec<std::thread::JoinHandle<()>>) {
    std::fs::write(www.join("release"), "").unwrap();
    for h in held {
        h.join().unwrap();
    }
    std::fs::remove_file(www.join("release")).unwrap();
}

/// Starts `n` requests of `script?ms=..` on a unix socket, one thread each.
pub(crate) fn hold_on(
    sock: &std::path::Path,
    script: &str,
    n: usize,
    ms: u64,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (sock, script) = (sock.to_owned(), script.to_owned());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let t = Timeouts {
                    connect: Duration::from_secs(1),
                    total: Duration::from_secs(90),
                };
                let _ = rt.block_on(fastcgi::get(
                    &Endpoint::Unix(sock),
                    &script,
                    &format!("ms={ms}"),
                    t,
                ));
            })
        })
        .collect()
}

#[test]
fn accept_queue_is_seen_while_the_status_page_says_zero() {
    let d = daemon("queue", 2, "");
    // 2 workers busy until released, 8 more connections waiting behind them.
    let held = hold_until_released(&d, 10);
    let body = d
        .wait_metrics(Duration::from_secs(30), |b| {
            metric(b, "phpfpm_manager_accept_queue{pool=\"a\"}")
                .is_some_and(|q| (7.0..=9.0).contains(&q))
        })
        .unwrap_or_else(|| {
            let (_, b) = d.get("/metrics").unwrap();
            panic!(
                "accept queue not 8±1 within 30s:\n{}",
                b.lines()
                    .filter(|l| l.contains("queue"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    // php-fpm's own figure on a unix socket (fact 9).
    assert_eq!(
        metric(&body, "phpfpm_listen_queue{pool=\"a\""),
        Some(0.0),
        "{body}"
    );
    assert!(metric(&body, "phpfpm_manager_accept_queue_limit{pool=\"a\"}").unwrap_or(0.0) >= 128.0);
    // Saturation was recorded as an event, with the figures behind it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let (_, ev) = d
            .get("/api/v1/events/recent?type=saturation_begin")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
        if let Some(e) = v["events"].as_array().and_then(|a| a.first()).cloned() {
            break e;
        }
        assert!(Instant::now() < deadline, "no saturation event: {ev}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event["pool"], "a");
    assert_eq!(event["details"]["total"], 2);
    release(&d.dir.join("www"), held);
}

#[test]
fn worker_memory_matches_smaps_rollup() {
    let d = daemon(
        "memory",
        3,
        "  memory_interval: 1s\n  busy_interval: 1s\n  idle_interval: 5s\n",
    );
    // Wait for a memory reading, then compare with what the test reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = serde_json::from_str(&d.pool_json("a")).unwrap();
        let reported = v["kernel"]["worker_pss_sum_bytes"].as_u64();
        let sampled = v["kernel"]["workers_sampled"].as_u64();
        if let (Some(reported), Some(3)) = (reported, sampled) {
            // The pool's workers, as its status page names them (the master
            // also has the hidden status pool's workers as children).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let ep = Endpoint::Unix(d.dir.join("var/phpfpm-manager/sockets/a.status.sock"));
            let t = Timeouts {
                connect: Duration::from_secs(1),
                total: Duration::from_secs(2),
            };
            let reply = rt
                .block_on(fastcgi::get(&ep, "/status", "json&full", t))
                .unwrap();
            let st = fpm_core::status::parse_status(&reply.stdout).unwrap();
            let mine: u64 = st
                .processes
                .iter()
                .map(|p| p.pid.to_string())
                .map(|pid| {
                    let text =
                        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
                    text.lines()
                        .find_map(|l| l.strip_prefix("Pss:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                        .unwrap()
                        * 1024
                })
                .sum();
            // Idle workers' memory barely moves between the two reads.
            let diff = (reported as f64 - mine as f64).abs() / mine as f64;
            assert!(
                diff < 0.05,
                "manager says {reported}, smaps_rollup says {mine}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no memory reading: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn interval_is_one_second_under_load_and_fifteen_when_idle() {
    let d = daemon("interval", 2, "");
    let interval = |d: &TestDaemon| {
        let v: serde_json::Value = serde_json::from_str(&d.pool_json("a")).unwrap();
        v["collect_interval_ms"].as_u64().unwrap_or(0)
    };
    let idle = Instant::now() + Duration::from_secs(30);
    while interval(&d) != 15_000 {
        assert!(
            Instant::now() < idle,
            "idle pool not at 15 s: {}",
            d.pool_json("a")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both workers busy: the interval drops to 1 s.
    let held = hold_until_released(&d, 4);
    let busy = Instant::now() + Duration::from_secs(30);
    while interval(&d) != 1_000 {
        assert!(
            Instant::now() < busy,
            "busy pool not at 1 s: {}",
            d.pool_json("a")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    release(&d.dir.join("www"), held);
    let back = Instant::now() + Duration::from_secs(30);
    while interval(&d) != 15_000 {
        assert!(
            Instant::now() < back,
            "pool did not go back to 15 s: {}",
            d.pool_json("a")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = d.get("/metrics").unwrap();
    assert_eq!(
        metric(&body, "phpfpm_manager_collect_interval_seconds{pool=\"a\"}"),
        Some(15.0)
    );
}

#[test]
fn opcache_figures_follow_compiled_scripts_and_pass_promtool() {
    let d = daemon(
        "opcache",
        2,
        "  enable_opcache: true\n  idle_interval: 5s\n",
    );
    let cached = |d: &TestDaemon| -> Option<f64> {
        let (_, b) = d.get("/metrics").ok()?;
        metric(&b, "phpfpm_manager_opcache_cached_scripts{pool=\"a\"}")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        if let Some(v) = cached(&d) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no OPcache figures; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Five new scripts compiled by the pool's workers (same master).
    let sock = d.dir.join("var/phpfpm-manager/sockets/a.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Timeouts {
        connect: Duration::from_secs(1),
        total: Duration::from_secs(5),
    };
    for i in 0..5 {
        let path = d.dir.join(&format!("www/s{i}.php"));
        std::fs::write(&path, format!("<?php echo {i};\n")).unwrap();
        // OPcache does not cache files younger than 2 s (file_update_protection).
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        rt.block_on(fastcgi::get(
            &Endpoint::Unix(sock.clone()),
            &path.display().to_string(),
            "",
            t,
        ))
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while cached(&d).unwrap_or(0.0) < before + 5.0 {
        assert!(
            Instant::now() < deadline,
            "cached scripts stayed at {:?} (before {before})",
            cached(&d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, body) = d.get("/metrics").unwrap();
    crate::support::promtool_check(&body).unwrap_or_else(|e| panic!("promtool: {e}"));
    // The probe lives in the manager's own directory, not the pool's.
    let probes: Vec<_> = std::fs::read_dir(d.dir.join("var/phpfpm-manager/opcache"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(probes.len(), 1);
    assert!(!d.dir.join("www").join(probes[0].file_name()).exists());
}

#[test]
fn workers_endpoint_joins_status_and_proc() {
    let d = daemon("workers", 3, "  memory_interval: 1s\n  idle_interval: 5s\n");
    for h in hold(&d, 1, 300) {
        h.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = d.get("/api/v1/pools/a/workers").unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let workers = v["workers"].as_array().cloned().unwrap_or_default();
        let served = workers
            .iter()
            .filter(|w| {
                w["requests"] == 1
                    && w["script"]
                        .as_str()
                        .is_some_and(|s| s.ends_with("sleep.php"))
            })
            .count();
        let with_memory = workers
            .iter()
            .filter(|w| w["pss_bytes"].as_u64().is_some_and(|b| b > 0))
            .count();
        if workers.len() == 3 && served == 1 && with_memory == 3 {
            for w in &workers {
                let pid = w["pid"].as_u64().unwrap();
                assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
                assert!(w["rss_bytes"].as_u64().unwrap() >= w["pss_bytes"].as_u64().unwrap());
            }
            break;
        }
        assert!(Instant::now() < deadline, "workers not joined: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _) = d.get("/api/v1/pools/nope/workers").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn the_advisor_recommends_more_workers_for_an_observed_pool_that_queues() {
    // A pool the manager only observes: 2 static workers, allowed up to 32
    // (while learning, the policy may go to 25 % of that: 8).
    let fpm = crate::support::TestFpm::start(crate::support::FpmOpts {
        name: "obs",
        max_children: 2,
        ..crate::support::FpmOpts::default()
    });
    let cfg = format!(
        "monitoring:\n  busy_interval: 1s\npools:\n  - name: obs\n    supervise: false\n    fastcgi_endpoint: unix:{}\n    status_endpoint: unix:{}\n    max_workers: 32\n",
        fpm.socket.display(),
        fpm.status_socket.display()
    );
    let d = TestDaemon::start("advise", Some(&cfg), &[]);
    d.wait_metrics(Duration::from_secs(30), |b| {
        b.lines()
            .any(|l| l.starts_with("phpfpm_up{pool=\"obs\"") && l.ends_with(" 1"))
    })
    .unwrap_or_else(|| panic!("observed pool not up; log:\n{}", d.log()));
    let advice = |d: &TestDaemon| -> serde_json::Value {
        let (_, b) = d.get("/api/v1/pools/obs/scale").unwrap();
        serde_json::from_str(&b).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while advice(&d)["recommended_workers"].is_null() {
        assert!(Instant::now() < deadline, "no advice: {}", advice(&d));
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle = advice(&d);
    assert_eq!(idle["mode"], "advise");
    assert_eq!(idle["current_workers"], 2, "{idle}");
    assert!(
        idle["recommended_workers"].as_u64().unwrap() <= 32,
        "{idle}"
    );
    // 2 busy and 8 waiting, 2 s each: once the first requests finish the
    // service time is known, and every worker busy with a queue worth seconds
    // of waiting is the emergency rule, which recommends more workers even
    // while the model is still learning.
    let held = hold_on(&fpm.socket, &fpm.www("sleep.php"), 10, 2000);
    let deadline = Instant::now() + Duration::from_secs(9);
    let busy = loop {
        let a = advice(&d);
        if a["recommended_workers"].as_u64().unwrap_or(0) > 2 {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no scale-up advice under saturation: {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(busy["action"], "resize", "{busy}");
    assert!(
        busy["recommended_workers"].as_u64().unwrap() <= 32,
        "{busy}"
    );
    let (_, m) = d.get("/metrics").unwrap();
    assert!(
        m.contains("phpfpm_manager_autoscaler_recommended_workers{pool=\"obs\"}"),
        "{m}"
    );
    let (_, all) = d.get("/api/v1/autoscaling").unwrap();
    assert!(all.contains("\"pool\":\"obs\""), "{all}");
    for h in held {
        h.join().unwrap();
    }
}
