//! The event loop of the simulator: one pool, one manager, one trace.
//!
//! Time is kept in integer microseconds so that event order is exact and
//! runs are bit-for-bit reproducible; ties are broken by insertion order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::rng::Pcg32;
use super::trace::TraceSpec;
use super::{ChangeMechanism, ChangeRecord, Manager, Scenario, SimError, SimResult};
use crate::decide::{decide, Action, ScalerState};
use crate::observe::{accepted_delta, Observation};
use crate::policy::Policy;
use crate::share::{share_budget, PoolDemand};

/// Upper bound on drawn requests, so that a trace cannot exhaust memory.
const MAX_REQUESTS: u64 = 20_000_000;
const TICK_US: u64 = 1_000_000;
const BUSY_INTERVAL_US: u64 = 1_000_000;
const NORMAL_INTERVAL_US: u64 = 5_000_000;

/// Random streams, one per purpose, so managers see the same requests.
const STREAM_ARRIVALS: u64 = 1;
const STREAM_THINNING: u64 = 2;
const STREAM_SERVICE: u64 = 3;
const STREAM_MEMORY: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    Done {
        slot: usize,
        epoch: u64,
    },
    Ready {
        slot: usize,
        epoch: u64,
    },
    Tick,
    /// A change: start a new master with `workers` workers.
    Apply {
        workers: u32,
    },
    /// Stop every master older than `master` (graceful).
    Retire {
        master: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Request {
    arrival_us: u64,
    demand_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WorkerState {
    Dead,
    Starting,
    Idle { since_us: u64 },
    Busy { service_s: f64, retiring: bool },
}

#[derive(Debug, Clone)]
struct Worker {
    epoch: u64,
    state: WorkerState,
    pss: u64,
    master: u32,
}

/// One php-fpm master: a change starts a new one, whose OPcache is cold.
#[derive(Debug, Clone, Copy)]
struct Master {
    cold: bool,
    started_requests: u64,
}

/// The manager's own bookkeeping while it drives the pool.
struct PolicyDriver {
    policy: Policy,
    state: ScalerState,
    last_collect_us: Option<u64>,
    interval_us: u64,
    previous_accepted: Option<u64>,
    in_flight_until_us: u64,
    finished: Vec<f64>,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    manager: &'a Manager,
    requests: &'a [Request],
    next_request: usize,
    /// Workers granted by a shared budget (multi-pool runs).
    share_cap: Option<u32>,
    /// Figures of the last decision, for budget sharing.
    last_wanted: Option<u32>,
    duration_us: u64,
    now_us: u64,
    integrated_to_us: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    workers: Vec<Worker>,
    free_slots: Vec<usize>,
    idle: VecDeque<usize>,
    queue: VecDeque<Request>,
    alive: u32,
    busy: u32,
    starting: u32,
    alive_pss: u64,
    masters: Vec<Master>,
    accepted_total: u64,
    memory_rng: Pcg32,
    spawn_rate: u32,
    driver: Option<PolicyDriver>,
    // Results.
    waits: Vec<f64>,
    waited: u64,
    over_target: u64,
    dropped: u64,
    spawns: u64,
    peak: u32,
    worker_seconds: f64,
    memory_byte_seconds: f64,
    change_log: Vec<(f64, i8)>,
    changes_detail: Vec<ChangeRecord>,
}

/// Runs one manager on one trace.
pub fn run(
    trace: &TraceSpec,
    manager: &Manager,
    scenario: &Scenario,
) -> Result<SimResult, SimError> {
    let requests = draw_requests(trace, scenario)?;
    Ok(run_requests(&requests.0, requests.1, manager, scenario))
}

/// Draws the requests of a trace: arrival times and service demands.
fn draw_requests(trace: &TraceSpec, scenario: &Scenario) -> Result<(Vec<Request>, u64), SimError> {
    let curve = trace.curve(scenario.duration_s)?;
    let duration_s = curve.duration_s();
    let max_rate = curve.max_rate();
    let candidates = max_rate * duration_s;
    if candidates > MAX_REQUESTS as f64 || curve.expected_arrivals() > MAX_REQUESTS as f64 {
        return Err(SimError::TooLarge {
            expected: candidates as u64,
            limit: MAX_REQUESTS,
        });
    }
    let mut arrivals = Pcg32::new(scenario.seed, STREAM_ARRIVALS);
    let mut thinning = Pcg32::new(scenario.seed, STREAM_THINNING);
    let mut service = Pcg32::new(scenario.seed, STREAM_SERVICE);
    let mut requests = Vec::with_capacity(curve.expected_arrivals() as usize + 16);
    let duration_us = (duration_s * 1e6) as u64;
    if max_rate <= 0.0 {
        return Ok((requests, duration_us));
    }
    let mut t = 0.0;
    // Bounded: each step advances t by a positive amount, and the count of
    // candidates was checked above.
    loop {
        t += arrivals.exponential(max_rate);
        if t >= duration_s {
            break;
        }
        if thinning.unit() * max_rate <= curve.rate_at(t) {
            requests.push(Request {
                arrival_us: (t * 1e6) as u64,
                demand_s: service.lognormal(scenario.mean_service_s, scenario.service_sigma),
            });
        }
    }
    Ok((requests, duration_us))
}

fn run_requests(
    requests: &[Request],
    duration_us: u64,
    manager: &Manager,
    scenario: &Scenario,
) -> SimResult {
    let mut sim = Sim::new(requests, duration_us, manager, scenario);
    sim.run_until(u64::MAX);
    sim.finish()
}

/// One pool of a run where several pools share one memory budget.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPool {
    /// Pool name, for the answer.
    pub name: String,
    /// Its arrivals.
    pub trace: TraceSpec,
    /// Its policy (weight and priority decide who gives way).
    pub policy: Policy,
}

/// Result of a shared-budget run.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedResult {
    /// One result per pool, in input order.
    pub pools: Vec<SimResult>,
    /// Most workers granted to each pool at once, in input order.
    pub granted_peak: Vec<u32>,
    /// Fewest workers granted to each pool at once, in input order.
    pub granted_low: Vec<u32>,
    /// Largest memory of all pools' workers together, sampled each
    /// second, bytes (a hand-over counts both masters).
    pub peak_memory_bytes: u64,
}

