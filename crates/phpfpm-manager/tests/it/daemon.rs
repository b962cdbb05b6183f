//! The daemon end to end: zero-config start with real php-fpm, `/metrics`
//! checked by promtool, health and API answers, and shutdown on SIGTERM or
//! repeated SIGINT that leaves no php-fpm process behind.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{promtool_check, TestDaemon};

const UP_LINE: &str = "phpfpm_up{pool=\"demo\"";

fn demo_up(body: &str) -> bool {
    body.lines()
        .any(|l| l.starts_with(UP_LINE) && l.ends_with(" 1"))
}

#[test]
fn zero_config_serves_metrics_and_stops_cleanly() {
    let mut d = TestDaemon::start("zeroconf", None, &[]);
    let body = d
        .wait_metrics(Duration::from_secs(30), demo_up)
        .unwrap_or_else(|| panic!("demo pool not up within 30s; log:\n{}", d.log()));

    // Generated files in the manager's own directory, nowhere else.
    let root = d.dir.join("var/phpfpm-manager");
    for f in [
        "php-fpm.conf",
        "pools.d/demo.conf",
        "masters/demo.conf",
        "www/index.php",
    ] {
        assert!(root.join(f).is_file(), "missing {f}");
    }
    let pool_conf = std::fs::read_to_string(root.join("pools.d/demo.conf")).unwrap();
    assert!(pool_conf.contains("pm.status_listen = "), "{pool_conf}");
    assert!(pool_conf.contains("ping.path = /ping"), "{pool_conf}");
    let global = std::fs::read_to_string(root.join("php-fpm.conf")).unwrap();
    assert!(global.contains("process_control_timeout = 10s"), "{global}");

    // The exporter's series, exactly named, and a clean promtool lint.
    for name in [
        "phpfpm_up",
        "phpfpm_scrape_failures",
        "phpfpm_start_since",
        "phpfpm_accepted_connections",
        "phpfpm_listen_queue",
        "phpfpm_max_listen_queue",
        "phpfpm_listen_queue_length",
        "phpfpm_idle_processes",
        "phpfpm_active_processes",
        "phpfpm_total_processes",
        "phpfpm_max_active_processes",
        "phpfpm_max_children_reached",
        "phpfpm_slow_requests",
        "phpfpm_manager_scrape_duration_seconds_bucket",
        "phpfpm_manager_pm_max_children",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&format!("{name}{{"))),
            "no {name} series in\n{body}"
        );
    }
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool rejected /metrics:\n{e}\n{body}"));

    let (code, ready) = d.get("/health/ready").unwrap();
    assert_eq!(code, 200, "{ready}");
    let (code, live) = d.get("/health/live").unwrap();
    assert_eq!((code, live.as_str()), (200, r#"{"status":"ok"}"#));
    let (code, pool) = d.get("/api/v1/pools/demo").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&pool).unwrap();
    assert_eq!(v["name"], "demo");
    assert_eq!(v["master"]["running"], true);
    assert_eq!(v["pm"]["max_children"], 4);
    let (code, missing) = d.get("/api/v1/pools/nope").unwrap();
    assert_eq!(code, 404);
    let v: serde_json::Value = serde_json::from_str(&missing).unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    // Graceful stop: exit 0, and no process of this test's directory left.
    // The check below sees workers, whose command line names only the pool.
    let running = d.dir.leftovers();
    assert!(
        running.iter().any(|p| p.contains("php-fpm: pool demo")),
        "php-fpm workers should be running: {running:?}"
    );
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    let left = d.dir.leftovers();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(
        d.log().contains("Stopped php-fpm master gracefully"),
        "{}",
        d.log()
    );
    // A clean stop removes the manager's own sockets.
    let socks: Vec<_> = std::fs::read_dir(root.join("sockets"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(socks.is_empty(), "socket files left: {socks:?}");
    // php-fpm says "using inherited socket" once per socket; it is logged once.
    let log = d.log();
    assert_eq!(log.matches("using inherited socket").count(), 2, "{log}");
}

#[test]
fn runtime_dir_flag_moves_history_too() {
    let dir = crate::support::TestDir::new("rtflag");
    let mut d = TestDaemon::start_with(
        dir,
        crate::support::free_port(),
        None,
        &[],
        &crate::support::manager_bin(),
        &["--runtime-dir", "elsewhere"],
    );
    d.wait_metrics(Duration::from_secs(30), demo_up)
        .unwrap_or_else(|| panic!("demo pool not up; log:\n{}", d.log()));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
    assert!(d.dir.join("elsewhere/data.db").is_file(), "{}", d.log());
    assert!(!d.dir.join("var").exists(), "./var was created");
}

#[test]
fn repeated_sigint_still_shuts_down_cleanly() {
    let mut d = TestDaemon::start("sigint", None, &[]);
    d.wait_metrics(Duration::from_secs(30), demo_up)
        .unwrap_or_else(|| panic!("demo pool not up within 30s; log:\n{}", d.log()));
    for _ in 0..3 {
        d.signal(Signal::SIGINT);
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = d.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    let left = d.dir.leftovers();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn per_process_metrics_pass_promtool_and_use_slots() {
    let config = "monitoring:\n  collect_interval: 1s\n  per_process_metrics: true\n\
                  pools:\n  - name: app\n    pm: static\n    max_workers: 3\n";
    let d = TestDaemon::start("perproc", Some(config), &[]);
    let body = d
        .wait_metrics(Duration::from_secs(30), |b| {
            b.lines()
                .any(|l| l.starts_with("phpfpm_up{pool=\"app\"") && l.ends_with(" 1"))
        })
        .unwrap_or_else(|| panic!("pool not up within 30s; log:\n{}", d.log()));
    let slots: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("phpfpm_process_requests{"))
        .collect();
    assert_eq!(slots.len(), 3, "{body}");
    for child in ["child=\"0\"", "child=\"1\"", "child=\"2\""] {
        assert!(slots.iter().any(|l| l.contains(child)), "{slots:?}");
    }
    assert!(body.contains("phpfpm_process_state{"), "{body}");
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool rejected /metrics:\n{e}"));
}

#[test]
fn a_pool_that_fails_php_fpm_t_is_reported_and_others_run() {
    // php-fpm rejects an unknown pool directive; the manager's own checks
    // cannot know every directive, so php-fpm -t is the judge.
    let config = "pools:\n  - name: good\n    pm: static\n    max_workers: 1\n\
                  \n  - name: bad\n    pm: static\n    max_workers: 1\n    extra_settings:\n      no_such_directive: 1\n";
    let d = TestDaemon::start("badpool", Some(config), &[]);
    let body = d
        .wait_metrics(Duration::from_secs(30), |b| {
            b.lines()
                .any(|l| l.starts_with("phpfpm_up{pool=\"good\"") && l.ends_with(" 1"))
                && b.lines().any(|l| {
                    l.starts_with("phpfpm_manager_pool_failed{pool=\"bad\"") && l.ends_with(" 1")
                })
        })
        .unwrap_or_else(|| panic!("expected good up and bad failed; log:\n{}", d.log()));
    assert!(body
        .lines()
        .any(|l| l.starts_with("phpfpm_up{pool=\"bad\"") && l.ends_with(" 0")));
    let (code, pool) = d.get("/api/v1/pools/bad").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&pool).unwrap();
    let failed = v["master"]["failed"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        failed.contains("php-fpm -t rejected the configuration"),
        "{failed}"
    );
    assert!(failed.contains("no_such_directive"), "{failed}");
    let (code, _) = d.get("/health/ready").unwrap();
    assert_eq!(code, 503);
    // A refused config is retried slowly (a reload applies a fix at once),
    // not in a loop of php-fpm -t runs.
    let attempts = |d: &TestDaemon| {
        d.log()
            .lines()
            .filter(|l| l.contains("Cannot start the pool") && l.contains("pool=\"bad\""))
            .count()
    };
    let before = attempts(&d);
    assert!(before >= 1, "{}", d.log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(attempts(&d), before, "retried at once:\n{}", d.log());
    assert!(d.log().contains("retrying in 60s"), "{}", d.log());
}

#[test]
fn history_and_events_are_stored_and_served() {
    let config = "monitoring:\n  collect_interval: 1s\n  idle_interval: 1s\n\
                  pools:\n  - name: app\n    pm: static\n    max_workers: 2\n";
    let mut d = TestDaemon::start("history", Some(config), &[]);
    d.wait_metrics(Duration::from_secs(30), |b| {
        b.lines().any(|l| {
            l.starts_with("phpfpm_manager_storage_samples_written_total") && !l.ends_with(" 0")
        })
    })
    .unwrap_or_else(|| panic!("nothing stored; log:\n{}", d.log()));
    // Two points need two flushes of the writer: on a loaded machine that
    // can take a while, so the deadline is generous.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (code, body) = d
            .get("/api/v1/pools/app/metrics?metric=phpfpm_total_processes&step=1s")
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let points = v["series"][0]["points"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        if points >= 2 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no history: {body}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(body["metric"], "phpfpm_total_processes");
    let (code, err) = d
        .get("/api/v1/pools/app/metrics?metric=x&from=yesterday")
        .unwrap();
    assert_eq!(code, 400, "{err}");
    assert!(err.contains("invalid_parameter"), "{err}");
    let (code, ev) = d.get("/api/v1/events?type=manager_start").unwrap();
    assert_eq!(code, 200, "{ev}");
    assert!(ev.contains("manager_start"), "{ev}");
    // The file is where the config says, and it survives a clean stop.
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0), "{}", d.log());
    assert!(d.dir.join("var/phpfpm-manager/data.db").is_file());
}

#[test]
fn a_database_file_that_is_not_sqlite_stops_the_start_and_is_kept() {
    let dir = crate::support::TestDir::new("badb");
    std::fs::create_dir_all(dir.join("var/phpfpm-manager")).unwrap();
    let db = dir.join("var/phpfpm-manager/data.db");
    std::fs::write(&db, "this is not a database, it is my notes\n").unwrap();
    let mut d = TestDaemon::start_in(dir, None, &[]);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(1), "{}", d.log());
    assert!(d.log().contains("data.db"), "{}", d.log());
    assert_eq!(
        std::fs::read_to_string(&db).unwrap(),
        "this is not a database, it is my notes\n"
    );
}

#[test]
fn a_second_manager_on_the_same_runtime_dir_is_refused() {
    let config = "pools:\n  - name: one\n    pm: static\n    max_workers: 1\n";
    let d = TestDaemon::start("twice", Some(config), &[]);
    d.wait_metrics(Duration::from_secs(30), |b| {
        b.lines()
            .any(|l| l.starts_with("phpfpm_up{pool=\"one\"") && l.ends_with(" 1"))
    })
    .unwrap_or_else(|| panic!("pool not up; log:\n{}", d.log()));
    let pid_before = serde_json::from_str::<serde_json::Value>(&d.pool_json("one")).unwrap()
        ["master"]["pid"]
        .clone();
    let port = crate::support::free_port();
    let out = std::process::Command::new(crate::support::manager_bin())
        .args(["run", "--config", "config.yaml"])
        .current_dir(&d.dir.path)
        .env(
            "PHPFPM_MANAGER_SERVER__BIND_ADDRESS",
            format!("127.0.0.1:{port}"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("another phpfpm-manager"), "{text}");
    assert!(text.contains("--replace"), "{text}");
    // The first manager and its master are untouched.
    let v: serde_json::Value = serde_json::from_str(&d.pool_json("one")).unwrap();
    assert_eq!(v["master"]["pid"], pid_before);
    assert_eq!(v["up"], true);
}
