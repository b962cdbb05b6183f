//! SIGHUP applies the `server` and `phpfpm` sections without a restart: the
//! manager moves to a new address (bound before the old one is let go), a
//! bind that fails leaves the old address serving and the reload refused,
//! `server.api.enabled` switches the API, and a change that cannot be made
//! live (`phpfpm.runtime_dir`) is refused with the reason, nothing changed.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::reload::{now_ms, wait_reload_at as wait_reload};
use crate::supervisor::{pool_field, pools_up, prepare};
use crate::support::{free_port, http_get, manager_bin, wait_for, TestDaemon, TestDir};

fn config(dir: &TestDir, addr: SocketAddr, extra: &str) -> String {
    format!(
        "server:\n  bind_address: {addr}\n{extra}\
         monitoring:\n  collect_interval: 1s\n\
         pools:\n\
         \x20 - name: a\n    pm: static\n    max_workers: 1\n    chdir: {www}\n",
        www = dir.join("www").display()
    )
}

/// The test daemon names its address in the environment, which would win
/// over the file on every reload: start the manager through a script that
/// drops that variable, so the config file decides.
fn start(dir: TestDir, addr: SocketAddr, cfg: &str) -> TestDaemon {
    let wrapper = dir.join("manager.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nunset PHPFPM_MANAGER_SERVER__BIND_ADDRESS\nexec {} \"$@\"\n",
            manager_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    TestDaemon::start_with(dir, addr.port(), Some(cfg), &[], &wrapper, &[])
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn answers(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/health/live"), Ok((200, _)))
}

fn problems(r: &serde_json::Value) -> Vec<String> {
    r["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn sighup_moves_the_manager_to_a_new_address_and_switches_the_api() {
    let dir = prepare("reload-move");
    let old = loopback(free_port());
    let cfg = config(&dir, old, "");
    let d = start(dir, old, &cfg);
    pools_up(&d, &["a"]);
    let pid = pool_field(&d, "a", "/master/pid");

    let new = loopback(free_port());
    std::fs::write(d.dir.join("config.yaml"), config(&d.dir, new, "")).unwrap();
    let before = now_ms();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(30), || answers(new)),
        "the new address {new} does not answer; log:\n{}",
        d.log()
    );
    let r = wait_reload(&d, new, true, before - 1000);
    assert_eq!(problems(&r), Vec::<String>::new());
    assert!(
        wait_for(Duration::from_secs(30), || http_get(old, "/health/live")
            .is_err()),
        "the old address {old} still answers; log:\n{}",
        d.log()
    );
    // The pool was left alone, and it still shows on the new address.
    let (code, body) = http_get(new, "/api/v1/pools/a").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["master"]["pid"], pid, "the pool was restarted");

    // `server.api.enabled: false` takes the API away, not /metrics.
    let off = config(&d.dir, new, "  api:\n    enabled: false\n");
    std::fs::write(d.dir.join("config.yaml"), off).unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(30), || matches!(
            http_get(new, "/api/v1/status"),
            Ok((404, _))
        )),
        "the API still answers; log:\n{}",
        d.log()
    );
    assert!(matches!(http_get(new, "/metrics"), Ok((200, _))));
}

#[test]
fn a_bind_that_fails_is_refused_and_the_old_address_keeps_serving() {
    let dir = prepare("reload-taken");
    let old = loopback(free_port());
    let cfg = config(&dir, old, "");
    let d = start(dir, old, &cfg);
    pools_up(&d, &["a"]);

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    std::fs::write(d.dir.join("config.yaml"), config(&d.dir, busy, "")).unwrap();
    let before = now_ms();
    d.signal(Signal::SIGHUP);
    let r = wait_reload(&d, old, false, before - 1000);
    let p = problems(&r);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("server.bind_address") && p[0].contains(&busy.to_string()),
        "{p:#?}"
    );
    assert!(p[0].contains(&format!("keeps serving on {old}")), "{p:#?}");
    let (_, ev) = http_get(old, "/api/v1/events/recent?type=config_change").unwrap();
    assert!(ev.contains("server.bind_address"), "{ev}");
    assert!(answers(old));
    drop(taken);
}

#[test]
fn a_runtime_dir_change_is_refused_with_the_reason() {
    let dir = prepare("reload-rtdir");
    let addr = loopback(free_port());
    let cfg = config(&dir, addr, "");
    let d = start(dir, addr, &cfg);
    pools_up(&d, &["a"]);
    let pid = pool_field(&d, "a", "/master/pid");

    let elsewhere: PathBuf = d.dir.join("other-runtime");
    // A change that can be applied comes with it: the whole reload is refused.
    let moved = loopback(free_port());
    let changed = config(
        &d.dir,
        moved,
        &format!("phpfpm:\n  runtime_dir: {}\n", elsewhere.display()),
    );
    std::fs::write(d.dir.join("config.yaml"), changed).unwrap();
    let before = now_ms();
    d.signal(Signal::SIGHUP);
    let r = wait_reload(&d, addr, false, before - 1000);
    let p = problems(&r);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("phpfpm.runtime_dir")
            && p[0].contains("cannot change while the manager runs")
            && p[0].contains("restart the manager"),
        "{p:#?}"
    );
    assert!(d.log().contains("phpfpm.runtime_dir"), "{}", d.log());
    assert!(
        !answers(moved),
        "the address moved although the reload was refused"
    );
    assert!(!elsewhere.exists(), "the new runtime directory was created");
    assert_eq!(pool_field(&d, "a", "/master/pid"), pid);
}

#[test]
fn phpfpm_settings_apply_to_the_next_start_and_a_wrong_binary_is_refused() {
    let dir = prepare("reload-phpfpm");
    let addr = loopback(free_port());
    let cfg = config(&dir, addr, "");
    let d = start(dir, addr, &cfg);
    pools_up(&d, &["a"]);
    let pid = pool_field(&d, "a", "/master/pid");
    let global = d.dir.join("var/phpfpm-manager/php-fpm.conf");
    let text = std::fs::read_to_string(&global).unwrap();
    assert!(text.contains("log_level = notice"), "{text}");

    // Not php-fpm: refused, nothing changed.
    let wrong = config(
        &d.dir,
        addr,
        "phpfpm:\n  binary: /bin/true\n  log_level: debug\n",
    );
    std::fs::write(d.dir.join("config.yaml"), wrong).unwrap();
    let before = now_ms();
    d.signal(Signal::SIGHUP);
    let r = wait_reload(&d, addr, false, before - 1000);
    let p = problems(&r);
    assert!(
        p.len() == 1 && p[0].contains("phpfpm.binary") && p[0].contains("/bin/true"),
        "{p:#?}"
    );
    assert!(std::fs::read_to_string(&global)
        .unwrap()
        .contains("log_level = notice"));

    // Applied: written for the next master, the running one left alone.
    let right = config(&d.dir, addr, "phpfpm:\n  log_level: debug\n");
    std::fs::write(d.dir.join("config.yaml"), right).unwrap();
    let before = now_ms();
    d.signal(Signal::SIGHUP);
    wait_reload(&d, addr, true, before - 1000);
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&global)
            .is_ok_and(|t| t.contains("log_level = debug"))),
        "{}",
        std::fs::read_to_string(&global).unwrap_or_default()
    );
    assert_eq!(
        pool_field(&d, "a", "/master/pid"),
        pid,
        "the master was restarted"
    );
}
