//! `lab graph`: the lab as a self-contained SVG: the BGP speakers (nodes, route
//! reflectors) on a circle with their sessions as lines, green when Established and
//! red otherwise, failed nodes grey; the router and etcd, when the lab has them, below.
//! [`render`] is pure; [`graph`] asks the agents' control sockets.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::fmt::Write;
use std::path::Path;

use super::LabError;
use super::fail::{self, NodeView};
use super::layout;

const ESTABLISHED: &str = "#2ca02c";
const DOWN: &str = "#d62728";
const FAILED: &str = "#9e9e9e";
const NODE: &str = "#4e79a7";
const RR: &str = "#f28e2b";
const INFRA: &str = "#76777a";
const MARGIN: f64 = 110.0;
const TOP: f64 = 60.0;
const RADIUS: f64 = 26.0;

/// A device's state, for its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Its agent answers.
    Up,
    /// Failed by `lab fail`.
    Failed,
    /// Not failed, but its agent does not answer.
    NoAnswer,
}

/// A BGP speaker of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Speaker {
    /// Node name.
    pub name: String,
    /// Its fabric address.
    pub address: String,
    /// Whether it is a route reflector.
    pub route_reflector: bool,
    /// Its state.
    pub state: DeviceState,
}

/// A device that speaks no BGP: the router between subnets, etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Infra {
    /// What it is: `router rtr`, `etcd`.
    pub name: String,
    /// Its addresses.
    pub address: String,
}

/// A BGP session between two speakers, as both ends (or the one that answers) see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// One end (the lesser name).
    pub a: String,
    /// The other end.
    pub b: String,
    /// The states the ends that answer report, in the lab's order of nodes.
    pub states: Vec<String>,
}

impl Session {
    /// Established when every end that reports says so.
    pub fn established(&self) -> bool {
        !self.states.is_empty() && self.states.iter().all(|s| s == "Established")
    }
}

/// What the SVG shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    /// The heading.
    pub title: String,
    /// BGP speakers, in the lab's order.
    pub speakers: Vec<Speaker>,
    /// Sessions.
    pub sessions: Vec<Session>,
    /// The rest.
    pub infra: Vec<Infra>,
}

