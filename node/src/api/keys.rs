//! `GET /v1/keys`: every key this node holds, applied and desired side by side; and
//! `GET /v1/whoami`: the caller's principal, so a client can tell which controls it may use.
//! Both serve the fleet page (`docs/ui.md`) and any script that wants the same.

use axum::Json;
use axum::extract::{Query, State};
use grapevine_proto::Key;
use grapevine_proto::state::{AppliedState, Entry};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, ApiResult, ApiState};
use crate::auth::Principal;
use crate::replies::{KeyEntry, KeySide, Keys, Whoami};

/// Most keys of each kind one answer lists: a page of values, each up to 4 MiB, must stay an
/// answer a browser can hold.
pub const MAX_KEYS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    /// Only keys that start with it.
    #[serde(default)]
    prefix: String,
    /// Most keys of each kind, at most [`MAX_KEYS`].
    limit: Option<usize>,
}

/// `GET /v1/whoami`: who the node takes the caller for, with its role and key prefixes.
pub async fn whoami(
    State(state): State<ApiState>,
    principal: Option<axum::Extension<Principal>>,
    _: Query<super::NoParameters>,
) -> ApiResult<Whoami> {
    let Some(axum::Extension(principal)) = principal else {
        return Err(ApiError::not_found("no principal on this request"));
    };
    Ok(Json(Whoami {
        node: state.name.to_string(),
        principal: principal.name,
        role: principal.role.to_string(),
        prefixes: principal.prefixes,
        authenticated: principal.authenticated,
    }))
}

/// `GET /v1/keys?prefix=P&limit=N`: each flag and config key in the caller's scope, with its
/// applied value (what this node serves) and its desired one (the log's latest).
pub async fn list(
    State(state): State<ApiState>,
    principal: Option<axum::Extension<Principal>>,
    Query(query): Query<KeysQuery>,
) -> ApiResult<Keys> {
    let view = state.engine.view();
    ApiError::unless_recovering(&view, state.name.as_str())?;
    let limit = query.limit.unwrap_or(MAX_KEYS).min(MAX_KEYS);
    let in_scope = |key: &Key| {
        key.as_str().starts_with(query.prefix.as_str()) && principal.as_ref().is_none_or(|p| p.covers(key.as_str()))
    };
    let definition =
        |flag: &std::sync::Arc<_>| serde_json::to_value(flag).expect("a flag definition always serializes");
    let flags = side_by_side(&view.state, &view.desired, |s| &s.flags, &in_scope, limit, definition);
    let config = side_by_side(&view.state, &view.desired, |s| &s.config, &in_scope, limit, |v| v.to_value());
    let truncated = flags.1 || config.1;
    Ok(Json(Keys { node: state.name.to_string(), flags: flags.0, config: config.0, truncated }))
}

type Entries<T> = imbl::OrdMap<Key, Entry<T>>;

/// One kind's keys, in key order, each with its applied and desired side (`None` where it has
/// none). Also whether keys were left out past `limit`.
fn side_by_side<T: Clone>(
    applied: &AppliedState,
    desired: &AppliedState,
    kind: impl Fn(&AppliedState) -> &Entries<T>,
    in_scope: &impl Fn(&Key) -> bool,
    limit: usize,
    value: impl Fn(&T) -> Value,
) -> (Vec<KeyEntry>, bool) {
    let (applied, desired) = (kind(applied), kind(desired));
    let mut keys: Vec<&Key> = applied.keys().chain(desired.keys()).filter(|key| in_scope(key)).collect();
    keys.sort();
    keys.dedup();
    let truncated = keys.len() > limit;
    let side = |entry: Option<&Entry<T>>| {
        entry.map(|e| KeySide { generation: e.generation.to_string(), value: value(&e.value) })
    };
    let listed = keys
        .into_iter()
        .take(limit)
        .map(|key| KeyEntry { key: key.to_string(), applied: side(applied.get(key)), desired: side(desired.get(key)) })
        .collect();
    (listed, truncated)
}
