//! Validation plumbing shared by every kind: errors that name the field path and the
//! rule broken, a collector so one pass reports every problem, and the syntax
//! checks Calico applies to names, labels, selectors, durations and addresses.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::kind::Kind;
use crate::net;

/// One broken rule: the field path (`spec.blockSize`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// Dotted path from the resource root, `[i]` for list items.
    pub path: String,
    /// The rule broken, with the offending value.
    pub message: String,
}

/// Every problem found in one resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {}", join(.errors))]
pub struct ValidationError {
    /// The resource's kind.
    pub kind: Kind,
    /// `name`, or `namespace/name` for namespaced kinds.
    pub name: String,
    /// At least one problem.
    pub errors: Vec<FieldError>,
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects field errors during one validation pass.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    pub(crate) errors: Vec<FieldError>,
}

/// Which address family a field requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Any,
    V4,
    V6,
}

impl Family {
    fn admits(self, ip: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Family::Any => "an IP address",
            Family::V4 => "an IPv4 address",
            Family::V6 => "an IPv6 address",
        }
    }
}

impl Checker {
    /// Records a problem at `path`.
    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A label selector, when set. `global()` is only meaningful in namespace selectors.
    pub(crate) fn selector(&mut self, path: &str, selector: Option<&String>, allow_global: bool) {
        let Some(s) = selector else { return };
        if let Err(e) = tabby_selector::Selector::parse(s) {
            self.err(path, format!("{s:?} is not a valid selector: {e}"));
        } else if !allow_global && mentions_global(s) {
            self.err(
                path,
                format!("{s:?}: global() can only be used in a namespaceSelector"),
            );
        }
    }

    /// A resource or reference name: a DNS-1123 subdomain.
    pub(crate) fn subdomain(&mut self, path: &str, value: &str) {
        if let Some(why) = subdomain_problem(value) {
            self.err(path, format!("{value:?} {why}"));
        }
    }

    /// A DNS-1123 label (namespace and tier names).
    pub(crate) fn dns_label(&mut self, path: &str, value: &str) {
        if let Some(why) = dns_label_problem(value) {
            self.err(path, format!("{value:?} {why}"));
        }
    }

    /// A label map, with Kubernetes' rules for keys and values.
    pub(crate) fn labels<'a>(
        &mut self,
        path: &str,
        labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) {
        for (k, v) in labels {
            if let Some(why) = label_key_problem(k) {
                self.err(format!("{path}.{k}"), format!("label key {k:?} {why}"));
            }
            if let Some(why) = label_value_problem(v) {
                self.err(format!("{path}.{k}"), format!("label value {v:?} {why}"));
            }
        }
    }

    /// A Go duration string (`90s`, `1m30s`, `500ms`), when set.
    pub(crate) fn duration(&mut self, path: &str, value: Option<&String>) {
        if let Some(v) = value
            && let Err(e) = parse_duration(v)
        {
            self.err(path, e);
        }
    }

    /// A CIDR that must not have host bits set.
    pub(crate) fn masked(&mut self, path: &str, cidr: &IpNet) {
        if !net::is_masked(cidr) {
            self.err(path, net::host_bits_message(cidr));
        }
    }

    /// An IP address of the given family, when set and non-empty.
    pub(crate) fn ip(&mut self, path: &str, value: Option<&String>, family: Family) {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            return;
        };
        match v.parse::<IpAddr>() {
            Ok(ip) if family.admits(&ip) => {}
            _ => self.err(path, format!("{v:?} is not {}", family.describe())),
        }
    }

    /// An address with an optional prefix length (`10.0.0.1/24` or `10.0.0.1`).
    pub(crate) fn ip_with_prefix(&mut self, path: &str, value: Option<&String>, family: Family) {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            return;
        };
        match net::parse_net(v) {
            Some(n) if family.admits(&n.addr()) => {}
            _ => self.err(
                path,
                format!(
                    "{v:?} is not {} with an optional /prefix",
                    family.describe()
                ),
            ),
        }
    }

    /// An integer that must lie in `lo..=hi`, when set.
    pub(crate) fn range<T>(&mut self, path: &str, value: Option<T>, lo: i64, hi: i64)
    where
        T: Into<i64> + Copy,
    {
        if let Some(v) = value {
            let n: i64 = v.into();
            if !(lo..=hi).contains(&n) {
                self.err(path, format!("{n} is outside {lo}..={hi}"));
            }
        }
    }

    /// A string that must be one of `allowed`, compared case-insensitively.
    pub(crate) fn one_of_ci(&mut self, path: &str, value: Option<&String>, allowed: &[&str]) {
        let Some(v) = value else { return };
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(v)) {
            self.err(path, format!("{v:?} is not one of {}", allowed.join(", ")));
        }
    }

    /// A Linux interface name (at most 15 characters).
    pub(crate) fn interface_name(&mut self, path: &str, value: Option<&String>, allow_star: bool) {
        let Some(v) = value else { return };
        if allow_star && v == "*" {
            return;
        }
        let ok = !v.is_empty()
            && v.len() <= 15
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            self.err(
                path,
                format!("{v:?} is not an interface name (1-15 letters, digits, '_', '.', '-')"),
            );
        }
    }

    /// A MAC address (`aa:bb:cc:dd:ee:ff`, or with `-`), when set and non-empty.
    pub(crate) fn mac(&mut self, path: &str, value: Option<&String>) {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            return;
        };
        if !is_mac(v) {
            self.err(path, format!("{v:?} is not a MAC address"));
        }
    }

    /// Turns the collected problems into a result for one resource.
    pub(crate) fn finish(self, kind: Kind, name: String) -> Result<(), ValidationError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                kind,
                name,
                errors: self.errors,
            })
        }
    }
}

