//! Targeting rules: JsonLogic (datalogic-rs) with flagd's custom operators.
//!
//! The flag-evaluation layer runs one way: `eval.rs` (flags) over this module (a prepared rule,
//! the interpreter) over `compiled.rs` (the tree), over `flagd.rs` and `cost.rs`, which both
//! evaluators share.
//!
//! A rule is prepared once, when its flag is parsed: `$ref`s to shared evaluators are replaced
//! by the evaluators, every operator is checked against the ones flagd supports, and the rule
//! is compiled to our tree of typed operations (`compiled.rs`), which evaluates it. This
//! module's datalogic-rs interpreter is the reference, and evaluates what the tree does not
//! cover: its form of a rule is compiled when the rule is prepared if the tree cannot take
//! the rule, else at the first evaluation that needs it. flagd's operators that differ from
//! datalogic's built-ins of the same name (`starts_with`, `ends_with`: flagd answers `null`,
//! not `false`, on bad input) are renamed to ours before datalogic compiles them.
//!
//! `fractional` buckets the evaluation in one of two schemes (`flagd::Fractional`), chosen per
//! cluster so that splits match the user's other flagd evaluators:
//! - `v2`: MurmurHash3-x86-32 (seed 0) of the bucket-by string, by default `flagKey +
//!   targetingKey`; `bucket = hash * totalWeight >> 32`;
//! - `cbor`: the same hash of the canonical CBOR encoding of the bucket-by value (integral
//!   floats as integers), by default the array `[flagKey, targetingKey]`.
//!
//! - `Rule::prepare(rule, evaluators)` resolves `$ref`s (at most `MAX_REF_DEPTH`, 8, deep), checks
//!   every operator against `OPERATORS` (JsonLogic's and flagd's) with the JSON path of any refusal
//!   (`RuleError { path, detail }`), renames flagd's `starts_with`, `ends_with` and `cat` to
//!   Grapevine's (`RENAMED`), and compiles the rule once. It records whether the rule needs a
//!   `targetingKey`, whether it reads `$flagd` (the flag key) or `$flagd.timestamp` (the time,
//!   passed in by the caller), and whether it is too costly to evaluate (`Rule::too_costly`,
//!   `cost.rs`).
//! - The operators: `FractionalOperator`, `SemVerOperator`, `AffixOperator` (`starts_with`,
//!   `ends_with`) and `CatOperator`, over what the compiled tree shares with them (`flagd.rs`:
//!   `cbor`, canonical CBOR of a JSON value; `js_string` and `py_string`, how each scheme's
//!   reference evaluator writes a value; `version`, a `sem_ver` operand). `CatOperator` fails past
//!   `MAX_CAT_BYTES`: a `reduce` could double a string per item. Custom operators read arguments
//!   that are literals or plain `var` lookups directly (`arg`), instead of compiling them on each
//!   call.
//! - `Rule::evaluate(data, scheme)` runs the compiled rule on one of two engines (`ENGINES`), one
//!   per scheme; they differ only in `fractional` and `cat`.

use std::sync::{Arc, LazyLock, OnceLock};

use datalogic_rs::{CompiledLogic, ContextStack, DataLogic, Evaluator, Operator};
use serde_json::{Map, Value};

use crate::compiled::Program;
use crate::cost::CostError;
use crate::flagd::{Fractional, cbor, fractional_pick, js_string, py_string, version};
use crate::limits::MAX_CAT_BYTES;

/// Operators a rule may use: JsonLogic's own, and flagd's.
const OPERATORS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    ">",
    ">=",
    "<",
    "<=",
    "max",
    "min",
    "+",
    "-",
    "*",
    "/",
    "%",
    "map",
    "reduce",
    "filter",
    "all",
    "none",
    "some",
    "merge",
    "in",
    "cat",
    "substr",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
];

/// flagd operators whose datalogic built-in namesakes behave differently, and our names.
const RENAMED: &[(&str, &str)] =
    &[("starts_with", "flagd_starts_with"), ("ends_with", "flagd_ends_with"), ("cat", "flagd_cat")];

/// One engine per scheme; they differ only in `fractional`.
static ENGINES: LazyLock<[DataLogic; 2]> = LazyLock::new(|| [engine(Fractional::V2), engine(Fractional::Cbor)]);

