//! Turns a parsed php-fpm setup into a phpfpm-manager config and the pool
//! files the manager will render from it. Pure: no I/O, no clock.
//!
//! Every pool directive either maps to one of the manager's pool keys or is
//! carried verbatim in `extra_settings`; nothing is silently dropped. What the
//! manager changes on purpose (status page, ping, worker output, global
//! directives it owns) is reported in `notes`. `env[...]` values never appear
//! in notes, errors or Debug output; they go to the pool files and, depending
//! on [`ImportOptions::include_secrets`], to the YAML or to separate env files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use fpm_core::fpm_conf::{render_pool, PmMode, PoolSpec, RenderError};
use fpm_core::PoolName;
use thiserror::Error;

use crate::model::{Directive, FpmConfig, Origin, PoolDef};
use crate::yaml::{push_comment, quote};

/// Choices the user makes when importing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// The manager's runtime directory (absolute): default status sockets
    /// live under it, and the preview pool files are rendered with it.
    pub runtime_dir: PathBuf,
    /// Write `runtime_dir` into the config as `phpfpm.runtime_dir`. When
    /// false the config leaves the manager's default (`./var/phpfpm-manager`,
    /// relative to where the manager runs) and says so in a comment.
    pub write_runtime_dir: bool,
    /// true: `env[...]` values go into the YAML's `env:` maps (the YAML file
    /// is then written with mode 0600). false: they go to one file per pool,
    /// `env/<pool>.yaml`, mode 0600, and the YAML only names the variables.
    pub include_secrets: bool,
}

/// The result of an import. `Debug` redacts everything that can hold a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Imported {
    /// A complete phpfpm-manager config file.
    pub config_yaml: String,
    /// Whether `config_yaml` holds env values (only with `include_secrets`).
    pub config_has_secrets: bool,
    /// `(pool name, pool file)` as the manager renders it from `config_yaml`
    /// plus the pool's env values. Contains env values: treat as secret.
    pub pool_files: Vec<(String, String)>,
    /// `(pool name, YAML with an env: map)` for pools with env values when
    /// `include_secrets` is false. Secret.
    pub env_files: Vec<(String, String)>,
    /// What was changed or dropped, and why. Never contains env values.
    pub notes: Vec<String>,
}

impl std::fmt::Debug for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[(String, String)]| -> Vec<String> {
            v.iter().map(|(n, _)| format!("{n}: <redacted>")).collect()
        };
        let yaml: &str = if self.config_has_secrets {
            "<redacted: holds env values>"
        } else {
            &self.config_yaml
        };
        f.debug_struct("Imported")
            .field("config_yaml", &yaml)
            .field("pool_files", &names(&self.pool_files))
            .field("env_files", &names(&self.env_files))
            .field("notes", &self.notes)
            .finish()
    }
}

/// Why a setup cannot be imported. Messages never contain env values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImportError {
    #[error("{origin}: pool name {name:?} is accepted by php-fpm but not by phpfpm-manager ({why}): pool names become file and socket names, so only letters, digits, '_' and '-' are allowed; rename the section to [{suggest}] (and paths built from $pool that nginx uses) and import again")]
    PoolName {
        origin: Origin,
        name: String,
        why: String,
        suggest: String,
    },
    #[error("no pool is defined in {0} or the files it includes")]
    NoPools(String),
    #[error("{at}: {key}: {what}")]
    Setting {
        at: String,
        key: String,
        what: String,
    },
    #[error("pool {pool} ({origin}): {key} is not set, and php-fpm refuses a pool without it")]
    Missing {
        pool: String,
        origin: Origin,
        key: String,
    },
    #[error("runtime dir {path:?}: {what}")]
    RuntimeDir { path: String, what: String },
    #[error("pool {pool}: {error}")]
    Render { pool: String, error: RenderError },
}

/// Pool directives php-fpm 8.2 knows (from `php-fpm8.2 -tt`), beyond the
/// array ones (`env`, `php_value`, `php_flag`, `php_admin_value`, `php_admin_flag`).
const POOL_DIRECTIVES: &[&str] = &[
    "prefix",
    "user",
    "group",
    "listen",
    "listen.backlog",
    "listen.acl_users",
    "listen.acl_groups",
    "listen.owner",
    "listen.group",
    "listen.mode",
    "listen.allowed_clients",
    "listen.setfib",
    "process.priority",
    "process.dumpable",
    "pm",
    "pm.max_children",
    "pm.start_servers",
    "pm.min_spare_servers",
    "pm.max_spare_servers",
    "pm.max_spawn_rate",
    "pm.process_idle_timeout",
    "pm.max_requests",
    "pm.status_path",
    "pm.status_listen",
    "ping.path",
    "ping.response",
    "access.log",
    "access.format",
    "access.suppress_path",
    "slowlog",
    "request_slowlog_timeout",
    "request_slowlog_trace_depth",
    "request_terminate_timeout",
    "request_terminate_timeout_track_finished",
    "rlimit_files",
    "rlimit_core",
    "chroot",
    "chdir",
    "catch_workers_output",
    "decorate_workers_output",
    "clear_env",
    "security.limit_extensions",
    "apparmor_hat",
];

