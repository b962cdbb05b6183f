//! Real-load benchmark: real php-fpm 8.2 behind real nginx on loopback, an
//! app where OPcache matters, open-loop Poisson load (`fpm-loadgen`), and
//! the contenders side by side in one run: php-fpm `static`, `dynamic`
//! (Debian's spare settings), `dynamic-tuned` (spares an operator would
//! pick for a surge) and `ondemand` with caps that fit the memory budget
//! split equally between pools, and the manager supervising the same pools
//! with autoscaling on and the same budget (`manager`: warm hand-over, its
//! default), without the warm hand-over (`manager-cold`) and with the
//! additive scale-up (`manager-additive`); `ondemand-over` gives each of two pools the whole
//! budget (`cargo bench -p phpfpm-manager --bench realload`, part of `make bench`).
//!
//! First the app's own figures: worker memory (PSS from `smaps_rollup`), cold
//! vs warm request time, and cold with a pre-filled `opcache.file_cache`.
//! The measured mean request time sets the rates: base load is two busy
//! workers (rate = 2 / mean time), the memory budget is 24 workers.
//!
//! Scenarios (every contender gets the identical arrival times):
//! 1. `spike`: one pool, base load, then 10× for 30 s, then base again.
//! 2. `shared`: two pools, a budget of 24 workers in all; pool A busy (16
//!    workers' worth) for 2 min while B is at base, then the other way round.
//! 3. `steady`: base load for 10 minutes.
//!
//! Per contender: p50/p99/max latency, failed requests, memory-seconds and
//! the largest total PSS of all workers (sampled every 250 ms) against the
//! budget, master changes and the p99 of the first 5 s after each. After
//! each scenario the simulator runs the same traces, calibrated from the
//! app figures, and its figures are printed beside the real ones.
//!
//! `REALLOAD_QUICK=1` shortens every phase for development (spike 15 s,
//! shared 45 s per peak, steady 2 min); `REALLOAD_LOG=DIR` keeps the
//! managers' logs there; `REALLOAD_ONLY=spike,steady` runs
//! only the named scenarios; `REALLOAD_CONTENDERS=static,manager` only the
//! named contenders.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "realload/app.rs"]
mod app;
#[path = "realload/fleet.rs"]
mod fleet;
#[path = "realload/simulated.rs"]
mod simulated;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet::{Contender, Kind, MemSample, Sampler, Setup};
use fpm_core::fpm_conf::PmMode;
use fpm_kernel::workers::{sample_pool, SampleContext};
use fpm_loadgen::{percentile, summarize, Phase, Plan, Record, Stream, Summary, Target};
use fpm_testkit::{FpmOpts, TestDir, TestFpm, TestNginx};

/// The budget in workers, for all pools together.
const BUDGET_WORKERS: u32 = 24;
/// Busy workers at base load and at a pool's peak in `shared`.
const BASE_BUSY: f64 = 2.0;
const PEAK_BUSY: f64 = 16.0;
const SPIKE_FACTOR: f64 = 10.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const AFTER_CHANGE: Duration = Duration::from_secs(5);
/// A request not answered within this is given up and counted failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SEED: u64 = 20_261_202;
/// The listen backlog of every pool (php-fpm's default on Linux, and the
/// manager's): the simulator's accept queue.
const BACKLOG: u32 = 511;
/// Sigma of the app's lognormal wait.
const WAIT_SIGMA: f64 = 0.5;

struct Settings {
    quick: bool,
    /// `REALLOAD_CONTENDERS=none`: no real contender, only the simulator.
    sim_only: bool,
    only: Option<BTreeSet<String>>,
    contenders: Vec<Kind>,
}

impl Settings {
    fn from_env() -> Settings {
        let list = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .collect::<BTreeSet<_>>()
            })
        };
        let quick = std::env::var("REALLOAD_QUICK").is_ok_and(|v| v != "0" && !v.is_empty())
            || std::env::args().any(|a| a == "--quick");
        let contenders = match list("REALLOAD_CONTENDERS") {
            Some(names) => Kind::ALL
                .into_iter()
                .filter(|k| names.contains(k.name()))
                .collect(),
            None => Kind::ALL.to_vec(),
        };
        Settings {
            quick,
            sim_only: list("REALLOAD_CONTENDERS").is_some_and(|n| n.contains("none")),
            only: list("REALLOAD_ONLY"),
            contenders,
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(scenario))
    }

    fn secs(&self, full: u64, quick: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }
}

