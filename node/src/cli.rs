//! The command line: clap definitions and the dispatch to daemon, demo, CA and client code.
//!
//! **API Boundary:** commands, options and exit codes are documented in `docs/cli.md`.
//! Exit codes: 0 success, 1 the request was refused (validation, conflict, not found),
//! 2 usage error, 3 the node could not be reached.
//!
//! - The clap definitions: `Cli`, `Command` (including `Rollback { generation }`, `Apply { file }`,
//!   `Backup { out }`, `Completions { shell }` and `Man { out }`), `CaCommand`, `NodeArgs`,
//!   `FlagCommand`, `FlagSetArgs`, `ConfigCommand`, `ConfigPutArgs`, `ApplyArgs`, `RolloutCommand`
//!   (`status`, `pause`, `resume`, `promote`), `ChangeCommand` (`propose`, `list`, `show`,
//!   `approve`, `reject`; `ProposeCommand` reuses `FlagSetArgs`, `ConfigPutArgs` and `ApplyArgs`
//!   and adds `Expiry`, `--expires-in`); the options of client commands (`ClientArgs`, `ChangeArgs`,
//!   `KeyCommand`) are the client's, in `client::args`.
//! - `completions` prints clap_complete's script for the shell; `man` renders clap_mangen's
//!   grapevine(1), or with `--out DIR` one page per command (`write_man`). Both come from the same
//!   `Cli` definition, so they cannot drift from the binary.
//! - `run` dispatches: `ca` to `tls::ca_init` / `tls::ca_issue`, `node` to `run_node`, `demo` to
//!   `demo::run`, client commands to `client::*`, and maps each outcome to an exit code
//!   (`CliError::exit_code`). `main.rs` has already set SIGPIPE for client commands.
//! - `run_node` builds a `RawConfig` from the file and the flags, installs logging
//!   (`install_logging`: the only `tracing` subscriber, to stderr, filter from `GRAPEVINE_LOG`,
//!   default `info`, text or JSON by `--log-format`), and runs the daemon until `shutdown_signal`
//!   (SIGINT or SIGTERM) completes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::client::args::{ChangeArgs, ClientArgs, KeyCommand};
use crate::client::{self, CliError, Client, runtime, with_client};
use crate::config::{Config, RawConfig, parse_labels};
use crate::{daemon, demo, tls};

