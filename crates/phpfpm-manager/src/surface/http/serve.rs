//! The HTTP listener and the limits that keep it from starving the rest of the
//! manager: every connection costs a file descriptor, a task and buffers, and
//! the same process supervises php-fpm and collects from it.
//!
//! - **Header read timeout** (`server.limits.header_read_timeout`): from the
//!   first byte of a request until its headers are complete. A client that
//!   trickles a header a byte at a time (slowloris) is cut when it runs out.
//! - **Idle timeout** (`server.limits.idle_timeout`): a connection that moves
//!   no byte in either direction while no request of it is being handled is
//!   closed: kept-alive connections between requests, connections that never
//!   send anything, and clients that stop reading their response.
//! - **Request timeout** (`server.limits.request_timeout`): a handler that
//!   outlives it is dropped and answered 503 (a layer on the router).
//! - **Connection cap**: at most [`FdBudget::max_connections`] connections are
//!   open. A new connection beyond it takes the place of the connection that
//!   has been quiet longest and is not being answered (it is closed); if
//!   every connection is busy, the new one is closed at once. Both are
//!   counted in `phpfpm_manager_http_connections_closed_total{reason}`.
//! - **Connections per client** (`server.limits.max_connections_per_client`):
//!   one client address (IPv6: its /64) keeps at most that many open. A new
//!   one beyond takes the place of that client's own quietest connection
//!   not being answered; if all of them are being answered, the new one is
//!   closed at once (`client_limit`). A greedy client competes with itself,
//!   not with other clients.
//! - **Request heads** (`head.rs`): at most 64 KiB and 100 headers; beyond,
//!   414 or 431 in the error shape, then the connection closes.
//!
//! The connection table and timeouts are written here rather than taken
//! from a crate: hyper's own header timeout also runs while a kept-alive
//! connection waits for its next request (so it cannot be told apart from
//! the idle timeout), and no maintained tower or hyper-util layer closes the
//! idlest connection to admit a new one.
//!
//! TLS (`server.tls`, `tls.rs`): the handshake runs in the connection's own
//! task, bounded by the header read timeout, after the connection was
//! admitted; the timeouts and the cap then apply to the TLS connection as to
//! a plain one. A failed handshake is counted (`tls_handshake`).
//!
//! File descriptors: [`raise_fd_limit`] lifts the soft `RLIMIT_NOFILE` to the
//! hard one at start, and [`FdBudget`] sizes the cap so that a reserve is
//! always left for supervision, collection and storage (see [`fd_reserve`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use fpm_storage::Reader;

use super::gate::QueryGate;
use super::head::{self, Answered, HeadGuard};
use super::tls::{PeerCert, TlsServer};
use crate::state::AppState;
use crate::surface::metrics::Metrics;

/// File descriptors held back for everything but HTTP connections, whatever
/// the configuration: stdio, the runtime (epoll, eventfd, signal pipe), the
/// listener, `manager.lock`, the storage writer (database, WAL and shared
/// memory files), the blocking threads' short-lived `/proc` and cgroup reads,
/// and log files.
pub const BASE_RESERVE: u64 = 64;
/// Per pool: its two manager-owned listening sockets, the master's stdout
/// and stderr pipes, its pidfd, the collector's FastCGI connections (status
/// and ping), the netlink socket of the queue probe, `/proc` files of the
/// workers being sampled, the OPcache probe's directory, and the pipes of a
/// `php-fpm -t` check or of a restart in progress.
pub const PER_POOL_RESERVE: u64 = 24;
/// Per history reader: its SQLite database, WAL and shared-memory files.
pub const PER_READER_RESERVE: u64 = 3;

/// The descriptors everything but HTTP connections may need at once.
pub fn fd_reserve(pools: usize, readers: usize) -> u64 {
    BASE_RESERVE + PER_POOL_RESERVE * pools as u64 + PER_READER_RESERVE * readers as u64
}

/// How many HTTP connections the descriptor limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` the manager runs with.
    pub fd_limit: u64,
    /// Held back for supervision, collection and storage ([`fd_reserve`]).
    pub reserve: u64,
    /// The connection cap: `server.limits.max_connections`, lowered to half
    /// of what the reserve leaves. The other half absorbs pools added by a
    /// reload, connections accepted only to be closed, and anything the
    /// reserve underestimates. At least 1, so the API stays reachable.
    pub max_connections: usize,
}

