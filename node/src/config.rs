//! Node configuration, in two stages: a raw form from the TOML file and the command line,
//! then a checked [`Config`] of real types. `deploy/node.example.toml` documents each option.
//!
//! - `RawConfig` holds every field as an `Option` and refuses unknown TOML keys.
//!   `RawConfig::overlay`: command-line values replace file values, and labels merge key by key.
//! - `Config::try_from(RawConfig)` checks each option and builds a `Config` of real types
//!   (`SocketAddr`, `Duration`, `NodeName`). Its error is `ConfigError`.
//! - `cluster` must be 1 to 64 of `A-Z a-z 0-9 - _ .` (`check_cluster`). `retain_generations` and
//!   `retain_age_s` become `Config::retention`, a `proto` `Retention`.
//! - The sections can be set only in the file; an error in one is `ConfigError::Section`
//!   (`[rollout]: ...`, `[health]: ...`, `[alerts]: ...`, `[audit]: ...`, `[files]: ...`, `[signing]: ...`):
//!   - `[rollout]` (`RolloutSection`) is a `proto::policy::PolicyOptions` in the CLI's
//!     notation, applied over `Policy::default()` (`PolicyOptions::apply`, which validates) into
//!     `Config::rollout`, the policy of a change that names none, and its `[[rollout.freeze]]`
//!     windows (`proto::schedule::FreezeOptions`), checked by `Freezes::parse` into
//!     `Config::freezes`;
//!   - `[health]` is a `health::HealthConfig` (sources and sample interval; the thresholds moved to
//!     `[rollout]`), checked by `HealthConfig::validate`, kept as `Config::health`;
//!   - `[alerts]` is an `alerts::AlertsConfig`, checked by `AlertsConfig::validate`, kept as
//!     `Config::alerts`; `[audit]` an `audit::AuditConfig`, checked by `AuditConfig::validate`,
//!     kept as `Config::audit` (`None` without the section);
//!   - `[[files]]` is a list of `files::FileConfig`, each checked by `FileConfig::validate`, kept
//!     as `Config::files`;
//!   - `[signing]` (`SigningSection`: `roots`, `unsigned_through`, `[[signing.approvals]]`) becomes
//!     `Config::trust`, a `proto::trust::Trust` with the cluster id; each root must parse as
//!     `ed25519:` and 64 hex digits, and `unsigned_through` or approval rules without roots are
//!     refused (`approval_rules`: 1 to 17 signatures, operators as names or keys).
//! - `fractional` (`v2` or `cbor`, default `v2`) is the `flagd::Fractional` scheme,
//!   `Config::fractional`.
//! - `test_clock_skew_ms` (`testsuite` only) is added to the node's wall clock;
//!   `Config::clock_skew_ms()` is 0 in every other build.
//! - Limits: `GOSSIP_INTERVAL_MS` (10..=60000), `DEAD_NODE_GRACE_PERIOD_S` (10..=86400),
//!   `MAX_CLOCK_OFFSET_MS` (1..=3600000), `RETAIN_GENERATIONS` (1..=1000000, default 10000),
//!   `RETAIN_AGE_S` (0..=31536000, default 604800), `MAX_LABELS` (16) and `MAX_LABEL_BYTES` (63).
//! - The unit test `the_example_config_parses` parses `deploy/node.example.toml`, so it cannot
//!   drift.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use grapevine_proto::approvals::ApprovalRule;
use grapevine_proto::flagd::Fractional;
use grapevine_proto::log::Retention;
use grapevine_proto::policy::{Policy, PolicyOptions};
use grapevine_proto::schedule::{FreezeOptions, Freezes};
use grapevine_proto::signing::PublicKey;
use grapevine_proto::trust::Trust;
use grapevine_proto::{CellName, NodeName, VersionVector};

use crate::alerts::AlertsConfig;
use crate::health::HealthConfig;
use serde::Deserialize;

/// Gossip intervals outside this range are refused: below, chitchat's loop would eat a core;
/// above, failure detection would take minutes.
const GOSSIP_INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// A dead member is forgotten after this long: long enough to ride out a restart or a short
/// partition, short enough that chitchat's digest (one datagram) does not fill with ghosts.
const DEAD_NODE_GRACE_PERIOD_S: std::ops::RangeInclusive<u64> = 10..=86_400;

