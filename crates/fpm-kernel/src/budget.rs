//! The memory and CPU budget of the host or container the manager runs in.
//!
//! Memory comes from cgroup v2 (`memory.max`, `memory.high`,
//! `memory.current`), else cgroup v1 (`memory.limit_in_bytes`,
//! `memory.usage_in_bytes`), and `/proc/meminfo` is always read for the host
//! totals. CPU quota comes from v2 `cpu.max` else v1
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`; the CPU count is the affinity mask;
//! load from `/proc/loadavg`. The process's own cgroup is found from
//! `/proc/self/cgroup` and `/proc/self/mountinfo`, so it works in containers
//! where the cgroup file system is mounted at a sub-tree.
//!
//! "Unlimited" is `None`: v2 writes `max`, v1 writes a huge page-rounded
//! number (`9223372036854771712` on 4 KiB pages) and `-1` for the CPU quota.
//! Limits of ancestor cgroups also bind, so v2 limits are the minimum over
//! the cgroup and its ancestors up to the mount root.

use std::path::{Path, PathBuf};

use crate::procfs::ParseError;

/// Where the memory figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// cgroup v2 memory controller.
    CgroupV2,
    /// cgroup v1 memory controller.
    CgroupV1,
    /// No memory cgroup: `/proc/meminfo` only.
    MemInfo,
}

/// Where the CPU quota came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSource {
    /// cgroup v2 `cpu.max`.
    CgroupV2,
    /// cgroup v1 CFS quota.
    CgroupV1,
    /// No CPU cgroup found: no quota.
    None,
}

/// Where each part of a [`Budget`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSource {
    /// Memory.
    pub memory: MemorySource,
    /// CPU quota.
    pub cpu: CpuSource,
}

/// What the manager and its pools may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Hard memory limit in bytes (`memory.max` / `limit_in_bytes`); `None` = unlimited.
    pub memory_limit: Option<u64>,
    /// Throttling threshold (`memory.high`, v2 only); `None` = unlimited or absent.
    pub memory_high: Option<u64>,
    /// Memory charged to the cgroup now; `None` without a memory cgroup.
    pub memory_current: Option<u64>,
    /// `MemTotal` of the host.
    pub mem_total: Option<u64>,
    /// `MemAvailable` of the host.
    pub mem_available: Option<u64>,
    /// CPU quota in cores (quota / period); `None` = unlimited.
    pub cpu_quota_cores: Option<f64>,
    /// CPUs this process may run on (affinity mask).
    pub cpus: u32,
    /// 1, 5 and 15 minute load averages.
    pub loadavg: [f64; 3],
    /// Where the figures came from.
    pub source: BudgetSource,
}

/// Why the budget could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file's text was not understood.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ParseError,
    },
}

// === pure parsers ==========================================================

/// v1 values at or above this are "no limit": the kernel stores unlimited as
/// `PAGE_COUNTER_MAX` pages (≈ 2^63 bytes rounded to the page size). No real
/// machine has 2^62 bytes.
pub const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Parses a cgroup v2 single-value limit file (`memory.max`, `memory.high`):
/// `max` is unlimited.
pub fn parse_v2_limit(file: &'static str, text: &str) -> Result<Option<u64>, ParseError> {
    let value = text.trim();
    if value == "max" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| ParseError::BadNumber {
        file,
        field: "value",
        value: value.chars().take(64).collect(),
    })
}

/// Parses a plain byte count (`memory.current`, `memory.usage_in_bytes`).
pub fn parse_bytes(file: &'static str, text: &str) -> Result<u64, ParseError> {
    let value = text.trim();
    value.parse().map_err(|_| ParseError::BadNumber {
        file,
        field: "value",
        value: value.chars().take(64).collect(),
    })
}

/// Parses a cgroup v1 memory limit; huge values are unlimited.
pub fn parse_v1_limit(file: &'static str, text: &str) -> Result<Option<u64>, ParseError> {
    let value = text.trim();
    // Some kernels print -1 for an unset limit.
    if value == "-1" {
        return Ok(None);
    }
    let bytes = parse_bytes(file, value)?;
    Ok((bytes < V1_UNLIMITED_THRESHOLD).then_some(bytes))
}

/// The `hierarchical_memory_limit` line of a v1 `memory.stat`; absent or
/// huge is unlimited.
pub fn parse_v1_hierarchical_limit(memory_stat: &str) -> Result<Option<u64>, ParseError> {
    match memory_stat
        .lines()
        .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
    {
        Some(value) => parse_v1_limit("memory.stat", value),
        None => Ok(None),
    }
}

/// Parses v2 `cpu.max` (`"max 100000"` or `"150000 100000"`) into cores.
pub fn parse_cpu_max(text: &str) -> Result<Option<f64>, ParseError> {
    const FILE: &str = "cpu.max";
    let mut it = text.split_ascii_whitespace();
    let quota = it.next().ok_or(ParseError::MissingField {
        file: FILE,
        field: "quota",
    })?;
    if quota == "max" {
        return Ok(None);
    }
    let period = it.next().unwrap_or("100000");
    cpu_cores(FILE, quota, period)
}

/// Parses v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` into cores; a
/// negative quota is unlimited.
pub fn parse_cfs_quota(quota: &str, period: &str) -> Result<Option<f64>, ParseError> {
    let quota = quota.trim();
    if quota.starts_with('-') {
        return Ok(None);
    }
    cpu_cores("cpu.cfs_quota_us", quota, period.trim())
}

