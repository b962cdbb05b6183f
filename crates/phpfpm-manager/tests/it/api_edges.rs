//! The API at its edges, against the real manager running a real php-fpm
//! pool: request heads too large for the manager answered in the error
//! shape (plain and over TLS), the per-client connection cap, and the
//! commands that talk to the manager (`status`, `reload`, `scaling`) over
//! TLS and mTLS with certificates made here with `rcgen`. Everything stays
//! on loopback; every loop is bounded in count and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::auth::{ca, exchange, key_new, leaf, parse_head, tls_call};
use crate::support::{manager_bin, wait_for, TestDaemon, TestDir};

/// One supervised, autoscaled pool (the scaling command applies to it),
/// collected every second.
const POOL: &str = "monitoring:\n  collect_interval: 1s\n  idle_interval: 1s\n\
                    pools:\n  - name: app\n    max_workers: 4\n    scaling:\n      enabled: true\n      min_workers: 1\n      max_workers: 4\n";

/// Sends `head` (and nothing more) on a new connection, reads the answer:
/// status and body. The whole head is written even though the manager
/// stops reading it: it answers, then reads and drops the rest.
fn send_head(addr: SocketAddr, head: &[u8]) -> (u16, String, Vec<(String, String)>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    // A write the manager cut short still leaves its answer to read.
    let _ = s.write_all(head);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head);
    (status, body.to_owned(), headers)
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error shape: {body}"))
        .to_owned()
}

#[test]
fn oversized_request_lines_and_headers_get_the_error_shape() {
    let d = TestDaemon::start("edge-head", Some(POOL), &[]);
    d.wait_pool_up("app", Duration::from_secs(30));
    let addr = d.addr;
    let query = "a".repeat(1 << 20);

    // A query string of 1 MB: 414 in the error shape.
    let head = format!("GET /api/v1/pools?q={query} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, body, headers) = send_head(addr, head.as_bytes());
    assert_eq!(status, 414, "{body}");
    assert_eq!(error_code(&body), "uri_too_long");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json")),
        "{headers:?}"
    );
    // The same on a kept-alive connection after an answered request.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (code, _, _) = exchange_keep_alive(&mut s, "/health/live");
    assert_eq!(code, 200);
    let _ = s.write_all(head.as_bytes());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 414 "), "{rest:.200}");
    assert!(rest.contains("\"uri_too_long\""), "{rest:.400}");

    // One header of 100 KB, and 150 small headers: 431 in the error shape.
    let big = format!(
        "GET /api/v1/pools HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let (status, body, _) = send_head(addr, big.as_bytes());
    assert_eq!(status, 431, "{body}");
    assert_eq!(error_code(&body), "headers_too_large");
    let mut many = "GET /api/v1/pools HTTP/1.1\r\nHost: x\r\n".to_owned();
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, body, _) = send_head(addr, many.as_bytes());
    assert_eq!(status, 431, "{body}");
    assert_eq!(error_code(&body), "headers_too_large");

    // Within the limits (a 40 KB header, 90 headers) requests are answered.
    let fits = format!(
        "GET /api/v1/pools HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40 * 1024)
    );
    let (status, body, _) = send_head(addr, fits.as_bytes());
    assert_eq!(status, 200, "{body:.300}");
    let mut ninety = "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_owned();
    for i in 0..90 {
        ninety.push_str(&format!("X-H{i}: v\r\n"));
    }
    ninety.push_str("\r\n");
    assert_eq!(send_head(addr, ninety.as_bytes()).0, 200);
    // A body of 50 KB after a small head is read as a body: the request
    // reaches its handler (which refuses the overlong text, 400).
    let body = format!("{{\"text\":\"{}\"}}", "t".repeat(50 * 1024));
    let post = format!(
        "POST /api/v1/events/annotations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, answer, _) = send_head(addr, post.as_bytes());
    assert_eq!(status, 400, "{answer}");
    assert_eq!(error_code(&answer), "invalid_parameter");

    let refused = d
        .metric("phpfpm_manager_http_connections_closed_total{reason=\"head_too_large\"}")
        .unwrap_or(0.0);
    assert!(refused >= 4.0, "head_too_large closes: {refused}");
    // Nothing broke.
    assert_eq!(d.get("/health/ready").unwrap().0, 200);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// One request on a kept-alive connection; its status.
fn exchange_keep_alive(s: &mut TcpStream, path: &str) -> (u16, usize, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                let code = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return (code, len, body.to_owned());
            }
        }
    }
}

