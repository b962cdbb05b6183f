//! How to add capacity to a loaded pool: a hand-over to a bigger master
//! against an *additive* second master on the same socket (fact 4), each
//! with and without a pre-filled `opcache.file_cache`, on real php-fpm 8.2
//! behind real nginx with open-loop Poisson load
//! (`cargo bench -p phpfpm-manager --bench handover`, part of `make bench`).
//!
//! The app is the real-load benchmark's (`realload/app.rs`). Every variant
//! gets the identical arrivals: a pool whose `ondemand` master has a cap
//! of 8 workers faces the load of 12 busy workers for 40 s; 10 s in, the
//! capacity goes to 16:
//! - `handover`: a new master with a cap of 16 starts on the manager-held
//!   socket; once it is ready the old one is stopped gracefully (what the
//!   supervisor does);
//! - `additive`: a second master with a cap of 8 starts on the same socket
//!   and both serve (a later consolidation into one master would be a
//!   hand-over at a quiet time, not measured here);
//! - `-cold`: the same without `opcache.file_cache` (the new master
//!   compiles every script again);
//! - `cap 8` and `cap 16`: no change, the bounds.
//!
//! Reported: failed requests, p99 of the requests due in the 5 s and 10 s
//! after the new master was ready, and over the whole run.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "realload/app.rs"]
#[allow(dead_code)]
mod app;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fpm_core::fpm_conf::{self, GlobalSpec, PmMode, PoolSpec};
use fpm_core::PoolName;
use fpm_loadgen::{percentile, summarize, Phase, Plan, Stream, Target};
use fpm_testkit::{TestDir, TestNginx};
use phpfpm_manager::supervisor::child::{FpmBinary, Master};
use phpfpm_manager::supervisor::sockets::{self, Access, PoolSocket};

const SEED: u64 = 20_261_203;
const BEFORE: Duration = Duration::from_secs(10);
const TOTAL: Duration = Duration::from_secs(40);
const BUSY: f64 = 12.0;

#[derive(Clone, Copy, PartialEq)]
enum Change {
    None(u32),
    Handover { warm: bool },
    Additive { warm: bool },
}

impl Change {
    fn name(self) -> String {
        let cold = |warm: bool| if warm { "" } else { "-cold" };
        match self {
            Change::None(cap) => format!("no change, cap {cap}"),
            Change::Handover { warm } => format!("handover{}", cold(warm)),
            Change::Additive { warm } => format!("additive{}", cold(warm)),
        }
    }
}

