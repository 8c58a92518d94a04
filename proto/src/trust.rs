//! Trust: who may change the fleet, decided by every node from the generation alone.
//!
//! A cluster trusts a few **root keys** (ed25519), named in every node's configuration like the
//! CA. A root signs a `Delegation`: an operator's name, public key, the key prefixes it may
//! change and an expiry. The operator signs each change with its key (`Signed`), over the
//! cluster id, the time it was issued, its name and the whole [`Change`] (operations, policy,
//! controls). A generation carries both, so any node checks it without asking anyone: the
//! delegation must be signed by a trusted root, the change by the delegated key, the node's
//! stamp must lie within [`ISSUE_WINDOW_MS`] of the issue time and before the expiry, the
//! author must be the operator, and every key must lie in its prefixes.
//!
//! The check depends on the generation and the node's configuration only, never on what the
//! node has received so far: a generation one node stores and another refuses would leave a
//! hole in its origin's sequence on the second for good. Revocation, which does depend on
//! history, is therefore not a refusal at storage: it is a change (a write of
//! `signing::revocation_key`) and every node reverts what a revoked key signed after it (see the
//! engine).
//!
//! A node holding a cluster certificate but no operator key cannot make a generation that
//! passes: it can only replay an operator's signed change, which then carries the same content
//! and, by the window, a stamp at most [`ISSUE_WINDOW_MS`] after its signing: for that long a
//! replay can bring the change's values back over a later write of its keys; after it, never.
//!
//! The keys, signatures and delegations are data below the model (`signing.rs`); this module
//! is the rule over them, above the model, the log and the approvals' records:
//!
//! - `change_message` is what an operator signs, `SecretKey::sign_change` signs it.
//! - `Trust` (cluster id, roots, `unsigned_through`, the approval rules): `check(body)`,
//!   `check_write` and `check_signed` are the whole acceptance rule, through `check_signer`,
//!   `check_author`, `check_window` and `check_scope`. Governance records and the approval rules
//!   (`approvals.rs` says what each signature covers) are checked here too: `check_governance`,
//!   `check_enact` (an `Enactment`), `check_rules`; `approvals_needed` says how many approvals
//!   a change needs.
//! - The revocation rule: `revocations(log)` (the earliest revocation per key, in fold order, by a
//!   key not revoked before it) and `revoked_after(log)` (the generations to revert).
//!   `revoked_after` counts an approver's key as it counts the operator's.
//! - Limits: `ISSUE_WINDOW_MS` (10 min); a proposal's `approvals::MAX_PROPOSAL_LIFETIME_MS`.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::approvals::{
    ApprovalRule, MAX_PROPOSAL_LIFETIME_MS, approval_message, proposal_digest, rejection_message, sorted,
};
use crate::hlc::Stamp;
use crate::log::Log;
use crate::model::{Change, GenerationBody, Governance, Op, Terms, VersionVector};
use crate::name::{Author, GenId};
use crate::signing::{Delegation, MAX_PREFIXES, PublicKey, SecretKey, Signed, SigningError, revoked_by};
use crate::snapshot::WriteProof;

/// How far a node's stamp on a signed change may lie from the time the operator signed it
/// (either way: the clocks of the operator's machine and the node differ). It bounds how late
/// a captured signed change can be replayed.
pub const ISSUE_WINDOW_MS: u64 = 10 * 60 * 1000;

/// The earliest revocation of each revoked operator key in `log` (its snapshot and its
/// generations): the first write of its [`revocation_key`](crate::signing::revocation_key) in
/// fold order, by a change whose own key was not revoked before it (a stolen key cannot revoke
/// its owner's colleagues after its own revocation). A revocation is final: reverting the change that wrote it does not restore
/// the key, since reverts are not signed (delegate a new key instead).
pub fn revocations(log: &Log) -> BTreeMap<PublicKey, (Stamp, GenId)> {
    let snapshot = log.base().writes().map(|w| ((w.hlc, &w.generation), w.proof.as_ref().map(|p| &p.signed), &w.op));
    let generations = log.iter().flat_map(|g| {
        let at = g.order_key();
        g.body.change.ops.iter().map(move |op| (at, g.body.signed.as_deref(), op))
    });
    let mut writes: Vec<_> = snapshot.chain(generations).filter(|(_, _, op)| revoked_by(op.key()).is_some()).collect();
    let mut revoked: BTreeMap<PublicKey, (Stamp, GenId)> = BTreeMap::new();
    if writes.is_empty() {
        return revoked;
    }
    writes.sort_by(|a, b| a.0.cmp(&b.0));
    for ((stamp, id), signed, op) in writes {
        let by_revoked =
            signed.and_then(|s| revoked.get(&s.delegation.key)).is_some_and(|at| (at.0, &at.1) < (stamp, id));
        if let (false, Some(public)) = (by_revoked, revoked_by(op.key())) {
            revoked.entry(public).or_insert_with(|| (stamp, id.clone()));
        }
    }
    revoked
}