fn engine(scheme: Fractional) -> DataLogic {
    let mut engine = DataLogic::new();
    engine.add_operator("fractional".into(), Box::new(FractionalOperator(scheme)));
    engine.add_operator("sem_ver".into(), Box::new(SemVerOperator));
    engine.add_operator("flagd_starts_with".into(), Box::new(AffixOperator { prefix: true }));
    engine.add_operator("flagd_ends_with".into(), Box::new(AffixOperator { prefix: false }));
    engine.add_operator("flagd_cat".into(), Box::new(CatOperator(scheme)));
    engine
}

fn engine_for(scheme: Fractional) -> &'static DataLogic {
    &ENGINES[match scheme {
        Fractional::V2 => 0,
        Fractional::Cbor => 1,
    }]
}

/// A prepared rule: its compiled form. The rule as written (with `$ref`s resolved) is its
/// flag's `targeting`, kept there alone: a copy here doubled the memory of a flag's rule.
#[derive(Clone)]
pub struct Rule {
    /// The interpreter's form of the rule: compiled when the rule is prepared if the tree
    /// below does not cover it, else at the first evaluation the tree leaves to the
    /// interpreter (most rules never need it: it is most of a prepared flag's memory and time).
    interpreted: Arc<OnceLock<Result<Arc<CompiledLogic>, String>>>,
    /// The rule compiled to typed operations (`compiled.rs`); `None` when it uses an operator
    /// the tree does not cover, and the interpreter alone evaluates it.
    program: Option<Arc<Program>>,
    /// Whether it buckets by the default `targetingKey` (a `fractional` without bucket-by).
    needs_targeting_key: bool,
    /// Whether it reads `$flagd` (the flag key, the time), directly or through `fractional`.
    uses_flagd: bool,
    /// Whether it reads `$flagd.timestamp` (the time is then read for each evaluation).
    uses_time: bool,
    /// Why it is too costly to evaluate, if it is (`cost.rs`). Such a rule is refused when it
    /// is submitted; one that a peer or the disk holds (an older build accepted it) is stored,
    /// so the log still converges, but never evaluated.
    too_costly: Option<CostError>,
    /// The bound on one evaluation's steps (`cost::rule_cost`), read from the rule alone.
    cost: u64,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule(compiled)")
    }
}

/// A rule follows from its flag's `targeting`, which the flag compares: the rules of equal
/// flags are equal.
impl PartialEq for Rule {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Why a rule cannot be used, with the JSON path where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct RuleError {
    pub path: String,
    pub detail: String,
}

impl Rule {
    /// Resolves `$ref`s against `evaluators`, checks the operators and compiles the rule;
    /// returns it with the resolved source (`rule` itself, its `$ref`s replaced).
    pub fn prepare(mut resolved: Value, evaluators: &Map<String, Value>) -> Result<(Rule, Value), RuleError> {
        resolve(&mut resolved, evaluators, &mut "/targeting".to_owned(), 0)?;
        check_operators(&resolved, &mut "/targeting".to_owned())?;
        let program = Program::compile(&resolved).map(Arc::new);
        let interpreted = Arc::new(OnceLock::new());
        if program.is_none() {
            // The interpreter alone evaluates the rule: it must compile now, or be refused.
            let compiled = interpret(&resolved).map_err(|detail| RuleError { path: "/targeting".into(), detail })?;
            let _ = interpreted.set(Ok(compiled));
        }
        let needs_targeting_key = default_bucketing(&resolved);
        let (uses_flagd, uses_time) = reads_flagd(&resolved);
        let (cost, too_costly) = match crate::cost::check_rule(&resolved) {
            Ok(cost) => (cost, None),
            // Never evaluated: it answers an error at once.
            Err(error) => (0, Some(error)),
        };
        Ok((Rule { interpreted, program, needs_targeting_key, uses_flagd, uses_time, too_costly, cost }, resolved))
    }

    /// The bound on one evaluation's steps (`cost.rs`); 0 for a rule too costly to evaluate
    /// (it answers an error without evaluating).
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Why the rule is too costly to evaluate, if it is.
    pub fn too_costly(&self) -> Option<&CostError> {
        self.too_costly.as_ref()
    }

    /// Whether evaluation data needs `$flagd.timestamp`.
    pub fn uses_time(&self) -> bool {
        self.uses_time
    }

    /// Whether evaluation data needs `$flagd` (the flag key and the time).
    pub fn uses_flagd(&self) -> bool {
        self.uses_flagd
    }

    pub fn needs_targeting_key(&self) -> bool {
        self.needs_targeting_key
    }

