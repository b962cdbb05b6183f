//! Pure parsers for the `/proc` files the manager reads per process and per
//! host: `stat`, `statm`, `status`, `smaps_rollup`, `cmdline` and the `btime`
//! line of `/proc/stat`.
//!
//! They take the file text as an argument (so captured fixtures exercise the
//! same code as live reads) and never touch the file system. They are written
//! by hand rather than with the `procfs` crate: the formats are a few
//! whitespace-separated fields, the crate would pull in a large dependency tree
//! for the handful of fields we need, and its parsers are tied to its own
//! readers, while ours must accept text that came from a fixture.
//!
//! Sizes are returned in bytes; `kB` values in the kernel's text are KiB.

use std::collections::HashMap;

/// A `/proc` text that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A field the parser needs is absent (the file was truncated or empty).
    #[error("{file}: missing field {field}")]
    MissingField {
        /// Which kind of file (for example `stat`).
        file: &'static str,
        /// The field that was looked for.
        field: &'static str,
    },
    /// A field is present but is not the number it should be.
    #[error("{file}: field {field} is not a valid number: {value:?}")]
    BadNumber {
        /// Which kind of file.
        file: &'static str,
        /// The field.
        field: &'static str,
        /// The text found (cut to 64 bytes so a garbage file cannot flood logs).
        value: String,
    },
    /// The overall shape is wrong (for example no `(comm)` in a stat line).
    #[error("{file}: malformed: {reason}")]
    Malformed {
        /// Which kind of file.
        file: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn bad_number(file: &'static str, field: &'static str, value: &str) -> ParseError {
    let value: String = value.chars().take(64).collect();
    ParseError::BadNumber { file, field, value }
}

fn number<T: std::str::FromStr>(
    file: &'static str,
    field: &'static str,
    value: Option<&str>,
) -> Result<T, ParseError> {
    let value = value.ok_or(ParseError::MissingField { file, field })?;
    value.parse().map_err(|_| bad_number(file, field, value))
}

/// The fields of `/proc/<pid>/stat` that the manager uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 1: process id.
    pub pid: u32,
    /// Field 2: command name, without the parentheses (may contain spaces and `)`).
    pub comm: String,
    /// Field 3: state letter (`R`, `S`, `D`, `Z`, `T`, `I`, ...).
    pub state: char,
    /// Field 4: parent process id.
    pub ppid: u32,
    /// Field 5: process group id.
    pub pgrp: u32,
    /// Field 14: user-mode CPU time in clock ticks.
    pub utime: u64,
    /// Field 15: kernel-mode CPU time in clock ticks.
    pub stime: u64,
    /// Field 20: number of threads.
    pub num_threads: u64,
    /// Field 22: start time after boot, in clock ticks. Together with the pid
    /// it identifies one process across pid reuse.
    pub starttime: u64,
    /// Field 23: virtual memory size in bytes.
    pub vsize: u64,
    /// Field 24: resident set size in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// User plus system CPU ticks consumed so far.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime.saturating_add(self.stime)
    }
}

/// Reads and parses `/proc/<pid>/stat`; `None` when the process is gone or
/// the line cannot be read.
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).ok()
}

/// Parses one `/proc/<pid>/stat` line.
///
/// The command name is printed verbatim between parentheses and may itself
/// contain `)`, spaces or digits, so the fields after it are found from the
/// *last* `)` in the line, never by splitting the whole line on spaces.
pub fn parse_stat(text: &str) -> Result<ProcStat, ParseError> {
    const FILE: &str = "stat";
    let open = text.find('(').ok_or(ParseError::Malformed {
        file: FILE,
        reason: "no '(' before the command name",
    })?;
    let close = text.rfind(')').ok_or(ParseError::Malformed {
        file: FILE,
        reason: "no ')' after the command name",
    })?;
    if close < open {
        return Err(ParseError::Malformed {
            file: FILE,
            reason: "')' before '('",
        });
    }
    let pid = number(FILE, "pid", Some(text[..open].trim()))?;
    let comm = text[open + 1..close].to_owned();
    // Fields after the command, numbered from 3 (state) in proc(5).
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    let state_text = field(3).ok_or(ParseError::MissingField {
        file: FILE,
        field: "state",
    })?;
    let mut state_chars = state_text.chars();
    let state = match (state_chars.next(), state_chars.next()) {
        (Some(c), None) => c,
        _ => return Err(bad_number(FILE, "state", state_text)),
    };
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid: number(FILE, "ppid", field(4))?,
        pgrp: number(FILE, "pgrp", field(5))?,
        utime: number(FILE, "utime", field(14))?,
        stime: number(FILE, "stime", field(15))?,
        num_threads: number(FILE, "num_threads", field(20))?,
        starttime: number(FILE, "starttime", field(22))?,
        vsize: number(FILE, "vsize", field(23))?,
        rss_pages: number(FILE, "rss", field(24))?,
    })
}