#[test]
fn an_oversized_head_over_tls_gets_the_error_shape() {
    let dir = TestDir::new("edge-head-tls");
    let authority = ca("edge CA");
    let server = leaf("manager.test", true, &authority);
    std::fs::write(dir.join("server.crt"), server.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server.key.serialize_pem()).unwrap();
    let cfg = format!(
        "{POOL}server:\n  tls:\n    enabled: true\n    cert_path: {d}/server.crt\n    key_path: {d}/server.key\n",
        d = dir.path.display()
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    let up = wait_for(Duration::from_secs(30), || {
        tls_call(d.addr, &authority, None, "GET", "/health/live", &[], "")
            .is_ok_and(|((code, _, _), _)| code == 200)
    });
    assert!(up, "no answer over TLS; log:\n{}", d.log());
    let long = format!("/api/v1/pools?q={}", "a".repeat(100 * 1024));
    let ((code, _, body), _) =
        tls_call(d.addr, &authority, None, "GET", &long, &[], "").expect("an answer over TLS");
    assert_eq!(code, 414, "{body}");
    assert_eq!(error_code(&body), "uri_too_long");
}

/// A connection from `source` (a loopback address other than 127.0.0.1
/// stands for another client).
fn connect_from(rt: &tokio::runtime::Runtime, source: &str, to: SocketAddr) -> TcpStream {
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    let s = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(from)?;
            tokio::time::timeout(Duration::from_secs(5), sock.connect(to)).await?
        })
        .unwrap()
        .into_std()
        .unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A request whose body never comes: its handler waits for the body, so
/// the connection is being answered (busy) until the request timeout.
fn start_busy_request(s: &mut TcpStream) {
    s.write_all(
        b"POST /api/v1/events/annotations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"text\":",
    )
    .unwrap();
}

#[test]
fn one_client_over_its_connection_cap_is_refused_while_others_are_served() {
    const CAP: usize = 4;
    let cfg = format!(
        "{POOL}server:\n  limits:\n    max_connections_per_client: {CAP}\n    request_timeout: 2m\n"
    );
    let d = TestDaemon::start("edge-per-client", Some(&cfg), &[]);
    d.wait_pool_up("app", Duration::from_secs(30));
    let addr = d.addr;
    let greedy = "127.0.0.2";
    let rt = crate::support::rt();

    // The greedy client's connections, each with a request being answered.
    let mut busy: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = connect_from(&rt, greedy, addr);
            start_busy_request(&mut s);
            s
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(10), || d
            .metric("phpfpm_manager_http_connections ")
            .unwrap_or(0.0)
            >= CAP as f64),
        "the busy connections were not taken; log:\n{}",
        d.log()
    );
    // One more from it: closed at once, no answer.
    let mut over = connect_from(&rt, greedy, addr);
    let _ = over.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = over.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "a connection over the client's cap was answered: {}",
        String::from_utf8_lossy(&buf)
    );
    let refused = d
        .metric("phpfpm_manager_http_connections_closed_total{reason=\"client_limit\"}")
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "client_limit closes: {refused}");

    // Another client is served, and readiness answers, meanwhile.
    let mut other = connect_from(&rt, "127.0.0.3", addr);
    let (code, _, body) = exchange(&mut other, "GET", "/api/v1/pools/app", &[], "").unwrap();
    assert_eq!(code, 200, "{body}");
    let t = Instant::now();
    let (code, body) = d.get("/health/ready").unwrap();
    assert_eq!(code, 200, "{body}");
    eprintln!(
        "/health/ready answered in {:?} with a client at its cap",
        t.elapsed()
    );
    // The busy connections were kept.
    for s in &mut busy {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 16];
        assert!(
            matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a busy connection was closed"
        );
        s.set_nonblocking(false).unwrap();
    }
    drop(busy);
    // (The connection asking for /metrics is open too.)
    let open_now = || d.metric("phpfpm_manager_http_connections ").unwrap_or(0.0);
    assert!(
        wait_for(Duration::from_secs(10), || open_now() <= 1.0),
        "the busy connections are still open: {}",
        open_now()
    );

    // At its cap with idle connections, the client's own quietest one makes
    // room: a new request of it is answered, others never pay for it.
    let idle: Vec<TcpStream> = (0..CAP).map(|_| connect_from(&rt, greedy, addr)).collect();
    assert!(
        wait_for(Duration::from_secs(10), || open_now() > CAP as f64),
        "the idle connections were not taken: {}",
        open_now()
    );
    let evicted_before = d
        .metric("phpfpm_manager_http_connections_closed_total{reason=\"evicted\"}")
        .unwrap_or(0.0);
    let mut fresh = connect_from(&rt, greedy, addr);
    let (code, _, _) = exchange(&mut fresh, "GET", "/health/live", &[], "").unwrap();
    assert_eq!(code, 200);
    let evicted = d
        .metric("phpfpm_manager_http_connections_closed_total{reason=\"evicted\"}")
        .unwrap_or(0.0);
    assert!(evicted > evicted_before, "{evicted_before} -> {evicted}");
    drop(idle);
}

