//! The accept queue of a pool's listening socket, read from the kernel.
//!
//! php-fpm reports no queue at all for unix sockets (fact 9), and its status
//! page is served by a worker, so it cannot answer while every worker is busy
//! (fact 7). The kernel knows both figures for a listening socket: netlink
//! `sock_diag` gives, for unix sockets, `UNIX_DIAG_RQLEN` = (connections
//! waiting, backlog limit) and, for TCP, `idiag_rqueue` / `idiag_wqueue` =
//! (waiting, limit). This module asks the kernel directly (what `ss -xl` /
//! `ss -tl` do) with one dump request per read.
//!
//! How a unix socket is matched: by the file-system identity of its path
//! (device and inode from `stat(path)`, compared with `UNIX_DIAG_VFS`), not by
//! `UNIX_DIAG_NAME` and not by the socket's own inode:
//! - `UNIX_DIAG_NAME` is the path given to `bind()`. The hand-over design
//!   (fact 5a) binds at a private path and hard-links it to the public path
//!   clients use, so the public path never appears as a name; a relative bind
//!   path, or an unlinked-and-rebound path (two sockets with one name) break
//!   name matching too.
//! - `stat(path).st_ino` is the inode of the socket *file*, while the diag
//!   header's `udiag_ino` is the socket's sockfs inode: different numbers.
//!   `UNIX_DIAG_VFS` reports the file's (device, inode), the same identity a
//!   hard link shares, so it is the one to compare.
//!
//! The kernel's `udiag_vfs_ino` is 32 bits; on file systems with 64-bit inode
//! numbers two files could share the low bits, so when several sockets match
//! the name is used as a tie-breaker and an ambiguous match is an error rather
//! than a guess. Abstract unix sockets have no file; they are matched by name.
//!
//! `/proc/net/unix` has no queue figures, so unix sockets have no fallback.
//! For TCP, when `inet_diag` is missing, `/proc/net/tcp{,6}` gives the
//! current queue (rx_queue of the LISTEN row) but not the limit.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, AF_UNIX, IPPROTO_TCP, TCP_LISTEN},
    inet::{self, ExtensionFlags, InetRequest, SocketId},
    unix::{self, nlas::Nla as UnixNla, nlas::UnixDiagName, ShowFlags, UnixRequest},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};

/// How long one sock_diag exchange may take before [`QueueError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A listening socket to inspect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listener {
    /// A unix socket reachable by this path (any hard link to it works).
    UnixPath(PathBuf),
    /// An abstract unix socket (name without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// A unix socket by its sockfs inode (the number in a
    /// `/proc/<pid>/fd/N -> socket:[INODE]` link), for a socket whose path is
    /// gone but whose fd is still held by a master (fact 5b).
    UnixSocketInode(u32),
    /// A TCP listener. An unspecified address (`0.0.0.0`, `::`) or a specific
    /// one; a specific address also matches a wildcard listener on its port.
    Tcp(SocketAddr),
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::UnixPath(p) => write!(f, "unix:{}", p.display()),
            Listener::UnixAbstract(name) => {
                write!(f, "unix:@{}", String::from_utf8_lossy(name))
            }
            Listener::UnixSocketInode(ino) => write!(f, "unix:socket:[{ino}]"),
            Listener::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl Listener {
    /// Interprets a php-fpm `listen` value: a path, `addr:port`,
    /// `[v6]:port` or a bare port (all addresses).
    pub fn from_fpm_listen(listen: &str) -> Result<Listener, QueueError> {
        let listen = listen.trim();
        if listen.starts_with('/') {
            return Ok(Listener::UnixPath(PathBuf::from(listen)));
        }
        if let Ok(port) = listen.parse::<u16>() {
            return Ok(Listener::Tcp(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            )));
        }
        if let Ok(addr) = listen.parse::<SocketAddr>() {
            return Ok(Listener::Tcp(addr));
        }
        // php-fpm also accepts `localhost:9000`-style host names; they are
        // resolved by php-fpm at bind time, which we cannot reproduce safely.
        Err(QueueError::UnsupportedListen {
            listen: listen.to_owned(),
        })
    }
}

