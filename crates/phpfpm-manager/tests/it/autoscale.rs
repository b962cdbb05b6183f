//! The autoscaler acting on real php-fpm behind real nginx: the cap of an
//! autoscaled pool follows the memory budget and the learned worker size by
//! zero-drop hand-overs, the applied cap survives a `kill -9` of the manager
//! and is adopted, an operator's pin holds and is released, a reload keeps
//! what was learned, and bad controls are refused without changing anything.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{manager_bin, wait_for, wrk, TestDaemon, TestDir, TestNginx};

const WORK_PHP: &str = "<?php usleep(20000); echo 'ok';\n";

/// A config with one autoscaled pool `a` (and an observed pool when asked),
/// memory read every second so the worker size is learned quickly.
fn config(dir: &TestDir, budget: &str, observed: Option<&str>) -> String {
    config_with(dir, budget, observed, "")
}

/// The same, with extra lines in pool `a`'s `scaling:` section.
fn config_with(dir: &TestDir, budget: &str, observed: Option<&str>, scaling: &str) -> String {
    let mut text = format!(
        "monitoring:\n  collect_interval: 1s\n  memory_interval: 1s\n\
         scaling:\n  memory_budget: {budget}\n\
         pools:\n\
         \x20 - name: a\n    max_workers: 12\n    chdir: {www}\n\
         \x20   scaling:\n      enabled: true\n      min_workers: 1\n      max_workers: 12\n{scaling}",
        www = dir.join("www").display()
    );
    if let Some(sock) = observed {
        text.push_str(&format!(
            "\x20 - name: obs\n    supervise: false\n    fastcgi_endpoint: unix:{sock}\n"
        ));
    }
    text
}

fn prepare(tag: &str) -> TestDir {
    let dir = TestDir::new(tag);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("work.php"), WORK_PHP).unwrap();
    dir
}

fn sock(dir: &TestDir, pool: &str) -> std::path::PathBuf {
    dir.join(&format!("var/phpfpm-manager/sockets/{pool}.sock"))
}

fn json(d: &TestDaemon, path: &str) -> serde_json::Value {
    d.get(path)
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A field that must exist: a missing one fails the test instead of
/// comparing equal to another missing one.
fn field(v: &serde_json::Value, ptr: &str) -> serde_json::Value {
    v.pointer(ptr)
        .cloned()
        .unwrap_or_else(|| panic!("{ptr} missing in {v}"))
}

/// `pm.max_children` the pool's running master was started with (`None`
/// until a master runs and answers its status page).
fn running_cap(d: &TestDaemon, pool: &str) -> Option<u64> {
    let v = json(d, &format!("/api/v1/pools/{pool}"));
    let serving = v.pointer("/master/running") == Some(&true.into())
        && v.pointer("/up") == Some(&true.into());
    serving
        .then(|| json(d, &format!("/api/v1/pools/{pool}/scale")))
        .and_then(|s| s.pointer("/applied_workers").and_then(|n| n.as_u64()))
}

fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    crate::operate::call(addr, "POST", path, Some(body))
}

fn events(d: &TestDaemon, kind: &str) -> Vec<serde_json::Value> {
    json(
        d,
        &format!("/api/v1/events/recent?pool=a&type={kind}&limit=500"),
    )
    .pointer("/events")
    .and_then(|v| v.as_array().cloned())
    .unwrap_or_default()
}

