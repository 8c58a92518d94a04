//! The body of an OFREP evaluation request from any application on the node's HTTP port
//! (node/src/api/ofrep.rs reads it with `eval::ofrep_context`), then the context evaluated
//! against flags whose targeting uses every flagd operator.

#![no_main]

use std::sync::LazyLock;

use grapevine_fuzz::check_evaluation;
use grapevine_proto::eval::{FlagDefinition, FlagSet, ofrep_context};
use libfuzzer_sys::fuzz_target;

/// A flagd flag file whose rules read the context in every way flagd's operators can.
const FLAGS: &str = include_str!("../data/ofrep_flags.json");

static FLAG_SET: LazyLock<Vec<(String, FlagDefinition)>> = LazyLock::new(|| {
    let set = FlagSet::parse(FLAGS).expect("the fuzz target's flag file parses");
    set.flags
        .into_iter()
        .map(|(name, flag)| (name, flag.expect("each flag of the fuzz target's file parses")))
        .collect()
});

fuzz_target!(|body: &[u8]| {
    let Ok(context) = ofrep_context(body) else { return };
    for (key, flag) in FLAG_SET.iter() {
        check_evaluation(flag, key, &context);
    }
});
