//! Rendering of the php-fpm configuration files the supervisor writes.
//!
//! The layout gives every pool its own php-fpm master, so a change to one pool
//! never reloads another pool or flushes its OPcache (facts 1 and 2):
//!
//! ```text
//! <runtime>/php-fpm.conf        [global] settings shared by every master
//! <runtime>/pools.d/<pool>.conf the pool section
//! <runtime>/masters/<pool>.conf what `php-fpm -y` is given: includes the two
//!                               files above and sets this master's pid file
//! ```
//!
//! Everything here returns text; writing the files is the supervisor's job.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::PoolName;

/// php-fpm's process manager modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmMode {
    Static,
    Dynamic,
    Ondemand,
}

impl PmMode {
    /// The value php-fpm expects for `pm`.
    pub fn as_str(self) -> &'static str {
        match self {
            PmMode::Static => "static",
            PmMode::Dynamic => "dynamic",
            PmMode::Ondemand => "ondemand",
        }
    }
}

/// Global settings shared by every master the manager runs.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalSpec {
    /// Seconds a worker gets to finish its request on reload or stop. Must be
    /// above 0, or reloads cut requests in flight (fact 3).
    pub process_control_timeout_secs: u64,
    pub log_level: String,
}

/// Everything needed to render one pool section. Paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: PoolName,
    /// Unix socket path or `host:port` the pool listens on.
    pub listen: String,
    /// Separate listener answering only the status page (fact 8).
    pub status_listen: Option<String>,
    pub status_path: String,
    pub ping_path: String,
    /// `ping.response`: what the ping page answers ("pong" by default).
    pub ping_response: String,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Octal mode of the unix socket, for example `0660`.
    pub listen_mode: String,
    pub pm: PmMode,
    pub max_children: u32,
    pub start_servers: u32,
    pub min_spare_servers: u32,
    pub max_spare_servers: u32,
    pub max_requests: u32,
    pub process_idle_timeout_secs: u64,
    pub request_terminate_timeout_secs: u64,
    pub chdir: Option<PathBuf>,
    pub php_values: Vec<(String, String)>,
    pub php_admin_values: Vec<(String, String)>,
    /// Any other pool directive, written as `key = value` after the managed
    /// ones (for example `slowlog`, `request_slowlog_timeout`,
    /// `security.limit_extensions`). Keys the manager sets itself are refused
    /// by config validation.
    pub extra: Vec<(String, String)>,
    /// `env[NAME] = value`. Values can be secrets: they are written to the
    /// pool file only, never to logs, metrics or storage.
    pub env: Vec<(String, String)>,
}

/// Why a spec cannot be rendered into a config php-fpm would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{field} {value:?} contains a newline, '\"' or a NUL byte, which php-fpm's ini format cannot hold")]
    Unrepresentable { field: String, value: String },
    #[error("ini key {0:?} must be made of letters, digits, '_' and '.'")]
    BadKey(String),
}

/// Renders `php-fpm.conf`.
pub fn render_global(spec: &GlobalSpec) -> String {
    let mut out = String::new();
    out.push_str("; Written by phpfpm-manager; edits are overwritten.\n[global]\n");
    // php-fpm runs in the foreground as the manager's child; its log goes to
    // the manager through stderr, where each line is tagged with the pool.
    out.push_str("error_log = /proc/self/fd/2\n");
    out.push_str("daemonize = no\n");
    let _ = writeln!(out, "log_level = {}", spec.log_level);
    let _ = writeln!(
        out,
        "process_control_timeout = {}s",
        spec.process_control_timeout_secs.max(1)
    );
    out
}

/// Renders `masters/<pool>.conf`, the file `php-fpm -y` is started with.
pub fn render_master(global_conf: &str, pool_conf: &str, pid_file: &str) -> String {
    format!(
        "; Written by phpfpm-manager; edits are overwritten.\n\
         include = {global_conf}\n\
         include = {pool_conf}\n\
         [global]\n\
         pid = {pid_file}\n"
    )
}

/// Renders `pools.d/<pool>.conf`.
pub fn render_pool(spec: &PoolSpec) -> Result<String, RenderError> {
    let mut out = String::new();
    out.push_str("; Written by phpfpm-manager; edits are overwritten.\n");
    let _ = writeln!(out, "[{}]", spec.name);
    let mut line = |key: &str, value: &str| -> Result<(), RenderError> {
        check_value(key, value)?;
        let _ = writeln!(out, "{key} = {}", quote(value));
        Ok(())
    };
    if let Some(user) = &spec.user {
        line("user", user)?;
    }
    if let Some(group) = &spec.group {
        line("group", group)?;
    }
    line("listen", &spec.listen)?;
    line("listen.mode", &spec.listen_mode)?;
    line("pm", spec.pm.as_str())?;
    line("pm.max_children", &spec.max_children.to_string())?;
    if spec.pm == PmMode::Dynamic {
        line("pm.start_servers", &spec.start_servers.to_string())?;
        line("pm.min_spare_servers", &spec.min_spare_servers.to_string())?;
        line("pm.max_spare_servers", &spec.max_spare_servers.to_string())?;
    }
    if spec.pm == PmMode::Ondemand {
        line(
            "pm.process_idle_timeout",
            &format!("{}s", spec.process_idle_timeout_secs),
        )?;
    }
    line("pm.max_requests", &spec.max_requests.to_string())?;
    line("pm.status_path", &spec.status_path)?;
    if let Some(status_listen) = &spec.status_listen {
        line("pm.status_listen", status_listen)?;
    }
    line("ping.path", &spec.ping_path)?;
    line("ping.response", &spec.ping_response)?;
    line(
        "request_terminate_timeout",
        &format!("{}s", spec.request_terminate_timeout_secs),
    )?;
    // Worker output reaches the master's stderr, hence the manager's log.
    line("catch_workers_output", "yes")?;
    line("decorate_workers_output", "no")?;
    if let Some(chdir) = &spec.chdir {
        line("chdir", &chdir.to_string_lossy())?;
    }
    for (k, v) in &spec.extra {
        check_key(k)?;
        line(k, v)?;
    }
    for (kind, pairs) in [
        ("php_value", &spec.php_values),
        ("php_admin_value", &spec.php_admin_values),
        ("env", &spec.env),
    ] {
        for (k, v) in pairs {
            check_key(k)?;
            line(&format!("{kind}[{k}]"), v)?;
        }
    }
    Ok(out)
}