impl FdBudget {
    pub fn new(fd_limit: u64, reserve: u64, configured: usize) -> FdBudget {
        let spare = fd_limit.saturating_sub(reserve) / 2;
        let max_connections = usize::try_from(spare)
            .unwrap_or(usize::MAX)
            .min(configured)
            .max(1);
        FdBudget {
            fd_limit,
            reserve,
            max_connections,
        }
    }
}

/// The kernel's default ceiling for `RLIMIT_NOFILE` (`fs.nr_open`), used
/// when the hard limit is "unlimited", which `NOFILE` cannot be set to.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns
/// `(before, after)`. Many systems start services with a soft limit of 1024
/// and a much higher hard one; the soft one is what `accept` and `open` run
/// into. php-fpm masters inherit the raised limit (php-fpm's own
/// `rlimit_files` still applies when set).
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let before = lim.current.unwrap_or(NR_OPEN_DEFAULT);
    let target = lim.maximum.unwrap_or(NR_OPEN_DEFAULT);
    if target <= before {
        return Ok((before, before));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        },
    )?;
    Ok((before, target))
}

/// The soft `RLIMIT_NOFILE` in effect.
pub fn current_fd_limit() -> u64 {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current.unwrap_or(NR_OPEN_DEFAULT)
}

/// Starts the HTTP surface on `listener`: the router over `state`, history
/// queries through `readers` (one query at a time each), the limits of
/// `server.limits` with the connection cap fitted to the open-files limit.
/// The task ends once `shutdown` completes and connections have finished.
pub fn spawn(
    listener: TcpListener,
    state: Arc<AppState>,
    readers: Vec<Reader>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let stats = HttpStats::new(&state.metrics);
    launch(listener, &state, readers, &stats, shutdown)
}

/// One server over `listener` with the state's current `server` settings.
fn launch(
    listener: TcpListener,
    state: &Arc<AppState>,
    readers: Vec<Reader>,
    stats: &HttpStats,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let cfg = state.config();
    let limits = &cfg.server.limits;
    let budget = FdBudget::new(
        current_fd_limit(),
        fd_reserve(cfg.pools.len(), readers.len()),
        limits.max_connections,
    );
    stats
        .fd_limit
        .set(i64::try_from(budget.fd_limit).unwrap_or(i64::MAX));
    if budget.max_connections < limits.max_connections {
        tracing::warn!(
            "At most {} HTTP connections (server.limits.max_connections is {}): the open-files limit is {} and {} are kept for php-fpm supervision, collection and storage.",
            budget.max_connections,
            limits.max_connections,
            budget.fd_limit,
            budget.reserve
        );
    }
    let conn_limits = ConnLimits {
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        max_connections: budget.max_connections,
        max_connections_per_client: limits.max_connections_per_client,
    };
    let gate = QueryGate::new(
        readers,
        limits.max_queued_queries,
        stats.queries_rejected.clone(),
    );
    let app = super::router(state.clone(), Some(gate));
    let tls = match &cfg.server.tls {
        None => None,
        Some(t) => match TlsServer::load(t) {
            Ok(server) => Some(Arc::new(server)),
            Err(e) => {
                // Checked at start; the files changed since. Never fall
                // back to plain HTTP: serve nothing.
                tracing::error!("The HTTP server does not start: {e}.");
                return tokio::spawn(async move {
                    drop(listener);
                    shutdown.await;
                });
            }
        },
    };
    let reloads = CancellationToken::new();
    if let Some(server) = &tls {
        super::tls::reload_on_sighup(server.clone(), state.clone(), reloads.clone());
    }
    let stats = stats.clone();
    tokio::spawn(async move {
        serve(listener, app, conn_limits, stats, tls, shutdown).await;
        reloads.cancel();
    })
}

/// The HTTP surface across configuration reloads. A change of the `server`
/// section starts a new server with the new settings (router, API switch,
/// limits), on a new listener when `server.bind_address` changed or on the
/// same socket otherwise; the previous server stops accepting at once,
/// closes its idle connections and lets requests in flight finish. The
/// series of [`HttpStats`] are registered once and shared by every server.
pub struct HttpServer {
    state: Arc<AppState>,
    stats: HttpStats,
    /// The socket served now; each server accepts on its own duplicate.
    listener: std::net::TcpListener,
    current: (tokio::task::JoinHandle<()>, CancellationToken),
    /// Servers replaced by a reload, finishing their requests.
    draining: Vec<tokio::task::JoinHandle<()>>,
    /// Cancelled at shutdown (or detach): every server stops.
    shutdown: CancellationToken,
}