/// Whether a selector uses `global()` (outside quoted strings).
fn mentions_global(s: &str) -> bool {
    let mut stripped = String::with_capacity(s.len());
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => {}
            None => stripped.push(c),
        }
    }
    stripped.contains("global()")
}

fn is_mac(s: &str) -> bool {
    let sep = if s.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = s.split(sep).collect();
    matches!(parts.len(), 6 | 8 | 20)
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn label_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Why `s` is not a DNS-1123 label, if it is not.
pub(crate) fn dns_label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("is empty");
    }
    if s.len() > 63 {
        return Some("is longer than 63 characters");
    }
    let b = s.as_bytes();
    let ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    (!ok).then_some(
        "must be lower-case letters, digits and '-', starting and ending with a letter or digit",
    )
}

/// Why `s` is not a DNS-1123 subdomain, if it is not.
pub(crate) fn subdomain_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("is empty");
    }
    if s.len() > 253 {
        return Some("is longer than 253 characters");
    }
    let ok = s.split('.').all(|part| {
        let b = part.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    });
    (!ok).then_some(
        "must be lower-case letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit",
    )
}

/// Why `k` is not a Kubernetes label key (`[prefix/]name`), if it is not.
pub(crate) fn label_key_problem(k: &str) -> Option<&'static str> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && subdomain_problem(p).is_some()
    {
        return Some("has a prefix that is not a DNS subdomain");
    }
    if name.len() > 63 {
        return Some("has a name part longer than 63 characters");
    }
    if !label_chars_ok(name) {
        return Some(
            "must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit, with an optional DNS-subdomain prefix and '/'",
        );
    }
    None
}

/// Why `v` is not a Kubernetes label value, if it is not.
pub(crate) fn label_value_problem(v: &str) -> Option<&'static str> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("is longer than 63 characters");
    }
    (!label_chars_ok(v)).then_some(
        "must be empty or letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
    )
}

/// Parses a Go duration string as Calico's `metav1.Duration` fields take it:
/// `0`, or a sequence of decimal numbers with units `ns`, `us` (`µs`), `ms`, `s`,
/// `m`, `h`, e.g. `1h30m`, `2.5s`. Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 90s, 1m30s, 500ms)");
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!("{s:?}: durations cannot be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{s:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("2\u{b5}s").unwrap(),
            Duration::from_micros(2)
        );
        for bad in ["", "10", "s", "1x", "1..2s", "-1s", "1 s", ".s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(subdomain_problem("node1.example.com").is_none());
        assert!(subdomain_problem("default-ipv4-ippool").is_none());
        assert!(subdomain_problem("Bad").is_some());
        assert!(subdomain_problem("a..b").is_some());
        assert!(subdomain_problem("-a").is_some());
        assert!(subdomain_problem(&"a".repeat(254)).is_some());
        assert!(dns_label_problem("kube-admin").is_none());
        assert!(dns_label_problem("a.b").is_some());
    }

    #[test]
    fn labels() {
        assert!(label_key_problem("rack").is_none());
        assert!(label_key_problem("projectcalico.org/namespace").is_none());
        assert!(label_key_problem("route-reflector").is_none());
        assert!(label_key_problem("Bad_Key.x").is_none());
        assert!(label_key_problem("bad key").is_some());
        assert!(label_key_problem("/x").is_some());
        assert!(label_key_problem("UPPER.example/x").is_some());
        assert!(label_value_problem("").is_none());
        assert!(label_value_problem("r1").is_none());
        assert!(label_value_problem("a b").is_some());
        assert!(label_value_problem(&"a".repeat(64)).is_some());
    }

    #[test]
    fn global_is_found_outside_quotes_only() {
        assert!(mentions_global("global()"));
        assert!(mentions_global("a == 'x' || global( )"));
        assert!(!mentions_global("a == 'global()'"));
        assert!(!mentions_global("all()"));
    }

    #[test]
    fn macs() {
        assert!(is_mac("66:aa:bb:cc:dd:ee"));
        assert!(is_mac("66-AA-bb-cc-dd-ee"));
        assert!(!is_mac("66:aa:bb:cc:dd"));
        assert!(!is_mac("zz:aa:bb:cc:dd:ee"));
    }
}
