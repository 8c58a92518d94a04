//! Flag definitions in flagd's shape, and their evaluation.
//!
//! A flag is `{ "state", "variants", "defaultVariant", "targeting", "metadata" }` exactly as in
//! flagd's flag files; a flag set (a flagd file) is `{ "flags", "$evaluators", "metadata" }`.
//! Targeting is JsonLogic with flagd's operators (`targeting.rs`); `$ref`s to the set's
//! evaluators are resolved when the set is read, so each stored flag stands alone.
//!
//! Evaluation follows flagd: a disabled flag gives `DISABLED` and the caller's default; without
//! targeting, the default variant (`STATIC`), or the caller's default when there is none
//! (`DEFAULT`); with targeting, the variant the rule names (`TARGETING_MATCH`), the default
//! variant when it names none (`null`: `DEFAULT`), or an error.
//!
//! - `FlagDefinition::from_value(value, evaluators)` reads and checks a definition, then prepares
//!   its rule (`targeting::Rule::prepare`) with `$ref`s resolved against `evaluators`; its error
//!   says where (`/defaultVariant must be one of the variants (off, on), got "maybe"`).
//!   `FlagDefinition::parse(key, text)` is the same with no evaluators, for a stored definition
//!   (`ValidationError::Flag`). The checks: 1 to `MAX_VARIANTS` variants, all of the same JSON type
//!   and not null; `defaultVariant` names one of them; `targeting` is absent or an object (`{}`: no
//!   rule), and a rule must prepare. `FlagDefinition::boolean(on)` builds the `on`/`off` flag.
//! - `evaluate(key, context, scheme)` gives `FlagState`/`Evaluation` with a `Reason`; its errors
//!   (`ErrorCode`) are `TARGETING_KEY_MISSING` (a `fractional` without bucket-by and no string
//!   `targetingKey`), `GENERAL` (a variant the flag lacks, a result that names no variant, a
//!   failing rule, a rule over the cost limit) and `INVALID_CONTEXT` (a context array longer than
//!   the cost bound assumes). `docs/protocol.md`, "Flag evaluation", has the rules.
//! - `FlagDefinition::check_cost` refuses a rule over the cost limit; only `validate_submitted`
//!   calls it, so a costly rule from a peer or the disk is stored and never evaluated (D72).
//! - `FlagSet::parse` reads a flagd flag file, keeping per flag the definition or why it is
//!   invalid; `FlagSet::evaluate` gives `FLAG_NOT_FOUND` and `PARSE_ERROR` and merges the file's
//!   metadata under the flag's. `POST /v1/apply` and the conformance test use it.
//! - `Evaluation::expecting(Expected)` turns a value of another type into `TYPE_MISMATCH`, for
//!   typed callers (the conformance test).
//!
//! **Architecture Invariant:** a stored flag is self-contained. `$ref`s are resolved when a flag
//! file is read and the definition is stored with the resolved rule (`Rule::prepare` returns it),
//! so every node evaluates a flag from its own definition alone; `FlagDefinition::parse` has no
//! evaluators, so a stored definition that still holds a `$ref` is invalid.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::compiled::EvaluationContext;
use crate::compiled::{Named, Scope};
use crate::error::ValidationError;
use crate::flagd::Fractional;
use crate::limits::MAX_VARIANTS;
use crate::model::JsonText;
use crate::name::Key;
use crate::targeting::Rule;

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
    /// `targeting`, prepared (set by [`FlagDefinition::prepare`]; `None` without a rule).
    #[serde(skip)]
    rule: Option<Rule>,
}

impl FlagDefinition {
    /// Parses and checks the definition of flag `key` (self-contained: no `$ref`).
    pub fn parse(key: &Key, text: &JsonText) -> Result<Self, ValidationError> {
        let error = |detail: String| ValidationError::Flag { key: key.to_string(), detail };
        let value: Value = serde_json::from_str(text.as_str())
            .map_err(|e| error(format!("expected a flagd flag definition, got {e}")))?;
        Self::from_value(value, &Map::new()).map_err(error)
    }

