//! The cap a pool should run with: pure planning over the shared memory
//! budget, with the damping that keeps hand-overs rare.
//!
//! An autoscaled pool runs php-fpm's `ondemand`: its running master forks
//! workers per request (they share its warm OPcache) up to `pm.max_children`,
//! the *cap*. The manager's job is the cap: as high as the memory budget
//! allows, so that a spike is absorbed by forks inside the running master
//! and never waits for a hand-over; shared between pools by what each one
//! needs (`fpm_autoscale::share_budget`), so that a busy pool can use the
//! memory a quiet one does not. Moving a cap needs a new master (a
//! hand-over), so the cap moves only when the share really changed:
//! - up at once when the pool presses against its cap (a queue, or nearly
//!   every allowed worker busy), otherwise when it is beyond the band;
//!   cooldown or not when requests pile up (a queue of half the cap);
//! - down when the share stayed below the cap for `shrink_after`, or at once
//!   (cooldown or not) when another pool's requests wait for the memory;
//! - otherwise never within `cooldown` of the previous change;
//! - never so that the caps of all pools together exceed the budget: a pool
//!   grows only into memory the others' *applied* caps leave free, so the
//!   others shrink first (and their previous masters' workers have
//!   finished: `draining`).

use crate::share::{share_budget_protecting_needs, PoolDemand};

/// Memory assumed for one worker until its PSS has been measured.
pub const ASSUMED_WORKER_BYTES: u64 = 64 << 20;

/// One pool as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlanInput {
    pub name: String,
    pub priority: i32,
    pub weight: f64,
    pub min_workers: u32,
    pub max_workers: u32,
    /// What the pool would like ([`Claim::want`]), `None` while unknown.
    pub wanted_workers: Option<u32>,
    /// What the pool needs now ([`Claim::need`]), `None` while unknown.
    pub needed_workers: Option<u32>,
    /// Requests wait in this pool now ([`Claim::pressing`]).
    pub pressing: bool,
    /// Learned memory one more worker costs (its private memory, or its
    /// PSS where that is not known), `None` until measured.
    pub worker_bytes: Option<u64>,
    /// Memory the pool's workers share (code, OPcache: their PSS beyond
    /// their private memory), held whatever the cap; 0 when not known.
    pub shared_bytes: u64,
    /// The cap the pool's master runs with now.
    pub applied_cap: u32,
    /// Workers a stopped master still runs after a hand-over to a smaller
    /// cap or after an extra master was stopped or replaced (they finish
    /// their requests, then exit), 0 otherwise: their memory is not free
    /// for another pool yet.
    pub draining: u32,
    /// Pinned, paused or not autoscaled: its cap does not move, and its
    /// memory counts as it is.
    pub fixed: bool,
}

impl PoolPlanInput {
    /// The pool's entry on the board from its claim.
    pub fn claiming(mut self, claim: Claim) -> Self {
        self.wanted_workers = Some(claim.want);
        self.needed_workers = Some(claim.need);
        self.pressing = claim.pressing;
        self
    }

    fn bytes(&self) -> u64 {
        self.worker_bytes.unwrap_or(ASSUMED_WORKER_BYTES).max(1)
    }
}

/// The share of the budget each pool would get now: `(granted, gives_way)`
/// in the order of `pools`. Every pool's need is served first (fixed pools
/// need what they hold), then wants, then what is left up to each maximum.
/// When the needs of one priority level do not fit in what the higher
/// levels leave, each is cut in proportion: a pool that needs 24 beside
/// one that needs 7 in a budget of 24 gets 18 and the other 5, where an
/// equal split of workers would leave the busy pool short by a third and
/// the quiet one with idle memory.
pub fn shares(budget_bytes: u64, pools: &[PoolPlanInput]) -> Vec<(u32, bool)> {
    let budget_bytes = for_workers(budget_bytes, pools);
    let needs = fitted_needs(budget_bytes, pools);
    let demands: Vec<PoolDemand> = pools
        .iter()
        .map(|p| {
            let (min, wanted, max) = if p.fixed {
                (p.applied_cap, p.applied_cap, p.applied_cap)
            } else {
                let wanted = p
                    .wanted_workers
                    .unwrap_or(p.applied_cap)
                    .clamp(p.min_workers, p.max_workers.max(p.min_workers));
                (p.min_workers, wanted, p.max_workers.max(p.min_workers))
            };
            PoolDemand {
                name: p.name.clone(),
                // Fixed pools are served first: their memory is spent.
                priority: if p.fixed { i32::MAX } else { p.priority },
                weight: p.weight,
                min_workers: min,
                wanted_workers: wanted,
                max_workers: max,
                worker_bytes: p.bytes(),
            }
        })
        .collect();
    share_budget_protecting_needs(budget_bytes, &demands, &needs)
        .into_iter()
        .map(|s| (s.granted_workers, s.gives_way))
        .collect()
}