/// `/proc/<pid>/statm`, all values in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statm {
    /// Total program size.
    pub size: u64,
    /// Resident set size.
    pub resident: u64,
    /// Resident pages backed by a file or shared memory.
    pub shared: u64,
    /// Text (code).
    pub text: u64,
    /// Data plus stack.
    pub data: u64,
}

/// Parses `/proc/<pid>/statm`.
pub fn parse_statm(text: &str) -> Result<Statm, ParseError> {
    const FILE: &str = "statm";
    let mut it = text.split_ascii_whitespace();
    let size = number(FILE, "size", it.next())?;
    let resident = number(FILE, "resident", it.next())?;
    let shared = number(FILE, "shared", it.next())?;
    let text_pages = number(FILE, "text", it.next())?;
    let _lib: u64 = number(FILE, "lib", it.next())?;
    let data = number(FILE, "data", it.next())?;
    Ok(Statm {
        size,
        resident,
        shared,
        text: text_pages,
        data,
    })
}

/// Splits `Key:   value` lines (used by `status`, `smaps_rollup`, `meminfo`).
/// Lines without a colon (the `[rollup]` header of `smaps_rollup`) are skipped.
fn key_values(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            // The smaps_rollup header line contains ':' inside `00:00`; its
            // "key" has spaces, which real keys never have.
            if key.contains(' ') {
                return None;
            }
            Some((key, value.trim()))
        })
        .collect()
}

/// Reads a `1234 kB` value as bytes. `kB` means KiB in every `/proc` file.
fn kib_value(
    file: &'static str,
    field: &'static str,
    value: Option<&&str>,
) -> Result<u64, ParseError> {
    let value = *value.ok_or(ParseError::MissingField { file, field })?;
    let digits = value.strip_suffix("kB").unwrap_or(value).trim();
    let kib: u64 = digits.parse().map_err(|_| bad_number(file, field, value))?;
    kib.checked_mul(1024)
        .ok_or_else(|| bad_number(file, field, value))
}

fn optional_kib(
    file: &'static str,
    field: &'static str,
    map: &HashMap<&str, &str>,
) -> Result<Option<u64>, ParseError> {
    match map.get(field) {
        None => Ok(None),
        some => kib_value(file, field, some).map(Some),
    }
}

/// The fields of `/proc/<pid>/status` the manager shows. Memory in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// `Name`.
    pub name: String,
    /// `State`, for example `S (sleeping)`.
    pub state: String,
    /// `PPid`.
    pub ppid: u32,
    /// Real user id (first value of `Uid`).
    pub uid: u32,
    /// `Threads`.
    pub threads: u64,
    /// `VmRSS` (absent for zombies and kernel threads).
    pub vm_rss: Option<u64>,
    /// `RssAnon`.
    pub rss_anon: Option<u64>,
    /// `RssFile`.
    pub rss_file: Option<u64>,
    /// `RssShmem` (OPcache's shared segment is counted here in every worker).
    pub rss_shmem: Option<u64>,
    /// `VmSwap`.
    pub vm_swap: Option<u64>,
}

/// Parses `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Result<ProcStatus, ParseError> {
    const FILE: &str = "status";
    let map = key_values(text);
    let name = map
        .get("Name")
        .ok_or(ParseError::MissingField {
            file: FILE,
            field: "Name",
        })?
        .to_string();
    let state = map
        .get("State")
        .ok_or(ParseError::MissingField {
            file: FILE,
            field: "State",
        })?
        .to_string();
    let uid = number(
        FILE,
        "Uid",
        map.get("Uid")
            .and_then(|v| v.split_ascii_whitespace().next()),
    )?;
    Ok(ProcStatus {
        name,
        state,
        ppid: number(FILE, "PPid", map.get("PPid").copied())?,
        uid,
        threads: number(FILE, "Threads", map.get("Threads").copied())?,
        vm_rss: optional_kib(FILE, "VmRSS", &map)?,
        rss_anon: optional_kib(FILE, "RssAnon", &map)?,
        rss_file: optional_kib(FILE, "RssFile", &map)?,
        rss_shmem: optional_kib(FILE, "RssShmem", &map)?,
        vm_swap: optional_kib(FILE, "VmSwap", &map)?,
    })
}

