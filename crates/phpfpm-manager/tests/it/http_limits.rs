//! The HTTP surface under hostile or careless clients, against the real
//! daemon and real php-fpm: slow headers and idle connections are cut, many
//! idle connections under a low open-files limit leave the API, collection
//! and master restarts working, bursts leave memory and threads bounded, and
//! query strings of requests in flight are not shown unless asked for.
//! Every load loop is bounded in count and time and stays on loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{
    free_port, manager_bin, php_fpm, proc_status_field, wait_for, FpmOpts, TestDaemon, TestDir,
    TestFpm, SLEEP_PHP,
};
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

/// One supervised pool, collected every second.
const POOL: &str = "pools:\n  - name: app\n    pm: static\n    max_workers: 2\n\
                    monitoring:\n  collect_interval: 1s\n  idle_interval: 1s\n";

/// Starts the manager with `config`, optionally under `prlimit --nofile=N:N`
/// (soft and hard), the way a service manager with a low limit would.
fn start(tag: &str, config: &str, nofile: Option<u64>) -> TestDaemon {
    start_in(TestDir::new(tag), config, nofile)
}

fn start_in(dir: TestDir, config: &str, nofile: Option<u64>) -> TestDaemon {
    php_fpm();
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(manager_bin());
            c
        }
        None => Command::new(manager_bin()),
    };
    cmd.arg("run")
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .current_dir(&dir.path)
        .env("PHPFPM_MANAGER_SERVER__BIND_ADDRESS", addr.to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("manager.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("manager.log")).unwrap());
    let child = cmd
        .spawn()
        .expect("prlimit (util-linux) and the manager run");
    TestDaemon { dir, addr, child }
}

/// True once the peer has closed the connection (or reset it).
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Reads one HTTP/1.1 response with a Content-Length; returns the status.
fn read_response(s: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return Ok(status);
        }
    }
}

#[test]
fn slowloris_clients_are_cut_at_the_header_timeout() {
    let config =
        format!("{POOL}server:\n  limits:\n    header_read_timeout: 1s\n    idle_timeout: 5m\n");
    let d = start("slowloris", &config, None);
    d.wait_pool_up("app", Duration::from_secs(20));
    // 50 clients start a request and add one header line every 200 ms, so
    // they are never idle; only the header timeout can end them.
    let mut clients: Vec<Option<TcpStream>> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(d.addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            Some(s)
        })
        .collect();
    let started = Instant::now();
    let mut cut_after = Vec::new();
    let mut i = 0u64;
    while clients.iter().any(Option::is_some) && started.elapsed() < Duration::from_secs(30) {
        for c in clients.iter_mut() {
            let Some(s) = c else { continue };
            let gone = s
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .is_err()
                || closed_by_peer(s);
            if gone {
                cut_after.push(started.elapsed());
                *c = None;
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let open = clients.iter().filter(|c| c.is_some()).count();
    assert_eq!(
        open,
        0,
        "{open} of 50 slow clients still connected after 30s (header timeout 1s); log:\n{}",
        d.log()
    );
    let slowest = cut_after.iter().max().unwrap();
    eprintln!("50 slowloris clients cut; the last after {slowest:?} (header timeout 1s)");
    // The server kept answering meanwhile, and counted them.
    let (code, _) = d.get("/health/live").unwrap();
    assert_eq!(code, 200);
    let cut = d
        .metric("phpfpm_manager_http_connections_closed_total{reason=\"header_timeout\"}")
        .unwrap();
    assert!(cut >= 50.0, "{cut}");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let config =
        format!("{POOL}server:\n  limits:\n    header_read_timeout: 30s\n    idle_timeout: 1s\n");
    let d = start("idle", &config, None);
    d.wait_pool_up("app", Duration::from_secs(20));
    // A kept-alive connection after a complete answer, and one that never sends.
    let mut kept = TcpStream::connect(d.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut kept).unwrap(), 200);
    // The connection is reusable while it is not idle.
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut kept).unwrap(), 200);
    let silent = TcpStream::connect(d.addr).unwrap();
    let mut both = [kept, silent];
    let closed = wait_for(Duration::from_secs(20), || {
        both.iter_mut().all(closed_by_peer)
    });
    assert!(
        closed,
        "idle connections still open 20s after an idle timeout of 1s; log:\n{}",
        d.log()
    );
    let idle = d
        .metric("phpfpm_manager_http_connections_closed_total{reason=\"idle_timeout\"}")
        .unwrap();
    assert!(idle >= 2.0, "{idle}");
}