/// The budget less what every pool's workers share: what is left is
/// shared out worker by worker.
fn for_workers(budget_bytes: u64, pools: &[PoolPlanInput]) -> u64 {
    let shared: u64 = pools.iter().map(|p| p.shared_bytes).sum();
    budget_bytes.saturating_sub(shared)
}

/// Every pool's need ([`PoolPlanInput::needed_workers`]), cut in
/// proportion within a priority level when the level's needs do not fit
/// in the memory the fixed pools and higher levels leave.
fn fitted_needs(budget_bytes: u64, pools: &[PoolPlanInput]) -> Vec<u32> {
    let mut needs: Vec<u32> = pools
        .iter()
        .map(|p| {
            if p.fixed {
                p.applied_cap
            } else {
                p.needed_workers.unwrap_or(p.min_workers).max(p.min_workers)
            }
        })
        .collect();
    let fixed: u64 = pools
        .iter()
        .filter(|p| p.fixed)
        .map(|p| u64::from(p.applied_cap) * p.bytes())
        .sum();
    let mut left = budget_bytes.saturating_sub(fixed);
    let mut levels: Vec<i32> = pools
        .iter()
        .filter(|p| !p.fixed)
        .map(|p| p.priority)
        .collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    for level in levels {
        let members: Vec<usize> = (0..pools.len())
            .filter(|&i| !pools[i].fixed && pools[i].priority == level)
            .collect();
        let wanted: u64 = members
            .iter()
            .map(|&i| u64::from(needs[i]) * pools[i].bytes())
            .sum();
        if wanted > left {
            let fraction = left as f64 / wanted as f64;
            for &i in &members {
                // Rounded down, so that the cut needs fit together.
                needs[i] = (f64::from(needs[i]) * fraction).floor() as u32;
            }
        }
        let used: u64 = members
            .iter()
            .map(|&i| u64::from(needs[i]) * pools[i].bytes())
            .sum();
        left = left.saturating_sub(used);
    }
    needs
}

/// What the pool is doing now, as far as the cap is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    pub busy: u32,
    pub queue: u32,
    /// Workers the master has forked now (busy and idle).
    pub workers: u32,
}

impl Pressure {
    /// Requests pile up: a queue of half the cap or more (at least 2).
    fn piles_up(&self, cap: u32) -> bool {
        self.queue > 0 && self.queue >= (cap / 2).max(2)
    }
}

/// Damping settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Damping {
    /// No change within this long of the previous one (ms).
    pub cooldown_ms: u64,
    /// A smaller share must last this long before the cap comes down (ms).
    pub shrink_after_ms: u64,
    /// Changes smaller than this fraction of the cap (at least 1 worker,
    /// or 2 for caps above 10) are not worth a new master.
    pub band: f64,
    /// Idle workers beyond the need must last this long before the master
    /// is renewed to shed them (ms).
    pub trim_after_ms: u64,
    /// At most one renewal per pool this often (ms).
    pub trim_every_ms: u64,
    /// How long the most busy workers a pool was seen with count as
    /// evidence of what it uses (ms); see [`board_demand`].
    pub evidence_ms: u64,
}

impl Default for Damping {
    fn default() -> Self {
        Damping {
            cooldown_ms: 5_000,
            shrink_after_ms: 60_000,
            band: 0.15,
            trim_after_ms: 120_000,
            trim_every_ms: 300_000,
            evidence_ms: 30_000,
        }
    }
}

/// What the planner remembers about one pool between looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PlanMemory {
    /// Since when the share has been below the cap (ms).
    pub below_since_ms: Option<u64>,
    /// When the cap last changed (ms).
    pub last_change_ms: Option<u64>,
    /// Since when the master has had idle workers well beyond the need (ms).
    pub excess_since_ms: Option<u64>,
    /// When the master was last renewed to shed idle workers (ms).
    pub last_trim_ms: Option<u64>,
    /// The most busy workers seen since `peak_at_ms` ([`board_demand`]).
    pub peak_busy: u32,
    /// When `peak_busy` was last reached (ms).
    pub peak_at_ms: Option<u64>,
    /// Requests were queued at the previous look ([`board_demand`]).
    pub queued: bool,
}

/// The planner's answer for one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapStep {
    Hold(&'static str),
    Change {
        to: u32,
        rule: &'static str,
    },
    /// A new master with the same cap: ondemand's running master keeps every
    /// worker it ever forked as long as the kernel spreads requests over
    /// them (none is idle for `process_idle_timeout`), so a burst or a cold
    /// start leaves the pool at its peak size; a new master forks only what
    /// the traffic needs now.
    Renew {
        rule: &'static str,
    },
}

