//! `grapevine change ...`: proposals that wait for other operators' approvals (four eyes).
//!
//! - `propose` prepares the change on the node exactly as `flag set`, `config put` or `apply` do
//!   (`ChangeRequest`, `?prepare=true`), checks and signs it with the operator's key
//!   (`Signer::sign`), and posts it with its expiry (`--expires-in`, 24 h by default) to
//!   `POST /v1/proposals`. With `--dry-run` it shows the diff only.
//! - `list` and `show` read `GET /v1/proposals[/{id}]`; `show` prints the diff against the
//!   node's applied values and the newer changes the proposal conflicts with.
//! - `vote` (`approve`, `reject`) reads the proposal, warns of its conflicts, signs it
//!   (`Signer::sign_vote`, which checks the change against the digest signed) and posts
//!   `POST /v1/proposals/{id}/{approve|reject}`.
//!
//! Every command prints the node's JSON with `--json`.

use reqwest::Method;
use serde_json::Value;

use super::args::ChangeArgs;
use super::signing::KeyFile;
use super::{Answer, ChangeRequest, CliError, Client, nothing_to_sign, print_json, report_accepted};
use crate::replies::{ChangeReply, DryRun, ProposalShown, ProposalSummary, Proposals, Proposed, Voted};
use grapevine_proto::approvals::ProposalState;

/// An approval or a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    Approve,
    Reject,
}

fn signer_of(client: &Client, what: &str) -> Result<super::signing::Signer, CliError> {
    let Some(file) = client.signing_key.as_deref() else {
        return Err(CliError::Usage(format!(
            "{what} is signed: give your operator key with --signing-key FILE (or GRAPEVINE_SIGNING_KEY)"
        )));
    };
    KeyFile::read(file)?.signer()
}

/// `change propose ...`.
pub async fn propose(
    client: &Client,
    request: ChangeRequest,
    change: &ChangeArgs,
    expires_in_ms: u64,
) -> Result<(), CliError> {
    let ChangeRequest { path, body, mut intent, what } = request;
    intent.start = change.start_intent()?;
    if change.dry_run {
        let answer = client.change(&path, &change.query(), Some(body), &intent).await?;
        report_accepted(client, &what, &answer);
        return Ok(());
    }
    let signer = signer_of(client, "a proposal")?;
    let prepared = client.prepare(&path, &change.query(), Some(body)).await?;
    let sign = match &prepared.reply {
        ChangeReply::DryRun(DryRun { sign: Some(sign), .. }) => sign,
        // Nothing to change (`apply` of flags that are already the latest).
        ChangeReply::Unchanged(unchanged) => {
            println!("{}", unchanged.message);
            return Ok(());
        }
        _ => return Err(nothing_to_sign(&prepared.raw)),
    };
    let mut proposal = signer.sign(sign, &intent)?;
    proposal["expires_ms"] = sign.issued_ms.saturating_add(expires_in_ms).into();
    // A scheduled start, where the node prepared one, is signed with the change and kept.
    if let Some(start_at_ms) = sign.start_at_ms {
        proposal["start_at_ms"] = start_at_ms.into();
    }
    let answer: Answer<Proposed> = client.request_as(Method::POST, "/v1/proposals", &[], Some(proposal)).await?;
    if client.json {
        print_json(&answer.raw);
        return Ok(());
    }
    let Proposed { proposal: id, approvals_needed: needed, expires_ms, .. } = &answer.reply;
    println!(
        "proposed {what} as {id} on {}: it applies nowhere until {needed} more operator(s) approve it \
         (`grapevine change approve {id}`), within {}",
        client.base(),
        remaining(*expires_ms)
    );
    Ok(())
}

/// The time left until `expires_ms`, like `23h59m` (`expired` once past).
fn remaining(expires_ms: u64) -> String {
    let left_ms = expires_ms.saturating_sub(crate::clock::unix_ms());
    if left_ms == 0 {
        return "expired".to_owned();
    }
    let minutes = left_ms.div_ceil(60_000);
    format!("{}h{:02}m", minutes / 60, minutes % 60)
}

