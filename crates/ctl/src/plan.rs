//! `tabbyctl plan [FILE]`: sizes a cluster's BGP topology before it is built. Reads a
//! plan input (YAML or JSON, see `examples/plan.yaml`), lets flags override its
//! fields, and prints every model's sessions and route-table sizes per device as a
//! table, JSON or an SVG chart. A model that does not fit its capacities is reported,
//! not an error (exit 0); input the planner rejects exits 2, naming the file and line
//! or the flag.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use tabby_lab::plan::{IpNet, Model, PlanError, PlanInput, plan, render_svg, render_table};

/// The exit code of input `plan` rejects (and of its usage errors).
pub const BAD_INPUT: u8 = 2;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Cluster description, YAML or JSON (`-` for stdin); flags override its fields.
    file: Option<PathBuf>,
    /// Kubernetes nodes.
    #[arg(long, value_name = "N")]
    nodes: Option<u32>,
    /// Racks the nodes are spread over.
    #[arg(long, value_name = "N")]
    racks: Option<u32>,
    /// Pods per node at most.
    #[arg(long, value_name = "N")]
    pods_per_node: Option<u32>,
    /// IPAM block prefix length (default: suggested from --pods-per-node).
    #[arg(long, value_name = "LEN")]
    block_size: Option<u8>,
    /// IP pool CIDR (repeatable; replaces the file's pools).
    #[arg(long = "pool", value_name = "CIDR")]
    pools: Vec<IpNet>,
    /// Model to plan (repeatable; default all): mesh, route-reflector, l2-planes,
    /// as-per-rack-l2-spine, as-per-rack-l3-spine, as-per-server, downward-default.
    #[arg(long = "model", value_name = "MODEL")]
    models: Vec<Model>,
    /// Addresses borrowed from other nodes' blocks, cluster-wide (/32 routes).
    #[arg(long, value_name = "N")]
    borrowed: Option<u32>,
    /// Addresses each node takes besides its pods (1 with VXLAN: the tunnel address).
    #[arg(long, value_name = "N")]
    tunnel_addresses: Option<u32>,
    /// Route reflectors (route-reflector model).
    #[arg(long, value_name = "N")]
    route_reflectors: Option<u32>,
    /// Planes (l2-planes model).
    #[arg(long, value_name = "N")]
    planes: Option<u32>,
    /// Planes each host is in (l2-planes model; default all).
    #[arg(long, value_name = "N")]
    planes_per_host: Option<u32>,
    /// Spine routers (routed-spine models).
    #[arg(long, value_name = "N")]
    spines: Option<u32>,
    /// ToRs per rack.
    #[arg(long, value_name = "N")]
    tors_per_rack: Option<u32>,
    /// Route-table limit of a node.
    #[arg(long, value_name = "ROUTES")]
    capacity_node: Option<u64>,
    /// Route-table limit of a ToR.
    #[arg(long, value_name = "ROUTES")]
    capacity_tor: Option<u64>,
    /// Route-table limit of a spine.
    #[arg(long, value_name = "ROUTES")]
    capacity_spine: Option<u64>,
    /// Route-table limit of a route reflector.
    #[arg(long, value_name = "ROUTES")]
    capacity_rr: Option<u64>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// calicoctl-style tables.
    Table,
    /// The whole plan as JSON.
    Json,
    /// A bar chart of routes per device.
    Svg,
}

