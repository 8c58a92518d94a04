//! The CLI's commands on rollouts and the log: `rollout status`, `rollout pause|resume|promote`,
//! `rollback` and `history`, and how a rollout is drawn (waves, reports, hold, revert).
//!
//! - `rollout_status` reads `GET /v1/rollouts/{generation}` or `GET /v1/rollouts`; with `--watch`
//!   it redraws every `WATCH_INTERVAL` (1 s) until every listed rollout is `Rollout::finished`.
//!   `generation_path` checks the id first (a bad one is a usage error). `print_rollout` adds
//!   ` REVERTED` to the header of a reverted rollout, the `REVERTED by ...` line (`revert_line`)
//!   and this node's judgement.
//! - `history` prints, under each change, its waves with each member's report (`member_cells`)
//!   and the `REVERTED by ...` line; `history_records` (`--format jsonl`) prints
//!   `?format=records`'s audit records, one a line.

use std::time::Duration;

use grapevine_proto::policy::Control;
use grapevine_proto::report::Verdict;
use reqwest::Method;

use super::{Answer, CliError, Client, Intent, print_json, report_accepted};
use crate::replies::{
    AuditRecords, GenerationSummary, Governance, History, OpSummary, Rollback, Rollout, Rollouts, Wave, WaveMember,
};

pub async fn history(client: &Client, limit: usize) -> Result<(), CliError> {
    let path = format!("/v1/history?limit={limit}");
    let answer: Answer<History> = client.request_as(Method::GET, &path, &[], None).await?;
    if client.json {
        print_json(&answer.raw);
        return Ok(());
    }
    let history = &answer.reply;
    println!("{} of {} generations, newest first", history.generations.len(), history.total);
    for generation in &history.generations {
        print_generation(generation);
    }
    Ok(())
}

fn print_generation(generation: &GenerationSummary) {
    let ops: Vec<String> = generation
        .ops
        .iter()
        .map(|op| match op {
            OpSummary::SetFlag { key, .. } => format!("flag {key}"),
            OpSummary::PutConfig { key, bytes, .. } => format!("config {key} ({bytes} bytes)"),
        })
        .chain(generation.controls.iter().map(describe_control))
        .chain(generation.governance.as_ref().map(describe_governance))
        .collect();
    let policy = &generation.policy;
    let rollout = match policy.emergency {
        true => "emergency".to_owned(),
        false => format!("{} waves, bake {} ms", policy.waves.len(), policy.bake_ms),
    };
    let author = generation.author.as_ref().map_or(String::new(), |author| format!("  by {author}"));
    println!("{:<14} hlc {:<18} {:<28} {}{author}", generation.id, generation.hlc, rollout, ops.join(", "));
    if let Some(rollout) = &generation.rollout {
        for wave in &rollout.waves {
            let state = if wave.open { "open" } else { "closed" };
            println!("    wave {} {state:<6} {}", wave.index, member_cells(wave, |_, text| text).join("  "));
        }
        if let Some(line) = revert_line(rollout) {
            println!("    {line}");
        }
    }
}

/// `history --format jsonl`: the node's audit records, one a line.
pub async fn history_records(client: &Client, limit: usize) -> Result<(), CliError> {
    let path = format!("/v1/history?limit={limit}&format=records");
    let answer: Answer<AuditRecords> = client.request_as(Method::GET, &path, &[], None).await?;
    for record in &answer.reply.records {
        println!("{record}");
    }
    Ok(())
}

/// `rollback GEN`.
pub async fn rollback(client: &Client, generation: &str) -> Result<(), CliError> {
    let path = format!("{}/rollback", generation_path(generation)?);
    let answer: Answer<Rollback> = client.request_as(Method::POST, &path, &[], None).await?;
    let Rollback { revert, already_reverted, .. } = &answer.reply;
    if client.json {
        print_json(&answer.raw);
    } else if *already_reverted {
        println!("{generation} was already reverted ({revert}); nothing to do");
    } else {
        println!("wrote {revert}: {generation} is undone on every node as the revert reaches it");
    }
    Ok(())
}

/// Why a rollout was reverted, and by whom, if it was.
fn revert_line(rollout: &Rollout) -> Option<String> {
    if !rollout.reverted {
        return None;
    }
    let by: Vec<String> = rollout.reverted_by.iter().map(|(node, cause)| format!("{node} ({cause})")).collect();
    let by = if by.is_empty() { "a node no longer in gossip".to_owned() } else { by.join(", ") };
    let quorum = &rollout.anomaly_quorum;
    let anomalous: Vec<&str> = quorum.anomalous.iter().map(|name| name.as_str()).collect();
    Some(format!(
        "REVERTED by {by}; anomalous: {} of {} that applied it ({}), quorum {}",
        anomalous.len(),
        quorum.applied,
        anomalous.join(", "),
        quorum.needed
    ))
}

/// Why this node holds a rollout, and for how long: `scheduled to start at T (in 1m 5s)` or
/// `frozen by weekend until T (in 2d 3h)`.
fn hold_line(rollout: &Rollout) -> Option<String> {
    let hold = rollout.hold.as_ref()?;
    Some(format!("{} (in {}); no wave opens before", hold.reason, time_left(hold.in_ms)))
}

/// `2d 3h`, `1h 5m`, `4m 10s`, `9s`: the two largest units.
fn time_left(ms: u64) -> String {
    let seconds = ms.div_ceil(1000);
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let Some(first) = units.iter().position(|(_, size)| seconds >= *size) else { return "0s".into() };
    let (name, size) = units[first];
    let mut text = format!("{}{name}", seconds / size);
    if let Some((next, next_size)) = units.get(first + 1) {
        let rest = seconds % size / next_size;
        if rest > 0 {
            text.push_str(&format!(" {rest}{next}"));
        }
    }
    text
}

