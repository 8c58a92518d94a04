//! `grapevine status`: the node, its log, its clock, its `[signing]`, freeze windows, health
//! sources and files, what conflicts with it, and a table of the members it sees.

use reqwest::Method;

use super::{Answer, CliError, Client, print_json};
use crate::replies::{Conflicts, Freeze, Status};

pub async fn status(client: &Client) -> Result<(), CliError> {
    let answer: Answer<Status> = client.request_as(Method::GET, "/v1/status", &[], None).await?;
    if client.json {
        print_json(&answer.raw);
        return Ok(());
    }
    let status = &answer.reply;
    println!(
        "node {} in cluster {}: {} generations ({} reverted), applied {}, state digest {}",
        status.node,
        status.cluster,
        status.generations,
        status.reverted,
        status.applied.as_deref().unwrap_or("-"),
        status.state_digest,
    );
    print_cell(status);
    if let Some(reason) = &status.recovering {
        println!("RECOVERING from peers, serving no reads and taking no changes: {reason}");
    }
    if let Some(clock) = status.clock.filter(|clock| clock.fenced) {
        println!(
            "CLOCK AHEAD: this node's clock runs {} ms ahead of its peers' (the median of {}), past max_clock_offset_ms = {}: it takes no changes until the clock is fixed (NTP)",
            clock.ahead_ms, clock.peers, clock.max_offset_ms
        );
    }
    if let Some(line) = freeze_line(&status.freeze) {
        println!("{line}");
    }
    print_signing(status);
    print_conflicts(&status.conflicts);
    for source in &status.health {
        let state = if source.ok { "ok" } else { "FAILING" };
        println!("health source {}: {state} ({})", source.source, source.detail);
    }
    for file in &status.files {
        let state = if file.ok { "ok" } else { "NOT APPLIED" };
        let generation = file.generation.as_deref().unwrap_or("-");
        println!("file {}: {state}, generation {generation} ({})", file.path.display(), file.detail);
    }
    print_members(status);
    Ok(())
}

/// The node's cell and its representatives (none shown by a node of a version before cells).
fn print_cell(status: &Status) {
    let cell = &status.cell;
    if cell.name.is_empty() {
        return;
    }
    let one = if cell.representatives.contains(&status.node) { " (this node is one)" } else { "" };
    println!("cell {}: representatives {}{one}", cell.name, cell.representatives.join(", "));
}

/// Whether changes are signed, the approval rules, and the members that trust other roots.
fn print_signing(status: &Status) {
    let signing = &status.signing;
    match signing.roots.len() {
        0 => println!("changes: NOT SIGNED ([signing] names no root key; see docs/security.md)"),
        roots => println!("changes: signed by operator keys of {roots} root key(s)"),
    }
    for rule in &signing.approvals {
        let among = match rule.operators.is_empty() {
            true => String::new(),
            false => format!(" among {}", rule.operators.join(", ")),
        };
        println!("approvals: changes under {:?} need {} operators' signatures{among}", rule.prefix, rule.signatures);
    }
    // Members that trust other roots store other changes: the same [signing] belongs on all.
    let others: Vec<String> = status
        .members
        .iter()
        .filter_map(|m| m.signing.as_ref().filter(|theirs| **theirs != signing.fingerprint).map(|s| (&m.name, s)))
        .map(|(name, theirs)| format!("{name} ({theirs})"))
        .collect();
    if !others.is_empty() {
        println!(
            "WARNING: members whose [signing] trusts other root keys than this node's ({}): {}",
            signing.fingerprint,
            others.join(", ")
        );
    }
}

fn print_members(status: &Status) {
    println!();
    println!(
        "{:<16} {:<6} {:<22} {:<26} {:>11} {:<14} {:<16} {:>4}",
        "MEMBER", "ALIVE", "GOSSIP", "API", "GENERATIONS", "APPLIED", "DIGEST", "WIRE"
    );
    for member in &status.members {
        let name = format!("{}{}", member.name, if member.is_self { "*" } else { "" });
        let alive = if member.alive { "yes" } else { "no" };
        let generations = member.generations.map_or("-".to_owned(), |g| g.to_string());
        println!(
            "{:<16} {:<6} {:<22} {:<26} {:>11} {:<14} {:<16} {:>4}",
            name,
            alive,
            member.gossip,
            member.api.as_deref().unwrap_or("-"),
            generations,
            member.applied.as_deref().unwrap_or("-"),
            member.state_digest.as_deref().unwrap_or("-"),
            member.wire,
        );
    }
}

/// Two processes under one name (D70): generations held with other content elsewhere, and
/// other live processes under this node's name.
fn print_conflicts(conflicts: &Conflicts) {
    if !conflicts.generations.is_empty() {
        let generations = conflicts.generations.join(", ");
        println!("CONFLICT: peers hold other content under {generations} (this node keeps its own)");
    }
    for namesake in &conflicts.namesakes {
        let (address, incarnation) = (namesake.address, namesake.incarnation);
        println!("CONFLICT: another process is live under this node's name at {address} (incarnation {incarnation})");
    }
}

/// `freeze windows: weekend, holidays (fingerprint ...); FROZEN by weekend until ...`, or
/// nothing for a node without windows.
fn freeze_line(freeze: &Freeze) -> Option<String> {
    if freeze.windows.is_empty() {
        return None;
    }
    let now = match &freeze.active {
        Some(active) => format!("FROZEN by {} until {}", active.window, active.until),
        None => "none in force now".to_owned(),
    };
    Some(format!("freeze windows: {} (fingerprint {}); {now}", freeze.windows.join(", "), freeze.fingerprint))
}
