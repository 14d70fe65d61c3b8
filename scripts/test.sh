#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test against real redis-server
# processes that the tests start themselves (never the one on 6379).
# Installs what the tests need when it is missing (as root, from the system's packages).
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "== installing $pkg (provides $cmd)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    fi
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "error: $cmd not found. Install it and rerun:" >&2
        echo "  Debian/Ubuntu: sudo apt-get install $pkg" >&2
        echo "  macOS:         brew install ${3:-$pkg}" >&2
        exit 1
    fi
}
need redis-server redis-server redis
need openssl openssl
need python3 python3 python

# redis-py for the interop tests (tests/python/seed_peer.py plays the seed's Python
# service): the system's python3 when it has it, else a venv under target/ (the system's
# Python is never modified).
python_with_redis() {
    local venv=target/python
    if python3 -c 'import redis' >/dev/null 2>&1; then
        command -v python3
        return 0
    fi
    if ! "$venv/bin/python" -c 'import redis' >/dev/null 2>&1; then
        echo "== installing redis-py into $venv" >&2
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            fi
            rm -rf "$venv"
            python3 -m venv "$venv" >&2
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'redis>=4' >&2
    fi
    if ! "$venv/bin/python" -c 'import redis' >/dev/null 2>&1; then
        echo "error: redis-py is missing. Install it and rerun: pip install redis" >&2
        return 1
    fi
    echo "$PWD/$venv/bin/python"
}
CACHE_TESTS_PYTHON="$(python_with_redis)"
export CACHE_TESTS_PYTHON

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== benchmark smoke pass (the full run: see BENCHMARKS.md)"
cargo run --quiet -p cache-examples --bin cache-bench -- --smoke
echo "== cargo test"
cargo test --workspace --all-features
