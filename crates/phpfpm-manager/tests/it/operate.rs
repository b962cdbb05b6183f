//! The operator's routes and commands against a running manager with real
//! php-fpm pools: a pool reload and restart are hand-overs to new masters
//! that leave the other pool alone, a configuration reload over the API
//! takes the SIGHUP path (an invalid config is 422 and changes nothing), an
//! annotation shows in the history and in Grafana's annotations, the
//! `status` and `reload` commands print what an operator needs, and hostile
//! requests at the socket (a 1 MB query string, a 10 KB name) get a 4xx and
//! change nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use crate::supervisor::{pool_field, pools_up, prepare};
use crate::support::{manager_bin, wait_for, TestDaemon, TestDir};

fn config(dir: &TestDir, api_workers: u32) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n\
         pools:\n\
         \x20 - name: www\n    pm: static\n    max_workers: 2\n    chdir: {www}\n\
         \x20 - name: api\n    pm: static\n    max_workers: {api_workers}\n    chdir: {www}\n\
         \x20 - name: obs\n    supervise: false\n    fastcgi_endpoint: 127.0.0.1:9\n",
        www = dir.join("www").display()
    )
}

/// One raw HTTP/1.1 request; the status and the JSON body (null if none).
pub(crate) fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    // Operator actions send JSON; a body-less one still says so.
    let (status, payload) = crate::support::http_request(
        addr,
        method,
        path,
        "",
        Some(body.unwrap_or("")),
        Duration::from_secs(60),
    )
    .unwrap();
    (
        status,
        serde_json::from_str(&payload).unwrap_or(Value::Null),
    )
}

fn cli(args: &[&str], dir: &TestDir) -> Output {
    Command::new(manager_bin())
        .args(args)
        .current_dir(&dir.path)
        .env_remove("PHPFPM_MANAGER_CONFIG")
        .env_remove("PHPFPM_MANAGER_URL")
        .env_remove("PHPFPM_MANAGER_KEY")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn get_json(d: &TestDaemon, path: &str) -> Value {
    d.get(path)
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn pool_reload_and_restart_are_hand_overs_that_leave_the_other_pool_alone() {
    let dir = prepare("operate-pools");
    let cfg = config(&dir, 2);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["www", "api"]);
    let www_pid = pool_field(&d, "www", "/master/pid");
    let api_pid = pool_field(&d, "api", "/master/pid");

    let (code, v) = call(
        d.addr,
        "POST",
        "/api/v1/pools/www/reload",
        Some(r#"{"reason": "deploy 4.2.1"}"#),
    );
    assert_eq!(code, 202, "{v}\n{}", d.log());
    assert_eq!(v["old_pid"], www_pid, "{v}");
    let new_pid = v["new_pid"].clone();
    assert_ne!(new_pid, www_pid, "{v}");
    assert!(
        wait_for(Duration::from_secs(20), || pool_field(
            &d,
            "www",
            "/master/pid"
        ) == new_pid),
        "www does not run the new master {new_pid}"
    );
    let (code, v) = call(d.addr, "POST", "/api/v1/pools/www/restart", None);
    assert_eq!(code, 202, "{v}\n{}", d.log());
    assert_eq!(v["old_pid"], new_pid, "{v}");
    assert_eq!(v["action"], "restart");
    // Both were hand-overs of www only.
    assert_eq!(pool_field(&d, "api", "/master/pid"), api_pid);
    assert!(wait_for(Duration::from_secs(20), || {
        let e = get_json(&d, "/api/v1/events/recent?pool=www&type=pool_change");
        e["events"].as_array().is_some_and(|l| {
            l.iter()
                .any(|e| e["details"]["reason"] == "reload by api: deploy 4.2.1")
        })
    }));

    // Honest refusals.
    let (code, v) = call(d.addr, "POST", "/api/v1/pools/nope/reload", None);
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    let (code, v) = call(d.addr, "POST", "/api/v1/pools/obs/reload", None);
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["code"], "observed");

    // The same from the command line.
    let url = d.addr.to_string();
    let out = cli(&["reload", "www", "--url", &url, "--reason", "cli"], &d.dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).starts_with("pool www: reloaded by hand-over in "),
        "{}",
        text(&out)
    );
    let out = cli(&["reload", "nope", "--url", &url], &d.dir);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("no pool named"), "{}", text(&out));
    let out = cli(&["reload", "obs", "--url", &url], &d.dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("observed"), "{}", text(&out));
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

