//! flagd's testbed provider scenarios (`../shared/conformance/flagd-testbed/gherkin/`), run
//! through the real Python and JavaScript providers in `rpc` and `in-process` modes against a
//! real `grapevine node` serving the testbed's flag files, as flagd's providers run them
//! against flagd. Prints each scenario's outcome; fails on any failure that is not listed in
//! [`KNOWN_FAILURES`] with its reason (and on a listed one that passes, so the list stays true).
//!
//! Grapevine serves one flag per key: the testbed's files are applied as flagd's launchpad
//! serves them (the merged `allFlags.json`, `selector-flags.json` as flag set `selector-set`,
//! `selector-flag-combined-metadata.json` as flag set `combined-metadata`), and the testbed's
//! selectors, which name source files, are given as the flag sets those files became.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use grapevine_cluster_tests::gherkin::{self, Scenario, Step};
use grapevine_cluster_tests::providers::{self, Language, Mode, Options, Provider, with_flagd};
use grapevine_cluster_tests::{Cluster, Node};
use serde_json::{Map, Value, json};

/// The features issue 21 names; the others (connection, config, rpc-caching) test a provider's
/// own configuration and connection handling against flagd's launchpad, not the server.
const FEATURES: [&str; 8] = [
    "evaluation.feature",
    "targeting.feature",
    "events.feature",
    "selector.feature",
    "metadata.feature",
    "disabled.feature",
    "contextEnrichment.feature",
    "sync-payload.feature",
];

/// Scenarios that fail, by (language, mode, scenario name prefix), with why.
const KNOWN_FAILURES: &[(&str, &str, &str, &str)] = &[
    (
        "python",
        "in-process",
        "Fractional operator with map key ordering",
        "openfeature-flagd-core 2.0.0 buckets a non-string value (an object) the same whatever it holds (bucket22)",
    ),
    (
        "python",
        "in-process",
        "Fractional operator with advanced structures",
        "openfeature-flagd-core 2.0.0 buckets a non-string value (an object) the same whatever it holds (bucket22)",
    ),
];

/// Seconds the testbed's providers stay stale before an error: the events scenarios lose the
/// connection for 3 s and expect the error (the providers' default is 5 s).
const GRACE_S: u64 = 2;

fn testbed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/flagd-testbed")
}

/// The fractional bucketing each client buckets with: the node's (`v2`) over rpc; the
/// provider's own core in process. The testbed tags its fractional examples by scheme
/// (`@fractional-v1` legacy, `@fractional-v2` string-keyed, `@fractional-v3` CBOR-keyed).
fn fractional_tag(language: Language, mode: Mode) -> &'static str {
    match (language, mode) {
        (Language::Python, Mode::InProcess) => "fractional-v3",
        _ => "fractional-v2",
    }
}

/// Why a scenario does not apply to Grapevine, if it does not.
fn not_applicable(scenario: &Scenario, language: Language, mode: Mode) -> Option<String> {
    let tag = |t: &str| scenario.tags.contains(t);
    if !tag(mode.as_str()) {
        return Some(format!("not tagged @{}", mode.as_str()));
    }
    if tag("deprecated") {
        return Some("deprecated by the testbed (superseded by @no-default-variant)".into());
    }
    let scheme = fractional_tag(language, mode);
    if let Some(other) = scenario.tags.iter().find(|t| t.starts_with("fractional-v") && *t != scheme) {
        return Some(format!("@{other}: this client buckets with @{scheme}"));
    }
    if scenario.name.starts_with("Flag disabled in one flag set, enabled in another") {
        return Some("one key, one flag: Grapevine cannot hold `cross-flagset-flag` in two flag sets".into());
    }
    if scenario.name.contains("[error-targeting-flag,") {
        return Some("refused when submitted: a rule with an unknown operator is never applied".into());
    }
    if scenario.name.starts_with("Ref to nonexistent evaluator") {
        return Some("refused when submitted: a flag with a $ref to a missing evaluator is never applied".into());
    }
    None
}