fn main() {
    let rt = fpm_testkit::rt();
    println!("# Adding capacity under load: hand-over against an additive master");
    println!(
        "date: {}  machine: {} vCPU",
        String::from_utf8_lossy(
            &std::process::Command::new("date")
                .arg("-u")
                .output()
                .unwrap()
                .stdout
        )
        .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let root = TestDir::new("handover");
    let app_dir = root.join("app");
    let public = app::generate(&app_dir);
    let binary = FpmBinary {
        path: fpm_testkit::php_fpm(),
        as_root: nix::unistd::Uid::effective().is_root(),
    };

    // The mean request time sets the rate (12 busy workers' worth).
    let mean = rt.block_on(async {
        let pool = Pool::new(&root.join("measure"), &public);
        let a = pool.master(&binary, "m", 4, true).await;
        let t = pool.target();
        app::rounds(&t, 40, 4).await;
        let seq = app::rounds(&t, 30, 1).await;
        drop(a);
        seq.iter().sum::<Duration>() / seq.len() as u32
    });
    let rate = BUSY / mean.as_secs_f64();
    println!(
        "mean request {:.1} ms; load {rate:.1} req/s (≈{BUSY} busy workers) for {}s; the change is asked for {}s in",
        mean.as_secs_f64() * 1000.0,
        TOTAL.as_secs(),
        BEFORE.as_secs()
    );
    println!();
    println!("| variant | requests | failed | p99 first 5 s after the change | p99 first 10 s after | p99 whole run | new master ready after |");
    println!("|---|---|---|---|---|---|---|");
    let variants = [
        Change::None(8),
        Change::None(16),
        Change::Handover { warm: true },
        Change::Additive { warm: true },
        Change::Handover { warm: false },
        Change::Additive { warm: false },
    ];
    for change in variants {
        let row = rt.block_on(variant(&binary, &root, &public, change, rate));
        println!("{row}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One pool: the manager-held socket, nginx in front, a file cache dir.
struct Pool {
    dir: PathBuf,
    socket: PoolSocket,
    // Field order is drop order: nginx stops before its directory goes.
    nginx: TestNginx,
    _nginx_dir: TestDir,
    cache: PathBuf,
}

impl Pool {
    fn new(dir: &Path, public: &Path) -> Pool {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let public_sock = dir.join("pool.sock");
        let socket = sockets::bind_unix(
            &sockets::private_path(&public_sock),
            &public_sock,
            &Access {
                mode: 0o666,
                uid: None,
                gid: None,
            },
        )
        .unwrap();
        let cache = dir.join("file-cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        let nginx_dir = TestDir::new("handover-nginx");
        let nginx =
            TestNginx::start_with(&nginx_dir, &[("/a/", public_sock.as_path(), public)], 4096);
        Pool {
            dir: dir.to_owned(),
            socket,
            nginx,
            _nginx_dir: nginx_dir,
            cache,
        }
    }

    fn target(&self) -> Target {
        Target::parse(&self.nginx.url("/a/index.php")).unwrap()
    }

    /// Starts an `ondemand` master with `cap` workers on the pool's socket
    /// and waits until it is ready.
    async fn master(&self, binary: &FpmBinary, tag: &str, cap: u32, warm: bool) -> Master {
        let name = PoolName::new("a").unwrap();
        let root = nix::unistd::Uid::effective().is_root();
        let spec = PoolSpec {
            name: name.clone(),
            listen: self.socket_address(),
            status_listen: None,
            status_path: "/status".into(),
            ping_path: "/ping".into(),
            ping_response: "pong".into(),
            user: root.then(|| "www-data".to_owned()),
            group: root.then(|| "www-data".to_owned()),
            listen_mode: "0666".into(),
            pm: PmMode::Ondemand,
            max_children: cap,
            start_servers: 1,
            min_spare_servers: 1,
            max_spare_servers: cap,
            max_requests: 0,
            process_idle_timeout_secs: 10,
            request_terminate_timeout_secs: 30,
            chdir: None,
            php_values: vec![],
            php_admin_values: if warm {
                vec![(
                    "opcache.file_cache".to_owned(),
                    self.cache.display().to_string(),
                )]
            } else {
                vec![]
            },
            extra: vec![],
            env: vec![],
        };
        let global = fpm_conf::render_global(&GlobalSpec {
            process_control_timeout_secs: 10,
            log_level: "notice".into(),
        });
        let pool = fpm_conf::render_pool(&spec).unwrap();
        let pid_file = self.dir.join(format!("{tag}.pid"));
        let conf = self.dir.join(format!("{tag}.conf"));
        std::fs::write(
            &conf,
            fpm_conf::render_master(&global, &pool, &pid_file.display().to_string()),
        )
        .unwrap();
        let env = sockets::fpm_sockets_env(&[&self.socket]);
        let (master, ready) = binary
            .spawn_master(&name, &conf, &self.dir, &[self.socket.raw()], &env)
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), ready)
            .await
            .expect("php-fpm did not get ready within 20s")
            .expect("php-fpm exited before it was ready");
        master
    }

    fn socket_address(&self) -> String {
        sockets::private_path(&self.dir.join("pool.sock"))
            .display()
            .to_string()
    }
}

async fn variant(
    binary: &FpmBinary,
    root: &TestDir,
    public: &Path,
    change: Change,
    rate: f64,
) -> String {
    let tag = change.name().replace([' ', ','], "-");
    let pool = Pool::new(&root.join(&tag), public);
    let first_cap = match change {
        Change::None(cap) => cap,
        _ => 8,
    };
    let mut old = pool.master(binary, "old", first_cap, true).await;
    // Warm-up (not measured): the master compiles the app and fills the
    // file cache, as a pool that has been serving for a while has.
    let target = pool.target();
    let warmup = Plan {
        streams: vec![Stream {
            name: "a".into(),
            target: target.clone(),
            phases: vec![Phase::new(rate / 3.0, Duration::from_secs(10))],
            numbered: true,
        }],
        seed: SEED + 1,
        max_in_flight: 3000,
        request_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(12),
    };
    fpm_loadgen::run(&warmup).await.unwrap();
    let plan = Plan {
        streams: vec![Stream {
            name: "a".into(),
            target,
            phases: vec![Phase::new(rate, TOTAL)],
            numbered: true,
        }],
        seed: SEED,
        max_in_flight: 3000,
        request_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(12),
    };
    let load = fpm_loadgen::run(&plan);
    let act = async {
        tokio::time::sleep(BEFORE).await;
        let new = match change {
            Change::None(_) => return (None, None),
            Change::Handover { warm } => pool.master(binary, "new", 16, warm).await,
            Change::Additive { warm } => pool.master(binary, "new", 8, warm).await,
        };
        let ready = Instant::now();
        if matches!(change, Change::Handover { .. }) {
            old.signal(nix::sys::signal::Signal::SIGQUIT);
        }
        (Some(ready), Some(new))
    };
    let (run, (ready, new)) = tokio::join!(load, act);
    let run = run.unwrap();
    let s = summarize(&run.records);
    let ready_at = ready.map(|r| r.saturating_duration_since(run.started));
    let after = |len: Duration| -> String {
        let Some(at) = ready_at else {
            return "-".to_owned();
        };
        let mut lat: Vec<Duration> = run
            .records
            .iter()
            .filter(|r| r.scheduled >= at && r.scheduled < at + len)
            .filter_map(|r| r.latency)
            .collect();
        lat.sort();
        format!("{:.0} ms", percentile(&lat, 0.99).as_secs_f64() * 1000.0)
    };
    let row = format!(
        "| {} | {} | {} | {} | {} | {:.0} ms | {} |",
        change.name(),
        s.requests,
        s.failed,
        after(Duration::from_secs(5)),
        after(Duration::from_secs(10)),
        s.p99.as_secs_f64() * 1000.0,
        ready_at
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".to_owned()),
    );
    drop(new);
    drop(old);
    row
}
