//! BGPFilter resources turned into the speaker's route filters: each rule of
//! `exportV4`/`importV4`/`exportV6`/`importV6` becomes a `tabby_bgp` filter rule
//! with the same match fields, action and operations. Fields the speaker cannot
//! evaluate are refused by name rather than dropped, so a filter never silently
//! means something else than it says.

use tabby_api::bgp::{
    BGPFilterRule, BGPFilterSpec, FilterAction as ApiAction, FilterMatchSource,
    MatchOperator as ApiOperator, PeerType as ApiPeerType,
};
use tabby_bgp::policy::{
    CommunityMatch, Filter, FilterAction, FilterOperation, FilterRule, MatchOperator, PeerType,
    PrefixLength, RuleSource,
};

/// Converts the spec of the BGPFilter `name` into the speaker's [`Filter`].
///
/// The error names the field at fault, e.g. `spec.importV4[2].priority: ...`.
/// Refused: `interface` and `priority` matches (the speaker has neither an
/// interface nor a kernel priority for the routes it filters) and large
/// communities (`aa:nn:mm`), which the speaker's filters cannot match or add.
pub fn to_bgp_filter(name: &str, spec: &BGPFilterSpec) -> Result<Filter, String> {
    let list = |field: &str, rules: &[BGPFilterRule], max_len: u8| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| to_rule(&format!("spec.{field}[{i}]"), r, max_len))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(Filter {
        name: name.to_string(),
        export_v4: list("exportV4", &spec.export_v4, 32)?,
        import_v4: list("importV4", &spec.import_v4, 32)?,
        export_v6: list("exportV6", &spec.export_v6, 128)?,
        import_v6: list("importV6", &spec.import_v6, 128)?,
    })
}

