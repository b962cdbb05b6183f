//! Workers that cannot be read: exited between listing and reading, pid
//! reused by a stranger, truncated files, zombies, and `smaps_rollup` that
//! the kernel refuses to show (run as `nobody` against a root process).
//! Each must come out as "not available" with a reason, never a panic or a
//! made-up number.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use fpm_kernel::procfs::ParseError;
use fpm_kernel::workers::{aggregate, list_children, sample_pool, SampleContext, Unavailable};

const MASTER_STAT: &str = include_str!("../test_data/proc/php-fpm-master/stat");
const MASTER_SMAPS: &str = include_str!("../test_data/proc/php-fpm-master/smaps_rollup");
const WORKER_STAT: &str = include_str!("../test_data/proc/php-fpm-worker/stat");
const WORKER_SMAPS: &str = include_str!("../test_data/proc/php-fpm-worker/smaps_rollup");

fn ctx() -> SampleContext {
    SampleContext {
        boot_time_secs: 1_795_688_329,
        clk_tck: 100,
        page_size: 4096,
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The captured worker line with another pid and parent.
fn worker_stat(pid: u32, ppid: u32) -> String {
    let rest = WORKER_STAT.split_once(") S ").unwrap().1;
    let after_ppid = rest.split_once(' ').unwrap().1;
    format!("{pid} (php-fpm8.2) S {ppid} {after_ppid}")
}

fn fake_tree(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("fpm-kernel-proc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let master: u32 = MASTER_STAT.split(' ').next().unwrap().parse().unwrap();
    write(&root, &format!("{master}/stat"), MASTER_STAT);
    write(&root, &format!("{master}/smaps_rollup"), MASTER_SMAPS);
    write(
        &root,
        &format!("{master}/task/{master}/children"),
        "10498 10499 10500 10501 10502 ",
    );
    // 10498: a healthy worker.
    write(&root, "10498/stat", &worker_stat(10498, master));
    write(&root, "10498/smaps_rollup", WORKER_SMAPS);
    // 10499: listed, then exited (no directory).
    // 10500: pid reused by a process of another parent.
    write(&root, "10500/stat", &worker_stat(10500, 1));
    write(&root, "10500/smaps_rollup", WORKER_SMAPS);
    // 10501: smaps_rollup cut short.
    write(&root, "10501/stat", &worker_stat(10501, master));
    write(&root, "10501/smaps_rollup", "Rss:   8356 kB\n");
    // 10502: garbage stat.
    write(&root, "10502/stat", "10502 (php-fpm8.2");
    root
}

#[test]
fn each_unreadable_worker_has_a_reason() {
    let root = fake_tree("reasons");
    let master: u32 = MASTER_STAT.split(' ').next().unwrap().parse().unwrap();
    let sample = sample_pool(&root, master, &ctx(), SystemTime::now());
    assert!(sample.master.is_ok());
    let pids: Vec<u32> = sample.workers.iter().map(|w| w.key.pid).collect();
    assert_eq!(pids, vec![10498, 10501]);
    assert!(sample.workers[0].memory.is_ok());
    assert_eq!(
        sample.workers[1].memory,
        Err(Unavailable::Parse(ParseError::MissingField {
            file: "smaps_rollup",
            field: "Pss"
        }))
    );
    let reasons: Vec<(u32, String)> = sample
        .unavailable
        .iter()
        .map(|u| (u.pid, u.reason.to_string()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], (10499, "process exited".to_owned()));
    assert_eq!(reasons[1].0, 10500);
    assert!(reasons[1].1.contains("parent is 1"), "{}", reasons[1].1);
    assert_eq!(reasons[2].0, 10502);
    assert!(
        reasons[2].1.starts_with("unparsable: stat"),
        "{}",
        reasons[2].1
    );

    // Aggregates use only what was read: one worker with memory.
    let agg = aggregate(&sample, &[]);
    assert_eq!(agg.workers, 2);
    assert_eq!(agg.workers_unavailable, 3);
    assert_eq!(agg.workers_without_memory, 1);
    assert_eq!(agg.pss.unwrap().count, 1);
    assert_eq!(agg.cpu_percent_total, None, "no previous sample, no rate");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn children_found_by_scan_without_task_lists() {
    let root = fake_tree("scan");
    let master: u32 = MASTER_STAT.split(' ').next().unwrap().parse().unwrap();
    std::fs::remove_dir_all(root.join(format!("{master}/task"))).unwrap();
    let mut children = list_children(&root, master);
    children.sort_unstable();
    // 10500 has another parent and 10502 cannot be parsed: not children.
    assert_eq!(children, vec![10498, 10501]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn missing_master_is_exited_and_has_no_workers() {
    let root = fake_tree("no-master");
    let sample = sample_pool(&root, 4_000_000, &ctx(), SystemTime::now());
    assert_eq!(sample.master, Err(Unavailable::Exited));
    assert!(sample.workers.is_empty());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn zombie_child_has_no_address_space() {
    // A child that exited but was not reaped yet is a zombie of this process.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let ctx = SampleContext::from_host(Path::new("/proc")).unwrap();
    let zombie = loop {
        let sample = sample_pool(
            Path::new("/proc"),
            std::process::id(),
            &ctx,
            SystemTime::now(),
        );
        if let Some(w) = sample
            .workers
            .iter()
            .find(|w| w.key.pid == pid && w.state == 'Z')
        {
            break w.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child never became a zombie"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(zombie.memory, Err(Unavailable::NoAddressSpace));
    child.wait().unwrap();
}

const CHILD_ENV: &str = "FPM_KERNEL_TEST_SAMPLE_AS_NOBODY";

#[test]
fn smaps_rollup_permission_denied_is_unavailable() {
    if let Ok(target) = std::env::var(CHILD_ENV) {
        // Child mode: running as nobody, sample the root-owned parent test
        // process. stat is world-readable; smaps_rollup is not.
        let target: u32 = target.parse().unwrap();
        let ctx = SampleContext::from_host(Path::new("/proc")).unwrap();
        let sample = sample_pool(Path::new("/proc"), target, &ctx, SystemTime::now());
        let master = sample.master.expect("stat is readable by anyone");
        match master.memory {
            Err(reason) => println!("CHILD-RESULT {reason}"),
            Ok(m) => println!("CHILD-RESULT read memory {m:?}"),
        }
        return;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "this test drops to uid nobody and must run as root"
    );
    // The build directory may sit under a directory `nobody` cannot enter
    // (for example /root), so run a copy of this test binary from a temp dir.
    let dir = std::env::temp_dir().join(format!("fpm-kernel-as-nobody-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("test-binary");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another test thread may fork while the copy's write descriptor is still
    // open in this process; the forked child then holds it until it execs,
    // and executing the copy fails with ETXTBSY. Retry for a short while.
    let mut attempts = 0;
    let output = loop {
        let res = Command::new(&exe)
            .args([
                "--exact",
                "smaps_rollup_permission_denied_is_unavailable",
                "--nocapture",
            ])
            .env(CHILD_ENV, std::process::id().to_string())
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output();
        match res {
            Err(e) if e.raw_os_error() == Some(26) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("CHILD-RESULT permission denied reading smaps_rollup"),
        "{stdout}"
    );
}
