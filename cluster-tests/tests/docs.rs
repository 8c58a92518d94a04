//! The README, every page of `docs/` and the deploy READMEs as a newcomer reads them: each command block is run or
//! checked here, so a change that breaks one (a new default, a renamed flag) fails CI instead
//! of a reader. The rules (also in `docs/ARCHITECTURE.md`, "Tested documentation"):
//!
//! - Every fenced block names its kind: `sh` (commands a reader is told to run), `console` (a
//!   transcript: `$ command` lines and what they printed), `text`, `json`, `toml`, `yaml`,
//!   `ini`, `js`. A bare fence fails, so no block of commands slips past unclassified.
//! - Every `sh` block runs with `bash -e` in a fresh temp dir (its own `HOME`), with the
//!   `grapevine` binary under test first on `PATH`, and fails on any non-zero exit. As root it
//!   runs in a private network namespace, so the ports it shows are free. Processes it starts
//!   in the background are stopped when it ends. Two substitutions: `cargo run [--release] --`
//!   runs the binary under test, and a `cargo test` line is not run (it is the command that runs
//!   this test).
//! - An `sh` block that must not run here (minutes-long suites, a production host's paths) has
//!   `<!-- not run: REASON -->` on the line before it.
//! - Every `grapevine` command shown, in `sh` blocks and in transcripts, must parse with the
//!   CLI's own definition, unless its transcript shows it exiting 2 (a usage error).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use grapevine_cluster_tests::{binary, can_use_netns, wait_within};

/// The kinds of fenced block a page may hold.
const KINDS: &[&str] = &["sh", "console", "text", "json", "toml", "yaml", "ini", "js"];

/// The marker, on the line before an `sh` block, of a block that is not run, and why.
const NOT_RUN: &str = "<!-- not run:";

/// A block runs at most this long: the demo takes about 11 s, the README's cluster about 12 s
/// (a 10 s bake), on a debug build; a loaded CI machine gets room.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);

/// One fenced block of a page.
struct Block {
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    kind: String,
    text: String,
    /// Why it is not run, from the marker before it.
    not_run: Option<String>,
}

impl Block {
    fn place(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cluster-tests lives in the workspace").to_path_buf()
}

/// The pages a reader is pointed to: the README, every page of `docs/`, and the README of
/// each way to deploy (`deploy/*/README.md`).
fn pages() -> Vec<PathBuf> {
    let markdown_in = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|entry| entry.expect("a readable entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "md"))
            .collect()
    };
    let mut pages = markdown_in(repo().join("docs"));
    for entry in std::fs::read_dir(repo().join("deploy")).expect("deploy/ exists") {
        let dir = entry.expect("a readable entry").path();
        if dir.is_dir() {
            pages.extend(markdown_in(dir));
        }
    }
    pages.sort();
    pages.insert(0, repo().join("README.md"));
    pages
}

fn blocks_of(path: &Path) -> Vec<Block> {
    let file = path.strip_prefix(repo()).unwrap_or(path).display().to_string();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let Some(kind) = lines[index].strip_prefix("```") else {
            index += 1;
            continue;
        };
        let end = (index + 1..lines.len())
            .find(|&i| lines[i].starts_with("```"))
            .unwrap_or_else(|| panic!("{file}:{}: a fenced block that never closes", index + 1));
        let before = lines[..index].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
        let not_run =
            before.and_then(|l| l.strip_prefix(NOT_RUN)).map(|reason| reason.trim_end_matches("-->").trim().to_owned());
        let body = lines[index + 1..end].join("\n");
        blocks.push(Block { file: file.clone(), line: index + 1, kind: kind.trim().to_owned(), text: body, not_run });
        index = end + 1;
    }
    blocks
}

fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|page| blocks_of(page)).collect()
}

