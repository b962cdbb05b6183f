#!/bin/sh
# Re-captures the php-fpm 8.2 fixtures of this directory (run as root from the
# repository root: sh crates/phpfpm-manager/test_data/opcache/capture.sh).
# The probe script is taken from src/opcache.rs, so the fixtures are what the
# shipped probe prints. Hand-made files (truncated-*, empty, junk-*) are not
# touched. Needs php-fpm8.2 and cgi-fcgi (libfcgi-bin).
set -eu
out=$(cd "$(dirname "$0")" && pwd)
src="$out/../../src/opcache.rs"
lab=$(mktemp -d /tmp/opcache-capture.XXXXXX)
chmod 755 "$lab"
mkdir -m 755 "$lab/probe" "$lab/www"
python3 - "$src" "$lab/probe/probe.php" <<'PY'
import sys
s = open(sys.argv[1]).read()
start = s.index('pub const PROBE_SCRIPT: &str = r#"') + len('pub const PROBE_SCRIPT: &str = r#"')
open(sys.argv[2], 'w').write(s[start:s.index('"#;', start)])
PY
for i in 1 2 3; do echo "<?php function f$i() { return $i; } echo f$i();" > "$lab/www/s$i.php"; done
echo '<?php undefined_function_xyz();' > "$lab/www/fatal.php"
echo '<?php var_export(opcache_reset());' > "$lab/www/reset.php"
# Older than opcache.file_update_protection (2 s), or OPcache will not cache them.
touch -d '1 hour ago' "$lab"/probe/*.php "$lab"/www/*.php

pool() { # name, extra line
  printf '[%s]\nuser = www-data\ngroup = www-data\nlisten = %s/%s.sock\nlisten.mode = 0660\npm = static\npm.max_children = 1\npm.status_path = /status\npm.status_listen = %s/%s-status.sock\n%s\n' \
    "$1" "$lab" "$1" "$lab" "$1" "$2"
}
{ printf '[global]\npid = %s/a.pid\nerror_log = %s/a.log\n' "$lab" "$lab"
  pool a ''
  pool off 'php_admin_value[opcache.enable] = 0'
  pool restricted 'php_admin_value[opcache.restrict_api] = /nonexistent-dir'
  pool html 'php_admin_value[display_errors] = 1'
} > "$lab/a.conf"
{ printf '[global]\npid = %s/n.pid\nerror_log = %s/n.log\n' "$lab" "$lab"; pool n ''; } > "$lab/n.conf"
php-fpm8.2 -R -F -y "$lab/a.conf" >/dev/null 2>&1 & a=$!
# -n: no php.ini and no conf.d, so no zend_extension=opcache.
php-fpm8.2 -n -R -F -y "$lab/n.conf" >/dev/null 2>&1 & n=$!
trap 'kill -QUIT $a $n 2>/dev/null || true' EXIT
sleep 1
q() { SCRIPT_NAME="$2" SCRIPT_FILENAME="$2" REQUEST_METHOD=GET QUERY_STRING= \
      cgi-fcgi -bind -connect "$lab/$1.sock" 2>/dev/null; }
p="$lab/probe/probe.php"
# The restricted pool first: the first pool to run a script compiles it.
q restricted "$p" > "$out/php82-restricted.cgi"
q a "$p" > "$out/php82-fresh.cgi"
for i in 1 2 3; do q a "$lab/www/s$i.php" >/dev/null; q a "$lab/www/s$i.php" >/dev/null; done
q a "$p" > "$out/php82-warm.cgi"
q off "$p" > "$out/php82-disabled.cgi"
# opcache_reset() schedules a manual restart; the next request performs it.
q a "$lab/www/reset.php" >/dev/null
q a "$lab/www/s1.php" >/dev/null
q a "$p" > "$out/php82-after-reset.cgi"
q n "$p" > "$out/php82-not-installed.cgi"
q html "$lab/www/fatal.php" > "$out/php82-fatal-display-errors.cgi"
q a "$lab/www/fatal.php" > "$out/php82-fatal-500.cgi"
q a "$lab/www/missing.php" > "$out/php82-file-not-found.cgi"
kill -QUIT $a $n; wait $a $n || true
trap - EXIT
rm -rf "$lab"
