//! The event loop of the simulator: one pool, one manager, one trace (or
//! several pools in lockstep under one memory budget).
//!
//! Time is kept in integer microseconds so that event order is exact and
//! runs are bit-for-bit reproducible; ties are broken by insertion order.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::rc::Rc;

use super::rng::Pcg32;
use super::trace::TraceSpec;
use super::{ChangeRecord, Manager, Scenario, SimError, SimResult, AFTER_SCALE_UP_S};
use crate::caps::{
    board_demand, next_cap, CapStep, Damping, ModelSizes, PlanMemory, PoolPlanInput, Pressure,
    ASSUMED_WORKER_BYTES,
};
use crate::decide::{decide, Action, ScalerState};
use crate::observe::{accepted_delta, Observation};
use crate::policy::Policy;
use crate::share::{share_budget_protecting_needs, PoolDemand};

/// Upper bound on drawn requests, so that a trace cannot exhaust memory.
const MAX_REQUESTS: u64 = 20_000_000;
/// php-fpm's maintenance heartbeat (`dynamic` spawns, `ondemand` reaps).
const TICK_US: u64 = 1_000_000;
const BUSY_INTERVAL_US: u64 = 1_000_000;
const NORMAL_INTERVAL_US: u64 = 5_000_000;
/// Lockstep of a shared-budget run: memory is compared with the budget
/// this often.
const SHARED_STEP_US: u64 = 100_000;
/// Budget shares are recomputed this often, like the daemon would.
const SHARE_EVERY_US: u64 = 1_000_000;
/// A pool waiting for memory kicks the others at most this often.
const KICK_EVERY_US: u64 = 1_000_000;
/// A request counts as served cold when its penalty is above this.
const COLD_SERVED_S: f64 = 0.01;

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
    /// php-fpm's 1 s maintenance.
    Tick,
    /// The collector's accept-queue probe (and its regular collections).
    Probe,
    /// A change to `workers` as the pool's size or cap: a new master
    /// starts (a hand-over's or an extra one), or the extra master stops.
    Apply {
        workers: u32,
    },
    /// A new master reports ready: it serves as `role`, and the masters
    /// it replaces stop.
    MasterReady {
        master: u32,
        role: Role,
    },
}

/// What a new master becomes once it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    /// A hand-over: it replaces the primary master and the extra one.
    Primary,
    /// It serves beside the primary master and replaces the extra one.
    Extra,
}

/// Where a master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MasterState {
    /// Started, not ready yet: its workers (a `static` master's) wait.
    Starting,
    /// Accepts from the pool's socket: its idle workers take requests and
    /// an `ondemand` one forks for queued requests.
    Serving,
    /// Stopped gracefully: its busy workers finish their request and exit.
    Stopped,
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
    Busy { retiring: bool },
}

#[derive(Debug, Clone)]
struct Worker {
    epoch: u64,
    state: WorkerState,
    pss: u64,
    master: u32,
    /// Requests this worker took (the status page's `requests`).
    served: u64,
    /// Duration of its current or last request, seconds.
    last_duration_s: f64,
}

/// One php-fpm master.
#[derive(Debug, Clone, Copy)]
struct Master {
    state: MasterState,
    /// Cold-OPcache penalty of its first request, seconds (0 when warm).
    cold_start_s: f64,
    started_requests: u64,
    /// `pm.max_children`.
    cap: u32,
    alive: u32,
    starting: u32,
    /// Its `accepted conn` counter.
    accepted: u64,
}

/// The manager's collector and scaler while it drives the pool.
struct PolicyDriver {
    policy: Policy,
    state: ScalerState,
    last_collect_us: Option<u64>,
    interval_us: u64,
    /// `(master, accepted conn)` of every serving master at the previous
    /// collection.
    previous_accepted: Option<Vec<(u32, u64)>>,
    /// `(epoch, requests)` per worker slot at the previous collection,
    /// the way the advisor keys them by pid.
    previous_served: Vec<Option<(u64, u64)>>,
    in_flight: bool,
    file_cache: bool,
    /// A larger cap by an extra master, the primary's by stopping it.
    additive: bool,
    /// The daemon's manager: `caps::next_cap` moves the cap, `decide` is
    /// only the model. Otherwise `decide`'s resizes are the cap.
    daemon: bool,
    /// The cap the pool runs with (the daemon's applied cap).
    cap: u32,
    /// The cap planner's memory between looks.
    plan: PlanMemory,
    /// When this pool last kicked the others' looks (µs).
    last_kick_us: Option<u64>,
}

/// Every pool's planning input, keyed by pool name like the daemon's
/// board: each pool writes its own entry at its look and plans against
/// the others' latest entries. A pool whose requests wait for memory
/// another pool's cap holds kicks the others' collectors, as the pool
/// actor does, so that they look (and give way) now rather than at their
/// next regular look.
#[derive(Debug, Default)]
struct BoardState {
    entries: BTreeMap<String, PoolPlanInput>,
    kicked: BTreeSet<String>,
}

type Board = Rc<RefCell<BoardState>>;

/// What one collection saw, before it becomes an [`Observation`].
#[derive(Debug, Clone, PartialEq)]
struct Look {
    accepted: u64,
    queue_len: u32,
    busy: u32,
    idle: u32,
    total: u32,
    pss: Vec<u64>,
    finished: Vec<f64>,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    manager: &'a Manager,
    ondemand: bool,
    requests: &'a [Request],
    next_request: usize,
    /// Workers granted by a shared budget (multi-pool runs).
    share_cap: Option<u32>,
    /// What the pool wants, for budget sharing.
    last_wanted: Option<u32>,
    /// What the pool needs (the model without headroom).
    last_needed: Option<u32>,
    /// The pool's name on the board.
    name: String,
    /// The board the daemon's manager plans over (its own for one pool).
    board: Board,
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
    alive_pss: u64,
    masters: Vec<Master>,
    /// The primary master: the one a hand-over replaces (and the one
    /// `dynamic` maintenance runs in; only the daemon's manager has an
    /// extra master).
    primary: u32,
    /// The extra master serving beside the primary one (additive changes).
    extra: Option<u32>,
    /// Which serving master forks next when both have room: the kernel
    /// wakes both on a queued connection, so their forks alternate.
    fork_turn: usize,
    memory_rng: Pcg32,
    spawn_rate: u32,
    driver: Option<PolicyDriver>,
    // Results.
    waits: Vec<f64>,
    responses: Vec<f64>,
    /// Arrival of each request of `responses`, in the same order.
    response_arrivals: Vec<u64>,
    waited: u64,
    over_target: u64,
    cold_served: u64,
    failed: u64,
    spawns: u64,
    peak: u32,
    peak_serving: u32,
    master_starts: u64,
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
    /// Who manages it. The daemon's manager plans its cap over the board
    /// of every pool; the model-cap design gets a share from
    /// [`crate::share_budget_protecting_needs`]; the others run as
    /// configured.
    pub manager: Manager,
    /// `pm.max_children` of this pool (`max_workers` of its policy).
    pub max_workers: u32,
}