#[test]
fn cap_follows_the_budget_by_hand_over_under_load_and_survives_kill_9() {
    let dir = prepare("autoscale-act");
    // Pinned at 2 in the config: the test releases it under load, and the
    // autoscaler then moves the cap itself.
    let cfg = config_with(&dir, "384MiB", None, "      pin: 2\n");
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    let www = d.dir.join("www");
    let s = sock(&d.dir, "a");
    assert!(
        wait_for(Duration::from_secs(20), || running_cap(&d, "a") == Some(2)),
        "pool a never ran pinned at 2; log:\n{}",
        d.log()
    );
    let pool = json(&d, "/api/v1/pools/a");
    assert_eq!(field(&pool, "/pm/pm"), "static", "{pool}");
    let first_pid = field(&pool, "/master/pid");

    // Load arrives; the pin is released. The pool goes back to `ondemand`
    // at the cap the budget allows for the assumed worker size (384 MiB /
    // 64 MiB = 6); the workers measured so far are a few MB each, so the
    // budget holds the scaling maximum, and the autoscaler moves the cap
    // to 12 by a hand-over while requests keep flowing.
    let nginx = TestNginx::start(&d.dir, &[("/", s.as_path(), www.as_path())]);
    let load = wrk(&nginx.url("/work.php"), 6, 12);
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = post(d.addr, "/api/v1/pools/a/scaling", r#"{"action":"unpin"}"#);
    assert_eq!(code, 200, "{body}");
    let grew = wait_for(Duration::from_secs(40), || running_cap(&d, "a") == Some(12));
    let result = load.join().unwrap();
    assert!(grew, "the cap never reached 12; log:\n{}", d.log());
    assert!(result.requests > 100, "{result:?}");
    assert_eq!(result.failures(), 0, "failed requests: {result:?}");
    let pool = json(&d, "/api/v1/pools/a");
    assert_eq!(field(&pool, "/pm/pm"), "ondemand", "{pool}");
    assert_ne!(
        field(&pool, "/master/pid"),
        first_pid,
        "no hand-over happened"
    );

    // The event says why, with the figures behind it.
    let changes: Vec<_> = events(&d, "scale_decision")
        .into_iter()
        .filter(|e| e["details"]["to_workers"].as_u64() == Some(12) && e["actor"] == "autoscaler")
        .collect();
    assert!(
        !changes.is_empty(),
        "{}",
        json(&d, "/api/v1/events/recent?limit=200")
    );
    let details = &changes[0]["details"];
    assert!(details["rule"].is_string(), "{details}");
    assert!(
        details["p95_pss_bytes"]
            .as_u64()
            .is_some_and(|b| b > 1 << 20),
        "{details}"
    );
    assert_eq!(details["memory_budget_bytes"], 384u64 << 20, "{details}");
    let pool_change = events(&d, "pool_change");
    assert!(
        pool_change.iter().any(|e| e["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("autoscaler"))),
        "{pool_change:?}"
    );
    // Metrics show it too.
    let metrics = d
        .wait_metrics(Duration::from_secs(5), |m| {
            m.contains("phpfpm_manager_autoscaler_applied_workers{pool=\"a\"} 12")
        })
        .unwrap_or_else(|| panic!("no applied_workers 12:\n{}", d.get("/metrics").unwrap().1));
    assert!(metrics.contains("phpfpm_manager_autoscaler_changes_total{pool=\"a\""));
    crate::support::promtool_check(&metrics).unwrap();

    // kill -9 the manager: the next one adopts the same master and keeps
    // the applied cap instead of rendering the starting size again.
    let pid_after_change = field(&json(&d, "/api/v1/pools/a"), "/master/pid");
    d.signal(Signal::SIGKILL);
    let mut d = d;
    d.wait_exit(Duration::from_secs(5));
    let addr = d.addr;
    let dir = d.into_dir();
    assert!(dir.join("var/phpfpm-manager/scale/a.json").is_file());
    let d2 = TestDaemon::start_at(dir, addr.port(), None, &[]);
    assert!(
        wait_for(Duration::from_secs(20), || {
            json(&d2, "/api/v1/pools/a").pointer("/master/adopted") == Some(&true.into())
        }),
        "not adopted; log:\n{}",
        d2.log()
    );
    let pool = json(&d2, "/api/v1/pools/a");
    assert_eq!(field(&pool, "/master/pid"), pid_after_change, "{pool}");
    assert_eq!(field(&pool, "/pm/max_children"), 12, "{pool}");
    drop(nginx);
}

#[test]
fn a_pin_holds_against_the_policy_and_is_released() {
    let dir = prepare("autoscale-pin");
    let cfg = config(&dir, "1GiB", None);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    assert!(
        wait_for(Duration::from_secs(20), || running_cap(&d, "a").is_some()),
        "pool a never ran; log:\n{}",
        d.log()
    );
    let (code, body) = post(
        d.addr,
        "/api/v1/pools/a/scaling",
        r#"{"action":"pin","workers":3,"reason":"deploy"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["override"], "pinned", "{body}");
    assert_eq!(body["applied_workers"], 3, "{body}");
    let pool = json(&d, "/api/v1/pools/a");
    assert_eq!(field(&pool, "/pm/pm"), "static");
    assert_eq!(field(&pool, "/pm/max_children"), 3);
    // The policy would give this pool 12 (1 GiB budget); the pin holds
    // across several looks.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(running_cap(&d, "a"), Some(3));
    let scale = json(&d, "/api/v1/pools/a/scale");
    assert_eq!(field(&scale, "/override"), "pinned", "{scale}");
    assert_eq!(field(&scale, "/pinned_workers"), 3, "{scale}");
    // The control is an event with its actor.
    let ev = events(&d, "api_action");
    assert!(
        ev.iter()
            .any(|e| e["details"]["action"] == "pin" && e["actor"] == "api"),
        "{ev:?}"
    );
    // The CLI talks to the same route.
    let out = std::process::Command::new(manager_bin())
        .args(["scaling", "a", "unpin", "--address", &d.addr.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(10), || running_cap(&d, "a") == Some(12)),
        "released pin did not return to the planned cap; {}",
        json(&d, "/api/v1/pools/a")
    );
    assert_eq!(field(&json(&d, "/api/v1/pools/a"), "/pm/pm"), "ondemand");
}

#[test]
fn bad_controls_are_refused_and_change_nothing() {
    let dir = prepare("autoscale-bad");
    // An observed pool pointing at the autoscaled pool's own socket.
    let observed = sock(&dir, "a").display().to_string();
    let cfg = config(&dir, "1GiB", Some(&observed));
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    assert!(
        wait_for(Duration::from_secs(20), || running_cap(&d, "a").is_some()),
        "pool a never ran; log:\n{}",
        d.log()
    );
    let before = json(&d, "/api/v1/pools/a");
    for (path, body, want) in [
        (
            "/api/v1/pools/a/scaling",
            r#"{"action":"pin","workers":99}"#,
            400,
        ),
        (
            "/api/v1/pools/a/scaling",
            r#"{"action":"pin","workers":0}"#,
            400,
        ),
        ("/api/v1/pools/a/scaling", r#"{"action":"pin"}"#, 400),
        ("/api/v1/pools/a/scaling", r#"{"action":"grow"}"#, 400),
        (
            "/api/v1/pools/a/scaling",
            r#"{"action":"pause","workers":2}"#,
            400,
        ),
        (
            "/api/v1/pools/a/scaling",
            r#"{"action":"pin","workers":2,"until":"yesterday"}"#,
            400,
        ),
        (
            "/api/v1/pools/a/scaling",
            r#"{"action":"pin","workers":2,"until":"2001-01-01T00:00:00Z"}"#,
            400,
        ),
        ("/api/v1/pools/a/scaling", r#"not json"#, 400),
        (
            "/api/v1/pools/obs/scaling",
            r#"{"action":"pin","workers":2}"#,
            400,
        ),
        ("/api/v1/pools/nope/scaling", r#"{"action":"pause"}"#, 404),
    ] {
        let (code, answer) = post(d.addr, path, body);
        assert_eq!(code, want, "{path} {body}: {answer}");
        assert!(
            answer["error"]["code"].is_string(),
            "{path} {body}: {answer}"
        );
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let after = json(&d, "/api/v1/pools/a");
    assert_eq!(after["master"]["pid"], before["master"]["pid"]);
    assert_eq!(after["pm"], before["pm"]);
    // The CLI maps a refusal to exit 64.
    let out = std::process::Command::new(manager_bin())
        .args([
            "scaling",
            "a",
            "pin",
            "99",
            "--address",
            &d.addr.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside"));
}

#[test]
fn a_reload_with_unchanged_pools_keeps_what_was_learned() {
    let dir = prepare("autoscale-reload");
    let cfg = config(&dir, "1GiB", None);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    assert!(
        wait_for(Duration::from_secs(30), || running_cap(&d, "a") == Some(12)),
        "pool a never reached its planned cap; log:\n{}",
        d.log()
    );
    let before = json(&d, "/api/v1/pools/a/scale");
    let pid = field(&json(&d, "/api/v1/pools/a"), "/master/pid");
    let changes = field(&before, "/changes");
    d.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(3));
    let after = json(&d, "/api/v1/pools/a/scale");
    assert_eq!(field(&after, "/changes"), changes, "{after}");
    assert_eq!(field(&after, "/applied_workers"), 12, "{after}");
    assert_eq!(field(&json(&d, "/api/v1/pools/a"), "/master/pid"), pid);
    assert!(d.log().contains("SIGHUP received"));
}

/// The additive scale-up on real php-fpm: a bigger cap for an `ondemand`
/// pool starts a second master on the same socket while the first keeps
/// serving; both masters' workers are seen as the pool's; the second master
/// is adopted after a `kill -9` of the manager, stopped when the cap falls
/// back to the first master's, and a smaller cap still is a hand-over. No
/// request fails through any of it.
#[test]
fn growth_adds_a_second_master_beside_the_warm_one_and_shrinking_stops_it() {
    let dir = prepare("autoscale-additive");
    let cfg = |cap: u32| {
        format!(
            "phpfpm:\n  additive_scale_up: true\n\
             monitoring:\n  collect_interval: 1s\n\
             pools:\n\
             \x20 - name: a\n    pm: ondemand\n    max_workers: {cap}\n    chdir: {www}\n",
            www = dir.join("www").display()
        )
    };
    let (c4, c10, c3) = (cfg(4), cfg(10), cfg(3));
    let d = TestDaemon::start_in(dir, Some(&c4), &[]);
    let www = d.dir.join("www");
    let s = sock(&d.dir, "a");
    assert!(
        wait_for(Duration::from_secs(20), || running_cap(&d, "a") == Some(4)),
        "pool a never ran at 4; log:\n{}",
        d.log()
    );
    let first = field(&json(&d, "/api/v1/pools/a"), "/master/pid");
    let nginx = TestNginx::start(&d.dir, &[("/", s.as_path(), www.as_path())]);
    let load = wrk(&nginx.url("/work.php"), 8, 30);
    std::thread::sleep(Duration::from_secs(2));

    // Growth: a second master with the 6 more workers.
    let reload = |d: &TestDaemon, text: &str| {
        std::fs::write(d.dir.join("config.yaml"), text).unwrap();
        d.signal(Signal::SIGHUP);
    };
    reload(&d, &c10);
    let second = |d: &TestDaemon| {
        json(d, "/api/v1/pools/a")
            .pointer("/master/second")
            .cloned()
    };
    assert!(
        wait_for(Duration::from_secs(15), || second(&d)
            .is_some_and(|x| x["workers"] == 6)),
        "no second master; log:\n{}",
        d.log()
    );
    let pool = json(&d, "/api/v1/pools/a");
    assert_eq!(
        field(&pool, "/master/pid"),
        first,
        "the first master was replaced: {pool}"
    );
    assert_eq!(field(&pool, "/pm/max_children"), 10, "{pool}");
    let second_pid = field(&pool, "/master/second/pid").as_u64().unwrap();
    // Both masters' workers are the pool's: more than the first master's 4
    // are busy or idle under 8 connections.
    assert!(
        wait_for(Duration::from_secs(10), || json(&d, "/api/v1/pools/a")
            .pointer("/workers/total")
            .and_then(|v| v.as_u64())
            .is_some_and(|n| n > 4)),
        "the second master's workers are not counted: {}",
        json(&d, "/api/v1/pools/a")
    );
    let change = events(&d, "pool_change");
    assert!(
        change.iter().any(|e| e["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("second master with 6 workers"))),
        "{change:?}"
    );

    // kill -9 of the manager: the next one adopts both masters.
    d.signal(Signal::SIGKILL);
    let mut d = d;
    d.wait_exit(Duration::from_secs(5));
    let addr = d.addr;
    let dir = d.into_dir();
    let d = TestDaemon::start_at(dir, addr.port(), None, &[]);
    assert!(
        wait_for(Duration::from_secs(20), || {
            json(&d, "/api/v1/pools/a").pointer("/master/adopted") == Some(&true.into())
        }),
        "not adopted; log:\n{}",
        d.log()
    );
    let pool = json(&d, "/api/v1/pools/a");
    assert_eq!(field(&pool, "/master/pid"), first, "{pool}");
    assert_eq!(field(&pool, "/master/second/pid"), second_pid, "{pool}");
    assert_eq!(field(&pool, "/pm/max_children"), 10, "{pool}");

    // Back to the first master's cap: the second master stops, the first
    // serves on.
    reload(&d, &c4);
    assert!(
        wait_for(Duration::from_secs(15), || second(&d)
            == Some(serde_json::Value::Null)
            && !std::path::Path::new(&format!("/proc/{second_pid}")).exists()),
        "the second master still runs; log:\n{}",
        d.log()
    );
    let pool = json(&d, "/api/v1/pools/a");
    assert_eq!(field(&pool, "/master/pid"), first, "{pool}");
    assert_eq!(field(&pool, "/pm/max_children"), 4, "{pool}");

    // Below it: a hand-over to a new master.
    reload(&d, &c3);
    assert!(
        wait_for(Duration::from_secs(15), || {
            let p = json(&d, "/api/v1/pools/a");
            p.pointer("/master/pid") != Some(&first)
                && p.pointer("/pm/max_children") == Some(&3.into())
        }),
        "no hand-over to 3; log:\n{}",
        d.log()
    );
    let result = load.join().unwrap();
    assert!(result.requests > 200, "{result:?}");
    assert_eq!(result.failures(), 0, "failed requests: {result:?}");
    drop(nginx);
}