impl HttpServer {
    /// Starts serving on `listener` until `shutdown` is cancelled.
    pub fn start(
        listener: TcpListener,
        state: Arc<AppState>,
        readers: Vec<Reader>,
        shutdown: CancellationToken,
    ) -> io::Result<HttpServer> {
        let stats = HttpStats::new(&state.metrics);
        let listener = listener.into_std()?;
        let current = Self::launch_on(&listener, &state, readers, &stats, &shutdown)?;
        Ok(HttpServer {
            state,
            stats,
            listener,
            current,
            draining: Vec::new(),
            shutdown,
        })
    }

    fn launch_on(
        listener: &std::net::TcpListener,
        state: &Arc<AppState>,
        readers: Vec<Reader>,
        stats: &HttpStats,
        shutdown: &CancellationToken,
    ) -> io::Result<(tokio::task::JoinHandle<()>, CancellationToken)> {
        let own = TcpListener::from_std(listener.try_clone()?)?;
        let stop = shutdown.child_token();
        let token = stop.clone();
        let task = launch(own, state, readers, stats, async move {
            token.cancelled().await;
        });
        Ok((task, stop))
    }

    /// The address served now.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves with the state's current `server` settings: on `listener`
    /// when given (a new `bind_address`, already bound, so a refused bind
    /// never reaches here), else on the same socket. The previous server
    /// drains. On error nothing changed.
    pub fn restart(
        &mut self,
        listener: Option<TcpListener>,
        readers: Vec<Reader>,
    ) -> io::Result<()> {
        let listener = match listener {
            Some(l) => l.into_std()?,
            None => self.listener.try_clone()?,
        };
        let next = Self::launch_on(&listener, &self.state, readers, &self.stats, &self.shutdown)?;
        let (old_task, old_stop) = std::mem::replace(&mut self.current, next);
        old_stop.cancel();
        self.draining.retain(|t| !t.is_finished());
        self.draining.push(old_task);
        // The old socket closes once its server has dropped its duplicate.
        self.listener = listener;
        Ok(())
    }

    /// Waits until every server has stopped (after `shutdown` is
    /// cancelled), at most `limit`; says whether they all did.
    pub async fn stopped(self, limit: Duration) -> bool {
        drop(self.listener);
        let all = async move {
            let _ = self.current.0.await;
            for t in self.draining {
                let _ = t.await;
            }
        };
        tokio::time::timeout(limit, all).await.is_ok()
    }
}

/// The listener's timeouts and cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A request's headers did not arrive within the header read timeout.
    HeaderTimeout,
    /// No byte moved for the idle timeout while nothing was being answered.
    IdleTimeout,
    /// Closed to make room for a new connection at the cap.
    Evicted,
    /// Closed at once: the cap was reached and every connection was busy.
    OverLimit,
    /// The TLS handshake failed or did not finish within the header read
    /// timeout (no client certificate, one from another CA, not TLS).
    TlsHandshake,
    /// Closed at once: the client was at its own cap and every connection
    /// of it was busy.
    ClientLimit,
    /// A request head longer than 64 KiB or with more than 100 headers,
    /// answered 414 or 431 before closing.
    HeadTooLarge,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::OverLimit => "over_limit",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::ClientLimit => "client_limit",
            CloseReason::HeadTooLarge => "head_too_large",
        }
    }
}

/// Where a connection is in its request cycle (times are offsets from the
/// server's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests (or writing a response out).
    Waiting,
    /// The first byte of a request arrived at `since`; its headers are not complete.
    ReadingHead { since: Duration },
    /// A handler is running (bounded by the request timeout).
    Handling,
}

/// What to do with a connection at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Look again at this time.
    KeepUntil(Duration),
    Close(CloseReason),
}

