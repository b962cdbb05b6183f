//! Sharing one memory budget between several pools.
//!
//! Rule, in order: every pool gets its minimum, highest priority first,
//! while it fits; then the budget goes to the pools that want more, again
//! highest priority first, and inside one priority level one worker at a
//! time to the pool with the fewest extra workers per unit of weight
//! (weighted fair share); what is still left is handed out the same way up
//! to each pool's maximum, so that a pool can grow into free memory (an
//! emergency) without waiting for the next round. A pool that gets less
//! than it wants "gives way". The grant is a cap, not an allocation: the
//! caps never add up to more than the budget, so pools that stay within
//! them never exceed it together. The scaler of each pool receives its cap
//! as `Observation::share_cap_workers`.
//!
//! To keep the caps from pushing a pool around, pass as `wanted_workers`
//! at least what the pool runs now (`max(current, model)`): a pool then
//! shrinks through its own damped scale-down, and only a pool that gives
//! way to a higher priority is cut at once.

/// What one pool asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDemand {
    /// Pool name, echoed in the answer.
    pub name: String,
    /// Higher is served first.
    pub priority: i32,
    /// Relative share among pools of the same priority (positive).
    pub weight: f64,
    /// Workers the pool should have at least.
    pub min_workers: u32,
    /// Workers the pool's scaler wants: `max(current, Figures::model_workers)`.
    pub wanted_workers: u32,
    /// Most workers the pool may ever run (its `max_workers`).
    pub max_workers: u32,
    /// Memory of one worker (p95 PSS), bytes.
    pub worker_bytes: u64,
}

/// What one pool gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolShare {
    /// Pool name.
    pub name: String,
    /// Most workers the pool may run until the next round.
    pub granted_workers: u32,
    /// True when the pool gets fewer workers than it wants.
    pub gives_way: bool,
}

/// Splits `budget_bytes` (already net of reserve and shared memory) between
/// pools. The answer is in the order of `pools`. A pool whose worker size
/// is 0 costs nothing and gets what it wants; a non-finite or non-positive
/// weight counts as the smallest positive weight.
pub fn share_budget(budget_bytes: u64, pools: &[PoolDemand]) -> Vec<PoolShare> {
    share_budget_protecting_needs(budget_bytes, pools, &[])
}

/// [`share_budget`] with one more step after the minimums: every pool gets
/// what it *needs* (`needed[i]`, for example `Figures::needed_workers`,
/// the model's size without headroom), highest priority first, before any
/// pool gets more than it needs. A higher-priority pool then keeps spare
/// cap it is not using (a pool held at its size after a surge) only when no
/// other pool needs that memory; without this step a lower-priority pool
/// can be cut to its minimum for as long as the other holds its cap.
/// Missing entries of `needed` count as the pool's minimum.
pub fn share_budget_protecting_needs(
    budget_bytes: u64,
    pools: &[PoolDemand],
    needed: &[u32],
) -> Vec<PoolShare> {
    let mut granted: Vec<u32> = vec![0; pools.len()];
    let mut remaining = budget_bytes;
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by_key(|&index| std::cmp::Reverse(pools[index].priority));

    for &index in &order {
        let pool = &pools[index];
        let floor = pool
            .min_workers
            .min(pool.wanted_workers.max(pool.min_workers));
        let fits = affordable(remaining, pool.worker_bytes, floor);
        granted[index] = fits;
        remaining -= u64::from(fits) * pool.worker_bytes;
    }

    if !needed.is_empty() {
        let need: Vec<u32> = pools
            .iter()
            .enumerate()
            .map(|(index, pool)| {
                needed
                    .get(index)
                    .copied()
                    .unwrap_or(0)
                    .min(pool.wanted_workers.max(pool.min_workers))
            })
            .collect();
        fill_by_priority_indexed(pools, &order, &mut granted, &mut remaining, |index| {
            need[index]
        });
    }
    fill_by_priority(pools, &order, &mut granted, &mut remaining, |pool| {
        pool.wanted_workers
    });
    let met: Vec<bool> = pools
        .iter()
        .zip(&granted)
        .map(|(pool, &granted)| granted >= pool.wanted_workers.max(pool.min_workers))
        .collect();
    fill_by_priority(pools, &order, &mut granted, &mut remaining, |pool| {
        pool.max_workers.max(pool.min_workers)
    });

    pools
        .iter()
        .zip(granted)
        .zip(met)
        .map(|((pool, granted_workers), met)| PoolShare {
            name: pool.name.clone(),
            granted_workers,
            gives_way: !met,
        })
        .collect()
}

/// Grants workers up to `goal(pool)`, priority level by priority level,
/// one worker at a time to the pool with the fewest extra workers per unit
/// of weight.
fn fill_by_priority(
    pools: &[PoolDemand],
    order: &[usize],
    granted: &mut [u32],
    remaining: &mut u64,
    goal: impl Fn(&PoolDemand) -> u32,
) {
    fill_by_priority_indexed(pools, order, granted, remaining, |index| {
        goal(&pools[index])
    });
}

