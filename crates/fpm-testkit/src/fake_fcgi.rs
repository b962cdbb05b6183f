//! A fake FastCGI server on a unix socket, for hostile-input tests: it
//! answers the manager's status requests with whatever bytes a test chooses
//! (oversized, endless, garbage, cut, wrong record types or ids, a slow
//! drip), and answers ping like php-fpm, so that only the status page is
//! hostile. The behaviour can be switched while the manager runs.
//!
//! Every loop here is bounded: an endless reply stops after
//! [`ENDLESS_LIMIT_BYTES`] or [`WRITE_LIMIT`], a drip after [`WRITE_LIMIT`],
//! and any writer stops as soon as the client hangs up or the server is
//! dropped. Each connection has its own thread; the manager makes one
//! connection per request.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Record types of the FastCGI 1.0 specification used here.
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;

/// An endless reply stops after this many bytes even if nobody hangs up.
pub const ENDLESS_LIMIT_BYTES: u64 = 8 << 30;
/// No reply is written for longer than this.
pub const WRITE_LIMIT: Duration = Duration::from_secs(60);

/// What the server sends for a status request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// These bytes, then the connection is closed.
    Bytes(Arc<Vec<u8>>),
    /// 64 KiB stdout records without end.
    Endless,
    /// These bytes, `chunk` at a time with `every` between chunks.
    Drip {
        bytes: Arc<Vec<u8>>,
        chunk: usize,
        every: Duration,
    },
}

impl Behaviour {
    pub fn bytes(b: Vec<u8>) -> Behaviour {
        Behaviour::Bytes(Arc::new(b))
    }
}

/// The server; stops (and closes its socket) when dropped.
pub struct FakeFcgi {
    pub path: PathBuf,
    behaviour: Arc<Mutex<Behaviour>>,
    stop: Arc<AtomicBool>,
    /// Status requests received so far.
    pub status_requests: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl FakeFcgi {
    /// Listens on `path` and answers status requests with `initial`.
    pub fn start(path: &Path, initial: Behaviour) -> FakeFcgi {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        // Polled, so that stopping needs no connection to a path that the
        // test may already have removed.
        listener.set_nonblocking(true).unwrap();
        let behaviour = Arc::new(Mutex::new(initial));
        let stop = Arc::new(AtomicBool::new(false));
        let status_requests = Arc::new(AtomicU64::new(0));
        let thread = {
            let (behaviour, stop, count) =
                (behaviour.clone(), stop.clone(), status_requests.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let conn = match listener.accept() {
                        Ok((conn, _)) => conn,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    if conn.set_nonblocking(false).is_err() {
                        continue;
                    }
                    let (behaviour, stop, count) = (behaviour.clone(), stop.clone(), count.clone());
                    std::thread::spawn(move || serve(conn, &behaviour, &stop, &count));
                }
            })
        };
        FakeFcgi {
            path: path.to_owned(),
            behaviour,
            stop,
            status_requests,
            thread: Some(thread),
        }
    }

    /// What later status requests get.
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }
}

impl Drop for FakeFcgi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(mut conn: UnixStream, behaviour: &Mutex<Behaviour>, stop: &AtomicBool, count: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let Some(script) = read_request(&mut conn) else {
        return;
    };
    if script.ends_with("/ping") {
        let _ = conn.write_all(&reply(
            b"Content-type: text/plain;charset=UTF-8\r\n\r\npong",
        ));
        return;
    }
    count.fetch_add(1, Ordering::SeqCst);
    let b = behaviour.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let started = Instant::now();
    match b {
        Behaviour::Bytes(bytes) => {
            let _ = conn.write_all(&bytes);
        }
        Behaviour::Endless => {
            let rec = record(STDOUT, 1, &vec![b'x'; 0xffff]);
            let mut sent = 0u64;
            while sent < ENDLESS_LIMIT_BYTES
                && started.elapsed() < WRITE_LIMIT
                && !stop.load(Ordering::SeqCst)
            {
                if conn.write_all(&rec).is_err() {
                    break;
                }
                sent += rec.len() as u64;
            }
        }
        Behaviour::Drip {
            bytes,
            chunk,
            every,
        } => {
            for part in bytes.chunks(chunk.max(1)) {
                if started.elapsed() > WRITE_LIMIT
                    || stop.load(Ordering::SeqCst)
                    || conn.write_all(part).is_err()
                {
                    break;
                }
                std::thread::sleep(every);
            }
        }
    }
}

