#!/usr/bin/env bash
# Installs what building, running and testing phpfpm-manager needs on
# Debian/Ubuntu: php-fpm (the thing being managed), promtool (checks /metrics
# in tests), nginx and wrk (end-to-end and load tests on loopback).
# As root it runs apt-get; otherwise it prints the exact command to run.
# Usage: scripts/install-deps.sh [run|test|bench]
set -euo pipefail

purpose="${1:-test}"
missing=()

have_php_fpm() {
    command -v php-fpm >/dev/null 2>&1 && return 0
    compgen -G "/usr/sbin/php-fpm*" >/dev/null 2>&1 && return 0
    return 1
}

if ! have_php_fpm; then
    # Debian 12 ships 8.2; other releases have another version behind the
    # php-fpm metapackage.
    if apt-cache show php8.2-fpm >/dev/null 2>&1; then
        missing+=(php8.2-fpm)
    else
        missing+=(php-fpm)
    fi
fi
if [ "$purpose" != run ]; then
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v cgi-fcgi >/dev/null 2>&1 || missing+=(libfcgi-bin)
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)
    # deploy/: the unit (systemd-analyze), the Debian package (lintian; the
    # package check talks to the installed manager with curl), and the
    # Prometheus server that evaluates the dashboard and the rules.
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v lintian >/dev/null 2>&1 || missing+=(lintian)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
fi

# Tools from crates.io and PyPI for the checks of deploy/, pinned: cargo-deb
# builds the Debian package, kubernetes-validate and yamllint check the
# manifests and YAML.
install_tools() {
    [ "$purpose" = run ] && return 0
    cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --version 3.8.0 --locked
    if ! command -v yamllint >/dev/null 2>&1 || ! command -v kubernetes-validate >/dev/null 2>&1; then
        python3 -m pip install --quiet 'yamllint==1.38.0' 'kubernetes-validate==1.37.0'
        # pyenv finds new commands only after a rehash.
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    fi
}

if [ ${#missing[@]} -eq 0 ]; then
    install_tools
    exit 0
fi

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "phpfpm-manager needs: ${missing[*]}" >&2
    echo "install them as root with:" >&2
    echo "  sudo sh -c '$cmd'" >&2
    exit 1
fi
echo "Installing: ${missing[*]}" >&2
# Package scripts must not start system services (php-fpm, nginx) here: the
# manager and the tests run their own instances.
export RUNLEVEL=1
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
install_tools