/// The speakers and their sessions from what the nodes report (each session once,
/// with both ends' states).
pub fn from_views(views: &[NodeView]) -> (Vec<Speaker>, Vec<Session>) {
    let speakers = views
        .iter()
        .map(|v| Speaker {
            name: v.name.clone(),
            address: v.address.clone(),
            route_reflector: v.route_reflector,
            state: match (&v.failed, &v.peers) {
                (Some(_), _) => DeviceState::Failed,
                (None, Some(_)) => DeviceState::Up,
                (None, None) => DeviceState::NoAnswer,
            },
        })
        .collect();
    let mut sessions: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for v in views {
        for p in v.peers.iter().flatten() {
            let key = if v.name <= p.peer {
                (v.name.clone(), p.peer.clone())
            } else {
                (p.peer.clone(), v.name.clone())
            };
            sessions.entry(key).or_default().push(p.state.clone());
        }
    }
    let sessions = sessions
        .into_iter()
        .map(|((a, b), states)| Session { a, b, states })
        .collect();
    (speakers, sessions)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders `g` as an SVG document (`<svg xmlns=...>` ... `</svg>`).
pub fn render(g: &Graph) -> String {
    let n = g.speakers.len().max(1);
    let ring = (n as f64 * 90.0 / (2.0 * PI)).max(120.0);
    let width = 2.0 * (ring + MARGIN);
    let (cx, cy) = (width / 2.0, TOP + MARGIN / 2.0 + ring);
    let infra_y = cy + ring + MARGIN * 0.8;
    let legend_y = infra_y + if g.infra.is_empty() { 0.0 } else { 70.0 };
    let height = legend_y + 50.0;
    let pos: BTreeMap<&str, (f64, f64)> = g
        .speakers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let angle = -PI / 2.0 + 2.0 * PI * i as f64 / n as f64;
            (
                s.name.as_str(),
                (cx + ring * angle.cos(), cy + ring * angle.sin()),
            )
        })
        .collect();

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(&g.title));
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="30" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(&g.title)
    );

    let _ = writeln!(s, r#"<g id="sessions">"#);
    for sess in &g.sessions {
        let (Some(&(x1, y1)), Some(&(x2, y2))) =
            (pos.get(sess.a.as_str()), pos.get(sess.b.as_str()))
        else {
            continue;
        };
        let (colour, dash) = if sess.established() {
            (ESTABLISHED, "")
        } else {
            (DOWN, r#" stroke-dasharray="6 4""#)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{colour}" stroke-width="2"{dash}><title>{} - {}: {}</title></line>"#,
            escape(&sess.a),
            escape(&sess.b),
            escape(&sess.states.join(" / "))
        );
    }
    let _ = writeln!(s, "</g>");

    let _ = writeln!(s, r#"<g id="devices">"#);
    for sp in &g.speakers {
        let (x, y) = pos[sp.name.as_str()];
        let fill = match sp.state {
            DeviceState::Failed => FAILED,
            DeviceState::NoAnswer => DOWN,
            DeviceState::Up if sp.route_reflector => RR,
            DeviceState::Up => NODE,
        };
        let state = match sp.state {
            DeviceState::Up => "agent running",
            DeviceState::Failed => "failed",
            DeviceState::NoAnswer => "agent not answering",
        };
        let role = if sp.name.starts_with("tor") {
            "ToR router"
        } else if sp.name.starts_with("spine") {
            "spine router"
        } else if sp.route_reflector {
            "route reflector"
        } else {
            "node"
        };
        let _ = writeln!(
            s,
            r#"<g><title>{} ({role}, {}): {state}</title><circle cx="{x:.1}" cy="{y:.1}" r="{RADIUS}" fill="{fill}" stroke="black" stroke-width="1"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="white" font-weight="bold">{}</text><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text></g>"#,
            escape(&sp.name),
            escape(&sp.address),
            y + 4.0,
            escape(&sp.name),
            y + RADIUS + 13.0,
            escape(&sp.address)
        );
    }
    let box_w = 170.0;
    let total = g.infra.len() as f64 * (box_w + 20.0) - 20.0;
    for (i, d) in g.infra.iter().enumerate() {
        let x = width / 2.0 - total / 2.0 + i as f64 * (box_w + 20.0);
        let _ = writeln!(
            s,
            r#"<g><rect x="{x:.1}" y="{infra_y:.1}" width="{box_w}" height="40" rx="6" fill="{INFRA}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="white" font-weight="bold">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="white" font-size="10">{}</text></g>"#,
            x + box_w / 2.0,
            infra_y + 16.0,
            escape(&d.name),
            x + box_w / 2.0,
            infra_y + 31.0,
            escape(&d.address)
        );
    }
    let _ = writeln!(s, "</g>");

    let _ = writeln!(s, r#"<g id="legend" font-size="11">"#);
    let mut x = 20.0;
    let y = legend_y + 20.0;
    for (label, colour, dash) in [
        ("Established", ESTABLISHED, ""),
        ("not Established", DOWN, r#" stroke-dasharray="6 4""#),
    ] {
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            x + 30.0,
            x + 36.0,
            y + 4.0
        );
        x += 140.0;
    }
    for (label, colour) in [
        ("node", NODE),
        ("route reflector", RR),
        ("failed", FAILED),
        ("agent not answering", DOWN),
    ] {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{y:.1}" r="7" fill="{colour}"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            x + 7.0,
            x + 20.0,
            y + 4.0
        );
        x += 40.0 + label.len() as f64 * 6.5;
    }
    let _ = writeln!(s, "</g>");
    s.push_str("</svg>\n");
    s
}

/// The SVG of lab `name` in `<root>/<name>` as it is now.
pub async fn graph(name: &str, root: &Path) -> Result<String, LabError> {
    let loaded = fail::load(name, root)?;
    let state = &loaded.state;
    let views = fail::views(state).await;
    let (speakers, sessions) = from_views(&views);
    let mut infra = Vec::new();
    if let Some(r) = &loaded.layout.router {
        infra.push(Infra {
            name: "router rtr".into(),
            address: r
                .legs
                .iter()
                .map(|l| l.address.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if let Some(e) = &loaded.layout.etcd {
        infra.push(Infra {
            name: "etcd".into(),
            address: format!("{}:{}", e.leg.address.addr(), layout::ETCD_PORT),
        });
    }
    let up = sessions.iter().filter(|s| s.established()).count();
    let mut title = format!(
        "lab {name}: {}, {} nodes, {up}/{} sessions Established",
        state.topology,
        speakers.len(),
        sessions.len()
    );
    if !state.failures.is_empty() {
        let failed: Vec<&str> = state.failures.iter().map(|f| f.node.as_str()).collect();
        title.push_str(&format!(", failed: {}", failed.join(", ")));
    }
    Ok(render(&Graph {
        title,
        speakers,
        sessions,
        infra,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::check::RouteCounts;
    use crate::lab::fail::PeerView;
    use crate::lab::state::FailureKind;

    /// Tags open and close in order, attributes are quoted, entities are known: enough
    /// to call the output well-formed XML.
    fn well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let text = &rest[..i];
            for (j, _) in text.match_indices('&') {
                let ent = &text[j..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| ent.starts_with(e)),
                    "bad entity in {text:?}"
                );
            }
            let end = rest[i..].find('>').expect("unclosed tag") + i;
            let tag = &rest[i + 1..end];
            assert!(!tag.contains('<'), "{tag}");
            assert_eq!(tag.matches('"').count() % 2, 0, "{tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(rest.trim().is_empty());
    }

    fn view(name: &str, failed: bool, peers: Option<&[(&str, &str)]>) -> NodeView {
        NodeView {
            name: name.into(),
            address: format!("198.18.0.{}", name.len()),
            route_reflector: name.starts_with("rr"),
            failed: failed.then_some(FailureKind::Node),
            peers: peers.map(|ps| {
                ps.iter()
                    .map(|(p, s)| PeerView {
                        peer: p.to_string(),
                        state: s.to_string(),
                        on_failed_plane: false,
                    })
                    .collect()
            }),
            routes: RouteCounts::default(),
        }
    }

    #[test]
    fn reflector_failed() {
        let views = [
            view("rr1", true, None),
            view(
                "rr2",
                false,
                Some(&[
                    ("rr1", "Active"),
                    ("n1", "Established"),
                    ("n2", "Established"),
                ]),
            ),
            view(
                "n1",
                false,
                Some(&[("rr1", "Connect"), ("rr2", "Established")]),
            ),
            view("n2", false, None),
        ];
        let (speakers, sessions) = from_views(&views);
        assert_eq!(
            speakers.iter().map(|s| s.state).collect::<Vec<_>>(),
            [
                DeviceState::Failed,
                DeviceState::Up,
                DeviceState::Up,
                DeviceState::NoAnswer
            ]
        );
        let pairs: Vec<(&str, &str, bool)> = sessions
            .iter()
            .map(|s| (s.a.as_str(), s.b.as_str(), s.established()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("n1", "rr1", false),
                ("n1", "rr2", true),
                ("n2", "rr2", true),
                ("rr1", "rr2", false)
            ]
        );
        assert_eq!(sessions[1].states, ["Established", "Established"]);
        let svg = render(&Graph {
            title: "lab <x> & \"y\"".into(),
            speakers,
            sessions,
            infra: vec![Infra {
                name: "etcd".into(),
                address: "198.18.0.250:2379".into(),
            }],
        });
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.ends_with("</svg>\n"));
        well_formed(&svg);
        assert!(svg.contains("lab &lt;x&gt; &amp; &quot;y&quot;"), "{svg}");
        let sessions_part = &svg
            [svg.find(r#"<g id="sessions">"#).unwrap()..svg.find(r#"<g id="devices">"#).unwrap()];
        assert_eq!(sessions_part.matches("<line").count(), 4);
        assert_eq!(sessions_part.matches(ESTABLISHED).count(), 2);
        assert_eq!(sessions_part.matches(DOWN).count(), 2);
        assert!(
            svg.contains(&format!(r#"r="{RADIUS}" fill="{FAILED}""#)),
            "{svg}"
        );
        assert!(
            svg.contains(&format!(r#"r="{RADIUS}" fill="{DOWN}""#)),
            "{svg}"
        );
        assert!(
            svg.contains(&format!(r#"r="{RADIUS}" fill="{RR}""#)),
            "{svg}"
        );
        assert!(svg.contains("198.18.0.250:2379"), "{svg}");
        assert!(svg.contains("<title>n1 - rr1: Connect</title>"), "{svg}");
    }

    #[test]
    fn empty_lab_renders() {
        let svg = render(&Graph {
            title: "empty".into(),
            speakers: Vec::new(),
            sessions: Vec::new(),
            infra: Vec::new(),
        });
        well_formed(&svg);
    }
}