#[derive(Parser, Debug)]
#[command(name = "grapevine", version, about = "Ship config and feature-flag changes to a fleet, safely, peer to peer")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How `history` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryFormat {
    /// For people (`--json` for the API's answer as is).
    Text,
    /// One audit record (JSON) a line.
    Jsonl,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make the cluster CA and node certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run a node (the peer daemon).
    Node(Box<NodeArgs>),
    /// Start a cluster on loopback in this process, make a change, and watch it spread.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..=20))]
        nodes: u16,
    },
    /// Set and read feature flags.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Put and read config values.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Watch and steer rollouts: waves, their members' verdicts, pause, resume, promote.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Members of the cluster as a node sees them, with their log summaries.
    Status {
        /// First wait up to DURATION (like 10s) until the node answers and is ready
        /// (`/readyz`: caught up with its peers); exit 3 if it never answered, 1 if not ready.
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
        /// With --wait: also until the node sees at least N live members, itself included.
        #[arg(long, value_name = "N", requires = "wait")]
        members: Option<usize>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ship a flagd flag file, unchanged: the flags that differ become one change.
    Apply(ApplyArgs),
    /// Changes that need other operators' approval (four eyes): propose, list, show, approve,
    /// reject.
    #[command(subcommand)]
    Change(ChangeCommand),
    /// Revert a generation on every node at once, for good (re-shipping it is a new change).
    Rollback {
        /// A generation id like n1.3.
        generation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Generations in a node's log, newest first, with their waves, reports and reverts.
    History {
        /// Show at most this many generations.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// `jsonl`: one audit record a line (the `[audit]` sink's), oldest first: each
        /// generation, then the reverts of those among them, secrets redacted.
        #[arg(long, value_enum, default_value_t = HistoryFormat::Text, conflicts_with = "json")]
        format: HistoryFormat,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Save a consistent copy of a node's store (its whole log) to FILE, while it runs.
    ///
    /// To restore: stop the node, put FILE in place of DATA/grapevine.redb, start it; it then
    /// catches up from its peers on whatever is newer.
    Backup {
        /// The file to write (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make API tokens for the nodes' `[auth]`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Signing keys: make root and operator keys, delegate, revoke (`[signing]`).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish or powershell).
    ///
    /// bash: `grapevine completions bash > /etc/bash_completion.d/grapevine`;
    /// zsh: `grapevine completions zsh > "${fpath[1]}/_grapevine"`;
    /// fish: `grapevine completions fish > ~/.config/fish/completions/grapevine.fish`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page grapevine(1), or write it and one page per command to DIR.
    ///
    /// `grapevine man | man -l -` reads it; `grapevine man --out /usr/local/share/man/man1`
    /// installs grapevine.1, grapevine-flag.1, grapevine-flag-set.1 and the others.
    Man {
        /// Write every page into this directory (created if missing) instead of printing one.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `apply FILE` and its options.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The flagd flag file (`{"flags": {...}, "$evaluators": {...}}`).
    pub file: PathBuf,
    #[command(flatten)]
    pub change: Box<ChangeArgs>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `change ...`: proposals that wait for approvals before they become a change.
#[derive(Subcommand, Debug)]
pub enum ChangeCommand {
    /// Propose a change (signed with your key); it applies nowhere until approved.
    #[command(subcommand)]
    Propose(ProposeCommand),
    /// The proposals a node knows, pending ones unless --all.
    List {
        /// Also the enacted, rejected and expired ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One proposal: its signatures, its diff against the node's applied values, its conflicts.
    Show {
        /// A proposal id like n1.3.
        proposal: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add your signature to a proposal; the one that completes it makes it a change.
    Approve {
        proposal: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reject a proposal: it can no longer be approved.
    Reject {
        proposal: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What a proposal changes: the arguments and options of `flag set`, `config put` and `apply`,
/// and how long it waits.
#[derive(Subcommand, Debug)]
pub enum ProposeCommand {
    /// A flag, as `flag set` takes it.
    Flag {
        #[command(flatten)]
        args: FlagSetArgs,
        #[command(flatten)]
        expiry: Expiry,
    },
    /// A config value, as `config put` takes it.
    Config {
        #[command(flatten)]
        args: ConfigPutArgs,
        #[command(flatten)]
        expiry: Expiry,
    },
    /// A flagd flag file, as `apply` takes it.
    Apply {
        #[command(flatten)]
        args: ApplyArgs,
        #[command(flatten)]
        expiry: Expiry,
    },
}

/// `--expires-in` of `change propose`.
#[derive(Args, Debug)]
pub struct Expiry {
    /// How long the proposal waits for its approvals, like 24h or 30m (at most 7 days).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub expires_in: String,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new random token, and the `[[auth.token]]` lines (with its SHA-256, never the
    /// token) to add to the config of every node that should accept it.
    New {
        /// Names the token in its changes (`token:NAME`) and in the nodes' logs.
        #[arg(long)]
        name: String,
        /// read, report (read and push health samples) or write.
        #[arg(long, default_value = "read")]
        role: crate::auth::Role,
        /// A key prefix the token may touch (repeatable); every key without one.
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a new cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node certificate (node.pem, node.key, ca.pem) signed by the CA.
    Issue {
        /// Directory of the CA (from `ca init`).
        #[arg(long)]
        ca: PathBuf,
        /// Node name; it becomes the certificate's common name.
        #[arg(long)]
        name: String,
        /// IP address to put in the certificate (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// DNS name to put in the certificate (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// Directory to write to; give it to `grapevine node --tls`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// TOML config file; options given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node name, unique in the cluster.
    #[arg(long)]
    pub name: Option<String>,
    /// The cell this node gossips in [default: default].
    #[arg(long)]
    pub cell: Option<String>,
    /// Gossip address (QUIC over UDP) [default: 127.0.0.1:7400].
    #[arg(long)]
    pub listen: Option<String>,
    /// Gossip address peers dial, when it differs from --listen.
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP API address [default: 127.0.0.1:7401].
    #[arg(long)]
    pub api: Option<String>,
    /// Gossip address of a node to join through (repeatable).
    #[arg(long)]
    pub seed: Vec<String>,
    /// Data directory (the store).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Directory written by `grapevine ca issue`.
    #[arg(long)]
    pub tls: Option<PathBuf>,
    /// Labels, as k=v,k2=v2.
    #[arg(long)]
    pub labels: Option<String>,
    /// Gossip interval in milliseconds [default: 1000].
    #[arg(long)]
    pub gossip_interval_ms: Option<u64>,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Subcommand, Debug)]
pub enum FlagCommand {
    /// Create or change a flag.
    Set(FlagSetArgs),
    /// Evaluate a flag on the node.
    Get {
        key: String,
        /// Evaluation context as a JSON object.
        #[arg(long)]
        context: Option<String>,
        /// The log's latest definition, not yet applied here perhaps.
        #[arg(long)]
        desired: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// The waves of a generation (or of the newest ones) and their members' verdicts.
    Status {
        /// A generation id like n1.3.
        generation: Option<String>,
        /// Redraw every second until every wave is open and each of its members applied it
        /// (or the rollout is paused or reverted).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a rollout: no further wave opens.
    Pause {
        generation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Undo a pause.
    Resume {
        generation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Open the next closed wave, whatever its predecessors' health.
    Promote {
        generation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["on", "off", "variant", "file"]))]
pub struct FlagSetArgs {
    pub key: String,
    /// Serve `on` (a boolean flag with variants on: true, off: false).
    #[arg(long)]
    pub on: bool,
    /// Serve `off`.
    #[arg(long)]
    pub off: bool,
    /// Make NAME the default variant of an existing flag.
    #[arg(long, value_name = "NAME")]
    pub variant: Option<String>,
    /// A flagd flag definition (JSON).
    #[arg(long, value_name = "FLAG.json")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub change: Box<ChangeArgs>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Create or replace a config value.
    Put(ConfigPutArgs),
    /// Read a config value.
    Get {
        key: String,
        /// The log's latest value, not yet applied here perhaps.
        #[arg(long)]
        desired: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `config put KEY` and its options.
#[derive(Args, Debug)]
pub struct ConfigPutArgs {
    pub key: String,
    /// The value, as JSON.
    #[arg(long, group = "source", required_unless_present = "file")]
    pub value: Option<String>,
    /// A file holding the value as JSON.
    #[arg(long, group = "source")]
    pub file: Option<PathBuf>,
    /// A JSON Schema file the key's values must follow from now on (kept with the key).
    #[arg(long, value_name = "SCHEMA.json")]
    pub schema: Option<PathBuf>,
    #[command(flatten)]
    pub change: Box<ChangeArgs>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs a parsed command line and maps the outcome to the documented exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Ca(command) => run_ca(command),
        Command::Node(args) => run_node(*args),
        Command::Demo { nodes } => runtime().and_then(|rt| rt.block_on(demo::run(nodes.into()))),
        Command::Flag(command) => runtime().and_then(|rt| rt.block_on(run_flag(command))),
        Command::Config(command) => runtime().and_then(|rt| rt.block_on(run_config(command))),
        Command::Rollout(command) => runtime().and_then(|rt| rt.block_on(run_rollout(command))),
        Command::Status { wait, members, client } => with_client(&client, |c| async move {
            if let Some(within) = wait {
                client::wait::until_ready(&c, client::wait::parse_within(&within)?, members).await?;
            }
            client::status(&c).await
        }),
        Command::History { limit, format, client } => with_client(&client, |c| async move {
            match format {
                HistoryFormat::Text => client::history(&c, limit).await,
                HistoryFormat::Jsonl => client::history_records(&c, limit).await,
            }
        }),
        Command::Apply(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                let request = client::apply_request(client::read_json_file(&args.file)?);
                let client = Client::with_timeout(&args.client, args.change.request_timeout())?;
                client::apply(&client, request, &args.change).await
            })
        }),
        Command::Change(command) => runtime().and_then(|rt| rt.block_on(run_change(command))),
        Command::Rollback { generation, client } => {
            with_client(&client, |c| async move { client::rollback(&c, &generation).await })
        }
        Command::Backup { out, client } => runtime().and_then(|rt| {
            rt.block_on(async { client::backup(&Client::with_timeout(&client, BACKUP_TIMEOUT)?, &out).await })
        }),
        Command::Token(TokenCommand::New { name, role, prefixes, json }) => new_token(name, role, prefixes, json),
        Command::Key(command) => crate::client::signing::run(command),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "grapevine", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => write_man(out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// `token new`: a token, and the config lines that make nodes accept it (checked as the node
/// checks them).
fn new_token(name: String, role: crate::auth::Role, prefixes: Vec<String>, json: bool) -> Result<(), CliError> {
    let (token, sha256) = crate::auth::new_token();
    let prefixes = if prefixes.is_empty() { vec![String::new()] } else { prefixes };
    let section = crate::auth::AuthSection {
        token: Some(vec![crate::auth::TokenSection {
            name: name.clone(),
            sha256: sha256.clone(),
            role,
            prefixes: Some(prefixes.clone()),
        }]),
        ..Default::default()
    };
    crate::auth::Auth::from_section(&section, std::path::Path::new("/")).map_err(CliError::Usage)?;
    let quoted: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
    let toml = format!(
        "[[auth.token]]\nname = {name:?}\nsha256 = \"{sha256}\"\nrole = \"{role}\"\nprefixes = [{}]\n",
        quoted.join(", ")
    );
    if json {
        println!("{}", serde_json::json!({"token": token, "sha256": sha256, "toml": toml}));
    } else {
        println!("token (give it to the client: GRAPEVINE_TOKEN, --token or ~/.config/grapevine/credentials.toml;");
        println!("it is not stored anywhere, and cannot be shown again):\n\n  {token}\n");
        println!("for the config of every node that should accept it:\n\n{toml}");
    }
    Ok(())
}

/// The longest a backup may take to arrive (a store of the largest retention, on a slow link).
const BACKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// `man`: grapevine(1) to standard output, or every page into `out`.
fn write_man(out: Option<&std::path::Path>) -> Result<(), CliError> {
    let failed = |e: std::io::Error| CliError::Failed(format!("cannot write the manual: {e}"));
    let Some(out) = out else {
        return clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(failed);
    };
    std::fs::create_dir_all(out).map_err(|e| CliError::Failed(format!("cannot create {}: {e}", out.display())))?;
    clap_mangen::generate_to(Cli::command(), out).map_err(failed)?;
    let mut pages: Vec<_> = std::fs::read_dir(out).map_err(failed)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    pages.retain(|p| p.extension().is_some_and(|x| x == "1"));
    pages.sort();
    for page in pages {
        println!("{}", page.display());
    }
    Ok(())
}

fn run_ca(command: CaCommand) -> Result<(), CliError> {
    match command {
        CaCommand::Init { out } => {
            tls::ca_init(&out).map_err(|e| CliError::Refused(e.to_string()))?;
            println!("created cluster CA in {} (keep {} secret)", out.display(), tls::CA_KEY_FILE);
        }
        CaCommand::Issue { ca, name, ip, dns, out } => {
            name.parse::<grapevine_proto::NodeName>().map_err(|e| CliError::Usage(e.to_string()))?;
            tls::ca_issue(&ca, &name, &ip, &dns, &out).map_err(|e| CliError::Refused(e.to_string()))?;
            println!(
                "issued certificate for {name} in {} (use: grapevine node --tls {})",
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}

fn run_node(args: NodeArgs) -> Result<(), CliError> {
    install_logging(&args.log_format);
    let file = match &args.config {
        Some(path) => RawConfig::from_file(path).map_err(|e| CliError::Usage(e.to_string()))?,
        None => RawConfig::default(),
    };
    let labels = args.labels.as_deref().map(parse_labels).transpose().map_err(|e| CliError::Usage(e.to_string()))?;
    let flags = RawConfig {
        name: args.name,
        cell: args.cell,
        listen: args.listen,
        advertise: args.advertise,
        api: args.api,
        seeds: (!args.seed.is_empty()).then_some(args.seed),
        data: args.data,
        tls: args.tls,
        labels,
        gossip_interval_ms: args.gossip_interval_ms,
        ..RawConfig::default()
    };
    let config = Config::try_from(file.overlay(flags)).map_err(|e| CliError::Usage(e.to_string()))?;
    let runtime = runtime()?;
    runtime
        .block_on(daemon::run(config, shutdown_signal()))
        .map_err(|e| CliError::Failed(format!("node cannot start: {e}")))
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}

fn install_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRAPEVINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run_flag(command: FlagCommand) -> Result<(), CliError> {
    match command {
        FlagCommand::Set(args) => {
            let client = Client::with_timeout(&args.client, args.change.request_timeout())?;
            client::flag_set(&client, flag_request(&args)?, &args.change).await
        }
        FlagCommand::Get { key, context, desired, client } => {
            let context = context.as_deref().map(client::parse_context).transpose()?;
            client::flag_get(&Client::new(&client)?, &key, context, desired).await
        }
    }
}

/// The request `flag set` (or `change propose flag`) sends.
fn flag_request(args: &FlagSetArgs) -> Result<client::ChangeRequest, CliError> {
    let request = if args.on || args.off {
        serde_json::json!({ "on": args.on })
    } else if let Some(variant) = &args.variant {
        serde_json::json!({ "variant": variant })
    } else {
        let path = args.file.as_ref().expect("clap requires one of --on, --off, --variant, --file");
        serde_json::json!({ "definition": client::read_json_file(path)? })
    };
    client::flag_request(&args.key, request)
}

/// The request `config put` (or `change propose config`) sends.
fn config_request(args: &ConfigPutArgs) -> Result<client::ChangeRequest, CliError> {
    let schema = args.schema.as_deref().map(client::read_json_file).transpose()?;
    let value = match (&args.value, &args.file) {
        (Some(text), _) => client::parse_json_value(text, "--value")?,
        (None, Some(path)) => client::read_json_file(path)?,
        (None, None) => return Err(CliError::Usage("expected --value JSON or --file PATH".into())),
    };
    client::config_request(&args.key, value, schema)
}

async fn run_config(command: ConfigCommand) -> Result<(), CliError> {
    match command {
        ConfigCommand::Put(args) => {
            let request = config_request(&args)?;
            let client = Client::with_timeout(&args.client, args.change.request_timeout())?;
            client::config_put(&client, request, &args.change).await
        }
        ConfigCommand::Get { key, desired, client } => client::config_get(&Client::new(&client)?, &key, desired).await,
    }
}

async fn run_change(command: ChangeCommand) -> Result<(), CliError> {
    use client::proposals;
    match command {
        ChangeCommand::Propose(what) => {
            let (request, change, client, expiry) = match &what {
                ProposeCommand::Flag { args, expiry } => (flag_request(args)?, &args.change, &args.client, expiry),
                ProposeCommand::Config { args, expiry } => (config_request(args)?, &args.change, &args.client, expiry),
                ProposeCommand::Apply { args, expiry } => {
                    let request = client::apply_request(client::read_json_file(&args.file)?);
                    (request, &args.change, &args.client, expiry)
                }
            };
            let expires_in_ms = grapevine_proto::policy::parse_duration_ms(&expiry.expires_in)
                .map_err(|error| CliError::Usage(format!("--expires-in: {}", error.0)))?;
            let client = Client::with_timeout(client, change.request_timeout())?;
            proposals::propose(&client, request, change, expires_in_ms).await
        }
        ChangeCommand::List { all, client } => proposals::list(&Client::new(&client)?, all).await,
        ChangeCommand::Show { proposal, client } => proposals::show(&Client::new(&client)?, &proposal).await,
        ChangeCommand::Approve { proposal, client } => {
            proposals::vote(&Client::new(&client)?, &proposal, proposals::Vote::Approve).await
        }
        ChangeCommand::Reject { proposal, client } => {
            proposals::vote(&Client::new(&client)?, &proposal, proposals::Vote::Reject).await
        }
    }
}

async fn run_rollout(command: RolloutCommand) -> Result<(), CliError> {
    let (client, generation, action) = match command {
        RolloutCommand::Status { generation, watch, client } => {
            let client = Client::new(&client)?;
            return client::rollout_status(&client, generation.as_deref(), watch).await;
        }
        RolloutCommand::Pause { generation, client } => (client, generation, "pause"),
        RolloutCommand::Resume { generation, client } => (client, generation, "resume"),
        RolloutCommand::Promote { generation, client } => (client, generation, "promote"),
    };
    client::rollout_control(&Client::new(&client)?, &generation, action).await
}
