//! `run --replace`: the running manager is found by the `manager.lock` it
//! holds (and its recorded pid and start time), never by a pid file alone or
//! by a name. A stale record never gets an unrelated process signalled, and a
//! manager started from a binary of any name is replaced without dropping a
//! request.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

use crate::supervisor::{config, pool_field, pools_up, prepare, sock};
use crate::support::{free_port, manager_bin, wait_child_exit, wait_for, TestDaemon, TestDir};

/// `sleep 300` under a name that contains the product's name, started by
/// this test in its own process group.
fn lookalike(dir: &TestDir) -> std::process::Child {
    let fake = dir.join("phpfpm-manager-lookalike");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    Command::new(&fake)
        .arg("300")
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn start_ticks(pid: u32) -> u64 {
    fpm_kernel::procfs::read_stat(pid).unwrap().starttime
}

#[test]
fn a_stale_record_pointing_at_an_unrelated_process_is_never_signalled() {
    let dir = prepare("replace-stale");
    let cfg = config(&dir, 1);
    std::fs::write(dir.join("config.yaml"), &cfg).unwrap();
    let runtime = dir.join("var/phpfpm-manager");
    std::fs::create_dir_all(&runtime).unwrap();
    let mut victim = lookalike(&dir);
    let vpid = victim.id();
    // Both the bare pid an older manager wrote and a record with the right
    // start time: without the lock, neither names a running manager.
    let mut dir = Some(dir);
    for record in [
        format!("{vpid}\n"),
        format!("{vpid} {}\n", start_ticks(vpid)),
    ] {
        let d_dir = dir.take().unwrap();
        std::fs::write(runtime.join("manager.pid"), &record).unwrap();
        let mut d = TestDaemon::start_with(
            d_dir,
            free_port(),
            None,
            &[],
            &manager_bin(),
            &["--replace"],
        );
        pools_up(&d, &["a", "b"]);
        assert!(
            matches!(victim.try_wait(), Ok(None)),
            "record {record:?}: the unrelated process was signalled; log:\n{}",
            d.log()
        );
        assert!(d.log().contains("starting normally"), "{}", d.log());
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
        dir = Some(d.into_dir());
    }
    let dir = dir.unwrap();

    // The lock held by a process that is not the recorded manager (this
    // test): --replace refuses and signals nobody.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(runtime.join("manager.lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    std::fs::write(
        runtime.join("manager.pid"),
        format!("{vpid} {}\n", start_ticks(vpid)),
    )
    .unwrap();
    let out = Command::new(manager_bin())
        .args(["run", "--replace", "--config", "config.yaml"])
        .current_dir(&dir.path)
        .env(
            "PHPFPM_MANAGER_SERVER__BIND_ADDRESS",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("refusing to signal it"), "{text}");
    assert!(
        text.contains(&format!("locked by pid {}", std::process::id())),
        "{text}"
    );
    assert!(matches!(victim.try_wait(), Ok(None)), "victim signalled");
    drop(lock);
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn replace_takes_over_from_a_manager_binary_of_another_name_without_dropping_requests() {
    let dir = prepare("replace");
    std::fs::write(dir.join("config.yaml"), config(&dir, 2)).unwrap();
    let other = dir.join("fpm-supervisor-old");
    std::fs::copy(manager_bin(), &other).unwrap();
    let port = free_port();
    let old = TestDaemon::start_with(dir, port, None, &[], &other, &[]);
    pools_up(&old, &["a", "b"]);
    let a_pid = pool_field(&old, "a", "/master/pid");
    let b_pid = pool_field(&old, "b", "/master/pid");
    assert!(a_pid.is_u64(), "{a_pid}");

    // Requests one after another on pool a for the whole replacement.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let ep = Endpoint::Unix(sock(&old.dir, "a"));
        let script = old.dir.join("www/work.php").display().to_string();
        std::thread::spawn(move || {
            let rt = crate::support::rt();
            let t = Timeouts {
                connect: Duration::from_secs(2),
                total: Duration::from_secs(10),
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
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

    let (dir, old_pid) = old.into_parts();
    let new = TestDaemon::start_with(dir, port, None, &[], &manager_bin(), &["--replace"]);
    assert_eq!(
        wait_child_exit(old_pid, Duration::from_secs(60)),
        Some(0),
        "the old manager did not exit cleanly; log:\n{}",
        new.log()
    );
    pools_up(&new, &["a", "b"]);
    assert!(
        wait_for(Duration::from_secs(30), || pool_field(
            &new,
            "a",
            "/master/adopted"
        ) == serde_json::json!(true)),
        "{}",
        new.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 20, "too few requests to mean anything: {ok}");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert_eq!(pool_field(&new, "a", "/master/pid"), a_pid, "a restarted");
    assert_eq!(pool_field(&new, "b", "/master/pid"), b_pid, "b restarted");
    assert!(
        new.log().contains("Asked the running manager to hand over"),
        "{}",
        new.log()
    );

    // The new manager owns everything: a stop leaves nothing behind.
    let mut new = new;
    new.signal(Signal::SIGTERM);
    assert_eq!(
        new.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        new.log()
    );
    let left = new.dir.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}