/// Pool directives whose value php-fpm reads as a boolean.
const POOL_BOOLEANS: &[&str] = &[
    "process.dumpable",
    "request_terminate_timeout_track_finished",
    "clear_env",
];

/// Global directives and what happens to them.
fn global_fate(key: &str) -> Option<&'static str> {
    Some(match key {
        "pid" => "each master the manager runs gets its own pid file under the runtime dir",
        "error_log" | "syslog.ident" | "syslog.facility" | "log_buffering" | "log_limit" => {
            "php-fpm's log goes to the manager, which tags each line with the pool (error_log = /proc/self/fd/2)"
        }
        "daemonize" => "masters run in the foreground as children of the manager",
        "emergency_restart_threshold" | "emergency_restart_interval" => {
            "the manager restarts a crashed master itself, with backoff"
        }
        "process.max" => "not carried: it limited one shared master; each pool's max_workers limits its own master",
        "process.priority" => "not carried: it set the shared master's priority",
        "events.mechanism" => "php-fpm picks the best mechanism itself",
        "systemd_interval" => "masters do not report to systemd; the manager does",
        _ => return None,
    })
}

/// Imports `model` for the manager.
pub fn import(model: &FpmConfig, options: &ImportOptions) -> Result<Imported, ImportError> {
    let runtime_dir = check_runtime_dir(&options.runtime_dir)?;
    if model.pools.is_empty() {
        return Err(ImportError::NoPools(model.main_file.display().to_string()));
    }
    let mut notes: Vec<String> = model.warnings.clone();

    // [global]
    let mut pct_comment = None;
    let pct_secs = match model.global("process_control_timeout") {
        Some(d) => time_secs(d)?,
        None => 0,
    };
    let pct_secs = if pct_secs == 0 {
        let text = "process_control_timeout: the imported value is 0 (php-fpm's default), which cuts requests in flight on every reload; 10s is used instead";
        notes.push(format!("global {text}"));
        pct_comment = Some(text);
        10
    } else if pct_secs > 3600 {
        notes.push(format!(
            "global process_control_timeout {pct_secs}s is above the manager's limit; 3600s is used"
        ));
        3600
    } else {
        pct_secs
    };
    let log_level = match model.global("log_level") {
        Some(d) => {
            let l = d.value.to_ascii_lowercase();
            if !["alert", "error", "warning", "notice", "debug"].contains(&l.as_str()) {
                return Err(setting(
                    d,
                    "not a php-fpm log level (alert, error, warning, notice, debug)",
                ));
            }
            l
        }
        None => "notice".to_owned(),
    };
    let mut global_rlimits: Vec<&Directive> = Vec::new();
    for d in &model.global {
        // Only the effective (last) definition of each key, in file order.
        if !model
            .global(&d.key)
            .is_some_and(|last| std::ptr::eq(last, d))
        {
            continue;
        }
        match d.key.as_str() {
            "process_control_timeout" | "log_level" => {}
            "rlimit_files" | "rlimit_core" => global_rlimits.push(d),
            k => match global_fate(k) {
                Some(why) => notes.push(format!("global {k} ({}) is dropped: {why}", d.origin)),
                None => notes.push(format!(
                    "global {k} ({}) is not a php-fpm 8.2 global directive and is dropped",
                    d.origin
                )),
            },
        }
    }

    let mut pools = Vec::new();
    for def in &model.pools {
        pools.push(map_pool(def, &global_rlimits, &runtime_dir, &mut notes)?);
    }
    notes.push(
        "listen addresses are kept, so nginx keeps working; stop the system php-fpm service before starting the manager, since both cannot serve the same addresses"
            .to_owned(),
    );

    // Rendered pool files: exactly what the manager renders from the YAML,
    // plus env values.
    let mut pool_files = Vec::new();
    for p in &pools {
        let spec = p.spec(&runtime_dir);
        let text = render_pool(&spec).map_err(|error| ImportError::Render {
            pool: p.name.to_string(),
            error,
        })?;
        pool_files.push((p.name.to_string(), text));
    }

    let mut env_files = Vec::new();
    if !options.include_secrets {
        for p in pools.iter().filter(|p| !p.env.is_empty()) {
            env_files.push((p.name.to_string(), env_file(p)));
            notes.push(format!(
                "pool {}: env values of {} are in env/{}.yaml (mode 0600), not in the config: they may be secrets; paste its env: block into the pool in the config (and keep that file mode 0600) or import again with --include-secrets",
                p.name,
                p.env.keys().cloned().collect::<Vec<_>>().join(", "),
                p.name
            ));
        }
    }
    let config_has_secrets = options.include_secrets && pools.iter().any(|p| !p.env.is_empty());

    let config_yaml = render_yaml(
        model,
        &runtime_dir,
        options.write_runtime_dir,
        pct_secs,
        pct_comment,
        &log_level,
        &pools,
        options.include_secrets,
        &notes,
    );
    Ok(Imported {
        config_yaml,
        config_has_secrets,
        pool_files,
        env_files,
        notes,
    })
}

