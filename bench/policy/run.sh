#!/usr/bin/env bash
# Policy: compile + apply time for 1,000 and 10,000 policies over 1,000 endpoints,
# one changed policy applied incrementally (by the nft program and through a
# long-lived libnftables context, as the agent does), and iperf3 throughput between two
# workloads with no ruleset vs the 10,000-policy ruleset loaded. Throw-away
# namespaces (prefix tpb<pid>); needs root, nft and iperf3. Prints Markdown for
# docs/benchmarks.md.
#
#   bench/policy/run.sh [rounds=3] [iperf_seconds=5]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
rounds="${1:-3}" secs="${2:-5}"
cd "$root"
# Release without LTO keeps the build short on a shared 2-core machine.
cargo build --release --config profile.release.lto=false --config profile.release.codegen-units=16 \
  -p tabby-policy --example policy_bench >&2
bench="$target/release/examples/policy_bench"
p="tpb$$" node="tpb$$-node" a="tpb$$-a" b="tpb$$-b"
work="$(mktemp -d)"
cleanup() {
  [[ -f "$work/iperf.pid" ]] && kill "$(cat "$work/iperf.pid")" 2>/dev/null || true
  for ns in "$a" "$b" "$node"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for ns in "$node" "$a" "$b"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1
# Proxy ARP answers for 169.254.1.1 only if the host routes it elsewhere.
ip -n "$node" link add up0 type veth peer name up1
ip -n "$node" link set up1 up
ip -n "$node" addr add 198.18.255.1/24 dev up0
ip -n "$node" link set up0 up
ip -n "$node" route add default via 198.18.255.2
pod() { # ns iface ip
  ip link add "$2" netns "$node" type veth peer name eth0 netns "$1"
  ip -n "$node" link set "$2" address ee:ee:ee:ee:ee:ee up
  ip netns exec "$node" sysctl -qw "net.ipv4.conf.$2.proxy_arp=1" "net.ipv4.neigh.$2.proxy_delay=0"
  ip -n "$node" route add "$3/32" dev "$2" scope link
  ip -n "$1" addr add "$3/32" dev eth0
  ip -n "$1" link set eth0 up
  ip -n "$1" route add 169.254.1.1 dev eth0 scope link
  ip -n "$1" route add default via 169.254.1.1 dev eth0
}
pod "$a" cali-ipa 100.64.200.1
pod "$b" cali-ipb 100.64.200.2
ip netns exec "$b" iperf3 -s -D --pidfile "$work/iperf.pid" >/dev/null
sleep 0.5
gbps() {
  ip netns exec "$a" iperf3 -c 100.64.200.2 -t "$secs" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}

echo "| endpoints | policies | kernel rules | model ms | compile ms | render ms | nft apply ms | total ms | 1 changed: model / compile / render / diff = sum ms | 1 changed: nft apply ms | 1 changed: end to end ms | no-op nft batch ms | libnftables context: full apply ms | libnftables context: 1 changed apply ms |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
ip netns exec "$node" nft list tables >/dev/null
ip netns exec "$node" "$bench" - 1000 1000 "$rounds"
ip netns exec "$node" "$bench" - 1000 10000 "$rounds"
rules="$(ip netns exec "$node" nft -a list table ip tabby | grep -c ' # handle ' || true)"
# The load on a shared machine moves iperf3 by more than the ruleset does:
# alternate loaded and empty runs and take the median of each.
ip netns exec "$node" nft list ruleset >"$work/ruleset.nft"
loaded=() base=()
for _ in 1 2 3; do
  loaded+=("$(gbps)")
  ip netns exec "$node" nft delete table ip tabby
  ip netns exec "$node" nft delete table ip6 tabby
  base+=("$(gbps)")
  ip netns exec "$node" nft -f "$work/ruleset.nft"
done
med() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
echo
echo "| iperf3 (TCP, ${secs} s, cali-ipa -> cali-ipb, 3 alternating runs) | runs Gbit/s | median Gbit/s |"
echo "|---|---|---:|"
echo "| no ruleset | ${base[*]} | $(med "${base[@]}") |"
echo "| 10,000-policy ruleset loaded ($rules rules and objects in table ip tabby) | ${loaded[*]} | $(med "${loaded[@]}") |"
python3 -c "print('| ratio of medians | | %.1f %% |' % (100*$(med "${loaded[@]}")/$(med "${base[@]}")))"
