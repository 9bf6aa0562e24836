#!/usr/bin/env bash
# Installs the Debian packages Tabby's build and tests need, when any is missing.
# Idempotent: a machine that has everything makes no apt call at all.
set -euo pipefail

PACKAGES=(
  # build
  build-essential pkg-config protobuf-compiler libprotobuf-dev
  # the dataplane and the test networks
  iproute2 iputils-ping nftables iptables iperf3 procps psmisc tcpdump
  # real peers and datastores the tests run against
  bird2 frr gobgpd etcd-server etcd-client containernetworking-plugins
  # tools the scripts use
  jq sqlite3 curl ca-certificates openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "installing the Rust toolchain (rustup, stable)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  }
fi
