//! Output as calicoctl prints it: tables laid out like Go's tabwriter (min width 5,
//! padding 3, every cell terminated, a blank line after), YAML and JSON (one object, or
//! a `<Kind>List` for several), and `kind/name` lines.

use std::io::Write;

use serde_json::Value;
use tabby_api::{Kind, Resource};

/// The output formats of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table of the main columns (calicoctl's `ps`).
    Ps,
    /// A table with every column.
    Wide,
    Yaml,
    Json,
    /// One `kind.projectcalico.org/name` per line.
    Name,
}

/// Lays rows out as Go's `tabwriter.NewWriter(out, 5, 1, 3, ' ', 0)` with every
/// cell tab-terminated, which is what calicoctl's tables are.
pub fn write_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    const MIN_WIDTH: usize = 5;
    const PADDING: usize = 3;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let width = (w + PADDING).max(MIN_WIDTH);
            s.push_str(cell);
            s.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    writeln!(out)
}

/// Whether olekukonko/tablewriter (calicoctl's `ipam` tables) right-aligns a cell:
/// plain decimals such as `65536` or `1,024.5`, and percentages.
fn is_numeric_cell(cell: &str) -> bool {
    let s = cell.trim();
    let s = s.strip_prefix('-').unwrap_or(s);
    let s = s.strip_suffix('%').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let int_ok = !int.is_empty() && int.chars().all(|c| c.is_ascii_digit() || c == ',');
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()));
    int_ok && frac_ok && int.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Lays rows out in a bordered table as calicoctl's `ipam show` does
/// (olekukonko/tablewriter defaults): `+---+` rules, one space of padding, centred
/// headers, numbers right-aligned and other cells left-aligned.
pub fn write_box_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+";
    writeln!(out, "{rule}")?;
    let mut line = String::new();
    for (h, w) in header.iter().zip(&widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        line.push_str(&format!(
            "| {}{h}{} ",
            " ".repeat(left),
            " ".repeat(gap - left)
        ));
    }
    writeln!(out, "{line}|")?;
    writeln!(out, "{rule}")?;
    for row in rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let pad = " ".repeat(w - cell.chars().count());
            if is_numeric_cell(cell) {
                line.push_str(&format!("| {pad}{cell} "));
            } else {
                line.push_str(&format!("| {cell}{pad} "));
            }
        }
        writeln!(out, "{line}|")?;
    }
    writeln!(out, "{rule}")
}

/// A number as Go's `fmt.Sprintf("%.5g", x)` prints it: five significant digits,
/// trailing zeros dropped, exponent form (`1.2089e+24`) below 1e-4 or from 1e5 up.
pub fn go_g5(x: f64) -> String {
    const PRECISION: i32 = 5;
    if x == 0.0 {
        return "0".to_string();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".to_string()
        } else if x > 0.0 {
            "+Inf".to_string()
        } else {
            "-Inf".to_string()
        };
    }
    // Rounding to five digits first decides the exponent (99999.5 becomes 1e+05).
    let sci = format!("{:.*e}", (PRECISION - 1) as usize, x);
    let (mantissa, exp) = sci.split_once('e').expect("exponent form has an e");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..PRECISION).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (PRECISION - 1 - exp).max(0) as usize;
        trim(&format!("{x:.decimals$}"))
    }
}

/// Context a table needs beyond the resources themselves.
#[derive(Clone, Debug)]
pub struct TableContext {
    /// The cluster-wide AS number, shown as `(64512)` for nodes that inherit it.
    pub global_as: u32,
    /// Whether a NAMESPACE column leads (namespaced kinds listed across namespaces).
    pub all_namespaces: bool,
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, part| v.get(part))
}

