//! Bandwidth limits of local workloads (issue 8): which tbf shaping each workload
//! interface should carry, from its WorkloadEndpoint's `qosControls` and the
//! Kubernetes `kubernetes.io/{ingress,egress}-bandwidth` annotations ([`desired`],
//! pure), and the pass that makes the kernel match through
//! [`TrafficControl`] ([`sync`]).

use std::collections::{BTreeMap, BTreeSet};

use tabby_api::endpoint::QoSControls;
use tabby_api::{Resource, Spec};
use tabby_dataplane::tc::{Peak, Shaping, Tbf, TcError, TrafficControl};
use tracing::{info, warn};

/// Kubernetes' annotation for the rate towards the pod.
pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// Kubernetes' annotation for the rate from the pod.
pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";
/// Smallest annotation rate Kubernetes accepts (1 kbit/s).
const MIN_ANNOTATION_RATE: u64 = 1_000;
/// Largest annotation rate Kubernetes accepts (1 Pbit/s).
const MAX_ANNOTATION_RATE: u64 = 1_000_000_000_000_000;
/// Default bucket: 100 ms of traffic at the rate, so a shaper woken late on a busy
/// host catches up (over a second it lets through at most a tenth more)...
const DEFAULT_BURST_MS: u64 = 100;
/// ... but never under 32 KiB (a few GSO segments), so short bursts are not cut.
const MIN_BURST_BYTES: u64 = 32 * 1024;
/// Peak-rate bucket when `*Minburst` is not set: one Ethernet frame and some room.
const DEFAULT_MINBURST_BYTES: u32 = 2000;

/// What the local workloads' interfaces should carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QosPlan {
    /// Interface name to its shaping; interfaces without limits are absent.
    pub shaping: BTreeMap<String, Shaping>,
    /// Problems found (bad annotations, unsupported fields), each naming the
    /// endpoint; the rest of the endpoint's limits still apply.
    pub warnings: Vec<String>,
}

/// The bucket size for `rate` bits/s when none is given: 100 ms of traffic, at
/// least 32 KiB.
pub fn default_burst(rate: u64) -> u32 {
    let bytes = (rate / 8).saturating_mul(DEFAULT_BURST_MS) / 1000;
    u32::try_from(bytes.max(MIN_BURST_BYTES)).unwrap_or(u32::MAX)
}

/// Parses a Kubernetes resource quantity (`10M`, `1G`, `500k`, `1.5Gi`, `1e6`,
/// `100m`) into a whole number, rounding a fraction up as Kubernetes does.
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("is empty".into());
    }
    let (sign, body) = match t.as_bytes()[0] {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => (1, t),
    };
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(format!("{s:?} does not start with a number"));
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let digits = format!("{int_part}{frac_part}");
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| format!("{s:?}: the number is too long"))?;
    // value = mantissa * base^exp10-ish; track a power of ten and a binary factor.
    let mut pow10: i32 = -(frac_part.len() as i32);
    let mut factor: u128 = 1;
    match suffix {
        "" => {}
        "n" => pow10 -= 9,
        "u" => pow10 -= 6,
        "m" => pow10 -= 3,
        "k" => pow10 += 3,
        "M" => pow10 += 6,
        "G" => pow10 += 9,
        "T" => pow10 += 12,
        "P" => pow10 += 15,
        "E" => pow10 += 18,
        "Ki" => factor = 1 << 10,
        "Mi" => factor = 1 << 20,
        "Gi" => factor = 1 << 30,
        "Ti" => factor = 1 << 40,
        "Pi" => factor = 1 << 50,
        "Ei" => factor = 1 << 60,
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .and_then(|e| e.parse::<i32>().ok())
                .filter(|e| e.abs() <= 30)
                .ok_or_else(|| {
                    format!(
                        "{s:?}: unknown suffix {other:?} (use k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei, m or an exponent)"
                    )
                })?;
            pow10 += exp;
        }
    }
    if sign < 0 && mantissa != 0 {
        return Err(format!("{s:?} is negative"));
    }
    let too_big = || format!("{s:?} is too large");
    let scaled = mantissa.checked_mul(factor).ok_or_else(too_big)?;
    let value = if pow10 >= 0 {
        10u128
            .checked_pow(pow10 as u32)
            .and_then(|p| scaled.checked_mul(p))
            .ok_or_else(too_big)?
    } else {
        let div = 10u128.checked_pow((-pow10) as u32).ok_or_else(too_big)?;
        scaled.div_ceil(div)
    };
    u64::try_from(value).map_err(|_| too_big())
}

