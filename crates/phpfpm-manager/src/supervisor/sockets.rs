//! Listening sockets owned by the manager and lent to php-fpm masters.
//!
//! This is what makes a pool change drop nothing (facts 4, 5 and 5a): the
//! manager binds the pool's socket itself, at a private path, hard-links that
//! inode to the public path clients use, and starts each master with the fd
//! inherited and `FPM_SOCKETS=<private path>=<fd>`. Old and new masters then
//! accept from one queue during a hand-over; an exiting master unlinks only
//! the private path, so the public path never disappears; and while no master
//! runs (a crash), connections wait in the kernel's backlog instead of being
//! refused.
//!
//! A manager that restarts recovers the sockets from the running master with
//! `pidfd_getfd` (fact 5b), so it can keep doing hand-overs after adoption:
//! a unix socket is found by its file, a TCP one by its address in the
//! kernel's `/proc/net/tcp` and `tcp6` LISTEN rows; either way the master's
//! fd is the one linking to that socket's sockfs inode.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// php-fpm's own default `listen.backlog` on Linux.
pub const BACKLOG: i32 = 511;

/// One listening socket and the address php-fpm knows it by.
#[derive(Debug)]
pub struct PoolSocket {
    /// What the pool's `listen` (or `pm.status_listen`) says, and the key in
    /// `FPM_SOCKETS`: the private path for unix sockets.
    pub fpm_address: String,
    pub fd: OwnedFd,
    /// The socket's file names (public and private path) as bound, so that
    /// a clean stop removes exactly those files and nothing that replaced
    /// them since.
    pub files: Vec<SocketFile>,
}

