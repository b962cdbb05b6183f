//! The parser over the two fixtures, read straight from `test_data` (the
//! Debian one through `ReadOptions::root`, as a copy of another system).

use fpm_import::{read_config, FpmConfig, PoolDef, ReadOptions};

use crate::support::test_data;

fn value<'a>(p: &'a PoolDef, key: &str) -> &'a str {
    &p.get(key).unwrap_or_else(|| panic!("{key} missing")).value
}

fn array_value<'a>(p: &'a PoolDef, key: &str) -> &'a str {
    &p.directives
        .iter()
        .find(|d| d.key == key)
        .unwrap_or_else(|| panic!("{key} missing"))
        .value
}

fn debian() -> FpmConfig {
    let root = test_data("debian-8.2");
    read_config(
        &root.join("etc/php/8.2/fpm/php-fpm.conf"),
        &ReadOptions {
            root: Some(root.clone()),
            ..ReadOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn debian_stock_config() {
    let c = debian();
    let root = test_data("debian-8.2");
    assert_eq!(
        c.files,
        [
            root.join("etc/php/8.2/fpm/php-fpm.conf"),
            root.join("etc/php/8.2/fpm/pool.d/www.conf")
        ]
    );
    let global: Vec<(&str, &str)> = c
        .global
        .iter()
        .map(|d| (d.key.as_str(), d.value.as_str()))
        .collect();
    assert_eq!(
        global,
        [
            ("pid", "/run/php/php8.2-fpm.pid"),
            ("error_log", "/var/log/php8.2-fpm.log")
        ]
    );
    assert_eq!(c.pools.len(), 1);
    let www = &c.pools[0];
    assert_eq!(www.name, "www");
    let got: Vec<(&str, &str)> = www
        .directives
        .iter()
        .map(|d| (d.key.as_str(), d.value.as_str()))
        .collect();
    // Everything else in Debian's www.conf is commented out.
    assert_eq!(
        got,
        [
            ("user", "www-data"),
            ("group", "www-data"),
            ("listen", "/run/php/php8.2-fpm.sock"),
            ("listen.owner", "www-data"),
            ("listen.group", "www-data"),
            ("pm", "dynamic"),
            ("pm.max_children", "5"),
            ("pm.start_servers", "2"),
            ("pm.min_spare_servers", "1"),
            ("pm.max_spare_servers", "3"),
        ]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn multi_pool_fixture() {
    let dir = test_data("multi");
    let c = read_config(
        &dir.join("php-fpm.conf"),
        &ReadOptions {
            prefix: dir.clone(),
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(c.files.len(), 3);
    let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["shop", "api", "admin"]);
    assert_eq!(c.global("process_control_timeout").unwrap().value, "0");
    assert_eq!(c.global("rlimit_files").unwrap().value, "4096");
    let (shop, api, admin) = (&c.pools[0], &c.pools[1], &c.pools[2]);

    // shop spans two files: the later file's pm.max_children wins.
    let max = shop.get("pm.max_children").unwrap();
    assert_eq!(max.value, "16");
    assert_eq!(
        max.origin.file,
        dir.join("conf.d/20-admin.conf"),
        "{}",
        max.origin
    );
    assert_eq!(max.origin.line, 17);
    assert_eq!(value(shop, "listen"), "/run/php/shop.sock");
    assert_eq!(value(shop, "slowlog"), "/var/log/php-fpm/shop.slow.log");
    assert_eq!(value(shop, "request_slowlog_timeout"), "5s");
    // Ini scanning: `off` is empty, `on` is 1, the E_* expression is computed.
    assert_eq!(array_value(shop, "php_flag[display_errors]"), "");
    assert_eq!(array_value(shop, "php_admin_flag[log_errors]"), "1");
    assert_eq!(array_value(shop, "php_value[error_reporting]"), "22527");
    assert_eq!(
        array_value(shop, "php_admin_value[error_log]"),
        "/var/log/php-fpm/shop.error.log"
    );
    assert_eq!(value(shop, "clear_env"), "");

    assert_eq!(value(api, "listen"), "127.0.0.1:9101");
    assert_eq!(
        array_value(api, "php_admin_value[open_basedir]"),
        "/srv/api:/tmp"
    );
    assert_eq!(
        array_value(api, "env[API_TOKEN]"),
        "s3cr3t;token with spaces"
    );
    assert_eq!(value(api, "chdir"), "/");

    assert_eq!(
        value(admin, "pm.status_listen"),
        "/run/php/admin.status.sock"
    );
    assert_eq!(
        array_value(admin, "php_value[session.save_path]"),
        "/var/lib/php/sessions/admin"
    );
    assert_eq!(value(admin, "catch_workers_output"), "1");
}
