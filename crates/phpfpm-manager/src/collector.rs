//! The collector: one task per pool that asks php-fpm for its status page and
//! ping, reads the pool's accept queue and its workers' CPU and memory from
//! the kernel, turns changes into events, and records everything in the
//! shared state. The interval adapts to load (fpm_core::watch), and a
//! circuit breaker leaves a failing pool alone for a while.
//!
//! Pools never wait for each other: each has its own task, and every request
//! is bounded by the pool's connect and total timeouts, so a pool that accepts
//! connections and never answers costs only its own task's time.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fpm_core::status::{parse_ping, parse_status, PoolStatus};
use fpm_core::watch::{next_interval, Circuit, Figures, IntervalPolicy, PoolEvent, Watcher};
use fpm_kernel::queue::{Listener, QueueReader};
use fpm_kernel::workers::{
    aggregate, cpu_percent, cpu_readings, sample_pool_with, CpuReading, MemoryDetail,
    PoolAggregate, SampleContext,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, Monitoring, Pool};
use crate::events::ManagerEvent;
use crate::fastcgi::{self, Timeouts};
use crate::opcache::{OpcacheProbe, OpcacheStats};
use crate::state::{AppState, ScrapeError};

/// How often a pool that answers its status page is also pinged.
const PING_EVERY: Duration = Duration::from_secs(30);

/// While a pool is down it is retried at least this often, so a pool that
/// is starting (or recovering) shows up within a second.
const DOWN_RETRY: Duration = Duration::from_secs(1);

/// Runs collections of `pool` until `cancel` fires: on the adaptive
/// interval, at once when kicked (a master started or changed), and at once
/// when the kernel's accept queue shows waiting connections.
pub async fn run_pool(pool: Pool, state: Arc<AppState>, cancel: CancellationToken) {
    let cfg = state.config();
    let mon = cfg.monitoring.clone();
    let kick = state.kick_handle(&pool.name);
    let mut c = PoolCollector::new(pool, state.clone(), &mon);
    let mut probe_tick = tokio::time::interval(mon.queue_probe_interval);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = Instant::now();
    let mut last = Instant::now() - mon.interval.busy;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
            _ = kick.notified() => {}
            _ = probe_tick.tick() => {
                // Something waits for a worker: look now, at most once per
                // busy interval (the queue read itself costs ~20 µs).
                if !(c.queue_waiting() && last.elapsed() >= mon.interval.busy) {
                    continue;
                }
            }
        }
        let started = Instant::now();
        let interval = tokio::select! {
            _ = cancel.cancelled() => break,
            i = c.collect() => i,
        };
        last = started;
        next = started + interval;
    }
}

/// Everything one pool's collector remembers between looks.
pub struct PoolCollector {
    pool: Pool,
    state: Arc<AppState>,
    probe: ProbeMarker,
    policy: IntervalPolicy,
    memory_interval: Duration,
    watcher: Watcher,
    circuit: Circuit,
    queue: Result<(QueueReader, Listener), String>,
    proc_ctx: Result<SampleContext, String>,
    prev_cpu: Option<(Vec<CpuReading>, Instant)>,
    last_memory: Option<(Instant, PoolAggregate)>,
    /// The pool's worker pids from the last status page.
    pool_pids: BTreeSet<u32>,
    last_views: Vec<crate::state::WorkerView>,
    last_ping: Option<(Instant, bool)>,
    advisor: Option<crate::advisor::Advisor>,
    /// Origin of the advisor's monotonic clock.
    born: Instant,
    opcache: OpcacheMode,
}

/// How this pool's OPcache is read.
enum OpcacheMode {
    Off,
    /// The pool's own settings switch OPcache off (the status listener,
    /// which runs the probe, would not see that: it ignores php values).
    DisabledByPool,
    Probe(Box<OpcacheProbe>),
    Failed(Arc<crate::opcache::OpcacheError>),
}

