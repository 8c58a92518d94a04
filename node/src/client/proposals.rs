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
use super::{Answer, ChangeRequest, CliError, Client, nothing_to_sign, print_json, report_accepted, text};
use crate::api::replies::{ChangeReply, DryRun, Proposed};

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
    let mut answer = client.request(Method::GET, "/v1/proposals", None).await?;
    if let Some(proposals) = answer["proposals"].as_array_mut()
        && !all
    {
        proposals.retain(|p| p["state"] == "pending");
    }
    if client.json {
        print_json(&answer);
        return Ok(());
    }
    let proposals = answer["proposals"].as_array().cloned().unwrap_or_default();
    if proposals.is_empty() {
        println!("no {}proposals on {}", if all { "" } else { "pending " }, text(&answer, "node"));
        return Ok(());
    }
    println!("{:<12} {:<9} {:<7} {:<16} {:<10} KEYS", "ID", "STATE", "SIGNED", "PROPOSER", "EXPIRES");
    for p in &proposals {
        let signed = format!("{}/{}", p["signatures"], p["needed"]);
        let keys: Vec<&str> = p["keys"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let expires =
            if p["state"] == "pending" { remaining(p["expires_ms"].as_u64().unwrap_or(0)) } else { "-".into() };
        let conflict = if p["conflicts"].as_array().is_some_and(|c| !c.is_empty()) { " (CONFLICTS)" } else { "" };
        println!(
            "{:<12} {:<9} {:<7} {:<16} {:<10} {}{conflict}",
            text(p, "id"),
            text(p, "state"),
            signed,
            text(p, "proposer"),
            expires,
            keys.join(", ")
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
    let mut answer = client.request(Method::GET, &proposal_path(id)?, None).await?;
    if client.json {
        if let Some(shown) = answer.as_object_mut() {
            shown.remove("sign");
        }
        print_json(&answer);
        return Ok(());
    }
    let p = &answer;
    println!(
        "proposal {} by {} ({}): {}, {} of {} signatures",
        text(p, "id"),
        text(p, "proposer"),
        text(p, "proposer_key"),
        text(p, "state"),
        p["signatures"],
        p["needed"]
    );
    if p["state"] == "pending" {
        println!("  expires in {}", remaining(p["expires_ms"].as_u64().unwrap_or(0)));
    }
    for approval in p["approvals"].as_array().into_iter().flatten() {
        println!(
            "  approved by {} ({}) in {}",
            text(approval, "operator"),
            text(approval, "key"),
            text(approval, "record")
        );
    }
    if let Some(rejected) = p["rejected"].as_object() {
        println!(
            "  rejected by {} in {}",
            rejected["by"].as_str().unwrap_or("-"),
            rejected["record"].as_str().unwrap_or("-")
        );
    }
    for enacted in p["enacted"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        println!("  enacted as generation {enacted}");
    }
    println!("  diff against the values applied on {}:", text(p, "node"));
    for entry in p["diff"].as_array().into_iter().flatten() {
        let applied = if entry["applied"].is_null() { "(none)".to_owned() } else { entry["applied"].to_string() };
        println!("    {} {}: {applied} -> {}", text(entry, "kind"), text(entry, "key"), entry["proposed"]);
    }
    print_conflicts(p);
    Ok(())
}

/// Newer changes of the proposal's keys: enacting it overwrites them.
fn print_conflicts(proposal: &Value) {
    for conflict in proposal["conflicts"].as_array().into_iter().flatten() {
        let keys: Vec<&str> = conflict["keys"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        eprintln!(
            "CONFLICT: generation {} changed {} after proposal {} was made; enacting it overwrites that",
            text(conflict, "generation"),
            keys.join(", "),
            text(proposal, "id")
        );
    }
}

/// `change approve ID` and `change reject ID`.
pub async fn vote(client: &Client, id: &str, vote: Vote) -> Result<(), CliError> {
    let path = proposal_path(id)?;
    let what = if vote == Vote::Approve { "an approval" } else { "a rejection" };
    let signer = signer_of(client, what)?;
    let shown = client.request(Method::GET, &path, None).await?;
    let (signed, _) = signer.sign_vote(&shown, vote == Vote::Approve)?;
    if vote == Vote::Approve {
        print_conflicts(&shown);
    }
    let action = if vote == Vote::Approve { "approve" } else { "reject" };
    let body = serde_json::json!({ "signed": signed });
    let mut answer = client.request(Method::POST, &format!("{path}/{action}"), Some(body)).await?;
    if client.json {
        answer["conflicts"] = shown["conflicts"].clone();
        print_json(&answer);
        return Ok(());
    }
    let generation = text(&answer, "generation");
    match (vote, answer["enacted"] == true) {
        (Vote::Approve, true) => {
            println!("approved proposal {id}: enacted as generation {generation}, which rolls out now")
        }
        (Vote::Approve, false) => {
            let have = shown["signatures"].as_u64().unwrap_or(0) + 1;
            println!("approved proposal {id} (record {generation}): {have} of {} signatures", shown["needed"])
        }
        (Vote::Reject, _) => println!("rejected proposal {id} (record {generation}): it can no longer be approved"),
    }
    Ok(())
}
