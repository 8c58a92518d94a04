//! The cost of a targeting rule: an upper bound, read from the rule's tree alone, on the work
//! of one evaluation, so that a rule that could freeze a node is refused when it is submitted.
//!
//! datalogic, which evaluates rules, has no hook to count or stop its built-in operators, so
//! the bound is what keeps an evaluation short: it must hold for every context a rule may meet.
//! A context is bounded where it is evaluated (no array longer than
//! [`MAX_CONTEXT_ARRAY_ITEMS`]), and the bound assumes it.
//!
//! The model, in steps (one operation, or one array item visited):
//! - every operation, literal and array of expressions costs 1 plus its arguments;
//! - an iterating operator (`some`, `all`, `none`, `filter`, `map`, `reduce`) costs its body
//!   once per item of the array it iterates: nested iterations multiply;
//! - an operator that scans or copies arrays (`in`, `merge`, `missing`, `cat`, arithmetic,
//!   `max`, `min`) costs one step per item of each argument that may be an array;
//! - every value carries a bound on the length of any array in it: a literal's own, a context
//!   value's [`MAX_CONTEXT_ARRAY_ITEMS`], and an item's that of the array it comes from (`var`
//!   reads only the current item inside an iteration); `merge` adds lengths up, and `reduce`
//!   follows its accumulator from item to item.
//!
//! Comparisons, copies and string operations count one step each: their work is linear in one
//! value, at most a string of the context or of the rule (see docs/security.md).
//!
//! `rule_cost(rule)` computes the bound (issue 17, D72), tracking for each value a `Bound { cost,
//! len, inner }`; each call of flagd's operators costs `FLAGD_OPERATOR_STEPS` (20). `check_rule`
//! refuses a rule above `MAX_RULE_COST` or deeper than `MAX_RULE_DEPTH` (`CostError`);
//! `check_context` refuses a context array past `MAX_CONTEXT_ARRAY_ITEMS`, and `MAX_CAT_BYTES`
//! bounds `cat`, which together make the bound hold for every context. `examples/rule_cost.rs`
//! times the costliest shapes per step; its figures set `MAX_RULE_COST` (`docs/operations.md`,
//! "Limits").

use serde_json::Value;

use crate::limits::{MAX_CONTEXT_ARRAY_ITEMS, MAX_RULE_COST, MAX_RULE_DEPTH};

/// Steps one call of flagd's operators (`fractional`, `sem_ver`, `starts_with`, `ends_with`,
/// `cat`) costs besides its arguments: datalogic hands them their arguments as JSON, rebuilt
/// on each call, so a call takes 10 to 20 times a built-in step (`examples/rule_cost.rs`).
const FLAGD_OPERATOR_STEPS: u64 = 20;

/// What one expression may cost and produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bound {
    /// Steps to evaluate it, at most.
    cost: u64,
    /// Items of its value, at most, if that is an array (0: it is never one).
    len: u64,
    /// Items of any array inside its value, at most (in an array's items, an object's fields).
    inner: u64,
}

impl Bound {
    /// A value that holds arrays of at most `len` items anywhere (a context value).
    fn anywhere(cost: u64, len: u64) -> Bound {
        Bound { cost, len, inner: len }
    }

    /// Any array in the value, itself or inside.
    fn any(&self) -> u64 {
        self.len.max(self.inner)
    }
}

/// Why a rule is too costly to evaluate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    /// A rule whose bound is above [`MAX_RULE_COST`].
    #[error(
        "rule costs up to {cost} operations, above the limit of {limit} (MAX_RULE_COST); nested iterations multiply"
    )]
    TooCostly { cost: u64, limit: u64 },
    /// A rule nested deeper than [`MAX_RULE_DEPTH`].
    #[error("rule nests operations {depth} deep, deeper than the limit of {limit} (MAX_RULE_DEPTH)")]
    TooDeep { depth: usize, limit: usize },
}

/// The cost bound of a rule (flagd's operator names, `$ref`s resolved), in steps.
pub fn rule_cost(rule: &Value) -> u64 {
    bound(rule, MAX_CONTEXT_ARRAY_ITEMS).cost
}

/// Refuses a rule above [`MAX_RULE_COST`] or deeper than [`MAX_RULE_DEPTH`].
pub fn check_rule(rule: &Value) -> Result<u64, CostError> {
    let depth = depth(rule);
    if depth > MAX_RULE_DEPTH {
        return Err(CostError::TooDeep { depth, limit: MAX_RULE_DEPTH });
    }
    let cost = rule_cost(rule);
    if cost > MAX_RULE_COST {
        return Err(CostError::TooCostly { cost, limit: MAX_RULE_COST });
    }
    Ok(cost)
}

