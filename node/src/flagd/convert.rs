//! JSON values to and from `google.protobuf.Struct`, the evaluation contexts and object values
//! of flagd's messages.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as ProtoValue};
use serde_json::{Map, Number, Value};

/// A protobuf value as JSON. A protobuf number is a double: a whole one within 2^53 becomes a
/// JSON integer, so `targetingKey`-free rules comparing `age >= 18` and `sem_ver` see what an
/// OFREP client would send.
pub fn to_json(value: ProtoValue) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_map(s)),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(to_json).collect()),
    }
}

/// Largest integer a double holds exactly.
const MAX_EXACT_DOUBLE: f64 = 9_007_199_254_740_992.0;

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_DOUBLE {
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// A `Struct` as a JSON object.
pub fn struct_to_map(s: Struct) -> Map<String, Value> {
    s.fields.into_iter().map(|(k, v)| (k, to_json(v))).collect()
}

/// A JSON value as a protobuf value.
pub fn from_json(value: &Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(from_json).collect() }),
        Value::Object(map) => Kind::StructValue(map_to_struct(map.iter())),
    };
    ProtoValue { kind: Some(kind) }
}

/// JSON fields as a `Struct`.
pub fn map_to_struct<'a>(fields: impl IntoIterator<Item = (&'a String, &'a Value)>) -> Struct {
    Struct { fields: fields.into_iter().map(|(k, v)| (k.clone(), from_json(v))).collect() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_context_round_trips_and_whole_numbers_stay_integers() {
        let context =
            json!({"targetingKey": "u1", "age": 18, "ratio": 0.5, "tags": ["a", null], "nested": {"ok": true}});
        let proto = map_to_struct(context.as_object().unwrap());
        assert_eq!(Value::Object(struct_to_map(proto)), context);
        assert_eq!(to_json(from_json(&json!(1e300))), json!(1e300));
    }
}
