//! Properties where hand-picked examples are not enough: AS numbers in every
//! spelling, port ranges, and YAML output of arbitrary text (labels, annotations)
//! reading back unchanged.

use proptest::prelude::*;
use tabby_api::load::{parse_documents, to_json, to_yaml};
use tabby_api::net::Port;
use tabby_api::{ASNumber, Kind, Resource};

fn label_part() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,20}[a-zA-Z0-9])?"
}

proptest! {
    #[test]
    fn as_numbers_parse_in_every_spelling(n in any::<u32>()) {
        let plain: ASNumber = n.to_string().parse().unwrap();
        prop_assert_eq!(plain.get(), n);
        let dot: ASNumber = ASNumber::new(n).to_asdot().parse().unwrap();
        prop_assert_eq!(dot.get(), n);
        let json_value = serde_json::to_value(dot).unwrap();
        prop_assert_eq!(&json_value, &serde_json::json!(n), "stored as the plain number");
        let json: ASNumber = serde_json::from_value(json_value).unwrap();
        prop_assert_eq!(json.get(), n);
    }

    #[test]
    fn port_ranges(a in any::<u16>(), b in any::<u16>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let p: Port = format!("{lo}:{hi}").parse().unwrap();
        prop_assert_eq!(p.bounds(), Some((lo, hi)));
        prop_assert!(p.contains(lo) && p.contains(hi));
        if lo < hi {
            let backwards = format!("{hi}:{lo}");
            prop_assert!(backwards.parse::<Port>().is_err());
        }
    }

    #[test]
    fn arbitrary_text_survives_yaml(
        labels in proptest::collection::btree_map(label_part(), label_part(), 0..5),
        annotations in proptest::collection::btree_map(label_part(), any::<String>(), 0..5),
        order in proptest::option::of(-1e12f64..1e12),
    ) {
        let mut r = Resource::new(Kind::GlobalNetworkPolicy, "p", None);
        r.metadata.labels = labels;
        r.metadata.annotations = annotations;
        r.spec.as_global_network_policy_mut().unwrap().order = order;
        let back = parse_documents(&to_yaml(std::slice::from_ref(&r)), "out.yaml");
        prop_assert_eq!(back.as_ref().map_err(ToString::to_string), Ok(&vec![r.clone()]));
        let back = parse_documents(&to_json(std::slice::from_ref(&r)), "out.json");
        prop_assert_eq!(back.as_ref().map_err(ToString::to_string), Ok(&vec![r]));
    }
}
