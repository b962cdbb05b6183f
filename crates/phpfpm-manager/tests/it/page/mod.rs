//! The web page in a real browser: Debian's chromium, headless, driven over
//! WebDriver (chromedriver and the `fantoccini` client) against a running
//! manager with two real supervised pools. It checks that the overview
//! shows the figures of `/api/v1/pools`, follows load without a reload, that
//! a pool's page draws its history and the hand-over of a SIGHUP change and
//! puts the autoscaler's figures in sentences, that the events timeline
//! filters by pool, kind and severity, that the page works with the
//! keyboard alone, reflows at 320 px and has a dark theme, that markup from
//! a request URI, an event message or the address is shown as text and
//! never run, that the console has no error and that every request the page
//! makes goes to the manager. `with_keys` runs the page against a manager
//! with API keys. Screenshots are kept as test artifacts
//! (`UPDATE_SCREENSHOTS=1` also writes `docs/screenshots/`).

/// The page with API authentication on.
mod with_keys;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::Method;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::deep::release;
use crate::supervisor::pools_up;
use crate::support::{free_port, TestDaemon, TestDir, HOLD_PHP};

/// The configured collection interval: the page must show a change within
/// two of them.
const COLLECT_SECS: u64 = 4;

/// A script file whose name is markup: php-fpm shows it as the request URI
/// of the worker running it.
const MARKUP_SCRIPT: &str = "<img src=x onerror=window.__pwned=1>.php";
/// A pool directory whose name is markup: php-fpm refuses it, and the
/// refusal's event message quotes it.
const MARKUP_DIR: &str = "/nonexistent/<img src=x onerror=window.__pwned=2>";

fn config(dir: &TestDir, api_workers: u32, api_chdir: &str) -> String {
    format!(
        "monitoring:\n  collect_interval: {COLLECT_SECS}s\n  busy_interval: 1s\n  idle_interval: {COLLECT_SECS}s\n\
         \x20 memory_interval: 2s\n  enable_opcache: true\n\
         pools:\n\
         \x20 - name: shop\n    pm: static\n    max_workers: 2\n    chdir: {www}\n\
         \x20 - name: api\n    pm: static\n    max_workers: {api_workers}\n    chdir: {api_chdir}\n",
        www = dir.join("www").display()
    )
}

/// chromedriver and the headless chromium it starts, in their own process
/// group so that nothing is left behind when the test ends or fails.
struct Browser {
    driver: Child,
    client: Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.driver.id() as i32), Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

fn tool(names: &[&str]) -> PathBuf {
    names
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} not found; install Debian's chromium and chromium-driver (`make test` runs scripts/install-deps.sh test)",
                names.join(" or ")
            )
        })
}

async fn browser(dir: &TestDir) -> Browser {
    let chromium = tool(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let chromedriver = tool(&["/usr/bin/chromedriver"]);
    let port = free_port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("chromedriver.log")).unwrap())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("chromedriver does not start");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = dir.join("chromium-profile");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                // The test may run as root, where chromium has no sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--force-device-scale-factor=1",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
        "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let mut client = None;
    // chromium's first start on a loaded machine can be slow.
    for _ in 0..3 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://{addr}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(e) => eprintln!("no WebDriver session yet: {e}"),
        }
    }
    let client = client.expect("chromedriver gave no session");
    Browser { driver, client }
}

/// chromedriver's log of one kind (`browser`: the console; `performance`:
/// DevTools events, among them every request). Not in the W3C protocol, so
/// sent as chromedriver's own command.
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(json!({ "type": self.0 }).to_string()))
    }
}

/// A DevTools command through chromedriver (`goog/cdp/execute`), for what
/// WebDriver has no command for (emulating the dark colour scheme).
#[derive(Debug)]
struct Cdp(&'static str, Value);

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        (
            Method::POST,
            Some(json!({ "cmd": self.0, "params": self.1 }).to_string()),
        )
    }
}

async fn cdp(c: &Client, cmd: &'static str, params: Value) {
    c.issue_cmd(Cdp(cmd, params))
        .await
        .unwrap_or_else(|e| panic!("DevTools {cmd}: {e}"));
}

