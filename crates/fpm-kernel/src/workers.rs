//! Per-worker sampling of a php-fpm master: finds the workers by process
//! ancestry in `/proc`, reads their CPU ticks, start time, state and memory,
//! and turns two samples into CPU rates and pool aggregates.
//!
//! The pure part ([`cpu_percent`], [`aggregate`], [`distribution`],
//! [`process_age`]) takes samples and times as arguments. The thin reader
//! ([`sample_pool`], [`SampleContext::from_host`]) does the `/proc` I/O.
//!
//! Why PSS rather than RSS for pool memory: every worker maps the master's
//! OPcache shared segment and the PHP binary; RSS counts those pages in full
//! in every worker, so summing worker RSS counts OPcache once per worker and
//! overstates a pool by (workers - 1) × shared size. PSS divides each shared
//! page by the number of processes mapping it, so the sum of PSS over the
//! master and its workers is what the pool really costs in RAM. USS (private
//! pages only) is what stopping one worker would free.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};

use crate::procfs::{self, ParseError, ProcStat, SmapsRollup};

/// One process across pid reuse: the kernel may hand a pid to a new process
/// after the old one exits, but the pair (pid, start time) is unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    /// Process id.
    pub pid: u32,
    /// Start time after boot in clock ticks (`stat` field 22).
    pub start_ticks: u64,
}

/// Memory of one process from `smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Resident set size (shared pages counted in full).
    pub rss: u64,
    /// Proportional set size (shared pages divided among the processes mapping them).
    pub pss: u64,
    /// Unique set size: `Private_Clean + Private_Dirty`.
    pub uss: u64,
    /// `Shared_Clean + Shared_Dirty`.
    pub shared: u64,
    /// PSS of anonymous memory (Linux ≥ 5.14).
    pub pss_anon: Option<u64>,
    /// PSS of file-backed memory (Linux ≥ 5.14).
    pub pss_file: Option<u64>,
    /// PSS of shared memory such as the OPcache segment (Linux ≥ 5.14).
    pub pss_shmem: Option<u64>,
    /// Swapped-out memory.
    pub swap: Option<u64>,
}

impl From<SmapsRollup> for MemoryUsage {
    fn from(r: SmapsRollup) -> Self {
        MemoryUsage {
            rss: r.rss,
            pss: r.pss,
            uss: r.uss(),
            shared: r.shared(),
            pss_anon: r.pss_anon,
            pss_file: r.pss_file,
            pss_shmem: r.pss_shmem,
            swap: r.swap,
        }
    }
}

/// Why a process, or one of its figures, could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The process exited between being listed and being read.
    Exited,
    /// The kernel refused to show the file (ptrace access check, hidepid).
    PermissionDenied {
        /// The file (for example `smaps_rollup`).
        file: &'static str,
    },
    /// The process has no address space to measure (zombie, kernel thread).
    NoAddressSpace,
    /// Memory was not requested in this sample ([`MemoryDetail::Skip`]).
    NotRequested,
    /// The pid now belongs to a process that is not a child of the master.
    NotAChild {
        /// The parent found in `stat`.
        ppid: u32,
    },
    /// The file's text could not be parsed.
    Parse(ParseError),
    /// Any other I/O error.
    Io {
        /// The file.
        file: &'static str,
        /// The error kind.
        kind: io::ErrorKind,
        /// The raw errno when there is one.
        errno: Option<i32>,
    },
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Exited => f.write_str("process exited"),
            Unavailable::PermissionDenied { file } => {
                write!(f, "permission denied reading {file}")
            }
            Unavailable::NoAddressSpace => f.write_str("process has no address space (zombie)"),
            Unavailable::NotRequested => f.write_str("memory not sampled this time"),
            Unavailable::NotAChild { ppid } => {
                write!(f, "pid was reused by a process whose parent is {ppid}")
            }
            Unavailable::Parse(e) => write!(f, "unparsable: {e}"),
            Unavailable::Io { file, kind, errno } => match errno {
                Some(n) => write!(f, "reading {file}: {kind} (errno {n})"),
                None => write!(f, "reading {file}: {kind}"),
            },
        }
    }
}

