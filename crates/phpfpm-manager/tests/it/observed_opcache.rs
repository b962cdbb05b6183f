//! OPcache of observed pools: php-fpm masters the test starts itself and the
//! manager only watches. A pool that can run the probe shows its figures
//! (and the probe's requests on its main socket are not counted as
//! traffic); a pool whose settings keep the probe out says why, over
//! `/metrics` and the API.

use std::path::Path;
use std::time::Duration;

use fpm_core::fpm_conf::PoolSpec;
use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};

use crate::support::{promtool_check, rt, FpmOpts, TestDaemon, TestDir, TestFpm};

fn observed(name: &str, socket: &Path) -> String {
    format!(
        "\x20 - name: {name}\n    supervise: false\n    fastcgi_endpoint: unix:{}\n",
        socket.display()
    )
}

fn daemon_config(pools: &str) -> String {
    format!(
        "monitoring:\n  collect_interval: 1s\n  idle_interval: 1s\n  enable_opcache: true\n\
         pools:\n{pools}"
    )
}

/// The value of the series `name{pool="<pool>"...}` on a metrics page.
fn series(page: &str, name: &str, pool: &str) -> Option<f64> {
    let prefix = format!("{name}{{pool=\"{pool}\"");
    page.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn opcache_api(d: &TestDaemon, pool: &str) -> serde_json::Value {
    let (_, body) = d
        .get(&format!("/api/v1/pools/{pool}/opcache"))
        .unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_default()
}

/// `accepted conn` as php-fpm reports it now (this request counts too).
fn raw_accepted(socket: &Path) -> u64 {
    let t = Timeouts {
        connect: Duration::from_secs(1),
        total: Duration::from_secs(5),
    };
    let ep = Endpoint::Unix(socket.to_owned());
    let reply = rt()
        .block_on(fastcgi::get(&ep, "/status", "json", t))
        .unwrap();
    let text = String::from_utf8_lossy(&reply.stdout).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["accepted conn"].as_u64().unwrap()
}

#[test]
fn an_observed_pool_shows_opcache_figures_and_the_probe_is_not_traffic() {
    // No pm.status_listen: the probe goes through the pool's own socket.
    let fpm = TestFpm::start(FpmOpts {
        name: "obs",
        status_listen: false,
        ..FpmOpts::default()
    });
    let cfg = daemon_config(&observed("obs", &fpm.socket));
    let d = TestDaemon::start("obs-opcache", Some(&cfg), &[]);
    let page = d
        .wait_metrics(Duration::from_secs(60), |b| {
            b.contains("phpfpm_manager_opcache_enabled{pool=\"obs\"} 1")
                && b.contains("phpfpm_manager_opcache_hits_total{pool=\"obs\"}")
        })
        .unwrap_or_else(|| {
            panic!(
                "no OPcache figures for the observed pool; api: {}\nlog:\n{}",
                opcache_api(&d, "obs"),
                d.log()
            )
        });
    promtool_check(&page).unwrap();
    let api = opcache_api(&d, "obs");
    assert_eq!(api["available"], true, "{api}");
    assert!(api["cached_scripts"].as_u64().unwrap_or(0) >= 1, "{api}");

    // Nothing but the probe runs PHP in this pool, so every hit is one
    // probe request through the main socket. Wait for several.
    let hits0 = series(&page, "phpfpm_manager_opcache_hits_total", "obs").unwrap();
    let enough = d.wait_metrics(Duration::from_secs(90), |b| {
        series(b, "phpfpm_manager_opcache_hits_total", "obs").is_some_and(|h| h >= hits0 + 8.0)
    });
    assert!(
        enough.is_some(),
        "the probe stopped running; log:\n{}",
        d.log()
    );
    // What php-fpm counts includes every probe request; what the manager
    // reports does not. Without the subtraction the two differ only by
    // the requests since the last look (this one, at most a probe and a
    // ping).
    let raw = raw_accepted(&fpm.socket);
    let text = d.pool_json("obs");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let reported = v["accepted_connections"]
        .as_u64()
        .unwrap_or_else(|| panic!("no accepted_connections: {v}"));
    assert!(
        raw >= reported + 8,
        "probe requests are counted as traffic: php-fpm says {raw}, the manager {reported}"
    );
}

/// A pool of php-fpm's own settings, started by the test.
fn limited(name: &'static str, tune: impl FnOnce(&mut PoolSpec)) -> TestFpm {
    TestFpm::start_tuned(
        FpmOpts {
            name,
            status_listen: false,
            ..FpmOpts::default()
        },
        tune,
        &[],
    )
}

fn www(spec: &PoolSpec) -> String {
    // The pool's socket sits next to its scripts' directory.
    Path::new(&spec.listen)
        .parent()
        .unwrap()
        .join("www")
        .display()
        .to_string()
}

#[test]
fn observed_pools_that_keep_the_probe_out_say_why() {
    // open_basedir without the manager's runtime directory: known from the
    // config named in the master's title, so the probe is never sent.
    let basedir = limited("ob", |s| {
        let dir = www(s);
        s.php_admin_values.push(("open_basedir".into(), dir));
    });
    // The same setting in a pool the manager cannot match to its config (a
    // different name, reached through a link to its socket): the probe is
    // sent and php-fpm's refusal is explained.
    let unknown = limited("obu", |s| {
        let dir = www(s);
        s.php_admin_values.push(("open_basedir".into(), dir));
    });
    let dir = TestDir::new("obs-blocked");
    let link = dir.join("elsewhere.sock");
    std::os::unix::fs::symlink(&unknown.socket, &link).unwrap();
    let mut pools = observed("ob", &basedir.socket) + &observed("obx", &link);
    // A chrooted pool (php-fpm chroots only as root).
    let as_root = nix::unistd::geteuid().is_root();
    let jail = as_root.then(|| {
        limited("jail", |s| {
            let dir = www(s);
            s.extra.push(("chroot".into(), dir));
        })
    });
    if let Some(j) = &jail {
        pools += &observed("jail", &j.socket);
    }
    let d = TestDaemon::start_in(dir, Some(&daemon_config(&pools)), &[]);
    let want: Vec<(&str, &str)> = [("ob", "open_basedir"), ("obx", "not_found")]
        .into_iter()
        .chain(as_root.then_some(("jail", "chroot")))
        .collect();
    let page = d
        .wait_metrics(Duration::from_secs(60), |b| {
            want.iter().all(|(p, why)| {
                b.contains(&format!(
                    "phpfpm_manager_opcache_unavailable{{pool=\"{p}\",reason=\"{why}\"}} 1"
                ))
            })
        })
        .unwrap_or_else(|| {
            let apis: Vec<String> = want
                .iter()
                .map(|(p, _)| format!("{p}: {}", opcache_api(&d, p)))
                .collect();
            panic!(
                "reasons missing; api:\n{}\nlog:\n{}",
                apis.join("\n"),
                d.log()
            )
        });
    promtool_check(&page).unwrap();
    for (p, why) in &want {
        let v = opcache_api(&d, p);
        assert_eq!(v["available"], false, "{p}: {v}");
        assert_eq!(v["reason"]["kind"], *why, "{p}: {v}");
        let msg = v["reason"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("probe"), "{p}: {msg}");
    }
    let ob = opcache_api(&d, "ob");
    assert!(
        ob["reason"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("open_basedir") && m.contains("pm.status_listen")),
        "{ob}"
    );
    // A refusal is not asked again every look: after it, the probe waits
    // 30 s. Over 10 s of one-second looks php-fpm then counts the status
    // pages (and a ping, and this test's two requests), not a probe each.
    let before = raw_accepted(&unknown.socket);
    std::thread::sleep(Duration::from_secs(10));
    let delta = raw_accepted(&unknown.socket) - before;
    assert!(
        delta <= 16,
        "{delta} requests in 10 s: the refused probe is retried every look"
    );
    // Each pool is still collected normally.
    for (p, _) in &want {
        assert_eq!(
            series(&page, "phpfpm_up", p),
            Some(1.0),
            "pool {p} not up:\n{page}"
        );
    }
    drop(jail);
}
