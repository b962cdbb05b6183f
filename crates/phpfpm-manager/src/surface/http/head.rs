//! Request heads too large for the manager, answered in the API's error
//! shape (414 `uri_too_long`, 431 `headers_too_large`) instead of hyper's
//! bare status line.
//!
//! hyper refuses a head that outgrows its read buffer with a 431 and no
//! body, and the router never sees that request. Raising the buffer until
//! a 1 MB query string fits would let every connection hold that much; so
//! the head is measured here instead, on the plaintext stream hyper reads
//! (under TLS: after decryption), by [`HeadGuard`]:
//!
//! - while a request head is being read, no read brings in more than what
//!   is left of [`MAX_HEAD_BYTES`] (plus one byte, to see the overflow), so
//!   hyper's buffer, sized above that ([`HYPER_MAX_BUF`]), never overflows
//!   and its own bare answer is never sent;
//! - a head longer than [`MAX_HEAD_BYTES`], or with more than
//!   [`MAX_HEADERS`] header lines, ends the stream for hyper (it sees the
//!   client leave mid-head and answers nothing), and the connection's task
//!   writes the answer in the error shape ([`refusal`]) and closes.
//!
//! Memory per connection stays bounded by hyper's buffer: at most
//! [`HYPER_MAX_BUF`] (80 KiB) for the request head and as much for queued
//! response bytes; the guard itself keeps a few counters.
//!
//! Where a head starts is known from the request cycle: the first byte of
//! a connection, and the first byte read after the previous request was
//! answered. Bytes after a complete head (a body) are not counted.
//! [`HeadScan`] is the pure part (bytes in, verdict out).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head (request line and headers) the manager reads.
/// Above what any client of this API sends (a bearer key, a trace header,
/// a history query), far below what would let connections hold much memory.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in one request head.
pub const MAX_HEADERS: usize = 100;
/// hyper's read buffer limit: above [`MAX_HEAD_BYTES`], so the guard always
/// decides first.
pub const HYPER_MAX_BUF: usize = MAX_HEAD_BYTES + 16 * 1024;
/// hyper's own header count limit, above [`MAX_HEADERS`] for the same
/// reason (a partial header line needs a slot in its parser too).
pub const HYPER_MAX_HEADERS: usize = MAX_HEADERS + 28;

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// The request line alone is longer than [`MAX_HEAD_BYTES`].
    RequestLine,
    /// The request line and headers are longer than [`MAX_HEAD_BYTES`].
    Headers,
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
}

impl Oversize {
    pub fn status(self) -> StatusCode {
        match self {
            Oversize::RequestLine => StatusCode::URI_TOO_LONG,
            Oversize::Headers | Oversize::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Oversize::RequestLine => "uri_too_long",
            Oversize::Headers | Oversize::TooManyHeaders => "headers_too_large",
        }
    }

    pub fn message(self) -> String {
        match self {
            Oversize::RequestLine => format!(
                "the request line (method, path and query string) is longer than {MAX_HEAD_BYTES} bytes"
            ),
            Oversize::Headers => {
                format!("the request line and headers are longer than {MAX_HEAD_BYTES} bytes")
            }
            Oversize::TooManyHeaders => format!("the request has more than {MAX_HEADERS} headers"),
        }
    }
}

/// What a chunk of bytes did to the head being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The head goes on.
    More,
    /// The head ended after this many bytes of the chunk.
    Complete(usize),
    /// The head is too large; the first this many bytes of the chunk are
    /// within the limits.
    TooLarge(usize, Oversize),
}

/// Measures one request head, fed in chunks. Line ends are `\n` with an
/// optional `\r` (as hyper's parser accepts them); empty lines before the
/// request line are skipped, as hyper skips them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadScan {
    bytes: usize,
    /// Non-empty lines completed (the request line, then headers).
    lines: usize,
    /// Bytes of the current line other than `\r`.
    line_len: usize,
}

