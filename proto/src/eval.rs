//! Flag definitions in flagd's shape, and their evaluation.
//!
//! A flag is `{ "state", "variants", "defaultVariant", "targeting", "metadata" }` exactly as in
//! flagd's flag files. This version evaluates static flags; a definition with targeting rules
//! is refused with a clear error until JsonLogic targeting lands, rather than evaluated wrongly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::MAX_VARIANTS;
use crate::model::{JsonText, Key};
use crate::validate::ValidationError;

/// Whether a flag is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlagState {
    Enabled,
    Disabled,
}

/// A parsed and checked flagd flag definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlagDefinition {
    pub state: FlagState,
    pub variants: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
}

impl FlagDefinition {
    /// Parses and checks the definition of flag `key`.
    pub fn parse(key: &Key, text: &JsonText) -> Result<Self, ValidationError> {
        let error = |detail: String| ValidationError::Flag { key: key.to_string(), detail };
        let flag: FlagDefinition = serde_json::from_str(text.as_str())
            .map_err(|e| error(format!("expected a flagd flag definition, got {e}")))?;
        flag.check().map_err(error)?;
        Ok(flag)
    }

    /// A boolean flag with variants `on: true` and `off: false`, serving `on` or `off`.
    pub fn boolean(on: bool) -> Self {
        FlagDefinition {
            state: FlagState::Enabled,
            variants: BTreeMap::from([("on".to_owned(), Value::Bool(true)), ("off".to_owned(), Value::Bool(false))]),
            default_variant: Some(if on { "on" } else { "off" }.to_owned()),
            targeting: None,
            metadata: BTreeMap::new(),
        }
    }

    /// The canonical JSON text of this definition.
    pub fn to_json_text(&self) -> Result<JsonText, ValidationError> {
        JsonText::from_value(&serde_json::to_value(self).expect("a flag definition always serializes"))
    }

    fn check(&self) -> Result<(), String> {
        if self.variants.is_empty() {
            return Err("/variants must hold at least one variant, got none".to_owned());
        }
        if self.variants.len() > MAX_VARIANTS {
            return Err(format!("/variants may hold at most {MAX_VARIANTS} variants, got {}", self.variants.len()));
        }
        let mut kinds = self.variants.iter().map(|(name, value)| (name, json_kind(value)));
        let (first_name, first_kind) = kinds.next().expect("variants is not empty");
        if let Some((name, kind)) = kinds.find(|(_, kind)| *kind != first_kind) {
            return Err(format!(
                "/variants must all have the same type, got {first_kind} for {first_name:?} and {kind} for {name:?}"
            ));
        }
        if first_kind == "null" {
            return Err("/variants must be booleans, strings, numbers or objects, got null".to_owned());
        }
        if let Some(default) = self.default_variant.as_ref().filter(|d| !self.variants.contains_key(*d)) {
            let names: Vec<&str> = self.variants.keys().map(String::as_str).collect();
            return Err(format!("/defaultVariant must be one of the variants ({}), got {default:?}", names.join(", ")));
        }
        match &self.targeting {
            None => {}
            Some(Value::Object(rules)) if rules.is_empty() => {}
            Some(_) => {
                return Err(
                    "/targeting rules are not supported by this version yet, got a rule (remove it or leave it empty)"
                        .to_owned(),
                );
            }
        }
        Ok(())
    }

    /// Evaluates the flag for an evaluation context. Static flags (the only kind this version
    /// accepts) do not depend on it.
    pub fn evaluate(&self, _context: &serde_json::Map<String, Value>) -> Evaluation {
        if self.state == FlagState::Disabled {
            return Evaluation { value: None, variant: None, reason: Reason::Disabled };
        }
        match &self.default_variant {
            Some(variant) => Evaluation {
                value: self.variants.get(variant).cloned(),
                variant: Some(variant.clone()),
                reason: Reason::Static,
            },
            // No default variant: the caller's code default applies (flagd's semantics).
            None => Evaluation { value: None, variant: None, reason: Reason::Default },
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Why a flag resolved to its value, as OpenFeature names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    Static,
    Default,
    TargetingMatch,
    Split,
    Disabled,
    Error,
}

/// The result of evaluating a flag. `value` is `None` when the caller's default applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub value: Option<Value>,
    pub variant: Option<String>,
    pub reason: Reason,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<FlagDefinition, String> {
        let text = JsonText::from_value(&value).unwrap();
        FlagDefinition::parse(&"f".parse().unwrap(), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_default_variant_outside_the_variants_is_refused() {
        let error =
            parse(json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "maybe"}))
                .unwrap_err();
        assert_eq!(error, "flag \"f\": /defaultVariant must be one of the variants (off, on), got \"maybe\"");
    }

    #[test]
    fn malformed_definitions_are_refused_with_the_reason() {
        assert!(parse(json!({"variants": {"on": true}})).unwrap_err().contains("missing field `state`"));
        assert!(parse(json!({"state": "ON", "variants": {"on": true}})).unwrap_err().contains("unknown variant `ON`"));
        assert!(parse(json!({"state": "ENABLED", "variants": {}})).unwrap_err().contains("at least one variant"));
        assert!(parse(json!({"state": "ENABLED", "variants": {"a": 1, "b": "x"}})).unwrap_err().contains("same type"));
        assert!(
            parse(json!({"state": "ENABLED", "variants": {"a": 1}, "colour": 1}))
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            parse(json!({"state": "ENABLED", "variants": {"a": 1}, "targeting": {"if": []}}))
                .unwrap_err()
                .contains("not supported")
        );
    }

    #[test]
    fn static_evaluation_follows_flagd() {
        let flag =
            parse(json!({"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "blue"}))
                .unwrap();
        assert_eq!(
            flag.evaluate(&Default::default()),
            Evaluation { value: Some(json!("#00f")), variant: Some("blue".into()), reason: Reason::Static }
        );
        let disabled = FlagDefinition { state: FlagState::Disabled, ..flag.clone() };
        assert_eq!(disabled.evaluate(&Default::default()).reason, Reason::Disabled);
        let no_default = FlagDefinition { default_variant: None, ..flag };
        assert_eq!(
            no_default.evaluate(&Default::default()),
            Evaluation { value: None, variant: None, reason: Reason::Default }
        );
    }

    #[test]
    fn boolean_flags_round_trip_through_their_text() {
        let flag = FlagDefinition::boolean(true);
        let text = flag.to_json_text().unwrap();
        assert_eq!(FlagDefinition::parse(&"f".parse().unwrap(), &text).unwrap(), flag);
        assert_eq!(flag.evaluate(&Default::default()).value, Some(json!(true)));
    }
}
