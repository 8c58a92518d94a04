//! The Prometheus alert rules and the Grafana dashboard under `deploy/` read well-formed and
//! name only metrics a node exposes, and the metrics table of `docs/operations.md` names each
//! of them with its type.

use std::collections::BTreeSet;
use std::path::Path;

use grapevine_node::metrics::Metrics;

/// A file of the repository, by its path from the repository's root.
fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn deploy(file: &str) -> String {
    read(&format!("deploy/{file}"))
}

/// Metric families a node exposes, with their types, as their `# TYPE` lines give them.
fn exposed_types() -> BTreeSet<(String, String)> {
    Metrics::new()
        .render()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Metric families a node exposes, by the names their `# TYPE` lines give.
fn exposed() -> BTreeSet<String> {
    exposed_types().into_iter().map(|(name, _)| name).collect()
}

/// Every `grapevine_...` name in `text`, as its family (without `_total`, `_bucket`, ...).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("grapevine_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family =
            ["_total", "_bucket", "_count", "_sum"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_are_well_formed_and_name_exposed_metrics() {
    let text = deploy("prometheus/alerts.yml");
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("alerts.yml is YAML");
    let group = &rules["groups"][0];
    assert_eq!(group["name"].as_str(), Some("grapevine"));
    let rules = group["rules"].as_sequence().expect("a list of rules");
    assert!(rules.len() >= 4, "revert, stalled rollout, node behind, TLS failures at least");
    for rule in rules {
        assert!(rule["alert"].as_str().is_some_and(|a| a.starts_with("Grapevine")), "{rule:?}");
        assert!(rule["expr"].as_str().is_some_and(|e| !e.is_empty()), "{rule:?}");
        assert!(rule["labels"]["severity"].as_str().is_some(), "{rule:?}");
    }
    let exposed = exposed();
    for name in referenced(&text) {
        assert!(exposed.contains(&name), "alerts.yml names {name}, which no node exposes");
    }
}

#[test]
fn the_dashboard_is_grafana_json_and_names_exposed_metrics() {
    let text = deploy("grafana/grapevine.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for panel in panels {
        assert!(panel["targets"].as_array().is_some_and(|t| !t.is_empty()), "{panel}");
    }
    let exposed = exposed();
    let names = referenced(&text);
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(exposed.contains(&name), "the dashboard names {name}, which no node exposes");
    }
}

/// The metrics table of `docs/operations.md` is the operator's list of what a node exports: a
/// metric added, renamed or retyped without it fails here.
#[test]
fn the_operations_guide_lists_each_exposed_metric_with_its_type() {
    let guide = read("docs/operations.md");
    let section = guide.split("\n## Metrics\n").nth(1).expect("operations.md has a \"## Metrics\" section");
    let section = section.split_once("\n## ").map_or(section, |(metrics, _)| metrics);
    let mut documented = BTreeSet::new();
    for row in section.lines().filter(|line| line.starts_with("| `grapevine_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, kind) = (cells[1], cells[2]);
        documented.extend(referenced(names).into_iter().map(|name| (name, kind.to_owned())));
    }
    let exposed = exposed_types();
    let missing: Vec<_> = exposed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "the metrics table of docs/operations.md lacks {missing:?}, and lists {stale:?}, which no node exposes"
    );
}