/// One key pressed and released, as a person would on the keyboard.
async fn press(c: &Client, key: char) {
    let keys = KeyActions::new("keyboard".to_owned())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    c.perform_actions(keys)
        .await
        .unwrap_or_else(|e| panic!("key {key:?}: {e}"));
}

const TAB: char = '\u{e004}';
const ENTER: char = '\u{e007}';

/// The console's errors (`SEVERE`) since the last read of the console:
/// chromedriver hands each entry out once. Each as (time in ms, message).
async fn console_errors(c: &Client) -> Vec<(u64, String)> {
    log(c, "browser")
        .await
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| {
            (
                e["timestamp"].as_u64().unwrap_or(0),
                e["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A request the browser sent, from DevTools' network events.
#[derive(Debug)]
struct Sent {
    url: String,
    /// Its `Authorization` header.
    authorization: Option<String>,
    /// The URL of the document that sent it.
    document: String,
    /// The answer's status; None while no answer came.
    status: Option<u64>,
}

/// Every request the browser sent since the performance log was last read.
async fn requests(c: &Client) -> Vec<Sent> {
    let mut out: Vec<(String, Sent)> = Vec::new();
    for entry in log(c, "performance").await {
        let Some(text) = entry["message"].as_str() else {
            continue;
        };
        let m: Value = serde_json::from_str(text).unwrap_or_default();
        let p = &m["message"]["params"];
        let id = p["requestId"].as_str().unwrap_or("").to_owned();
        match m["message"]["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                let headers = p["request"]["headers"].as_object();
                let authorization = headers.and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .and_then(|(_, v)| v.as_str().map(str::to_owned))
                });
                out.push((
                    id,
                    Sent {
                        url: p["request"]["url"].as_str().unwrap_or("").to_owned(),
                        authorization,
                        document: p["documentURL"].as_str().unwrap_or("").to_owned(),
                        status: None,
                    },
                ));
            }
            Some("Network.responseReceived") => {
                if let Some((_, s)) = out.iter_mut().rev().find(|(i, _)| *i == id) {
                    s.status = p["response"]["status"].as_u64();
                }
            }
            _ => {}
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}

async fn log(c: &Client, kind: &'static str) -> Vec<Value> {
    c.issue_cmd(GetLog(kind))
        .await
        .unwrap_or_else(|e| panic!("cannot read the {kind} log: {e}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The text of the first element matching `selector` that contains
/// `needle`, if any.
async fn text_among(c: &Client, selector: &str, needle: &str) -> Option<String> {
    let script = format!(
        "return Array.from(document.querySelectorAll({selector:?})).map(e => e.textContent);"
    );
    js(c, &script)
        .await
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|t| t.contains(needle))
        .map(str::to_owned)
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Waits (generously) for `f` to give `Some`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn api(d: &TestDaemon, path: &str) -> Value {
    let (code, body) = d.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// `GET path` with the response's headers (lowercased names) and body.
fn get_with_headers(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let (code, headers) = crate::auth::parse_head(head);
    (code, headers.into_iter().collect(), body.to_owned())
}

/// Requests of `script` on `pool`'s socket, one thread each, each held
/// until the file `release` appears next to `hold.php` (or a minute).
/// Holds `n` of `pool`'s workers busy on `script` until [`release`] (or a
/// minute).
fn hold(d: &TestDaemon, pool: &str, script: &Path, n: usize) -> Vec<std::thread::JoinHandle<()>> {
    let sock = d
        .dir
        .join(&format!("var/phpfpm-manager/sockets/{pool}.sock"));
    crate::deep::hold_on(&sock, &script.display().to_string(), n, 60_000)
}

/// The overview's figures per pool, as the page shows them.
const READ_OVERVIEW: &str = "const out = {};
for (const tr of document.querySelectorAll('#pools tbody tr[data-pool]')) {
  const f = {};
  for (const td of tr.querySelectorAll('[data-field]')) { f[td.dataset.field] = td.textContent.trim(); }
  const st = tr.querySelector('[data-state]');
  f.state = st ? st.dataset.state : null;
  out[tr.dataset.pool] = f;
}
return out;";

/// What the overview must show for a pool, from the API's answers.
fn expected_row(pool: &Value, scaling: &Value) -> BTreeMap<&'static str, String> {
    let n = |v: &Value| match v {
        Value::Null => "–".to_owned(),
        v => v.to_string(),
    };
    let name = pool["name"].as_str().unwrap();
    let s = scaling["pools"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["pool"] == name))
        .cloned()
        .unwrap_or(Value::Null);
    let applied = match &s["applied_workers"] {
        Value::Null => pool["pm"]["max_children"].clone(),
        v => v.clone(),
    };
    BTreeMap::from([
        ("busy", n(&pool["workers"]["active"])),
        ("idle", n(&pool["workers"]["idle"])),
        ("total", n(&pool["workers"]["total"])),
        ("queue", n(&pool["kernel"]["accept_queue"])),
        (
            "size",
            format!("{} / {}", n(&s["recommended_workers"]), n(&applied)),
        ),
    ])
}

fn shown_row(page: &Value, pool: &str) -> BTreeMap<&'static str, String> {
    let row = &page[pool];
    ["busy", "idle", "total", "queue", "size"]
        .into_iter()
        .map(|k| (k, row[k].as_str().unwrap_or("(missing)").to_owned()))
        .collect()
}

/// The overview's rows for every pool of the API's two answers.
fn expected_rows(api: &(Value, Value)) -> BTreeMap<String, BTreeMap<&'static str, String>> {
    api.0
        .as_array()
        .map(|l| l.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?.to_owned(), expected_row(p, &api.1))))
        .collect()
}

/// Reads `/api/v1/pools` and `/api/v1/autoscaling` (through `get`) before
/// and after the page's overview: Some (both, as text) when the two reads
/// agree with each other and with the page, for both pools, both running.
async fn overview_agrees(c: &Client, get: impl Fn(&str) -> Value) -> Option<String> {
    let read = || (get("/api/v1/pools"), get("/api/v1/autoscaling"));
    let before = read();
    let page = js(c, READ_OVERVIEW).await;
    let after = read();
    let (want, again) = (expected_rows(&before), expected_rows(&after));
    let shown: BTreeMap<String, BTreeMap<&str, String>> = want
        .keys()
        .map(|k| (k.clone(), shown_row(&page, k)))
        .collect();
    let running = want.keys().all(|p| page[p]["state"] == "running");
    (want.len() == 2 && want == again && shown == want && running)
        .then(|| format!("api {want:?}\npage {shown:?}"))
}

/// What the accessibility of a view lacks: tables without a caption or
/// column headers, form controls without a label, charts without a text
/// summary. Empty when nothing.
/// (uPlot's legends are tables too; a chart's figures are in its caption.)
const A11Y_PROBLEMS: &str = "const problems = [];
for (const t of document.querySelectorAll('main table:not(.u-legend)')) {
  if (!t.caption || !t.caption.textContent.trim()) problems.push('table without a caption: #' + t.id);
  const ths = t.querySelectorAll('thead th');
  if (!ths.length) problems.push('table without header cells: #' + t.id);
  for (const th of ths) if (th.getAttribute('scope') !== 'col' || !th.textContent.trim()) problems.push('header cell without scope or text: #' + t.id);
}
for (const el of document.querySelectorAll('input, select, textarea, button')) {
  const named = el.tagName === 'BUTTON' ? el.textContent.trim() : (el.labels && el.labels.length && el.labels[0].textContent.trim());
  if (!named) problems.push('control without a label: ' + (el.id || el.name || el.outerHTML.slice(0, 60)));
}
for (const fig of document.querySelectorAll('main figure')) {
  const cap = fig.querySelector('figcaption');
  if (!cap || !cap.textContent.trim()) problems.push('chart without a caption');
  for (const cv of fig.querySelectorAll('canvas')) if (cv.getAttribute('aria-hidden') !== 'true') problems.push('chart canvas exposed without text');
}
return problems;";

/// The body's background and text in WCAG terms: relative luminance of the
/// background and contrast ratios of the body text, muted text and links.
const COLOURS: &str = "const lum = (c) => {
  const v = (c.match(/[0-9.]+/g) || []).slice(0, 3).map(Number).map(x => {
    x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
};
const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
const bg = getComputedStyle(document.body).backgroundColor;
const probe = (cls, tag) => { const e = document.createElement(tag || 'span'); e.className = cls; document.body.appendChild(e);
  const c = getComputedStyle(e).color; e.remove(); return c; };
return { dark: matchMedia('(prefers-color-scheme: dark)').matches, background: bg, background_luminance: lum(bg),
  text: ratio(getComputedStyle(document.body).color, bg), muted: ratio(probe('note', 'p'), bg), link: ratio(probe('', 'a'), bg) };";

/// The events table as shown: pool, kind and severity of each row.
const READ_EVENTS: &str =
    "return Array.from(document.querySelectorAll('#events tbody tr[data-type]')).map(tr => ({
  pool: tr.querySelector('[data-field=pool]').textContent.trim(),
  kind: tr.querySelector('[data-field=kind]').textContent.trim(),
  severity: tr.querySelector('[data-field=severity]').textContent.trim() }));";

