//! The modules of `proto` form layers (`docs/ARCHITECTURE.md`, "`proto/`"): the code of a module
//! imports only the modules below it, so the modules' imports have no cycle. The imports are
//! read from the sources (`support/modules.rs`, which says how).

#[path = "support/modules.rs"]
mod modules;

use std::collections::BTreeSet;
use std::path::Path;

/// The top-level modules of `proto/src`, bottom to top, as `docs/ARCHITECTURE.md` lists them:
/// each may import only those before it.
const LAYERS: &[&str] = &[
    // Leaves.
    "limits",
    "error",
    "hlc",
    // Data.
    "name",
    "policy",
    "signing",
    "report",
    "model",
    "snapshot",
    "log",
    // Flags.
    "flagd",
    "cost",
    "compiled",
    "targeting",
    "eval",
    "state",
    "edit",
    // Decisions.
    "push",
    "cell",
    "schedule",
    "health",
    "rollout",
    "approvals",
    "audit",
    "trust",
    "wire",
    "validate",
    // The replica, and the simulator around it.
    "replica",
    "sim",
    // Test builds only.
    "testing",
];

#[test]
fn every_module_imports_only_the_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let listed: BTreeSet<String> = LAYERS.iter().map(|m| (*m).to_owned()).collect();
    assert_eq!(
        modules::top_level_modules(&src),
        listed,
        "every module of proto/src has its place in LAYERS and in docs/ARCHITECTURE.md"
    );
    let rank = |module: &str| LAYERS.iter().position(|m| *m == module).expect("listed");
    let upward: Vec<String> = modules::imports(&src)
        .into_iter()
        .filter(|import| rank(&import.target) > rank(&import.module))
        .map(|i| format!("{}: {} imports {} (through {})", i.file, i.module, i.target, i.through))
        .collect();
    assert!(upward.is_empty(), "imports from a higher layer (move the shared type down):\n{}", upward.join("\n"));
}