/// Where the figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSource {
    /// netlink `sock_diag` (unix or inet).
    SockDiag,
    /// `/proc/net/tcp` or `/proc/net/tcp6` (no limit available).
    ProcNetTcp,
}

/// The accept queue of one listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptQueue {
    /// Connections completed by the kernel and waiting for `accept()`.
    pub current: u32,
    /// The backlog limit (`listen()` backlog capped by `somaxconn`); `None`
    /// only from the `/proc/net/tcp` fallback, which does not show it.
    pub limit: Option<u32>,
    /// Where the figures came from.
    pub source: QueueSource,
    /// Number of kernel sockets summed (more than 1 with `SO_REUSEPORT`).
    pub sockets: u32,
}

/// Why the accept queue is not available.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The path could not be stat-ed.
    #[error("cannot stat unix socket path {path}: {source}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The path exists but is not a socket.
    #[error("{path} is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The kernel lists no listening socket for this listener (in this
    /// network namespace).
    #[error("no listening socket found for {listener}")]
    NotFound {
        /// The listener.
        listener: String,
    },
    /// Several sockets match and none can be told apart by name.
    #[error("{count} listening sockets match {listener}; cannot tell which one")]
    Ambiguous {
        /// The listener.
        listener: String,
        /// How many matched.
        count: usize,
    },
    /// The kernel has no `sock_diag` handler for unix sockets (module
    /// `unix_diag` absent) or refuses the request.
    #[error("kernel sock_diag for unix sockets is not available (errno {errno}); is the unix_diag module loaded?")]
    UnixDiagUnavailable {
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The kernel has no `inet_diag` for TCP and `/proc/net/tcp*` failed too.
    #[error("kernel inet_diag for tcp is not available (errno {errno})")]
    InetDiagUnavailable {
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The kernel has no `sock_diag` handler for another address family.
    #[error("kernel sock_diag for address family {family} is not available (errno {errno})")]
    FamilyUnavailable {
        /// The address family.
        family: u8,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The netlink socket could not be created or used.
    #[error("netlink sock_diag socket: {0}")]
    Netlink(#[source] io::Error),
    /// No complete answer in time.
    #[error("no complete sock_diag answer within {0:?}")]
    Timeout(Duration),
    /// The kernel's answer could not be decoded.
    #[error("cannot decode sock_diag answer: {0}")]
    Decode(String),
    /// A `/proc/net/tcp*` file could not be read.
    #[error("cannot read {path}: {source}")]
    ProcNet {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The php-fpm `listen` value is not a path or numeric address.
    #[error("unsupported listen address {listen:?} (expected a path, addr:port or port)")]
    UnsupportedListen {
        /// The value.
        listen: String,
    },
}

// === pure matching =========================================================

/// A unix socket's bound name as reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixName {
    /// A path (as given to `bind()`, possibly relative).
    Path(PathBuf),
    /// An abstract name (without the leading NUL).
    Abstract(Vec<u8>),
}

/// One listening unix socket from a sock_diag dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListenEntry {
    /// The socket's sockfs inode (what `/proc/<pid>/fd` links show).
    pub socket_inode: u32,
    /// `UNIX_DIAG_VFS`: the kernel-encoded device and the low 32 bits of the
    /// inode of the socket file; `None` for abstract or unnamed sockets.
    pub vfs: Option<(u32, u32)>,
    /// `UNIX_DIAG_NAME`.
    pub name: Option<UnixName>,
    /// `UNIX_DIAG_RQLEN` for a listener: (waiting, limit).
    pub rqlen: Option<(u32, u32)>,
}

/// What the caller is looking for, after `stat()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixTarget {
    /// A socket file: its device (major, minor) and inode, plus the path.
    File {
        /// Device major number of the file system holding the socket file.
        major: u32,
        /// Device minor number.
        minor: u32,
        /// Inode of the socket file.
        ino: u64,
        /// The path asked for (a tie-breaker only).
        path: PathBuf,
    },
    /// An abstract name.
    Abstract(Vec<u8>),
    /// A sockfs inode.
    SocketInode(u32),
}

/// Whether a device number as the kernel encodes it internally (`s_dev`:
/// 12-bit major above a 20-bit minor, what `UNIX_DIAG_VFS` carries) is the
/// device `major:minor`.
pub fn kernel_dev_is(kernel_dev: u32, major: u32, minor: u32) -> bool {
    kernel_dev >> 20 == major && kernel_dev & 0xf_ffff == minor
}

/// Picks the listening socket for `target` among `entries` (pure).
pub fn select_unix(
    entries: &[UnixListenEntry],
    target: &UnixTarget,
    listener: &Listener,
) -> Result<AcceptQueue, QueueError> {
    let matches: Vec<&UnixListenEntry> = match target {
        UnixTarget::File {
            major, minor, ino, ..
        } => entries
            .iter()
            .filter(|e| {
                e.vfs.is_some_and(|(dev, vfs_ino)| {
                    kernel_dev_is(dev, *major, *minor) && u64::from(vfs_ino) == (ino & 0xffff_ffff)
                })
            })
            .collect(),
        UnixTarget::Abstract(name) => entries
            .iter()
            .filter(|e| matches!(&e.name, Some(UnixName::Abstract(n)) if n == name))
            .collect(),
        UnixTarget::SocketInode(ino) => entries.iter().filter(|e| e.socket_inode == *ino).collect(),
    };
    let chosen = match (matches.as_slice(), target) {
        ([], _) => {
            return Err(QueueError::NotFound {
                listener: listener.to_string(),
            })
        }
        ([one], _) => *one,
        (many, UnixTarget::File { path, .. }) => {
            let by_name: Vec<&&UnixListenEntry> = many
                .iter()
                .filter(|e| matches!(&e.name, Some(UnixName::Path(p)) if p == path))
                .collect();
            match by_name.as_slice() {
                [one] => **one,
                _ => {
                    return Err(QueueError::Ambiguous {
                        listener: listener.to_string(),
                        count: many.len(),
                    })
                }
            }
        }
        (many, UnixTarget::Abstract(_) | UnixTarget::SocketInode(_)) => {
            return Err(QueueError::Ambiguous {
                listener: listener.to_string(),
                count: many.len(),
            })
        }
    };
    let (current, limit) = chosen.rqlen.ok_or_else(|| {
        QueueError::Decode(format!(
            "socket inode {} has no UNIX_DIAG_RQLEN attribute",
            chosen.socket_inode
        ))
    })?;
    Ok(AcceptQueue {
        current,
        limit: Some(limit),
        source: QueueSource::SockDiag,
        sockets: 1,
    })
}

/// One listening TCP socket (from sock_diag or `/proc/net/tcp*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpListenEntry {
    /// Local address and port.
    pub local: SocketAddr,
    /// Connections waiting.
    pub current: u32,
    /// Backlog limit, when known.
    pub limit: Option<u32>,
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    canonical(a) == canonical(b)
}

