//! The budget reader end to end: on a constructed cgroup v2 tree (nested
//! limits, `max`), on a v1 layout, and on this host.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use fpm_kernel::budget::{read_budget, read_budget_from, CpuSource, MemorySource};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn fake_proc(tag: &str, cgroup: &str, mountinfo: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("fpm-kernel-budget-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let proc_root = root.join("proc");
    write(
        &proc_root.join("meminfo"),
        include_str!("../test_data/host/meminfo"),
    );
    write(&proc_root.join("loadavg"), "0.50 0.25 0.10 1/100 42\n");
    write(&proc_root.join("self/cgroup"), cgroup);
    write(&proc_root.join("self/mountinfo"), mountinfo);
    root
}

#[test]
fn v2_nested_limits_take_the_tightest_and_max_is_unlimited() {
    let root = std::env::temp_dir().join(format!("fpm-kernel-budget-v2-{}", std::process::id()));
    let cg = root.join("cgroup");
    let mountinfo = format!(
        "30 25 0:26 / {} rw,nosuid - cgroup2 cgroup2 rw\n",
        cg.display()
    );
    let root = fake_proc("v2", "0::/system.slice/php.service\n", &mountinfo);
    let slice = cg.join("system.slice");
    let service = slice.join("php.service");
    write(&slice.join("memory.max"), "536870912\n");
    write(&slice.join("memory.high"), "max\n");
    write(&service.join("memory.max"), "max\n");
    write(&service.join("memory.high"), "402653184\n");
    write(&service.join("memory.current"), "123456789\n");
    write(&service.join("cpu.max"), "150000 100000\n");
    let budget = read_budget_from(&root.join("proc")).unwrap();
    assert_eq!(
        budget.memory_limit,
        Some(536_870_912),
        "the parent's limit binds"
    );
    assert_eq!(budget.memory_high, Some(402_653_184));
    assert_eq!(budget.memory_current, Some(123_456_789));
    assert_eq!(budget.cpu_quota_cores, Some(1.5));
    assert_eq!(budget.loadavg, [0.5, 0.25, 0.1]);
    assert_eq!(budget.source.memory, MemorySource::CgroupV2);
    assert_eq!(budget.source.cpu, CpuSource::CgroupV2);

    // Everything unlimited: `max` everywhere is None, not a number.
    write(&slice.join("memory.max"), "max\n");
    write(&service.join("memory.high"), "max\n");
    write(&service.join("cpu.max"), "max 100000\n");
    let budget = read_budget_from(&root.join("proc")).unwrap();
    assert_eq!(budget.memory_limit, None);
    assert_eq!(budget.memory_high, None);
    assert_eq!(budget.cpu_quota_cores, None);
    assert_eq!(budget.source.memory, MemorySource::CgroupV2);

    // A corrupt file is an error naming the file, not a guess.
    write(&service.join("memory.current"), "lots\n");
    let err = read_budget_from(&root.join("proc"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("memory.current"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn v1_unlimited_and_no_cgroup_fallback() {
    let base = std::env::temp_dir().join(format!("fpm-kernel-budget-v1-{}", std::process::id()));
    let mem = base.join("memory");
    let cpu = base.join("cpu");
    let mountinfo = format!(
        "35 31 0:32 / {} rw - cgroup cgroup rw,memory\n32 31 0:29 / {} rw - cgroup cgroup rw,cpu\n",
        mem.display(),
        cpu.display()
    );
    let root = fake_proc("v1", "4:memory:/pool\n1:cpu:/\n", &mountinfo);
    write(
        &mem.join("pool/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    write(&mem.join("pool/memory.usage_in_bytes"), "1048576\n");
    write(&cpu.join("cpu.cfs_quota_us"), "-1\n");
    write(&cpu.join("cpu.cfs_period_us"), "100000\n");
    let budget = read_budget_from(&root.join("proc")).unwrap();
    assert_eq!(budget.memory_limit, None);
    assert_eq!(budget.memory_current, Some(1_048_576));
    assert_eq!(budget.cpu_quota_cores, None);
    assert_eq!(budget.source.memory, MemorySource::CgroupV1);
    assert_eq!(budget.source.cpu, CpuSource::CgroupV1);
    // A parent's limit reaches the cgroup through memory.stat.
    write(
        &mem.join("pool/memory.stat"),
        "cache 0\nhierarchical_memory_limit 268435456\n",
    );
    let budget = read_budget_from(&root.join("proc")).unwrap();
    assert_eq!(budget.memory_limit, Some(268_435_456));

    // No cgroup mounts at all: meminfo only.
    let bare = fake_proc("bare", "0::/\n", "22 27 0:21 / /proc rw - proc proc rw\n");
    let budget = read_budget_from(&bare.join("proc")).unwrap();
    assert_eq!(budget.source.memory, MemorySource::MemInfo);
    assert_eq!(budget.source.cpu, CpuSource::None);
    assert_eq!(budget.memory_limit, None);
    assert!(budget.mem_total.unwrap() > 0);
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&bare).unwrap();
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn this_host() {
    let budget = read_budget().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(budget.mem_total, Some(total_kib * 1024));
    assert!(budget.cpus >= 1);
    assert!(budget.memory_limit.is_none_or(|l| l < 1 << 62));
    if budget.source.memory != MemorySource::MemInfo {
        assert!(budget.memory_current.unwrap() > 0);
    }
    eprintln!("{budget:?}");
}