fn main() {
    let settings = Settings::from_env();
    let rt = fpm_testkit::rt();
    println!("# phpfpm-manager real-load benchmark");
    println!(
        "date: {}  mode: {}",
        cmd_out("date", &["-u"]),
        if settings.quick {
            "QUICK (REALLOAD_QUICK=1, shortened phases)"
        } else {
            "full"
        }
    );
    println!("machine: {}", machine());
    if let Some(o) = &settings.only {
        let known = ["spike", "shared", "steady"];
        let unknown: Vec<&String> = o.iter().filter(|x| !known.contains(&x.as_str())).collect();
        assert!(
            unknown.is_empty(),
            "REALLOAD_ONLY: unknown scenario {unknown:?}; known: spike, shared, steady"
        );
    }
    assert!(
        !settings.contenders.is_empty() || settings.sim_only,
        "REALLOAD_CONTENDERS names none of static, dynamic, dynamic-tuned, ondemand, ondemand-over, manager, manager-cold, manager-additive (or `none`: the simulator only)"
    );

    let root = TestDir::new("realload");
    let app_dir = root.join("app");
    let public = app::generate(&app_dir);
    let figures = match std::env::var("REALLOAD_FIGURES") {
        Ok(text) if !text.is_empty() => AppFigures::given(&text),
        _ => app_figures(&rt, &app_dir, &public),
    };
    figures.print();

    let mean = figures.mean_service.as_secs_f64();
    let base = BASE_BUSY / mean;
    let budget = figures.worker_pss_max * u64::from(BUDGET_WORKERS);
    println!(
        "\nrates: base {base:.1} req/s (≈{BASE_BUSY} busy workers at the measured mean {:.1} ms), spike {:.1} req/s, shared peak {:.1} req/s",
        mean * 1000.0,
        base * SPIKE_FACTOR,
        PEAK_BUSY / mean
    );
    println!(
        "budget: {BUDGET_WORKERS} workers × {:.1} MiB (largest warm worker PSS) = {:.0} MiB",
        mib(figures.worker_pss_max),
        mib(budget)
    );

    let one_pool = Setup {
        pools: vec!["a"],
        cap_per_pool: BUDGET_WORKERS,
        manager_max_per_pool: BUDGET_WORKERS,
        budget,
        app_dir: app_dir.clone(),
        public: public.clone(),
    };
    let two_pools = Setup {
        pools: vec!["a", "b"],
        cap_per_pool: BUDGET_WORKERS / 2,
        ..one_pool.clone()
    };
    let warmup = settings.secs(20, 5);
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        percentile(&v, 0.5).as_secs_f64()
    };
    let cal = simulated::Calibration {
        mean_service_s: mean,
        sigma: WAIT_SIGMA,
        cold_extra_s: median(&figures.cold) - median(&figures.warm),
        file_cache_extra_s: median(&figures.file_cache_cold) - median(&figures.warm),
        worker_pss_bytes: figures.worker_pss_median,
        backlog: BACKLOG,
    };
    let run = |title: &str, setup: &Setup, phases: &[Vec<Phase>]| {
        let results = scenario(&rt, &settings, title, setup, phases, base, warmup);
        let sims = simulated::simulate(&cal, setup, phases, (base, warmup), &fleet::Kind::ALL);
        report_simulated(&results, &sims, setup, warmup);
    };

    if settings.wants("spike") {
        let (before, spike, after) = (
            settings.secs(30, 10),
            settings.secs(30, 15),
            settings.secs(60, 20),
        );
        let phases = vec![
            Phase::new(base, before),
            Phase::new(base * SPIKE_FACTOR, spike),
            Phase::new(base, after),
        ];
        let title = format!(
            "spike: one pool, {base:.0} req/s for {}s, {:.0} req/s for {}s, {base:.0} req/s for {}s",
            before.as_secs(),
            base * SPIKE_FACTOR,
            spike.as_secs(),
            after.as_secs()
        );
        run(&title, &one_pool, &[phases]);
    }
    if settings.wants("shared") {
        let peak = settings.secs(120, 45);
        let busy = PEAK_BUSY / mean;
        let a = vec![Phase::new(busy, peak), Phase::new(base, peak)];
        let b = vec![Phase::new(base, peak), Phase::new(busy, peak)];
        let title = format!(
            "shared budget: two pools, {BUDGET_WORKERS} workers in all; A at {busy:.0} req/s and B at {base:.0} req/s for {}s, then the other way round",
            peak.as_secs()
        );
        run(&title, &two_pools, &[a, b]);
    }
    if settings.wants("steady") {
        let len = settings.secs(600, 120);
        let title = format!("steady: one pool, {base:.0} req/s for {}s", len.as_secs());
        run(&title, &one_pool, &[vec![Phase::new(base, len)]]);
    }
}

