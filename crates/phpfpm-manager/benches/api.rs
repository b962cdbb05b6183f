//! The HTTP surface under load (`cargo bench -p phpfpm-manager --bench api`,
//! part of `make bench`): the real manager supervising 8 real php-fpm pools
//! × 32 static workers with per-process metrics on, `/metrics` (with
//! `Accept-Encoding: gzip` as Prometheus sends it, and without) and
//! `/api/v1/pools` each asked by 50 concurrent keep-alive clients, over
//! plain HTTP and over TLS.
//!
//! Reported per case: requests per second, p50 / p99 / max latency, the
//! manager's CPU (utime + stime from `/proc/<pid>/stat`) and its largest
//! resident memory (`VmRSS`, sampled every 250 ms), and the collection
//! interval during the load against the same manager idle just before. The
//! interval is measured from the manager's own counter
//! `phpfpm_manager_scrape_duration_seconds_count{pool}`, polled every
//! 100 ms: for each pool, the time from its first to its last increment
//! in the window divided by the increments in between (every pool is
//! collected every 1 s: collect, busy and idle intervals are all 1 s).
//!
//! Goals: p99 of `/metrics` at most 20 ms at 50 clients; the collection
//! interval stretched by at most 10 %. The load generator runs in this
//! process on the same machine (2 threads), so the manager shares the CPU
//! with its clients; the load average is printed before and after.
//! Every case is bounded: 15 s of load, 50 connections, loopback only.
//! The clients' own CPU (this process) is printed beside the manager's.

// Benchmarks start and signal their own processes.
#![allow(clippy::disallowed_methods)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fpm_testkit::{proc_status_field, utc_now_text, TestDaemon, TestDir};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const POOLS: usize = 8;
const WORKERS: usize = 32;
const CLIENTS: usize = 50;
const LOAD: Duration = Duration::from_secs(15);
const IDLE: Duration = Duration::from_secs(15);
const COLLECT_INTERVAL_S: f64 = 1.0;

