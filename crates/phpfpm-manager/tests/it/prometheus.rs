//! The Grafana dashboard and the Prometheus rules against their consumers.
//!
//! - `promtool check rules` accepts `deploy/prometheus/alerts.yml`, `promtool
//!   test rules` passes its unit tests, every alert fires in one of them, and
//!   every alert's runbook is a section of `docs/operations.md`.
//! - A real Prometheus (Debian's package) loads those rules and scrapes a
//!   real manager running two real pools under a little load (one master
//!   killed once, so restart counters exist). Every PromQL expression of the
//!   dashboard and of the rules is then evaluated through Prometheus' HTTP
//!   API and must return series: not an error, not empty. An alert's
//!   expression is evaluated without its threshold (`A > 0.9` as `A`): the
//!   series it compares exist with the labels the alert uses; whether it
//!   fires is what the unit tests check. The dashboard's template variables
//!   are those of "All" (`.+`), `$__rate_interval` is `1m`.
//! - The dashboard's annotation query to the manager's own API returns the
//!   annotations it expects.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};
use serde_json::Value;

use crate::support::{free_port, wait_for, TestDaemon, TestDir, SLEEP_PHP};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rules_path() -> PathBuf {
    repo_root().join("deploy/prometheus/alerts.yml")
}

fn dashboard() -> Value {
    let path = repo_root().join("deploy/grafana/phpfpm-manager.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn rules() -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(rules_path()).unwrap()).unwrap()
}

/// Every rule of alerts.yml as (name, expression, is an alert).
fn rule_exprs() -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for group in rules()["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap().trim().to_owned();
            match (rule["alert"].as_str(), rule["record"].as_str()) {
                (Some(name), _) => out.push((name.to_owned(), expr, true)),
                (None, Some(name)) => out.push((name.to_owned(), expr, false)),
                _ => panic!("a rule that is neither alert nor record: {rule:?}"),
            }
        }
    }
    out
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not runnable ({e}); install Debian's `prometheus` package (make test does)")
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_checks_the_rules_and_every_alert_fires_in_a_unit_test() {
    let (ok, said) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "promtool check rules:\n{said}");
    let (ok, said) = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(ok, "promtool test rules:\n{said}");

    // Every alert is made to fire by at least one unit test, and has a
    // runbook section: a heading in docs/operations.md whose anchor is the
    // one in runbook_url.
    let tests: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts_test.yml")).unwrap(),
    )
    .unwrap();
    let mut fired = Vec::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            if fires {
                fired.push(case["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    let ops = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let anchors: Vec<String> = ops
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| github_anchor(l.trim_start_matches('#').trim()))
        .collect();
    let mut alerts = 0;
    for group in rules()["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            assert!(
                fired.iter().any(|f| f == name),
                "no unit test in alerts_test.yml makes {name} fire"
            );
            let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
            let anchor = url.strip_prefix("docs/operations.md#").unwrap_or_else(|| {
                panic!("{name}: runbook_url {url:?} is not docs/operations.md#...")
            });
            assert!(
                anchors.iter().any(|a| a == anchor),
                "{name}: docs/operations.md has no section #{anchor}"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key].as_str().is_some(),
                    "{name} has no {key}"
                );
            }
        }
    }
    assert!(alerts >= 8, "only {alerts} alerts");
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to dashes,
/// punctuation other than dashes and underscores dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every expression of the dashboard: panel targets (with the panel's
/// title) and Prometheus annotations (evaluated without their threshold).
/// Template variables are returned apart, as (metric selector, label).
struct DashboardQueries {
    targets: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    variables: Vec<(String, String)>,
}