fn to_rule(path: &str, r: &BGPFilterRule, max_len: u8) -> Result<FilterRule, String> {
    if let Some(iface) = &r.interface {
        return Err(format!(
            "{path}.interface: matching routes by interface ({iface:?}) is not supported; \
             Tabby's BGP speaker exports no interface routes"
        ));
    }
    if let Some(p) = r.priority {
        return Err(format!(
            "{path}.priority: matching routes by priority ({p}) is not supported by Tabby's BGP speaker"
        ));
    }
    let action = match r.action {
        Some(ApiAction::Accept) => FilterAction::Accept,
        Some(ApiAction::Reject) => FilterAction::Reject,
        None => return Err(format!("{path}.action: is required (Accept or Reject)")),
    };
    let prefix_length = match &r.prefix_length {
        None => None,
        Some(pl) => {
            let bound = |v: Option<i32>, which: &str| -> Result<Option<u8>, String> {
                v.map(|n| {
                    u8::try_from(n)
                        .ok()
                        .filter(|n| *n <= max_len)
                        .ok_or_else(|| {
                            format!("{path}.prefixLength.{which}: {n} is outside 0..={max_len}")
                        })
                })
                .transpose()
            };
            Some(PrefixLength {
                min: bound(pl.min, "min")?,
                max: bound(pl.max, "max")?,
            })
        }
    };
    let operations = r
        .operations
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let p = format!("{path}.operations[{i}]");
            match (&op.add_community, &op.prepend_as_path, &op.set_priority) {
                (Some(add), None, None) => match &add.value {
                    Some(v) => Ok(FilterOperation::AddCommunity { value: v.clone() }),
                    None => Err(format!("{p}.addCommunity.value: is required")),
                },
                (None, Some(pre), None) => Ok(FilterOperation::PrependAsPath {
                    prefix: pre.prefix.iter().map(|a| a.get()).collect(),
                }),
                (None, None, Some(sp)) => match sp.value {
                    Some(v) if v >= 1 => Ok(FilterOperation::SetPriority {
                        value: v.unsigned_abs(),
                    }),
                    Some(v) => Err(format!(
                        "{p}.setPriority.value: {v} is not a priority (1..)"
                    )),
                    None => Err(format!("{p}.setPriority.value: is required")),
                },
                _ => Err(format!(
                    "{p}: set exactly one of addCommunity, prependASPath, setPriority"
                )),
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    let rule = FilterRule {
        cidr: r.cidr,
        match_operator: match r.match_operator {
            None | Some(ApiOperator::Equal) => MatchOperator::Equal,
            Some(ApiOperator::NotEqual) => MatchOperator::NotEqual,
            Some(ApiOperator::In) => MatchOperator::In,
            Some(ApiOperator::NotIn) => MatchOperator::NotIn,
        },
        prefix_length,
        source: r.source.map(|s| match s {
            FilterMatchSource::RemotePeers => RuleSource::RemotePeers,
        }),
        peer_type: r.peer_type.map(|t| match t {
            ApiPeerType::EBgp => PeerType::Ebgp,
            ApiPeerType::IBgp => PeerType::Ibgp,
        }),
        communities: r.communities.as_ref().map(|c| CommunityMatch {
            values: c.values.clone(),
        }),
        as_path_prefix: r.as_path_prefix.iter().map(|a| a.get()).collect(),
        action,
        operations,
    };
    // The speaker's own checks: e.g. only `aa:nn` communities.
    rule.validate().map_err(|e| format!("{path}.{e}"))?;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BGPFilterSpec {
        let doc = format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata: {{name: f}}\nspec:\n{yaml}"
        );
        let mut rs = tabby_api::load::parse_documents(&doc, "f.yaml").unwrap();
        rs.pop()
            .unwrap()
            .spec
            .as_bgp_filter()
            .cloned()
            .expect("a BGPFilter")
    }

    #[test]
    fn every_supported_field_converts() {
        let s = spec(
            r#"
  exportV4:
  - cidr: 10.0.0.0/8
    matchOperator: In
    prefixLength: {min: 16, max: 26}
    source: RemotePeers
    peerType: eBGP
    communities: {values: ["65000:100"]}
    asPathPrefix: [65001, "1.10"]
    action: Accept
    operations:
    - addCommunity: {value: "65000:7"}
    - prependASPath: {prefix: [65000, 65000]}
    - setPriority: {value: 512}
  - action: Reject
  importV4:
  - cidr: 192.168.0.0/16
    matchOperator: NotIn
    peerType: iBGP
    action: Reject
  - cidr: 198.18.0.0/24
    matchOperator: NotEqual
    action: Accept
  exportV6:
  - cidr: 2001:db8::/32
    matchOperator: Equal
    action: Accept
  importV6:
  - cidr: fd00::/8
    prefixLength: {max: 64}
    matchOperator: In
    action: Reject
"#,
        );
        let f = to_bgp_filter("f", &s).unwrap();
        let want = Filter {
            name: "f".into(),
            export_v4: vec![
                FilterRule {
                    cidr: Some("10.0.0.0/8".parse().unwrap()),
                    match_operator: MatchOperator::In,
                    prefix_length: Some(PrefixLength {
                        min: Some(16),
                        max: Some(26),
                    }),
                    source: Some(RuleSource::RemotePeers),
                    peer_type: Some(PeerType::Ebgp),
                    communities: Some(CommunityMatch {
                        values: vec!["65000:100".into()],
                    }),
                    as_path_prefix: vec![65001, 65546],
                    action: FilterAction::Accept,
                    operations: vec![
                        FilterOperation::AddCommunity {
                            value: "65000:7".into(),
                        },
                        FilterOperation::PrependAsPath {
                            prefix: vec![65000, 65000],
                        },
                        FilterOperation::SetPriority { value: 512 },
                    ],
                },
                FilterRule {
                    cidr: None,
                    match_operator: MatchOperator::Equal,
                    prefix_length: None,
                    source: None,
                    peer_type: None,
                    communities: None,
                    as_path_prefix: vec![],
                    action: FilterAction::Reject,
                    operations: vec![],
                },
            ],
            import_v4: vec![
                FilterRule {
                    cidr: Some("192.168.0.0/16".parse().unwrap()),
                    match_operator: MatchOperator::NotIn,
                    prefix_length: None,
                    source: None,
                    peer_type: Some(PeerType::Ibgp),
                    communities: None,
                    as_path_prefix: vec![],
                    action: FilterAction::Reject,
                    operations: vec![],
                },
                FilterRule {
                    cidr: Some("198.18.0.0/24".parse().unwrap()),
                    match_operator: MatchOperator::NotEqual,
                    prefix_length: None,
                    source: None,
                    peer_type: None,
                    communities: None,
                    as_path_prefix: vec![],
                    action: FilterAction::Accept,
                    operations: vec![],
                },
            ],
            export_v6: vec![FilterRule {
                cidr: Some("2001:db8::/32".parse().unwrap()),
                match_operator: MatchOperator::Equal,
                prefix_length: None,
                source: None,
                peer_type: None,
                communities: None,
                as_path_prefix: vec![],
                action: FilterAction::Accept,
                operations: vec![],
            }],
            import_v6: vec![FilterRule {
                cidr: Some("fd00::/8".parse().unwrap()),
                match_operator: MatchOperator::In,
                prefix_length: Some(PrefixLength {
                    min: None,
                    max: Some(64),
                }),
                source: None,
                peer_type: None,
                communities: None,
                as_path_prefix: vec![],
                action: FilterAction::Reject,
                operations: vec![],
            }],
        };
        assert_eq!(f, want);
        // The speaker reads the same shape from JSON: a round trip is lossless.
        let back: Filter = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            to_bgp_filter("empty", &BGPFilterSpec::default()).unwrap(),
            Filter {
                name: "empty".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn unsupported_fields_are_refused_by_path() {
        let e = to_bgp_filter(
            "f",
            &spec("  exportV4:\n  - action: Accept\n  - interface: \"eth*\"\n    action: Accept\n"),
        )
        .unwrap_err();
        assert!(e.starts_with("spec.exportV4[1].interface: "), "{e}");
        assert!(e.contains("\"eth*\""), "{e}");
        let e = to_bgp_filter(
            "f",
            &spec("  importV6:\n  - priority: 512\n    action: Reject\n"),
        )
        .unwrap_err();
        assert!(e.starts_with("spec.importV6[0].priority: "), "{e}");
        let e = to_bgp_filter(
            "f",
            &spec("  importV4:\n  - communities: {values: [\"65000:1:2\"]}\n    action: Reject\n"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("spec.importV4[0].communities.values: "),
            "{e}"
        );
        let e = to_bgp_filter(
            "f",
            &spec(
                "  exportV4:\n  - action: Accept\n    operations: [{addCommunity: {value: \"1:2:3\"}}]\n",
            ),
        )
        .unwrap_err();
        assert!(
            e.starts_with("spec.exportV4[0].operations.addCommunity.value: "),
            "{e}"
        );
    }

    #[test]
    fn unvalidated_specs_are_caught_too() {
        // Specs straight from the store are not always validated; the
        // conversion checks what the speaker's types need.
        let mut s = BGPFilterSpec::default();
        s.export_v4.push(BGPFilterRule::default());
        assert_eq!(
            to_bgp_filter("f", &s).unwrap_err(),
            "spec.exportV4[0].action: is required (Accept or Reject)"
        );
        s.export_v4[0].action = Some(ApiAction::Accept);
        s.export_v4[0].prefix_length = Some(tabby_api::bgp::PrefixLength {
            min: Some(-1),
            max: None,
        });
        assert_eq!(
            to_bgp_filter("f", &s).unwrap_err(),
            "spec.exportV4[0].prefixLength.min: -1 is outside 0..=32"
        );
        s.export_v4[0].prefix_length = None;
        s.export_v4[0]
            .operations
            .push(tabby_api::bgp::FilterOperation::default());
        assert_eq!(
            to_bgp_filter("f", &s).unwrap_err(),
            "spec.exportV4[0].operations[0]: set exactly one of addCommunity, prependASPath, setPriority"
        );
        s.export_v4[0].operations[0].set_priority =
            Some(tabby_api::bgp::SetPriority { value: Some(0) });
        assert_eq!(
            to_bgp_filter("f", &s).unwrap_err(),
            "spec.exportV4[0].operations[0].setPriority.value: 0 is not a priority (1..)"
        );
        s.import_v6.push(BGPFilterRule {
            action: Some(ApiAction::Reject),
            prefix_length: Some(tabby_api::bgp::PrefixLength {
                min: None,
                max: Some(129),
            }),
            ..Default::default()
        });
        s.export_v4.clear();
        assert_eq!(
            to_bgp_filter("f", &s).unwrap_err(),
            "spec.importV6[0].prefixLength.max: 129 is outside 0..=128"
        );
    }
}