/// Input `plan` rejects; `main` exits [`BAD_INPUT`] on it.
#[derive(Debug)]
pub struct BadInput(String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Whether the command line that failed to parse asked for `plan`, whose usage errors
/// are bad input too.
pub fn invoked(command: clap::Command) -> bool {
    command
        .ignore_errors(true)
        .try_get_matches()
        .is_ok_and(|m| m.subcommand_name() == Some("plan"))
}

/// Field path -> (line, column) where it starts.
type Positions = BTreeMap<String, (u64, u64)>;

/// The file the input came from, with the position of each field path in it.
struct Source {
    name: String,
    lines: Positions,
}

impl Source {
    fn line_of(&self, field: &str) -> Option<u64> {
        let top = field.split(['.', '[']).next().unwrap_or(field);
        self.lines
            .get(field)
            .or_else(|| self.lines.get(top))
            .map(|at| at.0)
    }
}

pub fn run(args: &PlanArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (mut input, source) = match &args.file {
        Some(path) => {
            let (input, source) = load(path)?;
            (input, Some(source))
        }
        None => (PlanInput::default(), None),
    };
    let flags = apply_flags(args, &mut input);
    let plan = plan(&input).map_err(|e| explain(&e, source.as_ref(), &flags))?;
    match args.output {
        Format::Table => write!(out, "{}", render_table(&plan))?,
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?,
        Format::Svg => write!(out, "{}", render_svg(&plan))?,
    }
    Ok(())
}

/// Reads and decodes the plan input in `path`.
fn load(path: &PathBuf) -> Result<(PlanInput, Source), BadInput> {
    let (name, text) = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| BadInput(format!("<stdin>: cannot read: {e}")))?;
        ("<stdin>".to_string(), text)
    } else {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput(format!("{name}: cannot read: {e}")))?;
        (name, text)
    };
    // The shape first: it names the field of a value that fails to decode. Any YAML
    // has a shape, so failing here is a syntax error, which the decode reports.
    let mut lines = BTreeMap::new();
    if let Ok(tree) = serde_saphyr::from_str::<KeyTree>(&text) {
        tree.index("", &mut lines);
    }
    let options = serde_saphyr::options! { with_snippet: false };
    let input: PlanInput = serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
        let loc = e.location().filter(|l| l.line() > 0);
        let mut message = e.without_snippet().to_string();
        let mut place = name.clone();
        if let Some(l) = &loc {
            let suffix = format!(" at line {}, column {}", l.line(), l.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
            }
            place = format!("{name}:{}:{}", l.line(), l.column());
            // The last field starting on the failing line before the failing column,
            // unless the message names it.
            let field = lines
                .iter()
                .filter(|(_, at)| at.0 == l.line() && at.1 <= l.column())
                .max_by_key(|(path, at)| (at.1, path.len()))
                .map(|(path, _)| path);
            if let Some(field) = field.filter(|f| !message.contains(&format!("`{f}`"))) {
                place = format!("{place}: {field}");
            }
        }
        BadInput(format!("{place}: {message}"))
    })?;
    Ok((input, Source { name, lines }))
}

/// Overrides `input` with the flags given; returns field path -> flag for each.
fn apply_flags(args: &PlanArgs, input: &mut PlanInput) -> BTreeMap<&'static str, &'static str> {
    let mut flags = BTreeMap::new();
    macro_rules! set {
        ($arg:expr, $field:expr, $key:literal, $flag:literal) => {
            if let Some(v) = $arg {
                $field = v;
                flags.insert($key, $flag);
            }
        };
    }
    set!(args.nodes, input.nodes, "nodes", "--nodes");
    set!(args.racks, input.racks, "racks", "--racks");
    set!(
        args.pods_per_node,
        input.pods_per_node,
        "podsPerNode",
        "--pods-per-node"
    );
    set!(
        args.block_size.map(Some),
        input.block_size,
        "blockSize",
        "--block-size"
    );
    set!(args.borrowed, input.borrowed, "borrowed", "--borrowed");
    set!(
        args.tunnel_addresses,
        input.tunnel_addresses,
        "tunnelAddresses",
        "--tunnel-addresses"
    );
    set!(
        args.route_reflectors,
        input.route_reflectors,
        "routeReflectors",
        "--route-reflectors"
    );
    set!(args.planes, input.planes, "planes", "--planes");
    set!(
        args.planes_per_host.map(Some),
        input.planes_per_host,
        "planesPerHost",
        "--planes-per-host"
    );
    set!(args.spines, input.spines, "spines", "--spines");
    set!(
        args.tors_per_rack,
        input.tors_per_rack,
        "torsPerRack",
        "--tors-per-rack"
    );
    set!(
        args.capacity_node.map(Some),
        input.capacity.node,
        "capacity.node",
        "--capacity-node"
    );
    set!(
        args.capacity_tor.map(Some),
        input.capacity.tor,
        "capacity.tor",
        "--capacity-tor"
    );
    set!(
        args.capacity_spine.map(Some),
        input.capacity.spine,
        "capacity.spine",
        "--capacity-spine"
    );
    set!(
        args.capacity_rr.map(Some),
        input.capacity.rr,
        "capacity.rr",
        "--capacity-rr"
    );
    if !args.pools.is_empty() {
        input.pools = args.pools.clone();
        flags.insert("pools", "--pool");
    }
    if !args.models.is_empty() {
        input.models = args.models.clone();
        flags.insert("models", "--model");
    }
    flags
}