/// The app's own figures.
struct AppFigures {
    cold: Vec<Duration>,
    warm: Vec<Duration>,
    file_cache_cold: Vec<Duration>,
    /// Mean of sequential warm requests (the whole request, sleep included).
    mean_service: Duration,
    /// Median of sequential warm requests without the sleep (CPU part).
    no_wait: Duration,
    worker_pss_median: u64,
    worker_pss_max: u64,
    worker_rss_median: u64,
    worker_uss_median: u64,
}

impl AppFigures {
    /// Figures of an earlier run, `mean_ms:cold_ms:warm_ms:file_cache_cold_ms:pss_mib`
    /// (`REALLOAD_FIGURES`), to run the simulator without measuring the app.
    fn given(text: &str) -> AppFigures {
        let v: Vec<f64> = text
            .split(':')
            .map(|x| {
                x.trim()
                    .parse()
                    .expect("REALLOAD_FIGURES: numbers separated by ':'")
            })
            .collect();
        assert_eq!(
            v.len(),
            5,
            "REALLOAD_FIGURES is mean_ms:cold_ms:warm_ms:file_cache_cold_ms:pss_mib"
        );
        let d = |ms: f64| Duration::from_secs_f64(ms / 1000.0);
        let pss = (v[4] * f64::from(1u32 << 20)) as u64;
        AppFigures {
            cold: vec![d(v[1])],
            warm: vec![d(v[2])],
            file_cache_cold: vec![d(v[3])],
            mean_service: d(v[0]),
            no_wait: Duration::ZERO,
            worker_pss_median: pss,
            worker_pss_max: pss,
            worker_rss_median: 0,
            worker_uss_median: 0,
        }
    }

    fn print(&self) {
        println!("\n## App figures");
        println!(
            "{} classes in {} files, {} loaded per request through an autoloader, ~{} MB of data built per request, lognormal wait (median {} ms, sigma 0.5)",
            app::MODULES * app::PER_MODULE,
            app::MODULES * app::PER_MODULE + 2,
            app::MODULES_PER_ROUTE * app::PER_MODULE,
            app::ALLOC_MB,
            app::wait_ms()
        );
        println!("| measure | median | max |");
        println!("|---|---|---|");
        let row = |name: &str, v: &[Duration]| {
            let mut s = v.to_vec();
            s.sort();
            println!(
                "| {name} | {:.1} ms | {:.1} ms |",
                ms(percentile(&s, 0.5)),
                ms(*s.last().unwrap())
            );
        };
        row(
            "cold: first 16 requests into a fresh static master (8 workers), 8 at a time",
            &self.cold,
        );
        row("warm: 16 requests, 8 at a time, after 400", &self.warm);
        row(
            "cold with a pre-filled opcache.file_cache: the same 16 into a fresh master",
            &self.file_cache_cold,
        );
        println!(
            "| warm request, one at a time (mean of 60) | {:.1} ms (mean) | |",
            ms(self.mean_service)
        );
        println!(
            "| warm request without the wait (CPU part, median of 60) | {:.1} ms | |",
            ms(self.no_wait)
        );
        println!(
            "| worker memory after warm-up (8 workers): PSS | {:.1} MiB | {:.1} MiB |",
            mib(self.worker_pss_median),
            mib(self.worker_pss_max)
        );
        println!(
            "| worker memory after warm-up: RSS / USS (median) | {:.1} / {:.1} MiB | |",
            mib(self.worker_rss_median),
            mib(self.worker_uss_median)
        );
    }
}

