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
///
/// A bad *value* is not among them: it is dropped and reported in
/// [`PoolStatus::dropped`], and the rest of the page is kept.
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
            ParseError::Malformed { .. } => "malformed",
            ParseError::MissingField(_) => "missing_field",
            ParseError::BadPing(_) => "bad_ping",
        }
    }
}

/// Why one value of the status page was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// A count printed below zero (`"requests":-3`).
    Negative,
    /// A count above `u64::MAX`, a pid above `u32::MAX` or 0, an infinite float.
    OutOfRange,
    /// A count that is not a whole number (`1.5`, `1e3`).
    NotAnInteger,
    /// A float that does not parse.
    NotANumber,
    /// Text where a number belongs, a number where text belongs, `null`, ...
    WrongType,
    /// A worker entry without its `pid` or `state`.
    Missing,
}

impl DropReason {
    /// The label used in `phpfpm_manager_status_fields_dropped_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Negative => "negative",
            DropReason::OutOfRange => "out_of_range",
            DropReason::NotAnInteger => "not_an_integer",
            DropReason::NotANumber => "not_a_number",
            DropReason::WrongType => "wrong_type",
            DropReason::Missing => "missing",
        }
    }
}

/// Values left out of one status page, counted by field and reason.
///
/// `field` is php-fpm's key (`"accepted conn"`); a worker's key is prefixed
/// `processes.` (`"processes.requests"`). A worker entry whose `pid` or
/// `state` is unusable is left out whole and counted under that key; any
/// other bad value leaves its field at its zero value, listed in
/// [`ProcessStatus::dropped`] (worker) or here (pool), until
/// [`PoolStatus::carry_forward`] fills it from the previous page.
/// Only known keys can be dropped, so `field` has a bounded set of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub field: &'static str,
    pub reason: DropReason,
    pub count: u64,
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
    /// Values of this page that were unusable and left out (see [`Dropped`]).
    pub dropped: Vec<Dropped>,
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
    /// Keys of this entry whose values were unusable; they hold zero values
    /// (or, after [`PoolStatus::carry_forward`], the previous page's).
    pub dropped: Vec<&'static str>,
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

/// Pool-level keys that are "since start" counters (fact 13), and the
/// worker key that is one: deltas over a look where one was dropped are wrong.
const COUNTER_FIELDS: &[&str] = &[
    "start time",
    "accepted conn",
    "max children reached",
    "slow requests",
    "processes.requests",
];

impl PoolStatus {
    /// Whether a since-start counter was dropped from this page: a caller
    /// computing deltas should skip this look rather than see a reset.
    pub fn counters_dropped(&self) -> bool {
        self.dropped
            .iter()
            .any(|d| COUNTER_FIELDS.contains(&d.field))
    }

    /// Fills the values dropped from this page with those of `prev`, the
    /// previous good page of the same pool: pool-level fields as they were,
    /// a worker's fields from the worker with the same pid. A dropped value
    /// with nothing to fill it from keeps its zero value. [`Self::dropped`]
    /// still says what this page lacked.
    pub fn carry_forward(&mut self, prev: Option<&PoolStatus>) {
        let Some(prev) = prev else { return };
        let pool_fields: Vec<&'static str> = self
            .dropped
            .iter()
            .map(|d| d.field)
            .filter(|f| !f.starts_with("processes."))
            .collect();
        for field in pool_fields {
            copy_pool_field(self, prev, field);
        }
        if self.processes.iter().all(|p| p.dropped.is_empty()) {
            return;
        }
        let by_pid: std::collections::HashMap<u32, &ProcessStatus> =
            prev.processes.iter().map(|p| (p.pid, p)).collect();
        for p in &mut self.processes {
            if p.dropped.is_empty() {
                continue;
            }
            if let Some(old) = by_pid.get(&p.pid) {
                for field in p.dropped.clone() {
                    copy_process_field(p, old, field);
                }
            }
        }
    }
}

