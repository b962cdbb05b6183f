//! The daemon against a FastCGI server that sends what php-fpm never would:
//! one real manager observes a pool served by `FakeFcgi`, which is switched
//! through a corpus of hostile replies. After each one the manager must
//! still answer `/health/live`, stay within a memory bound (VmHWM of its
//! process), have counted the reason on `/metrics`, and serve metrics that
//! `promtool check metrics` accepts.

use std::time::Duration;

use crate::support::fake_fcgi::{
    end_request, json_reply, record, reply, status_page, stdout_records, Behaviour, FakeFcgi,
    STDERR, STDOUT,
};
use crate::support::{promtool_check, TestDaemon, TestDir};

/// What a hostile reply must leave on `/metrics`.
enum Expect {
    /// `phpfpm_manager_scrape_errors_total{kind}` went up.
    Error(&'static str),
    /// The pool is up and `phpfpm_manager_status_fields_dropped_total{field,
    /// reason}` went up.
    Dropped(&'static str, &'static str),
    /// The pool is up with this many workers.
    Up(u64),
}

/// VmHWM bound for the manager. Before replies were capped, an endless reply
/// grew a manager from 59 MB to 2.33 GB within one 2 s request timeout. With
/// the 32 MiB cap a reply costs at most the cap plus what parsing a page of
/// that size needs: this manager rests at ~13 MB, peaks at ~46 MB on the
/// endless reply and at ~65 MB on 10,000 workers with per-process series.
const MEMORY_BOUND_KIB: u64 = 128 * 1024;

/// Sum of the samples of `name` whose labels include every `labels` pair.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn counted(metrics: &str, e: &Expect) -> f64 {
    match e {
        Expect::Error(kind) => sample(
            metrics,
            "phpfpm_manager_scrape_errors_total",
            &[("pool", "fake"), ("kind", kind)],
        ),
        Expect::Dropped(field, reason) => sample(
            metrics,
            "phpfpm_manager_status_fields_dropped_total",
            &[("pool", "fake"), ("field", field), ("reason", reason)],
        ),
        Expect::Up(_) => 0.0,
    }
}

fn is_up(metrics: &str) -> bool {
    sample(metrics, "phpfpm_up", &[("pool", "fake")]) == 1.0
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fpm-core/test_data/status/{name}.cgi",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The corpus: (name, what the server sends, what must be counted).
fn corpus() -> Vec<(&'static str, Behaviour, Expect)> {
    let good = json_reply(&status_page(3));
    let cut_json = {
        let page = format!("Content-Type: application/json\r\n\r\n{}", status_page(50));
        reply(&page.as_bytes()[..page.len() / 2])
    };
    let mut oversized = stdout_records(b"Content-Type: application/json\r\n\r\n");
    oversized.extend(stdout_records(&vec![b' '; 40 << 20]));
    oversized.extend(end_request(0));
    let mut with_stderr = stdout_records(b"Content-Type: application/json\r\n\r\n");
    for _ in 0..600 {
        with_stderr.extend(record(STDERR, 1, &[b'e'; 0xffff]));
    }
    with_stderr.extend(end_request(0));
    let drip = Behaviour::Drip {
        bytes: std::sync::Arc::new(good.clone()),
        chunk: 1,
        every: Duration::from_millis(100),
    };
    let out_of_range = json_reply(&status_page(3).replace(
        "\"accepted conn\":1000",
        "\"accepted conn\":18446744073709551617",
    ));
    let negative = json_reply(&status_page(3).replace("\"requests\":1,", "\"requests\":-3,"));
    vec![
        (
            "endless stdout",
            Behaviour::Endless,
            Expect::Error("reply_too_large"),
        ),
        (
            "40 MiB reply",
            Behaviour::bytes(oversized),
            Expect::Error("reply_too_large"),
        ),
        (
            "39 MiB of stderr",
            Behaviour::bytes(with_stderr),
            Expect::Error("reply_too_large"),
        ),
        ("slow drip", drip, Expect::Error("timeout")),
        (
            "not FastCGI",
            Behaviour::bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()),
            Expect::Error("protocol"),
        ),
        (
            "garbage JSON",
            Behaviour::bytes(reply(&fixture("handmade-garbage-text"))),
            Expect::Error("malformed"),
        ),
        (
            "binary body",
            Behaviour::bytes(reply(&fixture("handmade-garbage-binary"))),
            Expect::Error("malformed"),
        ),
        (
            "truncated JSON",
            Behaviour::bytes(cut_json),
            Expect::Error("truncated"),
        ),
        (
            "records cut mid-way",
            Behaviour::bytes(good[..good.len() / 2].to_vec()),
            Expect::Error("protocol"),
        ),
        (
            "wrong record type",
            Behaviour::bytes([record(10, 1, b"x"), end_request(0)].concat()),
            Expect::Error("protocol"),
        ),
        (
            "wrong request id",
            Behaviour::bytes(
                [
                    record(STDOUT, 7, b"Content-Type: application/json\r\n\r\n{}"),
                    end_request(0),
                ]
                .concat(),
            ),
            Expect::Error("protocol"),
        ),
        (
            "short end-request",
            Behaviour::bytes(record(3, 1, &[0, 0])),
            Expect::Error("protocol"),
        ),
        (
            "end-request without stdout",
            Behaviour::bytes(end_request(0)),
            Expect::Error("empty"),
        ),
        (
            "unescaped quotes",
            Behaviour::bytes(reply(&fixture("handmade-php73-unescaped"))),
            Expect::Up(3),
        ),
        (
            "accepted conn 2^64+1",
            Behaviour::bytes(out_of_range),
            Expect::Dropped("accepted conn", "out_of_range"),
        ),
        (
            "requests -3",
            Behaviour::bytes(negative),
            Expect::Dropped("processes.requests", "negative"),
        ),
        (
            "10,000 workers",
            Behaviour::bytes(json_reply(&status_page(10_000))),
            Expect::Up(10_000),
        ),
    ]
}

