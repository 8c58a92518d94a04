//! What `GET /v1/status` answers: the node, its log, its clock, its sources and files, its
//! `[signing]` and freeze windows, and every member in its gossip view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use grapevine_proto::approvals::ApprovalRule;
use serde::{Deserialize, Serialize};

/// `GET /readyz`: 200 when ready, 503 with what the node still waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// Live peers whose logs hold generations this node lacks.
    pub behind: Vec<String>,
    /// Generations whose wave is open for this node but that it has not applied yet.
    pub open_not_applied: Vec<String>,
    /// Why the store was damaged, while the node recovers from its peers (never ready then).
    pub recovering: Option<String>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub cluster: String,
    /// The node's cell and its representatives (a node of a version before cells sends none).
    #[serde(default)]
    pub cell: CellStatus,
    /// Generations held whole.
    pub generations: usize,
    /// Generations the snapshot covers.
    pub compacted: u64,
    /// Reverts held.
    pub reverted: usize,
    /// Each origin's highest contiguous seq, snapshot included.
    pub version_vector: BTreeMap<String, u64>,
    /// The latest applied generation, `null` when nothing is applied.
    pub applied: Option<String>,
    /// The first 16 hex digits of the applied state's digest.
    pub state_digest: String,
    /// Why the node is recovering its log from peers, if it is.
    pub recovering: Option<String>,
    /// Where the clock stands against the peers' (`null` before any was measured).
    pub clock: Option<Clock>,
    pub health: Vec<HealthSource>,
    pub files: Vec<FileStatus>,
    pub signing: Signing,
    pub freeze: Freeze,
    pub members: Vec<MemberStatus>,
    pub conflicts: Conflicts,
}

impl Status {
    /// The names of the members this node sees alive, itself included.
    pub fn alive(&self) -> impl Iterator<Item = &str> {
        self.members.iter().filter(|member| member.alive).map(|member| member.name.as_str())
    }
}

/// A node's cell (`docs/operations.md`, "Cells").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellStatus {
    pub name: String,
    /// Its representatives as this node sees them: the first live members in the cell's
    /// rendezvous order (`proto::cell::representatives`).
    pub representatives: Vec<String>,
}

/// This node's clock against its live peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// How far it runs ahead of the median of its peers' (negative: behind).
    pub ahead_ms: i64,
    /// Peers measured.
    pub peers: usize,
    pub max_offset_ms: u64,
    /// Whether it is past `max_offset_ms`, and so takes no changes.
    pub fenced: bool,
}

/// The last outcome of one health source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSource {
    pub source: String,
    pub ok: bool,
    pub detail: String,
}

/// The last outcome of one rendered file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    pub path: PathBuf,
    /// The generation that set the value, `null` once the file was removed.
    pub generation: Option<String>,
    pub ok: bool,
    pub detail: String,
}

/// This node's `[signing]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signing {
    /// Whether it takes only signed changes.
    pub required: bool,
    pub roots: Vec<String>,
    /// Of the root keys and approval rules (`none` without roots).
    pub fingerprint: String,
    pub approvals: Vec<ApprovalRule>,
}

/// This node's freeze windows, and the freeze in force now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub windows: Vec<String>,
    /// Equal on nodes that carry the same windows (`""` without windows).
    pub fingerprint: String,
    pub active: Option<ActiveFreeze>,
}

/// A freeze in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFreeze {
    pub window: String,
    pub until_ms: u64,
    /// `until_ms` in RFC 3339.
    pub until: String,
}

/// A member in the node's gossip view, with what it gossips (`null` where it has not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub gossip: SocketAddr,
    pub alive: bool,
    /// Whether it is the node that answers.
    #[serde(rename = "self")]
    pub is_self: bool,
    pub api: Option<String>,
    pub labels: Option<String>,
    pub generations: Option<u64>,
    pub version_vector: BTreeMap<String, u64>,
    pub applied: Option<String>,
    pub state_digest: Option<String>,
    /// The newest wire format it reads.
    pub wire: u8,
    /// The fingerprint of the roots its `[signing]` trusts; `null` for a build that publishes none.
    pub signing: Option<String>,
    /// How long ago this node last heard from it directly; `null` for itself or never.
    pub last_heard_ms: Option<u64>,
}

/// Other content under ids this node holds, and other processes under its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflicts {
    pub generations: Vec<String>,
    pub namesakes: Vec<Namesake>,
}

/// Another live process under this node's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namesake {
    pub address: SocketAddr,
    /// The start time it claims, ms since the Unix epoch.
    pub incarnation: u64,
}
