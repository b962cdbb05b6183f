//! The supervisor in production conditions, with real php-fpm, real nginx and
//! bounded `wrk` load on loopback: zero-drop pool changes that leave other
//! pools untouched, crash recovery, surviving the manager's own death, and
//! refusing a config php-fpm rejects.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

use crate::support::{rt, wait_for, wrk, TestDaemon, TestDir, TestNginx};

/// A script that does a little work, one that names the worker serving it,
/// and one that reports OPcache's start.
const WORK_PHP: &str = "<?php usleep(2000); echo 'ok';\n";
const PID_PHP: &str = "<?php echo getmypid();\n";
const OPCACHE_PHP: &str =
    "<?php $s = function_exists('opcache_get_status') ? opcache_get_status(false) : false;\n\
    echo $s ? $s['opcache_statistics']['start_time'] : 'none';\n";

pub(crate) fn config(dir: &TestDir, a_workers: u32) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n\
         phpfpm:\n  process_control_timeout: 10s\n\
         pools:\n\
         \x20 - name: a\n    pm: static\n    max_workers: {a_workers}\n    chdir: {www}\n\
         \x20 - name: b\n    pm: static\n    max_workers: 2\n    chdir: {www}\n",
        www = dir.join("www").display()
    )
}

pub(crate) fn prepare(tag: &str) -> TestDir {
    let dir = TestDir::new(tag);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("work.php"), WORK_PHP).unwrap();
    std::fs::write(www.join("oc.php"), OPCACHE_PHP).unwrap();
    std::fs::write(www.join("pid.php"), PID_PHP).unwrap();
    dir
}

pub(crate) fn sock(dir: &TestDir, pool: &str) -> std::path::PathBuf {
    dir.join(&format!("var/phpfpm-manager/sockets/{pool}.sock"))
}

pub(crate) fn pools_up(d: &TestDaemon, pools: &[&str]) {
    d.wait_metrics(Duration::from_secs(30), |b| {
        pools.iter().all(|p| {
            b.lines()
                .any(|l| l.starts_with(&format!("phpfpm_up{{pool=\"{p}\"")) && l.ends_with(" 1"))
        })
    })
    .unwrap_or_else(|| panic!("pools {pools:?} not up within 30s; log:\n{}", d.log()));
}

/// A field of `GET /api/v1/pools/{pool}`; a missing field (or no answer)
/// fails the test, so "unchanged" can never mean "gone on both reads".
pub(crate) fn pool_field(d: &TestDaemon, pool: &str, ptr: &str) -> serde_json::Value {
    let text = d.pool_json(pool);
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET /api/v1/pools/{pool} is not JSON ({e}): {text:?}"));
    v.pointer(ptr)
        .cloned()
        .unwrap_or_else(|| panic!("no {ptr} in pool {pool}: {v}"))
}

