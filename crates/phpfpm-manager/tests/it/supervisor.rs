//! The supervisor in production conditions, with real php-fpm, real nginx and
//! bounded `wrk` load on loopback: zero-drop pool changes that leave other
//! pools untouched, crash recovery, surviving the manager's own death, and
//! refusing a config php-fpm rejects.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

use crate::support::{processes_mentioning, rt, wrk, TestDaemon, TestDir, TestNginx};

/// A script that does a little work, and one that reports OPcache's start.
const WORK_PHP: &str = "<?php usleep(2000); echo 'ok';\n";
const OPCACHE_PHP: &str =
    "<?php $s = function_exists('opcache_get_status') ? opcache_get_status(false) : false;\n\
    echo $s ? $s['opcache_statistics']['start_time'] : 'none';\n";

fn config(dir: &TestDir, a_workers: u32) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n\
         phpfpm:\n  process_control_timeout: 10s\n\
         pools:\n\
         \x20 - name: a\n    pm: static\n    max_workers: {a_workers}\n    listen_mode: \"0666\"\n    chdir: {www}\n\
         \x20 - name: b\n    pm: static\n    max_workers: 2\n    listen_mode: \"0666\"\n    chdir: {www}\n",
        www = dir.join("www").display()
    )
}

fn prepare(tag: &str) -> TestDir {
    let dir = TestDir::new(tag);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("work.php"), WORK_PHP).unwrap();
    std::fs::write(www.join("oc.php"), OPCACHE_PHP).unwrap();
    dir
}

fn sock(dir: &TestDir, pool: &str) -> std::path::PathBuf {
    dir.join(&format!("var/phpfpm-manager/sockets/{pool}.sock"))
}

fn pools_up(d: &TestDaemon, pools: &[&str]) {
    d.wait_metrics(Duration::from_secs(15), |b| {
        pools.iter().all(|p| {
            b.lines()
                .any(|l| l.starts_with(&format!("phpfpm_up{{pool=\"{p}\"")) && l.ends_with(" 1"))
        })
    })
    .unwrap_or_else(|| panic!("pools {pools:?} not up within 15s; log:\n{}", d.log()));
}

fn pool_field(d: &TestDaemon, pool: &str, ptr: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.pool_json(pool)).unwrap_or_default();
    v.pointer(ptr).cloned().unwrap_or_default()
}