fn cpu_cores(file: &'static str, quota: &str, period: &str) -> Result<Option<f64>, ParseError> {
    let bad = |field, value: &str| ParseError::BadNumber {
        file,
        field,
        value: value.chars().take(64).collect(),
    };
    let q: u64 = quota.parse().map_err(|_| bad("quota", quota))?;
    let p: u64 = period.parse().map_err(|_| bad("period", period))?;
    if p == 0 {
        return Err(bad("period", period));
    }
    Ok(Some(q as f64 / p as f64))
}

/// Host memory from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable` (absent before Linux 3.14).
    pub available: Option<u64>,
}

/// Parses `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    const FILE: &str = "meminfo";
    let value = |key: &'static str| -> Result<Option<u64>, ParseError> {
        let Some(line) = text
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        else {
            return Ok(None);
        };
        let digits = line.trim().trim_end_matches("kB").trim();
        let kib: u64 = digits.parse().map_err(|_| ParseError::BadNumber {
            file: FILE,
            field: key,
            value: digits.chars().take(64).collect(),
        })?;
        kib.checked_mul(1024)
            .map(Some)
            .ok_or(ParseError::BadNumber {
                file: FILE,
                field: key,
                value: digits.chars().take(64).collect(),
            })
    };
    Ok(MemInfo {
        total: value("MemTotal")?.ok_or(ParseError::MissingField {
            file: FILE,
            field: "MemTotal",
        })?,
        available: value("MemAvailable")?,
    })
}

/// Parses `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], ParseError> {
    const FILE: &str = "loadavg";
    const NAMES: [&str; 3] = ["load1", "load5", "load15"];
    let mut it = text.split_ascii_whitespace();
    let mut out = [0.0; 3];
    for (slot, name) in out.iter_mut().zip(NAMES) {
        let value = it.next().ok_or(ParseError::MissingField {
            file: FILE,
            field: name,
        })?;
        *slot = value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| ParseError::BadNumber {
                file: FILE,
                field: name,
                value: value.chars().take(64).collect(),
            })?;
    }
    Ok(out)
}

/// One line of `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    /// Hierarchy id (0 for the v2 unified hierarchy).
    pub hierarchy: u32,
    /// Controllers of a v1 hierarchy (empty for v2).
    pub controllers: Vec<String>,
    /// The cgroup path relative to the hierarchy's root.
    pub path: String,
}

