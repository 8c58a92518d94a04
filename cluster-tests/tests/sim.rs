//! The simulator's command line as `docs/simulation.md` shows it, at small sizes: one seed with
//! its figures, many seeds with their medians, the spread-and-revert run with its trace, and a
//! usage error. (`.ci/run` runs `sim --quick`.)

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    let binary = env!("CARGO_BIN_EXE_grapevine-cluster-tests");
    Command::new(binary).arg("sim").args(args).output().expect("the suite's binary runs")
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn one_seed_prints_its_figures_and_the_medians() {
    let output = sim(&["--seed", "3", "--nodes", "30"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("seed 3 nodes 30: 0 violations"), "{stderr}");
    assert!(stderr.contains("good change: stored by all"), "{stderr}");
    assert!(stdout.contains("medians over the runs:"), "{stdout}");
    assert!(stdout.contains("sim ran 1 seeds at 30 nodes"), "{stdout}");
}

#[test]
fn many_seeds_print_only_the_medians() {
    let output = sim(&["--seeds", "3", "--first", "5", "--nodes", "20", "--jobs", "2"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains("0 violations"), "no run's summary without a violation: {stderr}");
    assert!(stdout.contains("sim ran 3 seeds at 20 nodes") && stdout.contains("0 with violations"), "{stdout}");
    assert!(stdout.contains("change stored by all:") && stdout.contains("(3 of 3 runs)"), "{stdout}");
}

#[test]
fn a_spread_and_revert_run_traces_every_decision() {
    let output = sim(&["--seed", "3", "--nodes", "40", "--spread", "--no-faults", "--trace"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("faults: none"), "{stderr}");
    assert!(
        stderr.contains(" accepts n") && stderr.contains(" reverts n") && stderr.contains("holds the revert"),
        "{stderr}"
    );
    assert!(!stderr.contains("good change"), "a spread run has no good change: {stderr}");
}

#[test]
fn a_usage_error_exits_2_and_says_what_was_expected() {
    let output = sim(&["--nodes", "1"]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--nodes: expected at least 2, got 1"), "{stderr}");
    let output = sim(&["--seeds", "many"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).1.contains("--seeds: expected a number, got \"many\""));
}

#[test]
fn a_fleet_in_cells_prints_its_cells_and_keeps_every_invariant() {
    let output = sim(&["--seed", "3", "--nodes", "40", "--cells", "4", "--spread"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("seed 3 nodes 40: 0 violations"), "{stderr}");
    assert!(stderr.contains("cells: 4 of 10 nodes, 3 representatives each, 20 ms between cells"), "{stderr}");
    assert!(stdout.contains("sim ran 1 seeds at 40 nodes"), "{stdout}");
}

#[test]
fn cells_are_refused_where_they_do_not_fit_and_say_why() {
    let output = sim(&["--nodes", "40", "--cells", "4"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).1.contains("--cells needs --spread"), "{}", text(&output).1);
    let output = sim(&["--nodes", "40", "--cells", "4", "--cell-size", "10", "--spread"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).1.contains("expected one of them, got both"), "{}", text(&output).1);
    let output = sim(&["--nodes", "40", "--cells", "41", "--spread"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).1.contains("--cells: expected 1 to 40 (the nodes), got 41"), "{}", text(&output).1);
}
