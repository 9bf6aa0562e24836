#!/usr/bin/env bash
# Builds the Debian package `tabby` (tabbyctl, tabby-node, tabby-bgpd, the CNI plugins
# tabby and tabby-ipam, the systemd units, /etc/tabby/tabby-node.env and
# /etc/cni/net.d/10-tabby.conflist) into target/debian/. Installs cargo-deb when it
# is missing. The package metadata is [package.metadata.deb] in crates/package/Cargo.toml.
# PROFILE=release (default) or another Cargo profile; PROFILE=dev makes a quick check
# of the metadata (cargo-deb warns that it will refuse dev builds one day).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
profile="${PROFILE:-release}"

command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb

cargo build --profile "$profile" -p tabbyctl -p tabby-node -p tabby-cni \
  -p tabby-bgp --bin tabbyctl --bin tabby-node --bin tabby-bgpd --bin tabby --bin tabby-ipam
args=(-p tabby-package --no-build)
if [ "$profile" != "release" ]; then
  # The assets name target/release/; cargo-deb maps them to the profile's folder.
  args+=(--profile "$profile")
fi
deb=$(cargo deb "${args[@]}" | tail -n 1)
echo "built $deb"
dpkg-deb --info "$deb" | sed -n '1,/Description/p'
dpkg-deb --contents "$deb"
