//! The fleet page (`/ui/`, `docs/ui.md`) in a real browser: headless Chromium driven by
//! Playwright (`cluster-tests/ui/test.mjs`) against three real node processes. The script
//! checks what an operator would: every member listed, a change made from the CLI shown live,
//! a waved rollout's timeline, a pause from the page (confirmed through the API), a scheduled
//! rollout marked `scheduled` with its start and time left (then cancelled), a bad change
//! reverted by the cluster and shown with its reason without a reload (each change, wave,
//! rollback and revert shown within 1.5 s of the page's node holding it), values holding
//! markup shown as text (no element made from them, no dialog fired), every view within a
//! phone's width (390 px), the controls reached with Tab and kept focused through redraws, no
//! write buttons for a read-only token, and no console error. Screenshots land in
//! `target/ui-screenshots/`; with `GRAPEVINE_UI_DOCS_SCREENSHOTS=1` the few that `docs/ui.md`
//! shows are written into `docs/ui/` as well.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`) and `npm ci --prefix cluster-tests/ui`;
//! without them the test prints a notice and passes, unless `GRAPEVINE_REQUIRE_BROWSER` is
//! set (as `.ci/run` does), when it fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use grapevine_cluster_tests::{
    CHROMIUM, Cluster, Node, TEST_LIMITS_TOML, TEST_TOKEN, binary, browser_required, browser_scripts_dir, check,
    missing_browser_tools, test_token_toml, wait_within,
};
use grapevine_node::replies::{History, KeySide, Keys, OpSummary, Whoami};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A token of the read role, for the read-only checks.
const READ_TOKEN: &str = "gv_ui-read-only";
/// A token of the read role over keys under `team/` only.
const SCOPED_TOKEN: &str = "gv_ui-team-only";
/// The longest the browser script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);
/// Set (to anything) to write the screenshots `docs/ui.md` shows into `docs/ui/` too.
const REFRESH_DOCS_SCREENSHOTS: &str = "GRAPEVINE_UI_DOCS_SCREENSHOTS";