impl std::error::Error for Unavailable {}

/// Maps a read error of a `/proc/<pid>` file to a reason.
///
/// `ENOENT` (the directory or file is gone) and `ESRCH` (the file was open but
/// the process died) both mean the process exited; `EACCES`/`EPERM` come from
/// the kernel's ptrace access check on `smaps_rollup` and friends.
pub fn classify_io_error(file: &'static str, err: &io::Error) -> Unavailable {
    const ESRCH: i32 = 3;
    match (err.kind(), err.raw_os_error()) {
        (io::ErrorKind::NotFound, _) | (_, Some(ESRCH)) => Unavailable::Exited,
        (io::ErrorKind::PermissionDenied, _) => Unavailable::PermissionDenied { file },
        (kind, errno) => Unavailable::Io { file, kind, errno },
    }
}

/// Host constants needed to turn ticks into times and pages into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleContext {
    /// Boot time, seconds since the Unix epoch (`btime` of `/proc/stat`).
    pub boot_time_secs: u64,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
    pub clk_tck: u64,
    /// Page size in bytes.
    pub page_size: u64,
}

impl SampleContext {
    /// Reads `btime` from `<proc_root>/stat` and the tick rate and page size
    /// from the auxiliary vector. Read it once at start-up.
    pub fn from_host(proc_root: &Path) -> Result<Self, Unavailable> {
        let text = std::fs::read_to_string(proc_root.join("stat"))
            .map_err(|e| classify_io_error("/proc/stat", &e))?;
        let boot_time_secs = procfs::parse_boot_time(&text).map_err(Unavailable::Parse)?;
        Ok(SampleContext {
            boot_time_secs,
            clk_tck: rustix::param::clock_ticks_per_second(),
            page_size: rustix::param::page_size() as u64,
        })
    }
}

/// One process as read from `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    /// Identity across pid reuse.
    pub key: ProcessKey,
    /// Parent pid.
    pub ppid: u32,
    /// Command name from `stat`.
    pub comm: String,
    /// State letter from `stat` (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    /// User plus system CPU ticks so far.
    pub cpu_ticks: u64,
    /// Time since the process started, `None` if `now` is before it (clock
    /// stepped back). Precision is about one second (`btime` is whole seconds).
    pub age: Option<Duration>,
    /// RSS from `stat` (always readable, unlike `smaps_rollup`).
    pub stat_rss_bytes: u64,
    /// Memory from `smaps_rollup`, or why it could not be read.
    pub memory: Result<MemoryUsage, Unavailable>,
}

impl ProcessSample {
    /// The figures [`cpu_percent`] needs.
    pub fn cpu_reading(&self) -> CpuReading {
        CpuReading {
            key: self.key,
            cpu_ticks: self.cpu_ticks,
        }
    }
}

/// A process that could not be sampled at all.
#[derive(Debug, Clone, PartialEq)]
pub struct UnavailableProcess {
    /// The pid that was listed.
    pub pid: u32,
    /// Why it could not be read.
    pub reason: Unavailable,
}

/// A master and its workers at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSample {
    /// The master itself (its memory holds the OPcache segment's creator).
    pub master: Result<ProcessSample, Unavailable>,
    /// Workers that could be read (memory may still be unavailable per worker).
    pub workers: Vec<ProcessSample>,
    /// Workers that were listed but could not be read.
    pub unavailable: Vec<UnavailableProcess>,
    /// The `now` that was passed in, for rate computations.
    pub taken_at: SystemTime,
}

