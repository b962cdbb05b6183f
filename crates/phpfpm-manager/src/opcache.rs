//! OPcache figures of a php-fpm master, read by a small PHP probe script that
//! the manager writes into its own runtime directory and runs through FastCGI.
//!
//! Why a script: OPcache's shared memory belongs to a master (fact 15), and
//! only PHP code running in one of its workers can read it; php-fpm runs only
//! files named by `SCRIPT_FILENAME` that exist on disk.
//!
//! # Where the probe lives and why that is safe
//!
//! [`OpcacheProbe::create`] writes `probe-<32 random hex>.php` into a directory
//! the caller names (`<runtime>/opcache/`), never under a pool's document
//! root, so no web server mapping `SCRIPT_FILENAME = $document_root$uri`
//! can reach it (nginx normalises `..` out of URIs; the integration test asks
//! through real nginx). The directory must be owned by the manager's user, is
//! not a symlink, and must not be writable by group or others; one that
//! `create` makes is set to 0755 so the pool user can traverse it, an existing
//! one keeps its mode but must be searchable by others. The file is created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` relative to the directory's open descriptor, mode
//! 0644, and unlinked through that descriptor on drop. The script reads no
//! request input (no `$_GET`, `$_POST`, `$_SERVER`, body): whoever reaches it
//! learns cache figures and nothing else.
//!
//! # Keeping the probe's requests out of request statistics
//!
//! Two routes, checked against php-fpm 8.2.36 (see `tests/it/opcache.rs`):
//!
//! * **The pool's `pm.status_listen` socket (preferred; every supervised pool
//!   has one).** php-fpm serves it with a hidden pool `<pool>_status`
//!   (`pm = ondemand`, 2 children; php-src `fpm_worker_pool_shared_status_alloc`)
//!   that runs any PHP file, not only the status page (fact 8 says otherwise;
//!   the tests show it). Its requests never appear in the main
//!   pool's `accepted conn` or process list, and it answers while every main
//!   worker is busy. The shared memory is the same (one master). Caveat: that
//!   hidden pool copies only `user`, `group`, `listen.*` and the status path;
//!   the pool's `php_value`/`php_admin_value`, `chroot` and `chdir` do not
//!   apply. So `php_admin_value[opcache.enable] = 0` in the pool is invisible
//!   there: check the pool's values with [`disabled_by_pool_ini`] and report
//!   [`OpcacheError::Disabled`] without probing when it says so.
//! * **The pool's main socket** (pools without a status socket). Each probe
//!   request then counts once in `accepted conn`. [`OpcacheProbe::requests_sent`]
//!   counts every request that reached php-fpm; subtract its delta from the
//!   `accepted conn` delta of the same interval (clamped at 0, and only when
//!   `accepted conn` did not reset). The probe's worker is also briefly busy:
//!   run the probe after the status scrape in the same task, never
//!   concurrently with it. A saturated pool makes the probe wait in the
//!   accept queue until the timeout; skip OPcache for that cycle.
//!
//! Either way the probe itself is one cached script and adds one OPcache hit
//! per collection (its first run is one miss). Its mtime is set one hour in
//! the past so that `opcache.file_update_protection` (2 s) does not make
//! every early run a miss.
//!
//! # Observed pools
//!
//! A pool the manager does not run gets a probe too (`monitoring.enable_opcache`
//! covers both). The probe is 0644 in a 0755 directory, so the pool's user
//! can read it unless the pool is kept away from it, which only php-fpm's own
//! settings can do. What is known of the pool's config (the php-fpm config
//! named by `phpfpm.global_config_path`, else the one in the master's title
//! `php-fpm: master process (<conf>)`) is checked first by [`assess`]:
//! through the pool's main socket, `chroot`, an `open_basedir` that leaves
//! out the probe's directory and a `security.limit_extensions` without
//! `.php` make the probe impossible, and it is not sent ([`Blocker`]);
//! through `pm.status_listen` none of them applies (the hidden status pool
//! does not copy them). When nothing is known, the probe is sent and a
//! refusal is explained by [`explain`]: php-fpm's 404 "File not found."
//! (chroot, or a directory the user cannot enter), 404 "No input file
//! specified." (open_basedir) and 403 "Access denied." (limit_extensions,
//! permissions) become [`OpcacheError::Blocked`]. The collector backs off
//! after a failed probe ([`ProbeBackoff`]) instead of asking every look.
//!
//! # Life cycle
//!
//! One [`OpcacheProbe`] per pool's collector, created when
//! `monitoring.enable_opcache` is on; [`remove_stale`] once at start-up
//! cleans files a crashed manager left. After a probe is dropped, OPcache
//! still runs the deleted file from memory at its (unguessable) path until it
//! next checks the file: `opcache.revalidate_freq` seconds, or until the
//! master reloads when `opcache.validate_timestamps = 0`. What it would print
//! is harmless, and each dropped probe stays one stale cached script until
//! the next reload.
//!
//! # Reading the results
//!
//! [`parse`] is pure; [`collect`] is the thin I/O around it. A reply with
//! figures means OPcache is on ([`OpcacheStats::enabled`] is then always
//! true); everything else is an [`OpcacheError`] whose [`OpcacheError::kind`]
//! is one of `disabled`, `not_installed`, `restricted` (`opcache.restrict_api`
//! excludes the probe's directory), `http_status` (another error page), the
//! [`Blocker`] kinds (`chroot`, `open_basedir`, `limit_extensions`,
//! `not_found`, `access_denied`), `truncated`, `malformed`, `transport`. [`families`] and
//! [`families_with_unavailable`] render the `phpfpm_manager_opcache_*`
//! series.

use std::fmt::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::proto::{MetricFamily, MetricType};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use serde::Deserialize;

use crate::config::Endpoint;
use crate::fastcgi::{self, FcgiError, Timeouts};
use crate::surface::metrics::Family;
use crate::surface::names;

/// The first bytes of every reply of the probe script; anything else is not
/// the probe's answer (an error page, a prepended file's output).
const MARKER: &str = r#"{"probe":"phpfpm-manager-opcache""#;

/// The probe script. It must stay free of request input.
pub const PROBE_SCRIPT: &str = r#"<?php
// Written by phpfpm-manager; removed when the manager stops. Reports this
// php-fpm master's OPcache figures. Reads no request input.
@ini_set('display_errors', '0');
@header('Content-Type: application/json');
@header('Cache-Control: no-store');
$out = ['probe' => 'phpfpm-manager-opcache', 'version' => 1];
if (!function_exists('opcache_get_status')) {
    $out['installed'] = false;
} else {
    $out['installed'] = true;
    // ini_get_all, not ini_get: OPcache's optimizer folds ini_get() of a
    // system setting into the cached script at compile time, and the pool
    // that compiled it may not be the pool that runs it.
    $ini = @ini_get_all('zend opcache', false);
    $out['restrict_api'] = is_array($ini) ? (string) ($ini['opcache.restrict_api'] ?? '') : '';
    $out['status'] = @opcache_get_status(false);
    $conf = @opcache_get_configuration();
    // false only when opcache.restrict_api refuses this script.
    $out['api_allowed'] = is_array($conf);
    $out['memory_consumption'] = is_array($conf)
        ? ($conf['directives']['opcache.memory_consumption'] ?? null) : null;
}
echo json_encode($out, JSON_PARTIAL_OUTPUT_ON_ERROR), "\n";
"#;

/// OPcache figures of one master at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcacheStats {
    /// OPcache serves requests of the worker that ran the probe.
    pub enabled: bool,
    /// The shared memory or the key table is full.
    pub cache_full: bool,
    pub restart_pending: bool,
    pub restart_in_progress: bool,
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses), 0 to 1; `None` before the first lookup.
    pub hit_rate: Option<f64>,
    /// `opcache.memory_consumption` in bytes, when the configuration was readable.
    pub memory_size: Option<u64>,
    pub memory_used: u64,
    pub memory_free: u64,
    pub memory_wasted: u64,
    /// wasted / (used + free + wasted), 0 to 1; `None` when all three are 0.
    pub memory_wasted_ratio: Option<f64>,
    pub cached_scripts: u64,
    pub cached_keys: u64,
    pub max_cached_keys: u64,
    /// Absent when `opcache.interned_strings_buffer = 0`.
    pub interned_strings: Option<InternedStrings>,
    pub restarts_oom: u64,
    pub restarts_hash: u64,
    pub restarts_manual: u64,
    /// Unix time (s) the shared memory was set up: changes on every master
    /// reload (fact 2).
    pub start_time: u64,
    /// Unix time (s) of the last OPcache restart; `None` when it never restarted.
    pub last_restart_time: Option<u64>,
}