/// Reads one request (records up to the empty stdin record); returns its
/// `SCRIPT_NAME`, or `None` when the client sent something else.
fn read_request(conn: &mut UnixStream) -> Option<String> {
    let mut params = Vec::new();
    loop {
        let mut h = [0u8; 8];
        conn.read_exact(&mut h).ok()?;
        let len = usize::from(u16::from_be_bytes([h[4], h[5]])) + usize::from(h[6]);
        let mut content = vec![0u8; len];
        conn.read_exact(&mut content).ok()?;
        content.truncate(usize::from(u16::from_be_bytes([h[4], h[5]])));
        match h[1] {
            PARAMS => params.extend_from_slice(&content),
            STDIN if content.is_empty() => break,
            _ => {}
        }
    }
    let mut rest = params.as_slice();
    while !rest.is_empty() {
        let (nl, r) = pair_len(rest)?;
        let (vl, r) = pair_len(r)?;
        let name = r.get(..nl)?;
        let value = r.get(nl..nl + vl)?;
        if name == b"SCRIPT_NAME" {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = r.get(nl + vl..)?;
    }
    Some(String::new())
}

fn pair_len(b: &[u8]) -> Option<(usize, &[u8])> {
    let first = *b.first()?;
    if first < 0x80 {
        Some((usize::from(first), &b[1..]))
    } else {
        let four: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(((u32::from_be_bytes(four) & 0x7fff_ffff) as usize, &b[4..]))
    }
}

/// One record with the given type, request id and content (at most 65,535
/// bytes), no padding.
pub fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    assert!(
        content.len() <= 0xffff,
        "one record holds at most 65535 bytes"
    );
    let id = id.to_be_bytes();
    let len = (content.len() as u16).to_be_bytes();
    let mut out = vec![1, kind, id[0], id[1], len[0], len[1], 0, 0];
    out.extend_from_slice(content);
    out
}

/// `FCGI_END_REQUEST` with the given protocol status (0: complete).
pub fn end_request(protocol_status: u8) -> Vec<u8> {
    record(END_REQUEST, 1, &[0, 0, 0, 0, protocol_status, 0, 0, 0])
}

/// `stdout` split into stdout records.
pub fn stdout_records(stdout: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stdout.len() + stdout.len() / 0xffff * 8 + 8);
    for chunk in stdout.chunks(0xffff) {
        out.extend(record(STDOUT, 1, chunk));
    }
    out
}

/// A complete, well-formed reply carrying `stdout`.
pub fn reply(stdout: &[u8]) -> Vec<u8> {
    let mut out = stdout_records(stdout);
    out.extend(end_request(0));
    out
}

/// A complete reply with CGI headers for a JSON body.
pub fn json_reply(body: &str) -> Vec<u8> {
    reply(format!("Content-Type: application/json\r\n\r\n{body}").as_bytes())
}

/// A `?json&full` body as php-fpm 8.2 prints it, with `workers` workers
/// (every third one Running) whose pids no process has.
pub fn status_page(workers: usize) -> String {
    let mut out = format!(
        "{{\"pool\":\"fake\",\"process manager\":\"static\",\"start time\":1795688476,\"start since\":5,\"accepted conn\":1000,\"listen queue\":0,\"max listen queue\":0,\"listen queue len\":0,\"idle processes\":{},\"active processes\":{},\"total processes\":{workers},\"max active processes\":2,\"max children reached\":0,\"slow requests\":0, \"processes\":[",
        workers - workers.div_ceil(3),
        workers.div_ceil(3)
    );
    for i in 0..workers {
        if i > 0 {
            out.push(',');
        }
        let state = if i % 3 == 0 { "Running" } else { "Idle" };
        // Above the kernel's pid_max (4,194,304): never a real process.
        out.push_str(&format!(
            "{{\"pid\":{},\"state\":\"{state}\",\"start time\":1795688476,\"start since\":5,\"requests\":{i},\"request duration\":501120,\"request method\":\"GET\",\"request uri\":\"\\/index.php?page={i}\",\"content length\":0,\"user\":\"-\",\"script\":\"\\/srv\\/www\\/index.php\",\"last request cpu\":0.00,\"last request memory\":2097152}}",
            5_000_000 + i
        ));
    }
    out.push_str("]}");
    out
}