impl PoolCollector {
    pub fn new(pool: Pool, state: Arc<AppState>, mon: &Monitoring) -> PoolCollector {
        let queue = listener_of(&pool.endpoint).and_then(|l| {
            QueueReader::new(Duration::from_millis(500))
                .map(|r| (r, l))
                .map_err(|e| e.to_string())
        });
        PoolCollector {
            probe: ProbeMarker::new(),
            policy: mon.interval.clone(),
            memory_interval: mon.memory_interval,
            watcher: Watcher::new(u64::from(mon.respawn_storm_threshold)),
            circuit: Circuit::new(
                mon.circuit_failures,
                mon.circuit_cooldown,
                mon.circuit_cooldown * 10,
            ),
            queue,
            proc_ctx: SampleContext::from_host(Path::new("/proc")).map_err(|e| e.to_string()),
            prev_cpu: None,
            last_memory: None,
            pool_pids: BTreeSet::new(),
            last_views: Vec::new(),
            last_ping: None,
            advisor: match crate::advisor::Advisor::new(&pool) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(
                        pool = pool.name.as_str(),
                        "No autoscaler advice for this pool: {e}."
                    );
                    None
                }
            },
            born: Instant::now(),
            opcache: opcache_mode(&pool, mon, &state),
            pool,
            state,
        }
    }

    /// Reads the accept queue; true when connections are waiting.
    pub fn queue_waiting(&mut self) -> bool {
        let q = self.read_queue();
        let waiting = matches!(q, Ok((n, _)) if n > 0);
        self.state
            .update(&self.pool.name, |s| s.kernel.accept_queue = q);
        waiting
    }

    fn read_queue(&mut self) -> Result<(u32, Option<u32>), String> {
        match &mut self.queue {
            Ok((reader, listener)) => reader
                .accept_queue(listener)
                .map(|q| (q.current, q.limit))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        }
    }

    /// One look at the pool; returns how long to wait before the next one.
    pub async fn collect(&mut self) -> Duration {
        let name = self.pool.name.clone();
        let now_ms = epoch_ms();
        if !self.circuit.allow(now_ms) {
            // Left alone while the circuit is open; the queue is still read.
            let q = self.read_queue();
            self.state.update(&name, |s| {
                s.kernel.accept_queue = q;
                s.circuit_open = true;
            });
            return DOWN_RETRY;
        }
        let started = Instant::now();
        let status = fetch_status(&self.pool, &self.probe).await;
        // The ping goes to the same listener as the status page, so a status
        // page that answered says as much; ping again only when it did not,
        // or every PING_EVERY (it is what readiness reports).
        let ping_due = status.is_err()
            || self
                .last_ping
                .is_none_or(|(at, ok)| !ok || at.elapsed() >= PING_EVERY);
        let ping_ok = if ping_due {
            let ok = ping(&self.pool).await;
            self.last_ping = Some((Instant::now(), ok));
            ok
        } else {
            true
        };
        let counters = status.as_ref().ok().map(|st| {
            (
                st.start_time,
                st.accepted_conn,
                st.max_children_reached,
                st.slow_requests,
            )
        });
        if let Ok(st) = &status {
            // The master's children include the workers of the hidden status
            // pool (pm.status_listen); the status page names the pool's own.
            self.pool_pids = st.processes.iter().map(|p| p.pid).collect();
        }
        let recorded = record(
            &self.pool,
            &self.state,
            &self.probe,
            status,
            ping_ok,
            started,
        );
        let ok = recorded.up;
        let mut events: Vec<PoolEvent> = recorded.event.into_iter().collect();
        if let Some(ev) = self.circuit.record(ok, now_ms) {
            events.push(ev);
        }

        // The kernel's view: the listen backlog, then the workers.
        let queue = self.read_queue();
        let master = self
            .state
            .pools()
            .get(&name)
            .and_then(|s| s.master.pid)
            .or_else(|| self.pool_pids.first().copied().and_then(parent_of));
        let (workers, per_worker) = match (&self.proc_ctx, master) {
            (Err(e), _) => (Err(e.clone()), Vec::new()),
            (Ok(_), None) => (Err("master pid unknown".to_owned()), Vec::new()),
            (Ok(ctx), Some(master)) => match self.sample_workers(*ctx, master).await {
                Ok((agg, views)) => (Ok(agg), views),
                Err(e) => (Err(e), Vec::new()),
            },
        };

        let (busy, total) = self
            .state
            .pools()
            .get(&name)
            .map(|s| (s.derived.active, s.derived.total))
            .unwrap_or((0, 0));
        if let Some((start_time, accepted, reached, slow)) = counters {
            let max_children = self.pool.spec.as_ref().map(|s| u64::from(s.max_children));
            events.extend(self.watcher.observe(Figures {
                at_ms: now_ms,
                start_time,
                accepted_conn: accepted,
                max_children_reached: reached,
                slow_requests: slow,
                busy,
                total,
                max_children,
                queue: queue.as_ref().ok().map(|(n, _)| *n),
                worker_pids: self.pool_pids.clone(),
                worker_exits: crate::supervisor::child::worker_exits(&name),
            }));
        }
        let waiting = queue.as_ref().map(|(n, _)| *n).unwrap_or(0);
        let utilization = (total > 0).then(|| busy as f64 / total as f64);
        let mut interval = if ok {
            next_interval(&self.policy, utilization, waiting)
        } else {
            self.policy.normal.min(DOWN_RETRY)
        };
        if events.iter().any(PoolEvent::wants_collection) {
            interval = interval.min(self.policy.busy);
        }
        let opcache = if ok { self.read_opcache().await } else { None };
        let circuit_open = self.circuit.is_open();
        self.state.update(&name, |s| {
            if opcache.is_some() {
                s.opcache = opcache;
            }
            s.kernel.accept_queue = queue;
            s.kernel.workers = workers;
            s.kernel.per_worker = per_worker;
            s.interval = interval;
            s.circuit_open = circuit_open;
        });
        for ev in &events {
            self.state
                .events
                .emit(ManagerEvent::from_pool(name.as_str(), ev));
        }
        if ok {
            self.advise(&name);
        }
        let samples = self
            .state
            .pools()
            .get(&name)
            .map(history_samples)
            .unwrap_or_default();
        self.state.store(now_ms as i64, samples);
        interval
    }

    /// Samples the master and its workers (off the async threads: reading
    /// `smaps_rollup` of many workers takes milliseconds).
    async fn sample_workers(
        &mut self,
        ctx: SampleContext,
        master: u32,
    ) -> Result<(PoolAggregate, Vec<crate::state::WorkerView>), String> {
        let with_memory = self
            .last_memory
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= self.memory_interval);
        let detail = if with_memory {
            MemoryDetail::SmapsRollup
        } else {
            MemoryDetail::Skip
        };
        let mut sample = tokio::task::spawn_blocking(move || {
            sample_pool_with(Path::new("/proc"), master, &ctx, SystemTime::now(), detail)
        })
        .await
        .map_err(|e| format!("sampling task failed: {e}"))?;
        if !self.pool_pids.is_empty() {
            sample
                .workers
                .retain(|w| self.pool_pids.contains(&w.key.pid));
        }
        if let Err(reason) = &sample.master {
            return Err(format!("master {master}: {reason}"));
        }
        let now = Instant::now();
        let readings = cpu_readings(&sample);
        let rates = match &self.prev_cpu {
            Some((prev, at)) => cpu_percent(
                prev,
                &readings,
                now.duration_since(*at),
                self.proc_ctx.as_ref().map(|c| c.clk_tck).unwrap_or(100),
            ),
            None => Vec::new(),
        };
        self.prev_cpu = Some((readings, now));
        let mut agg = aggregate(&sample, &rates);
        let prev_memory: std::collections::HashMap<u32, (u64, u64, u64)> = self
            .last_views
            .iter()
            .filter_map(|w| Some((w.pid, (w.rss_bytes?, w.pss_bytes?, w.uss_bytes?))))
            .collect();
        let views: Vec<crate::state::WorkerView> = sample
            .workers
            .iter()
            .map(|w| {
                let mem = w.memory.as_ref().ok().map(|m| (m.rss, m.pss, m.uss));
                // Memory is read less often than CPU: keep the last reading.
                let mem = mem.or_else(|| prev_memory.get(&w.key.pid).copied());
                crate::state::WorkerView {
                    pid: w.key.pid,
                    proc_state: w.state,
                    age_secs: w.age.map(|a| a.as_secs()),
                    cpu_percent: rates
                        .iter()
                        .find(|(k, _)| *k == w.key)
                        .and_then(|(_, r)| *r),
                    rss_bytes: mem.map(|m| m.0).or(Some(w.stat_rss_bytes)),
                    pss_bytes: mem.map(|m| m.1),
                    uss_bytes: mem.map(|m| m.2),
                }
            })
            .collect();
        self.last_views = views.clone();
        match (&self.last_memory, with_memory) {
            (_, true) => self.last_memory = Some((now, agg.clone())),
            // Memory is read less often: carry the last figures forward.
            (Some((_, mem)), false) => {
                agg.pss = mem.pss;
                agg.rss = mem.rss;
                agg.uss = mem.uss;
                agg.master_memory = mem.master_memory;
                agg.total_pss = mem.total_pss;
            }
            (None, false) => {}
        }
        Ok((agg, views))
    }
}