fn dashboard_queries(d: &Value) -> DashboardQueries {
    let mut q = DashboardQueries {
        targets: Vec::new(),
        annotations: Vec::new(),
        variables: Vec::new(),
    };
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_owned()));
                }
            }
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    walk(d["panels"].as_array().unwrap(), &mut q.targets);
    for a in d["annotations"]["list"].as_array().unwrap() {
        if let Some(e) = a["expr"].as_str() {
            q.annotations
                .push((a["name"].as_str().unwrap().to_owned(), e.to_owned()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let text = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = text
            .strip_prefix("label_values(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {text:?} is not label_values(...)"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        q.variables
            .push((selector.trim().to_owned(), label.trim().to_owned()));
    }
    q
}

/// The dashboard's variables as Grafana fills them with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".+")
        .replace("$pool", ".+")
}

#[test]
fn the_dashboard_filters_every_query_by_instance_and_pool() {
    let d = dashboard();
    let q = dashboard_queries(&d);
    assert!(q.targets.len() >= 20, "{} queries", q.targets.len());
    for (title, expr) in q.targets.iter().chain(&q.annotations) {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "{title}: {expr} ignores the instance variable"
        );
    }
    // The pool-level panels also follow the pool variable; host-level
    // series (budget, host memory) have no pool label.
    for (title, expr) in &q.targets {
        let host_only = expr.contains("memory_budget_bytes") || expr.contains("host_memory");
        if !host_only {
            assert!(
                expr.contains("pool=~\"$pool\""),
                "{title}: {expr} ignores the pool variable"
            );
        }
    }
    let mut ids = std::collections::BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
    }
    for (selector, label) in &q.variables {
        assert!(selector.starts_with("phpfpm_up"), "{selector}");
        assert!(["instance", "pool"].contains(&label.as_str()));
    }
}