/// Waits until the events table shows at least one row and every row has
/// the wanted pool, kind and severity (None: any), and the address keeps
/// the filter. Gives the rows.
async fn events_filtered(
    c: &Client,
    pool: Option<&str>,
    kind: Option<&str>,
    severity: Option<&str>,
) -> Vec<Value> {
    let what = format!("events of pool {pool:?}, kind {kind:?}, severity {severity:?}");
    wait_for(&what, Duration::from_secs(60), move || async move {
        let rows = js(c, READ_EVENTS).await.as_array().cloned()?;
        let hash = js(c, "return location.hash;").await;
        let hash = hash.as_str()?;
        let fits = |field: &str, want: Option<&str>| {
            want.is_none_or(|w| rows.iter().all(|r| r[field] == w))
                && want.is_none_or(|w| hash.contains(&format!("={w}")))
        };
        (!rows.is_empty() && fits("pool", pool) && fits("kind", kind) && fits("severity", severity))
            .then_some(rows)
    })
    .await
}

fn save_screenshot(png: &[u8], name: &str) {
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join(name), png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(name), png).unwrap();
    }
}

#[test]
fn the_page_shows_live_pools_history_and_events_and_runs_no_markup() {
    let dir = TestDir::new("page");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hold.php"), HOLD_PHP).unwrap();
    std::fs::write(www.join(MARKUP_SCRIPT), HOLD_PHP).unwrap();
    let www_text = www.display().to_string();
    let cfg = config(&dir, 2, &www_text);
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["shop", "api"]);
    let base = format!("http://{}", d.addr);

    // The page's own answers: a strict policy, no sniffing.
    let (code, headers, body) = get_with_headers(d.addr, "/");
    assert_eq!(code, 200, "{body}");
    let csp = headers
        .get("content-security-policy")
        .expect("no Content-Security-Policy");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(
        headers.get("x-content-type-options").map(String::as_str),
        Some("nosniff")
    );
    assert!(body.contains("/assets/app.js"), "{body}");
    for asset in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
        let (code, headers, _) = get_with_headers(d.addr, &format!("/assets/{asset}"));
        assert_eq!(code, 200, "{asset}");
        assert_eq!(
            headers.get("x-content-type-options").map(String::as_str),
            Some("nosniff")
        );
    }

    let rt = crate::support::rt();
    rt.block_on(async {
        let b = browser(&d.dir).await;
        let c = &b.client;
        c.goto(&format!("{base}/")).await.unwrap();
        js(c, "window.__stay = 'same page'; return null;").await;

        // Both pools are listed with the figures the API gives at the same
        // moment (read the API before and after the page, and compare when
        // the two reads agree).
        let d = &d;
        let last = wait_for("the overview to match /api/v1/pools", Duration::from_secs(60), move || async move {
            overview_agrees(c, |path| api(d, path)).await
        })
        .await;
        eprintln!("overview matches the API:\n{last}");

        // The keyboard alone: from the top of the page, Tab to shop's link
        // (every stop shows where the focus is), Enter opens shop's page
        // with the focus on its heading.
        let mut stops = Vec::new();
        loop {
            press(c, TAB).await;
            let v = js(
                c,
                "const a = document.activeElement;
                 return { href: a.getAttribute('href'), text: a.textContent.trim().slice(0, 30), tag: a.tagName,
                          visible: a.matches(':focus-visible') && getComputedStyle(a).outlineStyle !== 'none' };",
            )
            .await;
            assert_eq!(v["visible"], true, "the focus is not visible on {v} (after {stops:?})");
            stops.push(format!("{} {}", v["tag"], v["text"]));
            if v["href"] == "#/pools/shop" {
                break;
            }
            assert!(stops.len() < 60, "Tab never reached shop's link: {stops:?}");
        }
        press(c, ENTER).await;
        wait_for("shop's page, its heading focused", Duration::from_secs(30), move || async move {
            let v = js(c, "return location.hash === '#/pools/shop' && document.activeElement.id === 'pool-title' && document.querySelectorAll('#workers tbody tr[data-pid]').length > 0;").await;
            (v == true).then_some(())
        })
        .await;
        eprintln!("keyboard: shop's page after {} Tab stops: {stops:?}", stops.len());
        let problems = js(c, A11Y_PROBLEMS).await;
        assert_eq!(problems, json!([]), "shop's page");
        c.goto(&format!("{base}/#/")).await.unwrap();
        let problems = js(c, A11Y_PROBLEMS).await;
        assert_eq!(problems, json!([]), "the overview");

        // 400 % zoom of a 1280 px window is a 320 px wide viewport: the
        // pools become cards and nothing needs scrolling sideways.
        c.set_window_size(320, 900).await.unwrap();
        let narrow = wait_for("the overview to fit 320 px", Duration::from_secs(20), move || async move {
            let v = js(
                c,
                "const wrap = document.querySelector('#pools').parentElement;
                 return { inner: window.innerWidth, page: document.documentElement.scrollWidth,
                          table: document.querySelector('#pools').scrollWidth, wrap: wrap.clientWidth };",
            )
            .await;
            let n = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
            (n("inner") <= 340 && n("page") <= n("inner") && n("table") <= n("wrap")).then_some(v)
        })
        .await;
        eprintln!("narrow overview: {narrow}");
        c.goto(&format!("{base}/#/pools/shop")).await.unwrap();
        let narrow = wait_for("shop's page to fit 320 px", Duration::from_secs(30), move || async move {
            let v = js(
                c,
                "return { inner: window.innerWidth, page: document.documentElement.scrollWidth,
                          body: document.body.scrollWidth,
                          charts: document.querySelectorAll('[data-chart] canvas').length,
                          workers: document.querySelectorAll('#workers tbody tr[data-pid]').length };",
            )
            .await;
            let n = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
            (n("inner") <= 340 && n("page") <= n("inner") && n("body") <= n("inner") && n("charts") == 5 && n("workers") > 0)
                .then_some(v)
        })
        .await;
        eprintln!("narrow pool page: {narrow}");
        c.goto(&format!("{base}/#/")).await.unwrap();
        c.set_window_size(1280, 900).await.unwrap();

        // Load: shop's two workers held busy and three connections waiting
        // behind them. The page follows without a reload, within two
        // collection intervals of the API showing it.
        let held = hold(d, "shop", &www.join("hold.php"), 5);
        let api_busy = wait_for("the API to show shop busy", Duration::from_secs(60), move || async move {
            let p = api(d, "/api/v1/pools/shop");
            let busy = p["workers"]["active"].as_u64() == Some(2);
            let queue = p["kernel"]["accept_queue"].as_u64().unwrap_or(0);
            (busy && queue >= 1).then_some(queue)
        })
        .await;
        // Counted in the page's own refreshes, not in seconds, so that a
        // loaded machine cannot fail it: a refresh that starts after the API
        // showed the load shows it, so at most two complete before the page
        // does (one may have been in flight), and the page refreshes at
        // least once per collection interval.
        const POLLS: &str = "const l = document.getElementById('live');
            return { polls: Number(l.dataset.polls || 0), every: Number(l.dataset.every || 0) };";
        let before = js(c, POLLS).await;
        let seen_at = Instant::now();
        let (shown_queue, polls, took) = wait_for("the page to show shop busy", Duration::from_secs(60), move || async move {
            let page = js(c, READ_OVERVIEW).await;
            let polls = js(c, POLLS).await;
            let row = &page["shop"];
            let queue: u64 = row["queue"].as_str()?.parse().ok()?;
            (row["busy"] == "2" && queue >= 1).then(|| (queue, polls, seen_at.elapsed()))
        })
        .await;
        let refreshes = polls["polls"].as_u64().unwrap_or(0) - before["polls"].as_u64().unwrap_or(0);
        eprintln!(
            "page showed shop busy 2, queue {shown_queue} (API: {api_busy}) after {refreshes} refreshes, {} ms after the API; refreshing every {} ms",
            took.as_millis(),
            polls["every"]
        );
        assert!(refreshes <= 2, "the page needed {refreshes} refreshes to show what the API showed");
        let every = polls["every"].as_u64().unwrap_or(u64::MAX);
        assert!(
            (1..=COLLECT_SECS * 1000).contains(&every),
            "the page refreshes every {every} ms, the pools are collected every {COLLECT_SECS} s at most"
        );
        assert_eq!(
            js(c, "return window.__stay || null;").await,
            "same page",
            "the page was reloaded"
        );
        save_screenshot(&c.screenshot().await.unwrap(), "overview.png");
        release(&www, held);

        // A request whose URI is markup, held on shop; a SIGHUP change of
        // api's size, applied by hand-over.
        let markup = hold(d, "shop", &www.join(MARKUP_SCRIPT), 1);
        std::fs::write(d.dir.join("config.yaml"), config(&d.dir, 3, &www_text)).unwrap();
        d.signal(Signal::SIGHUP);
        wait_for("api to run 3 workers", Duration::from_secs(60), move || async move {
            let p = api(d, "/api/v1/pools/api");
            (p["pm"]["max_children"] == 3 && p["workers"]["total"] == 3).then_some(())
        })
        .await;

        // api's page: charts with points for the last hour, and the
        // hand-over among the events.
        c.goto(&format!("{base}/#/pools/api")).await.unwrap();
        let points = wait_for("charts with points", Duration::from_secs(60), move || async move {
            let v = js(
                c,
                "const o = {}; for (const el of document.querySelectorAll('[data-chart]')) {
                   o[el.dataset.chart] = { points: Number(el.dataset.points || 0), canvas: !!el.querySelector('canvas') };
                 } return o;",
            )
            .await;
            let ok = ["busy", "queue", "rps", "pss", "size"].iter().all(|k| {
                v[k]["points"].as_u64().is_some_and(|n| n >= 2) && v[k]["canvas"] == true
            });
            ok.then_some(v)
        })
        .await;
        eprintln!("charts: {points}");
        let handover = wait_for("the hand-over event on api's page", Duration::from_secs(60), move || {
            text_among(
                c,
                "#pool-events tr[data-type=\"pool_change\"] [data-field=message]",
                "hand-over",
            )
        })
        .await;
        assert!(handover.contains("max_children 3"), "{handover}");
        let reasoning = js(c, "return document.getElementById('reasoning').textContent;").await;
        assert!(
            reasoning.as_str().is_some_and(|t| t.contains("workers")),
            "{reasoning}"
        );
        // Tall enough for the figures, the reasoning and the charts.
        c.set_window_size(1280, 1500).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        save_screenshot(&c.screenshot().await.unwrap(), "pool.png");
        c.set_window_size(1280, 900).await.unwrap();

        // shop's page: the URI with markup is text in the workers table.
        c.goto(&format!("{base}/#/pools/shop")).await.unwrap();
        let uri = wait_for("the markup URI on shop's page", Duration::from_secs(60), move || {
            text_among(
                c,
                "#workers [data-field=request]",
                "<img src=x onerror=window.__pwned=1>",
            )
        })
        .await;
        assert!(uri.contains("?<redacted>"), "query string shown: {uri}");
        assert_eq!(js(c, "return document.querySelectorAll('main img').length;").await, 0);
        release(&www, markup);

        // Why this size: each figure of the autoscaler's view of shop
        // (/api/v1/pools/shop/scale) is in the sentences on its page.
        let why = wait_for("shop's reasoning to say what /scale says", Duration::from_secs(60), move || async move {
            let s = api(d, "/api/v1/pools/shop/scale");
            let text = js(c, "return document.getElementById('reasoning').textContent;").await;
            let text = text.as_str()?.to_owned();
            let mut want = Vec::new();
            if let Some(n) = s["recommended_workers"].as_u64() {
                let sized = !s["arrival_rate_per_s"].is_null() && !s["mean_service_s"].is_null();
                want.push(if sized { format!("Needs {n} workers for ") } else { format!("Recommends {n} workers") });
            }
            if let (Some(_), Some(n)) = (s["memory_budget_bytes"].as_u64(), s["memory_ceiling_workers"].as_u64()) {
                want.push("The memory budget of ".to_owned());
                want.push(format!(" allows {n} workers"));
            }
            if let Some(n) = s["applied_workers"].as_u64() {
                want.push(format!("cap of {n} workers"));
            }
            if let Some(r) = s["rule"].as_str().filter(|r| !r.is_empty()) {
                want.push(format!("(rule {r})"));
            }
            (want.len() >= 2 && want.iter().all(|w| text.contains(w.as_str()))).then(|| format!("{text}\n(from {s})"))
        })
        .await;
        eprintln!("shop's reasoning: {why}");

        // The dark theme follows the system's (emulated here): a dark
        // background with readable text, and back.
        for (scheme, dark) in [("dark", true), ("light", false)] {
            cdp(c, "Emulation.setEmulatedMedia", json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] })).await;
            let colours = wait_for(&format!("the {scheme} theme"), Duration::from_secs(30), move || async move {
                let v = js(c, COLOURS).await;
                (v["dark"] == dark).then_some(v)
            })
            .await;
            let l = colours["background_luminance"].as_f64().unwrap();
            assert!(if dark { l < 0.05 } else { l > 0.9 }, "{scheme} theme: {colours}");
            for k in ["text", "muted", "link"] {
                let r = colours[k].as_f64().unwrap();
                assert!(r >= 4.5, "{scheme} theme: {k} contrast {r:.2} below 4.5: {colours}");
            }
            eprintln!("{scheme} theme: {colours}");
            if dark {
                c.goto(&format!("{base}/#/pools/api")).await.unwrap();
                wait_for("api's charts in the dark", Duration::from_secs(60), move || async move {
                    let v = js(c, "return document.querySelectorAll('[data-chart] canvas').length;").await;
                    (v == 5).then_some(())
                })
                .await;
                c.set_window_size(1280, 1500).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
                save_screenshot(&c.screenshot().await.unwrap(), "pool-dark.png");
                c.set_window_size(1280, 900).await.unwrap();
            }
        }
        cdp(c, "Emulation.setEmulatedMedia", json!({ "features": [] })).await;

        // An event message with markup: a pool directory php-fpm refuses.
        std::fs::write(d.dir.join("config.yaml"), config(&d.dir, 3, MARKUP_DIR)).unwrap();
        d.signal(Signal::SIGHUP);
        c.goto(&format!("{base}/#/events?pool=api&range=hour")).await.unwrap();
        let message = wait_for("the refused change among the events", Duration::from_secs(90), move || {
            text_among(
                c,
                "#events [data-field=message]",
                "onerror=window.__pwned=2",
            )
        })
        .await;
        eprintln!("refused change shown as text: {message}");
        assert_eq!(js(c, "return document.querySelectorAll('main img').length;").await, 0);
        assert_eq!(js(c, "return window.__pwned === undefined;").await, true, "markup ran");

        // The timeline filtered: the pool from the address, then a kind and a
        // severity chosen in their menus (each kept in the address); every
        // row shown fits, and clearing the filters shows other pools again.
        let problems = js(c, A11Y_PROBLEMS).await;
        assert_eq!(problems, json!([]), "the events view");
        assert_eq!(js(c, "return document.getElementById('filter-pool').value;").await, "api");
        events_filtered(c, Some("api"), None, None).await;
        let choose = |id: &'static str, value: String| async move {
            c.find(Locator::Id(id))
                .await
                .unwrap_or_else(|e| panic!("no #{id}: {e}"))
                .select_by_value(&value)
                .await
                .unwrap_or_else(|e| panic!("#{id} has no option {value:?}: {e}"));
        };
        choose("filter-type", "pool_change".to_owned()).await;
        let rows = events_filtered(c, Some("api"), Some("pool_change"), None).await;
        let severity = rows[0]["severity"].as_str().unwrap().to_owned();
        choose("filter-severity", severity.clone()).await;
        let rows = events_filtered(c, Some("api"), Some("pool_change"), Some(&severity)).await;
        eprintln!("api's {severity} pool changes: {} shown", rows.len());
        let api_count = api(d, &format!("/api/v1/events?pool=api&type=pool_change&severity={severity}&from=now-1h&limit=500"))["events"]
            .as_array()
            .map_or(0, Vec::len);
        assert!(api_count >= rows.len(), "the page shows {} events, the API has {api_count}", rows.len());
        for id in ["filter-severity", "filter-type", "filter-pool"] {
            choose(id, String::new()).await;
        }
        let all = wait_for("the timeline of every pool", Duration::from_secs(60), move || async move {
            let rows = js(c, READ_EVENTS).await.as_array().cloned()?;
            let pools: std::collections::BTreeSet<String> =
                rows.iter().filter_map(|r| r["pool"].as_str().map(str::to_owned)).collect();
            (pools.contains("api") && pools.contains("shop")).then_some(pools)
        })
        .await;
        eprintln!("unfiltered timeline: pools {all:?}");


        // A crafted address: a pool name made of markup is shown as text, and
        // so is the API's answer that there is no such pool.
        let errors = console_errors(c).await;
        assert!(errors.is_empty(), "console: {errors:#?}");
        c.goto(&format!("{base}/#/pools/%3Cimg%20src%3Dx%20onerror%3Dwindow.__pwned%3D3%3E")).await.unwrap();
        let said = wait_for("the crafted pool name as text", Duration::from_secs(30), move || async move {
            let v = js(
                c,
                "return { title: document.querySelector('[data-field=pool-name]').textContent,
                          live: document.getElementById('live').textContent };",
            )
            .await;
            let markup = "<img src=x onerror=window.__pwned=3>";
            (v["title"] == markup && v["live"].as_str()?.contains(markup)).then_some(v)
        })
        .await;
        eprintln!("crafted address: {said}");
        assert_eq!(js(c, "return document.querySelectorAll('main img').length;").await, 0);
        assert_eq!(js(c, "return window.__pwned === undefined;").await, true, "markup ran");
        // The browser logs the API's 404s for that name; they are the only
        // errors allowed here.
        let errors = console_errors(c).await;
        assert!(!errors.is_empty(), "the crafted pool's 404s are not in the console");
        for (_, e) in &errors {
            assert!(
                e.contains(&format!("{base}/api/v1/pools/%3Cimg")) && e.contains("404"),
                "console error other than the crafted pool's 404: {e}"
            );
        }
        c.goto(&format!("{base}/#/")).await.unwrap();
        wait_for("the overview again", Duration::from_secs(30), move || async move {
            let page = js(c, READ_OVERVIEW).await;
            (page["shop"]["state"] == "running").then_some(())
        })
        .await;

        // The console has no error (since the crafted address: answers to
        // its last requests may still come), and every request went to the
        // manager.
        let errors: Vec<(u64, String)> = console_errors(c)
            .await
            .into_iter()
            .filter(|(_, e)| !(e.contains(&format!("{base}/api/v1/pools/%3Cimg")) && e.contains("404")))
            .collect();
        assert!(errors.is_empty(), "console: {errors:#?}");
        // Every request of the page (its document is on the manager) goes
        // to the manager, and no request at all (the browser's own new tab
        // included) goes to another host.
        let mut urls = Vec::new();
        let mut away = Vec::new();
        for entry in log(c, "performance").await {
            let Some(text) = entry["message"].as_str() else { continue };
            let m: Value = serde_json::from_str(text).unwrap_or_default();
            if m["message"]["method"] != "Network.requestWillBeSent" {
                continue;
            }
            let params = &m["message"]["params"];
            let url = params["request"]["url"].as_str().unwrap_or("").to_owned();
            let ours = params["documentURL"].as_str().is_some_and(|u| u.starts_with(&base));
            let network = ["http:", "https:", "ws:", "wss:"].iter().any(|s| url.starts_with(s));
            if !url.starts_with(&format!("{base}/")) && (ours || network) {
                away.push(url.clone());
            }
            if ours {
                urls.push(url);
            }
        }
        assert!(urls.len() > 10, "too few requests seen: {urls:?}");
        assert!(away.is_empty(), "requests beyond the manager: {away:?}");
        eprintln!("{} requests, all to {base}", urls.len());
        assert_eq!(js(c, "return window.__stay || null;").await, "same page");
        b.client.clone().close().await.unwrap();
    });
}
