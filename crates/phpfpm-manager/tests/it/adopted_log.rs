//! An adopted master's log. A master's log goes to the manager that started
//! it through a pipe; when that manager is killed, the pipe has no reader.
//! php-fpm ignores SIGPIPE, so writing a line then fails (the line is lost)
//! and the master keeps serving. The next manager gives the pipe a reader
//! again, and the master's lines reach its log, tagged with the pool.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::supervisor::{php, pool_field, pools_up, prepare};
use crate::support::{wait_for, TestDaemon};

fn config(dir: &crate::support::TestDir) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n\
         pools:\n\
         \x20 - name: a\n    pm: static\n    max_workers: 2\n    chdir: {www}\n",
        www = dir.join("www").display()
    )
}

/// Kills the worker that serves the next request; returns its pid.
fn kill_a_worker(dir: &crate::support::TestDir) -> i32 {
    let pid: i32 = php(dir, "a", "pid.php").trim().parse().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    pid
}

#[test]
fn an_adopted_masters_log_reaches_the_new_manager() {
    let dir = prepare("adoptlog");
    std::fs::write(dir.join("config.yaml"), config(&dir)).unwrap();
    let mut d = TestDaemon::start_in(dir, None, &[]);
    pools_up(&d, &["a"]);
    let master = pool_field(&d, "a", "/master/pid");
    let port = d.addr.port();
    // The first manager forwards the master's lines.
    let w = kill_a_worker(&d.dir);
    assert!(
        wait_for(Duration::from_secs(20), || d
            .log()
            .contains(&format!("child {w} exited on signal 9"))),
        "the first manager does not forward php-fpm's lines:\n{}",
        d.log()
    );

    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let dir = d.into_dir();
    // With no manager, the master writes into a pipe nobody reads: it must
    // survive that and keep serving (a worker exit makes it write).
    let lost = kill_a_worker(&dir);
    std::thread::sleep(Duration::from_millis(500));
    let pid = i32::try_from(master.as_u64().unwrap()).unwrap();
    assert!(
        kill(Pid::from_raw(pid), None).is_ok(),
        "the master died writing to a pipe without reader"
    );
    assert!(wait_for(Duration::from_secs(10), || php(
        &dir, "a", "pid.php"
    )
    .trim()
    .parse::<u32>()
    .is_ok()));

    let d = TestDaemon::start_at(dir, port, None, &[]);
    pools_up(&d, &["a"]);
    assert_eq!(pool_field(&d, "a", "/master/pid"), master, "not adopted");
    assert_eq!(
        pool_field(&d, "a", "/master/adopted"),
        serde_json::json!(true)
    );
    let w = kill_a_worker(&d.dir);
    let line = format!("child {w} exited on signal 9");
    assert!(
        wait_for(Duration::from_secs(20), || d.log().contains(&line)),
        "the adopted master's line {line:?} is not in the new manager's log:\n{}",
        d.log()
    );
    let log = d.log();
    let forwarded = log.lines().find(|l| l.contains(&line)).unwrap_or_default();
    assert!(
        forwarded.contains("pool=\"a\"") || forwarded.contains("pool=a"),
        "no pool on {forwarded:?}"
    );
    // The line written while no manager ran is lost, not replayed wrongly.
    assert!(!log.contains(&format!("child {lost} exited")), "{log}");
    // The master still serves, and it is still the adopted one.
    assert!(php(&d.dir, "a", "pid.php").trim().parse::<u32>().is_ok());
    assert_eq!(pool_field(&d, "a", "/master/pid"), master);
}