/// A socket file the manager created: its path and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn of(path: &Path) -> Option<SocketFile> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).ok()?;
        m.file_type().is_socket().then(|| SocketFile {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

impl PoolSocket {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Removes the socket's files if they are still the ones bound (a clean
    /// stop; never on detach, where the next manager needs them).
    pub fn remove_files(&self) {
        for f in &self.files {
            if SocketFile::of(&f.path).as_ref() == Some(f) {
                let _ = std::fs::remove_file(&f.path);
            }
        }
    }
}

/// Ownership and mode applied to a socket's public path.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// `private` is where the socket is bound; `public` gets a hard link to it.
/// A stale socket file at either path (nobody listening) is replaced; a path
/// where something answers is an error, never taken over.
pub fn bind_unix(private: &Path, public: &Path, access: &Access) -> std::io::Result<PoolSocket> {
    for p in [private, public] {
        remove_stale_socket(p)?;
    }
    let listener = UnixListener::bind(private).map_err(|e| annotate(private, e))?;
    // std listens with its own backlog; listen() again sets php-fpm's.
    rustix::net::listen(&listener, BACKLOG).map_err(|e| annotate(private, e.into()))?;
    std::fs::hard_link(private, public).map_err(|e| annotate(public, e))?;
    apply_access(public, access)?;
    Ok(PoolSocket {
        fpm_address: private.to_string_lossy().into_owned(),
        fd: OwnedFd::from(listener),
        files: [private, public]
            .into_iter()
            .filter_map(SocketFile::of)
            .collect(),
    })
}

/// Sets a socket file's owner, group and mode. The owner is set first, so
/// the file never has the new mode with the old group.
pub fn apply_access(public: &Path, access: &Access) -> std::io::Result<()> {
    if access.uid.is_some() || access.gid.is_some() {
        std::os::unix::fs::chown(public, access.uid, access.gid)
            .map_err(|e| annotate(public, e))?;
    }
    std::fs::set_permissions(public, std::fs::Permissions::from_mode(access.mode))
        .map_err(|e| annotate(public, e))
}

/// Removes a socket file nobody listens on. Anything else at the path
/// (a regular file, a live socket) is left alone and reported.
fn remove_stale_socket(p: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(p, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(annotate(
            p,
            std::io::Error::other("exists and is not a socket; refusing to replace it"),
        ));
    }
    if std::os::unix::net::UnixStream::connect(p).is_ok() {
        return Err(annotate(
            p,
            std::io::Error::other("another process is listening on it"),
        ));
    }
    std::fs::remove_file(p).map_err(|e| annotate(p, e))
}

fn annotate(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Binds a TCP listener at `addr` (an `ip:port` literal, which is also the
/// key php-fpm looks up in `FPM_SOCKETS`).
pub fn bind_tcp(addr: &str) -> std::io::Result<PoolSocket> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    rustix::net::listen(&listener, BACKLOG)
        .map_err(|e| std::io::Error::new(std::io::Error::from(e).kind(), format!("{addr}: {e}")))?;
    Ok(PoolSocket {
        fpm_address: addr.to_owned(),
        fd: OwnedFd::from(listener),
        files: Vec::new(),
    })
}

/// The private path a unix socket is bound at, next to its public path (a
/// hard link needs the same file system).
pub fn private_path(public: &Path) -> PathBuf {
    let name = public
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    public.with_file_name(format!(".{name}.pfm"))
}

/// The `FPM_SOCKETS` value for a set of sockets.
pub fn fpm_sockets_env(sockets: &[&PoolSocket]) -> String {
    sockets
        .iter()
        .map(|s| format!("{}={}", s.fpm_address, s.raw()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Finds, in a running master, the fd of the listening unix socket whose
/// file is `public`, and duplicates it into this process (fact 5b).
pub fn recover_from_master(
    pid: u32,
    public: &Path,
    fpm_address: &str,
) -> Result<PoolSocket, String> {
    let target_inode = socket_inode_of_path(public)?;
    let target_fd = fd_of_socket(pid, &[u64::from(target_inode)])
        .ok_or_else(|| format!("master {pid} holds no fd for {}", public.display()))?;
    let fd = steal_fd(pid, target_fd)?;
    Ok(PoolSocket {
        fpm_address: fpm_address.to_owned(),
        fd,
        files: SocketFile::of(public).into_iter().collect(),
    })
}

/// Finds, in a running master, the fd of the listening TCP socket bound at
/// `addr` (its sockfs inode from the kernel's `/proc/net/tcp` and `tcp6`
/// LISTEN rows), and duplicates it into this process, like a unix one.
pub fn recover_tcp_from_master(pid: u32, addr: &str) -> Result<PoolSocket, String> {
    let wanted: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| format!("{addr} is not an ip:port address: {e}"))?;
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        // tcp6 is missing on a host without IPv6.
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(tcp_listen_inodes(&text, wanted));
        }
    }
    if inodes.is_empty() {
        return Err(format!("nothing listens on {addr}"));
    }
    let target_fd = fd_of_socket(pid, &inodes)
        .ok_or_else(|| format!("master {pid} holds no fd listening on {addr}"))?;
    let fd = steal_fd(pid, target_fd)?;
    Ok(PoolSocket {
        fpm_address: addr.to_owned(),
        fd,
        files: Vec::new(),
    })
}

/// The sockfs inodes of the LISTEN rows of `/proc/net/tcp` or `tcp6` text
/// bound exactly at `wanted` (an IPv4-mapped IPv6 address is the IPv4 one).
/// Written here rather than taken from fpm_kernel's parser because that one
/// keeps queue lengths and drops the inode column, which is what matters
/// here. Malformed rows (the header among them) are skipped.
pub fn tcp_listen_inodes(text: &str, wanted: std::net::SocketAddr) -> Vec<u64> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    // The kernel prints each 32-bit word of the address as the hex of its
    // in-memory (native-endian) value, and the port as plain hex.
    let parse = |field: &str| -> Option<std::net::SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let word = |i: usize| -> Option<[u8; 4]> {
            Some(
                u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                    .ok()?
                    .to_ne_bytes(),
            )
        };
        let ip = match ip.len() {
            8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
            32 => {
                let mut b = [0u8; 16];
                for i in 0..4 {
                    b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return None,
        };
        Some(std::net::SocketAddr::new(ip, port))
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            // sl local rem st queues tr retrnsmt uid timeout inode
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" {
                return None;
            }
            let local = parse(local)?;
            (local.port() == wanted.port() && canonical(local.ip()) == canonical(wanted.ip()))
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// The fd number in process `pid` that refers to one of the sockets with
/// these sockfs inodes.
fn fd_of_socket(pid: u32, inodes: &[u64]) -> Option<i32> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for e in entries.flatten() {
        if let Ok(link) = std::fs::read_link(e.path()) {
            if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                return e.file_name().to_string_lossy().parse::<i32>().ok();
            }
        }
    }
    None
}

/// Duplicates fd `target_fd` of process `pid` into this process, close-on-exec.
fn steal_fd(pid: u32, target_fd: i32) -> Result<OwnedFd, String> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| "invalid pid".to_owned())?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("pidfd_open({}): {e}", pid.as_raw_nonzero()))?;
    let fd = rustix::process::pidfd_getfd(
        pidfd.as_fd(),
        target_fd,
        rustix::process::PidfdGetfdFlags::empty(),
    )
    .map_err(|e| format!("pidfd_getfd: {e}"))?;
    // The duplicate must not leak into other children.
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Ok(fd)
}

