#!/usr/bin/env bash
# BGP route-reflector convergence benchmark (bgperf-style), issue 5.
#
#   bench/bgp/run.sh [--runs N] [--shapes 10x10000,50x2000,2x100000]
#                    [--targets tabby,bird,gobgp,frr] [--timeout SECS] [--out DIR]
#                    [--bin-dir DIR]   # skip the build, use DIR/tabby-bgpd, DIR/examples/bgp_bench
#
# Builds tabby-bgpd and the load generator (crates/bgp/examples/bgp_bench.rs)
# in release, then for every shape (testers x prefixes per tester), run and
# target: starts the target speaker alone in its own network namespace as a
# route reflector (AS 64512, every peer an RR client, passive), and runs the
# generator in a second namespace joined by a veth pair. The generator opens
# one monitor session and N tester sessions, waits until all are Established,
# then every tester blasts its pre-encoded UPDATEs (unique /32s from
# 100.64.0.0/10) at once. Convergence = time until the monitor (also an RR
# client) holds all N x M routes. Peak RSS = VmHWM of the target process.
# Reports the median of the runs per shape and target. Needs root; uses only
# 198.18.0.0/16 and 100.64.0.0/10 inside its own namespaces.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=3
SHAPES=10x10000,50x2000,2x100000
TARGETS=tabby,bird,gobgp,frr
TIMEOUT=300
OUT=""
BIN_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --shapes) SHAPES=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --bin-dir) BIN_DIR=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
for t in ${TARGETS//,/ }; do
    case $t in
        tabby) ;;
        bird) command -v bird >/dev/null || { echo "bird not installed" >&2; exit 1; } ;;
        gobgp) command -v gobgpd >/dev/null || { echo "gobgpd not installed" >&2; exit 1; } ;;
        frr) [ -x /usr/lib/frr/bgpd ] || { echo "FRR bgpd not installed" >&2; exit 1; } ;;
        *) echo "unknown target $t" >&2; exit 2 ;;
    esac
done

if [ -z "$BIN_DIR" ]; then
    TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    echo "building tabby-bgpd and bgp_bench (release, $TARGET_DIR)" >&2
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet -p tabby-bgp \
        --bin tabby-bgpd --example bgp_bench)
    BIN_DIR=$TARGET_DIR/release
fi
BGPD=$BIN_DIR/tabby-bgpd
GEN=$BIN_DIR/examples/bgp_bench

WORK=${OUT:-$(mktemp -d /tmp/tabby-bgp-bench.XXXXXX)}
mkdir -p "$WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
TGT=tbb$$t
GNS=tbb$$g
TPID=""

cleanup() {
    if [ -n "$TPID" ]; then kill -9 "$TPID" 2>/dev/null || true; fi
    for ns in "$TGT" "$GNS"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$TGT"
ip netns add "$GNS"
ip link add tbb$$a type veth peer name tbb$$b
ip link set tbb$$a netns "$TGT"
ip link set tbb$$b netns "$GNS"
ip -n "$TGT" link set tbb$$a name eth0
ip -n "$GNS" link set tbb$$b name eth0
for ns in "$TGT" "$GNS"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
done
ip -n "$TGT" addr add 198.18.0.1/16 dev eth0
ip -n "$GNS" addr add 198.18.0.254/16 dev eth0
MAXT=0
for s in ${SHAPES//,/ }; do n=${s%x*}; [ "$n" -gt "$MAXT" ] && MAXT=$n; done
[ "$MAXT" -le 250 ] || { echo "at most 250 testers" >&2; exit 2; }
for i in $(seq 1 "$MAXT"); do ip -n "$GNS" addr add "198.18.1.$i/16" dev eth0; done

MONITOR=198.18.0.254
# Peers of the target for n testers: 198.18.1.1..n and the monitor.
peers() { for i in $(seq 1 "$1"); do echo "198.18.1.$i"; done; echo "$MONITOR"; }

config_tabby() {
    printf 'routerId: 198.18.0.1\nasn: 64512\nlisten: "198.18.0.1:179"\nclusterId: 198.18.0.1\nholdTime: 240\ngracefulRestartTime: 0\npeers:\n'
    for p in $(peers "$1"); do
        printf '  - address: %s\n    remoteAs: 64512\n    passive: true\n    routeReflectorClient: true\n' "$p"
    done
}
config_bird() {
    printf 'router id 198.18.0.1;\nlog "%s/bird.log" { warning, error, fatal };\n' "$2"
    printf 'protocol device { }\nprotocol direct { ipv4; }\n'
    printf 'template bgp rrc { local 198.18.0.1 as 64512; passive on; rr client; rr cluster id 198.18.0.1;\n'
    printf '  hold time 240; ipv4 { import all; export all; }; }\n'
    local i=0
    for p in $(peers "$1"); do
        i=$((i + 1))
        printf 'protocol bgp p%d from rrc { neighbor %s as 64512; }\n' "$i" "$p"
    done
}
config_gobgp() {
    printf '[global.config]\n  as = 64512\n  router-id = "198.18.0.1"\n  port = 179\n  local-address-list = ["198.18.0.1"]\n'
    for p in $(peers "$1"); do
        printf '\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "%s"\n    peer-as = 64512\n' "$p"
        printf '  [neighbors.timers.config]\n    hold-time = 240\n'
        printf '  [neighbors.transport.config]\n    passive-mode = true\n'
        printf '  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = "198.18.0.1"\n'
        printf '  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = "ipv4-unicast"\n'
    done
}
config_frr() {
    printf 'frr defaults traditional\nhostname bench\nlog file %s/bgpd.log warnings\n!\n' "$2"
    printf 'router bgp 64512\n bgp router-id 198.18.0.1\n bgp cluster-id 198.18.0.1\n'
    printf ' no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n timers bgp 80 240\n'
    printf ' neighbor rrc peer-group\n neighbor rrc remote-as 64512\n neighbor rrc passive\n'
    for p in $(peers "$1"); do printf ' neighbor %s peer-group rrc\n' "$p"; done
    printf ' address-family ipv4 unicast\n  neighbor rrc activate\n  neighbor rrc route-reflector-client\n exit-address-family\n!\n'
}

# Starts target $1 for $2 testers in a fresh directory $3; sets TPID.
start_target() {
    local t=$1 n=$2 d=$3
    mkdir -p "$d"
    case $t in
        tabby)
            config_tabby "$n" >"$d/bgpd.yaml"
            RUST_LOG=warn ip netns exec "$TGT" "$BGPD" --config "$d/bgpd.yaml" >"$d/out.log" 2>&1 &
            ;;
        bird)
            config_bird "$n" "$d" >"$d/bird.conf"
            ip netns exec "$TGT" bird -f -c "$d/bird.conf" -s "$d/bird.ctl" >"$d/out.log" 2>&1 &
            ;;
        gobgp)
            config_gobgp "$n" >"$d/gobgpd.toml"
            ip netns exec "$TGT" gobgpd -f "$d/gobgpd.toml" -t toml --api-hosts 127.0.0.1:50051 \
                --pprof-disable -l warn >"$d/out.log" 2>&1 &
            ;;
        frr)
            config_frr "$n" "$d" >"$d/bgpd.conf"
            ip netns exec "$TGT" /usr/lib/frr/bgpd -f "$d/bgpd.conf" -i "$d/bgpd.pid" \
                -z "$d/zserv.api" --vty_socket "$d" -S -P 0 -Z -n -l 198.18.0.1 >"$d/out.log" 2>&1 &
            ;;
    esac
    TPID=$!
    # Ready when it listens on 179.
    for _ in $(seq 1 100); do
        if ip netns exec "$TGT" ss -Hltn 'sport = :179' | grep -q .; then return 0; fi
        kill -0 "$TPID" 2>/dev/null || { cat "$d/out.log" >&2; return 1; }
        sleep 0.1
    done
    echo "$t did not listen on 179" >&2
    return 1
}

