//! Authentication, scopes, TLS and mTLS, per-client limits and the audit
//! trail, against the real manager running a real php-fpm pool: keys made by
//! `phpfpm-manager key new`, certificates made here with `rcgen`, a real TLS
//! client (rustls). Every load loop is bounded in count and time and stays
//! on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

use crate::support::{manager_bin, wait_for, TestDaemon, TestDir};

/// One supervised, autoscaled pool (scaling controls apply to it),
/// collected every second.
const POOL: &str = "monitoring:\n  collect_interval: 1s\n  idle_interval: 1s\n\
                    pools:\n  - name: app\n    max_workers: 4\n    scaling:\n      enabled: true\n      min_workers: 1\n      max_workers: 4\n";

/// A key made by the CLI: the key and the lines it prints for the config.
pub(crate) struct Key {
    pub(crate) secret: String,
    pub(crate) entry: String,
}

pub(crate) fn key_new(name: &str, scope: &str) -> Key {
    let out = Command::new(manager_bin())
        .args(["key", "new", name, "--scope", scope])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("pfm_"))
        .unwrap_or_else(|| panic!("no key in {text}"))
        .to_owned();
    // The key is printed once; the config lines hold only its digest.
    assert_eq!(text.matches(&secret).count(), 1, "{text}");
    let entry: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("- name:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let digest: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(entry.contains(&format!("sha256: {digest}")), "{entry}");
    assert!(entry.contains(&format!("scope: {scope}")), "{entry}");
    Key { secret, entry }
}

fn auth_config(keys: &[&Key], extra_server: &str) -> String {
    let mut text = format!("{POOL}server:\n{extra_server}  auth:\n    enabled: true\n    keys:\n");
    for k in keys {
        text.push_str(&k.entry);
    }
    text
}

/// An answer: status, headers (lowercase names), body.
pub(crate) type Answer = (u16, Vec<(String, String)>, String);

/// An HTTP/1.1 exchange over any stream: status, headers (lowercase
/// names) and body. Reads by Content-Length, so it works over TLS whether
/// or not the server sends close_notify.
/// A response head's status and headers (names lowercased).
pub(crate) fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

pub(crate) fn exchange(
    s: &mut (impl Read + Write),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, hdrs) = parse_head(&String::from_utf8_lossy(&buf[..end]));
            let len: usize = hdrs
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return Ok((status, hdrs, body));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    exchange(&mut s, method, path, headers, body).unwrap()
}

fn header<'a>(hdrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hdrs.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// What a caller may do with a route.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    Open,
    Read,
    Operate,
}