/// How far ahead of our clock a peer's stamp may be and still move it. Zero would refuse all
/// skew; an hour would let one bad clock win every key for an hour.
const MAX_CLOCK_OFFSET_MS: std::ops::RangeInclusive<u64> = 1..=3_600_000;
/// How far ahead a peer's stamp, or this node's own clock against its peers', may run: NTP
/// keeps hosts within a few milliseconds, and the offset is measured within half a round
/// trip, so 100 ms leaves room for a drifting host and a slow network while bounding the time
/// a fast clock's write can stay ahead of newer ones.
const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 100;

/// Generations kept whole before compaction: at least one; at most a million, since the
/// engine holds the whole log in memory.
const RETAIN_GENERATIONS: std::ops::RangeInclusive<u64> = 1..=1_000_000;

/// How old a generation must be before compaction, in seconds: up to a year.
const RETAIN_AGE_S: std::ops::RangeInclusive<u64> = 0..=31_536_000;

/// Longest cluster id. chitchat puts it in every Syn message; short keeps gossip small.
const MAX_CLUSTER_ID_BYTES: usize = 64;

/// Labels per node. Labels travel in one chitchat value, which must stay small.
const MAX_LABELS: usize = 16;
/// Longest label key or value.
const MAX_LABEL_BYTES: usize = 63;

/// Options as written in the file or on the command line; every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub name: Option<String>,
    pub cluster: Option<String>,
    pub cell: Option<String>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub api: Option<String>,
    pub seeds: Option<Vec<String>>,
    pub data: Option<PathBuf>,
    pub tls: Option<PathBuf>,
    pub labels: Option<BTreeMap<String, String>>,
    pub gossip_interval_ms: Option<u64>,
    pub dead_node_grace_period_s: Option<u64>,
    pub max_clock_offset_ms: Option<u64>,
    pub retain_generations: Option<u64>,
    pub retain_age_s: Option<u64>,
    /// `[health]`: the sources that judge applied generations.
    pub health: Option<HealthConfig>,
    /// `[rollout]`: the policy of a change that names none, in the CLI's notation, and the
    /// freeze windows (`[[rollout.freeze]]`).
    pub rollout: Option<RolloutSection>,
    /// `[alerts]`: webhooks for anomalies and reverts.
    pub alerts: Option<AlertsConfig>,
    /// `[audit]`: the audit trail's file and webhooks.
    pub audit: Option<crate::audit::AuditConfig>,
    /// flagd's `fractional` bucketing: `v2` (default) or `cbor`; the same on every node.
    pub fractional: Option<Fractional>,
    /// `[[files]]`: config keys rendered to files on the host.
    pub files: Option<Vec<crate::files::FileConfig>>,
    /// `[auth]`: the admin socket, bearer tokens and the anonymous role.
    pub auth: Option<crate::auth::AuthSection>,
    /// `[limits]`: request rates per client on the API.
    pub limits: Option<crate::api::limits::LimitsSection>,
    /// `[signing]`: the root keys operators' changes must be signed under.
    pub signing: Option<SigningSection>,
    /// Which generations may come without their origin's proof: `"all"`, or `{ NODE = SEQ, ...
    /// }` (the log as it was when the cluster upgraded to format 6).
    pub unproven_through: Option<UnprovenThrough>,
    /// Skips the checks that the certificate names the node and that no process runs under
    /// its name, as a modified build would: for tests showing that peers refuse what it writes.
    #[cfg(feature = "testsuite")]
    pub test_skip_name_checks: Option<bool>,
    /// `[flagd]`: flagd's gRPC evaluation and sync services (off without the section).
    pub flagd: Option<crate::flagd::FlagdSection>,
    /// Skews this node's wall clock, for tests of the hybrid logical clock.
    #[cfg(feature = "testsuite")]
    pub test_clock_skew_ms: Option<i64>,
    /// Makes the node write and read this wire format only, as a build of it does, for
    /// mixed-version tests.
    #[cfg(feature = "testsuite")]
    pub test_wire_version: Option<u8>,
    /// Holds everything this node sends its peers this long from its start (the link filter's
    /// rule for every peer), before the API could set it: for tests of what a node does before
    /// its first gossip round.
    #[cfg(feature = "testsuite")]
    pub test_link_delay_ms: Option<u64>,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::File { path: path.to_owned(), error: error.to_string() })?;
        toml::from_str(&text).map_err(|error| ConfigError::File { path: path.to_owned(), error: error.to_string() })
    }

    /// Options set in `over` replace those of `self`; labels merge key by key.
    pub fn overlay(mut self, over: RawConfig) -> RawConfig {
        macro_rules! take {
            ($($field:ident),*) => { $( if over.$field.is_some() { self.$field = over.$field; } )* };
        }
        take!(
            name,
            cluster,
            cell,
            listen,
            advertise,
            api,
            seeds,
            data,
            tls,
            gossip_interval_ms,
            dead_node_grace_period_s,
            max_clock_offset_ms,
            retain_generations,
            retain_age_s,
            health,
            rollout,
            alerts,
            audit,
            fractional,
            files,
            auth,
            limits,
            signing,
            unproven_through,
            flagd
        );
        #[cfg(feature = "testsuite")]
        take!(test_clock_skew_ms, test_wire_version, test_skip_name_checks, test_link_delay_ms);
        if let Some(labels) = over.labels {
            self.labels.get_or_insert_with(BTreeMap::new).extend(labels);
        }
        self
    }
}