fn copy_pool_field(to: &mut PoolStatus, from: &PoolStatus, field: &str) {
    match field {
        "pool" => to.pool.clone_from(&from.pool),
        "process manager" => to.process_manager.clone_from(&from.process_manager),
        "start time" => to.start_time = from.start_time,
        "start since" => to.start_since = from.start_since,
        "accepted conn" => to.accepted_conn = from.accepted_conn,
        "listen queue" => to.listen_queue = from.listen_queue,
        "max listen queue" => to.max_listen_queue = from.max_listen_queue,
        "listen queue len" => to.listen_queue_len = from.listen_queue_len,
        "idle processes" => to.idle_processes = from.idle_processes,
        "active processes" => to.active_processes = from.active_processes,
        "total processes" => to.total_processes = from.total_processes,
        "max active processes" => to.max_active_processes = from.max_active_processes,
        "max children reached" => to.max_children_reached = from.max_children_reached,
        "slow requests" => to.slow_requests = from.slow_requests,
        "memory peak" => to.memory_peak = from.memory_peak,
        _ => {}
    }
}

fn copy_process_field(to: &mut ProcessStatus, from: &ProcessStatus, field: &str) {
    match field {
        "start time" => to.start_time = from.start_time,
        "start since" => to.start_since = from.start_since,
        "requests" => to.requests = from.requests,
        "request duration" => to.request_duration_us = from.request_duration_us,
        "request method" => to.request_method.clone_from(&from.request_method),
        "request uri" => to.request_uri.clone_from(&from.request_uri),
        "content length" => to.content_length = from.content_length,
        "user" => to.user.clone_from(&from.user),
        "script" => to.script.clone_from(&from.script),
        "last request cpu" => to.last_request_cpu = from.last_request_cpu,
        "last request memory" => to.last_request_memory = from.last_request_memory,
        _ => {}
    }
}

/// Counts drops by (field, reason) while a page is read; the list stays as
/// short as the set of known keys, however many workers a page holds.
#[derive(Default)]
struct Drops(Vec<Dropped>);

impl Drops {
    fn add(&mut self, field: &'static str, reason: DropReason) {
        match self
            .0
            .iter_mut()
            .find(|d| d.field == field && d.reason == reason)
        {
            Some(d) => d.count += 1,
            None => self.0.push(Dropped {
                field,
                reason,
                count: 1,
            }),
        }
    }
}

/// Parses the FastCGI stdout of a `?json&full` status request.
///
/// The page must be php-fpm's status page: CGI status 200, JSON content, an
/// object with `pool` and `accepted conn`. Within it, a value that cannot be
/// used (a negative count, one above `u64::MAX`, text for a number) is
/// dropped and counted in [`PoolStatus::dropped`]; everything else is kept.
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
        dropped: Vec::new(),
    };
    let mut drops = Drops::default();
    let mut seen_pool = false;
    let mut seen_accepted = false;
    for (key, value) in &obj {
        let Some(field) = pool_key(key) else {
            // Newer php-fpm versions may add fields; they are not an error.
            continue;
        };
        seen_pool |= field == "pool";
        seen_accepted |= field == "accepted conn";
        let res = match field {
            "pool" => text(value).map(|v| st.pool = v),
            "process manager" => text(value).map(|v| st.process_manager = v),
            "start time" => uint(value).map(|v| st.start_time = v),
            "start since" => uint(value).map(|v| st.start_since = v),
            "accepted conn" => uint(value).map(|v| st.accepted_conn = v),
            "listen queue" => uint(value).map(|v| st.listen_queue = v),
            "max listen queue" => uint(value).map(|v| st.max_listen_queue = v),
            "listen queue len" => uint(value).map(|v| st.listen_queue_len = v),
            "idle processes" => uint(value).map(|v| st.idle_processes = v),
            "active processes" => uint(value).map(|v| st.active_processes = v),
            "total processes" => uint(value).map(|v| st.total_processes = v),
            "max active processes" => uint(value).map(|v| st.max_active_processes = v),
            "max children reached" => uint(value).map(|v| st.max_children_reached = v),
            "slow requests" => uint(value).map(|v| st.slow_requests = v),
            "memory peak" => uint(value).map(|v| st.memory_peak = Some(v)),
            _ => match value {
                // "processes"
                Value::List(items) => {
                    st.processes = items
                        .iter()
                        .filter_map(|o| process(o, &mut drops))
                        .collect();
                    Ok(())
                }
                _ => Err(DropReason::WrongType),
            },
        };
        if let Err(reason) = res {
            drops.add(field, reason);
        }
    }
    if !seen_pool {
        return Err(ParseError::MissingField("pool"));
    }
    if !seen_accepted {
        return Err(ParseError::MissingField("accepted conn"));
    }
    st.dropped = drops.0;
    Ok(st)
}