fn check_runtime_dir(p: &Path) -> Result<PathBuf, ImportError> {
    let err = |what: &str| ImportError::RuntimeDir {
        path: p.display().to_string(),
        what: what.to_owned(),
    };
    let s = p.to_str().ok_or_else(|| err("not UTF-8"))?;
    if s.contains(['\0', '\n', '\r', '"']) {
        return Err(err("contains a NUL, newline or '\"'"));
    }
    if !p.is_absolute() {
        return Err(err("relative path; give an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(err("contains '..'"));
    }
    Ok(normalize(p))
}

/// Removes `.` components and doubled slashes, as the manager's validation does.
fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

fn setting(d: &Directive, what: &str) -> ImportError {
    ImportError::Setting {
        at: d.origin.to_string(),
        key: d.key.clone(),
        what: what.to_owned(),
    }
}

/// One pool, in the manager's terms.
struct PoolOut {
    name: PoolName,
    listen: String,
    status_listen: Option<String>,
    status_path: String,
    ping_path: String,
    ping_response: Option<String>,
    pm: PmMode,
    max_children: u32,
    start: u32,
    min_spare: u32,
    max_spare: u32,
    max_requests: u32,
    idle_secs: u64,
    terminate_secs: u64,
    user: Option<String>,
    group: Option<String>,
    listen_mode: String,
    /// `listen.group`: the socket's group, the pool key `listen_group`.
    listen_group: Option<String>,
    chdir: Option<String>,
    php_values: BTreeMap<String, String>,
    php_admin_values: BTreeMap<String, String>,
    extra: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    /// Comments written above the pool in the YAML.
    comments: Vec<String>,
}

impl PoolOut {
    /// The spec the manager's config validation builds from this pool's YAML.
    fn spec(&self, runtime_dir: &Path) -> PoolSpec {
        let status = self.status_listen.clone().unwrap_or_else(|| {
            default_status_socket(runtime_dir, &self.name)
                .display()
                .to_string()
        });
        PoolSpec {
            name: self.name.clone(),
            listen: self.listen.clone(),
            status_listen: Some(status),
            status_path: self.status_path.clone(),
            ping_path: self.ping_path.clone(),
            ping_response: self
                .ping_response
                .clone()
                .unwrap_or_else(|| "pong".to_owned()),
            user: self.user.clone(),
            group: self.group.clone(),
            listen_mode: self.listen_mode.clone(),
            pm: self.pm,
            max_children: self.max_children,
            start_servers: self.start,
            min_spare_servers: self.min_spare,
            max_spare_servers: self.max_spare,
            max_requests: self.max_requests,
            process_idle_timeout_secs: self.idle_secs.max(1),
            request_terminate_timeout_secs: self.terminate_secs,
            chdir: self.chdir.as_ref().map(PathBuf::from),
            php_values: self.php_values.clone().into_iter().collect(),
            php_admin_values: self.php_admin_values.clone().into_iter().collect(),
            extra: self.extra.clone().into_iter().collect(),
            env: self.env.clone().into_iter().collect(),
        }
    }
}

fn default_status_socket(runtime_dir: &Path, name: &PoolName) -> PathBuf {
    runtime_dir
        .join("sockets")
        .join(format!("{name}.status.sock"))
}

fn map_pool(
    def: &PoolDef,
    global_rlimits: &[&Directive],
    runtime_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<PoolOut, ImportError> {
    let name = PoolName::new(&def.name).map_err(|e| ImportError::PoolName {
        origin: def.origin.clone(),
        name: def.name.clone(),
        why: e.to_string(),
        suggest: suggest_name(&def.name),
    })?;
    let missing = |key: &str| ImportError::Missing {
        pool: def.name.clone(),
        origin: def.origin.clone(),
        key: key.to_owned(),
    };
    let get = |k: &str| def.get(k);
    let mut comments = Vec::new();
    let mut note = |text: String| notes.push(format!("pool {name}: {text}"));

    let listen_d = get("listen").ok_or_else(|| missing("listen"))?;
    let listen = listen_address(listen_d)?;

    let pm_d = get("pm").ok_or_else(|| missing("pm"))?;
    let pm = match pm_d.value.to_ascii_lowercase().as_str() {
        "static" => PmMode::Static,
        "dynamic" => PmMode::Dynamic,
        "ondemand" => PmMode::Ondemand,
        _ => return Err(setting(pm_d, "not static, dynamic or ondemand")),
    };
    let max_children = number(
        get("pm.max_children").ok_or_else(|| missing("pm.max_children"))?,
        1,
        10_000,
    )?;
    let (mut start, mut min_spare, mut max_spare) = (0, 0, 0);
    if pm == PmMode::Dynamic {
        min_spare = number(
            get("pm.min_spare_servers").ok_or_else(|| missing("pm.min_spare_servers"))?,
            1,
            10_000,
        )?;
        max_spare = number(
            get("pm.max_spare_servers").ok_or_else(|| missing("pm.max_spare_servers"))?,
            1,
            10_000,
        )?;
        // php-fpm's default when pm.start_servers is 0 or unset.
        start = match get("pm.start_servers") {
            Some(d) => number(d, 0, 10_000)?,
            None => 0,
        };
        if start == 0 {
            start = min_spare + (max_spare.saturating_sub(min_spare)) / 2;
        }
        if min_spare > max_spare
            || max_spare > max_children
            || start < min_spare
            || start > max_spare
        {
            return Err(ImportError::Setting {
                at: def.origin.to_string(),
                key: "pm.*_servers".into(),
                what: format!("php-fpm needs min_spare ({min_spare}) <= start ({start}) <= max_spare ({max_spare}) <= max_children ({max_children})"),
            });
        }
    }
    let max_requests = match get("pm.max_requests") {
        Some(d) => number(d, 0, u32::MAX)?,
        None => 0,
    };
    let idle_secs = match get("pm.process_idle_timeout") {
        Some(d) => time_secs(d)?,
        None => 10,
    };
    if pm == PmMode::Ondemand && !(1..=86_400).contains(&idle_secs) {
        let d = get("pm.process_idle_timeout").unwrap_or(pm_d);
        return Err(setting(d, "must be between 1s and 1d for the manager"));
    }
    let terminate_secs = match get("request_terminate_timeout") {
        Some(d) => {
            let s = time_secs(d)?;
            if s > 86_400 {
                return Err(setting(d, "above the manager's limit of 1d"));
            }
            s
        }
        None => 0,
    };

    let listen_mode = match get("listen.mode") {
        Some(d) => {
            let v = d.value.trim();
            if v.is_empty() || v.len() > 4 || !v.chars().all(|c| ('0'..='7').contains(&c)) {
                return Err(setting(d, "not an octal file mode"));
            }
            format!("{v:0>4}")
        }
        // php-fpm's default.
        None => "0660".to_owned(),
    };
    let listen_group = get("listen.group").map(|d| d.value.trim().to_owned());
    let account = |k: &str| -> Result<Option<String>, ImportError> {
        match get(k) {
            None => Ok(None),
            Some(d) => {
                let ok = !d.value.is_empty()
                    && d.value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if ok {
                    Ok(Some(d.value.clone()))
                } else {
                    Err(setting(
                        d,
                        "the manager accepts only letters, digits, '_', '-' and '.' in user and group names",
                    ))
                }
            }
        }
    };
    let user = account("user")?;
    let group = account("group")?;

    let chdir = match get("chdir") {
        None => None,
        Some(d) => {
            let p = Path::new(&d.value);
            if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                return Err(setting(
                    d,
                    "the manager needs an absolute chdir without '..'",
                ));
            }
            carry(d)?;
            Some(normalize(p).display().to_string())
        }
    };

    let url_path =
        |k: &str, default: &str, note: &mut dyn FnMut(String)| -> Result<String, ImportError> {
            match get(k) {
                Some(d) => {
                    if !d.value.starts_with('/')
                        || d.value
                            .contains(|c: char| c.is_whitespace() || c == '?' || c == '"')
                    {
                        return Err(setting(
                            d,
                            "must be a URL path starting with '/', without spaces or '?'",
                        ));
                    }
                    Ok(d.value.clone())
                }
                None => {
                    note(format!(
                        "{k} {default} is added: the manager watches every pool through it"
                    ));
                    Ok(default.to_owned())
                }
            }
        };
    let status_path = url_path("pm.status_path", "/status", &mut note)?;
    let ping_path = url_path("ping.path", "/ping", &mut note)?;
    let status_listen = match get("pm.status_listen") {
        Some(d) => Some(listen_address(d)?),
        None => {
            let sock = default_status_socket(runtime_dir, &name);
            note(format!(
                "pm.status_listen {} is added: the status page then answers even when every worker is busy",
                sock.display()
            ));
            comments.push(format!(
                "status_endpoint: not set, so the manager adds a private pm.status_listen socket at {}",
                sock.display()
            ));
            None
        }
    };
    let ping_response = get("ping.response").map(|d| d.value.clone());
    if ping_response.is_some() {
        note("ping.response is kept as ping_response; the manager writes it into the pool file and expects it from the ping page".into());
    }
    for (k, want) in [
        ("catch_workers_output", true),
        ("decorate_workers_output", false),
    ] {
        let had = match get(k) {
            Some(d) => boolean(d)?,
            None => k == "decorate_workers_output",
        };
        if had != want {
            note(format!(
                "{k} becomes {}: worker output goes to the manager's log",
                if want { "yes" } else { "no" }
            ));
        }
    }

    // Everything else, in order: later plain directives override earlier
    // ones, the first definition of an array directive wins.
    let mut php_values = BTreeMap::new();
    let mut php_admin_values = BTreeMap::new();
    let mut env = BTreeMap::new();
    let mut extra = BTreeMap::new();
    let mut first_def: BTreeMap<String, Origin> = BTreeMap::new();
    for d in &def.directives {
        if let Some((kind, sub)) = d.array() {
            let (map, value) = match kind {
                "php_value" => (&mut php_values, d.value.clone()),
                "php_admin_value" => (&mut php_admin_values, d.value.clone()),
                // php-fpm stores flags as php_value "1" / "0".
                "php_flag" => (&mut php_values, flag(d)?),
                "php_admin_flag" => (&mut php_admin_values, flag(d)?),
                "env" => (&mut env, d.value.clone()),
                _ => return Err(setting(d, "not a php-fpm directive")),
            };
            let key_ok = !sub.is_empty()
                && sub
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !key_ok {
                return Err(setting(
                    d,
                    "the manager accepts only letters, digits, '_' and '.' inside [...]",
                ));
            }
            carry_value(d, &value)?;
            let base = if kind.ends_with("flag") {
                kind.replace("flag", "value")
            } else {
                kind.to_owned()
            };
            let slot = format!("{base}[{sub}]");
            // php-fpm keeps every definition in a list and applies them so
            // that the FIRST one wins (checked with a real worker: ini_get()
            // and getenv() see the first value), unlike plain directives.
            if let Some(first) = first_def.get(&slot) {
                note(format!(
                    "{slot} at {} is ignored: it is already set at {first}, and php-fpm uses the first definition of an array directive",
                    d.origin
                ));
                continue;
            }
            map.insert(sub.to_owned(), value);
            first_def.insert(slot, d.origin.clone());
            continue;
        }
        match d.key.as_str() {
            "listen"
            | "listen.mode"
            | "listen.group"
            | "user"
            | "group"
            | "pm"
            | "pm.max_children"
            | "pm.start_servers"
            | "pm.min_spare_servers"
            | "pm.max_spare_servers"
            | "pm.max_requests"
            | "pm.process_idle_timeout"
            | "pm.status_path"
            | "pm.status_listen"
            | "ping.path"
            | "ping.response"
            | "request_terminate_timeout"
            | "chdir"
            | "catch_workers_output"
            | "decorate_workers_output" => {}
            k => {
                let value = if POOL_BOOLEANS.contains(&k) {
                    if boolean(d)? { "yes" } else { "no" }.to_owned()
                } else {
                    carry(d)?;
                    d.value.clone()
                };
                if !POOL_DIRECTIVES.contains(&k) {
                    note(format!(
                        "{k} ({}) is not a php-fpm 8.2 pool directive; it is carried verbatim and php-fpm will judge it",
                        d.origin
                    ));
                }
                extra.insert(k.to_owned(), value);
            }
        }
    }
    for g in global_rlimits {
        if !extra.contains_key(&g.key) {
            carry(g)?;
            extra.insert(g.key.clone(), g.value.clone());
            note(format!(
                "global {} ({}) is carried into the pool, where it sets the workers' limit as the shared master's did",
                g.key, g.origin
            ));
        }
    }
    if let Some(p) = extra.get("prefix") {
        note(format!(
            "prefix {p} is carried; relative paths in this pool resolve against it"
        ));
    }

    Ok(PoolOut {
        name,
        listen,
        status_listen,
        status_path,
        ping_path,
        ping_response,
        pm,
        max_children,
        start,
        min_spare,
        max_spare,
        max_requests,
        idle_secs,
        terminate_secs,
        user,
        group,
        listen_mode,
        listen_group,
        chdir,
        php_values,
        php_admin_values,
        extra,
        env,
        comments,
    })
}

/// A name the manager accepts, for the rename hint.
fn suggest_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(fpm_core::pool::MAX_POOL_NAME_LEN)
        .collect();
    if s.is_empty() {
        "pool".into()
    } else {
        s
    }
}

/// php-fpm's listen forms the manager's `fastcgi_endpoint` accepts as is.
fn listen_address(d: &Directive) -> Result<String, ImportError> {
    let v = d.value.trim();
    if v.starts_with('/') {
        let p = Path::new(v);
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(setting(d, "socket path contains '..'"));
        }
        carry(d)?;
        return Ok(normalize(p).display().to_string());
    }
    if v.chars().all(|c| c.is_ascii_digit()) {
        return Err(setting(
            d,
            "a port alone listens on every address; the manager needs host:port: write 127.0.0.1:PORT (or 0.0.0.0:PORT if other hosts connect) in the original and import again",
        ));
    }
    if let Some((host, port)) = v.rsplit_once(':') {
        let host_ok = !host.is_empty()
            && host != "*"
            && host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
        if host_ok && port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Ok(v.to_owned());
        }
        if host == "*" {
            return Err(setting(
                d,
                "'*:PORT' is not accepted by the manager; write 0.0.0.0:PORT or [::]:PORT",
            ));
        }
    }
    Err(setting(
        d,
        "the manager needs an absolute unix socket path or host:port",
    ))
}

