//! Building flag changes from what the log desires: the operations the CLI's shortcuts and a
//! flagd file make, decided here so that a unit test reaches them without a node.
//!
//! - `switch_boolean(key, current, on)` is `flag set KEY --on/--off`: a boolean flag (variants
//!   `on: true`, `off: false`) enabled, defaulting to `on` or `off`, from the key's **desired**
//!   flag (the log's latest, so a change builds on the one before it even where that one has not
//!   reached this node's wave); a new flag when there is none; refused for other variants.
//! - `flag_file_ops(set, desired)` is `apply`: one `SetFlag` per flag of a flagd file that differs
//!   from the desired state, the file's metadata merged under each flag's; the whole file is
//!   refused at its first invalid flag or key.

use crate::eval::{FlagDefinition, FlagSet, FlagState};
use crate::state::AppliedState;
use crate::{Key, Op};

/// The flag `--on`/`--off` makes of `current`, the key's desired flag.
pub fn switch_boolean(key: &Key, current: Option<FlagDefinition>, on: bool) -> Result<FlagDefinition, String> {
    let Some(mut flag) = current else {
        return Ok(FlagDefinition::boolean(on));
    };
    if flag.variants != FlagDefinition::boolean(on).variants {
        let names: Vec<&str> = flag.variants.keys().map(String::as_str).collect();
        return Err(format!(
            "flag \"{key}\": --on/--off need variants on: true and off: false, got variants ({}); use --variant or --file",
            names.join(", ")
        ));
    }
    flag.state = FlagState::Enabled;
    flag.default_variant = Some(if on { "on" } else { "off" }.to_owned());
    Ok(flag)
}

/// The operations that make the desired state hold every flag of `set` (none for a flag that
/// already does).
pub fn flag_file_ops(set: FlagSet, desired: &AppliedState) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for (name, flag) in set.flags {
        let mut flag = flag?;
        let key: Key = name.parse().map_err(|error| format!("flag {name:?}: {error}"))?;
        for (field, value) in &set.metadata {
            flag.metadata.entry(field.clone()).or_insert_with(|| value.clone());
        }
        if desired.flags.get(&key).is_some_and(|entry| *entry.value == flag) {
            continue;
        }
        let definition = flag.to_json_text().map_err(|error| format!("flag {name:?}: {error}"))?;
        ops.push(Op::SetFlag { key, definition });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::put;

    fn key(text: &str) -> Key {
        text.parse().unwrap()
    }

    fn flag(text: &str) -> FlagDefinition {
        FlagDefinition::from_value(serde_json::from_str(text).unwrap(), &Default::default()).unwrap()
    }

    #[test]
    fn on_and_off_build_on_the_desired_boolean_flag_and_refuse_other_variants() {
        let fresh = switch_boolean(&key("f"), None, true).unwrap();
        assert_eq!((fresh.default_variant.as_deref(), fresh.state), (Some("on"), FlagState::Enabled));
        let mut disabled = FlagDefinition::boolean(true);
        disabled.state = FlagState::Disabled;
        let off = switch_boolean(&key("f"), Some(disabled), false).unwrap();
        assert_eq!((off.default_variant.as_deref(), off.state), (Some("off"), FlagState::Enabled));
        let text = r#"{"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a"}"#;
        let colours = flag(text);
        let refused = switch_boolean(&key("f"), Some(colours), true).unwrap_err();
        assert!(refused.contains("need variants on: true and off: false, got variants (a, b)"), "{refused}");
    }

    #[test]
    fn a_flag_file_makes_ops_only_for_flags_that_differ_and_is_refused_whole_at_a_bad_one() {
        let file = r#"{"flags": {
            "same": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "new": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}
        }}"#;
        let mut desired = AppliedState::default();
        let same = flag(r#"{"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}"#);
        let mut generation = put("n1", 1, 1, "unrelated", "1");
        generation.body.change.ops = vec![Op::SetFlag { key: key("same"), definition: same.to_json_text().unwrap() }];
        desired.apply(&generation.body.seal());
        let ops = flag_file_ops(FlagSet::parse(file).unwrap(), &desired).unwrap();
        let keys: Vec<String> = ops.iter().map(|op| op.key().to_string()).collect();
        assert_eq!(keys, ["new"], "the flag already desired makes no op");
        let bad = FlagSet::parse(
            r#"{"flags": {"Bad Key": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}}"#,
        )
        .unwrap();
        assert!(flag_file_ops(bad, &AppliedState::default()).unwrap_err().starts_with("flag \"Bad Key\""));
    }
}
