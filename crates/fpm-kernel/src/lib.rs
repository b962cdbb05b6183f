//! Kernel-side observation of php-fpm for phpfpm-manager.
//!
//! - [`procfs`]: pure parsers of `/proc/<pid>/{stat,statm,status,smaps_rollup,cmdline}`.
//! - [`workers`]: per-worker sampling by process ancestry, CPU rates keyed by
//!   (pid, start time), pool memory aggregates (PSS, RSS, USS).
//! - [`queue`]: the accept queue of a listening socket from netlink `sock_diag`
//!   (unix and TCP), with a `/proc/net/tcp` fallback.
//! - [`budget`]: memory and CPU budget from cgroup v2 / v1 or `/proc/meminfo`.
//!
//! Everything is synchronous and cheap (see `docs/bench/kernel.md`); pure
//! functions take their inputs, including the current time, as arguments.

pub mod budget;
pub mod procfs;
pub mod queue;
pub mod workers;