#[test]
fn scope_matrix_every_route_by_every_caller() {
    let (reader, operator, admin) = (
        key_new("reader", "read"),
        key_new("deployer", "operate"),
        key_new("root", "admin"),
    );
    let d = TestDaemon::start(
        "auth-matrix",
        Some(&auth_config(&[&reader, &operator, &admin], "")),
        &[],
    );
    d.wait_pool_up("app", Duration::from_secs(30));
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let simplejson = format!(
        r#"{{"range":{{"from":"2020-01-01T00:00:00Z","to":"{now}"}},"annotation":{{"name":"x"}}}}"#
    );
    let routes: Vec<(&str, &str, String, Need)> = vec![
        ("GET", "/health", String::new(), Need::Open),
        ("GET", "/health/live", String::new(), Need::Open),
        ("GET", "/health/ready", String::new(), Need::Open),
        ("GET", "/api/v1/health", String::new(), Need::Open),
        ("GET", "/api/v1/health/live", String::new(), Need::Open),
        ("GET", "/api/v1/health/ready", String::new(), Need::Open),
        ("GET", "/metrics", String::new(), Need::Open),
        ("GET", "/api/v1/status", String::new(), Need::Read),
        ("GET", "/api/v1/pools", String::new(), Need::Read),
        ("GET", "/api/v1/pools/app", String::new(), Need::Read),
        (
            "GET",
            "/api/v1/pools/app/workers",
            String::new(),
            Need::Read,
        ),
        ("GET", "/api/v1/pools/app/scale", String::new(), Need::Read),
        (
            "GET",
            "/api/v1/pools/app/scaling",
            String::new(),
            Need::Read,
        ),
        ("GET", "/api/v1/autoscaling", String::new(), Need::Read),
        ("GET", "/api/v1/events/recent", String::new(), Need::Read),
        (
            "GET",
            "/api/v1/pools/app/metrics?metric=phpfpm_active_processes",
            String::new(),
            Need::Read,
        ),
        ("GET", "/api/v1/events", String::new(), Need::Read),
        (
            "GET",
            "/api/v1/events/annotations",
            String::new(),
            Need::Read,
        ),
        ("GET", "/api/v1/events/stats", String::new(), Need::Read),
        // An unknown path tells an anonymous caller nothing.
        ("GET", "/api/v1/nothing-here", String::new(), Need::Read),
        (
            "POST",
            "/api/v1/pools/app/scaling",
            r#"{"action":"pause","reason":"matrix"}"#.to_owned(),
            Need::Operate,
        ),
        (
            "POST",
            "/api/v1/events/annotations",
            simplejson,
            Need::Operate,
        ),
    ];
    let wrong = format!("Bearer pfm_{}", "0".repeat(64));
    let bearer = |k: &Key| format!("Bearer {}", k.secret);
    let callers: Vec<(&str, Option<String>, Option<Need>)> = vec![
        ("no key", None, None),
        ("wrong key", Some(wrong), None),
        ("read", Some(bearer(&reader)), Some(Need::Read)),
        ("operate", Some(bearer(&operator)), Some(Need::Operate)),
        ("admin", Some(bearer(&admin)), Some(Need::Operate)),
    ];
    let mut unauthorized_bodies = Vec::new();
    for (method, path, body, need) in &routes {
        for (who, authz, has) in &callers {
            let hdrs: Vec<(&str, &str)> = authz
                .iter()
                .map(|a| ("Authorization", a.as_str()))
                .collect();
            let (code, answer_headers, answer) = call(d.addr, method, path, &hdrs, body);
            let what = format!("{method} {path} as {who}: {code} {answer}");
            assert!(code < 500, "{what}");
            assert!(
                header(&answer_headers, "x-request-id").is_some_and(|v| v.len() == 32),
                "{what}: no request id"
            );
            let expected = match (need, has) {
                (Need::Open, _) => None,
                (_, None) => Some(401),
                (Need::Operate, Some(Need::Read)) => Some(403),
                _ => None,
            };
            match expected {
                Some(want) => {
                    assert_eq!(code, want, "{what}");
                    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                    let code_text = if want == 401 {
                        "unauthorized"
                    } else {
                        "forbidden"
                    };
                    assert_eq!(v["error"]["code"], code_text, "{what}");
                    if want == 401 {
                        assert!(
                            header(&answer_headers, "www-authenticate")
                                .is_some_and(|h| h.starts_with("Bearer")),
                            "{what}"
                        );
                        unauthorized_bodies.push(answer.clone());
                    }
                }
                None => {
                    assert!(
                        ![401, 403, 429].contains(&code),
                        "{what}: should have been allowed"
                    );
                    if *path == "/api/v1/pools/app/scaling" && *method == "POST" {
                        assert_eq!(code, 200, "{what}");
                    }
                }
            }
        }
    }
    // A wrong key and no key are answered alike: nothing tells whether a key exists.
    unauthorized_bodies.dedup();
    assert_eq!(unauthorized_bodies.len(), 1, "{unauthorized_bodies:?}");
}

