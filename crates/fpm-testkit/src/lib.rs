//! Helpers shared by the integration tests and the benchmarks: [`TestFpm`]
//! runs a real php-fpm master in its own temporary directory, [`TestDaemon`]
//! runs the built `phpfpm-manager` binary, and a few small clients talk to
//! them over loopback. [`fake_fcgi::FakeFcgi`] stands in for php-fpm when a
//! test needs replies php-fpm would never send.
//!
//! php-fpm missing is a test failure, never a skip: `make test` installs it.
//! A test's directory is removed when the test passes and kept (its path
//! printed) when it fails, for inspection.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
// Helpers for tests: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

pub mod fake_fcgi;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fpm_core::fpm_conf::{self, GlobalSpec, PmMode, PoolSpec};
use fpm_core::PoolName;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use phpfpm_manager::config::{Endpoint, Pool, Scaling};
use phpfpm_manager::supervisor::binary;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, unique per test and process,
/// world-readable so that php-fpm's pool user can read scripts in it. It
/// also remembers the sessions of the managers started in it: each manager
/// leads its own session, which every php-fpm it starts stays in (masters get
/// their own process group, not their own session), so "what this test left
/// running" is exactly the live processes of those sessions.
pub struct TestDir {
    pub path: PathBuf,
    sessions: Mutex<Vec<i32>>,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("pfm-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TestDir {
            path,
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// Live processes (not zombies) of the sessions of every manager started
    /// in this directory, as `pid command-line`.
    pub fn leftovers(&self) -> Vec<String> {
        let sessions = self.sessions.lock().unwrap().clone();
        processes_in_sessions(&sessions)
            .into_iter()
            .map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!("{pid} {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
            })
            .collect()
    }