impl PoolCollector {
    /// Feeds the look just recorded to the advisor and stores its advice.
    fn advise(&mut self, name: &fpm_core::PoolName) {
        let Some(advisor) = self.advisor.as_mut() else {
            return;
        };
        let budget = self
            .state
            .host
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|b| b.as_ref().ok())
            .and_then(|b| b.memory_limit);
        let now_ms = self.born.elapsed().as_millis() as u64 + 1;
        let advice = {
            let pools = self.state.pools();
            let Some(s) = pools.get(name) else { return };
            let Some(status) = &s.status else { return };
            let queue = s.kernel.accept_queue.as_ref().map(|q| q.0).unwrap_or(0);
            let shared = s
                .kernel
                .workers
                .as_ref()
                .ok()
                .and_then(|a| a.master_memory.map(|m| m.pss))
                .unwrap_or(0);
            advisor.observe(&crate::advisor::Look {
                now_ms,
                status,
                derived: s.derived,
                queue,
                workers: &s.kernel.per_worker,
                memory_budget: budget,
                shared_memory: shared,
            })
        };
        self.state.update(name, |s| s.advice = Some(advice));
    }

    async fn read_opcache(
        &self,
    ) -> Option<Result<OpcacheStats, Arc<crate::opcache::OpcacheError>>> {
        match &self.opcache {
            OpcacheMode::Off => None,
            OpcacheMode::DisabledByPool => {
                Some(Err(Arc::new(crate::opcache::OpcacheError::Disabled {
                    reason: "opcache.enable is off in the pool's php values".to_owned(),
                })))
            }
            OpcacheMode::Failed(e) => Some(Err(e.clone())),
            // Through the status listener: the probe's requests then never
            // count in the pool's `accepted conn`, and it answers while every
            // worker is busy.
            OpcacheMode::Probe(probe) => Some(
                crate::opcache::collect(&self.pool.status_endpoint, probe, timeouts(&self.pool))
                    .await
                    .map_err(Arc::new),
            ),
        }
    }
}

