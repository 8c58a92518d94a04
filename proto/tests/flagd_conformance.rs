//! flagd conformance: every scenario of the flagd testbed's evaluator suite
//! (`tests/conformance/flagd-testbed/evaluator/gherkin/*.feature`, over
//! `evaluator/flags/testkit-flags.json`), and every vector of the CBOR fractional scheme
//! (`tests/conformance/fractional-cbor/vectors.json`), through Grapevine's own evaluator.
//!
//! The Gherkin runner knows the steps the suite uses; a step it does not know fails the test,
//! so no scenario is skipped silently. Examples tagged `@fractional-v1` (flagd's legacy
//! bucketing, which Grapevine does not implement) are the only ones left out, and counted.
//!
//! What runs: every Gherkin scenario of the flagd testbed's evaluator suite over its
//! `testkit-flags.json`, read through `FlagSet::parse` with the `v2` scheme (125 scenarios; the 15
//! examples tagged `@fractional-v1`, flagd's legacy bucketing, are left out and counted; a step the
//! runner does not know fails the test), and the 756 vectors of the CBOR scheme computed with
//! flagd's Python core, with the `cbor` scheme. Each directory's `SOURCE.md` under
//! `proto/tests/conformance/` says where it comes from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use grapevine_proto::eval::{ErrorCode, Evaluation, Expected, FlagSet, Reason};
use grapevine_proto::flagd::Fractional;
use serde_json::{Map, Value, json};

/// `$flagd.timestamp` in these tests (no testbed rule reads it).
const NOW_S: u64 = 1_800_000_000;

fn conformance() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn testkit() -> FlagSet {
    let text = std::fs::read_to_string(conformance().join("flagd-testbed/evaluator/flags/testkit-flags.json")).unwrap();
    FlagSet::parse(&text).unwrap()
}

/// One scenario, with its example row substituted.
#[derive(Debug, Clone)]
struct Scenario {
    name: String,
    steps: Vec<String>,
    /// Data table rows under the last step (`| a | b |`), first row the header.
    tables: BTreeMap<usize, Vec<Vec<String>>>,
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|cell| cell.trim().replace("\\\"", "\"")).collect()
}

/// Expands a feature file into scenarios; returns them and how many v1 examples were left out.
fn scenarios(text: &str) -> (Vec<Scenario>, usize) {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut background: Vec<String> = Vec::new();
    let mut index = 0;
    let mut tags: Vec<String> = Vec::new();
    while index < lines.len() {
        let line = lines[index];
        if line.starts_with('@') {
            tags.extend(line.split_whitespace().map(str::to_owned));
            index += 1;
            continue;
        }
        if line.starts_with("Background:") {
            index += 1;
            while index < lines.len() && is_step(lines[index]) {
                background.push(lines[index].to_owned());
                index += 1;
            }
            continue;
        }
        if let Some(name) = line.strip_prefix("Scenario Outline:").or_else(|| line.strip_prefix("Scenario:")) {
            let name = name.trim().to_owned();
            tags.clear();
            index += 1;
            let mut steps = background.clone();
            let mut tables: BTreeMap<usize, Vec<Vec<String>>> = BTreeMap::new();
            while index < lines.len() && (is_step(lines[index]) || lines[index].starts_with('|')) {
                if lines[index].starts_with('|') {
                    tables.entry(steps.len() - 1).or_default().push(cells(lines[index]));
                } else {
                    steps.push(lines[index].to_owned());
                }
                index += 1;
            }
            let mut examples_found = false;
            let mut example_tags: Vec<String> = Vec::new();
            while index < lines.len() && (lines[index].starts_with('@') || lines[index].starts_with("Examples")) {
                if lines[index].starts_with('@') {
                    example_tags.extend(lines[index].split_whitespace().map(str::to_owned));
                    index += 1;
                    continue;
                }
                examples_found = true;
                index += 1;
                let header = cells(lines[index]);
                index += 1;
                while index < lines.len() && lines[index].starts_with('|') {
                    let row = cells(lines[index]);
                    index += 1;
                    if example_tags.iter().any(|t| t == "@fractional-v1") {
                        skipped += 1;
                        continue;
                    }
                    let substitute = |step: &str| {
                        header.iter().zip(&row).fold(step.to_owned(), |s, (h, v)| s.replace(&format!("<{h}>"), v))
                    };
                    out.push(Scenario {
                        name: format!("{name} {row:?}"),
                        steps: steps.iter().map(|s| substitute(s)).collect(),
                        tables: tables.clone(),
                    });
                }
                example_tags.clear();
            }
            if !examples_found {
                out.push(Scenario { name, steps, tables });
            }
            continue;
        }
        index += 1;
    }
    (out, skipped)
}

