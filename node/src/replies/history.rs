//! What `GET /v1/history` answers: the newest generations with their rollouts, or their audit
//! records (`?format=records`).

use grapevine_proto::policy::{Control, Policy};
use grapevine_proto::{Author, NodeName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Rollout;

/// `GET /v1/history`: the generations held whole, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub node: String,
    /// Generations held whole.
    pub total: usize,
    /// Generations folded into the snapshot (not listed).
    pub compacted: u64,
    pub generations: Vec<GenerationSummary>,
}

/// One generation as `history` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub id: String,
    pub origin: String,
    pub seq: u64,
    pub hlc: String,
    pub hash: String,
    /// Who submitted it, when recorded (wire format 4 on).
    pub author: Option<Author>,
    /// The operator key that signed it and the root that delegated that key (format 5 on).
    pub signed_by: Option<SignedBy>,
    pub members: Vec<NodeName>,
    pub ops: Vec<OpSummary>,
    pub policy: Policy,
    pub controls: Vec<Control>,
    /// The waves, reports and revert of a change (`null` for a control), as this node sees them.
    pub rollout: Option<Rollout>,
    /// Its governance record and approvals, where it has any (format 7 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<Governance>,
}

/// The key that signed a generation, and the root that delegated it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBy {
    pub key: String,
    pub root: String,
}

/// One operation of a generation: a flag's whole definition, or a config value's size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpSummary {
    SetFlag {
        key: String,
        /// The definition, its `$ref`s resolved.
        definition: Value,
    },
    PutConfig {
        key: String,
        /// The size of the value's JSON text.
        bytes: usize,
        /// Whether the op carries a JSON Schema for the key.
        schema: bool,
        /// The value, its secret parts redacted (`?values=true` only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
}

impl OpSummary {
    pub fn key(&self) -> &str {
        match self {
            OpSummary::SetFlag { key, .. } | OpSummary::PutConfig { key, .. } => key,
        }
    }
}

/// What a generation's terms say of the approval process: a proposal (`record: propose`, with
/// `keys` and `expires_ms`), a vote on one (`approve`, `reject`) or its enactment (`enact`),
/// these three with `proposal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Governance {
    pub record: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    pub approvals: Vec<GovernanceApproval>,
}

/// An approval an enactment carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernanceApproval {
    pub operator: Author,
    pub key: String,
}

/// `GET /v1/history?format=records`: the audit records, each as the `[audit]` sinks write it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecords {
    pub node: String,
    pub records: Vec<Value>,
}