    /// The compiled rule, when the tree covers it.
    pub(crate) fn program(&self) -> Option<&Program> {
        self.program.as_deref()
    }

    /// Evaluates the rule over `data` (the context with `$flagd` and `targetingKey`) with the
    /// interpreter; `source` is the rule as prepared (its flag's `targeting`).
    pub fn evaluate(&self, data: Value, scheme: Fractional, source: &Value) -> Result<Value, String> {
        let compiled = self.interpreted.get_or_init(|| interpret(source));
        let compiled = compiled.as_ref().map_err(String::clone)?;
        engine_for(scheme).evaluate_owned(compiled, data).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// Whether the interpreter compiles `rule` (its operators checked first).
    pub(crate) fn interpretable(rule: &serde_json::Value) -> Result<(), String> {
        super::check_operators(rule, &mut String::new()).map_err(|e| e.to_string())?;
        super::interpret(rule).map(drop)
    }
}

/// The interpreter's compiled form of a checked rule.
fn interpret(rule: &Value) -> Result<Arc<CompiledLogic>, String> {
    engine_for(Fractional::V2).compile(&rename(rule)).map_err(|error| format!("not valid JsonLogic: {error}"))
}

/// Whether a `fractional` in `rule` buckets by the default key (its first argument a bucket).
fn default_bucketing(rule: &Value) -> bool {
    match rule {
        Value::Object(object) => object.iter().any(|(operator, arguments)| {
            let default =
                operator == "fractional" && arguments.as_array().and_then(|a| a.first()).is_some_and(Value::is_array);
            default || default_bucketing(arguments)
        }),
        Value::Array(items) => items.iter().any(default_bucketing),
        _ => false,
    }
}

/// Deepest nesting of `$ref`s (an evaluator may use another).
const MAX_REF_DEPTH: usize = 8;

/// Runs `f` with `part` appended to `path` (the JSON path of errors, built without a
/// `format!` per node: rules of long lists are prepared per flag of a large file).
fn within<T>(path: &mut String, part: &dyn std::fmt::Display, f: impl FnOnce(&mut String) -> T) -> T {
    use std::fmt::Write;
    let before = path.len();
    let _ = write!(path, "/{part}");
    let result = f(path);
    path.truncate(before);
    result
}

/// Replaces every `$ref` of `rule` by its evaluator, itself resolved: in place, so that a rule
/// without `$ref`s (most of them) is not copied.
fn resolve(
    rule: &mut Value,
    evaluators: &Map<String, Value>,
    path: &mut String,
    depth: usize,
) -> Result<(), RuleError> {
    let error = |path: &str, detail: String| RuleError { path: path.to_owned(), detail };
    match rule {
        Value::Object(object) if object.len() == 1 && object.contains_key("$ref") => {
            let name = object["$ref"].as_str().ok_or_else(|| error(path, "$ref must name an evaluator".into()))?;
            if depth >= MAX_REF_DEPTH {
                return Err(error(path, format!("$ref {name:?} nests deeper than {MAX_REF_DEPTH} evaluators")));
            }
            let mut target = evaluators.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = evaluators.keys().map(String::as_str).collect();
                error(path, format!("$ref to evaluator {name:?}, which does not exist (known: {})", known.join(", ")))
            })?;
            within(path, &format_args!("$ref:{name}"), |path| resolve(&mut target, evaluators, path, depth + 1))?;
            *rule = target;
            Ok(())
        }
        Value::Object(object) => object
            .iter_mut()
            .try_for_each(|(key, value)| within(path, key, |path| resolve(value, evaluators, path, depth))),
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(index, item)| within(path, &index, |path| resolve(item, evaluators, path, depth))),
        _ => Ok(()),
    }
}

/// What a rule reads of `$flagd`: whether any string of it (operator or argument) mentions
/// `$flagd` or is `fractional` (which buckets by the flag key), and whether any mentions
/// `$flagd.timestamp` or is `timestamp`. Generous: a rule that reads neither only costs the
/// interpreter a `$flagd` object it does not look at.
fn reads_flagd(rule: &Value) -> (bool, bool) {
    let of_text = |text: &str| {
        (text.contains("$flagd") || text == "fractional", text.contains("$flagd.timestamp") || text == "timestamp")
    };
    let either = |(a, b): (bool, bool), (c, d): (bool, bool)| (a || c, b || d);
    match rule {
        Value::String(text) => of_text(text),
        Value::Array(items) => items.iter().map(reads_flagd).fold((false, false), either),
        Value::Object(object) => {
            object.iter().map(|(key, value)| either(of_text(key), reads_flagd(value))).fold((false, false), either)
        }
        _ => (false, false),
    }
}