/// Decides, from the phase and the time of the last byte moved, whether a
/// connection has run out of time.
pub fn verdict(phase: Phase, last_io: Duration, now: Duration, limits: &ConnLimits) -> Verdict {
    let idle_end = last_io + limits.idle_timeout;
    match phase {
        // The request timeout bounds a handler; look again later.
        Phase::Handling => Verdict::KeepUntil(now + limits.idle_timeout),
        Phase::ReadingHead { since } => {
            let head_end = since + limits.header_read_timeout;
            if now >= head_end {
                Verdict::Close(CloseReason::HeaderTimeout)
            } else if now >= idle_end {
                Verdict::Close(CloseReason::IdleTimeout)
            } else {
                Verdict::KeepUntil(head_end.min(idle_end))
            }
        }
        Phase::Waiting if now >= idle_end => Verdict::Close(CloseReason::IdleTimeout),
        Phase::Waiting => Verdict::KeepUntil(idle_end),
    }
}

/// The connection to close to make room at the cap: the one quiet longest
/// among those not being answered. `None` if every connection is busy.
pub fn pick_victim(conns: impl IntoIterator<Item = (u64, Phase, Duration)>) -> Option<u64> {
    conns
        .into_iter()
        .filter(|(_, phase, _)| *phase != Phase::Handling)
        .min_by_key(|(id, _, last_io)| (*last_io, *id))
        .map(|(id, _, _)| id)
}

/// The HTTP server's own series.
#[derive(Debug, Clone)]
pub struct HttpStats {
    pub open: IntGauge,
    pub limit: IntGauge,
    pub fd_limit: IntGauge,
    pub closed: IntCounterVec,
    pub accept_errors: IntCounter,
    pub queries_rejected: IntCounter,
}

impl HttpStats {
    /// Creates the series and registers them with the manager's registry.
    pub fn new(metrics: &Metrics) -> HttpStats {
        let stats = HttpStats {
            open: IntGauge::new(
                "phpfpm_manager_http_connections",
                "HTTP connections open now.",
            )
            .expect("static gauge options are valid"),
            limit: IntGauge::new(
                "phpfpm_manager_http_connections_limit",
                "Most HTTP connections kept open at once (server.limits.max_connections, lowered to fit the open-files limit).",
            )
            .expect("static gauge options are valid"),
            fd_limit: IntGauge::new(
                "phpfpm_manager_open_files_limit",
                "The manager's soft RLIMIT_NOFILE after raising it to the hard limit.",
            )
            .expect("static gauge options are valid"),
            closed: IntCounterVec::new(
                Opts::new(
                    "phpfpm_manager_http_connections_closed_total",
                    "HTTP connections closed by the manager, by reason (header_timeout, idle_timeout, evicted, over_limit, tls_handshake, client_limit, head_too_large).",
                ),
                &["reason"],
            )
            .expect("static counter options are valid"),
            accept_errors: IntCounter::new(
                "phpfpm_manager_http_accept_errors_total",
                "Failed accepts on the HTTP listener (for example out of file descriptors).",
            )
            .expect("static counter options are valid"),
            queries_rejected: IntCounter::new(
                "phpfpm_manager_history_queries_rejected_total",
                "History queries answered 503 busy because too many were running and waiting.",
            )
            .expect("static counter options are valid"),
        };
        for reason in [
            CloseReason::HeaderTimeout,
            CloseReason::IdleTimeout,
            CloseReason::Evicted,
            CloseReason::OverLimit,
            CloseReason::TlsHandshake,
            CloseReason::ClientLimit,
            CloseReason::HeadTooLarge,
        ] {
            stats.closed.with_label_values(&[reason.as_str()]);
        }
        for c in [
            Box::new(stats.open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stats.limit.clone()),
            Box::new(stats.fd_limit.clone()),
            Box::new(stats.closed.clone()),
            Box::new(stats.accept_errors.clone()),
            Box::new(stats.queries_rejected.clone()),
        ] {
            if let Err(e) = metrics.register(c) {
                tracing::warn!("Cannot register an HTTP server metric: {e}.");
            }
        }
        stats
    }

    fn closed(&self, reason: CloseReason) {
        self.closed.with_label_values(&[reason.as_str()]).inc();
    }
}

const WAITING: u8 = 0;
const READING_HEAD: u8 = 1;
const HANDLING: u8 = 2;

