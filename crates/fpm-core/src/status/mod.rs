//! The php-fpm status page (`?json&full`) and ping reply, parsed into typed values.
//!
//! Input is the raw FastCGI stdout of the request (CGI headers, blank line,
//! body). The parser checks the CGI status and content type first, so an
//! "Access denied." or "File not found." page is reported as such rather than
//! as a JSON syntax error.
//!
//! Counts php-fpm prints itself can be wrong (fact 11), so [`PoolStatus::derived`]
//! recomputes idle/active/total from the process list, and leaves out the
//! collector's own status request when it went through the pool's main socket.

mod scan;

use scan::Value;

/// Why a status or ping reply could not be used. Each variant is a stable
/// kind for the `phpfpm_manager_scrape_errors_total{kind=...}` metric.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("empty reply from php-fpm")]
    Empty,
    #[error("php-fpm answered with HTTP status {code}: {body}")]
    HttpStatus { code: u16, body: String },
    #[error("status page is {content_type}, not JSON; request it with ?json&full")]
    NotJson { content_type: String },
    #[error("status page is truncated at byte {offset}: {what}")]
    Truncated { offset: usize, what: String },
    #[error("status page is malformed at byte {offset}: {what}")]
    Malformed { offset: usize, what: String },
    #[error("status field {key:?} has an invalid value {value:?}")]
    BadField { key: String, value: String },
    #[error("status page lacks the field {0:?}")]
    MissingField(&'static str),
    #[error("ping reply is {0:?}, expected the configured ping response")]
    BadPing(String),
}

impl ParseError {
    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::HttpStatus { .. } => "http_status",
            ParseError::NotJson { .. } => "not_json",
            ParseError::Truncated { .. } => "truncated",
            ParseError::Malformed { .. } | ParseError::BadField { .. } => "malformed",
            ParseError::MissingField(_) => "missing_field",
            ParseError::BadPing(_) => "bad_ping",
        }
    }
}

/// One pool's status as php-fpm printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    pub pool: String,
    pub process_manager: String,
    /// Unix time the pool (master) started; changes on every reload.
    pub start_time: u64,
    pub start_since: u64,
    pub accepted_conn: u64,
    pub listen_queue: u64,
    pub max_listen_queue: u64,
    pub listen_queue_len: u64,
    /// php-fpm's own counts, kept to be reported beside the derived ones.
    pub idle_processes: u64,
    pub active_processes: u64,
    pub total_processes: u64,
    pub max_active_processes: u64,
    pub max_children_reached: u64,
    pub slow_requests: u64,
    /// Only printed by PHP >= 8.4.
    pub memory_peak: Option<u64>,
    pub processes: Vec<ProcessStatus>,
}

/// One worker's line in the full status.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStatus {
    pub pid: u32,
    pub state: ProcessState,
    pub start_time: u64,
    pub start_since: u64,
    pub requests: u64,
    /// Microseconds (fact 13).
    pub request_duration_us: u64,
    pub request_method: String,
    pub request_uri: String,
    pub content_length: u64,
    pub user: String,
    pub script: String,
    /// Percent; only meaningful when Idle, tick noise below ~50 ms (fact 12).
    pub last_request_cpu: f64,
    /// PHP allocator peak in bytes, not RSS (fact 12).
    pub last_request_memory: u64,
}

/// A worker's request stage. Every state but `Idle` counts as busy (fact 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    Idle,
    Running,
    ReadingHeaders,
    /// "Getting request informations" before PHP 7.4, "information" after.
    GettingRequestInfo,
    Finishing,
    Ending,
    Creating,
    /// A state this version does not know; counted as busy.
    Other(String),
}

impl ProcessState {
    /// Maps php-fpm's text to a state.
    pub fn parse(s: &str) -> ProcessState {
        match s {
            "Idle" => ProcessState::Idle,
            "Running" => ProcessState::Running,
            "Reading headers" => ProcessState::ReadingHeaders,
            "Getting request informations" | "Getting request information" => {
                ProcessState::GettingRequestInfo
            }
            "Finishing" => ProcessState::Finishing,
            "Ending" => ProcessState::Ending,
            "Creating" => ProcessState::Creating,
            other => ProcessState::Other(other.to_owned()),
        }
    }