/// Checks that every single-key object is a known operator.
fn check_operators(rule: &Value, path: &mut String) -> Result<(), RuleError> {
    match rule {
        Value::Object(object) if object.len() == 1 => {
            let (operator, arguments) = object.iter().next().expect("one entry");
            if !OPERATORS.contains(&operator.as_str()) {
                return Err(RuleError {
                    path: path.clone(),
                    detail: format!("unknown operator {operator:?} (expected a JsonLogic or flagd operator)"),
                });
            }
            within(path, operator, |path| check_operators(arguments, path))
        }
        Value::Object(object) if !object.is_empty() => Err(RuleError {
            path: path.clone(),
            detail: format!("expected an operation with one operator, got an object with {} keys", object.len()),
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(index, item)| within(path, &index, |path| check_operators(item, path))),
        _ => Ok(()),
    }
}

/// A checked rule with flagd's operators that differ from datalogic's built-ins renamed.
fn rename(rule: &Value) -> Value {
    match rule {
        Value::Object(object) if object.len() == 1 => {
            let (operator, arguments) = object.iter().next().expect("one entry");
            let name = RENAMED.iter().find(|(from, _)| from == operator).map_or(operator.as_str(), |(_, to)| to);
            Value::Object(Map::from_iter([(name.to_owned(), rename(arguments))]))
        }
        Value::Array(items) => Value::Array(items.iter().map(rename).collect()),
        other => other.clone(),
    }
}

/// Evaluates one argument of a custom operator. datalogic hands custom operators their
/// arguments as written and compiles each on every call; literals and plain `var` lookups,
/// by far the most common arguments, are read directly instead.
fn arg(logic: &Value, context: &mut ContextStack, evaluator: &dyn Evaluator) -> datalogic_rs::Result<Value> {
    match logic {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(logic.clone()),
        Value::Object(object) if object.len() == 1 => {
            let path = match object.get("var") {
                Some(Value::String(path)) => Some(path.as_str()),
                Some(Value::Array(parts)) if parts.len() == 1 => parts[0].as_str(),
                _ => None,
            };
            match path {
                Some(path) => Ok(lookup(context.current().data(), path).cloned().unwrap_or(Value::Null)),
                None => evaluator.evaluate(logic, context),
            }
        }
        _ => evaluator.evaluate(logic, context),
    }
}

/// `var`'s dotted path into `data` (`""` is the data itself).
fn lookup<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(data);
    }
    path.split('.').try_fold(data, |value, part| match value {
        Value::Object(object) => object.get(part),
        Value::Array(items) => items.get(part.parse::<usize>().ok()?),
        _ => None,
    })
}

/// flagd's `fractional`: `[bucketBy?, [variant, weight?], ...]`.
struct FractionalOperator(Fractional);

impl Operator for FractionalOperator {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        let Some(first) = args.first() else { return Ok(Value::Null) };
        // A first argument that is not a bucket is the bucket-by expression.
        let (bucket_by, buckets) = if first.is_array() {
            (None, args)
        } else {
            let value = arg(first, context, evaluator)?;
            // No key to bucket by; an array is no key either (flagd reads it as a bucket).
            if value.is_null() || value.is_array() {
                return Ok(Value::Null);
            }
            (Some(value), &args[1..])
        };
        let mut weighted: Vec<(Value, u64)> = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            let Some(parts) = bucket.as_array().filter(|p| !p.is_empty() && p.len() <= 2) else {
                return Ok(Value::Null);
            };
            let variant = arg(&parts[0], context, evaluator)?;
            let weight = match parts.get(1) {
                Some(weight) => arg(weight, context, evaluator)?.as_f64().unwrap_or(0.0),
                None => 1.0,
            };
            // A negative weight counts as zero; weights sum to at most 2^31 - 1.
            weighted.push((variant, weight.max(0.0).min(i32::MAX as f64) as u64));
        }
        let total: u64 = weighted.iter().map(|(_, weight)| weight).sum();
        if total == 0 || total > i32::MAX as u64 {
            return Ok(Value::Null);
        }
        let root = context.root();
        let flag_key = lookup(root.data(), "$flagd.flagKey").cloned().unwrap_or(Value::Null);
        let targeting_key = lookup(root.data(), "targetingKey").cloned().unwrap_or(Value::Null);
        let hash = match self.0 {
            Fractional::V2 => {
                let text = match bucket_by {
                    Some(other) => js_string(&other),
                    None => match (flag_key.as_str(), targeting_key.as_str()) {
                        (Some(flag), Some(key)) => format!("{flag}{key}"),
                        _ => return Ok(Value::Null),
                    },
                };
                murmur3_32(text.as_bytes())
            }
            Fractional::Cbor => {
                let value = match bucket_by {
                    Some(value) => value,
                    None if targeting_key.is_null() => return Ok(Value::Null),
                    None => Value::Array(vec![flag_key, targeting_key]),
                };
                let mut bytes = Vec::new();
                cbor(&value, &mut bytes);
                murmur3_32(&bytes)
            }
        };
        Ok(fractional_pick(hash, total, weighted).unwrap_or(Value::Null))
    }
}

