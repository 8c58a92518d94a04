//! Evaluation of a compiled rule: a walk of its tree over the borrowed context, producing
//! borrowed values, that follows datalogic-rs 4 and our flagd operators step for step and
//! declines where it would not.

use std::cmp::Ordering;

use serde_json::Value;

use super::hash::Murmur3;
use super::{Bucket, Buckets, Decline, Fractional, Haystack, Node, Order, Program, SemVer, Version};
use crate::flagd::{Fractional as Scheme, js_string, py_string};
use crate::limits::MAX_CAT_BYTES;

/// What one evaluation reads besides the context: the flag's key, the time, the scheme.
pub(crate) struct Scope<'a> {
    pub(crate) context: &'a super::flat::Flat<'a>,
    pub(crate) flag_key: &'a str,
    pub(crate) now_s: u64,
    pub(crate) scheme: Scheme,
}

/// What a targeting rule answered: a variant's name, nothing (`null`), or another value.
pub(crate) enum Named<'a> {
    Nothing,
    Variant(&'a str),
    Other(Value),
}

/// A value met during evaluation: borrowed from the rule or the context where it can be.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    /// `$flagd.timestamp`.
    Unsigned(u64),
    Str(&'a str),
    /// A string built by `cat`.
    Text(String),
    Ref(&'a Value),
}

type Result<T> = std::result::Result<T, Decline>;

impl<'a> Val<'a> {
    /// The value, seen through a borrowed reference (`Ref(Value::Null)` is `Null`, ...).
    #[inline]
    fn flat(&self) -> Val<'_> {
        match self {
            Val::Ref(Value::Null) => Val::Null,
            Val::Ref(Value::Bool(flag)) => Val::Bool(*flag),
            Val::Ref(Value::String(text)) => Val::Str(text),
            Val::Text(text) => Val::Str(text),
            Val::Null => Val::Null,
            Val::Bool(flag) => Val::Bool(*flag),
            Val::Unsigned(n) => Val::Unsigned(*n),
            Val::Str(text) => Val::Str(text),
            Val::Ref(other) => Val::Ref(other),
        }
    }

    #[inline]
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self.flat() {
            Val::Str(text) => Some(text),
            _ => None,
        }
    }

    #[inline]
    fn number(&self) -> Option<f64> {
        match self {
            Val::Unsigned(n) => Some(*n as f64),
            Val::Ref(Value::Number(n)) => Some(float(n)),
            _ => None,
        }
    }

    #[inline]
    fn is_number(&self) -> bool {
        matches!(self, Val::Unsigned(_) | Val::Ref(Value::Number(_)))
    }

    /// What the value names as a rule's answer.
    #[inline]
    pub(crate) fn named(&self) -> Named<'_> {
        match self.flat() {
            Val::Null => Named::Nothing,
            Val::Str(text) => Named::Variant(text),
            Val::Bool(flag) => Named::Variant(if flag { "true" } else { "false" }),
            _ => Named::Other(self.to_value()),
        }
    }

    /// The value as JSON (allocates; for answers the caller must own).
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(flag) => Value::Bool(*flag),
            Val::Unsigned(n) => Value::from(*n),
            Val::Str(text) => Value::String((*text).to_owned()),
            Val::Text(text) => Value::String(text.clone()),
            Val::Ref(value) => (*value).clone(),
        }
    }
}

/// A number's value as `Number::as_f64` gives it (NaN for none). Numbers keep their text
/// (`arbitrary_precision`); a short integer, the common case, is read without the float parser.
#[inline]
pub(super) fn float(number: &serde_json::Number) -> f64 {
    let text = number.as_str();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    // Up to 15 digits, an integer is exact in a double.
    if !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()) {
        let value = digits.bytes().fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0')) as f64;
        return if negative { -value } else { value };
    }
    number.as_f64().unwrap_or(f64::NAN)
}

/// JavaScript's truthiness, as datalogic reads it.
#[inline]
fn truthy(value: &Val) -> bool {
    match value.flat() {
        Val::Null => false,
        Val::Bool(flag) => flag,
        Val::Unsigned(n) => n != 0,
        Val::Str(text) => !text.is_empty(),
        Val::Ref(Value::Number(n)) => {
            let f = float(n);
            f != 0.0 && !f.is_nan()
        }
        Val::Ref(Value::Array(items)) => !items.is_empty(),
        Val::Ref(Value::Object(object)) => !object.is_empty(),
        Val::Ref(_) | Val::Text(_) => unreachable!("flattened"),
    }
}