    /// The label used in metrics (`phpfpm_process_state{state=...}`).
    pub fn as_str(&self) -> &str {
        match self {
            ProcessState::Idle => "Idle",
            ProcessState::Running => "Running",
            ProcessState::ReadingHeaders => "Reading headers",
            ProcessState::GettingRequestInfo => "Getting request information",
            ProcessState::Finishing => "Finishing",
            ProcessState::Ending => "Ending",
            ProcessState::Creating => "Creating",
            ProcessState::Other(s) => s,
        }
    }

    /// Is the worker unavailable for a new request?
    pub fn is_busy(&self) -> bool {
        !matches!(self, ProcessState::Idle)
    }
}

/// Worker counts recomputed from the process list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Derived {
    pub idle: u64,
    pub active: u64,
    pub total: u64,
}

impl PoolStatus {
    /// Idle/active/total from the process list. A worker whose `request uri`
    /// contains `probe_marker` is serving the collector's own status request:
    /// it is counted as idle, since it is free the moment the reply is sent.
    pub fn derived(&self, probe_marker: Option<&str>) -> Derived {
        let mut d = Derived::default();
        for p in &self.processes {
            let own = probe_marker.is_some_and(|m| !m.is_empty() && p.request_uri.contains(m));
            if p.state.is_busy() && !own {
                d.active += 1;
            } else {
                d.idle += 1;
            }
        }
        d.total = d.idle + d.active;
        d
    }
}

/// Parses the FastCGI stdout of a `?json&full` status request.
pub fn parse_status(stdout: &[u8]) -> Result<PoolStatus, ParseError> {
    let body = check_cgi(stdout, true)?;
    let obj = scan::parse(body)?;
    let mut st = PoolStatus {
        pool: String::new(),
        process_manager: String::new(),
        start_time: 0,
        start_since: 0,
        accepted_conn: 0,
        listen_queue: 0,
        max_listen_queue: 0,
        listen_queue_len: 0,
        idle_processes: 0,
        active_processes: 0,
        total_processes: 0,
        max_active_processes: 0,
        max_children_reached: 0,
        slow_requests: 0,
        memory_peak: None,
        processes: Vec::new(),
    };
    let mut seen_pool = false;
    let mut seen_accepted = false;
    for (key, value) in &obj {
        match *key {
            "pool" => {
                st.pool = text(key, value)?;
                seen_pool = true;
            }
            "process manager" => st.process_manager = text(key, value)?,
            "start time" => st.start_time = uint(key, value)?,
            "start since" => st.start_since = uint(key, value)?,
            "accepted conn" => {
                st.accepted_conn = uint(key, value)?;
                seen_accepted = true;
            }
            "listen queue" => st.listen_queue = uint(key, value)?,
            "max listen queue" => st.max_listen_queue = uint(key, value)?,
            "listen queue len" => st.listen_queue_len = uint(key, value)?,
            "idle processes" => st.idle_processes = uint(key, value)?,
            "active processes" => st.active_processes = uint(key, value)?,
            "total processes" => st.total_processes = uint(key, value)?,
            "max active processes" => st.max_active_processes = uint(key, value)?,
            "max children reached" => st.max_children_reached = uint(key, value)?,
            "slow requests" => st.slow_requests = uint(key, value)?,
            "memory peak" => st.memory_peak = Some(uint(key, value)?),
            "processes" => match value {
                Value::List(items) => {
                    st.processes = items.iter().map(|o| process(o)).collect::<Result<_, _>>()?
                }
                _ => return Err(bad(key, value)),
            },
            // Newer php-fpm versions may add fields; they are not an error.
            _ => {}
        }
    }
    if !seen_pool {
        return Err(ParseError::MissingField("pool"));
    }
    if !seen_accepted {
        return Err(ParseError::MissingField("accepted conn"));
    }
    Ok(st)
}

/// Checks a ping reply against the expected response text (php-fpm's
/// `ping.response`, "pong" by default).
pub fn parse_ping(stdout: &[u8], expected: &str) -> Result<(), ParseError> {
    let body = check_cgi(stdout, false)?;
    if body.trim() == expected {
        Ok(())
    } else {
        Err(ParseError::BadPing(snippet(body)))
    }
}

