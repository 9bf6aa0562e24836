#!/usr/bin/env bash
# The main job: install what is missing, build, and run Tabby on the embedded store.
# Applies the example cluster (a pool, BGP settings, a peering, three nodes), shows it
# the way calicoctl would, and shows what happens to an invalid file; then brings up a
# 3-node mesh lab (network namespaces, tabby-node agents, pods through the CNI plugin)
# and prints its reachability matrix. `tabbyctl lab status --name demo` and
# `tabbyctl lab down --name demo` afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== building"
cargo build --release -p tabbyctl -p tabby-node -p tabby-cni
ctl=./target/release/tabbyctl
export TABBY_STORE="${TABBY_STORE:-sqlite:///var/lib/tabby/store.db}"

run() { echo; echo "\$ tabbyctl $*"; "$ctl" "$@"; }
run version
run apply -f examples/cluster.yaml
run get ippools -o wide
run get nodes -o wide
run get bgppeers
run get bgpconfigurations
run get nodes -l 'has(route-reflector)'
run config get asNumber
run get node node1 -o yaml
echo
echo "\$ tabbyctl apply -f examples/broken-pool.yaml   # refused, nothing written"
"$ctl" apply -f examples/broken-pool.yaml || true
run get ippools

echo
echo "== a 3-node mesh lab on the embedded store"
"$ctl" lab down --name demo >/dev/null 2>&1 || true
run lab up --name demo --topology mesh --nodes 3 --pods-per-node 2
run lab status --name demo
echo
echo "(tabbyctl lab down --name demo removes it)"
