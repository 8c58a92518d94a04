//! What the reads answer: `GET /v1/flags/{key}` and `POST /v1/flags/{key}/evaluate`
//! (`FlagEvaluation`), `GET /v1/config/{key}` (`ConfigValue`), `GET /v1/keys` and `GET /v1/whoami`.

use grapevine_proto::eval::{ErrorCode, Reason};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A flag evaluated for a context, with the definition it was evaluated on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagEvaluation {
    pub key: String,
    /// `null` when no variant is served (disabled, no default, an error).
    pub value: Option<Value>,
    pub variant: Option<String>,
    pub reason: Reason,
    pub error_code: Option<ErrorCode>,
    pub error_message: Option<String>,
    /// The generation that set the flag.
    pub generation: String,
    /// The flagd definition, as JSON.
    pub definition: Value,
}

/// A config value and the generation that set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigValue {
    pub key: String,
    pub value: Value,
    pub generation: String,
}

/// `GET /v1/keys`: each key in scope with its applied and desired values side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Keys {
    pub node: String,
    pub flags: Vec<KeyEntry>,
    pub config: Vec<KeyEntry>,
    /// Whether keys were left out past the limit.
    pub truncated: bool,
}

/// One key: what this node serves (`null` before a rollout brings it) and the log's latest
/// (`null` for a key a revert is removing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub key: String,
    pub applied: Option<KeySide>,
    pub desired: Option<KeySide>,
}

/// One side of a key: its value (a flag's is its definition) and the generation that set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeySide {
    pub generation: String,
    pub value: Value,
}

/// `GET /v1/whoami`: who the node takes the caller for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    pub node: String,
    pub principal: String,
    pub role: String,
    /// Key prefixes in its scope (`""`: every key).
    pub prefixes: Vec<String>,
    pub authenticated: bool,
}
