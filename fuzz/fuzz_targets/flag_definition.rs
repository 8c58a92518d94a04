//! A flag definition as the node reads one from a user (`flag set --file`: `FlagDefinition::parse`,
//! also what validates a flag from a peer) or a flagd flag file (`apply`: `FlagSet::parse`),
//! then evaluated. Input: the JSON text, optionally followed by a NUL byte and an evaluation
//! context (a JSON object); without one, sample contexts are used.

#![no_main]

use grapevine_fuzz::{check_evaluation, check_flag_round_trip, sample_contexts, split_at_nul};
use grapevine_proto::JsonText;
use grapevine_proto::eval::{FlagDefinition, FlagSet};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let (definition, context) = split_at_nul(bytes);
    let Ok(text) = std::str::from_utf8(definition) else { return };
    let contexts = match context.and_then(|context| serde_json::from_slice::<Value>(context).ok()) {
        Some(Value::Object(context)) => vec![context],
        _ => sample_contexts(),
    };
    let key = "fuzz".parse().expect("a valid key");
    if let Ok(text) = JsonText::try_from(text.to_owned()) {
        if let Ok(flag) = FlagDefinition::parse(&key, &text) {
            check_flag_round_trip(&flag);
            for context in &contexts {
                check_evaluation(&flag, "fuzz", context);
            }
        }
    }
    if let Ok(set) = FlagSet::parse(text) {
        for (name, flag) in &set.flags {
            let Ok(flag) = flag else { continue };
            check_flag_round_trip(flag);
            for context in &contexts {
                check_evaluation(flag, name, context);
                let _ = set.evaluate(name, context, Default::default(), 0);
            }
        }
    }
});
