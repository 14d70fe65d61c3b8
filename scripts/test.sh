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

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== benchmark smoke pass (the full run: see BENCHMARKS.md)"
cargo run --quiet -p cache-examples --bin cache-bench -- --smoke
echo "== cargo test"
cargo test --workspace --all-features
