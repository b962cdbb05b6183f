//! The contenders (plain php-fpm `static`, `dynamic`, `ondemand`, and the
//! manager supervising the same pools) started behind one nginx, and the
//! sampler that reads their workers' memory every 250 ms.
//!
//! Every contender runs one php-fpm master per pool (the manager's own
//! layout; for plain php-fpm it also keeps one pool's OPcache from serving
//! the other), every pool has a `pm.status_listen` socket (the manager always
//! adds one), `pm.max_requests = 0` (php-fpm's default), and the workers run
//! as www-data when the benchmark runs as root. Workers are found by process
//! ancestry (masters' children), never by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fpm_core::fpm_conf::PmMode;
use fpm_kernel::workers::{list_children, sample_pool, SampleContext};
use fpm_testkit::{FpmOpts, TestDaemon, TestDir, TestFpm, TestNginx};
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

/// Debian's `www.conf` spare settings (`pm.start_servers`,
/// `pm.min_spare_servers`, `pm.max_spare_servers`).
pub(crate) const DEBIAN_SPARES: (u32, u32, u32) = (2, 1, 3);

/// Spare settings a careful operator would choose for a pool of `cap`
/// workers facing a 10× surge: start two thirds of the cap, keep half of it
/// idle and never reap below the cap (16 / 12 / 24 for 24 workers).
pub(crate) fn tuned_spares(cap: u32) -> (u32, u32, u32) {
    (cap * 2 / 3, cap / 2, cap)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Static,
    Dynamic,
    /// `dynamic` with the spares of [`tuned_spares`].
    DynamicTuned,
    Ondemand,
    /// `ondemand` with each pool's cap at the manager's maximum, so that the
    /// caps add up to more than the budget: what an operator gets who
    /// sizes every pool for its own peak.
    OndemandOver,
    Manager,
    /// The manager with `phpfpm.warm_handover: false`: a new master starts
    /// with an empty OPcache (no `opcache.file_cache`), to measure what the
    /// warm hand-over is worth in the first seconds after a change.
    ManagerCold,
    /// The manager with `phpfpm.additive_scale_up: true`: a bigger cap of
    /// an `ondemand` pool by a second master beside the warm one.
    ManagerAdditive,
}

impl Kind {
    pub(crate) const ALL: [Kind; 8] = [
        Kind::Static,
        Kind::Dynamic,
        Kind::DynamicTuned,
        Kind::Ondemand,
        Kind::OndemandOver,
        Kind::Manager,
        Kind::ManagerCold,
        Kind::ManagerAdditive,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Static => "static",
            Kind::Dynamic => "dynamic",
            Kind::DynamicTuned => "dynamic-tuned",
            Kind::Ondemand => "ondemand",
            Kind::OndemandOver => "ondemand-over",
            Kind::Manager => "manager",
            Kind::ManagerCold => "manager-cold",
            Kind::ManagerAdditive => "manager-additive",
        }
    }

    /// For the manager's contenders, its settings `(phpfpm.warm_handover,
    /// phpfpm.additive_scale_up)`; `None` for plain php-fpm.
    pub(crate) fn manager_settings(self) -> Option<(bool, bool)> {
        match self {
            Kind::Manager => Some((true, false)),
            Kind::ManagerCold => Some((false, false)),
            Kind::ManagerAdditive => Some((true, true)),
            _ => None,
        }
    }
}

/// What a contender is asked to run.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) pools: Vec<&'static str>,
    /// pm.max_children of each pool for plain php-fpm (the budget split equally).
    pub(crate) cap_per_pool: u32,
    /// The manager's per-pool ceiling (the whole budget may go to one pool).
    pub(crate) manager_max_per_pool: u32,
    /// The memory budget of all workers together, in bytes.
    pub(crate) budget: u64,
    pub(crate) app_dir: PathBuf,
    pub(crate) public: PathBuf,
}

/// A running contender: its masters (or the manager) and nginx in front.
pub(crate) struct Contender {
    // Field order is drop order: nginx first, then php-fpm.
    pub(crate) nginx: TestNginx,
    nginx_log: PathBuf,
    fpms: Vec<TestFpm>,
    daemon: Option<TestDaemon>,
}

impl Contender {
    pub(crate) fn start(kind: Kind, setup: &Setup) -> Contender {
        match kind.manager_settings() {
            Some((warm, additive)) => start_manager(setup, warm, additive),
            None => start_fpm(kind, setup),
        }
    }

    /// Where the sampler looks for masters.
    pub(crate) fn roots(&self) -> Roots {
        match &self.daemon {
            Some(d) => Roots::Manager(d.child.id()),
            None => Roots::Masters(
                self.fpms
                    .iter()
                    .map(|f| (f.pid(), f.opts.name.to_owned()))
                    .collect(),
            ),
        }
    }

