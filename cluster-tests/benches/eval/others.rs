//! The engines Grapevine is measured beside, each on the same rule and context:
//! Unleash's `unleash-yggdrasil` (its comparable strategy), datalogic-rs 5.4 compiling the raw
//! JsonLogic rule with the context parsed once, and flagd's own `flagd-evaluation-engine`.

use std::collections::HashMap;

use datalogic5::bumpalo::Bump;
use datalogic5::{Engine, Logic, ParsedData};
use open_feature::{EvaluationContext, EvaluationContextFieldValue, StructValue};
use serde_json::{Value, json};
use unleash_yggdrasil::{Context, EngineState};

use super::cases::{Case, unleash_segments};

pub struct Yggdrasil {
    engine: EngineState,
    context: Context,
    /// Whether the feature answers a variant (a split in four) rather than on/off.
    variants: bool,
}

impl Yggdrasil {
    pub fn new(case: &Case, context: &Value) -> Self {
        let mut engine = EngineState::default();
        let features = json!({"version": 2, "features": [case.unleash], "segments": unleash_segments()});
        engine.apply_client_features(serde_json::from_value(features).expect("valid Unleash features"));
        let variants = case.unleash["strategies"][0].get("variants").is_some();
        let context = serde_json::from_value(context.clone()).expect("a valid Unleash context");
        Yggdrasil { engine, context, variants }
    }

    /// One evaluation, as cheap as the engine allows for this kind of answer.
    pub fn evaluate(&self) -> bool {
        if self.variants {
            self.engine.check_variant("f", &self.context, &None).is_some_and(|v| v.enabled)
        } else {
            self.engine.is_enabled("f", &self.context, &None)
        }
    }

    /// The answer as a variant name.
    pub fn answer(&self) -> String {
        if self.variants {
            self.engine.check_variant("f", &self.context, &None).map(|v| v.name).unwrap_or_default()
        } else if self.engine.is_enabled("f", &self.context, &None) {
            "on".into()
        } else {
            "off".into()
        }
    }
}

pub struct Datalogic5 {
    engine: Engine,
    logic: Logic,
    data: ParsedData,
}

impl Datalogic5 {
    /// `rule` is the flag's targeting with `$ref`s resolved; `data` the context with `$flagd`.
    pub fn new(rule: &Value, data: &Value) -> Self {
        let engine = Engine::new();
        let logic = engine.compile(rule.to_string().as_str()).expect("datalogic-rs 5 compiles the rule");
        let data = ParsedData::from_json(&data.to_string()).expect("valid JSON");
        Datalogic5 { engine, logic, data }
    }

    /// One evaluation in `arena` (reset by the caller between evaluations).
    pub fn evaluate(&self, arena: &Bump) -> bool {
        self.engine.evaluate(&self.logic, &self.data, arena).is_ok_and(|v| v.as_str().is_some())
    }

    pub fn answer(&self) -> Option<String> {
        let arena = Bump::new();
        let value = self.engine.evaluate(&self.logic, &self.data, &arena).ok()?;
        value.as_str().map(str::to_owned).or_else(|| value.as_bool().map(|b| b.to_string()))
    }
}

pub struct FlagdEngine {
    operator: flagd_evaluation_engine::Operator,
    rule: String,
    context: EvaluationContext,
}

impl FlagdEngine {
    pub fn new(rule: &Value, context: &Value) -> Self {
        let mut of = EvaluationContext::default();
        for (name, value) in context.as_object().expect("an object") {
            match (name.as_str(), value) {
                ("targetingKey", Value::String(key)) => of = of.with_targeting_key(key.clone()),
                (_, value) => of.add_custom_field(name.clone(), field(value)),
            }
        }
        FlagdEngine { operator: flagd_evaluation_engine::Operator::new(), rule: rule.to_string(), context: of }
    }

    pub fn answer(&self) -> Option<String> {
        self.operator.apply("f", &self.rule, &self.context).ok().flatten()
    }
}

fn field(value: &Value) -> EvaluationContextFieldValue {
    match value {
        Value::Bool(flag) => EvaluationContextFieldValue::Bool(*flag),
        Value::Number(n) => EvaluationContextFieldValue::Int(n.as_i64().unwrap_or_default()),
        Value::String(text) => EvaluationContextFieldValue::String(text.clone()),
        Value::Object(object) => {
            let mut fields = HashMap::new();
            for (name, value) in object {
                let value = match value {
                    Value::Bool(flag) => open_feature::Value::Bool(*flag),
                    Value::Number(n) => open_feature::Value::Int(n.as_i64().unwrap_or_default()),
                    other => open_feature::Value::String(other.as_str().unwrap_or_default().to_owned()),
                };
                fields.insert(name.clone(), value);
            }
            EvaluationContextFieldValue::new_struct(StructValue { fields })
        }
        other => EvaluationContextFieldValue::String(other.to_string()),
    }
}
