#!/usr/bin/env bash
# CNI ADD/DEL latency with 20 ADDs in parallel, on SQLite and on etcd, each in a
# throw-away node namespace (etcd listens on that namespace's 127.0.0.1 only).
# Needs root, etcd (Debian package) for the etcd row. Prints Markdown rows for
# docs/benchmarks.md.
#
#   bench/cni/run.sh [parallel=20] [rounds=5]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
parallel="${1:-20}" rounds="${2:-5}"
cd "$root"
# Release without LTO keeps the build short on a shared 2-core machine; the plugins
# spend their time in process start, netlink and the datastore, not in code LTO speeds up.
cargo build --release --config profile.release.lto=false --config profile.release.codegen-units=16 \
  -p tabby-cni --bins --example cni_bench >&2
bins="$target/release"
node="tbench-node-$$"
work="$(mktemp -d)"
etcd_pid=""
cleanup() {
  [[ -n "$etcd_pid" ]] && kill "$etcd_pid" 2>/dev/null || true
  ip netns del "$node" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$node"
ip -n "$node" link set lo up

echo "| store | parallel | samples | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | CPU ms per ADD | CPU ms per DEL |"
echo "|---|---|---|---|---|---|---|---|---|"
ip netns exec "$node" "$bins/examples/cni_bench" "sqlite://$work/store.db" "$bins" "$parallel" "$rounds"

if command -v etcd >/dev/null; then
  ip netns exec "$node" etcd --data-dir "$work/etcd" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster default=http://127.0.0.1:23800 >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 50); do
    ip netns exec "$node" etcdctl --endpoints 127.0.0.1:23790 endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  ip netns exec "$node" "$bins/examples/cni_bench" "etcd://127.0.0.1:23790" "$bins" "$parallel" "$rounds"
else
  echo "etcd not installed: no etcd row" >&2
fi