/// Result of a shared-budget run.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedResult {
    /// One result per pool, in input order.
    pub pools: Vec<SimResult>,
    /// Most workers granted to each pool at once, in input order (the
    /// pool's `max_workers` when no share applies).
    pub granted_peak: Vec<u32>,
    /// Fewest workers granted to each pool at once, in input order.
    pub granted_low: Vec<u32>,
    /// Memory the workers of all pools may use together: the budget less
    /// the shared memory of every pool and the reserve, bytes.
    pub worker_budget_bytes: u64,
    /// Largest memory of all pools' workers together, sampled every
    /// 100 ms, bytes (a hand-over counts both masters).
    pub peak_memory_bytes: u64,
    /// Time the workers' memory was above `worker_budget_bytes`, seconds.
    pub over_budget_s: f64,
}

/// Runs several pools under one memory budget for their workers
/// (`scenario.memory_budget_bytes` less every pool's shared memory and the
/// first policy's reserve). Pools run by the daemon's manager plan their
/// caps with [`crate::caps::next_cap`] over one board holding every such
/// pool's latest input, with that worker budget as `scaling.memory_budget`,
/// each at its own looks, as the pool actors do. For the model-cap design,
/// every second [`crate::share_budget_protecting_needs`] splits the budget
/// between its pools (the others' caps are taken off first): each pool's
/// need first, by priority, then wants by priority and weight; each scaler
/// receives its share as `share_cap_workers`. Pools are advanced in
/// lockstep, 100 ms at a time (so a board entry may be up to 100 ms ahead
/// of the pool reading it), and their workers' memory is compared with the
/// budget every 100 ms.
pub fn run_shared(pools: &[SharedPool], scenario: &Scenario) -> Result<SharedResult, SimError> {
    let reserve = pools
        .iter()
        .find_map(|pool| pool.manager.policy())
        .map_or(0.0, |policy| policy.spec().memory_reserve_mb)
        * 1024.0
        * 1024.0;
    let worker_budget_bytes = scenario
        .memory_budget_bytes
        .saturating_sub(scenario.shared_bytes * pools.len() as u64)
        .saturating_sub(reserve as u64);
    let scenarios: Vec<Scenario> = pools
        .iter()
        .enumerate()
        .map(|(index, pool)| {
            let mut own = scenario.clone();
            // Different pools get different requests from the same seed.
            own.seed = scenario.seed.wrapping_add(index as u64 * 1_000_003);
            own.max_workers = pool.max_workers;
            if matches!(pool.manager, Manager::Daemon { .. }) {
                // The daemon's `scaling.memory_budget` is the memory for
                // the workers of all autoscaled pools.
                own.memory_budget_bytes = worker_budget_bytes;
            }
            own
        })
        .collect();
    let drawn = pools
        .iter()
        .zip(&scenarios)
        .map(|(pool, own)| draw_requests(&pool.trace, own))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sims: Vec<Sim<'_>> = drawn
        .iter()
        .zip(pools)
        .zip(&scenarios)
        .map(|(((requests, duration_us), pool), own)| {
            Sim::new(requests, *duration_us, &pool.manager, own)
        })
        .collect();
    let board = Board::default();
    for (sim, pool) in sims.iter_mut().zip(pools) {
        sim.name = pool.name.clone();
        sim.board = Rc::clone(&board);
    }
    let mut granted_peak = vec![0; pools.len()];
    let mut granted_low = vec![u32::MAX; pools.len()];
    let mut peak_memory_bytes = 0;
    let mut over_budget_s = 0.0;
    let mut until = 0;
    // Bounded: each round advances 100 ms, and every pool's heap runs dry
    // once its trace is over and its queue is empty.
    while sims.iter().any(|sim| !sim.heap.is_empty()) {
        until += SHARED_STEP_US;
        for sim in &mut sims {
            sim.run_until(until);
        }
        let memory: u64 = sims.iter().map(|sim| sim.alive_pss).sum();
        let measured = until >= scenario.measure_from_us();
        if measured {
            peak_memory_bytes = peak_memory_bytes.max(memory);
        }
        if measured && memory > worker_budget_bytes {
            over_budget_s += SHARED_STEP_US as f64 / 1e6;
        }
        for (index, sim) in sims.iter().enumerate() {
            let cap = sim
                .share_cap
                .or(sim.driver.as_ref().filter(|d| d.daemon).map(|d| d.cap))
                .unwrap_or(pools[index].max_workers);
            granted_peak[index] = granted_peak[index].max(cap);
            granted_low[index] = granted_low[index].min(cap);
        }
        if until % SHARE_EVERY_US != 0 {
            continue;
        }
        // Pools the model-cap design does not manage keep their cap.
        let model_cap = |sim: &Sim<'_>| sim.driver.as_ref().is_some_and(|d| !d.daemon);
        let managed: Vec<usize> = (0..pools.len())
            .filter(|&index| model_cap(&sims[index]))
            .collect();
        if managed.is_empty() {
            continue;
        }
        let fixed: u64 = sims
            .iter()
            .zip(pools)
            .filter(|(sim, _)| !model_cap(sim))
            .map(|(sim, pool)| {
                let cap = sim.driver.as_ref().map_or(pool.max_workers, |d| d.cap);
                u64::from(cap) * scenario.pss_mean_bytes as u64
            })
            .sum();
        let demands: Vec<PoolDemand> = managed
            .iter()
            .filter_map(|&index| {
                let sim = &sims[index];
                let driver = sim.driver.as_ref()?;
                let spec = driver.policy.spec();
                let current = driver.state.workers();
                Some(PoolDemand {
                    name: pools[index].name.clone(),
                    priority: spec.priority,
                    weight: spec.weight,
                    min_workers: spec.min_workers,
                    // As share.rs advises: at least what the pool runs, so
                    // a pool shrinks through its own damped scale-down.
                    wanted_workers: sim
                        .last_wanted
                        .unwrap_or(0)
                        .max(current)
                        .clamp(spec.min_workers, spec.max_workers),
                    max_workers: spec.max_workers,
                    worker_bytes: driver
                        .state
                        .estimates()
                        .p95_pss_bytes()
                        .unwrap_or(scenario.pss_mean_bytes as u64),
                })
            })
            .collect();
        let needed: Vec<u32> = managed
            .iter()
            .map(|&index| sims[index].last_needed.unwrap_or(0))
            .collect();
        let shares = share_budget_protecting_needs(
            worker_budget_bytes.saturating_sub(fixed),
            &demands,
            &needed,
        );
        for (&index, share) in managed.iter().zip(shares) {
            sims[index].share_cap = Some(share.granted_workers);
        }
    }
    Ok(SharedResult {
        pools: sims.into_iter().map(Sim::finish).collect(),
        granted_peak,
        granted_low,
        worker_budget_bytes,
        peak_memory_bytes,
        over_budget_s,
    })
}