fn app_figures(rt: &tokio::runtime::Runtime, app_dir: &Path, public: &Path) -> AppFigures {
    let start = |name: &'static str, args: &[String]| {
        let fpm = TestFpm::start_tuned(
            FpmOpts {
                name,
                pm: PmMode::Static,
                max_children: 8,
                status_listen: true,
                scripts: vec![],
                control_timeout_secs: 10,
                listen_mode: "0666",
            },
            |spec| {
                spec.max_requests = 0;
                spec.chdir = Some(app_dir.to_path_buf());
            },
            args,
        );
        let nginx = TestNginx::start_with(&fpm.dir, &[("/a/", fpm.socket.as_path(), public)], 1024);
        (fpm, nginx)
    };
    let target =
        |n: &TestNginx, q: &str| Target::parse(&n.url(&format!("/a/index.php{q}"))).unwrap();

    let (fpm, nginx) = start("appcold", &[]);
    let t = target(&nginx, "");
    let cold = rt.block_on(app::rounds(&t, 16, 8));
    rt.block_on(app::rounds(&t, 400, 8));
    let warm = rt.block_on(app::rounds(&t, 16, 8));
    let seq = rt.block_on(app::rounds(&t, 60, 1));
    let mean_service = seq.iter().sum::<Duration>() / seq.len() as u32;
    let mut nw = rt.block_on(app::rounds(&target(&nginx, "?nowait=1"), 60, 1));
    nw.sort();
    let no_wait = percentile(&nw, 0.5);
    let ctx = SampleContext::from_host(Path::new("/proc")).unwrap();
    let sample = sample_pool(
        Path::new("/proc"),
        fpm.pid(),
        &ctx,
        std::time::SystemTime::now(),
    );
    // The pool's 8 workers; the status pool's worker runs no app code.
    let mut mem: Vec<_> = sample
        .workers
        .iter()
        .filter_map(|w| w.memory.as_ref().ok().copied())
        .collect();
    mem.sort_by_key(|m| std::cmp::Reverse(m.pss));
    mem.truncate(8);
    let med = |f: fn(&fpm_kernel::workers::MemoryUsage) -> u64| {
        let mut v: Vec<u64> = mem.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let worker_pss_median = med(|m| m.pss);
    let worker_rss_median = med(|m| m.rss);
    let worker_uss_median = med(|m| m.uss);
    let worker_pss_max = mem.iter().map(|m| m.pss).max().unwrap();
    drop(nginx);
    drop(fpm);

    // A master fills the file cache as it compiles; a fresh master with the
    // same cache then loads compiled scripts instead of compiling them.
    let cache = app_dir.join("opcache-file-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let args = vec![
        "-d".to_owned(),
        format!("opcache.file_cache={}", cache.display()),
    ];
    let (fpm, nginx) = start("appfill", &args);
    rt.block_on(app::rounds(&target(&nginx, ""), 400, 8));
    drop(nginx);
    drop(fpm);
    let (fpm, nginx) = start("appfc", &args);
    let file_cache_cold = rt.block_on(app::rounds(&target(&nginx, ""), 16, 8));
    drop(nginx);
    drop(fpm);
    AppFigures {
        cold,
        warm,
        file_cache_cold,
        mean_service,
        no_wait,
        worker_pss_median,
        worker_pss_max,
        worker_rss_median,
        worker_uss_median,
    }
}

