//! The OPcache probe against real php-fpm 8.2: figures move when new scripts
//! are compiled, the probe's requests can be told apart from real traffic,
//! the probe file is out of reach of the pool's document root (asked through
//! real nginx), it disappears with the probe, and a pool without OPcache is
//! reported as such.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use phpfpm_manager::config::Endpoint;
use phpfpm_manager::fastcgi::{self, Timeouts};
use phpfpm_manager::opcache::{self, OpcacheError, OpcacheProbe};

use crate::support::{http_get, promtool_check, rt, FpmOpts, TestDir, TestFpm, TestNginx};

fn t() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        total: Duration::from_secs(5),
    }
}

/// Five small scripts, each a distinct compilation unit.
const SCRIPTS: [(&str, &str); 5] = [
    (
        "s1.php",
        "<?php function f1() { return 'one'; } echo f1();\n",
    ),
    (
        "s2.php",
        "<?php function f2() { return 'two'; } echo f2();\n",
    ),
    (
        "s3.php",
        "<?php function f3() { return 'three'; } echo f3();\n",
    ),
    (
        "s4.php",
        "<?php function f4() { return 'four'; } echo f4();\n",
    ),
    (
        "s5.php",
        "<?php function f5() { return 'five'; } echo f5();\n",
    ),
];

/// OPcache leaves files younger than `opcache.file_update_protection` (2 s)
/// uncached; age the test scripts instead of sleeping.
fn age(path: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_accessed(past)
                .set_modified(past),
        )
        .unwrap();
}

fn pool_with_scripts(name: &'static str) -> TestFpm {
    let fpm = TestFpm::start(FpmOpts {
        name,
        max_children: 2,
        scripts: SCRIPTS.to_vec(),
        ..FpmOpts::default()
    });
    for (s, _) in SCRIPTS {
        age(Path::new(&fpm.www(s)));
    }
    fpm
}

/// `accepted conn` of the pool, read through its status socket (which does
/// not count its own requests).
async fn accepted(fpm: &TestFpm) -> u64 {
    let ep = Endpoint::Unix(fpm.status_socket.clone());
    let reply = fastcgi::get(&ep, "/status", "json", t()).await.unwrap();
    fpm_core::status::parse_status(&reply.stdout)
        .unwrap()
        .accepted_conn
}

#[test]
fn compiling_new_scripts_moves_cached_scripts_and_misses() {
    let fpm = pool_with_scripts("opcgrow");
    let dir = TestDir::new("opcgrow-probe");
    let probe = OpcacheProbe::create(&dir.join("opcache")).unwrap();
    let main = Endpoint::Unix(fpm.socket.clone());
    let status = Endpoint::Unix(fpm.status_socket.clone());
    let n = SCRIPTS.len() as u64;
    rt().block_on(async {
        // The probe's first run compiles (and caches) the probe itself.
        let before = opcache::collect(&main, &probe, t()).await.unwrap();
        assert!(before.enabled);
        for (s, src) in SCRIPTS {
            let r = fastcgi::get(&main, &fpm.www(s), "", t()).await.unwrap();
            let word = src.split('\'').nth(1).unwrap();
            assert!(String::from_utf8_lossy(&r.stdout).ends_with(word));
        }
        let after = opcache::collect(&main, &probe, t()).await.unwrap();
        assert_eq!(after.cached_scripts, before.cached_scripts + n, "{after:?}");
        assert_eq!(after.misses, before.misses + n, "{after:?}");
        // The second run of the probe is its own hit.
        assert_eq!(after.hits, before.hits + 1, "{after:?}");
        assert!(after.memory_used > before.memory_used);

        // The same scripts again: hits, no new compilation. Read this time
        // through pm.status_listen: the same master, the same shared memory.
        for (s, _) in SCRIPTS {
            fastcgi::get(&main, &fpm.www(s), "", t()).await.unwrap();
        }
        let again = opcache::collect(&status, &probe, t()).await.unwrap();
        assert_eq!(again.cached_scripts, after.cached_scripts, "{again:?}");
        assert_eq!(again.misses, after.misses, "{again:?}");
        assert_eq!(again.hits, after.hits + n + 1, "{again:?}");
        assert_eq!(again.start_time, before.start_time);
        let rate = again.hit_rate.unwrap();
        assert!(
            (rate - again.hits as f64 / (again.hits + again.misses) as f64).abs() < 1e-12,
            "{again:?}"
        );

        // What /metrics would carry passes promtool, figures and a failed
        // pool together.
        let failed = OpcacheError::NotInstalled;
        let fams =
            opcache::families_with_unavailable(&[("opcgrow", &again)], &[("other", &failed)]);
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &fams, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains(&format!(
            "phpfpm_manager_opcache_cached_scripts{{pool=\"opcgrow\"}} {}",
            again.cached_scripts
        )));
    });
}

