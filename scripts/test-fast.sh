#!/usr/bin/env bash
# The fast lane for development: every crate's unit tests (libraries and binaries)
# and the integration tests that run on fakes, in-process peers and temporary files.
# No root, no network namespaces, no BIRD/FRR/GoBGP/etcd. The full suite, as CI runs
# it, is ./scripts/test.sh.
#
#   scripts/test-fast.sh            # build (cached after the first time), then run
#   scripts/test-fast.sh -- --quiet # arguments after -- go to every test binary
#
# One `cargo test --no-run` builds everything (the same artefacts test.sh uses);
# the chosen binaries then run one after the other, each from its crate's folder
# as `cargo test` would. The list below is the integration targets that pass
# without root (checked by running each test binary as `nobody`); a target that
# needs root fails loudly instead and must not be here. Targets that start etcd
# (tabbyctl/etcd, tabbyctl/datastore, tabby-store/etcd*, tabby-ipam/stress) are left
# to test.sh although they need no root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

PURE_TESTS=(
  tabby-api/conformance tabby-api/properties tabby-api/roundtrip
  tabby-bfd/packet tabby-bfd/session
  tabby-bgp/collision tabby-bgp/daemon tabby-bgp/message_size tabby-bgp/packet
  tabby-bgp/peer_limits tabby-bgp/session
  tabby-client/concurrency tabby-client/lenient
  tabbyctl/cli tabbyctl/ipam tabbyctl/node_status tabbyctl/packaging tabbyctl/plan
  tabbyctl/policy
  tabby-ipam/behaviour tabby-ipam/concurrency tabby-ipam/conformance
  tabby-lab/plan
  tabby-node/cli tabby-node/machine tabby-node/metrics_status
  tabby-policy/cases tabby-policy/host_and_node tabby-policy/incremental
  tabby-policy/nft_snapshot tabby-policy/properties
  tabby-selector/conformance tabby-selector/properties
  tabby-store/sqlite
  tabby-testnet/golden_files
)

# Unit tests that need root, skipped here (`--skip` filters for that binary).
declare -A ROOT_UNIT_TESTS=(
  [tabby-sys/tabby_sys]="nftables::tests::"
)

args=()
if [ "${1:-}" = "--" ]; then
  shift
  args=("$@")
fi

command -v jq >/dev/null || { echo "test-fast.sh needs jq (apt-get install jq)" >&2; exit 1; }

start=$(date +%s)
list=$(mktemp)
trap 'rm -f "$list"' EXIT
cargo test --workspace --lib --bins --tests --no-run --message-format=json-render-diagnostics \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
           | [.target.kind[0], .target.name, .executable, (.manifest_path | sub("/Cargo.toml$"; ""))]
           | @tsv' >"$list"

# The package name from the crate's manifest (its first `name =` is [package]'s).
pkg_of() { sed -n 's/^name = "\(.*\)"$/\1/p' "$1/Cargo.toml" | head -n 1; }

declare -A wanted=()
for t in "${PURE_TESTS[@]}"; do wanted[$t]=1; done

failed=()
ran=0
while IFS=$'\t' read -r kind name exe dir; do
  pkg=$(pkg_of "$dir")
  case "$kind" in
    lib | bin | proc-macro) ;;
    test) [ -n "${wanted[$pkg/$name]:-}" ] || continue; unset "wanted[$pkg/$name]" ;;
    *) continue ;;
  esac
  echo "== $pkg $kind $name"
  ran=$((ran + 1))
  skip=()
  if [ -n "${ROOT_UNIT_TESTS[$pkg/$name]:-}" ]; then
    skip=(--skip "${ROOT_UNIT_TESTS[$pkg/$name]}")
  fi
  if ! (cd "$dir" && "$exe" "${skip[@]}" "${args[@]}"); then
    failed+=("$pkg/$kind/$name")
  fi
done <"$list"

for t in "${!wanted[@]}"; do
  echo "test-fast.sh: no test target $t (renamed? update PURE_TESTS)" >&2
  failed+=("$t (missing)")
done

echo
echo "fast lane: $ran test binaries in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