/// Whether datalogic might read the string as a date or a duration (its own test).
#[inline]
fn could_be_date(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() < 2 || !b[0].is_ascii_digit() {
        return false;
    }
    (b.len() >= 10 && b[4] == b'-') || b.iter().any(|c| matches!(c, b'd' | b'h' | b'm' | b's'))
}

/// datalogic's `==` (loose) and `===` (strict) between two values.
fn equal(left: &Val, right: &Val, strict: bool) -> Result<bool> {
    let (left, right) = (left.flat(), right.flat());
    if let (Val::Str(l), Val::Str(r)) = (&left, &right) {
        if could_be_date(l) && could_be_date(r) {
            return Err(Decline);
        }
        return Ok(same_bytes(l.as_bytes(), r.as_bytes()));
    }
    if strict {
        return Ok(match (&left, &right) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(l), Val::Bool(r)) => l == r,
            (Val::Ref(Value::Number(l)), Val::Ref(Value::Number(r))) => l == r,
            (Val::Unsigned(n), Val::Ref(Value::Number(other))) | (Val::Ref(Value::Number(other)), Val::Unsigned(n)) => {
                other.as_str().parse::<u64>() == Ok(*n)
            }
            (Val::Unsigned(l), Val::Unsigned(r)) => l == r,
            (Val::Ref(Value::Array(_) | Value::Object(_)), _) | (_, Val::Ref(Value::Array(_) | Value::Object(_))) => {
                return Err(Decline);
            }
            _ => false,
        });
    }
    loose_equal(&left, &right)
}

fn loose_equal(left: &Val, right: &Val) -> Result<bool> {
    Ok(match (left, right) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(l), Val::Bool(r)) => l == r,
        (l, r) if l.is_number() && r.is_number() => {
            let (l, r) = (l.number().unwrap_or(f64::NAN), r.number().unwrap_or(f64::NAN));
            !l.is_nan() && !r.is_nan() && l == r
        }
        (n, Val::Str(s)) | (Val::Str(s), n) if n.is_number() => match s.parse::<f64>() {
            Ok(parsed) => n.number() == Some(parsed),
            // datalogic reports the mix as an error.
            Err(_) => return Err(Decline),
        },
        (n, Val::Bool(b)) | (Val::Bool(b), n) if n.is_number() => n.number() == Some(if *b { 1.0 } else { 0.0 }),
        (Val::Str(s), Val::Bool(b)) | (Val::Bool(b), Val::Str(s)) => *s == if *b { "true" } else { "false" },
        (Val::Null, n) | (n, Val::Null) if n.is_number() => n.number() == Some(0.0),
        (Val::Null, Val::Bool(b)) | (Val::Bool(b), Val::Null) => !*b,
        (Val::Null, Val::Str(s)) | (Val::Str(s), Val::Null) => s.is_empty(),
        // Arrays and objects: errors and special cases, left to datalogic.
        _ => return Err(Decline),
    })
}

/// datalogic's ordering of two values: numbers, or strings that cannot be dates.
fn ordered(left: &Val, right: &Val, op: Order) -> Result<bool> {
    let ordering = match (left.flat(), right.flat()) {
        (Val::Str(l), Val::Str(r)) if !could_be_date(l) || !could_be_date(r) => l.cmp(r),
        (l, r) if l.is_number() && r.is_number() => {
            let (l, r) = (l.number().unwrap_or(f64::NAN), r.number().unwrap_or(f64::NAN));
            return Ok(match op {
                Order::Less => l < r,
                Order::LessOrEqual => l <= r,
                Order::Greater => l > r,
                Order::GreaterOrEqual => l >= r,
            });
        }
        _ => return Err(Decline),
    };
    Ok(match op {
        Order::Less => ordering == Ordering::Less,
        Order::LessOrEqual => ordering != Ordering::Greater,
        Order::Greater => ordering == Ordering::Greater,
        Order::GreaterOrEqual => ordering != Ordering::Less,
    })
}

/// serde_json's equality between an array item and a value (`in` over an array).
fn same(item: &Value, value: &Val) -> Result<bool> {
    Ok(match value.flat() {
        Val::Null => item.is_null(),
        Val::Bool(flag) => item.as_bool() == Some(flag),
        Val::Str(text) => item.as_str() == Some(text),
        Val::Unsigned(n) => item.as_number().is_some_and(|other| other.as_str().parse::<u64>() == Ok(n)),
        Val::Ref(other) => item == other,
        Val::Text(_) => unreachable!("flattened"),
    })
}