#[test]
fn probe_requests_are_invisible_on_status_listen_and_counted_on_the_main_socket() {
    let fpm = pool_with_scripts("opccount");
    let dir = TestDir::new("opccount-probe");
    let probe = OpcacheProbe::create(&dir.join("opcache")).unwrap();
    let main = Endpoint::Unix(fpm.socket.clone());
    let status = Endpoint::Unix(fpm.status_socket.clone());
    rt().block_on(async {
        let a0 = accepted(&fpm).await;
        for _ in 0..3 {
            opcache::collect(&status, &probe, t()).await.unwrap();
        }
        assert_eq!(probe.requests_sent(), 3);
        let a1 = accepted(&fpm).await;
        assert_eq!(a1, a0, "probes through pm.status_listen reached the pool");

        let sent = probe.requests_sent();
        for _ in 0..4 {
            opcache::collect(&main, &probe, t()).await.unwrap();
        }
        // One real request, to show the subtraction leaves exactly it.
        fastcgi::get(&main, &fpm.www("s1.php"), "", t())
            .await
            .unwrap();
        let a2 = accepted(&fpm).await;
        let probes = probe.requests_sent() - sent;
        assert_eq!(probes, 4);
        assert_eq!(a2 - a1, probes + 1);
        assert_eq!((a2 - a1).saturating_sub(probes), 1);

        // A request that never connects is not counted.
        let gone = Endpoint::Unix(dir.join("no-such.sock"));
        let e = opcache::collect(&gone, &probe, t()).await.unwrap_err();
        assert_eq!(e.kind(), "transport");
        assert_eq!(probe.requests_sent() - sent, 4);
    });
}

#[test]
fn status_listen_answers_the_probe_while_every_worker_is_busy() {
    let mut scripts = SCRIPTS.to_vec();
    scripts.push(("hold.php", crate::support::HOLD_PHP));
    let fpm = TestFpm::start(FpmOpts {
        name: "opcbusy",
        max_children: 2,
        scripts,
        ..FpmOpts::default()
    });
    let dir = TestDir::new("opcbusy-probe");
    let probe = OpcacheProbe::create(&dir.join("opcache")).unwrap();
    let main = Endpoint::Unix(fpm.socket.clone());
    let status = Endpoint::Unix(fpm.status_socket.clone());
    let hold = fpm.www("hold.php");
    let release = fpm.dir.join("www/release");
    rt().block_on(async {
        // Both workers busy until released.
        let long = Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(90),
        };
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let (ep, s) = (main.clone(), hold.clone());
                tokio::spawn(async move { fastcgi::get(&ep, &s, "ms=60000", long).await })
            })
            .collect();
        // Wait until the status page says both are busy.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = fastcgi::get(&status, "/status", "json", t()).await.unwrap();
            let text = String::from_utf8_lossy(&r.stdout).into_owned();
            if text.contains("\"active processes\":2") {
                break;
            }
            assert!(Instant::now() < deadline, "workers never busy: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The status listener answers the probe while they still are.
        let s = opcache::collect(&status, &probe, t()).await.unwrap();
        assert!(s.enabled);
        assert!(
            busy.iter().all(|b| !b.is_finished()),
            "a held request ended"
        );
        // Through the main socket the probe waits for a worker instead.
        let short = Timeouts {
            connect: Duration::from_millis(500),
            total: Duration::from_secs(2),
        };
        let e = opcache::collect(&main, &probe, short).await.unwrap_err();
        assert_eq!(e.kind(), "transport", "{e}");
        std::fs::write(&release, "").unwrap();
        for b in busy {
            b.await.unwrap().unwrap();
        }
    });
}

