//! Names of the series that are both exported on `/metrics` and kept in
//! history (`GET /api/v1/pools/{pool}/metrics?metric=...`): one constant
//! each, so a dashboard querying Prometheus and one querying the history
//! API use the same name for the same figure.

pub const UP: &str = "phpfpm_up";
pub const ACCEPTED_CONNECTIONS: &str = "phpfpm_accepted_connections";
pub const MAX_CHILDREN_REACHED: &str = "phpfpm_max_children_reached";
pub const SLOW_REQUESTS: &str = "phpfpm_slow_requests";
pub const LISTEN_QUEUE: &str = "phpfpm_listen_queue";
pub const ACTIVE_PROCESSES: &str = "phpfpm_active_processes";
pub const IDLE_PROCESSES: &str = "phpfpm_idle_processes";
pub const TOTAL_PROCESSES: &str = "phpfpm_total_processes";
pub const ACCEPT_QUEUE: &str = "phpfpm_manager_accept_queue";
pub const WORKER_CPU_PERCENT: &str = "phpfpm_manager_worker_cpu_percent";
pub const WORKER_PSS_BYTES: &str = "phpfpm_manager_worker_pss_bytes";
pub const WORKER_PSS_P95_BYTES: &str = "phpfpm_manager_worker_pss_p95_bytes";
pub const POOL_PSS_BYTES: &str = "phpfpm_manager_pool_pss_bytes";
pub const OPCACHE_HIT_RATE: &str = "phpfpm_manager_opcache_hit_rate";
pub const PM_MAX_CHILDREN: &str = "phpfpm_manager_pm_max_children";

/// Every series kept in history, for the history API's documentation and
/// the test that keeps `/metrics` and history in step.
pub const HISTORY: &[&str] = &[
    UP,
    ACCEPTED_CONNECTIONS,
    MAX_CHILDREN_REACHED,
    SLOW_REQUESTS,
    LISTEN_QUEUE,
    ACTIVE_PROCESSES,
    IDLE_PROCESSES,
    TOTAL_PROCESSES,
    ACCEPT_QUEUE,
    WORKER_CPU_PERCENT,
    WORKER_PSS_BYTES,
    WORKER_PSS_P95_BYTES,
    POOL_PSS_BYTES,
    OPCACHE_HIT_RATE,
    PM_MAX_CHILDREN,
];