    pub(crate) fn nginx_error_log(&self) -> &Path {
        &self.nginx_log
    }

    pub(crate) fn url(&self, pool: &str) -> String {
        self.nginx.url(&format!("/{pool}/index.php"))
    }

    /// The manager's log (empty for plain php-fpm).
    pub(crate) fn manager_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(TestDaemon::log)
            .unwrap_or_default()
    }
}

fn start_fpm(kind: Kind, setup: &Setup) -> Contender {
    let pm = match kind {
        Kind::Static => PmMode::Static,
        Kind::Dynamic | Kind::DynamicTuned => PmMode::Dynamic,
        _ => PmMode::Ondemand,
    };
    let mut fpms = Vec::new();
    for pool in &setup.pools {
        let app = setup.app_dir.clone();
        let fpm = TestFpm::start_tuned(
            FpmOpts {
                name: pool,
                pm,
                max_children: if kind == Kind::OndemandOver {
                    setup.manager_max_per_pool
                } else {
                    setup.cap_per_pool
                },
                status_listen: true,
                scripts: vec![],
                control_timeout_secs: 10,
                listen_mode: "0666",
            },
            |spec| {
                (
                    spec.start_servers,
                    spec.min_spare_servers,
                    spec.max_spare_servers,
                ) = if kind == Kind::DynamicTuned {
                    tuned_spares(setup.cap_per_pool)
                } else {
                    DEBIAN_SPARES
                };
                spec.process_idle_timeout_secs = 10;
                spec.max_requests = 0;
                spec.chdir = Some(app);
            },
            &[],
        );
        fpms.push(fpm);
    }
    let dir = &fpms[0].dir;
    let routes: Vec<(String, PathBuf)> = fpms
        .iter()
        .map(|f| (format!("/{}/", f.opts.name), f.socket.clone()))
        .collect();
    let nginx = nginx_for(dir, &routes, &setup.public);
    let nginx_log = dir.join("nginx/error.log");
    Contender {
        nginx,
        nginx_log,
        fpms,
        daemon: None,
    }
}

fn nginx_for(dir: &TestDir, routes: &[(String, PathBuf)], public: &Path) -> TestNginx {
    let r: Vec<(&str, &Path, &Path)> = routes
        .iter()
        .map(|(p, s)| (p.as_str(), s.as_path(), public))
        .collect();
    TestNginx::start_with(dir, &r, 8192)
}

/// The manager's config for this setup (the shape the autoscaler reads:
/// one budget for all pools, each pool `ondemand` with scaling on).
/// `warm` is `phpfpm.warm_handover` (on by default in the product) and
/// `additive` is `phpfpm.additive_scale_up` (off by default).
pub(crate) fn manager_config(
    dir: &Path,
    port: u16,
    setup: &Setup,
    warm: bool,
    additive: bool,
) -> String {
    let mut c = format!(
        "phpfpm: {{ runtime_dir: {rt}, warm_handover: {warm}, additive_scale_up: {additive} }}\nserver: {{ bind_address: \"127.0.0.1:{port}\" }}\nstorage: {{ database_path: \":memory:\" }}\nscaling:\n  memory_budget: {budget}MiB\npools:\n",
        rt = dir.join("rt").display(),
        budget = setup.budget.div_ceil(1 << 20),
    );
    let max = setup.manager_max_per_pool;
    for pool in &setup.pools {
        c.push_str(&format!(
            "  - name: {pool}\n    supervise: true\n    fastcgi_endpoint: unix:{sock}\n    pm: ondemand\n    max_workers: {max}\n    max_requests: 0\n    listen_mode: \"0666\"\n    chdir: {app}\n    scaling: {{ enabled: true, min_workers: 1, max_workers: {max} }}\n",
            sock = dir.join(format!("{pool}.sock")).display(),
            app = setup.app_dir.display(),
        ));
    }
    c
}

fn start_manager(setup: &Setup, warm: bool, additive: bool) -> Contender {
    let dir = TestDir::new("realload-manager");
    let port = fpm_testkit::free_port();
    let config = manager_config(&dir.path, port, setup, warm, additive);
    let daemon = TestDaemon::start_at(dir, port, Some(&config), &[("RUST_LOG", "info")]);
    for pool in &setup.pools {
        wait_serving(&daemon, pool);
    }
    let routes: Vec<(String, PathBuf)> = setup
        .pools
        .iter()
        .map(|p| (format!("/{p}/"), daemon.dir.join(&format!("{p}.sock"))))
        .collect();
    let nginx = nginx_for(&daemon.dir, &routes, &setup.public);
    let nginx_log = daemon.dir.join("nginx/error.log");
    Contender {
        nginx,
        nginx_log,
        fpms: vec![],
        daemon: Some(daemon),
    }
}

