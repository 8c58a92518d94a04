//! Approvals (four eyes): how many operators must sign a change, and the proposals that gather
//! their signatures, decided by every node from the generation alone.
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
//!   the approvals in `terms.approvals`. Checked as a whole ([`Trust::check_enact`]): the
//!   proposer's signature without the 10 minute window (a proposal waits for hours), every
//!   approval valid for this proposal, content and expiry, by a delegation of a trusted root
//!   covering every key, unexpired at the stamp; the stamp before the expiry and within
//!   [`ISSUE_WINDOW_MS`] of the newest signature (so a captured enactment replays as briefly as
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
use crate::signing::{
    Delegation, PublicKey, SecretKey, Signed, SigningError, Trust, change_message, check_author, check_scope,
    check_window,
};

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

fn rejection_message(
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

/// What an `Enact` record adds to a signed change: the proposal, its expiry and the approvals.
#[derive(Clone, Copy, Debug)]
pub struct Enactment<'a> {
    pub proposal: &'a GenId,
    pub expires_ms: u64,
    pub approvals: &'a [Signed],
}

impl Trust {
    /// Checks a governance record signed by `signed` (see the module's list).
    pub(crate) fn check_governance(
        &self,
        governance: &Governance,
        signed: &Signed,
        body: &crate::model::GenerationBody,
        terms: &Terms,
    ) -> Result<(), SigningError> {
        let (hlc, author) = (body.hlc, body.author.as_ref());
        let operator = &signed.delegation.operator;
        match governance {
            Governance::Propose { change, expires_ms } => {
                self.check_signed(signed, change, terms.start_at_ms, hlc, author)?;
                check_lifetime(signed.issued_ms, *expires_ms)?;
                check_unexpired(&body.id.to_string(), "proposal", *expires_ms, hlc.wall_ms)
            }
            Governance::Approve { proposal, digest, expires_ms } => {
                let message =
                    approval_message(&self.cluster, operator, signed.issued_ms, proposal, digest, *expires_ms);
                self.check_vote(signed, &message, hlc, "approval", proposal)?;
                check_author(signed, author)?;
                check_window(signed.issued_ms, hlc)?;
                check_unexpired(&proposal.to_string(), "approval", *expires_ms, signed.issued_ms.max(hlc.wall_ms))
            }
            Governance::Reject { proposal, digest } => {
                let message = rejection_message(&self.cluster, operator, signed.issued_ms, proposal, digest);
                self.check_vote(signed, &message, hlc, "rejection", proposal)?;
                check_author(signed, author)?;
                check_window(signed.issued_ms, hlc)
            }
            Governance::Enact { proposal, expires_ms } => {
                let enact = Enactment { proposal, expires_ms: *expires_ms, approvals: &terms.approvals };
                self.check_enact(signed, &body.change, terms.start_at_ms, &enact, hlc, author)
            }
        }
    }

    /// Checks an enacted proposal: the proposer's signature on `change`, every approval, the
    /// window on the newest signature, the expiry, and the rules of the change's keys.
    pub fn check_enact(
        &self,
        signed: &Signed,
        change: &Change,
        start_at_ms: Option<u64>,
        enact: &Enactment<'_>,
        hlc: Stamp,
        author: Option<&Author>,
    ) -> Result<(), SigningError> {
        let operator = &signed.delegation.operator;
        let message = change_message(&self.cluster, operator, signed.issued_ms, change, start_at_ms);
        self.check_signer(signed, &message, hlc)?;
        check_author(signed, author)?;
        check_scope(&signed.delegation, change)?;
        check_lifetime(signed.issued_ms, enact.expires_ms)?;
        let proposal = enact.proposal.to_string();
        check_unexpired(&proposal, "enactment", enact.expires_ms, hlc.wall_ms)?;
        let digest = proposal_digest(change, start_at_ms);
        let mut newest = signed.issued_ms;
        for approval in enact.approvals {
            let approver = &approval.delegation.operator;
            let message = approval_message(
                &self.cluster,
                approver,
                approval.issued_ms,
                enact.proposal,
                &digest,
                enact.expires_ms,
            );
            self.check_vote(approval, &message, hlc, "approval", enact.proposal)?;
            check_scope(&approval.delegation, change)?;
            check_unexpired(&proposal, "approval", enact.expires_ms, approval.issued_ms)?;
            newest = newest.max(approval.issued_ms);
        }
        check_window(newest, hlc)?;
        let approvers = enact.approvals.iter().map(|approval| &approval.delegation);
        self.check_rules(change, std::iter::once(&signed.delegation).chain(approvers))
    }

    /// Checks that every approval rule governing `change` counts enough distinct keys among
    /// `signers`.
    pub fn check_rules<'a>(
        &self,
        change: &Change,
        signers: impl IntoIterator<Item = &'a Delegation>,
    ) -> Result<(), SigningError> {
        let signers: Vec<&Delegation> = signers.into_iter().collect();
        for rule in self.approvals.iter().filter(|rule| rule.applies(change)) {
            let mut keys: BTreeSet<PublicKey> = BTreeSet::new();
            let mut names: Vec<&str> = Vec::new();
            for delegation in signers.iter().filter(|d| rule.counts(d)) {
                if keys.insert(delegation.key) {
                    names.push(delegation.operator.as_str());
                }
            }
            if keys.len() < rule.signatures {
                let among =
                    if rule.operators.is_empty() { String::new() } else { format!(" among {:?}", rule.operators) };
                let counted = if names.is_empty() { String::new() } else { format!(" ({})", names.join(", ")) };
                let (prefix, needed, found) = (rule.prefix.clone(), rule.signatures, keys.len());
                return Err(SigningError::MissingApprovals { prefix, needed, found, among, counted });
            }
        }
        Ok(())
    }

    /// The signatures `change` needs beyond its proposer's: the most any of its rules asks for,
    /// less one (0 when no rule governs it).
    pub fn approvals_needed(&self, change: &Change) -> usize {
        let rules = self.approvals.iter().filter(|rule| rule.applies(change));
        rules.map(|rule| rule.signatures).max().unwrap_or(0).saturating_sub(1)
    }

    /// `check_signer` for an approval or a rejection: a signature that does not verify is a
    /// forged (or misdirected) vote.
    fn check_vote(
        &self,
        signed: &Signed,
        message: &[u8],
        hlc: Stamp,
        what: &'static str,
        proposal: &GenId,
    ) -> Result<(), SigningError> {
        self.check_signer(signed, message, hlc).map_err(|error| match error {
            SigningError::BadSignature { operator, cluster } => {
                SigningError::BadApproval { what, operator, proposal: proposal.clone(), cluster }
            }
            other => other,
        })
    }
}

/// A proposal's expiry lies at most [`MAX_PROPOSAL_LIFETIME_MS`] after its signing.
fn check_lifetime(issued_ms: u64, expires_ms: u64) -> Result<(), SigningError> {
    if expires_ms > issued_ms.saturating_add(MAX_PROPOSAL_LIFETIME_MS) {
        let detail = format!(
            "a proposal may wait at most {MAX_PROPOSAL_LIFETIME_MS} ms from its signing at {issued_ms} ms, got an expiry at {expires_ms} ms"
        );
        return Err(SigningError::Governance { detail });
    }
    Ok(())
}

fn check_unexpired(proposal: &str, what: &'static str, expires_ms: u64, at_ms: u64) -> Result<(), SigningError> {
    if at_ms > expires_ms {
        let proposal = proposal.to_owned();
        return Err(SigningError::ProposalExpired { proposal, what, expires_ms, stamp_ms: at_ms });
    }
    Ok(())
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