/// The case that broke the manager before: `ulimit -n 1024` and 1,100 idle
/// loopback connections took every descriptor, so API requests timed out,
/// collection failed with EMFILE and a killed master could not restart.
#[test]
fn many_idle_connections_leave_api_collection_and_restarts_working() {
    let config =
        format!("{POOL}server:\n  limits:\n    header_read_timeout: 10m\n    idle_timeout: 10m\n");
    let d = start("fdcap", &config, Some(1024));
    d.wait_pool_up("app", Duration::from_secs(20));
    let limit = d.metric("phpfpm_manager_http_connections_limit").unwrap();
    // Reserve 64 + 24 (one pool) + 12 (four readers); half of the rest.
    assert_eq!(limit, 462.0, "connection cap under a 1024 open-files limit");
    assert_eq!(d.metric("phpfpm_manager_open_files_limit").unwrap(), 1024.0);

    let mut idle = Vec::with_capacity(1100);
    for i in 0..1100 {
        match TcpStream::connect_timeout(&d.addr, Duration::from_secs(5)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {i} failed: {e}"),
        }
    }
    // Let the manager accept them all (and evict what does not fit).
    let settled = wait_for(Duration::from_secs(30), || {
        d.metric("phpfpm_manager_http_connections_closed_total{reason=\"evicted\"}")
            .is_some_and(|n| n >= 1100.0 - 462.0)
    });
    assert!(
        settled,
        "the manager did not take the connections; log:\n{}",
        d.log()
    );
    let open = d.metric("phpfpm_manager_http_connections ").unwrap();
    assert!(open <= 462.0, "{open} connections open");

    // The API answers.
    let (code, body) = d.get("/api/v1/pools/app").unwrap();
    assert_eq!(code, 200, "{body}");
    // Collection goes on.
    let count = |d: &TestDaemon| {
        d.metric("phpfpm_manager_scrape_duration_seconds_count{pool=\"app\"}")
            .unwrap_or(0.0)
    };
    let before = count(&d);
    assert!(
        wait_for(Duration::from_secs(20), || count(&d) >= before + 3.0),
        "collection stalled; log:\n{}",
        d.log()
    );
    let errors = d.log().matches("Too many open files").count();
    assert_eq!(errors, 0, "log:\n{}", d.log());
    // A killed master comes back.
    let v: serde_json::Value = serde_json::from_str(&d.pool_json("app")).unwrap();
    let pid = v["master"]["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let back = wait_for(Duration::from_secs(20), || {
        let v: serde_json::Value = serde_json::from_str(&d.pool_json("app")).unwrap_or_default();
        v["master"]["pid"].as_u64().is_some_and(|p| p != pid as u64) && v["up"] == true
    });
    assert!(
        back,
        "the killed master was not restarted; log:\n{}",
        d.log()
    );
    drop(idle);
}

/// 2,000 keep-alive clients scraping /metrics used to leave the manager
/// ~100 MB bigger; the connection cap and bounded buffers keep it small.
#[test]
fn memory_after_a_burst_of_clients_stays_bounded() {
    let d = start("rss", POOL, None);
    d.wait_pool_up("app", Duration::from_secs(20));
    for _ in 0..20 {
        d.get("/metrics").unwrap();
    }
    let pid = d.child.id();
    let before = proc_status_field(pid, "VmRSS:").unwrap();
    let addr = d.addr;
    let rt = crate::support::rt();
    let answered = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..2000 {
            tasks.spawn(async move {
                let work = async {
                    let mut s = tokio::net::TcpStream::connect(addr).await?;
                    let mut ok = 0u32;
                    let mut buf = vec![0u8; 64 * 1024];
                    for _ in 0..3 {
                        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                            .await?;
                        // Read until the body's end: the page ends in a newline
                        // after the last series, then the next request.
                        let mut got = Vec::new();
                        loop {
                            let n = s.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<u32, std::io::Error>(ok);
                            }
                            got.extend_from_slice(&buf[..n]);
                            if complete(&got) {
                                break;
                            }
                        }
                        ok += 1;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(ok)
                };
                tokio::time::timeout(Duration::from_secs(60), work)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0)
            });
        }
        let mut answered = 0u32;
        while let Some(r) = tasks.join_next().await {
            answered += r.unwrap_or(0);
        }
        answered
    });
    // Connections closed: what the manager still holds is what it keeps.
    std::thread::sleep(Duration::from_secs(3));
    let after = proc_status_field(pid, "VmRSS:").unwrap();
    eprintln!(
        "RSS before {before} KiB, after 2000 keep-alive clients ({answered} answers) {after} KiB"
    );
    assert!(answered > 1000, "only {answered} answers");
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 40,
        "RSS grew by {grown_mib} MiB ({before} -> {after} KiB)"
    );
    let (code, _) = d.get("/health/live").unwrap();
    assert_eq!(code, 200);
}