/// The part of an alert expression that is measured: for each operand of a
/// top-level `and`/`or`/`unless`, what stands left of its top-level
/// comparison (`A > 0.9` gives `A`). Brackets, braces and strings are
/// skipped, so `{pool=~"a|b"}` or `rate(x[5m])` are never cut.
fn measured(expr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote = None;
    let bytes = expr.as_bytes();
    let mut start = 0;
    let mut cut: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if depth == 0 => {
                let rest = &expr[i..];
                let op = ["==", "!=", ">=", "<=", ">", "<"]
                    .into_iter()
                    .find(|op| rest.starts_with(op));
                if op.is_some() && cut.is_none() {
                    cut = Some(i);
                }
                let prev = if i == 0 { ' ' } else { bytes[i - 1] as char };
                let word_start = !(prev.is_alphanumeric() || prev == '_');
                if word_start {
                    if let Some(kw) = ["and", "or", "unless"].into_iter().find(|kw| {
                        rest.starts_with(kw)
                            && rest[kw.len()..].starts_with(|c: char| c.is_whitespace())
                    }) {
                        parts.push(expr[start..cut.unwrap_or(i)].to_owned());
                        cut = None;
                        start = i + kw.len();
                        i = start;
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(expr[start..cut.unwrap_or(expr.len())].to_owned());
    parts
        .into_iter()
        .map(|p| strip_matching(p.trim()).to_owned())
        .collect()
}

/// Drops a leading `on (...)`, `ignoring (...)`, `group_left (...)` or
/// `group_right (...)` (what follows a set operator).
fn strip_matching(mut part: &str) -> &str {
    loop {
        let Some(kw) = ["on", "ignoring", "group_left", "group_right"]
            .into_iter()
            .find(|kw| part.starts_with(kw) && part[kw.len()..].trim_start().starts_with('('))
        else {
            return part;
        };
        let after = part[kw.len()..].trim_start();
        let close = after.find(')').unwrap();
        part = after[close + 1..].trim_start();
    }
}

#[test]
fn measured_parts_of_alert_expressions() {
    assert_eq!(measured("phpfpm_up == 0"), vec!["phpfpm_up"]);
    assert_eq!(
        measured("increase(x{reason=~\"oom|hash\"}[1h]) > 0"),
        vec!["increase(x{reason=~\"oom|hash\"}[1h])"]
    );
    assert_eq!(
        measured("sum by (a) (x and on (a) y) / max by (a) (y)\n> 0.9"),
        vec!["sum by (a) (x and on (a) y) / max by (a) (y)"]
    );
    assert_eq!(
        measured("a > 1 and on (pool) b == 0 or c"),
        vec!["a", "b", "c"]
    );
    assert_eq!(measured("up{job!=\"x\"}"), vec!["up{job!=\"x\"}"]);
}

/// Prometheus on a loopback port, with a config and data in a test
/// directory; stopped (by its own pid) when dropped.
struct TestPrometheus {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl TestPrometheus {
    fn start(dir: &TestDir, target: SocketAddr, rules: &Path) -> TestPrometheus {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let home = dir.join("prometheus");
        std::fs::create_dir_all(home.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: phpfpm-manager\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(home.join("prometheus.yml"), config).unwrap();
        let log = home.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", home.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", home.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}); install Debian's `prometheus` package (make test does)")
            });
        let p = TestPrometheus { addr, child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.query("vector(1)").is_err() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not start: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query: the result array, or Prometheus' error (a PromQL
    /// error is a 400 with `"status": "error"`).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("http://{}/api/v1/query", self.addr);
        let mut res = agent
            .get(&url)
            .query("query", expr)
            .call()
            .map_err(|e| format!("request failed: {e}"))?;
        let body: Value = res
            .body_mut()
            .read_json()
            .map_err(|e| format!("answer is not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A little load on a pool: `n` clients sending `sleep.php?ms=20` over
/// FastCGI one after another until `stop` (bounded: a minute, 20,000
/// requests per client).
fn load(
    sock: PathBuf,
    script: String,
    n: usize,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (sock, script, stop, served) =
                (sock.clone(), script.clone(), stop.clone(), served.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let t = Timeouts {
                    connect: Duration::from_secs(1),
                    total: Duration::from_secs(5),
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let ep = Endpoint::Unix(sock.clone());
                    match rt.block_on(fastcgi::get(&ep, &script, "ms=20", t)) {
                        Ok(_) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        // A master restarting: the listening socket stays, so
                        // this is rare; try again shortly.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        })
        .collect()
}

fn api(d: &TestDaemon, path: &str) -> Value {
    d.get(path)
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn every_dashboard_and_rule_expression_returns_series_from_a_real_prometheus() {
    let dir = TestDir::new("prometheus");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("sleep.php"), SLEEP_PHP).unwrap();
    // Two autoscaled pools (the autoscaler's and the budget's series), OPcache
    // and per-worker series on (the dashboard's OPcache and request-time
    // panels), everything read every second.
    let cfg = format!(
        "monitoring:\n  collect_interval: 1s\n  memory_interval: 1s\n  enable_opcache: true\n  per_process_metrics: true\n\
         scaling:\n  memory_budget: 1GiB\n\
         pools:\n\
         \x20 - name: a\n    max_workers: 6\n    chdir: {www}\n    scaling:\n      enabled: true\n      min_workers: 2\n      max_workers: 6\n\
         \x20 - name: b\n    max_workers: 4\n    chdir: {www}\n    scaling:\n      enabled: true\n      min_workers: 2\n      max_workers: 4\n",
        www = www.display()
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    let up = |d: &TestDaemon, pool: &str| {
        api(d, &format!("/api/v1/pools/{pool}"))["up"] == Value::Bool(true)
    };
    assert!(
        wait_for(Duration::from_secs(30), || up(&d, "a") && up(&d, "b")),
        "pools not up; log:\n{}",
        d.log()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let script = d.dir.join("www/sleep.php").display().to_string();
    let mut clients = Vec::new();
    for pool in ["a", "b"] {
        let sock = d
            .dir
            .join(&format!("var/phpfpm-manager/sockets/{pool}.sock"));
        clients.extend(load(sock, script.clone(), 3, stop.clone(), served.clone()));
    }

    // One crash, so that the restart counters have a series.
    let pid = api(&d, "/api/v1/pools/a")["master"]["pid"]
        .as_u64()
        .expect("pool a has a master pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let p = api(&d, "/api/v1/pools/a");
            p["up"] == Value::Bool(true)
                && p["master"]["pid"].as_u64().is_some_and(|new| new != pid)
        }),
        "pool a's master was not restarted; log:\n{}",
        d.log()
    );

    let prom = TestPrometheus::start(&d.dir, d.addr, &rules_path());
    assert!(
        wait_for(Duration::from_secs(30), || {
            prom.query("up{job=\"phpfpm-manager\"} == 1")
                .is_ok_and(|r| !r.is_empty())
        }),
        "prometheus never scraped the manager:\n{}",
        prom.log()
    );

    // (origin, expression as sent). Alerts: the measured parts.
    let mut exprs: Vec<(String, String)> = Vec::new();
    let q = dashboard_queries(&dashboard());
    for (title, e) in &q.targets {
        exprs.push((format!("dashboard panel {title:?}"), substitute(e)));
    }
    for (name, e) in &q.annotations {
        for part in measured(&substitute(e)) {
            exprs.push((format!("dashboard annotation {name:?}"), part));
        }
    }
    for (selector, _) in &q.variables {
        exprs.push(("dashboard variable".into(), substitute(selector)));
    }
    for (name, e, alert) in rule_exprs() {
        if alert {
            for part in measured(&e) {
                exprs.push((format!("alert {name}"), part));
            }
        } else {
            exprs.push((format!("recording rule {name}"), e));
        }
    }

    // Rate windows and recording rules need a few scrapes and evaluations:
    // empty answers are asked again until the deadline; an error is final.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut pending: Vec<(String, String)> = exprs.clone();
    let mut errors = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (origin, e) in pending {
            match prom.query(&e) {
                Err(why) => errors.push(format!("{origin}: {e}\n  -> {why}")),
                Ok(series) if series.is_empty() => still.push((origin, e)),
                Ok(_) => {}
            }
        }
        pending = still;
        if !errors.is_empty() {
            break;
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    assert!(errors.is_empty(), "PromQL errors:\n{}", errors.join("\n"));
    assert!(
        pending.is_empty(),
        "no series after 90 s for:\n{}\nprometheus log:\n{}",
        pending
            .iter()
            .map(|(o, e)| format!("{o}: {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
        prom.log()
    );

    // The variables' label is on their series, and both pools are there.
    for (selector, label) in &q.variables {
        let series = prom.query(&substitute(selector)).unwrap();
        let values: std::collections::BTreeSet<&str> = series
            .iter()
            .filter_map(|s| s["metric"][label.as_str()].as_str())
            .collect();
        let want: Vec<&str> = if label == "pool" {
            vec!["a", "b"]
        } else {
            vec![]
        };
        assert!(!values.is_empty(), "{selector} has no {label} label");
        for w in want {
            assert!(values.contains(w), "{selector}: no pool {w} in {values:?}");
        }
    }
    // The saturation the pod autoscalers use, for both pools.
    let sat = prom.query("pool:phpfpm_saturation:ratio").unwrap();
    for pool in ["a", "b"] {
        assert!(
            sat.iter().any(|s| s["metric"]["pool"] == pool),
            "no saturation for {pool}: {sat:?}"
        );
    }
    eprintln!(
        "{} expressions returned series; {} requests served meanwhile",
        exprs.len(),
        served.load(Ordering::Relaxed)
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "the load served nothing"
    );
    drop(prom);

    annotations_from_the_manager_api(&d);
}

/// The dashboard's Infinity annotation query, filled in as Grafana would for
/// this manager, answers a JSON array of annotations with the fields the
/// query reads; the crash above is one of them.
fn annotations_from_the_manager_api(d: &TestDaemon) {
    let dash = dashboard();
    let a = dash["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["datasource"]["type"] == "yesoreyeram-infinity-datasource")
        .expect("an Infinity annotation")
        .clone();
    let target = &a["target"];
    let url = target["url"]
        .as_str()
        .unwrap()
        .replace("${instance}", &d.addr.to_string());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let from = (now_ms - 3_600_000).to_string();
    let to = (now_ms + 60_000).to_string();
    let params: Vec<(String, String)> = target["url_options"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let v = p["value"]
                .as_str()
                .unwrap()
                .replace("${__from}", &from)
                .replace("${__to}", &to);
            (p["key"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    let path_and_query = format!(
        "{}?{}",
        url.strip_prefix(&format!("http://{}", d.addr)).unwrap(),
        serde_urlencoded::to_string(&params).unwrap()
    );
    // Events reach the history database in batches: wait for the crash.
    let mut last = String::new();
    let found = wait_for(Duration::from_secs(20), || {
        let Ok((200, body)) = d.get(&path_and_query) else {
            return false;
        };
        last = body;
        serde_json::from_str::<Vec<Value>>(&last)
            .is_ok_and(|items| items.iter().any(|i| i["tags"][0] == "crash"))
    });
    assert!(found, "GET {path_and_query} answered {last}");
    let items: Vec<Value> = serde_json::from_str(&last).unwrap();
    for column in target["columns"].as_array().unwrap() {
        let field = column["selector"].as_str().unwrap();
        assert!(
            items.iter().all(|i| !i[field].is_null()),
            "an annotation lacks {field}: {last}"
        );
    }
}
