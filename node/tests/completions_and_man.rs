//! `grapevine completions SHELL` and `grapevine man`: generated from the CLI definition, so
//! they name every command and option the binary has.

use std::process::{Command, Output};

fn grapevine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_grapevine")).args(args).output().expect("grapevine runs")
}

fn stdout_of(args: &[&str]) -> String {
    let output = grapevine(args);
    assert!(output.status.success(), "grapevine {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn completion_scripts_cover_the_commands_and_bash_parses_its_own() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        // fish spells options `-l waves`, the others `--waves`.
        let option = |name: &str| if shell == "fish" { format!("-l {name}") } else { format!("--{name}") };
        let options = ["waves", "emergency", "author", "wait-replicas"].map(option);
        for word in ["rollback", "history"].into_iter().chain(options.iter().map(String::as_str)) {
            assert!(script.contains(word), "the {shell} script does not offer {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("grapevine.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).unwrap();
    // Sourcing defines the completion function; completing `grapevine fl` offers `flag`.
    let check = format!(
        "source {}; COMP_WORDS=(grapevine fl); COMP_CWORD=1; _grapevine grapevine fl grapevine; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let output = Command::new("bash").args(["-c", &check]).output().expect("bash runs");
    assert!(output.status.success(), "bash: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "flag");

    let refused = grapevine(&["completions", "tcsh"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values: bash"));
}

#[test]
fn the_manual_has_a_page_per_command() {
    let page = stdout_of(&["man"]);
    assert!(page.starts_with(".ie") && page.contains(".TH grapevine 1"), "{page}");
    for command in ["ca", "node", "flag", "config", "rollout", "status", "apply", "rollback", "history"] {
        assert!(page.contains(&format!("grapevine\\-{command}(1)")), "grapevine(1) does not name {command}");
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let listed = stdout_of(&["man", "--out", out.to_str().unwrap()]);
    for name in
        ["grapevine.1", "grapevine-flag-set.1", "grapevine-ca-issue.1", "grapevine-rollout-pause.1", "grapevine-man.1"]
    {
        let path = out.join(name);
        assert!(listed.contains(path.to_str().unwrap()), "{name} not listed in:\n{listed}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(".SH SYNOPSIS"), "{name} has no synopsis");
    }
    let flag_set = std::fs::read_to_string(out.join("grapevine-flag-set.1")).unwrap();
    assert!(flag_set.contains("\\-\\-waves") && flag_set.contains("\\-\\-author"), "{flag_set}");
    // groff, where installed, formats every page without a warning.
    if Command::new("groff").arg("-v").output().is_ok() {
        for entry in std::fs::read_dir(&out).unwrap() {
            let path = entry.unwrap().path();
            let output = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&path).output().unwrap();
            assert!(
                output.status.success() && output.stderr.is_empty(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
