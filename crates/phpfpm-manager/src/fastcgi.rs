//! FastCGI transport: one short connection per request to a pool's unix or TCP
//! endpoint, bounded in time (connect and total timeouts) and in size (every
//! reply is capped at `monitoring.max_reply_bytes`).
//!
//! Why the record codec is written here rather than taken from the
//! `fastcgi-client` crate (0.12), which this module used before: that crate
//! cannot bound a reply. `execute_once` collects every `FCGI_STDOUT` record
//! into one `Vec` until `FCGI_END_REQUEST` arrives, so a server that keeps
//! sending stdout grew the manager by gigabytes within one request timeout;
//! its streaming variant reads 8 KiB from the socket for each record it hands
//! out, so a reply of many tiny records still grows its internal buffer
//! without bound, and it does not check request ids; and an `FCGI_END_REQUEST`
//! record shorter than its 8-byte body makes it index out of bounds (a panic
//! in the collector). The client side of FastCGI 1.0 that php-fpm needs is
//! small: one `FCGI_BEGIN_REQUEST` (role responder), the parameters as
//! name-value pairs in `FCGI_PARAMS` records, an empty `FCGI_PARAMS` and an
//! empty `FCGI_STDIN`; then records of 8-byte headers (version 1, type,
//! request id, content length, padding length, reserved) until
//! `FCGI_END_REQUEST` (app status, protocol status, 3 reserved bytes).
//!
//! The reader checks the size a record announces *before* reading its
//! content, so the manager never holds more than the cap plus one record
//! (64 KiB). Anything that is not a well-formed reply to our one request is a
//! [`FcgiError::Protocol`] naming what was wrong; nothing here panics on input.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{timeout, Instant};

use crate::config::Endpoint;

/// The reply cap used when the caller names none: it fits the `?json&full`
/// status page of a pool with 10,000 workers with room to spare.
///
/// How it was sized: php-fpm 8.2 prints about 330 bytes per worker with short
/// URIs (the captured fixtures). At worst each entry has every number at
/// `u64::MAX` (361 bytes of keys and numbers) and every text field at the
/// size of its scoreboard slot (method 15, URI 127 + `?` + query 511, user 31,
/// script 255 = 940 bytes), each character escaped to two bytes (`\/`,
/// `\"`): 2,241 bytes per worker, 22.4 MB for 10,000. 32 MiB leaves ~50 %
/// headroom; a pool printing mostly non-ASCII URIs (`\uXXXX`, six bytes per
/// byte) at that size needs `monitoring.max_reply_bytes` raised.
pub const DEFAULT_MAX_REPLY_BYTES: u64 = 32 * 1024 * 1024;

/// What php-fpm sent back.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a request failed. [`FcgiError::kind`] is a stable label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum FcgiError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("connecting to {endpoint} took longer than {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    #[error("no complete reply from {endpoint} within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("FastCGI exchange with {endpoint} failed: {message}")]
    Protocol { endpoint: String, message: String },
    #[error("reply from {endpoint} is larger than {limit} bytes (monitoring.max_reply_bytes); the read was abandoned")]
    ReplyTooLarge { endpoint: String, limit: u64 },
}

impl FcgiError {
    pub fn kind(&self) -> &'static str {
        match self {
            FcgiError::Connect { .. } => "connect",
            FcgiError::ConnectTimeout { .. } => "connect_timeout",
            FcgiError::Timeout { .. } => "timeout",
            FcgiError::Protocol { .. } => "protocol",
            FcgiError::ReplyTooLarge { .. } => "reply_too_large",
        }
    }
}

/// Timeouts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// The whole request, connect included.
    pub total: Duration,
}

/// Sends `GET <script>?<query>` and returns the reply, capped at
/// [`DEFAULT_MAX_REPLY_BYTES`].
///
/// `script` is both `SCRIPT_NAME` and `SCRIPT_FILENAME`: php-fpm answers its
/// status and ping paths before looking for a file, and for a real script
/// (the OPcache probe) the caller passes its absolute path.
pub async fn get(
    endpoint: &Endpoint,
    script: &str,
    query: &str,
    timeouts: Timeouts,
) -> Result<Reply, FcgiError> {
    get_capped(endpoint, script, query, timeouts, DEFAULT_MAX_REPLY_BYTES).await
}

