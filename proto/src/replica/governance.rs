//! Votes on proposals: what an operator's approval or rejection becomes, decided from the log
//! (`approvals::proposals`, a pure fold) and the cluster's rules (`Trust::check_rules`).
//!
//! - `vote(id, signed, vote, now_ms)` checks the vote against the proposal first, so that a
//!   refusal says what was expected (`ProposalError`): an unknown id, a proposal no longer
//!   pending, a key that signed it already, an approver out of scope. It answers what to write
//!   (`Ballot`): a `Reject` record; an `Approve` record when the signatures do not meet every
//!   rule yet; or, when this approval completes them, the enactment (the proposal's change and
//!   signature with all approvals) at once, so no node has to notice it later. A key that
//!   signed already may sign again only to enact a complete proposal whose enactment never came
//!   (the window passed, or its node went away).
//! - `ready_to_enact(now_ms)`: the pending proposals whose approval records, written apart on
//!   several nodes, complete their rules together, and whose newest record this node wrote:
//!   that node, not every node, enacts them. Two approvals that complete a proposal at once on
//!   two nodes each enact it: two generations of the same values, the later wins per key, which
//!   changes nothing (D79).

use super::{Replica, SubmitError};
use crate::approvals::{Proposal, ProposalState, proposals};
use crate::signing::Signed;
use crate::trust::check_scope;
use crate::{Author, GenId, Governance};

/// An approval or a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    Approve,
    Reject,
}

/// What a vote is written as.
#[derive(Debug)]
pub enum Ballot {
    /// A record signed by the voter (no operations, released everywhere at once).
    Record(Governance),
    /// The proposal's enactment, with every approval.
    Enact(Box<Proposal>, Vec<Signed>),
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

impl Replica {
    /// What `signed`'s vote on proposal `id` becomes, as of `now_ms` (see the module doc).
    pub fn vote(&self, id: GenId, signed: &Signed, vote: Vote, now_ms: u64) -> Result<Ballot, ProposalError> {
        let proposal = proposals(&self.log).remove(&id).ok_or_else(|| ProposalError::NotFound { id: id.clone() })?;
        let verb = if vote == Vote::Approve { "approved" } else { "rejected" };
        let state = proposal.state(now_ms);
        if state != ProposalState::Pending {
            let detail = match state {
                ProposalState::Expired => format!(" (it expired at {} ms; propose it again)", proposal.expires_ms),
                ProposalState::Enacted => format!(" (enacted as {})", proposal.enacted[0]),
                _ => String::new(),
            };
            return Err(ProposalError::NotPending { id, state: state.name(), verb, detail });
        }
        if vote == Vote::Reject {
            return Ok(Ballot::Record(Governance::Reject { proposal: id, digest: proposal.digest }));
        }
        let trust = &self.config.trust;
        let key = signed.delegation.key;
        let complete = |p: &Proposal| trust.check_rules(&p.change, p.signatures().map(|s| &s.delegation));
        if proposal.signed_by(&key) && complete(&proposal).is_err() {
            let operator = signed.delegation.operator.clone();
            return Err(ProposalError::AlreadySigned { id, operator, key: key.to_string() });
        }
        // The approver's scope, before anything is written: the record alone does not show it.
        check_scope(&signed.delegation, &proposal.change).map_err(SubmitError::from)?;
        let mut approvals = proposal.approval_signatures();
        approvals.retain(|approval| approval.delegation.key != key);
        approvals.push(signed.clone());
        let signers = std::iter::once(&proposal.proposer.delegation).chain(approvals.iter().map(|a| &a.delegation));
        if trust.check_rules(&proposal.change, signers).is_err() {
            let (digest, expires_ms) = (proposal.digest, proposal.expires_ms);
            return Ok(Ballot::Record(Governance::Approve { proposal: id, digest, expires_ms }));
        }
        Ok(Ballot::Enact(Box::new(proposal), approvals))
    }

    /// The pending proposals this node enacts now: their approval records complete their rules
    /// together, and this node wrote the newest one.
    pub fn ready_to_enact(&self, now_ms: u64) -> Vec<Proposal> {
        let (own, trust) = (&self.config.name, &self.config.trust);
        proposals(&self.log)
            .into_values()
            .filter(|p| p.state(now_ms) == ProposalState::Pending)
            .filter(|p| p.approvals.last().is_some_and(|(record, _)| record.origin == *own))
            .filter(|p| trust.check_rules(&p.change, p.signatures().map(|s| &s.delegation)).is_ok())
            .collect()
    }
}