/// Runs a PHP script of `pool` directly over FastCGI.
fn php(dir: &TestDir, pool: &str, script: &str) -> String {
    let ep = Endpoint::Unix(sock(dir, pool));
    let file = dir.join("www").join(script).display().to_string();
    let t = Timeouts {
        connect: Duration::from_secs(1),
        total: Duration::from_secs(5),
    };
    let reply = rt().block_on(fastcgi::get(&ep, &file, "", t)).unwrap();
    let out = String::from_utf8_lossy(&reply.stdout).into_owned();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn pool_changes_under_load_drop_nothing_and_leave_other_pools_alone() {
    let dir = prepare("handover");
    let cfg = config(&dir, 2);
    std::fs::write(dir.join("config.yaml"), &cfg).unwrap();
    let root = dir.join("www");
    let sa = sock(&dir, "a");
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let nginx = TestNginx::start(&d.dir, &[("/", sa.as_path(), root.as_path())]);

    // Pool b's identity before: master pid and OPcache start time.
    let b_pid = pool_field(&d, "b", "/master/pid");
    let b_opcache = php(&d.dir, "b", "oc.php");
    assert!(
        b_opcache.parse::<u64>().is_ok(),
        "OPcache not enabled? {b_opcache:?}"
    );

    let load = wrk(&nginx.url("/work.php"), 8, 12);
    std::thread::sleep(Duration::from_millis(1000));
    let mut generations = Vec::new();
    for (i, workers) in [4, 3, 6, 2, 5, 3].into_iter().enumerate() {
        let before = pool_field(&d, "a", "/master/generation").as_u64().unwrap();
        std::fs::write(d.dir.join("config.yaml"), config(&d.dir, workers)).unwrap();
        d.signal(Signal::SIGHUP);
        let applied = wait_for(Duration::from_secs(10), || {
            pool_field(&d, "a", "/master/generation")
                .as_u64()
                .unwrap_or(0)
                > before
        });
        assert!(applied, "change {i} not applied; log:\n{}", d.log());
        generations.push(pool_field(&d, "a", "/master/generation"));
        std::thread::sleep(Duration::from_millis(1200));
    }
    let res = load.join().unwrap();
    assert!(
        res.requests > 500,
        "too little load to mean anything: {}",
        res.output
    );
    assert_eq!(
        res.failures(),
        0,
        "failed requests during 6 changes:\n{}",
        res.output
    );
    let err_log = std::fs::read_to_string(d.dir.join("nginx/error.log")).unwrap_or_default();
    assert!(
        !err_log.contains("upstream"),
        "nginx saw upstream errors:\n{err_log}"
    );

    // The last change is in force, and the other pool was not touched.
    d.wait_metrics(Duration::from_secs(5), |b| {
        b.lines()
            .any(|l| l.starts_with("phpfpm_total_processes{pool=\"a\"") && l.ends_with(" 3"))
    })
    .expect("pool a runs 3 workers after the last change");
    assert_eq!(
        pool_field(&d, "b", "/master/pid"),
        b_pid,
        "pool b's master was restarted"
    );
    assert_eq!(
        php(&d.dir, "b", "oc.php"),
        b_opcache,
        "pool b's OPcache was reset"
    );
    assert_eq!(
        pool_field(&d, "b", "/master/generation"),
        serde_json::json!(1)
    );
    drop(nginx);
}

#[test]
fn a_killed_master_is_serving_again_within_two_seconds() {
    let dir = prepare("crash");
    std::fs::write(dir.join("config.yaml"), config(&dir, 2)).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let pid = pool_field(&d, "a", "/master/pid").as_u64().unwrap() as i32;
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let ep = Endpoint::Unix(sock(&d.dir, "a"));
    let t = Timeouts {
        connect: Duration::from_millis(200),
        total: Duration::from_millis(500),
    };
    let rt = rt();
    let back = wait_for(Duration::from_secs(2), || {
        rt.block_on(fastcgi::get(&ep, "/ping", "", t))
            .is_ok_and(|r| String::from_utf8_lossy(&r.stdout).contains("pong"))
            && pool_field(&d, "a", "/master/pid").as_u64() != Some(pid as u64)
    });
    let took = killed.elapsed();
    assert!(
        back,
        "pool a not answering ping 2s after its master was killed; log:\n{}",
        d.log()
    );
    eprintln!("crash to serving: {took:?}");
    // The exit is recorded: counter, reason, metric.
    assert_eq!(
        pool_field(&d, "a", "/master/restarts"),
        serde_json::json!(1)
    );
    let last_exit = pool_field(&d, "a", "/master/last_exit");
    assert!(
        last_exit.as_str().unwrap_or_default().contains("SIGKILL"),
        "{last_exit}"
    );
    d.wait_metrics(Duration::from_secs(3), |b| {
        b.contains("phpfpm_manager_master_restarts_total{pool=\"a\"} 1")
    })
    .expect("restart counted in /metrics");
    // The dead master's workers did not outlive it (they stay in its process
    // group; zombies waiting for init to reap them do not count).
    let members = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
            .filter_map(fpm_kernel::procfs::read_stat)
            .filter(|st| st.pgrp == pid as u32 && st.state != 'Z')
            .map(|st| format!("{} {}", st.pid, st.state))
            .collect()
    };
    let gone = wait_for(Duration::from_secs(1), || members().is_empty());
    let orphans = members();
    assert!(
        gone,
        "workers of the killed master are still running: {orphans:?}"
    );
}