/// Like [`get`], with stdout and stderr together capped at `max_reply_bytes`:
/// past it the connection is dropped and [`FcgiError::ReplyTooLarge`] returned.
pub async fn get_capped(
    endpoint: &Endpoint,
    script: &str,
    query: &str,
    timeouts: Timeouts,
    max_reply_bytes: u64,
) -> Result<Reply, FcgiError> {
    let started = Instant::now();
    let ep = endpoint.to_string();
    let request = encode_request(&params(script, query));
    let work = async {
        match endpoint {
            Endpoint::Unix(path) => {
                let stream = connect(&ep, timeouts.connect, UnixStream::connect(path)).await?;
                exchange(&ep, stream, &request, max_reply_bytes).await
            }
            Endpoint::Tcp(addr) => {
                let stream =
                    connect(&ep, timeouts.connect, TcpStream::connect(addr.as_str())).await?;
                // Small requests: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                exchange(&ep, stream, &request, max_reply_bytes).await
            }
        }
    };
    match timeout(timeouts.total, work).await {
        Ok(res) => res,
        Err(_) => Err(FcgiError::Timeout {
            endpoint: ep,
            timeout: started.elapsed(),
        }),
    }
}

async fn connect<S>(
    ep: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, FcgiError> {
    match timeout(limit, fut).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(FcgiError::Connect {
            endpoint: ep.to_owned(),
            source,
        }),
        Err(_) => Err(FcgiError::ConnectTimeout {
            endpoint: ep.to_owned(),
            timeout: limit,
        }),
    }
}

/// The CGI parameters of a `GET` without a body.
fn params(script: &str, query: &str) -> Vec<(&'static str, String)> {
    let uri = if query.is_empty() {
        script.to_owned()
    } else {
        format!("{script}?{query}")
    };
    vec![
        ("GATEWAY_INTERFACE", "FastCGI/1.0".to_owned()),
        ("SERVER_SOFTWARE", "phpfpm-manager".to_owned()),
        ("SERVER_PROTOCOL", "HTTP/1.1".to_owned()),
        ("REQUEST_METHOD", "GET".to_owned()),
        ("SCRIPT_NAME", script.to_owned()),
        ("SCRIPT_FILENAME", script.to_owned()),
        ("QUERY_STRING", query.to_owned()),
        ("REQUEST_URI", uri),
        ("DOCUMENT_URI", script.to_owned()),
        ("REMOTE_ADDR", "127.0.0.1".to_owned()),
        ("REMOTE_PORT", "0".to_owned()),
        ("SERVER_ADDR", "127.0.0.1".to_owned()),
        ("SERVER_PORT", "0".to_owned()),
        ("SERVER_NAME", "phpfpm-manager".to_owned()),
        ("CONTENT_TYPE", String::new()),
        ("CONTENT_LENGTH", "0".to_owned()),
    ]
}

async fn exchange<S>(
    ep: &str,
    stream: S,
    request: &[u8],
    max_reply_bytes: u64,
) -> Result<Reply, FcgiError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let protocol = |message: String| FcgiError::Protocol {
        endpoint: ep.to_owned(),
        message,
    };
    // One record header is 8 bytes: buffer reads so that a reply of many
    // records costs few system calls.
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    stream
        .write_all(request)
        .await
        .map_err(|e| protocol(format!("cannot send the request: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| protocol(format!("cannot send the request: {e}")))?;
    read_reply(&mut stream, max_reply_bytes)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => FcgiError::ReplyTooLarge {
                endpoint: ep.to_owned(),
                limit: max_reply_bytes,
            },
            ReadError::Protocol(message) => protocol(message),
        })
}

// Record types and values of the FastCGI 1.0 specification.
const VERSION_1: u8 = 1;
const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const ROLE_RESPONDER: u16 = 1;
/// One request per connection, so always the same id (0 is reserved for
/// management records).
const REQUEST_ID: u16 = 1;
const MAX_CONTENT: usize = 0xffff;