/// What the model says about a pool's size, as [`board_demand`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelSizes {
    /// The model's size with headroom for the long window's rate
    /// (`Figures::model_workers`).
    pub model: Option<u32>,
    /// Workers the rate of now needs, read high (`Figures::needed_now`)
    /// and low (`Figures::needed_now_low`).
    pub needed_now: Option<u32>,
    pub needed_now_low: Option<u32>,
}

impl From<&crate::Figures> for ModelSizes {
    fn from(f: &crate::Figures) -> Self {
        ModelSizes {
            model: f.model_workers,
            needed_now: f.needed_now,
            needed_now_low: f.needed_now_low,
        }
    }
}

/// What a pool asks of the shared board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Workers it needs now: every pool's need is served before any pool
    /// gets more than it needs.
    pub need: u32,
    /// Workers it would like (bursts, the model's headroom): served from
    /// what is left once every need is met. At least `need`.
    pub want: u32,
    /// Requests wait for a worker now (or every allowed worker is busy):
    /// only such a pool makes another give up memory it holds.
    pub pressing: bool,
}

/// What a pool claims on the shared board, from the model's sizes and what
/// the pool is seen doing; pure. Returns the claim and the memory for the
/// next look.
///
/// The model sizes a pool for its long-window rate, which is right for one
/// pool alone but wrong for sharing: after a peak it still asks for the
/// peak's workers for minutes, and while a pool is saturated its rate reads
/// low (the accepted-connections counter counts what the workers took, not
/// what arrived). So:
/// - the *need* is what the rate of now needs (`ModelSizes`, read high
///   for a pool whose requests pile up and low for any other; without
///   it, the busy workers plus a quarter): it moves within a look or two
///   of a peak's start or end, so the memory moves with the load;
/// - a pool with a queue of half its cap or more, queued at the previous
///   look too, wants its maximum and needs at least half again its cap:
///   it is losing latency now and its true rate may be unknown;
/// - a pool with any queue, or every allowed worker busy, needs at least
///   one more worker than its cap and wants half again its cap;
/// - otherwise it wants the model's size, but no more than the most
///   workers it had busy within `evidence_ms`, plus a quarter (at least 2)
///   for bursts.
///
/// A single pool gets the whole budget up to its maximum whatever it
/// claims; the claim only decides how pools share.
pub fn board_demand(
    now_ms: u64,
    sizes: ModelSizes,
    pressure: Pressure,
    applied_cap: u32,
    (min_workers, max_workers): (u32, u32),
    damping: Damping,
    memory: PlanMemory,
) -> (Claim, PlanMemory) {
    let mut memory = memory;
    let expired = memory
        .peak_at_ms
        .is_none_or(|t| now_ms.saturating_sub(t) >= damping.evidence_ms);
    if expired || pressure.busy >= memory.peak_busy {
        memory.peak_busy = pressure.busy;
        memory.peak_at_ms = Some(now_ms);
    }
    let max = max_workers.max(min_workers);
    let with_margin = |busy: u32| busy + (busy / 4).max(2);
    let pressing = pressure.queue > 0 || pressure.busy >= applied_cap;
    // A queue seen at one look can be a burst the workers drain within
    // the second; seen at two looks in a row, it is a pool short of
    // workers.
    let starving = memory.queued && pressure.piles_up(applied_cap);
    memory.queued = pressure.queue > 0;
    let now = if starving {
        sizes.needed_now
    } else {
        sizes.needed_now_low
    }
    .unwrap_or_else(|| with_margin(pressure.busy))
    .max(pressure.busy);
    let (need, want) = if starving {
        // The rate reads low once the listen backlog overflows (refused
        // connections are not counted anywhere the manager can see).
        (now.max(applied_cap.saturating_add(applied_cap / 2)), max)
    } else if pressing {
        let more = applied_cap.saturating_add((applied_cap / 2).max(2));
        (now.max(applied_cap + 1), more)
    } else {
        let seen = with_margin(memory.peak_busy);
        (now, sizes.model.map_or(seen, |m| m.min(seen)))
    };
    let need = need.clamp(min_workers, max);
    let claim = Claim {
        need,
        want: want.clamp(min_workers, max).max(need),
        pressing,
    };
    (claim, memory)
}

