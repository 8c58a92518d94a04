//! `status --wait`: waits for a node that was just started, so a script (or a reader pasting
//! the README) can go on to its first change once the node answers, has caught up with its
//! peers (`/readyz`), and, with `--members`, sees the cluster it is meant to be part of.

use std::time::Duration;

use super::{Answer, CliError, Client};
use crate::clock;
use crate::replies::{Readiness, Status};
use reqwest::Method;

/// How often the node is asked again: short next to a node's start (tens of milliseconds),
/// long enough that a waiting script costs the node nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Waits up to `within` until the node is ready and sees at least `members` live members
/// (itself included). Exit 3 if it never answered, 1 if it answered but not that.
pub async fn until_ready(client: &Client, within: Duration, members: Option<usize>) -> Result<(), CliError> {
    let deadline = clock::now() + within;
    let mut answered = false;
    loop {
        let last = match check(client, members).await {
            Ok(()) => return Ok(()),
            Err(error @ CliError::Unreachable(_)) => error,
            Err(error) => {
                answered = true;
                error
            }
        };
        let now = clock::now();
        if now >= deadline {
            let waited = format!("after waiting {} ms", within.as_millis());
            return Err(match last {
                CliError::Unreachable(error) if !answered => CliError::Unreachable(format!("{error} ({waited})")),
                other => CliError::Failed(format!("node not ready {waited}: {other}")),
            });
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// One look: `Ok` when the node is ready and sees enough members, else why not.
async fn check(client: &Client, members: Option<usize>) -> Result<(), CliError> {
    let readiness: Answer<Readiness> = Answer::read(client.request_raw(Method::GET, "/readyz").await?)?;
    if !readiness.reply.ready {
        return Err(CliError::Failed(format!("/readyz answered {}", readiness.raw)));
    }
    let Some(wanted) = members else { return Ok(()) };
    let status: Answer<Status> = client.request_as(Method::GET, "/v1/status", &[], None).await?;
    let alive: Vec<&str> = status.reply.alive().collect();
    if alive.len() >= wanted {
        return Ok(());
    }
    Err(CliError::Failed(format!(
        "it sees {} live members ({}), --members asks for {wanted}",
        alive.len(),
        alive.join(", ")
    )))
}

/// `--wait`'s value: a duration like `10s`.
pub fn parse_within(text: &str) -> Result<Duration, CliError> {
    grapevine_proto::policy::parse_duration_ms(text)
        .map(Duration::from_millis)
        .map_err(|error| CliError::Usage(format!("--wait: {}", error.0)))
}