/// The `'static` name of a pool-level key php-fpm prints, or `None`.
fn pool_key(key: &str) -> Option<&'static str> {
    scan::POOL_KEYS.iter().copied().find(|k| *k == key)
}

/// A worker key, as the `'static` label it is counted under and its bare name.
fn process_key(key: &str) -> Option<(&'static str, &'static str)> {
    const KEYS: &[(&str, &str)] = &[
        ("processes.pid", "pid"),
        ("processes.state", "state"),
        ("processes.start time", "start time"),
        ("processes.start since", "start since"),
        ("processes.requests", "requests"),
        ("processes.request duration", "request duration"),
        ("processes.request method", "request method"),
        ("processes.request uri", "request uri"),
        ("processes.content length", "content length"),
        ("processes.user", "user"),
        ("processes.script", "script"),
        ("processes.last request cpu", "last request cpu"),
        ("processes.last request memory", "last request memory"),
    ];
    KEYS.iter().copied().find(|(_, k)| *k == key)
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

/// One worker entry; `None` (counted) when its pid or state is unusable:
/// without them the entry can be neither counted nor told apart.
fn process(obj: &[(&str, Value<'_>)], drops: &mut Drops) -> Option<ProcessStatus> {
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
        dropped: Vec::new(),
    };
    let mut pid = Err(DropReason::Missing);
    let mut state = Err(DropReason::Missing);
    let mut bad: Vec<(&'static str, &'static str, DropReason)> = Vec::new();
    for (key, value) in obj {
        let Some((label, field)) = process_key(key) else {
            continue;
        };
        let res = match field {
            "pid" => {
                pid = uint(value).and_then(|v| match u32::try_from(v) {
                    Ok(0) | Err(_) => Err(DropReason::OutOfRange),
                    Ok(v) => Ok(v),
                });
                Ok(())
            }
            "state" => {
                state = text(value).map(|s| ProcessState::parse(&s));
                Ok(())
            }
            "start time" => uint(value).map(|v| p.start_time = v),
            "start since" => uint(value).map(|v| p.start_since = v),
            "requests" => uint(value).map(|v| p.requests = v),
            "request duration" => uint(value).map(|v| p.request_duration_us = v),
            "request method" => text(value).map(|v| p.request_method = v),
            "request uri" => text(value).map(|v| p.request_uri = v),
            "content length" => uint(value).map(|v| p.content_length = v),
            "user" => text(value).map(|v| p.user = v),
            "script" => text(value).map(|v| p.script = v),
            "last request cpu" => float(value).map(|v| p.last_request_cpu = v),
            _ => uint(value).map(|v| p.last_request_memory = v),
        };
        if let Err(reason) = res {
            bad.push((label, field, reason));
        }
    }
    match (pid, state) {
        (Ok(pid), Ok(state)) => {
            p.pid = pid;
            p.state = state;
            for (label, field, reason) in bad {
                drops.add(label, reason);
                p.dropped.push(field);
            }
            Some(p)
        }
        (Err(reason), _) => {
            drops.add("processes.pid", reason);
            None
        }
        (_, Err(reason)) => {
            drops.add("processes.state", reason);
            None
        }
    }
}

fn uint(value: &Value<'_>) -> Result<u64, DropReason> {
    let Value::Num(n) = value else {
        return Err(DropReason::WrongType);
    };
    if let Ok(v) = n.parse::<u64>() {
        return Ok(v);
    }
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match n.strip_prefix('-') {
        // "-0" is zero, whatever printed it.
        Some(d) if all_digits(d) && d.bytes().all(|b| b == b'0') => Ok(0),
        Some(d) if all_digits(d) => Err(DropReason::Negative),
        None if all_digits(n) => Err(DropReason::OutOfRange),
        _ => Err(DropReason::NotAnInteger),
    }
}

fn float(value: &Value<'_>) -> Result<f64, DropReason> {
    let Value::Num(n) = value else {
        return Err(DropReason::WrongType);
    };
    match n.parse::<f64>() {
        Ok(f) if !f.is_finite() => Err(DropReason::OutOfRange),
        Ok(f) if f < 0.0 => Err(DropReason::Negative),
        Ok(f) => Ok(f),
        Err(_) => Err(DropReason::NotANumber),
    }
}

fn text(value: &Value<'_>) -> Result<String, DropReason> {
    match value {
        Value::Str(s) => Ok(s.clone()),
        _ => Err(DropReason::WrongType),
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