/// The sockfs inode of the listening socket whose file is `path`, from the
/// kernel's socket table (the file's own inode is a different number).
fn socket_inode_of_path(path: &Path) -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (major, minor) = (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev()));
    let mut reader = fpm_kernel::queue::QueueReader::new(std::time::Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    let listeners = reader.unix_listeners().map_err(|e| e.to_string())?;
    listeners
        .iter()
        .find(|l| {
            l.vfs.is_some_and(|(dev, ino)| {
                fpm_kernel::queue::kernel_dev_is(dev, major, minor)
                    && u64::from(ino) == (meta.ino() & 0xffff_ffff)
            })
        })
        .map(|l| l.socket_inode)
        .ok_or_else(|| format!("no listening socket found for {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_path_survives_unlink_of_private() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join(".p.sock");
        let public = dir.path().join("p.sock");
        let s = bind_unix(
            &private,
            &public,
            &Access {
                mode: 0o660,
                ..Access::default()
            },
        )
        .unwrap();
        std::fs::remove_file(&private).unwrap();
        // A client reaches the socket through the public link.
        let _c = std::os::unix::net::UnixStream::connect(&public).unwrap();
        let mode = std::fs::metadata(&public).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert_eq!(
            fpm_sockets_env(&[&s]),
            format!("{}={}", private.display(), s.raw())
        );
    }

    #[test]
    fn tcp_listeners_are_found_by_exact_address() {
        // 127.0.0.1:9000 LISTEN (inode 111), 127.0.0.1:9000 ESTABLISHED (112),
        // 0.0.0.0:9000 LISTEN (113), 127.0.0.1:9001 LISTEN (114), in the
        // kernel's native-endian words (this test runs on the same kernel).
        let word = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let lo = word([127, 0, 0, 1]);
        let any = word([0, 0, 0, 0]);
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {lo}:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
             1: {lo}:2328 {lo}:D431 01 00000000:00000000 00:00000000 00000000     0        0 112 1 0 100 0 0 10 0\n\
             2: {any}:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 113 1 0 100 0 0 10 0\n\
             3: {lo}:2329 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 114 1 0 100 0 0 10 0\n"
        );
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(tcp_listen_inodes(&text, addr("127.0.0.1:9000")), vec![111]);
        assert_eq!(tcp_listen_inodes(&text, addr("0.0.0.0:9000")), vec![113]);
        assert_eq!(tcp_listen_inodes(&text, addr("127.0.0.1:9001")), vec![114]);
        assert!(tcp_listen_inodes(&text, addr("127.0.0.2:9000")).is_empty());
    }

    #[test]
    fn a_tcp_listener_is_recovered_from_a_process_holding_it() {
        // This process plays the master: the fd found and duplicated is the
        // listener itself (accepting through the copy reaches it).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let s = recover_tcp_from_master(std::process::id(), &addr).unwrap();
        assert_eq!(s.fpm_address, addr);
        let copy = std::net::TcpListener::from(s.fd);
        assert_eq!(copy.local_addr().unwrap(), l.local_addr().unwrap());
        let _c = std::net::TcpStream::connect(&addr).unwrap();
        copy.accept().unwrap();
        let err = recover_tcp_from_master(std::process::id(), "127.0.0.1:1").unwrap_err();
        assert!(err.contains("nothing listens"), "{err}");
    }

    #[test]
    fn refuses_to_replace_a_live_socket_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.sock");
        let _l = UnixListener::bind(&live).unwrap();
        let err = bind_unix(
            &dir.path().join(".x"),
            &live,
            &Access {
                mode: 0o660,
                ..Access::default()
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("another process is listening"),
            "{err}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = bind_unix(
            &dir.path().join(".y"),
            &file,
            &Access {
                mode: 0o660,
                ..Access::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
    }

    #[test]
    fn remove_files_removes_only_what_was_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join(".a.pfm"), dir.path().join("a.sock"));
        let access = Access {
            mode: 0o660,
            ..Access::default()
        };
        let s = bind_unix(&private, &public, &access).unwrap();
        assert_eq!(s.files.len(), 2);
        s.remove_files();
        assert!(!public.exists() && !private.exists());
        // A socket someone else put at the path since is left alone.
        let s = bind_unix(&private, &public, &access).unwrap();
        std::fs::remove_file(&public).unwrap();
        let other = UnixListener::bind(&public).unwrap();
        s.remove_files();
        assert!(public.exists());
        drop(other);
    }

    #[test]
    fn a_stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("s.sock");
        drop(UnixListener::bind(&public).unwrap());
        assert!(public.exists());
        let s = bind_unix(
            &dir.path().join(".s"),
            &public,
            &Access {
                mode: 0o660,
                ..Access::default()
            },
        );
        assert!(s.is_ok(), "{s:?}");
    }
}
