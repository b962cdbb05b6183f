//! A configuration reload (SIGHUP) that is refused: the running pools stay
//! as they were, and the refusal with every problem is visible over HTTP
//! (`/api/v1/status`, `/metrics`), not only in the log.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::supervisor::{pool_field, pools_up, prepare};
use crate::support::{http_get, promtool_check, TestDaemon};

fn good(dir: &crate::support::TestDir) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n\
         pools:\n\
         \x20 - name: a\n    pm: static\n    max_workers: 1\n    chdir: {www}\n",
        www = dir.join("www").display()
    )
}

fn last_reload(d: &TestDaemon) -> serde_json::Value {
    last_reload_at(d.addr)
}

/// The `last_reload` of `/api/v1/status` at `addr` (Null when none).
pub(crate) fn last_reload_at(addr: SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(addr, "/api/v1/status").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v.get("last_reload").cloned().unwrap_or_default()
}

fn wait_reload(d: &TestDaemon, accepted: bool, after_ms: i64) -> serde_json::Value {
    wait_reload_at(d, d.addr, accepted, after_ms)
}

/// Waits up to 30 s for a reload with `accepted` recorded at or after
/// `after_ms`, asking the manager at `addr` (which a reload may move).
pub(crate) fn wait_reload_at(
    d: &TestDaemon,
    addr: SocketAddr,
    accepted: bool,
    after_ms: i64,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let r = last_reload_at(addr);
        if r["accepted"] == serde_json::json!(accepted)
            && r["at_ms"].as_i64().is_some_and(|t| t >= after_ms)
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no reload with accepted={accepted} at {addr}: {}\n{}",
        last_reload_at(addr),
        d.log()
    );
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_refused_reload_is_visible_over_http_with_every_problem() {
    let dir = prepare("reload-refused");
    let cfg = good(&dir);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["a"]);
    assert_eq!(last_reload(&d), serde_json::Value::Null, "no reload yet");
    let pid = pool_field(&d, "a", "/master/pid");

    // Two unrelated problems, plus a value that would make a follow-on
    // complaint if the bad interval were compared.
    let bad = cfg.replace(
        "collect_interval: 1s\n",
        "collect_interval: 5 parsecs\n  busy_interval: 2s\n  max_process_series: -1\n",
    );
    std::fs::write(d.dir.join("config.yaml"), bad).unwrap();
    let before = now_ms();
    d.signal(Signal::SIGHUP);
    let r = wait_reload(&d, false, before - 1000);
    let problems: Vec<String> = r["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|p| p.contains("monitoring.collect_interval")));
    assert!(problems
        .iter()
        .any(|p| p.contains("monitoring.max_process_series")));
    assert!(r["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
    let page = d
        .wait_metrics(Duration::from_secs(10), |b| {
            b.contains("phpfpm_manager_config_reload_failures_total 1")
                && b.contains("phpfpm_manager_config_last_reload_success 0")
        })
        .unwrap_or_else(|| panic!("reload metrics missing; log:\n{}", d.log()));
    promtool_check(&page).unwrap();
    // Nothing changed.
    assert_eq!(pool_field(&d, "a", "/master/pid"), pid);

    // A good config afterwards is applied and says so.
    std::fs::write(d.dir.join("config.yaml"), &cfg).unwrap();
    let before = now_ms();
    d.signal(Signal::SIGHUP);
    let r = wait_reload(&d, true, before - 1000);
    assert_eq!(r["problems"], serde_json::json!([]));
    d.wait_metrics(Duration::from_secs(10), |b| {
        b.contains("phpfpm_manager_config_reload_failures_total 1")
            && b.contains("phpfpm_manager_config_last_reload_success 1")
    })
    .unwrap_or_else(|| panic!("reload metrics not back; log:\n{}", d.log()));
}