/// [`fill_by_priority`] with the goal looked up by the pool's index.
fn fill_by_priority_indexed(
    pools: &[PoolDemand],
    order: &[usize],
    granted: &mut [u32],
    remaining: &mut u64,
    goal: impl Fn(usize) -> u32,
) {
    let mut level_start = 0;
    while level_start < order.len() {
        let priority = pools[order[level_start]].priority;
        let level_end = order[level_start..]
            .iter()
            .position(|&index| pools[index].priority != priority)
            .map_or(order.len(), |offset| level_start + offset);
        let level = &order[level_start..level_end];
        // Each round grants one worker or stops, so the loop is bounded by
        // the total number of workers wanted in this level.
        loop {
            let candidate = level
                .iter()
                .copied()
                .filter(|&index| {
                    let pool = &pools[index];
                    granted[index] < goal(index) && pool.worker_bytes <= *remaining
                })
                .min_by(|&a, &b| {
                    let share_a = extra_per_weight(&pools[a], granted[a]);
                    let share_b = extra_per_weight(&pools[b], granted[b]);
                    share_a.total_cmp(&share_b)
                });
            let Some(index) = candidate else { break };
            granted[index] += 1;
            *remaining -= pools[index].worker_bytes;
        }
        level_start = level_end;
    }
}

fn affordable(remaining: u64, worker_bytes: u64, wanted: u32) -> u32 {
    if worker_bytes == 0 {
        return wanted;
    }
    let fits = remaining / worker_bytes;
    u32::try_from(fits).map_or(wanted, |fits| fits.min(wanted))
}

fn extra_per_weight(pool: &PoolDemand, granted: u32) -> f64 {
    let weight = if pool.weight.is_finite() && pool.weight > 0.0 {
        pool.weight
    } else {
        f64::MIN_POSITIVE
    };
    f64::from(granted.saturating_sub(pool.min_workers)) / weight
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, priority: i32, weight: f64, min: u32, wanted: u32) -> PoolDemand {
        PoolDemand {
            name: name.to_owned(),
            priority,
            weight,
            min_workers: min,
            wanted_workers: wanted,
            max_workers: 40,
            worker_bytes: 100,
        }
    }

    #[test]
    fn everyone_fits() {
        let both = [pool("a", 0, 1.0, 2, 10), pool("b", 0, 1.0, 2, 20)];
        let shares = share_budget(5_000, &both);
        assert!(shares.iter().all(|share| !share.gives_way));
        // 50 workers fit: the 20 left over go first to the pool with the
        // fewest extra workers, then evenly.
        assert_eq!(shares[0].granted_workers, 25);
        assert_eq!(shares[1].granted_workers, 25);
        // Plenty of budget: everyone may grow to the maximum.
        let shares = share_budget(100_000, &both);
        assert_eq!(shares[0].granted_workers, 40);
        assert_eq!(shares[1].granted_workers, 40);
    }

    #[test]
    fn lower_priority_gives_way() {
        let shares = share_budget(
            2_000,
            &[pool("low", 0, 1.0, 2, 10), pool("high", 1, 1.0, 2, 15)],
        );
        assert_eq!(shares[1].granted_workers, 15);
        assert_eq!(shares[0].granted_workers, 5);
        assert!(shares[0].gives_way);
        assert!(!shares[1].gives_way);
    }

    #[test]
    fn same_priority_splits_by_weight() {
        let shares = share_budget(2_000, &[pool("a", 0, 3.0, 2, 40), pool("b", 0, 1.0, 2, 40)]);
        // 20 workers: 2 + 2 minimum, 16 extra split 3:1.
        assert_eq!(shares[0].granted_workers, 14);
        assert_eq!(shares[1].granted_workers, 6);
        assert!(shares.iter().all(|share| share.gives_way));
    }

    #[test]
    fn needs_come_before_a_higher_priority_surplus() {
        // 20 workers: "high" holds 15 after a surge but needs 5 now;
        // "low" needs 8.
        let pools = [pool("low", 0, 1.0, 2, 10), pool("high", 1, 1.0, 2, 15)];
        let strict = share_budget(2_000, &pools);
        assert_eq!(strict[0].granted_workers, 5);
        let protected = share_budget_protecting_needs(2_000, &pools, &[8, 5]);
        assert_eq!(protected[0].granted_workers, 8);
        assert_eq!(protected[1].granted_workers, 12);
        assert!(protected[0].gives_way && protected[1].gives_way);
        // When both needs do not fit, priority still decides.
        let protected = share_budget_protecting_needs(2_000, &pools, &[10, 15]);
        assert_eq!(protected[1].granted_workers, 15);
        assert_eq!(protected[0].granted_workers, 5);
        // Without needs it is share_budget.
        assert_eq!(share_budget_protecting_needs(2_000, &pools, &[]), strict);
    }

    #[test]
    fn minimums_first_by_priority_and_degenerate_input() {
        let shares = share_budget(
            300,
            &[pool("low", 0, 1.0, 2, 2), pool("high", 5, f64::NAN, 2, 2)],
        );
        assert_eq!(shares[1].granted_workers, 2);
        assert_eq!(shares[0].granted_workers, 1);
        assert!(shares[0].gives_way);
        assert!(share_budget(0, &[]).is_empty());
        let mut free = pool("free", 0, 1.0, 1, 7);
        free.worker_bytes = 0;
        assert_eq!(share_budget(0, &[free])[0].granted_workers, 40);
    }
}