fn main() {
    println!("# HTTP surface under load: 8 pools x 32 workers, per-process metrics on");
    println!(
        "date: {}  machine: {} vCPU, {}  load average before: {}",
        utc_now_text(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        loadavg()
    );
    println!(
        "{CLIENTS} concurrent keep-alive clients per case, {} s each; collection every {COLLECT_INTERVAL_S} s\n",
        LOAD.as_secs()
    );
    println!("| case | requests/s | answer size | p50 | p99 | max | errors | manager CPU | clients' CPU | manager max RSS | collection interval idle -> load |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for tls in [false, true] {
        rows.extend(run_manager(tls));
    }
    println!("\nload average after: {}", loadavg());
    let metrics_p99 = rows
        .iter()
        .filter(|r| r.path == "/metrics" && r.gzip)
        .map(|r| r.p99_ms)
        .fold(0.0, f64::max);
    let plain_p99 = rows
        .iter()
        .filter(|r| r.path == "/metrics" && !r.gzip)
        .map(|r| r.p99_ms)
        .fold(0.0, f64::max);
    let stretch = rows.iter().map(|r| r.stretch).fold(f64::MIN, f64::max);
    println!(
        "goal p99 of /metrics <= 20 ms, asked as Prometheus asks (gzip): worst {metrics_p99:.1} ms ({}); without compression: worst {plain_p99:.1} ms",
        if metrics_p99 <= 20.0 { "met" } else { "MISSED" }
    );
    println!(
        "goal collection interval stretched <= 10 %: worst {:+.1} % ({})",
        stretch * 100.0,
        if stretch <= 0.10 { "met" } else { "MISSED" }
    );
}

struct Row {
    path: &'static str,
    gzip: bool,
    p99_ms: f64,
    stretch: f64,
}

fn config(tls: Option<&Path2>) -> String {
    let mut c = String::from(
        "monitoring:\n  collect_interval: 1s\n  busy_interval: 1s\n  idle_interval: 1s\n  per_process_metrics: true\n\
         server:\n  limits:\n    max_connections_per_client: 128\n",
    );
    if let Some(p) = tls {
        c.push_str(&format!(
            "  tls:\n    enabled: true\n    cert_path: {}\n    key_path: {}\n",
            p.cert, p.key
        ));
    }
    c.push_str("pools:\n");
    for i in 1..=POOLS {
        c.push_str(&format!(
            "  - {{name: b{i}, pm: static, max_workers: {WORKERS}}}\n"
        ));
    }
    c
}

struct Path2 {
    cert: String,
    key: String,
}

/// The client side of one manager's cases: where and how to connect.
#[derive(Clone)]
struct Dial {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

fn run_manager(tls: bool) -> Vec<Row> {
    let dir = TestDir::new(if tls { "bench-api-tls" } else { "bench-api" });
    let (paths, dial_tls) = if tls {
        let (paths, connector) = certificates(&dir);
        (
            Some(paths),
            Some((
                connector,
                ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            )),
        )
    } else {
        (None, None)
    };
    let d = TestDaemon::start_in(dir, Some(&config(paths.as_ref())), &[("RUST_LOG", "warn")]);
    let rt = fpm_testkit::rt();
    let dial = Dial {
        addr: d.addr,
        tls: dial_tls,
    };
    // Every pool up with all its workers.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = rt.block_on(fetch(&dial, "/metrics")).unwrap_or_default();
        let up = (1..=POOLS)
            .filter(|i| {
                body.lines().any(|l| {
                    l.starts_with(&format!("phpfpm_up{{pool=\"b{i}\"")) && l.ends_with(" 1")
                })
            })
            .count();
        let workers = body
            .lines()
            .filter(|l| l.starts_with("phpfpm_process_requests{"))
            .count();
        if up == POOLS && workers >= POOLS * WORKERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pools not up within 120 s ({up} up, {workers} process series); log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = d.child.id();
    let idle = rt.block_on(measure_interval(&dial, IDLE));
    let mut rows = Vec::new();
    // `/metrics` as Prometheus asks for it (gzip) and without compression.
    for (path, gzip) in [
        ("/metrics", true),
        ("/metrics", false),
        ("/api/v1/pools", false),
    ] {
        let size = rt
            .block_on(async {
                let mut c = connect(&dial).await?;
                c.get(path, gzip).await.map(|_| c.last_len)
            })
            .unwrap_or(0);
        let cpu0 = cpu_ticks(pid);
        let own0 = cpu_ticks(std::process::id());
        let stop = Arc::new(AtomicBool::new(false));
        let rss_max = sample_rss(pid, stop.clone());
        let started = Instant::now();
        let (interval, (lat, errors)) = rt.block_on(async {
            let load = tokio::spawn(load(dial.clone(), path, gzip, LOAD));
            let interval = measure_interval(&dial, LOAD).await;
            (interval, load.await.unwrap())
        });
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        let rss = rss_max.join().unwrap();
        let cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0 / secs * 100.0;
        let own = (cpu_ticks(std::process::id()) - own0) as f64 / 100.0 / secs * 100.0;
        let mut lat = lat;
        lat.sort_unstable();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(Duration::ZERO)
                .as_secs_f64()
                * 1e3
        };
        let stretch = interval / idle - 1.0;
        println!(
            "| {} {path}{} | {:.0} | {:.0} KB | {:.2} ms | {:.2} ms | {:.1} ms | {errors} | {cpu:.0} % of a core | {own:.0} % | {:.1} MB | {idle:.3} s -> {interval:.3} s ({:+.1} %) |",
            if tls { "TLS" } else { "plain" },
            if gzip { " (gzip)" } else { "" },
            lat.len() as f64 / LOAD.as_secs_f64(),
            size as f64 / 1024.0,
            pct(0.5),
            pct(0.99),
            pct(1.0),
            rss as f64 / 1024.0,
            stretch * 100.0
        );
        rows.push(Row {
            path,
            gzip,
            p99_ms: pct(0.99),
            stretch,
        });
        // Let the connections close and the manager settle.
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(d);
    rows
}

/// `CLIENTS` connections asking for `path` back to back for `length`:
/// every answer's latency, and the count of failures (non-200 answers,
/// broken connections; a broken connection is opened again).
async fn load(
    dial: Dial,
    path: &'static str,
    gzip: bool,
    length: Duration,
) -> (Vec<Duration>, u64) {
    let deadline = tokio::time::Instant::now() + length;
    let all = Arc::new(Mutex::new((Vec::with_capacity(200_000), 0u64)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (dial, all) = (dial.clone(), all.clone());
        tasks.spawn(async move {
            let mut mine = Vec::new();
            let mut errors = 0u64;
            'conn: while tokio::time::Instant::now() < deadline {
                let Ok(mut conn) = connect(&dial).await else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                while tokio::time::Instant::now() < deadline {
                    let t = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(10), conn.get(path, gzip)).await
                    {
                        Ok(Ok((200, _))) => mine.push(t.elapsed()),
                        Ok(Ok(_)) => errors += 1,
                        _ => {
                            errors += 1;
                            continue 'conn;
                        }
                    }
                }
            }
            let mut a = all.lock().unwrap();
            a.0.extend(mine);
            a.1 += errors;
        });
    }
    while tasks.join_next().await.is_some() {}
    let a = std::mem::take(&mut *all.lock().unwrap());
    a
}

/// The mean collection interval over `length` (see the module doc), from
/// a connection of its own.
async fn measure_interval(dial: &Dial, length: Duration) -> f64 {
    let mut conn = connect(dial).await.unwrap();
    let started = Instant::now();
    // Per pool: last count seen, time of the first and last increment, increments.
    let mut seen: BTreeMap<String, (u64, Option<Instant>, Option<Instant>, u64)> = BTreeMap::new();
    while started.elapsed() < length {
        let now = Instant::now();
        if let Ok((200, body)) = conn.get("/metrics", false).await {
            for l in body
                .lines()
                .filter(|l| l.starts_with("phpfpm_manager_scrape_duration_seconds_count{"))
            {
                let (Some(pool), Some(n)) = (
                    l.split('"').nth(1),
                    l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                let e = seen.entry(pool.to_owned()).or_insert((n, None, None, 0));
                if n > e.0 {
                    if e.1.is_none() {
                        e.1 = Some(now);
                    } else {
                        e.3 += n - e.0;
                    }
                    e.2 = Some(now);
                    e.0 = n;
                }
            }
        } else {
            conn = connect(dial).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let intervals: Vec<f64> = seen
        .values()
        .filter_map(|(_, first, last, n)| match (first, last) {
            (Some(f), Some(l)) if *n > 0 => Some(l.duration_since(*f).as_secs_f64() / *n as f64),
            _ => None,
        })
        .collect();
    assert!(!intervals.is_empty(), "no collection seen");
    intervals.iter().sum::<f64>() / intervals.len() as f64
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One kept-alive HTTP/1.1 connection. Answers are read by Content-Length
/// (the manager always sends one for these routes).
struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// Bytes of the last answer's body (compressed or not).
    last_len: usize,
}

async fn connect(dial: &Dial) -> std::io::Result<Conn> {
    let tcp = tokio::net::TcpStream::connect(dial.addr).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match &dial.tls {
        None => Box::new(tcp),
        Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
    };
    Ok(Conn {
        last_len: 0,
        io,
        buf: Vec::with_capacity(64 * 1024),
    })
}

async fn fetch(dial: &Dial, path: &str) -> std::io::Result<String> {
    let mut c = connect(dial).await?;
    c.get(path, false).await.map(|(_, body)| body)
}

impl Conn {
    async fn get(&mut self, path: &str, gzip: bool) -> std::io::Result<(u16, String)> {
        let accept = if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        };
        self.io
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{accept}\r\n").as_bytes())
            .await?;
        self.io.flush().await?;
        self.buf.clear();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .ok_or_else(|| std::io::Error::other("no content-length"))?;
                while self.buf.len() < end + 4 + len {
                    let n = self.io.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.last_len = len;
                let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned();
                return Ok((status, body));
            }
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 written into `dir`, and a
/// client trusting that CA.
fn certificates(dir: &TestDir) -> (Path2, tokio_rustls::TlsConnector) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "bench CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "manager.bench");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        Path2 {
            cert: dir.join("server.crt").display().to_string(),
            key: dir.join("server.key").display().to_string(),
        },
        tokio_rustls::TlsConnector::from(Arc::new(cfg)),
    )
}

/// Samples the manager's VmRSS every 250 ms until `stop`; the largest, KiB.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::SeqCst) {
            max = max.max(proc_status_field(pid, "VmRSS:").unwrap_or(0));
            std::thread::sleep(Duration::from_millis(250));
        }
        max
    })
}

fn cpu_ticks(pid: u32) -> u64 {
    fpm_kernel::procfs::read_stat(pid).unwrap().cpu_ticks()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}
