//! flagd's selectors: which flags one provider sees, from the `selector` field of a sync
//! request or the `Flagd-Selector` header (gRPC metadata `flagd-selector`, or the OFREP HTTP
//! header).
//!
//! - `flagSetId=ID`: the flags whose metadata says `"flagSetId": "ID"` (a flag file applied
//!   with `grapevine apply` gives each of its flags the file's `metadata`);
//! - `prefix=P` (Grapevine's own): the flags whose key starts with `P`, so one application sees
//!   only its own flags;
//! - both, comma-separated: the flags that match both;
//! - a bare value (flagd's older selectors, which named a source file): read as a flag set id,
//!   since a Grapevine node has no sources, only the flags it applied;
//! - empty: every flag the caller may read.
//!
//! In the API rather than in `flagd`: OFREP reads them as well, and the flagd services build on
//! the API (its state, tokens and rates), not the other way round.

use grapevine_proto::eval::FlagDefinition;
use serde_json::Value;

/// The gRPC metadata and HTTP header that carries a selector.
pub const SELECTOR_HEADER: &str = "flagd-selector";

/// Longest selector: a flag set id and a key prefix.
const MAX_SELECTOR_BYTES: usize = 512;

/// A parsed selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub flag_set_id: Option<String>,
    pub prefix: Option<String>,
}

impl Selector {
    /// Parses a selector; the error says what was expected.
    pub fn parse(text: &str) -> Result<Selector, String> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(format!("selector: at most {MAX_SELECTOR_BYTES} bytes, got {}", text.len()));
        }
        let mut selector = Selector::default();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (field, value) = match part.split_once('=') {
                Some((field, value)) => (field.trim(), value.trim().to_owned()),
                None => ("flagSetId", part.to_owned()),
            };
            let slot = match field {
                "flagSetId" => &mut selector.flag_set_id,
                "prefix" => &mut selector.prefix,
                other => {
                    return Err(format!(
                        "selector: expected flagSetId=ID or prefix=PREFIX (comma-separated), got {other:?}"
                    ));
                }
            };
            if slot.replace(value).is_some() {
                return Err(format!("selector: {field} given twice in {text:?}"));
            }
        }
        Ok(selector)
    }

    /// Whether flag `key` is selected.
    pub fn matches(&self, key: &str, flag: &FlagDefinition) -> bool {
        let in_set = |id: &String| flag.metadata.get("flagSetId").and_then(Value::as_str) == Some(id.as_str());
        self.prefix.as_ref().is_none_or(|prefix| key.starts_with(prefix.as_str()))
            && self.flag_set_id.as_ref().is_none_or(in_set)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn flag(set: Option<&str>) -> FlagDefinition {
        let mut value = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"});
        if let Some(set) = set {
            value["metadata"] = json!({"flagSetId": set});
        }
        FlagDefinition::from_value(value, &Default::default()).unwrap()
    }

    #[test]
    fn selectors_pick_by_flag_set_and_prefix() {
        let both = Selector::parse("flagSetId=payments, prefix=checkout/").unwrap();
        assert!(both.matches("checkout/new", &flag(Some("payments"))));
        assert!(!both.matches("search/new", &flag(Some("payments"))));
        assert!(!both.matches("checkout/new", &flag(Some("other"))));
        assert!(!both.matches("checkout/new", &flag(None)));
        assert_eq!(Selector::parse("payments").unwrap().flag_set_id.as_deref(), Some("payments"));
        assert!(Selector::parse("").unwrap().matches("any", &flag(None)));
    }

    #[test]
    fn an_unknown_or_repeated_field_is_refused() {
        assert!(Selector::parse("source=db").unwrap_err().contains("expected flagSetId=ID or prefix=PREFIX"));
        assert!(Selector::parse("prefix=a,prefix=b").unwrap_err().contains("given twice"));
    }
}
