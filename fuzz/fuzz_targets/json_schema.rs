//! A config value and its JSON Schema, as the node checks them on `config put` and on every
//! generation from a peer or its store (`validate::validate_config_value`). Input: the schema's
//! JSON text, optionally followed by a NUL byte and a value's JSON text; without one, a value
//! of each JSON type is checked.

#![no_main]

use grapevine_fuzz::split_at_nul;
use grapevine_proto::validate::validate_config_value;
use grapevine_proto::{JsonText, Key};
use libfuzzer_sys::fuzz_target;

const SAMPLE_VALUES: &[&str] =
    &["true", "0", "-1.5e3", "\"text\"", "[1, \"a\", null]", "{\"name\": \"x\", \"count\": 3, \"tags\": []}"];

fuzz_target!(|bytes: &[u8]| {
    let (schema, value) = split_at_nul(bytes);
    let Some(schema) = json_text(schema) else { return };
    let key: Key = "fuzz".parse().expect("a valid key");
    let values: Vec<JsonText> = match value {
        Some(value) => json_text(value).into_iter().collect(),
        None => SAMPLE_VALUES.iter().filter_map(|value| json_text(value.as_bytes())).collect(),
    };
    for value in &values {
        let verdict = validate_config_value(&key, value, Some(&schema));
        if value.as_str().trim() == "null" {
            assert!(verdict.is_err(), "null is never a config value");
        }
        if verdict.is_ok() {
            assert!(validate_config_value(&key, value, None).is_ok(), "a value valid under a schema is valid");
        }
    }
});

fn json_text(bytes: &[u8]) -> Option<JsonText> {
    JsonText::try_from(std::str::from_utf8(bytes).ok()?.to_owned()).ok()
}