/// What the accept loop, the connection's task and its I/O share about one
/// connection. Times are milliseconds since the server started.
#[derive(Debug)]
struct Conn {
    id: u64,
    epoch: Instant,
    last_io_ms: AtomicU64,
    head_started_ms: AtomicU64,
    phase: AtomicU8,
    /// Cancelled to evict the connection.
    close: CancellationToken,
    /// The client it counts against (`client_of` its peer).
    client: Option<IpAddr>,
    /// Requests answered, for the head guard.
    answered: Arc<Answered>,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            READING_HEAD => Phase::ReadingHead {
                since: Duration::from_millis(self.head_started_ms.load(Ordering::SeqCst)),
            },
            HANDLING => Phase::Handling,
            _ => Phase::Waiting,
        }
    }

    fn last_io(&self) -> Duration {
        Duration::from_millis(self.last_io_ms.load(Ordering::SeqCst))
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::SeqCst);
        if self.phase.load(Ordering::SeqCst) == WAITING {
            self.head_started_ms.store(now, Ordering::SeqCst);
            let _ = self.phase.compare_exchange(
                WAITING,
                READING_HEAD,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::SeqCst);
    }
}

/// Marks a connection as handling a request for as long as it lives.
struct Handling(Arc<Conn>);

impl Handling {
    fn begin(conn: &Arc<Conn>) -> Handling {
        conn.phase.store(HANDLING, Ordering::SeqCst);
        Handling(conn.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.answered.one_more();
        self.0.on_write();
        self.0.phase.store(WAITING, Ordering::SeqCst);
    }
}

/// A TCP stream that records when bytes move (under TLS: the encrypted
/// bytes, so a handshake trickling in counts as a head being read).
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.on_write();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.on_write();
        }
        res
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

/// The open connections.
struct Table {
    open: Mutex<Open>,
    next_id: AtomicU64,
    epoch: Instant,
    cap: usize,
    per_client_cap: usize,
}

#[derive(Default)]
struct Open {
    conns: HashMap<u64, Arc<Conn>>,
    per_client: HashMap<IpAddr, usize>,
}

enum Admission {
    Admitted(Arc<Conn>),
    Refused,
}

/// The client a peer address counts as: IPv4 (IPv4-mapped IPv6 too) by its
/// address, IPv6 by its /64, which one host is usually given whole.
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Table {
    fn admit(&self, stats: &HttpStats, client: Option<IpAddr>) -> Admission {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        // The client's own cap first: a client at it makes room among its
        // own connections, never among other clients'.
        if let Some(c) = client {
            if open.per_client.get(&c).copied().unwrap_or(0) >= self.per_client_cap {
                let own = open
                    .conns
                    .values()
                    .filter(|x| x.client == Some(c))
                    .map(|x| (x.id, x.phase(), x.last_io()));
                match pick_victim(own) {
                    Some(id) => {
                        open.evict(id);
                        stats.closed(CloseReason::Evicted);
                    }
                    None => {
                        stats.closed(CloseReason::ClientLimit);
                        return Admission::Refused;
                    }
                }
            }
        }
        if open.conns.len() >= self.cap {
            let victim = pick_victim(open.conns.values().map(|c| (c.id, c.phase(), c.last_io())));
            match victim {
                Some(id) => {
                    open.evict(id);
                    stats.closed(CloseReason::Evicted);
                }
                None => {
                    stats.closed(CloseReason::OverLimit);
                    return Admission::Refused;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            last_io_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            head_started_ms: AtomicU64::new(0),
            phase: AtomicU8::new(WAITING),
            close: CancellationToken::new(),
            client,
            answered: Arc::new(Answered::default()),
        });
        open.conns.insert(id, conn.clone());
        if let Some(c) = client {
            *open.per_client.entry(c).or_insert(0) += 1;
        }
        stats.open.set(open.conns.len() as i64);
        Admission::Admitted(conn)
    }

    fn remove(&self, id: u64, stats: &HttpStats) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.forget(id);
        stats.open.set(open.conns.len() as i64);
    }
}

impl Open {
    /// Closes connection `id` and stops counting it.
    fn evict(&mut self, id: u64) {
        if let Some(v) = self.forget(id) {
            v.close.cancel();
        }
    }