/// `/proc/<pid>/smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmapsRollup {
    /// Resident set size: every resident page mapped, shared ones counted in full.
    pub rss: u64,
    /// Proportional set size: each shared page divided by the number of
    /// processes mapping it.
    pub pss: u64,
    /// `Pss_Anon` (Linux ≥ 5.14).
    pub pss_anon: Option<u64>,
    /// `Pss_File` (Linux ≥ 5.14).
    pub pss_file: Option<u64>,
    /// `Pss_Shmem` (Linux ≥ 5.14): the share of shared memory such as OPcache.
    pub pss_shmem: Option<u64>,
    /// `Shared_Clean`.
    pub shared_clean: u64,
    /// `Shared_Dirty`.
    pub shared_dirty: u64,
    /// `Private_Clean`.
    pub private_clean: u64,
    /// `Private_Dirty`.
    pub private_dirty: u64,
    /// `Swap`.
    pub swap: Option<u64>,
}

impl SmapsRollup {
    /// Unique set size: pages only this process maps, what killing it frees.
    pub fn uss(&self) -> u64 {
        self.private_clean.saturating_add(self.private_dirty)
    }

    /// Resident pages shared with at least one other process.
    pub fn shared(&self) -> u64 {
        self.shared_clean.saturating_add(self.shared_dirty)
    }
}

/// Parses `/proc/<pid>/smaps_rollup`.
///
/// An empty file (what a zombie or a kernel thread shows, since it has no
/// address space) is a [`ParseError::MissingField`] for `Rss`.
pub fn parse_smaps_rollup(text: &str) -> Result<SmapsRollup, ParseError> {
    const FILE: &str = "smaps_rollup";
    let map = key_values(text);
    let get = |field: &'static str| kib_value(FILE, field, map.get(field));
    Ok(SmapsRollup {
        rss: get("Rss")?,
        pss: get("Pss")?,
        pss_anon: optional_kib(FILE, "Pss_Anon", &map)?,
        pss_file: optional_kib(FILE, "Pss_File", &map)?,
        pss_shmem: optional_kib(FILE, "Pss_Shmem", &map)?,
        shared_clean: get("Shared_Clean")?,
        shared_dirty: get("Shared_Dirty")?,
        private_clean: get("Private_Clean")?,
        private_dirty: get("Private_Dirty")?,
        swap: optional_kib(FILE, "Swap", &map)?,
    })
}

/// Splits `/proc/<pid>/cmdline` into arguments.
///
/// php-fpm rewrites its title in place (`php-fpm: pool www` followed by NUL
/// padding), so trailing empty arguments are dropped; invalid UTF-8 is
/// replaced rather than rejected because the title is only shown to people.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let mut args: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    while args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    args
}