/// Parses `k=v,k2=v2` as given to `--labels`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| ConfigError::Invalid {
            option: "labels",
            expected: "k=v pairs separated by commas",
            found: pair.to_owned(),
        })?;
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: NodeName,
    pub cluster: String,
    /// The cell this node gossips in (`docs/operations.md`, "Cells"): `default` unless set.
    pub cell: CellName,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub api: SocketAddr,
    pub seeds: Vec<String>,
    pub data: PathBuf,
    pub tls: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub gossip_interval: Duration,
    pub dead_node_grace_period: Duration,
    pub max_clock_offset_ms: u64,
    pub retention: Retention,
    pub health: HealthConfig,
    /// The cluster's default rollout policy.
    pub rollout: Policy,
    /// When no wave of an ordinary change opens (`[[rollout.freeze]]`).
    pub freezes: Freezes,
    pub alerts: AlertsConfig,
    /// The audit trail's sinks, when `[audit]` sets any.
    pub audit: Option<crate::audit::AuditConfig>,
    pub fractional: Fractional,
    pub files: Vec<crate::files::FileConfig>,
    /// Who may use the API, and for what.
    pub auth: crate::auth::Auth,
    /// Request rates per client on the API.
    pub limits: crate::api::limits::Limits,
    /// Whose changes this node takes: the cluster's root keys.
    pub trust: Trust,
    /// Which peers' generations may come without an origin proof.
    pub unproven: crate::origin::Unproven,
    #[cfg(feature = "testsuite")]
    pub test_skip_name_checks: bool,
    /// flagd's gRPC services, when `[flagd]` turns them on.
    pub flagd: Option<crate::flagd::FlagdConfig>,
    #[cfg(feature = "testsuite")]
    pub test_clock_skew_ms: i64,
    #[cfg(feature = "testsuite")]
    pub test_wire_version: Option<u8>,
    #[cfg(feature = "testsuite")]
    pub test_link_delay_ms: u64,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {error}")]
    File { path: PathBuf, error: String },
    #[error("missing required option `{option}` (set {flag} or `{option}` in the config file)")]
    Missing { option: &'static str, flag: &'static str },
    #[error("option `{option}`: expected {expected}, got {found:?}")]
    Invalid { option: &'static str, expected: &'static str, found: String },
    /// A section (`[health]`, `[rollout]`) that does not hold together.
    #[error("[{section}]: {error}")]
    Section { section: &'static str, error: String },
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let name = raw.name.ok_or(ConfigError::Missing { option: "name", flag: "--name" })?;
        let name = name.parse::<NodeName>().map_err(|_| ConfigError::Invalid {
            option: "name",
            expected: "1 to 32 ASCII letters, digits, '-' or '_'",
            found: name,
        })?;
        let listen = socket_addr("listen", raw.listen.as_deref().unwrap_or("127.0.0.1:7400"))?;
        let advertise = raw.advertise.as_deref().map(|a| socket_addr("advertise", a)).transpose()?;
        let advertised = advertise.unwrap_or(listen);
        if advertised.ip().is_unspecified() {
            return Err(ConfigError::Invalid {
                option: "advertise",
                expected: "an address peers can reach (set --advertise when listening on 0.0.0.0)",
                found: advertised.to_string(),
            });
        }
        let seeds = raw.seeds.unwrap_or_default();
        for seed in &seeds {
            if seed.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
                return Err(ConfigError::Invalid { option: "seeds", expected: "HOST:PORT", found: seed.clone() });
            }
        }
        let gossip_interval_ms = raw.gossip_interval_ms.unwrap_or(1_000);
        if !GOSSIP_INTERVAL_MS.contains(&gossip_interval_ms) {
            return Err(ConfigError::Invalid {
                option: "gossip_interval_ms",
                expected: "a number of milliseconds from 10 to 60000",
                found: gossip_interval_ms.to_string(),
            });
        }
        let data = raw.data.ok_or(ConfigError::Missing { option: "data", flag: "--data" })?;
        let tls = raw.tls.ok_or(ConfigError::Missing { option: "tls", flag: "--tls" })?;
        let auth = crate::auth::Auth::from_section(&raw.auth.unwrap_or_default(), &data)
            .map_err(|error| ConfigError::Section { section: "auth", error })?;
        let cluster = check_cluster(raw.cluster.unwrap_or_else(|| "grapevine".to_owned()))?;
        let cell = match raw.cell {
            None => grapevine_proto::cell::default_cell(),
            Some(cell) => cell.parse().map_err(|_| ConfigError::Invalid {
                option: "cell",
                expected: "1 to 32 ASCII letters, digits, '-' or '_'",
                found: cell,
            })?,
        };
        let trust = raw.signing.unwrap_or_default().trust(&cluster)?;
        Ok(Config {
            name,
            cluster,
            cell,
            trust,
            unproven: raw.unproven_through.map(UnprovenThrough::parse).transpose()?.unwrap_or_default(),
            listen,
            advertise,
            api: socket_addr("api", raw.api.as_deref().unwrap_or("127.0.0.1:7401"))?,
            seeds,
            data: data.clone(),
            tls: tls.clone(),
            labels: check_labels(raw.labels.unwrap_or_default())?,
            gossip_interval: Duration::from_millis(gossip_interval_ms),
            dead_node_grace_period: Duration::from_secs(in_range(
                "dead_node_grace_period_s",
                raw.dead_node_grace_period_s.unwrap_or(600),
                DEAD_NODE_GRACE_PERIOD_S,
                "a number of seconds from 10 to 86400",
            )?),
            max_clock_offset_ms: in_range(
                "max_clock_offset_ms",
                raw.max_clock_offset_ms.unwrap_or(DEFAULT_MAX_CLOCK_OFFSET_MS),
                MAX_CLOCK_OFFSET_MS,
                "a number of milliseconds from 1 to 3600000",
            )?,
            retention: Retention {
                generations: in_range(
                    "retain_generations",
                    raw.retain_generations.unwrap_or(10_000),
                    RETAIN_GENERATIONS,
                    "a number of generations from 1 to 1000000",
                )? as usize,
                age_ms: 1_000
                    * in_range(
                        "retain_age_s",
                        raw.retain_age_s.unwrap_or(7 * 24 * 3600),
                        RETAIN_AGE_S,
                        "a number of seconds from 0 to 31536000",
                    )?,
            },
            health: {
                let health = raw.health.unwrap_or_default();
                health.validate().map_err(|error| ConfigError::Section { section: "health", error })?;
                health
            },
            freezes: {
                let freeze = raw.rollout.as_ref().map_or(&[][..], |section| &section.freeze[..]);
                Freezes::parse(freeze).map_err(|error| ConfigError::Section { section: "rollout", error: error.0 })?
            },
            rollout: raw
                .rollout
                .unwrap_or_default()
                .policy
                .apply(Policy::default())
                .map_err(|error| ConfigError::Section { section: "rollout", error: error.0 })?,
            fractional: raw.fractional.unwrap_or_default(),
            files: {
                let files = raw.files.unwrap_or_default();
                let own = [("data directory", data.as_path()), ("TLS directory", tls.as_path())];
                for file in &files {
                    file.validate().map_err(|error| ConfigError::Section { section: "files", error })?;
                    file.validate_outside(&own).map_err(|error| ConfigError::Section { section: "files", error })?;
                }
                files
            },
            alerts: {
                let alerts = raw.alerts.unwrap_or_default();
                alerts.validate().map_err(|error| ConfigError::Section { section: "alerts", error })?;
                alerts
            },
            audit: match raw.audit {
                Some(audit) => {
                    audit.validate().map_err(|error| ConfigError::Section { section: "audit", error })?;
                    Some(audit)
                }
                None => None,
            },
            auth,
            limits: crate::api::limits::Limits::from_section(&raw.limits.unwrap_or_default())
                .map_err(|error| ConfigError::Section { section: "limits", error })?,
            flagd: raw
                .flagd
                .map(|section| crate::flagd::FlagdConfig::from_section(&section))
                .transpose()
                .map_err(|error| ConfigError::Section { section: "flagd", error })?,
            #[cfg(feature = "testsuite")]
            test_skip_name_checks: raw.test_skip_name_checks.unwrap_or(false),
            #[cfg(feature = "testsuite")]
            test_clock_skew_ms: raw.test_clock_skew_ms.unwrap_or(0),
            #[cfg(feature = "testsuite")]
            test_link_delay_ms: raw.test_link_delay_ms.unwrap_or(0),
            #[cfg(feature = "testsuite")]
            test_wire_version: match raw.test_wire_version {
                Some(v)
                    if !(grapevine_proto::wire::OLDEST_READABLE..=grapevine_proto::wire::WIRE_VERSION).contains(&v) =>
                {
                    let expected = "a wire format this build speaks";
                    return Err(ConfigError::Invalid { option: "test_wire_version", expected, found: v.to_string() });
                }
                version => version,
            },
        })
    }
}

