//! The JSON replies of the admin API as types: the handlers answer with them, and the CLI
//! client and the cluster tests read answers back into them, so the three cannot drift apart.
//!
//! **API Boundary:** the field names and shapes here are those `docs/api.md` documents; a
//! renamed or retyped field is a break for scripts. A field a reply holds only sometimes is an
//! `Option` that is left out when `None` (`skip_serializing_if`); one that is `null` when
//! absent is an `Option` without it. Parts that are free-form JSON (a flag definition, a
//! config value, an audit record) stay `serde_json::Value`.
//!
//! **Architecture Invariant:** this module depends on `proto` and serde only, never on the
//! engine, gossip or axum: the client and the tests import it without the server's internals.
//! The engine builds `Rollout` itself; the handlers convert the other views into these types.
//!
//! - `change.rs`: `ChangeReply` (`Accepted`, `DryRun`, `Unchanged`), what every change
//!   endpoint answers, with `SignChange`, what `?prepare=true` asks an operator to sign.
//! - `rollout.rs`: `Rollout` (`GET /v1/rollouts/{generation}`), `Rollouts`, `Rollback`.
//! - `history.rs`: `History` and its `GenerationSummary`, `AuditRecords`.
//! - `status.rs`: `Status` (`GET /v1/status`) and its parts, `Readiness` (`GET /readyz`).
//! - `read.rs`: `FlagEvaluation`, `ConfigValue`, `Keys`, `Whoami`.
//! - `proposal.rs`: `Proposals`, `ProposalShown`, `Proposed`, `Voted`.
//!
//! No type here is read back through `#[serde(untagged)]`, and those that `#[serde(flatten)]`
//! or are internally tagged (`OpSummary`) hold no float field in the buffered part: with
//! serde_json's `arbitrary_precision` (which the node needs to keep numbers as sent), serde
//! buffers numbers there in a form only integers and `Value`s read back. `ChangeReply` picks
//! its variant by hand instead; `tests.rs` reads every reply back.

use serde::{Deserialize, Serialize};

mod change;
mod history;
mod proposal;
mod read;
mod rollout;
mod status;

pub use change::{Accepted, ChangeReply, DiffEntry, DryRun, SignChange, Unchanged};
pub use history::{AuditRecords, GenerationSummary, Governance, GovernanceApproval, History, OpSummary, SignedBy};
pub use proposal::{
    ProposalApproval, ProposalConflict, ProposalDiff, ProposalRejection, ProposalShown, ProposalSummary, Proposals,
    Proposed, SignApproval, Voted,
};
pub use read::{ConfigValue, FlagEvaluation, KeyEntry, KeySide, Keys, Whoami};
pub use rollout::{Hold, Rollback, Rollout, Rollouts, Wave, WaveMember};
pub use status::{
    ActiveFreeze, CellStatus, Clock, Conflicts, FileStatus, Freeze, HealthSource, MemberStatus, Namesake, Readiness,
    Signing, Status,
};

/// What every refused or failed request answers: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// `{"ok": true}`: what `POST /v1/health` and the test-suite endpoints answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
}

impl Done {
    pub const OK: Done = Done { ok: true };
}

#[cfg(test)]
mod tests;