    fn forget(&mut self, id: u64) -> Option<Arc<Conn>> {
        let conn = self.conns.remove(&id)?;
        if let Some(c) = conn.client {
            if let Some(n) = self.per_client.get_mut(&c) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_client.remove(&c);
                }
            }
        }
        Some(conn)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stats: HttpStats,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let table = Arc::new(Table {
        open: Mutex::new(Open::default()),
        next_id: AtomicU64::new(0),
        epoch: Instant::now(),
        cap: limits.max_connections.max(1),
        per_client_cap: limits.max_connections_per_client.max(1),
    });
    stats.limit.set(table.cap as i64);
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut last_accept_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                stats.accept_errors.inc();
                let out_of_fds = matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
                );
                if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("Cannot accept an HTTP connection: {e}.");
                    last_accept_warning = Some(Instant::now());
                }
                if out_of_fds {
                    // The connection stays in the backlog; retrying at once
                    // would spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let conn = match table.admit(&stats, Some(client_of(peer.ip()))) {
            Admission::Admitted(c) => c,
            // Dropping the stream closes it.
            Admission::Refused => continue,
        };
        let _ = stream.set_nodelay(true);
        let (app, stats, table, stop) = (app.clone(), stats.clone(), table.clone(), stop.clone());
        // The configuration in use when the connection came (a reload
        // applies to later connections).
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tracker.spawn(async move {
            let id = conn.id;
            serve_connection(stream, conn, app, limits, &stats, stop, acceptor).await;
            table.remove(id, &stats);
        });
    }
    // Stop accepting at once: new connections are refused, not left queued.
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}

async fn serve_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    app: Router,
    limits: ConnLimits,
    stats: &HttpStats,
    stop: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // The peer's address, for the auth layer (loopback, per-client limits).
    let peer = stream.peer_addr().ok();
    let tracked = Tracked {
        inner: stream,
        conn: conn.clone(),
    };
    let Some(acceptor) = tls else {
        return drive(tracked, None, peer, conn, app, limits, stats, stop).await;
    };
    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked));
    let stream = tokio::select! {
        res = handshake => match res {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}.");
                stats.closed(CloseReason::TlsHandshake);
                return;
            }
            Err(_) => {
                stats.closed(CloseReason::TlsHandshake);
                return;
            }
        },
        () = conn.close.cancelled() => return,
        () = stop.cancelled() => return,
    };
    let cert = PeerCert {
        common_name: super::tls::peer_common_name(stream.get_ref().1.peer_certificates()),
    };
    // The handshake's bytes started a "head"; the request's own head starts
    // with its first byte.
    conn.phase.store(WAITING, Ordering::SeqCst);
    drive(stream, Some(cert), peer, conn, app, limits, stats, stop).await;
}

