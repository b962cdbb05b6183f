//! What the scaler is told about a pool at each collection.
//!
//! The collector builds one [`Observation`] per pool per collection from
//! the status page, `/proc`, the kernel's accept queue and the cgroup. All
//! figures are plain numbers; how bad ones (NaN, gaps, resets) are handled
//! is documented on each field and implemented in `decide`.

/// One collection of one pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation<'a> {
    /// Time of the collection in milliseconds on a clock chosen by the
    /// caller; the daemon passes wall-clock epoch milliseconds so that a
    /// stored [`crate::ScalerState`] stays meaningful after a restart. An
    /// observation that is not newer than the previous one is ignored (the
    /// decision is a hold, the state is unchanged), unless it is more than
    /// a minute older: then the clock stepped back and the state's times
    /// are moved back with it.
    pub now_ms: u64,
    /// Connections accepted by workers since the previous observation; use
    /// [`accepted_delta`] on the status page's cumulative `accepted conn`.
    /// Requests still in the accept queue are not counted here; the scaler
    /// adds the queue's growth itself. While two masters serve one pool (a
    /// hand-over), add up the deltas of both.
    pub accepted: u64,
    /// Connections waiting in the accept queue (kernel `Recv-Q` of the
    /// listening socket, fact 9).
    pub queue_len: u32,
    /// Workers serving a request.
    pub busy: u32,
    /// Workers waiting for a request.
    pub idle: u32,
    /// All workers of the pool (may differ from `busy + idle` while workers
    /// start or stop). For a pool that runs `pm = ondemand` under a cap the
    /// scaler set, pass the applied cap (`pm.max_children`): "every worker
    /// busy" then reads "the cap is reached", which is what the emergency
    /// rule needs.
    pub total: u32,
    /// Proportional set size of each worker, in bytes. Zeros are ignored.
    pub worker_pss_bytes: &'a [u64],
    /// Service times (status page `request duration`, converted to
    /// seconds) of the requests that finished since the previous
    /// observation. Non-finite and negative values are ignored.
    pub finished_service_s: &'a [f64],
    /// CPU used by the pool's workers over the interval, in cores
    /// (`None` when unknown; non-finite values count as unknown).
    pub cpu_cores_used: Option<f64>,
    /// CPU available to the pool, in cores: the cgroup quota if there is
    /// one, else the host's cores. `None` disables the CPU-bound rule.
    pub cpu_cores_limit: Option<f64>,
    /// Memory the pool's workers may use together, in bytes (the cgroup
    /// limit); `None`
    /// when there is no limit.
    pub memory_budget_bytes: Option<u64>,
    /// Memory that does not grow with workers: the master and the OPcache
    /// shared memory (fact 15), in bytes.
    pub shared_memory_bytes: u64,
    /// Workers this pool may run under a budget shared with other pools
    /// (from [`crate::share_budget`]); `None` when the pool has the budget
    /// to itself.
    pub share_cap_workers: Option<u32>,
    /// A change decided earlier is still being applied (reload running).
    pub change_in_flight: bool,
}

/// Connections accepted between two readings of the cumulative `accepted
/// conn` counter.
///
/// A decrease means the counter was reset (the master restarted or was
/// reloaded, which zeroes the counter): the current value then is the
/// count since the reset, which is the best available delta. `None` as the
/// previous value (first reading) gives 0.
pub fn accepted_delta(previous: Option<u64>, current: u64) -> u64 {
    match previous {
        None => 0,
        Some(previous) if current >= previous => current - previous,
        Some(_) => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_is_reset_aware() {
        assert_eq!(accepted_delta(None, 500), 0);
        assert_eq!(accepted_delta(Some(100), 150), 50);
        assert_eq!(accepted_delta(Some(100), 100), 0);
        assert_eq!(accepted_delta(Some(100), 7), 7);
        assert_eq!(accepted_delta(Some(u64::MAX), 0), 0);
    }
}
