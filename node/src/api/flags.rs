//! Flags: `GET`/`POST /v1/flags/{key}` and `POST /v1/flags/{key}/evaluate`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use grapevine_proto::eval::FlagDefinition;
use grapevine_proto::{JsonText, Key, Op};
use serde::Deserialize;
use serde_json::Value;

use crate::clock;

use super::{
    ApiError, ApiResult, ApiState, ChangeQuery, ReadQuery, budget, count_change, parse_body, parse_key, submit,
};
use crate::replies::{ChangeReply, FlagEvaluation};

/// What `flag set` asks for: exactly one of the fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlagSetRequest {
    on: Option<bool>,
    variant: Option<String>,
    definition: Option<Value>,
}

pub(super) async fn set_flag(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
    let result = set_flag_change(&state, key, &wait, body).await;
    count_change(&state, result)
}

pub(super) async fn set_flag_change(
    state: &ApiState,
    key: String,
    wait: &ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
    let key = parse_key(key)?;
    let request: FlagSetRequest = parse_body(&body, r#"{"on": bool} or {"variant": "NAME"} or {"definition": {...}}"#)?;
    // From the log's latest definition, not the applied one: a change builds on the one
    // before it even where that one has not reached this node's wave yet.
    let current = state.engine.view().desired.flags.get(&key).map(|entry| entry.value.as_ref().clone());
    let definition = match (request.on, request.variant, request.definition) {
        (Some(on), None, None) => {
            grapevine_proto::edit::switch_boolean(&key, current, on).map_err(ApiError::bad_request)?
        }
        (None, Some(variant), None) => {
            let mut flag = current.ok_or_else(|| {
                ApiError::not_found(format!(
                    "flag \"{key}\" does not exist on node {}; create it with --on, --off or --file",
                    state.name
                ))
            })?;
            flag.default_variant = Some(variant);
            flag
        }
        (None, None, Some(definition)) => {
            let text = JsonText::from_value(&definition)?;
            FlagDefinition::parse(&key, &text)?
        }
        _ => {
            return Err(ApiError::bad_request("expected exactly one of `on`, `variant` or `definition`"));
        }
    };
    submit(state, Op::SetFlag { key, definition: definition.to_json_text()? }, wait).await
}

pub(super) fn flag_answer(
    state: &ApiState,
    key: &Key,
    context: &serde_json::Map<String, Value>,
    read: &ReadQuery,
) -> Result<FlagEvaluation, ApiError> {
    let view = state.engine.view();
    ApiError::unless_recovering(&view, state.name.as_str())?;
    let entry = if read.desired { &view.desired } else { &view.state }
        .flags
        .get(key)
        .ok_or_else(|| ApiError::not_found(format!("flag \"{key}\" not found on node {}", state.name)))?;
    let evaluation = entry.value.evaluate(key.as_str(), context, state.fractional, clock::unix_ms() / 1000);
    Ok(FlagEvaluation {
        key: key.to_string(),
        value: evaluation.value,
        variant: evaluation.variant,
        reason: evaluation.reason,
        error_code: evaluation.error_code,
        error_message: evaluation.error_message,
        generation: entry.generation.to_string(),
        definition: serde_json::to_value(&entry.value).expect("a flag definition always serializes"),
    })
}

pub(super) async fn get_flag(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(read): Query<ReadQuery>,
) -> ApiResult<FlagEvaluation> {
    Ok(Json(flag_answer(&state, &parse_key(key)?, &Default::default(), &read)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EvaluateRequest {
    #[serde(default)]
    context: serde_json::Map<String, Value>,
}

pub(super) async fn evaluate_flag(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(read): Query<ReadQuery>,
    body: Bytes,
) -> ApiResult<FlagEvaluation> {
    let key = parse_key(key)?;
    let request = if body.is_empty() {
        EvaluateRequest { context: Default::default() }
    } else {
        parse_body(&body, r#"{"context": {...}}"#)?
    };
    let view = state.engine.view();
    let flag = if read.desired { &view.desired } else { &view.state }.flags.get(&key);
    let steps = budget::steps(flag.map(|entry| &*entry.value));
    drop(view);
    let costly = state.clone();
    let work = move || flag_answer(&costly, &key, &request.context, &read);
    Ok(Json(state.evaluations.run(steps, body.len(), work).await??))
}
