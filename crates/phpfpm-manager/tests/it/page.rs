//! The web page in a real browser: Debian's chromium, headless, driven over
//! WebDriver (chromedriver and the `fantoccini` client) against a running
//! manager with two real supervised pools. It checks that the overview
//! shows the figures of `/api/v1/pools`, follows load without a reload, that
//! a pool's page draws its history and the hand-over of a SIGHUP change,
//! that markup from a request URI or an event message is shown as text and
//! never run, that the console has no error and that every request the page
//! makes goes to the manager. Screenshots are kept as test artifacts
//! (`UPDATE_SCREENSHOTS=1` also writes `docs/screenshots/`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::Method;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};
use serde_json::{json, Value};

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

async fn log(c: &Client, kind: &'static str) -> Vec<Value> {
    c.issue_cmd(GetLog(kind))
        .await
        .unwrap_or_else(|e| panic!("cannot read the {kind} log: {e}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
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
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

/// Requests of `script` on `pool`'s socket, one thread each, each held
/// until the file `release` appears next to `hold.php` (or a minute).
fn hold(d: &TestDaemon, pool: &str, script: &Path, n: usize) -> Vec<std::thread::JoinHandle<()>> {
    let sock = d
        .dir
        .join(&format!("var/phpfpm-manager/sockets/{pool}.sock"));
    (0..n)
        .map(|_| {
            let (sock, script) = (sock.clone(), script.display().to_string());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let t = Timeouts {
                    connect: Duration::from_secs(2),
                    total: Duration::from_secs(90),
                };
                let _ = rt.block_on(fastcgi::get(&Endpoint::Unix(sock), &script, "ms=60000", t));
            })
        })
        .collect()
}

fn release(www: &Path, held: Vec<std::thread::JoinHandle<()>>) {
    std::fs::write(www.join("release"), "").unwrap();
    for h in held {
        h.join().unwrap();
    }
    std::fs::remove_file(www.join("release")).unwrap();
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
        let rows = |api: &(Value, Value)| -> BTreeMap<String, BTreeMap<&'static str, String>> {
            api.0
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap().to_owned(), expected_row(p, &api.1)))
                .collect()
        };
        let last = wait_for("the overview to match /api/v1/pools", Duration::from_secs(60), move || async move {
            let before = (api(d, "/api/v1/pools"), api(d, "/api/v1/autoscaling"));
            let page = js(c, READ_OVERVIEW).await;
            let after = (api(d, "/api/v1/pools"), api(d, "/api/v1/autoscaling"));
            let (want, again) = (rows(&before), rows(&after));
            let shown: BTreeMap<String, BTreeMap<&str, String>> =
                want.keys().map(|k| (k.clone(), shown_row(&page, k))).collect();
            let states_ok = ["shop", "api"].iter().all(|p| page[p]["state"] == "running");
            (want.len() == 2 && want == again && shown == want && states_ok)
                .then(|| format!("api {want:?}\npage {shown:?}"))
        })
        .await;
        eprintln!("overview matches the API:\n{last}");

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
        let seen_at = Instant::now();
        let (shown_queue, took) = wait_for("the page to show shop busy", Duration::from_secs(60), move || async move {
            let page = js(c, READ_OVERVIEW).await;
            let row = &page["shop"];
            let queue: u64 = row["queue"].as_str()?.parse().ok()?;
            (row["busy"] == "2" && queue >= 1).then(|| (queue, seen_at.elapsed()))
        })
        .await;
        eprintln!(
            "page showed shop busy 2, queue {shown_queue} (API: {api_busy}) {} ms after the API",
            took.as_millis()
        );
        assert!(
            took <= Duration::from_secs(2 * COLLECT_SECS),
            "the page took {took:?} to follow the API (two collection intervals: {}s)",
            2 * COLLECT_SECS
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
        let handover = wait_for("the hand-over event on api's page", Duration::from_secs(60), move || async move {
            let v = js(
                c,
                "return Array.from(document.querySelectorAll('#pool-events tr[data-type=\"pool_change\"] [data-field=message]')).map(e => e.textContent);",
            )
            .await;
            v.as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|m| m.contains("hand-over"))
                .map(str::to_owned)
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
        let uri = wait_for("the markup URI on shop's page", Duration::from_secs(60), move || async move {
            let v = js(
                c,
                "return Array.from(document.querySelectorAll('#workers [data-field=request]')).map(e => e.textContent);",
            )
            .await;
            v.as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|t| t.contains("<img src=x onerror=window.__pwned=1>"))
                .map(str::to_owned)
        })
        .await;
        assert!(uri.contains("?<redacted>"), "query string shown: {uri}");
        assert_eq!(js(c, "return document.querySelectorAll('main img').length;").await, 0);
        release(&www, markup);

        // An event message with markup: a pool directory php-fpm refuses.
        std::fs::write(d.dir.join("config.yaml"), config(&d.dir, 3, MARKUP_DIR)).unwrap();
        d.signal(Signal::SIGHUP);
        c.goto(&format!("{base}/#/events?pool=api&range=hour")).await.unwrap();
        let message = wait_for("the refused change among the events", Duration::from_secs(90), move || async move {
            let v = js(
                c,
                "return Array.from(document.querySelectorAll('#events [data-field=message]')).map(e => e.textContent);",
            )
            .await;
            v.as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|t| t.contains("onerror=window.__pwned=2"))
                .map(str::to_owned)
        })
        .await;
        eprintln!("refused change shown as text: {message}");
        assert_eq!(js(c, "return document.querySelectorAll('main img').length;").await, 0);
        assert_eq!(js(c, "return window.__pwned === undefined;").await, true, "markup ran");

        // The console has no error, and every request went to the manager.
        let console = log(c, "browser").await;
        let errors: Vec<&Value> = console
            .iter()
            .filter(|e| e["level"] == "SEVERE")
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
