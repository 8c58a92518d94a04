//! `node`'s top-level modules import each other without a cycle (`docs/ARCHITECTURE.md`,
//! "`node/`"): each can be read, changed and tested with only the modules under it in mind.
//! The imports are read from the sources as proto's layers test reads its own
//! (`proto/tests/support/modules.rs`).

#[path = "../../proto/tests/support/modules.rs"]
mod modules;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let imports = modules::imports(&src);
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for import in &imports {
        graph.entry(&import.module).or_default().insert(&import.target);
    }
    let cycles: Vec<String> = cycles(&graph)
        .into_iter()
        .map(|cycle| {
            let edges = cycle.iter().zip(cycle.iter().cycle().skip(1));
            let evidence: Vec<String> = edges
                .map(|(from, to)| {
                    let first = imports.iter().find(|i| i.module == *from && i.target == *to).expect("an edge");
                    format!("{from} -> {to} ({}: through {})", first.file, first.through)
                })
                .collect();
            evidence.join(", ")
        })
        .collect();
    assert!(cycles.is_empty(), "modules that import each other (move what they share down):\n{}", cycles.join("\n"));
}

#[test]
fn a_cycle_is_found() {
    let graph = BTreeMap::from([
        ("a", BTreeSet::from(["b"])),
        ("b", BTreeSet::from(["c"])),
        ("c", BTreeSet::from(["a", "d"])),
        ("d", BTreeSet::new()),
    ]);
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    let acyclic = BTreeMap::from([("a", BTreeSet::from(["b"])), ("b", BTreeSet::new())]);
    assert!(cycles(&acyclic).is_empty());
}

/// At least one cycle in each group of modules that import each other (a cycle stays within its
/// group, so a group's first module finds one): for each module in order that no cycle found
/// so far passes through, the shortest path back to it that avoids those modules, if any.
fn cycles<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut reported: BTreeSet<&str> = BTreeSet::new();
    let mut found = Vec::new();
    for &start in graph.keys() {
        if reported.contains(start) {
            continue;
        }
        if let Some(path) = path_back(graph, start, &reported) {
            reported.extend(path.iter().copied());
            found.push(path);
        }
    }
    found
}

/// The shortest path from `start` back to itself avoiding `skip`, `start` first.
fn path_back<'a>(
    graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    start: &'a str,
    skip: &BTreeSet<&str>,
) -> Option<Vec<&'a str>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(module) = queue.pop_front() {
        for &next in graph.get(module).into_iter().flatten() {
            if next == start {
                let mut path = vec![module];
                while let Some(&up) = parent.get(path.last().expect("non-empty")) {
                    path.push(up);
                }
                path.reverse();
                return Some(path);
            }
            if !skip.contains(next) && next != start && !parent.contains_key(next) {
                parent.insert(next, module);
                queue.push_back(next);
            }
        }
    }
    None
}
