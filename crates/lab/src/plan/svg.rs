//! The plan as a self-contained SVG bar chart: a group of bars per model, one bar per
//! device role with the routes one device holds, on a log scale (a downward-default
//! node holds a handful, a spine the whole fabric), capacity marks and a legend.

use std::fmt::Write;

use super::{Plan, Role};

const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const PLOT_HEIGHT: f64 = 300.0;
const BOTTOM: f64 = 60.0;
const BAR_WIDTH: f64 = 26.0;
const BAR_GAP: f64 = 6.0;
const MIN_SLOT: f64 = 150.0;
const OVER: &str = "#d62728";

fn color(role: Role) -> &'static str {
    match role {
        Role::Node => "#4e79a7",
        Role::RouteReflector => "#f28e2b",
        Role::Tor => "#59a14f",
        Role::Spine => "#b07aa1",
    }
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

/// `1`, `10`, `100`, `1k`, ... `1M`, for the axis.
fn decade_label(k: u32) -> String {
    match k {
        0..=2 => 10u64.pow(k).to_string(),
        3..=5 => format!("{}k", 10u64.pow(k - 3)),
        6..=8 => format!("{}M", 10u64.pow(k - 6)),
        _ => format!("1e{k}"),
    }
}

/// Renders `p` as an SVG document (`<svg xmlns=...>` ... `</svg>`).
pub fn render_svg(p: &Plan) -> String {
    let max = p
        .models
        .iter()
        .flat_map(|m| &m.roles)
        .flat_map(|r| [Some(r.routes), r.capacity])
        .flatten()
        .max()
        .unwrap_or(1)
        .max(10);
    let decades = (max as f64).log10().ceil().max(1.0) as u32;
    let y = |v: u64| -> f64 {
        let v = (v.max(1)) as f64;
        TOP + PLOT_HEIGHT - PLOT_HEIGHT * v.log10() / f64::from(decades)
    };
    let slots: Vec<f64> = p
        .models
        .iter()
        .map(|m| (m.roles.len() as f64 * (BAR_WIDTH + BAR_GAP) + BAR_GAP).max(MIN_SLOT))
        .collect();
    let width = LEFT + slots.iter().sum::<f64>() + RIGHT;
    let height = TOP + PLOT_HEIGHT + BOTTOM;
    let base = TOP + PLOT_HEIGHT;

    let mut s = String::new();
    let input = &p.input;
    let title = format!(
        "Routes per device: {} nodes, {} racks, /{} blocks ({} in total), log scale",
        input.nodes,
        input.racks,
        input.block_size.unwrap_or_default(),
        p.total_blocks
    );
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(&title));
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT:.0}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(&title)
    );

    // Legend: the roles present, a capacity mark, an over-capacity outline.
    let mut roles: Vec<Role> = p
        .models
        .iter()
        .flat_map(|m| m.roles.iter().map(|r| r.role))
        .collect();
    roles.sort();
    roles.dedup();
    let mut x = LEFT;
    let _ = writeln!(s, r#"<g class="legend" font-size="11">"#);
    for role in roles {
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="34" width="12" height="12" fill="{}"/><text x="{:.1}" y="44">{}</text>"#,
            color(role),
            x + 16.0,
            role.label()
        );
        x += 24.0 + 7.0 * role.label().len() as f64 + 12.0;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{x:.1}" y1="40" x2="{:.1}" y2="40" stroke="black" stroke-width="1.5" stroke-dasharray="4 2"/><text x="{:.1}" y="44">capacity</text>"#,
        x + 14.0,
        x + 18.0
    );
    x += 18.0 + 60.0;
    let _ = writeln!(
        s,
        r#"<rect x="{x:.1}" y="34" width="12" height="12" fill="white" stroke="{OVER}" stroke-width="2"/><text x="{:.1}" y="44">over capacity</text>"#,
        x + 16.0
    );
    let _ = writeln!(s, "</g>");

    // Axis and decade grid lines.
    let _ = writeln!(s, r#"<g class="axis" font-size="10">"#);
    for k in 0..=decades {
        let gy = TOP + PLOT_HEIGHT - PLOT_HEIGHT * f64::from(k) / f64::from(decades);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT:.0}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
            width - RIGHT,
            LEFT - 6.0,
            gy + 3.5,
            decade_label(k)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT:.0}" y1="{TOP:.0}" x2="{LEFT:.0}" y2="{base:.0}" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.0}" transform="rotate(-90 16 {:.0})" text-anchor="middle">routes per device</text>"#,
        TOP + PLOT_HEIGHT / 2.0,
        TOP + PLOT_HEIGHT / 2.0
    );
    let _ = writeln!(s, "</g>");

    // One group per model.
    let mut slot_x = LEFT;
    for (m, slot) in p.models.iter().zip(&slots) {
        let _ = writeln!(
            s,
            r#"<g class="model" data-model="{}" font-size="9">"#,
            m.model
        );
        let bars = m.roles.len() as f64 * (BAR_WIDTH + BAR_GAP) - BAR_GAP;
        let mut bx = slot_x + (slot - bars) / 2.0;
        for r in &m.roles {
            let top = y(r.routes).min(base - 1.0);
            let capacity = r
                .capacity
                .map_or_else(|| "unlimited".to_string(), |c| c.to_string());
            let outline = if r.fits {
                String::new()
            } else {
                format!(r#" stroke="{OVER}" stroke-width="2""#)
            };
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.1}" y="{top:.1}" width="{BAR_WIDTH:.0}" height="{:.1}" fill="{}"{outline}><title>{}: {} ({}): {} routes each, capacity {capacity}</title></rect>"#,
                base - top,
                color(r.role),
                m.model,
                r.role.label(),
                r.count,
                r.routes
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bx + BAR_WIDTH / 2.0,
                top - 3.0,
                r.routes
            );
            if let Some(c) = r.capacity {
                let cy = y(c);
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="black" stroke-width="1.5" stroke-dasharray="4 2"/>"#,
                    bx - 3.0,
                    bx + BAR_WIDTH + 3.0
                );
            }
            bx += BAR_WIDTH + BAR_GAP;
        }
        let cx = slot_x + slot / 2.0;
        let fill = if m.fits { "black" } else { OVER };
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.0}" font-size="11" text-anchor="middle" fill="{fill}">{}</text>"#,
            base + 18.0,
            m.model
        );
        let _ = writeln!(
            s,
            r##"<text x="{cx:.1}" y="{:.0}" font-size="10" text-anchor="middle" fill="#555">{} sessions{}</text>"##,
            base + 32.0,
            m.total_sessions,
            if m.fits { "" } else { ", does not fit" }
        );
        let _ = writeln!(s, "</g>");
        slot_x += slot;
    }
    let _ = writeln!(s, "</svg>");
    s
}