/// A response with a Content-Length is complete once that many body bytes arrived.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// `/api/v1/events?limit=…` from hundreds of connections at once used to
/// run a blocking thread each; the query gate keeps the count small.
#[test]
fn concurrent_history_queries_run_on_a_bounded_number_of_threads() {
    // A database with 20,000 events, so each query has real work.
    let dir = TestDir::new("threads");
    let db = dir.join("history.db");
    {
        let storage = fpm_storage::Storage::open(&fpm_storage::StorageConfig {
            path: Some(db.clone()),
            ..Default::default()
        })
        .unwrap();
        let mut w = storage
            .writer(fpm_storage::WriterOptions::default())
            .unwrap();
        let now = fpm_storage::wall_clock_ms();
        for i in 0..20_000 {
            let mut e = fpm_storage::Event::new(
                now - 3_600_000 + i,
                fpm_storage::EventKind::Reload,
                fpm_storage::Severity::Info,
                format!("event {i} with a message of some length to make the answer weigh"),
            );
            e.pool = Some("app".into());
            w.add_event(e);
        }
        w.maintain_fully(now).unwrap();
    }
    // 200 clients from one address: above the per-client connection cap,
    // which is not what this test is about.
    let config = format!(
        "{POOL}storage:\n  database_path: {}\nserver:\n  limits:\n    max_connections_per_client: 1000\n",
        db.display()
    );
    let d = start_in(dir, &config, None);
    d.wait_pool_up("app", Duration::from_secs(20));
    let pid = d.child.id();
    let base = proc_status_field(pid, "Threads:").unwrap();
    let addr = d.addr;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(proc_status_field(pid, "Threads:").unwrap());
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let codes: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..200)
            .map(|_| {
                scope.spawn(move || {
                    let mut s = TcpStream::connect(addr).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
                    s.write_all(
                        b"GET /api/v1/events?limit=1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .ok()?;
                    read_response(&mut s).ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    let ok = codes.iter().filter(|c| **c == 200).count();
    let busy = codes.iter().filter(|c| **c == 503).count();
    eprintln!(
        "200 concurrent /api/v1/events?limit=1000: {ok} answered, {busy} busy; threads {base} before, peak {peak}"
    );
    assert_eq!(ok + busy, 200, "every request gets an answer: {codes:?}");
    assert!(ok > 0);
    // Two async workers, four query threads, the storage writer and a few
    // short-lived blocking reads of /proc.
    assert!(
        peak <= base + 16,
        "{peak} threads at the peak ({base} before)"
    );
}

/// A real php-fpm worker serving a slow request with a secret in its query
/// string: the API shows the script, never the secret, unless configured to.
#[test]
fn query_strings_of_requests_in_flight_are_redacted() {
    let fpm = TestFpm::start(FpmOpts {
        name: "qs",
        scripts: vec![("sleep.php", SLEEP_PHP)],
        ..FpmOpts::default()
    });
    let secret = "api_key=S3CR3T-4f9a";
    // First with the defaults (redacted), then with the switch on.
    for expose in [false, true] {
        let config = format!(
            "pools:\n  - name: qs\n    supervise: false\n    fastcgi_endpoint: unix:{}\n    status_endpoint: unix:{}\n\
             monitoring:\n  collect_interval: 200ms\n  busy_interval: 200ms\n  idle_interval: 200ms\n  per_process_metrics: true\n{}",
            fpm.socket.display(),
            fpm.status_socket.display(),
            if expose { "  expose_query_strings: true\n" } else { "" }
        );
        let d = start("querystring", &config, None);
        d.wait_pool_up("qs", Duration::from_secs(20));
        let ep = Endpoint::Unix(fpm.socket.clone());
        let script = fpm.www("sleep.php");
        let query = format!("ms=4000&{secret}");
        let request = std::thread::spawn(move || {
            let rt = crate::support::rt();
            rt.block_on(fastcgi::get(
                &ep,
                &script,
                &query,
                Timeouts {
                    connect: Duration::from_secs(1),
                    total: Duration::from_secs(15),
                },
            ))
            .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
        });
        let mut seen = String::new();
        let found = wait_for(Duration::from_secs(10), || {
            seen = d
                .get("/api/v1/pools/qs/workers")
                .map(|(_, b)| b)
                .unwrap_or_default();
            seen.contains("sleep.php?")
        });
        assert!(found, "the slow request never showed; last answer: {seen}");
        let (_, metrics) = d.get("/metrics").unwrap();
        let (_, recent) = d.get("/api/v1/events/recent").unwrap();
        let (_, events) = d.get("/api/v1/events").unwrap();
        if expose {
            assert!(seen.contains(secret), "{seen}");
        } else {
            assert!(seen.contains("sleep.php?<redacted>"), "{seen}");
            for (what, text) in [
                ("workers", &seen),
                ("metrics", &metrics),
                ("recent events", &recent),
                ("events", &events),
            ] {
                assert!(!text.contains("S3CR3T"), "the secret is in {what}: {text}");
            }
            assert!(!d.log().contains("S3CR3T"), "the secret is in the log");
        }
        let out = request.join().unwrap().unwrap();
        assert!(out.contains("ok"), "{out}");
    }
}