impl Program {
    /// Evaluates the rule; `Err(Decline)` when the interpreter must answer instead.
    pub(crate) fn run<'a>(&'a self, scope: &Scope<'a>) -> Result<Val<'a>> {
        self.root.run(scope)
    }
}

impl Node {
    fn run<'a>(&'a self, scope: &Scope<'a>) -> Result<Val<'a>> {
        match self {
            Node::Literal(value) => Ok(Val::Ref(value)),
            Node::Var { path, default } => match scope.context.lookup(path) {
                Some(value) => Ok(Val::Ref(value)),
                None => default.as_ref().map_or(Ok(Val::Null), |default| default.run(scope)),
            },
            Node::FlagKey => Ok(Val::Str(scope.flag_key)),
            Node::Timestamp => Ok(Val::Unsigned(scope.now_s)),
            Node::FlagdMissing { default } => default.as_ref().map_or(Ok(Val::Null), |default| default.run(scope)),
            Node::If(args) => run_if(args, scope),
            Node::Ternary(args) => {
                let [condition, then, otherwise] = args.as_ref();
                if condition.test(scope)? { then.run(scope) } else { otherwise.run(scope) }
            }
            Node::And(args) => run_logical(args, scope, false),
            Node::Or(args) => run_logical(args, scope, true),
            Node::Not { .. } | Node::Equal { .. } | Node::Compare { .. } | Node::In { .. } => {
                Ok(Val::Bool(self.test(scope)?))
            }
            Node::Affix { prefix, args } => Ok(affix(*prefix, args, scope)?.map_or(Val::Null, Val::Bool)),
            Node::SemVer(sem_ver) => Ok(sem_ver.run(scope)?.map_or(Val::Null, Val::Bool)),
            Node::Fractional(fractional) => fractional.run(scope),
            Node::Cat(args) => run_cat(args, scope),
        }
    }

    /// Whether the value the node evaluates to is truthy: what a condition needs, without
    /// building the value when the operation answers a boolean.
    fn test<'a>(&'a self, scope: &Scope<'a>) -> Result<bool> {
        match self {
            Node::Not { negate, arg } => Ok(arg.test(scope)? != *negate),
            Node::Equal { strict, negate, args } => run_equal(args, *strict, *negate, scope),
            Node::Compare { op, args } => {
                let mut previous = args[0].run(scope)?;
                for arg in &args[1..] {
                    let current = arg.run(scope)?;
                    if !ordered(&previous, &current, *op)? {
                        return Ok(false);
                    }
                    previous = current;
                }
                Ok(true)
            }
            Node::In { needle, haystack } => run_in(needle, haystack, scope),
            Node::Affix { prefix, args } => Ok(affix(*prefix, args, scope)? == Some(true)),
            Node::SemVer(sem_ver) => Ok(sem_ver.run(scope)? == Some(true)),
            // `and` is truthy when every operand is, `or` when one is (what they answer is
            // the operand that decided).
            Node::And(args) if !args.is_empty() => {
                for arg in args.iter() {
                    if !arg.test(scope)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Node::Or(args) => {
                for arg in args.iter() {
                    if arg.test(scope)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            other => Ok(truthy(&other.run(scope)?)),
        }
    }
}

/// flagd's `starts_with` / `ends_with`: `None` (null) unless both are strings.
fn affix<'a>(prefix: bool, args: &'a [Node; 2], scope: &Scope<'a>) -> Result<Option<bool>> {
    let [text, affix] = args;
    let (text, affix) = (text.run(scope)?, affix.run(scope)?);
    Ok(match (text.as_str(), affix.as_str()) {
        (Some(text), Some(affix)) => Some(
            affix.len() <= text.len() && {
                let at = if prefix { 0 } else { text.len() - affix.len() };
                same_bytes(&text.as_bytes()[at..at + affix.len()], affix.as_bytes())
            },
        ),
        _ => None,
    })
}

/// Objects up to this many fields are searched by scanning, lengths compared first: a
/// context's objects are small, and most of their keys differ from the one sought in length,
/// where the ordered map's search compares the bytes of every key on its way.
const SCANNED_FIELDS: usize = 8;

/// `object[name]`.
#[inline]
pub(crate) fn field<'a, V>(
    object: &'a std::collections::BTreeMap<String, V>,
    name: &str,
) -> Option<(&'a String, &'a V)> {
    if object.len() <= SCANNED_FIELDS {
        object.iter().find(|(key, _)| same_bytes(key.as_bytes(), name.as_bytes()))
    } else {
        object.get_key_value(name)
    }
}

/// `object[name]` of a JSON object.
#[inline]
pub(super) fn member<'a>(object: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if object.len() <= SCANNED_FIELDS {
        object.iter().find(|(key, _)| same_bytes(key.as_bytes(), name.as_bytes())).map(|(_, v)| v)
    } else {
        object.get(name)
    }
}

