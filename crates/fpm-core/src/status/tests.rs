//! Status parser tests over replies captured from php-fpm 8.2 (`php82-*`) and
//! hand-made variants of them (`handmade-*`) for other versions and damage.

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/test_data/status/{name}.cgi", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn idle_pool_through_status_listen() {
    let st = parse_status(&fixture("php82-idle-status-listen")).unwrap();
    assert_eq!(st.pool, "lab");
    assert_eq!(st.process_manager, "static");
    assert_eq!(st.processes.len(), 3);
    assert!(st.processes.iter().all(|p| p.state == ProcessState::Idle));
    assert_eq!(
        st.derived(None),
        Derived {
            idle: 3,
            active: 0,
            total: 3
        }
    );
}

#[test]
fn busy_pool_through_status_listen_has_no_self_request() {
    let st = parse_status(&fixture("php82-busy-status-listen")).unwrap();
    assert_eq!(st.active_processes, 2);
    assert_eq!(st.derived(None).active, 2);
    let running: Vec<_> = st
        .processes
        .iter()
        .filter(|p| p.state == ProcessState::Running)
        .collect();
    assert_eq!(running.len(), 2);
    assert_eq!(running[0].request_uri, "/sleep.php?ms=1500");
    assert_eq!(running[0].script, "/tmp/lab/www/sleep.php");
    assert!(running[0].request_duration_us > 500_000);
}

#[test]
fn own_request_through_main_socket_is_not_load() {
    let st = parse_status(&fixture("php82-busy-main-socket")).unwrap();
    // php-fpm counts the status request itself as active.
    assert_eq!(st.active_processes, 3);
    assert_eq!(st.derived(None).active, 3);
    // The collector's marker is in the query string of its own request.
    let d = st.derived(Some("json&full"));
    assert_eq!(d.active, 2);
    assert_eq!(d.idle, 1);
    assert_eq!(d.total, 3);
}

#[test]
fn escaped_quotes_in_uri_from_php82() {
    let st = parse_status(&fixture("php82-weird-uri")).unwrap();
    let p = st
        .processes
        .iter()
        .find(|p| p.state == ProcessState::Running)
        .unwrap();
    assert_eq!(
        p.request_uri,
        r#"/sleep.php?ms=1500&q="quoted",\back\slash}{"x":1"#
    );
}