/// The interned strings buffer, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternedStrings {
    pub buffer_size: u64,
    pub used: u64,
    pub free: u64,
    pub count: u64,
}

/// Why no figures could be read. [`OpcacheError::kind`] is a stable label.
#[derive(Debug, thiserror::Error)]
pub enum OpcacheError {
    #[error("opcache is disabled: {reason}")]
    Disabled { reason: String },
    #[error("opcache is not installed in this php-fpm (opcache_get_status does not exist)")]
    NotInstalled,
    #[error("opcache api is restricted to scripts under '{restrict_api}' (opcache.restrict_api); the probe lives elsewhere")]
    Restricted { restrict_api: String },
    #[error("probe answered http status {status}: {body:?}")]
    HttpStatus { status: u16, body: String },
    #[error("probe reply is truncated: {detail}")]
    Truncated { detail: String },
    #[error("probe reply is malformed: {detail}")]
    Malformed { detail: String },
    #[error(transparent)]
    Transport(#[from] FcgiError),
    #[error("the probe script cannot be created: {0}")]
    ProbeUnavailable(String),
    /// The pool's workers cannot run the probe; `detail` says why and
    /// what to change.
    #[error("the probe cannot run in this pool: {detail}")]
    Blocked { blocker: Blocker, detail: String },
}

/// What keeps a pool's workers from running the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// The pool is chrooted: the probe's path does not exist inside.
    Chroot,
    /// `open_basedir` leaves out the probe's directory.
    OpenBasedir,
    /// `security.limit_extensions` does not allow `.php`.
    LimitExtensions,
    /// php-fpm answered 404: the workers cannot see or open the file.
    NotFound,
    /// php-fpm answered 403.
    AccessDenied,
}

impl Blocker {
    pub fn as_str(self) -> &'static str {
        match self {
            Blocker::Chroot => "chroot",
            Blocker::OpenBasedir => "open_basedir",
            Blocker::LimitExtensions => "limit_extensions",
            Blocker::NotFound => "not_found",
            Blocker::AccessDenied => "access_denied",
        }
    }
}

impl OpcacheError {
    pub fn kind(&self) -> &'static str {
        match self {
            OpcacheError::Disabled { .. } => "disabled",
            OpcacheError::NotInstalled => "not_installed",
            OpcacheError::Restricted { .. } => "restricted",
            OpcacheError::HttpStatus { .. } => "http_status",
            OpcacheError::Truncated { .. } => "truncated",
            OpcacheError::Malformed { .. } => "malformed",
            // Named apart: a probe whose reply passes the cap is not a
            // transport fault but a misbehaving (or hostile) pool.
            OpcacheError::Transport(e @ FcgiError::ReplyTooLarge { .. }) => e.kind(),
            OpcacheError::Transport(_) => "transport",
            OpcacheError::ProbeUnavailable(_) => "probe_unavailable",
            OpcacheError::Blocked { blocker, .. } => blocker.as_str(),
        }
    }
}

/// Why the probe file could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("opcache probe directory '{}' must be an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error("opcache probe directory '{}' is not valid utf-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("opcache probe directory '{}': {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opcache probe directory '{}' is a symlink or not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("opcache probe directory '{}' is owned by uid {owner}, not by the manager (uid {euid})", path.display())]
    NotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("opcache probe directory '{}' is writable by group or others (mode {mode:04o})", path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error("opcache probe directory '{}' cannot be entered by the pool user (mode {mode:04o}); make it 0755 or remove it", path.display())]
    NotTraversable { path: PathBuf, mode: u32 },
    #[error("cannot draw a random probe name: {0}")]
    Random(String),
    #[error("cannot create opcache probe '{}': {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The probe script of one php-fpm master, on disk while this value lives.
#[derive(Debug)]
pub struct OpcacheProbe {
    dir_fd: OwnedFd,
    name: String,
    path: PathBuf,
    script: String,
    sent: AtomicU64,
}

impl OpcacheProbe {
    /// Creates `dir` if missing (mode 0755; its parent must exist) and writes
    /// a new probe file in it. See the module docs for the checks.
    pub fn create(dir: &Path) -> Result<OpcacheProbe, ProbeError> {
        if !dir.is_absolute() {
            return Err(ProbeError::NotAbsolute(dir.to_owned()));
        }
        let dir_err = |source: std::io::Error| ProbeError::Dir {
            path: dir.to_owned(),
            source,
        };
        let created = match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(dir_err(e)),
        };
        let dir_fd = open_checked_dir(dir)?;
        if created {
            // The pool user must traverse it, whatever the umask made of it.
            rustix::fs::fchmod(&dir_fd, Mode::from_raw_mode(0o755))
                .map_err(|e| dir_err(e.into()))?;
        } else {
            // An existing directory keeps its mode: loosening one that was
            // named by mistake (a home directory) is not this module's call.
            let mode = rustix::fs::fstat(&dir_fd)
                .map_err(|e| dir_err(e.into()))?
                .st_mode
                & 0o7777;
            if mode & 0o001 == 0 {
                return Err(ProbeError::NotTraversable {
                    path: dir.to_owned(),
                    mode,
                });
            }
        }

        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| ProbeError::Random(e.to_string()))?;
        let mut name = String::from("probe-");
        for b in bytes {
            let _ = write!(name, "{b:02x}");
        }
        name.push_str(".php");
        let path = dir.join(&name);
        let script = path
            .to_str()
            .ok_or_else(|| ProbeError::NotUtf8(dir.to_owned()))?
            .to_owned();
        let create_err = |source: std::io::Error| ProbeError::Create {
            path: path.clone(),
            source,
        };
        let fd = rustix::fs::openat(
            &dir_fd,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| create_err(e.into()))?;
        let probe = OpcacheProbe {
            dir_fd,
            name,
            path: path.clone(),
            script,
            sent: AtomicU64::new(0),
        };
        // From here on, a failure drops `probe`, which unlinks the file.
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, PROBE_SCRIPT.as_bytes()).map_err(create_err)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644)).map_err(|e| create_err(e.into()))?;
        let past = SystemTime::now()
            .checked_sub(Duration::from_secs(3600))
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let ts = Timespec {
            tv_sec: i64::try_from(past.as_secs()).unwrap_or(0),
            tv_nsec: 0,
        };
        rustix::fs::futimens(
            &file,
            &Timestamps {
                last_access: ts,
                last_modification: ts,
            },
        )
        .map_err(|e| create_err(e.into()))?;
        Ok(probe)
    }

    /// The absolute path of the probe file (its `SCRIPT_FILENAME`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The probe's file name, without its directory.
    pub fn file_name(&self) -> &str {
        &self.name
    }

    /// Probe requests that reached php-fpm since this probe was created
    /// (connect failures excluded): what to subtract from `accepted conn`
    /// deltas when probing through the pool's main socket.
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for OpcacheProbe {
    fn drop(&mut self) {
        let _ = rustix::fs::unlinkat(&self.dir_fd, self.name.as_str(), AtFlags::empty());
    }
}

