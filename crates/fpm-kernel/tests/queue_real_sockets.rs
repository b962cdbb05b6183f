//! Accept-queue reads against real kernel sockets: unix (by path, by hard
//! link, after the bound path is unlinked, abstract) and TCP on loopback
//! (IPv4 and IPv6). Connections are made and never accepted, so the kernel
//! holds them in the listener's queue.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use fpm_kernel::queue::{accept_queue, Listener, QueueError, QueueReader, QueueSource};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fpm-kernel-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unix_listener(addr: &SocketAddrUnix, backlog: i32) -> UnixListener {
    let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, addr).unwrap();
    rustix::net::listen(&fd, backlog).unwrap();
    UnixListener::from(fd)
}

fn tcp_listener(addr: SocketAddr, backlog: i32) -> TcpListener {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(family, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &addr).unwrap();
    rustix::net::listen(&fd, backlog).unwrap();
    TcpListener::from(fd)
}

fn connect_unix(path: &Path, n: usize) -> Vec<UnixStream> {
    (0..n).map(|_| UnixStream::connect(path).unwrap()).collect()
}

#[test]
fn unix_listener_queue_by_path_and_hard_link() {
    let dir = temp_dir("unix");
    let private = dir.join("private.sock");
    let public = dir.join("public.sock");
    let listener = unix_listener(&SocketAddrUnix::new(&private).unwrap(), 16);
    std::fs::hard_link(&private, &public).unwrap();

    let empty = accept_queue(&Listener::UnixPath(private.clone())).unwrap();
    assert_eq!((empty.current, empty.limit), (0, Some(16)));
    assert_eq!(empty.source, QueueSource::SockDiag);

    let _clients = connect_unix(&public, 8);
    for path in [&private, &public] {
        let q = accept_queue(&Listener::UnixPath(path.clone())).unwrap();
        assert_eq!(q.current, 8, "via {}", path.display());
        assert_eq!(q.limit, Some(16));
    }
    // The master unlinks its own (private) path on exit; the public hard link
    // still identifies the same listening socket (fact 5a).
    std::fs::remove_file(&private).unwrap();
    let q = accept_queue(&Listener::UnixPath(public.clone())).unwrap();
    assert_eq!((q.current, q.limit), (8, Some(16)));
    // With every path gone, the socket is still found by its sockfs inode,
    // as read from an fd link of the process holding it.
    std::fs::remove_file(&public).unwrap();
    let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
    let inode: u32 = link
        .to_str()
        .unwrap()
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap()
        .parse()
        .unwrap();
    let q = accept_queue(&Listener::UnixSocketInode(inode)).unwrap();
    assert_eq!((q.current, q.limit), (8, Some(16)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unix_path_errors_are_specific() {
    let dir = temp_dir("unix-errors");
    let missing = dir.join("missing.sock");
    assert!(matches!(
        accept_queue(&Listener::UnixPath(missing)),
        Err(QueueError::Stat { .. })
    ));
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        accept_queue(&Listener::UnixPath(file)),
        Err(QueueError::NotASocket { .. })
    ));
    // A socket file whose listener is gone: the path exists, no socket matches.
    let stale = dir.join("stale.sock");
    drop(unix_listener(&SocketAddrUnix::new(&stale).unwrap(), 4));
    let err = accept_queue(&Listener::UnixPath(stale)).unwrap_err();
    assert!(matches!(err, QueueError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("stale.sock"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn abstract_unix_listener_queue() {
    let name = format!("fpm-kernel-test-{}", std::process::id());
    let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
    let _listener = unix_listener(&addr, 16);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
            rustix::net::connect(&fd, &addr).unwrap();
            fd
        })
        .collect();
    let q = accept_queue(&Listener::UnixAbstract(name.into_bytes())).unwrap();
    assert_eq!((q.current, q.limit), (3, Some(16)));
    drop(clients);
}

fn check_tcp(bind: SocketAddr) {
    let listener = tcp_listener(bind, 16);
    let addr = listener.local_addr().unwrap();
    let _clients: Vec<_> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The handshake is complete when connect() returns, but the server side
    // moves into the accept queue on the final ACK's arrival; allow a short,
    // bounded settle.
    let mut q = accept_queue(&Listener::Tcp(addr)).unwrap();
    for _ in 0..50 {
        if q.current == 8 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        q = accept_queue(&Listener::Tcp(addr)).unwrap();
    }
    assert_eq!(q.current, 8, "{addr}");
    assert_eq!(q.limit, Some(16), "{addr}");
    assert_eq!(q.source, QueueSource::SockDiag);
}

#[test]
fn tcp_ipv4_listener_queue() {
    check_tcp("127.0.0.1:0".parse().unwrap());
}

#[test]
fn tcp_ipv6_listener_queue() {
    check_tcp("[::1]:0".parse().unwrap());
}

#[test]
fn tcp_wildcard_listener_found_by_specific_address() {
    let listener = tcp_listener("0.0.0.0:0".parse().unwrap(), 32);
    let port = listener.local_addr().unwrap().port();
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _c = TcpStream::connect(target).unwrap();
    let q = accept_queue(&Listener::Tcp(target)).unwrap();
    assert_eq!(q.limit, Some(32));
    assert!(q.current <= 1);
    drop(listener);
    assert!(matches!(
        accept_queue(&Listener::Tcp(target)),
        Err(QueueError::NotFound { .. })
    ));
}

#[test]
fn kept_reader_answers_every_call_with_its_own_dump() {
    let dir = temp_dir("reader");
    let path = dir.join("r.sock");
    let _unix = unix_listener(&SocketAddrUnix::new(&path).unwrap(), 16);
    let tcp = tcp_listener("127.0.0.1:0".parse().unwrap(), 8);
    let tcp_addr = tcp.local_addr().unwrap();
    let mut reader = QueueReader::new(std::time::Duration::from_secs(1)).unwrap();
    let mut clients = Vec::new();
    // Alternate families and change the queue between reads: every answer
    // must reflect the state at its own call.
    for i in 0..10u32 {
        let q = reader
            .accept_queue(&Listener::UnixPath(path.clone()))
            .unwrap();
        assert_eq!((q.current, q.limit), (i, Some(16)));
        let t = reader.accept_queue(&Listener::Tcp(tcp_addr)).unwrap();
        assert_eq!(t.limit, Some(8));
        clients.push(UnixStream::connect(&path).unwrap());
    }
    assert!(matches!(
        reader.accept_queue(&Listener::UnixPath(dir.join("nope"))),
        Err(QueueError::Stat { .. })
    ));
    assert_eq!(
        reader
            .accept_queue(&Listener::UnixPath(path.clone()))
            .unwrap()
            .current,
        10
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn proc_net_tcp_fallback_agrees_with_inet_diag() {
    for (bind, table) in [
        ("127.0.0.1:0", "/proc/net/tcp"),
        ("[::1]:0", "/proc/net/tcp6"),
    ] {
        let listener = tcp_listener(bind.parse().unwrap(), 16);
        let addr = listener.local_addr().unwrap();
        let _clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut from_diag = accept_queue(&Listener::Tcp(addr)).unwrap();
        for _ in 0..50 {
            if from_diag.current == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            from_diag = accept_queue(&Listener::Tcp(addr)).unwrap();
        }
        let rows = fpm_kernel::queue::parse_proc_net_tcp(&std::fs::read_to_string(table).unwrap());
        let from_proc =
            fpm_kernel::queue::select_tcp(&rows, addr, QueueSource::ProcNetTcp).unwrap();
        assert_eq!(from_proc.current, from_diag.current, "{addr}");
        assert_eq!(from_proc.current, 3);
        assert_eq!(
            from_proc.limit, None,
            "/proc/net/tcp does not show the limit"
        );
    }
}
