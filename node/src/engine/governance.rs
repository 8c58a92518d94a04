//! Proposals on this node: the views the API lists (`proposal_views`, from
//! `proto::approvals`' fold of the log), and the votes that add to them. What a vote becomes
//! is `Replica::vote`'s decision (`proto/src/replica/governance.rs`); the engine writes it.
//!
//! - `vote(proposal, signed, Vote)` asks the replica, then writes the record (`Approve`,
//!   `Reject`) or the enactment (`Enact`, the proposal's change and signature with every
//!   approval) through `submit`, like any change.
//! - `enact_pass` writes the enactments `Replica::ready_to_enact` finds, when a peer's approval
//!   record arrives.
//! - Records are generations without operations, under the emergency policy (one wave): they
//!   are released everywhere at once and apply nothing (`record_change`).

use grapevine_proto::approvals::{Proposal, conflicts, proposals};
use grapevine_proto::replica::{Ballot, Submission};
pub use grapevine_proto::replica::{ProposalError, Vote};
use grapevine_proto::signing::Signed;
use grapevine_proto::{Change, ContentHash, GenId, Generation, Governance, Terms};

use tracing::{info, warn};

use super::{Engine, SubmitError};
use crate::replies::{ProposalApproval, ProposalConflict, ProposalRejection, ProposalSummary};

/// A proposal as the API shows it, with the change and digest an approver signs.
#[derive(Debug, Clone)]
pub struct ProposalView {
    pub summary: ProposalSummary,
    pub change: Change,
    pub digest: ContentHash,
}

impl Engine {
    /// Every proposal of the log, oldest first, as of `now_ms`.
    pub(super) fn proposal_views(&self, now_ms: u64) -> Vec<ProposalView> {
        let mut views: Vec<ProposalView> =
            proposals(self.replica.log()).into_values().map(|proposal| self.view_of(&proposal, now_ms)).collect();
        views.sort_by(|a, b| a.summary.hlc.cmp(&b.summary.hlc));
        views
    }

    fn view_of(&self, proposal: &Proposal, now_ms: u64) -> ProposalView {
        let needed = self.parts.trust.approvals_needed(&proposal.change) + 1;
        let approvals = proposal.approvals.iter().map(|(record, signed)| ProposalApproval {
            operator: signed.delegation.operator.clone(),
            key: signed.delegation.key.to_string(),
            record: record.to_string(),
        });
        let conflicts = conflicts(self.replica.log(), proposal).into_iter().map(|(id, keys)| ProposalConflict {
            generation: id.to_string(),
            keys: keys.iter().map(ToString::to_string).collect(),
        });
        let rejected =
            proposal.rejected.as_ref().map(|(id, by)| ProposalRejection { record: id.to_string(), by: by.clone() });
        let summary = ProposalSummary {
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
        };
        ProposalView { summary, change: proposal.change.clone(), digest: proposal.digest }
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
        match self.replica.vote(id, &signed, vote, now_ms)? {
            Ballot::Record(governance) => Ok((self.record(signed, governance).await?, false)),
            Ballot::Enact(proposal, approvals) => Ok((self.enact(*proposal, approvals).await?, true)),
        }
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
    /// complete their rules together, when this node wrote the newest record. Runs when a
    /// peer's approval record arrives.
    pub(super) async fn enact_pass(&mut self, now_ms: u64) {
        for proposal in self.replica.ready_to_enact(now_ms) {
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
    Change { ops: Vec::new(), policy: grapevine_proto::policy::Policy::emergency(), controls: Vec::new() }
}
