#!/usr/bin/env bash
# tabby-node benchmarks (issue 6), one command. Needs root and iperf3.
#
# 1. crates/node/benches/agent.rs on a 10-node netns cluster: route propagation
#    latency (IPAM block claim -> route in another node's kernel), agent RSS and CPU
#    at idle, iperf3 pod-to-pod against node-to-node; BGP mesh and VXLAN Always.
# 2. crates/node/examples/reconcile_bench.rs `runs` times: Reconciler::apply_routes of
#    N routes into an empty namespace against `ip -batch`, alternating which goes
#    first; prints every line and the median rate ratio (tabby / ip).
#
#   bench/node/run.sh [routes=100000] [runs=3] [-- extra agent bench flags]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
pos=()
while (( $# )); do
  [[ "$1" == "--" ]] && { shift; break; }
  pos+=("$1"); shift
done
routes="${pos[0]:-100000}" runs="${pos[1]:-3}"
cd "$root"
command -v iperf3 >/dev/null || { echo "iperf3 is not installed" >&2; exit 1; }
cargo build --release -p tabby-node --example reconcile_bench >&2
cargo bench -p tabby-node --bench agent --no-run >&2

echo "# tabby-node agent bench ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg))"
cargo bench -p tabby-node --bench agent -- "$@"

echo
echo "# reconcile $routes routes, $runs runs (load $(cut -d' ' -f1-3 /proc/loadavg))"
bin="$CARGO_TARGET_DIR/release/examples/reconcile_bench"
ratios=()
for i in $(seq "$runs"); do
  order=()
  (( i % 2 == 0 )) && order=(--ip-first)
  out="$("$bin" --routes "$routes" "${order[@]}")"
  echo "$out"
  ratio="$(sed -n 's/^tabby apply_routes: .*ratio \([0-9.]*\) .*$/\1/p' <<<"$out")"
  [[ -n "$ratio" ]] || { echo "run $i printed no ratio" >&2; exit 1; }
  ratios+=("$ratio")
done
median="$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
echo "median apply_routes / ip -batch rate ratio over $runs runs ($routes routes): $median"
