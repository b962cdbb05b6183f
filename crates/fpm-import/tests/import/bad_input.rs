//! Bad input on disk: each case gives a clear error naming the file and line,
//! and nothing is written.

use std::path::Path;

use fpm_import::{
    import, import_file, read_config, write_import, Error, ImportError, ImportOptions, ReadError,
    ReadOptions, WriteError,
};

use crate::support::{php_fpm, run};

fn opts(dir: &Path) -> ImportOptions {
    ImportOptions {
        runtime_dir: dir.join("rt"),
        write_runtime_dir: true,
        include_secrets: false,
    }
}

const POOL: &str = "listen = /tmp/fpm-import-test.sock\nuser = nobody\ngroup = nogroup\npm = static\npm.max_children = 1\n";

#[test]
fn include_cycle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.conf");
    let b = tmp.path().join("d/b.conf");
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    std::fs::write(&a, format!("include = {}/d/*.conf\n", tmp.path().display())).unwrap();
    std::fs::write(&b, format!("[www]\n{POOL}include = {}\n", a.display())).unwrap();
    let e = read_config(&a, &ReadOptions::default()).unwrap_err();
    assert!(matches!(e, ReadError::Cycle { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{}:7: include cycle: ", b.display())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "{} -> {} -> {}",
            a.display(),
            b.display(),
            a.display()
        )),
        "{msg}"
    );
}

#[test]
fn missing_include_names_the_including_line() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.conf");
    std::fs::write(
        &a,
        format!("[global]\n\ninclude = {}/nope.conf\n", tmp.path().display()),
    )
    .unwrap();
    let e = read_config(&a, &ReadOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3: include", a.display())),
        "{e}"
    );
    assert!(e.to_string().contains("does not exist"), "{e}");
    // A directory where a file is expected, and a line with a NUL byte.
    let e = read_config(tmp.path(), &ReadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    std::fs::write(&a, "[www]\nlisten = /a\0b\n").unwrap();
    let e = read_config(&a, &ReadOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:2: line contains a NUL byte", a.display())
    );
    // A missing main file.
    let e = read_config(&tmp.path().join("none.conf"), &ReadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no such file"), "{e}");
}

#[test]
fn syntax_errors_name_file_and_line_like_php_fpm() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.conf");
    std::fs::create_dir_all(tmp.path().join("d")).unwrap();
    let b = tmp.path().join("d/www.conf");
    std::fs::write(
        &a,
        format!(
            "[global]\npid = {}/x.pid\ninclude = {}/d/*.conf\n",
            tmp.path().display(),
            tmp.path().display()
        ),
    )
    .unwrap();
    std::fs::write(&b, format!("[www]\n{POOL}# an old-style comment\n")).unwrap();
    let e = read_config(&a, &ReadOptions::default()).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:7: ", b.display())),
        "{e}"
    );
    // php-fpm refuses the same line.
    let (ok, out) = run(
        std::process::Command::new(php_fpm())
            .arg("-t")
            .arg("-y")
            .arg(&a),
        std::time::Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(out.contains(&format!("[{}:7]", b.display())), "{out}");

    std::fs::write(&b, format!("[www]\n{POOL}pm.max_requests = = 3\n")).unwrap();
    let e = read_config(&a, &ReadOptions::default()).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:7: ", b.display())),
        "{e}"
    );

    std::fs::write(&b, b"[www]\nlisten = /x\xff\n").unwrap();
    let e = read_config(&a, &ReadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");

    std::fs::write(&b, "; x\n".repeat(1000)).unwrap();
    let small = ReadOptions {
        max_file_bytes: 100,
        ..ReadOptions::default()
    };
    let e = read_config(&a, &small).unwrap_err();
    assert!(e.to_string().contains("larger than the limit"), "{e}");
}