/// Age of a process from boot time and its start ticks, relative to `now`.
pub fn process_age(
    boot_time_secs: u64,
    start_ticks: u64,
    clk_tck: u64,
    now: SystemTime,
) -> Option<Duration> {
    if clk_tck == 0 {
        return None;
    }
    // u128 so that no tick rate, however absurd, can overflow.
    let frac_nanos = u128::from(start_ticks % clk_tck) * 1_000_000_000 / u128::from(clk_tck);
    let after_boot = Duration::from_secs(start_ticks / clk_tck)
        + Duration::from_nanos(u64::try_from(frac_nanos).unwrap_or(u64::MAX));
    let started = UNIX_EPOCH
        .checked_add(Duration::from_secs(boot_time_secs))?
        .checked_add(after_boot)?;
    now.duration_since(started).ok()
}

/// How much memory detail to read per process.
///
/// `smaps_rollup` makes the kernel walk every page table of the process (the
/// whole OPcache segment included), which is by far the most expensive read
/// here (see `docs/bench/kernel.md`); CPU and state need only `stat`. Memory
/// moves slowly, so a collector can read it every Nth cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryDetail {
    /// Read `smaps_rollup` (RSS, PSS, USS).
    SmapsRollup,
    /// Read only `stat`; `memory` is [`Unavailable::NotRequested`].
    Skip,
}

/// Samples a master and its workers under `proc_root` (normally `/proc`),
/// memory included. See [`sample_pool_with`].
pub fn sample_pool(
    proc_root: &Path,
    master: u32,
    ctx: &SampleContext,
    now: SystemTime,
) -> PoolSample {
    sample_pool_with(proc_root, master, ctx, now, MemoryDetail::SmapsRollup)
}

/// Samples a master and its workers under `proc_root` (normally `/proc`).
///
/// Workers are the processes whose parent is `master` (from the kernel's
/// `task/<tid>/children` lists, or by scanning every `stat` when the kernel
/// lacks them); names are never used. A worker that vanishes or cannot be
/// read is reported in [`PoolSample::unavailable`], never guessed.
pub fn sample_pool_with(
    proc_root: &Path,
    master: u32,
    ctx: &SampleContext,
    now: SystemTime,
    detail: MemoryDetail,
) -> PoolSample {
    let master_sample = sample_process(proc_root, master, None, ctx, now, detail);
    let mut workers = Vec::new();
    let mut unavailable = Vec::new();
    if master_sample.is_ok() {
        for pid in list_children(proc_root, master) {
            match sample_process(proc_root, pid, Some(master), ctx, now, detail) {
                Ok(sample) => workers.push(sample),
                Err(reason) => unavailable.push(UnavailableProcess { pid, reason }),
            }
        }
    }
    PoolSample {
        master: master_sample,
        workers,
        unavailable,
        taken_at: now,
    }
}

/// Pids whose parent is `master`, from `<proc_root>/<master>/task/*/children`
/// when the kernel provides it (CONFIG_PROC_CHILDREN), else by a full scan.
pub fn list_children(proc_root: &Path, master: u32) -> Vec<u32> {
    match children_from_task_lists(proc_root, master) {
        Some(pids) => pids,
        None => children_by_scan(proc_root, master),
    }
}

fn children_from_task_lists(proc_root: &Path, master: u32) -> Option<Vec<u32>> {
    let task_dir = proc_root.join(master.to_string()).join("task");
    let mut seen = HashSet::new();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(task_dir).ok()? {
        let Ok(entry) = entry else { continue };
        let text = std::fs::read_to_string(entry.path().join("children")).ok()?;
        for pid in text.split_ascii_whitespace().filter_map(|p| p.parse().ok()) {
            if seen.insert(pid) {
                pids.push(pid);
            }
        }
    }
    Some(pids)
}

fn children_by_scan(proc_root: &Path, master: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let stat = procfs::parse_stat(&text).ok()?;
        (stat.ppid == master).then_some(pid)
    })
    .collect()
}