/// Waits until the manager reports the pool up and its public socket answers
/// a ping.
fn wait_serving(d: &TestDaemon, pool: &str) {
    // `phpfpm_up{pool="a",scrape_uri="..."} 1`
    let up = format!("phpfpm_up{{pool=\"{pool}\"");
    if d.wait_metrics(Duration::from_secs(30), |b| {
        b.lines().any(|l| l.starts_with(&up) && l.ends_with(" 1"))
    })
    .is_none()
    {
        panic!("pool {pool} did not come up; manager log:\n{}", d.log());
    }
    let ep = Endpoint::Unix(d.dir.join(&format!("{pool}.sock")));
    let t = Timeouts {
        connect: Duration::from_millis(200),
        total: Duration::from_secs(2),
    };
    let rt = fpm_testkit::rt();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pong = rt
            .block_on(fastcgi::get(&ep, "/ping", "", t))
            .is_ok_and(|r| String::from_utf8_lossy(&r.stdout).contains("pong"));
        if pong {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool {pool}: no ping answer; manager log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the masters are: known pids (plain php-fpm) or the manager's
/// children whose command line says they are a php-fpm master.
#[derive(Debug, Clone)]
pub(crate) enum Roots {
    Masters(Vec<(u32, String)>),
    Manager(u32),
}

impl Roots {
    /// (master pid, pool) pairs right now.
    fn masters(&self, proc_root: &Path) -> Vec<(u32, String)> {
        match self {
            Roots::Masters(m) => m.clone(),
            Roots::Manager(pid) => list_children(proc_root, *pid)
                .into_iter()
                .filter_map(|m| {
                    let cmd = std::fs::read(proc_root.join(m.to_string()).join("cmdline")).ok()?;
                    let cmd = String::from_utf8_lossy(&cmd).into_owned();
                    // "php-fpm: master process (<runtime>/masters/<pool>.conf)"
                    if !cmd.contains("master process") {
                        return None;
                    }
                    // A second master's is `<pool>.extra.conf`; pool
                    // names hold no dot.
                    let conf = cmd.rsplit('/').next()?;
                    let pool = conf.split('.').next()?.to_owned();
                    Some((m, pool))
                })
                .collect(),
        }
    }
}

fn is_status_worker(proc_root: &Path, pid: u32) -> bool {
    std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).is_ok_and(|c| {
        String::from_utf8_lossy(&c)
            .trim_end_matches('\0')
            .trim_end()
            .ends_with("_status")
    })
}

/// One look at all workers.
#[derive(Debug, Clone)]
pub(crate) struct MemSample {
    pub(crate) at: Instant,
    /// PSS of every worker of every pool (the status listener's excluded), in bytes.
    pub(crate) total_pss: u64,
    /// Workers per pool.
    pub(crate) workers: BTreeMap<String, u32>,
    /// Master pids per pool.
    pub(crate) masters: BTreeMap<String, BTreeSet<u32>>,
}

/// Reads every worker's `smaps_rollup` every `every` on a thread until stopped.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<MemSample>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(roots: Roots, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (Arc::clone(&stop), Arc::clone(&samples));
        let handle = std::thread::spawn(move || {
            let proc_root = Path::new("/proc");
            let ctx = SampleContext::from_host(proc_root).unwrap();
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let mut total_pss = 0;
                let mut workers = BTreeMap::new();
                let mut masters: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
                for (master, pool) in roots.masters(proc_root) {
                    let sample = sample_pool(proc_root, master, &ctx, SystemTime::now());
                    if sample.master.is_err() {
                        continue;
                    }
                    masters.entry(pool.clone()).or_default().insert(master);
                    let mut n = 0;
                    for w in &sample.workers {
                        // The pm.status_listen pool's worker ("pool a_status")
                        // runs no app code and exists in every contender.
                        if is_status_worker(proc_root, w.key.pid) {
                            continue;
                        }
                        n += 1;
                        if let Ok(m) = &w.memory {
                            total_pss += m.pss;
                        }
                    }
                    *workers.entry(pool).or_insert(0) += n;
                }
                out.lock().unwrap().push(MemSample {
                    at,
                    total_pss,
                    workers,
                    masters,
                });
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Sampler {
            stop,
            samples,
            handle: Some(handle),
        }
    }

    pub(crate) fn finish(mut self) -> Vec<MemSample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}
