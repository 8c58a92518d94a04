//! The options of the client's commands, as clap parses them: `cli` flattens them into its
//! commands, and the client reads them, so they live here, below the command line.
//!
//! - `ChangeArgs`, on `flag set`, `config put` and `apply`: the policy options `--waves`, `--bake`,
//!   `--health-quorum`, `--watch-window`, `--waves-by`, `--emergency` (which conflicts with
//!   `--waves`, `--bake`, `--health-quorum` and `--waves-by`), `--anomaly-quorum`,
//!   `--anomaly-quorum-min`, `--min-samples`, `--max-error-rate`, `--max-latency-p99-ms`,
//!   `--max-error-ratio`, `--max-latency-ratio`, `--at TIME` and `--in DURATION` (a scheduled
//!   start, sent as `start_at` and `start_in`; `start_intent` checks them for signing), `--dry-run`
//!   (sent as `dry_run=true`),
//!   `--wait-replicas` and `--wait-timeout-ms`. `config put` adds `--schema SCHEMA.json`.
//!   `ChangeArgs::query` turns them into the change request's query string; only the options given
//!   are sent, so the node's `[rollout]` default fills the rest.
//! - `ClientArgs` (every client command): `--node`, `--json` and `--author` (`GRAPEVINE_AUTHOR`; by
//!   default `$USER@HOSTNAME`, made to fit the author alphabet by `default_author`), sent
//!   as the `X-Grapevine-Author` header of every request.
//! - `KeyCommand`: `key new`, `key delegate`, `key show` and `key revoke` (`signing::run`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, StartIntent};

/// Options of every command that talks to a node.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The node's HTTP API (`http://HOST:PORT`), or its admin socket (`unix:/var/lib/grapevine/admin.sock`).
    #[arg(long, env = "GRAPEVINE_NODE", default_value = "http://127.0.0.1:7401")]
    pub node: String,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    /// The API token (`gv_...`) for a node that requires one; without it, the credentials
    /// file (~/.config/grapevine/credentials.toml). Not sent over the admin socket.
    #[arg(long, env = "GRAPEVINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Who you are, recorded with the changes you make (1 to 64 of A-Z a-z 0-9 - _ . @ / + :)
    /// [default: $USER@HOSTNAME]
    #[arg(long, env = "GRAPEVINE_AUTHOR")]
    pub author: Option<String>,
    /// The operator key file that signs your changes, for a cluster that requires signed
    /// changes [default: ~/.config/grapevine/signing.key, if it exists]
    #[arg(long, env = "GRAPEVINE_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
}

/// How a change rolls out, and how long the command waits for it.
#[derive(Args, Debug, Clone)]
pub struct ChangeArgs {
    /// Cumulative waves, counts then percents [default: the node's, 1,10%,50%,100%].
    #[arg(long, value_name = "1,10%,50%,100%", conflicts_with = "emergency")]
    pub waves: Option<String>,
    /// How long each wave must report healthy before the next opens, like 30s.
    #[arg(long, value_name = "DURATION", conflicts_with = "emergency")]
    pub bake: Option<String>,
    /// The share of a wave that must report healthy, in (0, 1].
    #[arg(long, value_name = "Q", conflicts_with = "emergency")]
    pub health_quorum: Option<f64>,
    /// How long each node judges the change after applying it, like 10m.
    #[arg(long, value_name = "DURATION")]
    pub watch_window: Option<String>,
    /// After the canary, one wave per value of this label.
    #[arg(long, value_name = "LABEL", conflicts_with = "emergency")]
    pub waves_by: Option<String>,
    /// A kill switch: every node at once, no waves, no bake.
    #[arg(long)]
    pub emergency: bool,
    /// Open the first wave at this time (RFC 3339, like 2026-12-24T08:00:00Z); stored and spread now.
    #[arg(long, value_name = "TIME", conflicts_with = "start_in")]
    pub at: Option<String>,
    /// Open the first wave this long from now (by the node's clock), like 30s, 2h.
    #[arg(long = "in", value_name = "DURATION")]
    pub start_in: Option<String>,
    /// The share of the nodes that applied the change whose anomaly reports revert it, in (0, 1] [default: 0.34].
    #[arg(long, value_name = "Q")]
    pub anomaly_quorum: Option<f64>,
    /// The fewest anomaly reports that revert the change [default: 1].
    #[arg(long, value_name = "N")]
    pub anomaly_quorum_min: Option<u32>,
    /// Requests a node must see after applying the change before it judges it [default: 20].
    #[arg(long, value_name = "N")]
    pub min_samples: Option<u32>,
    /// The highest acceptable error rate, in (0, 1] [default: 0.05].
    #[arg(long, value_name = "RATE")]
    pub max_error_rate: Option<f64>,
    /// The highest acceptable median p99 latency in milliseconds [default: none].
    #[arg(long, value_name = "MS")]
    pub max_latency_p99_ms: Option<u32>,
    /// How many times the baseline's and the peers' error rate is acceptable [default: 2].
    #[arg(long, value_name = "X")]
    pub max_error_ratio: Option<f64>,
    /// How many times the baseline's and the peers' latency is acceptable [default: 1.5].
    #[arg(long, value_name = "X")]
    pub max_latency_ratio: Option<f64>,
    /// Check the change and show what it would do (diff, waves); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return only once K other nodes hold the change (durable there too).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub wait_replicas: usize,
    /// How long to wait for the replicas, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub wait_timeout_ms: u64,
}

