//! What the change endpoints answer (`POST /v1/flags/{key}`, `POST /v1/config/{key}`,
//! `POST /v1/apply`, `POST /v1/changes`, `POST /v1/rollouts/{generation}/{pause|resume|promote}`).

use grapevine_proto::policy::Policy;
use grapevine_proto::{Author, Generation, NodeName};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// One change request's answer: stored, previewed, or nothing to do.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ChangeReply {
    Accepted(Accepted),
    DryRun(DryRun),
    Unchanged(Unchanged),
}

impl ChangeReply {
    /// The generation it is or would be, unless there was nothing to change.
    pub fn generation(&self) -> Option<&str> {
        match self {
            ChangeReply::Accepted(accepted) => Some(&accepted.generation),
            ChangeReply::DryRun(dry_run) => Some(&dry_run.generation),
            ChangeReply::Unchanged(_) => None,
        }
    }

    /// How many flags of a file it ships (`POST /v1/apply` only).
    pub fn changed(&self) -> Option<usize> {
        match self {
            ChangeReply::Accepted(accepted) => accepted.changed,
            ChangeReply::DryRun(dry_run) => dry_run.changed,
            ChangeReply::Unchanged(unchanged) => Some(unchanged.changed),
        }
    }
}

impl<'de> Deserialize<'de> for ChangeReply {
    /// By its fields: `dry_run: true` is a preview, a `generation` a stored change, else
    /// nothing was changed. (Not `untagged`: see the module's note on `arbitrary_precision`.)
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let reply = if value.get("dry_run") == Some(&Value::Bool(true)) {
            serde_json::from_value(value).map(ChangeReply::DryRun)
        } else if value.get("generation").is_some() {
            serde_json::from_value(value).map(ChangeReply::Accepted)
        } else {
            serde_json::from_value(value).map(ChangeReply::Unchanged)
        };
        reply.map_err(D::Error::custom)
    }
}

/// A change stored on the node that answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub generation: String,
    pub hlc: String,
    pub hash: String,
    pub members: Vec<NodeName>,
    /// Who submitted it, as recorded (`null` when nobody said).
    pub author: Option<Author>,
    /// Its scheduled start, Unix ms, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<u64>,
    /// The same start in RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// How many other nodes held it when the node answered (`?wait_replicas=K`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// The flags of a file it ships (`POST /v1/apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<usize>,
}

impl Accepted {
    /// The answer for `generation`, stored: its start from its terms, no replica count yet.
    pub fn of(generation: &Generation) -> Accepted {
        let start_at_ms = generation.body.terms.as_ref().and_then(|terms| terms.start_at_ms);
        Accepted {
            generation: generation.id().to_string(),
            hlc: generation.body.hlc.to_string(),
            hash: generation.hash.to_string(),
            members: generation.body.members.to_vec(),
            author: generation.body.author.clone(),
            start_at_ms,
            start_at: start_at_ms.map(grapevine_proto::schedule::rfc3339),
            replicas: None,
            changed: None,
        }
    }
}

/// What a change would do (`?dry_run=true`), stored nowhere; with `?prepare=true`, also what an
/// operator signs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// Always `true`: what tells a preview from a stored change.
    pub dry_run: bool,
    /// The id it would take on this node now.
    pub generation: String,
    pub policy: Policy,
    /// Its waves, from the members alive now.
    pub waves: Vec<Vec<NodeName>>,
    pub diff: Vec<DiffEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<SignChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<usize>,
}

/// What a change does to one key: its desired value before (`null` for a new key), and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffEntry {
    /// `flag` or `config`.
    pub kind: String,
    pub key: String,
    pub before: Option<Value>,
    pub after: Value,
}

/// What an operator signs to store a prepared change (`POST /v1/changes` takes it back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignChange {
    pub cluster: String,
    /// The node's wire format: the change decodes only with a client of the same.
    pub format: u64,
    /// The node's clock, the issue time signed.
    pub issued_ms: u64,
    /// The change, postcard in hex.
    pub change: String,
    /// The scheduled start signed with it (Unix ms), or `null`.
    pub start_at_ms: Option<u64>,
}

/// `POST /v1/apply` of a file whose flags are all the log's latest: nothing submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unchanged {
    /// Always 0.
    pub changed: usize,
    pub message: String,
}
