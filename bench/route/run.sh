#!/usr/bin/env bash
# Bulk route programming: tabby-dataplane's pipelined add_routes against
# `ip -batch`, N routes `100.64.x.y/32 via 198.18.0.2 dev veth0 onlink proto 80`
# each into a fresh network namespace (examples/route_bench.rs). Runs it `runs`
# times and prints every line and the median add ratio (tabby rate / ip rate).
# Needs root.
#
#   bench/route/run.sh [routes=100000] [runs=3]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
routes="${1:-100000}" runs="${2:-3}"
cd "$root"
cargo build --release -p tabby-dataplane --example route_bench >&2
bin="$target/release/examples/route_bench"
ratios=()
for i in $(seq "$runs"); do
  out="$("$bin" --routes "$routes")"
  echo "$out"
  ratio="$(sed -n 's/^tabby add_routes: .*ratio \([0-9.]*\)$/\1/p' <<<"$out")"
  [[ -n "$ratio" ]] || { echo "run $i printed no add ratio" >&2; exit 1; }
  ratios+=("$ratio")
done
median="$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
echo "median add ratio over $runs runs ($routes routes): $median"
