#!/usr/bin/env bash
# Runs every test, as CI does: format and lint checks, then the whole workspace's tests.
# Needs root: many tests build networks in namespaces and run real BIRD, FRR, GoBGP, etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