fn murmur3_32(bytes: &[u8]) -> u32 {
    murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), 0).expect("reading from memory cannot fail")
}

/// flagd's `sem_ver`: `[version, operator, version]` with `=`, `!=`, `<`, `<=`, `>`, `>=`, `^`
/// (same major), `~` (same major and minor). Anything it cannot read gives `null`.
struct SemVerOperator;

impl Operator for SemVerOperator {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        if args.len() != 3 {
            return Ok(Value::Null);
        }
        let left = arg(&args[0], context, evaluator)?;
        let operator = arg(&args[1], context, evaluator)?;
        let right = arg(&args[2], context, evaluator)?;
        let (Some(left), Some(right)) = (version(&left), version(&right)) else { return Ok(Value::Null) };
        let result = match operator.as_str() {
            Some("=") => left == right,
            Some("!=") => left != right,
            Some("<") => left < right,
            Some("<=") => left <= right,
            Some(">") => left > right,
            Some(">=") => left >= right,
            Some("^") => left.major == right.major,
            Some("~") => left.major == right.major && left.minor == right.minor,
            _ => return Ok(Value::Null),
        };
        Ok(Value::Bool(result))
    }
}

/// flagd's `cat`: its arguments written as the scheme's reference evaluator writes them
/// ([`js_string`] for `v2`, [`py_string`] for `cbor`), joined.
struct CatOperator(Fractional);

impl Operator for CatOperator {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        let mut out = String::new();
        for arg in args {
            let value = self::arg(arg, context, evaluator)?;
            out.push_str(&match self.0 {
                Fractional::V2 => js_string(&value),
                Fractional::Cbor => py_string(&value),
            });
            // A `reduce` that joins its accumulator to itself doubles it per item.
            if out.len() > MAX_CAT_BYTES {
                return Err(datalogic_rs::Error::Custom(format!(
                    "cat must produce at most {MAX_CAT_BYTES} bytes (MAX_CAT_BYTES), got {}",
                    out.len()
                )));
            }
        }
        Ok(Value::String(out))
    }
}

/// flagd's `starts_with` / `ends_with`: two strings, else `null`.
struct AffixOperator {
    prefix: bool,
}

impl Operator for AffixOperator {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        if args.len() != 2 {
            return Ok(Value::Null);
        }
        let text = arg(&args[0], context, evaluator)?;
        let affix = arg(&args[1], context, evaluator)?;
        let (Some(text), Some(affix)) = (text.as_str(), affix.as_str()) else { return Ok(Value::Null) };
        Ok(Value::Bool(if self.prefix { text.starts_with(affix) } else { text.ends_with(affix) }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_operators_and_missing_refs_are_refused_with_their_path() {
        let evaluators = Map::from_iter([("ok".to_owned(), json!({"==": [1, 1]}))]);
        let error = Rule::prepare(json!({"if": [{"nope": [1]}, "a", "b"]}), &evaluators).unwrap_err();
        assert_eq!(error.path, "/targeting/if/0");
        assert!(error.detail.contains("unknown operator \"nope\""), "{error}");
        let error = Rule::prepare(json!({"if": [{"$ref": "missing"}, "a", "b"]}), &evaluators).unwrap_err();
        assert!(error.detail.contains("does not exist"), "{error}");
        assert!(Rule::prepare(json!({"if": [{"$ref": "ok"}, "a", "b"]}), &evaluators).is_ok());
    }
}