#[test]
fn the_probe_is_not_reachable_through_the_document_root() {
    let fpm = pool_with_scripts("opcweb");
    // The hardest placement: the probe directory right beside the document
    // root, as <runtime>/opcache sits beside <runtime>/www.
    let www = fpm.dir.join("www");
    let probe = OpcacheProbe::create(&fpm.dir.join("opcache")).unwrap();
    assert!(!probe.path().starts_with(&www));
    assert_eq!(probe.path().parent().unwrap(), fpm.dir.join("opcache"));
    let name = probe.file_name().to_owned();
    let main = Endpoint::Unix(fpm.socket.clone());
    rt().block_on(async {
        // Control: through its real path the probe answers.
        opcache::collect(&main, &probe, t()).await.unwrap();
        // nginx-style mapping: SCRIPT_FILENAME = document root + URI.
        let mapped = format!("{}/{name}", www.display());
        let r = fastcgi::get(&main, &mapped, "", t()).await.unwrap();
        match opcache::parse(&r.stdout) {
            Err(OpcacheError::HttpStatus { status, body }) => {
                assert_eq!(status, 404);
                assert_eq!(body, "File not found.");
            }
            other => panic!("{other:?}"),
        }
    });
    // And through real nginx, with the usual escapes tried.
    let nginx = TestNginx::start(&fpm.dir, &[("/", fpm.socket.as_path(), www.as_path())]);
    let addr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    let (code, body) = http_get(addr, "/s2.php").unwrap();
    // (http_get does not undo chunked encoding; the word is in there.)
    assert!(
        code == 200 && body.contains("two"),
        "control: {code} {body}"
    );
    for uri in [
        format!("/{name}"),
        format!("/../opcache/{name}"),
        format!("/%2e%2e/opcache/{name}"),
        format!("/..%2fopcache/{name}"),
        format!("/s1.php/../../opcache/{name}"),
    ] {
        let (code, body) = http_get(addr, &uri).unwrap();
        eprintln!("{uri} -> {code}");
        if uri == format!("/{name}") {
            // php-fpm's own answer: no such file under the document root.
            assert!(
                code == 404 && body.contains("File not found."),
                "{uri}: {code} {body}"
            );
        } else {
            // nginx refuses a URI that climbs above the root.
            assert_eq!(code, 400, "{uri}: {body}");
        }
        assert!(!body.contains("phpfpm-manager-opcache"), "{uri}: {body}");
    }
}