#[test]
fn a_config_reload_over_the_api_is_a_sighup_and_a_bad_config_changes_nothing() {
    let dir = prepare("operate-config");
    let cfg = config(&dir, 2);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["www", "api"]);
    let www_pid = pool_field(&d, "www", "/master/pid");
    let api_pid = pool_field(&d, "api", "/master/pid");

    // api gets a third worker: a hand-over of api alone.
    std::fs::write(d.dir.join("config.yaml"), config(&d.dir, 3)).unwrap();
    let out = cli(&["reload", "--url", &d.addr.to_string()], &d.dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(text(&out), "configuration reloaded\n");
    assert!(
        wait_for(Duration::from_secs(20), || {
            pool_field(&d, "api", "/pm/max_children") == json!(3)
        }),
        "api was not resized; log:\n{}",
        d.log()
    );
    assert_eq!(pool_field(&d, "www", "/master/pid"), www_pid);
    let status = get_json(&d, "/api/v1/status");
    assert_eq!(status["last_reload"]["accepted"], true, "{status}");

    // An invalid config: 422 with every problem, nothing changed.
    let api_pid_now = pool_field(&d, "api", "/master/pid");
    assert_ne!(api_pid_now, api_pid);
    std::fs::write(
        d.dir.join("config.yaml"),
        "pools:\n  - name: www\n    max_workers: 0\n    bogus: 1\n",
    )
    .unwrap();
    let (code, v) = call(d.addr, "POST", "/api/v1/config/reload", Some("{}"));
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["error"]["code"], "config_invalid", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("pools[0].max_workers") && m.contains("pools[0].bogus"),
        "{m}"
    );
    assert_eq!(pool_field(&d, "www", "/master/pid"), www_pid);
    assert_eq!(pool_field(&d, "api", "/master/pid"), api_pid_now);
    let status = get_json(&d, "/api/v1/status");
    assert_eq!(status["last_reload"]["accepted"], false, "{status}");
    // Bad bodies never reach the reload loop.
    let (code, v) = call(
        d.addr,
        "POST",
        "/api/v1/config/reload",
        Some(r#"{"force": true}"#),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `force`"),
        "{v}"
    );
    assert_eq!(
        get_json(&d, "/api/v1/status")["last_reload"],
        status["last_reload"]
    );
}

#[test]
fn an_annotation_shows_in_history_and_grafana_and_status_prints_the_pools() {
    let dir = prepare("operate-status");
    let cfg = config(&dir, 2);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["www", "api"]);

    let (code, v) = call(
        d.addr,
        "POST",
        "/api/v1/events/annotations",
        Some(r#"{"text": "deploy 4.2.1", "pool": "www", "tags": ["deploy"]}"#),
    );
    assert_eq!(code, 202, "{v}");
    // Stored, then served as a Grafana annotation (GET form and SimpleJSON).
    let found = |path: &str, method: &str, body: Option<&str>| {
        let (code, v) = call(d.addr, method, path, body);
        code == 200
            && v.as_array().is_some_and(|l| {
                l.iter().any(|a| {
                    a["text"] == "deploy 4.2.1"
                        && a["tags"]
                            .as_array()
                            .is_some_and(|t| t.contains(&json!("deploy")))
                })
            })
    };
    assert!(
        wait_for(Duration::from_secs(20), || found(
            "/api/v1/events/annotations?type=annotation",
            "GET",
            None
        )),
        "the annotation never showed; log:\n{}",
        d.log()
    );
    assert!(found(
        "/api/v1/events/annotations",
        "POST",
        Some(
            r#"{"rangeRaw": {"from": "now-1h", "to": "now"}, "annotation": {"name": "deploys", "query": "type=annotation"}}"#
        )
    ));
    let (code, v) = call(
        d.addr,
        "GET",
        "/api/v1/events?type=annotation&pool=www",
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["events"][0]["actor"], "api", "{v}");

    // The table.
    let url = d.addr.to_string();
    let out = cli(&["status", "--url", &url], &d.dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("POOL"), "{t}");
    assert!(lines[0].contains("RECOMMENDED/APPLIED"), "{t}");
    let www = lines
        .iter()
        .find(|l| l.starts_with("www "))
        .expect("a www line");
    assert!(www.contains(" up "), "{t}");
    assert!(www.contains("/2"), "{t}");
    assert!(www.ends_with(" ago"), "www's last event: {t}");
    let obs = lines
        .iter()
        .find(|l| l.starts_with("obs "))
        .expect("an obs line");
    assert!(obs.contains(" down "), "{t}");

    // The raw document, and the address from the environment.
    let out = Command::new(manager_bin())
        .args(["status", "--json"])
        .current_dir(&d.dir.path)
        .env("PHPFPM_MANAGER_URL", format!("http://{url}"))
        .env_remove("PHPFPM_MANAGER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pools"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(v["workers"]["www"]["workers"].is_array(), "{v}");

    // Refreshed in place.
    let out = cli(
        &[
            "status",
            "--url",
            &url,
            "--watch",
            "--count",
            "2",
            "--interval",
            "200ms",
        ],
        &d.dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(t.matches("\x1b[H\x1b[2J").count(), 2, "{t}");
    assert_eq!(t.matches("\nPOOL").count(), 2, "{t}");

    // No manager there: exit 1 naming the address.
    let out = cli(&["status", "--url", "127.0.0.1:1"], &d.dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot reach the manager at http://127.0.0.1:1"),
        "{}",
        text(&out)
    );
}

/// Sends `head` (a request line and headers) while reading the answer in
/// parallel: the server answers an oversized head before the client has
/// finished sending it. Returns the status line's code.
fn status_of_raw(addr: SocketAddr, head: Vec<u8>) -> Option<u16> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The server may close before all of it is sent.
        let _ = writer.write_all(&head);
    });
    let mut reader = s;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = sender.join();
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

