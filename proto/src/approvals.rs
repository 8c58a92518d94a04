//! Approvals (four eyes): how many operators must sign a change, what each approval signs, and
//! the proposals that gather the signatures, decided by every node from the generation alone.
//! The rules and the records are data here; `trust.rs` checks them with the rest of a
//! generation's signatures (`Trust::check_governance`, `check_enact`, `check_rules`).
//!
//! A node's `[signing]` names **approval rules** by key prefix ([`ApprovalRule`]: `payments/`
//! needs 2 distinct operator keys, optionally only of some operators). A change that touches a
//! rule's keys is stored only when it carries that many signatures the rule counts; every rule
//! its keys fall under must be met (so the largest count wins). Controls-only generations and
//! reverts need none: an automatic revert never waits for a person.
//!
//! One signature comes with the change as today (`GenerationBody::signed`); the others travel in
//! the generation's [`Terms::approvals`], gathered by a **proposal**. The records, each a
//! generation with a [`Governance`] in its terms, signed by whoever made it in `signed`:
//!
//! - `Propose { change, expires_ms }`: no operations; `signed` is the proposer's signature over
//!   the change and its start (the one a plain change carries), checked as one, with the window
//!   and the scope; the expiry may lie at most [`MAX_PROPOSAL_LIFETIME_MS`] after its signing.
//! - `Approve { proposal, digest, expires_ms }`: `signed` is the approver's signature over
//!   [`approval_message`] (cluster, approver, issue time, proposal id, [`proposal_digest`] of
//!   the change and its start, expiry), in a context of its own: an approval binds to one
//!   proposal and one content, and cannot be replayed as a change or for another proposal.
//! - `Reject { proposal, digest }`: the same, in the rejection context.
//! - `Enact { proposal, expires_ms }`: the proposal's change and the proposer's `signed`, with
//!   the approvals in `terms.approvals`. Checked as a whole (`Trust::check_enact`): the
//!   proposer's signature without the 10 minute window (a proposal waits for hours), every
//!   approval valid for this proposal, content and expiry, by a delegation of a trusted root
//!   covering every key, unexpired at the stamp; the stamp before the expiry and within
//!   `ISSUE_WINDOW_MS` of the newest signature (so a captured enactment replays as briefly as
//!   a signed change); and the rules met, counting distinct keys (the proposer's own approval
//!   counts once).
//!
//! A proposal's state (pending, enacted, rejected, expired) and its approvals are a fold of the
//! log ([`proposals`]); [`pinned`] names the records compaction must keep while their proposal
//! is pending, and [`conflicts`] the newer changes of a proposal's keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hlc::Stamp;
use crate::log::Log;
use crate::model::{Change, ContentHash, Generation, Governance, Terms};
use crate::name::{Author, GenId, Key};
use crate::signing::{Delegation, PublicKey, SecretKey, Signed};

/// The longest a proposal may wait for its approvals, from its signing. A node cannot stretch
/// a proposal's expiry further (the proposer's signature does not cover it; this bound does).
pub const MAX_PROPOSAL_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long a proposal waits unless the proposer says otherwise.
pub const DEFAULT_PROPOSAL_LIFETIME_MS: u64 = 24 * 3600 * 1000;

/// Most approvals one generation carries: four eyes need one, a board a handful.
pub const MAX_APPROVALS: usize = 16;

/// Most approval rules in one node's configuration; each is checked against every change.
pub const MAX_APPROVAL_RULES: usize = 64;

const APPROVAL_CONTEXT: &str = "grapevine approval v1";
const REJECTION_CONTEXT: &str = "grapevine rejection v1";
const DIGEST_CONTEXT: &str = "grapevine proposal v1";

/// How many distinct operator keys must sign a change of keys under `prefix`; with
/// `operators`, only the signatures of those operators (by name, or `ed25519:` key) count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ApprovalRule {
    pub prefix: String,
    pub signatures: usize,
    pub operators: Vec<String>,
}

impl ApprovalRule {
    /// Whether the rule governs `change`: one of its keys lies under the prefix.
    pub fn applies(&self, change: &Change) -> bool {
        change.ops.iter().any(|op| op.key().as_str().starts_with(&self.prefix))
    }

    /// Whether the rule counts a signature under `delegation`.
    pub fn counts(&self, delegation: &Delegation) -> bool {
        let named = |o: &String| *o == delegation.operator.as_str() || *o == delegation.key.to_string();
        self.operators.is_empty() || self.operators.iter().any(named)
    }
}