#[test]
fn the_audit_trail_has_one_event_per_change_and_no_secret() {
    let (reader, operator) = (key_new("reader", "read"), key_new("deployer", "operate"));
    let d = TestDaemon::start(
        "auth-audit",
        Some(&auth_config(&[&reader, &operator], "")),
        &[],
    );
    d.wait_pool_up("app", Duration::from_secs(30));
    let body = r#"{"action":"pause","reason":"audit test"}"#;
    let (code, _, answer) = call(
        d.addr,
        "POST",
        "/api/v1/pools/app/scaling",
        &[
            ("Authorization", &format!("Bearer {}", reader.secret)),
            ("X-Request-Id", "audit-refused-1"),
        ],
        body,
    );
    assert_eq!(code, 403, "{answer}");
    let (code, hdrs, answer) = call(
        d.addr,
        "POST",
        "/api/v1/pools/app/scaling",
        &[
            ("Authorization", &format!("Bearer {}", operator.secret)),
            ("X-Request-Id", "audit-allowed-1"),
        ],
        body,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(header(&hdrs, "x-request-id"), Some("audit-allowed-1"));
    let reads = format!("Bearer {}", reader.secret);
    let recent = |id: &str| -> Vec<serde_json::Value> {
        let (_, _, text) = call(
            d.addr,
            "GET",
            "/api/v1/events/recent?type=audit&limit=500",
            &[("Authorization", &reads)],
            "",
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["details"]["request_id"] == id)
            .collect()
    };
    let mut refused = Vec::new();
    let mut allowed = Vec::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            refused = recent("audit-refused-1");
            allowed = recent("audit-allowed-1");
            !refused.is_empty() && !allowed.is_empty()
        }),
        "audit events missing; log:\n{}",
        d.log()
    );
    // Reads are not audited, so the GETs above added nothing.
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    let (r, a) = (&refused[0], &allowed[0]);
    assert_eq!(r["details"]["principal"], "reader");
    assert_eq!(r["details"]["outcome"], "forbidden");
    assert_eq!(r["details"]["status"], 403);
    assert_eq!(r["severity"], "warning");
    assert_eq!(a["details"]["principal"], "deployer");
    assert_eq!(a["details"]["via"], "key");
    assert_eq!(a["details"]["outcome"], "allowed");
    assert_eq!(a["details"]["status"], 200);
    for e in [r, a] {
        assert_eq!(e["pool"], "app", "{e}");
        assert_eq!(e["details"]["method"], "POST");
        assert_eq!(e["details"]["route"], "/api/v1/pools/{pool}/scaling");
    }
    // An anonymous change is audited too, with an id made for it.
    let (code, hdrs, _) = call(d.addr, "POST", "/api/v1/pools/app/scaling", &[], body);
    assert_eq!(code, 401);
    let made = header(&hdrs, "x-request-id").unwrap().to_owned();
    assert!(wait_for(Duration::from_secs(10), || recent(&made).len() == 1));
    assert_eq!(recent(&made)[0]["details"]["principal"], "anonymous");
    // Stored history has them, with the request id as correlation id.
    assert!(wait_for(Duration::from_secs(10), || {
        let (_, _, text) = call(
            d.addr,
            "GET",
            "/api/v1/events?type=audit",
            &[("Authorization", &reads)],
            "",
        );
        text.contains("audit-allowed-1") && text.contains("audit-refused-1")
    }));
    // No key anywhere: events (recent and stored), metrics, the log.
    let (_, _, stored) = call(
        d.addr,
        "GET",
        "/api/v1/events?limit=10000",
        &[("Authorization", &reads)],
        "",
    );
    let (_, _, recent_all) = call(
        d.addr,
        "GET",
        "/api/v1/events/recent?limit=500",
        &[("Authorization", &reads)],
        "",
    );
    let (_, metrics) = d.get("/metrics").unwrap();
    for k in [&reader, &operator] {
        let hex = &k.secret[4..];
        for (what, text) in [
            ("stored events", &stored),
            ("recent events", &recent_all),
            ("metrics", &metrics),
            ("log", &d.log()),
        ] {
            assert!(!text.contains(hex), "a key is in the {what}");
        }
    }
    let refused_total = metrics
        .lines()
        .find(|l| l.starts_with("phpfpm_manager_http_refused_total{reason=\"forbidden\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(refused_total.is_some_and(|n| n >= 1.0), "{metrics}");
}

#[test]
fn a_burst_is_refused_with_retry_after_and_other_clients_go_on() {
    let (burster, other) = (key_new("burster", "read"), key_new("other", "read"));
    let d = TestDaemon::start(
        "auth-limits",
        Some(&auth_config(
            &[&burster, &other],
            "  limits:\n    client_requests_per_second: 2\n    client_burst: 5\n",
        )),
        &[],
    );
    d.wait_pool_up("app", Duration::from_secs(30));
    let hammer = format!("Bearer {}", burster.secret);
    let calm = format!("Bearer {}", other.secret);
    let mut codes = Vec::new();
    let mut retry = None;
    for _ in 0..30 {
        let (code, hdrs, body) = call(
            d.addr,
            "GET",
            "/api/v1/pools",
            &[("Authorization", &hammer)],
            "",
        );
        if code == 429 && retry.is_none() {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "rate_limited", "{body}");
            retry = header(&hdrs, "retry-after").map(|s| s.parse::<u64>().unwrap());
        }
        codes.push(code);
    }
    eprintln!("30 quick requests at 2/s with a burst of 5: {codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    assert!(
        codes[..5].iter().all(|c| *c == 200),
        "the burst allowance: {codes:?}"
    );
    assert!(
        codes.iter().filter(|c| **c == 429).count() >= 10,
        "{codes:?}"
    );
    let retry = retry.expect("429 with Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another principal and the health routes are not affected.
    let (code, _, _) = call(
        d.addr,
        "GET",
        "/api/v1/pools",
        &[("Authorization", &calm)],
        "",
    );
    assert_eq!(code, 200);
    let (code, _, _) = call(d.addr, "GET", "/health/ready", &[], "");
    assert_eq!(code, 200);
    // After the time it was told, the client is served again.
    std::thread::sleep(Duration::from_secs(retry));
    let (code, _, _) = call(
        d.addr,
        "GET",
        "/api/v1/pools",
        &[("Authorization", &hammer)],
        "",
    );
    assert_eq!(code, 200);
}

/// The scrape counter of pool `app`, from `/metrics`.
fn scrapes(d: &TestDaemon) -> f64 {
    d.get("/metrics")
        .ok()
        .and_then(|(_, b)| {
            b.lines()
                .find(|l| {
                    l.starts_with("phpfpm_manager_scrape_duration_seconds_count{pool=\"app\"}")
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

#[test]
fn slow_and_idle_clients_do_not_stop_readiness_or_collection() {
    let k = key_new("probe", "read");
    let d = TestDaemon::start("auth-slow", Some(&auth_config(&[&k], "")), &[]);
    d.wait_pool_up("app", Duration::from_secs(30));
    let addr = d.addr;
    let rt = crate::support::rt();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let stop = stop.clone();
        rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tasks = tokio::task::JoinSet::new();
            // 600 slow clients: headers one byte a second.
            for _ in 0..600 {
                let stop = stop.clone();
                tasks.spawn(async move {
                    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                        return;
                    };
                    let _ = s.write_all(b"GET /health/live HTTP/1.1\r\nX-Slow: ").await;
                    for _ in 0..40 {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        if s.write_all(b"a").await.is_err() {
                            return;
                        }
                    }
                });
            }
            // 2,000 idle keep-alive connections: one answered request each,
            // then nothing.
            for _ in 0..2000 {
                let stop = stop.clone();
                tasks.spawn(async move {
                    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                        return;
                    };
                    let _ = s
                        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await;
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let before = scrapes(&d);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (code, _, body) = exchange(&mut s, "GET", "/health/ready", &[], "")
            .unwrap_or_else(|e| panic!("/health/ready did not answer under load: {e}"));
        assert_eq!(code, 200, "{body}");
        slowest = slowest.max(t.elapsed());
        answered += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = scrapes(&d);
    eprintln!(
        "under 600 slow and 2,000 idle clients: {answered} readiness probes answered, the slowest in {slowest:?}; {} collections in 15 s",
        after - before
    );
    // Collection keeps its 1 s interval, loosely: a loaded CI may lag.
    assert!(
        after - before >= 5.0,
        "collection stalled: {before} -> {after}"
    );
    // The load was real: the manager took the connections and made room.
    let evicted = d
        .get("/metrics")
        .ok()
        .and_then(|(_, b)| {
            b.lines()
                .find(|l| {
                    l.starts_with(
                        "phpfpm_manager_http_connections_closed_total{reason=\"evicted\"}",
                    )
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    assert!(evicted >= 1000.0, "only {evicted} connections evicted");
    stop.cancel();
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), load).await;
    });
    let (code, _, _) = call(
        addr,
        "GET",
        "/api/v1/pools/app",
        &[("Authorization", &format!("Bearer {}", k.secret))],
        "",
    );
    assert_eq!(code, 200);
}

#[test]
fn a_reachable_address_without_authentication_stops_the_start() {
    let dir = TestDir::new("auth-unsafe");
    std::fs::write(dir.join("config.yaml"), "pools:\n  - name: www\n").unwrap();
    let port = crate::support::free_port();
    // The address is refused before anything listens on it.
    let out = Command::new(manager_bin())
        .args(["run", "--config"])
        .arg(dir.join("config.yaml"))
        .current_dir(&dir.path)
        .env(
            "PHPFPM_MANAGER_SERVER__BIND_ADDRESS",
            format!("0.0.0.0:{port}"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("listens beyond this host with authentication off"),
        "{err}"
    );
    assert!(err.contains("server.auth.enabled: true"), "{err}");
    assert!(err.contains("server.allow_unauthenticated: true"), "{err}");
    // Saying so on purpose is accepted (checked without listening).
    std::fs::write(
        dir.join("open.yaml"),
        "server:\n  bind_address: 0.0.0.0:8080\n  allow_unauthenticated: true\npools:\n  - name: www\n",
    )
    .unwrap();
    let out = Command::new(manager_bin())
        .args(["validate", "--config"])
        .arg(dir.join("open.yaml"))
        .current_dir(&dir.path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A TLS certificate that cannot be read is a configuration problem too.
    std::fs::write(
        dir.join("tls.yaml"),
        format!(
            "server:\n  tls:\n    enabled: true\n    cert_path: {0}/missing.crt\n    key_path: {0}/missing.key\npools:\n  - name: www\n",
            dir.path.display()
        ),
    )
    .unwrap();
    let out = Command::new(manager_bin())
        .args(["run", "--config"])
        .arg(dir.join("tls.yaml"))
        .current_dir(&dir.path)
        .env(
            "PHPFPM_MANAGER_SERVER__BIND_ADDRESS",
            format!("127.0.0.1:{port}"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("server.tls.cert_path"), "{err}");
    assert!(err.contains("missing.crt"), "{err}");
}

// --- TLS and mTLS -----------------------------------------------------------

pub(crate) struct Issued {
    pub(crate) cert: Certificate,
    pub(crate) key: KeyPair,
}

pub(crate) fn ca(name: &str) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Issued { cert, key }
}

pub(crate) fn leaf(cn: &str, server: bool, by: &Issued) -> Issued {
    let key = KeyPair::generate().unwrap();
    let sans = if server {
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
    } else {
        Vec::new()
    };
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, &by.cert, &by.key).unwrap();
    Issued { cert, key }
}

/// One request over TLS to the manager, trusting `ca`, with `client` as the
/// client certificate. Returns the answer and the server's certificate.
pub(crate) fn tls_call(
    addr: SocketAddr,
    ca: &Issued,
    client: Option<&Issued>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(Answer, CertificateDer<'static>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.cert.der().clone()],
                PrivateKeyDer::Pkcs8(c.key.serialize_der().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let answer = exchange(&mut s, method, path, headers, body).map_err(|e| e.to_string())?;
    let server_cert = s
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no server certificate")?;
    Ok((answer, server_cert))
}

#[test]
fn tls_and_mtls_with_client_certificates_mapped_to_scopes() {
    let dir = TestDir::new("auth-tls");
    let authority = ca("pfm test CA");
    let stranger_ca = ca("another CA");
    let server = leaf("manager.test", true, &authority);
    let good = leaf("ci.example.com", false, &authority);
    let unmapped = leaf("somebody.example.com", false, &authority);
    let forged = leaf("ci.example.com", false, &stranger_ca);
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("server.crt", &server.cert.pem());
    write("server.key", &server.key.serialize_pem());
    write("clients-ca.crt", &authority.cert.pem());
    let reader = key_new("reader", "read");
    let cfg = format!(
        "{POOL}server:\n  tls:\n    enabled: true\n    cert_path: {d}/server.crt\n    key_path: {d}/server.key\n    client_ca_path: {d}/clients-ca.crt\n\
         \x20 auth:\n    enabled: true\n    certificates:\n      - common_name: ci.example.com\n        name: ci\n        scope: operate\n    keys:\n{keys}",
        d = dir.path.display(),
        keys = reader.entry
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    let addr = d.addr;
    // Up: a good client certificate gets answers, and the pool runs.
    let up = wait_for(Duration::from_secs(30), || {
        tls_call(
            addr,
            &authority,
            Some(&good),
            "GET",
            "/api/v1/pools/app",
            &[],
            "",
        )
        .is_ok_and(|((code, _, body), _)| code == 200 && body.contains("\"up\":true"))
    });
    assert!(up, "no answer over TLS; log:\n{}", d.log());

    // No client certificate, or one from another CA: no answer at all.
    for (what, client) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&forged)),
    ] {
        let res = tls_call(addr, &authority, client, "GET", "/health/live", &[], "");
        assert!(res.is_err(), "{what} was answered: {:?}", res.map(|r| r.0));
    }
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        exchange(&mut s, "GET", "/health/live", &[], "")
    };
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.0 != 200),
        "{plain:?}"
    );

    // The certificate's principal has its scope: operate.
    let pause = r#"{"action":"pause","reason":"tls test"}"#;
    let ((code, _, body), first_cert) = tls_call(
        addr,
        &authority,
        Some(&good),
        "POST",
        "/api/v1/pools/app/scaling",
        &[],
        pause,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(first_cert.as_ref(), server.cert.der().as_ref());
    // A key sent on the same connection decides alone: read cannot change.
    let ((code, _, _), _) = tls_call(
        addr,
        &authority,
        Some(&good),
        "POST",
        "/api/v1/pools/app/scaling",
        &[("Authorization", &format!("Bearer {}", reader.secret))],
        pause,
    )
    .unwrap();
    assert_eq!(code, 403);
    // A certificate the CA signed but no mapping names reaches open routes only.
    let ((code, _, _), _) = tls_call(
        addr,
        &authority,
        Some(&unmapped),
        "GET",
        "/health/live",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(code, 200);
    let ((code, _, body), _) = tls_call(
        addr,
        &authority,
        Some(&unmapped),
        "GET",
        "/api/v1/pools",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(code, 403, "{body}");
    // The refused handshakes were counted.
    let ((_, _, metrics), _) =
        tls_call(addr, &authority, Some(&good), "GET", "/metrics", &[], "").unwrap();
    let refused: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("phpfpm_manager_http_connections_closed_total{reason=\"tls_handshake\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 2.0, "tls_handshake closes: {refused}");

    // SIGHUP re-reads the certificate: new connections get the new one.
    let renewed = leaf("manager-renewed.test", true, &authority);
    std::fs::write(d.dir.join("server.crt"), renewed.cert.pem()).unwrap();
    std::fs::write(d.dir.join("server.key"), renewed.key.serialize_pem()).unwrap();
    d.signal(Signal::SIGHUP);
    let current = || {
        tls_call(
            addr,
            &authority,
            Some(&good),
            "GET",
            "/health/live",
            &[],
            "",
        )
        .map(|(_, c)| c.as_ref().to_vec())
        .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(10), || current()
            == renewed.cert.der().as_ref()),
        "the renewed certificate is not served; log:\n{}",
        d.log()
    );
    // A broken file: the reload is refused and reported, the certificate stays.
    std::fs::write(d.dir.join("server.crt"), "not a certificate\n").unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || d
            .log()
            .contains("TLS certificate reload refused")),
        "log:\n{}",
        d.log()
    );
    assert_eq!(current(), renewed.cert.der().as_ref());
    let ((_, _, events), _) = tls_call(
        addr,
        &authority,
        Some(&good),
        "GET",
        "/api/v1/events/recent?type=config_change",
        &[],
        "",
    )
    .unwrap();
    assert!(
        events.contains("TLS certificate reload refused"),
        "{events}"
    );
}