#[test]
fn hostile_requests_at_the_socket_get_a_4xx_and_change_nothing() {
    let dir = prepare("operate-hostile");
    let cfg = config(&dir, 2);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["www", "api"]);
    let www_pid = pool_field(&d, "www", "/master/pid");

    // A 1 MB query string: refused before the router with 414 (the head
    // is larger than the manager reads; the error shape of that answer is
    // checked in `api_edges`).
    let q = "x".repeat(1 << 20);
    for path in [
        format!("/api/v1/events?pool={q}"),
        format!("/api/v1/pools/www/reload?{q}"),
    ] {
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let code = status_of_raw(d.addr, head.into_bytes());
        assert_eq!(code, Some(414), "a 1 MB request line");
    }
    // Under the buffer, a long unknown parameter is named in the error shape.
    let (code, v) = call(
        d.addr,
        "GET",
        &format!("/api/v1/events?{}=1", "k".repeat(40_000)),
        None,
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_parameter", "{v}");
    // A 10 KB pool name, `..`, `%00`.
    for name in [
        "p".repeat(10 * 1024),
        "..".to_owned(),
        "%2e%2e".to_owned(),
        "www%00".to_owned(),
    ] {
        let (code, v) = call(
            d.addr,
            "POST",
            &format!("/api/v1/pools/{name}/reload"),
            None,
        );
        assert_eq!(code, 404, "{v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
    // Malformed JSON, a wrong content type, an unknown field, repeated parameters.
    let (code, v) = call(
        d.addr,
        "POST",
        "/api/v1/pools/www/reload",
        Some("{\"reason\":"),
    );
    assert_eq!(
        (code, v["error"]["code"].clone()),
        (400, json!("invalid_parameter")),
        "{v}"
    );
    let (code, v) = call(
        d.addr,
        "POST",
        "/api/v1/pools/www/reload",
        Some(r#"{"reson": "x"}"#),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `reson`"),
        "{v}"
    );
    let (code, v) = call(d.addr, "GET", "/api/v1/events/recent?limit=1&limit=2", None);
    assert_eq!(
        (code, v["error"]["code"].clone()),
        (400, json!("invalid_parameter")),
        "{v}"
    );
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /api/v1/pools/www/reload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 415"), "{out}");
    assert!(out.contains("unsupported_media_type"), "{out}");

    // Nothing changed, nothing broke.
    assert_eq!(pool_field(&d, "www", "/master/pid"), www_pid);
    assert_eq!(d.get("/health/live").unwrap().0, 200);
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}