/// Reads one process. All files are opened relative to one directory fd of
/// `/proc/<pid>`: once that fd is open it stays bound to that process, so if
/// the pid is reused mid-read the later reads fail (`ESRCH`) instead of
/// silently mixing two processes' figures.
fn sample_process(
    proc_root: &Path,
    pid: u32,
    expected_parent: Option<u32>,
    ctx: &SampleContext,
    now: SystemTime,
    detail: MemoryDetail,
) -> Result<ProcessSample, Unavailable> {
    let dir_path: PathBuf = proc_root.join(pid.to_string());
    let dir = rustix::fs::open(
        &dir_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| classify_io_error("stat", &io::Error::from(e)))?;
    let stat_text = read_at(&dir, "stat")?;
    let stat: ProcStat = procfs::parse_stat(&stat_text).map_err(Unavailable::Parse)?;
    if let Some(parent) = expected_parent {
        if stat.ppid != parent {
            return Err(Unavailable::NotAChild { ppid: stat.ppid });
        }
    }
    let memory = if detail == MemoryDetail::Skip {
        Err(Unavailable::NotRequested)
    } else if stat.state == 'Z' {
        Err(Unavailable::NoAddressSpace)
    } else {
        read_at(&dir, "smaps_rollup").and_then(|text| {
            if text.trim().is_empty() {
                return Err(Unavailable::NoAddressSpace);
            }
            procfs::parse_smaps_rollup(&text)
                .map(MemoryUsage::from)
                .map_err(Unavailable::Parse)
        })
    };
    Ok(ProcessSample {
        key: ProcessKey {
            pid: stat.pid,
            start_ticks: stat.starttime,
        },
        ppid: stat.ppid,
        comm: stat.comm.clone(),
        state: stat.state,
        cpu_ticks: stat.cpu_ticks(),
        age: process_age(ctx.boot_time_secs, stat.starttime, ctx.clk_tck, now),
        stat_rss_bytes: stat.rss_pages.saturating_mul(ctx.page_size),
        memory,
    })
}

fn read_at(dir: &OwnedFd, file: &'static str) -> Result<String, Unavailable> {
    let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| classify_io_error(file, &io::Error::from(e)))?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .map_err(|e| classify_io_error(file, &e))?;
    Ok(text)
}

/// CPU ticks of one process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuReading {
    /// Identity across pid reuse.
    pub key: ProcessKey,
    /// User plus system ticks.
    pub cpu_ticks: u64,
}

/// CPU use per process between two samples, in percent of one core.
///
/// Rates are computed only for keys present in both samples; a pid that was
/// reused (same pid, different start time) is a new process and gets `None`,
/// as do new processes, a zero `elapsed`, a zero `clk_tck`, and a counter
/// that went backwards. Output order follows `current`.
pub fn cpu_percent(
    previous: &[CpuReading],
    current: &[CpuReading],
    elapsed: Duration,
    clk_tck: u64,
) -> Vec<(ProcessKey, Option<f64>)> {
    let before: HashMap<ProcessKey, u64> = previous.iter().map(|r| (r.key, r.cpu_ticks)).collect();
    let seconds = elapsed.as_secs_f64();
    current
        .iter()
        .map(|r| {
            let rate = before.get(&r.key).and_then(|&prev_ticks| {
                if seconds <= 0.0 || clk_tck == 0 {
                    return None;
                }
                let delta = r.cpu_ticks.checked_sub(prev_ticks)?;
                Some(delta as f64 / clk_tck as f64 / seconds * 100.0)
            });
            (r.key, rate)
        })
        .collect()
}

/// Sum, nearest-rank percentiles and maximum of a set of byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distribution {
    /// Number of values.
    pub count: usize,
    /// Sum (saturating).
    pub sum: u64,
    /// Median (nearest rank).
    pub p50: u64,
    /// 95th percentile (nearest rank).
    pub p95: u64,
    /// Maximum.
    pub max: u64,
}