impl<'a> Sim<'a> {
    fn new(
        requests: &'a [Request],
        duration_us: u64,
        manager: &'a Manager,
        scenario: &'a Scenario,
    ) -> Sim<'a> {
        let ondemand = !matches!(manager, Manager::Static | Manager::Dynamic(_));
        let (initial, cap, driver) = match manager {
            Manager::Static => (scenario.max_workers, scenario.max_workers, None),
            Manager::Dynamic(spec) => (
                spec.start.min(scenario.max_workers),
                scenario.max_workers,
                None,
            ),
            Manager::Ondemand => (0, scenario.max_workers, None),
            Manager::Daemon {
                policy, file_cache, ..
            }
            | Manager::ModelCap { policy, file_cache } => {
                let daemon = matches!(manager, Manager::Daemon { .. });
                let additive = matches!(manager, Manager::Daemon { additive: true, .. });
                let spec = policy.spec();
                let (min, max) = (spec.min_workers, spec.max_workers.max(spec.min_workers));
                // The daemon starts a pool at what the budget allows at the
                // assumed worker size; the earlier design at its learning
                // cap.
                let cap = if daemon {
                    let fits = scenario.memory_budget_bytes / ASSUMED_WORKER_BYTES;
                    u32::try_from(fits).unwrap_or(u32::MAX).clamp(min, max)
                } else {
                    policy.learning_cap()
                };
                let driver = PolicyDriver {
                    policy: policy.clone(),
                    state: ScalerState::new(0, cap),
                    last_collect_us: None,
                    interval_us: NORMAL_INTERVAL_US,
                    previous_accepted: None,
                    previous_served: Vec::new(),
                    in_flight: false,
                    file_cache: *file_cache,
                    additive,
                    daemon,
                    cap,
                    plan: PlanMemory::default(),
                    last_kick_us: None,
                };
                (0, cap, Some(driver))
            }
        };
        let mut sim = Sim {
            scenario,
            manager,
            ondemand,
            requests,
            next_request: 0,
            share_cap: None,
            last_wanted: None,
            last_needed: None,
            name: "pool".to_owned(),
            board: Board::default(),
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
            alive_pss: 0,
            // Every manager starts on a warm master.
            masters: vec![Master {
                state: MasterState::Serving,
                cold_start_s: 0.0,
                started_requests: 0,
                cap,
                alive: 0,
                starting: 0,
                accepted: 0,
            }],
            primary: 0,
            extra: None,
            fork_turn: 0,
            memory_rng: Pcg32::new(scenario.seed, STREAM_MEMORY),
            spawn_rate: 1,
            driver,
            waits: Vec::with_capacity(requests.len()),
            responses: Vec::with_capacity(requests.len()),
            response_arrivals: Vec::with_capacity(requests.len()),
            waited: 0,
            over_target: 0,
            cold_served: 0,
            failed: 0,
            spawns: 0,
            peak: 0,
            peak_serving: 0,
            master_starts: 0,
            worker_seconds: 0.0,
            memory_byte_seconds: 0.0,
            change_log: Vec::new(),
            changes_detail: Vec::new(),
        };
        for _ in 0..initial {
            sim.spawn(0, None);
        }
        sim.schedule(0, Event::Tick);
        if sim.driver.is_some() {
            sim.schedule(0, Event::Probe);
        }
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
                        Manager::Dynamic(_) => self.dynamic_maintenance(),
                        Manager::Ondemand | Manager::Daemon { .. } | Manager::ModelCap { .. } => {
                            self.ondemand_reap()
                        }
                        Manager::Static => {}
                    }
                    if self.more_to_do() {
                        self.schedule(self.now_us + TICK_US, Event::Tick);
                    }
                }
                Event::Probe => {
                    self.collect();
                    if self.more_to_do() {
                        let probe_us = (self.scenario.probe_s * 1e6).max(1.0) as u64;
                        self.schedule(self.now_us + probe_us, Event::Probe);
                    }
                }
                Event::Apply { workers } => self.apply(workers),
                Event::MasterReady { master, role } => self.master_ready(master, role),
            }
        }
    }

    fn more_to_do(&self) -> bool {
        self.now_us < self.duration_us
            || self.next_request < self.requests.len()
            || !self.queue.is_empty()
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at_us, self.seq, event)));
    }

    /// Whether a request arriving at `arrival_us` counts (after the
    /// warm-up).
    fn measured(&self, arrival_us: u64) -> bool {
        arrival_us >= self.scenario.measure_from_us()
    }

    /// Moves the clock, integrating workers and memory from the end of the
    /// warm-up up to the trace end.
    fn advance(&mut self, to_us: u64) {
        self.now_us = to_us.max(self.now_us);
        let until = self.now_us.min(self.duration_us);
        let from = self.scenario.measure_from_us().max(self.integrated_to_us);
        if until > from {
            let dt = (until - from) as f64 / 1e6;
            self.worker_seconds += f64::from(self.alive) * dt;
            self.memory_byte_seconds += self.alive_pss as f64 * dt;
        }
        if until > self.integrated_to_us {
            self.integrated_to_us = until;
        }
    }

    /// Forks a worker of `master`: ready at once (`None`, a master's
    /// initial workers at time 0) or after a delay.
    fn spawn(&mut self, master: u32, ready_after_s: Option<f64>) {
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
                    served: 0,
                    last_duration_s: 0.0,
                });
                self.workers.len() - 1
            }
        };
        let worker = &mut self.workers[slot];
        worker.epoch += 1;
        worker.pss = pss;
        worker.master = master;
        worker.served = 0;
        worker.last_duration_s = 0.0;
        self.alive += 1;
        self.alive_pss += pss;
        self.masters[master as usize].alive += 1;
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
                self.masters[master as usize].starting += 1;
                let at = self.now_us + (delay * 1e6) as u64;
                self.schedule(at, Event::Ready { slot, epoch });
            }
        }
        if self.masters[master as usize].state == MasterState::Serving {
            self.peak_serving = self.peak_serving.max(self.serving_alive());
        }
    }

    fn kill(&mut self, slot: usize) {
        let worker = &mut self.workers[slot];
        let master = &mut self.masters[worker.master as usize];
        match worker.state {
            WorkerState::Dead => return,
            WorkerState::Starting => master.starting -= 1,
            WorkerState::Busy { .. } | WorkerState::Idle { .. } => {}
        }
        master.alive -= 1;
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
            if self.measured(request.arrival_us) {
                self.failed += 1;
            }
            return;
        }
        self.queue.push_back(request);
        self.fork_for_queue();
    }

    /// `ondemand`: the serving masters fork a worker for every waiting
    /// request that no worker being forked will take, each up to its own
    /// cap. With two serving masters the forks alternate between those
    /// with room: both see the queued connection, neither is preferred.
    fn fork_for_queue(&mut self) {
        if !self.ondemand {
            return;
        }
        loop {
            let serving = self.serving();
            let starting: usize = serving
                .iter()
                .flatten()
                .map(|&m| self.masters[m as usize].starting as usize)
                .sum();
            if starting >= self.queue.len() {
                break;
            }
            let with_room = serving.map(|m| {
                m.filter(|&m| {
                    let master = &self.masters[m as usize];
                    master.alive < master.cap
                })
            });
            let master = match with_room {
                [None, None] => break,
                [Some(only), None] | [None, Some(only)] => only,
                [Some(primary), Some(extra)] => {
                    self.fork_turn = self.fork_turn.wrapping_add(1);
                    if self.fork_turn % 2 == 1 {
                        extra
                    } else {
                        primary
                    }
                }
            };
            self.spawn(master, Some(self.scenario.fork_s));
        }
    }

    /// The masters that accept from the pool's socket: the primary, then
    /// the extra one (`None` where there is none or it does not serve).
    fn serving(&self) -> [Option<u32>; 2] {
        let serves = |m: &u32| self.masters[*m as usize].state == MasterState::Serving;
        [Some(self.primary).filter(serves), self.extra.filter(serves)]
    }

    /// Workers of the serving masters.
    fn serving_alive(&self) -> u32 {
        self.serving()
            .iter()
            .flatten()
            .map(|&m| self.masters[m as usize].alive)
            .sum()
    }

    fn start(&mut self, slot: usize, request: Request) {
        let wait = self.now_us.saturating_sub(request.arrival_us) as f64 / 1e6;
        let worker = &mut self.workers[slot];
        let master = &mut self.masters[worker.master as usize];
        let cold = if master.cold_start_s > 0.0 {
            let warmed = master.started_requests as f64 / self.scenario.cold_requests;
            master.cold_start_s * (-warmed).exp()
        } else {
            0.0
        };
        master.started_requests += 1;
        master.accepted += 1;
        let service_s = request.demand_s + cold;
        worker.state = WorkerState::Busy { retiring: false };
        worker.served += 1;
        worker.last_duration_s = service_s;
        let epoch = worker.epoch;
        if self.measured(request.arrival_us) {
            let mut response = wait + service_s;
            if let Some(limit) = self.scenario.client_timeout_s {
                if response > limit {
                    self.failed += 1;
                    response = limit;
                }
            }
            self.waits.push(wait);
            self.responses.push(response);
            self.response_arrivals.push(request.arrival_us);
            if wait > 0.0 {
                self.waited += 1;
            }
            if wait > self.scenario.slow_wait_s {
                self.over_target += 1;
            }
            if cold > COLD_SERVED_S {
                self.cold_served += 1;
            }
        }
        // At least 1 µs so a request never finishes at its own start.
        let at = self.now_us + ((service_s * 1e6) as u64).max(1);
        self.schedule(at, Event::Done { slot, epoch });
    }

    fn done(&mut self, slot: usize, epoch: u64) {
        let worker = &self.workers[slot];
        if worker.epoch != epoch {
            return;
        }
        let WorkerState::Busy { retiring } = worker.state else {
            return;
        };
        if retiring {
            self.kill(slot);
            return;
        }
        self.make_available(slot);
    }

    fn ready(&mut self, slot: usize, epoch: u64) {
        let worker = &self.workers[slot];
        if worker.epoch != epoch || worker.state != WorkerState::Starting {
            return;
        }
        self.masters[worker.master as usize].starting -= 1;
        self.make_available(slot);
    }

    fn make_available(&mut self, slot: usize) {
        // A worker of a master that is not serving yet waits for it.
        let master = self.workers[slot].master;
        if self.masters[master as usize].state != MasterState::Serving {
            self.workers[slot].state = WorkerState::Idle {
                since_us: self.now_us,
            };
            return;
        }
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
        let Manager::Dynamic(spec) = self.manager else {
            return;
        };
        let master = self.masters[self.primary as usize];
        // Workers being forked will be idle in a moment; php-fpm counts a
        // fresh child as idle as well.
        let idle = self.idle.len() as u32 + master.starting;
        if idle > spec.max_spare {
            if let Some(slot) = self.idle.pop_front() {
                self.kill(slot);
            }
            self.spawn_rate = 1;
        } else if idle < spec.min_spare {
            let room = master.cap.saturating_sub(master.alive);
            let count = self.spawn_rate.min(spec.min_spare - idle).min(room);
            for _ in 0..count {
                self.spawn(self.primary, Some(self.scenario.fork_s));
            }
            if room > 0 && self.spawn_rate < self.scenario.max_spawn_rate {
                self.spawn_rate = (self.spawn_rate * 2).min(self.scenario.max_spawn_rate);
            }
        } else {
            self.spawn_rate = 1;
        }
    }

    /// php-fpm `ondemand`: each serving master reaps its longest-idle
    /// worker once it has been idle for the timeout, one per second
    /// (fact 17).
    fn ondemand_reap(&mut self) {
        let timeout_us = (self.scenario.ondemand_idle_timeout_s * 1e6) as u64;
        for master in self.serving().into_iter().flatten() {
            // The idle list is in the order the workers became idle.
            let Some(position) = self
                .idle
                .iter()
                .position(|&slot| self.workers[slot].master == master)
            else {
                continue;
            };
            let slot = self.idle[position];
            if let WorkerState::Idle { since_us } = self.workers[slot].state {
                if self.now_us.saturating_sub(since_us) > timeout_us {
                    self.idle.remove(position);
                    self.kill(slot);
                }
            }
        }
    }

    /// What one collection sees: the serving masters' status pages added
    /// up (busy, idle, `accepted conn`, each worker's request count and,
    /// for a worker seen idle, its last request's duration), the accept
    /// queue and every worker's PSS. Service times of requests whose worker
    /// was not seen idle are estimated as the daemon's advisor does: busy
    /// workers times the interval over the requests completed. Updates the
    /// collector's memory of the previous look.
    fn look(&mut self) -> Option<Look> {
        let now = self.now_us;
        let serving = self.serving();
        let masters = &self.masters;
        let ondemand = self.ondemand;
        let queue_len = u32::try_from(self.queue.len()).unwrap_or(u32::MAX);
        let driver = self.driver.as_mut()?;
        let (mut busy, mut idle) = (0u32, 0u32);
        let mut pss = Vec::new();
        let mut finished = Vec::new();
        let (mut completed, mut unseen) = (0u64, 0u64);
        if driver.previous_served.len() < self.workers.len() {
            driver.previous_served.resize(self.workers.len(), None);
        }
        for (slot, worker) in self.workers.iter().enumerate() {
            if worker.state == WorkerState::Dead {
                driver.previous_served[slot] = None;
                continue;
            }
            pss.push(worker.pss);
            // The status pages are the serving masters'.
            if !serving.contains(&Some(worker.master)) {
                continue;
            }
            let is_idle = matches!(worker.state, WorkerState::Idle { .. });
            match worker.state {
                WorkerState::Busy { .. } => busy += 1,
                WorkerState::Idle { .. } => idle += 1,
                WorkerState::Starting | WorkerState::Dead => {}
            }
            // As the advisor does: a worker seen at the previous look that
            // took requests since finished all but maybe the current one;
            // if it is idle now, its last request's duration is on the
            // page, the others' durations are gone.
            if let Some((epoch, before)) = driver.previous_served[slot] {
                if epoch == worker.epoch {
                    let delta = worker.served.saturating_sub(before);
                    completed += delta;
                    if delta > 0 && is_idle {
                        finished.push(worker.last_duration_s);
                        unseen += delta - 1;
                    } else {
                        unseen += delta;
                    }
                }
            }
            driver.previous_served[slot] = Some((worker.epoch, worker.served));
        }
        if let (Some(last), true) = (driver.last_collect_us, unseen > 0 && completed > 0) {
            let busy_s = f64::from(busy) * (now.saturating_sub(last) as f64 / 1e6);
            let estimate = busy_s / completed as f64;
            if estimate > 0.0 {
                finished.extend(std::iter::repeat_n(estimate, unseen.min(1000) as usize));
            }
        }
        // `accepted conn` restarts with every master: a master not seen at
        // the previous look counts from its start.
        let counters: Vec<(u32, u64)> = serving
            .iter()
            .flatten()
            .map(|&m| (m, masters[m as usize].accepted))
            .collect();
        let accepted = match &driver.previous_accepted {
            Some(before) => counters
                .iter()
                .map(|&(m, now)| {
                    let seen = before.iter().find(|(b, _)| *b == m).map(|&(_, n)| n);
                    match seen {
                        Some(seen) => accepted_delta(Some(seen), now),
                        None => now,
                    }
                })
                .sum(),
            None => 0,
        };
        driver.previous_accepted = Some(counters);
        // With `ondemand` the daemon reports the applied cap as the total,
        // so "every worker busy" reads "cap reached".
        let total = serving
            .iter()
            .flatten()
            .map(|&m| {
                let master = &masters[m as usize];
                if ondemand {
                    master.cap
                } else {
                    master.alive
                }
            })
            .sum();
        Some(Look {
            accepted,
            queue_len,
            busy,
            idle,
            total,
            pss,
            finished,
        })
    }

    /// The manager's collector: a regular look at the adaptive interval,
    /// and at once when the probe finds requests queued. It sees what the
    /// status page and the kernel show, nothing more (see [`Sim::look`]).
    fn collect(&mut self) {
        let now = self.now_us;
        let Some(driver) = self.driver.as_ref() else {
            return;
        };
        // The daemon's pool actor awaits the supervisor during a
        // hand-over: the looks meanwhile are not seen, the next one after
        // it is.
        if driver.daemon && driver.in_flight {
            return;
        }
        let kicked = driver.daemon && self.board.borrow_mut().kicked.remove(&self.name);
        let due = kicked
            || driver
                .last_collect_us
                .is_none_or(|last| now.saturating_sub(last) >= driver.interval_us);
        if !due && self.queue.is_empty() {
            return;
        }
        let Some(look) = self.look() else {
            return;
        };
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        let daemon = driver.daemon;
        // The daemon reports the applied cap as the pool's size: ondemand
        // forks up to it, so "every worker busy" means the cap is hit.
        let (idle, total) = if daemon {
            (driver.cap.saturating_sub(look.busy), driver.cap.max(1))
        } else {
            (look.idle, look.total)
        };
        let observation = Observation {
            now_ms: now / 1000,
            accepted: look.accepted,
            queue_len: look.queue_len,
            busy: look.busy,
            idle,
            total,
            worker_pss_bytes: &look.pss,
            finished_service_s: &look.finished,
            cpu_cores_used: None,
            cpu_cores_limit: None,
            memory_budget_bytes: Some(self.scenario.memory_budget_bytes),
            shared_memory_bytes: self.scenario.shared_bytes,
            share_cap_workers: if daemon { None } else { self.share_cap },
            change_in_flight: !daemon && driver.in_flight,
        };
        let (queue_len, busy) = (look.queue_len, look.busy);
        let before = driver.state.workers();
        let (decision, state) = decide(&driver.policy, &driver.state, &observation);
        driver.state = state;
        self.last_wanted = decision.figures.model_workers;
        self.last_needed = decision.figures.needed_workers;
        driver.last_collect_us = Some(now);
        let busy_pool = queue_len > 0 || busy * 2 >= total.max(1);
        driver.interval_us = if busy_pool {
            BUSY_INTERVAL_US
        } else {
            NORMAL_INTERVAL_US
        };
        // Workers of stopped masters still finishing their requests (and
        // of a master not serving yet).
        let serving = self.serving();
        let retiring = self
            .workers
            .iter()
            .filter(|w| w.state != WorkerState::Dead && !serving.contains(&Some(w.master)))
            .count();
        let alive = self.alive;
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        let change = if daemon {
            // As the pool actor does: its entry on the board, then the cap
            // over every pool's latest entry.
            let spec = driver.policy.spec();
            // The simulated ondemand master reaps a worker idle for
            // process_idle_timeout (the real one rarely does: the kernel
            // spreads requests over all workers), so it never carries the
            // idle surplus that makes the daemon renew a master.
            let pressure = Pressure {
                busy,
                queue: queue_len,
                workers: busy,
            };
            let limits = (spec.min_workers.max(1), spec.max_workers.max(1));
            let (claim, plan) = board_demand(
                now / 1000,
                ModelSizes::from(&decision.figures),
                pressure,
                driver.cap,
                limits,
                Damping::default(),
                driver.plan,
            );
            driver.plan = plan;
            let input = PoolPlanInput {
                name: self.name.clone(),
                priority: spec.priority,
                weight: spec.weight,
                min_workers: limits.0,
                max_workers: limits.1,
                wanted_workers: None,
                needed_workers: None,
                pressing: false,
                worker_bytes: decision.figures.p95_pss_bytes,
                shared_bytes: 0,
                applied_cap: driver.cap,
                draining: if retiring > 0 { alive } else { 0 },
                fixed: false,
            }
            .claiming(claim);
            let all: Vec<PoolPlanInput> = {
                let mut board = self.board.borrow_mut();
                board.entries.insert(self.name.clone(), input);
                board.entries.values().cloned().collect()
            };
            let me = all.iter().position(|p| p.name == self.name).unwrap_or(0);
            let (step, memory) = next_cap(
                now / 1000,
                self.scenario.memory_budget_bytes,
                &all,
                me,
                pressure,
                Damping::default(),
                driver.plan,
            );
            driver.plan = memory;
            let kick_due = driver
                .last_kick_us
                .is_none_or(|t| now.saturating_sub(t) >= KICK_EVERY_US);
            if claim.pressing && step == CapStep::Hold("waiting_for_memory") && kick_due {
                driver.last_kick_us = Some(now);
                let mut board = self.board.borrow_mut();
                let others: Vec<String> = board
                    .entries
                    .keys()
                    .filter(|name| **name != self.name)
                    .cloned()
                    .collect();
                board.kicked.extend(others);
            }
            match step {
                CapStep::Change { to, rule } => {
                    let from = driver.cap;
                    driver.cap = to;
                    // As the pool actor does: growth is reserved on the
                    // board at once, so that no other pool plans into it.
                    if let Some(entry) = self.board.borrow_mut().entries.get_mut(&self.name) {
                        entry.applied_cap = entry.applied_cap.max(to);
                    }
                    Some((from, to, rule))
                }
                CapStep::Hold(_) | CapStep::Renew { .. } => None,
            }
        } else if let Action::Resize { workers, reason } = decision.action {
            Some((before, workers, reason.rule()))
        } else {
            None
        };
        if let Some((from, to, rule)) = change {
            driver.in_flight = true;
            let direction = if to > from { 1 } else { -1 };
            self.change_log.push((now as f64 / 1e6, direction));
            self.changes_detail.push(ChangeRecord {
                at_s: now as f64 / 1e6,
                from,
                to,
                rule,
            });
            let apply_us = (self.scenario.apply_delay_s * 1e6) as u64;
            self.schedule(now + apply_us, Event::Apply { workers: to });
        }
    }

    /// A change to `workers` as the supervisor applies it. A hand-over
    /// starts a new master with `workers` as `pm.max_children` on the
    /// inherited socket. Additively (the daemon's manager with `additive`)
    /// a cap above the primary master's starts an extra master with the
    /// difference as its cap (unless the extra master already has it); the
    /// primary's own cap stops the extra master and starts none; only a
    /// cap below the primary's is a hand-over. A `static` master forks all
    /// its workers now, an `ondemand` one none. A new master's OPcache is
    /// cold (or filled from the file cache).
    fn apply(&mut self, workers: u32) {
        let additive = self.driver.as_ref().is_some_and(|driver| driver.additive);
        let primary_cap = self.masters[self.primary as usize].cap;
        if additive && workers >= primary_cap {
            let extra_cap = workers - primary_cap;
            let current = self.extra.map(|m| self.masters[m as usize].cap);
            if extra_cap == 0 {
                if let Some(extra) = self.extra.take() {
                    self.stop(extra);
                }
                self.change_applied();
            } else if current == Some(extra_cap) {
                self.change_applied();
            } else {
                self.start_master(extra_cap, Role::Extra);
            }
            return;
        }
        self.start_master(workers, Role::Primary);
    }

    /// Starts a master that will serve as `role` once ready, `master_start_s`
    /// from now.
    fn start_master(&mut self, cap: u32, role: Role) {
        let scenario = self.scenario;
        let file_cache = self.driver.as_ref().is_some_and(|driver| driver.file_cache);
        self.masters.push(Master {
            state: MasterState::Starting,
            cold_start_s: if file_cache {
                scenario.file_cache_cold_start_s
            } else {
                scenario.cold_start_s
            },
            started_requests: 0,
            cap,
            alive: 0,
            starting: 0,
            accepted: 0,
        });
        self.master_starts += 1;
        // At most one master per change, far below u32::MAX in any run.
        let master = (self.masters.len() - 1) as u32;
        let at = self.now_us + (scenario.master_start_s * 1e6) as u64;
        // Scheduled before the workers' readiness, so that at that instant
        // the master serves first and its workers then take the queue.
        self.schedule(at, Event::MasterReady { master, role });
        if !self.ondemand {
            for _ in 0..cap {
                self.spawn(master, Some(scenario.master_start_s));
            }
        }
    }

    /// The change is in place: the daemon's pool actor looks again.
    fn change_applied(&mut self) {
        if let Some(driver) = self.driver.as_mut() {
            driver.in_flight = false;
        }
    }

    /// A new master is ready and serves from now on. As the primary (a
    /// hand-over) it replaces every other master; as the extra one it
    /// replaces the previous extra master, and the primary serves on.
    fn master_ready(&mut self, master: u32, role: Role) {
        if self.masters[master as usize].state != MasterState::Starting {
            return;
        }
        self.masters[master as usize].state = MasterState::Serving;
        self.change_applied();
        let replaced: Vec<u32> = match role {
            Role::Primary => {
                let old = std::mem::replace(&mut self.primary, master);
                std::iter::once(old).chain(self.extra.take()).collect()
            }
            Role::Extra => self.extra.replace(master).into_iter().collect(),
        };
        for old in replaced {
            self.stop(old);
        }
        // Workers of this master that were ready before it was.
        for slot in 0..self.workers.len() {
            let worker = &self.workers[slot];
            if worker.master == master && matches!(worker.state, WorkerState::Idle { .. }) {
                self.make_available(slot);
            }
        }
        self.peak_serving = self.peak_serving.max(self.serving_alive());
        self.fork_for_queue();
    }

    /// Stops `master` gracefully (SIGQUIT): idle and starting workers exit
    /// at once, busy ones finish their request first (the manager sets
    /// `process_control_timeout`, fact 3). Its workers' memory counts until
    /// they have exited.
    fn stop(&mut self, master: u32) {
        if self.masters[master as usize].state == MasterState::Stopped {
            return;
        }
        self.masters[master as usize].state = MasterState::Stopped;
        let workers = &self.workers;
        self.idle.retain(|&slot| workers[slot].master != master);
        for slot in 0..self.workers.len() {
            if self.workers[slot].master != master {
                continue;
            }
            match self.workers[slot].state {
                WorkerState::Busy { .. } => {
                    self.workers[slot].state = WorkerState::Busy { retiring: true };
                }
                WorkerState::Idle { .. } | WorkerState::Starting => self.kill(slot),
                WorkerState::Dead => {}
            }
        }
    }

    fn finish(mut self) -> SimResult {
        let requests = self
            .requests
            .iter()
            .filter(|r| self.measured(r.arrival_us))
            .count() as u64;
        let manager = self.manager;
        self.advance(self.duration_us);
        // Changes during the warm-up are not the run's.
        let from = self.scenario.measure_from_s;
        self.change_log.retain(|&(at_s, _)| at_s >= from);
        self.changes_detail.retain(|c| c.at_s >= from);
        let mut after_scale_up = self.after_scale_up_responses();
        after_scale_up.sort_unstable_by(f64::total_cmp);
        self.waits.sort_unstable_by(f64::total_cmp);
        self.responses.sort_unstable_by(f64::total_cmp);
        let percentile = |values: &[f64], q: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            let rank = (q * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        SimResult {
            manager: manager.name(),
            requests,
            failed: self.failed,
            p50_wait_s: percentile(&self.waits, 0.50),
            p99_wait_s: percentile(&self.waits, 0.99),
            max_wait_s: self.waits.last().copied().unwrap_or(0.0),
            p50_response_s: percentile(&self.responses, 0.50),
            p99_response_s: percentile(&self.responses, 0.99),
            max_response_s: self.responses.last().copied().unwrap_or(0.0),
            waited: self.waited,
            over_target: self.over_target,
            cold_served: self.cold_served,
            worker_seconds: self.worker_seconds,
            memory_gib_seconds: self.memory_byte_seconds / (1024.0 * 1024.0 * 1024.0),
            changes: self.change_log.len() as u64,
            master_starts: self.master_starts,
            change_log: self.change_log,
            changes_detail: self.changes_detail,
            spawns: self.spawns,
            peak_workers: self.peak,
            peak_serving_workers: self.peak_serving,
            after_scale_up_requests: after_scale_up.len() as u64,
            after_scale_up_p99_response_s: percentile(&after_scale_up, 0.99),
        }
    }

    /// Response times of the requests that arrived within
    /// [`AFTER_SCALE_UP_S`] of a scale-up decision.
    fn after_scale_up_responses(&self) -> Vec<f64> {
        let window_us = (AFTER_SCALE_UP_S * 1e6) as u64;
        // Decisions are logged in time order.
        let ups: Vec<u64> = self
            .change_log
            .iter()
            .filter(|&&(_, direction)| direction > 0)
            .map(|&(at_s, _)| (at_s * 1e6).round() as u64)
            .collect();
        self.response_arrivals
            .iter()
            .zip(&self.responses)
            .filter(|&(&arrival, _)| {
                // The latest scale-up at or before the arrival.
                let after = ups.partition_point(|&up| up <= arrival);
                after > 0 && arrival - ups[after - 1] < window_us
            })
            .map(|(_, &response)| response)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::Claim;

    #[test]
    fn a_client_timeout_fails_late_answers_and_caps_them() {
        // Ten times the load one worker can serve: the queue grows.
        let trace = TraceSpec::Csv("time_s,rate\n0,200\n20,200\n".to_owned());
        let mut scenario = Scenario::standard(5);
        scenario.max_workers = 1;
        let patient = run(&trace, &Manager::Static, &scenario).unwrap();
        scenario.client_timeout_s = Some(1.0);
        let timed = run(&trace, &Manager::Static, &scenario).unwrap();
        assert_eq!(patient.failed, 0);
        assert!(patient.max_response_s > 5.0, "{}", patient.max_response_s);
        assert!(
            timed.failed > patient.requests / 2,
            "{} of {}",
            timed.failed,
            timed.requests
        );
        assert!(
            (timed.max_response_s - 1.0).abs() < 1e-9,
            "{}",
            timed.max_response_s
        );
    }

    #[test]
    fn the_warm_up_is_served_but_left_out_of_the_figures() {
        let trace = TraceSpec::Csv("time_s,rate\n0,40\n30,40\n".to_owned());
        let policy = crate::Policy::default();
        for manager in [Manager::Ondemand, Manager::daemon(&policy)] {
            // Workers of 20 MiB and a budget of 24 of them: the daemon
            // starts at what the budget allows at the assumed 64 MiB a
            // worker and grows once it has measured them, in the warm-up.
            let mut scenario = Scenario::standard(3);
            scenario.pss_mean_bytes = 20.0 * 1024.0 * 1024.0;
            scenario.pss_sd_bytes = 0.4 * 1024.0 * 1024.0;
            scenario.memory_budget_bytes = 24 * 20 * 1024 * 1024;
            let all = run(&trace, &manager, &scenario).unwrap();
            scenario.measure_from_s = 10.0;
            let later = run(&trace, &manager, &scenario).unwrap();
            // About two thirds of the requests arrive after the warm-up.
            let share = later.requests as f64 / all.requests as f64;
            assert!((0.55..0.8).contains(&share), "{} {share}", manager.name());
            assert!(later.memory_gib_seconds < all.memory_gib_seconds);
            assert!(later.changes_detail.iter().all(|c| c.at_s >= 10.0));
            if matches!(manager, Manager::Daemon { .. }) {
                // The daemon's first changes, and the cold requests into
                // its new masters, fall in the warm-up.
                assert!(all.changes_detail.iter().any(|c| c.at_s < 10.0));
                assert!(all.cold_served > 0);
                assert!(later.cold_served < all.cold_served);
            }
        }
    }

    /// The collector is not told each request's service time: only the
    /// last duration of a worker seen idle is on the status page; the
    /// rest is one estimate repeated. The counter still counts them all.
    #[test]
    fn the_collector_sees_only_the_status_page() {
        let mut scenario = Scenario::standard(3);
        scenario.duration_s = Some(120.0);
        let (requests, duration_us) =
            draw_requests(&TraceSpec::Steady, &scenario).expect("requests");
        let manager = Manager::ModelCap {
            policy: Policy::default(),
            file_cache: false,
        };
        let mut sim = Sim::new(&requests, duration_us, &manager, &scenario);
        // The test takes the looks itself.
        sim.heap
            .retain(|Reverse((_, _, event))| *event != Event::Probe);
        sim.run_until(60_000_000);
        sim.look().expect("a policy driver");
        sim.driver.as_mut().expect("driver").last_collect_us = Some(sim.now_us);
        let started_before = sim.responses.len();
        sim.run_until(65_000_000);
        let look = sim.look().expect("a policy driver");
        let started = sim.responses.len() - started_before;
        assert!(started > 100, "{started} requests in 5 s");
        assert_eq!(look.accepted, started as u64, "the counter sees them all");
        assert!(look.finished.len() <= started);
        let mut distinct = look.finished.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(
            distinct.len() <= look.idle as usize + 1,
            "{} distinct durations from {} idle workers",
            distinct.len(),
            look.idle
        );
        // Under ondemand the total is the applied cap.
        assert_eq!(look.total, Policy::default().learning_cap());
    }

    /// Requests arriving together, each needing `demand_s` of service.
    fn burst(at_s: f64, count: usize, demand_s: f64) -> Vec<Request> {
        vec![
            Request {
                arrival_us: (at_s * 1e6) as u64,
                demand_s,
            };
            count
        ]
    }

    /// The standard scenario with a budget of four assumed workers: the
    /// daemon's manager starts the pool's primary master at a cap of 4.
    fn four_worker_budget() -> Scenario {
        let mut scenario = Scenario::standard(1);
        scenario.memory_budget_bytes = 4 * ASSUMED_WORKER_BYTES;
        scenario
    }

    /// The daemon's manager with the default policy.
    fn daemon(additive: bool) -> Manager {
        Manager::Daemon {
            policy: Policy::default(),
            file_cache: true,
            additive,
        }
    }

    /// A pool whose changes the test applies itself: no looks.
    fn without_looks<'a>(
        requests: &'a [Request],
        manager: &'a Manager,
        scenario: &'a Scenario,
    ) -> Sim<'a> {
        let mut sim = Sim::new(requests, 10_000_000, manager, scenario);
        sim.heap
            .retain(|Reverse((_, _, event))| *event != Event::Probe);
        sim
    }

    /// Workers alive per master, by master index.
    fn alive_per_master(sim: &Sim<'_>) -> Vec<u32> {
        sim.masters.iter().map(|m| m.alive).collect()
    }

    fn retiring(sim: &Sim<'_>, master: u32) -> usize {
        sim.workers
            .iter()
            .filter(|w| w.master == master && w.state == WorkerState::Busy { retiring: true })
            .count()
    }

    /// 12 requests of 2 s at 1 s into a pool capped at 4, and a change
    /// to 8 at 1.05 s: by 1.5 s the new cap serves.
    fn grown_to_eight(additive: bool) -> (Vec<Request>, Manager, Scenario) {
        let mut requests = burst(1.0, 12, 2.0);
        // Short work for every worker once the burst is over.
        requests.extend(burst(5.5, 8, 0.05));
        (requests, daemon(additive), four_worker_budget())
    }

    /// Growing from the primary's cap of 4 to 8 starts an extra master
    /// with a cap of 4 beside it: the primary (same master, same workers,
    /// warm OPcache) serves on, only the extra master's requests pay the
    /// file cache's cold start, and the workers never exceed the new cap.
    /// A hand-over instead replaces the primary, and its new master forks
    /// for the queue while the old one's busy workers still run.
    #[test]
    fn growing_adds_an_extra_master_and_keeps_the_primary() {
        let (requests, manager, scenario) = grown_to_eight(true);
        let mut sim = without_looks(&requests, &manager, &scenario);
        assert_eq!(sim.masters[0].cap, 4);
        sim.schedule(1_050_000, Event::Apply { workers: 8 });
        sim.run_until(1_200_000);
        // Not ready yet: only the primary serves.
        assert_eq!((sim.primary, sim.extra), (0, None));
        assert_eq!(sim.masters[1].state, MasterState::Starting);
        assert_eq!(sim.queue.len(), 8);
        sim.run_until(1_500_000);
        assert_eq!((sim.primary, sim.extra), (0, Some(1)));
        assert_eq!(sim.masters[0].state, MasterState::Serving);
        assert_eq!(sim.masters[0].cold_start_s, 0.0, "the primary stays warm");
        assert_eq!((sim.masters[0].cap, sim.masters[1].cap), (4, 4));
        assert_eq!(alive_per_master(&sim), [4, 4]);
        assert_eq!(retiring(&sim, 0), 0, "the primary's workers serve on");
        assert_eq!(sim.master_starts, 1);
        assert_eq!(sim.peak, 8, "never more workers than the cap of 8");
        // The extra master's four requests are its first, with a cold
        // OPcache warmed from the file cache; the queue waits for it.
        assert_eq!(sim.masters[1].started_requests, 4);
        assert_eq!(
            sim.masters[1].cold_start_s,
            scenario.file_cache_cold_start_s
        );
        assert_eq!(sim.queue.len(), 4, "4 + 4 busy, 4 queued");
        sim.run_until(5_600_000);
        // At 5.5 s every worker takes one: the primary's are warm, the
        // extra master's still pay part of the cold start.
        let last: Vec<f64> = sim.responses[12..].to_vec();
        let warm = last.iter().filter(|&&r| (r - 0.05).abs() < 1e-9).count();
        assert_eq!((last.len(), warm), (8, 4), "{last:?}");
        assert_eq!(sim.masters[0].started_requests, 4 + 4 + 4);

        let (requests, manager, scenario) = grown_to_eight(false);
        let mut sim = without_looks(&requests, &manager, &scenario);
        sim.schedule(1_050_000, Event::Apply { workers: 8 });
        sim.run_until(1_500_000);
        assert_eq!((sim.primary, sim.extra), (1, None));
        assert_eq!(sim.masters[0].state, MasterState::Stopped);
        assert_eq!(retiring(&sim, 0), 4);
        assert_eq!(alive_per_master(&sim), [4, 8]);
        assert_eq!(
            sim.peak, 12,
            "the old master's busy workers and the new cap"
        );
    }

    /// Back to the primary's cap: the extra master is stopped and no
    /// master starts; its busy workers finish their request, and their
    /// memory counts (on the board as `draining`) until they have exited,
    /// so that another pool cannot plan into it meanwhile.
    #[test]
    fn shrinking_to_the_primary_cap_stops_only_the_extra_master() {
        let (mut requests, manager, scenario) = grown_to_eight(true);
        // Every worker busy again at 6 s, for 1 s.
        requests.extend(burst(6.0, 8, 1.0));
        let mut sim = without_looks(&requests, &manager, &scenario);
        sim.schedule(1_050_000, Event::Apply { workers: 8 });
        sim.run_until(6_050_000);
        assert_eq!(alive_per_master(&sim), [4, 4]);
        let extra_pss: u64 = sim
            .workers
            .iter()
            .filter(|w| w.master == 1 && w.state != WorkerState::Dead)
            .map(|w| w.pss)
            .sum();
        let pss_before = sim.alive_pss;
        sim.schedule(6_100_000, Event::Apply { workers: 4 });
        sim.run_until(6_150_000);
        assert_eq!((sim.primary, sim.extra), (0, None));
        assert_eq!(sim.masters.len(), 2, "no master started");
        assert_eq!(sim.master_starts, 1);
        assert_eq!(sim.masters[0].state, MasterState::Serving);
        assert_eq!(sim.masters[1].state, MasterState::Stopped);
        assert_eq!(retiring(&sim, 0), 0);
        assert_eq!(retiring(&sim, 1), 4, "the extra's requests finish");
        assert_eq!(sim.alive_pss, pss_before, "their memory still counts");
        // The pool's look tells the board: every worker it runs, until
        // the stopped master's have exited.
        sim.driver.as_mut().expect("driver").last_collect_us = None;
        sim.collect();
        // The test applies the changes: whatever that look decided is not.
        sim.heap
            .retain(|Reverse((_, _, event))| !matches!(event, Event::Apply { .. }));
        let mut entry = sim.board.borrow().entries["pool"].clone();
        assert_eq!(entry.draining, 8, "{entry:?}");
        // Another pool pressing for memory in a budget of 12 workers, this
        // one content with its 4: the draining workers are not room for
        // the other.
        entry.applied_cap = 4;
        entry = entry.claiming(Claim {
            need: 4,
            want: 4,
            pressing: false,
        });
        let bytes = entry.worker_bytes.expect("measured");
        let other = PoolPlanInput {
            name: "other".to_owned(),
            priority: 0,
            weight: 1.0,
            min_workers: 1,
            max_workers: 32,
            wanted_workers: Some(8),
            needed_workers: Some(8),
            pressing: true,
            worker_bytes: Some(bytes),
            shared_bytes: 0,
            applied_cap: 4,
            draining: 0,
            fixed: false,
        };
        let budget = 12 * bytes;
        let pressure = Pressure {
            busy: 4,
            queue: 8,
            workers: 4,
        };
        let plan = |pool: &PoolPlanInput| {
            next_cap(
                6_150,
                budget,
                &[pool.clone(), other.clone()],
                1,
                pressure,
                Damping::default(),
                PlanMemory::default(),
            )
            .0
        };
        assert!(
            matches!(plan(&entry), CapStep::Hold(_)),
            "{:?}",
            plan(&entry)
        );
        // Once they have exited, the memory is free.
        sim.run_until(7_200_000);
        assert_eq!(alive_per_master(&sim), [4, 0]);
        assert_eq!(sim.alive_pss, pss_before - extra_pss);
        let drained = PoolPlanInput {
            draining: 0,
            applied_cap: 4,
            ..entry
        };
        assert!(
            matches!(plan(&drained), CapStep::Change { to: 8, .. }),
            "{:?}",
            plan(&drained)
        );
    }

    /// Below the primary's cap: a hand-over of the primary to the new cap,
    /// and the extra master stops with the old primary once the new one is
    /// ready; until then both serve.
    #[test]
    fn shrinking_below_the_primary_cap_hands_over_and_stops_the_extra() {
        let (mut requests, manager, scenario) = grown_to_eight(true);
        requests.extend(burst(6.0, 8, 1.0));
        let mut sim = without_looks(&requests, &manager, &scenario);
        sim.schedule(1_050_000, Event::Apply { workers: 8 });
        sim.run_until(6_050_000);
        sim.schedule(6_100_000, Event::Apply { workers: 2 });
        sim.run_until(6_200_000);
        assert_eq!((sim.primary, sim.extra), (0, Some(1)), "not ready yet");
        assert_eq!(sim.masters[2].state, MasterState::Starting);
        sim.run_until(6_350_000);
        assert_eq!((sim.primary, sim.extra), (2, None));
        assert_eq!(sim.master_starts, 2);
        assert_eq!(sim.masters[2].cap, 2);
        assert_eq!(
            sim.masters[2].cold_start_s,
            scenario.file_cache_cold_start_s
        );
        assert_eq!(sim.masters[0].state, MasterState::Stopped);
        assert_eq!(sim.masters[1].state, MasterState::Stopped);
        assert_eq!((retiring(&sim, 0), retiring(&sim, 1)), (4, 4));
        sim.run_until(7_200_000);
        assert_eq!(alive_per_master(&sim), [0, 0, 0]);
        assert_eq!(sim.alive, 0);
    }

    /// With two serving masters, both fork for queued requests, each up
    /// to its own cap, and every idle worker takes from the one queue.
    #[test]
    fn both_masters_fork_for_the_shared_queue_up_to_their_caps() {
        let (mut requests, manager, scenario) = grown_to_eight(true);
        requests.extend(burst(20.0, 10, 1.0));
        let mut sim = without_looks(&requests, &manager, &scenario);
        sim.schedule(1_050_000, Event::Apply { workers: 8 });
        sim.run_until(19_500_000);
        // Idle workers reaped after the timeout, one per master a second.
        assert_eq!(alive_per_master(&sim), [0, 0]);
        sim.run_until(20_100_000);
        assert_eq!(alive_per_master(&sim), [4, 4]);
        assert_eq!(sim.queue.len(), 2);
        assert_eq!(sim.masters[1].started_requests, 4 + 4 + 4);
    }

    /// The after-scale-up figures score requests arriving within 5 s of a
    /// scale-up decision only.
    #[test]
    fn after_scale_up_counts_the_window_after_each_scale_up() {
        let mut requests = burst(1.0, 2, 0.05);
        requests.extend(burst(2.0, 3, 0.05));
        requests.extend(burst(8.0, 1, 0.05));
        let manager = daemon(true);
        let scenario = four_worker_budget();
        let mut sim = without_looks(&requests, &manager, &scenario);
        sim.run_until(u64::MAX);
        sim.change_log = vec![(1.5, 1), (1.9, -1)];
        let result = sim.finish();
        assert_eq!(result.after_scale_up_requests, 3);
    }
}
