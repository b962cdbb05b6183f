//! The manager under systemd: `systemd-analyze verify` accepts
//! `deploy/systemd/phpfpm-manager.service` (and sees a broken copy of it),
//! the configuration the Debian package installs passes `validate`, and the
//! real daemon, started with `NOTIFY_SOCKET` naming a datagram socket this
//! test listens on, speaks the sd_notify protocol: `READY=1` once its pools
//! serve (or one is marked failed), `WATCHDOG=1` again and again,
//! `RELOADING=1` then `READY=1` around a SIGHUP, `STOPPING=1` at SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{manager_bin, TestDaemon, TestDir, SLEEP_PHP};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_root().join("deploy/systemd/phpfpm-manager.service")).unwrap()
}

/// `systemd-analyze verify FILE`: exit code and everything it printed.
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze not runnable ({e}); install Debian's `systemd` package (make test does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let text = unit_text();
    for line in [
        "Type=notify",
        "KillMode=mixed",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "ProtectSystem=full",
        "AF_NETLINK",
    ] {
        assert!(text.contains(line), "the unit lacks {line:?}");
    }
    // verify checks that ExecStart's binary exists: the copy names the one
    // built for this test run (the installed unit, with /usr/bin, is
    // verified by scripts/check-deb.sh after installing the package).
    let dir = TestDir::new("unit");
    let unit = dir.join("phpfpm-manager.service");
    let bin = manager_bin();
    std::fs::write(
        &unit,
        text.replace("/usr/bin/phpfpm-manager", &bin.display().to_string()),
    )
    .unwrap();
    let (ok, said) = verify(&unit);
    assert!(ok, "systemd-analyze verify failed:\n{said}");
    // Unknown keys and bad values are warnings with exit code 0: none may
    // be printed about the unit.
    assert!(
        !said.contains("phpfpm-manager.service"),
        "systemd-analyze verify warned:\n{said}"
    );

    // The same check sees a mistake: a misspelt directive and a bad value.
    let broken = dir.join("broken/phpfpm-manager.service");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        std::fs::read_to_string(&unit)
            .unwrap()
            .replace("KillMode=mixed", "KillMode=mixd")
            .replace("WatchdogSec=", "WatchdogSecs="),
    )
    .unwrap();
    let (_, said) = verify(&broken);
    assert!(
        said.contains("kill mode") && said.contains("WatchdogSecs"),
        "systemd-analyze verify saw nothing wrong with a broken unit:\n{said}"
    );
}

#[test]
fn the_packaged_config_passes_validate() {
    let config = repo_root().join("deploy/debian/config.yaml");
    let out = Command::new(manager_bin())
        .arg("validate")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validate refused {}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The service manager's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    sock: UnixDatagram,
    /// Every message received, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            sock,
            seen: Vec::new(),
        }
    }

    /// Receives until a message satisfies `pred` (returned) or `limit` passes.
    fn until(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if pred(&msg) {
                return Some(msg);
            }
        }
        None
    }
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn prepare(tag: &str, pools: &str) -> (TestDir, PathBuf, String) {
    let dir = TestDir::new(tag);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/sleep.php"), SLEEP_PHP).unwrap();
    let cfg = format!(
        "monitoring:\n  collect_interval: 1s\npools:\n{}",
        pools.replace("{www}", &dir.join("www").display().to_string())
    );
    let sock = dir.join("notify.sock");
    (dir, sock, cfg)
}

#[test]
fn ready_watchdog_reload_and_stop_reach_the_notify_socket() {
    let (dir, path, cfg) = prepare(
        "sdnotify",
        "  - name: a\n    pm: static\n    max_workers: 2\n    chdir: {www}\n\
         \x20 - name: b\n    pm: dynamic\n    max_workers: 3\n    chdir: {www}\n",
    );
    let mut notify = NotifySocket::bind(&path);
    let started = Instant::now();
    // WATCHDOG_USEC of 2 s: WATCHDOG=1 every second.
    let mut d = TestDaemon::start_in(
        dir,
        Some(&cfg),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );

    let ready = notify
        .until(Duration::from_secs(30), |m| has(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\nlog:\n{}", notify.seen, d.log()));
    // At the moment READY=1 arrives, both pools serve.
    let (code, body) = d.get("/health/ready").unwrap();
    assert_eq!(code, 200, "READY=1 before the pools were ready: {body}");
    assert!(has(&ready, "STATUS=2 pools ready"), "{ready:?}");
    eprintln!("READY=1 {:?} after the start", started.elapsed());

    // The watchdog keeps coming from the main loop.
    let mut dogs = notify.seen.iter().filter(|m| has(m, "WATCHDOG=1")).count();
    let since = Instant::now();
    while dogs < 4 {
        notify
            .until(Duration::from_secs(20), |m| has(m, "WATCHDOG=1"))
            .unwrap_or_else(|| panic!("WATCHDOG=1 stopped after {dogs}: {:?}", notify.seen));
        dogs += 1;
    }
    eprintln!("4 WATCHDOG=1 within {:?}", since.elapsed());

    // A reload: RELOADING=1 (with the monotonic time systemd wants), then
    // READY=1 once it is done.
    d.signal(Signal::SIGHUP);
    let reloading = notify
        .until(Duration::from_secs(20), |m| has(m, "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {:?}", notify.seen));
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let reloaded = notify
        .until(Duration::from_secs(20), |m| has(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 after the reload: {:?}", notify.seen));
    assert!(
        has(&reloaded, "STATUS=configuration reloaded"),
        "{reloaded:?}"
    );

    d.signal(Signal::SIGTERM);
    notify
        .until(Duration::from_secs(20), |m| has(m, "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1: {:?}", notify.seen));
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0), "{}", d.log());
}

/// A pool php-fpm refuses does not hold the start back until systemd's
/// timeout kills every pool: READY=1 comes once it is marked failed, and
/// says so.
#[test]
fn a_failed_pool_settles_the_start_and_is_named() {
    let (dir, path, cfg) = prepare(
        "sdnotify-failed",
        "  - name: good\n    pm: static\n    max_workers: 1\n    chdir: {www}\n\
         \x20 - name: bad\n    pm: static\n    max_workers: 1\n    extra_settings:\n      no_such_directive: 1\n",
    );
    let mut notify = NotifySocket::bind(&path);
    let d = TestDaemon::start_in(
        dir,
        Some(&cfg),
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let ready = notify
        .until(Duration::from_secs(30), |m| has(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\nlog:\n{}", notify.seen, d.log()));
    assert!(
        has(&ready, "STATUS=1 of 2 pools ready; not ready: bad: failed"),
        "{ready:?}"
    );
    // No watchdog was asked for: nothing but READY=1 was sent.
    assert!(
        notify.seen.iter().all(|m| !has(m, "WATCHDOG=1")),
        "{:?}",
        notify.seen
    );
    let (code, _) = d.get("/health/ready").unwrap();
    assert_eq!(code, 503, "a failed pool is not ready");
}
