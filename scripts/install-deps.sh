#!/usr/bin/env bash
# Installs what building, running and testing phpfpm-manager needs on
# Debian/Ubuntu: php-fpm (the thing being managed), promtool (checks /metrics
# in tests), nginx and wrk (end-to-end and load tests on loopback).
# As root it runs apt-get; otherwise it prints the exact command to run.
# Usage: scripts/install-deps.sh [run|test|bench]
set -euo pipefail

purpose="${1:-test}"
missing=()
# Python tools the tests drive (schemathesis fuzzes the API from its OpenAPI
# document), pinned so a new release cannot change what CI checks.
SCHEMATHESIS_VERSION=4.32.5
pip_missing=()

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
    python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$SCHEMATHESIS_VERSION')" >/dev/null 2>&1 \
        || pip_missing+=("schemathesis==$SCHEMATHESIS_VERSION")
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
fi

if [ ${#pip_missing[@]} -gt 0 ]; then
    command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
fi
install_pip() {
    [ ${#pip_missing[@]} -eq 0 ] && return 0
    echo "Installing from PyPI: ${pip_missing[*]}" >&2
    # Debian's own Python refuses pip installs outside a virtualenv unless
    # told otherwise; other Pythons (pyenv, a venv) take the plain form.
    python3 -m pip install --quiet "${pip_missing[@]}" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "${pip_missing[@]}"
}

if [ ${#missing[@]} -eq 0 ]; then
    install_pip
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
install_pip
