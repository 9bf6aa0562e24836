#!/usr/bin/env bash
# Agent scale bench (issue 15), one command, as root:
#
#   bench/scale/run.sh
#
# Builds `crates/node/examples/scale.rs` and tabby-node (release), and the agent of
# BASELINE (the agent before issue 15, default 5d612f3) in a worktree beside it;
# generates the store once per kind (NODES nodes, ENDPOINTS workload endpoints over
# 1,000 namespaces, 10,000 NetworkPolicies; SQLite cached in $CACHE_DIR, etcd
# generated into a fresh etcd each run), then runs COUNT agents of each build against
# it: start-up to converged, idle CPU and RSS, CPU per unrelated write at each churn
# rate, pod-add latency on node-0000. Prints Markdown tables.
#
# Knobs (environment): STORES (sqlite etcd), AGENTS (new baseline), NODES (5000),
# ENDPOINTS (100000), NAMESPACES (1000), COUNT (3), RATES (10,100), CHURN_SECS (20), IDLE_SECS (20),
# SAMPLES (40), BASELINE (5d612f3), CACHE_DIR (target/bench-scale),
# SMALL=1 (3 nodes, 60 endpoints in one namespace with its 10 policies: the 3-node
# cluster of the RSS target).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
stores="${STORES:-sqlite etcd}"
agents="${AGENTS:-new baseline}"
nodes="${NODES:-5000}" endpoints="${ENDPOINTS:-100000}"
count="${COUNT:-3}" rates="${RATES:-10,100}"
churn_secs="${CHURN_SECS:-20}" idle_secs="${IDLE_SECS:-20}" samples="${SAMPLES:-40}"
baseline="${BASELINE:-5d612f3}"
cache="${CACHE_DIR:-$root/target/bench-scale}"
namespaces="${NAMESPACES:-1000}"
if [[ "${SMALL:-0}" == 1 ]]; then nodes=3 endpoints=60 namespaces=1 count=3; fi
[[ "$(id -u)" == 0 ]] || { echo "run as root (network namespaces)" >&2; exit 1; }
cd "$root"
mkdir -p "$cache"
cargo build --release -p tabby-node --bin tabby-node --example scale >&2
scale="$CARGO_TARGET_DIR/release/examples/scale"
specs=()
for a in $agents; do
  case "$a" in
    new) specs+=(--agent "new=$CARGO_TARGET_DIR/release/tabby-node") ;;
    baseline)
      wt="$cache/baseline-$baseline"
      if [[ ! -x "$wt/target/release/tabby-node" ]]; then
        [[ -d "$wt" ]] || git worktree add -q --detach "$wt" "$baseline"
        (cd "$wt" && CARGO_TARGET_DIR="$wt/target" cargo build --release -p tabby-node --bin tabby-node >&2)
      fi
      specs+=(--agent "baseline=$wt/target/release/tabby-node") ;;
    *) echo "AGENTS: unknown build $a (new, baseline)" >&2; exit 1 ;;
  esac
done

fab=tsc-fab
work="$(mktemp -d /tmp/tabby-bench-scale.XXXXXX)"
etcd_pid=
cleanup() {
  [[ -n "$etcd_pid" ]] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
  for ns in $(ip netns list | awk '{print $1}' | grep '^tsc-'); do ip netns del "$ns"; done
}
trap cleanup EXIT
cleanup
ip netns add "$fab"
ip -n "$fab" link set lo up
ip -n "$fab" link add br0 type bridge
ip -n "$fab" addr add 198.19.255.254/15 dev br0
ip -n "$fab" link set br0 up

echo "# agent scale bench ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "# $nodes nodes, $endpoints endpoints, $count agents per build; churn $rates writes/s for ${churn_secs}s; idle ${idle_secs}s; $samples pod adds; baseline $baseline; work dir $work"
for s in $stores; do
  case "$s" in
    sqlite)
      db="$cache/sqlite-$nodes-$endpoints-$namespaces.db"
      if [[ ! -f "$db" ]]; then
        rm -f "$db.tmp"*
        "$scale" gen --store "sqlite://$db.tmp" --nodes "$nodes" --endpoints "$endpoints" --namespaces "$namespaces" >&2
        mv "$db.tmp" "$db"
        for x in -wal -shm; do [[ -f "$db.tmp$x" ]] && mv "$db.tmp$x" "$db$x"; done
      fi
      # Each run on a copy: the agents register and write their nodes.
      cp "$db" "$work/store.db"
      for x in -wal -shm; do [[ -f "$db$x" ]] && cp "$db$x" "$work/store.db$x"; done
      url="sqlite://$work/store.db" ;;
    etcd)
      mkdir -p "$work/etcd"
      ip netns exec "$fab" etcd --data-dir "$work/etcd" --name scale \
        --listen-client-urls http://198.19.255.254:23790 --advertise-client-urls http://198.19.255.254:23790 \
        --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
        --initial-cluster scale=http://127.0.0.1:23800 --quota-backend-bytes 8589934592 \
        --log-level error >"$work/etcd.log" 2>&1 &
      etcd_pid=$!
      url="etcd://198.19.255.254:23790"
      for _ in $(seq 100); do ip netns exec "$fab" etcdctl --endpoints 198.19.255.254:23790 endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
      ip netns exec "$fab" "$scale" gen --store "$url" --nodes "$nodes" --endpoints "$endpoints" --namespaces "$namespaces" >&2 ;;
    *) echo "STORES: unknown store $s (sqlite, etcd)" >&2; exit 1 ;;
  esac
  echo
  echo "## store: $s"
  ip netns exec "$fab" "$scale" bench --store "$url" "${specs[@]}" --count "$count" --nodes "$nodes" \
    --endpoints "$endpoints" --namespaces "$namespaces" \
    --rates "$rates" --churn-secs "$churn_secs" --idle-secs "$idle_secs" --samples "$samples" \
    --fabric "$fab" --work "$work/agents-$s"
  if [[ -n "$etcd_pid" ]]; then kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true; etcd_pid=; fi
done
