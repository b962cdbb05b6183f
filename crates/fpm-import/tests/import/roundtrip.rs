//! The round trip issue 3 asks for: import Debian's stock config and the
//! multi-pool fixture, load the result with the manager's own config loader,
//! render the pool files the manager would run, then compare the effective
//! settings php-fpm reports (`php-fpm -tt`) for the original and for the
//! imported setup, and start every imported pool and ping it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fpm_core::fpm_conf::{render_global, render_master, render_pool, PmMode};
use fpm_import::{import, read_config, ImportOptions, ReadOptions};
use phpfpm_manager::config::{load, LoadInput};

use crate::support::{copy_tree, dump, php_fpm, redact, rewrite_tree, run, test_data, Dump};

/// Settings the manager changes on purpose in every pool it runs, and why.
const MANAGER_OWNED: &[(&str, &str)] = &[
    (
        "pm.status_path",
        "the manager adds a status page to every pool (original kept when set)",
    ),
    (
        "pm.status_listen",
        "the manager adds a private status socket so the page answers under saturation",
    ),
    (
        "ping.path",
        "the manager adds a ping page to every pool (original kept when set)",
    ),
    (
        "ping.response",
        "php-fpm reports `pong` once ping.path is set",
    ),
    (
        "catch_workers_output",
        "forced to yes: worker output goes to the manager's log",
    ),
    (
        "decorate_workers_output",
        "forced to no: the manager tags lines with the pool itself",
    ),
];

struct Setup {
    _tmp: tempfile::TempDir,
    main: PathBuf,
    prefix: Option<PathBuf>,
    dir: PathBuf,
}

fn debian() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    copy_tree(&test_data("debian-8.2/etc"), &dir.join("etc"));
    for d in ["run", "log"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    rewrite_tree(
        &dir.join("etc"),
        &[
            (
                "/etc/php/8.2/fpm/pool.d/",
                format!("{}/etc/php/8.2/fpm/pool.d/", dir.display()),
            ),
            ("/run/php/", format!("{}/run/", dir.display())),
            ("/var/log/", format!("{}/log/", dir.display())),
        ],
    );
    Setup {
        main: dir.join("etc/php/8.2/fpm/php-fpm.conf"),
        prefix: None,
        dir,
        _tmp: tmp,
    }
}

fn multi() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    copy_tree(&test_data("multi"), &dir.join("fpm"));
    for d in ["run", "log"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    // A free loopback port for the TCP pool, so parallel runs do not collide.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    rewrite_tree(
        &dir.join("fpm"),
        &[
            ("/run/php/", format!("{}/run/", dir.display())),
            ("/var/log/php-fpm/", format!("{}/log/", dir.display())),
            ("127.0.0.1:9101", format!("127.0.0.1:{port}")),
        ],
    );
    Setup {
        main: dir.join("fpm/php-fpm.conf"),
        prefix: Some(dir.join("fpm")),
        dir,
        _tmp: tmp,
    }
}

struct ImportedRun {
    /// pool -> its `php-fpm -tt` dump under the manager's layout.
    dumps: Vec<(String, Dump, PathBuf)>,
    /// pool -> (pm, listen address, ping path)
    pools: Vec<(String, PmMode, String, String)>,
}

/// Imports `s`, checks the manager accepts the YAML and renders exactly the
/// returned pool files, and builds the manager's per-pool master configs.
fn import_and_render(s: &Setup) -> ImportedRun {
    let read = ReadOptions {
        prefix: s
            .prefix
            .clone()
            .unwrap_or_else(|| ReadOptions::default().prefix),
        ..ReadOptions::default()
    };
    let model = read_config(&s.main, &read).unwrap();
    let rt = s.dir.join("rt");
    std::fs::create_dir_all(rt.join("sockets")).unwrap();
    let imported = import(
        &model,
        &ImportOptions {
            runtime_dir: rt.clone(),
            write_runtime_dir: true,
            include_secrets: true,
        },
    )
    .unwrap();
    let config = match load(&LoadInput {
        file: Some((
            s.dir.join("phpfpm-manager.yaml"),
            imported.config_yaml.clone(),
        )),
        env: Vec::new(),
        cwd: s.dir.clone(),
        runtime_dir: None,
    }) {
        Ok(c) => c,
        Err(e) => panic!("the manager refuses the imported config:\n{e}"),
    };
    assert_eq!(config.pools.len(), imported.pool_files.len());
    let global_path = s.dir.join("imp/php-fpm.conf");
    std::fs::create_dir_all(s.dir.join("imp/pools.d")).unwrap();
    std::fs::create_dir_all(s.dir.join("imp/masters")).unwrap();
    std::fs::write(&global_path, render_global(&config.phpfpm.global)).unwrap();
    let mut out = ImportedRun {
        dumps: Vec::new(),
        pools: Vec::new(),
    };
    for (pool, (name, file)) in config.pools.iter().zip(&imported.pool_files) {
        assert_eq!(pool.name.as_str(), name);
        let spec = pool.spec.as_ref().expect("imported pools are supervised");
        let rendered = render_pool(spec).unwrap();
        // Compared without printing: the files hold env values.
        assert!(
            rendered == *file,
            "pool {name}: the manager renders a different pool file from the imported YAML"
        );
        let pool_path = s.dir.join(format!("imp/pools.d/{name}.conf"));
        std::fs::write(&pool_path, &rendered).unwrap();
        let master = s.dir.join(format!("imp/masters/{name}.conf"));
        std::fs::write(
            &master,
            render_master(
                &global_path.display().to_string(),
                &pool_path.display().to_string(),
                &s.dir.join(format!("imp/{name}.pid")).display().to_string(),
            ),
        )
        .unwrap();
        out.dumps.push((name.clone(), dump(&master, None), master));
        out.pools.push((
            name.clone(),
            spec.pm,
            spec.listen.clone(),
            spec.ping_path.clone(),
        ));
    }
    out
}