fn check_value(field: &str, value: &str) -> Result<(), RenderError> {
    if value.contains(['\n', '\r', '"', '\0']) {
        // Do not echo env values back: they may be secrets.
        let shown = if field.starts_with("env[") {
            "<redacted>".to_owned()
        } else {
            value.to_owned()
        };
        return Err(RenderError::Unrepresentable {
            field: field.to_owned(),
            value: shown,
        });
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), RenderError> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(RenderError::BadKey(key.to_owned()));
    }
    Ok(())
}

/// Quotes values that php-fpm's ini parser would otherwise reinterpret
/// (`;` starts a comment, `$` and `{` expand, spaces are trimmed). An
/// expression of PHP constants (`E_ALL & ~E_DEPRECATED`) stays bare: quoted,
/// PHP would receive the text and read it as the number 0.
fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-:@,".contains(c));
    if plain || is_constant_expression(value) {
        value.to_owned()
    } else {
        format!("\"{value}\"")
    }
}

/// `E_ALL & ~E_DEPRECATED`, `~E_NOTICE`, `(E_ALL | E_STRICT)`: upper-case
/// constants joined by php.ini's bitwise operators.
pub fn is_constant_expression(value: &str) -> bool {
    let ops = |c: char| " &|^~!()".contains(c);
    value.chars().any(|c| c.is_ascii_uppercase())
        && value.chars().any(ops)
        && value
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || ops(c))
        && value
            .split(ops)
            .filter(|w| !w.is_empty())
            .all(|w| w.starts_with(|c: char| c.is_ascii_uppercase() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PoolSpec {
        PoolSpec {
            name: PoolName::new("www").unwrap(),
            listen: "/run/m/sockets/www.sock".into(),
            status_listen: Some("/run/m/sockets/www.status.sock".into()),
            status_path: "/status".into(),
            ping_path: "/ping".into(),
            ping_response: "pong".into(),
            user: Some("www-data".into()),
            group: Some("www-data".into()),
            listen_mode: "0660".into(),
            pm: PmMode::Dynamic,
            max_children: 8,
            start_servers: 2,
            min_spare_servers: 1,
            max_spare_servers: 3,
            max_requests: 500,
            process_idle_timeout_secs: 10,
            request_terminate_timeout_secs: 60,
            chdir: None,
            php_values: vec![
                ("memory_limit".into(), "128M".into()),
                ("error_reporting".into(), "E_ALL & ~E_DEPRECATED".into()),
            ],
            php_admin_values: vec![("error_log".into(), "/var/log/x y.log".into())],
            extra: vec![("request_slowlog_timeout".into(), "5s".into())],
            env: vec![("DB_PASSWORD".into(), "s3cr;et".into())],
        }
    }

    #[test]
    fn pool_file_has_every_setting() {
        let text = render_pool(&spec()).unwrap();
        for want in [
            "[www]\n",
            "listen = /run/m/sockets/www.sock\n",
            "pm = dynamic\n",
            "pm.max_children = 8\n",
            "pm.start_servers = 2\n",
            "pm.status_listen = /run/m/sockets/www.status.sock\n",
            "php_value[memory_limit] = 128M\n",
            "php_admin_value[error_log] = \"/var/log/x y.log\"\n",
            "env[DB_PASSWORD] = \"s3cr;et\"\n",
            "request_slowlog_timeout = 5s\n",
            "php_value[error_reporting] = E_ALL & ~E_DEPRECATED\n",
            "ping.response = pong\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("process_idle_timeout"));
    }

    #[test]
    fn static_pool_has_no_spare_settings() {
        let mut s = spec();
        s.pm = PmMode::Static;
        let text = render_pool(&s).unwrap();
        assert!(!text.contains("spare"));
        assert!(text.contains("pm = static\n"));
    }

    #[test]
    fn injection_is_refused_and_secrets_are_not_echoed() {
        let mut s = spec();
        s.env = vec![("TOKEN".into(), "abc\npm.max_children = 999".into())];
        let err = render_pool(&s).unwrap_err();
        assert!(!err.to_string().contains("abc"), "{err}");
        let mut s = spec();
        s.php_values = vec![("x]\n[evil".into(), "1".into())];
        assert!(matches!(render_pool(&s), Err(RenderError::BadKey(_))));
    }

    #[test]
    fn constant_expressions() {
        for yes in [
            "E_ALL & ~E_DEPRECATED",
            "~E_NOTICE",
            "(E_ALL | E_STRICT) & ~E_DEPRECATED",
        ] {
            assert!(is_constant_expression(yes), "{yes}");
        }
        for no in ["E_ALL", "hello world", "a & b", "128M", "E_ALL & 1x", ""] {
            assert!(!is_constant_expression(no), "{no}");
        }
    }

    #[test]
    fn global_never_has_a_zero_control_timeout() {
        let text = render_global(&GlobalSpec {
            process_control_timeout_secs: 0,
            log_level: "notice".into(),
        });
        assert!(text.contains("process_control_timeout = 1s\n"));
        assert!(text.contains("daemonize = no\n"));
    }
}