/// The rules in a canonical order, for the fingerprint.
pub(crate) fn sorted(rules: &[ApprovalRule]) -> Vec<ApprovalRule> {
    let mut rules: Vec<ApprovalRule> = rules.to_vec();
    for rule in &mut rules {
        rule.operators.sort();
    }
    rules.sort();
    rules
}

/// The digest an approval signs for a proposal's content: its change and its start.
pub fn proposal_digest(change: &Change, start_at_ms: Option<u64>) -> ContentHash {
    let bytes = postcard::to_stdvec(&(DIGEST_CONTEXT, change, start_at_ms)).expect("a change always encodes");
    ContentHash(Sha256::digest(&bytes).into())
}

/// What an approver signs.
pub fn approval_message(
    cluster: &str,
    operator: &Author,
    issued_ms: u64,
    proposal: &GenId,
    digest: &ContentHash,
    expires_ms: u64,
) -> Vec<u8> {
    postcard::to_stdvec(&(APPROVAL_CONTEXT, cluster, operator, issued_ms, proposal, digest, expires_ms))
        .expect("an approval always encodes")
}

pub(crate) fn rejection_message(
    cluster: &str,
    operator: &Author,
    issued_ms: u64,
    proposal: &GenId,
    digest: &ContentHash,
) -> Vec<u8> {
    postcard::to_stdvec(&(REJECTION_CONTEXT, cluster, operator, issued_ms, proposal, digest))
        .expect("a rejection always encodes")
}

impl SecretKey {
    /// Approves `proposal` (of `digest`, expiring at `expires_ms`) for `cluster`, as issued at
    /// `issued_ms`.
    pub fn sign_approval(
        &self,
        cluster: &str,
        delegation: Delegation,
        issued_ms: u64,
        proposal: &GenId,
        digest: &ContentHash,
        expires_ms: u64,
    ) -> Signed {
        let message = approval_message(cluster, &delegation.operator, issued_ms, proposal, digest, expires_ms);
        Signed { signature: self.sign(&message), delegation, issued_ms }
    }

    /// Rejects `proposal` (of `digest`) for `cluster`, as issued at `issued_ms`.
    pub fn sign_rejection(
        &self,
        cluster: &str,
        delegation: Delegation,
        issued_ms: u64,
        proposal: &GenId,
        digest: &ContentHash,
    ) -> Signed {
        let message = rejection_message(cluster, &delegation.operator, issued_ms, proposal, digest);
        Signed { signature: self.sign(&message), delegation, issued_ms }
    }
}

/// A proposal, as the log tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub id: GenId,
    pub hlc: Stamp,
    pub change: Change,
    pub start_at_ms: Option<u64>,
    pub expires_ms: u64,
    pub digest: ContentHash,
    /// The proposer's signature on the change: the one its enactment carries.
    pub proposer: Signed,
    /// Approvals by keys other than the proposer's, one per key, in fold order, with the
    /// record that carries each.
    pub approvals: Vec<(GenId, Signed)>,
    /// The first rejection in fold order, and by whom.
    pub rejected: Option<(GenId, Author)>,
    /// The generations that enacted it (two nodes may enact it at once: the same values).
    pub enacted: Vec<GenId>,
}

/// Where a proposal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    Pending,
    Enacted,
    Rejected,
    Expired,
}

impl ProposalState {
    /// `pending`, `enacted`, `rejected` or `expired`: its name in the API and in errors.
    pub fn name(self) -> &'static str {
        match self {
            ProposalState::Pending => "pending",
            ProposalState::Enacted => "enacted",
            ProposalState::Rejected => "rejected",
            ProposalState::Expired => "expired",
        }
    }
}

impl Proposal {
    pub fn state(&self, now_ms: u64) -> ProposalState {
        if !self.enacted.is_empty() {
            ProposalState::Enacted
        } else if self.rejected.is_some() {
            ProposalState::Rejected
        } else if now_ms > self.expires_ms {
            ProposalState::Expired
        } else {
            ProposalState::Pending
        }
    }

    /// Every signature gathered so far: the proposer's, then the approvals.
    pub fn signatures(&self) -> impl Iterator<Item = &Signed> {
        std::iter::once(&self.proposer).chain(self.approvals.iter().map(|(_, signed)| signed))
    }

    /// Whether `key` has signed it already (as proposer or approver).
    pub fn signed_by(&self, key: &PublicKey) -> bool {
        self.signatures().any(|signed| signed.delegation.key == *key)
    }