#[test]
fn every_block_says_what_it_is() {
    let mut wrong = Vec::new();
    for block in all_blocks() {
        if !KINDS.contains(&block.kind.as_str()) {
            wrong.push(format!("{}: expected a block kind of {KINDS:?}, got {:?}", block.place(), block.kind));
        }
        match (&block.not_run, block.kind.as_str()) {
            (Some(reason), _) if reason.is_empty() => {
                wrong.push(format!("{}: `not run` needs a reason", block.place()))
            }
            (Some(_), kind) if kind != "sh" => {
                wrong.push(format!("{}: only an sh block runs, so only it can be marked not run", block.place()))
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "blocks to fix:\n{}", wrong.join("\n"));
}

/// Joins lines continued with a trailing `\`.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// The arguments of a `grapevine ...` command line, up to the first shell operator or comment.
fn arguments(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    for word in shlex::Shlex::new(command) {
        let operator = ["|", "||", "&&", "&", ">", ">>", "<"].contains(&word.as_str());
        if operator || word.starts_with('>') || word.starts_with("2>") || word.starts_with('#') {
            break;
        }
        if let Some(last) = word.strip_suffix(';') {
            words.push(last.to_owned());
            break;
        }
        words.push(word);
    }
    words
}

/// A `grapevine` command shown on a page, and whether its transcript shows it exiting 2.
struct Shown {
    place: String,
    command: String,
    usage_error: bool,
}

fn shown_commands(block: &Block) -> Vec<Shown> {
    let lines = logical_lines(&block.text);
    let mut shown = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let command = match block.kind.as_str() {
            "sh" => line.trim_start(),
            "console" => match line.strip_prefix("$ ") {
                Some(command) => command,
                None => continue,
            },
            _ => return shown,
        };
        if !command.starts_with("grapevine ") {
            continue;
        }
        // `; echo $?` shows the exit code as the last line of the command's output.
        let output = lines[index + 1..].iter().take_while(|l| !l.starts_with("$ ")).filter(|l| !l.trim().is_empty());
        let usage_error = block.kind == "console" && output.last().is_some_and(|l| l.trim() == "2");
        shown.push(Shown { place: block.place(), command: command.to_owned(), usage_error });
    }
    shown
}

#[test]
fn every_grapevine_command_shown_parses() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for shown in all_blocks().iter().flat_map(shown_commands) {
        checked += 1;
        let parsed = grapevine_node::cli::Cli::try_parse_from(arguments(&shown.command));
        if let Err(error) = parsed {
            use clap::error::ErrorKind;
            let informational = matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if !informational && !shown.usage_error {
                wrong.push(format!("{}: {}\n  {}", shown.place, shown.command, error.render().to_string().trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "commands the docs show that the CLI refuses:\n{}", wrong.join("\n"));
    // The README alone shows more than this: a parser that found none would check nothing.
    assert!(checked > 20, "found only {checked} grapevine commands in the docs");
}

/// The subcommand a synopsis line names (`grapevine flag set KEY ...` -> `flag set`), and the
/// rest of the line; `None` when the line names no command of the CLI.
fn synopsis_command<'a>(root: &'a clap::Command, line: &'a str) -> Option<(&'a clap::Command, &'a str)> {
    let mut command = root;
    let mut rest = line.strip_prefix("grapevine ")?;
    while let Some((word, after)) = rest.split_once(' ').or(Some((rest, ""))).filter(|(w, _)| !w.is_empty()) {
        match command.find_subcommand(word) {
            Some(sub) => (command, rest) = (sub, after),
            None => break,
        }
    }
    (!std::ptr::eq(command, root)).then_some((command, rest))
}

/// The usage lines of `text` blocks (`grapevine flag set KEY (--on | --off ...) [POLICY]`) name
/// options the command has: a renamed option fails here as it would for a reader.
#[test]
fn every_option_a_synopsis_names_exists() {
    let root = <grapevine_node::cli::Cli as clap::CommandFactory>::command();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for block in all_blocks().iter().filter(|b| b.kind == "text") {
        for line in logical_lines(&block.text) {
            let Some((command, rest)) = synopsis_command(&root, line.trim()) else { continue };
            for option in rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).filter(|w| w.starts_with("--"))
            {
                checked += 1;
                let name = &option[2..];
                if !command.get_arguments().any(|a| a.get_long() == Some(name)) && name != "help" {
                    wrong.push(format!("{}: `{}` has no option {option}", block.place(), command.get_name()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "synopses that name options the CLI lacks:\n{}", wrong.join("\n"));
    assert!(checked > 30, "found only {checked} options in synopses");
}

/// The block as bash runs it: the documented substitutions applied.
fn script(block: &Block) -> String {
    block
        .text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("cargo test") {
                format!(": not run here, it is the command that runs this test: {line}")
            } else {
                line.replace("cargo run --release -- ", "grapevine ").replace("cargo run -- ", "grapevine ")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_shell_block_runs_as_written() -> Result<()> {
    let runnable: Vec<Block> = all_blocks().into_iter().filter(|b| b.kind == "sh" && b.not_run.is_none()).collect();
    // The README's two blocks at least: finding none would mean the parser broke.
    assert!(runnable.iter().filter(|b| b.file == "README.md").count() >= 2, "the README's blocks were not found");
    let mut failed = Vec::new();
    for block in &runnable {
        let started = Instant::now();
        match run_block(block) {
            Ok(()) => eprintln!("{}: ran in {:.1} s", block.place(), started.elapsed().as_secs_f64()),
            Err(error) => failed.push(format!("{}: {error:#}", block.place())),
        }
    }
    assert!(failed.is_empty(), "blocks that failed:\n{}", failed.join("\n\n"));
    Ok(())
}

/// Runs one block in a temp dir (and, as root, a private network namespace); stops whatever
/// it left running.
fn run_block(block: &Block) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    std::fs::create_dir(&home)?;
    let bin_dir = binary().parent().context("the binary has a directory")?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let netns = can_use_netns().then(|| format!("gv-docs-{}", std::process::id()));
    let mut command = match &netns {
        Some(name) => {
            checked("ip", &["netns", "add", name])?;
            checked("ip", &["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
            let mut command = Command::new("ip");
            command.args(["netns", "exec", name, "bash"]);
            command
        }
        None => Command::new("bash"),
    };
    let log = dir.path().join("output.log");
    let output = std::fs::File::create(&log)?;
    command
        .args(["-e", "-o", "pipefail", "-c", &script(block)])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("GRAPEVINE_NODE")
        .env_remove("GRAPEVINE_TOKEN")
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let outcome = wait_for(command.spawn()?);
    if let Some(name) = &netns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    outcome.with_context(|| format!("it printed:\n{}", tail(&printed, 60)))
}

/// Waits for the block's shell, then stops its process group (nodes started with `&`).
fn wait_for(mut child: std::process::Child) -> Result<()> {
    let status = wait_within(&mut child, BLOCK_TIMEOUT)?;
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
    let _ = child.wait();
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("exited with {status}"),
        None => bail!("still running after {} s", BLOCK_TIMEOUT.as_secs()),
    }
}

fn checked(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed", args.join(" "));
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn shown_commands_are_split_as_a_shell_would() {
    assert_eq!(
        arguments("grapevine config put x --value '{\"a\": 1}' # note"),
        ["grapevine", "config", "put", "x", "--value", "{\"a\": 1}"]
    );
    assert_eq!(arguments("grapevine status --node https://x; echo $?"), ["grapevine", "status", "--node", "https://x"]);
    assert_eq!(arguments("grapevine completions bash > /etc/x"), ["grapevine", "completions", "bash"]);
    assert_eq!(logical_lines("a \\\n  b\nc"), ["a   b", "c"]);
    let block = Block {
        file: "x.md".into(),
        line: 1,
        kind: "console".into(),
        text: "$ grapevine flag set x --on --off; echo $?\nerror: ...\n2\n$ grapevine status\nok".into(),
        not_run: None,
    };
    let shown = shown_commands(&block);
    assert_eq!(shown.len(), 2);
    assert!(shown[0].usage_error && !shown[1].usage_error);
}