fn number(d: &Directive, min: u32, max: u32) -> Result<u32, ImportError> {
    match d.value.trim().parse::<u32>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(setting(
            d,
            &format!("{:?} is not a whole number from {min} to {max}", d.value),
        )),
    }
}

/// php-fpm's time values: a number of seconds, or with an s, m, h or d suffix.
fn time_secs(d: &Directive) -> Result<u64, ImportError> {
    let v = d.value.trim();
    let (digits, unit) = match v.char_indices().last() {
        Some((i, c @ ('s' | 'm' | 'h' | 'd'))) => (&v[..i], c),
        _ => (v, 's'),
    };
    let n: u64 = digits.parse().map_err(|_| {
        setting(
            d,
            &format!("{v:?} is not a time (seconds, or a number with s, m, h or d)"),
        )
    })?;
    let mult = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 1,
    };
    n.checked_mul(mult)
        .ok_or_else(|| setting(d, "time is too large"))
}

/// php-fpm's boolean values (after ini scanning turned `on`/`off` into `1`/``).
fn boolean(d: &Directive) -> Result<bool, ImportError> {
    match d.value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Ok(true),
        "" | "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(setting(d, "not a boolean (yes or no)")),
    }
}

fn flag(d: &Directive) -> Result<String, ImportError> {
    Ok(if boolean(d)? { "1" } else { "0" }.to_owned())
}