/// Opens the probe directory without following a symlink and checks that
/// the manager owns it and nobody else can write to it. Everything after
/// works on the returned descriptor, so a later swap of the path does not
/// redirect a file.
fn open_checked_dir(dir: &Path) -> Result<OwnedFd, ProbeError> {
    let dir_err = |source: std::io::Error| ProbeError::Dir {
        path: dir.to_owned(),
        source,
    };
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            ProbeError::NotADirectory(dir.to_owned())
        }
        e => dir_err(e.into()),
    })?;
    let st = rustix::fs::fstat(&dir_fd).map_err(|e| dir_err(e.into()))?;
    let euid = rustix::process::geteuid().as_raw();
    if st.st_uid != euid {
        return Err(ProbeError::NotOwned {
            path: dir.to_owned(),
            owner: st.st_uid,
            euid,
        });
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(ProbeError::Writable {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(dir_fd)
}

/// Whether `name` is one this module gives probe files.
fn is_probe_name(name: &str) -> bool {
    name.strip_prefix("probe-")
        .and_then(|r| r.strip_suffix(".php"))
        .is_some_and(|hex| {
            hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Removes probe files that an earlier manager left behind when it did not
/// stop cleanly (a probe is removed on drop, which a crash skips). Call it
/// once at start-up, before creating any probe: it would remove live ones
/// too. Only names this module creates are touched; a missing directory is
/// nothing to clean. Returns how many files were removed.
pub fn remove_stale(dir: &Path) -> Result<usize, ProbeError> {
    let dir_fd = match open_checked_dir(dir) {
        Err(ProbeError::Dir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(0)
        }
        other => other?,
    };
    let dir_err = |source: std::io::Error| ProbeError::Dir {
        path: dir.to_owned(),
        source,
    };
    let mut stale = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir_fd).map_err(|e| dir_err(e.into()))? {
        let entry = entry.map_err(|e| dir_err(e.into()))?;
        if let Ok(name) = entry.file_name().to_str() {
            if is_probe_name(name) {
                stale.push(name.to_owned());
            }
        }
    }
    let mut removed = 0;
    for name in stale {
        match rustix::fs::unlinkat(&dir_fd, name.as_str(), AtFlags::empty()) {
            Ok(()) => removed += 1,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(dir_err(e.into())),
        }
    }
    Ok(removed)
}

/// Runs the probe through `endpoint` and parses its reply (capped at
/// [`fastcgi::DEFAULT_MAX_REPLY_BYTES`]).
pub async fn collect(
    endpoint: &Endpoint,
    probe: &OpcacheProbe,
    timeouts: Timeouts,
) -> Result<OpcacheStats, OpcacheError> {
    collect_capped(endpoint, probe, timeouts, fastcgi::DEFAULT_MAX_REPLY_BYTES).await
}

/// Like [`collect`], with the reply capped at `max_reply_bytes`.
pub async fn collect_capped(
    endpoint: &Endpoint,
    probe: &OpcacheProbe,
    timeouts: Timeouts,
    max_reply_bytes: u64,
) -> Result<OpcacheStats, OpcacheError> {
    let res = fastcgi::get_capped(endpoint, &probe.script, "", timeouts, max_reply_bytes).await;
    match &res {
        Err(FcgiError::Connect { .. } | FcgiError::ConnectTimeout { .. }) => {}
        // Accepted (or waiting in the backlog, where a worker will still
        // accept it): php-fpm counts it.
        _ => {
            probe.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    parse(&res?.stdout)
}

/// Whether a pool's `php_value`/`php_admin_value` pairs turn OPcache off for
/// its requests (`opcache.enable` can be switched off per pool, never on).
/// Needed when probing through `pm.status_listen`, whose hidden pool does not
/// apply the pool's values.
pub fn disabled_by_pool_ini<'a>(values: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    values.into_iter().any(|(k, v)| {
        k.trim() == "opcache.enable"
            && matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "" | "0" | "off" | "false" | "no" | "none"
            )
    })
}

/// How the probe reaches a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `pm.status_listen`: php-fpm's hidden status pool, which applies
    /// none of the pool's `chroot`, `php_*value`s or extension limits.
    StatusListener,
    /// The pool's own socket: the pool's settings apply, and each probe
    /// counts in `accepted conn`.
    MainSocket,
}

/// What a pool's php-fpm config says that matters to the probe (the
/// effective value of each directive, as php-fpm would apply it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolFacts {
    pub chroot: Option<String>,
    pub open_basedir: Option<String>,
    pub limit_extensions: Option<String>,
    /// Values the pool gives `opcache.enable` (php_value, php_flag, admin).
    pub opcache_enable: Vec<String>,
}