fn opcache_mode(pool: &Pool, mon: &Monitoring, state: &AppState) -> OpcacheMode {
    let Some(spec) = &pool.spec else {
        // Observed pools run someone else's config and user; the probe
        // would need to be readable by them. Supervised pools only.
        return OpcacheMode::Off;
    };
    if !mon.enable_opcache {
        return OpcacheMode::Off;
    }
    let values = spec
        .php_values
        .iter()
        .chain(&spec.php_admin_values)
        .map(|(k, v)| (k.as_str(), v.as_str()));
    if crate::opcache::disabled_by_pool_ini(values) {
        return OpcacheMode::DisabledByPool;
    }
    let dir = state.config().phpfpm.runtime_dir.join("opcache");
    match OpcacheProbe::create(&dir) {
        Ok(p) => OpcacheMode::Probe(Box::new(p)),
        Err(e) => {
            tracing::warn!(
                pool = pool.name.as_str(),
                "Cannot create the OPcache probe: {e}."
            );
            OpcacheMode::Failed(Arc::new(crate::opcache::OpcacheError::ProbeUnavailable(
                e.to_string(),
            )))
        }
    }
}

/// What is kept in history for a pool after each look: the figures people
/// ask "what happened at 03:12?" about. Named like the `/metrics` series.
pub fn history_samples(s: &crate::state::PoolState) -> Vec<fpm_storage::Sample> {
    use fpm_storage::Sample;
    let labels = || vec![("pool".to_owned(), s.name.to_string())];
    let mut out = vec![Sample::gauge(
        "phpfpm_up",
        labels(),
        if s.up { 1.0 } else { 0.0 },
    )];
    if let (true, Some(st)) = (s.up, &s.status) {
        out.extend([
            Sample::counter(
                "phpfpm_accepted_connections",
                labels(),
                st.accepted_conn as f64,
            ),
            Sample::counter(
                "phpfpm_max_children_reached",
                labels(),
                st.max_children_reached as f64,
            ),
            Sample::counter("phpfpm_slow_requests", labels(), st.slow_requests as f64),
            Sample::gauge("phpfpm_listen_queue", labels(), st.listen_queue as f64),
            Sample::gauge("phpfpm_active_processes", labels(), s.derived.active as f64),
            Sample::gauge("phpfpm_idle_processes", labels(), s.derived.idle as f64),
            Sample::gauge("phpfpm_total_processes", labels(), s.derived.total as f64),
        ]);
    }
    if let Ok((q, _)) = s.kernel.accept_queue {
        out.push(Sample::gauge(
            "phpfpm_manager_accept_queue",
            labels(),
            f64::from(q),
        ));
    }
    if let Ok(agg) = &s.kernel.workers {
        if let Some(cpu) = agg.cpu_percent_total {
            out.push(Sample::gauge(
                "phpfpm_manager_worker_cpu_percent",
                labels(),
                cpu,
            ));
        }
        if let Some(p) = agg.pss {
            out.push(Sample::gauge(
                "phpfpm_manager_worker_pss_bytes",
                labels(),
                p.sum as f64,
            ));
            out.push(Sample::gauge(
                "phpfpm_manager_worker_pss_p95_bytes",
                labels(),
                p.p95 as f64,
            ));
        }
        if let Some(t) = agg.total_pss {
            out.push(Sample::gauge(
                "phpfpm_manager_pool_pss_bytes",
                labels(),
                t as f64,
            ));
        }
    }
    if let Some(Ok(oc)) = &s.opcache {
        if let Some(rate) = oc.hit_rate {
            out.push(Sample::gauge(
                "phpfpm_manager_opcache_hit_rate",
                labels(),
                rate,
            ));
        }
    }
    out
}