/// `a == b`, inline for the short strings of keys and affixes: two overlapping word loads
/// instead of a call to `memcmp` (a fifth of an evaluation of five conditions went there).
#[inline(always)]
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

fn run_if<'a>(args: &'a [Node], scope: &Scope<'a>) -> Result<Val<'a>> {
    let mut index = 0;
    while index < args.len() {
        if index == args.len() - 1 {
            return args[index].run(scope);
        }
        if args[index].test(scope)? {
            return args[index + 1].run(scope);
        }
        index += 2;
    }
    Ok(Val::Null)
}

/// `and` (`or`: `stop_on` true): the first value that settles it, else the last.
fn run_logical<'a>(args: &'a [Node], scope: &Scope<'a>, stop_on: bool) -> Result<Val<'a>> {
    if args.is_empty() {
        return Ok(Val::Null);
    }
    let mut last = Val::Bool(!stop_on);
    for arg in args {
        last = arg.run(scope)?;
        if truthy(&last) == stop_on {
            return Ok(last);
        }
    }
    Ok(last)
}

fn run_equal<'a>(args: &'a [Node], strict: bool, negate: bool, scope: &Scope<'a>) -> Result<bool> {
    let first = args[0].run(scope)?;
    if negate {
        // `!=` and `!==` read only their first two arguments.
        return Ok(!equal(&first, &args[1].run(scope)?, strict)?);
    }
    for arg in &args[1..] {
        if !equal(&first, &arg.run(scope)?, strict)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn run_in<'a>(needle: &'a Node, haystack: &'a Haystack, scope: &Scope<'a>) -> Result<bool> {
    let needle = needle.run(scope)?;
    let found = match haystack {
        Haystack::Few(items) => {
            needle.as_str().is_some_and(|text| items.iter().any(|item| same_bytes(item.as_bytes(), text.as_bytes())))
        }
        Haystack::Strings(set) => needle.as_str().is_some_and(|text| set.contains(text)),
        Haystack::Node(node) => match node.run(scope)?.flat() {
            Val::Str(text) => needle.as_str().is_some_and(|needle| text.contains(needle)),
            Val::Ref(Value::Array(items)) => {
                let mut found = false;
                for item in items {
                    if same(item, &needle)? {
                        found = true;
                        break;
                    }
                }
                found
            }
            _ => false,
        },
    };
    Ok(found)
}

fn run_cat<'a>(args: &'a [Node], scope: &Scope<'a>) -> Result<Val<'a>> {
    let mut out = String::new();
    for arg in args {
        let value = arg.run(scope)?;
        match (value.flat(), scope.scheme) {
            (Val::Str(text), _) => out.push_str(text),
            (Val::Unsigned(n), _) => out.push_str(&n.to_string()),
            (Val::Bool(flag), Scheme::Cbor) => out.push_str(if flag { "True" } else { "False" }),
            (_, Scheme::V2) => out.push_str(&js_string(&value.to_value())),
            (_, Scheme::Cbor) => out.push_str(&py_string(&value.to_value())),
        }
        if out.len() > MAX_CAT_BYTES {
            // The interpreter answers the error.
            return Err(Decline);
        }
    }
    Ok(Val::Text(out))
}

impl SemVer {
    /// The comparison; `None` (null) when a version or the operator cannot be read.
    fn run<'a>(&'a self, scope: &Scope<'a>) -> Result<Option<bool>> {
        let left = self.left.read(scope)?;
        let operator = self.operator.run(scope)?;
        let right = self.right.read(scope)?;
        let (Some(left), Some(right)) = (left.as_ref(), right.as_ref()) else { return Ok(None) };
        Ok(Some(match operator.as_str() {
            Some("=") => left == right,
            Some("!=") => left != right,
            Some("<") => left < right,
            Some("<=") => left <= right,
            Some(">") => left > right,
            Some(">=") => left >= right,
            Some("^") => left.major == right.major,
            Some("~") => left.major == right.major && left.minor == right.minor,
            _ => return Ok(None),
        }))
    }
}

