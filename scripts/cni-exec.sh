#!/usr/bin/env bash
# Play the container runtime for the tabby CNI plugins by hand: set the CNI_*
# variables, feed a network config on stdin, print the plugin's JSON on stdout.
#
#   scripts/cni-exec.sh [options] add|del|check|status|gc|version
#
#   -c FILE      network config (JSON); default: read from stdin
#   -p NETNS     pod network namespace name (/run/netns/NETNS); created on add if missing
#   -i IFNAME    interface in the pod (default eth0)
#   -C ID        container ID (default: cni-exec-<NETNS>)
#   -k NS/POD    Kubernetes identity (K8S_POD_NAMESPACE, K8S_POD_NAME in CNI_ARGS)
#   -a ARGS      extra CNI_ARGS, e.g. 'IPV4POOLS=["pool-a"]' or 'IP=100.64.0.9'
#   -r FILE      prevResult (JSON) merged into the config (check, del, chained plugins)
#   -P PLUGIN    plugin to run (default tabby; e.g. tabby-ipam, bridge)
#   -H NETNS     run the plugin inside this host namespace (default: the current one)
#   -V JSON      gc: cni.dev/valid-attachments, e.g. '[{"containerID":"c1","ifname":"eth0"}]'
#                (GC refuses a config without it; '[]' collects every attachment)
#   --rm         on del, also delete the pod namespace afterwards
#
# CNI_PATH defaults to target/debug (or $CARGO_TARGET_DIR/debug) and /usr/lib/cni.
# Example:
#   echo '{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"tabby","nodename":"node-1",
#          "datastore":"sqlite:///tmp/tabby.db","ipam":{"type":"tabby-ipam"}}' > /tmp/net.json
#   sudo scripts/cni-exec.sh -c /tmp/net.json -p pod1 -k default/pod1 add
#   sudo scripts/cni-exec.sh -c /tmp/net.json -p pod1 -k default/pod1 --rm del
set -euo pipefail

conf="" netns="" ifname="eth0" cid="" k8s="" extra="" prev="" plugin="tabby" hostns="" rm=0 valid=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -c) conf="$2"; shift 2 ;;
    -p) netns="$2"; shift 2 ;;
    -i) ifname="$2"; shift 2 ;;
    -C) cid="$2"; shift 2 ;;
    -k) k8s="$2"; shift 2 ;;
    -a) extra="$2"; shift 2 ;;
    -r) prev="$2"; shift 2 ;;
    -P) plugin="$2"; shift 2 ;;
    -H) hostns="$2"; shift 2 ;;
    -V) valid="$2"; shift 2 ;;
    --rm) rm=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "cni-exec.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -eq 1 ]] || { echo "cni-exec.sh: give one command: add, del, check, status, gc or version" >&2; exit 2; }
cmd="$(tr '[:lower:]' '[:upper:]' <<<"$1")"

root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
export CNI_PATH="${CNI_PATH:-$target/debug:/usr/lib/cni}"
bin=""
IFS=: read -ra dirs <<<"$CNI_PATH"
for d in "${dirs[@]}"; do [[ -x "$d/$plugin" ]] && { bin="$d/$plugin"; break; }; done
[[ -n "$bin" ]] || { echo "cni-exec.sh: $plugin not found in CNI_PATH=$CNI_PATH (cargo build -p tabby-cni?)" >&2; exit 2; }

export CNI_COMMAND="$cmd"
if [[ -n "$netns" ]]; then
  if [[ "$cmd" == ADD && ! -e "/run/netns/$netns" ]]; then
    ip netns add "$netns"
    ip -n "$netns" link set lo up
  fi
  [[ -e "/run/netns/$netns" ]] && export CNI_NETNS="/run/netns/$netns"
  export CNI_CONTAINERID="${cid:-cni-exec-$netns}"
  export CNI_IFNAME="$ifname"
fi
args="IgnoreUnknown=1"
if [[ -n "$k8s" ]]; then
  args="$args;K8S_POD_NAMESPACE=${k8s%%/*};K8S_POD_NAME=${k8s#*/};K8S_POD_INFRA_CONTAINER_ID=${CNI_CONTAINERID:-}"
fi
[[ -n "$extra" ]] && args="$args;$extra"
export CNI_ARGS="$args"

input="$(if [[ -n "$conf" ]]; then cat "$conf"; elif [[ "$cmd" != VERSION ]]; then cat; else echo '{}'; fi)"
if [[ -n "$prev" ]]; then
  input="$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["prevResult"]=json.load(open(sys.argv[2])); print(json.dumps(c))' "$input" "$prev")"
fi
if [[ -n "$valid" ]]; then
  input="$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["cni.dev/valid-attachments"]=json.loads(sys.argv[2]); print(json.dumps(c))' "$input" "$valid")"
fi

run=("$bin")
[[ -n "$hostns" ]] && run=(ip netns exec "$hostns" "$bin")
set +e
"${run[@]}" <<<"$input"
rc=$?
set -e
if [[ "$cmd" == DEL && $rm -eq 1 && -n "$netns" && -e "/run/netns/$netns" ]]; then
  ip netns del "$netns"
fi
exit $rc
