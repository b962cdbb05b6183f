//! `deploy/`'s YAML against its tools: `kubernetes-validate` (PyPI) accepts
//! every Kubernetes manifest, `yamllint --strict` is clean on every file
//! (and does see a mistake), and the manifests agree with the product: the
//! manager config in the ConfigMap passes `phpfpm-manager validate`, the
//! probes and the scrape use the manager's port and endpoints, and both pod
//! autoscalers scale on a recording rule `deploy/prometheus/alerts.yml`
//! defines.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::support::{manager_bin, TestDir};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// Every document of every manifest, with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for f in manifests() {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

fn find<'a>(docs: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn run(tool: &str, args: &[&str], files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} not runnable ({e}); `scripts/install-deps.sh test` installs it (pip)")
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

/// Custom resources kubernetes-validate has no schema for (it says so, and
/// passes them): their fields that matter are checked below, in
/// `the_manifests_agree_with_the_manager_and_the_rules`.
const CUSTOM: &[&str] = &["ScaledObject", "ServiceMonitor"];

#[test]
fn kubernetes_validate_accepts_every_manifest() {
    let files = manifests();
    // --strict: unknown fields (a misspelt key) are errors too.
    let (ok, said) = run("kubernetes-validate", &["--strict"], &files);
    assert!(ok, "kubernetes-validate:\n{said}");
    // Every document was looked at: each built-in kind passed against its
    // schema; a custom resource was at least recognised as one.
    for (file, doc) in &documents() {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let kind = doc["kind"].as_str().unwrap();
        let passed = format!("passed for resource {}/{name}", kind.to_lowercase());
        let custom = format!("Couldn't find schema for kind {kind} ");
        let seen = said.lines().any(|l| {
            l.contains(file.file_name().unwrap().to_str().unwrap())
                && (l.contains(&passed) || (CUSTOM.contains(&kind) && l.contains(&custom)))
        });
        assert!(
            seen,
            "kubernetes-validate did not check {kind}/{name} of {}:\n{said}",
            file.display()
        );
    }

    // The same run sees a mistake in a manifest.
    let dir = TestDir::new("k8s-bad");
    let bad = dir.join("service.yaml");
    let text = std::fs::read_to_string(deploy().join("kubernetes/service.yaml")).unwrap();
    std::fs::write(
        &bad,
        text.replace("targetPort: metrics", "targetPrt: metrics"),
    )
    .unwrap();
    let (ok, said) = run("kubernetes-validate", &["--strict"], &[bad]);
    assert!(!ok, "kubernetes-validate passed a misspelt field:\n{said}");
}

#[test]
fn yamllint_is_clean_and_sees_mistakes() {
    let config = deploy().join(".yamllint.yml");
    let config = config.to_str().unwrap();
    let (ok, said) = run("yamllint", &["--strict", "-c", config], &[deploy()]);
    assert!(ok, "yamllint:\n{said}");

    let dir = TestDir::new("yamllint");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "key: value   \nlist:\n- a\n-  b\nkey: again\n").unwrap();
    let (ok, said) = run("yamllint", &["--strict", "-c", config], &[bad]);
    assert!(!ok, "yamllint passed a broken file:\n{said}");
    assert!(said.contains("duplication of key"), "{said}");
}

#[test]
fn the_manifests_agree_with_the_manager_and_the_rules() {
    let docs = documents();
    let cm = find(&docs, "ConfigMap", "php-app-phpfpm-manager");
    let config = cm["data"]["config.yaml"].as_str().unwrap();

    // The manager config in the pod passes validate (chdir pointed at a
    // directory that exists here), php-fpm -t included.
    let dir = TestDir::new("k8s-config");
    std::fs::create_dir_all(dir.join("app")).unwrap();
    let here = config.replace("/srv/app", &dir.join("app").display().to_string());
    std::fs::write(dir.join("config.yaml"), &here).unwrap();
    let out = Command::new(manager_bin())
        .args(["validate", "--config"])
        .arg(dir.join("config.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validate refused the pod's config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_yaml_ng::from_str(config).unwrap();
    let bind = parsed["server"]["bind_address"].as_str().unwrap();
    let port: u64 = bind.rsplit(':').next().unwrap().parse().unwrap();

    // The php container: the manager as entrypoint, its port, its probes.
    let deployment = find(&docs, "Deployment", "php-app");
    let php = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "php")
        .unwrap();
    assert_eq!(php["command"][0], "/usr/bin/phpfpm-manager");
    assert_eq!(php["args"][0], "run");
    let metrics = php["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .unwrap();
    assert_eq!(metrics["containerPort"].as_u64(), Some(port));
    for (probe, path) in [
        ("startupProbe", "/health/ready"),
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
    ] {
        assert_eq!(php[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(php[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    // The grace period outlasts the masters' graceful stop.
    let stop: u64 = parsed["phpfpm"]["stop_timeout"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace >= stop + 10,
        "grace {grace}s for stop_timeout {stop}s"
    );

    // The scrape: the Service's metrics port, job named as the alerts expect.
    let service = find(&docs, "Service", "php-app");
    assert!(service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics" && p["port"].as_u64() == Some(port)));
    let monitor = find(&docs, "ServiceMonitor", "php-app");
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(service["metadata"]["labels"][job_label], "phpfpm-manager");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // Both pod autoscalers use a recording rule of alerts.yml.
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let recorded: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect();
    let keda = find(&docs, "ScaledObject", "php-app");
    let query = keda["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap();
    assert!(
        recorded.iter().any(|r| query.contains(&format!("{r}{{"))),
        "the KEDA query {query:?} uses none of {recorded:?}"
    );
    assert!(query.contains("job=\"phpfpm-manager\""), "{query}");
    let adapter = find(&docs, "ConfigMap", "prometheus-adapter");
    let adapter_rules = adapter["data"]["config.yaml"].as_str().unwrap();
    assert!(
        recorded
            .iter()
            .any(|r| adapter_rules.contains(&format!("'{r}{{"))),
        "prometheus-adapter serves none of {recorded:?}"
    );
    let hpa = find(&docs, "HorizontalPodAutoscaler", "php-app");
    assert!(adapter_rules.contains(&format!(
        "as: {}",
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
            .as_str()
            .unwrap()
    )));
    for target in [
        &keda["spec"]["scaleTargetRef"],
        &hpa["spec"]["scaleTargetRef"],
    ] {
        assert_eq!(target["name"], "php-app");
    }
}
