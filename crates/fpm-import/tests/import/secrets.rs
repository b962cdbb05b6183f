//! env[...] values may be secrets: they reach the pool files and the 0600
//! env files, and nothing else the import returns, prints or writes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use fpm_import::{import, import_file, read_config, write_import, ImportOptions, ReadOptions};

use crate::support::{copy_tree, test_data};

const SECRETS: &[&str] = &["hunter2", "s3cr3t"];

fn fixture(dir: &Path) -> (PathBuf, ReadOptions) {
    copy_tree(&test_data("multi"), &dir.join("fpm"));
    let read = ReadOptions {
        prefix: dir.join("fpm"),
        ..ReadOptions::default()
    };
    (dir.join("fpm/php-fpm.conf"), read)
}

fn opts(dir: &Path, include_secrets: bool) -> ImportOptions {
    ImportOptions {
        runtime_dir: dir.join("rt"),
        write_runtime_dir: true,
        include_secrets,
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn env_values_stay_out_of_everything_but_the_secret_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, read) = fixture(tmp.path());
    let model = read_config(&main, &read).unwrap();
    let imported = import(&model, &opts(tmp.path(), false)).unwrap();
    let visible = format!(
        "{}\n{}\n{imported:?}\n{model:?}",
        imported.config_yaml,
        imported.notes.join("\n")
    );
    for s in SECRETS {
        assert!(
            !visible.contains(s),
            "{s} leaked into the YAML, notes or Debug output"
        );
    }
    // The variable names are mentioned, so the user knows what to merge.
    assert!(imported.config_yaml.contains("DB_PASSWORD"));
    assert!(!imported.config_has_secrets);
    // Carried into the managed pool file...
    let shop = &imported
        .pool_files
        .iter()
        .find(|(n, _)| n == "shop")
        .unwrap()
        .1;
    assert!(shop.contains("\nenv[DB_PASSWORD] = hunter2\n"));
    let api = &imported
        .pool_files
        .iter()
        .find(|(n, _)| n == "api")
        .unwrap()
        .1;
    assert!(api.contains("\nenv[API_TOKEN] = \"s3cr3t;token with spaces\"\n"));
    // ...and into the env files, which read back as YAML.
    let env: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &imported
            .env_files
            .iter()
            .find(|(n, _)| n == "api")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(
        env["env"]["API_TOKEN"].as_str(),
        Some("s3cr3t;token with spaces")
    );

    let out = tmp.path().join("out");
    let written = write_import(&imported, &out, false).unwrap();
    let mut all = Vec::new();
    files_under(&out, &mut all);
    assert_eq!(all.len(), 1 + 3 + 2, "{all:?}");
    for f in &all {
        let text = std::fs::read_to_string(f).unwrap();
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        if SECRETS.iter().any(|s| text.contains(s)) {
            assert_eq!(mode, 0o600, "{} holds a secret", f.display());
            assert!(
                written.env_files.contains(f) || written.pool_files.contains(f),
                "{} holds a secret",
                f.display()
            );
        }
    }
    let env_dir = std::fs::metadata(out.join("env"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(env_dir, 0o700);
    let admin = std::fs::metadata(out.join("pools.d/admin.conf")).unwrap();
    assert_eq!(
        admin.permissions().mode() & 0o777,
        0o644,
        "admin has no env"
    );
}

#[test]
fn include_secrets_puts_env_in_the_yaml_and_protects_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (main, read) = fixture(tmp.path());
    let imported = import_file(&main, &read, &opts(tmp.path(), true)).unwrap();
    assert!(imported.config_has_secrets);
    assert!(imported.env_files.is_empty());
    assert!(imported
        .config_yaml
        .contains("\"DB_PASSWORD\": \"hunter2\""));
    let debug = format!("{imported:?}");
    assert!(!debug.contains("hunter2"), "Debug shows a secret");
    let out = tmp.path().join("out");
    let w = write_import(&imported, &out, false).unwrap();
    let mode = std::fs::metadata(&w.config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn errors_about_env_values_do_not_show_them() {
    let tmp = tempfile::tempdir().unwrap();
    let main = tmp.path().join("php-fpm.conf");
    let cases = [
        // php-fpm accepts these; the manager's pool file cannot hold them.
        "env[DB_PASSWORD] = \"hunter2\\\"x\"\n",
        "env[DB_PASSWORD] = \"yes\"\nenv[T] = hunter2\\\\\n",
        "env[DB_PASSWORD] = 'a\\\\hunter2\\\\'\n",
        // php-fpm refuses these.
        "env[DB_PASSWORD] = \"hunter2\n",
        "env[DB_PASSWORD] = hunter2=1\n",
        "env[DB_PASSWORD] hunter2\n",
    ];
    for case in cases {
        let text = format!("[www]\nlisten = /tmp/x.sock\npm = static\npm.max_children = 1\n{case}");
        std::fs::write(&main, &text).unwrap();
        let err =
            import_file(&main, &ReadOptions::default(), &opts(tmp.path(), false)).expect_err(case);
        let shown = format!("{err}\n{err:?}");
        assert!(!shown.contains("hunter2"), "{case:?} -> {shown}");
        assert!(shown.contains("php-fpm.conf:5"), "{case:?} -> {shown}");
    }
}