/// Builds a [`Distribution`]; `None` for an empty set.
pub fn distribution(values: &[u64]) -> Option<Distribution> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let max = *sorted.last()?;
    let n = sorted.len();
    // Nearest rank: the smallest value with at least p% of values at or below it.
    let rank = |p: usize| sorted[(n * p).div_ceil(100).clamp(1, n) - 1];
    Some(Distribution {
        count: n,
        sum: sorted.iter().fold(0u64, |acc, v| acc.saturating_add(*v)),
        p50: rank(50),
        p95: rank(95),
        max,
    })
}

/// Pool-level figures over the workers of one sample (master kept apart).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolAggregate {
    /// Workers that were sampled (listed and readable).
    pub workers: usize,
    /// Workers listed but unreadable (exited, permissions...).
    pub workers_unavailable: usize,
    /// Workers without memory figures (unreadable `smaps_rollup`, zombie, or
    /// [`MemoryDetail::Skip`]); they are excluded from the memory distributions.
    pub workers_without_memory: usize,
    /// PSS over workers with readable memory.
    pub pss: Option<Distribution>,
    /// RSS over the same workers (overstates the pool: see the module docs).
    pub rss: Option<Distribution>,
    /// USS over the same workers.
    pub uss: Option<Distribution>,
    /// Sum of worker CPU % (percent of one core) over workers with a rate.
    pub cpu_percent_total: Option<f64>,
    /// Workers that had a CPU rate.
    pub workers_with_cpu: usize,
    /// The master's memory, if readable.
    pub master_memory: Option<MemoryUsage>,
    /// The master's CPU %, if it had a rate.
    pub master_cpu_percent: Option<f64>,
    /// Master PSS + sum of worker PSS: what the whole pool costs in RAM
    /// (`None` unless the master and at least one worker were readable).
    pub total_pss: Option<u64>,
}

/// Aggregates a [`PoolSample`] with the CPU rates from [`cpu_percent`]
/// (computed over the master and the workers together).
pub fn aggregate(sample: &PoolSample, cpu: &[(ProcessKey, Option<f64>)]) -> PoolAggregate {
    let rates: HashMap<ProcessKey, f64> =
        cpu.iter().filter_map(|(k, r)| r.map(|r| (*k, r))).collect();
    let mems: Vec<MemoryUsage> = sample
        .workers
        .iter()
        .filter_map(|w| w.memory.as_ref().ok().copied())
        .collect();
    let worker_rates: Vec<f64> = sample
        .workers
        .iter()
        .filter_map(|w| rates.get(&w.key).copied())
        .collect();
    let pss = distribution(&mems.iter().map(|m| m.pss).collect::<Vec<_>>());
    let master_memory = sample
        .master
        .as_ref()
        .ok()
        .and_then(|m| m.memory.as_ref().ok().copied());
    PoolAggregate {
        workers: sample.workers.len(),
        workers_unavailable: sample.unavailable.len(),
        workers_without_memory: sample.workers.len() - mems.len(),
        pss,
        rss: distribution(&mems.iter().map(|m| m.rss).collect::<Vec<_>>()),
        uss: distribution(&mems.iter().map(|m| m.uss).collect::<Vec<_>>()),
        cpu_percent_total: (!worker_rates.is_empty()).then(|| worker_rates.iter().sum()),
        workers_with_cpu: worker_rates.len(),
        master_cpu_percent: sample
            .master
            .as_ref()
            .ok()
            .and_then(|m| rates.get(&m.key).copied()),
        total_pss: match (master_memory, pss) {
            (Some(m), Some(p)) => Some(m.pss.saturating_add(p.sum)),
            _ => None,
        },
        master_memory,
    }
}