impl Version {
    fn read<'a>(&'a self, scope: &Scope<'a>) -> Result<std::borrow::Cow<'a, Option<semver::Version>>> {
        use std::borrow::Cow;
        Ok(match self {
            Version::Parsed(version) => Cow::Borrowed(version),
            Version::Node(node) => Cow::Owned(match node.run(scope)?.flat() {
                Val::Str(text) => crate::flagd::version_of_text(text),
                Val::Unsigned(n) => crate::flagd::version_of_text(&n.to_string()),
                Val::Ref(value @ Value::Number(_)) => crate::flagd::version(value),
                _ => None,
            }),
        })
    }
}

impl Fractional {
    fn run<'a>(&'a self, scope: &Scope<'a>) -> Result<Val<'a>> {
        let bucket_by = match &self.bucket_by {
            None => None,
            Some(node) => match node.run(scope)? {
                value if matches!(value.flat(), Val::Null | Val::Ref(Value::Array(_))) => return Ok(Val::Null),
                value => Some(value),
            },
        };
        match &self.buckets {
            Buckets::Literal { variants, cumulative, total } => {
                if *total == 0 || *total > i32::MAX as u64 {
                    return Ok(Val::Null);
                }
                let Some(hash) = self.hash(bucket_by, scope) else { return Ok(Val::Null) };
                let bucket = (u64::from(hash) * total) >> 32;
                Ok(cumulative.iter().position(|c| bucket < *c).map_or(Val::Null, |i| Val::Ref(&variants[i])))
            }
            Buckets::Read(buckets) => read_split(buckets, bucket_by, self, scope),
        }
    }

    /// The bucketing hash, per the scheme; `None` when there is nothing to bucket by.
    fn hash(&self, bucket_by: Option<Val>, scope: &Scope) -> Option<u32> {
        let targeting_key = scope.context.get("targetingKey");
        let mut hasher = Murmur3::new();
        match (scope.scheme, bucket_by) {
            (Scheme::V2, None) => {
                hasher.write(scope.flag_key.as_bytes());
                hasher.write(targeting_key?.as_str()?.as_bytes());
            }
            (Scheme::V2, Some(value)) => match value.as_str() {
                Some(text) => hasher.write(text.as_bytes()),
                None => hasher.write(js_string(&value.to_value()).as_bytes()),
            },
            (Scheme::Cbor, None) => {
                // The array `[flagKey, targetingKey]`, encoded as it is hashed.
                let targeting_key = targeting_key.filter(|key| !key.is_null())?;
                hasher.write(&[0x82]);
                hasher.write_text_head(scope.flag_key.len());
                hasher.write(scope.flag_key.as_bytes());
                match targeting_key.as_str() {
                    Some(text) => {
                        hasher.write_text_head(text.len());
                        hasher.write(text.as_bytes());
                    }
                    None => {
                        let mut bytes = Vec::new();
                        crate::flagd::cbor(targeting_key, &mut bytes);
                        hasher.write(&bytes);
                    }
                }
            }
            (Scheme::Cbor, Some(value)) => match value.as_str() {
                // A string, the common key, encoded as it is hashed.
                Some(text) => {
                    hasher.write_text_head(text.len());
                    hasher.write(text.as_bytes());
                }
                None => {
                    let mut bytes = Vec::new();
                    crate::flagd::cbor(&value.to_value(), &mut bytes);
                    hasher.write(&bytes);
                }
            },
        }
        Some(hasher.finish())
    }
}

/// A split whose buckets are expressions: read in order as the interpreter reads them.
fn read_split<'a>(
    buckets: &'a [Bucket],
    bucket_by: Option<Val<'a>>,
    fractional: &Fractional,
    scope: &Scope<'a>,
) -> Result<Val<'a>> {
    let mut weighted: Vec<(Val<'a>, u64)> = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        let Bucket::Weighted { variant, weight } = bucket else { return Ok(Val::Null) };
        let variant = variant.run(scope)?;
        let weight = match weight {
            Some(weight) => weight.run(scope)?.number().unwrap_or(0.0),
            None => 1.0,
        };
        weighted.push((variant, weight.max(0.0).min(i32::MAX as f64) as u64));
    }
    let total: u64 = weighted.iter().map(|(_, weight)| weight).sum();
    if total == 0 || total > i32::MAX as u64 {
        return Ok(Val::Null);
    }
    let Some(hash) = fractional.hash(bucket_by, scope) else { return Ok(Val::Null) };
    Ok(crate::flagd::fractional_pick(hash, total, weighted).unwrap_or(Val::Null))
}