    /// A flag from its JSON, with `$ref`s resolved against `evaluators`; the error says where.
    pub fn from_value(mut value: Value, evaluators: &Map<String, Value>) -> Result<Self, String> {
        // The rule is moved in, not read through serde: reading a `Value` from a `Value`
        // rebuilds it node by node (a fifth of the time of preparing a large flag file).
        let targeting = value.as_object_mut().and_then(|object| object.remove("targeting"));
        let mut flag: FlagDefinition =
            serde_json::from_value(value).map_err(|e| format!("expected a flagd flag definition, got {e}"))?;
        flag.targeting = targeting.filter(|rule| !rule.is_null());
        flag.check()?;
        flag.prepare(evaluators)?;
        Ok(flag)
    }

    /// Prepares the targeting rule; an empty object means none.
    fn prepare(&mut self, evaluators: &Map<String, Value>) -> Result<(), String> {
        self.rule = match self.targeting.take() {
            None => None,
            Some(Value::Object(rules)) if rules.is_empty() => {
                self.targeting = Some(Value::Object(rules));
                None
            }
            Some(rule) => {
                let (rule, resolved) = Rule::prepare(rule, evaluators).map_err(|e| e.to_string())?;
                // Stored self-contained: the `$ref`s resolved.
                self.targeting = Some(resolved);
                Some(rule)
            }
        };
        Ok(())
    }

    /// Refuses a targeting rule too costly to evaluate (`cost.rs`): checked on what users
    /// submit, not on what peers send, so that a rule an older build accepted cannot split the
    /// log (it is stored, and answers an error when evaluated).
    pub fn check_cost(&self) -> Result<(), String> {
        match self.rule.as_ref().and_then(Rule::too_costly) {
            Some(error) => Err(format!("/targeting: {error}")),
            None => Ok(()),
        }
    }

    /// The bound on the steps one evaluation of this flag takes (`cost.rs`): 0 without a rule.
    pub fn cost(&self) -> u64 {
        self.rule.as_ref().map_or(0, Rule::cost)
    }

    /// A boolean flag with variants `on: true` and `off: false`, serving `on` or `off`.
    pub fn boolean(on: bool) -> Self {
        FlagDefinition {
            state: FlagState::Enabled,
            variants: BTreeMap::from([("on".to_owned(), Value::Bool(true)), ("off".to_owned(), Value::Bool(false))]),
            default_variant: Some(if on { "on" } else { "off" }.to_owned()),
            targeting: None,
            metadata: BTreeMap::new(),
            rule: None,
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
            None | Some(Value::Object(_)) => Ok(()),
            Some(other) => Err(format!("/targeting must be a JsonLogic object, got {other}")),
        }
    }

    /// Evaluates flag `key` for an evaluation context, with the cluster's `fractional` scheme;
    /// `now_s` (Unix seconds, given by the caller: this crate reads no clock) is
    /// `$flagd.timestamp`.
    pub fn evaluate(&self, key: &str, context: &Map<String, Value>, scheme: Fractional, now_s: u64) -> Evaluation {
        self.resolve(key, &EvaluationContext::new(context), scheme, now_s).to_evaluation()
    }