/// The generations of `log`, not reverted yet, that a revoked key signed and that come after
/// its revocation in fold order: each is to be reverted. The rule reads only the log, so every
/// node holding the revocation and the generation reverts the same ones (and a node that
/// lacks the revocation learns the revert as any other).
pub fn revoked_after(log: &Log) -> Vec<(GenId, PublicKey)> {
    let revoked = revocations(log);
    if revoked.is_empty() {
        return Vec::new();
    }
    log.iter()
        .filter(|g| !log.is_reverted(g.id()))
        .filter_map(|g| {
            // The operator's key, and each approver's: an approval by a revoked key is void too.
            let approvals = g.body.terms.iter().flat_map(|terms| &terms.approvals);
            let keys = g.body.signed.iter().map(|signed| &**signed).chain(approvals).map(|s| s.delegation.key);
            keys.filter_map(|key| Some((revoked.get(&key)?, key)))
                .find(|((stamp, by), _)| g.order_key() > (*stamp, by))
                .map(|(_, key)| (g.id().clone(), key))
        })
        .collect()
}

/// Separate changes, and scheduled changes, from every other use of an operator's key.
const CHANGE_CONTEXT: &str = "grapevine change v1";
const SCHEDULED_CHANGE_CONTEXT: &str = "grapevine scheduled change v1";

/// What an operator signs: the change, and its scheduled start where it has one (a change
/// without one signs as before format 7, so signatures made then still verify).
fn change_message(
    cluster: &str,
    operator: &Author,
    issued_ms: u64,
    change: &Change,
    start_at_ms: Option<u64>,
) -> Vec<u8> {
    match start_at_ms {
        None => postcard::to_stdvec(&(CHANGE_CONTEXT, cluster, operator, issued_ms, change)),
        Some(at) => postcard::to_stdvec(&(SCHEDULED_CHANGE_CONTEXT, cluster, operator, issued_ms, change, at)),
    }
    .expect("a change always encodes")
}

impl SecretKey {
    /// Signs `change` for `cluster` under `delegation` (which must delegate this key), as
    /// issued at `issued_ms`, to start no earlier than `start_at_ms` where given.
    pub fn sign_change(
        &self,
        cluster: &str,
        delegation: Delegation,
        issued_ms: u64,
        change: &Change,
        start_at_ms: Option<u64>,
    ) -> Signed {
        let signature = self.sign(&change_message(cluster, &delegation.operator, issued_ms, change, start_at_ms));
        Signed { delegation, issued_ms, signature }
    }
}

/// What a node trusts: its cluster's id and root keys, and which unsigned generations it still
/// takes (those made before the cluster required signatures).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    pub cluster: String,
    /// No roots: signatures are not required (nor checked).
    pub roots: Vec<PublicKey>,
    /// Unsigned generations with `seq` up to this origin's entry are taken: the log as it was
    /// when the cluster turned signatures on.
    pub unsigned_through: VersionVector,
    /// How many operators must sign a change, by key prefix (four eyes; [`crate::approvals`]).
    pub approvals: Vec<ApprovalRule>,
}

impl Trust {
    pub fn required(&self) -> bool {
        !self.roots.is_empty()
    }

    /// A short name of the roots trusted (the first 16 hex digits of the SHA-256 of the sorted
    /// keys), `none` without roots: nodes that print the same one take the same changes.
    pub fn fingerprint(&self) -> String {
        if self.roots.is_empty() {
            return "none".to_owned();
        }
        let mut roots = self.roots.clone();
        roots.sort();
        roots.dedup();
        let mut digest = Sha256::new();
        for root in &roots {
            digest.update(root.0);
        }
        // Without rules the fingerprint is what builds before approvals printed.
        if !self.approvals.is_empty() {
            digest.update(postcard::to_stdvec(&sorted(&self.approvals)).expect("rules encode"));
        }
        hex::encode(digest.finalize())[..16].to_owned()
    }

    /// Checks a generation from an operator, a peer or a backup: its operator's signature, and
    /// the signatures its key prefixes' approval rules require ([`crate::approvals`]).
    pub fn check(&self, body: &GenerationBody) -> Result<(), SigningError> {
        if !self.required() {
            return Ok(());
        }
        let terms = body.terms.as_deref();
        if let Some(governance) = terms.and_then(|terms| terms.governance.as_ref()) {
            let signed = body
                .signed
                .as_deref()
                .ok_or_else(|| SigningError::Unsigned { what: format!("generation {}", body.id) })?;
            return self.check_governance(governance, signed, body, terms.expect("governance is in terms"));
        }
        match &body.signed {
            Some(signed) => {
                let start_at_ms = terms.and_then(|terms| terms.start_at_ms);
                self.check_signed(signed, &body.change, start_at_ms, body.hlc, body.author.as_ref())?;
                self.check_rules(&body.change, [&signed.delegation])
            }
            None if self.unsigned_through.covers(&body.id) => Ok(()),
            None => Err(SigningError::Unsigned { what: format!("generation {}", body.id) }),
        }
    }