/// What one contender did in one scenario.
struct Result_ {
    kind: Kind,
    summary: Summary,
    per_pool_p99: Vec<(String, Duration)>,
    /// Integral of total worker PSS over the measured window, byte-seconds.
    mem_seconds: f64,
    max_pss: u64,
    max_workers: Vec<(String, u32)>,
    /// (pool, seconds from the start) of every new master.
    changes: Vec<(String, Duration)>,
    after_change_p99: Option<Duration>,
    after_change_each: Vec<Duration>,
    /// Each request's latency, in schedule order (`None`: no time, such as
    /// a request never sent): with numbered requests the k-th request is the
    /// same work in every contender, so two contenders compare pairwise.
    latencies: Vec<Option<Duration>>,
    /// The host's 1-minute load average before and after the run (the
    /// machine may be shared; a figure far above the core count means the
    /// run competed for CPU).
    load: (f64, f64),
}

fn scenario(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    title: &str,
    setup: &Setup,
    phases: &[Vec<Phase>],
    base: f64,
    warmup: Duration,
) -> Vec<Result_> {
    println!("\n## {title}");
    let mut results = Vec::new();
    for &kind in &settings.contenders {
        // With one pool its cap is already the whole budget: the same as
        // `ondemand`.
        if kind == Kind::OndemandOver && setup.pools.len() == 1 {
            continue;
        }
        let c = Contender::start(kind, setup);
        let streams = |ph: &[Vec<Phase>]| -> Vec<Stream> {
            setup
                .pools
                .iter()
                .zip(ph)
                .map(|(pool, p)| Stream {
                    name: (*pool).to_owned(),
                    target: Target::parse(&c.url(pool)).unwrap(),
                    phases: p.clone(),
                    // The app draws each request's work from its number:
                    // every contender serves the same requests.
                    numbered: true,
                })
                .collect()
        };
        // Warm-up (not measured): base load on every pool, so that no
        // contender is measured on its very first requests.
        let warm_phases: Vec<Vec<Phase>> = setup
            .pools
            .iter()
            .map(|_| vec![Phase::new(base, warmup)])
            .collect();
        let warm = rt
            .block_on(fpm_loadgen::run(&plan(streams(&warm_phases), SEED + 1)))
            .unwrap();
        let ws = summarize(&warm.records);
        if ws.failed > 0 {
            println!(
                "({}: {} of {} warm-up requests failed)",
                kind.name(),
                ws.failed,
                ws.requests
            );
        }
        let plan = plan(streams(phases), SEED);
        let load_before = loadavg();
        let cpu_before = manager_cpu_s(&c);
        let sampler = Sampler::start(c.roots(), SAMPLE_EVERY);
        let run = rt.block_on(fpm_loadgen::run(&plan)).unwrap();
        let samples = sampler.finish();
        let cpu = manager_cpu_s(&c).zip(cpu_before).map(|(a, b)| a - b);
        let load_after = loadavg();
        if ws.failed * 2 > ws.requests {
            let log = std::fs::read_to_string(c.nginx_error_log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            println!(
                "({}: most warm-up requests failed; nginx says: {tail:?})",
                kind.name()
            );
        }
        let r = evaluate(kind, setup, &plan, &run.records, run.started, &samples);
        eprintln!(
            "{}: {} requests, {} failed, p99 {:.1} ms",
            kind.name(),
            r.summary.requests,
            r.summary.failed,
            ms(r.summary.p99)
        );
        if kind.manager_settings().is_some() {
            let log = c.manager_log();
            let applied = [
                "Applied new pool settings by hand-over",
                "Added a second php-fpm master",
                "Stopping the second php-fpm master",
            ]
            .iter()
            .map(|m| log.matches(m).count())
            .sum::<usize>();
            let advice = log.lines().filter(|l| l.contains("scal")).count();
            let wall = plan.duration().as_secs_f64();
            let cpu = cpu.map_or_else(
                || "its CPU unknown".to_owned(),
                |s| {
                    format!(
                        "its own CPU {s:.1} s over the {wall:.0} s run ({:.1} % of one core)",
                        100.0 * s / wall
                    )
                },
            );
            println!("(manager: {applied} pool changes applied, {advice} log lines about scaling, {cpu})");
            // REALLOAD_LOG=DIR keeps each manager's log for a closer look.
            if let Some(dir) = std::env::var_os("REALLOAD_LOG") {
                let path = std::path::Path::new(&dir).join(format!("{}.log", kind.name()));
                if let Err(e) = std::fs::write(&path, &log) {
                    eprintln!("REALLOAD_LOG: cannot write {}: {e}", path.display());
                }
            }
        }
        let mut r = r;
        r.load = (load_before, load_after);
        results.push(r);
        drop(c);
        std::thread::sleep(Duration::from_secs(2));
    }
    report(&results, setup);
    results
}

/// The manager process's own CPU time so far, in seconds (`None` for plain
/// php-fpm): what supervising and watching the pools cost beside them.
fn manager_cpu_s(c: &Contender) -> Option<f64> {
    let fleet::Roots::Manager(pid) = c.roots() else {
        return None;
    };
    let ticks = fpm_kernel::procfs::read_stat(pid)?.cpu_ticks();
    let per_s = SampleContext::from_host(Path::new("/proc")).ok()?.clk_tck;
    Some(ticks as f64 / per_s as f64)
}

fn plan(streams: Vec<Stream>, seed: u64) -> Plan {
    Plan {
        streams,
        seed,
        // nginx has room for 8192 connections; each proxied request holds two.
        max_in_flight: 3000,
        request_timeout: REQUEST_TIMEOUT,
        grace: Duration::from_secs(12),
    }
}

fn evaluate(
    kind: Kind,
    setup: &Setup,
    plan: &Plan,
    records: &[Record],
    started: Instant,
    samples: &[MemSample],
) -> Result_ {
    let summary = summarize(records);
    let per_pool_p99 = setup
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                (*p).to_owned(),
                summarize(records.iter().filter(|r| r.stream == i)).p99,
            )
        })
        .collect();
    let window = plan.duration();
    let offset = |s: &MemSample| s.at.checked_duration_since(started);
    let inside: Vec<&MemSample> = samples
        .iter()
        .filter(|s| offset(s).is_some_and(|o| o <= window))
        .collect();
    let mut mem_seconds = 0.0;
    for w in inside.windows(2) {
        mem_seconds += w[0].total_pss as f64 * (w[1].at - w[0].at).as_secs_f64();
    }
    let max_pss = inside.iter().map(|s| s.total_pss).max().unwrap_or(0);
    let max_workers = setup
        .pools
        .iter()
        .map(|p| {
            let n = inside
                .iter()
                .filter_map(|s| s.workers.get(*p).copied())
                .max()
                .unwrap_or(0);
            ((*p).to_owned(), n)
        })
        .collect();
    // Masters present at the start are the baseline; any other is a change.
    let mut known: BTreeSet<u32> = samples
        .first()
        .map(|s| s.masters.values().flatten().copied().collect())
        .unwrap_or_default();
    let mut changes = Vec::new();
    for s in samples {
        for (pool, pids) in &s.masters {
            for pid in pids {
                if known.insert(*pid) {
                    if let Some(o) = offset(s) {
                        changes.push((pool.clone(), o));
                    }
                }
            }
        }
    }
    let mut after_all = Vec::new();
    let mut after_change_each = Vec::new();
    for (pool, t) in &changes {
        let i = setup.pools.iter().position(|p| p == pool);
        let mut lat: Vec<Duration> = records
            .iter()
            .filter(|r| Some(r.stream) == i && r.scheduled >= *t && r.scheduled < *t + AFTER_CHANGE)
            .filter_map(|r| r.latency)
            .collect();
        lat.sort();
        after_change_each.push(percentile(&lat, 0.99));
        after_all.extend(lat);
    }
    after_all.sort();
    Result_ {
        kind,
        summary,
        per_pool_p99,
        mem_seconds,
        max_pss,
        max_workers,
        after_change_p99: (!changes.is_empty()).then(|| percentile(&after_all, 0.99)),
        changes,
        after_change_each,
        latencies: records.iter().map(|r| r.latency).collect(),
        load: (0.0, 0.0),
    }
}

