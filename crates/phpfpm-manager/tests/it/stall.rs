//! A php-fpm master that makes no progress: stopped with SIGSTOP, its
//! hidden status pool still answers with a frozen scoreboard. The pool must
//! be reported not ready, recorded as an event, and a supervised master
//! restarted after `phpfpm.stall_restart_after` unless it resumes first.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::supervisor::{php, pool_field, pools_up, prepare};
use crate::support::{promtool_check, wait_for, TestDaemon};

fn config(dir: &crate::support::TestDir, restart_after: &str) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n  busy_interval: 500ms\n  idle_interval: 2s\n  stall_after: 1s\n\
         phpfpm:\n  stall_restart_after: {restart_after}\n\
         pools:\n\
         \x20 - name: a\n    pm: static\n    max_workers: 2\n    listen_mode: \"0666\"\n    chdir: {www}\n",
        www = dir.join("www").display()
    )
}

fn master_pid(d: &TestDaemon) -> u32 {
    let pid = pool_field(d, "a", "/master/pid");
    u32::try_from(pid.as_u64().unwrap_or_else(|| panic!("no pid: {pid}"))).unwrap()
}

fn ready(d: &TestDaemon) -> (u16, String) {
    d.get("/health/ready").unwrap_or((0, String::new()))
}

fn stall_events(d: &TestDaemon) -> String {
    d.get("/api/v1/events/recent?type=master_stall")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The master the test's own manager started, by the pid its API reports.
fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn a_stopped_master_is_not_ready_then_killed_and_restarted_after_the_grace() {
    let dir = prepare("stall-restart");
    let cfg = config(&dir, "5s");
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["a"]);
    let old = master_pid(&d);
    assert_eq!(ready(&d).0, 200, "{}", d.log());

    signal(old, Signal::SIGSTOP);
    let not_ready = wait_for(Duration::from_secs(30), || {
        let (code, body) = ready(&d);
        code == 503 && body.contains("a: php-fpm master") && body.contains("stalled (stopped)")
    });
    assert!(not_ready, "still ready: {:?}\n{}", ready(&d), d.log());
    let page = d
        .wait_metrics(Duration::from_secs(10), |b| {
            b.contains("phpfpm_manager_master_stalled{pool=\"a\"} 1")
        })
        .unwrap_or_else(|| panic!("no stalled metric; log:\n{}", d.log()));
    promtool_check(&page).unwrap();
    let ev = stall_events(&d);
    assert!(
        ev.contains("\"action\":\"detected\"") && ev.contains("\"reason\":\"stopped\""),
        "{ev}"
    );

    // After the grace the supervisor kills the stopped master's group and
    // starts a new one, which serves.
    let restarted = wait_for(Duration::from_secs(60), || {
        pool_field(&d, "a", "/master/pid")
            .as_u64()
            .is_some_and(|p| p != u64::from(old))
    });
    assert!(restarted, "master {old} not replaced; log:\n{}", d.log());
    let served = php(&d.dir, "a", "pid.php");
    assert!(served.parse::<u32>().is_ok(), "{served:?}");
    assert!(
        stall_events(&d).contains("\"action\":\"restart\""),
        "{}",
        stall_events(&d)
    );
    assert!(
        wait_for(Duration::from_secs(30), || ready(&d).0 == 200),
        "not ready again: {:?}",
        ready(&d)
    );
    // The stopped master is gone, not left behind stopped.
    assert!(
        !std::path::Path::new(&format!("/proc/{old}")).exists()
            || std::fs::read_to_string(format!("/proc/{old}/stat"))
                .is_ok_and(|s| !s.contains("php-fpm")),
        "old master {old} still exists"
    );
}

#[test]
fn a_master_continued_before_the_grace_is_kept() {
    let dir = prepare("stall-continue");
    let cfg = config(&dir, "8s");
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["a"]);
    let pid = master_pid(&d);

    let stopped_at = Instant::now();
    signal(pid, Signal::SIGSTOP);
    let not_ready = wait_for(Duration::from_secs(30), || ready(&d).0 == 503);
    // Continue it whatever happened, so a failure leaves nothing stopped.
    signal(pid, Signal::SIGCONT);
    assert!(not_ready, "stop not detected; log:\n{}", d.log());
    assert!(
        wait_for(Duration::from_secs(30), || ready(&d).0 == 200),
        "not ready again: {:?}",
        ready(&d)
    );
    assert!(
        wait_for(Duration::from_secs(10), || stall_events(&d)
            .contains("\"action\":\"recovered\"")),
        "{}",
        stall_events(&d)
    );
    // Past the grace counted from the stop, the same master still serves.
    let past = Duration::from_secs(8 + 3);
    if let Some(rest) = past.checked_sub(stopped_at.elapsed()) {
        std::thread::sleep(rest);
    }
    assert_eq!(master_pid(&d), pid, "the master was restarted");
    assert_eq!(
        pool_field(&d, "a", "/master/restarts"),
        serde_json::json!(0)
    );
    assert!(!stall_events(&d).contains("\"action\":\"restart\""));
    // The worker that serves is a child of that same master.
    let served: u32 = php(&d.dir, "a", "pid.php").parse().unwrap();
    let parent = fpm_kernel::procfs::read_stat(served).map(|st| st.ppid);
    assert_eq!(
        parent,
        Some(pid),
        "worker {served} is not the kept master's"
    );
}