/// Serves HTTP/1.1 on `io` until the client leaves, a timeout ends the
/// connection, it is evicted, or the server stops. A request head too large
/// is answered here in the error shape (`head.rs`).
#[allow(clippy::too_many_arguments)]
async fn drive<I>(
    io: I,
    cert: Option<PeerCert>,
    peer: Option<std::net::SocketAddr>,
    conn: Arc<Conn>,
    app: Router,
    limits: ConnLimits,
    stats: &HttpStats,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(HeadGuard::new(io, conn.answered.clone()));
    let svc_conn = conn.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let handling = Handling::begin(&svc_conn);
        let app = app.clone();
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        if let Some(cert) = &cert {
            req.extensions_mut().insert(cert.clone());
        }
        // Boxed: hyper hands the stream back (`into_parts`) only for a
        // service whose future is Unpin.
        Box::pin(async move {
            let resp = app.oneshot(req).await;
            drop(handling);
            resp
        })
    });
    let mut http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(head::HYPER_MAX_BUF)
        .max_headers(head::HYPER_MAX_HEADERS)
        .serve_connection(io, svc);
    let check = tokio::time::sleep(limits.idle_timeout.min(limits.header_read_timeout));
    tokio::pin!(check);
    let mut stopping = false;
    enum Next {
        Done(Result<(), hyper::Error>),
        Check,
        Evicted,
        Stop,
    }
    let ended = loop {
        let next = tokio::select! {
            res = std::future::poll_fn(|cx| http.poll_without_shutdown(cx)) => Next::Done(res),
            () = &mut check => Next::Check,
            () = conn.close.cancelled() => Next::Evicted,
            () = stop.cancelled(), if !stopping => Next::Stop,
        };
        match next {
            Next::Done(res) => break res,
            Next::Check => {
                let now = conn.epoch.elapsed();
                match verdict(conn.phase(), conn.last_io(), now, &limits) {
                    Verdict::KeepUntil(t) => check.as_mut().reset(conn.epoch + t),
                    Verdict::Close(reason) => {
                        stats.closed(reason);
                        return;
                    }
                }
            }
            Next::Evicted => return,
            Next::Stop => {
                stopping = true;
                std::pin::Pin::new(&mut http).graceful_shutdown();
            }
        }
    };
    let mut io = http.into_parts().io.into_inner();
    // hyper saw the client leave mid-head only because the guard ended the
    // stream there: answer in the error shape. A head refused while hyper
    // still finished an exchange (bytes of a body it was discarding) gets
    // nothing more.
    let refused = match (&ended, io.refused()) {
        (Err(e), Some(why)) if e.is_incomplete_message() => Some(why),
        _ => None,
    };
    if let Err(e) = &ended {
        if refused.is_none() {
            tracing::debug!("HTTP connection ended with an error: {e}.");
        }
    }
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(why) = refused else {
        // Bounded like any write to a client that may not read.
        let _ = tokio::time::timeout(FINISH_TIMEOUT, io.shutdown()).await;
        return;
    };
    stats.closed(CloseReason::HeadTooLarge);
    let mut io = io.into_inner();
    let answer = async {
        io.write_all(&head::refusal(why)).await?;
        io.shutdown().await
    };
    if !matches!(
        tokio::time::timeout(FINISH_TIMEOUT, answer).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // The client is likely still sending the rest of its head: closing with
    // those bytes unread would reset the connection and could destroy the
    // answer before the client reads it. Read and drop them for a while
    // (bounded in time and bytes, in a small buffer).
    let linger = async {
        let mut sink = [0u8; 8 * 1024];
        let mut total = 0usize;
        while total < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(FINISH_TIMEOUT, linger).await;
}

/// The longest time spent writing the last bytes to a client, and
/// lingering after a refused head.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a refused head read and dropped before closing.
const LINGER_BYTES: usize = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_connections: 100,
        max_connections_per_client: 10,
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_slow_header_is_cut_at_the_header_timeout_even_while_bytes_trickle() {
        let head = Phase::ReadingHead { since: s(100) };
        assert_eq!(
            verdict(head, s(105), s(105), &LIMITS),
            Verdict::KeepUntil(s(110))
        );
        // A byte a second keeps the connection from being idle, not from the header timeout.
        assert_eq!(
            verdict(head, s(109), s(110), &LIMITS),
            Verdict::Close(CloseReason::HeaderTimeout)
        );
    }

    #[test]
    fn quiet_connections_close_at_the_idle_timeout_unless_being_answered() {
        assert_eq!(
            verdict(Phase::Waiting, s(0), s(10), &LIMITS),
            Verdict::KeepUntil(s(30))
        );
        assert_eq!(
            verdict(Phase::Waiting, s(0), s(30), &LIMITS),
            Verdict::Close(CloseReason::IdleTimeout)
        );
        // A header that stalls is idle before its header timeout when that is shorter.
        let short_idle = ConnLimits {
            idle_timeout: s(2),
            ..LIMITS
        };
        assert_eq!(
            verdict(Phase::ReadingHead { since: s(0) }, s(0), s(2), &short_idle),
            Verdict::Close(CloseReason::IdleTimeout)
        );
        // A running handler is bounded by the request timeout, not here.
        assert_eq!(
            verdict(Phase::Handling, s(0), s(1000), &LIMITS),
            Verdict::KeepUntil(s(1030))
        );
    }

    #[test]
    fn the_quietest_connection_not_being_answered_makes_room() {
        let conns = [
            (1, Phase::Handling, s(1)),
            (2, Phase::Waiting, s(5)),
            (3, Phase::ReadingHead { since: s(2) }, s(3)),
            (4, Phase::Waiting, s(9)),
        ];
        assert_eq!(pick_victim(conns), Some(3));
        assert_eq!(pick_victim([(1, Phase::Handling, s(1))]), None);
        assert_eq!(pick_victim([]), None);
    }

    #[test]
    fn the_cap_leaves_a_reserve_of_descriptors() {
        // The case that failed: ulimit -n 1024, one pool, four readers.
        let reserve = fd_reserve(1, 4);
        assert_eq!(reserve, 64 + 24 + 12);
        let b = FdBudget::new(1024, reserve, 512);
        assert_eq!(b.max_connections, (1024 - 100) / 2);
        // Even with every connection open, the reserve and as much again are left.
        assert!(b.fd_limit - b.max_connections as u64 >= 2 * reserve);
        // A high limit leaves the configured cap alone.
        assert_eq!(FdBudget::new(65_536, reserve, 512).max_connections, 512);
        // A limit below the reserve still lets one connection in.
        assert_eq!(FdBudget::new(50, reserve, 512).max_connections, 1);
    }
}