#[test]
fn pool_name_with_a_dot_is_refused_with_a_rename_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.conf");
    std::fs::write(
        &a,
        format!(
            "[global]\npid = {}/x.pid\nerror_log = {}/e.log\n[my.site]\n{POOL}",
            tmp.path().display(),
            tmp.path().display()
        ),
    )
    .unwrap();
    // php-fpm itself accepts the name.
    let (ok, out) = run(
        std::process::Command::new(php_fpm())
            .arg("-t")
            .arg("-y")
            .arg(&a),
        std::time::Duration::from_secs(20),
    );
    assert!(ok, "{out}");
    let e = import_file(&a, &ReadOptions::default(), &opts(tmp.path())).unwrap_err();
    let Error::Import(ImportError::PoolName { suggest, .. }) = &e else {
        panic!("{e}");
    };
    assert_eq!(suggest, "my_site");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:4: pool name \"my.site\" is accepted by php-fpm but not by phpfpm-manager",
            a.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("rename the section to [my_site]"), "{msg}");
}

#[test]
fn dotdot_and_relative_paths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.conf");
    std::fs::write(&a, "[global]\ninclude = /etc/php/../php/x.conf\n").unwrap();
    let e = read_config(&a, &ReadOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2: include", a.display())),
        "{e}"
    );
    assert!(e.to_string().contains("'..'"), "{e}");
    let dotted = tmp.path().join("sub/../a.conf");
    let e = read_config(&dotted, &ReadOptions::default()).unwrap_err();
    assert!(matches!(e, ReadError::BadPath { .. }), "{e}");
    let e = read_config(Path::new("a.conf"), &ReadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("relative path"), "{e}");
    // A socket path with '..' in a pool.
    std::fs::write(
        &a,
        "[www]\nlisten = /run/../x.sock\npm = static\npm.max_children = 1\n",
    )
    .unwrap();
    let model = read_config(&a, &ReadOptions::default()).unwrap();
    let e = import(&model, &opts(tmp.path())).unwrap_err();
    assert!(e.to_string().contains("'..'"), "{e}");
    // An output directory with '..'.
    std::fs::write(&a, format!("[www]\n{POOL}")).unwrap();
    let imported = import_file(&a, &ReadOptions::default(), &opts(tmp.path())).unwrap();
    let e = write_import(&imported, &tmp.path().join("x/../out"), false).unwrap_err();
    assert!(matches!(e, WriteError::BadPath { .. }), "{e}");
}

#[test]
fn writer_refuses_overwrites_and_symlinks_and_leaves_no_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.conf");
    std::fs::write(&a, format!("[www]\n{POOL}")).unwrap();
    let imported = import_file(&a, &ReadOptions::default(), &opts(tmp.path())).unwrap();
    let out = tmp.path().join("out");
    write_import(&imported, &out, false).unwrap();
    let before = std::fs::read_to_string(out.join("phpfpm-manager.yaml")).unwrap();
    let e = write_import(&imported, &out, false).unwrap_err();
    assert!(matches!(e, WriteError::Exists(_)), "{e}");
    write_import(&imported, &out, true).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("phpfpm-manager.yaml")).unwrap(),
        before
    );

    // A symlink planted where a pool file goes, pointing outside out_dir.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::fs::remove_file(out.join("pools.d/www.conf")).unwrap();
    std::os::unix::fs::symlink(&victim, out.join("pools.d/www.conf")).unwrap();
    let e = write_import(&imported, &out, true).unwrap_err();
    assert!(matches!(e, WriteError::Symlink(_)), "{e}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    // A symlinked sub-directory is refused too.
    let out2 = tmp.path().join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    std::os::unix::fs::symlink(tmp.path(), out2.join("pools.d")).unwrap();
    let e = write_import(&imported, &out2, false).unwrap_err();
    assert!(matches!(e, WriteError::Symlink(_)), "{e}");
    assert!(
        !out2.join("phpfpm-manager.yaml").exists(),
        "nothing written after a refusal"
    );

    let mut names = Vec::new();
    for d in [out.clone(), out.join("pools.d")] {
        for e in std::fs::read_dir(d).unwrap() {
            names.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
}
