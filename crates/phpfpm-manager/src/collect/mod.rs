//! The collector: one task per pool that asks php-fpm for its status page and
//! ping, reads the pool's accept queue and its workers' CPU and memory from
//! the kernel, turns changes into events, and publishes one immutable
//! [`Look`] per look. It keeps what it needs between looks in its own
//! fields and never reads back what it published. The interval adapts to
//! load (fpm_core::watch), and a circuit breaker leaves a failing pool
//! alone for a while.
//!
//! Pools never wait for each other: each has its own task, and every request
//! is bounded by the pool's connect and total timeouts, so a pool that accepts
//! connections and never answers costs only its own task's time.

mod extra;
pub mod stall;
mod trace;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fpm_core::status::{parse_ping, parse_status, Derived, PoolStatus};
use fpm_core::watch::{next_interval, Circuit, Figures, IntervalPolicy, PoolEvent, Watcher};
use fpm_kernel::queue::{Listener, QueueReader};
use fpm_kernel::workers::{
    aggregate, cpu_percent, cpu_readings, sample_pool_with, CpuReading, MemoryDetail,
    PoolAggregate, SampleContext,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{Endpoint, Monitoring, Pool};
use crate::events::ManagerEvent;
use crate::fastcgi::{self, Timeouts};
use crate::opcache::{
    OpcacheError, OpcacheProbe, OpcacheStats, PoolFacts, ProbeBackoff, ProbeCount, Route,
};
use crate::state::{AppState, KernelView, Look, ScrapeError};
use crate::surface::metrics::Metrics;
use crate::surface::names;

/// How often a pool that answers its status page is also pinged.
const PING_EVERY: Duration = Duration::from_secs(30);

/// For this long after a master starts, its workers' memory is read at
/// least every [`YOUNG_MEMORY_INTERVAL`].
const YOUNG_MASTER: Duration = Duration::from_secs(60);
const YOUNG_MEMORY_INTERVAL: Duration = Duration::from_secs(5);

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
    /// The master whose workers' memory is read, and since when.
    memory_master: Option<(u32, Instant)>,
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
    opcache: OpcacheMode,
    /// How the probe reaches the pool (main socket: its requests are taken
    /// out of `accepted conn`, see `probe_count`).
    opcache_route: Route,
    /// After a failed probe, when to try again.
    opcache_backoff: ProbeBackoff,
    probe_count: ProbeCount,
    /// The master the probe last went to: a new one is probed at once.
    opcache_master: Option<u32>,
    /// An observed pool's config, judged for the probe, per master pid.
    assessed: Option<(u32, Result<(), Arc<OpcacheError>>)>,
    /// The kind of the last OPcache error logged, so each is logged once.
    opcache_logged: Option<&'static str>,
    /// The last OPcache reading, kept while the pool is not read.
    last_opcache: Option<Result<OpcacheStats, Arc<OpcacheError>>>,
    tally: Tally,
    /// Adds a second master's page to the first one's (additive scale-up).
    combined: extra::Combined,
    stall: stall::StallDetector,
    seq: u64,
    /// The last look with a status page (shared with the state, not
    /// copied): its values stand in for values a later page had to drop.
    last_good: Option<Arc<Look>>,
}

