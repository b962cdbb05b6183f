//! The generator against a tiny HTTP server on loopback: requests go out on
//! schedule while earlier ones are still open (open loop), statuses and
//! errors are recorded, and the in-flight cap, the per-request timeout and the
//! hard deadline bound a run against a server that stops answering.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fpm_loadgen::{run, summarize, ErrorKind, Outcome, Phase, Plan, Stream, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    paths: std::sync::Mutex<Vec<String>>,
}

/// Serves `GET /hold?ms=N` (answers 200 after N ms), `/missing` (404) and
/// `/hang` (reads the request and never answers).
async fn server() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                s.requests.fetch_add(1, Ordering::SeqCst);
                let now = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                s.max_open.fetch_max(now, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                s.paths.lock().unwrap().push(path.clone());
                let (status, hold) = if let Some(ms) = path.strip_prefix("/hold?ms=") {
                    let ms = ms.split('&').next().unwrap();
                    ("200 OK", Duration::from_millis(ms.parse().unwrap()))
                } else if path == "/hang" {
                    ("200 OK", Duration::from_secs(3600))
                } else {
                    ("404 Not Found", Duration::ZERO)
                };
                tokio::time::sleep(hold).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                s.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

fn plan(addr: SocketAddr, path: &str, rate: f64, secs: f64) -> Plan {
    Plan {
        streams: vec![Stream {
            name: "t".into(),
            target: Target::parse(&format!("http://{addr}{path}")).unwrap(),
            phases: vec![Phase::new(rate, Duration::from_secs_f64(secs))],
            numbered: false,
        }],
        seed: 11,
        max_in_flight: 1000,
        request_timeout: Duration::from_secs(20),
        grace: Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_requests_carry_their_place_in_the_schedule() {
    let (addr, seen) = server().await;
    let mut p = plan(addr, "/hold?ms=5", 40.0, 1.0);
    p.streams[0].numbered = true;
    let expected = p.arrivals().unwrap().len();
    assert!(expected > 10, "{expected}");
    let r = run(&p).await.unwrap();
    assert_eq!(summarize(&r.records).ok as usize, expected);
    let mut numbers: Vec<usize> = seen
        .paths
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.rsplit_once("&n=").unwrap().1.parse().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..expected).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_on_schedule_while_earlier_requests_are_open() {
    let (addr, seen) = server().await;
    // Each answer takes 400 ms; 50 requests per second for 2 s. A closed loop
    // with one connection would send about 5; the open loop sends them all
    // and the server holds about 20 at once.
    let p = plan(addr, "/hold?ms=400", 50.0, 2.0);
    let expected = p.arrivals().unwrap().len();
    let r = run(&p).await.unwrap();
    assert_eq!(r.records.len(), expected);
    let s = summarize(&r.records);
    assert_eq!(s.ok as usize, expected, "{s:?}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), expected);
    assert!(
        seen.max_open.load(Ordering::SeqCst) >= 8,
        "server saw at most {} open requests",
        seen.max_open.load(Ordering::SeqCst)
    );
    // Latency is counted from the due time, so it is never below the hold.
    assert!(s.p50 >= Duration::from_millis(400), "{s:?}");
    assert!(r
        .records
        .iter()
        .all(|x| x.sent.unwrap() >= x.scheduled && x.outcome == Outcome::Status(200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_and_connect_errors_are_failures() {
    let (addr, _) = server().await;
    let r = run(&plan(addr, "/missing", 40.0, 0.5)).await.unwrap();
    let s = summarize(&r.records);
    assert!(s.requests > 0);
    assert_eq!(s.failed, s.requests);
    assert_eq!(s.failures.get("404"), Some(&s.requests));

    // Nothing listens on this port any more.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = l.local_addr().unwrap();
    drop(l);
    let r = run(&plan(closed, "/", 40.0, 0.5)).await.unwrap();
    assert!(!r.records.is_empty());
    assert!(r
        .records
        .iter()
        .all(|x| x.outcome == Outcome::Error(ErrorKind::Connect)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_turns_excess_into_failures() {
    let (addr, seen) = server().await;
    let mut p = plan(addr, "/hold?ms=1500", 40.0, 1.0);
    p.max_in_flight = 3;
    let r = run(&p).await.unwrap();
    let s = summarize(&r.records);
    assert!(s.requests > 10, "{s:?}");
    assert!(seen.max_open.load(Ordering::SeqCst) <= 3);
    assert!(s.ok >= 3 && s.ok < s.requests, "{s:?}");
    assert_eq!(
        s.failures.get("in-flight cap").copied().unwrap_or(0),
        s.requests - s.ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_bounded_by_timeout_and_deadline() {
    let (addr, _) = server().await;
    // Per-request timeout: every request ends as a timeout counted at the
    // timeout.
    let mut p = plan(addr, "/hang", 20.0, 0.5);
    p.request_timeout = Duration::from_millis(300);
    let r = run(&p).await.unwrap();
    assert!(!r.records.is_empty());
    for x in &r.records {
        assert_eq!(x.outcome, Outcome::Error(ErrorKind::Timeout));
        assert_eq!(x.latency, Some(Duration::from_millis(300)));
    }

    // Hard deadline: a long timeout, a short grace. The run returns soon
    // after the schedule ends (bounded far below the 60 s timeout) with
    // every open request marked as abandoned at the deadline.
    let mut p = plan(addr, "/hang", 20.0, 0.5);
    p.request_timeout = Duration::from_secs(60);
    p.grace = Duration::from_millis(200);
    let t = Instant::now();
    let r = run(&p).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!r.records.is_empty());
    assert!(r
        .records
        .iter()
        .all(|x| x.outcome == Outcome::Error(ErrorKind::Deadline) && x.latency.is_none()));
}

#[test]
fn non_loopback_targets_never_get_a_plan() {
    let e = Target::parse("http://192.0.2.1:80/").unwrap_err();
    assert!(e.to_string().contains("not loopback"), "{e}");
}
