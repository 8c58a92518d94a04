//! Targeting rules compiled to a tree of typed operations, evaluated against the borrowed
//! context without copying it.
//!
//! A rule is compiled once, when its flag is parsed (so when a change is applied): variable
//! paths are split into lookups, `$flagd.flagKey` and `$flagd.timestamp` become their own
//! nodes, literal lists of strings that `in` searches become sets (short ones stay lists to
//! scan), literal versions of `sem_ver` are parsed, and `fractional`'s weights are summed
//! ahead. Evaluation then reads the request's JSON in place and allocates nothing for the
//! common operators: the request's context is checked and laid flat once (`flat.rs`: one
//! vector for the request, whatever the number of its flags), and variables are found in it
//! by short scans.
//!
//! The compiled tree covers the operators flagd rules use in practice (`var`, `if`, `?:`,
//! `and`, `or`, `!`, `!!`, the comparisons, `in`, `cat`, and flagd's `fractional`, `sem_ver`,
//! `starts_with`, `ends_with`). The interpreter (`targeting.rs`, datalogic-rs) stays the
//! reference: a rule with any other operator is left to it, and so is any evaluation that
//! meets a value whose handling the tree does not reproduce (datalogic compares two strings
//! that look like dates as dates; a mix of types that it reports as an error). Such an
//! evaluation [`Declines`](Decline) and the interpreter answers, so the answers are the
//! interpreter's in every case (a property test checks it on random rules and contexts).

mod flat;
mod hash;
mod run;

use std::collections::HashSet;

use serde_json::{Map, Value};

pub(crate) use run::{Named, Scope, field};

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Program {
    root: Node,
}

/// The compiled evaluation cannot reproduce the interpreter's answer here: ask the interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decline;

/// One step of a variable's path (datalogic's reading: a numeric part indexes an array too).
#[derive(Debug)]
enum Segment {
    Field(Box<str>),
    FieldOrIndex(Box<str>, usize),
}

impl Segment {
    fn name(&self) -> &str {
        match self {
            Segment::Field(name) | Segment::FieldOrIndex(name, _) => name,
        }
    }
}