/// Refuses values the manager's pool file cannot carry unchanged. fpm-core
/// writes plain values bare and others in double quotes without escapes, so:
/// a `"`, newline or NUL cannot be written; `\\`, `\$` or a trailing `\`
/// would be read back differently; and a bare `on`/`off`/`E_ALL`-like word
/// (from a quoted original) would be turned into `1`/``/a number by php-fpm.
fn carry(d: &Directive) -> Result<(), ImportError> {
    carry_value(d, &d.value)
}

/// [`carry`] for a value derived from `d` (a flag turned into `1`/`0`).
fn carry_value(d: &Directive, v: &str) -> Result<(), ImportError> {
    let refuse = |why: &str| {
        setting(
            d,
            &format!("the value cannot be carried into the manager's pool file unchanged: {why}"),
        )
    };
    if v.contains(['"', '\n', '\r', '\0']) {
        return Err(refuse("it contains '\"', which fpm-core's pool file writer cannot quote; rewrite the value without '\"'"));
    }
    let b = v.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'\\' && matches!(b.get(i + 1), None | Some(b'\\' | b'$')) {
            return Err(refuse("it contains '\\\\', '\\$' or ends with '\\', which php-fpm would read back differently"));
        }
    }
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-:@,".contains(c));
    if plain {
        let lower = v.to_ascii_lowercase();
        let keyword =
            ["on", "yes", "true", "off", "no", "false", "none", "null"].contains(&lower.as_str());
        let constant = v
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && (v.starts_with("E_") || v.starts_with("PHP_") || v.starts_with("ZEND_"));
        if keyword || constant {
            return Err(refuse("the manager's pool file would write it without quotes, and php-fpm would then read it as a boolean or a PHP constant; use 1/0 or another spelling"));
        }
    }
    Ok(())
}