/// `[rollout]` as written: the policy options, and the freeze windows under `freeze`.
#[derive(Debug, Default, Clone)]
pub struct RolloutSection {
    pub policy: PolicyOptions,
    pub freeze: Vec<FreezeOptions>,
}

impl From<PolicyOptions> for RolloutSection {
    /// A section of policy options only, without freeze windows.
    fn from(policy: PolicyOptions) -> Self {
        RolloutSection { policy, freeze: Vec::new() }
    }
}

impl<'de> Deserialize<'de> for RolloutSection {
    /// Takes `freeze` out of the table and reads the rest as `PolicyOptions`, which refuses
    /// unknown keys (`serde(flatten)` would let them through).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let freeze = match table.remove("freeze") {
            Some(freeze) => freeze.try_into().map_err(|e| D::Error::custom(format!("freeze: {e}")))?,
            None => Vec::new(),
        };
        let policy = toml::Value::Table(table).try_into().map_err(D::Error::custom)?;
        Ok(RolloutSection { policy, freeze })
    }
}

/// `unproven_through` as written: `"all"`, or `{ NODE = SEQ, ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UnprovenThrough {
    Word(String),
    Through(BTreeMap<String, u64>),
}

impl UnprovenThrough {
    fn parse(self) -> Result<crate::origin::Unproven, ConfigError> {
        let invalid = |found: String| ConfigError::Invalid {
            option: "unproven_through",
            expected: "\"all\" or a table of node = last unproven seq",
            found,
        };
        match self {
            UnprovenThrough::Word(word) if word == "all" => Ok(crate::origin::Unproven::All),
            UnprovenThrough::Word(word) => Err(invalid(word)),
            UnprovenThrough::Through(through) => {
                let mut vector = VersionVector::default();
                for (node, seq) in through {
                    let origin = node.parse::<NodeName>().map_err(|error| invalid(format!("{node}: {error}")))?;
                    vector.raise(origin, seq);
                }
                Ok(crate::origin::Unproven::Through(vector))
            }
        }
    }
}