fn process(obj: &[(&str, Value<'_>)]) -> Result<ProcessStatus, ParseError> {
    let mut p = ProcessStatus {
        pid: 0,
        state: ProcessState::Other(String::new()),
        start_time: 0,
        start_since: 0,
        requests: 0,
        request_duration_us: 0,
        request_method: String::new(),
        request_uri: String::new(),
        content_length: 0,
        user: String::new(),
        script: String::new(),
        last_request_cpu: 0.0,
        last_request_memory: 0,
    };
    let mut seen_pid = false;
    let mut seen_state = false;
    for (key, value) in obj {
        match *key {
            "pid" => {
                p.pid = u32::try_from(uint(key, value)?).map_err(|_| bad(key, value))?;
                seen_pid = true;
            }
            "state" => {
                p.state = ProcessState::parse(&text(key, value)?);
                seen_state = true;
            }
            "start time" => p.start_time = uint(key, value)?,
            "start since" => p.start_since = uint(key, value)?,
            "requests" => p.requests = uint(key, value)?,
            "request duration" => p.request_duration_us = uint(key, value)?,
            "request method" => p.request_method = text(key, value)?,
            "request uri" => p.request_uri = text(key, value)?,
            "content length" => p.content_length = uint(key, value)?,
            "user" => p.user = text(key, value)?,
            "script" => p.script = text(key, value)?,
            "last request cpu" => p.last_request_cpu = float(key, value)?,
            "last request memory" => p.last_request_memory = uint(key, value)?,
            _ => {}
        }
    }
    if !seen_pid {
        return Err(ParseError::MissingField("pid"));
    }
    if !seen_state {
        return Err(ParseError::MissingField("state"));
    }
    Ok(p)
}

fn bad(key: &str, value: &Value<'_>) -> ParseError {
    let shown = match value {
        Value::Num(n) => (*n).to_owned(),
        Value::Str(s) => snippet(s),
        Value::List(_) => "[...]".to_owned(),
    };
    ParseError::BadField {
        key: key.to_owned(),
        value: shown,
    }
}

fn uint(key: &str, value: &Value<'_>) -> Result<u64, ParseError> {
    match value {
        Value::Num(n) => n.parse().map_err(|_| bad(key, value)),
        _ => Err(bad(key, value)),
    }
}

fn float(key: &str, value: &Value<'_>) -> Result<f64, ParseError> {
    match value {
        Value::Num(n) => match n.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(f),
            _ => Err(bad(key, value)),
        },
        _ => Err(bad(key, value)),
    }
}

fn text(key: &str, value: &Value<'_>) -> Result<String, ParseError> {
    match value {
        Value::Str(s) => Ok(s.clone()),
        _ => Err(bad(key, value)),
    }
}

/// At most 120 characters of a body, for error messages.
fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Splits CGI headers from the body and rejects error pages.
fn check_cgi(stdout: &[u8], want_json: bool) -> Result<&str, ParseError> {
    if stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::Empty);
    }
    let text = std::str::from_utf8(stdout).map_err(|e| ParseError::Malformed {
        offset: e.valid_up_to(),
        what: "reply is not UTF-8".to_owned(),
    })?;
    let (head, body) = match (text.find("\r\n\r\n"), text.find("\n\n")) {
        (Some(a), Some(b)) if b < a => (&text[..b], &text[b + 2..]),
        (Some(a), _) => (&text[..a], &text[a + 4..]),
        (None, Some(b)) => (&text[..b], &text[b + 2..]),
        // No header block: php-fpm always sends one, so this is a cut reply.
        (None, None) => {
            return Err(ParseError::Truncated {
                offset: text.len(),
                what: "no end of CGI headers".to_owned(),
            })
        }
    };
    let mut content_type = None;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0);
            if code != 200 {
                return Err(ParseError::HttpStatus {
                    code,
                    body: snippet(body),
                });
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_ascii_lowercase());
        }
    }
    if want_json {
        match content_type {
            Some(ct) if ct.starts_with("application/json") => {}
            Some(ct) => return Err(ParseError::NotJson { content_type: ct }),
            None => {}
        }
        if body.trim().is_empty() {
            return Err(ParseError::Empty);
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