    /// [`FlagDefinition::evaluate`] without copying anything: the answer borrows the flag's
    /// variant, and allocates only to say what went wrong. A request that evaluates many flags
    /// passes the same `context` to each.
    pub fn resolve<'a>(
        &'a self,
        key: &str,
        context: &EvaluationContext<'_>,
        scheme: Fractional,
        now_s: u64,
    ) -> Resolution<'a> {
        self.resolve_with(key, context, scheme, now_s, true)
    }

    /// The answer of the interpreter alone (datalogic-rs): the reference the compiled rules
    /// are tested, and measured, against.
    #[cfg(any(test, feature = "testsuite"))]
    pub fn evaluate_interpreted(
        &self,
        key: &str,
        context: &Map<String, Value>,
        scheme: Fractional,
        now_s: u64,
    ) -> Evaluation {
        self.resolve_with(key, &EvaluationContext::new(context), scheme, now_s, false).to_evaluation()
    }

    /// Whether the compiled rule alone answers a string, without the flag around it (its
    /// state, the context's check, the variant it names): the figure the evaluation bench sets
    /// beside datalogic-rs 5 evaluating the raw rule. `None` for a flag without a compiled rule.
    #[cfg(any(test, feature = "testsuite"))]
    pub fn run_rule_alone(
        &self,
        key: &str,
        context: &EvaluationContext<'_>,
        scheme: Fractional,
        now_s: u64,
    ) -> Option<bool> {
        let program = self.rule.as_ref()?.program()?;
        let scope = Scope { context: context.prepared().ok()?, flag_key: key, now_s, scheme };
        Some(program.run(&scope).is_ok_and(|answer| answer.as_str().is_some()))
    }

    fn resolve_with<'a>(
        &'a self,
        key: &str,
        context: &EvaluationContext<'_>,
        scheme: Fractional,
        now_s: u64,
        compiled: bool,
    ) -> Resolution<'a> {
        if self.state == FlagState::Disabled {
            return Resolution::of(None, Reason::Disabled);
        }
        let Some(rule) = &self.rule else {
            return self.default_resolution(Reason::Static);
        };
        if let Some(error) = rule.too_costly() {
            return Resolution::error(
                ErrorCode::General,
                format!("the targeting rule is not evaluated: {error} (refused when submitted since this version)"),
            );
        }
        let flat = match context.prepared() {
            Ok(flat) => flat,
            Err(detail) => return Resolution::error(ErrorCode::InvalidContext, detail),
        };
        if rule.needs_targeting_key() && !flat.get("targetingKey").is_some_and(Value::is_string) {
            return Resolution::error(ErrorCode::TargetingKeyMissing, "the targeting rule needs a targetingKey");
        }
        if let Some(program) = rule.program().filter(|_| compiled) {
            let scope = Scope { context: flat, flag_key: key, now_s, scheme };
            // On `Decline`, the interpreter answers what the tree does not reproduce.
            if let Ok(answer) = program.run(&scope) {
                return self.named(answer.named());
            }
        }
        self.interpreted(rule, key, context.values, scheme, now_s)
    }

    /// What the interpreter answers: for rules the tree does not cover, evaluations it
    /// declines, and the reference. Apart from `resolve_with`, whose common path stays small.
    #[inline(never)]
    fn interpreted(
        &self,
        rule: &Rule,
        key: &str,
        values: &Map<String, Value>,
        scheme: Fractional,
        now_s: u64,
    ) -> Resolution<'_> {
        let mut data = values.clone();
        if rule.uses_flagd() {
            let mut flagd = Map::from_iter([("flagKey".to_owned(), Value::String(key.to_owned()))]);
            if rule.uses_time() {
                flagd.insert("timestamp".to_owned(), Value::from(now_s));
            }
            data.insert("$flagd".to_owned(), Value::Object(flagd));
        }
        let source = self.targeting.as_ref().expect("a flag with a rule has its targeting");
        match rule.evaluate(Value::Object(data), scheme, source) {
            Ok(Value::Null) => self.named(Named::Nothing),
            Ok(Value::String(variant)) => self.named(Named::Variant(&variant)),
            Ok(Value::Bool(flag)) => self.named(Named::Variant(if flag { "true" } else { "false" })),
            Ok(other) => self.named(Named::Other(other)),
            Err(error) => Resolution::error(ErrorCode::General, format!("the targeting rule failed: {error}")),
        }
    }

    /// The answer for what a rule named.
    fn named(&self, named: Named) -> Resolution<'_> {
        match named {
            Named::Nothing => self.default_resolution(Reason::Default),
            Named::Variant(variant) => match crate::compiled::field(&self.variants, variant) {
                Some((name, value)) => Resolution {
                    value: Some(value),
                    variant: Some(name),
                    ..Resolution::of(None, Reason::TargetingMatch)
                },
                None => Resolution::error(
                    ErrorCode::General,
                    format!("the targeting rule named variant {variant:?}, which the flag does not have"),
                ),
            },
            Named::Other(other) => {
                Resolution::error(ErrorCode::General, format!("the targeting rule must name a variant, got {other}"))
            }
        }
    }

    fn default_resolution(&self, reason: Reason) -> Resolution<'_> {
        match self.default_variant.as_ref().and_then(|variant| crate::compiled::field(&self.variants, variant)) {
            Some((name, value)) => {
                Resolution { value: Some(value), variant: Some(name), ..Resolution::of(None, reason) }
            }
            // No default variant: the caller's code default applies (flagd's semantics).
            None => Resolution::of(None, Reason::Default),
        }
    }
}

