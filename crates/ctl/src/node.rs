//! `tabbyctl node status`: asks the local tabby-node over its control socket and
//! prints the answer in `calicoctl node status`'s layout (or as JSON). When the agent
//! cannot be reached it says so on stderr and exits 1, as calicoctl does.
//! `tabbyctl node diags` (in `diags`) gathers a node's state into one archive.

use std::io::Write;
use std::path::PathBuf;

use tabby_node::status::{self, DEFAULT_CONTROL_SOCKET};

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Show whether tabby-node runs and the state of its BGP sessions.
    Status(StatusArgs),
    /// Write one .tar.gz with the agent's logs, links, addresses, routes, rules,
    /// nftables ruleset, BGP state, datastore check and versions.
    Diags(crate::diags::DiagsArgs),
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The agent's control socket.
    #[arg(long, env = "TABBY_NODE_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// calicoctl's tables.
    Table,
    /// The agent's report as JSON.
    Json,
}

pub async fn run(
    conn: &crate::connect::Connection,
    args: &NodeArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match &args.action {
        Action::Status(a) => node_status(a, out).await,
        Action::Diags(a) => crate::diags::run(conn, a, out).await,
    }
}

async fn node_status(args: &StatusArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let report = match status::query(&args.socket).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Tabby process is not running.");
            return Err(e.into());
        }
    };
    match args.output {
        Format::Table => write!(out, "{}", status::render_table(&report))?,
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
    }
    Ok(())
}