/// Plans the next cap of `pools[me]` at `now_ms`; pure. Returns the step
/// and the memory for the next look.
pub fn next_cap(
    now_ms: u64,
    budget_bytes: u64,
    pools: &[PoolPlanInput],
    me: usize,
    pressure: Pressure,
    damping: Damping,
    memory: PlanMemory,
) -> (CapStep, PlanMemory) {
    let mut memory = memory;
    let Some(pool) = pools.get(me) else {
        return (CapStep::Hold("unknown_pool"), memory);
    };
    if pool.fixed {
        memory.below_since_ms = None;
        return (CapStep::Hold("fixed"), memory);
    }
    let all = shares(budget_bytes, pools);
    let budget_bytes = for_workers(budget_bytes, pools);
    let (share, _gives_way) = all[me];
    let cap = pool.applied_cap;
    // Memory the other pools' caps hold now: growth must fit beside them.
    let others: u64 = pools
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, p)| u64::from(p.applied_cap.max(p.draining)) * p.bytes())
        .sum();
    let room = budget_bytes.saturating_sub(others) / pool.bytes();
    let room = u32::try_from(room).unwrap_or(u32::MAX);
    let band = band_of(cap, damping);
    let cooling = memory
        .last_change_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < damping.cooldown_ms);
    // Over the budget already (the budget shrank, or workers grew): down at
    // once, whatever the damping says.
    // Learned worker sizes move by a few percent from look to look: only an
    // overrun beyond that is a reason for a new master.
    let slack = budget_bytes / 50;
    let fits_now = u64::from(cap) * pool.bytes() + others <= budget_bytes + slack;
    if !fits_now && cap > pool.min_workers {
        let to = share.min(room).max(pool.min_workers).min(cap - 1);
        return change(now_ms, memory, to, "over_budget");
    }
    // Requests pile up (a queue of half the cap): the pool's rate reads
    // low (what overflows the listen backlog is counted nowhere), so it
    // takes all the memory the others leave free rather than its share,
    // and does not wait out the cooldown, which would let the queue grow
    // for seconds more.
    let piling = pressure.piles_up(cap);
    if share > cap || (piling && room > cap) {
        memory.below_since_ms = None;
        let max = pool.max_workers.max(pool.min_workers);
        // What the others need now stays theirs even where their caps
        // are smaller (they will press for it next).
        let others_need: u64 = pools
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, p)| {
                let need = if p.fixed {
                    p.applied_cap
                } else {
                    p.needed_workers.unwrap_or(p.min_workers)
                };
                u64::from(need) * p.bytes()
            })
            .sum();
        let spare = u32::try_from(budget_bytes.saturating_sub(others_need) / pool.bytes())
            .unwrap_or(u32::MAX);
        let target = if piling {
            room.min(spare.max(share)).min(max)
        } else {
            share.min(room)
        };
        if target <= cap {
            return (CapStep::Hold("waiting_for_memory"), memory);
        }
        let pressing = pressure.queue > 0 || pressure.busy + 1 >= cap;
        if cooling && !piling {
            return (CapStep::Hold("cooldown"), memory);
        }
        // A step short of the band is one hand-over of several while the
        // others still give way: wait for the room.
        if pressing && target - cap >= band {
            return change(now_ms, memory, target, "pressing_cap");
        }
        if pressing {
            return (CapStep::Hold("waiting_for_memory"), memory);
        }
        if target - cap >= band {
            return change(now_ms, memory, target, "share_grew");
        }
        return trim(
            now_ms,
            pool,
            pressure,
            damping,
            memory,
            cooling,
            "within_band",
        );
    }
    if share < cap {
        let since = *memory.below_since_ms.get_or_insert(now_ms);
        // Another pool has requests waiting for memory this one's cap
        // holds: its share is beyond its own band (a worker or two of
        // leftover is no need, and a pool that is not pressing can wait for
        // this one's own slower shrink).
        let needed_elsewhere = pools
            .iter()
            .zip(&all)
            .enumerate()
            .any(|(i, (p, (granted, _)))| {
                i != me
                    && !p.fixed
                    && p.pressing
                    && *granted >= p.applied_cap + band_of(p.applied_cap, damping)
            });
        // Giving memory to a pool whose requests wait does not wait for
        // the cooldown: the cooldown keeps a pool from chasing its own
        // noise, and this change is the other pool's, which its own
        // cooldown and band already damp.
        // Down to what this pool needs now, not to its share of the
        // needs: the other pool's need lags its true rate while its
        // requests pile up, and each step down would be one more
        // hand-over of both pools.
        let to = share.min(pool.needed_workers.unwrap_or(share).max(pool.min_workers));
        if needed_elsewhere && cap - to >= band {
            return change(now_ms, memory, to, "needed_elsewhere");
        }
        if cooling {
            return (CapStep::Hold("cooldown"), memory);
        }
        if cap - share < band {
            return (CapStep::Hold("within_band"), memory);
        }
        if now_ms.saturating_sub(since) >= damping.shrink_after_ms {
            return change(now_ms, memory, share, "share_shrank");
        }
        return (CapStep::Hold("stabilising"), memory);
    }
    memory.below_since_ms = None;
    trim(now_ms, pool, pressure, damping, memory, cooling, "at_share")
}

