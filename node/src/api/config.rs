//! Config values: `GET`/`POST /v1/config/{key}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use grapevine_proto::{JsonText, Op};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, ApiResult, ApiState, ChangeQuery, ReadQuery, count_change, parse_body, parse_key, submit};
use crate::replies::{ChangeReply, ConfigValue};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigPutRequest {
    value: Value,
    /// A JSON Schema the key's values must follow from now on; without it, the key keeps the
    /// schema it has.
    schema: Option<Value>,
}

pub(super) async fn put_config(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
    let result = put_config_change(&state, key, &wait, body).await;
    count_change(&state, result)
}

pub(super) async fn put_config_change(
    state: &ApiState,
    key: String,
    wait: &ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
    let key = parse_key(key)?;
    let request: ConfigPutRequest = parse_body(&body, r#"{"value": <JSON value>, "schema": <JSON Schema>?}"#)?;
    let schema = match request.schema {
        Some(schema) => Some(JsonText::from_value(&schema)?),
        // From the log's latest value of the key, as `flag set` builds on the latest flag.
        None => state.engine.view().desired.schemas.get(&key).cloned(),
    };
    submit(state, Op::PutConfig { key, value: JsonText::from_value(&request.value)?, schema }, wait).await
}

/// Whether the request's `If-None-Match` names `etag` (or `*`): the answer is `304`.
pub(super) fn if_none_match(headers: &axum::http::HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
}

/// `GET /v1/config/{key}`: the value, the generation that set it, and a strong `ETag` (the
/// generation); `304` on a matching `If-None-Match`.
pub(super) async fn get_config(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(read): Query<ReadQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let key = parse_key(key)?;
    let view = state.engine.view();
    ApiError::unless_recovering(&view, state.name.as_str())?;
    let entry = if read.desired { &view.desired } else { &view.state }
        .config
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("config \"{key}\" not found on node {}", state.name)))?;
    let etag = format!("\"{}\"", entry.generation);
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let body =
        ConfigValue { key: key.to_string(), value: entry.value.to_value(), generation: entry.generation.to_string() };
    Ok(([(header::ETAG, etag)], Json(body)).into_response())
}