fn in_range(
    option: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    expected: &'static str,
) -> Result<u64, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid { option, expected, found: value.to_string() })
    }
}

/// `[signing]` as written: `roots = ["ed25519:<hex>", ...]` and, for a cluster that turned
/// signatures on with history, `unsigned_through = { NODE = SEQ, ... }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    #[serde(default)]
    pub roots: Vec<String>,
    #[serde(default)]
    pub unsigned_through: BTreeMap<String, u64>,
    /// `[[signing.approvals]]`: how many operators must sign a change, by key prefix.
    #[serde(default)]
    pub approvals: Vec<ApprovalRuleText>,
}

/// `[[signing.approvals]] prefix = "payments/"`, `signatures = 2`, optionally `operators =
/// ["alice", "bob", "ed25519:..."]` (whose signatures count; every operator's without it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRuleText {
    pub prefix: String,
    pub signatures: usize,
    #[serde(default)]
    pub operators: Vec<String>,
}

impl SigningSection {
    fn trust(self, cluster: &str) -> Result<Trust, ConfigError> {
        let section = |error: String| ConfigError::Section { section: "signing", error };
        let roots = self
            .roots
            .iter()
            .map(|root| root.parse::<PublicKey>().map_err(|error| section(format!("roots: {error}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if roots.is_empty() && !self.unsigned_through.is_empty() {
            return Err(section("unsigned_through needs roots: without roots every change is taken".to_owned()));
        }
        let mut unsigned_through = VersionVector::default();
        for (node, seq) in self.unsigned_through {
            let origin = node.parse::<NodeName>().map_err(|error| section(format!("unsigned_through: {error}")))?;
            unsigned_through.raise(origin, seq);
        }
        let approvals = approval_rules(self.approvals, roots.is_empty()).map_err(section)?;
        Ok(Trust { cluster: cluster.to_owned(), roots, unsigned_through, approvals })
    }
}

/// The approval rules, checked: they need roots (a rule counts signatures), 1 to
/// `MAX_APPROVALS + 1` signatures each, at most `MAX_APPROVAL_RULES`, operators named as
/// authors or public keys.
fn approval_rules(rules: Vec<ApprovalRuleText>, without_roots: bool) -> Result<Vec<ApprovalRule>, String> {
    use grapevine_proto::approvals::{MAX_APPROVAL_RULES, MAX_APPROVALS};
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    if without_roots {
        return Err(
            "approvals need roots: a rule counts operators' signatures, and without roots none is checked".into()
        );
    }
    if rules.len() > MAX_APPROVAL_RULES {
        return Err(format!("at most {MAX_APPROVAL_RULES} approval rules, got {}", rules.len()));
    }
    rules
        .into_iter()
        .map(|rule| {
            let prefix = &rule.prefix;
            if rule.signatures == 0 || rule.signatures > MAX_APPROVALS + 1 {
                let (most, found) = (MAX_APPROVALS + 1, rule.signatures);
                return Err(format!("approvals for {prefix:?}: signatures must be 1 to {most}, got {found}"));
            }
            for operator in &rule.operators {
                let valid =
                    operator.parse::<PublicKey>().is_ok() || operator.parse::<grapevine_proto::Author>().is_ok();
                if !valid {
                    return Err(format!(
                        "approvals for {prefix:?}: operators must be operator names or ed25519: keys, got {operator:?}"
                    ));
                }
            }
            Ok(ApprovalRule { prefix: rule.prefix, signatures: rule.signatures, operators: rule.operators })
        })
        .collect()
}

fn check_cluster(cluster: String) -> Result<String, ConfigError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if cluster.is_empty() || cluster.len() > MAX_CLUSTER_ID_BYTES || !cluster.chars().all(valid_char) {
        return Err(ConfigError::Invalid {
            option: "cluster",
            expected: "1 to 64 ASCII letters, digits, '-', '_' or '.'",
            found: cluster,
        });
    }
    Ok(cluster)
}

fn socket_addr(option: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| ConfigError::Invalid { option, expected: "IP:PORT", found: text.to_owned() })
}

fn check_labels(labels: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ConfigError> {
    if labels.len() > MAX_LABELS {
        return Err(ConfigError::Invalid {
            option: "labels",
            expected: "at most 16 labels",
            found: format!("{} labels", labels.len()),
        });
    }
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_LABEL_BYTES
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    for (key, value) in &labels {
        if !valid(key) || !valid(value) {
            return Err(ConfigError::Invalid {
                option: "labels",
                expected: "keys and values of 1 to 63 ASCII letters, digits, '-', '_', '.' or '/'",
                found: format!("{key}={value}"),
            });
        }
    }
    Ok(labels)
}

impl Config {
    /// The id this node's gossip runs under: the cluster's for the default cell (so an existing
    /// cluster stays one cell of its fleet with no restart), `<cluster>/<cell>` for any other
    /// (a cluster id has no `/`). chitchat refuses a peer of another id, so a cell's
    /// membership, failure detection and reports stay inside it, whatever the seeds list.
    pub fn gossip_cluster_id(&self) -> String {
        if self.cell.as_str() == grapevine_proto::cell::DEFAULT_CELL {
            self.cluster.clone()
        } else {
            format!("{}/{}", self.cluster, self.cell)
        }
    }

    /// Milliseconds added to this node's wall clock: always zero outside the test suite.
    pub fn clock_skew_ms(&self) -> i64 {
        #[cfg(feature = "testsuite")]
        return self.test_clock_skew_ms;
        #[cfg(not(feature = "testsuite"))]
        0
    }

    /// The address peers dial.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// Labels as one gossip value: `k=v,k2=v2`.
    pub fn labels_text(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> RawConfig {
        RawConfig { name: Some("n1".into()), data: Some("d".into()), tls: Some("t".into()), ..Default::default() }
    }

    #[test]
    fn defaults_fill_what_is_optional() {
        let config = Config::try_from(minimal()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(config.api.to_string(), "127.0.0.1:7401");
        assert_eq!(config.gossip_interval, Duration::from_secs(1));
        assert_eq!((config.cell.as_str(), config.gossip_cluster_id().as_str()), ("default", "grapevine"));
    }

    #[test]
    fn a_cell_gossips_under_its_own_id_and_a_bad_name_is_refused() {
        let config = Config::try_from(RawConfig { cell: Some("eu-west-1a".into()), ..minimal() }).unwrap();
        assert_eq!(config.gossip_cluster_id(), "grapevine/eu-west-1a");
        let named_default = Config::try_from(RawConfig { cell: Some("default".into()), ..minimal() }).unwrap();
        assert_eq!(named_default.gossip_cluster_id(), "grapevine", "the default cell, named or not, is one cell");
        let refused =
            Config::try_from(RawConfig { cell: Some("eu/west".into()), ..minimal() }).unwrap_err().to_string();
        assert!(refused.contains("option `cell`") && refused.contains("\"eu/west\""), "{refused}");
    }

    #[test]
    fn each_bad_option_is_named() {
        let error = |raw: RawConfig| Config::try_from(raw).unwrap_err().to_string();
        assert_eq!(
            error(RawConfig { name: None, ..minimal() }),
            "missing required option `name` (set --name or `name` in the config file)"
        );
        assert!(
            error(RawConfig { listen: Some("nowhere".into()), ..minimal() })
                .starts_with("option `listen`: expected IP:PORT")
        );
        assert!(error(RawConfig { listen: Some("0.0.0.0:7400".into()), ..minimal() }).contains("--advertise"));
        assert!(error(RawConfig { seeds: Some(vec!["host".into()]), ..minimal() }).contains("HOST:PORT"));
        assert!(error(RawConfig { gossip_interval_ms: Some(0), ..minimal() }).contains("gossip_interval_ms"));
        assert!(error(RawConfig { cluster: Some(String::new()), ..minimal() }).contains("option `cluster`"));
        assert!(error(RawConfig { max_clock_offset_ms: Some(0), ..minimal() }).contains("max_clock_offset_ms"));
        assert!(
            error(RawConfig { dead_node_grace_period_s: Some(1), ..minimal() }).contains("dead_node_grace_period_s")
        );
        let labels = parse_labels("zone=eu 1").unwrap();
        assert!(error(RawConfig { labels: Some(labels), ..minimal() }).contains("labels"));
        assert!(parse_labels("zone").is_err());
    }

    #[test]
    fn a_file_inside_the_nodes_own_directories_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // A link to the data directory is the data directory.
        std::os::unix::fs::symlink(&data, dir.path().join("link")).unwrap();
        let file = |path: std::path::PathBuf| {
            let text = format!("path = {:?}\nkey = \"k\"\n", path.display().to_string());
            toml::from_str::<crate::files::FileConfig>(&text).unwrap()
        };
        let config = |path| RawConfig {
            data: Some(data.clone()),
            tls: Some(dir.path().join("tls")),
            files: Some(vec![file(path)]),
            ..minimal()
        };
        for inside in
            [data.join("grapevine.redb"), dir.path().join("link/grapevine.redb"), dir.path().join("tls/node.key")]
        {
            let error = Config::try_from(config(inside.clone())).unwrap_err().to_string();
            assert!(error.contains("expected a path outside the node's"), "{}: {error}", inside.display());
        }
        Config::try_from(config(dir.path().join("app/limits.json"))).unwrap();
    }

    #[test]
    fn flags_override_the_file_and_labels_merge() {
        let file: RawConfig = toml::from_str("name = \"a\"\nlabels = { zone = \"eu\", role = \"web\" }").unwrap();
        let flags =
            RawConfig { name: Some("b".into()), labels: Some(parse_labels("zone=us").unwrap()), ..Default::default() };
        let merged = file.overlay(flags);
        assert_eq!(merged.name.as_deref(), Some("b"));
        assert_eq!(merged.labels.unwrap(), parse_labels("role=web,zone=us").unwrap());
    }

    #[test]
    fn a_flagd_section_opens_flagds_ports_and_each_can_be_turned_off() {
        assert_eq!(Config::try_from(minimal()).unwrap().flagd, None);
        let raw = |text: &str| RawConfig { ..toml::from_str::<RawConfig>(text).unwrap().overlay(minimal()) };
        let flagd = Config::try_from(raw("[flagd]")).unwrap().flagd.unwrap();
        assert_eq!(flagd.evaluation.unwrap().to_string(), "127.0.0.1:8013");
        assert_eq!(flagd.sync.unwrap().to_string(), "127.0.0.1:8015");
        let flagd = Config::try_from(raw("[flagd]\nsync = \"\"\ncontext = { zone = \"eu\" }")).unwrap().flagd.unwrap();
        assert_eq!((flagd.sync, flagd.context["zone"].as_str()), (None, Some("eu")));
        let error = Config::try_from(raw("[flagd]\ntls_cert = \"c.pem\"")).unwrap_err().to_string();
        assert!(error.contains("[flagd]: tls_cert and tls_key go together"), "{error}");
    }

    #[test]
    fn freeze_windows_are_read_and_bad_ones_refused_at_start() {
        let read = |text: &str| -> Result<Config, String> {
            let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
            Config::try_from(raw.overlay(minimal())).map_err(|e| e.to_string())
        };
        let config = read(
            "[rollout]\nbake = \"5s\"\n[[rollout.freeze]]\nname = \"weekend\"\nfrom = \"Fri 16:00\"\nto = \"Mon 08:00\"\nzone = \"Europe/Berlin\"\n",
        )
        .unwrap();
        assert_eq!(config.rollout.bake_ms, 5_000);
        assert_eq!(config.freezes.names().collect::<Vec<_>>(), ["weekend"]);
        let window = |from: &str, to: &str, zone: &str| {
            read(&format!("[[rollout.freeze]]\nname = \"w\"\nfrom = \"{from}\"\nto = \"{to}\"\nzone = \"{zone}\"\n"))
                .unwrap_err()
        };
        assert!(
            window("Fri 16:00", "Mon 08:00", "Mars/Olympus")
                .contains("[rollout]: freeze window \"w\": expected an IANA time zone")
        );
        assert!(window("Fri 4pm", "Mon 08:00", "UTC").contains("from: expected"));
        assert!(window("2026-12-27", "2026-12-24", "UTC").contains("expected to after from"));
        assert!(read("[rollout]\nfreez = 1\n").unwrap_err().contains("unknown field `freez`"));
        assert!(read("[[rollout.freeze]]\nname = \"w\"\n").unwrap_err().contains("missing field"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<RawConfig>("nmae = \"a\"").unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node.example.toml");
        let raw = RawConfig::from_file(&path).unwrap();
        let config = Config::try_from(raw).unwrap();
        assert!(config.trust.required());
        assert!(config.trust.unsigned_through.covers(&"n2.17".parse().unwrap()));
        let audit = config.audit.expect("the example has an [audit] section");
        assert_eq!((audit.keep, audit.webhook.len()), (Some(5), 1));
    }

    #[test]
    fn unproven_through_is_all_or_a_vector() {
        let parse = |text: &str| {
            let raw: RawConfig = toml::from_str(text).unwrap();
            Config::try_from(RawConfig { unproven_through: raw.unproven_through, ..minimal() }).map(|c| c.unproven)
        };
        assert_eq!(parse("").unwrap(), crate::origin::Unproven::None);
        assert_eq!(parse("unproven_through = \"all\"").unwrap(), crate::origin::Unproven::All);
        let crate::origin::Unproven::Through(vector) = parse("unproven_through = { n1 = 3 }").unwrap() else {
            panic!("a vector")
        };
        assert!(vector.covers(&"n1.3".parse().unwrap()) && !vector.covers(&"n1.4".parse().unwrap()));
        let refused = parse("unproven_through = \"some\"").unwrap_err().to_string();
        assert_eq!(
            refused,
            "option `unproven_through`: expected \"all\" or a table of node = last unproven seq, got \"some\""
        );
        assert!(parse("unproven_through = { \"a.b\" = 3 }").unwrap_err().to_string().contains("a.b"));
    }

    #[test]
    fn signing_roots_are_checked() {
        let section = |text: &str| toml::from_str::<SigningSection>(text).unwrap().trust("c");
        let refused = section("roots = [\"ed25519:00\"]").unwrap_err().to_string();
        assert!(refused.contains("roots: public key must be ed25519: and 64 hex digits"), "{refused}");
        let refused = section("unsigned_through = { n1 = 3 }").unwrap_err().to_string();
        assert!(refused.contains("unsigned_through needs roots"), "{refused}");
        let rule = "[[approvals]]\nprefix = \"payments/\"\nsignatures = 2\noperators = [\"alice\", \"bob\"]";
        let refused = section(rule).unwrap_err().to_string();
        assert!(refused.contains("approvals need roots"), "{refused}");
        let root = grapevine_proto::signing::SecretKey::from_seed([1; 32]).public();
        let trust = section(&format!("roots = [\"{root}\"]\n{rule}")).unwrap();
        assert_eq!(trust.approvals[0].signatures, 2);
        let zero =
            section(&format!("roots = [\"{root}\"]\n[[approvals]]\nprefix = \"p\"\nsignatures = 0")).unwrap_err();
        assert!(zero.to_string().contains("signatures must be 1 to 17, got 0"), "{zero}");
        assert!(!section("").unwrap().required());
    }
}