#[test]
fn unescaped_values_and_old_state_spelling() {
    let st = parse_status(&fixture("handmade-php73-unescaped")).unwrap();
    assert_eq!(st.processes.len(), 3);
    let p = &st.processes[0];
    assert_eq!(p.state, ProcessState::GettingRequestInfo);
    assert!(p.state.is_busy());
    assert_eq!(p.request_uri, r#"/search?q="a",\b}{"x":1,"user":"y"#);
    assert_eq!(p.user, r#"bob"o'\x"#);
    assert_eq!(p.script, "/tmp/lab/www/sleep.php");
    assert_eq!(p.last_request_memory, 0);
}

#[test]
fn adversarial_uri_shifts_at_most_its_own_process() {
    // A URI that imitates the structure php-fpm prints after a value. Whatever
    // text fields it corrupts, the counts come from `state` and stay right.
    let body = r#"{"pool":"p","process manager":"static","start time":1,"start since":1,"accepted conn":5,"listen queue":0,"max listen queue":0,"listen queue len":0,"idle processes":1,"active processes":1,"total processes":2,"max active processes":1,"max children reached":0,"slow requests":0, "processes":[{"pid":1,"state":"Running","start time":1,"start since":1,"requests":1,"request duration":5,"request method":"GET","request uri":"/x?a=","user":"z","content length":0,"user":"-","script":"-","last request cpu":0.00,"last request memory":0},{"pid":2,"state":"Idle","start time":1,"start since":1,"requests":1,"request duration":5,"request method":"GET","request uri":"-","content length":0,"user":"-","script":"-","last request cpu":0.00,"last request memory":0}]}"#;
    let reply = format!("Content-type: application/json\r\n\r\n{body}");
    let st = parse_status(reply.as_bytes()).unwrap();
    assert_eq!(st.derived(None).active, 1);
    assert_eq!(st.derived(None).idle, 1);
}

#[test]
fn php84_memory_peak_and_creating_state() {
    let st = parse_status(&fixture("handmade-php84-memory-peak")).unwrap();
    assert_eq!(st.memory_peak, Some(8_388_608));
    assert!(st
        .processes
        .iter()
        .any(|p| p.state == ProcessState::Creating));
    // Creating is busy: the worker cannot take a request yet.
    assert_eq!(st.derived(Some("json&full")).active, 3);
}

#[test]
fn error_pages_are_named() {
    let cases: &[(&str, &str)] = &[
        ("php82-access-denied", "http_status"),
        ("php82-file-not-found", "http_status"),
        ("php82-html", "not_json"),
        ("handmade-truncated", "truncated"),
        ("handmade-empty", "empty"),
        ("handmade-headers-only", "empty"),
    ];
    for (name, kind) in cases {
        let err = parse_status(&fixture(name)).unwrap_err();
        assert_eq!(err.kind(), *kind, "{name}: {err}");
    }
    let err = parse_status(&fixture("php82-access-denied")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "php-fpm answered with HTTP status 403: Access denied."
    );
}

#[test]
fn wrong_types_and_missing_fields() {
    let reply = |body: &str| format!("Content-type: application/json\r\n\r\n{body}");
    // A bad value costs its field, not the page.
    let st = parse_status(reply(r#"{"pool":"p","accepted conn":"many"}"#).as_bytes()).unwrap();
    assert_eq!(st.accepted_conn, 0);
    assert_eq!(
        st.dropped,
        vec![Dropped {
            field: "accepted conn",
            reason: DropReason::WrongType,
            count: 1
        }]
    );
    let st = parse_status(reply(r#"{"pool":"p","accepted conn":-1}"#).as_bytes()).unwrap();
    assert_eq!(st.dropped[0].reason, DropReason::Negative);
    // A page without the fields every php-fpm prints is not a status page.
    let err = parse_status(reply(r#"{"accepted conn":1}"#).as_bytes()).unwrap_err();
    assert_eq!(err, ParseError::MissingField("pool"));
    let err = parse_status(reply(r#"{"pool":"p"}"#).as_bytes()).unwrap_err();
    assert_eq!(err, ParseError::MissingField("accepted conn"));
    // A worker entry without a pid is left out and counted.
    let st = parse_status(
        reply(r#"{"pool":"p","accepted conn":1,"processes":[{"state":"Idle"}]}"#).as_bytes(),
    )
    .unwrap();
    assert!(st.processes.is_empty());
    assert_eq!(
        st.dropped,
        vec![Dropped {
            field: "processes.pid",
            reason: DropReason::Missing,
            count: 1
        }]
    );
    let err = parse_status(b"\xff\xfe\r\n\r\n{}").unwrap_err();
    assert_eq!(err.kind(), "malformed");
}

fn dropped(st: &PoolStatus) -> Vec<(&'static str, &'static str, u64)> {
    let mut v: Vec<_> = st
        .dropped
        .iter()
        .map(|d| (d.field, d.reason.as_str(), d.count))
        .collect();
    v.sort();
    v
}

#[test]
fn out_of_range_values_cost_only_their_field() {
    // `accepted conn` of 2^64+1 and a worker with `requests: -3` once took
    // the whole pool down.
    let st = parse_status(&fixture("handmade-out-of-range")).unwrap();
    assert_eq!(
        dropped(&st),
        vec![
            ("accepted conn", "out_of_range", 1),
            ("processes.requests", "negative", 1),
        ]
    );
    assert_eq!(st.pool, "lab");
    assert_eq!(st.accepted_conn, 0);
    assert_eq!(st.processes.len(), 3);
    let w = st.processes.iter().find(|p| p.pid == 10034).unwrap();
    assert_eq!(w.dropped, vec!["requests"]);
    assert_eq!(w.requests, 0);
    assert!(st
        .processes
        .iter()
        .filter(|p| p.pid != 10034)
        .all(|p| p.dropped.is_empty()));
    // Counts come from states, which are intact.
    assert_eq!(
        st.derived(None),
        Derived {
            idle: 1,
            active: 2,
            total: 3
        }
    );
    assert!(st.counters_dropped());
    assert!(!parse_status(&fixture("php82-busy-status-listen"))
        .unwrap()
        .counters_dropped());
}

#[test]
fn bad_values_and_bad_worker_entries_are_dropped_and_counted() {
    let st = parse_status(&fixture("handmade-bad-values")).unwrap();
    assert_eq!(
        dropped(&st),
        vec![
            ("listen queue len", "negative", 1),
            ("max active processes", "not_an_integer", 1),
            ("max listen queue", "wrong_type", 1),
            ("memory peak", "not_an_integer", 1),
            ("processes.content length", "negative", 1),
            ("processes.last request cpu", "out_of_range", 1),
            ("processes.last request memory", "out_of_range", 1),
            ("processes.pid", "missing", 1),
            ("processes.pid", "negative", 1),
            ("processes.pid", "out_of_range", 1),
            ("processes.request duration", "not_an_integer", 1),
            ("processes.request method", "wrong_type", 1),
            ("processes.requests", "wrong_type", 1),
            ("processes.state", "wrong_type", 1),
            ("processes.user", "wrong_type", 1),
            ("slow requests", "wrong_type", 1),
        ]
    );
    // What was valid is kept.
    assert_eq!(st.accepted_conn, 7);
    assert_eq!(st.total_processes, 5);
    assert_eq!(st.memory_peak, None);
    let pids: Vec<u32> = st.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![20001, 20006]);
    assert_eq!(st.processes[0].last_request_memory, 2_097_152);
    assert!(st.processes[0].dropped.is_empty());
    let w = &st.processes[1];
    assert_eq!(w.state, ProcessState::Running);
    assert_eq!(w.request_uri, "/b");
    assert_eq!(w.script, "/w/b.php");
    assert_eq!(w.dropped.len(), 7, "{:?}", w.dropped);
    assert_eq!(st.derived(None).active, 1);
}

#[test]
fn dropped_values_are_carried_forward_from_the_previous_page() {
    let mut prev = parse_status(&fixture("php82-busy-status-listen")).unwrap();
    prev.accepted_conn = 41;
    for p in &mut prev.processes {
        p.requests = 9;
    }
    let mut st = parse_status(&fixture("handmade-out-of-range")).unwrap();
    st.carry_forward(Some(&prev));
    assert_eq!(st.accepted_conn, 41);
    let w = st.processes.iter().find(|p| p.pid == 10034).unwrap();
    assert_eq!(w.requests, 9);
    // Values that were fine are this page's own.
    let other = st.processes.iter().find(|p| p.pid == 10033).unwrap();
    assert_eq!(other.requests, 1);
    // What the page lacked is still said.
    assert_eq!(st.dropped.len(), 2);
    // Nothing to fill from: zero values stay.
    let mut alone = parse_status(&fixture("handmade-out-of-range")).unwrap();
    alone.carry_forward(None);
    assert_eq!(alone.accepted_conn, 0);
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    for name in ["handmade-garbage-binary", "handmade-garbage-text"] {
        let err = parse_status(&fixture(name)).unwrap_err();
        assert_eq!(err.kind(), "malformed", "{name}: {err}");
    }
}

#[test]
fn reply_of_end_request_without_stdout_is_empty() {
    // What the transport returns when php-fpm ends the request at once.
    assert_eq!(parse_status(b"").unwrap_err(), ParseError::Empty);
}

/// A status page as php-fpm 8.2 prints it, with `n` workers.
fn page(n: usize) -> Vec<u8> {
    let mut out = String::from(
        "Content-Type: application/json\r\n\r\n{\"pool\":\"big\",\"process manager\":\"static\",\"start time\":1795688476,\"start since\":5,\"accepted conn\":123456,\"listen queue\":0,\"max listen queue\":0,\"listen queue len\":0,\"idle processes\":1,\"active processes\":1,\"total processes\":2,\"max active processes\":2,\"max children reached\":0,\"slow requests\":0, \"processes\":[",
    );
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let state = if i % 3 == 0 { "Running" } else { "Idle" };
        out.push_str(&format!(
            "{{\"pid\":{},\"state\":\"{state}\",\"start time\":1795688476,\"start since\":5,\"requests\":{i},\"request duration\":501120,\"request method\":\"GET\",\"request uri\":\"\\/index.php?page={i}\",\"content length\":0,\"user\":\"-\",\"script\":\"\\/srv\\/www\\/index.php\",\"last request cpu\":0.00,\"last request memory\":2097152}}",
            100_000 + i
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}

#[test]
fn ten_thousand_workers() {
    let raw = page(10_000);
    let st = parse_status(&raw).unwrap();
    assert_eq!(st.processes.len(), 10_000);
    assert!(st.dropped.is_empty());
    let d = st.derived(None);
    assert_eq!((d.active, d.total), (3334, 10_000));
    assert_eq!(st.processes[9_999].request_uri, "/index.php?page=9999");
}

#[test]
fn ping_replies() {
    let ok = b"Content-type: text/plain;charset=UTF-8\r\n\r\npong";
    assert_eq!(parse_ping(ok, "pong"), Ok(()));
    let err = parse_ping(ok, "alive").unwrap_err();
    assert_eq!(err.kind(), "bad_ping");
    let err = parse_ping(&fixture("php82-file-not-found"), "pong").unwrap_err();
    assert_eq!(err.kind(), "http_status");
    assert_eq!(parse_ping(b"", "pong").unwrap_err(), ParseError::Empty);
}

#[test]
fn every_prefix_of_a_real_reply_is_an_error_or_a_status() {
    // Cutting the reply anywhere must never panic.
    let full = fixture("php82-busy-status-listen");
    for cut in 0..full.len() {
        let _ = parse_status(&full[..cut]);
    }
}