impl PoolFacts {
    /// Reads the facts from a pool section of an existing php-fpm config.
    pub fn from_def(def: &fpm_import::PoolDef) -> PoolFacts {
        let plain = |k: &str| {
            def.get(k)
                .map(|d| d.value.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // php_admin_value wins over php_value (php-fpm does not let a
        // php_value override an admin one).
        let ini = |name: &str| -> Option<String> {
            let find = |kind: &str| {
                def.directives
                    .iter()
                    .rev()
                    .find(|d| d.array() == Some((kind, name)))
                    .map(|d| d.value.trim().to_owned())
            };
            find("php_admin_value").or_else(|| find("php_value"))
        };
        let opcache_enable = def
            .directives
            .iter()
            .filter(|d| {
                matches!(
                    d.array(),
                    Some((
                        "php_value" | "php_admin_value" | "php_flag" | "php_admin_flag",
                        "opcache.enable"
                    ))
                )
            })
            .map(|d| d.value.clone())
            .collect();
        PoolFacts {
            chroot: plain("chroot"),
            open_basedir: ini("open_basedir").filter(|v| !v.is_empty()),
            limit_extensions: plain("security.limit_extensions"),
            opcache_enable,
        }
    }
}

/// Decides, before asking, whether the probe at `probe` can run in a pool
/// with `facts` reached by `route`. Pure.
pub fn assess(facts: &PoolFacts, probe: &Path, route: Route) -> Result<(), OpcacheError> {
    if disabled_by_pool_ini(
        facts
            .opcache_enable
            .iter()
            .map(|v| ("opcache.enable", v.as_str())),
    ) {
        return Err(OpcacheError::Disabled {
            reason: "opcache.enable is off in the pool's php values".to_owned(),
        });
    }
    if route == Route::StatusListener {
        return Ok(());
    }
    let shown = probe.display();
    if let Some(root) = &facts.chroot {
        return Err(OpcacheError::Blocked {
            blocker: Blocker::Chroot,
            detail: format!(
                "the pool is chrooted to {root}, where {shown} does not exist; give the pool a pm.status_listen socket (its status pool is not chrooted) to read OPcache"
            ),
        });
    }
    if let Some(dirs) = &facts.open_basedir {
        let path = probe.to_string_lossy();
        // PHP's rule: each entry is a prefix of allowed paths; relative
        // entries depend on the request, so they cannot be judged here.
        let allowed = dirs
            .split(':')
            .map(str::trim)
            .any(|d| !d.starts_with('/') || path.starts_with(d));
        if !allowed {
            return Err(OpcacheError::Blocked {
                blocker: Blocker::OpenBasedir,
                detail: format!(
                    "open_basedir ({dirs}) leaves out {shown}; add its directory to open_basedir or give the pool a pm.status_listen socket"
                ),
            });
        }
    }
    if let Some(exts) = &facts.limit_extensions {
        if !exts.split_whitespace().any(|e| e == ".php") {
            return Err(OpcacheError::Blocked {
                blocker: Blocker::LimitExtensions,
                detail: format!(
                    "security.limit_extensions ({exts}) does not allow .php, the probe's extension; allow .php or give the pool a pm.status_listen socket"
                ),
            });
        }
    }
    Ok(())
}

/// Turns php-fpm's refusal to run the probe (its 404 and 403 pages) into
/// [`OpcacheError::Blocked`] with the likely causes; other errors are kept.
/// Pure.
pub fn explain(e: OpcacheError, probe: &Path) -> OpcacheError {
    let (status, body) = match e {
        OpcacheError::HttpStatus { status, body } => (status, body),
        other => return other,
    };
    let shown = probe.display();
    let dir = probe.parent().unwrap_or(probe).display();
    let (blocker, why) = match (status, body.as_str()) {
        (404, "File not found.") => (
            Blocker::NotFound,
            format!("the pool's workers do not find {shown}: the pool is chrooted, or its user cannot enter {dir}"),
        ),
        (404, _) => (
            Blocker::NotFound,
            format!("the pool's workers cannot open {shown}: open_basedir leaves it out, or its user cannot read it"),
        ),
        (403, _) => (
            Blocker::AccessDenied,
            format!("php-fpm refuses to run {shown}: security.limit_extensions does not allow .php, or file permissions"),
        ),
        _ => return OpcacheError::HttpStatus { status, body },
    };
    OpcacheError::Blocked {
        blocker,
        detail: format!("{why} (php-fpm answered {status} {body:?})"),
    }
}

/// When a pool's probe may be sent again after a failure: 30 s, doubling
/// to 10 minutes, at once again after a success. A pool whose config keeps
/// the probe out then costs one request every 10 minutes, not one per
/// look. Pure: times are passed in.
#[derive(Debug, Clone, Default)]
pub struct ProbeBackoff {
    not_before_ms: u64,
    delay_ms: u64,
}

impl ProbeBackoff {
    const FIRST_MS: u64 = 30_000;
    const MAX_MS: u64 = 600_000;

    /// May a probe be sent at `now_ms`?
    pub fn allows(&self, now_ms: u64) -> bool {
        now_ms >= self.not_before_ms
    }

    pub fn succeeded(&mut self) {
        *self = ProbeBackoff::default();
    }

    /// A probe failed at `now_ms`; returns the wait before the next one.
    pub fn failed(&mut self, now_ms: u64) -> Duration {
        self.delay_ms = if self.delay_ms == 0 {
            Self::FIRST_MS
        } else {
            (self.delay_ms * 2).min(Self::MAX_MS)
        };
        self.not_before_ms = now_ms.saturating_add(self.delay_ms);
        Duration::from_millis(self.delay_ms)
    }
}

/// Probe requests sent through a pool's main socket, to take out of its
/// `accepted conn` (php-fpm counts them like any request). Counted per
/// master start (`start time` of the status page): a restarted master
/// starts again from 0. Pure.
#[derive(Debug, Clone, Default)]
pub struct ProbeCount {
    start_time: Option<u64>,
    sent: u64,
}

impl ProbeCount {
    /// The `accepted conn` of a page with `start_time`, without the probes.
    pub fn adjust(&mut self, start_time: u64, accepted_conn: u64) -> u64 {
        if self.start_time != Some(start_time) {
            self.start_time = Some(start_time);
            self.sent = 0;
        }
        accepted_conn.saturating_sub(self.sent)
    }

    /// `n` probe requests reached the master whose page was read last.
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
    }
}

/// The php-fpm config a master was started with, from its title
/// (`php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)`). Pure.
pub fn config_in_title(cmdline: &[u8]) -> Option<PathBuf> {
    let text = String::from_utf8_lossy(cmdline);
    let text = text.trim_end_matches(['\0', ' ']);
    let rest = &text[text.find("master process (")? + "master process (".len()..];
    let path = rest.strip_suffix(')')?.trim();
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// The probe's JSON envelope.
#[derive(Deserialize)]
struct Envelope {
    version: u32,
    installed: bool,
    #[serde(default)]
    restrict_api: String,
    /// `false` when `opcache.restrict_api` refuses the probe.
    #[serde(default)]
    api_allowed: Option<bool>,
    /// `false` when OPcache refused (restricted API, failed start-up).
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    memory_consumption: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Status {
    opcache_enabled: bool,
    #[serde(default)]
    file_cache_only: bool,
    #[serde(default)]
    cache_full: bool,
    #[serde(default)]
    restart_pending: bool,
    #[serde(default)]
    restart_in_progress: bool,
    memory_usage: MemoryUsage,
    #[serde(default)]
    interned_strings_usage: Option<Interned>,
    opcache_statistics: Statistics,
}

#[derive(Deserialize)]
struct MemoryUsage {
    used_memory: u64,
    free_memory: u64,
    wasted_memory: u64,
}

#[derive(Deserialize)]
struct Interned {
    buffer_size: u64,
    used_memory: u64,
    free_memory: u64,
    #[serde(default)]
    number_of_strings: u64,
}

#[derive(Deserialize)]
struct Statistics {
    num_cached_scripts: u64,
    num_cached_keys: u64,
    max_cached_keys: u64,
    hits: u64,
    misses: u64,
    start_time: u64,
    last_restart_time: u64,
    oom_restarts: u64,
    hash_restarts: u64,
    manual_restarts: u64,
}

/// Parses the probe's FastCGI stdout: CGI headers, a blank line, the JSON.
/// Pure.
pub fn parse(stdout: &[u8]) -> Result<OpcacheStats, OpcacheError> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(OpcacheError::Truncated {
            detail: "empty reply".into(),
        });
    }
    let (headers, body) = split_headers(stdout).ok_or_else(|| OpcacheError::Truncated {
        detail: format!("no end of the cgi headers in {}", snippet(stdout)),
    })?;
    let status = http_status(headers)?;
    if status != 200 {
        return Err(OpcacheError::HttpStatus {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned(),
        });
    }
    let text = std::str::from_utf8(body).map_err(|e| OpcacheError::Malformed {
        detail: format!("body is not utf-8: {e}"),
    })?;
    let text = text.trim_start();
    // Output before the JSON (a prepended file, a notice) is tolerated; a
    // reply without the marker is not the probe's.
    let json = match text.find(MARKER) {
        Some(i) => &text[i..],
        None if !text.is_empty() && MARKER.starts_with(text.trim_end()) => {
            return Err(OpcacheError::Truncated {
                detail: format!("reply ends inside the probe marker: {}", snippet(body)),
            })
        }
        None if text.is_empty() => {
            return Err(OpcacheError::Truncated {
                detail: "empty body".into(),
            })
        }
        None => {
            return Err(OpcacheError::Malformed {
                detail: format!("not the probe's reply: {}", snippet(body)),
            })
        }
    };
    // The first JSON value; output after it (a shutdown notice) is ignored.
    let env: Envelope = match serde_json::Deserializer::from_str(json)
        .into_iter::<Envelope>()
        .next()
    {
        Some(res) => res.map_err(json_error)?,
        None => {
            return Err(OpcacheError::Truncated {
                detail: "no json after the marker".into(),
            })
        }
    };
    if env.version != 1 {
        return Err(OpcacheError::Malformed {
            detail: format!("unknown probe version {}", env.version),
        });
    }
    if !env.installed {
        return Err(OpcacheError::NotInstalled);
    }
    let status = match env.status {
        Some(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
        Some(serde_json::Value::Bool(false)) | None => {
            if env.api_allowed == Some(false) {
                return Err(OpcacheError::Restricted {
                    restrict_api: env.restrict_api,
                });
            }
            return Err(OpcacheError::Disabled {
                reason: "opcache_get_status() returned false (opcache failed to start)".into(),
            });
        }
        Some(other) => {
            return Err(OpcacheError::Malformed {
                detail: format!("status is not an object: {}", short(&other.to_string())),
            })
        }
    };
    // A first look at the two flags that decide "disabled" before requiring
    // every figure (file_cache_only replies carry no memory figures).
    let enabled = status
        .get("opcache_enabled")
        .and_then(serde_json::Value::as_bool);
    if enabled == Some(false) {
        return Err(OpcacheError::Disabled {
            reason: "opcache.enable is off for the worker that ran the probe".into(),
        });
    }
    if status
        .get("file_cache_only")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        return Err(OpcacheError::Disabled {
            reason: "opcache runs in file_cache_only mode (no shared memory)".into(),
        });
    }
    let st: Status = serde_json::from_value(status).map_err(|e| OpcacheError::Malformed {
        detail: format!("status: {e}"),
    })?;
    if st.file_cache_only || !st.opcache_enabled {
        return Err(OpcacheError::Disabled {
            reason: "opcache.enable is off for the worker that ran the probe".into(),
        });
    }
    let memory_size = match env.memory_consumption {
        Some(v) => v.as_u64(),
        None => None,
    };
    let m = &st.memory_usage;
    let s = &st.opcache_statistics;
    let lookups = s.hits.saturating_add(s.misses);
    let total = m
        .used_memory
        .saturating_add(m.free_memory)
        .saturating_add(m.wasted_memory);
    Ok(OpcacheStats {
        enabled: true,
        cache_full: st.cache_full,
        restart_pending: st.restart_pending,
        restart_in_progress: st.restart_in_progress,
        hits: s.hits,
        misses: s.misses,
        hit_rate: (lookups > 0).then(|| s.hits as f64 / lookups as f64),
        memory_size,
        memory_used: m.used_memory,
        memory_free: m.free_memory,
        memory_wasted: m.wasted_memory,
        memory_wasted_ratio: (total > 0).then(|| m.wasted_memory as f64 / total as f64),
        cached_scripts: s.num_cached_scripts,
        cached_keys: s.num_cached_keys,
        max_cached_keys: s.max_cached_keys,
        interned_strings: st.interned_strings_usage.map(|i| InternedStrings {
            buffer_size: i.buffer_size,
            used: i.used_memory,
            free: i.free_memory,
            count: i.number_of_strings,
        }),
        restarts_oom: s.oom_restarts,
        restarts_hash: s.hash_restarts,
        restarts_manual: s.manual_restarts,
        start_time: s.start_time,
        last_restart_time: (s.last_restart_time > 0).then_some(s.last_restart_time),
    })
}

fn json_error(e: serde_json::Error) -> OpcacheError {
    if e.is_eof() {
        OpcacheError::Truncated {
            detail: format!("json ends early: {e}"),
        }
    } else {
        OpcacheError::Malformed {
            detail: format!("json: {e}"),
        }
    }
}

/// Splits CGI headers from the body at the first blank line (`\r\n\r\n`, or
/// `\n\n` from a lenient producer).
fn split_headers(out: &[u8]) -> Option<(&[u8], &[u8])> {
    let crlf = find(out, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(out, b"\n\n").map(|i| (i, 2));
    let (i, n) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 <= b.0 {
                a
            } else {
                b
            }
        }
        (a, b) => a.or(b)?,
    };
    Some((&out[..i], &out[i + n..]))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `Status:` header's code; 200 when there is none (CGI's default).