#[test]
fn hostile_replies_are_bounded_counted_and_survived() {
    let dir = TestDir::new("hostile");
    let sock = dir.join("fake.sock");
    let good = Behaviour::bytes(json_reply(&status_page(3)));
    let fake = FakeFcgi::start(&sock, good.clone());
    let config = format!(
        "monitoring:\n  collect_interval: 200ms\n  busy_interval: 200ms\n  idle_interval: 1s\n  \
         circuit_failures: 100000\n  enable_system_metrics: false\n  per_process_metrics: true\n\
         storage:\n  database_path: \":memory:\"\n\
         pools:\n  - name: fake\n    supervise: false\n    fastcgi_endpoint: unix:{}\n    max_workers: 16\n",
        sock.display()
    );
    let daemon = TestDaemon::start_in(dir, Some(&config), &[]);
    let pid = daemon.child.id();
    let limit = Duration::from_secs(60);
    daemon
        .wait_metrics(limit, is_up)
        .unwrap_or_else(|| panic!("the fake pool never came up; log:\n{}", daemon.log()));
    let (rss, hwm) = memory_kib(pid);
    eprintln!("{:<28} {:>9} {:>9}", "case", "VmRSS KiB", "VmHWM KiB");
    eprintln!("{:<28} {rss:>9} {hwm:>9}", "at rest");

    for (name, behaviour, expect) in corpus() {
        // From a known good state, so that a look still in flight with the
        // previous reply cannot be taken for this one's.
        fake.set(good.clone());
        let before = daemon
            .wait_metrics(limit, is_up)
            .unwrap_or_else(|| panic!("{name}: the pool did not recover; log:\n{}", daemon.log()));
        let baseline = counted(&before, &expect);
        fake.set(behaviour);
        let seen = daemon.wait_metrics(limit, |m| match expect {
            Expect::Up(n) => {
                is_up(m) && sample(m, "phpfpm_total_processes", &[("pool", "fake")]) == n as f64
            }
            Expect::Dropped(..) => is_up(m) && counted(m, &expect) > baseline,
            Expect::Error(_) => counted(m, &expect) > baseline,
        });
        let metrics = seen.unwrap_or_else(|| {
            let (_, now) = daemon.get("/metrics").unwrap_or_default();
            panic!(
                "{name}: nothing counted within {limit:?}; metrics:\n{}\nlog:\n{}",
                now.lines()
                    .filter(|l| l.contains("scrape_errors")
                        || l.contains("dropped")
                        || l.starts_with("phpfpm_up"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                daemon.log()
            )
        });
        assert!(
            matches!(daemon.get("/health/live"), Ok((200, _))),
            "{name}: /health/live does not answer; log:\n{}",
            daemon.log()
        );
        if let Err(e) = promtool_check(&metrics) {
            panic!("{name}: promtool rejects /metrics:\n{e}");
        }
        let (rss, hwm) = memory_kib(pid);
        eprintln!("{name:<28} {rss:>9} {hwm:>9}");
        assert!(
            hwm < MEMORY_BOUND_KIB,
            "{name}: the manager's VmHWM is {hwm} KiB, above {MEMORY_BOUND_KIB} KiB"
        );
    }

    // Still collecting normally afterwards.
    fake.set(good);
    daemon.wait_metrics(limit, is_up).unwrap_or_else(|| {
        panic!(
            "the pool did not recover at the end; log:\n{}",
            daemon.log()
        )
    });
    assert!(
        !daemon.log().contains("panicked"),
        "a task panicked:\n{}",
        daemon.log()
    );
}