/// `change list [--all]`.
pub async fn list(client: &Client, all: bool) -> Result<(), CliError> {
    let mut answer: Answer<Proposals> = client.request_as(Method::GET, "/v1/proposals", &[], None).await?;
    if !all {
        let pending: Vec<bool> = answer.reply.proposals.iter().map(|p| p.state == ProposalState::Pending).collect();
        answer.reply.proposals.retain(|p| p.state == ProposalState::Pending);
        // The JSON printed keeps the same ones, in the same order.
        if let Some(listed) = answer.raw.get_mut("proposals").and_then(Value::as_array_mut) {
            let mut keep = pending.into_iter();
            listed.retain(|_| keep.next().unwrap_or(false));
        }
    }
    if client.json {
        print_json(&answer.raw);
        return Ok(());
    }
    let Proposals { node, proposals } = &answer.reply;
    if proposals.is_empty() {
        println!("no {}proposals on {node}", if all { "" } else { "pending " });
        return Ok(());
    }
    println!("{:<12} {:<9} {:<7} {:<16} {:<10} KEYS", "ID", "STATE", "SIGNED", "PROPOSER", "EXPIRES");
    for p in proposals {
        let signed = format!("{}/{}", p.signatures, p.needed);
        let pending = p.state == ProposalState::Pending;
        let expires = if pending { remaining(p.expires_ms) } else { "-".into() };
        let conflict = if p.conflicts.is_empty() { "" } else { " (CONFLICTS)" };
        println!(
            "{:<12} {:<9} {:<7} {:<16} {:<10} {}{conflict}",
            p.id,
            p.state.name(),
            signed,
            p.proposer.as_str(),
            expires,
            p.keys.join(", ")
        );
    }
    Ok(())
}

fn proposal_path(id: &str) -> Result<String, CliError> {
    id.parse::<grapevine_proto::GenId>().map_err(|e| CliError::Usage(format!("proposal: {e}")))?;
    Ok(format!("/v1/proposals/{id}"))
}

/// `change show ID`.
pub async fn show(client: &Client, id: &str) -> Result<(), CliError> {
    let mut answer: Answer<ProposalShown> = client.request_as(Method::GET, &proposal_path(id)?, &[], None).await?;
    if client.json {
        if let Some(shown) = answer.raw.as_object_mut() {
            shown.remove("sign");
        }
        print_json(&answer.raw);
        return Ok(());
    }
    let shown = &answer.reply;
    let p = &shown.proposal;
    println!(
        "proposal {} by {} ({}): {}, {} of {} signatures",
        p.id,
        p.proposer.as_str(),
        p.proposer_key,
        p.state.name(),
        p.signatures,
        p.needed
    );
    if p.state == ProposalState::Pending {
        println!("  expires in {}", remaining(p.expires_ms));
    }
    for approval in &p.approvals {
        println!("  approved by {} ({}) in {}", approval.operator.as_str(), approval.key, approval.record);
    }
    if let Some(rejected) = &p.rejected {
        println!("  rejected by {} in {}", rejected.by.as_str(), rejected.record);
    }
    for enacted in &p.enacted {
        println!("  enacted as generation {enacted}");
    }
    println!("  diff against the values applied on {}:", shown.node);
    for entry in &shown.diff {
        let applied = entry.applied.as_ref().map_or("(none)".to_owned(), Value::to_string);
        println!("    {} {}: {applied} -> {}", entry.kind, entry.key, entry.proposed);
    }
    print_conflicts(p);
    Ok(())
}

/// Newer changes of the proposal's keys: enacting it overwrites them.
fn print_conflicts(proposal: &ProposalSummary) {
    for conflict in &proposal.conflicts {
        eprintln!(
            "CONFLICT: generation {} changed {} after proposal {} was made; enacting it overwrites that",
            conflict.generation,
            conflict.keys.join(", "),
            proposal.id
        );
    }
}

/// `change approve ID` and `change reject ID`.
pub async fn vote(client: &Client, id: &str, vote: Vote) -> Result<(), CliError> {
    let path = proposal_path(id)?;
    let what = if vote == Vote::Approve { "an approval" } else { "a rejection" };
    let signer = signer_of(client, what)?;
    let shown: Answer<ProposalShown> = client.request_as(Method::GET, &path, &[], None).await?;
    let (signed, _) = signer.sign_vote(&shown.reply.sign, vote == Vote::Approve)?;
    let proposal = &shown.reply.proposal;
    if vote == Vote::Approve {
        print_conflicts(proposal);
    }
    let action = if vote == Vote::Approve { "approve" } else { "reject" };
    let body = serde_json::json!({ "signed": signed });
    let mut answer: Answer<Voted> =
        client.request_as(Method::POST, &format!("{path}/{action}"), &[], Some(body)).await?;
    if client.json {
        answer.raw["conflicts"] = serde_json::to_value(&proposal.conflicts).expect("conflicts always serialize");
        print_json(&answer.raw);
        return Ok(());
    }
    let generation = &answer.reply.record.generation;
    match (vote, answer.reply.enacted) {
        (Vote::Approve, true) => {
            println!("approved proposal {id}: enacted as generation {generation}, which rolls out now")
        }
        (Vote::Approve, false) => {
            let have = proposal.signatures + 1;
            println!("approved proposal {id} (record {generation}): {have} of {} signatures", proposal.needed)
        }
        (Vote::Reject, _) => println!("rejected proposal {id} (record {generation}): it can no longer be approved"),
    }
    Ok(())
}