/// The whole request: begin, parameters, end of parameters, empty stdin.
/// Flags 0: php-fpm closes the connection after the reply.
fn encode_request(params: &[(&str, String)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in params {
        push_len(&mut body, name.len());
        push_len(&mut body, value.len());
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(value.as_bytes());
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    let role = ROLE_RESPONDER.to_be_bytes();
    push_record(
        &mut out,
        BEGIN_REQUEST,
        &[role[0], role[1], 0, 0, 0, 0, 0, 0],
    );
    for chunk in body.chunks(MAX_CONTENT) {
        push_record(&mut out, PARAMS, chunk);
    }
    push_record(&mut out, PARAMS, &[]);
    push_record(&mut out, STDIN, &[]);
    out
}

/// A name-value pair length: one byte below 128, else four with the top bit set.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        // Parameters are a few hundred bytes at most; u32 cannot overflow.
        let l = (len as u32 & 0x7fff_ffff) | 0x8000_0000;
        out.extend_from_slice(&l.to_be_bytes());
    }
}

/// Appends one record; `content` is at most 65,535 bytes (callers chunk).
fn push_record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    let id = REQUEST_ID.to_be_bytes();
    let len = (content.len().min(MAX_CONTENT) as u16).to_be_bytes();
    out.extend_from_slice(&[VERSION_1, kind, id[0], id[1], len[0], len[1], 0, 0]);
    out.extend_from_slice(&content[..content.len().min(MAX_CONTENT)]);
}

/// Why a reply could not be read (the endpoint is added by the caller).
#[derive(Debug, PartialEq)]
enum ReadError {
    TooLarge,
    Protocol(String),
}

/// Reads records until `FCGI_END_REQUEST`. stdout and stderr together may
/// hold at most `max` bytes: a record that would pass it ends the read
/// before its content is read.
async fn read_reply<R: AsyncRead + Unpin>(r: &mut R, max: u64) -> Result<Reply, ReadError> {
    let mut reply = Reply::default();
    let mut received: u64 = 0;
    let mut records: u64 = 0;
    loop {
        let mut header = [0u8; 8];
        read_exact(r, &mut header, || {
            format!("connection closed after {received} bytes of reply in {records} records, before the end-request record")
        })
        .await?;
        records += 1;
        let [version, kind, id_hi, id_lo, len_hi, len_lo, padding, _reserved] = header;
        if version != VERSION_1 {
            return Err(ReadError::Protocol(format!(
                "record {records} has version {version}, expected 1 (not a FastCGI server?)"
            )));
        }
        let id = u16::from_be_bytes([id_hi, id_lo]);
        if id != REQUEST_ID {
            return Err(ReadError::Protocol(format!(
                "record {records} (type {kind}) is for request id {id}, not {REQUEST_ID}"
            )));
        }
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        match kind {
            STDOUT | STDERR => {
                if received + len as u64 > max {
                    return Err(ReadError::TooLarge);
                }
                received += len as u64;
                let out = if kind == STDOUT {
                    &mut reply.stdout
                } else {
                    &mut reply.stderr
                };
                let start = out.len();
                out.resize(start + len, 0);
                read_exact(r, &mut out[start..], || {
                    format!("connection closed inside record {records} (type {kind}, {len} bytes)")
                })
                .await?;
                skip(r, padding, records).await?;
            }
            END_REQUEST => {
                // The body is 8 bytes; anything longer is read and ignored.
                let mut body = [0u8; 8];
                let closed =
                    || format!("connection closed inside the end-request record ({len} bytes)");
                read_exact(r, &mut body[..len.min(8)], closed).await?;
                discard(r, len.saturating_sub(8) + usize::from(padding), records).await?;
                if len < 8 {
                    return Err(ReadError::Protocol(format!(
                        "end-request record has {len} bytes of content, expected 8"
                    )));
                }
                return match body[4] {
                    0 => Ok(reply),
                    1 => Err(ReadError::Protocol(
                        "server refused the request: cannot multiplex connections".into(),
                    )),
                    2 => Err(ReadError::Protocol(
                        "server refused the request: overloaded".into(),
                    )),
                    3 => Err(ReadError::Protocol(
                        "server refused the request: unknown role".into(),
                    )),
                    s => Err(ReadError::Protocol(format!(
                        "end-request record has protocol status {s}"
                    ))),
                };
            }
            other => {
                return Err(ReadError::Protocol(format!(
                    "record {records} has type {other}; a reply holds only stdout (6), stderr (7) and end-request (3)"
                )))
            }
        }
    }
}