/// Where the kernel's accept queue of an endpoint is read.
fn listener_of(ep: &Endpoint) -> Result<Listener, String> {
    match ep {
        Endpoint::Unix(p) => Ok(Listener::UnixPath(p.clone())),
        Endpoint::Tcp(addr) => addr
            .parse::<std::net::SocketAddr>()
            .map(Listener::Tcp)
            .map_err(|_| format!("{addr} is not an IP address and port; the kernel queue is read only for local listeners")),
    }
}

/// The parent of a worker: its master.
fn parent_of(pid: u32) -> Option<u32> {
    fpm_kernel::procfs::read_stat(pid).map(|st| st.ppid)
}

fn epoch_ms() -> u64 {
    crate::events::unix_ms(SystemTime::now()) as u64
}

/// A random token added to the status request's query string, so the worker
/// serving it can be recognised in the process list and not counted as load.
#[derive(Debug, Clone)]
pub struct ProbeMarker(String);

impl ProbeMarker {
    pub fn new() -> ProbeMarker {
        let mut bytes = [0u8; 8];
        // Without randomness the marker is still unique enough per process.
        if getrandom::fill(&mut bytes).is_err() {
            bytes = u64::from(std::process::id()).to_le_bytes();
        }
        ProbeMarker(format!(
            "pfm={}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }

    pub fn query(&self) -> String {
        format!("json&full&{}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ProbeMarker {
    fn default() -> Self {
        ProbeMarker::new()
    }
}

/// Consecutive failures of a pool that was never up before a warning is
/// logged: a pool whose master is still starting fails its first attempts.
const WARN_AFTER_FAILURES: u64 = 3;

/// One collection: status page, then ping, then one state update.
/// Returns whether the status page was read.
pub async fn collect_once(pool: &Pool, state: &AppState, probe: &ProbeMarker) -> bool {
    let started = Instant::now();
    // One after the other: on a pool without a status listener both requests
    // need a worker, and the ping must not show up as load in the status.
    let status = fetch_status(pool, probe).await;
    let ping_ok = ping(pool).await;
    record(pool, state, probe, status, ping_ok, started).up
}

fn timeouts(pool: &Pool) -> Timeouts {
    Timeouts {
        connect: pool.connect_timeout,
        total: pool.request_timeout,
    }
}

/// Requests and parses the status page.
pub async fn fetch_status(pool: &Pool, probe: &ProbeMarker) -> Result<PoolStatus, ScrapeError> {
    let reply = fastcgi::get(
        &pool.status_endpoint,
        &pool.status_path,
        &probe.query(),
        timeouts(pool),
    )
    .await
    .map_err(|e| ScrapeError {
        kind: e.kind(),
        message: e.to_string(),
    })?;
    parse_status(&reply.stdout).map_err(|e| ScrapeError {
        kind: e.kind(),
        message: with_stderr(e.to_string(), &reply.stderr),
    })
}

/// Does the pool answer its ping path with the expected response?
pub async fn ping(pool: &Pool) -> bool {
    match fastcgi::get(&pool.status_endpoint, &pool.ping_path, "", timeouts(pool)).await {
        Ok(reply) => parse_ping(&reply.stdout, &pool.ping_response).is_ok(),
        Err(_) => false,
    }
}

/// Records one collection's outcome in the state and metrics; returns
/// whether the status page was read.
pub fn record(
    pool: &Pool,
    state: &AppState,
    probe: &ProbeMarker,
    status: Result<PoolStatus, ScrapeError>,
    ping_ok: bool,
    started: Instant,
) -> Recorded {
    let elapsed = started.elapsed();
    let name = pool.name.as_str();
    state
        .metrics
        .scrape_duration
        .with_label_values(&[name])
        .observe(elapsed.as_secs_f64());

    match status {
        Ok(st) => {
            let derived = st.derived(Some(probe.as_str()));
            let recovered = state
                .update(&pool.name, |s| {
                    let recovered =
                        (!s.up && s.scrape_failures > 0).then_some(s.consecutive_failures);
                    s.up = true;
                    s.consecutive_failures = 0;
                    s.ping_ok = ping_ok;
                    s.last_error = None;
                    s.derived = derived;
                    s.status = Some(st);
                    s.last_success = Some(SystemTime::now());
                    recovered
                })
                .flatten();
            if recovered.is_some() {
                tracing::info!(pool = name, "Pool answers its status page.");
            }
            Recorded {
                up: true,
                event: recovered
                    .map(|after_failures| PoolEvent::ScrapeRecovered { after_failures }),
            }
        }
        Err(err) => {
            state
                .metrics
                .scrape_errors
                .with_label_values(&[name, err.kind])
                .inc();
            let first = state
                .update(&pool.name, |s| {
                    s.consecutive_failures += 1;
                    let first = s.up
                        || (s.last_success.is_none()
                            && s.consecutive_failures == WARN_AFTER_FAILURES);
                    s.up = false;
                    s.ping_ok = ping_ok;
                    s.scrape_failures += 1;
                    s.last_error = Some(err.clone());
                    first
                })
                .unwrap_or(false);
            // Log (and report) the transition, not every failed tick of a
            // long outage.
            if first {
                tracing::warn!(
                    pool = name,
                    kind = err.kind,
                    "Pool status collection failed: {}.",
                    err.message
                );
            } else {
                tracing::debug!(
                    pool = name,
                    kind = err.kind,
                    "Pool status collection failed: {}.",
                    err.message
                );
            }
            Recorded {
                up: false,
                event: first.then(|| PoolEvent::ScrapeFailing {
                    kind: err.kind.to_owned(),
                    message: err.message,
                }),
            }
        }
    }
}

/// What [`record`] did: whether the status page was read, and the event
/// when the pool just started failing or answers again.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub up: bool,
    pub event: Option<PoolEvent>,
}

/// php-fpm explains some failures on stderr ("Primary script unknown").
fn with_stderr(msg: String, stderr: &[u8]) -> String {
    let extra = String::from_utf8_lossy(stderr);
    let extra = extra.trim();
    if extra.is_empty() {
        msg
    } else {
        format!(
            "{msg} (php-fpm stderr: {})",
            extra.chars().take(200).collect::<String>()
        )
    }
}