/// How this pool's OPcache is read.
enum OpcacheMode {
    Off,
    /// The pool's own settings switch OPcache off (the status listener,
    /// which runs the probe, would not see that: it ignores php values).
    DisabledByPool,
    Probe(Arc<OpcacheProbe>),
    Failed(Arc<OpcacheError>),
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
            memory_master: None,
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
            opcache: opcache_mode(&pool, mon, &state),
            opcache_route: if pool.status_endpoint == pool.endpoint {
                Route::MainSocket
            } else {
                Route::StatusListener
            },
            opcache_backoff: ProbeBackoff::default(),
            probe_count: ProbeCount::default(),
            opcache_master: None,
            assessed: None,
            opcache_logged: None,
            last_opcache: None,
            tally: Tally::default(),
            combined: extra::Combined::default(),
            stall: stall::StallDetector::new(mon.stall_after),
            seq: 0,
            last_good: None,
            pool,
            state,
        }
    }

    /// Reads the accept queue; true when connections are waiting.
    pub fn queue_waiting(&mut self) -> bool {
        matches!(self.read_queue(), Ok((n, _)) if n > 0)
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
    #[tracing::instrument(name = "collect", skip_all, fields(
        pool = %self.pool.name, seq = tracing::field::Empty, up = tracing::field::Empty,
        circuit_open = tracing::field::Empty, interval_ms = tracing::field::Empty,
        workers.busy = tracing::field::Empty, workers.total = tracing::field::Empty,
        queue = tracing::field::Empty, scrape.error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    ))]
    pub async fn collect(&mut self) -> Duration {
        let name = self.pool.name.clone();
        let now_ms = epoch_ms();
        let at = SystemTime::now();
        self.seq += 1;
        if !self.circuit.allow(now_ms) {
            // Left alone while the circuit is open; the queue is still read.
            let q = self.read_queue();
            let mut look = self.tally.look(self.seq, at, None, Derived::default());
            look.kernel.accept_queue = q;
            look.circuit_open = true;
            look.interval = DOWN_RETRY;
            trace::record_look(&look);
            self.state.publish_look(&name, look);
            return DOWN_RETRY;
        }
        let started = Instant::now();
        let second = self
            .state
            .pools()
            .get(&name)
            .and_then(|p| p.master.extra.clone());
        let status = fetch_status(&self.pool, &self.probe)
            .instrument(tracing::info_span!("collect.status"))
            .await;
        // A second master on the pool's socket has its own scoreboard.
        let status = match (status, &second) {
            (Ok(first), Some(x)) => {
                let page =
                    fetch_status_at(&self.pool, &Endpoint::Unix(x.status.clone()), &self.probe)
                        .instrument(tracing::info_span!("collect.status"))
                        .await;
                if let Err(e) = &page {
                    tracing::debug!(
                        pool = name.as_str(),
                        pid = x.pid,
                        "The second master's status page is not readable: {}.",
                        e.message
                    );
                }
                Ok(self.combined.page(first, Some((x.pid, page.ok()))))
            }
            (Ok(first), None) => Ok(self.combined.page(first, None)),
            (Err(e), _) => Err(e),
        };
        // The ping goes to the same listener as the status page, so a status
        // page that answered says as much; ping again only when it did not,
        // or every PING_EVERY (it is what readiness reports).
        let ping_due = status.is_err()
            || self
                .last_ping
                .is_none_or(|(at, ok)| !ok || at.elapsed() >= PING_EVERY);
        let ping_ok = if ping_due {
            let ok = ping(&self.pool)
                .instrument(tracing::info_span!("collect.ping"))
                .await;
            self.last_ping = Some((Instant::now(), ok));
            ok
        } else {
            true
        };
        if let Ok(st) = &status {
            // The master's children include the workers of the hidden status
            // pool (pm.status_listen); the status page names the pool's own.
            self.pool_pids = st.processes.iter().map(|p| p.pid).collect();
        }
        let (status, event) = self.tally.record(
            name.as_str(),
            &self.state.metrics,
            status,
            ping_ok,
            started.elapsed(),
            self.last_good.as_ref().and_then(|l| l.status.as_ref()),
        );
        let mut status = status;
        if let Some(st) = status.as_mut() {
            self.without_probes(st);
        }
        let ok = status.is_some();
        let derived = status
            .as_ref()
            .map(|st| st.derived(Some(self.probe.as_str())))
            .unwrap_or_default();
        let mut events: Vec<PoolEvent> = event.into_iter().collect();
        if let Some(ev) = self.circuit.record(ok, now_ms) {
            events.push(ev);
        }

        // The kernel's view: the listen backlog, then the workers. The
        // master's pid is the supervisor's part of the state.
        let queue = tracing::info_span!("collect.queue").in_scope(|| self.read_queue());
        let (master, max_children) = {
            let pools = self.state.pools();
            let s = pools.get(&name);
            (
                s.and_then(|s| s.master.pid),
                s.and_then(|s| s.running_spec())
                    .map(|spec| u64::from(spec.max_children)),
            )
        };
        let master = master.or_else(|| self.pool_pids.first().copied().and_then(parent_of));
        let (workers, per_worker) = match (&self.proc_ctx, master) {
            (Err(e), _) => (Err(e.clone()), Vec::new()),
            (Ok(_), None) => (Err("master pid unknown".to_owned()), Vec::new()),
            (Ok(ctx), Some(master)) => match self
                .sample_workers(*ctx, master, second.as_ref().map(|x| x.pid))
                .instrument(tracing::info_span!("collect.proc"))
                .await
            {
                Ok((agg, views)) => (Ok(agg), views),
                Err(e) => (Err(e), Vec::new()),
            },
        };

        // Is the master making progress? Its hidden status pool answers
        // even when it is stopped or hung (see `stall`).
        let signs = stall::Signs {
            master_pid: master,
            master_state: master
                .and_then(fpm_kernel::procfs::read_stat)
                .map(|st| st.state),
            queue: queue.as_ref().ok().map(|(n, _)| *n),
            accepted: status.as_ref().map(|st| st.accepted_conn),
            idle: status.as_ref().map(|_| derived.idle),
            live_workers: workers.is_ok().then(|| {
                per_worker
                    .iter()
                    .filter(|w| !matches!(w.proc_state, 'Z' | 'X'))
                    .count()
            }),
        };
        let (stalled, stall_change) = self.stall.observe(&signs, now_ms);
        self.report_stall(stall_change);

        let (busy, total) = (derived.active, derived.total);
        // A page with a since-start counter dropped would read as a reset:
        // events skip that look and compare the next with the last.
        if let Some(st) = status.as_ref().filter(|st| !st.counters_dropped()) {
            events.extend(self.watcher.observe(Figures {
                at_ms: now_ms,
                start_time: st.start_time,
                accepted_conn: st.accepted_conn,
                max_children_reached: st.max_children_reached,
                slow_requests: st.slow_requests,
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
        if events.iter().any(PoolEvent::wants_collection) || self.stall.watching() {
            interval = interval.min(self.policy.busy);
        }
        if ok {
            // A probe through the main socket needs a free worker; with
            // none, it would wait in the queue until its timeout.
            let busy = derived.idle == 0 || waiting > 0;
            if let Some(oc) = self
                .read_opcache(master, busy)
                .instrument(tracing::info_span!("collect.opcache"))
                .await
            {
                self.last_opcache = Some(oc);
            }
        }
        let mut look = self.tally.look(self.seq, at, status, derived);
        look.kernel = KernelView {
            accept_queue: queue,
            workers,
            per_worker,
        };
        look.interval = interval;
        look.circuit_open = self.circuit.is_open();
        look.opcache = if ok { self.last_opcache.clone() } else { None };
        look.stalled = stalled;
        trace::record_look(&look);
        let samples = history_samples(&name, &look, max_children);
        let published = self.state.publish_look(&name, look);
        if published.status.is_some() {
            self.last_good = Some(published);
        }
        for ev in &events {
            self.state
                .events
                .emit(ManagerEvent::from_pool(name.as_str(), ev));
        }
        self.state.store(now_ms as i64, samples);
        interval
    }

    /// Logs and records a stall that began or ended.
    fn report_stall(&self, change: Option<stall::Change>) {
        let (st, action, stalled_ms) = match change {
            None => return,
            Some(stall::Change::Detected(st)) => {
                let ms = epoch_ms().saturating_sub(st.since_ms);
                (st, "detected", ms)
            }
            Some(stall::Change::Recovered {
                stalled,
                stalled_ms,
            }) => (stalled, "recovered", stalled_ms),
        };
        self.state.events.emit(ManagerEvent::new(
            Some(self.pool.name.as_str()),
            "collector",
            crate::events::What::MasterStall {
                pid: st.pid,
                reason: st.reason.as_str(),
                action,
                stalled_ms,
            },
        ));
    }

    /// Samples the master and its workers (off the async threads: reading
    /// `smaps_rollup` of many workers takes milliseconds).
    async fn sample_workers(
        &mut self,
        ctx: SampleContext,
        master: u32,
        second: Option<u32>,
    ) -> Result<(PoolAggregate, Vec<crate::state::WorkerView>), String> {
        // A new master's workers grow to their working size with their
        // first requests, and the autoscaler sizes the budget by them: read
        // memory every few seconds for the first minute of a master.
        // A second master is as young as its workers.
        let newest = second.unwrap_or(master);
        if self.memory_master.is_none_or(|(pid, _)| pid != newest) {
            self.memory_master = Some((newest, Instant::now()));
        }
        let young = self
            .memory_master
            .is_some_and(|(_, since)| since.elapsed() < YOUNG_MASTER);
        let every = if young {
            self.memory_interval.min(YOUNG_MEMORY_INTERVAL)
        } else {
            self.memory_interval
        };
        let with_memory = self
            .last_memory
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= every);
        let detail = if with_memory {
            MemoryDetail::SmapsRollup
        } else {
            MemoryDetail::Skip
        };
        let mut sample = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            let mut sample = sample_pool_with(Path::new("/proc"), master, &ctx, now, detail);
            // The second master's workers are the pool's too.
            if let Some(second) = second {
                let more = sample_pool_with(Path::new("/proc"), second, &ctx, now, detail);
                sample.workers.extend(more.workers);
            }
            sample
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
    /// Takes the OPcache probe's own requests out of `accepted conn` when
    /// they go through the pool's main socket (php-fpm counts them). A
    /// value carried from the last page was adjusted already.
    fn without_probes(&mut self, st: &mut PoolStatus) {
        let probing = matches!(self.opcache, OpcacheMode::Probe(_));
        let carried = st.dropped.iter().any(|d| d.field == "accepted conn");
        if self.opcache_route == Route::MainSocket && probing && !carried {
            st.accepted_conn = self.probe_count.adjust(st.start_time, st.accepted_conn);
        }
    }

    /// Reads OPcache, or returns None when it is not read this look (off,
    /// backing off after a failure, or no free worker on the main socket);
    /// the last reading then stands.
    async fn read_opcache(
        &mut self,
        master: Option<u32>,
        busy: bool,
    ) -> Option<Result<OpcacheStats, Arc<OpcacheError>>> {
        let probe = match &self.opcache {
            OpcacheMode::Off => return None,
            OpcacheMode::DisabledByPool => {
                return Some(Err(Arc::new(OpcacheError::Disabled {
                    reason: "opcache.enable is off in the pool's php values".to_owned(),
                })))
            }
            OpcacheMode::Failed(e) => return Some(Err(e.clone())),
            OpcacheMode::Probe(probe) => probe.clone(),
        };
        if master != self.opcache_master {
            // A new master (a restart, a hand-over): whatever kept the probe
            // out may have changed with it.
            self.opcache_master = master;
            self.opcache_backoff.succeeded();
        }
        if self.pool.spec.is_none() {
            if let Some(pid) = master {
                if self.assessed.as_ref().map(|(p, _)| *p) != Some(pid) {
                    let verdict = self.assess_observed(pid, probe.path()).await;
                    self.assessed = Some((pid, verdict));
                }
            }
            if let Some((_, Err(e))) = &self.assessed {
                let e = e.clone();
                self.log_opcache_error(&e, None);
                return Some(Err(e));
            }
        }
        let now = epoch_ms();
        if !self.opcache_backoff.allows(now) {
            return None;
        }
        if self.opcache_route == Route::MainSocket && busy {
            return None;
        }
        let before = probe.requests_sent();
        // Through the status listener when the pool has one: the probe's
        // requests then never count in the pool's `accepted conn`, and it
        // answers while every worker is busy.
        let res = crate::opcache::collect_capped(
            &self.pool.status_endpoint,
            &probe,
            timeouts(&self.pool),
            self.pool.max_reply_bytes,
        )
        .await;
        if self.opcache_route == Route::MainSocket {
            self.probe_count
                .sent(probe.requests_sent().saturating_sub(before));
        }
        match res {
            Ok(stats) => {
                self.opcache_backoff.succeeded();
                if self.opcache_logged.take().is_some() {
                    tracing::info!(
                        pool = self.pool.name.as_str(),
                        "OPcache figures are readable again."
                    );
                }
                Some(Ok(stats))
            }
            Err(e) => {
                let e = Arc::new(crate::opcache::explain(e, probe.path()));
                let wait = self.opcache_backoff.failed(now);
                self.log_opcache_error(&e, Some(wait));
                Some(Err(e))
            }
        }
    }

    /// Logs an OPcache error once per kind (a warning), then at debug.
    fn log_opcache_error(&mut self, e: &OpcacheError, retry_in: Option<Duration>) {
        let pool = self.pool.name.as_str();
        let kind = e.kind();
        let retry = retry_in.map_or(String::new(), |d| {
            format!("; asking again in {}s", d.as_secs())
        });
        if self.opcache_logged == Some(kind) {
            tracing::debug!(pool, kind, "OPcache figures unavailable: {e}{retry}.");
        } else {
            self.opcache_logged = Some(kind);
            tracing::warn!(pool, kind, "OPcache figures unavailable: {e}{retry}.");
        }
    }

    /// Judges an observed pool's own settings for the probe, from the
    /// php-fpm config `phpfpm.global_config_path` names, else the one in
    /// the master's title. Nothing known (no config, unreadable, pool not
    /// found in it) is no objection: the probe is then sent and php-fpm's
    /// answer tells.
    async fn assess_observed(&self, master: u32, probe: &Path) -> Result<(), Arc<OpcacheError>> {
        let source = self
            .state
            .config()
            .phpfpm
            .global_config_path
            .clone()
            .or_else(|| {
                std::fs::read(format!("/proc/{master}/cmdline"))
                    .ok()
                    .and_then(|c| crate::opcache::config_in_title(&c))
            });
        let Some(main) = source else {
            return Ok(());
        };
        let name = self.pool.name.as_str().to_owned();
        let listen = match &self.pool.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp(a) => a.clone(),
        };
        let read = main.clone();
        let facts = tokio::task::spawn_blocking(move || {
            let model = fpm_import::read_config(&read, &fpm_import::ReadOptions::default())
                .map_err(|e| e.to_string())?;
            let def = model
                .pools
                .iter()
                .find(|p| p.name == name)
                .or_else(|| {
                    model
                        .pools
                        .iter()
                        .find(|p| p.get("listen").is_some_and(|d| d.value.trim() == listen))
                })
                .ok_or_else(|| "no pool of that name or address in it".to_owned())?;
            Ok::<_, String>(PoolFacts::from_def(def))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match facts {
            Ok(facts) => {
                crate::opcache::assess(&facts, probe, self.opcache_route).map_err(Arc::new)
            }
            Err(why) => {
                tracing::debug!(
                    pool = self.pool.name.as_str(),
                    "The pool's php-fpm config {} tells nothing about the OPcache probe ({why}); asking php-fpm.",
                    main.display()
                );
                Ok(())
            }
        }
    }
}

fn opcache_mode(pool: &Pool, mon: &Monitoring, state: &AppState) -> OpcacheMode {
    if !mon.enable_opcache {
        return OpcacheMode::Off;
    }
    if let Some(spec) = &pool.spec {
        let values = spec
            .php_values
            .iter()
            .chain(&spec.php_admin_values)
            .map(|(k, v)| (k.as_str(), v.as_str()));
        if crate::opcache::disabled_by_pool_ini(values) {
            return OpcacheMode::DisabledByPool;
        }
    }
    let runtime = state.config().phpfpm.runtime_dir.clone();
    if pool.spec.is_none() {
        // Observed pools only: nothing else may have made the runtime
        // directory yet. A pool's settings that keep the probe out are
        // judged per master (`assess_observed`).
        let created = runtime.is_dir()
            || std::fs::create_dir_all(&runtime)
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt as _;
                    // The pool's user must reach the probe inside, as with
                    // the directories the supervisor makes.
                    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755))
                })
                .is_ok();
        if !created {
            tracing::debug!(
                pool = pool.name.as_str(),
                "Cannot create the runtime directory {}.",
                runtime.display()
            );
        }
    }
    let dir = runtime.join("opcache");
    match OpcacheProbe::create(&dir) {
        Ok(p) => OpcacheMode::Probe(Arc::new(p)),
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
///
/// `max_children` is the running master's `pm.max_children` (supervised
/// pools), so history shows every change of the pool's size.
pub fn history_samples(
    pool: &fpm_core::PoolName,
    s: &Look,
    max_children: Option<u64>,
) -> Vec<fpm_storage::Sample> {
    use fpm_storage::Sample;
    let labels = || vec![("pool".to_owned(), pool.to_string())];
    let mut out = vec![Sample::gauge(
        names::UP,
        labels(),
        if s.up { 1.0 } else { 0.0 },
    )];
    if let (true, Some(st)) = (s.up, &s.status) {
        out.extend([
            Sample::counter(
                names::ACCEPTED_CONNECTIONS,
                labels(),
                st.accepted_conn as f64,
            ),
            Sample::counter(
                names::MAX_CHILDREN_REACHED,
                labels(),
                st.max_children_reached as f64,
            ),
            Sample::counter(names::SLOW_REQUESTS, labels(), st.slow_requests as f64),
            Sample::gauge(names::LISTEN_QUEUE, labels(), st.listen_queue as f64),
            Sample::gauge(names::ACTIVE_PROCESSES, labels(), s.derived.active as f64),
            Sample::gauge(names::IDLE_PROCESSES, labels(), s.derived.idle as f64),
            Sample::gauge(names::TOTAL_PROCESSES, labels(), s.derived.total as f64),
        ]);
    }
    if let Ok((q, _)) = s.kernel.accept_queue {
        out.push(Sample::gauge(names::ACCEPT_QUEUE, labels(), f64::from(q)));
    }
    if let Ok(agg) = &s.kernel.workers {
        if let Some(cpu) = agg.cpu_percent_total {
            out.push(Sample::gauge(names::WORKER_CPU_PERCENT, labels(), cpu));
        }
        if let Some(p) = agg.pss {
            out.push(Sample::gauge(
                names::WORKER_PSS_BYTES,
                labels(),
                p.sum as f64,
            ));
            out.push(Sample::gauge(
                names::WORKER_PSS_P95_BYTES,
                labels(),
                p.p95 as f64,
            ));
        }
        if let Some(t) = agg.total_pss {
            out.push(Sample::gauge(names::POOL_PSS_BYTES, labels(), t as f64));
        }
    }
    if let Some(Ok(oc)) = &s.opcache {
        if let Some(rate) = oc.hit_rate {
            out.push(Sample::gauge(names::OPCACHE_HIT_RATE, labels(), rate));
        }
    }
    if let Some(n) = max_children {
        out.push(Sample::gauge(names::PM_MAX_CHILDREN, labels(), n as f64));
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
/// logged and they are counted: a pool whose master is still starting fails
/// its first attempts, which is no failure of the pool.
const WARN_AFTER_FAILURES: u64 = 3;

/// One collection: status page, then ping, then one published look.
/// Returns whether the status page was read. (Tests and benchmarks; the
/// daemon's collector keeps its [`Tally`] across looks.)
pub async fn collect_once(pool: &Pool, state: &AppState, probe: &ProbeMarker) -> bool {
    let started = Instant::now();
    // One after the other: on a pool without a status listener both requests
    // need a worker, and the ping must not show up as load in the status.
    let status = fetch_status(pool, probe).await;
    let ping_ok = ping(pool).await;
    record(pool, state, probe, status, ping_ok, started).up
}

/// Records one collection's outcome with a fresh [`Tally`] and publishes it
/// as the pool's look.
pub fn record(
    pool: &Pool,
    state: &AppState,
    probe: &ProbeMarker,
    status: Result<PoolStatus, ScrapeError>,
    ping_ok: bool,
    started: Instant,
) -> Recorded {
    let mut tally = Tally::default();
    let (status, event) = tally.record(
        pool.name.as_str(),
        &state.metrics,
        status,
        ping_ok,
        started.elapsed(),
        None,
    );
    let up = status.is_some();
    let derived = status
        .as_ref()
        .map(|st| st.derived(Some(probe.as_str())))
        .unwrap_or_default();
    let look = tally.look(1, SystemTime::now(), status, derived);
    state.publish_look(&pool.name, look);
    Recorded { up, event }
}

/// What [`record`] did: whether the status page was read, and the event
/// when the pool just started failing or answers again.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub up: bool,
    pub event: Option<PoolEvent>,
}

/// The collector's running account of a pool's collections: what a look
/// reports about successes and failures.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    up: bool,
    ping_ok: bool,
    scrape_failures: u64,
    consecutive_failures: u64,
    last_error: Option<ScrapeError>,
    last_success: Option<SystemTime>,
    /// A `scrape_failing` event was emitted and not yet answered by a
    /// `scrape_recovered`.
    reported_failing: bool,
}

impl Tally {
    /// Accounts for one collection's outcome; returns the status page (if
    /// read) and the transition event, if any. A value the page had to drop
    /// is taken from `previous`, the last good page.
    pub fn record(
        &mut self,
        pool: &str,
        metrics: &Metrics,
        status: Result<PoolStatus, ScrapeError>,
        ping_ok: bool,
        elapsed: Duration,
        previous: Option<&PoolStatus>,
    ) -> (Option<PoolStatus>, Option<PoolEvent>) {
        metrics
            .scrape_duration
            .with_label_values(&[pool])
            .observe(elapsed.as_secs_f64());
        self.ping_ok = ping_ok;
        match status {
            Ok(mut st) => {
                for d in &st.dropped {
                    metrics
                        .status_fields_dropped
                        .with_label_values(&[pool, d.field, d.reason.as_str()])
                        .inc_by(d.count);
                }
                // A dropped value keeps the last good page's.
                st.carry_forward(previous);
                let recovered = (self.reported_failing).then_some(self.consecutive_failures);
                if recovered.is_some() {
                    tracing::info!(pool, "Pool answers its status page.");
                }
                self.up = true;
                self.consecutive_failures = 0;
                self.reported_failing = false;
                self.last_error = None;
                self.last_success = Some(SystemTime::now());
                let event =
                    recovered.map(|after_failures| PoolEvent::ScrapeRecovered { after_failures });
                (Some(st), event)
            }
            Err(err) => {
                self.consecutive_failures += 1;
                let starting = self.last_success.is_none();
                // Before the first success, failures count only once they
                // are more than a master's start-up.
                if !starting || self.consecutive_failures >= WARN_AFTER_FAILURES {
                    let newly = if starting && self.consecutive_failures == WARN_AFTER_FAILURES {
                        WARN_AFTER_FAILURES
                    } else {
                        1
                    };
                    self.scrape_failures += newly;
                    metrics
                        .scrape_errors
                        .with_label_values(&[pool, err.kind])
                        .inc_by(newly);
                }
                let first = !self.reported_failing
                    && (self.up || (starting && self.consecutive_failures >= WARN_AFTER_FAILURES));
                self.up = false;
                // Log (and report) the transition, not every failed tick of
                // a long outage.
                if first {
                    self.reported_failing = true;
                    tracing::warn!(
                        pool,
                        kind = err.kind,
                        "Pool status collection failed: {}.",
                        err.message
                    );
                } else {
                    tracing::debug!(
                        pool,
                        kind = err.kind,
                        "Pool status collection failed: {}.",
                        err.message
                    );
                }
                let event = first.then(|| PoolEvent::ScrapeFailing {
                    kind: err.kind.to_owned(),
                    message: err.message.clone(),
                });
                self.last_error = Some(err);
                (None, event)
            }
        }
    }

    /// A look with this tally's figures and the given status page; the
    /// caller fills in the kernel's view and the interval.
    pub fn look(
        &self,
        seq: u64,
        at: SystemTime,
        status: Option<PoolStatus>,
        derived: Derived,
    ) -> Look {
        Look {
            seq,
            at: Some(at),
            up: status.is_some() && self.up,
            ping_ok: self.ping_ok,
            scrape_failures: self.scrape_failures,
            consecutive_failures: self.consecutive_failures,
            last_error: self.last_error.clone(),
            status,
            derived,
            last_success: self.last_success,
            kernel: KernelView::default(),
            interval: Duration::ZERO,
            circuit_open: false,
            opcache: None,
            stalled: None,
        }
    }
}

fn timeouts(pool: &Pool) -> Timeouts {
    Timeouts {
        connect: pool.connect_timeout,
        total: pool.request_timeout,
    }
}

/// Requests and parses the status page.
pub async fn fetch_status(pool: &Pool, probe: &ProbeMarker) -> Result<PoolStatus, ScrapeError> {
    fetch_status_at(pool, &pool.status_endpoint, probe).await
}

/// Requests and parses the status page of the pool's master listening at
/// `endpoint` (a second master has its own).
async fn fetch_status_at(
    pool: &Pool,
    endpoint: &Endpoint,
    probe: &ProbeMarker,
) -> Result<PoolStatus, ScrapeError> {
    let reply = fastcgi::get_capped(
        endpoint,
        &pool.status_path,
        &probe.query(),
        timeouts(pool),
        pool.max_reply_bytes,
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
    let reply = fastcgi::get_capped(
        &pool.status_endpoint,
        &pool.ping_path,
        "",
        timeouts(pool),
        pool.max_reply_bytes,
    );
    match reply.await {
        Ok(reply) => parse_ping(&reply.stdout, &pool.ping_response).is_ok(),
        Err(_) => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// History keeps only series `/metrics` also exports under that name.
    #[test]
    fn history_uses_the_shared_series_names() {
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fpm-core/test_data/status/php82-busy-main-socket.cgi"
        ))
        .unwrap();
        let st = parse_status(&raw).unwrap();
        let look = Look {
            up: true,
            derived: st.derived(None),
            status: Some(st),
            kernel: KernelView {
                accept_queue: Ok((3, Some(511))),
                ..KernelView::default()
            },
            ..Look::default()
        };
        let pool = fpm_core::PoolName::new("www").unwrap();
        let samples = history_samples(&pool, &look, Some(12));
        assert!(samples.len() >= 10, "{}", samples.len());
        for s in &samples {
            assert!(
                names::HISTORY.contains(&s.name.as_ref()),
                "{} not shared",
                s.name
            );
        }
    }
}
