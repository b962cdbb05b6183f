//! Promises about a pool's life, each checked with real php-fpm: a request in
//! flight finishes during a graceful stop; a stop that outlasts
//! `stop_timeout` escalates and leaves nothing; connections made while a
//! crashed master restarts wait in the backlog and are served; an `env[...]`
//! secret reaches the workers and nothing else.

use std::time::Duration;

use nix::sys::signal::Signal;
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

use crate::supervisor::{is_fpm_master, pool_field, pools_up, sock};
use crate::support::{wait_for, TestDaemon, TestDir, HOLD_PHP, SLEEP_PHP};

/// A manager with one static pool `a` of `workers`, scripts in www/.
fn start(tag: &str, workers: u32, phpfpm: &str, pool_extra: &str) -> TestDaemon {
    let dir = TestDir::new(tag);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("sleep.php"), SLEEP_PHP).unwrap();
    // A signal cuts PHP's usleep() short; hold.php loops until its time is
    // up, so a request really lasts as long as asked.
    std::fs::write(www.join("hold.php"), HOLD_PHP).unwrap();
    std::fs::write(
        www.join("env.php"),
        "<?php echo getenv('APP_SECRET') ?: 'unset';\n",
    )
    .unwrap();
    let cfg = format!(
        "monitoring:\n  collect_interval: 1s\nphpfpm:\n{phpfpm}  log_level: notice\n\
         pools:\n  - name: a\n    pm: static\n    max_workers: {workers}\n    chdir: {}\n{pool_extra}",
        www.display()
    );
    std::fs::write(dir.join("config.yaml"), cfg).unwrap();
    let d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a"]);
    d
}

/// Runs `script?query` on pool a in a thread; the result is the body, or
/// the error.
fn request(
    d: &TestDaemon,
    script: &str,
    query: &str,
    total: Duration,
) -> std::thread::JoinHandle<Result<String, String>> {
    let ep = Endpoint::Unix(sock(&d.dir, "a"));
    let file = d.dir.join("www").join(script).display().to_string();
    let query = query.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t = Timeouts {
            connect: Duration::from_secs(5),
            total,
        };
        let reply = rt
            .block_on(fastcgi::get(&ep, &file, &query, t))
            .map_err(|e| e.to_string())?;
        let out = String::from_utf8_lossy(&reply.stdout).into_owned();
        Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
    })
}

/// Waits until pool a's status page (asked directly on its status socket)
/// says `n` workers are busy.
fn busy(d: &TestDaemon, n: u64) {
    let ep = Endpoint::Unix(d.dir.join("var/phpfpm-manager/sockets/a.status.sock"));
    let rt = crate::support::rt();
    let t = Timeouts {
        connect: Duration::from_secs(1),
        total: Duration::from_secs(5),
    };
    let want = format!("\"active processes\":{n},");
    assert!(
        wait_for(Duration::from_secs(30), || {
            rt.block_on(fastcgi::get(&ep, "/status", "json", t))
                .is_ok_and(|r| String::from_utf8_lossy(&r.stdout).contains(&want))
        }),
        "pool a never had {n} busy workers; log:\n{}",
        d.log()
    );
}

#[test]
fn a_request_in_flight_during_a_graceful_stop_completes() {
    let mut d = start("graceful", 1, "  stop_timeout: 30s\n", "");
    let req = request(&d, "hold.php", "ms=2000", Duration::from_secs(30));
    busy(&d, 1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());
    assert_eq!(req.join().unwrap(), Ok("ok\n".to_owned()));
    assert!(
        d.log().contains("Stopped php-fpm master gracefully"),
        "{}",
        d.log()
    );
    let left = d.dir.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_stop_that_outlasts_stop_timeout_escalates_and_leaves_nothing() {
    // php-fpm itself would wait process_control_timeout (10 s) for the
    // request; the manager's stop_timeout (1 s) is shorter and escalates.
    let mut d = start(
        "escalate",
        1,
        "  stop_timeout: 1s\n  process_control_timeout: 10s\n",
        "",
    );
    let req = request(&d, "hold.php", "ms=20000", Duration::from_secs(60));
    busy(&d, 1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0), "{}", d.log());
    // The request was cut, not finished: the stop did not wait for it.
    let res = req.join().unwrap();
    assert!(
        res != Ok("ok\n".to_owned()),
        "the request finished: {res:?}"
    );
    assert!(
        d.log().contains("Stopped php-fpm master forcefully"),
        "{}",
        d.log()
    );
    let left = d.dir.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn connections_made_while_a_crashed_master_restarts_wait_and_are_served() {
    // The restart waits 2 s, so the connections below are surely made
    // while no php-fpm process of the pool exists.
    let d = start("backlog", 2, "  restart_backoff_initial: 2s\n", "");
    let pid = pool_field(&d, "a", "/master/pid").as_u64().unwrap() as i32;
    // The whole pool dies (master and workers, as an OOM kill of the group
    // would do). A dying worker can still take a connection from the queue
    // on its way out, so the requests start once the group is gone.
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let group_alive = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
            .filter_map(fpm_kernel::procfs::read_stat)
            .any(|st| st.pgrp == pid as u32 && st.state != 'Z')
    };
    assert!(wait_for(Duration::from_secs(30), || !group_alive()));
    // The manager notices the death on its own time (a loaded machine may
    // take a moment): wait until it reports the master down, or a new one.
    assert!(wait_for(Duration::from_secs(30), || {
        pool_field(&d, "a", "/master/running") == serde_json::json!(false)
            || pool_field(&d, "a", "/master/pid").as_u64() != Some(pid as u64)
    }));
    assert_eq!(
        pool_field(&d, "a", "/master/running"),
        serde_json::json!(false),
        "a master is already back; the test proves nothing: {}",
        d.log()
    );
    let reqs: Vec<_> = (0..6)
        .map(|_| request(&d, "sleep.php", "ms=10", Duration::from_secs(60)))
        .collect();
    for (i, r) in reqs.into_iter().enumerate() {
        assert_eq!(
            r.join().unwrap(),
            Ok("ok\n".to_owned()),
            "request {i} made during the restart; log:\n{}",
            d.log()
        );
    }
    let new = pool_field(&d, "a", "/master/pid").as_u64().unwrap();
    assert_ne!(new as i32, pid);
    assert!(is_fpm_master(new as u32));
    assert_eq!(
        pool_field(&d, "a", "/master/restarts"),
        serde_json::json!(1)
    );
}