/// The testbed's files as a node serves them, applied to `node`; returns the keys refused.
fn apply_flags(node: &Node, dir: &Path) -> Result<Vec<String>> {
    let flags_dir = testbed().join("flags");
    let read =
        |name: &str| -> Result<Value> { Ok(serde_json::from_str(&std::fs::read_to_string(flags_dir.join(name))?)?) };
    let mut refused = Vec::new();
    let mut apply = |name: &str, mut file: Value| -> Result<()> {
        loop {
            let path = dir.join(name);
            std::fs::write(&path, file.to_string())?;
            let output = node.cli(&["apply", path.to_str().context("UTF-8")?, "--emergency"]);
            if output.status.success() {
                return Ok(());
            }
            // A flag the node refuses (flagd serves it and answers an error) is left out.
            let error = String::from_utf8_lossy(&output.stderr).into_owned();
            let key = error.split('"').nth(1).context("the refused flag")?.to_owned();
            let removed = file["flags"].as_object_mut().context("flags")?.remove(&key);
            anyhow::ensure!(removed.is_some(), "apply {name}: {error}");
            refused.push(key);
        }
    };
    apply("selector-flags.json", read("selector-flags.json")?)?;
    let mut combined = read("selector-flag-combined-metadata.json")?;
    combined["metadata"]["flagSetId"] = json!("combined-metadata");
    apply("selector-flag-combined-metadata.json", combined)?;
    // allFlags.json: every other file, merged (flags and $evaluators), as the testbed does.
    let mut all = json!({"flags": {}, "$evaluators": {}});
    let mut names: Vec<_> =
        std::fs::read_dir(&flags_dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    for name in names.iter().filter(|n| n.ends_with(".json") && !n.starts_with("selector-")) {
        let file = read(name)?;
        for part in ["flags", "$evaluators"] {
            if let Some(entries) = file[part].as_object() {
                all[part].as_object_mut().expect("an object").extend(entries.clone());
            }
        }
    }
    apply("allFlags.json", all)?;
    Ok(refused)
}

/// The testbed's selectors name source files; here they are the flag sets those files became.
fn selector(value: &str) -> String {
    match value {
        "rawflags/selector-flags.json" => "flagSetId=selector-set".into(),
        "rawflags/selector-flag-combined-metadata.json" => "flagSetId=combined-metadata".into(),
        other => other.into(),
    }
}

fn quoted(text: &str) -> Vec<String> {
    text.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

/// A value of a testbed type, from its text.
fn typed(kind: &str, text: &str) -> Value {
    match kind {
        "Boolean" => json!(text == "true"),
        "Integer" => text.parse::<i64>().map_or(json!(text), |n| json!(n)),
        "Float" => text.parse::<f64>().map_or(json!(text), |n| json!(n)),
        "Object" => serde_json::from_str(text).unwrap_or(json!(text)),
        _ => json!(text),
    }
}

fn same(kind: &str, found: &Value, expected: &Value) -> bool {
    match kind {
        "Float" | "Integer" => found.as_f64() == expected.as_f64(),
        _ => found == expected,
    }
}

/// One (language, mode): its providers by options, and the node they read from.
struct Runner<'a> {
    cluster: &'a mut Cluster,
    ports: (u16, u16),
    language: Language,
    mode: Mode,
    providers: BTreeMap<(String, String), Provider>,
    /// When the node, stopped for a "connection lost" step, starts again.
    restart_at: Option<Instant>,
    changing_flag_variant: &'static str,
}

/// What one scenario holds while it runs.
#[derive(Default)]
struct State {
    options: BTreeMap<String, String>,
    provider: Option<(String, String)>,
    flag: Option<(String, String, Value)>,
    context: Map<String, Value>,
    details: Option<Value>,
    /// Events before this index came before the scenario (or before the connection was lost).
    events_from: usize,
    lost_from: Option<usize>,
    changed_from: usize,
}

impl Runner<'_> {
    /// Starts the node again when its outage is over.
    fn tick(&mut self) -> Result<()> {
        if self.restart_at.is_some_and(|at| Instant::now() >= at) {
            self.restart_at = None;
            self.cluster.nodes[0].start()?;
        }
        Ok(())
    }

    fn provider(&mut self, state: &State) -> Result<&mut Provider> {
        let key = state.provider.clone().context("no provider yet")?;
        self.providers.get_mut(&key).context("the provider")
    }

    fn events(&mut self, state: &State) -> Result<Vec<providers::Event>> {
        self.provider(state)?.events()
    }

    /// Waits (the node's outage going on) until an event `name` at or after index `from`.
    fn wait_event(&mut self, state: &State, name: &str, from: usize, timeout: Duration) -> Result<providers::Event> {
        let deadline = Instant::now() + timeout;
        loop {
            self.tick()?;
            let events = self.events(state)?;
            if let Some(event) = events.iter().skip(from).find(|e| e.name == name) {
                return Ok(event.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no {name} event within {timeout:?} (events: {:?})",
                    events.iter().skip(from).map(|e| &e.name).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn step(&mut self, state: &mut State, step: &Step) -> Result<()> {
        let text = step.text.as_str();
        let q = quoted(text);
        let event_name = |word: &str| match word {
            "ready" => "PROVIDER_READY",
            "error" => "PROVIDER_ERROR",
            "stale" => "PROVIDER_STALE",
            _ => "PROVIDER_CONFIGURATION_CHANGED",
        };
        if text.starts_with("an option ") {
            state.options.insert(q[0].clone(), q[2].clone());
        } else if text.ends_with("flagd provider") {
            let selector = state.options.get("selector").map(|s| selector(s)).unwrap_or_default();
            let cache = state.options.get("cache").cloned().unwrap_or_default();
            let key = (selector.clone(), cache.clone());
            if !self.providers.contains_key(&key) {
                let port = if self.mode == Mode::Rpc { self.ports.0 } else { self.ports.1 };
                let options = Options {
                    selector: Some(selector).filter(|s| !s.is_empty()),
                    cache: Some(cache).filter(|c| !c.is_empty()),
                    grace_s: Some(GRACE_S),
                    ..Options::default()
                };
                self.providers.insert(key.clone(), Provider::start(self.language, self.mode, port, &options)?);
            }
            state.provider = Some(key);
            state.events_from = self.events(state)?.len();
        } else if let Some((kind, _)) = text.strip_prefix("a ").and_then(|t| t.split_once("-flag with key ")) {
            state.flag = Some((kind.to_owned(), q[0].clone(), typed(kind, &q[1])));
        } else if text.starts_with("a context containing a key ") {
            state.context.insert(q[0].clone(), typed(&q[1], &q[2]));
        } else if text.starts_with("a context containing a targeting key") {
            state.context.insert("targetingKey".into(), json!(q[0]));
        } else if text.starts_with("a context containing a nested property") {
            let outer = state.context.entry(q[0].clone()).or_insert_with(|| json!({}));
            outer[q[1].as_str()] = json!(q[2]);
        } else if text == "the flag was evaluated with details" {
            let (kind, key, default) = state.flag.clone().context("no flag")?;
            let context = Value::Object(state.context.clone());
            let kind = kind.to_lowercase();
            self.tick()?;
            state.details = Some(self.provider(state)?.eval(&kind, &key, default, context)?);
        } else if text.starts_with("the resolved details value should be") {
            let (kind, _, _) = state.flag.clone().context("no flag")?;
            let details = state.details.as_ref().context("not evaluated")?;
            let expected = typed(&kind, &q[0]);
            anyhow::ensure!(
                same(&kind, &details["value"], &expected),
                "value {} expected {expected}: {details}",
                details["value"]
            );
        } else if text.starts_with("the reason should be") {
            let details = state.details.as_ref().context("not evaluated")?;
            anyhow::ensure!(details["reason"] == json!(q[0]), "reason expected {}: {details}", q[0]);
        } else if text.starts_with("the variant should be") {
            let details = state.details.as_ref().context("not evaluated")?;
            anyhow::ensure!(details["variant"] == json!(q[0]), "variant expected {}: {details}", q[0]);
        } else if text.starts_with("the error-code should be") {
            let details = state.details.as_ref().context("not evaluated")?;
            let expected = if q[0].is_empty() { Value::Null } else { json!(q[0]) };
            anyhow::ensure!(details["error_code"] == expected, "error code expected {expected}: {details}");
        } else if text == "the resolved metadata is empty" {
            let details = state.details.as_ref().context("not evaluated")?;
            anyhow::ensure!(details["metadata"].as_object().is_none_or(Map::is_empty), "metadata: {details}");
        } else if text == "the resolved metadata should contain" {
            let details = state.details.as_ref().context("not evaluated")?;
            for row in step.table.iter().skip(1) {
                let expected = typed(&row[1], &row[2]);
                let found = &details["metadata"][row[0].as_str()];
                anyhow::ensure!(
                    same(&row[1], found, &expected),
                    "metadata {} = {found}, expected {expected}: {details}",
                    row[0]
                );
            }
        } else if text.ends_with("event handler") {
            // Every event is recorded from the start; the checks read them.
        } else if let Some(word) =
            text.strip_prefix("the ").and_then(|t| t.strip_suffix(" event handler should have been executed"))
        {
            let from = if word == "ready" { state.lost_from.unwrap_or(0) } else { state.events_from };
            self.wait_event(state, event_name(word), from, Duration::from_secs(15))?;
        } else if let Some(word) = text.strip_prefix("a ").and_then(|t| t.strip_suffix(" event was fired")) {
            let from = match word {
                "change" => state.changed_from,
                "ready" => state.lost_from.unwrap_or(state.events_from),
                _ => state.lost_from.unwrap_or(state.events_from),
            };
            self.wait_event(state, event_name(word), from, Duration::from_secs(15))?;
        } else if let Some(seconds) = text.strip_prefix("the connection is lost for ").and_then(|t| t.strip_suffix('s'))
        {
            let seconds: u64 = seconds.parse()?;
            state.lost_from = Some(self.events(state)?.len());
            self.cluster.nodes[0].terminate()?;
            self.restart_at = Some(Instant::now() + Duration::from_secs(seconds));
        } else if text == "the flag was modified" {
            state.changed_from = self.events(state)?.len();
            self.changing_flag_variant = if self.changing_flag_variant == "foo" { "bar" } else { "foo" };
            let output = self.cluster.nodes[0].cli(&[
                "flag",
                "set",
                "changing-flag",
                "--variant",
                self.changing_flag_variant,
                "--emergency",
            ]);
            anyhow::ensure!(output.status.success(), "flag set: {}", String::from_utf8_lossy(&output.stderr));
        } else if text == "the flag should be part of the event payload" {
            let (_, key, _) = state.flag.clone().context("no flag")?;
            let event =
                self.wait_event(state, "PROVIDER_CONFIGURATION_CHANGED", state.changed_from, Duration::from_secs(5))?;
            anyhow::ensure!(event.flags.contains(&key), "{key} not in {:?}", event.flags);
        } else {
            return Err(anyhow!("unsupported step: {text}"));
        }
        Ok(())
    }

    fn run(&mut self, scenario: &Scenario) -> Result<()> {
        let mut state = State::default();
        let result =
            scenario.steps.iter().try_for_each(|step| self.step(&mut state, step).with_context(|| step.text.clone()));
        // The node is up again before the next scenario, and the providers back with it.
        while self.restart_at.is_some() {
            self.tick()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        // Providers that lived through an outage start afresh for the next scenario.
        if state.lost_from.is_some() {
            self.providers.clear();
        }
        result
    }
}

#[derive(Debug)]
enum Outcome {
    Pass,
    Fail(String),
    NotApplicable(String),
}

#[test]
fn flagd_testbed_provider_scenarios() -> Result<()> {
    let mut scenarios = Vec::new();
    for feature in FEATURES {
        let text =
            std::fs::read_to_string(testbed().join("gherkin").join(feature)).with_context(|| feature.to_owned())?;
        scenarios.extend(gherkin::parse(&text).into_iter().map(|s| (feature, s)));
    }
    // One node per provider and mode, run side by side: each restarts its own node.
    let mut runs = Vec::new();
    for language in [Language::Python, Language::JavaScript] {
        if providers::available(language)? {
            runs.extend([(language, Mode::Rpc), (language, Mode::InProcess)]);
        }
    }
    let scenarios = &scenarios;
    let runs: Vec<Result<Vec<Row>>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            runs.iter().map(|(language, mode)| scope.spawn(move || run_one(*language, *mode, scenarios))).collect();
        handles.into_iter().map(|h| h.join().expect("a run does not panic")).collect()
    });
    let mut results = Vec::new();
    for run in runs {
        results.extend(run?);
    }
    report(&results)
}

type Row = (Language, Mode, &'static str, String, Outcome);

fn run_one(language: Language, mode: Mode, scenarios: &[(&'static str, Scenario)]) -> Result<Vec<Row>> {
    let mut cluster = Cluster::new(1)?;
    let ports = with_flagd(&mut cluster.nodes[0]);
    cluster.nodes[0].config_toml.push_str("context = { injectedmetadata = \"set\" }\n");
    cluster.start_all()?;
    let refused = apply_flags(&cluster.nodes[0], cluster.dir.path())?;
    println!(
        "{language} {}: flags refused when applied (flagd serves them, answering errors): {refused:?}",
        mode.as_str()
    );
    let mut results = Vec::new();
    let mut runner = Runner {
        cluster: &mut cluster,
        ports,
        language,
        mode,
        providers: BTreeMap::new(),
        restart_at: None,
        changing_flag_variant: "foo",
    };
    for (feature, scenario) in scenarios {
        let outcome = match not_applicable(scenario, language, mode) {
            Some(reason) => Outcome::NotApplicable(reason),
            None => {
                let started = Instant::now();
                let outcome = match runner.run(scenario) {
                    Ok(()) => Outcome::Pass,
                    Err(error) => Outcome::Fail(format!("{error:#}")),
                };
                if started.elapsed() > Duration::from_secs(2) {
                    println!(
                        "slow {language} {}: {}: {:.1} s",
                        mode.as_str(),
                        scenario.name,
                        started.elapsed().as_secs_f64()
                    );
                }
                outcome
            }
        };
        results.push((language, mode, *feature, scenario.name.clone(), outcome));
    }
    Ok(results)
}

fn report(results: &[Row]) -> Result<()> {
    let mut unexpected = Vec::new();
    let mut counts: BTreeMap<(String, &str, &str), (usize, usize, usize)> = BTreeMap::new();
    for (language, mode, feature, name, outcome) in results {
        let count = counts.entry((language.to_string(), mode.as_str(), *feature)).or_default();
        let known = KNOWN_FAILURES
            .iter()
            .find(|(l, m, prefix, _)| *l == language.to_string() && *m == mode.as_str() && name.starts_with(prefix));
        match outcome {
            Outcome::Pass => count.0 += 1,
            Outcome::Fail(error) => {
                count.1 += 1;
                println!("FAIL {language} {} {feature}: {name}: {error}", mode.as_str());
                if known.is_none() {
                    unexpected.push(format!("{language} {} {feature}: {name}: {error}", mode.as_str()));
                }
            }
            Outcome::NotApplicable(reason) => {
                count.2 += 1;
                println!("n/a  {language} {} {feature}: {name}: {reason}", mode.as_str());
            }
        }
    }
    // Each listed failure still happens (some of its examples may pass by chance).
    for (language, mode, prefix, why) in KNOWN_FAILURES {
        let ran = results.iter().any(|(l, m, ..)| l.to_string() == *language && m.as_str() == *mode);
        let fails = results.iter().any(|(l, m, _, name, outcome)| {
            l.to_string() == *language
                && m.as_str() == *mode
                && name.starts_with(prefix)
                && matches!(outcome, Outcome::Fail(_))
        });
        if ran && !fails {
            unexpected.push(format!("{language} {mode}: {prefix}: listed as failing ({why}), but passes"));
        }
        if fails {
            println!("known: {language} {mode}: {prefix}: {why}");
        }
    }
    println!("\n{:<12} {:<11} {:<26} {:>6} {:>6} {:>6}", "provider", "mode", "feature", "pass", "fail", "n/a");
    for ((language, mode, feature), (pass, fail, na)) in &counts {
        println!("{language:<12} {mode:<11} {feature:<26} {pass:>6} {fail:>6} {na:>6}");
    }
    anyhow::ensure!(unexpected.is_empty(), "{} unexpected outcomes:\n{}", unexpected.len(), unexpected.join("\n"));
    Ok(())
}