impl ChangeArgs {
    /// The query string of the change request.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query =
            vec![("wait_replicas", self.wait_replicas.to_string()), ("timeout_ms", self.wait_timeout_ms.to_string())];
        let options = [
            ("waves", &self.waves),
            ("bake", &self.bake),
            ("watch_window", &self.watch_window),
            ("waves_by", &self.waves_by),
            ("start_at", &self.at),
            ("start_in", &self.start_in),
        ];
        query.extend(options.into_iter().filter_map(|(name, value)| Some((name, value.clone()?))));
        let numbers = [
            ("health_quorum", self.health_quorum.map(|v| v.to_string())),
            ("anomaly_quorum", self.anomaly_quorum.map(|v| v.to_string())),
            ("anomaly_quorum_min", self.anomaly_quorum_min.map(|v| v.to_string())),
            ("min_samples", self.min_samples.map(|v| v.to_string())),
            ("max_error_rate", self.max_error_rate.map(|v| v.to_string())),
            ("max_latency_p99_ms", self.max_latency_p99_ms.map(|v| v.to_string())),
            ("max_error_ratio", self.max_error_ratio.map(|v| v.to_string())),
            ("max_latency_ratio", self.max_latency_ratio.map(|v| v.to_string())),
        ];
        query.extend(numbers.into_iter().filter_map(|(name, value)| Some((name, value?))));
        if self.emergency {
            query.push(("emergency", "true".to_owned()));
        }
        if self.dry_run {
            query.push(("dry_run", "true".to_owned()));
        }
        query
    }

    /// The start asked for, to check a prepared change against before signing it; a time or
    /// a duration that does not parse is a usage error.
    pub fn start_intent(&self) -> Result<Option<StartIntent>, CliError> {
        use grapevine_proto::{policy::parse_duration_ms, schedule::parse_time};
        match (&self.at, &self.start_in) {
            (Some(at), _) => {
                let at = parse_time(at).map_err(|error| CliError::Usage(format!("--at: {error}")))?;
                Ok(Some(StartIntent::At(at)))
            }
            (None, Some(within)) => {
                let ms = parse_duration_ms(within).map_err(|error| CliError::Usage(format!("--in: {}", error.0)))?;
                Ok(Some(StartIntent::In(ms)))
            }
            (None, None) => Ok(None),
        }
    }

    /// How long the request may take: the node's wait, plus time to answer.
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.wait_timeout_ms) + std::time::Duration::from_secs(5)
    }
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make a new ed25519 key file (mode 0600) and print its public key: a root key (its
    /// public key goes into every node's `[signing] roots`) or an operator's key.
    New {
        /// Recorded as the author of every change the key signs.
        #[arg(long)]
        name: String,
        /// The key file to write (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// As a root: let an operator's key sign changes of CLUSTER, and print the delegation.
    Delegate {
        /// The root's key file.
        #[arg(long)]
        root: PathBuf,
        /// The operator's key file: the delegation is written into it.
        #[arg(long, conflicts_with = "public", required_unless_present = "public")]
        key: Option<PathBuf>,
        /// The operator's public key (`ed25519:...`), when its file is elsewhere.
        #[arg(long, requires = "name")]
        public: Option<String>,
        /// The operator's name [default: the key file's].
        #[arg(long)]
        name: Option<String>,
        /// The cluster id (`cluster` in the nodes' config) the delegation holds in.
        #[arg(long)]
        cluster: String,
        /// A key prefix the operator may change (repeatable); every key, rollout controls and
        /// revocations without one.
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        /// Days until the delegation expires.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Print a key file's public key, name and delegation (never the secret).
    Show { file: PathBuf },
    /// Revoke an operator key on every node: a change of `grapevine.revoked.<key>`, signed by
    /// you; every change the key signed after it is reverted everywhere.
    Revoke {
        /// The public key to revoke (`ed25519:...`).
        public: String,
        /// Why, recorded in the change.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}
