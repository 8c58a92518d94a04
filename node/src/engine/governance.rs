//! Proposals on this node: what the log says of them (`proposals::proposals`, a pure fold in
//! `proto::approvals`), and the votes that add to them.
//!
//! - `views(now_ms)` lists every proposal of the log as a `ProposalView` with its state,
//!   signatures, the count its rules need and its conflicts (newer changes of its keys).
//! - `vote(proposal, signed, Vote)` takes an operator's approval or rejection, checked against
//!   the proposal first so that a refusal says what was expected (`ProposalError`): an unknown
//!   id, a proposal no longer pending, a key that signed it already, an approver out of scope or
//!   whose signature does not verify. An approval that makes the signatures meet every rule of
//!   the change writes the `Enact` generation at once (the proposal's change and signature, all
//!   approvals): the same step, so no node has to notice it later. Otherwise it writes an
//!   `Approve` record, as a rejection writes a `Reject` record. Two approvals that complete a
//!   proposal at once on two nodes each enact it: two generations of the same values, the later
//!   wins per key, which changes nothing (D79). Two approvals that complete it only together,
//!   each written as a record on its own node, are enacted by `enact_pass` on the node that
//!   wrote the newer record once it holds both; a key that signed already may sign again only to
//!   enact a complete proposal whose enactment never came (the window had passed).
//! - Records are generations without operations, under the emergency policy (one wave): they
//!   are released everywhere at once and apply nothing (`record_change`).

use grapevine_proto::approvals::{Proposal, ProposalState, conflicts, proposals};
use grapevine_proto::replica::Submission;
use grapevine_proto::signing::Signed;
use grapevine_proto::{Author, Change, ContentHash, GenId, Generation, Governance, Terms};
use serde::Serialize;

use tracing::{info, warn};

use super::{Engine, SubmitError};

/// An approval or a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    Approve,
    Reject,
}

/// Why a vote was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ProposalError {
    /// No proposal of this id in the log.
    #[error("no proposal {id} on this node (`grapevine change list` lists them)")]
    NotFound { id: GenId },
    /// The proposal is enacted, rejected or expired.
    #[error("proposal {id} is {state}, not pending: it cannot be {verb} any more{detail}")]
    NotPending { id: GenId, state: &'static str, verb: &'static str, detail: String },
    /// The key signed the proposal already (as proposer or approver).
    #[error(
        "proposal {id} is signed by {operator}'s key {key} already: an approval counts once per key, and another operator's is needed"
    )]
    AlreadySigned { id: GenId, operator: Author, key: String },
    /// The vote, or the generation it makes, was refused.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// A proposal as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProposalView {
    pub id: String,
    pub state: ProposalState,
    pub proposer: Author,
    pub proposer_key: String,
    /// The proposal's stamp.
    pub hlc: String,
    pub expires_ms: u64,
    pub start_at_ms: Option<u64>,
    pub keys: Vec<String>,
    /// The approvals gathered: operator, key, and the record that carries each.
    pub approvals: Vec<serde_json::Value>,
    /// Distinct keys that signed it, the proposer's included.
    pub signatures: usize,
    /// The signatures its strictest rule needs on this node (1 when no rule governs its keys).
    pub needed: usize,
    pub rejected: Option<serde_json::Value>,
    pub enacted: Vec<String>,
    /// Changes of its keys made after it: enacting it overwrites them.
    pub conflicts: Vec<serde_json::Value>,
    #[serde(skip)]
    pub change: Change,
    #[serde(skip)]
    pub digest: ContentHash,
}

fn state_name(state: ProposalState) -> &'static str {
    match state {
        ProposalState::Pending => "pending",
        ProposalState::Enacted => "enacted",
        ProposalState::Rejected => "rejected",
        ProposalState::Expired => "expired",
    }
}

impl Engine {
    /// Every proposal of the log, oldest first, as of `now_ms`.
    pub(super) fn proposal_views(&self, now_ms: u64) -> Vec<ProposalView> {
        let mut views: Vec<ProposalView> =
            proposals(self.replica.log()).into_values().map(|proposal| self.view_of(&proposal, now_ms)).collect();
        views.sort_by(|a, b| a.hlc.cmp(&b.hlc));
        views
    }

    fn view_of(&self, proposal: &Proposal, now_ms: u64) -> ProposalView {
        let needed = self.parts.trust.approvals_needed(&proposal.change) + 1;
        let approvals = proposal.approvals.iter().map(|(record, signed)| {
            serde_json::json!({
                "operator": signed.delegation.operator,
                "key": signed.delegation.key.to_string(),
                "record": record.to_string(),
            })
        });
        let conflicts = conflicts(self.replica.log(), proposal).into_iter().map(|(id, keys)| {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            serde_json::json!({ "generation": id.to_string(), "keys": keys })
        });
        let rejected =
            proposal.rejected.as_ref().map(|(id, by)| serde_json::json!({"record": id.to_string(), "by": by}));
        ProposalView {
            id: proposal.id.to_string(),
            state: proposal.state(now_ms),
            proposer: proposal.proposer.delegation.operator.clone(),
            proposer_key: proposal.proposer.delegation.key.to_string(),
            hlc: proposal.hlc.to_string(),
            expires_ms: proposal.expires_ms,
            start_at_ms: proposal.start_at_ms,
            keys: proposal.change.ops.iter().map(|op| op.key().to_string()).collect(),
            approvals: approvals.collect(),
            signatures: 1 + proposal.approvals.len(),
            needed,
            rejected,
            enacted: proposal.enacted.iter().map(ToString::to_string).collect(),
            conflicts: conflicts.collect(),
            change: proposal.change.clone(),
            digest: proposal.digest,
        }
    }