/// Checks what the bound assumes of an evaluation context: no array longer than
/// [`MAX_CONTEXT_ARRAY_ITEMS`]; the error names the first one that is, by its JSON path.
pub fn check_context(context: &serde_json::Map<String, Value>) -> Result<(), String> {
    // A walk that allocates nothing first: the path is built only to name an array too long.
    if context.values().all(within_bound) {
        return Ok(());
    }
    context.iter().try_for_each(|(name, value)| check_value(value, &mut format!("/{name}")))
}

fn within_bound(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.len() as u64 <= MAX_CONTEXT_ARRAY_ITEMS && items.iter().all(within_bound),
        Value::Object(object) => object.values().all(within_bound),
        _ => true,
    }
}

fn check_value(value: &Value, path: &mut String) -> Result<(), String> {
    let children: Box<dyn Iterator<Item = (String, &Value)>> = match value {
        Value::Array(items) if items.len() as u64 > MAX_CONTEXT_ARRAY_ITEMS => {
            return Err(format!(
                "context array {path} must have at most {MAX_CONTEXT_ARRAY_ITEMS} items (MAX_CONTEXT_ARRAY_ITEMS), got {}",
                items.len()
            ));
        }
        Value::Array(items) => Box::new(items.iter().enumerate().map(|(index, item)| (index.to_string(), item))),
        Value::Object(object) => Box::new(object.iter().map(|(name, item)| (name.clone(), item))),
        _ => return Ok(()),
    };
    for (name, child) in children {
        let before = path.len();
        path.push('/');
        path.push_str(&name);
        check_value(child, path)?;
        path.truncate(before);
    }
    Ok(())
}

