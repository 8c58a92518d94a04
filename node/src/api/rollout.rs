//! Rollout endpoints: the waves of a generation as this node sees them, the operator's
//! controls (each one a generation in the log), and the push health source.
//!
//! Handlers: `POST /v1/health` (`push_health`), `GET /v1/rollouts` (`list`), `GET
//! /v1/rollouts/{generation}` (`show`) and `POST /v1/rollouts/{generation}/{action}` (`control`),
//! with `DEFAULT_ROLLOUTS` (10) and `MAX_ROLLOUTS` (100). `control` writes a control generation,
//! `Change { ops: [], policy: Policy::emergency(), controls: [control] }`; `promote` sends `Promote
//! { through_wave: open_waves }`, the first wave closed in this node's view. The action `rollback`
//! goes to the function `rollback`, which calls `EngineHandle::rollback` and maps `RollbackError`
//! to 404 (not found), 409 (compacted), 400 (a control), 500 (store) and 503 (stopping).

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use grapevine_proto::health::MAX_SAMPLE_REQUESTS;
use grapevine_proto::policy::Control;
use grapevine_proto::{Change, GenId};
use serde::Deserialize;

use super::access::{may_see, may_touch};
use super::{ApiError, ApiResult, ApiState, ChangeQuery, NoParameters, parse_body, submit_change};
use crate::auth::Principal;
use crate::engine::{RollbackError, RollbackOutcome};
use crate::health::Sample;
use crate::replies::{Done, Rollback, Rollout, Rollouts};

/// Rollouts `GET /v1/rollouts` lists unless asked for more.
const DEFAULT_ROLLOUTS: usize = 10;
/// The most rollouts one list returns.
const MAX_ROLLOUTS: usize = 100;

fn generation_id(text: &str) -> Result<GenId, ApiError> {
    Ok(text.parse::<GenId>()?)
}

/// `POST /v1/health`: an application's counts since its previous push.
pub async fn push_health(State(state): State<ApiState>, _: Query<NoParameters>, body: Bytes) -> ApiResult<Done> {
    if !state.health.accepts_push() {
        return Err(ApiError::bad_request(
            "push is not a health source of this node (set `push = true` under [health] in its config)",
        ));
    }
    let sample: Sample = parse_body(&body, r#"{"requests": N, "errors": M, "latency_p99_ms": X}"#)?;
    if sample.requests > MAX_SAMPLE_REQUESTS {
        let message = format!(
            "requests must be at most {MAX_SAMPLE_REQUESTS} per sample (MAX_SAMPLE_REQUESTS), got {}",
            sample.requests
        );
        return Err(ApiError::bad_request(message));
    }
    if sample.errors > sample.requests {
        let message = format!("errors ({}) cannot exceed requests ({})", sample.errors, sample.requests);
        return Err(ApiError::bad_request(message));
    }
    state.health.record(sample);
    Ok(Json(Done::OK))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /v1/rollouts`: the newest generations held whole, with their waves.
pub async fn list(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Rollouts> {
    let limit = query.limit.unwrap_or(DEFAULT_ROLLOUTS).min(MAX_ROLLOUTS);
    let shown = move |g: &grapevine_proto::Generation| !g.body.change.ops.is_empty() && may_see(&principal, g);
    let listed = state.engine.history(limit, Box::new(shown)).await;
    let mut rollouts = Vec::new();
    for generation in &listed {
        if let Some(view) = state.engine.rollout(generation.id().clone()).await {
            rollouts.push(view);
        }
    }
    Ok(Json(Rollouts { node: state.name.to_string(), rollouts }))
}

/// `GET /v1/rollouts/{generation}`.
pub async fn show(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(generation): Path<String>,
    _: Query<NoParameters>,
) -> ApiResult<Rollout> {
    let id = generation_id(&generation)?;
    may_touch(&state, &principal, &id).await?;
    let view = state.engine.rollout(id.clone()).await.ok_or_else(|| {
        ApiError::not_found(format!("generation {id} is not in the log of node {} (or is compacted)", state.name))
    })?;
    Ok(Json(view))
}

/// `POST /v1/rollouts/{generation}/{pause|resume|promote}`: writes the control as a
/// generation of its own (emergency policy: controls apply everywhere at once).
/// `POST /v1/rollouts/{generation}/rollback`: writes the generation's revert.
pub async fn control(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path((generation, action)): Path<(String, String)>,
    wait: ChangeQuery,
) -> Result<Response, ApiError> {
    let target = generation_id(&generation)?;
    may_touch(&state, &principal, &target).await?;
    if wait.schedules() {
        return Err(ApiError::bad_request(format!(
            "a {action} applies at once: start_at and start_in are for changes (flag set, config put, apply)"
        )));
    }
    if action == "rollback" {
        if wait.dry_run || wait.prepare {
            // A revert is derived from its target alone: there is nothing to sign either.
            return Err(ApiError::bad_request(
                "a rollback has no dry run and nothing to sign: it writes only the revert, which `rollout status` previews",
            ));
        }
        return Ok(rollback(&state, target).await?.into_response());
    }
    let view = state.engine.rollout(target.clone()).await.ok_or_else(|| {
        ApiError::not_found(format!("generation {target} is not in the log of node {} (or is compacted)", state.name))
    })?;
    let control = match action.as_str() {
        "pause" => Control::Pause { target },
        "resume" => Control::Resume { target },
        // Opens the first wave still closed in this node's view.
        "promote" => Control::Promote { target, through_wave: view.open_waves as u32 },
        other => {
            return Err(ApiError::not_found(format!("expected pause, resume, promote or rollback, got {other:?}")));
        }
    };
    let change = Change { ops: Vec::new(), policy: state.default_policy.as_emergency(), controls: vec![control] };
    Ok(submit_change(&state, change, None, &wait).await?.into_response())
}

async fn rollback(state: &ApiState, target: GenId) -> ApiResult<Rollback> {
    let outcome = state.engine.rollback(target).await.map_err(|error| {
        let status = match &error {
            RollbackError::NotFound(_) => StatusCode::NOT_FOUND,
            RollbackError::Compacted(_) => StatusCode::CONFLICT,
            RollbackError::Control(_) => StatusCode::BAD_REQUEST,
            RollbackError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RollbackError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError { status, message: format!("node {}: {error}", state.name) }
    })?;
    let RollbackOutcome { generation, revert, already_reverted } = outcome;
    Ok(Json(Rollback { generation, revert, already_reverted }))
}