/// Request by request, how much slower `a` served the same work than `b`:
/// the median and 99th percentile of the differences (ms; negative is
/// faster) and the share of requests more than 10 ms slower and faster.
fn paired(a: &Result_, b: &Result_) -> Option<(f64, f64, f64, f64)> {
    if a.latencies.len() != b.latencies.len() {
        return None;
    }
    let mut diffs: Vec<f64> = a
        .latencies
        .iter()
        .zip(&b.latencies)
        .filter_map(|(x, y)| Some(ms((*x)?) - ms((*y)?)))
        .collect();
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((q * diffs.len() as f64).ceil() as usize).clamp(1, diffs.len()) - 1];
    let share = |f: &dyn Fn(f64) -> bool| {
        diffs.iter().filter(|d| f(**d)).count() as f64 / diffs.len() as f64
    };
    Some((
        at(0.5),
        at(0.99),
        share(&|d| d > 10.0),
        share(&|d| d < -10.0),
    ))
}

fn report(results: &[Result_], setup: &Setup) {
    let find = |k: Kind| results.iter().find(|r| r.kind == k);
    let ratio = |v: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}", v / b),
        _ => "-".to_owned(),
    };
    let dyn_ = find(Kind::Dynamic);
    let sta = find(Kind::Static);
    println!();
    println!("| contender | requests | failed | p50 | p99 | max | p99 per pool | memory (GiB·s) | max total PSS / budget | max workers | master changes | p99 first 5 s after changes | p99 ÷ dynamic | p99 ÷ static | mem·s ÷ dynamic | mem·s ÷ static |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let s = &r.summary;
        let p99 = ms(s.p99);
        let pools: Vec<String> = r
            .per_pool_p99
            .iter()
            .map(|(p, d)| format!("{p} {:.0}", ms(*d)))
            .collect();
        let workers: Vec<String> = r
            .max_workers
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        println!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.0} ms | {} ms | {:.1} | {:.0} / {:.0} MiB ({:.2}) | {} | {} | {} | {} | {} | {} | {} |",
            r.kind.name(),
            s.requests,
            s.failed,
            ms(s.p50),
            p99,
            ms(s.max),
            pools.join(", "),
            r.mem_seconds / f64::from(1u32 << 30),
            mib(r.max_pss),
            mib(setup.budget),
            r.max_pss as f64 / setup.budget as f64,
            workers.join(", "),
            r.changes.len(),
            r.after_change_p99
                .map(|d| format!("{:.0} ms", ms(d)))
                .unwrap_or_else(|| "-".to_owned()),
            ratio(p99, dyn_.map(|d| ms(d.summary.p99))),
            ratio(p99, sta.map(|d| ms(d.summary.p99))),
            ratio(r.mem_seconds, dyn_.map(|d| d.mem_seconds)),
            ratio(r.mem_seconds, sta.map(|d| d.mem_seconds)),
        );
    }
    for r in results {
        if !r.summary.failures.is_empty() {
            println!("- {} failures: {:?}", r.kind.name(), r.summary.failures);
        }
        if !r.changes.is_empty() {
            let each: Vec<String> = r
                .changes
                .iter()
                .zip(&r.after_change_each)
                .map(|((p, t), d)| format!("{p}@{:.1}s→p99 {:.0} ms", t.as_secs_f64(), ms(*d)))
                .collect();
            println!("- {} master changes: {}", r.kind.name(), each.join(", "));
        }
        if r.summary.max_send_lag > Duration::from_millis(50) {
            println!(
                "- {}: the load generator fell up to {:.0} ms behind its schedule (counted in latency)",
                r.kind.name(),
                ms(r.summary.max_send_lag)
            );
        }
        println!(
            "- {}: host load average {:.1} before, {:.1} after",
            r.kind.name(),
            r.load.0,
            r.load.1
        );
    }
    // The managers against php-fpm's own, on the same requests.
    for r in results
        .iter()
        .filter(|r| r.kind.manager_settings().is_some())
    {
        for base in [Kind::Static, Kind::Ondemand] {
            let Some(b) = find(base) else { continue };
            if let Some((p50, p99, slower, faster)) = paired(r, b) {
                println!(
                    "- {} against {} on the same requests: difference p50 {p50:+.1} ms, p99 {p99:+.1} ms; {:.1} % of requests more than 10 ms slower, {:.1} % more than 10 ms faster",
                    r.kind.name(),
                    base.name(),
                    100.0 * slower,
                    100.0 * faster
                );
            }
        }
    }
}

