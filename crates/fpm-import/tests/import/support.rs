//! Helpers shared by the import tests: fixture copies, running `php-fpm -tt`
//! and reading its dump.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The php-fpm binary, found as the manager finds it (`PATH`, then the
/// usual sbin directories); the test fails (never skips) when it is missing.
pub(crate) fn php_fpm() -> PathBuf {
    phpfpm_manager::supervisor::binary::find(None, std::env::var("PATH").ok().as_deref())
        .unwrap_or_else(|e| panic!("{e} (these tests never skip)"))
}

pub(crate) fn test_data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(rel)
}

/// Copies a directory tree.
pub(crate) fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Replaces text in every `.conf` file under `dir`.
pub(crate) fn rewrite_tree(dir: &Path, pairs: &[(&str, String)]) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rewrite_tree(&p, pairs);
        } else if p.extension().is_some_and(|x| x == "conf") {
            let mut t = std::fs::read_to_string(&p).unwrap();
            for (from, to) in pairs {
                t = t.replace(from, to);
            }
            std::fs::write(&p, t).unwrap();
        }
    }
}

/// Runs a command to completion with a deadline; returns (success, stdout+stderr).
pub(crate) fn run(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            return (status.success(), text);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of php-fpm output with `env[` values removed, for assertion messages.
pub(crate) fn redact(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("env[") {
            Some(i) => format!("{}env[<redacted>", &l[..i]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `php-fpm -tt` of a config; panics (with env values redacted) if it fails.
pub(crate) fn dump(conf: &Path, prefix: Option<&Path>) -> Dump {
    let mut cmd = Command::new(php_fpm());
    cmd.arg("-tt");
    if let Some(p) = prefix {
        cmd.arg("-p").arg(p);
    }
    cmd.arg("-y").arg(conf);
    let (ok, text) = run(&mut cmd, Duration::from_secs(20));
    assert!(
        ok,
        "php-fpm -tt {} failed:\n{}",
        conf.display(),
        redact(&text)
    );
    let d = Dump::parse(&text);
    assert!(
        d.sections.contains_key("global"),
        "no dump in php-fpm -tt output (log_level above notice?):\n{}",
        redact(&text)
    );
    d
}

/// The `NOTICE:` dump of `php-fpm -tt`: section -> key -> values (a key can
/// repeat for php_value/env).
#[derive(Debug, Default)]
pub(crate) struct Dump {
    pub(crate) sections: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Dump {
    pub(crate) fn parse(text: &str) -> Dump {
        let mut d = Dump::default();
        let mut current: Option<String> = None;
        let mut prev = "";
        for line in text.lines() {
            // With error_log = /proc/self/fd/2 (the manager's layout) php-fpm
            // writes each dump line twice, to stderr and to its log.
            if line == prev {
                continue;
            }
            prev = line;
            // "[26-Nov-2026 10:35:47] NOTICE: ..." or "NOTICE: ..."
            let line = match line.find("NOTICE: ") {
                Some(i) => &line[i + "NOTICE: ".len()..],
                None => continue,
            };
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = Some(name.to_owned());
                d.sections.entry(name.to_owned()).or_default();
                continue;
            }
            let Some(kv) = line.strip_prefix('\t') else {
                continue;
            };
            let (k, v) = match kv.split_once(" = ") {
                Some((k, v)) => (k, v),
                None => (kv.trim_end_matches(" =").trim_end_matches('='), ""),
            };
            if let Some(sec) = &current {
                d.sections
                    .get_mut(sec)
                    .unwrap()
                    .entry(k.trim().to_owned())
                    .or_default()
                    .push(v.to_owned());
            }
        }
        for sec in d.sections.values_mut() {
            for v in sec.values_mut() {
                v.sort();
            }
        }
        d
    }

    pub(crate) fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)?
            .get(key)?
            .first()
            .map(String::as_str)
    }
}