/// The boot time (`btime`, seconds since the Unix epoch) from `/proc/stat`.
pub fn parse_boot_time(proc_stat: &str) -> Result<u64, ParseError> {
    const FILE: &str = "/proc/stat";
    let value = proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .map(str::trim);
    number(FILE, "btime", value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER_STAT: &str = include_str!("../test_data/proc/php-fpm-worker/stat");
    const WORKER_SMAPS: &str = include_str!("../test_data/proc/php-fpm-worker/smaps_rollup");

    #[test]
    fn real_worker_stat_parses() {
        let stat = parse_stat(WORKER_STAT).unwrap();
        // Cross-check against a naive split: the fixture's comm has no spaces,
        // so both methods must agree on it.
        let naive: Vec<&str> = WORKER_STAT.split_whitespace().collect();
        assert_eq!(stat.pid.to_string(), naive[0]);
        assert_eq!(format!("({})", stat.comm), naive[1]);
        assert_eq!(stat.ppid.to_string(), naive[3]);
        assert_eq!(stat.starttime.to_string(), naive[21]);
        assert_eq!(stat.rss_pages.to_string(), naive[23]);
        assert_eq!(stat.comm, "php-fpm8.2");
        assert_eq!(stat.state, 'S');
    }

    #[test]
    fn comm_with_parenthesis_and_spaces_parses_from_last_paren() {
        let text = include_str!("../test_data/proc/hand-made/stat-evil-comm");
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, "php) 7 S 1 (x");
        assert_eq!(stat.state, 'R');
        assert_eq!(stat.ppid, 4100);
        assert_eq!(stat.utime, 1234);
        assert_eq!(stat.stime, 56);
        assert_eq!(stat.cpu_ticks(), 1290);
        assert_eq!(stat.starttime, 987_654);
        assert_eq!(stat.rss_pages, 2037);
    }

    #[test]
    fn truncated_and_garbage_stat_are_errors_not_panics() {
        let full = WORKER_STAT.trim_end();
        // Every prefix of a real line must either parse or return an error.
        for cut in 0..full.len() {
            let _ = parse_stat(&full[..cut]);
        }
        // Cut before starttime (field 22): the line is readable but incomplete.
        let first_fields: Vec<&str> = full.split(' ').take(20).collect();
        assert_eq!(
            parse_stat(&first_fields.join(" ")),
            Err(ParseError::MissingField {
                file: "stat",
                field: "starttime"
            })
        );
        assert!(matches!(parse_stat(""), Err(ParseError::Malformed { .. })));
        assert!(matches!(
            parse_stat("12 (x) S 1 2 3 4 5 6 7 8 9 10 lots"),
            Err(ParseError::BadNumber { .. }) | Err(ParseError::MissingField { .. })
        ));
        assert!(matches!(
            parse_stat(") 1 (x"),
            Err(ParseError::Malformed { .. })
        ));
    }

    #[test]
    fn real_smaps_rollup_parses_and_uss_is_private_sum() {
        let rollup = parse_smaps_rollup(WORKER_SMAPS).unwrap();
        let kib = |key: &str| -> u64 {
            let line = WORKER_SMAPS
                .lines()
                .find(|l| l.starts_with(&format!("{key}:")))
                .unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        assert_eq!(rollup.rss, kib("Rss"));
        assert_eq!(rollup.pss, kib("Pss"));
        assert_eq!(rollup.pss_shmem, Some(kib("Pss_Shmem")));
        assert_eq!(rollup.uss(), kib("Private_Clean") + kib("Private_Dirty"));
        assert_eq!(rollup.shared(), kib("Shared_Clean") + kib("Shared_Dirty"));
        assert!(rollup.pss <= rollup.rss);
        assert!(rollup.uss() <= rollup.pss);
    }

    #[test]
    fn smaps_rollup_of_old_kernel_has_no_pss_split() {
        let text = include_str!("../test_data/proc/hand-made/smaps_rollup-pre-5.14");
        let rollup = parse_smaps_rollup(text).unwrap();
        assert_eq!(rollup.pss_anon, None);
        assert_eq!(rollup.pss_shmem, None);
        assert_eq!(rollup.pss, 2578 * 1024);
    }

    #[test]
    fn empty_smaps_rollup_is_missing_rss() {
        assert_eq!(
            parse_smaps_rollup(""),
            Err(ParseError::MissingField {
                file: "smaps_rollup",
                field: "Rss"
            })
        );
        assert!(matches!(
            parse_smaps_rollup("Rss: 99999999999999999999 kB\n"),
            Err(ParseError::BadNumber { .. })
        ));
        // 2^60 KiB overflows u64 bytes: an error, not a wrapped number.
        assert!(matches!(
            parse_smaps_rollup("Rss: 1152921504606846976 kB\n"),
            Err(ParseError::BadNumber { .. })
        ));
    }

    #[test]
    fn real_status_and_statm_parse() {
        let status = parse_status(include_str!("../test_data/proc/php-fpm-worker/status")).unwrap();
        let stat = parse_stat(WORKER_STAT).unwrap();
        assert_eq!(status.ppid, stat.ppid);
        assert_eq!(status.name, "php-fpm8.2");
        assert!(status.state.starts_with('S'));
        assert_eq!(status.uid, 65534, "the fixture's pool ran as nobody");
        let statm = parse_statm(include_str!("../test_data/proc/php-fpm-worker/statm")).unwrap();
        // statm and stat were copied a moment apart from a live worker: close,
        // not necessarily equal.
        assert!(statm.resident.abs_diff(stat.rss_pages) * 10 < stat.rss_pages);
        assert!(statm.resident > 0 && statm.size >= statm.resident);
        assert!(parse_statm("1 2").is_err());
    }

    #[test]
    fn cmdline_drops_title_padding() {
        let worker = parse_cmdline(include_bytes!("../test_data/proc/php-fpm-worker/cmdline"));
        assert_eq!(worker, vec!["php-fpm: pool www".to_owned()]);
        let master = parse_cmdline(include_bytes!("../test_data/proc/php-fpm-master/cmdline"));
        assert_eq!(master.len(), 1);
        assert!(master[0].starts_with("php-fpm: master process ("));
        assert_eq!(parse_cmdline(b"a\0b\0"), vec!["a", "b"]);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn boot_time_from_real_proc_stat() {
        let btime = parse_boot_time(include_str!("../test_data/host/stat")).unwrap();
        assert!(btime > 1_500_000_000);
        assert!(parse_boot_time("cpu 1 2 3\n").is_err());
    }
}