/// An evaluation's answer, borrowed from its flag: the allocation-free form of [`Evaluation`].
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution<'a> {
    pub value: Option<&'a Value>,
    pub variant: Option<&'a str>,
    pub reason: Reason,
    /// Why it failed: the code, and a message for people.
    pub error: Option<(ErrorCode, String)>,
}

impl<'a> Resolution<'a> {
    fn of(value: Option<&'a Value>, reason: Reason) -> Self {
        Resolution { value, variant: None, reason, error: None }
    }

    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Resolution { error: Some((code, message.into())), ..Resolution::of(None, Reason::Error) }
    }

    /// The answer as an owned [`Evaluation`] (without metadata).
    pub fn to_evaluation(&self) -> Evaluation {
        Evaluation {
            value: self.value.cloned(),
            variant: self.variant.map(str::to_owned),
            reason: self.reason,
            error_code: self.error.as_ref().map(|(code, _)| *code),
            error_message: self.error.as_ref().map(|(_, message)| message.clone()),
            metadata: BTreeMap::new(),
        }
    }
}

/// A flagd flag file: flags, shared evaluators, and metadata shared by its flags.
#[derive(Clone, Debug, Default)]
pub struct FlagSet {
    /// Each flag, or why it cannot be used (an evaluator misses it: a `PARSE_ERROR` when it is
    /// evaluated; the admin API refuses the whole set).
    pub flags: BTreeMap<String, Result<FlagDefinition, String>>,
    pub metadata: BTreeMap<String, Value>,
}

impl FlagSet {
    /// Reads a flagd flag file.
    pub fn parse(text: &str) -> Result<FlagSet, String> {
        let mut file: Value =
            serde_json::from_str(text).map_err(|e| format!("expected a flagd flag file (JSON), got {e}"))?;
        let object = file.as_object_mut().ok_or("expected a flagd flag file: a JSON object with \"flags\"")?;
        // Taken out of the file, not copied: a file may hold thousands of flags.
        let flags = match object.remove("flags") {
            Some(Value::Object(flags)) => flags,
            _ => return Err("/flags must be an object of flags".to_owned()),
        };
        let evaluators = match object.get("$evaluators") {
            None => Map::new(),
            Some(Value::Object(evaluators)) => evaluators.clone(),
            Some(other) => return Err(format!("/$evaluators must be an object, got {other}")),
        };
        let metadata = match object.get("metadata") {
            None => BTreeMap::new(),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| format!("/metadata: {e}"))?,
        };
        let flags = flags
            .into_iter()
            .map(|(key, flag)| {
                let parsed =
                    FlagDefinition::from_value(flag, &evaluators).map_err(|detail| format!("flag {key:?}: {detail}"));
                (key, parsed)
            })
            .collect();
        Ok(FlagSet { flags, metadata })
    }

    /// Evaluates flag `key` as flagd does, with the set's metadata under the flag's.
    pub fn evaluate(&self, key: &str, context: &Map<String, Value>, scheme: Fractional, now_s: u64) -> Evaluation {
        let mut evaluation = match self.flags.get(key) {
            None => Evaluation::error(ErrorCode::FlagNotFound, format!("flag {key:?} does not exist")),
            Some(Err(error)) => return Evaluation::error(ErrorCode::ParseError, error.clone()),
            Some(Ok(flag)) => {
                let mut evaluation = flag.evaluate(key, context, scheme, now_s);
                evaluation.metadata = flag.metadata.clone();
                evaluation
            }
        };
        for (name, value) in &self.metadata {
            evaluation.metadata.entry(name.clone()).or_insert_with(|| value.clone());
        }
        evaluation
    }
}