/// Runs a PHP script of `pool` directly over FastCGI.
pub(crate) fn php(dir: &TestDir, pool: &str, script: &str) -> String {
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
        let applied = wait_for(Duration::from_secs(30), || {
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
    d.wait_metrics(Duration::from_secs(30), |b| {
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
fn a_killed_master_is_replaced_by_a_new_one_that_serves() {
    let dir = prepare("crash");
    std::fs::write(dir.join("config.yaml"), config(&dir, 2)).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let pid = pool_field(&d, "a", "/master/pid").as_u64().unwrap() as u32;
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    // A restart means: the manager names a new master pid (not none), that
    // process is a php-fpm master, and a request is served by one of *its*
    // workers (an orphaned worker of the old master could still answer).
    let mut new_pid = 0;
    let back = wait_for(Duration::from_secs(30), || {
        let Some(p) = pool_field(&d, "a", "/master/pid").as_u64() else {
            return false;
        };
        let p = p as u32;
        if p == pid || !is_fpm_master(p) {
            return false;
        }
        let served_by = php_try(&d.dir, "a", "pid.php").and_then(|t| t.trim().parse::<u32>().ok());
        if served_by
            .and_then(fpm_kernel::procfs::read_stat)
            .is_some_and(|st| st.ppid == p)
        {
            new_pid = p;
            return true;
        }
        false
    });
    let took = killed.elapsed();
    assert!(
        back,
        "no new master of pool a serving 30s after its master was killed; log:\n{}",
        d.log()
    );
    eprintln!("crash to serving by new master {new_pid}: {took:?}");
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
    d.wait_metrics(Duration::from_secs(10), |b| {
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
            .filter(|st| st.pgrp == pid && st.state != 'Z')
            .map(|st| format!("{} {}", st.pid, st.state))
            .collect()
    };
    let gone = wait_for(Duration::from_secs(30), || members().is_empty());
    let orphans = members();
    assert!(
        gone,
        "workers of the killed master are still running: {orphans:?}"
    );
}

/// Is `pid` a live php-fpm master (its title says so)?
pub(crate) fn is_fpm_master(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("php-fpm: master process"))
}

/// Like [`php`], but None when the request fails.
pub(crate) fn php_try(dir: &TestDir, pool: &str, script: &str) -> Option<String> {
    let ep = Endpoint::Unix(sock(dir, pool));
    let file = dir.join("www").join(script).display().to_string();
    let t = Timeouts {
        connect: Duration::from_secs(1),
        total: Duration::from_secs(5),
    };
    let reply = rt().block_on(fastcgi::get(&ep, &file, "", t)).ok()?;
    let out = String::from_utf8_lossy(&reply.stdout).into_owned();
    out.split("\r\n\r\n").nth(1).map(str::to_owned)
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
    let first_manager = d.child.id();

    let load = wrk(&nginx.url("/work.php"), 8, 6);
    std::thread::sleep(Duration::from_millis(1500));
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let dir = d.into_dir();
    std::thread::sleep(Duration::from_millis(1000));
    let d = TestDaemon::start_at(dir, port, None, &[]);
    pools_up(&d, &["a", "b"]);
    // The SIGKILLed manager left its record: the new one says so.
    let unclean = format!("\"pid\":{first_manager}");
    assert!(
        wait_for(Duration::from_secs(10), || d
            .get("/api/v1/events/recent?type=manager_unclean_stop")
            .is_ok_and(|(_, body)| body.contains(&unclean))),
        "no manager_unclean_stop event for pid {first_manager}; log:\n{}",
        d.log()
    );
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

    // A hand-over after the adoption goes through the socket recovered from
    // the adopted master (pidfd_getfd): under load, nothing fails.
    let (_, ev) = d.get("/api/v1/events/recent?type=adoption").unwrap();
    assert!(ev.contains("\"sockets_recovered\":true"), "{ev}");
    let gen = pool_field(&d, "a", "/master/generation").as_u64().unwrap();
    let load = wrk(&nginx.url("/work.php"), 8, 5);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(d.dir.join("config.yaml"), config(&d.dir, 4)).unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(30), || {
            pool_field(&d, "a", "/master/generation")
                .as_u64()
                .unwrap_or(0)
                > gen
        }),
        "change after adoption not applied; log:\n{}",
        d.log()
    );
    assert_ne!(pool_field(&d, "a", "/master/pid"), a_pid);
    // The master now runs is this manager's own, not the adopted one; b's is.
    assert_eq!(
        pool_field(&d, "a", "/master/adopted"),
        serde_json::json!(false)
    );
    assert_eq!(
        pool_field(&d, "b", "/master/adopted"),
        serde_json::json!(true)
    );
    let res = load.join().unwrap();
    assert!(res.requests > 200, "too little load: {}", res.output);
    assert_eq!(
        res.failures(),
        0,
        "requests failed in the hand-over after adoption:\n{}",
        res.output
    );
    let err_log = std::fs::read_to_string(d.dir.join("nginx/error.log")).unwrap_or_default();
    assert!(
        !err_log.contains("upstream"),
        "nginx saw upstream errors:\n{err_log}"
    );
    drop(nginx);
    // And the adopting manager still stops everything cleanly, and leaves
    // no record: the next start finds nothing to report.
    let mut d = d;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0), "{}", d.log());
    let left = d.dir.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!d.dir.join("var/phpfpm-manager/manager.pid").exists());
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Pool sockets are 0660, owned by the pool user and the web server's group
/// (www-data when run as root), so nginx running as www-data connects with
/// no world-writable socket; private runtime files are not world-readable;
/// a pool configured 0666 is reported at start.
#[test]
fn sockets_and_runtime_files_have_narrow_modes() {
    use std::os::unix::fs::MetadataExt;
    let dir = prepare("modes");
    let root = dir.join("www");
    let cfg = format!(
        "{}\x20 - name: open\n    pm: static\n    max_workers: 1\n    listen_mode: \"0666\"\n    chdir: {}\n",
        config(&dir, 1),
        root.display()
    );
    std::fs::write(dir.join("config.yaml"), cfg).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b", "open"]);
    let sa = sock(&d.dir, "a");
    assert_eq!(mode_of(&sa), 0o660, "pool socket mode");
    if nix::unistd::geteuid().is_root() {
        let www = nix::unistd::Group::from_name("www-data").unwrap().unwrap();
        let user = nix::unistd::User::from_name("www-data").unwrap().unwrap();
        let meta = std::fs::metadata(&sa).unwrap();
        assert_eq!(meta.gid(), www.gid.as_raw(), "socket group");
        assert_eq!(meta.uid(), user.uid.as_raw(), "socket owner");
        // nginx runs as www-data (testkit) and reaches the 0660 socket.
        let nginx = TestNginx::start(&d.dir, &[("/", sa.as_path(), root.as_path())]);
        let res = wrk(&nginx.url("/work.php"), 2, 1).join().unwrap();
        assert!(res.requests > 10, "{}", res.output);
        assert_eq!(res.failures(), 0, "{}", res.output);
    }
    let rt = d.dir.join("var/phpfpm-manager");
    for (file, mode) in [
        ("manager.pid", 0o640),
        ("masters/a.conf", 0o600),
        ("pids/a.master", 0o600),
        ("pools.d/a.conf", 0o640),
        ("data.db", 0o600),
    ] {
        assert_eq!(mode_of(&rt.join(file)), mode, "{file}");
    }
    assert_eq!(mode_of(&sock(&d.dir, "open")), 0o666);
    let (_, ev) = d.get("/api/v1/events/recent?type=insecure_socket").unwrap();
    assert!(ev.contains("open.sock"), "{ev}");
    assert!(!ev.contains("a.sock"), "{ev}");
    assert!(
        d.log().contains("every local user can run PHP"),
        "{}",
        d.log()
    );
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
    let refused = wait_for(Duration::from_secs(30), || {
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
        wait_for(Duration::from_secs(30), || d
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
        wait_for(Duration::from_secs(30), || !Path::new(&format!(
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

#[test]
fn a_master_that_keeps_dying_is_marked_crash_looping_and_retried_slowly() {
    let dir = prepare("crashloop");
    let cfg = config(&dir, 1).replace(
        "phpfpm:\n",
        "phpfpm:\n  crash_loop_exits: 3\n  crash_loop_window: 10m\n",
    );
    std::fs::write(dir.join("config.yaml"), cfg).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a", "b"]);
    let mut last = 0;
    for round in 0..3 {
        // Wait for a (new) master, then kill it.
        let mut pid = 0;
        assert!(
            wait_for(Duration::from_secs(30), || {
                match pool_field(&d, "a", "/master/pid").as_u64() {
                    Some(p) if p as u32 != last && is_fpm_master(p as u32) => {
                        pid = p as u32;
                        true
                    }
                    _ => false,
                }
            }),
            "round {round}: no new master; log:\n{}",
            d.log()
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        last = pid;
    }
    // The third exit within the window is a crash loop: an event, the pool
    // failed with the reason, the next try a minute away.
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let (_, ev) = d.get("/api/v1/events/recent?type=crash_loop").unwrap();
        let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
        if let Some(e) = v["events"].as_array().and_then(|a| a.first()).cloned() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no crash_loop event: {ev}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event["pool"], "a");
    assert_eq!(event["details"]["restart_in_ms"], 60_000, "{event}");
    let failed = pool_field(&d, "a", "/master/failed");
    assert!(
        failed.as_str().unwrap_or_default().contains("crash loop"),
        "{failed}"
    );
    assert_eq!(
        pool_field(&d, "a", "/master/running"),
        serde_json::json!(false)
    );
    assert_eq!(
        pool_field(&d, "a", "/master/restarts"),
        serde_json::json!(3)
    );
    // Not a hot loop: no master is started again for seconds.
    let ready = |d: &TestDaemon| {
        d.log()
            .lines()
            .filter(|l| l.contains("php-fpm master ready") && l.contains("pool=\"a\""))
            .count()
    };
    let before = ready(&d);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready(&d), before, "{}", d.log());
    assert!(pool_field(&d, "a", "/master/pid").is_null());
    // The other pool is untouched.
    assert_eq!(
        pool_field(&d, "b", "/master/running"),
        serde_json::json!(true)
    );
}

/// A pool on TCP is adopted with its listener (recovered from the master
/// with pidfd_getfd, found by address in /proc/net/tcp): after a SIGKILL of
/// the manager, the next one hands the pool over on a config change instead
/// of restarting it, and a loopback client sees no failure throughout.
#[test]
fn a_tcp_pool_is_adopted_with_its_listener_and_changed_by_hand_over() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = prepare("adopt-tcp");
    let fcgi_port = crate::support::free_port();
    let cfg = |workers: u32| {
        format!(
            "monitoring:\n  collect_interval: 1s\n\
             phpfpm:\n  process_control_timeout: 10s\n\
             pools:\n\
             \x20 - name: t\n    pm: static\n    max_workers: {workers}\n    fastcgi_endpoint: 127.0.0.1:{fcgi_port}\n    chdir: {}\n",
            dir.join("www").display()
        )
    };
    std::fs::write(dir.join("config.yaml"), cfg(2)).unwrap();
    let changed = cfg(3);
    let mut d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["t"]);
    let t_pid = pool_field(&d, "t", "/master/pid");
    let t_pid_u32 = u32::try_from(t_pid.as_u64().unwrap()).unwrap();
    let port = d.addr.port();

    // One request after another on the pool's TCP address for the whole run
    // (bounded in time).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let ep = Endpoint::Tcp(format!("127.0.0.1:{fcgi_port}"));
        let script = d.dir.join("www/work.php").display().to_string();
        std::thread::spawn(move || {
            let rt = rt();
            let t = Timeouts {
                connect: Duration::from_secs(2),
                total: Duration::from_secs(10),
            };
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match rt.block_on(fastcgi::get(&ep, &script, "", t)) {
                    Ok(r) if String::from_utf8_lossy(&r.stdout).ends_with("ok") => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let dir = d.into_dir();
    std::thread::sleep(Duration::from_millis(500));
    let d = TestDaemon::start_at(dir, port, None, &[]);
    pools_up(&d, &["t"]);
    // The pool can answer before its supervisor has finished adopting it.
    assert!(
        wait_for(Duration::from_secs(30), || pool_field(
            &d,
            "t",
            "/master/pid"
        ) == t_pid),
        "t was restarted (not {t_pid}); log:\n{}",
        d.log()
    );
    assert_eq!(
        pool_field(&d, "t", "/master/adopted"),
        serde_json::json!(true)
    );
    assert!(
        wait_for(Duration::from_secs(10), || d
            .get("/api/v1/events/recent?type=adoption")
            .is_ok_and(|(_, ev)| ev.contains("\"sockets_recovered\":true"))),
        "the TCP listener was not recovered; log:\n{}",
        d.log()
    );

    let gen = pool_field(&d, "t", "/master/generation").as_u64().unwrap();
    std::fs::write(d.dir.join("config.yaml"), changed).unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(30), || {
            pool_field(&d, "t", "/master/generation")
                .as_u64()
                .unwrap_or(0)
                > gen
        }),
        "change after adoption not applied; log:\n{}",
        d.log()
    );
    // Events reach the API a moment after the state changes.
    let handed_over = format!("\"old_pid\":{t_pid_u32}");
    assert!(
        wait_for(Duration::from_secs(10), || d
            .get("/api/v1/events/recent?type=pool_change")
            .is_ok_and(|(_, ev)| ev.contains(&handed_over))),
        "no pool_change event from {t_pid_u32}; log:\n{}",
        d.log()
    );
    assert!(
        !d.log().contains("Restarting the pool"),
        "restarted instead of handed over:\n{}",
        d.log()
    );
    assert!(
        wait_for(Duration::from_secs(30), || !is_fpm_master(t_pid_u32)),
        "the old master {t_pid_u32} is still running"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 20, "too few requests to mean anything: {ok}");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let mut d = d;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0), "{}", d.log());
    let left = d.dir.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}
