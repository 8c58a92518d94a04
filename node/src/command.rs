//! Runs the user's commands (a file's `check` and `reload`, an `exec` health source) the way a
//! supervisor should: each in a process group of its own, judged by its exit status alone, and
//! past its timeout killed with everything it started.
//!
//! A command is done when its process exits, not when its output closes: a reload that leaves
//! a daemon behind (`sleep 60 & exit 0`, or a server that forks) holds stderr open for as long
//! as that child lives, and waiting for the pipe would judge a good reload as timed out. A
//! command that hangs is killed as a group (`kill(-pgid)`), so its children do not live on as
//! orphans that keep holding files or ports.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// At most this much of a command's stderr is kept for its error message.
const MAX_STDERR_BYTES: usize = 4096;

/// How long the stderr of a command that exited is still read: what it wrote before exiting is
/// in the pipe already; a child it left behind may keep the pipe open for good.
const STDERR_GRACE: Duration = Duration::from_millis(50);

/// How a command ended.
#[derive(Debug)]
pub enum Outcome {
    /// It exited, with this status and the start of its stderr (empty unless captured).
    Exited { status: ExitStatus, stderr: String },
    /// It ran past its timeout; it and every process of its group were killed.
    TimedOut,
}

/// Runs `args` (program first), capturing stderr if asked, for at most `timeout`.
pub async fn run(args: &[String], timeout: Duration, capture_stderr: bool) -> std::io::Result<Outcome> {
    let mut child = tokio::process::Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if capture_stderr { Stdio::piped() } else { Stdio::null() })
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = child.id().map(|pid| pid as libc::pid_t);
    let mut stderr = child.stderr.take();
    let mut captured = Vec::new();
    let read_stderr = async {
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.take(MAX_STDERR_BYTES as u64).read_to_end(&mut captured).await;
        }
    };
    let waited = tokio::time::timeout(timeout, async {
        tokio::pin!(read_stderr);
        let (status, stderr_read) = tokio::select! {
            status = child.wait() => (status, false),
            () = &mut read_stderr => (child.wait().await, true),
        };
        if !stderr_read {
            // Whatever it wrote before exiting; a child it left may hold the pipe open.
            let _ = tokio::time::timeout(STDERR_GRACE, &mut read_stderr).await;
        }
        status
    })
    .await;
    let Ok(status) = waited else {
        kill_group(group);
        let _ = child.wait().await;
        return Ok(Outcome::TimedOut);
    };
    let status = status?;
    let stderr = String::from_utf8_lossy(&captured).trim().chars().take(300).collect();
    Ok(Outcome::Exited { status, stderr })
}

/// Kills every process of the group a command leads (it was started as its group's leader).
fn kill_group(group: Option<libc::pid_t>) {
    if let Some(group) = group.filter(|&g| g > 0) {
        // SAFETY: kill only sends a signal; a negative pid names the process group we created.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_command_that_leaves_a_child_behind_is_judged_by_its_exit() {
        let started = clock::now();
        let outcome = run(&sh("sleep 60 & echo reloaded >&2; exit 0"), Duration::from_secs(5), true).await.unwrap();
        let Outcome::Exited { status, stderr } = outcome else { panic!("judged as timed out: {outcome:?}") };
        assert!(status.success());
        assert_eq!(stderr, "reloaded");
        assert!(clock::elapsed(started) < Duration::from_secs(4), "it waited for the child's stderr");
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let outcome = run(&sh(&script), Duration::from_millis(300), true).await.unwrap();
        assert!(matches!(outcome, Outcome::TimedOut), "{outcome:?}");
        let child: libc::pid_t = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // The child may take a moment to be reaped by init; it must not stay alive.
        let alive = |pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
        let deadline = clock::now() + Duration::from_secs(2);
        while alive(child) && clock::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(child), "the hung command's child {child} lives on as an orphan");
    }
}