/// The evaluation context of an OFREP evaluation request's body: `{"context": {...}}`, a body
/// without `context` (or with `null`), or an empty body. The error says what is wrong; the
/// node answers it as `INVALID_CONTEXT`. Pure, so that it can be fuzzed: the body comes from
/// any application on the node's HTTP port.
pub fn ofrep_context(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let mut request: Value =
        serde_json::from_slice(body).map_err(|e| format!("expected a JSON body {{\"context\": {{...}}}}, got: {e}"))?;
    match request.get_mut("context").map(Value::take) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(context)) => Ok(context),
        Some(other) => Err(format!("context must be an object, got {other}")),
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

/// Why an evaluation failed, as OpenFeature names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    FlagNotFound,
    ParseError,
    TypeMismatch,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

/// The type a caller asks a flag for (OpenFeature's typed resolvers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

impl Expected {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Expected::Boolean => value.is_boolean(),
            Expected::String => value.is_string(),
            Expected::Integer => value.is_i64() || value.is_u64(),
            Expected::Float => value.is_number(),
            Expected::Object => value.is_object() || value.is_array(),
        }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
}

impl Evaluation {
    fn of(value: Option<Value>, reason: Reason) -> Evaluation {
        Evaluation { value, variant: None, reason, error_code: None, error_message: None, metadata: BTreeMap::new() }
    }

    fn error(code: ErrorCode, message: impl Into<String>) -> Evaluation {
        Evaluation {
            error_code: Some(code),
            error_message: Some(message.into()),
            ..Evaluation::of(None, Reason::Error)
        }
    }