/// Holds with `rule`, unless the master has carried idle workers well
/// beyond the need for a while: then it is renewed (at most every
/// `trim_every_ms`).
fn trim(
    now_ms: u64,
    pool: &PoolPlanInput,
    pressure: Pressure,
    damping: Damping,
    mut memory: PlanMemory,
    cooling: bool,
    rule: &'static str,
) -> (CapStep, PlanMemory) {
    let Some(need) = pool.wanted_workers else {
        memory.excess_since_ms = None;
        return (CapStep::Hold(rule), memory);
    };
    let excess = pressure.queue == 0
        && pressure.workers > pool.min_workers
        && pressure.workers > (need * 2).max(need + 4);
    if !excess {
        memory.excess_since_ms = None;
        return (CapStep::Hold(rule), memory);
    }
    let since = *memory.excess_since_ms.get_or_insert(now_ms);
    let recently = memory
        .last_trim_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < damping.trim_every_ms);
    if cooling || recently || now_ms.saturating_sub(since) < damping.trim_after_ms {
        return (CapStep::Hold(rule), memory);
    }
    memory.excess_since_ms = None;
    memory.last_trim_ms = Some(now_ms);
    memory.last_change_ms = Some(now_ms);
    (CapStep::Renew { rule: "trim_idle" }, memory)
}

/// Changes smaller than this are not worth a new master: `band` of the
/// cap, and at least 2 workers.
fn band_of(cap: u32, damping: Damping) -> u32 {
    ((f64::from(cap) * damping.band).round() as u32).max(2)
}

