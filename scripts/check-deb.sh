#!/usr/bin/env bash
# Builds the Debian package once (`cargo deb`, a release build) and checks it
# as its users would meet it:
#   1. dpkg-deb --info/--contents: the binary, the systemd unit, the config as
#      a conffile, the maintainer scripts, the docs, dashboard and rules;
#   2. lintian, when installed (errors fail; warnings are printed);
#   3. as root with --install (CI passes it): dpkg -i, then the installed
#      binary's --version and validate of the installed config,
#      systemd-analyze verify of the installed unit, a real start of the
#      installed manager on its config until /health/ready answers, a stop,
#      and dpkg --purge.
# Under CI=true a missing cargo-deb or lintian fails; elsewhere it is said
# and that step is left out. `scripts/install-deps.sh test` installs both.
# Usage: scripts/check-deb.sh [--install]
set -euo pipefail
cd "$(dirname "$0")/.."

install=false
[ "${1:-}" = "--install" ] && install=true
ci="${CI:-false}"
failures=0

say() { printf 'check-deb: %s\n' "$*" >&2; }
fail() {
    say "FAIL: $*"
    failures=$((failures + 1))
}
missing_tool() {
    if [ "$ci" = true ]; then
        fail "$1 is not installed (scripts/install-deps.sh test installs it)"
    else
        say "$1 is not installed; skipping: $2"
    fi
}

if ! cargo deb --version >/dev/null 2>&1; then
    missing_tool cargo-deb "the whole package check"
    [ "$failures" -eq 0 ] && exit 0
    exit 1
fi

start=$(date +%s)
say "building the package (release build)"
# --strip: the release profile keeps line tables, the package does not.
deb=$(cargo deb -p phpfpm-manager --locked --strip | tail -n 1)
[ -f "$deb" ] || { say "cargo deb did not name a package: $deb"; exit 1; }
say "built $deb in $(( $(date +%s) - start )) s ($(du -h "$deb" | cut -f1))"

# 1. What is in it.
contents=$(dpkg-deb --contents "$deb")
printf '%s\n' "$contents" >&2
for path in \
    ./usr/bin/phpfpm-manager \
    ./etc/phpfpm-manager/config.yaml \
    ./lib/systemd/system/phpfpm-manager.service \
    ./usr/share/doc/phpfpm-manager/copyright \
    ./usr/share/doc/phpfpm-manager/operations.md \
    ./usr/share/phpfpm-manager/grafana/phpfpm-manager.json \
    ./usr/share/phpfpm-manager/prometheus/alerts.yml \
    ./usr/share/doc/phpfpm-manager/changelog.Debian.gz; do
    # The unit's directory depends on cargo-deb's version (lib or usr/lib).
    alt=${path/.\/lib\/systemd/.\/usr\/lib\/systemd}
    if ! grep -qE " (${path}|${alt})\$" <<<"$contents"; then
        fail "$path is not in the package"
    fi
done
grep -qE '^-rwxr-xr-x .* \./usr/bin/phpfpm-manager$' <<<"$contents" ||
    fail "the binary is not mode 0755"
grep -qE '^-rw-r----- .* \./etc/phpfpm-manager/config.yaml$' <<<"$contents" ||
    fail "the config is not mode 0640"

control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb --control "$deb" "$control"
dpkg-deb --info "$deb" >&2
grep -qx '/etc/phpfpm-manager/config.yaml' "$control/conffiles" ||
    fail "the config is not a conffile"
grep -q 'install -d -m 0755 -o root -g root /var/lib/phpfpm-manager' "$control/postinst" ||
    fail "postinst does not create the runtime directory"
grep -q 'deb-systemd-helper' "$control/postinst" ||
    fail "postinst does not register the systemd unit"
# Neither started nor enabled on install (an upgrade keeps the operator's
# choice: enabled again only if it was, restarted only if it runs).
if grep -q '_dh_action=start\|deb-systemd-invoke start' "$control/postinst"; then
    fail "postinst starts the service (it must wait for the operator's config)"
fi
grep -q 'was-enabled phpfpm-manager.service' "$control/postinst" ||
    fail "postinst enables the service unconditionally"
grep -q '^Depends:.*php8.2-fpm | php-fpm' "$control/control" ||
    fail "the package does not depend on php-fpm"
payload=$(mktemp -d)
trap 'rm -rf "$control" "$payload"' EXIT
dpkg-deb -x "$deb" "$payload"
unit=$(find "$payload" -name phpfpm-manager.service | head -n 1)
cmp -s "$unit" deploy/systemd/phpfpm-manager.service ||
    fail "the packaged unit differs from deploy/systemd/phpfpm-manager.service"

# 2. lintian.
if command -v lintian >/dev/null 2>&1; then
    say "lintian"
    # Errors fail; warnings and notes are printed for the record.
    if ! lintian --fail-on error --display-info "$deb" >&2; then
        fail "lintian reported errors"
    fi
else
    missing_tool lintian "the lintian check"
fi

# 3. Install it and run what it installed.
if [ "$install" = true ]; then
    if [ "$(id -u)" -ne 0 ]; then
        fail "--install needs root"
    elif dpkg -s phpfpm-manager >/dev/null 2>&1; then
        fail "phpfpm-manager is already installed here; not touching it"
    else
        say "installing $deb"
        # policy-rc.d: the package scripts must not start services here.
        DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >&2 || fail "dpkg -i failed"
        bin=/usr/bin/phpfpm-manager
        version=$("$bin" --version) || fail "$bin --version failed"
        want=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
        [ "$version" = "phpfpm-manager $want" ] ||
            fail "$bin --version says '$version', not 'phpfpm-manager $want'"
        "$bin" validate --config /etc/phpfpm-manager/config.yaml >&2 ||
            fail "validate refused the installed config"
        [ -d /var/lib/phpfpm-manager ] || fail "/var/lib/phpfpm-manager was not created"
        if command -v systemd-analyze >/dev/null 2>&1; then
            out=$(systemd-analyze verify /lib/systemd/system/phpfpm-manager.service 2>&1) ||
                fail "systemd-analyze verify refused the installed unit: $out"
            [ -z "$out" ] || fail "systemd-analyze verify warned: $out"
        else
            missing_tool systemd-analyze "verifying the installed unit"
        fi
        # A real start of the installed manager on the installed config (the
        # command line of the unit), until its pool is ready, then a stop.
        log=$(mktemp)
        "$bin" run --config /etc/phpfpm-manager/config.yaml >"$log" 2>&1 &
        pid=$!
        ready=false
        for _ in $(seq 1 150); do
            if curl -fsS --max-time 2 http://127.0.0.1:9253/health/ready >/dev/null 2>&1; then
                ready=true
                break
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        [ "$ready" = true ] || fail "the installed manager did not become ready: $(tail -n 20 "$log")"
        curl -fsS --max-time 2 http://127.0.0.1:9253/metrics | grep -q '^phpfpm_up{pool="www"' ||
            fail "the installed manager does not export pool www"
        kill -TERM "$pid" 2>/dev/null || true
        code=0
        wait "$pid" || code=$?
        [ "$code" -eq 0 ] || fail "the installed manager exited with $code: $(tail -n 20 "$log")"
        rm -f "$log"
        DEBIAN_FRONTEND=noninteractive dpkg --purge phpfpm-manager >&2 || fail "dpkg --purge failed"
        [ ! -e /var/lib/phpfpm-manager ] || fail "purge left /var/lib/phpfpm-manager"
    fi
fi

if [ "$failures" -ne 0 ]; then
    say "$failures problems"
    exit 1
fi
say "package checks passed in $(( $(date +%s) - start )) s"