/// Each member of a wave with its report, painted by `paint(color, text)`.
fn member_cells(wave: &Wave, paint: impl Fn(&str, String) -> String) -> Vec<String> {
    wave.members
        .iter()
        .map(|WaveMember { name, report }| match report {
            Some(report) => {
                let elapsed_s = report.elapsed_ms as f64 / 1000.0;
                match report.verdict {
                    Verdict::Healthy => paint("32", format!("{name} healthy {elapsed_s:.1}s")),
                    Verdict::Anomalous => paint("31", format!("{name} ANOMALOUS {elapsed_s:.1}s")),
                    Verdict::Inconclusive => paint("36", format!("{name} inconclusive {elapsed_s:.1}s")),
                }
            }
            None => paint("2", format!("{name} waiting")),
        })
        .collect()
}

/// A governance record or an enactment, as `history` lists it.
fn describe_governance(governance: &Governance) -> String {
    let approvers: Vec<&str> = governance.approvals.iter().map(|approval| approval.operator.as_str()).collect();
    let proposal = governance.proposal.as_deref().unwrap_or("-");
    match governance.record.as_str() {
        "propose" => format!("proposal of {}", governance.keys.as_deref().unwrap_or_default().join(", ")),
        "approve" => format!("approval of proposal {proposal}"),
        "reject" => format!("rejection of proposal {proposal}"),
        _ => format!("enacts proposal {proposal} (approved by {})", approvers.join(", ")),
    }
}

/// A control as `history` lists it: `pause n1.3`, `promote n1.3 through wave 2`.
fn describe_control(control: &Control) -> String {
    match control {
        Control::Pause { target } => format!("pause {target}"),
        Control::Resume { target } => format!("resume {target}"),
        Control::Promote { target, through_wave } => format!("promote {target} through wave {through_wave}"),
    }
}

pub(crate) fn generation_path(generation: &str) -> Result<String, CliError> {
    generation.parse::<grapevine_proto::GenId>().map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(format!("/v1/rollouts/{generation}"))
}

/// `rollout pause|resume|promote GEN`.
pub async fn rollout_control(client: &Client, generation: &str, action: &str) -> Result<(), CliError> {
    let path = format!("{}/{action}", generation_path(generation)?);
    let intent = Intent { control_of: generation.parse().ok(), ..Intent::default() };
    let answer = client.change(&path, &[], None, &intent).await?;
    report_accepted(client, &format!("{action} of {generation}"), &answer);
    Ok(())
}

/// How often `rollout status --watch` redraws.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// `rollout status [GEN] [--watch]`.
pub async fn rollout_status(client: &Client, generation: Option<&str>, watch: bool) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let path = match generation {
        Some(generation) => Some(generation_path(generation)?),
        None => None,
    };
    let terminal = std::io::stdout().is_terminal();
    loop {
        let (rollouts, raw) = match &path {
            Some(path) => {
                let answer: Answer<Rollout> = client.request_as(Method::GET, path, &[], None).await?;
                (vec![answer.reply], answer.raw)
            }
            None => {
                let answer: Answer<Rollouts> = client.request_as(Method::GET, "/v1/rollouts", &[], None).await?;
                (answer.reply.rollouts, answer.raw)
            }
        };
        if client.json {
            print_json(&raw);
        } else {
            if watch && terminal {
                print!("\x1b[2J\x1b[H");
            }
            for rollout in &rollouts {
                print_rollout(rollout, terminal);
            }
            if rollouts.is_empty() {
                println!("no rollouts in this node's log");
            }
        }
        if !watch || rollouts.iter().all(Rollout::finished) {
            return Ok(());
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

fn print_rollout(rollout: &Rollout, color: bool) {
    let paint = |code: &str, text: String| if color { format!("\x1b[{code}m{text}\x1b[0m") } else { text };
    let policy = &rollout.policy;
    let waves: Vec<String> = policy.waves.iter().map(ToString::to_string).collect();
    let mut flags = String::new();
    if rollout.controls.paused {
        flags.push_str(&paint("33", " PAUSED".into()));
    }
    if rollout.reverted {
        flags.push_str(&paint("31", " REVERTED".into()));
    }
    if let Some(hold) = &rollout.hold {
        flags.push_str(&paint("35", format!(" {}", hold.kind.to_uppercase())));
    }
    println!(
        "{}  {}  waves {}  bake {} ms  quorum {}{flags}",
        paint("1", rollout.generation.clone()),
        rollout.keys.join(", "),
        waves.join(","),
        policy.bake_ms,
        f64::from(policy.health_quorum_permille) / 1000.0,
    );
    for wave in &rollout.waves {
        let applied = wave.members.iter().filter(|member| member.report.is_some()).count();
        let bar: String = (0..wave.members.len()).map(|i| if i < applied { '█' } else { '░' }).collect();
        let state = if wave.open { paint("32", "open  ".into()) } else { paint("2", "closed".into()) };
        println!("  wave {} {state} {bar} {}", wave.index, member_cells(wave, paint).join("  "));
    }
    if let Some(line) = hold_line(rollout) {
        println!("  {}", paint("35", line));
    }
    if let Some(line) = revert_line(rollout) {
        println!("  {}", paint("31", line));
    }
    if let Some(judgement) = &rollout.judgement {
        println!("  this node: {judgement}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_left_shows_its_two_largest_units() {
        assert_eq!(super::time_left(0), "0s");
        assert_eq!(super::time_left(2_500), "3s");
        assert_eq!(super::time_left(65_000), "1m 5s");
        assert_eq!(super::time_left(3_600_000), "1h");
        assert_eq!(super::time_left((2 * 86_400 + 3 * 3_600 + 59) * 1000), "2d 3h");
    }
}
