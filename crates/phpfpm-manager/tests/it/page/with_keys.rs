//! The page against a manager with API keys: before a key it shows a
//! labelled prompt and no pool data, a refused key is said to be refused
//! and asked for again, a key of the `read` scope shows every view, the key
//! is kept in the tab's sessionStorage only (not localStorage, a cookie or
//! an address) and every API call sends it as `Authorization: Bearer`.
//!
//! The browser logs each 401 answer as a console error ("Failed to load
//! resource"): the page cannot know a key is needed before it is refused.
//! Those are expected, one per refused call (DevTools' network events say
//! which calls were refused: those without a key or with the wrong one),
//! and only those: any other error, or a call with the key refused, fails
//! the test.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    browser, config, console_errors, js, overview_agrees, requests, save_screenshot, wait_for,
    ENTER, READ_OVERVIEW,
};
use crate::auth::key_new;
use crate::supervisor::pools_up;
use crate::support::{http_request, TestDaemon, TestDir, HOLD_PHP};

/// What the page shows of the key prompt, where the key is kept, and which
/// pools it lists.
const READ_STATE: &str = "const d = document.getElementById('key-dialog');
const input = document.getElementById('key-input');
const err = document.getElementById('key-error');
const text = (ids) => (ids || '').split(/\\s+/).map(id => document.getElementById(id)).filter(Boolean)
  .map(e => e.textContent.trim()).filter(Boolean).join(' ');
return {
  open: d.open,
  title: text(d.getAttribute('aria-labelledby')),
  description: text(d.getAttribute('aria-describedby')),
  label: input.labels.length ? input.labels[0].textContent.trim() : null,
  input_description: text(input.getAttribute('aria-describedby')),
  focused: document.activeElement === input,
  error: err.hidden ? null : err.textContent,
  error_role: err.getAttribute('role'),
  invalid: input.getAttribute('aria-invalid'),
  session: sessionStorage.getItem('phpfpm-manager.api-key'),
  session_keys: Object.keys(sessionStorage),
  local_keys: Object.keys(localStorage),
  cookie: document.cookie,
  href: location.href,
  pools: Array.from(document.querySelectorAll('#pools tbody tr[data-pool]')).map(tr => tr.dataset.pool),
  shop_shown: document.querySelector('main').textContent.includes('shop'),
  live: document.getElementById('live').textContent,
};";

