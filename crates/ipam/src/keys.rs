//! IPAM datastore keys in Calico's layout, built on `tabby_store::keys`, plus the
//! parsers IPAM needs to turn listed keys back into hosts and CIDRs.

use ipnet::IpNet;
use tabby_store::keys as store_keys;

use crate::ipmath::IpFamily;

/// `/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`
pub fn block_key(cidr: &IpNet) -> String {
    store_keys::ipam_block_key(
        &cidr.trunc().to_string(),
        IpFamily::of_net(cidr) == IpFamily::V6,
    )
}

/// Prefix of every block of a family.
pub fn block_prefix(family: IpFamily) -> String {
    store_keys::ipam_block_prefix(family == IpFamily::V6)
}

/// `/calico/ipam/v2/host/<host>/ipv4/block/10.0.0.0-26`
pub fn affinity_key(host: &str, cidr: &IpNet) -> String {
    store_keys::ipam_affinity_key(
        host,
        &cidr.trunc().to_string(),
        IpFamily::of_net(cidr) == IpFamily::V6,
    )
}

/// Prefix of a host's affinities of one family.
pub fn host_affinity_prefix(host: &str, family: IpFamily) -> String {
    format!(
        "{}{}/block/",
        store_keys::ipam_host_prefix(host),
        family.key_part()
    )
}

/// Prefix of every host's affinities.
pub fn affinity_root() -> String {
    format!("{}host/", store_keys::IPAM_PREFIX)
}

/// `/calico/ipam/v2/handle/<id>`
pub fn handle_key(handle: &str) -> String {
    store_keys::ipam_handle_key(handle)
}

/// Prefix of every handle.
pub fn handle_prefix() -> String {
    format!("{}handle/", store_keys::IPAM_PREFIX)
}

/// `/calico/ipam/v2/config`
pub fn config_key() -> String {
    store_keys::ipam_config_key()
}

fn parse_cidr_part(part: &str) -> Option<IpNet> {
    store_keys::key_part_to_cidr(part)?.parse().ok()
}

/// The CIDR of a block key.
pub fn parse_block_key(key: &str) -> Option<IpNet> {
    let rest = key.strip_prefix(&format!("{}assignment/", store_keys::IPAM_PREFIX))?;
    let (_, part) = rest.rsplit_once("/block/")?;
    parse_cidr_part(part)
}

/// `(host, cidr)` of an affinity key. Host names may contain `/` (`virtual/<name>`).
pub fn parse_affinity_key(key: &str) -> Option<(String, IpNet)> {
    let rest = key.strip_prefix(&affinity_root())?;
    let (head, part) = rest.rsplit_once("/block/")?;
    let (host, family) = head.rsplit_once('/')?;
    if family != "ipv4" && family != "ipv6" {
        return None;
    }
    Some((host.to_owned(), parse_cidr_part(part)?))
}

/// The handle id of a handle key.
pub fn parse_handle_key(key: &str) -> Option<&str> {
    key.strip_prefix(store_keys::IPAM_PREFIX)?
        .strip_prefix("handle/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c: IpNet = "10.0.0.64/26".parse().unwrap();
        assert_eq!(
            block_key(&c),
            "/calico/ipam/v2/assignment/ipv4/block/10.0.0.64-26"
        );
        assert_eq!(parse_block_key(&block_key(&c)), Some(c));
        let v6: IpNet = "fd80:24e2:f998:72d6::/122".parse().unwrap();
        let k = affinity_key("node1", &v6);
        assert_eq!(
            k,
            "/calico/ipam/v2/host/node1/ipv6/block/fd80:24e2:f998:72d6::-122"
        );
        assert_eq!(parse_affinity_key(&k), Some(("node1".to_string(), v6)));
        assert!(k.starts_with(&host_affinity_prefix("node1", IpFamily::V6)));
        assert_eq!(parse_affinity_key("/calico/ipam/v2/host/node1"), None);
        assert_eq!(parse_handle_key(&handle_key("a.b")), Some("a.b"));
    }
}