async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    closed: impl FnOnce() -> String,
) -> Result<(), ReadError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ReadError::Protocol(closed()))
        }
        Err(e) => Err(ReadError::Protocol(format!("read failed: {e}"))),
    }
}

async fn skip<R: AsyncRead + Unpin>(r: &mut R, padding: u8, record: u64) -> Result<(), ReadError> {
    discard(r, usize::from(padding), record).await
}

/// Reads and drops `n` bytes (padding, or the end of an oversized record).
async fn discard<R: AsyncRead + Unpin>(r: &mut R, n: usize, record: u64) -> Result<(), ReadError> {
    let mut scratch = [0u8; 256];
    let mut left = n;
    while left > 0 {
        let take = left.min(scratch.len());
        read_exact(r, &mut scratch[..take], || {
            format!("connection closed inside the padding of record {record}")
        })
        .await?;
        left -= take;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    fn t(ms: u64) -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(ms),
            total: Duration::from_millis(ms),
        }
    }

    fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
        let id = id.to_be_bytes();
        let len = (content.len() as u16).to_be_bytes();
        let mut out = vec![1, kind, id[0], id[1], len[0], len[1], padding, 0];
        out.extend_from_slice(content);
        out.extend(std::iter::repeat_n(0u8, usize::from(padding)));
        out
    }

    fn end(status: u8) -> Vec<u8> {
        record(END_REQUEST, 1, &[0, 0, 0, 0, status, 0, 0, 0], 0)
    }

    async fn read(bytes: &[u8], max: u64) -> Result<Reply, ReadError> {
        let mut r = bytes;
        read_reply(&mut r, max).await
    }

    #[tokio::test]
    async fn records_are_joined_and_padding_skipped() {
        let mut b = record(STDOUT, 1, b"Content-type: text/plain\r\n\r\npo", 3);
        b.extend(record(STDERR, 1, b"warn", 0));
        b.extend(record(STDOUT, 1, b"ng", 6));
        b.extend(end(0));
        let r = read(&b, 1024).await.unwrap();
        assert_eq!(r.stdout, b"Content-type: text/plain\r\n\r\npong");
        assert_eq!(r.stderr, b"warn");
    }

    #[tokio::test]
    async fn the_cap_counts_stdout_and_stderr_and_stops_before_reading() {
        let mut b = record(STDOUT, 1, &[b'a'; 600], 0);
        b.extend(record(STDERR, 1, &[b'b'; 500], 0));
        b.extend(end(0));
        assert_eq!(read(&b, 1100).await.unwrap().stdout.len(), 600);
        assert_eq!(read(&b, 1099).await.unwrap_err(), ReadError::TooLarge);
        // Only the header of the record past the cap is needed to refuse it.
        let head = &record(STDOUT, 1, &[0; 2000], 0)[..8];
        assert_eq!(read(head, 1000).await.unwrap_err(), ReadError::TooLarge);
    }

    #[tokio::test]
    async fn hostile_record_streams_are_protocol_errors() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "before the end-request record"),
            ("http", b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), "version 72"),
            (
                "other id",
                [record(STDOUT, 2, b"x", 0), end(0)].concat(),
                "request id 2",
            ),
            (
                "management record",
                [record(11, 0, &[1, 0, 0, 0, 0, 0, 0, 0], 0)].concat(),
                "request id 0",
            ),
            (
                "unknown type",
                [record(10, 1, b"x", 0), end(0)].concat(),
                "type 10",
            ),
            (
                "short end-request",
                record(END_REQUEST, 1, &[0, 0], 0),
                "expected 8",
            ),
            ("overloaded", end(2), "overloaded"),
            (
                "cut content",
                record(STDOUT, 1, b"abcdef", 0)[..10].to_vec(),
                "inside record 1",
            ),
            (
                "cut padding",
                record(STDOUT, 1, b"abc", 5)[..13].to_vec(),
                "padding",
            ),
            (
                "no end",
                record(STDOUT, 1, b"abc", 0),
                "before the end-request record",
            ),
        ];
        for (name, bytes, want) in cases {
            match read(&bytes, 1 << 20).await {
                Err(ReadError::Protocol(m)) => assert!(m.contains(want), "{name}: {m}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn end_request_without_stdout_is_an_empty_reply() {
        let r = read(&end(0), 10).await.unwrap();
        assert!(r.stdout.is_empty() && r.stderr.is_empty());
    }

    #[test]
    fn request_encoding_follows_the_spec() {
        let long = "q".repeat(300);
        let req = encode_request(&[("A", "b".to_owned()), ("QUERY_STRING", long.clone())]);
        // Begin request: responder role, no keep-alive.
        assert_eq!(
            &req[..16],
            &[1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let params = &req[16..];
        assert_eq!(params[1], PARAMS);
        let len = usize::from(u16::from_be_bytes([params[4], params[5]]));
        let body = &params[8..8 + len];
        assert_eq!(&body[..4], b"\x01\x01Ab");
        // 12 fits one byte, 300 needs four with the top bit set.
        assert_eq!(&body[4..9], &[12, 0x80, 0, 1, 44]);
        assert_eq!(&body[9..21], b"QUERY_STRING");
        assert_eq!(&body[21..], long.as_bytes());
        // Then the empty params and empty stdin records end the request.
        assert_eq!(
            &params[8 + len..],
            &[1, PARAMS, 0, 1, 0, 0, 0, 0, 1, STDIN, 0, 1, 0, 0, 0, 0]
        );
    }

    /// Serves one canned reply per connection after reading the request
    /// (which ends with the empty stdin record).
    async fn serve(path: std::path::PathBuf, reply: Vec<u8>, endless: bool) {
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.ends_with(&[1, STDIN, 0, 1, 0, 0, 0, 0]) {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    // Bounded even if the client never hangs up: 1 GiB.
                    for _ in 0..if endless { 16_384 } else { 1 } {
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn an_endless_reply_is_cut_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endless.sock");
        serve(path.clone(), record(STDOUT, 1, &[b'x'; 65535], 0), true).await;
        let started = Instant::now();
        let err = get_capped(&Endpoint::Unix(path), "/status", "json", t(10_000), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "reply_too_large", "{err}");
        assert!(err.to_string().contains("1048576 bytes"), "{err}");
        // Cut by size, long before the 10 s timeout.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_reply_under_the_cap_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.sock");
        let mut reply = record(STDOUT, 1, b"Content-type: text/plain\r\n\r\npong", 0);
        reply.extend(end(0));
        serve(path.clone(), reply, false).await;
        let r = get(&Endpoint::Unix(path), "/ping", "", t(2000))
            .await
            .unwrap();
        assert!(r.stdout.ends_with(b"pong"));
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let ep = Endpoint::Unix(dir.path().join("nope.sock"));
        let err = get(&ep, "/status", "json", t(200)).await.unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
        assert!(err.to_string().contains("nope.sock"), "{err}");
    }

    #[tokio::test]
    async fn silent_server_hits_the_total_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        // Accepts and then never answers.
        let listener = UnixListener::bind(&path).unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let started = Instant::now();
        let err = get(&Endpoint::Unix(path), "/status", "json", t(150))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "timeout", "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        holder.abort();
    }

    #[tokio::test]
    async fn closed_tcp_port_is_a_connect_error() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = Endpoint::Tcp(format!("127.0.0.1:{port}"));
        let err = get(&ep, "/ping", "", t(500)).await.unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
    }
}