/// The simulator's figures for the same traces beside the real ones, and
/// every figure where the two differ by more than 2×.
/// Simulated times are shown from the end of the warm-up, as the real ones.
fn report_simulated(
    results: &[Result_],
    sims: &[simulated::Simulated],
    setup: &Setup,
    warmup: Duration,
) {
    println!("\nThe simulator on the same traces, calibrated from the app figures above:\n");
    println!("| contender | failed real / sim | p99 per pool real | p99 per pool sim | mem·s real / sim (GiB·s) | changes real / sim |");
    println!("|---|---|---|---|---|---|");
    let mut far = Vec::new();
    let mut check = |what: String, real: f64, sim: f64| {
        let (lo, hi) = (real.min(sim), real.max(sim));
        if hi > 2.0 * lo && hi - lo > 1e-9 {
            far.push(format!("{what}: real {real:.1}, simulated {sim:.1}"));
        }
    };
    for sim in sims {
        let name = sim.kind.name();
        let sim_p99: Vec<String> = setup
            .pools
            .iter()
            .zip(sim.p99_each())
            .map(|(p, d)| format!("{p} {:.0}", ms(d)))
            .collect();
        let Some(r) = results.iter().find(|r| r.kind == sim.kind) else {
            println!(
                "| {name} | - / {} of - / {} | not run | {} ms | - / {:.1} | - / {} |",
                sim.failed(),
                sim.requests(),
                sim_p99.join(", "),
                sim.mem_gib_seconds(),
                sim.changes(),
            );
            continue;
        };
        let real_p99: Vec<String> = r
            .per_pool_p99
            .iter()
            .map(|(p, d)| format!("{p} {:.0}", ms(*d)))
            .collect();
        let real_mem = r.mem_seconds / f64::from(1u32 << 30);
        println!(
            "| {name} | {} / {} of {} / {} | {} ms | {} ms | {:.1} / {:.1} | {} / {} |",
            r.summary.failed,
            sim.failed(),
            r.summary.requests,
            sim.requests(),
            real_p99.join(", "),
            sim_p99.join(", "),
            real_mem,
            sim.mem_gib_seconds(),
            r.changes.len(),
            sim.changes(),
        );
        for ((p, real), simd) in r.per_pool_p99.iter().zip(sim.p99_each()) {
            check(format!("{name} p99 of pool {p} (ms)"), ms(*real), ms(simd));
        }
        check(
            format!("{name} memory (GiB·s)"),
            real_mem,
            sim.mem_gib_seconds(),
        );
        // The share of requests that failed, once either side failed more
        // than 1 % (a handful of failures either way is no disagreement).
        let share = |failed: u64, of: u64| failed as f64 / of.max(1) as f64;
        let (real_share, sim_share) = (
            share(r.summary.failed, r.summary.requests),
            share(sim.failed(), sim.requests()),
        );
        if real_share.max(sim_share) > 0.01 {
            check(
                format!("{name} failed (% of requests)"),
                100.0 * real_share,
                100.0 * sim_share,
            );
        }
    }
    for sim in sims {
        let changes: Vec<String> = setup
            .pools
            .iter()
            .zip(&sim.pools)
            .flat_map(|(p, r)| {
                r.changes_detail.iter().map(move |c| {
                    let at = c.at_s - warmup.as_secs_f64();
                    format!("{p}@{at:.1}s {}→{} ({})", c.from, c.to, c.rule)
                })
            })
            .collect();
        if !changes.is_empty() {
            println!(
                "- simulated {} changes: {}",
                sim.kind.name(),
                changes.join(", ")
            );
        }
    }
    if far.is_empty() {
        println!(
            "- simulator and real run agree within 2× on every p99, memory and failure figure"
        );
    } else {
        println!("- differ by more than 2×: {}", far.join("; "));
    }
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn machine() -> String {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_default();
    let fpm = cmd_out(&fpm_testkit::php_fpm().display().to_string(), &["-v"]);
    let nginx = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{} vCPU, {:.0} GiB, {os}, Linux {}, {}, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem as f64 / 1024.0 / 1024.0,
        cmd_out("uname", &["-r"]),
        fpm.lines().next().unwrap_or(""),
        nginx
    )
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}