fn positive(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0)
}

/// The bucket for one direction: the rate from qosControls, else from the
/// annotation; burst, peak rate and minburst from qosControls.
fn direction(
    rate: Option<u64>,
    burst_bits: Option<u64>,
    peak: Option<u64>,
    minburst: Option<u64>,
) -> Option<Tbf> {
    let rate = rate?;
    let burst = match burst_bits {
        Some(bits) => u32::try_from(bits.div_ceil(8)).unwrap_or(u32::MAX),
        None => default_burst(rate),
    };
    let peak = peak.filter(|p| *p > rate).map(|p| Peak {
        rate: p,
        minburst: minburst
            .map(|m| u32::try_from(m).unwrap_or(u32::MAX))
            .unwrap_or(DEFAULT_MINBURST_BYTES),
    });
    Some(Tbf { rate, burst, peak })
}

/// An annotation's rate, or a warning naming it and the endpoint.
fn annotation_rate(r: &Resource, key: &str, id: &str, warnings: &mut Vec<String>) -> Option<u64> {
    let raw = r.metadata.annotations.get(key)?;
    let checked = parse_quantity(raw).and_then(|v| {
        if v < MIN_ANNOTATION_RATE {
            Err(format!("{raw:?} is under 1k (1 kbit/s)"))
        } else if v > MAX_ANNOTATION_RATE {
            Err(format!("{raw:?} is over 1P (1 Pbit/s)"))
        } else {
            Ok(v)
        }
    });
    match checked {
        Ok(v) => Some(v),
        Err(e) => {
            warnings.push(format!(
                "WorkloadEndpoint {id}: annotation {key}: {e}; ignored"
            ));
            None
        }
    }
}

/// The shaping every workload endpoint of `node` asks for. Per direction a
/// `qosControls` bandwidth wins over the annotation; zero means unset (as in
/// Calico). Packet rates and connection limits are not enforced: they are warned
/// about.
pub fn desired(workloads: &[Resource], node: &str) -> QosPlan {
    let mut plan = QosPlan::default();
    for r in workloads {
        let Spec::WorkloadEndpoint(w) = &r.spec else {
            continue;
        };
        if w.node.as_deref() != Some(node) {
            continue;
        }
        let Some(iface) = &w.interface_name else {
            continue;
        };
        let id = format!("{}/{}", r.namespace().unwrap_or("default"), r.name());
        let q = w.qos_controls.clone().unwrap_or_default();
        let w_ = &mut plan.warnings;
        let ann_in = annotation_rate(r, INGRESS_ANNOTATION, &id, w_);
        let ann_out = annotation_rate(r, EGRESS_ANNOTATION, &id, w_);
        unsupported(&q, &id, w_);
        let s = Shaping {
            ingress: direction(
                positive(q.ingress_bandwidth).or(ann_in),
                positive(q.ingress_burst),
                positive(q.ingress_peakrate),
                positive(q.ingress_minburst),
            ),
            egress: direction(
                positive(q.egress_bandwidth).or(ann_out),
                positive(q.egress_burst),
                positive(q.egress_peakrate),
                positive(q.egress_minburst),
            ),
        };
        if !s.is_empty() {
            plan.shaping.insert(iface.clone(), s);
        }
    }
    plan
}