fn change(
    now_ms: u64,
    mut memory: PlanMemory,
    to: u32,
    rule: &'static str,
) -> (CapStep, PlanMemory) {
    memory.last_change_ms = Some(now_ms);
    memory.below_since_ms = None;
    (CapStep::Change { to, rule }, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn pool(name: &str, cap: u32, wanted: Option<u32>) -> PoolPlanInput {
        PoolPlanInput {
            name: name.into(),
            priority: 0,
            weight: 1.0,
            min_workers: 1,
            max_workers: 24,
            wanted_workers: wanted,
            needed_workers: wanted,
            pressing: false,
            worker_bytes: Some(40 * MB),
            shared_bytes: 0,
            applied_cap: cap,
            draining: 0,
            fixed: false,
        }
    }

    const IDLE: Pressure = Pressure {
        busy: 0,
        queue: 0,
        workers: 0,
    };

    #[test]
    fn one_pool_gets_the_whole_budget_up_to_its_max() {
        let pools = [pool("a", 4, Some(2))];
        let (step, _) = next_cap(
            0,
            960 * MB,
            &pools,
            0,
            IDLE,
            Damping::default(),
            PlanMemory::default(),
        );
        assert_eq!(
            step,
            CapStep::Change {
                to: 24,
                rule: "share_grew"
            }
        );
        let pools = [pool("a", 4, Some(2))];
        let (step, _) = next_cap(
            0,
            400 * MB,
            &pools,
            0,
            IDLE,
            Damping::default(),
            PlanMemory::default(),
        );
        assert_eq!(
            step,
            CapStep::Change {
                to: 10,
                rule: "share_grew"
            }
        );
    }

    #[test]
    fn caps_of_all_pools_never_exceed_the_budget() {
        // b holds 20 workers; a's requests wait and it needs 20: a may grow
        // only into what b leaves, and b is told to shrink because a waits.
        let mut waiting = pool("a", 4, Some(20));
        waiting.pressing = true;
        let pools = [waiting.clone(), pool("b", 20, Some(2))];
        let budget = 24 * 40 * MB;
        let (step_a, _) = next_cap(
            0,
            budget,
            &pools,
            0,
            Pressure {
                busy: 4,
                queue: 3,
                workers: 4,
            },
            Damping::default(),
            PlanMemory::default(),
        );
        assert_eq!(step_a, CapStep::Hold("waiting_for_memory"));
        let (step_b, _) = next_cap(
            0,
            budget,
            &pools,
            1,
            IDLE,
            Damping::default(),
            PlanMemory::default(),
        );
        let CapStep::Change { to, rule } = step_b else {
            panic!("{step_b:?}")
        };
        assert_eq!(rule, "needed_elsewhere");
        // Once b has shrunk, a grows into the room and the sum fits.
        let pools = [waiting, pool("b", to, Some(2))];
        let (step_a, _) = next_cap(
            0,
            budget,
            &pools,
            0,
            Pressure {
                busy: 4,
                queue: 3,
                workers: 4,
            },
            Damping::default(),
            PlanMemory::default(),
        );
        let CapStep::Change { to: a_to, .. } = step_a else {
            panic!("{step_a:?}")
        };
        assert!(u64::from(a_to + to) * 40 * MB <= budget, "{a_to} + {to}");
        assert!(a_to >= 18, "a gets most of the budget: {a_to}");
    }

    #[test]
    fn over_budget_comes_down_at_once() {
        let pools = [pool("a", 24, Some(2))];
        // The budget shrank to 20 workers' worth.
        let (step, _) = next_cap(
            0,
            20 * 40 * MB,
            &pools,
            0,
            IDLE,
            Damping::default(),
            PlanMemory::default(),
        );
        assert_eq!(
            step,
            CapStep::Change {
                to: 20,
                rule: "over_budget"
            }
        );
    }

    #[test]
    fn cooldown_holds_growth_unless_requests_pile_up() {
        let d = Damping::default();
        let pools = [pool("a", 4, Some(20))];
        let mem = PlanMemory {
            last_change_ms: Some(1_000),
            ..PlanMemory::default()
        };
        let pressed = Pressure {
            busy: 4,
            queue: 1,
            workers: 4,
        };
        let (step, _) = next_cap(2_000, 960 * MB, &pools, 0, pressed, d, mem);
        assert_eq!(step, CapStep::Hold("cooldown"));
        let (step, _) = next_cap(7_000, 960 * MB, &pools, 0, pressed, d, mem);
        assert_eq!(
            step,
            CapStep::Change {
                to: 24,
                rule: "pressing_cap"
            }
        );
        // A queue of half the cap or more does not wait out the cooldown.
        let piling = Pressure {
            queue: 9,
            ..pressed
        };
        let (step, _) = next_cap(2_000, 960 * MB, &pools, 0, piling, d, mem);
        assert_eq!(
            step,
            CapStep::Change {
                to: 24,
                rule: "pressing_cap"
            }
        );
    }

    #[test]
    fn shrinking_needs_a_whole_window_below_unless_another_pool_waits() {
        let d = Damping::default();
        // The limit was lowered to 16 while the cap is 20: the share is 16,
        // the cap still fits the budget and nobody waits, so the cap comes
        // down only after a whole window below.
        let mut a = pool("a", 20, Some(2));
        a.max_workers = 16;
        let budget = 24 * 40 * MB;
        let (s1, m1) = next_cap(
            0,
            budget,
            std::slice::from_ref(&a),
            0,
            IDLE,
            d,
            PlanMemory::default(),
        );
        assert_eq!(s1, CapStep::Hold("stabilising"));
        let (s2, m2) = next_cap(30_000, budget, std::slice::from_ref(&a), 0, IDLE, d, m1);
        assert_eq!(s2, CapStep::Hold("stabilising"));
        let (s3, _) = next_cap(60_000, budget, std::slice::from_ref(&a), 0, IDLE, d, m2);
        assert_eq!(
            s3,
            CapStep::Change {
                to: 16,
                rule: "share_shrank"
            }
        );
        // With b's requests waiting for memory a's cap holds, a gives it up
        // at once.
        let mut b = pool("b", 4, Some(12));
        b.pressing = true;
        let pools = [pool("a", 20, Some(2)), b];
        let (s, _) = next_cap(0, budget, &pools, 0, IDLE, d, PlanMemory::default());
        let CapStep::Change { to, rule } = s else {
            panic!("{s:?}")
        };
        assert_eq!(rule, "needed_elsewhere");
        assert!(to <= 12, "{to}");
    }

    #[test]
    fn idle_workers_far_beyond_the_need_renew_the_master_at_most_every_five_minutes() {
        let d = Damping::default();
        // A cold start left 24 workers forked; the traffic needs 4.
        let pools = [pool("a", 24, Some(4))];
        let budget = 24 * 40 * MB;
        let p = Pressure {
            busy: 2,
            queue: 0,
            workers: 24,
        };
        let (s0, m0) = next_cap(0, budget, &pools, 0, p, d, PlanMemory::default());
        assert_eq!(s0, CapStep::Hold("at_share"));
        let (s1, m1) = next_cap(60_000, budget, &pools, 0, p, d, m0);
        assert_eq!(
            s1,
            CapStep::Hold("at_share"),
            "not yet: 2 minutes of excess"
        );
        let (s2, m2) = next_cap(120_000, budget, &pools, 0, p, d, m1);
        assert_eq!(s2, CapStep::Renew { rule: "trim_idle" });
        // The renewed master grows back to 20 idle-ish workers: not again
        // within five minutes.
        let (s3, m3) = next_cap(300_000, budget, &pools, 0, p, d, m2);
        assert_eq!(s3, CapStep::Hold("at_share"));
        let (s4, _) = next_cap(420_001, budget, &pools, 0, p, d, m3);
        assert_eq!(s4, CapStep::Renew { rule: "trim_idle" });
        // A queue, or workers near the need, is no excess.
        let busy = Pressure {
            busy: 7,
            queue: 0,
            workers: 8,
        };
        let (s5, m5) = next_cap(0, budget, &pools, 0, busy, d, PlanMemory::default());
        assert_eq!(s5, CapStep::Hold("at_share"));
        assert_eq!(m5.excess_since_ms, None);
    }

    #[test]
    fn fixed_pools_keep_their_cap_and_their_memory_counts() {
        let mut pinned = pool("p", 16, None);
        pinned.fixed = true;
        let pools = [pinned, pool("a", 4, Some(20))];
        let budget = 24 * 40 * MB;
        let (s, _) = next_cap(
            0,
            budget,
            &pools,
            0,
            IDLE,
            Damping::default(),
            PlanMemory::default(),
        );
        assert_eq!(s, CapStep::Hold("fixed"));
        let (s, _) = next_cap(
            0,
            budget,
            &pools,
            1,
            Pressure {
                busy: 4,
                queue: 2,
                workers: 4,
            },
            Damping::default(),
            PlanMemory::default(),
        );
        assert_eq!(
            s,
            CapStep::Change {
                to: 8,
                rule: "pressing_cap"
            }
        );
    }

    fn busy(busy: u32, queue: u32) -> Pressure {
        Pressure {
            busy,
            queue,
            workers: busy,
        }
    }

    fn sizes(model: Option<u32>, now: Option<u32>, low: Option<u32>) -> ModelSizes {
        ModelSizes {
            model,
            needed_now: now,
            needed_now_low: low,
        }
    }

    #[test]
    fn a_pool_whose_requests_pile_up_wants_its_maximum_and_a_pressed_one_more_than_its_cap() {
        let d = Damping::default();
        let s = sizes(Some(14), Some(20), Some(14));
        // A queue of half the cap, seen once: a burst until seen again.
        let (claim, m) = board_demand(0, s, busy(12, 6), 12, (1, 24), d, PlanMemory::default());
        assert_eq!(
            claim,
            Claim {
                need: 14,
                want: 18,
                pressing: true
            }
        );
        // Seen at the next look too: the high reading, and at least half
        // again the cap (the rate reads low once the backlog overflows).
        let (claim, _) = board_demand(1_000, s, busy(12, 6), 12, (1, 24), d, m);
        assert_eq!(
            claim,
            Claim {
                need: 20,
                want: 24,
                pressing: true
            }
        );
        let (claim, _) = board_demand(
            1_000,
            sizes(None, None, Some(18)),
            busy(12, 6),
            12,
            (1, 24),
            d,
            m,
        );
        assert_eq!(claim.need, 18);
        // Every allowed worker busy, nothing known: one more than the cap
        // at least, two more wanted.
        let (claim, _) = board_demand(
            0,
            ModelSizes::default(),
            busy(3, 0),
            3,
            (1, 24),
            d,
            PlanMemory::default(),
        );
        assert_eq!(
            claim,
            Claim {
                need: 5,
                want: 5,
                pressing: true
            }
        );
    }

    #[test]
    fn a_quiet_pool_wants_no_more_than_it_was_seen_to_use_lately() {
        let d = Damping::default();
        // At its peak 20 workers were busy; the model still sizes for it.
        let (_, m) = board_demand(
            0,
            sizes(Some(24), None, None),
            busy(20, 0),
            24,
            (1, 24),
            d,
            PlanMemory::default(),
        );
        let s = sizes(Some(24), Some(5), Some(5));
        let (claim, m) = board_demand(10_000, s, busy(2, 0), 24, (1, 24), d, m);
        assert_eq!(claim.want, 24, "within the evidence window the peak counts");
        assert_eq!(claim.need, 5, "the need is the rate of now");
        assert!(!claim.pressing);
        // Once the peak is older than the window, what is seen now counts.
        let (claim, m) = board_demand(
            31_000,
            sizes(Some(24), None, None),
            busy(2, 0),
            24,
            (1, 24),
            d,
            m,
        );
        assert_eq!(claim.want, 4, "2 busy plus 2 for bursts");
        assert_eq!(m.peak_busy, 2);
        // The model can ask for less than the evidence.
        let (claim, _) = board_demand(
            32_000,
            sizes(Some(3), Some(3), Some(3)),
            busy(2, 0),
            24,
            (1, 24),
            d,
            m,
        );
        assert_eq!(claim.want, 3);
        // And the claim stays within the pool's limits.
        let (claim, _) = board_demand(33_000, ModelSizes::default(), busy(0, 0), 24, (2, 24), d, m);
        assert_eq!((claim.need, claim.want), (2, 4));
    }

    #[test]
    fn a_pool_after_its_peak_gives_way_at_once_to_one_whose_requests_pile_up() {
        // Pool a finished its peak a moment ago: its windows still remember
        // it, the rate of now does not. Pool b's requests pile up at a cap
        // of 6.
        let d = Damping::default();
        let (_, ma) = board_demand(
            0,
            sizes(Some(24), Some(24), Some(24)),
            busy(16, 0),
            18,
            (1, 24),
            d,
            PlanMemory::default(),
        );
        let (a_claim, _) = board_demand(
            1_000,
            sizes(Some(24), Some(20), Some(5)),
            busy(2, 0),
            18,
            (1, 24),
            d,
            ma,
        );
        let s = sizes(Some(8), Some(24), Some(8));
        let (_, mb) = board_demand(0, s, busy(6, 40), 6, (1, 24), d, PlanMemory::default());
        let (b_claim, _) = board_demand(1_000, s, busy(6, 60), 6, (1, 24), d, mb);
        let budget = 24 * 40 * MB;
        let pools = [
            pool("a", 18, None).claiming(a_claim),
            pool("b", 6, None).claiming(b_claim),
        ];
        // a changed its cap a second ago: giving way does not wait for
        // its cooldown.
        let recent = PlanMemory {
            last_change_ms: Some(0),
            ..PlanMemory::default()
        };
        let (step, _) = next_cap(1_000, budget, &pools, 0, busy(2, 0), d, recent);
        let CapStep::Change { to, rule } = step else {
            panic!("pool a holds {step:?} while b's requests pile up");
        };
        assert_eq!(rule, "needed_elsewhere");
        assert!(to <= 5, "a keeps what it needs now, not its peak: {to}");
        let granted = shares(budget, &pools);
        assert!(granted[1].0 >= 18, "b gets the rest: {granted:?}");
    }

    #[test]
    fn needs_that_do_not_fit_are_cut_in_proportion() {
        let budget = 24 * 40 * MB;
        let mut a = pool("a", 12, Some(24));
        a.needed_workers = Some(24);
        let mut b = pool("b", 12, Some(7));
        b.needed_workers = Some(7);
        let granted = shares(budget, &[a.clone(), b.clone()]);
        assert_eq!(granted[0].0 + granted[1].0, 24);
        assert!((18..=19).contains(&granted[0].0), "{granted:?}");
        assert!((5..=6).contains(&granted[1].0), "{granted:?}");
        // A higher priority's need is met whole first.
        b.priority = 1;
        let granted = shares(budget, &[a, b]);
        assert_eq!(granted[1].0, 7, "{granted:?}");
        assert_eq!(granted[0].0, 17, "{granted:?}");
    }

    #[test]
    fn a_pool_gives_way_only_to_one_whose_requests_wait() {
        let d = Damping::default();
        let budget = 24 * 40 * MB;
        let a = pool("a", 18, Some(8)).claiming(Claim {
            need: 5,
            want: 8,
            pressing: false,
        });
        let quiet_b = pool("b", 6, None).claiming(Claim {
            need: 16,
            want: 16,
            pressing: false,
        });
        let (step, _) = next_cap(
            0,
            budget,
            &[a.clone(), quiet_b.clone()],
            0,
            busy(2, 0),
            d,
            PlanMemory::default(),
        );
        assert!(matches!(step, CapStep::Hold(_)), "{step:?}");
        let waiting_b = Claim {
            need: 16,
            want: 16,
            pressing: true,
        };
        let pools = [a, quiet_b.claiming(waiting_b)];
        let (step, _) = next_cap(0, budget, &pools, 0, busy(2, 0), d, PlanMemory::default());
        assert_eq!(
            step,
            CapStep::Change {
                to: 5,
                rule: "needed_elsewhere"
            },
            "down to its need in one step, not to its share of 8"
        );
    }

    #[test]
    fn a_previous_masters_workers_are_not_room_until_they_exit() {
        let d = Damping::default();
        let budget = 24 * 40 * MB;
        let pressing = Claim {
            need: 20,
            want: 24,
            pressing: true,
        };
        let quiet = Claim {
            need: 4,
            want: 4,
            pressing: false,
        };
        // a just went from 18 to 4; its old master still runs 15 workers.
        let mut a = pool("a", 4, None).claiming(quiet);
        a.draining = 15;
        let b = pool("b", 6, None).claiming(pressing);
        let (step, _) = next_cap(
            0,
            budget,
            &[a.clone(), b.clone()],
            1,
            busy(6, 30),
            d,
            PlanMemory::default(),
        );
        assert_eq!(
            step,
            CapStep::Change {
                to: 9,
                rule: "pressing_cap"
            },
            "only what the draining workers leave"
        );
        a.draining = 0;
        let (step, _) = next_cap(0, budget, &[a, b], 1, busy(6, 30), d, PlanMemory::default());
        assert_eq!(
            step,
            CapStep::Change {
                to: 20,
                rule: "pressing_cap"
            }
        );
    }

    #[test]
    fn a_pool_whose_requests_pile_up_takes_the_free_memory_but_what_others_need() {
        let d = Damping::default();
        let budget = 24 * 40 * MB;
        // a's need reads low (its backlog overflows); b runs 4 and needs 6.
        let a = pool("a", 12, None).claiming(Claim {
            need: 14,
            want: 24,
            pressing: true,
        });
        let b = pool("b", 4, None).claiming(Claim {
            need: 6,
            want: 6,
            pressing: false,
        });
        let piling = busy(12, 30);
        let (step, _) = next_cap(0, budget, &[a, b], 0, piling, d, PlanMemory::default());
        assert_eq!(
            step,
            CapStep::Change {
                to: 18,
                rule: "pressing_cap"
            }
        );
    }
}