stop_target() {
    kill "$TPID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$TPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$TPID" 2>/dev/null || true
    wait "$TPID" 2>/dev/null || true
    TPID=""
}

echo "results in $WORK" >&2
for shape in ${SHAPES//,/ }; do
    n=${shape%x*}
    m=${shape#*x}
    for run in $(seq 1 "$RUNS"); do
        for t in ${TARGETS//,/ }; do
            d=$WORK/$shape-$t-$run
            if ! start_target "$t" "$n" "$d"; then
                echo "{\"target\":\"$t\",\"shape\":\"$shape\",\"run\":$run,\"converged\":false}" >>"$RESULTS"
                stop_target
                continue
            fi
            line=$(ip netns exec "$GNS" "$GEN" --target 198.18.0.1 --testers "$n" --prefixes "$m" \
                --src-base 198.18.1.1 --monitor-src "$MONITOR" --target-pid "$TPID" \
                --timeout "$TIMEOUT" 2>"$d/gen.err" || true)
            [ -n "$line" ] || line='{"converged":false}'
            echo "$line" | jq -c --arg t "$t" --arg s "$shape" --argjson r "$run" \
                '. + {target: $t, shape: $s, run: $r}' | tee -a "$RESULTS" >&2
            stop_target
        done
    done
done

# Median per shape and target; ratios against BIRD.
echo
echo "| shape (testers x prefixes) | target | converged runs | median convergence (s) | median peak RSS (MB) | median target CPU (s) | time / BIRD | RSS / BIRD |"
echo "|---|---|---|---|---|---|---|---|"
jq -s -r '
  def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
  def r2: if . == null then "-" else (. * 100 | round / 100 | tostring) end;
  def r3: if . == null then "-" else (. * 1000 | round / 1000 | tostring) end;
  group_by(.shape) | .[] | . as $rows
  | ($rows | map(select(.converged)) | group_by(.target)
     | map({key: .[0].target, value: {
         s: (map(.seconds) | median),
         mb: (map(.targetVmHwmKb / 1024) | median),
         cpu: (map(.targetCpuSeconds) | median),
         n: length}}) | from_entries) as $m
  | ($rows | map(.target) | unique) as $targets
  | $targets[] as $t
  | ($m[$t] // {n: 0}) as $x
  | ($m["bird"] // null) as $b
  | "| \($rows[0].shape) | \($t) | \($x.n)/\($rows | map(select(.target == $t)) | length) | \($x.s | r3) | \($x.mb | r2) | \($x.cpu | r2) | \(if $b and $x.s then ($x.s / $b.s | r2) else "-" end) | \(if $b and $x.mb then ($x.mb / $b.mb | r2) else "-" end) |"
' "$RESULTS"