/// All CPU readings of a sample (master first), for the next [`cpu_percent`].
pub fn cpu_readings(sample: &PoolSample) -> Vec<CpuReading> {
    sample
        .master
        .iter()
        .chain(sample.workers.iter())
        .map(ProcessSample::cpu_reading)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32, start: u64) -> ProcessKey {
        ProcessKey {
            pid,
            start_ticks: start,
        }
    }

    fn reading(pid: u32, start: u64, ticks: u64) -> CpuReading {
        CpuReading {
            key: key(pid, start),
            cpu_ticks: ticks,
        }
    }

    #[test]
    fn cpu_rate_uses_pid_and_start_time() {
        let prev = [reading(10, 500, 1000), reading(11, 600, 50)];
        // pid 11 was reused by a process started later with fewer ticks; a
        // pid-only key would produce a negative or huge rate here.
        let cur = [
            reading(10, 500, 1100),
            reading(11, 900, 3),
            reading(12, 950, 7),
        ];
        let out = cpu_percent(&prev, &cur, Duration::from_secs(2), 100);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], (key(10, 500), Some(50.0)));
        assert_eq!(out[1], (key(11, 900), None));
        assert_eq!(out[2], (key(12, 950), None));
    }

    #[test]
    fn cpu_rate_degenerate_inputs_are_none() {
        let prev = [reading(10, 500, 1000)];
        let cur = [reading(10, 500, 900)];
        assert_eq!(
            cpu_percent(&prev, &cur, Duration::from_secs(1), 100)[0].1,
            None
        );
        let cur = [reading(10, 500, 1100)];
        assert_eq!(cpu_percent(&prev, &cur, Duration::ZERO, 100)[0].1, None);
        assert_eq!(
            cpu_percent(&prev, &cur, Duration::from_secs(1), 0)[0].1,
            None
        );
        assert!(cpu_percent(&prev, &[], Duration::from_secs(1), 100).is_empty());
    }

    #[test]
    fn distribution_nearest_rank() {
        assert_eq!(distribution(&[]), None);
        let one = distribution(&[7]).unwrap();
        assert_eq!((one.p50, one.p95, one.max, one.sum), (7, 7, 7, 7));
        let values: Vec<u64> = (1..=20).rev().collect();
        let d = distribution(&values).unwrap();
        assert_eq!(d.count, 20);
        assert_eq!(d.sum, 210);
        assert_eq!(d.p50, 10);
        assert_eq!(d.p95, 19);
        assert_eq!(d.max, 20);
        let saturating = distribution(&[u64::MAX, 5]).unwrap();
        assert_eq!(saturating.sum, u64::MAX);
    }

    #[test]
    fn age_from_boot_time() {
        let boot = 1_700_000_000;
        let now = UNIX_EPOCH + Duration::from_secs(boot + 100);
        assert_eq!(
            process_age(boot, 4_050, 100, now),
            Some(Duration::from_millis(59_500))
        );
        // A process "started" after now (clock stepped back) has no age.
        assert_eq!(process_age(boot, 20_000, 100, now), None);
        assert_eq!(process_age(boot, 1, 0, now), None);
        assert_eq!(process_age(u64::MAX, 1, 100, now), None);
        assert_eq!(
            process_age(0, u64::MAX - 1, u64::MAX, now),
            Some(now.duration_since(UNIX_EPOCH).unwrap() - Duration::from_nanos(999_999_999))
        );
    }

    #[test]
    fn io_errors_map_to_reasons() {
        let gone = io::Error::from_raw_os_error(3);
        assert_eq!(classify_io_error("stat", &gone), Unavailable::Exited);
        let missing = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(classify_io_error("stat", &missing), Unavailable::Exited);
        let denied = io::Error::from_raw_os_error(13);
        assert_eq!(
            classify_io_error("smaps_rollup", &denied),
            Unavailable::PermissionDenied {
                file: "smaps_rollup"
            }
        );
        let eio = io::Error::from_raw_os_error(5);
        assert!(matches!(
            classify_io_error("stat", &eio),
            Unavailable::Io { errno: Some(5), .. }
        ));
        assert_eq!(
            Unavailable::PermissionDenied {
                file: "smaps_rollup"
            }
            .to_string(),
            "permission denied reading smaps_rollup"
        );
    }
}