fn http_status(headers: &[u8]) -> Result<u16, OpcacheError> {
    let text = String::from_utf8_lossy(headers);
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("status") {
            return value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| OpcacheError::Malformed {
                    detail: format!("bad status header {:?}", short(line)),
                });
        }
    }
    Ok(200)
}

fn snippet(bytes: &[u8]) -> String {
    format!("{:?}", short(&String::from_utf8_lossy(bytes)))
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

/// `phpfpm_manager_opcache_*` series for the pools whose probe succeeded.
/// Pure. Same as [`families_with_unavailable`] with no failed pool.
pub fn families(stats: &[(&str, &OpcacheStats)]) -> Vec<MetricFamily> {
    families_with_unavailable(stats, &[])
}

/// `phpfpm_manager_opcache_*` series: figures for the pools in `stats`, and
/// for the pools in `unavailable` an `..._unavailable{reason}` sample plus
/// `..._enabled 0` when OPcache is known to be off (disabled, not
/// installed). One function for both so that no family is emitted twice.
/// Pure. Families without samples are left out.
pub fn families_with_unavailable(
    stats: &[(&str, &OpcacheStats)],
    unavailable: &[(&str, &OpcacheError)],
) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    type Get = fn(&OpcacheStats) -> Option<f64>;
    let series: &[(&str, &str, MetricType, Get)] = &[
        (names::OPCACHE_HIT_RATE, "OPcache hits / (hits + misses) since the cache started, 0 to 1.", GAUGE, |s| s.hit_rate),
        ("phpfpm_manager_opcache_hits_total", "OPcache lookups that found a cached script since the cache started (resets on master reload).", COUNTER, |s| Some(s.hits as f64)),
        ("phpfpm_manager_opcache_misses_total", "OPcache lookups that compiled a script since the cache started (resets on master reload).", COUNTER, |s| Some(s.misses as f64)),
        ("phpfpm_manager_opcache_memory_size_bytes", "Configured opcache.memory_consumption.", GAUGE, |s| s.memory_size.map(|v| v as f64)),
        ("phpfpm_manager_opcache_memory_used_bytes", "OPcache shared memory in use.", GAUGE, |s| Some(s.memory_used as f64)),
        ("phpfpm_manager_opcache_memory_free_bytes", "OPcache shared memory free.", GAUGE, |s| Some(s.memory_free as f64)),
        ("phpfpm_manager_opcache_memory_wasted_bytes", "OPcache shared memory held by outdated scripts until the next OPcache restart.", GAUGE, |s| Some(s.memory_wasted as f64)),
        ("phpfpm_manager_opcache_memory_wasted_ratio", "Wasted share of OPcache shared memory, 0 to 1.", GAUGE, |s| s.memory_wasted_ratio),
        ("phpfpm_manager_opcache_cache_full", "1 when OPcache's memory or key table is full.", GAUGE, |s| Some(if s.cache_full { 1.0 } else { 0.0 })),
        ("phpfpm_manager_opcache_cached_scripts", "Scripts in OPcache (the manager's probe is one of them).", GAUGE, |s| Some(s.cached_scripts as f64)),
        ("phpfpm_manager_opcache_cached_keys", "Keys in OPcache's hash table.", GAUGE, |s| Some(s.cached_keys as f64)),
        ("phpfpm_manager_opcache_max_cached_keys", "Size of OPcache's hash table (from opcache.max_accelerated_files).", GAUGE, |s| Some(s.max_cached_keys as f64)),
        ("phpfpm_manager_opcache_interned_strings_buffer_bytes", "Size of OPcache's interned strings buffer.", GAUGE, |s| s.interned_strings.map(|i| i.buffer_size as f64)),
        ("phpfpm_manager_opcache_interned_strings_used_bytes", "Interned strings buffer in use.", GAUGE, |s| s.interned_strings.map(|i| i.used as f64)),
        ("phpfpm_manager_opcache_interned_strings_free_bytes", "Interned strings buffer free.", GAUGE, |s| s.interned_strings.map(|i| i.free as f64)),
        ("phpfpm_manager_opcache_start_time_seconds", "Unix time OPcache's shared memory was set up (changes on every master reload).", GAUGE, |s| Some(s.start_time as f64)),
        ("phpfpm_manager_opcache_last_restart_time_seconds", "Unix time of OPcache's last restart; absent when it never restarted.", GAUGE, |s| s.last_restart_time.map(|v| v as f64)),
    ];
    let mut enabled = Family::new(
        "phpfpm_manager_opcache_enabled",
        "1 when OPcache serves the pool, 0 when it is disabled or not installed.",
        GAUGE,
    );
    let mut fams: Vec<Family> = series
        .iter()
        .map(|(n, h, k, _)| Family::new(n, h, *k))
        .collect();
    let mut restarts = Family::new(
        "phpfpm_manager_opcache_restarts_total",
        "OPcache restarts since the master started, by reason (oom, hash, manual).",
        COUNTER,
    );
    let mut unavail = Family::new(
        "phpfpm_manager_opcache_unavailable",
        "1 when the last OPcache probe of the pool gave no figures, labelled with the reason.",
        GAUGE,
    );
    for (pool, s) in stats {
        let l = [("pool", *pool)];
        enabled.push(&l, if s.enabled { 1.0 } else { 0.0 });
        for (fam, (_, _, _, get)) in fams.iter_mut().zip(series) {
            if let Some(v) = get(s) {
                fam.push(&l, v);
            }
        }
        for (reason, v) in [
            ("oom", s.restarts_oom),
            ("hash", s.restarts_hash),
            ("manual", s.restarts_manual),
        ] {
            restarts.push(&[("pool", *pool), ("reason", reason)], v as f64);
        }
    }
    for (pool, e) in unavailable {
        if matches!(
            e,
            OpcacheError::Disabled { .. } | OpcacheError::NotInstalled
        ) {
            enabled.push(&[("pool", *pool)], 0.0);
        }
        unavail.push(&[("pool", *pool), ("reason", e.kind())], 1.0);
    }
    let mut out = vec![enabled.done()];
    out.extend(fams.into_iter().map(Family::done));
    out.push(restarts.done());
    out.push(unavail.done());
    out.retain(|f| !f.get_metric().is_empty());
    out
}

