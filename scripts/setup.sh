#!/usr/bin/env bash
# Set up everything fednode needs on a fresh Debian/Ubuntu machine, idempotently:
#   system packages for fastecdsa (pulled by libp2p: gcc, Python headers, libgmp-dev),
#   a virtualenv in .venv, torch 2.13.0 (CPU build) and fednode with its dev extras.
# Re-running is cheap: the Python install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

pick_python() {
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3.10 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)'; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

have_gmp_headers() {
    [ -e /usr/include/gmp.h ] || ls /usr/include/*/gmp.h >/dev/null 2>&1
}

need_system_packages() {
    local missing=()
    command -v gcc >/dev/null 2>&1 || missing+=(build-essential)
    have_gmp_headers || missing+=(libgmp-dev)
    PY="$1"
    "$PY" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
        || missing+=(python3-dev)
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    echo "${missing[@]:-}"
}

PY=$(pick_python) || { log "need Python 3.10-3.13; install one (e.g. apt-get install python3) and re-run"; exit 1; }
missing=$(need_system_packages "$PY")
if [ -n "$missing" ]; then
    cmd="apt-get update && apt-get install -y $missing"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing system packages: $missing"
        DEBIAN_FRONTEND=noninteractive bash -c "$cmd" >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
        log "installing system packages with sudo: $missing"
        sudo DEBIAN_FRONTEND=noninteractive bash -c "$cmd" >/dev/null
    else
        log "missing system packages: $missing (fastecdsa, a libp2p dependency, compiles against libgmp)"
        log "run as root:  $cmd"
        log "then re-run this command"
        exit 1
    fi
fi

# Optional: iproute2 and iptables let the NAT-traversal tests (tests/netns, root or
# CAP_NET_ADMIN only) build emulated networks; systemd's systemd-analyze checks the units in
# deploy/systemd (tests/deploy). Installed when we are root; never required. The other deploy
# checkers (hadolint, shellcheck, compose and Kubernetes schemas) come from PyPI with the dev
# extra; `kubectl kustomize` uses the machine's kubectl (Debian's kubernetes-client is too old).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    optional=()
    command -v ip >/dev/null 2>&1 || optional+=(iproute2)
    command -v iptables >/dev/null 2>&1 || optional+=(iptables)
    command -v systemd-analyze >/dev/null 2>&1 || optional+=(systemd)
    if [ ${#optional[@]} -gt 0 ]; then
        log "installing ${optional[*]} (network-namespace tests)"
        DEBIAN_FRONTEND=noninteractive bash -c "apt-get update && apt-get install -y ${optional[*]}" >/dev/null \
            || log "could not install ${optional[*]}; the tests that need them will be skipped"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    log "creating virtualenv .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.fednode-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing Python packages (first run takes a few minutes)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    # torch first, pinned: 2.13.0 is the CPU build; an unpinned torch would pull multi-GB CUDA wheels.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$stamp"
fi
log "ready: $(.venv/bin/fednode version)"
