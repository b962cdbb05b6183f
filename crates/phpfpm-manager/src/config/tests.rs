//! Config loading tests, including the `tests/invalid_configs/` corpus: one bad
//! config per file, with the expected messages in `# expect:` lines.

use std::path::PathBuf;

use super::*;

fn input(yaml: &str) -> LoadInput {
    LoadInput {
        file: Some((PathBuf::from("test.yaml"), yaml.to_owned())),
        env: Vec::new(),
        cwd: PathBuf::from("/srv/app"),
        runtime_dir: None,
    }
}

fn problems(yaml: &str) -> Vec<String> {
    match load(&input(yaml)) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn example_config_validates() {
    let cfg = load(&input(EXAMPLE_CONFIG)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.pools.len(), 1);
    assert_eq!(cfg.pools[0].name.as_str(), "www");
    assert_eq!(cfg.pools[0].max_workers, 10);
    assert_eq!(
        cfg.server.bind_address,
        "127.0.0.1:8080".parse::<std::net::SocketAddr>().unwrap()
    );
}

#[test]
fn zero_config_supervises_a_demo_pool_on_loopback() {
    let cfg = load(&LoadInput {
        cwd: PathBuf::from("/srv/app"),
        ..LoadInput::default()
    })
    .unwrap();
    assert!(cfg.zero_config);
    assert_eq!(cfg.pools.len(), 1);
    let demo = &cfg.pools[0];
    assert_eq!(demo.name.as_str(), "demo");
    let spec = demo.spec.as_ref().unwrap();
    assert_eq!(spec.listen, "/srv/app/var/phpfpm-manager/sockets/demo.sock");
    assert_eq!(
        spec.status_listen.as_deref(),
        Some("/srv/app/var/phpfpm-manager/sockets/demo.status.sock")
    );
    assert!(cfg.server.bind_address.ip().is_loopback());
    assert_eq!(cfg.phpfpm.global.process_control_timeout_secs, 10);
}

#[test]
fn env_overrides_apply_and_are_typed() {
    let mut inp = input("pools:\n  - name: www\n");
    inp.env = vec![
        (
            "PHPFPM_MANAGER_SERVER__BIND_ADDRESS".into(),
            "127.0.0.1:9999".into(),
        ),
        ("PHPFPM_MANAGER_POOLS__0__MAX_WORKERS".into(), "12".into()),
        (
            "PHPFPM_MANAGER_MONITORING__PER_PROCESS_METRICS".into(),
            "true".into(),
        ),
        ("UNRELATED".into(), "x".into()),
        ("PHPFPM_MANAGER_CONFIG".into(), "/etc/x.yaml".into()),
    ];
    let cfg = load(&inp).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.server.bind_address.port(), 9999);
    assert_eq!(cfg.pools[0].max_workers, 12);
    assert!(cfg.monitoring.per_process_metrics);
}