/// `GET /api/v1/pools/{pool}/opcache`: the pool's last OPcache reading, or
/// why there is none. Served with the rest of the API (`server.api.enabled`).
pub fn routes() -> axum::Router<std::sync::Arc<crate::state::AppState>> {
    axum::Router::new().route("/api/v1/pools/{pool}/opcache", axum::routing::get(api_pool))
}

async fn api_pool(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::state::AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<axum::Json<serde_json::Value>, crate::surface::http::ApiError> {
    let pools = state.pools();
    let pool = pools
        .values()
        .find(|p| p.name.as_str() == name)
        .ok_or_else(|| {
            crate::surface::http::ApiError::not_found(format!("no pool named {name:?}"))
        })?;
    Ok(axum::Json(opcache_json(
        state.config().monitoring.enable_opcache,
        pool.opcache.as_ref(),
    )))
}

/// The wire form of one pool's OPcache reading. Pure.
pub fn opcache_json(
    enabled_in_config: bool,
    reading: Option<&Result<OpcacheStats, std::sync::Arc<OpcacheError>>>,
) -> serde_json::Value {
    use serde_json::json;
    match reading {
        Some(Ok(s)) => json!({
            "available": true,
            "enabled": s.enabled,
            "hits": s.hits,
            "misses": s.misses,
            "hit_rate": s.hit_rate,
            "cached_scripts": s.cached_scripts,
            "memory_used_bytes": s.memory_used,
            "memory_free_bytes": s.memory_free,
            "memory_wasted_bytes": s.memory_wasted,
            "cache_full": s.cache_full,
            "start_time": s.start_time,
        }),
        Some(Err(e)) => json!({
            "available": false,
            "reason": {"kind": e.kind(), "message": e.to_string()},
        }),
        None if !enabled_in_config => json!({
            "available": false,
            "reason": {"kind": "off", "message": "monitoring.enable_opcache is off"},
        }),
        None => json!({
            "available": false,
            "reason": {"kind": "pending", "message": "not read yet (the pool is starting or down)"},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("test_data/opcache")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The fixture's JSON read independently of `parse`, for cross-checks.
    fn raw(name: &str) -> serde_json::Value {
        let bytes = fixture(name);
        let text = String::from_utf8(bytes).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body.trim()).unwrap()
    }

    fn n(v: &serde_json::Value, path: &[&str]) -> u64 {
        let mut cur = v;
        for k in path {
            cur = &cur[*k];
        }
        cur.as_u64()
            .unwrap_or_else(|| panic!("{path:?} is not a number"))
    }

    fn kind(name: &str) -> &'static str {
        match parse(&fixture(name)) {
            Ok(s) => panic!("{name} parsed: {s:?}"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn captured_warm_reply_matches_its_json() {
        let s = parse(&fixture("php82-warm.cgi")).unwrap();
        let v = raw("php82-warm.cgi");
        let st = &v["status"];
        assert!(s.enabled);
        assert_eq!(s.hits, n(st, &["opcache_statistics", "hits"]));
        assert_eq!(s.misses, n(st, &["opcache_statistics", "misses"]));
        assert_eq!(
            s.cached_scripts,
            n(st, &["opcache_statistics", "num_cached_scripts"])
        );
        assert_eq!(
            s.cached_keys,
            n(st, &["opcache_statistics", "num_cached_keys"])
        );
        assert_eq!(
            s.max_cached_keys,
            n(st, &["opcache_statistics", "max_cached_keys"])
        );
        assert_eq!(s.memory_used, n(st, &["memory_usage", "used_memory"]));
        assert_eq!(s.memory_free, n(st, &["memory_usage", "free_memory"]));
        assert_eq!(s.memory_wasted, n(st, &["memory_usage", "wasted_memory"]));
        assert_eq!(s.memory_size, Some(n(&v, &["memory_consumption"])));
        assert_eq!(s.start_time, n(st, &["opcache_statistics", "start_time"]));
        assert_eq!(s.last_restart_time, None);
        let i = s.interned_strings.unwrap();
        assert_eq!(
            i.buffer_size,
            n(st, &["interned_strings_usage", "buffer_size"])
        );
        assert_eq!(i.used, n(st, &["interned_strings_usage", "used_memory"]));
        assert_eq!(i.free, n(st, &["interned_strings_usage", "free_memory"]));
        // OPcache computes its own rate (in percent): ours must agree.
        let php_rate = st["opcache_statistics"]["opcache_hit_rate"]
            .as_f64()
            .unwrap();
        assert!(
            (s.hit_rate.unwrap() * 100.0 - php_rate).abs() < 1e-9,
            "{s:?}"
        );
        let php_wasted = st["memory_usage"]["current_wasted_percentage"]
            .as_f64()
            .unwrap();
        assert!((s.memory_wasted_ratio.unwrap() * 100.0 - php_wasted).abs() < 1e-9);
        // The shared memory adds up to opcache.memory_consumption.
        assert_eq!(
            s.memory_used + s.memory_free + s.memory_wasted,
            s.memory_size.unwrap()
        );
    }

    #[test]
    fn three_compiled_scripts_show_between_fresh_and_warm() {
        let fresh = parse(&fixture("php82-fresh.cgi")).unwrap();
        let warm = parse(&fixture("php82-warm.cgi")).unwrap();
        // capture.sh requested three new scripts twice each in between.
        assert_eq!(warm.cached_scripts, fresh.cached_scripts + 3);
        assert_eq!(warm.misses, fresh.misses + 3);
        // Three second requests plus one more run of the probe itself.
        assert_eq!(warm.hits, fresh.hits + 4);
        assert!(warm.memory_used > fresh.memory_used);
        assert_eq!(warm.start_time, fresh.start_time);
    }

    #[test]
    fn a_manual_reset_is_a_manual_restart() {
        let s = parse(&fixture("php82-after-reset.cgi")).unwrap();
        assert_eq!(
            (s.restarts_manual, s.restarts_oom, s.restarts_hash),
            (1, 0, 0)
        );
        let t = s.last_restart_time.unwrap();
        assert!(t >= s.start_time, "{s:?}");
    }

    #[test]
    fn unavailable_opcache_has_a_kind() {
        assert_eq!(kind("php82-disabled.cgi"), "disabled");
        assert_eq!(kind("php82-not-installed.cgi"), "not_installed");
        match parse(&fixture("php82-restricted.cgi")) {
            Err(OpcacheError::Restricted { restrict_api }) => {
                assert_eq!(restrict_api, "/nonexistent-dir")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_pages_are_reported_with_their_status() {
        match parse(&fixture("php82-file-not-found.cgi")) {
            Err(OpcacheError::HttpStatus { status, body }) => {
                assert_eq!(status, 404);
                assert_eq!(body, "File not found.");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kind("php82-fatal-500.cgi"), "http_status");
        // display_errors on: a 200 HTML page, not the probe's JSON.
        assert_eq!(kind("php82-fatal-display-errors.cgi"), "malformed");
        assert_eq!(kind("other-json.cgi"), "malformed");
    }

    #[test]
    fn truncated_and_empty_replies_are_truncated() {
        for f in [
            "truncated-json.cgi",
            "truncated-headers.cgi",
            "truncated-marker.cgi",
            "empty.cgi",
        ] {
            assert_eq!(kind(f), "truncated", "{f}");
        }
    }

    #[test]
    fn every_prefix_of_a_good_reply_is_truncated() {
        let full = fixture("php82-warm.cgi");
        let end = full.iter().rposition(|b| *b == b'}').unwrap() + 1;
        for cut in 0..end {
            match parse(&full[..cut]) {
                Err(e) => assert_eq!(e.kind(), "truncated", "cut at {cut}: {e}"),
                Ok(s) => panic!("cut at {cut} parsed: {s:?}"),
            }
        }
        assert!(parse(&full[..end]).is_ok());
    }

    #[test]
    fn damaged_bytes_never_panic() {
        let full = fixture("php82-warm.cgi");
        // A small deterministic LCG: bounded, reproducible damage.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut b = full.clone();
            for _ in 0..3 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let i = (x >> 33) as usize % b.len();
                b[i] = (x >> 13) as u8;
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn output_around_the_json_is_tolerated() {
        let a = parse(&fixture("junk-before.cgi")).unwrap();
        let b = parse(&fixture("php82-warm.cgi")).unwrap();
        assert_eq!(a, b);
        let mut after = fixture("php82-warm.cgi");
        after.extend_from_slice(b"PHP Deprecated: something at shutdown\n");
        assert_eq!(parse(&after).unwrap(), b);
    }

    /// The warm reply with its `status` object edited; the envelope keeps
    /// PHP's key order (the marker comes first).
    fn with_status(edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
        let mut status = raw("php82-warm.cgi")["status"].clone();
        edit(&mut status);
        let text = String::from_utf8(fixture("php82-warm.cgi")).unwrap();
        let (head, rest) = text.split_once(r#""status":"#).unwrap();
        let tail = rest.split_once(r#","api_allowed""#).unwrap().1;
        format!(r#"{head}"status":{status},"api_allowed"{tail}"#).into_bytes()
    }

    #[test]
    fn wrong_numbers_are_malformed_and_zeros_divide_by_nothing() {
        let neg = with_status(|s| s["opcache_statistics"]["hits"] = (-1).into());
        assert_eq!(parse(&neg).unwrap_err().kind(), "malformed");
        let missing = with_status(|s| {
            s["opcache_statistics"]
                .as_object_mut()
                .unwrap()
                .remove("misses");
        });
        let e = parse(&missing).unwrap_err();
        assert_eq!(e.kind(), "malformed");
        assert!(e.to_string().contains("misses"), "{e}");
        let zero = with_status(|s| {
            s["opcache_statistics"]["hits"] = 0.into();
            s["opcache_statistics"]["misses"] = 0.into();
            for k in ["used_memory", "free_memory", "wasted_memory"] {
                s["memory_usage"][k] = 0.into();
            }
        });
        let z = parse(&zero).unwrap();
        assert_eq!((z.hit_rate, z.memory_wasted_ratio), (None, None));
        // interned_strings_buffer = 0: OPcache leaves the section out.
        let no_interned = with_status(|s| {
            s.as_object_mut().unwrap().remove("interned_strings_usage");
        });
        assert_eq!(parse(&no_interned).unwrap().interned_strings, None);
        let file_only = with_status(|s| s["file_cache_only"] = true.into());
        assert_eq!(parse(&file_only).unwrap_err().kind(), "disabled");
    }

    #[test]
    fn pool_values_that_turn_opcache_off() {
        for v in ["0", "off", "Off", "false", "no", "", " 0 "] {
            assert!(disabled_by_pool_ini([("opcache.enable", v)]), "{v:?}");
        }
        for v in ["1", "on", "yes"] {
            assert!(!disabled_by_pool_ini([("opcache.enable", v)]), "{v:?}");
        }
        assert!(!disabled_by_pool_ini([("opcache.enable_cli", "0")]));
        assert!(!disabled_by_pool_ini([]));
    }

    #[test]
    fn observed_pools_that_keep_the_probe_out_are_told_apart() {
        let probe = Path::new("/var/lib/pfm/opcache/probe-x.php");
        let main = Route::MainSocket;
        let kind = |f: &PoolFacts, r| assess(f, probe, r).err().map(|e| e.kind());
        assert_eq!(kind(&PoolFacts::default(), main), None);
        let chroot = PoolFacts {
            chroot: Some("/srv/jail".into()),
            ..PoolFacts::default()
        };
        assert_eq!(kind(&chroot, main), Some("chroot"));
        // The hidden status pool is not chrooted.
        assert_eq!(kind(&chroot, Route::StatusListener), None);
        let basedir = |v: &str| PoolFacts {
            open_basedir: Some(v.into()),
            ..PoolFacts::default()
        };
        assert_eq!(kind(&basedir("/srv/www:/tmp"), main), Some("open_basedir"));
        assert_eq!(kind(&basedir("/srv/www:/var/lib/pfm"), main), None);
        // PHP matches entries as prefixes; a relative one cannot be judged.
        assert_eq!(kind(&basedir("/var/lib/pf"), main), None);
        assert_eq!(kind(&basedir("."), main), None);
        assert_eq!(kind(&basedir("/srv"), Route::StatusListener), None);
        let ext = |v: &str| PoolFacts {
            limit_extensions: Some(v.into()),
            ..PoolFacts::default()
        };
        assert_eq!(kind(&ext(".php5 .phtml"), main), Some("limit_extensions"));
        assert_eq!(kind(&ext(".php .phar"), main), None);
        let off = PoolFacts {
            opcache_enable: vec!["off".into()],
            ..PoolFacts::default()
        };
        assert_eq!(kind(&off, Route::StatusListener), Some("disabled"));
        let e = assess(&basedir("/srv/www"), probe, main).unwrap_err();
        assert!(e.to_string().contains("/srv/www"), "{e}");
    }

    #[test]
    fn pool_facts_come_from_the_effective_directives() {
        let src = fpm_import::MemorySource::new([(
            "/etc/fpm.conf",
            "[www]\nlisten = /run/www.sock\nchroot = /srv/jail\nphp_value[open_basedir] = /a\nphp_admin_value[open_basedir] = /b\nphp_admin_flag[opcache.enable] = off\nsecurity.limit_extensions = .php .php7\n",
        )]);
        let m = fpm_import::load_config(
            Path::new("/etc/fpm.conf"),
            &fpm_import::ReadOptions::default(),
            &src,
        )
        .unwrap();
        let f = PoolFacts::from_def(&m.pools[0]);
        assert_eq!(f.chroot.as_deref(), Some("/srv/jail"));
        assert_eq!(f.open_basedir.as_deref(), Some("/b"));
        assert_eq!(f.limit_extensions.as_deref(), Some(".php .php7"));
        // PHP's ini reader turns `off` into "", which is off too.
        assert_eq!(f.opcache_enable, [""]);
        assert!(disabled_by_pool_ini(
            f.opcache_enable
                .iter()
                .map(|v| ("opcache.enable", v.as_str()))
        ));
    }

    #[test]
    fn refusals_of_the_probe_are_explained() {
        let probe = Path::new("/r/opcache/probe-x.php");
        for (status, body, want) in [
            (404, "File not found.", "not_found"),
            (404, "No input file specified.", "not_found"),
            (403, "Access denied.", "access_denied"),
            (500, "", "http_status"),
        ] {
            let e = explain(
                OpcacheError::HttpStatus {
                    status,
                    body: body.into(),
                },
                probe,
            );
            assert_eq!(e.kind(), want, "{e}");
        }
        let e = explain(
            parse(&fixture("php82-file-not-found.cgi")).unwrap_err(),
            probe,
        );
        assert!(e.to_string().contains("chrooted"), "{e}");
        assert_eq!(
            explain(OpcacheError::NotInstalled, probe).kind(),
            "not_installed"
        );
    }

    #[test]
    fn a_failing_probe_backs_off_and_a_success_resets() {
        let mut b = ProbeBackoff::default();
        assert!(b.allows(0));
        assert_eq!(b.failed(1_000), Duration::from_secs(30));
        assert!(!b.allows(30_999));
        assert!(b.allows(31_000));
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = b.failed(31_000);
        }
        assert_eq!(last, Duration::from_secs(600));
        b.succeeded();
        assert!(b.allows(31_000));
        assert_eq!(b.failed(31_000), Duration::from_secs(30));
    }

    #[test]
    fn probe_requests_leave_accepted_conn_per_master_start() {
        let mut c = ProbeCount::default();
        assert_eq!(c.adjust(100, 10), 10);
        c.sent(1);
        assert_eq!(c.adjust(100, 12), 11);
        c.sent(1);
        assert_eq!(c.adjust(100, 14), 12);
        // A new master start: its counter starts again, so do the probes.
        assert_eq!(c.adjust(200, 1), 1);
        c.sent(5);
        assert_eq!(c.adjust(200, 3), 0, "clamped at zero");
    }

    #[test]
    fn the_masters_config_is_read_from_its_title() {
        assert_eq!(
            config_in_title(b"php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)\0\0"),
            Some(PathBuf::from("/etc/php/8.2/fpm/php-fpm.conf"))
        );
        assert_eq!(
            config_in_title(b"php-fpm: master process (/tmp/a b/master.conf)    "),
            Some(PathBuf::from("/tmp/a b/master.conf"))
        );
        assert_eq!(config_in_title(b"php-fpm: pool www"), None);
        assert_eq!(config_in_title(b"php-fpm: master process (rel.conf)"), None);
    }

    #[test]
    fn the_api_says_why_there_are_no_figures() {
        let s = parse(&fixture("php82-warm.cgi")).unwrap();
        let v = opcache_json(true, Some(&Ok(s.clone())));
        assert_eq!(v["available"], true);
        assert_eq!(v["hits"], s.hits);
        let e = std::sync::Arc::new(OpcacheError::Blocked {
            blocker: Blocker::OpenBasedir,
            detail: "x".into(),
        });
        let v = opcache_json(true, Some(&Err(e)));
        assert_eq!(v["reason"]["kind"], "open_basedir");
        assert_eq!(opcache_json(false, None)["reason"]["kind"], "off");
    }

    #[test]
    fn the_script_reads_no_request_input() {
        for bad in [
            "$_",
            "php://input",
            "getenv",
            "filter_input",
            "$GLOBALS",
            "eval",
            "include",
            "require",
        ] {
            assert!(!PROBE_SCRIPT.contains(bad), "probe contains {bad}");
        }
        assert!(PROBE_SCRIPT.contains(r#"'probe' => 'phpfpm-manager-opcache', 'version' => 1"#));
    }

    fn render(fams: &[MetricFamily]) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(fams, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn families_name_every_figure_once() {
        let s = parse(&fixture("php82-after-reset.cgi")).unwrap();
        let off = parse(&fixture("php82-disabled.cgi")).unwrap_err();
        let fams = families_with_unavailable(&[("www", &s)], &[("api", &off)]);
        let mut names: Vec<&str> = fams.iter().map(|f| f.name()).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a family is emitted twice");
        let text = render(&fams);
        for line in [
            format!(
                r#"phpfpm_manager_opcache_hits_total{{pool="www"}} {}"#,
                s.hits
            ),
            format!(
                r#"phpfpm_manager_opcache_misses_total{{pool="www"}} {}"#,
                s.misses
            ),
            format!(
                r#"phpfpm_manager_opcache_cached_scripts{{pool="www"}} {}"#,
                s.cached_scripts
            ),
            format!(
                r#"phpfpm_manager_opcache_memory_free_bytes{{pool="www"}} {}"#,
                s.memory_free
            ),
            format!(
                r#"phpfpm_manager_opcache_restarts_total{{pool="www",reason="manual"}} {}"#,
                s.restarts_manual
            ),
            r#"phpfpm_manager_opcache_restarts_total{pool="www",reason="oom"} 0"#.to_owned(),
            r#"phpfpm_manager_opcache_enabled{pool="www"} 1"#.to_owned(),
            r#"phpfpm_manager_opcache_enabled{pool="api"} 0"#.to_owned(),
            r#"phpfpm_manager_opcache_unavailable{pool="api",reason="disabled"} 1"#.to_owned(),
            "# TYPE phpfpm_manager_opcache_hits_total counter".to_owned(),
            "# TYPE phpfpm_manager_opcache_cached_scripts gauge".to_owned(),
        ] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        // A disabled pool has no figures.
        assert!(!text.contains(r#"phpfpm_manager_opcache_hits_total{pool="api"}"#));
        // Right after the reset: two misses, no hit, a rate of exactly 0.
        assert_eq!((s.hits, s.misses), (0, 2));
        assert!(text.contains(r#"phpfpm_manager_opcache_hit_rate{pool="www"} 0"#));
        // No lookup at all: no rate rather than a made-up 0.
        let mut idle = s.clone();
        idle.hit_rate = None;
        let t = render(&families(&[("idle", &idle)]));
        assert!(!t.contains("phpfpm_manager_opcache_hit_rate{"), "{t}");
        assert!(families(&[]).is_empty());
    }

    #[test]
    fn probe_file_is_private_to_its_directory_and_removed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("opcache");
        let a = OpcacheProbe::create(&dir).unwrap();
        let b = OpcacheProbe::create(&dir).unwrap();
        assert_ne!(a.file_name(), b.file_name());
        for p in [&a, &b] {
            let name = p.file_name();
            let hex = name
                .strip_prefix("probe-")
                .unwrap()
                .strip_suffix(".php")
                .unwrap();
            assert_eq!(hex.len(), 32);
            assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{name}");
            assert_eq!(p.path(), dir.join(name));
        }
        let meta = std::fs::symlink_metadata(a.path()).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
        assert_eq!(std::fs::read_to_string(a.path()).unwrap(), PROBE_SCRIPT);
        // Older than opcache.file_update_protection, so OPcache caches it.
        let age = SystemTime::now()
            .duration_since(meta.modified().unwrap())
            .unwrap();
        assert!(age > Duration::from_secs(3000), "{age:?}");
        let dmeta = std::fs::symlink_metadata(&dir).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o7777, 0o755);
        let (pa, pb) = (a.path().to_owned(), b.path().to_owned());
        drop(a);
        assert!(!pa.exists());
        assert!(pb.exists());
        drop(b);
        assert!(!pb.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn stale_probes_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("opcache");
        assert_eq!(remove_stale(&dir).unwrap(), 0, "missing dir");
        let a = OpcacheProbe::create(&dir).unwrap();
        let b = OpcacheProbe::create(&dir).unwrap();
        // What a crash leaves: the files without their probes.
        std::mem::forget(a);
        std::mem::forget(b);
        for other in [
            "probe-1234.php",
            "keep.php",
            "probe-0123456789abcdef0123456789ABCDEF.php",
        ] {
            std::fs::write(dir.join(other), "x").unwrap();
        }
        assert_eq!(remove_stale(&dir).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "keep.php",
                "probe-0123456789abcdef0123456789ABCDEF.php",
                "probe-1234.php"
            ]
        );
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            remove_stale(&link),
            Err(ProbeError::NotADirectory(_))
        ));
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = OpcacheProbe::create(&link).unwrap_err();
        assert!(matches!(e, ProbeError::NotADirectory(_)), "{e}");
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = OpcacheProbe::create(&file).unwrap_err();
        assert!(matches!(e, ProbeError::NotADirectory(_)), "{e}");

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = OpcacheProbe::create(&open).unwrap_err();
        assert!(matches!(e, ProbeError::Writable { mode: 0o777, .. }), "{e}");
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);

        let closed = tmp.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = OpcacheProbe::create(&closed).unwrap_err();
        assert!(
            matches!(e, ProbeError::NotTraversable { mode: 0o700, .. }),
            "{e}"
        );
        let mode = std::fs::metadata(&closed).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "an existing directory keeps its mode");

        let e = OpcacheProbe::create(Path::new("relative/opcache")).unwrap_err();
        assert!(matches!(e, ProbeError::NotAbsolute(_)), "{e}");
        let e = OpcacheProbe::create(&tmp.path().join("no/such/parent")).unwrap_err();
        assert!(matches!(e, ProbeError::Dir { .. }), "{e}");

        // A directory owned by someone else: as root, make one; otherwise
        // "/" is such a directory.
        let euid = rustix::process::geteuid();
        let foreign = if euid.is_root() {
            let d = tmp.path().join("foreign");
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            d
        } else {
            PathBuf::from("/")
        };
        let e = OpcacheProbe::create(&foreign).unwrap_err();
        assert!(matches!(e, ProbeError::NotOwned { .. }), "{e}");
    }
}
