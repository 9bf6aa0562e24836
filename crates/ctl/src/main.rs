//! `tabbyctl`: the Tabby command-line tool. It reads and writes Calico-shaped v3
//! resources in the datastore and reads like `calicoctl`: `apply -f`, `get ippools -o
//! wide`, `config set nodeToNodeMesh off`. Program output goes to stdout, errors to
//! stderr; the exit code is 0 on success and 1 on any error (2 for input `plan`
//! rejects).

mod commands;
mod config;
mod connect;
mod datastore;
mod diags;
mod ipam;
mod lab;
mod label;
mod node;
mod output;
mod plan;
mod policy;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Manage Tabby (Calico-model container networking) resources.
#[derive(Parser, Debug)]
#[command(name = "tabbyctl", version, about, long_about = None)]
pub struct Opts {
    /// Datastore to use: sqlite:///path/store.db or etcd://host:2379[,host:2379].
    /// Default: the config file's setting, else sqlite:///var/lib/tabby/store.db.
    #[arg(long, global = true, env = "TABBY_STORE")]
    store: Option<String>,

    /// Client configuration file (kind CalicoAPIConfig), read when it exists.
    #[arg(
        long = "config",
        global = true,
        env = "TABBY_CONFIG",
        default_value = "/etc/tabby/tabbyctl.yaml"
    )]
    config_file: PathBuf,

    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or replace resources from a file, a folder or stdin.
    Apply(commands::FileArgs),
    /// Create resources that must not exist yet.
    Create(commands::FileArgs),
    /// Replace resources that must already exist.
    Replace(commands::FileArgs),
    /// Check resources from a file without writing anything.
    Validate(commands::FileArgs),
    /// Delete resources named in a file, or KIND NAME...
    Delete(commands::DeleteArgs),
    /// Show resources: KIND [NAME...], as a table, YAML, JSON or names.
    Get(commands::GetArgs),
    /// Change one resource with a JSON merge patch.
    Patch(commands::PatchArgs),
    /// Set or remove labels: `label nodes node1 rack=r1 [--overwrite]`, `rack-`.
    Label(label::LabelArgs),
    /// Show or change cluster-wide BGP settings (the `default` BGPConfiguration).
    Config(config::ConfigArgs),
    /// IP address management: show usage, check for leaks, release, configure, split.
    Ipam(ipam::IpamArgs),
    /// Back up, restore or move the whole datastore: `datastore export -o FILE`,
    /// `datastore import -f FILE`, `datastore migrate --from URL --to URL`.
    Datastore(datastore::DatastoreArgs),
    /// Ask the local tabby-node agent: `node status`; `node diags` for a bug report.
    Node(node::NodeArgs),
    /// Size a cluster's BGP topology: sessions and routes per device for each model.
    Plan(plan::PlanArgs),
    /// Network policy: `policy explain` says which tier, policy and rule decide a flow.
    Policy(policy::PolicyArgs),
    /// Build a cluster in network namespaces on this machine and check it: `lab up`,
    /// `lab status`, `lab exec`, `lab fail`, `lab heal`, `lab graph`, `lab down`.
    Lab(lab::LabArgs),
    /// Print the client version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let opts = match Opts::try_parse() {
        Ok(opts) => opts,
        Err(e) => {
            let _ = e.print();
            // --help and --version succeed; every usage error exits 1, like any error,
            // except that `plan` exits 2 on any bad input.
            return if !e.use_stderr() {
                ExitCode::SUCCESS
            } else if plan::invoked(Opts::command()) {
                ExitCode::from(plan::BAD_INPUT)
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&opts.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = runtime.block_on(run(opts, &mut stdout));
    let _ = stdout.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(lab::Exit(code)) = e.downcast_ref::<lab::Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("error: {e:#}");
            if e.is::<plan::BadInput>() {
                ExitCode::from(plan::BAD_INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(opts: Opts, out: &mut dyn Write) -> anyhow::Result<()> {
    let conn = connect::Connection::new(opts.store.as_deref(), &opts.config_file);
    match opts.command {
        Command::Apply(args) => {
            commands::write_files(&conn, &args, commands::Verb::Apply, out).await
        }
        Command::Create(args) => {
            commands::write_files(&conn, &args, commands::Verb::Create, out).await
        }
        Command::Replace(args) => {
            commands::write_files(&conn, &args, commands::Verb::Replace, out).await
        }
        Command::Validate(args) => commands::validate_files(&args, out),
        Command::Delete(args) => commands::delete(&conn, &args, out).await,
        Command::Get(args) => commands::get(&conn, &args, out).await,
        Command::Patch(args) => commands::patch(&conn, &args, out).await,
        Command::Label(args) => label::run(&conn, &args, out).await,
        Command::Config(args) => config::run(&conn, &args, out).await,
        Command::Ipam(args) => ipam::run(&conn, &args, out).await,
        Command::Datastore(args) => datastore::run(&conn, &args, out).await,
        Command::Node(args) => node::run(&conn, &args, out).await,
        Command::Plan(args) => plan::run(&args, out),
        Command::Policy(args) => policy::run(&conn, &args, out).await,
        Command::Lab(args) => lab::run(&args, out).await,
        Command::Version => {
            writeln!(out, "Client Version:    v{}", env!("CARGO_PKG_VERSION"))?;
            writeln!(out, "API Version:       {}", tabby_api::API_VERSION)?;
            writeln!(out, "Datastore:         {}", conn.describe()?)?;
            Ok(())
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Opts::command(), "tabbyctl", out);
            Ok(())
        }
    }
}
