//! Test support: a real php-fpm master started from a temp config (killed by
//! pid on drop) and a minimal hand-written FastCGI client.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The php-fpm binary, found as the manager finds it (`PATH`, then the
/// usual sbin directories); a missing php-fpm fails the test.
pub fn php_fpm() -> PathBuf {
    phpfpm_manager::supervisor::binary::find(None, std::env::var("PATH").ok().as_deref())
        .unwrap_or_else(|e| panic!("{e}; this test needs real php-fpm"))
}

/// A php-fpm master with one static pool, run as `nobody`.
pub struct Fpm {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub status_socket: PathBuf,
    child: Child,
}

impl Fpm {
    /// Starts php-fpm with `workers` static workers and waits (bounded) until
    /// every worker exists and the sockets are bound.
    pub fn start(tag: &str, workers: u32) -> Fpm {
        let bin = php_fpm();
        let dir = std::env::temp_dir().join(format!("fpm-kernel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The pool user must be able to traverse the dir and read the scripts.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("pool.sock");
        let status_socket = dir.join("status.sock");
        std::fs::write(
            dir.join("sleep.php"),
            "<?php usleep((int)($_GET['us'] ?? 3000000)); echo 'slept';\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("burn.php"),
            concat!(
                "<?php function cpu() { $r = getrusage(); return $r['ru_utime.tv_sec'] + $r['ru_utime.tv_usec'] / 1e6",
                " + $r['ru_stime.tv_sec'] + $r['ru_stime.tv_usec'] / 1e6; }\n",
                "$start = cpu(); $end = microtime(true) + 0.3; $x = 0;\n",
                "while (microtime(true) < $end) { $x++; }\n",
                "printf('cpu=%.6f', cpu() - $start);\n",
            ),
        )
        .unwrap();
        let conf = format!(
            "[global]\nerror_log = {d}/error.log\npid = {d}/fpm.pid\ndaemonize = no\n\
             [pool]\nuser = nobody\ngroup = nogroup\nlisten = {sock}\nlisten.mode = 0660\n\
             listen.backlog = 64\npm = static\npm.max_children = {workers}\n\
             pm.status_path = /status\npm.status_listen = {status}\n",
            d = dir.display(),
            sock = socket.display(),
            status = status_socket.display(),
        );
        std::fs::write(dir.join("fpm.conf"), conf).unwrap();
        let child = Command::new(&bin)
            .args(["-R", "-F", "-y"])
            .arg(dir.join("fpm.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let fpm = Fpm {
            dir,
            socket,
            status_socket,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = fpm.socket.exists()
                && fpm.status_socket.exists()
                && fpm_kernel::workers::list_children(Path::new("/proc"), fpm.pid()).len()
                    >= workers as usize;
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "php-fpm did not start: {}",
                std::fs::read_to_string(fpm.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fpm
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn script(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        // Fast stop of the master we started, by pid; it stops its workers.
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("fastcgi record body fits in 64 KiB");
    let mut out = vec![1, kind, 0, 1];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(body);
    out
}

fn name_value(out: &mut Vec<u8>, name: &str, value: &str) {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// The bytes of one complete FastCGI GET request (responder role).
pub fn fcgi_request_bytes(script: &Path, query: &str) -> Vec<u8> {
    let mut params = Vec::new();
    let script_name = script.to_str().unwrap();
    for (k, v) in [
        ("SCRIPT_FILENAME", script_name),
        ("SCRIPT_NAME", script_name),
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", query),
        ("REQUEST_URI", script_name),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
    ] {
        name_value(&mut params, k, v);
    }
    let mut out = record(1, &[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend(record(4, &params));
    out.extend(record(4, &[]));
    out.extend(record(5, &[]));
    out
}

/// Reads FastCGI records until END_REQUEST; returns STDOUT.
pub fn fcgi_read_response(stream: &mut UnixStream) -> Vec<u8> {
    let mut stdout = Vec::new();
    for _ in 0..100_000 {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).unwrap();
        let len = u16::from_be_bytes([header[4], header[5]]) as usize + header[6] as usize;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).unwrap();
        let content = &body[..u16::from_be_bytes([header[4], header[5]]) as usize];
        match header[1] {
            6 => stdout.extend_from_slice(content),
            3 => return stdout,
            _ => {}
        }
    }
    panic!("no END_REQUEST record");
}

/// Sends one request and waits (bounded by `timeout`) for its response.
pub fn fcgi_get(socket: &Path, script: &Path, query: &str, timeout: Duration) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream
        .write_all(&fcgi_request_bytes(script, query))
        .unwrap();
    String::from_utf8_lossy(&fcgi_read_response(&mut stream)).into_owned()
}

/// Opens a connection and sends a request without waiting for the answer.
pub fn fcgi_send(socket: &Path, script: &Path, query: &str) -> UnixStream {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(&fcgi_request_bytes(script, query))
        .unwrap();
    stream
}