#[test]
fn killing_the_manager_drops_nothing_and_the_next_one_adopts() {
    let dir = prepare("adopt");
    std::fs::write(dir.join("config.yaml"), config(&dir, 3)).unwrap();
    let root = dir.join("www");
    let sa = sock(&dir, "a");
    let mut d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let nginx = TestNginx::start(&d.dir, &[("/", sa.as_path(), root.as_path())]);
    let a_pid = pool_field(&d, "a", "/master/pid");
    let b_pid = pool_field(&d, "b", "/master/pid");
    let a_opcache = php(&d.dir, "a", "oc.php");
    let port = d.addr.port();

    let load = wrk(&nginx.url("/work.php"), 8, 6);
    std::thread::sleep(Duration::from_millis(1500));
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let dir = d.into_dir();
    std::thread::sleep(Duration::from_millis(1000));
    let d = TestDaemon::start_at(dir, port, None, &[]);
    pools_up(&d, &["a", "b"]);
    let res = load.join().unwrap();
    assert!(res.requests > 300, "too little load: {}", res.output);
    assert_eq!(
        res.failures(),
        0,
        "requests failed while the manager was down:\n{}",
        res.output
    );

    assert_eq!(
        pool_field(&d, "a", "/master/pid"),
        a_pid,
        "master a was restarted"
    );
    assert_eq!(
        pool_field(&d, "b", "/master/pid"),
        b_pid,
        "master b was restarted"
    );
    assert_eq!(
        pool_field(&d, "a", "/master/adopted"),
        serde_json::json!(true)
    );
    assert_eq!(php(&d.dir, "a", "oc.php"), a_opcache, "OPcache was reset");
    assert!(
        d.log().contains("Adopted the running php-fpm master"),
        "{}",
        d.log()
    );
    drop(nginx);
    // And the adopting manager still stops everything cleanly.
    let mut d = d;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0), "{}", d.log());
    let left = processes_mentioning(&d.dir.path);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_change_php_fpm_rejects_is_refused_and_the_pool_keeps_serving() {
    let dir = prepare("refuse");
    std::fs::write(dir.join("config.yaml"), config(&dir, 2)).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let pid = pool_field(&d, "a", "/master/pid");
    let conf_before =
        std::fs::read_to_string(d.dir.join("var/phpfpm-manager/pools.d/a.conf")).unwrap();
    // Valid for the manager, rejected by php-fpm -t.
    let bad = config(&d.dir, 2).replace(
        "  - name: b\n",
        "    extra_settings:\n      not_a_php_fpm_directive: yes\n  - name: b\n",
    );
    std::fs::write(d.dir.join("config.yaml"), bad).unwrap();
    d.signal(Signal::SIGHUP);
    let refused = wait_for(Duration::from_secs(10), || {
        pool_field(&d, "a", "/master/last_apply_error")
            .as_str()
            .is_some_and(|e| e.contains("php-fpm -t rejected"))
    });
    assert!(refused, "no refusal reported; log:\n{}", d.log());
    assert_eq!(
        pool_field(&d, "a", "/master/pid"),
        pid,
        "the master was replaced"
    );
    assert_eq!(
        std::fs::read_to_string(d.dir.join("var/phpfpm-manager/pools.d/a.conf")).unwrap(),
        conf_before,
        "the file in use was changed"
    );
    assert_eq!(php(&d.dir, "a", "work.php"), "ok");
    assert!(
        d.log().contains("not_a_php_fpm_directive"),
        "php-fpm's own message is logged"
    );
}

#[test]
fn an_invalid_config_on_sighup_changes_nothing() {
    let dir = prepare("badreload");
    std::fs::write(dir.join("config.yaml"), config(&dir, 2)).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let gen = pool_field(&d, "a", "/master/generation");
    std::fs::write(
        d.dir.join("config.yaml"),
        "pools:\n  - name: a\n    max_workers: lots\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(5), || d
            .log()
            .contains("nothing was changed")),
        "{}",
        d.log()
    );
    assert!(
        d.log().contains("pools[0].max_workers: 'lots'"),
        "{}",
        d.log()
    );
    assert_eq!(pool_field(&d, "a", "/master/generation"), gen);
    assert_eq!(
        pool_field(&d, "b", "/master/running"),
        serde_json::json!(true)
    );
    let _ = Path::new("");
}

#[test]
fn sighup_adds_and_removes_pools() {
    let dir = prepare("addremove");
    std::fs::write(dir.join("config.yaml"), config(&dir, 2)).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let b_master = pool_field(&d, "b", "/master/pid").as_u64().unwrap();
    let a_pid = pool_field(&d, "a", "/master/pid");
    let text = config(&d.dir, 2);
    let (head, _) = text.split_once("  - name: b").unwrap();
    let new = format!("{head}  - name: c\n    pm: static\n    max_workers: 1\n");
    std::fs::write(d.dir.join("config.yaml"), new).unwrap();
    d.signal(Signal::SIGHUP);
    pools_up(&d, &["a", "c"]);
    assert!(
        wait_for(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{b_master}"
        ))
        .exists()),
        "pool b's master still runs"
    );
    let (code, _) = d.get("/api/v1/pools/b").unwrap();
    assert_eq!(code, 404);
    assert_eq!(
        pool_field(&d, "a", "/master/pid"),
        a_pid,
        "unchanged pool a was touched"
    );
}