/// Runs several pools managed by the policy under one memory budget
/// (`scenario.memory_budget_bytes` less the shared memory and the first
/// policy's reserve). Every second [`crate::share_budget`] splits the
/// budget by priority and weight, and each pool's scaler receives its
/// share as `share_cap_workers`.
pub fn run_shared(pools: &[SharedPool], scenario: &Scenario) -> Result<SharedResult, SimError> {
    let managers: Vec<Manager> = pools
        .iter()
        .map(|pool| Manager::Policy(pool.policy.clone()))
        .collect();
    let drawn = pools
        .iter()
        .enumerate()
        .map(|(index, pool)| {
            let mut own = scenario.clone();
            // Different pools get different requests from the same seed.
            own.seed = scenario.seed.wrapping_add(index as u64 * 1_000_003);
            draw_requests(&pool.trace, &own)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut sims: Vec<Sim<'_>> = drawn
        .iter()
        .zip(&managers)
        .map(|((requests, duration_us), manager)| {
            Sim::new(requests, *duration_us, manager, scenario)
        })
        .collect();
    let reserve = pools
        .first()
        .map_or(0.0, |pool| pool.policy.spec().memory_reserve_mb)
        * 1024.0
        * 1024.0;
    let net = scenario
        .memory_budget_bytes
        .saturating_sub(scenario.shared_bytes)
        .saturating_sub(reserve as u64);
    let mut granted_peak = vec![0; pools.len()];
    let mut granted_low = vec![u32::MAX; pools.len()];
    let mut peak_memory_bytes = 0;
    let mut until = 0;
    // Bounded: each round advances a second, and every pool's heap runs dry
    // once its trace is over and its queue is empty.
    while sims.iter().any(|sim| !sim.heap.is_empty()) {
        until += TICK_US;
        for sim in &mut sims {
            sim.run_until(until);
        }
        let demands: Vec<PoolDemand> = sims
            .iter()
            .zip(pools)
            .map(|(sim, pool)| {
                let spec = pool.policy.spec();
                let current = sim
                    .driver
                    .as_ref()
                    .map_or(0, |driver| driver.state.workers());
                PoolDemand {
                    name: pool.name.clone(),
                    priority: spec.priority,
                    weight: spec.weight,
                    min_workers: spec.min_workers,
                    wanted_workers: sim
                        .last_wanted
                        .unwrap_or(0)
                        .max(current)
                        .clamp(spec.min_workers, spec.max_workers),
                    max_workers: spec.max_workers,
                    worker_bytes: sim
                        .driver
                        .as_ref()
                        .and_then(|driver| driver.state.estimates().p95_pss_bytes())
                        .unwrap_or(scenario.pss_mean_bytes as u64),
                }
            })
            .collect();
        let shares = share_budget(net, &demands);
        let mut memory = 0;
        for (index, (sim, share)) in sims.iter_mut().zip(shares).enumerate() {
            sim.share_cap = Some(share.granted_workers);
            granted_peak[index] = granted_peak[index].max(share.granted_workers);
            granted_low[index] = granted_low[index].min(share.granted_workers);
            memory += sim.alive_pss;
        }
        peak_memory_bytes = peak_memory_bytes.max(memory);
    }
    Ok(SharedResult {
        pools: sims.into_iter().map(Sim::finish).collect(),
        granted_peak,
        granted_low,
        peak_memory_bytes,
    })
}

impl<'a> Sim<'a> {
    fn new(
        requests: &'a [Request],
        duration_us: u64,
        manager: &'a Manager,
        scenario: &'a Scenario,
    ) -> Sim<'a> {
        let mut sim = Sim {
            scenario,
            manager,
            requests,
            next_request: 0,
            share_cap: None,
            last_wanted: None,
            duration_us,
            now_us: 0,
            integrated_to_us: 0,
            heap: BinaryHeap::new(),
            seq: 0,
            workers: Vec::new(),
            free_slots: Vec::new(),
            idle: VecDeque::new(),
            queue: VecDeque::new(),
            alive: 0,
            busy: 0,
            starting: 0,
            alive_pss: 0,
            masters: vec![Master {
                cold: false,
                started_requests: 0,
            }],
            accepted_total: 0,
            memory_rng: Pcg32::new(scenario.seed, STREAM_MEMORY),
            spawn_rate: 1,
            driver: None,
            waits: Vec::with_capacity(requests.len()),
            waited: 0,
            over_target: 0,
            dropped: 0,
            spawns: 0,
            peak: 0,
            worker_seconds: 0.0,
            memory_byte_seconds: 0.0,
            change_log: Vec::new(),
            changes_detail: Vec::new(),
        };
        let initial = match manager {
            Manager::Static => scenario.max_workers,
            Manager::Dynamic => scenario.dynamic_start.min(scenario.max_workers),
            Manager::Ondemand => 0,
            Manager::Policy(policy) => {
                // The manager takes over a pool at its learning cap.
                let workers = policy.learning_cap();
                sim.driver = Some(PolicyDriver {
                    policy: policy.clone(),
                    state: ScalerState::new(0, workers),
                    last_collect_us: None,
                    interval_us: NORMAL_INTERVAL_US,
                    previous_accepted: None,
                    in_flight_until_us: 0,
                    finished: Vec::new(),
                });
                workers
            }
        };
        for _ in 0..initial {
            sim.spawn(None);
        }
        sim.schedule(0, Event::Tick);
        if let Some(first) = requests.first() {
            sim.schedule(first.arrival_us, Event::Arrival);
        }
        sim
    }

    /// Processes every event up to and including `limit_us`.
    fn run_until(&mut self, limit_us: u64) {
        while let Some(Reverse((at, _, _))) = self.heap.peek() {
            if *at > limit_us {
                break;
            }
            let Some(Reverse((at, _, event))) = self.heap.pop() else {
                break;
            };
            self.advance(at);
            match event {
                Event::Arrival => {
                    let request = self.requests[self.next_request];
                    self.next_request += 1;
                    if let Some(following) = self.requests.get(self.next_request) {
                        self.schedule(following.arrival_us, Event::Arrival);
                    }
                    self.arrive(request);
                }
                Event::Done { slot, epoch } => self.done(slot, epoch),
                Event::Ready { slot, epoch } => self.ready(slot, epoch),
                Event::Tick => {
                    match self.manager {
                        Manager::Static => {}
                        Manager::Dynamic => self.dynamic_maintenance(),
                        Manager::Ondemand => self.ondemand_reap(),
                        Manager::Policy(_) => self.collect(),
                    }
                    let more = self.next_request < self.requests.len() || !self.queue.is_empty();
                    if self.now_us < self.duration_us || more {
                        let tick_us = match self.manager {
                            // The collector's accept-queue probe.
                            Manager::Policy(_) => (self.scenario.probe_s * 1e6).max(1.0) as u64,
                            // php-fpm's maintenance heartbeat.
                            _ => TICK_US,
                        };
                        self.schedule(self.now_us + tick_us, Event::Tick);
                    }
                }
                Event::Apply { workers } => self.apply(workers),
                Event::Retire { master } => self.retire(master),
            }
        }
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at_us, self.seq, event)));
    }

    /// Moves the clock, integrating workers and memory up to the trace end.
    fn advance(&mut self, to_us: u64) {
        self.now_us = to_us.max(self.now_us);
        let until = self.now_us.min(self.duration_us);
        if until > self.integrated_to_us {
            let dt = (until - self.integrated_to_us) as f64 / 1e6;
            self.worker_seconds += f64::from(self.alive) * dt;
            self.memory_byte_seconds += self.alive_pss as f64 * dt;
            self.integrated_to_us = until;
        }
    }

    fn spawn(&mut self, ready_after_s: Option<f64>) {
        let scenario = self.scenario;
        let draw = scenario.pss_mean_bytes + scenario.pss_sd_bytes * self.memory_rng.normal();
        let pss = draw.clamp(scenario.pss_mean_bytes / 2.0, scenario.pss_mean_bytes * 2.0) as u64;
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.workers.push(Worker {
                    epoch: 0,
                    state: WorkerState::Dead,
                    pss: 0,
                    master: 0,
                });
                self.workers.len() - 1
            }
        };
        let master = self.current_master();
        let worker = &mut self.workers[slot];
        worker.epoch += 1;
        worker.pss = pss;
        worker.master = master;
        self.alive += 1;
        self.alive_pss += pss;
        self.peak = self.peak.max(self.alive);
        self.spawns += 1;
        match ready_after_s {
            None => {
                worker.state = WorkerState::Idle {
                    since_us: self.now_us,
                };
                self.idle.push_back(slot);
            }
            Some(delay) => {
                worker.state = WorkerState::Starting;
                let epoch = worker.epoch;
                self.starting += 1;
                let at = self.now_us + (delay * 1e6) as u64;
                self.schedule(at, Event::Ready { slot, epoch });
            }
        }
    }

    fn kill(&mut self, slot: usize) {
        let worker = &mut self.workers[slot];
        match worker.state {
            WorkerState::Dead => return,
            WorkerState::Starting => self.starting -= 1,
            WorkerState::Busy { .. } => self.busy -= 1,
            WorkerState::Idle { .. } => {}
        }
        worker.state = WorkerState::Dead;
        worker.epoch += 1;
        self.alive -= 1;
        self.alive_pss -= worker.pss;
        self.free_slots.push(slot);
    }

    fn arrive(&mut self, request: Request) {
        if let Some(slot) = self.idle.pop_front() {
            self.start(slot, request);
            return;
        }
        if self.queue.len() >= self.scenario.backlog as usize {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(request);
        if *self.manager == Manager::Ondemand
            && self.alive < self.scenario.max_workers
            && (self.starting as usize) < self.queue.len()
        {
            self.spawn(Some(self.scenario.fork_s));
        }
    }

    fn start(&mut self, slot: usize, request: Request) {
        let wait = self.now_us.saturating_sub(request.arrival_us) as f64 / 1e6;
        self.waits.push(wait);
        if wait > 0.0 {
            self.waited += 1;
        }
        if wait > self.scenario.slow_wait_s {
            self.over_target += 1;
        }
        let worker = &mut self.workers[slot];
        let master = &mut self.masters[worker.master as usize];
        let cold = if master.cold {
            let warmed = master.started_requests as f64 / self.scenario.cold_requests;
            1.0 + self.scenario.cold_extra * (-warmed).exp()
        } else {
            1.0
        };
        master.started_requests += 1;
        let service_s = request.demand_s * cold;
        worker.state = WorkerState::Busy {
            service_s,
            retiring: false,
        };
        let epoch = worker.epoch;
        self.busy += 1;
        self.accepted_total += 1;
        // At least 1 µs so a request never finishes at its own start.
        let at = self.now_us + ((service_s * 1e6) as u64).max(1);
        self.schedule(at, Event::Done { slot, epoch });
    }

    fn done(&mut self, slot: usize, epoch: u64) {
        let worker = &self.workers[slot];
        if worker.epoch != epoch {
            return;
        }
        let WorkerState::Busy {
            service_s,
            retiring,
        } = worker.state
        else {
            return;
        };
        if let Some(driver) = self.driver.as_mut() {
            driver.finished.push(service_s);
        }
        if retiring {
            self.kill(slot);
            return;
        }
        self.busy -= 1;
        self.make_available(slot);
    }

    fn ready(&mut self, slot: usize, epoch: u64) {
        let worker = &self.workers[slot];
        if worker.epoch != epoch || worker.state != WorkerState::Starting {
            return;
        }
        self.starting -= 1;
        self.make_available(slot);
    }

    fn make_available(&mut self, slot: usize) {
        if let Some(request) = self.queue.pop_front() {
            self.start(slot, request);
        } else {
            self.workers[slot].state = WorkerState::Idle {
                since_us: self.now_us,
            };
            self.idle.push_back(slot);
        }
    }

    /// php-fpm `dynamic`: one maintenance pass per second (fact 16).
    fn dynamic_maintenance(&mut self) {
        let scenario = self.scenario;
        // Workers being forked will be idle in a moment; php-fpm counts a
        // fresh child as idle as well.
        let idle = self.idle.len() as u32 + self.starting;
        if idle > scenario.dynamic_max_spare {
            if let Some(slot) = self.idle.pop_front() {
                self.kill(slot);
            }
            self.spawn_rate = 1;
        } else if idle < scenario.dynamic_min_spare {
            let room = scenario.max_workers.saturating_sub(self.alive);
            let count = self
                .spawn_rate
                .min(scenario.dynamic_min_spare - idle)
                .min(room);
            for _ in 0..count {
                self.spawn(Some(scenario.fork_s));
            }
            if room > 0 && self.spawn_rate < scenario.max_spawn_rate {
                self.spawn_rate = (self.spawn_rate * 2).min(scenario.max_spawn_rate);
            }
        } else {
            self.spawn_rate = 1;
        }
    }

    /// php-fpm `ondemand`: reap the longest-idle worker once it has been
    /// idle for the timeout, one per second (fact 17).
    fn ondemand_reap(&mut self) {
        let timeout_us = (self.scenario.ondemand_idle_timeout_s * 1e6) as u64;
        let Some(&slot) = self.idle.front() else {
            return;
        };
        if let WorkerState::Idle { since_us } = self.workers[slot].state {
            if self.now_us.saturating_sub(since_us) > timeout_us {
                self.idle.pop_front();
                self.kill(slot);
            }
        }
    }

    /// The manager's collector: adaptive interval plus the saturation probe.
    fn collect(&mut self) {
        let now = self.now_us;
        let Some(driver) = self.driver.as_ref() else {
            return;
        };
        let saturated = !self.queue.is_empty() && self.idle.is_empty();
        let due = driver
            .last_collect_us
            .is_none_or(|last| now.saturating_sub(last) >= driver.interval_us);
        if !(due || saturated) {
            return;
        }
        let pss: Vec<u64> = self
            .workers
            .iter()
            .filter(|worker| worker.state != WorkerState::Dead)
            .map(|worker| worker.pss)
            .collect();
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        let accepted = accepted_delta(driver.previous_accepted, self.accepted_total);
        driver.previous_accepted = Some(self.accepted_total);
        let queue_len = u32::try_from(self.queue.len()).unwrap_or(u32::MAX);
        let observation = Observation {
            now_ms: now / 1000,
            accepted,
            queue_len,
            busy: self.busy,
            idle: self.idle.len() as u32,
            total: self.alive,
            worker_pss_bytes: &pss,
            finished_service_s: &driver.finished,
            cpu_cores_used: None,
            cpu_cores_limit: None,
            memory_budget_bytes: Some(self.scenario.memory_budget_bytes),
            shared_memory_bytes: self.scenario.shared_bytes,
            share_cap_workers: self.share_cap,
            change_in_flight: now < driver.in_flight_until_us,
        };
        let before = driver.state.workers();
        let (decision, state) = decide(&driver.policy, &driver.state, &observation);
        driver.state = state;
        driver.finished.clear();
        self.last_wanted = decision.figures.model_workers;
        driver.last_collect_us = Some(now);
        let busy_pool = queue_len > 0 || self.busy * 2 >= self.alive.max(1);
        driver.interval_us = if busy_pool {
            BUSY_INTERVAL_US
        } else {
            NORMAL_INTERVAL_US
        };
        if let Action::Resize { workers, reason } = decision.action {
            let scenario = self.scenario;
            let apply_us = (scenario.apply_delay_s * 1e6) as u64;
            let settle_us = match scenario.change {
                ChangeMechanism::Handover => (scenario.handover_s * 1e6) as u64,
                ChangeMechanism::Reload => (scenario.reload_stall_s * 1e6) as u64,
            };
            driver.in_flight_until_us = now + apply_us + settle_us;
            let direction = if workers > before { 1 } else { -1 };
            self.change_log.push((now as f64 / 1e6, direction));
            self.changes_detail.push(ChangeRecord {
                at_s: now as f64 / 1e6,
                from: before,
                to: workers,
                reason,
            });
            self.schedule(now + apply_us, Event::Apply { workers });
        }
    }

    fn current_master(&self) -> u32 {
        // At most one master per change, far below u32::MAX in any run.
        (self.masters.len() - 1) as u32
    }

    /// A change. With a hand-over (fact 5a) a new master with `workers`
    /// workers starts on the inherited socket while the old one keeps
    /// serving, and the old one is stopped gracefully `handover_s` later.
    /// With a reload (facts 1-3) every worker is replaced at once: idle
    /// ones stop, busy ones finish their request, and the new ones are
    /// ready after `reload_stall_s`. Either way the new master's OPcache
    /// is cold and the status counters (`accepted conn`) restart from zero.
    fn apply(&mut self, workers: u32) {
        self.masters.push(Master {
            cold: true,
            started_requests: 0,
        });
        let master = self.current_master();
        self.accepted_total = 0;
        let scenario = self.scenario;
        match scenario.change {
            ChangeMechanism::Handover => {
                for _ in 0..workers {
                    self.spawn(Some(scenario.master_start_s));
                }
                let at = self.now_us + (scenario.handover_s * 1e6) as u64;
                self.schedule(at, Event::Retire { master });
            }
            ChangeMechanism::Reload => {
                self.retire(master);
                for _ in 0..workers {
                    self.spawn(Some(scenario.reload_stall_s));
                }
            }
        }
    }

    /// Graceful stop of every master older than `master`: idle and starting
    /// workers stop, busy ones finish their request first (the manager sets
    /// `process_control_timeout`, fact 3).
    fn retire(&mut self, master: u32) {
        let workers = &self.workers;
        self.idle.retain(|&slot| workers[slot].master >= master);
        for slot in 0..self.workers.len() {
            if self.workers[slot].master >= master {
                continue;
            }
            match self.workers[slot].state {
                WorkerState::Busy { service_s, .. } => {
                    self.workers[slot].state = WorkerState::Busy {
                        service_s,
                        retiring: true,
                    };
                }
                WorkerState::Idle { .. } | WorkerState::Starting => self.kill(slot),
                WorkerState::Dead => {}
            }
        }
    }

    fn finish(mut self) -> SimResult {
        let requests = self.requests.len() as u64;
        let manager = self.manager;
        self.advance(self.duration_us);
        self.waits.sort_unstable_by(f64::total_cmp);
        let percentile = |q: f64| -> f64 {
            if self.waits.is_empty() {
                return 0.0;
            }
            let rank = (q * self.waits.len() as f64).ceil() as usize;
            self.waits[rank.clamp(1, self.waits.len()) - 1]
        };
        SimResult {
            manager: manager.name(),
            requests,
            dropped: self.dropped,
            p50_wait_s: percentile(0.50),
            p95_wait_s: percentile(0.95),
            p99_wait_s: percentile(0.99),
            max_wait_s: self.waits.last().copied().unwrap_or(0.0),
            waited: self.waited,
            over_target: self.over_target,
            worker_seconds: self.worker_seconds,
            memory_gib_seconds: self.memory_byte_seconds / (1024.0 * 1024.0 * 1024.0),
            changes: self.change_log.len() as u64,
            change_log: self.change_log,
            changes_detail: self.changes_detail,
            spawns: self.spawns,
            peak_workers: self.peak,
        }
    }
}
