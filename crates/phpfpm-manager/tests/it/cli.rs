//! The command line: exit codes (0 ok, 1 runtime failure, 2 usage, 64 bad
//! config), `validate`, `example-config` and `version`.

use std::process::{Command, Output};

use crate::support::{manager_bin, TestDir};

fn run(args: &[&str], dir: &TestDir) -> Output {
    Command::new(manager_bin())
        .args(args)
        .current_dir(&dir.path)
        .env_remove("PHPFPM_MANAGER_CONFIG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn example_config_round_trips_through_validate() {
    let dir = TestDir::new("cli-example");
    let out = run(&["example-config", "--output", "example.yaml"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&["validate", "--config", "example.yaml"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("configuration is valid"), "{t}");
    assert!(
        t.contains("www (supervised, pm dynamic, max workers 10"),
        "{t}"
    );
    // Never overwrites an existing file.
    let out = run(&["example-config", "--output", "example.yaml"], &dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("example.yaml"));
}

#[test]
fn invalid_config_lists_every_problem_and_exits_64() {
    let dir = TestDir::new("cli-invalid");
    std::fs::write(
        dir.join("bad.yaml"),
        "server:\n  bind_adress: 1\npools:\n  - name: a/b\n    max_workers: 0\n  - name: ok\n    pm: fast\n",
    )
    .unwrap();
    let out = run(&["validate", "--config", "bad.yaml"], &dir);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let t = text(&out);
    for want in [
        "invalid configuration: 4 problems",
        "server.bind_adress: unknown key; did you mean `bind_address`?",
        "pools[0].name: 'a/b'",
        "pools[0].max_workers: '0': must be between 1 and 10000",
        "pools[1].pm: 'fast': unknown process manager",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    // `run` refuses the same file with the same code, before starting anything.
    let out = run(&["run", "--config", "bad.yaml"], &dir);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

#[test]
fn missing_config_file_exits_64_naming_it() {
    let dir = TestDir::new("cli-missing");
    let out = run(&["validate", "--config", "nope.yaml"], &dir);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out).contains("nope.yaml: cannot read the config file"),
        "{}",
        text(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = TestDir::new("cli-usage");
    let out = run(&["frobnicate"], &dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(&["run", "--no-such-flag"], &dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn version_prints_the_version() {
    let dir = TestDir::new("cli-version");
    let out = run(&["version"], &dir);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("phpfpm-manager {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `run` with `phpfpm.binary` set to `binary`, on a free port.
fn run_with_binary(tag: &str, binary: &str) -> Output {
    let dir = TestDir::new(tag);
    std::fs::write(
        dir.join("c.yaml"),
        format!("phpfpm:\n  binary: {binary}\npools:\n  - name: www\n"),
    )
    .unwrap();
    let port = crate::support::free_port();
    Command::new(manager_bin())
        .args(["run", "--config", "c.yaml"])
        .current_dir(&dir.path)
        .env(
            "PHPFPM_MANAGER_SERVER__BIND_ADDRESS",
            format!("127.0.0.1:{port}"),
        )
        .output()
        .unwrap()
}

#[test]
fn a_missing_php_fpm_binary_is_a_runtime_failure_with_a_clear_message() {
    let out = run_with_binary("cli-nobin", "/nonexistent/php-fpm");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/php-fpm does not exist or is not executable"),
        "{}",
        text(&out)
    );
}

#[test]
fn import_writes_a_config_that_validates_and_never_prints_secrets() {
    let dir = TestDir::new("cli-import");
    let src = dir.join("fpm");
    std::fs::create_dir_all(src.join("pool.d")).unwrap();
    std::fs::write(
        src.join("php-fpm.conf"),
        format!(
            "[global]\npid = /run/x.pid\ninclude = {}/pool.d/*.conf\n",
            src.display()
        ),
    )
    .unwrap();
    std::fs::write(
        src.join("pool.d/app.conf"),
        format!(
            "[app]\nuser = www-data\ngroup = www-data\nlisten = {}/app.sock\npm = static\npm.max_children = 3\nenv[DB_PASSWORD] = hunter2\nphp_admin_value[memory_limit] = 64M\n",
            dir.path.display()
        ),
    )
    .unwrap();
    let out = run(
        &[
            "import",
            "--from",
            "fpm/php-fpm.conf",
            "--output",
            "imported",
        ],
        &dir,
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(!t.contains("hunter2"), "secret printed:\n{t}");
    let yaml = std::fs::read_to_string(dir.join("imported/phpfpm-manager.yaml")).unwrap();
    assert!(!yaml.contains("hunter2"), "secret in the config:\n{yaml}");
    assert!(yaml.contains("max_workers: 3"), "{yaml}");
    // Without --runtime-dir the config keeps the manager's default instead
    // of this directory written as an absolute path.
    assert!(!yaml.contains("runtime_dir:"), "{yaml}");
    let out = run(
        &["validate", "--config", "imported/phpfpm-manager.yaml"],
        &dir,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A broken source is bad input: exit 64 with the place.
    std::fs::write(
        src.join("pool.d/bad.conf"),
        "[bad]\nthis line has no equals sign\n",
    )
    .unwrap();
    let out = run(
        &["import", "--from", "fpm/php-fpm.conf", "--output", "again"],
        &dir,
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("bad.conf:2"), "{}", text(&out));
}

#[test]
fn simulate_prints_every_policy_and_rejects_a_bad_policy() {
    let dir = TestDir::new("cli-sim");
    let out = run(&["simulate", "--trace", "spike", "--seed", "3"], &dir);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for row in [
        "| manager |",
        "| model-cap |",
        "| static@max |",
        "| dynamic-tuned |",
        "| dynamic-debian |",
        "| ondemand@max |",
    ] {
        assert!(t.contains(row), "missing {row} in\n{t}");
    }
    // Deterministic: the same seed prints the same table.
    let again = run(&["simulate", "--trace", "spike", "--seed", "3"], &dir);
    assert_eq!(out.stdout, again.stdout);
    std::fs::write(
        dir.join("p.yaml"),
        "min_workers: 9\nmax_workers: 3\nbogus: 1\n",
    )
    .unwrap();
    let out = run(
        &["simulate", "--trace", "steady", "--policy", "p.yaml"],
        &dir,
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let out = run(&["simulate", "--trace", "nonesuch"], &dir);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not a built-in trace"),
        "{}",
        text(&out)
    );
}

/// One front door for the policy: `simulate --config` reads a pool's
/// `scaling:` section and `scaling.memory_budget` the way the daemon does.
#[test]
fn simulate_takes_the_policy_and_budget_from_the_config() {
    let dir = TestDir::new("cli-sim-config");
    std::fs::write(dir.join("t.csv"), "time,rate\n0,20\n90,20\n").unwrap();
    let pools = "pools:\n\
                 \x20 - name: admin\n\
                 \x20 - name: shop\n    max_workers: 12\n    scaling:\n      enabled: true\n      min_workers: 1\n      max_workers: 12\n      target_utilization: 0.8\n      priority: 1\n";
    std::fs::write(
        dir.join("c.yaml"),
        format!("scaling:\n  memory_budget: 256MiB\n{pools}"),
    )
    .unwrap();
    let sim = |extra: &[&str]| {
        let mut args = vec!["simulate", "--trace", "t.csv"];
        args.extend_from_slice(extra);
        run(&args, &dir)
    };
    // Without --pool: the first autoscaled pool.
    let out = sim(&["--config", "c.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for want in [
        "pool shop of c.yaml: min_workers 1, max_workers 12, headroom 0.25 (target_utilization 0.8), weight 1, priority 1; scaling.memory_budget 256 MiB",
        "pm.max_children 12 for every manager",
        "memory budget 256 MiB",
        "| manager | ",
        "| ondemand@max | ",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let again = sim(&["--config", "c.yaml", "--pool", "shop"]);
    assert_eq!(out.stdout, again.stdout);
    // A pool the daemon only advises on is simulated as if it were on.
    let out = sim(&["--config", "c.yaml", "--pool", "admin"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("pool admin of c.yaml"), "{t}");
    assert!(t.contains("simulated as if autoscaling were on"), "{t}");
    // An unknown pool is a usage error naming the pools.
    let out = sim(&["--config", "c.yaml", "--pool", "nope"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("--pool nope: no such pool"), "{t}");
    assert!(t.contains("admin, shop"), "{t}");
    // `auto` is this machine's memory: the scenario's budget is used, and
    // the output says so.
    std::fs::write(
        dir.join("auto.yaml"),
        format!("scaling:\n  memory_budget: auto\n{pools}"),
    )
    .unwrap();
    let out = sim(&["--config", "auto.yaml", "--pool", "shop"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("the simulation uses the scenario's default budget"),
        "{t}"
    );
    assert!(t.contains("memory budget 3072 MiB"), "{t}");
    // An invalid config exits 64 as `validate` does, with its problems.
    std::fs::write(
        dir.join("bad.yaml"),
        "pools:\n  - name: a\n    scaling:\n      target_utilization: 7\n      bogus: 1\n",
    )
    .unwrap();
    let out = sim(&["--config", "bad.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(64), "{t}");
    assert!(t.contains("invalid configuration"), "{t}");
    assert!(t.contains("pools[0].scaling.bogus"), "{t}");
    // --policy and --config are two doors: not both.
    let out = sim(&["--config", "c.yaml", "--policy", "p.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_binary_that_is_not_php_fpm_is_refused_at_start() {
    let out = run_with_binary("cli-notfpm", "/bin/true");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/bin/true is not php-fpm"),
        "{}",
        text(&out)
    );
}

#[test]
fn validate_finds_what_run_could_never_start_and_reports_it_all() {
    let dir = TestDir::new("cli-system");
    let missing = dir.join("missing");
    std::fs::write(
        dir.join("c.yaml"),
        format!(
            "pools:\n\
             \x20 - name: nodir\n    fastcgi_endpoint: unix:{m}/app.sock\n\
             \x20 - name: refused\n    extra_settings:\n      no_such_directive: 1\n\
             \x20 - name: badvalue\n    extra_settings:\n      request_slowlog_timeout: banana\n\
             \x20 - name: nochdir\n    chdir: {m}/www\n\
             \x20 - name: fine\n",
            m = missing.display()
        ),
    )
    .unwrap();
    let out = run(&["validate", "--config", "c.yaml"], &dir);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(64), "{t}");
    for want in [
        "invalid configuration: 4 problems".to_owned(),
        format!(
            "pools[0].fastcgi_endpoint: 'unix:{}/app.sock': the directory {} does not exist",
            missing.display(),
            missing.display()
        ),
        "pools[1] (refused): php-fpm -t rejected the configuration".to_owned(),
        "no_such_directive".to_owned(),
        "pools[2] (badvalue): php-fpm -t rejected the configuration".to_owned(),
        "request_slowlog_timeout".to_owned(),
        format!(
            "pools[3].chdir: '{}/www': is not an existing directory",
            missing.display()
        ),
    ] {
        assert!(t.contains(&want), "missing {want:?} in\n{t}");
    }
    assert!(!t.contains("(fine)"), "{t}");
    // Nothing was written into the runtime directory.
    assert!(!dir.join("var").exists());
    // Fixed, it validates.
    std::fs::create_dir_all(missing.join("www")).unwrap();
    std::fs::write(
        dir.join("ok.yaml"),
        format!(
            "pools:\n  - name: nodir\n    fastcgi_endpoint: unix:{m}/app.sock\n    chdir: {m}/www\n",
            m = missing.display()
        ),
    )
    .unwrap();
    let out = run(&["validate", "--config", "ok.yaml"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