    /// Takes `signed`'s approval or rejection of `id`; returns the generation it became and
    /// whether that enacted the proposal.
    pub(super) async fn vote(
        &mut self,
        id: GenId,
        signed: Box<Signed>,
        vote: Vote,
        now_ms: u64,
    ) -> Result<(Generation, bool), ProposalError> {
        let proposal =
            proposals(self.replica.log()).remove(&id).ok_or_else(|| ProposalError::NotFound { id: id.clone() })?;
        let verb = if vote == Vote::Approve { "approved" } else { "rejected" };
        let state = proposal.state(now_ms);
        if state != ProposalState::Pending {
            let detail = match state {
                ProposalState::Expired => format!(" (it expired at {} ms; propose it again)", proposal.expires_ms),
                ProposalState::Enacted => format!(" (enacted as {})", proposal.enacted[0]),
                _ => String::new(),
            };
            return Err(ProposalError::NotPending { id, state: state_name(state), verb, detail });
        }
        if vote == Vote::Reject {
            let governance = Governance::Reject { proposal: id, digest: proposal.digest };
            return Ok((self.record(signed, governance).await?, false));
        }
        let key = signed.delegation.key;
        let complete = |p: &Proposal| self.parts.trust.check_rules(&p.change, p.signatures().map(|s| &s.delegation));
        // A key that signed already adds nothing, unless the signatures are complete and the
        // enactment never came (two approvals racing, its node gone): then a fresh signature
        // enacts it within the window again.
        if proposal.signed_by(&key) && complete(&proposal).is_err() {
            let operator = signed.delegation.operator.clone();
            return Err(ProposalError::AlreadySigned { id, operator, key: key.to_string() });
        }
        // The approver's scope, before anything is written: the record alone does not show it.
        grapevine_proto::signing::check_scope(&signed.delegation, &proposal.change).map_err(SubmitError::from)?;
        let mut approvals = proposal.approval_signatures();
        approvals.retain(|approval| approval.delegation.key != key);
        approvals.push((*signed).clone());
        let signers = std::iter::once(&proposal.proposer.delegation).chain(approvals.iter().map(|a| &a.delegation));
        if self.parts.trust.check_rules(&proposal.change, signers).is_err() {
            let (digest, expires_ms) = (proposal.digest, proposal.expires_ms);
            let governance = Governance::Approve { proposal: id, digest, expires_ms };
            return Ok((self.record(signed, governance).await?, false));
        }
        Ok((self.enact(proposal, approvals).await?, true))
    }

    /// Writes the enactment of `proposal` with `approvals`.
    async fn enact(&mut self, proposal: Proposal, approvals: Vec<Signed>) -> Result<Generation, SubmitError> {
        let governance = Some(Governance::Enact { proposal: proposal.id, expires_ms: proposal.expires_ms });
        let terms = Terms { start_at_ms: proposal.start_at_ms, approvals, governance };
        let proposer = Some(Box::new(proposal.proposer));
        self.submit(Submission {
            change: proposal.change,
            author: None,
            signed: proposer,
            terms: Some(Box::new(terms)),
        })
        .await
    }

    /// Enacts the pending proposals whose approval records, written apart on several nodes,
    /// complete their rules together: the node that wrote the newest record does, so that one
    /// node, not every node, writes the enactment. Runs when a peer's approval record arrives.
    pub(super) async fn enact_pass(&mut self, now_ms: u64) {
        let own = self.parts.name.clone();
        let ready: Vec<Proposal> = proposals(self.replica.log())
            .into_values()
            .filter(|p| p.state(now_ms) == ProposalState::Pending)
            .filter(|p| p.approvals.last().is_some_and(|(record, _)| record.origin == own))
            .filter(|p| self.parts.trust.check_rules(&p.change, p.signatures().map(|s| &s.delegation)).is_ok())
            .collect();
        for proposal in ready {
            let (id, approvals) = (proposal.id.clone(), proposal.approval_signatures());
            match self.enact(proposal, approvals).await {
                Ok(generation) => {
                    info!(proposal = %id, generation = %generation.id(), "enacted a proposal its approvals completed")
                }
                Err(error) => warn!(proposal = %id, %error, "could not enact a proposal its approvals completed"),
            }
        }
    }

    /// Writes a record (no operations, one wave) signed by `signed`.
    async fn record(&mut self, signed: Box<Signed>, governance: Governance) -> Result<Generation, SubmitError> {
        let change = record_change();
        let terms = Terms { governance: Some(governance), ..Terms::default() };
        self.submit(Submission { change, author: None, signed: Some(signed), terms: Some(Box::new(terms)) }).await
    }
}

/// The change of a governance record: no operations, released everywhere at once.
pub fn record_change() -> Change {
    Change { ops: Vec::new(), policy: grapevine_proto::rollout::Policy::emergency(), controls: Vec::new() }
}
