#!/usr/bin/env bash
# Lab scale (issue 9), one command, as root: builds tabbyctl, tabby-node and the CNI
# plugins (release), then for each size runs `tabbyctl lab up` and records the time
# to build (every pod added) and to converge (every route the planner predicts on
# every device, which `up` checks), the planner's route and session totals against
# what the devices hold, the reachability check, the agents' memory, and `lab down`.
# Then `lab fail` of a route reflector (RR topology, the largest RR size) and of an
# L2 plane (l2-planes), with the convergence times `fail` reports. Prints a Markdown
# table at the end; every lab's output is kept in $out.
#
#   bench/lab/run.sh                       # mesh 10/25/50, RR 50/100, l2-planes 20
#   SIZES="mesh:10 route-reflector:20" PLANES_NODES=0 bench/lab/run.sh
#   BFD=1 SIZES=route-reflector:100 PLANES_NODES=0 bench/lab/run.sh   # every lab `up --bfd`
#
# Knobs (environment): SIZES (topology:nodes ...), PODS (per node, default 1),
# MATRIX (for labs of more than SAMPLE_ABOVE nodes, default 50: sample:K, full or none;
# default full: every pair, also at 100 nodes), PLANES_NODES (hosts of
# the l2-planes lab, 0 to skip; default 20), PLANES (default 2), TIMEOUT (s, per wait),
# IDLE (s of CPU sampling of all agents once a lab is up, default 20; 0 to skip),
# BFD (1: every lab with `--bfd`, BFD 300 ms x 3 on every session; default 0).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
sizes="${SIZES:-mesh:10 mesh:25 mesh:50 route-reflector:50 route-reflector:100}"
pods="${PODS:-1}"
matrix="${MATRIX:-full}"
sample_above="${SAMPLE_ABOVE:-50}"
planes_nodes="${PLANES_NODES:-20}"
planes="${PLANES:-2}"
timeout="${TIMEOUT:-180}"
idle="${IDLE:-20}"
bfd=()
[[ "${BFD:-0}" == 1 ]] && bfd=(--bfd)
[[ "$(id -u)" == 0 ]] || { echo "run as root (network namespaces)" >&2; exit 1; }
cd "$root"
cargo build --release -p tabbyctl -p tabby-node -p tabby-cni --bins >&2
ctl="$CARGO_TARGET_DIR/release/tabbyctl"
out="$(mktemp -d /tmp/tabby-bench-lab.XXXXXX)"
export TABBY_LAB_DIR="$out/state"
export TABBY_CONFIG=/nonexistent/tabbyctl.yaml
unset TABBY_STORE
mkdir -p "$TABBY_LAB_DIR"
names=()
cleanup() {
  for n in "${names[@]}"; do "$ctl" lab --name "$n" down >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# The value after WORD in the summary's Timings line.
timing() { sed -n "s/^Timings .*[:,] $1 \([0-9.]*\).*/\1/p" "$2" | head -1; }
# Totals of the planner check table: lab/plan for sessions, block routes, pod routes.
totals() {
  awk '/^Planner check/ { on = 1; next } /^planner check:/ { on = 0 }
    on && $1 != "NODE" && NF >= 6 {
      split($3, s, "/"); split($4, r, "/"); split($5, p, "/")
      ls += s[1]; ps += s[2]; lr += r[1]; pr += r[2]; lp += p[1]; pp += p[2]
    }
    END { printf "%d/%d %d/%d %d/%d", ls, ps, lr, pr, lp, pp }' "$1"
}
# RSS of the lab's agents, MiB: total and per agent.
agents_rss() {
  local pids
  pids="$(python3 -c 'import json,sys; print(" ".join(str(p["pid"]) for p in json.load(open(sys.argv[1]))["processes"] if p["program"] == "tabby-node"))' "$TABBY_LAB_DIR/$1/lab.json")"
  # shellcheck disable=SC2086
  ps -o rss= -p ${pids// /,} | awk '{ t += $1; n++ } END { printf "%.0f MiB (%.1f each)", t / 1024, t / 1024 / n }'
}
# CPU of all the lab's agents together over $idle s once the lab is up, % of one core.
agents_idle() {
  (( idle > 0 )) || { echo "-"; return; }
  local pids
  pids="$(python3 -c 'import json,sys; print(" ".join(str(p["pid"]) for p in json.load(open(sys.argv[1]))["processes"] if p["program"] == "tabby-node"))' "$TABBY_LAB_DIR/$1/lab.json")"
  ticks() { local t=0 p f; for p in $pids; do f=($(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null)); (( ${#f[@]} > 12 )) && t=$(( t + f[11] + f[12] )); done; echo "$t"; }
  local a b; a="$(ticks)"; sleep "$idle"; b="$(ticks)"
  awk -v a="$a" -v b="$b" -v s="$idle" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f%%", (b - a) / hz / s * 100 }'
}
matrix_for() { if (( $1 > sample_above )); then echo "$matrix"; else echo full; fi; }

echo "# lab scale bench ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)); output in $out" >&2
rows=()
fails=()
run_up() { # name topology nodes [extra up args...]
  local name="$1" topo="$2" n="$3"; shift 3
  local m; m="$(matrix_for "$n")"
  names+=("$name")
  local t0; t0="$(now)"
  local ok=yes
  "$ctl" lab --name "$name" up --topology "$topo" --nodes "$n" --pods-per-node "$pods" \
    --matrix "$m" --timeout "$timeout" "${bfd[@]}" "$@" >"$out/$name.up.txt" 2>"$out/$name.up.err" || ok=no
  local wall; wall="$(since "$t0")"
  local verdict reach
  verdict="$(grep -q '^planner check: ok' "$out/$name.up.txt" && echo ok || echo FAILED)"
  reach="$(sed -n 's/^Reachability (\(.*\)):$/\1/p; s/^Reachability: \(.*\)$/\1/p' "$out/$name.up.txt" | head -1 | sed 's/sampled (--matrix sample:\([0-9]*\)): one ping from each pod to [0-9]* others, of \([0-9]*\) pairs, /sample:\1 of \2, /; s/one ping per pair, //')"
  echo "$topo $n: up $ok in $wall s (planner check $verdict; $reach)" >&2
  rows+=("| $topo | $n | $pods | $(timing built "$out/$name.up.txt") | $(timing converged "$out/$name.up.txt") | $wall | $(totals "$out/$name.up.txt" | sed 's/ / | /g') | $verdict | $m: $reach | $(agents_rss "$name") | $(agents_idle "$name") |")
  [[ "$ok" == yes ]]
}
run_fail() { # name target
  local name="$1" target="$2"
  local t0; t0="$(now)"
  "$ctl" lab --name "$name" fail "$target" --timeout "$timeout" >"$out/$name.fail.txt" 2>&1 || true
  local wall; wall="$(since "$t0")"
  local bgp reach probe
  bgp="$(sed -n 's/^BGP converged \([0-9.]*\) s after.*/\1/p' "$out/$name.fail.txt")"
  reach="$(sed -n 's/^every remaining pod pair reachable: \([0-9]*\) of [0-9]* (checked \([0-9.]*\) s after the change)/\1 pairs at \2 s/p; s/^\([0-9]* of [0-9]* remaining pod pairs UNREACHABLE\).*/\1/p' "$out/$name.fail.txt")"
  probe="$(sed -n 's/^probe \(.*\) (a ping every 50 ms throughout): .* \([0-9]*\) lost; longest gap .*(~\([0-9]*\) ms)/\2 lost, gap ~\3 ms/p' "$out/$name.fail.txt")"
  echo "fail $target in $name: BGP ${bgp:-?} s, reach ${reach:-?}, probe ${probe:-?} (wall $wall s)" >&2
  fails+=("| $name | \`lab fail $target\` | ${bgp:-did not converge} | ${reach:-?} | ${probe:-?} | $wall |")
}
run_down() {
  local t0; t0="$(now)"
  "$ctl" lab --name "$1" down >"$out/$1.down.txt" 2>&1
  echo "down $1 in $(since "$t0") s: $(cat "$out/$1.down.txt")" >&2
}

# The largest RR lab (the last route-reflector size) also has a reflector failed.
rr_fail="$(tr ' ' '\n' <<<"$sizes" | grep '^route-reflector:' | tail -1 || true)"
for s in $sizes; do
  topo="${s%%:*}" n="${s##*:}"
  short="$(tr -d -c 'a-z' <<<"${topo//route-reflector/rr}")"
  name="bl${short}${n}${bfd:+bfd}"
  if run_up "$name" "$topo" "$n" && [[ "$s" == "$rr_fail" ]]; then
    run_fail "$name" rr1
  fi
  run_down "$name"
done
if (( planes_nodes > 0 )); then
  name="blplanes${planes_nodes}"
  run_up "$name" l2-planes "$planes_nodes" --planes "$planes" || true
  run_fail "$name" plane:1
  run_down "$name"
fi

echo
echo "Lab builds (\`$ctl lab up --topology T --nodes N --pods-per-node $pods --matrix M${bfd:+ --bfd}\`; times in s since \`up\` started; lab/planner totals over every device):"
echo
echo "| topology | nodes | pods/node | built (s) | converged (s) | up wall (s) | sessions lab/plan | block routes lab/plan | pod routes lab/plan | planner check | reachability | agents RSS | agents idle CPU (all, of one core, over ${idle} s) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "Failures (\`lab fail\`; times since the cut):"
echo
echo "| lab | failure | BGP converged (s) | every remaining pair reachable | 50 ms probe | fail wall (s) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${fails[@]}"
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); output kept in $out"