/// Picks the TCP listener(s) for `wanted` among `entries` (pure).
///
/// Exact address matches win; otherwise a wildcard listener on the same port
/// (`0.0.0.0` or a dual-stack `::`) is what accepts connections to `wanted`.
/// Several exact matches (`SO_REUSEPORT`) are summed: each has its own queue.
pub fn select_tcp(
    entries: &[TcpListenEntry],
    wanted: SocketAddr,
    source: QueueSource,
) -> Option<AcceptQueue> {
    let on_port = entries.iter().filter(|e| e.local.port() == wanted.port());
    let exact: Vec<&TcpListenEntry> = on_port
        .clone()
        .filter(|e| same_ip(e.local.ip(), wanted.ip()))
        .collect();
    let chosen = if exact.is_empty() {
        on_port
            .filter(|e| e.local.ip().is_unspecified())
            .collect::<Vec<_>>()
    } else {
        exact
    };
    if chosen.is_empty() {
        return None;
    }
    let current = chosen.iter().fold(0u32, |a, e| a.saturating_add(e.current));
    let limit = chosen
        .iter()
        .try_fold(0u32, |a, e| e.limit.map(|l| a.saturating_add(l)));
    Some(AcceptQueue {
        current,
        limit,
        source,
        sockets: u32::try_from(chosen.len()).unwrap_or(u32::MAX),
    })
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` and returns the LISTEN rows.
///
/// Addresses are printed as the in-memory 32-bit words of the address in
/// hex, so each 8-digit group is read as a native-endian `u32`; this is
/// correct for files produced by the kernel of the machine parsing them.
/// Malformed rows are skipped (the header line is one of them).
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpListenEntry> {
    const LISTEN: &str = "0A";
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let _slot = fields.next()?;
            let local = fields.next()?;
            let _remote = fields.next()?;
            let state = fields.next()?;
            let queues = fields.next()?;
            if state != LISTEN {
                return None;
            }
            let (_tx, rx) = queues.split_once(':')?;
            let current = u32::from_str_radix(rx, 16).ok()?;
            Some(TcpListenEntry {
                local: parse_hex_addr(local)?,
                current,
                limit: None,
            })
        })
        .collect()
}

fn parse_hex_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let chunk = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(chunk, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Maps a negative errno from a sock_diag answer to an error (pure).
///
/// `ENOENT` is what the kernel answers when no handler is registered for the
/// family (`unix_diag`/`inet_diag` not built or not loadable).
pub fn diag_errno_error(family: u8, errno: i32) -> QueueError {
    match family {
        AF_INET | AF_INET6 => QueueError::InetDiagUnavailable { errno },
        AF_UNIX => QueueError::UnixDiagUnavailable { errno },
        family => QueueError::FamilyUnavailable { family, errno },
    }
}

// === thin netlink I/O ======================================================

/// Reads the accept queue of `listener` with [`DEFAULT_TIMEOUT`], on a
/// netlink socket opened for this call only.
///
/// One call costs one netlink dump of the listening sockets of one address
/// family (about 25 µs on the 2-core test machine: see `docs/bench/kernel.md`),
/// so it can be called directly from an async task or via `spawn_blocking`.
/// A collector that reads often should keep a [`QueueReader`] instead.
pub fn accept_queue(listener: &Listener) -> Result<AcceptQueue, QueueError> {
    QueueReader::new(DEFAULT_TIMEOUT)?.accept_queue(listener)
}

/// A netlink `sock_diag` socket and receive buffer kept across reads, so a
/// read costs only the dump itself. Not shared between threads (`&mut self`);
/// a collector keeps one per thread or behind a mutex.
pub struct QueueReader {
    socket: Option<Socket>,
    buf: Vec<u8>,
    sequence: u32,
    timeout: Duration,
}

impl fmt::Debug for QueueReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueReader")
            .field("open", &self.socket.is_some())
            .field("sequence", &self.sequence)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl QueueReader {
    /// Opens the netlink socket. `timeout` bounds each exchange.
    pub fn new(timeout: Duration) -> Result<QueueReader, QueueError> {
        Ok(QueueReader {
            socket: Some(open_socket()?),
            // The kernel fills dump datagrams up to about 32 KiB; 64 KiB
            // never truncates one.
            buf: vec![0u8; 64 * 1024],
            sequence: 0,
            timeout,
        })
    }

    /// Reads the accept queue of `listener`.
    pub fn accept_queue(&mut self, listener: &Listener) -> Result<AcceptQueue, QueueError> {
        match listener {
            Listener::UnixPath(path) => {
                let meta = std::fs::metadata(path).map_err(|source| QueueError::Stat {
                    path: path.clone(),
                    source,
                })?;
                if !meta.file_type().is_socket() {
                    return Err(QueueError::NotASocket { path: path.clone() });
                }
                let target = UnixTarget::File {
                    major: rustix::fs::major(meta.dev()),
                    minor: rustix::fs::minor(meta.dev()),
                    ino: meta.ino(),
                    path: path.clone(),
                };
                select_unix(&self.unix_listeners()?, &target, listener)
            }
            Listener::UnixAbstract(name) => select_unix(
                &self.unix_listeners()?,
                &UnixTarget::Abstract(name.clone()),
                listener,
            ),
            Listener::UnixSocketInode(ino) => select_unix(
                &self.unix_listeners()?,
                &UnixTarget::SocketInode(*ino),
                listener,
            ),
            Listener::Tcp(addr) => self.tcp_accept_queue(*addr, listener),
        }
    }

    fn tcp_accept_queue(
        &mut self,
        addr: SocketAddr,
        listener: &Listener,
    ) -> Result<AcceptQueue, QueueError> {
        // An IPv4 address may be served by a dual-stack `::` listener, so the
        // v6 table is consulted when the v4 one has no match.
        let families: &[u8] = if addr.is_ipv4() {
            &[AF_INET, AF_INET6]
        } else {
            &[AF_INET6]
        };
        for &family in families {
            let found = match self.tcp_listeners(family) {
                Ok(entries) => select_tcp(&entries, addr, QueueSource::SockDiag),
                Err(QueueError::InetDiagUnavailable { errno }) => {
                    let path = if family == AF_INET {
                        "/proc/net/tcp"
                    } else {
                        "/proc/net/tcp6"
                    };
                    match std::fs::read_to_string(path) {
                        Ok(text) => {
                            select_tcp(&parse_proc_net_tcp(&text), addr, QueueSource::ProcNetTcp)
                        }
                        Err(source) if source.kind() == io::ErrorKind::NotFound => None,
                        Err(_) => return Err(QueueError::InetDiagUnavailable { errno }),
                    }
                }
                Err(other) => return Err(other),
            };
            if let Some(queue) = found {
                return Ok(queue);
            }
        }
        Err(QueueError::NotFound {
            listener: listener.to_string(),
        })
    }

    /// Dumps every listening unix socket with its VFS identity, name and queue.
    pub fn unix_listeners(&mut self) -> Result<Vec<UnixListenEntry>, QueueError> {
        let request = SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: unix::StateFlags::LISTEN,
            inode: 0,
            show_flags: ShowFlags::NAME | ShowFlags::VFS | ShowFlags::RQLEN,
            cookie: [0; 8],
        });
        let mut entries = Vec::new();
        self.dump(request, AF_UNIX, |msg| {
            if let SockDiagMessage::UnixResponse(resp) = msg {
                if resp.header.state == TCP_LISTEN {
                    entries.push(unix_entry(&resp));
                }
            }
        })?;
        Ok(entries)
    }

    /// Dumps the listening TCP sockets of one family (`AF_INET` or `AF_INET6`).
    pub fn tcp_listeners(&mut self, family: u8) -> Result<Vec<TcpListenEntry>, QueueError> {
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: inet::StateFlags::LISTEN,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        });
        let mut entries = Vec::new();
        self.dump(request, family, |msg| {
            if let SockDiagMessage::InetResponse(resp) = msg {
                if resp.header.state == TCP_LISTEN {
                    let id = &resp.header.socket_id;
                    entries.push(TcpListenEntry {
                        local: SocketAddr::new(id.source_address, id.source_port),
                        current: resp.header.recv_queue,
                        limit: Some(resp.header.send_queue),
                    });
                }
            }
        })?;
        Ok(entries)
    }

    /// Sends one dump request and feeds every answer to `on_message` until
    /// the kernel's `NLMSG_DONE`. Bounded by the timeout overall (each `recv`
    /// has the remaining time as its socket timeout) and by a cap on
    /// datagrams. After any failure the socket is closed and reopened on the
    /// next call, so a half-read dump can never leak into the next answer;
    /// answers carrying another sequence number are ignored for the same
    /// reason.
    fn dump(
        &mut self,
        request: SockDiagMessage,
        family: u8,
        on_message: impl FnMut(SockDiagMessage),
    ) -> Result<(), QueueError> {
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => open_socket()?,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let result = exchange(
            &socket,
            &mut self.buf,
            self.sequence,
            request,
            family,
            self.timeout,
            on_message,
        );
        // Keep the socket only after a clean, complete exchange (or a
        // kernel-reported error, which also ends the dump).
        if matches!(
            result,
            Ok(())
                | Err(QueueError::UnixDiagUnavailable { .. })
                | Err(QueueError::InetDiagUnavailable { .. })
                | Err(QueueError::FamilyUnavailable { .. })
        ) {
            self.socket = Some(socket);
        }
        result
    }
}

fn unix_entry(resp: &unix::UnixResponse) -> UnixListenEntry {
    let mut entry = UnixListenEntry {
        socket_inode: resp.header.inode,
        vfs: None,
        name: None,
        rqlen: None,
    };
    for nla in &resp.nlas {
        match nla {
            UnixNla::Vfs(vfs) => {
                // The crate keeps the fields private; its wire form is the
                // kernel's `struct unix_diag_vfs { u32 ino; u32 dev; }`.
                let mut raw = [0u8; 8];
                vfs.emit(&mut raw);
                let ino = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
                let dev = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
                entry.vfs = Some((dev, ino));
            }
            UnixNla::Name(UnixDiagName::Pathname(p)) => {
                entry.name = Some(UnixName::Path(PathBuf::from(OsString::from(p))));
            }
            UnixNla::Name(UnixDiagName::Abstract(a)) => {
                entry.name = Some(UnixName::Abstract(a.clone()));
            }
            UnixNla::ReceiveQueueLength(waiting, limit) => entry.rqlen = Some((*waiting, *limit)),
            _ => {}
        }
    }
    entry
}

fn open_socket() -> Result<Socket, QueueError> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(QueueError::Netlink)?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(QueueError::Netlink)?;
    Ok(socket)
}

fn exchange(
    socket: &Socket,
    buf: &mut [u8],
    sequence: u32,
    request: SockDiagMessage,
    family: u8,
    timeout: Duration,
    mut on_message: impl FnMut(SockDiagMessage),
) -> Result<(), QueueError> {
    const MAX_DATAGRAMS: usize = 100_000;
    let deadline = Instant::now() + timeout;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0).map_err(QueueError::Netlink)?;

    for _ in 0..MAX_DATAGRAMS {
        let remaining = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(QueueError::Timeout(timeout))?;
        rustix::net::sockopt::set_socket_timeout(
            socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(remaining),
        )
        .map_err(|e| QueueError::Netlink(e.into()))?;
        let size = match socket.recv(&mut &mut buf[..], 0) {
            Ok(size) => size,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(QueueError::Timeout(timeout))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(QueueError::Netlink(e)),
        };
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..size])
                .map_err(|e| QueueError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(QueueError::Decode("zero-length netlink message".into()));
            }
            // Netlink messages are 4-byte aligned within a datagram.
            offset += len.div_ceil(4) * 4;
            if msg.header.sequence_number != sequence {
                continue;
            }
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(err) => {
                    return match err.code {
                        Some(code) => Err(diag_errno_error(family, -code.get())),
                        // An ACK without error ends the exchange.
                        None => Ok(()),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => on_message(inner),
                _ => {}
            }
        }
    }
    Err(QueueError::Decode(format!(
        "more than {MAX_DATAGRAMS} datagrams without NLMSG_DONE"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_target() -> UnixTarget {
        UnixTarget::File {
            major: 0,
            minor: 45,
            ino: 0x1_0000_0123,
            path: PathBuf::from("/run/php/www.sock"),
        }
    }

    fn entry(vfs: Option<(u32, u32)>, name: Option<&str>, rq: (u32, u32)) -> UnixListenEntry {
        UnixListenEntry {
            socket_inode: 99,
            vfs,
            name: name.map(|n| UnixName::Path(PathBuf::from(n))),
            rqlen: Some(rq),
        }
    }

    #[test]
    fn kernel_dev_encoding() {
        assert!(kernel_dev_is((8 << 20) | 1, 8, 1));
        assert!(!kernel_dev_is((8 << 20) | 1, 0, 8 * 256 + 1));
        assert!(kernel_dev_is(45, 0, 45));
    }

    #[test]
    fn unix_matches_file_identity_not_name() {
        let l = Listener::UnixPath(PathBuf::from("/run/php/www.sock"));
        // The socket was bound at a private path and hard-linked to the public
        // one: its name differs, its file identity (low 32 bits) matches.
        let entries = vec![
            entry(Some((45, 0x123)), Some("/run/php/.private-1"), (8, 16)),
            entry(Some((45, 0x124)), Some("/run/php/www.sock"), (1, 128)),
            entry(None, None, (0, 5)),
        ];
        let q = select_unix(&entries, &file_target(), &l).unwrap();
        assert_eq!((q.current, q.limit), (8, Some(16)));
        let none = select_unix(&entries[1..], &file_target(), &l);
        assert!(matches!(none, Err(QueueError::NotFound { .. })));
    }

    #[test]
    fn unix_ambiguous_inode_uses_name_or_fails() {
        let l = Listener::UnixPath(PathBuf::from("/run/php/www.sock"));
        let two = vec![
            entry(Some((45, 0x123)), Some("/other.sock"), (3, 16)),
            entry(Some((45, 0x123)), Some("/run/php/www.sock"), (4, 16)),
        ];
        assert_eq!(select_unix(&two, &file_target(), &l).unwrap().current, 4);
        let unnamed = vec![
            entry(Some((45, 0x123)), Some("/a"), (3, 16)),
            entry(Some((45, 0x123)), Some("/b"), (4, 16)),
        ];
        assert!(matches!(
            select_unix(&unnamed, &file_target(), &l),
            Err(QueueError::Ambiguous { count: 2, .. })
        ));
    }

    #[test]
    fn unix_abstract_by_name() {
        let l = Listener::UnixAbstract(b"fpm".to_vec());
        let entries = vec![UnixListenEntry {
            socket_inode: 7,
            vfs: None,
            name: Some(UnixName::Abstract(b"fpm".to_vec())),
            rqlen: Some((2, 10)),
        }];
        let q = select_unix(&entries, &UnixTarget::Abstract(b"fpm".to_vec()), &l).unwrap();
        assert_eq!((q.current, q.limit), (2, Some(10)));
        let missing_rqlen = vec![UnixListenEntry {
            rqlen: None,
            ..entries[0].clone()
        }];
        assert!(matches!(
            select_unix(&missing_rqlen, &UnixTarget::Abstract(b"fpm".to_vec()), &l),
            Err(QueueError::Decode(_))
        ));
    }

    #[test]
    fn tcp_exact_then_wildcard_then_dual_stack() {
        let v4: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let e = |addr: &str, cur, lim| TcpListenEntry {
            local: addr.parse().unwrap(),
            current: cur,
            limit: Some(lim),
        };
        let entries = [
            e("0.0.0.0:9000", 1, 100),
            e("127.0.0.1:9000", 5, 511),
            e("127.0.0.1:9001", 9, 9),
        ];
        let q = select_tcp(&entries, v4, QueueSource::SockDiag).unwrap();
        assert_eq!((q.current, q.limit, q.sockets), (5, Some(511), 1));
        let q = select_tcp(&entries[..1], v4, QueueSource::SockDiag).unwrap();
        assert_eq!(q.current, 1);
        let v6 = [e("[::]:9000", 2, 64)];
        assert_eq!(
            select_tcp(&v6, v4, QueueSource::SockDiag).unwrap().current,
            2
        );
        let mapped = [e("[::ffff:127.0.0.1]:9000", 3, 64)];
        assert_eq!(
            select_tcp(&mapped, v4, QueueSource::SockDiag)
                .unwrap()
                .current,
            3
        );
        let reuseport = [e("127.0.0.1:9000", 2, 10), e("127.0.0.1:9000", 3, 10)];
        let q = select_tcp(&reuseport, v4, QueueSource::SockDiag).unwrap();
        assert_eq!((q.current, q.limit, q.sockets), (5, Some(20), 2));
        assert_eq!(
            select_tcp(
                &entries,
                "10.0.0.1:80".parse().unwrap(),
                QueueSource::SockDiag
            ),
            None
        );
    }

    #[test]
    fn proc_net_tcp_listen_rows() {
        // Built from the in-memory representation so the test holds on any
        // endianness, like the kernel's own output does.
        let hex_v4 = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {}:1F90 00000000:0000 0A 00000000:00000008 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
             1: {}:1F90 0100007F:D2F0 01 00000000:00000004 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
             garbage\n",
            hex_v4([127, 0, 0, 1]),
            hex_v4([127, 0, 0, 1]),
        );
        let rows = parse_proc_net_tcp(&text);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].local,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(rows[0].current, 8);
        assert_eq!(rows[0].limit, None);
        let mut v6 = String::new();
        for chunk in Ipv6Addr::LOCALHOST.octets().chunks(4) {
            v6.push_str(&format!(
                "{:08X}",
                u32::from_ne_bytes(chunk.try_into().unwrap())
            ));
        }
        let text6 = format!("0: {v6}:0050 {v6}:0000 0A 00000000:00000003 x\n");
        let rows = parse_proc_net_tcp(&text6);
        assert_eq!(rows[0].local, "[::1]:80".parse::<SocketAddr>().unwrap());
        assert_eq!(rows[0].current, 3);
    }

    #[test]
    fn errno_mapping_names_the_family() {
        let e = diag_errno_error(AF_UNIX, 2);
        assert!(matches!(e, QueueError::UnixDiagUnavailable { errno: 2 }));
        assert!(e.to_string().contains("unix_diag"));
        assert!(matches!(
            diag_errno_error(AF_INET6, 2),
            QueueError::InetDiagUnavailable { errno: 2 }
        ));
    }

    #[test]
    fn kernel_without_a_diag_handler_is_a_clear_error() {
        // No kernel has a sock_diag handler for AppleTalk: the kernel answers
        // exactly as it does for unix sockets when `unix_diag` is missing
        // (ENOENT after failing to load the module), through the same path.
        const AF_APPLETALK: u8 = 5;
        let mut reader = QueueReader::new(DEFAULT_TIMEOUT).unwrap();
        let request = SockDiagMessage::InetRequest(InetRequest {
            family: AF_APPLETALK,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: inet::StateFlags::LISTEN,
            socket_id: SocketId::new_v4(),
        });
        let err = reader.dump(request, AF_APPLETALK, |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                QueueError::FamilyUnavailable {
                    family: 5,
                    errno: 2
                }
            ),
            "{err}"
        );
        // The reader stays usable after a kernel-reported error.
        assert!(reader.tcp_listeners(AF_INET).is_ok());
    }

    #[test]
    fn fpm_listen_values() {
        assert_eq!(
            Listener::from_fpm_listen("/run/php/a.sock").unwrap(),
            Listener::UnixPath("/run/php/a.sock".into())
        );
        assert_eq!(
            Listener::from_fpm_listen("9000").unwrap(),
            Listener::Tcp("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            Listener::from_fpm_listen("[::1]:9000").unwrap(),
            Listener::Tcp("[::1]:9000".parse().unwrap())
        );
        assert!(Listener::from_fpm_listen("localhost:9000").is_err());
    }
}