/// Compares one pool of the original dump with the imported dump.
fn compare_pool(orig: &Dump, imp: &Dump, pool: &str, pm: PmMode, problems: &mut Vec<String>) {
    let o = orig.sections.get(pool).expect("pool in original dump");
    let i = imp.sections.get(pool).expect("pool in imported dump");
    let undefined = vec!["undefined".to_owned()];
    let mut keys: Vec<&String> = o.keys().chain(i.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let ov = o.get(key).unwrap_or(&undefined);
        let iv = i.get(key).unwrap_or(&undefined);
        // A ping.response of its own would be lost (fpm-core does not write
        // it yet): only php-fpm's default may differ.
        if key == "ping.response" && ov[0] != "undefined" && ov[0] != "pong" && ov != iv {
            problems.push(format!("pool {pool}: ping.response {ov:?} is not carried"));
        }
        if MANAGER_OWNED.iter().any(|(k, _)| k == key) {
            continue;
        }
        // The manager owns the pool's socket and gives it this group itself
        // (pool key `listen_group`); php-fpm never sees the directive.
        if key == "listen.group" {
            continue;
        }
        let spare = matches!(
            key.as_str(),
            "pm.start_servers" | "pm.min_spare_servers" | "pm.max_spare_servers"
        );
        // php-fpm ignores these for other pm modes, and the manager writes
        // them only where they apply.
        if (spare && pm != PmMode::Dynamic)
            || (key == "pm.process_idle_timeout" && pm != PmMode::Ondemand)
        {
            continue;
        }
        let mut want = ov.clone();
        // Unset listen.mode means 0660 to php-fpm; the manager writes it out.
        if key == "listen.mode" && want == undefined {
            want = vec!["0660".into()];
        }
        // A global rlimit is carried into the pool.
        if (key == "rlimit_files" || key == "rlimit_core") && want == ["0"] {
            if let Some(g) = orig.value("global", key) {
                want = vec![g.to_owned()];
            }
        }
        if want != *iv {
            if key.starts_with("env[") {
                problems.push(format!("pool {pool}: {key} differs (values redacted)"));
            } else {
                problems.push(format!(
                    "pool {pool}: {key}: original {want:?}, imported {iv:?}"
                ));
            }
        }
    }
    for (key, why) in MANAGER_OWNED {
        let iv = i.get(*key).map(|v| v[0].as_str()).unwrap_or("undefined");
        if *key != "ping.response" && iv == "undefined" {
            problems.push(format!(
                "pool {pool}: {key} should be set by the manager ({why})"
            ));
        }
    }
}