    /// The approvals an enactment carries.
    pub fn approval_signatures(&self) -> Vec<Signed> {
        self.approvals.iter().map(|(_, signed)| signed.clone()).collect()
    }
}

/// The proposals of `log`, by id: a fold of its governance records in fold order, reverted ones
/// left out. A record that names a proposal the log does not hold, or another content, is
/// ignored.
pub fn proposals(log: &Log) -> BTreeMap<GenId, Proposal> {
    let records: Vec<(&Generation, &Terms, &Governance)> = log
        .in_fold_order()
        .filter(|g| !log.is_reverted(g.id()))
        .filter_map(|g| {
            let terms = g.body.terms.as_deref()?;
            Some((g, terms, terms.governance.as_ref()?))
        })
        .collect();
    let mut proposals = BTreeMap::new();
    for (generation, terms, governance) in &records {
        if let (Governance::Propose { change, expires_ms }, Some(signed)) = (governance, &generation.body.signed) {
            let id = generation.id().clone();
            let proposal = Proposal {
                id: id.clone(),
                hlc: generation.body.hlc,
                change: change.clone(),
                start_at_ms: terms.start_at_ms,
                expires_ms: *expires_ms,
                digest: proposal_digest(change, terms.start_at_ms),
                proposer: (**signed).clone(),
                approvals: Vec::new(),
                rejected: None,
                enacted: Vec::new(),
            };
            proposals.insert(id, proposal);
        }
    }
    for (generation, terms, governance) in records {
        record(&mut proposals, generation, terms, governance);
    }
    proposals
}

/// Folds one approval, rejection or enactment into its proposal.
fn record(proposals: &mut BTreeMap<GenId, Proposal>, generation: &Generation, terms: &Terms, governance: &Governance) {
    let id = generation.id().clone();
    let signed = generation.body.signed.as_deref();
    match governance {
        Governance::Propose { .. } => {}
        Governance::Approve { proposal, digest, expires_ms } => {
            let Some(proposal) = proposals.get_mut(proposal) else { return };
            let Some(signed) = signed else { return };
            let matches = proposal.digest == *digest && proposal.expires_ms == *expires_ms;
            if matches && !proposal.signed_by(&signed.delegation.key) {
                proposal.approvals.push((id, signed.clone()));
            }
        }
        Governance::Reject { proposal, digest } => {
            let Some(proposal) = proposals.get_mut(proposal) else { return };
            if proposal.digest == *digest && proposal.rejected.is_none() {
                let by = signed.map_or_else(|| Author::lossy("unknown"), |s| s.delegation.operator.clone());
                proposal.rejected = Some((id, by));
            }
        }
        Governance::Enact { proposal, .. } => {
            let Some(proposal) = proposals.get_mut(proposal) else { return };
            if proposal.digest == proposal_digest(&generation.body.change, terms.start_at_ms) {
                proposal.enacted.push(id);
            }
        }
    }
}

/// The records compaction must keep whole at `now_ms`: each pending proposal and its approvals
/// (folded into the snapshot, which keeps only writes, they would be forgotten).
pub fn pinned(log: &Log, now_ms: u64) -> BTreeSet<GenId> {
    let pending = proposals(log).into_values().filter(|p| p.state(now_ms) == ProposalState::Pending);
    pending.flat_map(|p| std::iter::once(p.id).chain(p.approvals.into_iter().map(|(id, _)| id))).collect()
}

/// The changes of `proposal`'s keys made after it was proposed and not reverted (its own
/// enactments left out), each with the keys it shares: enacting the proposal would overwrite
/// them.
pub fn conflicts(log: &Log, proposal: &Proposal) -> Vec<(GenId, Vec<Key>)> {
    let keys: BTreeSet<(&str, &Key)> = proposal.change.ops.iter().map(|op| (op.kind(), op.key())).collect();
    let after = (proposal.hlc, &proposal.id);
    log.in_fold_order()
        .filter(|g| g.order_key() > after && !log.is_reverted(g.id()) && !proposal.enacted.contains(g.id()))
        .filter_map(|g| {
            let shared: Vec<Key> = g
                .body
                .change
                .ops
                .iter()
                .filter(|op| keys.contains(&(op.kind(), op.key())))
                .map(|op| op.key().clone())
                .collect();
            (!shared.is_empty()).then(|| (g.id().clone(), shared))
        })
        .collect()
}

#[cfg(test)]
mod tests;
