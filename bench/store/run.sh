#!/usr/bin/env bash
# 1. Compare-and-swap throughput and latency, embedded SQLite against a local etcd, in
#    one run: 1 and 32 concurrent writers, each on its own key, then 32 on one shared
#    counter.
# 2. SQLite watches: the CPU used by 100 idle watch streams over 10 s (in one process,
#    then 10 processes of 10), and the latency from a write through a second handle to
#    the event, woken by inotify and by the 25 ms fallback poll.
# A benchmark, not a test. Usage: bench/store/run.sh [OPS_PER_WRITER | cas | watch]
# (default: both parts, 500 ops per writer; `cas` or `watch` runs one part).
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  cas) parts=cas ops=500 ;;
  watch) parts=watch ops=500 ;;
  *) parts="cas watch" ops="${1:-500}" ;;
esac

dir=$(mktemp -d /tmp/tabby-store-bench.XXXXXX)
etcd_pid=
cleanup() {
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

cas() {
  command -v etcd >/dev/null || { echo "needs /usr/bin/etcd (Debian etcd-server)" >&2; exit 1; }
  cargo build --release -q -p tabby-store --example cas_bench
  bin=target/release/examples/cas_bench
  # A single etcd member on free loopback ports, its data in the temp dir.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  etcd --name bench --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" --log-level error >"$dir/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done

  echo "# $(date -u +%F) $(nproc) vCPU, ops per writer: $ops"
  for store in "sqlite://$dir/bench.db" "etcd://127.0.0.1:$port"; do
    "$bin" --store "$store" --writers 1 --ops "$ops"
    "$bin" --store "$store" --writers 32 --ops "$ops"
    "$bin" --store "$store" --writers 32 --ops "$((ops / 5))" --shared
  done
}

watch() {
  cargo build --release -q -p tabby-store --example watch_idle
  bin=target/release/examples/watch_idle
  echo "# $(date -u +%F) $(nproc) vCPU, Linux $(uname -r), SQLite watches"
  for wake in inotify poll; do
    "$bin" --db "$dir/watch.db" --streams 100 --seconds 10 --wake "$wake"
    "$bin" --db "$dir/watch.db" --streams 100 --processes 10 --seconds 10 --wake "$wake"
    "$bin" --db "$dir/watch.db" --latency 200 --wake "$wake"
  done
}

for part in $parts; do "$part"; done