    /// Checks a snapshot's write of generation `id`, stamped `hlc`.
    pub fn check_write(&self, op: &Op, id: &GenId, hlc: Stamp, proof: Option<&WriteProof>) -> Result<(), SigningError> {
        if !self.required() {
            return Ok(());
        }
        match proof {
            Some(WriteProof { change, signed, terms }) => {
                if !change.ops.contains(op) {
                    return Err(SigningError::ForeignWrite { key: op.key().clone() });
                }
                let start_at_ms = terms.as_ref().and_then(|terms| terms.start_at_ms);
                let operator = Some(&signed.delegation.operator);
                match terms.as_deref().and_then(|terms| terms.governance.as_ref()) {
                    Some(Governance::Enact { proposal, expires_ms }) => {
                        let approvals = terms.as_deref().map_or(&[][..], |terms| &terms.approvals[..]);
                        let enact = Enactment { proposal, expires_ms: *expires_ms, approvals };
                        self.check_enact(signed, change, start_at_ms, &enact, hlc, operator)
                    }
                    Some(_) => Err(SigningError::ForeignWrite { key: op.key().clone() }),
                    None => {
                        self.check_signed(signed, change, start_at_ms, hlc, operator)?;
                        self.check_rules(change, [&signed.delegation])
                    }
                }
            }
            None if self.unsigned_through.covers(id) => Ok(()),
            None => Err(SigningError::Unsigned { what: format!("the snapshot's write of {} by {id}", op.key()) }),
        }
    }

    /// Checks `signed` on `change` (to start at `start_at_ms`), as stamped `hlc` and recorded as
    /// by `author`.
    pub fn check_signed(
        &self,
        signed: &Signed,
        change: &Change,
        start_at_ms: Option<u64>,
        hlc: Stamp,
        author: Option<&Author>,
    ) -> Result<(), SigningError> {
        let message = change_message(&self.cluster, &signed.delegation.operator, signed.issued_ms, change, start_at_ms);
        self.check_signer(signed, &message, hlc)?;
        check_author(signed, author)?;
        check_window(signed.issued_ms, hlc)?;
        check_scope(&signed.delegation, change)
    }

    /// Checks that `signed` signs `message` under a delegation of a trusted root, unexpired at
    /// `hlc`.
    pub(crate) fn check_signer(&self, signed: &Signed, message: &[u8], hlc: Stamp) -> Result<(), SigningError> {
        let Signed { delegation, issued_ms: _, signature } = signed;
        let operator = &delegation.operator;
        if !self.roots.contains(&delegation.root) {
            return Err(SigningError::UnknownRoot { root: delegation.root });
        }
        if delegation.prefixes.len() > MAX_PREFIXES {
            return Err(SigningError::TooManyPrefixes { found: delegation.prefixes.len() });
        }
        if !delegation.signature.verifies(&delegation.root, &delegation.message(&self.cluster)) {
            let cluster = self.cluster.clone();
            return Err(SigningError::BadDelegation { operator: operator.clone(), root: delegation.root, cluster });
        }
        if !signature.verifies(&delegation.key, message) {
            return Err(SigningError::BadSignature { operator: operator.clone(), cluster: self.cluster.clone() });
        }
        if hlc.wall_ms > delegation.not_after_ms {
            let not_after_ms = delegation.not_after_ms;
            return Err(SigningError::Expired { operator: operator.clone(), not_after_ms, stamp_ms: hlc.wall_ms });
        }
        Ok(())
    }
}

/// The change is recorded as by the operator who signed it.
fn check_author(signed: &Signed, author: Option<&Author>) -> Result<(), SigningError> {
    let operator = &signed.delegation.operator;
    if author != Some(operator) {
        let found = author.map_or_else(|| "nobody".to_owned(), ToString::to_string);
        return Err(SigningError::WrongAuthor { operator: operator.clone(), found });
    }
    Ok(())
}

/// The stamp lies within [`ISSUE_WINDOW_MS`] of the time of signing.
fn check_window(issued_ms: u64, hlc: Stamp) -> Result<(), SigningError> {
    if hlc.wall_ms.abs_diff(issued_ms) > ISSUE_WINDOW_MS {
        let (stamp_ms, window_ms) = (hlc.wall_ms, ISSUE_WINDOW_MS);
        return Err(SigningError::OutsideWindow { issued_ms, stamp_ms, window_ms });
    }
    Ok(())
}

/// Every key of `change` lies under the delegation's prefixes, and only an unscoped
/// delegation signs controls.
pub fn check_scope(delegation: &Delegation, change: &Change) -> Result<(), SigningError> {
    let out_of_scope = |what: String| SigningError::OutOfScope {
        operator: delegation.operator.clone(),
        prefixes: delegation.prefixes.clone(),
        what,
    };
    if let Some(op) = change.ops.iter().find(|op| !delegation.covers(op.key())) {
        return Err(out_of_scope(format!("{} {}", op.kind(), op.key())));
    }
    if !delegation.prefixes.is_empty() && !change.controls.is_empty() {
        return Err(out_of_scope("a rollout control".to_owned()));
    }
    Ok(())
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
        body: &GenerationBody,
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

#[cfg(test)]
mod tests;