impl HeadScan {
    /// How many more bytes a read may bring in: what is left of the limit,
    /// plus one to see it passed.
    pub fn room(&self) -> usize {
        (MAX_HEAD_BYTES + 1).saturating_sub(self.bytes).max(1)
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Step {
        for (i, &b) in chunk.iter().enumerate() {
            self.bytes += 1;
            if self.bytes > MAX_HEAD_BYTES {
                let why = if self.lines == 0 {
                    Oversize::RequestLine
                } else {
                    Oversize::Headers
                };
                return Step::TooLarge(i, why);
            }
            match b {
                b'\n' if self.line_len == 0 => {
                    if self.lines > 0 {
                        return Step::Complete(i + 1);
                    }
                }
                b'\n' => {
                    self.lines += 1;
                    self.line_len = 0;
                    // The request line is not a header.
                    if self.lines > MAX_HEADERS + 1 {
                        return Step::TooLarge(i, Oversize::TooManyHeaders);
                    }
                }
                b'\r' => {}
                _ => self.line_len += 1,
            }
        }
        Step::More
    }
}

/// Requests a connection has finished answering, counted by its task so
/// that the guard knows when the next head starts.
#[derive(Debug, Default)]
pub struct Answered(AtomicU64);

impl Answered {
    pub fn one_more(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
enum Reading {
    Head(HeadScan),
    /// A head was complete when `answered` requests had been answered; the
    /// next one starts once more have been.
    Body {
        answered: u64,
    },
    Refused(Oversize),
}

/// The stream hyper reads, measuring request heads (see the module doc).
#[derive(Debug)]
pub struct HeadGuard<I> {
    inner: I,
    reading: Reading,
    answered: Arc<Answered>,
}

impl<I> HeadGuard<I> {
    pub fn new(inner: I, answered: Arc<Answered>) -> HeadGuard<I> {
        HeadGuard {
            inner,
            reading: Reading::Head(HeadScan::default()),
            answered,
        }
    }

    /// The stream itself, past the guard.
    pub fn into_inner(self) -> I {
        self.inner
    }

    /// Why the head being read was refused, if it was.
    pub fn refused(&self) -> Option<Oversize> {
        match self.reading {
            Reading::Refused(why) => Some(why),
            _ => None,
        }
    }
}

/// The whole HTTP/1.1 answer to a refused head, in the error shape; the
/// connection closes after it (the rest of the head is never read).
pub fn refusal(why: Oversize) -> Vec<u8> {
    let body =
        serde_json::json!({"error": {"code": why.code(), "message": why.message()}}).to_string();
    let status = why.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Reading::Body { answered } = this.reading {
            if this.answered.count() != answered {
                this.reading = Reading::Head(HeadScan::default());
            }
        }
        let scan = match &mut this.reading {
            // The end of the stream for hyper: it answers nothing to a
            // head cut short, and the connection's task answers instead.
            Reading::Refused(_) => return Poll::Ready(Ok(())),
            Reading::Body { .. } => return Pin::new(&mut this.inner).poll_read(cx, buf),
            Reading::Head(scan) => scan,
        };
        let room = scan.room().min(buf.remaining());
        let step = {
            let window = &mut buf.initialize_unfilled_to(room)[..room];
            let mut part = ReadBuf::new(window);
            match Pin::new(&mut this.inner).poll_read(cx, &mut part) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = part.filled().len();
            (n, scan.feed(part.filled()))
        };
        match step {
            (n, Step::More) => buf.advance(n),
            (n, Step::Complete(_)) => {
                // The rest of the chunk is body (or the next request,
                // pipelined: hyper's own limit still bounds that one).
                buf.advance(n);
                this.reading = Reading::Body {
                    answered: this.answered.count(),
                };
            }
            (_, Step::TooLarge(within, why)) => {
                // hyper gets only what is within the limits: it never sees
                // a head it would refuse itself.
                buf.advance(within);
                this.reading = Reading::Refused(why);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_head_ends_at_its_empty_line_and_leading_empty_lines_are_skipped() {
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"\r\nGET / HTTP/1.1\r\nHost: a\r"), Step::More);
        assert_eq!(s.feed(b"\n\r\nbody"), Step::Complete(3));
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\nA: b\n\nrest"), Step::Complete(21));
    }

    #[test]
    fn a_long_request_line_a_long_head_and_many_headers_are_told_apart() {
        let mut s = HeadScan::default();
        let line = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert_eq!(
            s.feed(&line),
            Step::TooLarge(MAX_HEAD_BYTES, Oversize::RequestLine)
        );
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\n"), Step::More);
        assert_eq!(s.room(), MAX_HEAD_BYTES + 1 - 16);
        let header = vec![b'x'; MAX_HEAD_BYTES];
        assert_eq!(
            s.feed(&header),
            Step::TooLarge(MAX_HEAD_BYTES - 16, Oversize::Headers)
        );
        let mut s = HeadScan::default();
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            head.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        assert_eq!(s.feed(&head), Step::More);
        let at = s.clone().feed(b"\r\n");
        assert_eq!(at, Step::Complete(2), "exactly the most headers is fine");
        assert_eq!(
            s.feed(b"one: more\r\n"),
            Step::TooLarge(10, Oversize::TooManyHeaders)
        );
    }

    #[test]
    fn the_refusal_is_a_whole_answer_in_the_error_shape() {
        let text = String::from_utf8(refusal(Oversize::RequestLine)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "uri_too_long");
        let text = String::from_utf8(refusal(Oversize::TooManyHeaders)).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("\"headers_too_large\""), "{text}");
    }

    #[tokio::test]
    async fn the_guard_passes_heads_and_bodies_and_stops_an_oversized_head() {
        let answered = Arc::new(Answered::default());
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut guard = HeadGuard::new(server, answered.clone());
        let body = vec![b'b'; 200 * 1024];
        let head = b"POST / HTTP/1.1\r\nContent-Length: 204800\r\n\r\n";
        client.write_all(head).await.unwrap();
        client.write_all(&body).await.unwrap();
        let mut got = vec![0u8; head.len() + body.len()];
        guard.read_exact(&mut got).await.unwrap();
        assert!(
            guard.refused().is_none(),
            "a large body is not a large head"
        );
        // The request is answered; the next head is measured again.
        answered.one_more();
        let mut long = b"GET /?q=".to_vec();
        long.extend(std::iter::repeat_n(b'a', 200 * 1024));
        client.write_all(&long).await.unwrap();
        let mut seen = Vec::new();
        guard.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen.len(), MAX_HEAD_BYTES);
        assert_eq!(guard.refused(), Some(Oversize::RequestLine));
    }
}
