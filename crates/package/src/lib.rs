//! The Debian package `tabby`, as data: `[package.metadata.deb]` in this crate's
//! Cargo.toml lists every binary of a host (tabbyctl, tabby-node, tabby-bgpd, the CNI
//! plugins tabby and tabby-ipam), the systemd units, the agent's environment file and
//! the CNI network config. `scripts/package.sh` builds it. There is no code here.
