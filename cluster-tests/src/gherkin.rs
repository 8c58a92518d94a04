//! A small reader of Gherkin feature files, enough for flagd's testbed scenarios
//! (`../shared/conformance/flagd-testbed/gherkin/`): tags, `Background`, `Scenario`,
//! `Scenario Outline` with tagged `Examples` tables, steps, and steps' data tables.

use std::collections::BTreeSet;

/// One step: its text (with `<placeholders>` filled in) and its data table, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub text: String,
    pub table: Vec<Vec<String>>,
}

/// One runnable scenario: an outline gives one per row of its examples.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub feature: String,
    pub name: String,
    /// The feature's, the scenario's and its examples' tags, without `@`.
    pub tags: BTreeSet<String>,
    /// The background's steps, then the scenario's.
    pub steps: Vec<Step>,
}

#[derive(Default)]
struct Outline {
    name: String,
    tags: BTreeSet<String>,
    steps: Vec<Step>,
}

fn tags_of(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split_whitespace().filter_map(|t| t.strip_prefix('@')).map(str::to_owned)
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|cell| cell.trim().to_owned()).collect()
}

fn fill(text: &str, header: &[String], row: &[String]) -> String {
    header.iter().zip(row).fold(text.to_owned(), |text, (name, value)| text.replace(&format!("<{name}>"), value))
}

/// Reads a feature file into its scenarios.
pub fn parse(text: &str) -> Vec<Scenario> {
    let (mut feature, mut feature_tags, mut pending_tags) = (String::new(), BTreeSet::new(), BTreeSet::new());
    let mut background: Vec<Step> = Vec::new();
    let mut in_background = false;
    let mut current: Option<Outline> = None;
    let (mut examples_tags, mut header): (BTreeSet<String>, Option<Vec<String>>) = (BTreeSet::new(), None);
    let mut in_examples = false;
    let mut scenarios = Vec::new();
    let finish = |current: &mut Option<Outline>,
                  in_examples: bool,
                  scenarios: &mut Vec<Scenario>,
                  feature: &str,
                  feature_tags: &BTreeSet<String>,
                  background: &[Step]| {
        if let Some(outline) = current.take()
            && !in_examples
        {
            let mut tags = feature_tags.clone();
            tags.extend(outline.tags);
            let steps = background.iter().cloned().chain(outline.steps).collect();
            scenarios.push(Scenario { feature: feature.to_owned(), name: outline.name, tags, steps });
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with('@') {
            pending_tags.extend(tags_of(trimmed));
        } else if let Some(name) = trimmed.strip_prefix("Feature:") {
            feature = name.trim().to_owned();
            feature_tags = std::mem::take(&mut pending_tags);
        } else if trimmed.starts_with("Background:") {
            in_background = true;
        } else if let Some(name) =
            trimmed.strip_prefix("Scenario Outline:").or_else(|| trimmed.strip_prefix("Scenario:"))
        {
            finish(&mut current, in_examples, &mut scenarios, &feature, &feature_tags, &background);
            in_background = false;
            in_examples = false;
            current = Some(Outline {
                name: name.trim().to_owned(),
                tags: std::mem::take(&mut pending_tags),
                steps: Vec::new(),
            });
        } else if trimmed.starts_with("Examples:") {
            in_examples = true;
            examples_tags = std::mem::take(&mut pending_tags);
            header = None;
        } else if trimmed.starts_with('|') {
            let row = cells(trimmed);
            if in_examples {
                let Some(outline) = current.as_ref() else { continue };
                match &header {
                    None => header = Some(row),
                    Some(names) => {
                        let mut tags = feature_tags.clone();
                        tags.extend(outline.tags.iter().cloned());
                        tags.extend(examples_tags.iter().cloned());
                        let steps = background
                            .iter()
                            .cloned()
                            .chain(
                                outline
                                    .steps
                                    .iter()
                                    .map(|s| Step { text: fill(&s.text, names, &row), table: s.table.clone() }),
                            )
                            .collect();
                        let name = format!("{} [{}]", outline.name, row.join(", "));
                        scenarios.push(Scenario { feature: feature.clone(), name, tags, steps });
                    }
                }
            } else {
                let steps = if in_background {
                    &mut background
                } else {
                    &mut current.get_or_insert_with(Outline::default).steps
                };
                if let Some(step) = steps.last_mut() {
                    step.table.push(row);
                }
            }
        } else if let Some((keyword, rest)) = trimmed.split_once(' ')
            && ["Given", "When", "Then", "And", "But"].contains(&keyword)
        {
            let step = Step { text: rest.trim().to_owned(), table: Vec::new() };
            match (&mut current, in_background) {
                (_, true) => background.push(step),
                (Some(outline), false) => outline.steps.push(step),
                (None, false) => {}
            }
        }
    }
    finish(&mut current, in_examples, &mut scenarios, &feature, &feature_tags, &background);
    scenarios
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlines_expand_per_row_with_their_examples_tags() {
        let text = "@rpc\nFeature: f\n  Background:\n    Given a stable flagd provider\n\n  @a\n  Scenario Outline: o\n    Given a <type>-flag\n    Then a table\n      | k | v |\n\n    @v1\n    Examples: one\n      | type |\n      | Boolean |\n    @v2\n    Examples: two\n      | type |\n      | String |\n  Scenario: plain\n    When x\n";
        let scenarios = parse(text);
        assert_eq!(scenarios.len(), 3);
        assert_eq!(scenarios[0].steps[1].text, "a Boolean-flag");
        assert_eq!(scenarios[0].steps[2].table, vec![vec!["k".to_owned(), "v".to_owned()]]);
        assert!(
            scenarios[0].tags.contains("v1") && scenarios[0].tags.contains("rpc") && scenarios[0].tags.contains("a")
        );
        assert!(scenarios[1].tags.contains("v2") && !scenarios[1].tags.contains("v1"));
        assert_eq!(scenarios[2].steps.len(), 2);
        assert!(!scenarios[2].tags.contains("a"));
    }
}
