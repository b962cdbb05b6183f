//! The OpenAPI document against the running manager: `schemathesis` (the
//! real fuzzer, from PyPI, installed by `scripts/install-deps.sh test`)
//! generates requests for every operation of `GET /api/v1/openapi.json`,
//! valid and invalid, against a manager running two real supervised pools,
//! and checks every answer: no 5xx, and status, content type, headers and
//! body as the document says. It runs twice: without authentication, and
//! with authentication on and a key holding every scope sent as
//! `Authorization: Bearer` (so the operator's and the administrator's
//! routes are reached and act for real). Each run is bounded (examples per
//! operation, a deadline); a missing schemathesis fails the test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::supervisor::{pools_up, prepare};
use crate::support::{TestDaemon, TestDir};

/// Generated cases per operation and phase.
const MAX_EXAMPLES: &str = "25";
/// Generated cases per operation and phase with a key (the answers come
/// from handlers that act: hand-overs, config reloads).
const MAX_EXAMPLES_WITH_KEY: &str = "25";
/// The whole run, well under what a loaded 2-core CI machine allows.
const DEADLINE: Duration = Duration::from_secs(240);

/// The checks that make "every answer conforms to the document".
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance";

fn config(dir: &TestDir) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n\
         scaling:\n  memory_budget: 512MiB\n\
         pools:\n\
         \x20 - name: www\n    pm: static\n    max_workers: 2\n    chdir: {www}\n\
         \x20 - name: api\n    max_workers: 4\n    chdir: {www}\n\
         \x20   scaling:\n      enabled: true\n      min_workers: 1\n      max_workers: 4\n",
        www = dir.join("www").display()
    )
}

/// schemathesis through the Python that has it: pip may put the
/// `schemathesis` script off PATH (pyenv, a user install), the module is
/// always there.
fn schemathesis() -> Command {
    let mut c = Command::new("python3");
    c.args(["-m", "schemathesis.cli"]);
    c
}

fn installed() -> Result<String, String> {
    let out = schemathesis()
        .arg("--version")
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_every_answer_conforms() {
    let dir = prepare("openapi-fuzz");
    let cfg = config(&dir);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    fuzz(&d, None, MAX_EXAMPLES);
}

/// The same run with authentication on and a key holding every scope
/// (`admin` includes `operate` and `read`): every route answers for real,
/// pool reloads, restarts and config reloads included. The per-client rate
/// is raised so that the fuzzer reaches the handlers instead of 429.
#[test]
fn schemathesis_with_an_api_key_finds_no_server_error_and_every_answer_conforms() {
    let crate::auth::Key { secret, entry } = crate::auth::key_new("fuzzer", "admin");
    let dir = prepare("openapi-fuzz-key");
    let cfg = format!(
        "{}server:\n  limits:\n    client_requests_per_second: 100000\n    client_burst: 100000\n\
         \x20 auth:\n    enabled: true\n    keys:\n{entry}",
        config(&dir)
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    let bearer = format!("Authorization: Bearer {secret}");
    pools_up(&d, &["www", "api"]);
    // Authentication is on: without the key, a 401.
    let (code, _) = d.get("/api/v1/pools").unwrap();
    assert_eq!(code, 401, "authentication is not on");
    fuzz(&d, Some(&bearer), MAX_EXAMPLES_WITH_KEY);
    let log = std::fs::read_to_string(d.dir.join("schemathesis.out")).unwrap_or_default();
    assert!(!log.contains(&secret), "the key is in schemathesis' report");
    // The fuzzer's changes were made by the key's principal: audit events
    // name it, so the key was accepted.
    let (_, events) = crate::support::http_request(
        d.addr,
        "GET",
        "/api/v1/events/recent?type=audit&limit=500",
        &format!("{bearer}\r\n"),
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(
        events.contains("\"principal\":\"fuzzer\"") && events.contains("\"outcome\":\"allowed\""),
        "no change allowed to the key's principal: {events}"
    );
}

/// Runs schemathesis over the document `d` serves, sending `bearer` (an
/// `Authorization` header line) with every request when given, and checks
/// that it found nothing and exercised every operation.
fn fuzz(d: &TestDaemon, bearer: Option<&str>, max_examples: &str) {
    let version = installed().unwrap_or_else(|e| {
        panic!("schemathesis is not installed ({e}); `scripts/install-deps.sh test` installs it")
    });
    pools_up(d, &["www", "api"]);
    let (code, doc) = crate::support::http_request(
        d.addr,
        "GET",
        "/api/v1/openapi.json",
        &bearer.map(|b| format!("{b}\r\n")).unwrap_or_default(),
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(code, 200, "{doc}");
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let extra: Vec<&str> = match bearer {
        Some(b) => vec!["-H", b],
        None => Vec::new(),
    };
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().map_or(0, |m| m.len()))
        .sum();

    // From a file: loaded from its own URL, schemathesis leaves that
    // operation out.
    let schema = d.dir.join("openapi.json");
    std::fs::write(&schema, doc.to_string()).unwrap();
    let report = d.dir.join("schemathesis.out");
    let url = format!("http://{}", d.addr);
    let started = Instant::now();
    let mut child = schemathesis()
        .arg("--no-color")
        .arg("run")
        .arg(&schema)
        .args(["--url", &url])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(d.dir.join("junit.xml"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", max_examples])
        .args(&extra)
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--seed", "1"])
        .arg("--continue-on-failure")
        .current_dir(&d.dir.path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&report).unwrap())
        .stderr(std::fs::File::create(d.dir.join("schemathesis.err")).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis ran past {DEADLINE:?}; output so far:\n{}",
                std::fs::read_to_string(&report).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&report).unwrap_or_default();
    let err = std::fs::read_to_string(d.dir.join("schemathesis.err")).unwrap_or_default();
    eprintln!(
        "{version}: {operations} operations fuzzed in {:.0?}; {}",
        started.elapsed(),
        out.lines()
            .filter(|l| l.contains("passed") || l.contains("cases") || l.contains("Test cases"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(
        status.success(),
        "schemathesis found problems ({status}):\n{out}\n{err}\nmanager log:\n{}",
        d.log()
    );
    // Every operation of the document was exercised.
    let junit = std::fs::read_to_string(d.dir.join("junit.xml")).unwrap_or_default();
    let mut untested = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let name = format!("name=\"{} {path}\"", method.to_uppercase());
            if !junit.contains(&name) {
                untested.push(name);
            }
        }
    }
    assert!(
        untested.is_empty(),
        "operations schemathesis did not test: {untested:?}\n{out}"
    );
    // The manager is alive and never panicked.
    assert_eq!(d.get("/health/live").unwrap().0, 200);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