fn unsupported(q: &QoSControls, id: &str, warnings: &mut Vec<String>) {
    for (field, v) in [
        ("ingressPacketRate", q.ingress_packet_rate),
        ("egressPacketRate", q.egress_packet_rate),
        ("ingressPacketBurst", q.ingress_packet_burst),
        ("egressPacketBurst", q.egress_packet_burst),
        ("ingressMaxConnections", q.ingress_max_connections),
        ("egressMaxConnections", q.egress_max_connections),
    ] {
        if positive(v).is_some() {
            warnings.push(format!(
                "WorkloadEndpoint {id}: spec.qosControls.{field} is not supported by Tabby (bandwidth limits only); ignored"
            ));
        }
    }
}

/// What the bandwidth pass remembers between passes.
#[derive(Debug, Default)]
pub struct QosState {
    /// Interface to (its index, the shaping we last made it carry).
    applied: BTreeMap<String, (u32, Shaping)>,
    last_warnings: Vec<String>,
}

impl QosState {
    /// Interfaces carrying limits we applied.
    pub fn limited(&self) -> usize {
        self.applied.values().filter(|(_, s)| !s.is_empty()).count()
    }
}

/// What one bandwidth pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QosOutcome {
    /// Interfaces whose shaping was changed (set, replaced or removed).
    pub changed: Vec<String>,
    /// ifb devices deleted because their interface is gone or unlimited.
    pub ifbs_deleted: Vec<String>,
    /// Failures, each naming the interface; retried on the next pass.
    pub errors: Vec<String>,
}