#[test]
fn the_probe_file_is_removed_when_the_probe_is_dropped() {
    let fpm = pool_with_scripts("opcdrop");
    let dir = TestDir::new("opcdrop-probe");
    let probe = OpcacheProbe::create(&dir.join("opcache")).unwrap();
    let path = probe.path().to_owned();
    let main = Endpoint::Unix(fpm.socket.clone());
    let rt = rt();
    rt.block_on(async {
        opcache::collect(&main, &probe, t()).await.unwrap();
    });
    assert!(path.is_file());
    drop(probe);
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.join("opcache")).unwrap().count(), 0);
    // OPcache keeps serving a deleted script from memory until it next
    // checks the file (opcache.revalidate_freq, 2 s here; never with
    // validate_timestamps = 0). After that php-fpm answers 404.
    let deadline = Instant::now() + Duration::from_secs(6);
    let gone = rt.block_on(async {
        loop {
            let r = fastcgi::get(&main, path.to_str().unwrap(), "", t())
                .await
                .unwrap();
            match opcache::parse(&r.stdout) {
                Err(OpcacheError::HttpStatus { status: 404, .. }) => return true,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Ok(_) => return false,
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert!(gone, "the removed probe still runs after 6 s");
}

/// A php-fpm master from a hand-written config (TestFpm has no php values).
struct RawFpm {
    dir: TestDir,
    child: Child,
}

impl RawFpm {
    /// One pool `p` with a status socket; `extra` goes into the pool
    /// section, `args` onto php-fpm's command line.
    fn start(tag: &str, extra: &str, args: &[&str]) -> RawFpm {
        let dir = TestDir::new(tag);
        let d = dir.path.display().to_string();
        let root = nix::unistd::geteuid().is_root();
        let user = if root {
            "user = www-data\ngroup = www-data\n"
        } else {
            ""
        };
        let conf = format!(
            "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm.log\n\
             [p]\n{user}listen = {d}/pool.sock\nlisten.mode = 0660\npm = static\n\
             pm.max_children = 1\npm.status_path = /status\n\
             pm.status_listen = {d}/status.sock\nping.path = /ping\n{extra}\n"
        );
        std::fs::write(dir.join("fpm.conf"), conf).unwrap();
        let mut cmd = Command::new(crate::support::php_fpm());
        if root {
            cmd.arg("-R");
        }
        let child = cmd
            .args(args)
            .arg("-F")
            .arg("-y")
            .arg(dir.join("fpm.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let fpm = RawFpm { dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let rt = rt();
        loop {
            let up = rt.block_on(async {
                let mut ok = true;
                for ep in [fpm.main(), fpm.status()] {
                    ok &= fastcgi::get(&ep, "/ping", "", t()).await.is_ok();
                }
                ok
            });
            if up {
                return fpm;
            }
            assert!(
                Instant::now() < deadline,
                "php-fpm did not start: {}",
                std::fs::read_to_string(fpm.dir.join("fpm.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn main(&self) -> Endpoint {
        Endpoint::Unix(self.dir.join("pool.sock"))
    }

    fn status(&self) -> Endpoint {
        Endpoint::Unix(self.dir.join("status.sock"))
    }

    fn probe_dir(&self) -> PathBuf {
        self.dir.join("opcache")
    }
}

impl Drop for RawFpm {
    fn drop(&mut self) {
        crate::support::stop_master(&mut self.child);
    }
}

#[test]
fn a_pool_with_opcache_disabled_is_reported_disabled() {
    let fpm = RawFpm::start("opcoff", "php_admin_value[opcache.enable] = 0", &[]);
    let probe = OpcacheProbe::create(&fpm.probe_dir()).unwrap();
    rt().block_on(async {
        let e = opcache::collect(&fpm.main(), &probe, t())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "disabled", "{e}");
        // The pm.status_listen pool does not apply the pool's php values:
        // there OPcache looks enabled, which is why the caller checks the
        // pool's values with disabled_by_pool_ini on that route.
        let s = opcache::collect(&fpm.status(), &probe, t()).await.unwrap();
        assert!(s.enabled);
    });
    assert!(opcache::disabled_by_pool_ini([("opcache.enable", "0")]));
}

#[test]
fn a_php_without_opcache_is_reported_not_installed() {
    // -n: no php.ini and no conf.d, so OPcache is never loaded.
    let fpm = RawFpm::start("opcnone", "", &["-n"]);
    let probe = OpcacheProbe::create(&fpm.probe_dir()).unwrap();
    rt().block_on(async {
        for ep in [fpm.main(), fpm.status()] {
            let e = opcache::collect(&ep, &probe, t()).await.unwrap_err();
            assert_eq!(e.kind(), "not_installed", "{e}");
        }
    });
}