    /// SIGKILLs every live process of this directory's manager sessions.
    pub fn kill_leftovers(&self) {
        let sessions = self.sessions.lock().unwrap().clone();
        for pid in processes_in_sessions(&sessions) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // Never leave a php-fpm of this test running, even on failure.
        self.kill_leftovers();
        if std::thread::panicking() {
            eprintln!("test failed; its files are kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The php-fpm binary, or a panic telling how to install it.
pub fn php_fpm() -> PathBuf {
    binary::find(None, std::env::var("PATH").ok().as_deref()).unwrap_or_else(|e| {
        panic!("{e}\nthe integration tests need real php-fpm; `make test` installs it")
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Options of a test pool.
#[derive(Clone)]
pub struct FpmOpts {
    pub name: &'static str,
    pub pm: PmMode,
    pub max_children: u32,
    /// Give the pool a separate `pm.status_listen` socket.
    pub status_listen: bool,
    /// Extra PHP scripts: (file name, source).
    pub scripts: Vec<(&'static str, &'static str)>,
    /// php-fpm's process_control_timeout (0 is php-fpm's own default).
    pub control_timeout_secs: u64,
    /// listen.mode of the pool socket.
    pub listen_mode: &'static str,
}

impl Default for FpmOpts {
    fn default() -> Self {
        FpmOpts {
            name: "t",
            pm: PmMode::Static,
            max_children: 2,
            status_listen: true,
            scripts: vec![("sleep.php", SLEEP_PHP)],
            control_timeout_secs: 5,
            listen_mode: "0660",
        }
    }
}

/// `sleep.php?ms=N` sleeps N milliseconds (at most 5 s).
pub const SLEEP_PHP: &str =
    "<?php usleep(min(5000, (int)($_GET['ms'] ?? 0)) * 1000); echo \"ok\\n\";\n";

/// `hold.php?ms=N` keeps its worker busy until a file named `release` appears
/// next to it, or N milliseconds (at most 60 s) pass: tests hold workers for
/// as long as a check needs, with a generous deadline, and then let go.
pub const HOLD_PHP: &str =
    "<?php $end = microtime(true) + min(60000, (int)($_GET['ms'] ?? 0)) / 1000;\n\
    while (!file_exists(__DIR__ . '/release') && microtime(true) < $end) { usleep(10000); }\n\
    echo \"ok\\n\";\n";

/// A php-fpm master running one pool in a temporary directory.
pub struct TestFpm {
    pub dir: TestDir,
    pub opts: FpmOpts,
    pub socket: PathBuf,
    pub status_socket: PathBuf,
    child: Child,
    spec: PoolSpec,
}

impl TestFpm {
    pub fn start(opts: FpmOpts) -> TestFpm {
        TestFpm::start_tuned(opts, |_| {}, &[])
    }

    /// Like [`TestFpm::start`], with the rendered pool changed by `tune`
    /// (spare servers, `chdir`, ...) and extra php-fpm arguments (`-d
    /// opcache.file_cache=...`), for benchmarks that need php-fpm configured
    /// as an operator would.
    pub fn start_tuned(
        opts: FpmOpts,
        tune: impl FnOnce(&mut PoolSpec),
        args: &[String],
    ) -> TestFpm {
        let bin = php_fpm();
        let dir = TestDir::new(opts.name);
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, src) in &opts.scripts {
            std::fs::write(www.join(name), src).unwrap();
        }
        let socket = dir.join("pool.sock");
        let status_socket = if opts.status_listen {
            dir.join("status.sock")
        } else {
            socket.clone()
        };
        let spec = PoolSpec {
            name: PoolName::new(opts.name).unwrap(),
            listen: socket.display().to_string(),
            status_listen: opts
                .status_listen
                .then(|| status_socket.display().to_string()),
            status_path: "/status".into(),
            ping_path: "/ping".into(),
            ping_response: "pong".into(),
            user: is_root().then(|| "www-data".to_owned()),
            group: is_root().then(|| "www-data".to_owned()),
            listen_mode: opts.listen_mode.into(),
            pm: opts.pm,
            max_children: opts.max_children,
            start_servers: 1,
            min_spare_servers: 1,
            max_spare_servers: opts.max_children.max(1),
            max_requests: 0,
            process_idle_timeout_secs: 10,
            request_terminate_timeout_secs: 30,
            chdir: None,
            php_values: vec![],
            php_admin_values: vec![],
            // php-fpm gives the socket to the master's user (root) unless
            // told otherwise; www-data is the group nginx runs as here.
            extra: if is_root() {
                vec![("listen.group".to_owned(), "www-data".to_owned())]
            } else {
                vec![]
            },
            env: vec![],
        };
        let mut spec = spec;
        tune(&mut spec);
        let mut global = fpm_conf::render_global(&GlobalSpec {
            process_control_timeout_secs: opts.control_timeout_secs.max(1),
            log_level: "notice".into(),
        });
        if opts.control_timeout_secs == 0 {
            // The manager never writes 0; a baseline of plain php-fpm may.
            global = global.replace(
                "process_control_timeout = 1s",
                "process_control_timeout = 0",
            );
        }
        std::fs::write(dir.join("global.conf"), global).unwrap();
        std::fs::write(dir.join("pool.conf"), fpm_conf::render_pool(&spec).unwrap()).unwrap();
        let master = fpm_conf::render_master(
            &dir.join("global.conf").display().to_string(),
            &dir.join("pool.conf").display().to_string(),
            &dir.join("fpm.pid").display().to_string(),
        );
        std::fs::write(dir.join("master.conf"), master).unwrap();
        let log = std::fs::File::create(dir.join("fpm.log")).unwrap();
        let mut cmd = Command::new(&bin);
        if is_root() {
            cmd.arg("-R");
        }
        let child = cmd
            .args(args)
            .arg("-F")
            .arg("-y")
            .arg(dir.join("master.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let fpm = TestFpm {
            dir,
            opts,
            socket,
            status_socket,
            child,
            spec,
        };
        fpm.wait_ready();
        fpm
    }

    /// Ready means both sockets answer a ping: a socket that accepts
    /// connections may not have a worker behind it yet.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t = phpfpm_manager::fastcgi::Timeouts {
            connect: Duration::from_millis(200),
            total: Duration::from_millis(500),
        };
        while Instant::now() < deadline {
            let ok = rt.block_on(async {
                let mut ok = true;
                for sock in [&self.status_socket, &self.socket] {
                    let ep = Endpoint::Unix(sock.clone());
                    match phpfpm_manager::fastcgi::get(&ep, "/ping", "", t).await {
                        Ok(r) => ok &= String::from_utf8_lossy(&r.stdout).contains("pong"),
                        Err(_) => ok = false,
                    }
                }
                ok
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("fpm.log")).unwrap_or_default();
        panic!("php-fpm did not open its sockets within 30s; its log:\n{log}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrites the pool file with a new pm.max_children (php-fpm reads it
    /// on its next reload).
    pub fn set_max_children(&mut self, n: u32) {
        self.spec.max_children = n;
        self.spec.max_spare_servers = n;
        std::fs::write(
            self.dir.join("pool.conf"),
            fpm_conf::render_pool(&self.spec).unwrap(),
        )
        .unwrap();
    }

    /// Sends a signal to the master (SIGUSR2: php-fpm's reload).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn www(&self, script: &str) -> String {
        self.dir.join("www").join(script).display().to_string()
    }

    /// The manager's view of this pool, as config loading would build it.
    pub fn pool(&self) -> Pool {
        Pool {
            name: PoolName::new(self.opts.name).unwrap(),
            spec: None,
            endpoint: Endpoint::Unix(self.socket.clone()),
            status_endpoint: Endpoint::Unix(self.status_socket.clone()),
            status_path: "/status".into(),
            ping_path: "/ping".into(),
            ping_response: "pong".into(),
            max_workers: self.opts.max_children,
            scaling: Scaling {
                enabled: false,
                min_workers: 1,
                max_workers: self.opts.max_children,
                target_utilization: 0.7,
                weight: 1.0,
                priority: 0,
                pin: None,
                paused: false,
            },
            connect_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(2),
            max_reply_bytes: phpfpm_manager::fastcgi::DEFAULT_MAX_REPLY_BYTES,
            listen_group: None,
        }
    }
}

impl Drop for TestFpm {
    fn drop(&mut self) {
        stop_master(&mut self.child);
    }
}

/// Stops a php-fpm master started by a test in its own process group:
/// SIGQUIT, up to 3 s, then SIGKILL to the whole group (workers included).
pub fn stop_master(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    if let Ok(None) = child.try_wait() {
        let _ = kill(pid, Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
}

/// A free loopback port (bound then released; a race with other processes
/// is possible but harmless in tests).
pub fn free_port() -> u16 {
    // The kernel may hand the same ephemeral port to two calls in a row when
    // nothing holds the first one yet (a test that picks a pool's port, then
    // the manager's): never return a port this process returned before.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 100 tries")
}

/// A minimal HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "", None, Duration::from_secs(5))
}

/// A minimal HTTP/1.1 request over a new connection: `headers` are extra
/// header lines, each ending in `\r\n`; a `body` is sent as JSON. Returns the
/// status code (0 when there is none) and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
    read_timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(read_timeout))?;
    match body {
        None => write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
        )?,
        Some(body) => write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?,
    }
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match buf.split_once("\r\n\r\n") {
        Some((_, b)) => b.to_owned(),
        None => String::new(),
    };
    Ok((code, body))
}

/// The manager binary built for this test run, found next to the running
/// test executable (`target/<profile>/deps/..`).
/// Polls `f` every 50 ms until it holds (true) or `limit` passes (false).
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The first number of a field of `/proc/<pid>/status` (`VmRSS:` in KiB,
/// `Threads:`, ...); `None` when the process or the field is gone.
pub fn proc_status_field(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The time now as `date -u` prints it, for benchmark headers.
pub fn utc_now_text() -> String {
    Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn manager_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("phpfpm-manager");
    assert!(
        bin.is_file(),
        "{} not found; build it first (cargo test builds it for integration tests)",
        bin.display()
    );
    bin
}

/// The manager running as a child process in its own directory.
pub struct TestDaemon {
    pub dir: TestDir,
    pub addr: SocketAddr,
    pub child: Child,
}

impl TestDaemon {
    /// Starts `phpfpm-manager run` in a fresh directory with the API on a
    /// free loopback port. `config` (YAML) is written and passed if given.
    pub fn start(tag: &str, config: Option<&str>, env: &[(&str, &str)]) -> TestDaemon {
        TestDaemon::start_in(TestDir::new(tag), config, env)
    }

    /// Like [`TestDaemon::start`], in a directory the test prepared (scripts,
    /// paths it wrote into the config).
    pub fn start_in(dir: TestDir, config: Option<&str>, env: &[(&str, &str)]) -> TestDaemon {
        let port = free_port();
        TestDaemon::start_at(dir, port, config, env)
    }

    /// Starts a manager on a given port (a second manager taking over).
    pub fn start_at(
        dir: TestDir,
        port: u16,
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> TestDaemon {
        TestDaemon::start_with(dir, port, config, env, &manager_bin(), &[])
    }

    /// Starts the manager binary `bin` (a copy under another name, say) with
    /// `run` and `args` (for example `--replace`).
    pub fn start_with(
        dir: TestDir,
        port: u16,
        config: Option<&str>,
        env: &[(&str, &str)],
        bin: &Path,
        args: &[&str],
    ) -> TestDaemon {
        php_fpm();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(args)
            .current_dir(&dir.path)
            .env("PHPFPM_MANAGER_SERVER__BIND_ADDRESS", addr.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("manager.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("manager.log")).unwrap());
        if let Some(text) = config {
            std::fs::write(dir.join("config.yaml"), text).unwrap();
        }
        if dir.join("config.yaml").is_file() {
            cmd.arg("--config").arg(dir.join("config.yaml"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        new_session(&mut cmd);
        let child = cmd.spawn().unwrap();
        dir.sessions.lock().unwrap().push(child.id() as i32);
        TestDaemon { dir, addr, child }
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path)
    }

    /// Waits until `/metrics` says `pool` is up; panics with the manager's
    /// log after `limit`.
    pub fn wait_pool_up(&self, pool: &str, limit: Duration) {
        let line = format!("phpfpm_up{{pool=\"{pool}\"");
        self.wait_metrics(limit, |b| {
            b.lines().any(|l| l.starts_with(&line) && l.ends_with(" 1"))
        })
        .unwrap_or_else(|| panic!("pool {pool} not up within {limit:?}; log:\n{}", self.log()));
    }

    /// The value of the first `/metrics` line starting with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").ok()?;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Polls `/metrics` until `pred` holds or `limit` passes.
    pub fn wait_metrics(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok((200, body)) = self.get("/metrics") {
                if pred(&body) {
                    return Some(body);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the manager to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default()
    }

    /// `GET /api/v1/pools/{pool}` as JSON text (empty on error).
    pub fn pool_json(&self, pool: &str) -> String {
        self.get(&format!("/api/v1/pools/{pool}"))
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Splits into the directory and the manager's pid, which is then the
    /// test's to wait for ([`wait_child_exit`]), as when a manager is
    /// replaced by another.
    pub fn into_parts(self) -> (TestDir, u32) {
        let pid = self.child.id();
        (self.into_dir(), pid)
    }

    /// Leaves the manager process running but forgets it, so that `Drop`
    /// does not stop it (used when a test hands over to a new manager).
    pub fn into_dir(mut self) -> TestDir {
        let dir = std::mem::replace(&mut self.dir, TestDir::empty());
        // Reap it if it already exited; otherwise it is the test's job.
        let _ = self.child.try_wait();
        std::mem::forget(self);
        dir
    }
}

/// Waits for the exit of a child of this process, by pid (reaping it);
/// returns its exit code, or None if it did not exit within `limit` or was
/// killed by a signal.
pub fn wait_child_exit(pid: u32, limit: Duration) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(code),
            Ok(WaitStatus::Signaled(..)) => return None,
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return None,
        }
    }
    None
}

/// nginx in front of pools, on a loopback port, from a temporary config.
pub struct TestNginx {
    pub port: u16,
    child: Child,
}

impl TestNginx {
    /// `routes`: (URL prefix, unix socket of the pool, document root).
    pub fn start(dir: &TestDir, routes: &[(&str, &Path, &Path)]) -> TestNginx {
        TestNginx::start_with(dir, routes, 512)
    }

    /// Like [`TestNginx::start`] with room for `connections` connections
    /// (each proxied request holds two: client and upstream), for load that
    /// queues thousands of requests.
    pub fn start_with(
        dir: &TestDir,
        routes: &[(&str, &Path, &Path)],
        connections: u32,
    ) -> TestNginx {
        let port = free_port();
        let ngx = dir.join("nginx");
        for sub in ["", "tmp"] {
            std::fs::create_dir_all(ngx.join(sub)).unwrap();
            std::fs::set_permissions(ngx.join(sub), std::fs::Permissions::from_mode(0o777))
                .unwrap();
        }
        let mut locations = String::new();
        for (prefix, sock, root) in routes {
            locations.push_str(&format!(
                "    location {prefix} {{\n      include /etc/nginx/fastcgi_params;\n      fastcgi_pass unix:{};\n      fastcgi_param SCRIPT_FILENAME {}$fastcgi_script_name;\n    }}\n",
                sock.display(),
                root.display()
            ));
        }
        let t = ngx.join("tmp").display().to_string();
        // As root, nginx's workers run as www-data, the group pool sockets
        // get (0660): no test needs a world-writable socket.
        let user = if is_root() { "user www-data;\n" } else { "" };
        let conf = format!(
            "daemon off;\n{user}worker_processes 1;\nworker_rlimit_nofile {nofile};\npid {n}/nginx.pid;\nerror_log {n}/error.log warn;\n\
             events {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  fastcgi_temp_path {t}/fcgi;\n  proxy_temp_path {t}/proxy;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
             \n  server {{\n    listen 127.0.0.1:{port};\n{locations}  }}\n}}\n",
            n = ngx.display(),
            nofile = connections * 2 + 64,
        );
        std::fs::write(ngx.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(ngx.join("nginx.conf"))
            .arg("-p")
            .arg(&ngx)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(ngx.join("stderr.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nginx ({e}); `make test` installs nginx-light"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(ngx.join("stderr.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TestNginx { port, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestNginx {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// What a bounded `wrk` run saw.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    /// Responses that were not 2xx/3xx.
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    pub p99_ms: f64,
    pub output: String,
}

impl WrkResult {
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// Starts `wrk` against a loopback URL for `secs` seconds (bounded) in the
/// background; join the handle for the result.
pub fn wrk(url: &str, conns: u32, secs: u32) -> std::thread::JoinHandle<WrkResult> {
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "load only ever targets loopback"
    );
    assert!(secs <= 60, "load runs are bounded");
    let url = url.to_owned();
    std::thread::spawn(move || {
        let out = Command::new("wrk")
            .args([
                "-t",
                "2",
                "-c",
                &conns.to_string(),
                "-d",
                &format!("{secs}s"),
                "--latency",
                "--timeout",
                "5s",
                &url,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run wrk ({e}); `make test` installs it"));
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    })
}

/// Reads wrk's summary.
pub fn parse_wrk(text: &str) -> WrkResult {
    let mut r = WrkResult {
        output: text.to_owned(),
        ..WrkResult::default()
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_suffix("requests in").or_else(|| {
            l.split(" requests in")
                .next()
                .filter(|_| l.contains(" requests in"))
        }) {
            r.requests = rest.trim().parse().unwrap_or(0);
        }
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = rest.trim().parse().unwrap_or(0);
        }
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            r.socket_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
        if let Some(rest) = l.strip_prefix("99%") {
            let v = rest.trim();
            r.p99_ms = if let Some(ms) = v.strip_suffix("ms") {
                ms.parse().unwrap_or(0.0)
            } else if let Some(us) = v.strip_suffix("us") {
                us.parse::<f64>().unwrap_or(0.0) / 1000.0
            } else if let Some(s) = v.strip_suffix('s') {
                s.parse::<f64>().unwrap_or(0.0) * 1000.0
            } else {
                0.0
            };
        }
    }
    r
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Graceful first: the manager stops its masters and their workers.
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(15)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Never leave a php-fpm of this test running, even on failure.
        self.dir.kill_leftovers();
    }
}

impl TestDir {
    /// A placeholder that owns no directory.
    fn empty() -> TestDir {
        TestDir {
            path: PathBuf::new(),
            sessions: Mutex::new(Vec::new()),
        }
    }
}

/// Makes the child lead a new session (setsid), so that everything it starts
/// can be found by session id, whatever its command line says.
#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) {
    // SAFETY: runs in the child between fork and exec; setsid(2) is
    // async-signal-safe and nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
}

/// Session id and state of `pid`, from `/proc/<pid>/stat` (fields 3 and 6;
/// the command name in field 2 may hold spaces and parentheses).
fn session_and_state(pid: i32) -> Option<(i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let _pgrp = f.next()?;
    let session = f.next()?.parse().ok()?;
    Some((session, state))
}

/// Live (non-zombie) processes whose session is one of `sessions`.
pub fn processes_in_sessions(sessions: &[i32]) -> Vec<i32> {
    let own = std::process::id() as i32;
    let mut out = Vec::new();
    if sessions.is_empty() {
        return out;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        if let Some((sid, state)) = session_and_state(pid) {
            if sessions.contains(&sid) && state != 'Z' && state != 'X' {
                out.push(pid);
            }
        }
    }
    out
}

/// Runs `promtool check metrics` on `text`; returns its combined output on
/// failure. A missing promtool fails the test.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool not runnable ({e}); install Debian's `prometheus` package (make test does)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A tokio runtime for tests that call the library's async functions.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