/// The flag a required field is set with.
fn required_flag(field: &str) -> Option<&'static str> {
    match field {
        "nodes" => Some("--nodes"),
        "podsPerNode" => Some("--pods-per-node"),
        _ => None,
    }
}

/// Says where a rejected value came from: the flag, or the file and line.
fn explain(
    e: &PlanError,
    source: Option<&Source>,
    flags: &BTreeMap<&'static str, &'static str>,
) -> BadInput {
    let top = e.field.split(['.', '[']).next().unwrap_or(&e.field);
    let by_flag = flags.get(e.field.as_str()).or_else(|| flags.get(top));
    if let Some(flag) = by_flag {
        return BadInput(format!("{flag}: {}", e.message));
    }
    let line = source.and_then(|s| s.line_of(&e.field));
    if let (Some(flag), None) = (required_flag(&e.field), line) {
        let place = source.map_or_else(String::new, |s| format!("{}: ", s.name));
        let file = source.map_or("FILE", |s| s.name.as_str());
        return BadInput(format!(
            "{place}{}: required; set it in {file} or with {flag}",
            e.field
        ));
    }
    match (source, line) {
        (Some(s), Some(l)) => BadInput(format!("{}:{l}: {e}", s.name)),
        (Some(s), None) => BadInput(format!("{}: {e}", s.name)),
        (None, _) => BadInput(e.to_string()),
    }
}

/// A YAML document's shape with the position of every key and list item, for the
/// line of each field path (`capacity.tor`, `pools[1]`).
enum KeyTree {
    Leaf,
    Seq(Vec<Spanned<KeyTree>>),
    Map(Vec<(Spanned<String>, KeyTree)>),
}

impl KeyTree {
    fn index(&self, path: &str, lines: &mut Positions) {
        match self {
            KeyTree::Leaf => {}
            KeyTree::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    let at = &item.referenced;
                    if at.line() > 0 {
                        lines.insert(p.clone(), (at.line(), at.column()));
                    }
                    item.value.index(&p, lines);
                }
            }
            KeyTree::Map(entries) => {
                for (k, v) in entries {
                    let p = if path.is_empty() {
                        k.value.clone()
                    } else {
                        format!("{path}.{}", k.value)
                    };
                    let at = &k.referenced;
                    if at.line() > 0 {
                        lines.insert(p.clone(), (at.line(), at.column()));
                    }
                    v.index(&p, lines);
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for KeyTree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyTree, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyTree;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a YAML value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }

            fn visit_i64<E>(self, _: i64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }

            fn visit_u64<E>(self, _: u64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }

            fn visit_f64<E>(self, _: f64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }

            fn visit_str<E>(self, _: &str) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }

            fn visit_unit<E>(self) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }

            fn visit_none<E>(self) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<KeyTree, D::Error> {
                KeyTree::deserialize(d)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<KeyTree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(KeyTree::Seq(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<KeyTree, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = a.next_key::<Spanned<String>>()? {
                    entries.push((key, a.next_value()?));
                }
                Ok(KeyTree::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}