/// Makes the kernel carry `plan` on the workload interfaces in `links` (name to
/// index). Normal passes touch only interfaces whose wanted shaping (or index)
/// changed since we last applied it; a `full` pass (start-up, resync) reads the
/// whole kernel state back, repairs drift, removes shaping left on other
/// `prefix` interfaces and deletes ifb devices nobody needs.
pub fn sync(
    tc: &dyn TrafficControl,
    state: &mut QosState,
    plan: &QosPlan,
    links: &BTreeMap<String, u32>,
    prefix: &str,
    full: bool,
) -> QosOutcome {
    let mut out = QosOutcome::default();
    if plan.warnings != state.last_warnings {
        for w in &plan.warnings {
            warn!("{w}");
        }
        state.last_warnings = plan.warnings.clone();
    }
    // Without tc and with nothing to limit there is nothing to say.
    let quiet = |e: &TcError| matches!(e, TcError::Missing { .. }) && plan.shaping.is_empty();
    let actual = if full {
        match tc.read_all() {
            Ok(a) => Some(a),
            Err(e) => {
                if !quiet(&e) {
                    out.errors.push(format!("bandwidth limits: {e}"));
                }
                None
            }
        }
    } else {
        None
    };
    let apply = |iface: &str, want: &Shaping, out: &mut QosOutcome| match tc.apply(iface, want) {
        Ok(changed) => {
            if changed {
                if want.is_empty() {
                    info!(interface = iface, "bandwidth limits removed");
                } else {
                    let show = |t: &Option<Tbf>| t.map_or("none".to_string(), |t| t.to_string());
                    info!(
                        interface = iface,
                        ingress = %show(&want.ingress),
                        egress = %show(&want.egress),
                        "bandwidth limits applied"
                    );
                }
                out.changed.push(iface.to_string());
            }
            true
        }
        Err(e) => {
            out.errors.push(format!("bandwidth limits on {iface}: {e}"));
            false
        }
    };
    // Wanted shaping on interfaces that exist.
    for (iface, want) in &plan.shaping {
        let Some(&index) = links.get(iface) else {
            continue;
        };
        let up_to_date = match &actual {
            Some(a) => a.get(iface).is_some_and(|have| want.matches(have)),
            None => state.applied.get(iface) == Some(&(index, *want)),
        };
        if up_to_date {
            state.applied.insert(iface.clone(), (index, *want));
            continue;
        }
        if apply(iface, want, &mut out) {
            state.applied.insert(iface.clone(), (index, *want));
        } else {
            state.applied.remove(iface);
        }
    }
    // Shaping nobody wants any more: what we applied, and on a full pass anything
    // on a workload interface.
    let mut stale: BTreeSet<String> = state
        .applied
        .keys()
        .filter(|i| !plan.shaping.contains_key(*i))
        .cloned()
        .collect();
    if let Some(a) = &actual {
        stale.extend(
            a.keys()
                .filter(|i| i.starts_with(prefix) && !plan.shaping.contains_key(*i))
                .cloned(),
        );
    }
    for iface in stale {
        if links.contains_key(&iface) && !apply(&iface, &Shaping::default(), &mut out) {
            continue;
        }
        state.applied.remove(&iface);
    }
    // ifb devices whose interface is gone or has no egress limit.
    if full {
        match tc.owned_ifbs() {
            Ok(ifbs) => {
                for (ifb, iface) in ifbs {
                    let needed = links.contains_key(&iface)
                        && plan.shaping.get(&iface).is_some_and(|s| s.egress.is_some());
                    if needed {
                        continue;
                    }
                    match tc.delete_ifb(&ifb) {
                        Ok(()) => {
                            info!(ifb = %ifb, interface = %iface, "removed an unused ifb device");
                            out.ifbs_deleted.push(ifb);
                        }
                        Err(e) => out.errors.push(format!("bandwidth limits on {iface}: {e}")),
                    }
                }
            }
            Err(e) if quiet(&e) => {}
            Err(e) => out.errors.push(format!("bandwidth limits: {e}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_dataplane::tc::FakeTc;

    fn weps(yaml: &str) -> Vec<Resource> {
        tabby_api::load::parse_documents(yaml, "t.yaml").unwrap()
    }

    fn wep(pod: &str, iface: &str, extra_meta: &str, qos: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: n1-k8s-{pod}-eth0\n  namespace: default\n{extra_meta}spec:\n  node: n1\n  orchestrator: k8s\n  pod: {pod}\n  endpoint: eth0\n  interfaceName: {iface}\n  ipNetworks: [100.64.0.5/32]\n{qos}---\n"
        )
    }

    #[test]
    fn quantities_parse_as_kubernetes_does() {
        assert_eq!(parse_quantity("10M"), Ok(10_000_000));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("500k"), Ok(500_000));
        assert_eq!(parse_quantity("1Mi"), Ok(1_048_576));
        assert_eq!(parse_quantity("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_quantity("2.5M"), Ok(2_500_000));
        assert_eq!(parse_quantity("1e6"), Ok(1_000_000));
        assert_eq!(parse_quantity("1E3"), Ok(1_000));
        assert_eq!(parse_quantity("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_quantity("123"), Ok(123));
        assert_eq!(parse_quantity("+7k"), Ok(7_000));
        assert_eq!(parse_quantity("1500m"), Ok(2), "fractions round up");
        assert_eq!(parse_quantity("0.1"), Ok(1));
        for bad in ["", "M", "10MB", "ten", "-5M", "1.2.3", "1Qi", "16Ei"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} must not parse");
        }
        assert!(
            parse_quantity("10x")
                .unwrap_err()
                .contains("unknown suffix")
        );
    }

    #[test]
    fn quantity_parser_never_panics_and_scales_exactly() {
        // Deterministic pseudo-random strings over the quantity alphabet.
        let alphabet: Vec<char> = "0123456789.+-eEkKMGTPimnu x".chars().collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut t = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for i in 0..(x % 12) {
                t.push(alphabet[((x >> (i * 5)) % alphabet.len() as u64) as usize]);
            }
            let _ = parse_quantity(&t);
        }
        for (suffix, mult) in [
            ("", 1u64),
            ("k", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
        ] {
            for n in [0u64, 1, 7, 999, 123_456] {
                assert_eq!(
                    parse_quantity(&format!("{n}{suffix}")),
                    Ok(n * mult),
                    "{n}{suffix}"
                );
            }
        }
    }

    #[test]
    fn qos_controls_become_buckets() {
        let rs = weps(&wep(
            "a",
            "calia",
            "",
            "  qosControls:\n    ingressBandwidth: 20000000\n    egressBandwidth: 10000000\n    egressBurst: 800000\n    ingressPeakrate: 40000000\n",
        ));
        let plan = desired(&rs, "n1");
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let s = plan.shaping["calia"];
        assert_eq!(
            s.ingress,
            Some(Tbf {
                rate: 20_000_000,
                burst: 250_000,
                peak: Some(Peak {
                    rate: 40_000_000,
                    minburst: DEFAULT_MINBURST_BYTES
                })
            })
        );
        assert_eq!(
            s.egress,
            Some(Tbf {
                rate: 10_000_000,
                burst: 100_000,
                peak: None
            })
        );
        // Another node's endpoints are not ours.
        assert!(desired(&rs, "n2").shaping.is_empty());
    }

    #[test]
    fn default_burst_is_100ms_but_at_least_32k() {
        assert_eq!(default_burst(20_000_000), 250_000);
        assert_eq!(default_burst(1_000_000), 32 * 1024);
        assert_eq!(default_burst(1_000_000_000), 12_500_000);
    }

    #[test]
    fn annotations_apply_and_qos_controls_win() {
        let ann = "  annotations:\n    kubernetes.io/ingress-bandwidth: 10M\n    kubernetes.io/egress-bandwidth: 1Mi\n";
        let yaml = wep("a", "calia", ann, "")
            + &wep(
                "b",
                "calib",
                ann,
                "  qosControls:\n    ingressBandwidth: 3000000\n",
            );
        let plan = desired(&weps(&yaml), "n1");
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(plan.shaping["calia"].ingress.unwrap().rate, 10_000_000);
        assert_eq!(plan.shaping["calia"].egress.unwrap().rate, 1_048_576);
        assert_eq!(plan.shaping["calib"].ingress.unwrap().rate, 3_000_000);
        assert_eq!(
            plan.shaping["calib"].egress.unwrap().rate,
            1_048_576,
            "the annotation still gives the direction qosControls leaves unset"
        );
    }

    #[test]
    fn bad_annotations_warn_and_are_ignored() {
        let ann = "  annotations:\n    kubernetes.io/ingress-bandwidth: 10MB\n    kubernetes.io/egress-bandwidth: 5M\n";
        let plan = desired(&weps(&wep("a", "calia", ann, "")), "n1");
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        let w = &plan.warnings[0];
        assert!(w.contains("default/n1-k8s-a-eth0"), "{w}");
        assert!(w.contains(INGRESS_ANNOTATION), "{w}");
        assert!(w.contains("\"10MB\""), "{w}");
        let s = plan.shaping["calia"];
        assert_eq!(s.ingress, None);
        assert_eq!(s.egress.unwrap().rate, 5_000_000);
        let tiny = "  annotations:\n    kubernetes.io/egress-bandwidth: \"10\"\n";
        let plan = desired(&weps(&wep("a", "calia", tiny, "")), "n1");
        assert!(plan.warnings[0].contains("under 1k"), "{:?}", plan.warnings);
        assert!(plan.shaping.is_empty());
    }

    #[test]
    fn packet_rates_are_warned_about() {
        let plan = desired(
            &weps(&wep(
                "a",
                "calia",
                "",
                "  qosControls:\n    ingressPacketRate: 1000\n    egressBandwidth: 0\n",
            )),
            "n1",
        );
        assert!(plan.shaping.is_empty(), "zero means unset");
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("spec.qosControls.ingressPacketRate is not supported"),
            "{:?}",
            plan.warnings
        );
    }

    fn shaping(rate_in: Option<u64>, rate_out: Option<u64>) -> Shaping {
        let t = |r: u64| Tbf {
            rate: r,
            burst: default_burst(r),
            peak: None,
        };
        Shaping {
            ingress: rate_in.map(t),
            egress: rate_out.map(t),
        }
    }

    fn links(names: &[(&str, u32)]) -> BTreeMap<String, u32> {
        names.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    }

    #[test]
    fn sync_applies_changes_once_and_removes() {
        let tc = FakeTc::new();
        let mut st = QosState::default();
        let l = links(&[("calia", 5), ("calib", 6)]);
        let mut plan = QosPlan::default();
        plan.shaping
            .insert("calia".into(), shaping(Some(20_000_000), Some(10_000_000)));
        let out = sync(&tc, &mut st, &plan, &l, "cali", true);
        assert_eq!(out.changed, vec!["calia"]);
        assert!(out.errors.is_empty());
        assert_eq!(st.limited(), 1);
        // Nothing to do the second time, full or not.
        tc.clear_calls();
        assert!(
            sync(&tc, &mut st, &plan, &l, "cali", false)
                .changed
                .is_empty()
        );
        assert!(
            sync(&tc, &mut st, &plan, &l, "cali", true)
                .changed
                .is_empty()
        );
        assert!(tc.calls().is_empty(), "{:?}", tc.calls());
        // A new rate replaces.
        plan.shaping
            .insert("calia".into(), shaping(Some(5_000_000), Some(10_000_000)));
        let out = sync(&tc, &mut st, &plan, &l, "cali", false);
        assert_eq!(out.changed, vec!["calia"]);
        assert_eq!(tc.read("calia").unwrap().ingress.unwrap().rate, 5_000_000);
        // Limits removed: shaping and ifb go.
        plan.shaping.clear();
        let out = sync(&tc, &mut st, &plan, &l, "cali", false);
        assert_eq!(out.changed, vec!["calia"]);
        assert!(tc.read_all().unwrap().is_empty());
        assert!(tc.owned_ifbs().unwrap().is_empty());
        assert_eq!(st.limited(), 0);
    }

    #[test]
    fn full_pass_repairs_drift_and_cleans_up() {
        let tc = FakeTc::new();
        let mut st = QosState::default();
        let l = links(&[("calia", 5), ("calib", 6), ("eth0", 2)]);
        let mut plan = QosPlan::default();
        plan.shaping
            .insert("calia".into(), shaping(Some(20_000_000), None));
        sync(&tc, &mut st, &plan, &l, "cali", true);
        // Someone deletes our qdisc; a normal pass does not look, a full one repairs.
        tc.set("calia", Shaping::default());
        assert!(
            sync(&tc, &mut st, &plan, &l, "cali", false)
                .changed
                .is_empty()
        );
        assert_eq!(
            sync(&tc, &mut st, &plan, &l, "cali", true).changed,
            vec!["calia"]
        );
        assert_eq!(tc.read("calia").unwrap(), plan.shaping["calia"]);
        // Left over from before a restart on another workload interface: removed;
        // shaping on a non-workload interface is not ours.
        tc.set("calib", shaping(Some(1_000_000), Some(1_000_000)));
        tc.set("eth0", shaping(Some(1_000_000), None));
        // An ifb whose workload is gone.
        tc.set("caligone", shaping(None, Some(1_000_000)));
        let mut fresh = QosState::default();
        let out = sync(&tc, &mut fresh, &plan, &l, "cali", true);
        assert_eq!(out.changed, vec!["calib"]);
        assert_eq!(out.ifbs_deleted, vec!["bwcaligone"]);
        assert!(tc.read("calib").unwrap().is_empty());
        assert!(!tc.read("eth0").unwrap().is_empty());
    }

    #[test]
    fn missing_interfaces_wait_and_a_recreated_one_is_reapplied() {
        let tc = FakeTc::new();
        let mut st = QosState::default();
        let mut plan = QosPlan::default();
        plan.shaping
            .insert("calia".into(), shaping(Some(20_000_000), None));
        let out = sync(&tc, &mut st, &plan, &links(&[]), "cali", false);
        assert!(out.changed.is_empty() && out.errors.is_empty());
        assert_eq!(
            sync(&tc, &mut st, &plan, &links(&[("calia", 5)]), "cali", false).changed,
            vec!["calia"]
        );
        // The pod restarts: same name, new index, fresh (unshaped) veth.
        tc.set("calia", Shaping::default());
        assert_eq!(
            sync(&tc, &mut st, &plan, &links(&[("calia", 9)]), "cali", false).changed,
            vec!["calia"]
        );
    }
}