fn env_file(p: &PoolOut) -> String {
    let mut out = String::new();
    push_comment(
        &mut out,
        0,
        &format!(
            "env of pool {} imported from env[...] directives: these values may be secrets.",
            p.name
        ),
    );
    push_comment(
        &mut out,
        0,
        "Keep this file mode 0600. Paste the env: block into this pool in the manager config (and make that file 0600), then delete this file.",
    );
    out.push_str("env:\n");
    for (k, v) in &p.env {
        let _ = writeln!(out, "  {}: {}", quote(k), quote(v));
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn render_yaml(
    model: &FpmConfig,
    runtime_dir: &Path,
    write_runtime_dir: bool,
    pct_secs: u64,
    pct_comment: Option<&str>,
    log_level: &str,
    pools: &[PoolOut],
    include_secrets: bool,
    notes: &[String],
) -> String {
    let mut out = String::new();
    push_comment(
        &mut out,
        0,
        &format!(
            "phpfpm-manager configuration imported from {}.",
            model.main_file.display()
        ),
    );
    push_comment(&mut out, 0, "Files read:");
    for f in &model.files {
        push_comment(&mut out, 0, &format!("  {}", f.display()));
    }
    push_comment(
        &mut out,
        0,
        "What the import changed is listed at the end of this file.",
    );
    out.push_str("phpfpm:\n");
    if write_runtime_dir {
        let _ = writeln!(
            out,
            "  runtime_dir: {}",
            quote(&runtime_dir.display().to_string())
        );
    } else {
        push_comment(
            &mut out,
            2,
            "The runtime directory is the manager's default (./var/phpfpm-manager, relative to the directory it runs in).",
        );
    }
    if let Some(c) = pct_comment {
        push_comment(&mut out, 2, c);
    }
    let _ = writeln!(
        out,
        "  process_control_timeout: {}",
        quote(&format!("{pct_secs}s"))
    );
    let _ = writeln!(out, "  log_level: {}", quote(log_level));
    out.push_str("pools:\n");
    for p in pools {
        let _ = writeln!(out, "  - name: {}", quote(p.name.as_str()));
        for c in &p.comments {
            push_comment(&mut out, 4, c);
        }
        let mut kv = |k: &str, v: String| {
            let _ = writeln!(out, "    {k}: {v}");
        };
        kv("supervise", "true".into());
        kv("fastcgi_endpoint", quote(&p.listen));
        if let Some(s) = &p.status_listen {
            kv("status_endpoint", quote(s));
        }
        kv("fastcgi_status_path", quote(&p.status_path));
        kv("ping_path", quote(&p.ping_path));
        if let Some(r) = &p.ping_response {
            kv("ping_response", quote(r));
        }
        kv("pm", quote(p.pm.as_str()));
        kv("max_workers", p.max_children.to_string());
        if p.pm == PmMode::Dynamic {
            kv("start_workers", p.start.to_string());
            kv("min_spare_workers", p.min_spare.to_string());
            kv("max_spare_workers", p.max_spare.to_string());
        }
        kv("max_requests", p.max_requests.to_string());
        kv(
            "process_idle_timeout",
            quote(&format!("{}s", p.idle_secs.max(1))),
        );
        kv(
            "request_terminate_timeout",
            quote(&format!("{}s", p.terminate_secs)),
        );
        if let Some(u) = &p.user {
            kv("user", quote(u));
        }
        if let Some(g) = &p.group {
            kv("group", quote(g));
        }
        kv("listen_mode", quote(&p.listen_mode));
        if let Some(g) = &p.listen_group {
            kv("listen_group", quote(g));
        }
        if let Some(c) = &p.chdir {
            kv("chdir", quote(c));
        }
        for (key, map) in [
            ("php_values", &p.php_values),
            ("php_admin_values", &p.php_admin_values),
            ("extra_settings", &p.extra),
        ] {
            if map.is_empty() {
                continue;
            }
            let _ = writeln!(out, "    {key}:");
            for (k, v) in map {
                let _ = writeln!(out, "      {}: {}", quote(k), quote(v));
            }
        }
        if !p.env.is_empty() {
            if include_secrets {
                push_comment(
                    &mut out,
                    4,
                    "env values may be secrets: keep this file mode 0600",
                );
                out.push_str("    env:\n");
                for (k, v) in &p.env {
                    let _ = writeln!(out, "      {}: {}", quote(k), quote(v));
                }
            } else {
                push_comment(
                    &mut out,
                    4,
                    &format!(
                        "env: {} are in env/{}.yaml (mode 0600), kept out of this file because they may be secrets",
                        p.env.keys().cloned().collect::<Vec<_>>().join(", "),
                        p.name
                    ),
                );
            }
        }
    }
    out.push('\n');
    push_comment(&mut out, 0, "Import notes:");
    for n in notes {
        push_comment(&mut out, 0, &format!("- {n}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::reader::{load_config, MemorySource, ReadOptions};

    const POOL: &str = "listen = /run/w.sock\npm = static\npm.max_children = 2\n";

    fn run(text: &str) -> Result<Imported, ImportError> {
        let src = MemorySource::new([("/etc/fpm.conf", text)]);
        let m = load_config(Path::new("/etc/fpm.conf"), &ReadOptions::default(), &src).unwrap();
        import(
            &m,
            &ImportOptions {
                runtime_dir: PathBuf::from("/var/lib/pm"),
                write_runtime_dir: true,
                include_secrets: false,
            },
        )
    }

    fn yaml(i: &Imported) -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&i.config_yaml).unwrap()
    }

    #[test]
    fn process_control_timeout_is_kept_raised_or_capped() {
        for (given, want, commented) in [
            ("", "10s", true),
            ("process_control_timeout = 0\n", "10s", true),
            ("process_control_timeout = 7\n", "7s", false),
            ("process_control_timeout = 2m\n", "120s", false),
            ("process_control_timeout = 2d\n", "3600s", false),
        ] {
            let i = run(&format!("[global]\n{given}[www]\n{POOL}")).unwrap();
            assert_eq!(
                yaml(&i)["phpfpm"]["process_control_timeout"].as_str(),
                Some(want),
                "{given}"
            );
            let has_comment = i
                .config_yaml
                .contains("# process_control_timeout: the imported value is 0");
            assert_eq!(has_comment, commented, "{given}");
        }
    }

    #[test]
    fn global_directives_are_kept_dropped_with_a_note_or_carried() {
        let i = run(&format!(
            "[global]\npid = /run/x.pid\ndaemonize = yes\nlog_level = WARNING\nrlimit_files = 1024\nevents.mechanism = epoll\n[www]\n{POOL}[api]\n{POOL}rlimit_files = 10\n"
        ))
        .unwrap();
        let y = yaml(&i);
        assert_eq!(y["phpfpm"]["log_level"].as_str(), Some("warning"));
        for dropped in ["global pid", "global daemonize", "global events.mechanism"] {
            assert!(
                i.notes.iter().any(|n| n.starts_with(dropped)),
                "{dropped}: {:?}",
                i.notes
            );
        }
        assert_eq!(
            y["pools"][0]["extra_settings"]["rlimit_files"].as_str(),
            Some("1024")
        );
        // A pool's own value wins over the carried global one.
        assert_eq!(
            y["pools"][1]["extra_settings"]["rlimit_files"].as_str(),
            Some("10")
        );
    }

    #[test]
    fn listen_forms() {
        for (listen, ok) in [
            ("/run/php/a.sock", true),
            ("127.0.0.1:9000", true),
            ("[::1]:9000", true),
            ("localhost:9000", true),
            ("9000", false),
            ("*:9000", false),
            ("run/a.sock", false),
            ("/run/../a.sock", false),
            ("127.0.0.1:0", false),
        ] {
            let r = run(&format!(
                "[www]\nlisten = {listen}\npm = static\npm.max_children = 1\n"
            ));
            assert_eq!(r.is_ok(), ok, "{listen}: {r:?}");
            if let Err(e) = r {
                assert!(
                    e.to_string().starts_with("/etc/fpm.conf:2: listen: "),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn pm_settings_and_php_fpm_defaults_are_written_out() {
        let i = run("[www]\nlisten = /run/w.sock\npm = dynamic\npm.max_children = 10\npm.min_spare_servers = 2\npm.max_spare_servers = 6\n").unwrap();
        let p = &yaml(&i)["pools"][0];
        // php-fpm's default start_servers: min + (max - min) / 2.
        assert_eq!(p["start_workers"].as_u64(), Some(4));
        // php-fpm's defaults, where the manager's would differ.
        assert_eq!(p["max_requests"].as_u64(), Some(0));
        assert_eq!(p["request_terminate_timeout"].as_str(), Some("0s"));
        assert_eq!(p["listen_mode"].as_str(), Some("0660"));
        let e = run("[www]\nlisten = /run/w.sock\npm = dynamic\npm.max_children = 4\npm.min_spare_servers = 2\npm.max_spare_servers = 6\n").unwrap_err();
        assert!(e.to_string().contains("<= max_children (4)"), "{e}");
        for (text, key) in [
            ("[www]\npm = static\npm.max_children = 1\n", "listen"),
            ("[www]\nlisten = /a\npm.max_children = 1\n", "pm"),
            ("[www]\nlisten = /a\npm = static\n", "pm.max_children"),
            (
                "[www]\nlisten = /a\npm = dynamic\npm.max_children = 3\n",
                "pm.min_spare_servers",
            ),
        ] {
            let e = run(text).unwrap_err();
            assert!(
                matches!(&e, ImportError::Missing { key: k, .. } if k == key),
                "{e}"
            );
        }
        assert!(matches!(
            run("[global]\npid = /x\n"),
            Err(ImportError::NoPools(_))
        ));
    }

    #[test]
    fn flags_values_and_overrides() {
        let i = run(&format!(
            "[www]\n{POOL}php_flag[display_errors] = off\nphp_admin_flag[log_errors] = \"yes\"\nphp_value[memory_limit] = 64M\nphp_value[memory_limit] = 128M\nclear_env = off\nprocess.dumpable = 1\n"
        ))
        .unwrap();
        let p = &yaml(&i)["pools"][0];
        assert_eq!(p["php_values"]["display_errors"].as_str(), Some("0"));
        assert_eq!(p["php_admin_values"]["log_errors"].as_str(), Some("1"));
        assert_eq!(p["php_values"]["memory_limit"].as_str(), Some("64M"));
        assert_eq!(p["extra_settings"]["clear_env"].as_str(), Some("no"));
        assert_eq!(
            p["extra_settings"]["process.dumpable"].as_str(),
            Some("yes")
        );
        assert!(
            i.notes.iter().any(|n| n.contains(
                "php_value[memory_limit] at /etc/fpm.conf:8 is ignored: it is already set at /etc/fpm.conf:7"
            )),
            "{:?}",
            i.notes
        );
        assert!(run(&format!("[www]\n{POOL}php_flag[x] = maybe\n")).is_err());
    }

    #[test]
    fn values_the_pool_file_would_change_are_refused_with_the_place() {
        for line in [
            "access.format = \"%R \\\"%m %r\\\" %s\"",
            "php_value[x] = \"on\"",
            "php_value[x] = 'E_ALL'",
            "php_value[x] = 'a\\\\b'",
            "php_value[x] = 'ends\\'",
            "php_value[bad key] = 1",
            "user = \"a b\"",
            "chdir = relative/dir",
            "foo[x] = 1",
        ] {
            let e = run(&format!("[www]\n{POOL}{line}\n")).expect_err(line);
            assert!(
                e.to_string().starts_with("/etc/fpm.conf:5: "),
                "{line}: {e}"
            );
        }
        // Expansions and ordinary backslashes are carried.
        let i = run(&format!(
            "[www]\n{POOL}php_value[a] = \"${{HOME}}/x\"\nphp_value[b] = 'C:\\tmp'\n"
        ))
        .unwrap();
        let p = &yaml(&i)["pools"][0];
        assert_eq!(p["php_values"]["a"].as_str(), Some("${HOME}/x"));
        assert_eq!(p["php_values"]["b"].as_str(), Some("C:\\tmp"));
        assert!(i.pool_files[0].1.contains("php_value[a] = \"${HOME}/x\"\n"));
    }

    #[test]
    fn unknown_pool_directives_are_carried_with_a_note() {
        let i = run(&format!("[www]\n{POOL}pm.new_thing = 3\n")).unwrap();
        assert_eq!(
            yaml(&i)["pools"][0]["extra_settings"]["pm.new_thing"].as_str(),
            Some("3")
        );
        assert!(i
            .notes
            .iter()
            .any(|n| n
                .contains("pm.new_thing (/etc/fpm.conf:5) is not a php-fpm 8.2 pool directive")));
    }

    #[test]
    fn runtime_dir_must_be_absolute_and_clean() {
        let src = MemorySource::new([("/f", format!("[www]\n{POOL}"))]);
        let m = load_config(Path::new("/f"), &ReadOptions::default(), &src).unwrap();
        for bad in ["rel", "/a/../b", "/a\"b"] {
            let o = ImportOptions {
                runtime_dir: PathBuf::from(bad),
                write_runtime_dir: true,
                include_secrets: false,
            };
            assert!(
                matches!(import(&m, &o), Err(ImportError::RuntimeDir { .. })),
                "{bad}"
            );
        }
    }
}