/// A compiled operation.
#[derive(Debug)]
enum Node {
    Literal(Value),
    Var {
        path: Box<[Segment]>,
        default: Option<Box<Node>>,
    },
    /// `$flagd.flagKey`.
    FlagKey,
    /// `$flagd.timestamp`.
    Timestamp,
    /// A path into `$flagd` that names neither: missing.
    FlagdMissing {
        default: Option<Box<Node>>,
    },
    If(Box<[Node]>),
    Ternary(Box<[Node; 3]>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not {
        negate: bool,
        arg: Box<Node>,
    },
    /// `==`, `===` (chained), `!=`, `!==` (the first two arguments).
    Equal {
        strict: bool,
        negate: bool,
        args: Box<[Node]>,
    },
    Compare {
        op: Order,
        args: Box<[Node]>,
    },
    In {
        needle: Box<Node>,
        haystack: Haystack,
    },
    Affix {
        prefix: bool,
        args: Box<[Node; 2]>,
    },
    SemVer(Box<SemVer>),
    Fractional(Box<Fractional>),
    Cat(Box<[Node]>),
}

#[derive(Debug, Clone, Copy)]
enum Order {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// What `in` searches.
#[derive(Debug)]
enum Haystack {
    /// A short literal array of strings: scanned (faster than hashing a few items).
    Few(Box<[Box<str>]>),
    /// A longer literal array of strings: a set.
    Strings(HashSet<Box<str>>),
    Node(Box<Node>),
}

#[derive(Debug)]
struct SemVer {
    left: Version,
    operator: Node,
    right: Version,
}

/// A `sem_ver` operand: a literal parsed once, or an expression read per evaluation.
#[derive(Debug)]
enum Version {
    Parsed(Option<semver::Version>),
    Node(Node),
}

#[derive(Debug)]
struct Fractional {
    /// The bucket-by expression; `None`: the flag key and the targeting key.
    bucket_by: Option<Node>,
    buckets: Buckets,
}

#[derive(Debug)]
enum Buckets {
    /// Literal variants and weights: their cumulative weights, summed once.
    Literal { variants: Box<[Value]>, cumulative: Box<[u64]>, total: u64 },
    /// Any other bucket list, read as the interpreter reads it, in order.
    Read(Box<[Bucket]>),
}

#[derive(Debug)]
enum Bucket {
    /// Not `[variant]` or `[variant, weight]`: the split answers `null` when it reaches it.
    Malformed,
    Weighted {
        variant: Node,
        weight: Option<Node>,
    },
}

impl Program {
    /// Compiles a rule (flagd's operator names, `$ref`s resolved); `None` when it uses an
    /// operator or a form the tree does not cover (the interpreter then evaluates it).
    pub(crate) fn compile(rule: &Value) -> Option<Program> {
        if !arguments_survive(rule, false) {
            return None;
        }
        Some(Program { root: compile(rule)? })
    }
}

/// flagd's operators: datalogic 4 hands them their arguments rebuilt from its compiled form.
const FLAGD_OPERATORS: &[&str] = &["fractional", "sem_ver", "starts_with", "ends_with", "cat"];

/// Whether datalogic 4 hands flagd's operators their arguments with their meaning unchanged.
/// It rebuilds an operation of one argument as `{op: arg}`: an array argument then becomes
/// the argument list, and `and`, `or`, `if` without an array are errors. The interpreter
/// evaluates such rules, so that they answer as before (`docs/decisions.md`).
fn arguments_survive(rule: &Value, inside: bool) -> bool {
    match rule {
        Value::Object(object) if object.len() == 1 => {
            let Some((operator, args)) = object.iter().next() else { return true };
            if let (true, Value::Array(items)) = (inside, args)
                && items.len() == 1
                && (items[0].is_array() || ["and", "or", "if"].contains(&operator.as_str()))
            {
                return false;
            }
            let inside = inside || FLAGD_OPERATORS.contains(&operator.as_str());
            arguments(args).iter().all(|arg| arguments_survive(arg, inside))
        }
        Value::Array(items) => items.iter().all(|item| arguments_survive(item, inside)),
        _ => true,
    }
}

/// The arguments of an operation as datalogic reads them: an array, or one argument.
fn arguments(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        other => std::slice::from_ref(other),
    }
}

fn compile_all(values: &[Value]) -> Option<Box<[Node]>> {
    values.iter().map(compile).collect()
}

fn compile(rule: &Value) -> Option<Node> {
    match rule {
        Value::Object(object) if object.len() == 1 => {
            let (operator, args) = object.iter().next()?;
            compile_operation(operator, args)
        }
        Value::Object(_) => None,
        // An array of expressions; a literal one (the common case) is a constant.
        Value::Array(items) if items.iter().all(is_literal) => Some(Node::Literal(rule.clone())),
        Value::Array(_) => None,
        literal => Some(Node::Literal(literal.clone())),
    }
}

/// Whether datalogic may evaluate `value` when it compiles it: it reads no context.
fn constant(value: &Value) -> bool {
    match value {
        Value::Object(object) => object.iter().all(|(operator, args)| {
            !["var", "missing", "missing_some"].contains(&operator.as_str())
                && !FLAGD_OPERATORS.contains(&operator.as_str())
                && constant(args)
        }),
        Value::Array(items) => items.iter().all(constant),
        _ => true,
    }
}

fn is_literal(value: &Value) -> bool {
    match value {
        Value::Object(_) => false,
        Value::Array(items) => items.iter().all(is_literal),
        _ => true,
    }
}

fn compile_operation(operator: &str, args: &Value) -> Option<Node> {
    // `and`, `or` and `if` take an array; datalogic answers an error for anything else.
    let list = || match args {
        Value::Array(items) => compile_all(items),
        _ => None,
    };
    // datalogic 4 drops constant operands of `and` and `or` when it compiles them, which
    // changes what they answer (`{"and": [{"var": "x"}, "on"]}` answers x); the interpreter
    // keeps evaluating such rules, so that they answer as before (`docs/decisions.md`).
    if (operator == "and" || operator == "or") && arguments(args).iter().any(constant) {
        return None;
    }
    let all = || compile_all(arguments(args));
    Some(match operator {
        "var" => compile_var(arguments(args))?,
        "if" => Node::If(list()?),
        "?:" => {
            let args = arguments(args);
            if args.len() < 3 {
                Node::Literal(Value::Null)
            } else {
                Node::Ternary(Box::new([compile(&args[0])?, compile(&args[1])?, compile(&args[2])?]))
            }
        }
        "and" => Node::And(list()?),
        "or" => Node::Or(list()?),
        "!" | "!!" => match arguments(args).first() {
            None => Node::Literal(Value::Bool(operator == "!")),
            Some(arg) => Node::Not { negate: operator == "!", arg: Box::new(compile(arg)?) },
        },
        "==" | "===" | "!=" | "!==" => {
            let args = all()?;
            // Fewer than two arguments is an error in datalogic.
            if args.len() < 2 {
                return None;
            }
            Node::Equal { strict: operator.len() == 3, negate: operator.starts_with('!'), args }
        }
        "<" | "<=" | ">" | ">=" => {
            let args = all()?;
            if args.len() < 2 {
                return None;
            }
            let op = match operator {
                "<" => Order::Less,
                "<=" => Order::LessOrEqual,
                ">" => Order::Greater,
                _ => Order::GreaterOrEqual,
            };
            Node::Compare { op, args }
        }
        "in" => compile_in(arguments(args))?,
        "cat" => Node::Cat(all()?),
        "starts_with" | "ends_with" => match arguments(args) {
            [text, affix] => {
                Node::Affix { prefix: operator == "starts_with", args: Box::new([compile(text)?, compile(affix)?]) }
            }
            _ => Node::Literal(Value::Null),
        },
        "sem_ver" => compile_sem_ver(arguments(args))?,
        "fractional" => compile_fractional(arguments(args))?,
        _ => return None,
    })
}

fn compile_var(args: &[Value]) -> Option<Node> {
    let Some(Value::String(path)) = args.first() else { return None };
    let default = match args.get(1) {
        Some(default) => Some(Box::new(compile(default)?)),
        None => None,
    };
    // The whole data, and the names datalogic gives a meaning inside `reduce`: left to it.
    if path.is_empty() || path.split('.').next().is_some_and(|first| ["current", "accumulator"].contains(&first)) {
        return None;
    }
    let parts: Vec<&str> = path.split('.').collect();
    if parts[0] == "$flagd" {
        return match parts[1..] {
            [] => None,
            ["flagKey"] => Some(Node::FlagKey),
            ["timestamp"] => Some(Node::Timestamp),
            _ => Some(Node::FlagdMissing { default }),
        };
    }
    let path = parts
        .iter()
        .map(|part| match part.parse::<usize>() {
            Ok(index) => Segment::FieldOrIndex((*part).into(), index),
            Err(_) => Segment::Field((*part).into()),
        })
        .collect();
    Some(Node::Var { path, default })
}

/// Literal lists of `in` up to this many strings are scanned rather than hashed.
const SCANNED_ITEMS: usize = 8;

fn compile_in(args: &[Value]) -> Option<Node> {
    let [needle, haystack, ..] = args else { return Some(Node::Literal(Value::Bool(false))) };
    let needle = Box::new(compile(needle)?);
    let haystack = match haystack {
        Value::Array(items) if items.iter().all(Value::is_string) && items.len() <= SCANNED_ITEMS => {
            Haystack::Few(items.iter().filter_map(Value::as_str).map(Box::from).collect())
        }
        Value::Array(items) if items.iter().all(Value::is_string) => {
            Haystack::Strings(items.iter().filter_map(Value::as_str).map(Box::from).collect())
        }
        other => Haystack::Node(Box::new(compile(other)?)),
    };
    Some(Node::In { needle, haystack })
}

fn compile_sem_ver(args: &[Value]) -> Option<Node> {
    let [left, operator, right] = args else { return Some(Node::Literal(Value::Null)) };
    let version = |value: &Value| -> Option<Version> {
        Some(match value {
            Value::Object(_) | Value::Array(_) => Version::Node(compile(value)?),
            literal => Version::Parsed(crate::flagd::version(literal)),
        })
    };
    Some(Node::SemVer(Box::new(SemVer { left: version(left)?, operator: compile(operator)?, right: version(right)? })))
}

fn compile_fractional(args: &[Value]) -> Option<Node> {
    let Some(first) = args.first() else { return Some(Node::Literal(Value::Null)) };
    let (bucket_by, buckets) = if first.is_array() { (None, args) } else { (Some(compile(first)?), &args[1..]) };
    let buckets = literal_buckets(buckets).map_or_else(|| read_buckets(buckets), Some)?;
    Some(Node::Fractional(Box::new(Fractional { bucket_by, buckets })))
}

/// Buckets of literal variants and numeric weights, summed ahead.
fn literal_buckets(buckets: &[Value]) -> Option<Buckets> {
    let mut variants = Vec::with_capacity(buckets.len());
    let mut cumulative = Vec::with_capacity(buckets.len());
    let mut total = 0u64;
    for bucket in buckets {
        let parts = bucket.as_array().filter(|p| !p.is_empty() && p.len() <= 2)?;
        if !is_literal(&parts[0]) {
            return None;
        }
        let weight = match parts.get(1) {
            Some(Value::Object(_)) => return None,
            Some(weight) => weight.as_f64().unwrap_or(0.0),
            None => 1.0,
        };
        total += weight.max(0.0).min(i32::MAX as f64) as u64;
        variants.push(parts[0].clone());
        cumulative.push(total);
    }
    Some(Buckets::Literal { variants: variants.into(), cumulative: cumulative.into(), total })
}

fn read_buckets(buckets: &[Value]) -> Option<Buckets> {
    let read = |bucket: &Value| -> Option<Bucket> {
        let Some(parts) = bucket.as_array().filter(|p| !p.is_empty() && p.len() <= 2) else {
            return Some(Bucket::Malformed);
        };
        let weight = match parts.get(1) {
            Some(weight) => Some(compile(weight)?),
            None => None,
        };
        Some(Bucket::Weighted { variant: compile(&parts[0])?, weight })
    };
    Some(Buckets::Read(buckets.iter().map(read).collect::<Option<_>>()?))
}

/// The request's context, read in place, with what evaluating against it needs checked and
/// laid out once.
pub struct EvaluationContext<'a> {
    pub(crate) values: &'a Map<String, Value>,
    /// Whether the context is within the cost bound's assumptions (`cost::check_context`), and
    /// if it is, the context laid flat (`flat.rs`): made at the first flag with a rule and kept
    /// for the request's other flags.
    prepared: std::cell::OnceCell<Result<flat::Flat<'a>, String>>,
}

impl<'a> EvaluationContext<'a> {
    /// A context for one request: one flag, or many against the same context (bulk).
    pub fn new(values: &'a Map<String, Value>) -> Self {
        EvaluationContext { values, prepared: std::cell::OnceCell::new() }
    }

    /// The context laid flat, or why it is refused for flags with a rule.
    pub(crate) fn prepared(&self) -> Result<&flat::Flat<'a>, &str> {
        let prepared = self
            .prepared
            .get_or_init(|| crate::cost::check_context(self.values).map(|()| flat::Flat::new(self.values)));
        prepared.as_ref().map_err(String::as_str)
    }

    /// Why the context is refused for flags with a rule, if it is.
    pub fn check(&self) -> Result<(), &str> {
        self.prepared().map(|_| ())
    }
}

#[cfg(test)]
mod tests;