#[test]
fn env_override_problems_name_the_variable() {
    let mut inp = input("pools:\n  - name: www\n");
    inp.env = vec![
        ("PHPFPM_MANAGER_SERVER__BIND_ADRESS".into(), "x".into()),
        ("PHPFPM_MANAGER_POOLS__0__MAX_WORKERS".into(), "lots".into()),
        ("PHPFPM_MANAGER_BOGUS".into(), "1".into()),
    ];
    let err = load(&inp).unwrap_err().to_string();
    assert!(
        err.contains("server.bind_adress (from PHPFPM_MANAGER_SERVER__BIND_ADRESS): unknown key; did you mean `bind_address`?"),
        "{err}"
    );
    assert!(
        err.contains(
            "pools[0].max_workers (from PHPFPM_MANAGER_POOLS__0__MAX_WORKERS): 'lots': wrong type"
        ),
        "{err}"
    );
    assert!(
        err.contains("environment variable PHPFPM_MANAGER_BOGUS: is not a configuration override"),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let got = problems(
        "server:\n  bind_adress: x\n  bind_address: nowhere\n\
         monitoring:\n  collect_interval: soon\n\
         pools:\n  - name: ../etc\n    max_workers: many\n  - name: ok\n    pm: turbo\n    scaling: {min_workers: 9, max_workers: 3}\n",
    );
    let want = [
        "server.bind_adress: unknown key; did you mean `bind_address`?",
        "pools[0].max_workers: 'many': wrong type, expected a whole number; write a whole number without quotes",
        "server.bind_address: 'nowhere': not an IP address and port",
        "monitoring.collect_interval: 'soon': not a duration",
        "pools[0].name: '../etc': pool name contains '.'",
        "pools[1].pm: 'turbo': unknown process manager; use static, dynamic or ondemand",
        "pools[1].scaling.min_workers: '9': is above scaling.max_workers (3)",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {got:#?}"
        );
    }
}

#[test]
fn secrets_in_env_values_are_never_echoed() {
    let err = load(&input(
        "pools:\n  - name: www\n    env:\n      DB_PASSWORD: \"hunter2\\nx\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(
        err.contains("pools[0].env.DB_PASSWORD: '<redacted>'"),
        "{err}"
    );
}

#[test]
fn free_form_maps_accept_any_key() {
    let cfg = load(&input(
        "pools:\n  - name: www\n    php_admin_values:\n      opcache.memory_consumption: '256'\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let spec = cfg.pools[0].spec.as_ref().unwrap();
    assert_eq!(
        spec.php_admin_values,
        vec![("opcache.memory_consumption".to_owned(), "256".to_owned())]
    );
}

#[test]
fn ini_maps_accept_numbers_and_booleans() {
    let cfg = load(&input(
        "pools:\n  - name: www\n    php_admin_values:\n      opcache.enable: 1\n      display_errors: false\n      x: [1]\n",
    ));
    let err = cfg.unwrap_err().to_string();
    assert!(
        err.contains("expected text, a number or true/false"),
        "{err}"
    );
    let cfg = load(&input(
        "pools:\n  - name: www\n    php_admin_values:\n      opcache.enable: 1\n      display_errors: false\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let spec = cfg.pools[0].spec.as_ref().unwrap();
    assert_eq!(
        spec.php_admin_values,
        vec![
            ("display_errors".to_owned(), "0".to_owned()),
            ("opcache.enable".to_owned(), "1".to_owned())
        ]
    );
}

#[test]
fn observed_pool_uses_its_endpoint_for_status() {
    let cfg = load(&input(
        "pools:\n  - name: sys\n    supervise: false\n    fastcgi_endpoint: 127.0.0.1:9000\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let p = &cfg.pools[0];
    assert!(p.spec.is_none());
    assert_eq!(p.endpoint, Endpoint::Tcp("127.0.0.1:9000".into()));
    assert_eq!(p.scrape_uri(), "tcp://127.0.0.1:9000/status");
}

/// Runs every file of `tests/invalid_configs/`. Each must fail to load,
/// every `# expect: <text>` line must be a substring of the report, and no
/// `# not: <text>` line may be.
#[test]
fn invalid_config_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/invalid_configs");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(entries.len() >= 10, "corpus is too small: {entries:?}");
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{}: no `# expect:` line",
            path.display()
        );
        let mut inp = input(&text);
        inp.env = text
            .lines()
            .filter_map(|l| l.strip_prefix("# env: "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let report = match load(&inp) {
            Ok(_) => panic!("{}: loaded without error", path.display()),
            Err(e) => e.to_string(),
        };
        for want in expects {
            assert!(
                report.contains(want),
                "{}: expected {want:?} in\n{report}",
                path.display()
            );
        }
        // `# not: <text>` lines name follow-on problems that must not be
        // reported (each bad value is reported once, at its own key).
        for unwanted in text.lines().filter_map(|l| l.strip_prefix("# not: ")) {
            assert!(
                !report.contains(unwanted),
                "{}: did not expect {unwanted:?} in\n{report}",
                path.display()
            );
        }
    }
}

/// docs/configuration.md must describe every key the loader knows.
#[test]
fn docs_list_every_key() {
    let docs = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let known = serde_yaml_ng::to_value(RawConfig::key_tree_example()).unwrap();
    let mut keys = Vec::new();
    collect_keys(&known, "", &mut keys);
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
}

fn collect_keys(v: &serde_yaml_ng::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        serde_yaml_ng::Value::Mapping(m) => {
            for (k, sub) in m {
                let k = tree::value_text(k);
                let full = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(full.clone());
                collect_keys(sub, &full, out);
            }
        }
        serde_yaml_ng::Value::Sequence(items) => {
            if let Some(first) = items.first() {
                collect_keys(first, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn history_follows_the_runtime_dir_unless_set() {
    let mut inp = input("pools:\n  - name: www\n");
    inp.runtime_dir = Some("/var/lib/pfm".into());
    let cfg = load(&inp).unwrap();
    assert_eq!(
        cfg.storage.database_path,
        Some(PathBuf::from("/var/lib/pfm/data.db"))
    );
    let cfg = load(&input(
        "phpfpm:\n  runtime_dir: rt\npools:\n  - name: www\n",
    ))
    .unwrap();
    assert_eq!(
        cfg.storage.database_path,
        Some(PathBuf::from("/srv/app/rt/data.db"))
    );
    let mut inp = input("storage:\n  database_path: /data/h.db\npools:\n  - name: www\n");
    inp.runtime_dir = Some("/var/lib/pfm".into());
    let cfg = load(&inp).unwrap();
    assert_eq!(cfg.storage.database_path, Some(PathBuf::from("/data/h.db")));
}

#[test]
fn respawn_storm_threshold_is_a_monitoring_key() {
    let cfg = load(&input(
        "monitoring:\n  respawn_storm_threshold: 12\npools:\n  - name: www\n",
    ))
    .unwrap();
    assert_eq!(cfg.monitoring.respawn_storm_threshold, 12);
    let p = problems("monitoring:\n  respawn_storm_threshold: 0\npools:\n  - name: www\n");
    assert_eq!(
        p,
        ["monitoring.respawn_storm_threshold: '0': must be at least 1; the default is 5"]
    );
}

#[test]
fn stall_and_process_series_keys_have_defaults_and_zero_disables_the_restart() {
    let cfg = load(&input("pools:\n  - name: www\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.phpfpm.stall_restart_after,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(
        cfg.monitoring.stall_after,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(cfg.monitoring.max_process_series, 1000);
    let cfg = load(&input(
        "phpfpm:\n  stall_restart_after: 0s\nmonitoring:\n  max_process_series: 50\npools:\n  - name: www\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.phpfpm.stall_restart_after.is_zero());
    assert_eq!(cfg.monitoring.max_process_series, 50);
}