/// A node whose application fails while it serves `risky` = `"bad"`, as in `tests/revert.rs`.
fn app_health(node: &Node) -> String {
    let check = format!("! {} config get risky --node {} | grep -q bad", binary().display(), node.url());
    format!("[health]\nsample_interval_ms = 200\n[[health.exec]]\ncommand = [\"sh\", \"-c\", {check:?}]\n")
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn auth_toml() -> String {
    let read_digest = sha256_hex(READ_TOKEN);
    format!(
        "[auth]\nanonymous = \"read\"\n{}[[auth.token]]\nname = \"viewer\"\nsha256 = \"{read_digest}\"\nrole = \"read\"\n{TEST_LIMITS_TOML}",
        test_token_toml()
    )
}

#[test]
fn the_fleet_page_shows_and_steers_a_live_cluster_in_a_browser() -> Result<()> {
    if let Some(missing) = missing_browser_tools() {
        if browser_required() {
            bail!("the browser test needs {missing}, and GRAPEVINE_REQUIRE_BROWSER is set");
        }
        eprintln!("\n\n*** SKIPPED the fleet page's browser test: missing {missing} ***\n\n");
        return Ok(());
    }
    let mut cluster = Cluster::new(3)?;
    for node in &mut cluster.nodes {
        node.config_toml = format!("[rollout]\nwaves = \"100%\"\n{}", app_health(node));
        node.auth_toml = auth_toml();
    }
    let starting = Instant::now();
    cluster.start_all()?;
    eprintln!("three nodes up in {:?}", starting.elapsed());
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&screenshots)?;
    let urls: Vec<String> = cluster.nodes.iter().map(Node::url).collect();

    let mut command = Command::new("node");
    if std::env::var_os(REFRESH_DOCS_SCREENSHOTS).is_some() {
        command.env("GV_DOCS_SCREENSHOTS", Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ui"));
    }
    let started = Instant::now();
    let mut script = command
        .arg(browser_scripts_dir().join("test.mjs"))
        .env("GV_NODES", urls.join(","))
        .env("GV_TOKEN", TEST_TOKEN)
        .env("GV_READ_TOKEN", READ_TOKEN)
        .env("GV_BINARY", binary())
        .env("GV_CHROMIUM", CHROMIUM)
        .env("GV_SCREENSHOTS", &screenshots)
        .env_remove("GRAPEVINE_NODE")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running node cluster-tests/ui/test.mjs")?;
    let Some(status) = wait_within(&mut script, SCRIPT_TIMEOUT)? else {
        let _ = script.kill();
        bail!("the browser script ran over {SCRIPT_TIMEOUT:?}");
    };
    eprintln!("browser script: {status} after {:?}", started.elapsed());
    if !status.success() {
        for node in &cluster.nodes {
            eprintln!("--- {} log (tail) ---\n{}", node.name, tail(&node.log_text(), 40));
        }
        bail!("the browser script failed: {status}");
    }
    // The page sent tokens in headers only: no node logged one (the script checked URLs).
    for node in &cluster.nodes {
        let log = node.log_text();
        assert!(!log.contains(TEST_TOKEN) && !log.contains(READ_TOKEN), "{} logged a token", node.name);
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The page's part of the API, without a browser: its files are public on a node that lets no
/// one read anonymously (and ignore a query), while the reads the page uses need a token and
/// keep to the caller's scope, and the event stream wakes on a change.
#[test]
fn the_page_files_are_public_and_its_reads_keep_to_the_callers_scope() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    cluster.nodes[0].auth_toml = format!(
        "{}[[auth.token]]\nname = \"team\"\nsha256 = \"{}\"\nrole = \"read\"\nprefixes = [\"team/\"]\n{TEST_LIMITS_TOML}",
        test_token_toml(),
        sha256_hex(SCOPED_TOKEN)
    );
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    check(node.cli(&["config", "put", "team/limits", "--value", "1"]))?;
    check(node.cli(&["config", "put", "other", "--value", "2"]))?;
    let url = |path: &str| format!("{}{path}", node.url());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let page = client.get(url("/ui/?from=bookmark")).send().await?;
        assert_eq!(page.status(), 200);
        let policy = page.headers()["content-security-policy"].to_str()?.to_owned();
        assert!(policy.starts_with("default-src 'self'"), "{policy}");
        for path in ["/v1/whoami", "/v1/keys", "/v1/events"] {
            assert_eq!(client.get(url(path)).send().await?.status(), 401, "{path} without a token");
        }
        let read = |path: &str, token: &str| {
            let request = client.get(url(path)).bearer_auth(token);
            let path = path.to_owned();
            async move {
                let answer = request.send().await?;
                let status = answer.status().as_u16();
                let body = answer.text().await?;
                anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
                Ok::<Value, anyhow::Error>(serde_json::from_str(&body)?)
            }
        };
        let who: Whoami = serde_json::from_value(read("/v1/whoami", SCOPED_TOKEN).await?)?;
        assert_eq!((who.principal.as_str(), who.role.as_str()), ("token:team", "read"), "{who:?}");
        assert_eq!(who.prefixes, ["team/"]);
        let keys: Keys = serde_json::from_value(read("/v1/keys", SCOPED_TOKEN).await?)?;
        let listed: Vec<&str> = keys.config.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(listed, ["team/limits"], "{keys:?}");
        let value = |side: &Option<KeySide>| side.as_ref().map(|side| side.value.clone());
        assert_eq!((value(&keys.config[0].applied), value(&keys.config[0].desired)), (Some(1.into()), Some(1.into())));
        let refused = client.get(url("/v1/keys?bogus=1")).bearer_auth(TEST_TOKEN).send().await?;
        assert_eq!(refused.status(), 400);
        let history: History = serde_json::from_value(read("/v1/history?values=true&limit=1", TEST_TOKEN).await?)?;
        let op = &history.generations[0].ops[0];
        assert!(matches!(op, OpSummary::PutConfig { value: Some(value), .. } if *value == 2), "{history:?}");

        let mut events = client.get(url("/v1/events")).bearer_auth(TEST_TOKEN).send().await?;
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut changed = false;
        while !seen.contains("event: changed") {
            let chunk = tokio::time::timeout_at(deadline, events.chunk()).await.context("an event within 5 s")??;
            seen.push_str(&String::from_utf8_lossy(&chunk.context("the stream stays open")?));
            if seen.contains("event: ready") && !changed {
                changed = true;
                check(node.cli(&["config", "put", "other", "--value", "3"]))?;
            }
        }
        Ok::<(), anyhow::Error>(())
    })
}