#[test]
fn an_env_secret_reaches_the_workers_and_nothing_else() {
    const SECRET: &str = "pfm-secret-7f3a9c-value";
    let d = start(
        "secret",
        1,
        "",
        &format!("    env:\n      APP_SECRET: \"{SECRET}\"\n"),
    );
    // The workers see it: the setting is in force.
    let got = request(&d, "env.php", "", Duration::from_secs(10))
        .join()
        .unwrap();
    assert_eq!(got, Ok(SECRET.to_owned()));
    // Give the collector and the event log a few looks.
    std::thread::sleep(Duration::from_secs(2));
    let mut seen = Vec::new();
    for path in [
        "/metrics",
        "/api/v1/pools",
        "/api/v1/pools/a",
        "/api/v1/pools/a/workers",
        "/api/v1/events",
        "/api/v1/events/recent",
        "/api/v1/status",
        "/api/v1/autoscaling",
        "/health/ready",
    ] {
        let (_, body) = d.get(path).unwrap();
        if body.contains(SECRET) {
            seen.push(path.to_owned());
        }
    }
    assert!(seen.is_empty(), "the secret is served by {seen:?}");
    // Not in the manager's output.
    for f in ["manager.log", "manager.out"] {
        let text = std::fs::read_to_string(d.dir.join(f)).unwrap_or_default();
        assert!(!text.contains(SECRET), "the secret is in {f}");
    }
    // Not in the master's environment (php-fpm puts it into workers only),
    // and the manager's own environment does not reach php-fpm either.
    let master = pool_field(&d, "a", "/master/pid").as_u64().unwrap();
    let env = std::fs::read(format!("/proc/{master}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(
        !env.contains(SECRET),
        "the secret is in the master's environ"
    );
    assert!(
        !env.contains("PHPFPM_MANAGER_SERVER__BIND_ADDRESS"),
        "the manager's environment reached php-fpm: {env}"
    );
    // Only the pool file holds it, readable by its owner and group alone.
    let pool_file = d.dir.join("var/phpfpm-manager/pools.d/a.conf");
    assert!(std::fs::read_to_string(&pool_file)
        .unwrap()
        .contains(SECRET));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pool_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn recycled_workers_are_counted_not_logged_one_by_one_and_are_no_storm() {
    // pm.max_requests 1: every request ends its worker's life.
    let mut d = start("recycle", 2, "", "    max_requests: 1\n");
    for i in 0..20 {
        let r = request(&d, "sleep.php", "ms=1", Duration::from_secs(10))
            .join()
            .unwrap();
        assert_eq!(r, Ok("ok\n".to_owned()), "request {i}");
    }
    // A few looks at the pool after all that recycling.
    std::thread::sleep(Duration::from_secs(4));
    let (_, ev) = d.get("/api/v1/events/recent?type=respawn_storm").unwrap();
    let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(v["events"].as_array().map(Vec::len), Some(0), "{ev}");
    let log = d.log();
    let lifecycle: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("] child ") && (l.contains("started") || l.contains("exited")))
        .collect();
    assert!(lifecycle.is_empty(), "worker lines at info: {lifecycle:?}");
    // The count is logged instead (at the latest when the master ends).
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
    let recycled: u64 = d
        .log()
        .lines()
        .filter(|l| l.contains("workers recycled"))
        .filter_map(|l| {
            l.split("recycled=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(recycled >= 20, "recycled {recycled}; log:\n{}", d.log());
}