fn round_trip(s: &Setup, expect_pools: &[&str]) -> ImportedRun {
    let orig = dump(&s.main, s.prefix.as_deref());
    let imported = import_and_render(s);
    let mut names: Vec<&str> = imported.dumps.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort();
    let mut want = expect_pools.to_vec();
    want.sort();
    assert_eq!(names, want);
    let orig_pools: Vec<&String> = orig.sections.keys().filter(|k| *k != "global").collect();
    assert_eq!(orig_pools.len(), expect_pools.len(), "{orig_pools:?}");
    let mut problems = Vec::new();
    for ((name, imp, _), (_, pm, _, _)) in imported.dumps.iter().zip(&imported.pools) {
        compare_pool(&orig, imp, name, *pm, &mut problems);
        // [global]: the manager keeps log_level and process_control_timeout
        // (raised from 0 to 10s); everything else there is its own.
        // Unset, php-fpm dumps "unknown value" but logs at notice, which
        // the manager then writes out.
        let level = match orig.value("global", "log_level") {
            Some("unknown value") | None => "NOTICE",
            Some(l) => l,
        };
        assert_eq!(imp.value("global", "log_level"), Some(level));
        let pct = match orig.value("global", "process_control_timeout") {
            Some("0s") | None => "10s",
            Some(v) => v,
        };
        assert_eq!(imp.value("global", "process_control_timeout"), Some(pct));
    }
    assert!(
        problems.is_empty(),
        "effective settings differ:\n{}",
        problems.join("\n")
    );
    imported
}

/// Runs `f` while a php-fpm master started from `conf` (foreground, -R, as
/// the manager runs it) is up, then stops it gracefully by its pid.
fn with_master<T>(conf: &Path, f: impl FnOnce() -> T) -> T {
    let mut child = Command::new(php_fpm())
        .args(["-F", "-R", "-y"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = f();
    let _ = Command::new("kill")
        .arg("-QUIT")
        .arg(child.id().to_string())
        .status();
    let stop = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if stop.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    out
}

/// A FastCGI GET through `cgi-fcgi`, retried for up to 10 s until the body
/// contains `want`; returns the last body.
fn fcgi(listen: &str, script: &str, want: &str) -> String {
    let cgi = PathBuf::from("/usr/bin/cgi-fcgi");
    assert!(
        cgi.exists(),
        "cgi-fcgi is missing: install libfcgi-bin (these tests never skip)"
    );
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        let (_, text) = run(
            Command::new(&cgi)
                .args(["-bind", "-connect", listen])
                .env("SCRIPT_NAME", script)
                .env("SCRIPT_FILENAME", script)
                .env("REQUEST_METHOD", "GET"),
            Duration::from_secs(5),
        );
        // Body after the CGI headers.
        last = text.split("\r\n\r\n").nth(1).unwrap_or(&text).to_owned();
        if last.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// Starts each imported master and pings its pool through the listen
/// address it kept.
fn serve(imported: &ImportedRun) {
    for ((name, _, master), (_, _, listen, ping)) in imported.dumps.iter().zip(&imported.pools) {
        let body = with_master(master, || fcgi(listen, ping, "pong"));
        assert!(
            body.contains("pong"),
            "pool {name}: no pong from {listen}{ping}: {}",
            redact(&body)
        );
    }
}

#[test]
fn debian_stock_config_round_trips_and_serves() {
    let s = debian();
    let imported = round_trip(&s, &["www"]);
    serve(&imported);
}

#[test]
fn multi_pool_fixture_round_trips_and_serves() {
    let s = multi();
    let imported = round_trip(&s, &["shop", "api", "admin"]);
    serve(&imported);
}

/// php-fpm applies the FIRST of several `php_value[x]` / `env[X]` / flag
/// definitions (its `-tt` dump lists them all). A real worker of the original
/// and of the imported pool must see the same values.
#[test]
fn repeated_array_directives_give_a_worker_the_same_values() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    // The worker runs as nobody and must read the script.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.join("i.php");
    std::fs::write(
        &script,
        "<?php echo 'R:', ini_get('memory_limit'), '|', getenv('A'), '|', ini_get('display_errors'), '|', ini_get('max_execution_time');",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let main = dir.join("php-fpm.conf");
    let listen = dir.join("w.sock").display().to_string();
    std::fs::write(
        &main,
        format!(
            "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm.log\n[w]\nuser = nobody\ngroup = nogroup\nlisten = {listen}\npm = static\npm.max_children = 1\n\
             php_value[memory_limit] = 64M\nphp_value[memory_limit] = 128M\nenv[A] = first\nenv[A] = second\n\
             php_flag[display_errors] = on\nphp_value[display_errors] = 0\n\
             php_admin_value[max_execution_time] = 7\nphp_admin_value[max_execution_time] = 9\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let script = script.display().to_string();
    let original = with_master(&main, || fcgi(&listen, &script, "R:"));
    let s = Setup {
        main: main.clone(),
        prefix: None,
        dir: dir.clone(),
        _tmp: tmp,
    };
    let imported = import_and_render(&s);
    let master = &imported.dumps[0].2;
    let after = with_master(master, || fcgi(&listen, &script, "R:"));
    assert!(
        original.contains("R:64M|first|1|7"),
        "php-fpm itself: {original}"
    );
    assert_eq!(after, original);
}