/// Parses `/proc/self/cgroup`; malformed lines are skipped.
pub fn parse_self_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let path = parts.next()?.to_owned();
            Some(CgroupLine {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The sub-tree of the hierarchy mounted here (`/` on hosts, the
    /// container's own cgroup inside some containers).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// `true` for cgroup2.
    pub v2: bool,
    /// v1 controllers named in the super options (`cpu`, `memory`, ...).
    pub controllers: Vec<String>,
}

/// Parses the cgroup mounts out of `/proc/self/mountinfo`.
pub fn parse_cgroup_mounts(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = if v2 {
                Vec::new()
            } else {
                right
                    .get(2)?
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                    .map(str::to_owned)
                    .collect()
            };
            Some(CgroupMount {
                root: unescape_mountinfo(left.get(3)?),
                mount_point: PathBuf::from(unescape_mountinfo(left.get(4)?)),
                v2,
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directories of this process's cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDirs {
    /// The v2 cgroup directory and the v2 mount point (for walking ancestors).
    pub v2: Option<(PathBuf, PathBuf)>,
    /// The v1 memory controller's directory.
    pub v1_memory: Option<PathBuf>,
    /// The v1 cpu controller's directory.
    pub v1_cpu: Option<PathBuf>,
}

/// Resolves this process's cgroup directories (pure).
///
/// The cgroup path of `/proc/self/cgroup` is relative to the hierarchy root;
/// a mount whose `root` is a sub-tree shows only that sub-tree, so the root
/// prefix is removed before joining with the mount point. A path outside the
/// mounted sub-tree (possible across namespaces) is not resolvable.
pub fn resolve_cgroup_dirs(lines: &[CgroupLine], mounts: &[CgroupMount]) -> CgroupDirs {
    let join = |mount: &CgroupMount, path: &str| -> Option<PathBuf> {
        let root = mount.root.trim_end_matches('/');
        let rel = path.strip_prefix(root)?;
        if !(rel.is_empty() || rel.starts_with('/')) {
            return None;
        }
        Some(mount.mount_point.join(rel.trim_start_matches('/')))
    };
    let v1 = |controller: &str| -> Option<PathBuf> {
        let line = lines
            .iter()
            .find(|l| l.hierarchy != 0 && l.controllers.iter().any(|c| c == controller))?;
        let mount = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
        join(mount, &line.path)
    };
    let v2 = lines
        .iter()
        .find(|l| l.hierarchy == 0 && l.controllers.is_empty())
        .and_then(|line| {
            let mount = mounts.iter().find(|m| m.v2)?;
            Some((join(mount, &line.path)?, mount.mount_point.clone()))
        });
    CgroupDirs {
        v2,
        v1_memory: v1("memory"),
        v1_cpu: v1("cpu"),
    }
}

/// Minimum of optional limits where `None` is unlimited.
pub fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

// === thin reader ===========================================================

/// Reads the budget of the calling process (`/proc/self`, host files).
pub fn read_budget() -> Result<Budget, BudgetError> {
    read_budget_from(Path::new("/proc"))
}

fn read(path: &Path) -> Result<String, BudgetError> {
    std::fs::read_to_string(path).map_err(|source| BudgetError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parsed<T>(path: &Path, result: Result<T, ParseError>) -> Result<T, BudgetError> {
    result.map_err(|source| BudgetError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Reads an optional file: absent is `Ok(None)`, unreadable is an error.
fn read_optional(path: &Path) -> Result<Option<String>, BudgetError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BudgetError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// [`read_budget`] with another `/proc` (the cgroup paths found in its
/// mountinfo are used as they are).
pub fn read_budget_from(proc_root: &Path) -> Result<Budget, BudgetError> {
    let meminfo_path = proc_root.join("meminfo");
    let meminfo = parsed(&meminfo_path, parse_meminfo(&read(&meminfo_path)?))?;
    let loadavg_path = proc_root.join("loadavg");
    let loadavg = parsed(&loadavg_path, parse_loadavg(&read(&loadavg_path)?))?;
    let lines = parse_self_cgroup(&read(&proc_root.join("self/cgroup"))?);
    let mounts = parse_cgroup_mounts(&read(&proc_root.join("self/mountinfo"))?);
    let dirs = resolve_cgroup_dirs(&lines, &mounts);

    let mut budget = Budget {
        memory_limit: None,
        memory_high: None,
        memory_current: None,
        mem_total: Some(meminfo.total),
        mem_available: meminfo.available,
        cpu_quota_cores: None,
        cpus: rustix::thread::sched_getaffinity(None)
            .map(|set| set.count())
            .unwrap_or(0)
            .max(1),
        loadavg,
        source: BudgetSource {
            memory: MemorySource::MemInfo,
            cpu: CpuSource::None,
        },
    };

    // v2 first; a v2 hierarchy without the memory controller enabled (hybrid
    // hosts like the one the fixtures come from) has no memory.max.
    if let Some((dir, mount)) = &dirs.v2 {
        if let Some(current) = read_optional(&dir.join("memory.current"))? {
            let path = dir.join("memory.current");
            budget.memory_current = Some(parsed(&path, parse_bytes("memory.current", &current))?);
            let (max, high) = v2_limits_up_to(dir, mount)?;
            budget.memory_limit = max;
            budget.memory_high = high;
            budget.source.memory = MemorySource::CgroupV2;
        }
        if let Some(text) = read_optional(&dir.join("cpu.max"))? {
            budget.cpu_quota_cores = parsed(&dir.join("cpu.max"), parse_cpu_max(&text))?;
            budget.source.cpu = CpuSource::CgroupV2;
        }
    }
    if budget.source.memory == MemorySource::MemInfo {
        if let Some(dir) = &dirs.v1_memory {
            let limit_path = dir.join("memory.limit_in_bytes");
            if let Some(text) = read_optional(&limit_path)? {
                let own = parsed(&limit_path, parse_v1_limit("memory.limit_in_bytes", &text))?;
                // With hierarchy on, an ancestor's lower limit binds; the
                // kernel reports the effective one in memory.stat.
                let stat_path = dir.join("memory.stat");
                let inherited = match read_optional(&stat_path)? {
                    Some(stat) => parsed(&stat_path, parse_v1_hierarchical_limit(&stat))?,
                    None => None,
                };
                budget.memory_limit = min_limit(own, inherited);
                let usage_path = dir.join("memory.usage_in_bytes");
                budget.memory_current = Some(parsed(
                    &usage_path,
                    parse_bytes("memory.usage_in_bytes", &read(&usage_path)?),
                )?);
                budget.source.memory = MemorySource::CgroupV1;
            }
        }
    }
    if budget.source.cpu == CpuSource::None {
        if let Some(dir) = &dirs.v1_cpu {
            let quota_path = dir.join("cpu.cfs_quota_us");
            if let Some(quota) = read_optional(&quota_path)? {
                let period = read(&dir.join("cpu.cfs_period_us"))?;
                budget.cpu_quota_cores = parsed(&quota_path, parse_cfs_quota(&quota, &period))?;
                budget.source.cpu = CpuSource::CgroupV1;
            }
        }
    }
    Ok(budget)
}

/// The tightest `memory.max` and `memory.high` from `dir` up to `mount`.
fn v2_limits_up_to(dir: &Path, mount: &Path) -> Result<(Option<u64>, Option<u64>), BudgetError> {
    let mut max = None;
    let mut high = None;
    let mut current = Some(dir);
    // The root cgroup has no memory.max; missing files are skipped.
    while let Some(d) = current {
        if !d.starts_with(mount) {
            break;
        }
        let max_path = d.join("memory.max");
        if let Some(text) = read_optional(&max_path)? {
            max = min_limit(max, parsed(&max_path, parse_v2_limit("memory.max", &text))?);
        }
        let high_path = d.join("memory.high");
        if let Some(text) = read_optional(&high_path)? {
            high = min_limit(
                high,
                parsed(&high_path, parse_v2_limit("memory.high", &text))?,
            );
        }
        current = d.parent();
    }
    Ok((max, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_max_is_unlimited_not_a_number() {
        assert_eq!(parse_v2_limit("memory.max", "max\n"), Ok(None));
        assert_eq!(
            parse_v2_limit("memory.max", "536870912\n"),
            Ok(Some(536_870_912))
        );
        assert!(matches!(
            parse_v2_limit("memory.max", "lots"),
            Err(ParseError::BadNumber { .. })
        ));
        assert!(parse_v2_limit("memory.max", "").is_err());
    }

    #[test]
    fn v1_huge_value_is_unlimited() {
        // The value this machine's v1 memory cgroup prints when unlimited.
        assert_eq!(
            parse_v1_limit("memory.limit_in_bytes", "9223372036854771712\n"),
            Ok(None)
        );
        assert_eq!(parse_v1_limit("memory.limit_in_bytes", "-1"), Ok(None));
        assert_eq!(
            parse_v1_limit("memory.limit_in_bytes", "1073741824"),
            Ok(Some(1 << 30))
        );
    }

    #[test]
    fn v1_hierarchical_limit() {
        assert_eq!(
            parse_v1_hierarchical_limit("cache 0\nhierarchical_memory_limit 268435456\n"),
            Ok(Some(1 << 28))
        );
        assert_eq!(
            parse_v1_hierarchical_limit("hierarchical_memory_limit 9223372036854771712\n"),
            Ok(None)
        );
        assert_eq!(parse_v1_hierarchical_limit("cache 0\n"), Ok(None));
    }

    #[test]
    fn cpu_quota_forms() {
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
        assert_eq!(parse_cpu_max("150000 100000\n"), Ok(Some(1.5)));
        assert!(parse_cpu_max("150000 0").is_err());
        assert!(parse_cpu_max("").is_err());
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), Ok(None));
        assert_eq!(parse_cfs_quota("50000\n", "100000\n"), Ok(Some(0.5)));
        assert!(parse_cfs_quota("50000", "0").is_err());
    }

    #[test]
    fn real_meminfo_and_loadavg() {
        let text = include_str!("../test_data/host/meminfo");
        let info = parse_meminfo(text).unwrap();
        let kib = |key: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(&format!("{key}:")))
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        assert_eq!(info.total, kib("MemTotal"));
        assert_eq!(info.available, Some(kib("MemAvailable")));
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        let load = parse_loadavg(include_str!("../test_data/host/loadavg")).unwrap();
        assert!(load.iter().all(|v| *v >= 0.0));
        assert!(parse_loadavg("0.1 0.2").is_err());
        assert!(parse_loadavg("NaN 0.2 0.3").is_err());
    }

    #[test]
    fn hybrid_host_resolves_v1_memory_and_empty_v2() {
        let lines = parse_self_cgroup(include_str!("../test_data/cgroup-v1-hybrid/self_cgroup"));
        let mounts = parse_cgroup_mounts(include_str!("../test_data/cgroup-v1-hybrid/mountinfo"));
        let dirs = resolve_cgroup_dirs(&lines, &mounts);
        let memory_line = lines
            .iter()
            .find(|l| l.controllers.iter().any(|c| c == "memory"))
            .unwrap();
        assert_eq!(
            dirs.v1_memory,
            Some(
                PathBuf::from("/sys/fs/cgroup/memory")
                    .join(memory_line.path.trim_start_matches('/'))
            )
        );
        assert_eq!(dirs.v1_cpu, Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        assert_eq!(
            dirs.v2,
            Some((
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ))
        );
    }

    #[test]
    fn container_v2_mount_root_is_stripped() {
        let lines = parse_self_cgroup("0::/kubepods/pod1/ctr\n");
        let mounts = parse_cgroup_mounts(
            "30 25 0:26 /kubepods/pod1 /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let dirs = resolve_cgroup_dirs(&lines, &mounts);
        assert_eq!(
            dirs.v2,
            Some((
                PathBuf::from("/sys/fs/cgroup/ctr"),
                PathBuf::from("/sys/fs/cgroup")
            ))
        );
        // A cgroup outside the mounted sub-tree cannot be resolved.
        let outside = parse_self_cgroup("0::/other\n");
        assert_eq!(resolve_cgroup_dirs(&outside, &mounts).v2, None);
        assert_eq!(resolve_cgroup_dirs(&[], &mounts), CgroupDirs::default());
    }

    #[test]
    fn mountinfo_escapes() {
        let mounts = parse_cgroup_mounts(
            "41 31 0:38 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,memory\n",
        );
        assert_eq!(
            mounts[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/with space")
        );
        assert_eq!(mounts[0].controllers, vec!["memory".to_owned()]);
        assert_eq!(unescape_mountinfo("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn min_limit_treats_none_as_unlimited() {
        assert_eq!(min_limit(None, None), None);
        assert_eq!(min_limit(Some(5), None), Some(5));
        assert_eq!(min_limit(None, Some(7)), Some(7));
        assert_eq!(min_limit(Some(9), Some(7)), Some(7));
    }
}
