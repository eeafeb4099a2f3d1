#!/usr/bin/env bash
# The whole GoChat test suite: formatting, lints, unit tests, and the
# integration tests that drive real `gochat` processes over real sockets.
# Idempotent; installs what it needs on a fresh Debian/Ubuntu machine with Rust
# (cmake and libcurl headers for librdkafka; Node.js and npm for the k6 shim;
# Python 3 for bench/compare-fanout; cargo-nextest, built once into the tools
# cache; MariaDB, Redis and Apache Kafka (fetched with Maven, run on Java 17)
# for the integration tests, started privately by deploy/test-services.sh).
#
#   ./test.sh            everything
#   ./test.sh --quick    skip fmt/clippy
set -euo pipefail
cd "$(dirname "$0")"

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

log() { printf '\n==> %s\n' "$*"; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
command -v cc >/dev/null || {
  log "installing a C toolchain (build-essential) for crates with C parts"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq build-essential; else sudo apt-get update -qq && sudo apt-get install -y -qq build-essential; fi
}

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
# librdkafka is built from source (rdkafka's cmake-build): it needs cmake and libcurl headers.
need=()
command -v cmake >/dev/null || need+=(cmake)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)
# The k6 scripts are checked through a Node.js shim (loadtest/k6/shim, `npm ci`);
# bench/compare-fanout is Python 3.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Private MariaDB, Redis and Kafka-protocol broker for the integration tests
# (installed and started if missing; tests that need them fail without them).
log "test services"
eval "$(deploy/test-services.sh up)"

if [[ $quick -eq 0 ]]; then
  log "rustfmt"
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
  cargo fmt --all -- --check
  log "clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# The suite runs under nextest (.config/nextest.toml: per-test time limits,
# broker tests one at a time); built once into the tools cache.
TOOLS="${GOCHAT_TOOLS_DIR:-$HOME/.cache/gochat-tools}"
export PATH="$TOOLS/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest (cargo install --locked, cached in $TOOLS)"
  cargo install --locked --quiet --root "$TOOLS" cargo-nextest
fi

log "tests"
cargo nextest run --workspace --locked --no-fail-fast
# nextest does not run doctests
cargo test --workspace --locked --doc