fn text(v: &Value, path: &str) -> String {
    match at(v, path) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

fn bool_text(v: &Value, path: &str, default: bool) -> String {
    at(v, path)
        .and_then(Value::as_bool)
        .unwrap_or(default)
        .to_string()
}

/// Header and cells for one kind, as calicoctl's resource managers define them.
fn columns(
    kind: Kind,
    wide: bool,
    ctx: &TableContext,
    v: &Value,
) -> (Vec<&'static str>, Vec<String>) {
    let name = text(v, "metadata.name");
    match (kind, wide) {
        (Kind::Node, false) => (vec!["NAME"], vec![name]),
        (Kind::Node, true) => {
            let asn = match at(v, "spec.bgp.asNumber") {
                Some(a) if !a.is_null() => text(v, "spec.bgp.asNumber"),
                _ => format!("({})", ctx.global_as),
            };
            (
                vec!["NAME", "ASN", "IPV4", "IPV6"],
                vec![
                    name,
                    asn,
                    text(v, "spec.bgp.ipv4Address"),
                    text(v, "spec.bgp.ipv6Address"),
                ],
            )
        }
        (Kind::IPPool, false) => (
            vec!["NAME", "CIDR", "SELECTOR"],
            vec![name, text(v, "spec.cidr"), text(v, "spec.nodeSelector")],
        ),
        (Kind::IPPool, true) => (
            vec![
                "NAME",
                "CIDR",
                "NAT",
                "IPIPMODE",
                "VXLANMODE",
                "DISABLED",
                "DISABLEBGPEXPORT",
                "SELECTOR",
                "ASSIGNMENTMODE",
            ],
            vec![
                name,
                text(v, "spec.cidr"),
                bool_text(v, "spec.natOutgoing", false),
                text(v, "spec.ipipMode"),
                text(v, "spec.vxlanMode"),
                bool_text(v, "spec.disabled", false),
                bool_text(v, "spec.disableBGPExport", false),
                text(v, "spec.nodeSelector"),
                text(v, "spec.assignmentMode"),
            ],
        ),
        (Kind::BGPPeer, _) => {
            let node = if !text(v, "spec.node").is_empty() {
                text(v, "spec.node")
            } else if !text(v, "spec.nodeSelector").is_empty() {
                text(v, "spec.nodeSelector")
            } else {
                "(global)".to_string()
            };
            let peer = if !text(v, "spec.peerSelector").is_empty() {
                text(v, "spec.peerSelector")
            } else {
                text(v, "spec.peerIP")
            };
            (
                vec!["NAME", "PEERIP", "NODE", "ASN"],
                vec![name, peer, node, text(v, "spec.asNumber")],
            )
        }
        (Kind::BGPConfiguration, _) => {
            let asn = match at(v, "spec.asNumber") {
                Some(a) if !a.is_null() => text(v, "spec.asNumber"),
                _ => String::new(),
            };
            let severity = match text(v, "spec.logSeverityScreen") {
                s if s.is_empty() => "Info".to_string(),
                s => s,
            };
            (
                vec!["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"],
                vec![
                    name,
                    severity,
                    bool_text(v, "spec.nodeToNodeMeshEnabled", true),
                    asn,
                ],
            )
        }
        (Kind::WorkloadEndpoint, false) => (
            vec!["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"],
            vec![
                workload_name(v),
                text(v, "spec.node"),
                text(v, "spec.ipNetworks"),
                text(v, "spec.interfaceName"),
            ],
        ),
        (Kind::WorkloadEndpoint, true) => (
            vec![
                "NAME",
                "WORKLOAD",
                "NODE",
                "NETWORKS",
                "INTERFACE",
                "PROFILES",
                "NATS",
            ],
            vec![
                name,
                workload_name(v),
                text(v, "spec.node"),
                text(v, "spec.ipNetworks"),
                text(v, "spec.interfaceName"),
                text(v, "spec.profiles"),
                nats(v),
            ],
        ),
        (Kind::HostEndpoint, false) => (vec!["NAME", "NODE"], vec![name, text(v, "spec.node")]),
        (Kind::HostEndpoint, true) => (
            vec!["NAME", "NODE", "INTERFACE", "IPS", "PROFILES"],
            vec![
                name,
                text(v, "spec.node"),
                text(v, "spec.interfaceName"),
                text(v, "spec.expectedIPs"),
                text(v, "spec.profiles"),
            ],
        ),
        (Kind::NetworkSet | Kind::GlobalNetworkSet, true) => {
            (vec!["NAME", "NETS"], vec![name, text(v, "spec.nets")])
        }
        (Kind::GlobalNetworkPolicy | Kind::NetworkPolicy, true) => (
            vec!["NAME", "ORDER", "SELECTOR"],
            vec![name, text(v, "spec.order"), text(v, "spec.selector")],
        ),
        _ => (vec!["NAME"], vec![name]),
    }
}

fn workload_name(v: &Value) -> String {
    match text(v, "spec.pod") {
        p if !p.is_empty() => p,
        _ => text(v, "spec.workload"),
    }
}

fn nats(v: &Value) -> String {
    at(v, "spec.ipNATs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|n| format!("{}:{}", text(n, "internalIP"), text(n, "externalIP")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Prints resources of one kind in `format`.
pub fn print(
    out: &mut dyn Write,
    kind: Kind,
    resources: &[Resource],
    format: Format,
    ctx: &TableContext,
) -> anyhow::Result<()> {
    match format {
        Format::Yaml => out.write_all(tabby_api::load::to_yaml(resources).as_bytes())?,
        Format::Json => {
            out.write_all(tabby_api::load::to_json(resources).as_bytes())?;
            writeln!(out)?;
        }
        Format::Name => {
            for r in resources {
                writeln!(out, "{}", name_of(r))?;
            }
        }
        Format::Ps | Format::Wide => {
            let wide = format == Format::Wide;
            let values: Vec<Value> = resources.iter().map(Resource::to_json_value).collect();
            let probe = Value::Object(Default::default());
            let (mut header, _) = columns(kind, wide, ctx, values.first().unwrap_or(&probe));
            let lead_ns = kind.namespaced() && ctx.all_namespaces;
            if lead_ns {
                header.insert(0, "NAMESPACE");
            }
            let rows: Vec<Vec<String>> = values
                .iter()
                .map(|v| {
                    let (_, mut cells) = columns(kind, wide, ctx, v);
                    if lead_ns {
                        cells.insert(0, text(v, "metadata.namespace"));
                    }
                    cells
                })
                .collect();
            write_table(out, &header, &rows)?;
        }
    }
    Ok(())
}

/// `ippool.projectcalico.org/name`, as kubectl names custom resources.
pub fn name_of(r: &Resource) -> String {
    format!(
        "{}.projectcalico.org/{}",
        r.kind().name().to_ascii_lowercase(),
        r.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_calicoctl_layout() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["NAME", "ASN", "IPV4", "IPV6"],
            &[
                vec![
                    "node1".into(),
                    "(64512)".into(),
                    "10.0.2.15/24".into(),
                    String::new(),
                ],
                vec![
                    "node2".into(),
                    "(64512)".into(),
                    "10.0.2.10/32".into(),
                    String::new(),
                ],
            ],
        )
        .unwrap();
        // The sample from calicoctl's docs, byte for byte (trailing spaces included).
        let want = "NAME    ASN       IPV4           IPV6   \n\
                    node1   (64512)   10.0.2.15/24          \n\
                    node2   (64512)   10.0.2.10/32          \n\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn go_g5_matches_go() {
        assert_eq!(go_g5(65536.0), "65536");
        assert_eq!(go_g5(64.0), "64");
        assert_eq!(go_g5(0.0), "0");
        assert_eq!(go_g5(1048576.0), "1.0486e+06");
        assert_eq!(go_g5(1_000_000.0), "1e+06");
        assert_eq!(go_g5(2f64.powi(80)), "1.2089e+24");
        assert_eq!(go_g5(99999.0), "99999");
        assert_eq!(go_g5(0.5), "0.5");
    }

    #[test]
    fn box_table_matches_calicoctl_ipam_show() {
        let rows = vec![
            vec!["IP Pool", "10.65.0.0/16", "65536", "5 (0%)", "65531 (100%)"],
            vec!["Block", "10.65.79.0/26", "64", "5 (8%)", "59 (92%)"],
            vec![
                "IP Pool",
                "fd5f:abcd:64::/48",
                "1.2089e+24",
                "7 (0%)",
                "1.2089e+24 (100%)",
            ],
            vec![
                "Block",
                "fd5f:abcd:64:4f2c:ec1b:27b9:1989:77c0/122",
                "64",
                "7 (11%)",
                "57 (89%)",
            ],
        ];
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| r.into_iter().map(String::from).collect())
            .collect();
        let mut out = Vec::new();
        write_box_table(
            &mut out,
            &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
            &rows,
        )
        .unwrap();
        let want = "\
+----------+-------------------------------------------+------------+------------+-------------------+
| GROUPING |                   CIDR                    | IPS TOTAL  | IPS IN USE |     IPS FREE      |
+----------+-------------------------------------------+------------+------------+-------------------+
| IP Pool  | 10.65.0.0/16                              |      65536 | 5 (0%)     | 65531 (100%)      |
| Block    | 10.65.79.0/26                             |         64 | 5 (8%)     | 59 (92%)          |
| IP Pool  | fd5f:abcd:64::/48                         | 1.2089e+24 | 7 (0%)     | 1.2089e+24 (100%) |
| Block    | fd5f:abcd:64:4f2c:ec1b:27b9:1989:77c0/122 |         64 | 7 (11%)    | 57 (89%)          |
+----------+-------------------------------------------+------------+------------+-------------------+
";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn narrow_columns_keep_the_minimum_width() {
        let mut out = Vec::new();
        write_table(&mut out, &["A", "B"], &[vec!["x".into(), "y".into()]]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A    B    \nx    y    \n\n"
        );
    }
}