fn is_step(line: &str) -> bool {
    ["Given ", "And ", "When ", "Then ", "But "].iter().any(|k| line.starts_with(k))
}

/// The quoted arguments of a step, in order.
fn quoted(step: &str) -> Vec<String> {
    step.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

fn typed(kind: &str, text: &str) -> Value {
    match kind {
        "Boolean" => json!(text == "true"),
        "Integer" => json!(text.parse::<i64>().unwrap()),
        "Float" => json!(text.parse::<f64>().unwrap()),
        "Object" => serde_json::from_str(text).unwrap(),
        _ => json!(text),
    }
}

fn expected(kind: &str) -> Expected {
    match kind {
        "Boolean" => Expected::Boolean,
        "Integer" => Expected::Integer,
        "Float" => Expected::Float,
        "Object" => Expected::Object,
        _ => Expected::String,
    }
}

/// Runs one scenario; Err says which step failed and why.
fn run(flags: &FlagSet, scenario: &Scenario) -> Result<(), String> {
    let mut flag: Option<(String, String, Value)> = None;
    let mut context = Map::new();
    let mut result: Option<Evaluation> = None;
    for (index, step) in scenario.steps.iter().enumerate() {
        let args = quoted(step);
        let body = step.split_once(' ').map_or("", |(_, rest)| rest);
        let value_of = |evaluation: &Evaluation, fallback: &Value| evaluation.value.clone().unwrap_or(fallback.clone());
        if body == "an evaluator" {
        } else if body.contains("-flag with key") {
            let kind = body.split('-').next().unwrap().trim_start_matches("a ").to_owned();
            let start = step.find("fallback value \"").unwrap() + "fallback value \"".len();
            let fallback = typed(&kind, &step[start..step.rfind('"').unwrap()]);
            flag = Some((kind, args[0].clone(), fallback));
        } else if body.starts_with("a context containing a targeting key") {
            context.insert("targetingKey".into(), json!(args[0]));
        } else if body.starts_with("a context containing a key") {
            let value = if args[2].is_empty() && args[1] != "String" { Value::Null } else { typed(&args[1], &args[2]) };
            context.insert(args[0].clone(), value);
        } else if body.starts_with("a context containing a nested property") {
            let outer = context.entry(args[0].clone()).or_insert_with(|| json!({}));
            outer.as_object_mut().unwrap().insert(args[1].clone(), json!(args[2]));
        } else if body == "the flag was evaluated with details" {
            let (kind, key, _) = flag.as_ref().ok_or("no flag before evaluating")?;
            result = Some(flags.evaluate(key, &context, Fractional::V2, NOW_S).expecting(expected(kind)));
        } else if body.starts_with("the resolved details value should be") {
            let (kind, _, fallback) = flag.as_ref().unwrap();
            let evaluation = result.as_ref().ok_or("not evaluated")?;
            // The whole quoted text: an object value holds quotes of its own.
            let text = &step[step.find('"').unwrap() + 1..step.rfind('"').unwrap()];
            let want = typed(kind, text);
            let got = value_of(evaluation, fallback);
            let same = match (kind.as_str(), &got) {
                ("Float", Value::Number(n)) => n.as_f64() == want.as_f64(),
                _ => got == want,
            };
            if !same {
                return Err(format!("step {index} {step:?}: got {got} ({evaluation:?})"));
            }
        } else if body.starts_with("the reason should be") {
            let evaluation = result.as_ref().ok_or("not evaluated")?;
            let reason = serde_json::to_value(evaluation.reason).unwrap();
            if reason != json!(args[0]) {
                return Err(format!("step {index} {step:?}: got reason {reason} ({evaluation:?})"));
            }
        } else if body.starts_with("the error-code should be") {
            let evaluation = result.as_ref().ok_or("not evaluated")?;
            let code = evaluation.error_code.map(|c| serde_json::to_value(c).unwrap());
            if code != Some(json!(args[0])) {
                return Err(format!("step {index} {step:?}: got error code {code:?} ({evaluation:?})"));
            }
        } else if body == "the resolved metadata is empty" {
            let evaluation = result.as_ref().ok_or("not evaluated")?;
            if !evaluation.metadata.is_empty() {
                return Err(format!("step {index}: metadata {:?}", evaluation.metadata));
            }
        } else if body == "the resolved metadata should contain" {
            let evaluation = result.as_ref().ok_or("not evaluated")?;
            for row in scenario.tables.get(&index).into_iter().flatten().skip(1) {
                let want = typed(&row[1], &row[2]);
                let got = evaluation.metadata.get(&row[0]);
                let same = got.is_some_and(|g| g == &want || (g.as_f64().is_some() && g.as_f64() == want.as_f64()));
                if !same {
                    return Err(format!("step {index}: metadata {} = {got:?}, want {want}", row[0]));
                }
            }
        } else {
            return Err(format!("unknown step {step:?}"));
        }
    }
    Ok(())
}

#[test]
fn every_flagd_testbed_evaluator_scenario_passes() {
    let flags = testkit();
    let dir = conformance().join("flagd-testbed/evaluator/gherkin");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (mut passed, mut skipped, mut failures) = (0, 0, Vec::new());
    for file in files {
        let (list, left_out) = scenarios(&std::fs::read_to_string(&file).unwrap());
        skipped += left_out;
        for scenario in list {
            match run(&flags, &scenario) {
                Ok(()) => passed += 1,
                Err(error) => failures.push(format!(
                    "{}: {}: {error}",
                    file.file_name().unwrap().to_string_lossy(),
                    scenario.name
                )),
            }
        }
    }
    eprintln!("flagd testbed: {passed} scenarios passed, {skipped} @fractional-v1 examples left out");
    assert!(failures.is_empty(), "{} failed:\n{}", failures.len(), failures.join("\n"));
    assert!(passed > 100, "only {passed} scenarios ran");
}

#[test]
fn every_cbor_fractional_vector_matches_the_reference_evaluator() {
    let flags = testkit();
    let text = std::fs::read_to_string(conformance().join("fractional-cbor/vectors.json")).unwrap();
    let vectors: Value = serde_json::from_str(&text).unwrap();
    let vectors = vectors["vectors"].as_array().unwrap();
    let mut failures = Vec::new();
    for vector in vectors {
        let key = vector["flag"].as_str().unwrap();
        let context = vector["context"].as_object().unwrap();
        let evaluation = flags.evaluate(key, context, Fractional::Cbor, NOW_S).expecting(Expected::String);
        let ok = match vector.get("error") {
            Some(_) => evaluation.error_code == Some(ErrorCode::General) && evaluation.reason == Reason::Error,
            None => {
                let value = evaluation.value.clone().unwrap_or(json!("fallback"));
                let reason = serde_json::to_value(evaluation.reason).unwrap();
                value == vector["value"]
                    && evaluation.variant.as_deref().map(Value::from).unwrap_or(Value::Null)
                        == vector.get("variant").cloned().unwrap_or(Value::Null)
                    && reason == vector["reason"]
            }
        };
        if !ok {
            failures.push(format!("{vector}: got {evaluation:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}
