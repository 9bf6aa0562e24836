//! Calico's datastore key layout, so a Tabby store reads like a Calico etcd:
//! v3 resources under `/calico/resources/v3/projectcalico.org/<plural>/[<ns>/]<name>`,
//! IPAM objects under `/calico/ipam/v2/...`.

/// Root of every v3 resource key.
pub const RESOURCES_PREFIX: &str = "/calico/resources/v3/projectcalico.org/";
/// Root of every IPAM key.
pub const IPAM_PREFIX: &str = "/calico/ipam/v2/";

/// The key of a v3 resource. `plural` is the lower-case plural kind (`ippools`).
pub fn resource_key(plural: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{RESOURCES_PREFIX}{plural}/{ns}/{name}"),
        None => format!("{RESOURCES_PREFIX}{plural}/{name}"),
    }
}

/// The prefix that lists a kind, optionally only in one namespace.
pub fn resource_prefix(plural: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{RESOURCES_PREFIX}{plural}/{ns}/"),
        None => format!("{RESOURCES_PREFIX}{plural}/"),
    }
}

/// Splits a resource key back into `(plural, namespace, name)`.
pub fn parse_resource_key(key: &str) -> Option<(&str, Option<&str>, &str)> {
    let rest = key.strip_prefix(RESOURCES_PREFIX)?;
    let mut parts = rest.split('/');
    let plural = parts.next()?;
    let a = parts.next()?;
    match (parts.next(), parts.next()) {
        (None, _) => Some((plural, None, a)),
        (Some(b), None) => Some((plural, Some(a), b)),
        _ => None,
    }
}

/// Block CIDRs appear in keys with `/` replaced by `-` (`10.0.0.0-26`).
pub fn cidr_to_key_part(cidr: &str) -> String {
    cidr.replace('/', "-")
}

/// The reverse of [`cidr_to_key_part`]: the last `-` is the prefix separator.
pub fn key_part_to_cidr(part: &str) -> Option<String> {
    let (addr, len) = part.rsplit_once('-')?;
    len.parse::<u8>().ok()?;
    Some(format!("{addr}/{len}"))
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 { "ipv6" } else { "ipv4" }
}

/// `/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`
pub fn ipam_block_key(cidr: &str, ipv6: bool) -> String {
    format!(
        "{IPAM_PREFIX}assignment/{}/block/{}",
        family(ipv6),
        cidr_to_key_part(cidr)
    )
}

/// Prefix of every block of one family.
pub fn ipam_block_prefix(ipv6: bool) -> String {
    format!("{IPAM_PREFIX}assignment/{}/block/", family(ipv6))
}

/// `/calico/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26`
pub fn ipam_affinity_key(host: &str, cidr: &str, ipv6: bool) -> String {
    format!(
        "{IPAM_PREFIX}host/{host}/{}/block/{}",
        family(ipv6),
        cidr_to_key_part(cidr)
    )
}

/// Prefix of every affinity of one host (both families).
pub fn ipam_host_prefix(host: &str) -> String {
    format!("{IPAM_PREFIX}host/{host}/")
}

/// `/calico/ipam/v2/handle/<handle>`
pub fn ipam_handle_key(handle: &str) -> String {
    format!("{IPAM_PREFIX}handle/{handle}")
}

/// `/calico/ipam/v2/config`
pub fn ipam_config_key() -> String {
    format!("{IPAM_PREFIX}config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_keys_round_trip() {
        let k = resource_key("networkpolicies", Some("prod"), "allow-dns");
        assert_eq!(
            k,
            "/calico/resources/v3/projectcalico.org/networkpolicies/prod/allow-dns"
        );
        assert_eq!(
            parse_resource_key(&k),
            Some(("networkpolicies", Some("prod"), "allow-dns"))
        );
        let k = resource_key("ippools", None, "default-ipv4-ippool");
        assert_eq!(
            parse_resource_key(&k),
            Some(("ippools", None, "default-ipv4-ippool"))
        );
        assert_eq!(parse_resource_key("/calico/ipam/v2/config"), None);
    }

    #[test]
    fn ipam_keys_match_calico() {
        assert_eq!(
            ipam_block_key("10.0.0.0/26", false),
            "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"
        );
        assert_eq!(
            ipam_affinity_key("node1", "fd00::/122", true),
            "/calico/ipam/v2/host/node1/ipv6/block/fd00::-122"
        );
        assert_eq!(
            key_part_to_cidr("fd00::-122").as_deref(),
            Some("fd00::/122")
        );
        assert_eq!(key_part_to_cidr("10.0.0.0-x"), None);
    }
}