    /// The evaluation as a caller expecting `expected` sees it: a value of another type is a
    /// `TYPE_MISMATCH`.
    pub fn expecting(self, expected: Expected) -> Evaluation {
        match &self.value {
            Some(value) if !expected.accepts(value) => Evaluation {
                metadata: self.metadata,
                ..Evaluation::error(ErrorCode::TypeMismatch, format!("expected a {expected:?} flag, got {value}"))
            },
            _ => self,
        }
    }
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
            parse(json!({"state": "ENABLED", "variants": {"a": 1}, "targeting": "a"}))
                .unwrap_err()
                .contains("JsonLogic object")
        );
    }

    fn evaluate(flag: &FlagDefinition, context: Value) -> Evaluation {
        flag.evaluate("f", context.as_object().unwrap(), Fractional::V2, 0)
    }

    #[test]
    fn static_evaluation_follows_flagd() {
        let flag =
            parse(json!({"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "blue"}))
                .unwrap();
        let evaluation = evaluate(&flag, json!({}));
        assert_eq!(
            (evaluation.value, evaluation.variant, evaluation.reason),
            (Some(json!("#00f")), Some("blue".into()), Reason::Static)
        );
        let disabled = FlagDefinition { state: FlagState::Disabled, ..flag.clone() };
        assert_eq!(evaluate(&disabled, json!({})).reason, Reason::Disabled);
        let no_default = FlagDefinition { default_variant: None, ..flag };
        let evaluation = evaluate(&no_default, json!({}));
        assert_eq!((evaluation.value, evaluation.reason), (None, Reason::Default));
    }

    #[test]
    fn targeting_names_a_variant_or_falls_back_and_bad_rules_are_refused() {
        let flag = parse(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", null]}
        }))
        .unwrap();
        let hit = evaluate(&flag, json!({"email": "a@example.com"}));
        assert_eq!((hit.value, hit.reason), (Some(json!(true)), Reason::TargetingMatch));
        let miss = evaluate(&flag, json!({"email": "a@other.org"}));
        assert_eq!((miss.value, miss.reason), (Some(json!(false)), Reason::Default));
        let unknown =
            parse(json!({"state": "ENABLED", "variants": {"a": 1}, "targeting": {"if": [true, "zzz", "a"]}})).unwrap();
        let evaluation = evaluate(&unknown, json!({}));
        assert_eq!((evaluation.reason, evaluation.error_code), (Reason::Error, Some(ErrorCode::General)));
        let split = parse(json!({"state": "ENABLED", "variants": {"a": 1, "b": 2}, "targeting": {"fractional": [["a", 50], ["b", 50]]}})).unwrap();
        assert_eq!(evaluate(&split, json!({})).error_code, Some(ErrorCode::TargetingKeyMissing));
        assert_eq!(evaluate(&split, json!({"targetingKey": "u1"})).reason, Reason::TargetingMatch);
        let error = parse(
            json!({"state": "ENABLED", "variants": {"a": 1}, "targeting": {"if": [{"regex": ["x", "y"]}, "a", null]}}),
        )
        .unwrap_err();
        assert!(error.contains("/targeting/if/0: unknown operator \"regex\""), "{error}");
        let error =
            parse(json!({"state": "ENABLED", "variants": {"a": 1}, "targeting": {"$ref": "shared"}})).unwrap_err();
        assert!(error.contains("does not exist"), "{error}");
    }

    #[test]
    fn a_context_array_longer_than_the_cost_bound_assumes_is_refused() {
        let flag = parse(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"in": ["admin", {"var": "user.groups"}]}, "on", null]}
        }))
        .unwrap();
        let groups = |n: usize| Value::Array((0..n).map(|i| json!(format!("g{i}"))).collect());
        let within = evaluate(&flag, json!({"user": {"groups": groups(1000)}}));
        assert_eq!(within.error_code, None);
        let past = evaluate(&flag, json!({"user": {"groups": groups(1001)}}));
        assert_eq!(past.error_code, Some(ErrorCode::InvalidContext));
        assert_eq!(
            past.error_message.unwrap(),
            "context array /user/groups must have at most 1000 items (MAX_CONTEXT_ARRAY_ITEMS), got 1001"
        );
        let untargeted = parse(json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"})).unwrap();
        assert_eq!(evaluate(&untargeted, json!({"groups": groups(5000)})).reason, Reason::Static);
    }

    #[test]
    fn ofrep_contexts_are_read_or_refused_with_the_reason() {
        assert_eq!(ofrep_context(b"").unwrap(), Map::new());
        assert_eq!(ofrep_context(b" \n").unwrap(), Map::new());
        assert_eq!(ofrep_context(b"{}").unwrap(), Map::new());
        assert_eq!(ofrep_context(br#"{"context": null}"#).unwrap(), Map::new());
        let context = ofrep_context(br#"{"context": {"targetingKey": "u1"}}"#).unwrap();
        assert_eq!(context["targetingKey"], "u1");
        assert!(ofrep_context(br#"{"context": [1]}"#).unwrap_err().contains("must be an object"));
        assert!(ofrep_context(b"{").unwrap_err().contains("expected a JSON body"));
    }

    #[test]
    fn boolean_flags_round_trip_through_their_text() {
        let flag = FlagDefinition::boolean(true);
        let text = flag.to_json_text().unwrap();
        assert_eq!(FlagDefinition::parse(&"f".parse().unwrap(), &text).unwrap(), flag);
        assert_eq!(evaluate(&flag, json!({})).value, Some(json!(true)));
    }
}