/// `GET path` with `headers`: status and body.
fn get(d: &TestDaemon, path: &str, headers: &str) -> (u16, String) {
    http_request(d.addr, "GET", path, headers, None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `GET path` from the API with the key, as JSON.
fn api_with(d: &TestDaemon, secret: &str, path: &str) -> Value {
    let (code, body) = get(d, path, &format!("Authorization: Bearer {secret}\r\n"));
    assert_eq!(code, 200, "GET {path} with the key: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[test]
fn with_keys_the_page_asks_for_one_keeps_it_in_the_tab_and_reads_everything_with_read_scope() {
    let reader = key_new("page-reader", "read");
    let dir = TestDir::new("page-keys");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hold.php"), HOLD_PHP).unwrap();
    // shop autoscaled, so that it has decisions to explain.
    let pools = config(&dir, 2, &www.display().to_string()).replace(
        "- name: shop\n    pm: static\n    max_workers: 2\n",
        "- name: shop\n    max_workers: 4\n    scaling:\n      enabled: true\n      min_workers: 1\n      max_workers: 4\n",
    );
    assert!(pools.contains("scaling:"), "{pools}");
    let cfg = format!(
        "{pools}server:\n  auth:\n    enabled: true\n    keys:\n{}",
        reader.entry
    );
    let d = TestDaemon::start_in(dir, Some(&cfg), &[]);
    pools_up(&d, &["shop", "api"]);
    let base = format!("http://{}", d.addr);
    let secret = reader.secret.as_str();

    // The API asks for a key; the page's own files do not.
    for path in ["/api/v1/pools", "/api/v1/overview", "/api/v1/status"] {
        let (code, body) = get(&d, path, "");
        assert_eq!(code, 401, "GET {path} without a key: {body}");
    }
    for path in [
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/assets/uPlot.iife.min.js",
        "/assets/uPlot.min.css",
        "/assets/favicon.svg",
        "/favicon.ico",
    ] {
        let (code, body) = get(&d, path, "");
        assert_eq!(code, 200, "GET {path} without a key: {body}");
    }

    let rt = crate::support::rt();
    rt.block_on(async {
        let b = browser(&d.dir).await;
        let c = &b.client;
        let d = &d;
        c.goto(&format!("{base}/")).await.unwrap();

        // No key: a labelled prompt with the focus in its field, no pool.
        let asked = wait_for("the key prompt", Duration::from_secs(60), move || async move {
            let v = js(c, READ_STATE).await;
            (v["open"] == true && v["focused"] == true).then_some(v)
        })
        .await;
        eprintln!("prompt: {asked}");
        assert_eq!(asked["title"], "API key", "{asked}");
        assert!(asked["description"].as_str().is_some_and(|t| t.contains("asks for an API key")), "{asked}");
        assert_eq!(asked["label"], "Key", "{asked}");
        assert!(asked["input_description"].as_str().is_some_and(|t| t.contains("session storage only")), "{asked}");
        assert_eq!(asked["error"], Value::Null, "a first prompt is not a refusal: {asked}");
        assert_eq!(asked["pools"], json!([]), "pool data before a key: {asked}");
        assert_eq!(asked["shop_shown"], false, "pool data before a key: {asked}");
        assert_eq!(asked["session_keys"], json!([]), "{asked}");

        // Something that cannot be a key (a space inside): said at once,
        // nothing sent.
        c.active_element().await.unwrap().send_keys(&format!("pfm_half a key{ENTER}")).await.unwrap();
        let malformed = wait_for("the refusal of a key with a space", Duration::from_secs(30), move || async move {
            let v = js(c, READ_STATE).await;
            (v["open"] == true && v["error"].as_str().is_some_and(|t| t.contains("no space"))).then_some(v)
        })
        .await;
        assert_eq!(malformed["session_keys"], json!([]), "{malformed}");

        // A wrong key, typed and entered from the keyboard: refused, said
        // so in an alert, not kept, asked for again.
        let wrong = "pfm_this-key-is-not-configured-here";
        c.active_element().await.unwrap().send_keys(&format!("{wrong}{ENTER}")).await.unwrap();
        let refused = wait_for("the refusal of a wrong key", Duration::from_secs(60), move || async move {
            let v = js(c, READ_STATE).await;
            let said = v["error"].as_str().is_some_and(|t| t.contains("refused this key"));
            (v["open"] == true && said).then_some(v)
        })
        .await;
        eprintln!("wrong key: {refused}");
        save_screenshot(&c.screenshot().await.unwrap(), "key.png");
        assert_eq!(refused["error_role"], "alert", "{refused}");
        assert_eq!(refused["invalid"], "true", "{refused}");
        assert!(refused["input_description"].as_str().is_some_and(|t| t.contains("refused")), "{refused}");
        assert_eq!(refused["focused"], true, "{refused}");
        assert_eq!(refused["session_keys"], json!([]), "a refused key is kept: {refused}");
        assert_eq!(refused["pools"], json!([]), "{refused}");

        // The key of the `read` scope: both pools, with the API's figures.
        c.active_element().await.unwrap().send_keys(&format!("{secret}{ENTER}")).await.unwrap();
        let last = wait_for("the overview with the key", Duration::from_secs(60), move || async move {
            let v = js(c, READ_STATE).await;
            if v["open"] != false {
                return None;
            }
            overview_agrees(c, |path| api_with(d, secret, path)).await
        })
        .await;
        eprintln!("overview with the key:\n{last}");
        let kept = js(c, READ_STATE).await;
        assert_eq!(kept["session"], secret, "the key is not in sessionStorage");
        assert_eq!(kept["session_keys"], json!(["phpfpm-manager.api-key"]), "{kept}");
        assert_eq!(kept["local_keys"], json!([]), "localStorage: {kept}");
        assert_eq!(kept["cookie"], "", "cookies: {kept}");
        assert!(!kept["href"].as_str().unwrap().contains(secret), "the key is in the address");
        let cookies = c.get_all_cookies().await.unwrap();
        assert!(cookies.is_empty(), "cookies: {cookies:?}");

        // Every view with that key: a pool's figures, workers and charts,
        // the events timeline.
        c.goto(&format!("{base}/#/pools/shop")).await.unwrap();
        let charts = wait_for("shop's page with the key", Duration::from_secs(60), move || async move {
            let v = js(
                c,
                // (shop runs ondemand: without traffic its table may say it
                // has no worker, a row all the same)
                "const o = { workers: document.querySelectorAll('#workers tbody tr').length,
                             reasoning: document.getElementById('reasoning').textContent, charts: {} };
                 for (const el of document.querySelectorAll('[data-chart]')) o.charts[el.dataset.chart] = Number(el.dataset.points || 0);
                 return o;",
            )
            .await;
            let points = ["busy", "queue", "rps", "pss", "size"].iter().all(|k| v["charts"][k].as_u64().is_some_and(|n| n >= 2));
            (points && v["workers"].as_u64() > Some(0) && v["reasoning"].as_str().is_some_and(|t| !t.is_empty())).then_some(v)
        })
        .await;
        eprintln!("shop with the key: {charts}");
        // Its decisions, each with the figures behind it in words: the
        // newest as the API records it.
        let decision = wait_for("shop's decisions with their figures", Duration::from_secs(60), move || async move {
            let events = api_with(d, secret, "/api/v1/events?pool=shop&type=scale_decision&from=now-1h&limit=50");
            let newest = events["events"].as_array()?.iter().max_by_key(|e| e["ts_ms"].as_u64())?.clone();
            let rows = js(
                c,
                "return Array.from(document.querySelectorAll('#decisions tbody tr')).map(tr => {
                   const f = (k) => { const e = tr.querySelector('[data-field=' + k + ']'); return e ? e.textContent : null; };
                   return { decision: f('decision'), figures: f('figures') }; });",
            )
            .await;
            let first = rows.as_array()?.first()?.clone();
            let details = &newest["details"];
            let figures = first["figures"].as_str()?;
            let mut want = vec![format!("(rule {})", details["rule"].as_str()?)];
            if let Some(n) = details["recommended_workers"].as_u64() {
                let sized = !details["long_rate_per_s"].is_null() && !details["mean_service_s"].is_null();
                want.push(if sized { format!("Needs {n} workers for ") } else { format!("Recommends {n} workers") });
            }
            if let Some(n) = details["memory_ceiling"].as_u64() {
                want.push(format!(" allows {n} workers"));
            }
            (first["decision"] == newest["message"] && want.iter().all(|w| figures.contains(w.as_str())))
                .then(|| format!("{first}\n(from {details})"))
        })
        .await;
        eprintln!("shop's newest decision: {decision}");
        c.goto(&format!("{base}/#/events?range=hour")).await.unwrap();
        wait_for("the events with the key", Duration::from_secs(60), move || async move {
            let n = js(c, "return document.querySelectorAll('#events tbody tr[data-type]').length;").await;
            (n.as_u64() > Some(0)).then_some(())
        })
        .await;

        // The key stays for the tab: a reload of the page asks nothing.
        c.refresh().await.unwrap();
        c.goto(&format!("{base}/#/")).await.unwrap();
        wait_for("the overview after a reload", Duration::from_secs(60), move || async move {
            let v = js(c, READ_STATE).await;
            let page = js(c, READ_OVERVIEW).await;
            (v["open"] == false && page["shop"]["state"] == "running" && page["api"]["state"] == "running")
                .then_some(())
        })
        .await;
        // A few more refreshes with the key, for the console to hold any
        // error they would cause.
        let polls = js(c, "return Number(document.getElementById('live').dataset.polls || 0);").await.as_u64().unwrap_or(0);
        wait_for("three refreshes", Duration::from_secs(60), move || async move {
            let now = js(c, "return Number(document.getElementById('live').dataset.polls || 0);").await.as_u64()?;
            (now >= polls + 3).then_some(())
        })
        .await;

        // The requests: the page's own files without a key; every API call
        // with `Authorization: Bearer`, the good key from the first call that
        // carried it on, and never refused; the key in no address; nothing
        // beyond the manager.
        let sent = requests(c).await;
        let mut with_key = false;
        let (mut anonymous, mut wrong_sent, mut good_sent, mut refused_calls) = (0, 0, 0, 0);
        for s in &sent {
            let (url, auth) = (&s.url, s.authorization.as_deref());
            if !s.document.starts_with(&base) && !url.starts_with(&base) {
                continue;
            }
            assert!(url.starts_with(&format!("{base}/")), "a request beyond the manager: {url}");
            assert!(!url.contains(secret) && !url.contains(wrong), "a key in an address: {url}");
            assert!(auth.is_none_or(|a| !a.contains("half")), "{url} sent a malformed key");
            if !url.starts_with(&format!("{base}/api/")) {
                assert_eq!(auth, None, "{url} sent a key");
                assert!(s.status.is_none_or(|c| c < 400), "{s:?}");
                continue;
            }
            match auth {
                None => anonymous += 1,
                Some(a) if a == format!("Bearer {wrong}") => wrong_sent += 1,
                Some(a) if a == format!("Bearer {secret}") => {
                    with_key = true;
                    good_sent += 1;
                    assert!(s.status.is_none_or(|c| c == 200), "refused with the key: {s:?}");
                }
                Some(a) => panic!("{url} sent Authorization {a:?}"),
            }
            if s.status == Some(401) {
                refused_calls += 1;
            }
            assert!(
                !with_key || auth == Some(&format!("Bearer {secret}")),
                "{url} sent {auth:?} after the key was entered"
            );
        }
        eprintln!(
            "API calls: {anonymous} without a key, {wrong_sent} with the wrong one, {good_sent} with the key; {refused_calls} refused"
        );
        assert!(anonymous > 0 && wrong_sent > 0 && good_sent > 10, "{sent:#?}");
        assert_eq!(refused_calls, anonymous + wrong_sent, "{sent:#?}");

        // The console: one error per refused call (the browser's "Failed to
        // load resource ... 401"), and nothing else: none once the key is in.
        let errors = console_errors(c).await;
        for (_, e) in &errors {
            assert!(
                e.contains(&format!("{base}/api/v1/")) && e.contains(" 401 "),
                "console error other than a refused API call: {e}"
            );
        }
        assert_eq!(errors.len(), refused_calls, "console: {errors:#?}");

        // Forgetting the key: gone from the tab, and the page asks again.
        c.find(fantoccini::Locator::Id("key-button")).await.unwrap().click().await.unwrap();
        c.find(fantoccini::Locator::Id("key-forget")).await.unwrap().click().await.unwrap();
        let forgot = wait_for("the prompt after forgetting the key", Duration::from_secs(60), move || async move {
            let v = js(c, READ_STATE).await;
            (v["open"] == true && v["session_keys"] == json!([])).then_some(v)
        })
        .await;
        assert_eq!(forgot["error"], Value::Null, "{forgot}");
        b.client.clone().close().await.unwrap();
    });
}