/// How deeply operations nest in `rule` (a literal is 0 deep, `{"var": "x"}` 1).
pub fn depth(rule: &Value) -> usize {
    match rule {
        Value::Object(object) => 1 + object.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The bound of `rule` where `var` reads values holding arrays of at most `scope` items.
fn bound(rule: &Value, scope: u64) -> Bound {
    match rule {
        Value::Array(items) => {
            let each = items.iter().map(|item| bound(item, scope));
            let (cost, inner) =
                each.fold((1u64, 0), |(cost, inner), b| (cost.saturating_add(b.cost), inner.max(b.any())));
            Bound { cost, len: items.len() as u64, inner }
        }
        Value::Object(object) if object.len() == 1 => {
            let (operator, arguments) = object.iter().next().expect("one entry");
            let arguments = match arguments {
                Value::Array(items) => items.as_slice(),
                single => std::slice::from_ref(single),
            };
            operation(operator, arguments, scope)
        }
        _ => Bound { cost: 1, len: 0, inner: 0 },
    }
}

fn operation(operator: &str, arguments: &[Value], scope: u64) -> Bound {
    match operator {
        "some" | "all" | "none" | "filter" | "map" => return iteration(operator, arguments, scope),
        "reduce" => return reduce(arguments, scope),
        _ => {}
    }
    let each: Vec<Bound> = arguments.iter().map(|argument| bound(argument, scope)).collect();
    let cost = each.iter().fold(1u64, |cost, b| cost.saturating_add(b.cost));
    let sum = |items: fn(&Bound) -> u64| each.iter().fold(0u64, |sum, b| sum.saturating_add(items(b)));
    let max = |items: fn(&Bound) -> u64| each.iter().map(items).max().unwrap_or(0);
    match operator {
        "var" => Bound::anywhere(cost, scope.max(max(Bound::any))),
        "merge" => {
            Bound { cost: cost.saturating_add(sum(|b| b.len)), len: sum(|b| b.len.max(1)), inner: max(|b| b.inner) }
        }
        "missing" | "missing_some" => {
            Bound { cost: cost.saturating_add(sum(Bound::any)), len: sum(|b| b.any().max(1)), inner: 0 }
        }
        // `in` scans its haystack, not its needle.
        "in" => Bound { cost: cost.saturating_add(each.get(1).map_or(0, |haystack| haystack.len)), len: 0, inner: 0 },
        "cat" => {
            let cost = cost.saturating_add(FLAGD_OPERATOR_STEPS);
            Bound { cost: cost.saturating_add(sum(|b| b.len.saturating_add(b.inner))), len: 0, inner: 0 }
        }
        // They read arrays whole.
        "max" | "min" | "+" | "-" | "*" | "/" | "%" => {
            Bound { cost: cost.saturating_add(sum(|b| b.len.saturating_add(b.inner))), len: 0, inner: 0 }
        }
        // They answer one of their arguments.
        "if" | "?:" | "or" | "and" => Bound { cost, len: max(|b| b.len), inner: max(|b| b.inner) },
        "fractional" => {
            Bound { cost: cost.saturating_add(FLAGD_OPERATOR_STEPS), len: max(|b| b.len), inner: max(|b| b.inner) }
        }
        "sem_ver" | "starts_with" | "ends_with" => {
            Bound { cost: cost.saturating_add(FLAGD_OPERATOR_STEPS), len: 0, inner: 0 }
        }
        _ => Bound { cost, len: 0, inner: 0 },
    }
}

/// `some`, `all`, `none`, `filter`, `map`: the body once per item of the array, where `var`
/// reads the item.
fn iteration(operator: &str, arguments: &[Value], scope: u64) -> Bound {
    let array = arguments.first().map_or_else(Bound::default, |array| bound(array, scope));
    let body = arguments.get(1).map_or_else(Bound::default, |body| bound(body, array.inner));
    let rest = arguments.iter().skip(2).fold(0u64, |cost, extra| cost.saturating_add(bound(extra, scope).cost));
    let cost = 1u64.saturating_add(array.cost).saturating_add(array.len.saturating_mul(body.cost)).saturating_add(rest);
    match operator {
        "filter" => Bound { cost, ..array },
        "map" => Bound { cost, len: array.len, inner: body.any() },
        _ => Bound { cost, len: 0, inner: 0 },
    }
}

/// `reduce`: the body once per item, where `var` reads the item or the accumulator, which
/// may grow from one item to the next (`merge` with itself doubles it).
fn reduce(arguments: &[Value], scope: u64) -> Bound {
    let array = arguments.first().map_or_else(Bound::default, |array| bound(array, scope));
    let initial = arguments.get(2).map_or_else(Bound::default, |initial| bound(initial, scope));
    let mut cost = 1u64.saturating_add(array.cost).saturating_add(initial.cost);
    let mut accumulator = initial.any();
    let Some(body) = arguments.get(1) else { return Bound::anywhere(cost, accumulator) };
    for done in 0..array.len {
        let step = bound(body, array.inner.max(accumulator));
        cost = cost.saturating_add(step.cost);
        let grown = accumulator.max(step.any());
        // Steps only grow with the accumulator: once it stops growing, or the bound is past
        // the limit, each item left costs at least as much as this one.
        if grown == accumulator || cost > MAX_RULE_COST {
            let rest = array.len - done - 1;
            cost = cost.saturating_add(rest.saturating_mul(step.cost));
            break;
        }
        accumulator = grown;
    }
    Bound::anywhere(cost, accumulator)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn simple_rules_cost_a_few_steps() {
        assert_eq!(rule_cost(&json!({"==": [{"var": "country"}, "fr"]})), 4);
        let rule = json!({"if": [{"in": [{"var": "email"}, ["a@x.com", "b@x.com"]]}, "on", "off"]});
        // `in` scans the list (2 items).
        assert_eq!(rule_cost(&rule), 1 + (1 + 2 + 3 + 2) + 1 + 1);
    }

    #[test]
    fn nested_iterations_multiply() {
        let items = |n: usize| Value::Array((0..n).map(|i| json!(format!("v{i}"))).collect());
        let inner = json!({"some": [items(10), {"==": [{"var": ""}, "v3"]}]});
        let outer = json!({"some": [items(20), inner.clone()]});
        // `var` in the body reads a string: it holds no array.
        assert_eq!(rule_cost(&inner), 1 + 11 + 10 * 4);
        assert_eq!(rule_cost(&outer), 1 + 21 + 20 * rule_cost(&inner));
    }

    #[test]
    fn a_reduce_that_doubles_its_accumulator_is_refused() {
        let items = Value::Array((0..64).map(|i| json!(i)).collect());
        let doubling = json!({"reduce": [items, {"merge": [{"var": "accumulator"}, {"var": "accumulator"}]}, [1]]});
        assert!(matches!(check_rule(&doubling), Err(CostError::TooCostly { .. })));
        let items = Value::Array((0..64).map(|i| json!(i)).collect());
        let summing = json!({"reduce": [items, {"+": [{"var": "accumulator"}, {"var": "current"}]}, 0]});
        assert!(check_rule(&summing).unwrap() < 64 * 200);
    }

    #[test]
    fn depth_counts_nested_operations() {
        assert_eq!(depth(&json!("a")), 0);
        assert_eq!(depth(&json!({"var": "x"})), 1);
        assert_eq!(depth(&json!({"!": [{"!": [{"var": "x"}]}]})), 3);
        let mut deep = json!({"var": "x"});
        for _ in 0..MAX_RULE_DEPTH {
            deep = json!({"!": [deep]});
        }
        assert_eq!(
            check_rule(&deep).unwrap_err().to_string(),
            format!(
                "rule nests operations {} deep, deeper than the limit of {MAX_RULE_DEPTH} (MAX_RULE_DEPTH)",
                MAX_RULE_DEPTH + 1
            )
        );
    }
}