// --- The commands over TLS --------------------------------------------------

fn cli(d: &TestDaemon, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(manager_bin());
    c.args(args)
        .arg("--config")
        .arg(d.dir.join("config.yaml"))
        .current_dir(&d.dir.path)
        // The address the manager was started on (as the test kit sets it).
        .env("PHPFPM_MANAGER_SERVER__BIND_ADDRESS", d.addr.to_string())
        .env_remove("PHPFPM_MANAGER_URL")
        .env_remove("PHPFPM_MANAGER_CA_FILE")
        .env_remove("PHPFPM_MANAGER_CLIENT_CERT")
        .env_remove("PHPFPM_MANAGER_CLIENT_KEY")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn status_reload_and_scaling_speak_https_and_mtls() {
    let dir = TestDir::new("edge-cli-tls");
    let authority = ca("cli CA");
    let stranger = ca("stranger CA");
    let server = leaf("manager.test", true, &authority);
    let client = leaf("ops.example.com", false, &authority);
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("server.crt", &server.cert.pem());
    write("server.key", &server.key.serialize_pem());
    write("ca.crt", &authority.cert.pem());
    write("stranger.crt", &stranger.cert.pem());
    write("client.crt", &client.cert.pem());
    write("client.key", &client.key.serialize_pem());
    let reader = key_new("reader", "read");
    let cfg = format!(
        "{POOL}server:\n  tls:\n    enabled: true\n    cert_path: {d}/server.crt\n    key_path: {d}/server.key\n    client_ca_path: {d}/ca.crt\n    ca_path: {d}/ca.crt\n\
         \x20 auth:\n    enabled: true\n    certificates:\n      - common_name: ops.example.com\n        name: ops\n        scope: admin\n    keys:\n{keys}",
        d = dir.path.display(),
        keys = reader.entry
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    let up = wait_for(Duration::from_secs(30), || {
        tls_call(
            d.addr,
            &authority,
            Some(&client),
            "GET",
            "/api/v1/pools/app",
            &[],
            "",
        )
        .is_ok_and(|((code, _, body), _)| code == 200 && body.contains("\"up\":true"))
    });
    assert!(up, "pool not up over TLS; log:\n{}", d.log());
    let cert = d.dir.join("client.crt").display().to_string();
    let key = d.dir.join("client.key").display().to_string();
    let mtls = [
        ("PHPFPM_MANAGER_CLIENT_CERT", cert.as_str()),
        ("PHPFPM_MANAGER_CLIENT_KEY", key.as_str()),
    ];

    // The config says TLS, names the CA and asks for client certificates:
    // without one, a clear refusal before any connection.
    let out = cli(&d, &["status", "--json"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", both(&out));
    assert!(both(&out).contains("--client-cert"), "{}", both(&out));

    // With the client certificate: status over https (the certificate's
    // principal has admin scope).
    let out = cli(&d, &["status", "--json"], &mtls);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc.to_string().contains("\"app\""), "{doc}");
    let out = cli(&d, &["status"], &mtls);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(both(&out).contains("app"), "{}", both(&out));

    // reload of a pool (operate) and of the config (admin).
    let out = cli(&d, &["reload", "app", "--reason", "tls test"], &mtls);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        both(&out).contains("reloaded by hand-over"),
        "{}",
        both(&out)
    );
    let out = cli(&d, &["reload"], &mtls);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // scaling: pause and resume.
    let out = cli(
        &d,
        &["scaling", "app", "pause", "--reason", "tls test"],
        &mtls,
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let out = cli(&d, &["scaling", "app", "resume"], &mtls);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // The client certificate decides alone unless a key is sent: the read
    // key cannot reload (403 is a failure, exit 1).
    let mut with_key = mtls.to_vec();
    with_key.push(("PHPFPM_MANAGER_KEY", reader.secret.as_str()));
    let out = cli(&d, &["reload", "app"], &with_key);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("403"), "{}", both(&out));
    assert!(!both(&out).contains(&reader.secret), "the key was printed");

    // A CA that did not sign the manager's certificate: refused, and said so.
    let stranger_ca = d.dir.join("stranger.crt").display().to_string();
    let mut wrong = mtls.to_vec();
    wrong.push(("PHPFPM_MANAGER_CA_FILE", stranger_ca.as_str()));
    let out = cli(&d, &["status"], &wrong);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("--ca-file"), "{}", both(&out));

    // An explicit https URL with --ca-file works without the config.
    let url = format!("https://{}", d.addr);
    let ca_file = d.dir.join("ca.crt").display().to_string();
    let out = Command::new(manager_bin())
        .args(["status", "--json", "--url", &url, "--ca-file", &ca_file])
        .args(["--client-cert", &cert, "--client-key", &key])
        .env_remove("PHPFPM_MANAGER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    // Plain http to the TLS port: no answer, and a hint at https.
    let plain = format!("http://{}", d.addr);
    let out = Command::new(manager_bin())
        .args(["status", "--url", &plain])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(both(&out).contains("https://"), "{}", both(&out));
}

// --- Scopes over every documented operation ---------------------------------

/// What the product says a route asks of its caller (docs/api: reads need
/// `read`, changes `operate`, the configuration reload `admin`; health,
/// `/metrics` and the page's files are open). Written here independently
/// of the manager's own table, so that a route given the wrong scope fails.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Needs {
    Open,
    Read,
    Operate,
    Admin,
}

fn documented_need(method: &str, path: &str) -> Needs {
    let open = [
        "/health",
        "/health/live",
        "/health/ready",
        "/api/v1/health",
        "/api/v1/health/live",
        "/api/v1/health/ready",
        "/metrics",
        "/",
        "/assets/{name}",
        "/favicon.ico",
    ];
    match method {
        "GET" | "HEAD" if open.contains(&path) => Needs::Open,
        "GET" | "HEAD" => Needs::Read,
        _ if path == "/api/v1/config/reload" => Needs::Admin,
        _ => Needs::Operate,
    }
}

#[test]
fn scope_matrix_over_every_documented_operation_and_every_caller() {
    let (reader, operator, admin) = (
        key_new("reader", "read"),
        key_new("deployer", "operate"),
        key_new("root", "admin"),
    );
    let cfg = format!(
        "{POOL}server:\n  limits:\n    client_requests_per_second: 1000\n    client_burst: 1000\n  auth:\n    enabled: true\n    keys:\n{}{}{}",
        reader.entry, operator.entry, admin.entry
    );
    let d = TestDaemon::start("edge-matrix", Some(&cfg), &[]);
    d.wait_pool_up("app", Duration::from_secs(30));
    let admin_bearer = format!("Bearer {}", admin.secret);
    let (code, _, doc) = {
        let mut s = TcpStream::connect(d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        exchange(
            &mut s,
            "GET",
            "/api/v1/openapi.json",
            &[("Authorization", &admin_bearer)],
            "",
        )
        .unwrap()
    };
    assert_eq!(code, 200, "{doc}");
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let wrong = format!("Bearer pfm_{}", "0".repeat(64));
    let callers: Vec<(&str, Option<String>, Needs)> = vec![
        ("no key", None, Needs::Open),
        ("wrong key", Some(wrong), Needs::Open),
        (
            "read",
            Some(format!("Bearer {}", reader.secret)),
            Needs::Read,
        ),
        (
            "operate",
            Some(format!("Bearer {}", operator.secret)),
            Needs::Operate,
        ),
        ("admin", Some(admin_bearer.clone()), Needs::Admin),
    ];
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{pool}", "app")
            .replace("{name}", "app.js");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let need = documented_need(&method, template);
            // Changes carry an empty JSON object: enough to be judged by
            // scope; what the handler thinks of it is not asked here.
            let body = if method == "GET" { "" } else { "{}" };
            for (who, authz, has) in &callers {
                let hdrs: Vec<(&str, &str)> = authz
                    .iter()
                    .map(|a| ("Authorization", a.as_str()))
                    .collect();
                let mut s = TcpStream::connect(d.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let (code, _, answer) = exchange(&mut s, &method, &path, &hdrs, body).unwrap();
                let what = format!("{method} {path} as {who}: {code} {answer:.200}");
                assert!(code < 500 || code == 503, "{what}");
                let want = if need == Needs::Open || *has >= need {
                    None
                } else if *has == Needs::Open {
                    Some((401, "unauthorized"))
                } else {
                    Some((403, "forbidden"))
                };
                match want {
                    Some((status, err)) => {
                        assert_eq!(code, status, "{what}");
                        assert_eq!(error_code(&answer), err, "{what}");
                    }
                    None => assert!(
                        ![401, 403, 429].contains(&code),
                        "{what}: should have been allowed"
                    ),
                }
                checked += 1;
            }
        }
    }
    // Every operation of the document (30 today) by every caller.
    assert!(checked >= 25 * callers.len(), "only {checked} calls");
    eprintln!("{checked} calls: every documented operation by 5 callers");
}
