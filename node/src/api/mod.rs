//! The node's HTTP API (axum): admin endpoints under `/v1`, plus `/healthz` and `/metrics`.
//!
//! **API Boundary:** the request and response shapes here are what the CLI and scripts use;
//! `docs/api.md` lists them. Errors are `{"error": "..."}` with a 4xx status when the request
//! was refused and 5xx when the node failed.
//!
//! Rejections axum makes before a handler runs (405, 413, a bad query string outside the change and
//! control endpoints, or a bad path encoding) keep axum's plain-text or empty body; 504 means the
//! change is stored and the wait for replicas timed out.
//!
//! This file holds `router`, `ApiState` (with the `Health` handle, `default_policy`, the node's
//! `[rollout]` policy, `fractional`, the watch `Feed` and the `Files` statuses), `ApiError` and
//! `ChangeQuery`, with the handlers for `/healthz`, `/metrics`, `/v1/status`, `/v1/history`,
//! `/v1/flags/{key}`, `/v1/flags/{key}/evaluate`, `/v1/config/{key}`, `/v1/apply`, `/v1/backup`,
//! and, in `testsuite` builds only, `POST`/`DELETE /v1/testsuite/links`.
//!
//! - `switch_boolean` implements `--on`/`--off`. It and `--variant` start from the **desired** flag
//!   (the log's latest), so a change builds on the one before it even where that one has not
//!   reached this node's wave.
//! - `ChangeQuery` is its own extractor (`ChangeQuery::parse`): it takes `wait_replicas`,
//!   `timeout_ms`, `emergency`, `dry_run`, `prepare`, `start_at` and `start_in` (a scheduled
//!   start, `ChangeQuery::start_at_ms`, checked by `proto::schedule::check_start` against the
//!   node's clock; `submit_change` passes it as `Terms` and, with `prepare`, in `sign.start_at_ms`
//!   with the same clock reading as `issued_ms`), and reads every other parameter as a
//!   `PolicyOptions` field, so an unknown or malformed parameter is a JSON 400 (`query: ...`)
//!   naming it. It also reads the `X-Grapevine-Author` header (`AUTHOR_HEADER`) into the change's
//!   author (400 if it is not a valid `Author`); `EngineHandle::submit` records it, or a signed
//!   change's operator. `ChangeQuery::policy` builds a change's policy: `Policy::emergency()` (with
//!   the node's watch window) for `emergency=true`, else the node's default, then
//!   `PolicyOptions::apply` with the options of the query (which validates).
//! - Reads (`GET /v1/flags/{key}`, `POST /v1/flags/{key}/evaluate`, `GET /v1/config/{key}`) take
//!   `ReadQuery { desired }`: the applied state by default, the desired state with `?desired=true`.
//! - `put_config_change` fills `schema` from the desired state's `schemas` when the request names
//!   none. `get_config` answers with a strong `ETag` (the generation) and 304 on a matching
//!   `If-None-Match`.
//! - `apply` (`POST /v1/apply`) reads the body with `FlagSet::parse`, refuses it whole at the first
//!   invalid flag, merges the file's metadata under each flag's, and submits one change with a
//!   `SetFlag` per flag that differs from the desired state (`changed`); none differing answers
//!   `changed: 0` without submitting.
//! - `submit_change` serves the change endpoints and the controls: with `dry_run` it returns
//!   `EngineHandle::preview` (the generation the change would be, its waves from `Plan::of`, and a
//!   `diff` of desired values before and after) and stores nothing; `prepare` adds `sign` (the
//!   change in postcard hex, the cluster id, the format, the node's time as `issued_ms` and the
//!   start) for an operator to sign; `signed_change` (`POST /v1/changes`) decodes a change, its
//!   `Signed` and the signed `start_at_ms`
//!   (`decode_hex`), checks the principal's scope and submits them as they are; otherwise it
//!   submits the change, then, for `?wait_replicas=K`, polls `PeerHoldings::count_holding` every
//!   `REPLICA_POLL` (5 ms) until K other live nodes hold the generation, or answers 504 at the
//!   deadline (`timeout_ms`, default `DEFAULT_REPLICA_TIMEOUT` 10 s, at most `MAX_REPLICA_TIMEOUT`
//!   600 s). K above `MAX_MEMBERS` is refused.
//! - `/v1/proposals` (list, show, propose, approve, reject) lives in `proposals.rs`; `history` adds
//!   each generation's `governance` (its record, proposal and approvers).
//! - `backup` (`GET /v1/backup`) has `Store::backup_to` write a file `.backup-NANOS.redb` in the
//!   data directory, opens it, unlinks it and streams it; 503 while recovering.
//! - `history` adds each change's `RolloutView` (`rollout`; `null` for a control generation);
//!   `?values=true` adds config values, their secret parts redacted (`proto::audit::redact`);
//!   `?format=records` answers the audit records instead (`EngineHandle::audit_history`);
//!   `status` reports `reverted`, the number of reverts held, and `freeze` (`freeze_status`: the
//!   windows, their fingerprint, the freeze in force).
//! - `count_change` counts every `POST /v1/flags/{key}`, `POST /v1/config/{key}` and `POST
//!   /v1/apply` that reaches its handler (a dry run too) in `grapevine_changes_total`, by outcome:
//!   `accepted`, `refused` (4xx, including a bad key or body) or `failed` (5xx).
//! - The `/metrics` handler reads membership from chitchat and sets `grapevine_members` at scrape
//!   time.
//! - The router's `fallback` answers unknown paths with a JSON 404, `no such endpoint (see
//!   docs/api.md)`.
//! - Status codes: `ValidationError`, `SubmitError::Invalid` (including the member ceiling) and a
//!   bad change or control query -> 400; a missing flag or config, a generation not held whole, an
//!   unknown rollout action or path -> 404; `POST /v1/health` without the push source, or a bad
//!   sample -> 400; `SubmitError::Signing` -> 403 (`Unsigned` adds how to sign, `--signing-key`);
//!   `SubmitError::Store` -> 500; `SubmitError::Stopped` -> 503; replicas not reached within
//!   `timeout_ms` -> 504.
//! - Limits: `MAX_HTTP_BODY_BYTES`, `MAX_HISTORY`, `DEFAULT_REPLICA_TIMEOUT`,
//!   `MAX_REPLICA_TIMEOUT`, `REPLICA_POLL`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use grapevine_proto::eval::{FlagDefinition, FlagState};
use grapevine_proto::limits::{MAX_MEMBERS, MAX_VALUE_BYTES};
use grapevine_proto::rollout::{Policy, PolicyOptions, parse_duration_ms};
use grapevine_proto::schedule::{check_start, parse_time};
use grapevine_proto::signing::{Signed, SigningError};
use grapevine_proto::targeting::Fractional;
use grapevine_proto::{Author, Change, Generation, JsonText, Key, NodeName, Op, Terms, ValidationError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock;
use crate::engine::{EngineHandle, SubmitError, short_digest};
use crate::gossip::Gossip;
use crate::health::Health;
use crate::metrics::{GenerationLabel, Metrics, VerdictLabel, reason};
use crate::sync::PeerHoldings;

pub mod access;
pub mod budget;
mod events;
mod keys;
pub mod limits;
mod ofrep;
mod proposals;
mod rollout;
pub mod selector;
mod ui;
pub mod watch;

/// Largest request body. A value at its 4 MiB limit may grow when JSON-escaped inside a
/// request; twice the limit covers any escaping short of pathological.
pub const MAX_HTTP_BODY_BYTES: usize = 2 * MAX_VALUE_BYTES + 64 * 1024;

/// Most generations one history request returns.
const MAX_HISTORY: usize = 1000;

/// What every handler reads: one `Arc`, so that the clone axum takes for each request (the
/// middleware's and the handler's `State`) is one reference count, not the parts' dozen.
#[derive(Clone)]
pub struct ApiState(Arc<ApiParts>);

impl From<ApiParts> for ApiState {
    fn from(parts: ApiParts) -> ApiState {
        ApiState(Arc::new(parts))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiParts;

    fn deref(&self) -> &ApiParts {
        &self.0
    }
}

/// The node's parts the API serves.
pub struct ApiParts {
    pub name: NodeName,
    pub cluster: String,
    pub engine: EngineHandle,
    pub gossip: Arc<Gossip>,
    pub metrics: Arc<Metrics>,
    pub holdings: Arc<PeerHoldings>,
    pub health: Health,
    /// The policy of a change that names none (`[rollout]` in the node config).
    pub default_policy: Policy,
    /// The cluster's `fractional` bucketing scheme.
    pub fractional: Fractional,
    /// Applied changes, for `/v1/watch`.
    pub feed: watch::Feed,
    /// The files this node renders, and their last outcomes.
    pub files: crate::files::Files,
    /// Who may do what (`[auth]`).
    pub auth: Arc<crate::auth::Auth>,
    /// Request rates per client (`[limits]`).
    pub limits: Arc<limits::RateLimits>,
    /// Whose changes the cluster takes (`[signing]`).
    pub trust: Arc<grapevine_proto::signing::Trust>,
    /// The store, for `/v1/backup`, and the data directory the backup is written in first.
    pub store: Arc<crate::store::Store>,
    pub data: std::path::PathBuf,
    /// This node's clock against its peers', and how far ahead it may run.
    pub offsets: crate::clock::Offsets,
    pub max_clock_offset_ms: u64,
    /// Added to the wall clock: zero, except in tests of skewed clocks.
    pub clock_skew_ms: i64,
    /// The freeze windows (`[[rollout.freeze]]`), for `status`.
    pub freezes: Arc<grapevine_proto::schedule::Freezes>,
    /// Where costly flag evaluations run, and how long a request waits for one.
    pub evaluations: budget::Budget,
    /// The transport, whose link filter the test endpoints set.
    #[cfg(feature = "testsuite")]
    pub transport: crate::transport::Transport,
}

pub fn router(state: ApiState) -> Router {
    let authorize = axum::middleware::from_fn_with_state(state.clone(), access::authorize);
    let router = Router::new();
    #[cfg(feature = "testsuite")]
    let router = router.route("/v1/testsuite/links", post(set_link).delete(clear_links));
    router
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/history", get(history))
        .route("/v1/flags/{key}", get(get_flag).post(set_flag))
        .route("/v1/flags/{key}/evaluate", post(evaluate_flag))
        .route("/v1/config/{key}", get(get_config).post(put_config))
        .route("/v1/health", post(rollout::push_health))
        .route("/v1/rollouts", get(rollout::list))
        .route("/v1/rollouts/{generation}", get(rollout::show))
        .route("/v1/rollouts/{generation}/{action}", post(rollout::control))
        .route("/ofrep/v1/evaluate/flags/{*key}", post(ofrep::evaluate_flag))
        .route("/ofrep/v1/evaluate/flags", post(ofrep::evaluate_all))
        .route("/ofrep/v1/events", get(ofrep::events))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/apply", post(apply))
        .route("/v1/changes", post(signed_change))
        .route("/v1/proposals", get(proposals::list).post(proposals::propose))
        .route("/v1/proposals/{proposal}", get(proposals::show))
        .route("/v1/proposals/{proposal}/{action}", post(proposals::vote))
        .route("/v1/backup", get(backup))
        .route("/v1/keys", get(keys::list))
        .route("/v1/whoami", get(keys::whoami))
        .route("/v1/events", get(events::events))
        .route("/ui", get(ui::redirect))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/style.css", get(ui::style))
        // On matched routes only: an unknown path is a 404 for everyone.
        .route_layer(authorize)
        .fallback(|| async { ApiError::not_found("no such endpoint (see docs/api.md)") })
        .layer(DefaultBodyLimit::max(MAX_HTTP_BODY_BYTES))
        .with_state(state)
}

/// The query of a `/v1` route that takes none: any parameter is refused (400) by name, as the
/// routes with parameters refuse unknown ones. The probes, `/metrics` and OFREP (another
/// protocol's routes, whose clients may add their own) ignore queries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParameters {}

/// An error answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// 503 while the node recovers its log after a damaged store: it has nothing to serve
    /// that it can vouch for.
    fn unless_recovering(view: &crate::engine::View, node: &str) -> Result<(), ApiError> {
        match &view.recovering {
            None => Ok(()),
            Some(reason) => Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("node {node} is recovering its log from peers ({reason}); read from another node"),
            }),
        }
    }

    fn bad_request(message: impl ToString) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.to_string() }
    }

    fn not_found(message: impl ToString) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, message: message.to_string() }
    }
}

impl From<budget::OverBudget> for ApiError {
    fn from(over: budget::OverBudget) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: over.to_string() }
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        ApiError::bad_request(error)
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        let status = match &error {
            SubmitError::Invalid(_) => StatusCode::BAD_REQUEST,
            SubmitError::FormatTooOld { .. } => StatusCode::CONFLICT,
            SubmitError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            SubmitError::Stopped
            | SubmitError::Recovering(_)
            | SubmitError::ClockAhead { .. }
            | SubmitError::BehindOwnName { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SubmitError::Signing(SigningError::Unsigned { .. }) => {
                let message = format!(
                    "{error}: sign it with an operator key (`grapevine --signing-key FILE`, or GRAPEVINE_SIGNING_KEY; see docs/security.md)"
                );
                return ApiError { status: StatusCode::FORBIDDEN, message };
            }
            SubmitError::Signing(_) => StatusCode::FORBIDDEN,
        };
        ApiError { status, message: error.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Parses a JSON body with an error that says which shape was expected.
fn parse_body<T: DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("expected a JSON body {shape}, got: {e}")))
}

fn parse_key(key: String) -> Result<Key, ApiError> {
    Ok(key.parse::<Key>()?)
}

/// `POST /v1/testsuite/links`: `{"peer": "IP:PORT" or null for every peer, "drop", "loss",
/// "delay_ms", "outbound_only"}` sets a rule of this node's link filter.
#[cfg(feature = "testsuite")]
async fn set_link(State(state): State<ApiState>, body: Bytes) -> ApiResult<Value> {
    // No `serde(flatten)`: with arbitrary_precision it cannot read numbers.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LinkRequest {
        peer: Option<std::net::SocketAddr>,
        #[serde(default)]
        drop: bool,
        #[serde(default)]
        loss: f64,
        #[serde(default)]
        delay_ms: u64,
        #[serde(default)]
        outbound_only: bool,
    }
    let request: LinkRequest = parse_body(
        &body,
        r#"{"peer": "IP:PORT"|null, "drop": bool, "loss": 0.2, "delay_ms": 10, "outbound_only": bool}"#,
    )?;
    let rule = crate::faults::LinkRule {
        drop: request.drop,
        loss: request.loss,
        delay_ms: request.delay_ms,
        outbound_only: request.outbound_only,
    };
    state.transport.link_filter().set(request.peer, rule);
    Ok(Json(json!({ "ok": true })))
}

/// `DELETE /v1/testsuite/links`: every link passes again.
#[cfg(feature = "testsuite")]
async fn clear_links(State(state): State<ApiState>) -> ApiResult<Value> {
    state.transport.link_filter().clear();
    Ok(Json(json!({ "ok": true })))
}

/// `GET /readyz`: 200 once the node has caught up with its live peers' logs and applied
/// every generation whose wave is open for it; 503 with what it still waits for.
async fn readyz(State(state): State<ApiState>) -> Response {
    let readiness = state.engine.readiness().await;
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness)).into_response()
}

/// `GET /v1/backup`: a consistent copy of this node's store, as a redb file to put in place
/// of `grapevine.redb` (of this node name) to restore it. Written next to the store first
/// (the same disk, so no other file system fills up), then streamed and removed.
async fn backup(State(state): State<ApiState>, _: Query<NoParameters>) -> Result<Response, ApiError> {
    ApiError::unless_recovering(&state.engine.view(), state.name.as_str())?;
    let now = clock::wall().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = state.data.join(format!(".backup-{now}.redb"));
    let store = state.store.clone();
    let written = path.clone();
    let failed = |message: String| ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message };
    tokio::task::spawn_blocking(move || store.backup_to(&written))
        .await
        .map_err(|e| failed(format!("backup task failed: {e}")))?
        .map_err(|e| {
            let _ = std::fs::remove_file(&path);
            failed(format!("node {}: backup failed: {e}", state.name))
        })?;
    let file = tokio::fs::File::open(&path).await;
    // Unlinked at once: the open file streams on, and nothing is left behind if the client goes.
    let _ = std::fs::remove_file(&path);
    let file = file.map_err(|e| failed(format!("node {}: cannot read the backup: {e}", state.name)))?;
    let length = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    let headers = [
        (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (axum::http::header::CONTENT_LENGTH, length.to_string()),
        (axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"grapevine-{}.redb\"", state.name)),
    ];
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((headers, body).into_response())
}

async fn metrics(State(state): State<ApiState>) -> Response {
    // Membership is read from chitchat at scrape time, so the gauge is never stale.
    let members = state.gossip.members().await;
    let alive = members.iter().filter(|m| m.alive).count();
    state.metrics.members.get_or_create(&reason("alive")).set(alive as i64);
    state.metrics.members.get_or_create(&reason("dead")).set((members.len() - alive) as i64);
    // How far behind the most advanced live peer this node's log is, in generations.
    let ours = state.engine.view().settled.clone();
    let behind = state
        .gossip
        .peer_version_vectors()
        .await
        .iter()
        .map(|(_, theirs)| theirs.iter().map(|(origin, seq)| seq.saturating_sub(ours.get(origin))).sum::<u64>())
        .max()
        .unwrap_or(0);
    state.metrics.log_behind.set(behind as i64);
    // Per-generation gauges: refilled, so generations that are done leave no stale series.
    let metrics = &state.metrics;
    metrics.generation_verdict.clear();
    for (id, report) in state.health.reports() {
        let verdict = match report.verdict {
            grapevine_proto::rollout::Verdict::Healthy => "healthy",
            grapevine_proto::rollout::Verdict::Inconclusive => "inconclusive",
            grapevine_proto::rollout::Verdict::Anomalous => "anomalous",
        };
        metrics.generation_verdict.get_or_create(&VerdictLabel { generation: id.to_string(), verdict }).set(1);
    }
    metrics.rollout_open_waves.clear();
    metrics.rollout_waves.clear();
    for (id, open, waves) in state.engine.waiting().await {
        let label = GenerationLabel { generation: id.to_string() };
        metrics.rollout_open_waves.get_or_create(&label).set(open as i64);
        metrics.rollout_waves.get_or_create(&label).set(waves as i64);
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.metrics.render()).into_response()
}

/// Where this node's clock stands against its peers' (`null` before any was measured).
fn clock_status(state: &ApiState) -> Value {
    let standing = state.offsets.standing();
    let fenced = crate::clock::fenced(standing, state.max_clock_offset_ms);
    standing.map_or(Value::Null, |s| {
        json!({"ahead_ms": s.ahead_ms, "peers": s.peers, "max_offset_ms": state.max_clock_offset_ms, "fenced": fenced})
    })
}

async fn status(State(state): State<ApiState>, _: Query<NoParameters>) -> ApiResult<Value> {
    let heard = state.gossip.last_heard();
    let members: Vec<Value> = state
        .gossip
        .members()
        .await
        .into_iter()
        .map(|member| {
            let last_heard_ms = heard.get(&member.gossip).map(|age| age.as_millis() as u64);
            let mut member = serde_json::to_value(member).expect("a member always serializes");
            member["last_heard_ms"] = json!(last_heard_ms);
            member
        })
        .collect();
    let view = state.engine.view();
    Ok(Json(json!({
        "node": state.name,
        "cluster": state.cluster,
        "generations": view.generations,
        "compacted": view.compacted,
        "reverted": view.reverted.len(),
        "version_vector": view.version_vector.iter().map(|(o, s)| (o.to_string(), s)).collect::<std::collections::BTreeMap<_, _>>(),
        "applied": view.state.latest().map(ToString::to_string),
        "state_digest": short_digest(&view.state),
        "recovering": view.recovering,
        "clock": clock_status(&state),
        "health": state.health.sources(),
        "files": state.files.statuses(),
        "signing": {
            "required": state.trust.required(),
            "roots": state.trust.roots.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "fingerprint": state.trust.fingerprint(),
            "approvals": state.trust.approvals,
        },
        "freeze": freeze_status(&state),
        "members": members,
        "conflicts": {
            "generations": view.conflicts.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "namesakes": state.gossip.live_namesakes(),
        },
    })))
}

/// The freeze windows of this node, their fingerprint (the same on nodes that carry the same
/// windows), and the freeze in force now, if any.
fn freeze_status(state: &ApiState) -> Value {
    let now = clock::wall_ms(state.clock_skew_ms);
    let active = state.freezes.covering(now).map(|(window, until_ms)| {
        json!({"window": window, "until_ms": until_ms, "until": grapevine_proto::schedule::rfc3339(until_ms)})
    });
    json!({
        "windows": state.freezes.names().collect::<Vec<_>>(),
        "fingerprint": state.freezes.fingerprint(),
        "active": active,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
    /// Include each `put_config` op's value (`value`), not only its size; parts its schema marks
    /// secret are redacted.
    #[serde(default)]
    values: bool,
    /// `records`: the audit records of the generations and of their reverts, oldest first
    /// (`history --format jsonl`).
    format: Option<String>,
}

/// One generation as `history` shows it.
#[derive(Serialize)]
struct GenerationSummary {
    id: String,
    origin: String,
    seq: u64,
    hlc: String,
    hash: String,
    /// Who submitted it, when recorded (wire format 4 on).
    author: Option<grapevine_proto::Author>,
    /// The operator key that signed it and the root that delegated that key (format 5 on).
    signed_by: Option<Value>,
    members: Vec<NodeName>,
    ops: Vec<Value>,
    policy: Policy,
    controls: Vec<grapevine_proto::rollout::Control>,
    /// The waves, reports and revert of a change (not of a control), as this node sees them.
    rollout: Option<crate::engine::RolloutView>,
    /// Its governance record and approvals, where it has any (format 7 on).
    #[serde(skip_serializing_if = "Option::is_none")]
    governance: Option<Value>,
}

/// What a generation's terms say of the approval process, for `history`.
fn governance_summary(terms: &grapevine_proto::Terms) -> Option<Value> {
    use grapevine_proto::Governance;
    let approvals: Vec<Value> = terms
        .approvals
        .iter()
        .map(|a| json!({"operator": a.delegation.operator, "key": a.delegation.key.to_string()}))
        .collect();
    let (record, proposal) = match terms.governance.as_ref()? {
        Governance::Propose { change, expires_ms } => {
            let keys: Vec<String> = change.ops.iter().map(|op| op.key().to_string()).collect();
            return Some(json!({"record": "propose", "keys": keys, "expires_ms": expires_ms, "approvals": approvals}));
        }
        Governance::Approve { proposal, .. } => ("approve", Some(proposal)),
        Governance::Reject { proposal, .. } => ("reject", Some(proposal)),
        Governance::Enact { proposal, .. } => ("enact", Some(proposal)),
    };
    Some(json!({"record": record, "proposal": proposal.map(ToString::to_string), "approvals": approvals}))
}

impl From<&Generation> for GenerationSummary {
    fn from(generation: &Generation) -> Self {
        let body = &generation.body;
        let ops = body
            .change
            .ops
            .iter()
            .map(|op| match op {
                Op::SetFlag { key, definition } => {
                    json!({"op": "set_flag", "key": key, "definition": definition.to_value()})
                }
                Op::PutConfig { key, value, schema } => {
                    json!({"op": "put_config", "key": key, "bytes": value.as_str().len(), "schema": schema.is_some()})
                }
            })
            .collect();
        GenerationSummary {
            id: body.id.to_string(),
            origin: body.id.origin.to_string(),
            seq: body.id.seq,
            hlc: body.hlc.to_string(),
            hash: generation.hash.to_string(),
            author: body.author.clone(),
            signed_by: body.signed.as_ref().map(
                |signed| json!({"key": signed.delegation.key.to_string(), "root": signed.delegation.root.to_string()}),
            ),
            members: body.members.clone(),
            ops,
            policy: body.change.policy.clone(),
            controls: body.change.controls.clone(),
            rollout: None,
            governance: body.terms.as_deref().and_then(governance_summary),
        }
    }
}

/// Adds each `put_config` op's value to its summary (`?values=true`).
fn with_values(summary: &mut GenerationSummary, generation: &Generation) {
    for (summary, op) in summary.ops.iter_mut().zip(&generation.body.change.ops) {
        if let Op::PutConfig { key, value, schema } = op {
            let schemas: Vec<Value> = schema.iter().map(JsonText::to_value).collect();
            summary["value"] = grapevine_proto::audit::redact(key, &value.to_value(), &schemas).0;
        }
    }
}

async fn history(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Value> {
    let limit = query.limit.unwrap_or(100).min(MAX_HISTORY);
    // A principal of some keys sees the changes of those keys only.
    let seen = principal.clone();
    match query.format.as_deref() {
        None => {}
        Some("records") => {
            let records = state.engine.audit_history(limit, Box::new(move |g| access::may_see(&seen, g))).await;
            return Ok(Json(json!({ "node": state.name, "records": records })));
        }
        Some(other) => return Err(ApiError::bad_request(format!("format: expected records, got {other:?}"))),
    }
    let generations = state.engine.history(limit, Box::new(move |g| access::may_see(&seen, g))).await;
    let mut newest = Vec::new();
    for generation in &generations {
        let mut summary = GenerationSummary::from(generation);
        if query.values {
            with_values(&mut summary, generation);
        }
        if !generation.body.change.ops.is_empty() {
            summary.rollout = state.engine.rollout(generation.id().clone()).await;
        }
        newest.push(summary);
    }
    let view = state.engine.view();
    let (total, compacted) = (view.generations, view.compacted);
    Ok(Json(json!({ "node": state.name, "total": total, "compacted": compacted, "generations": newest })))
}

/// `POST /v1/apply`: a flagd flag file, unchanged. Every flag must be valid (its `$ref`s
/// resolved against the file's `$evaluators`, the file's `metadata` under each flag's); the
/// flags that differ from the log's latest become one change. Flags not in the file stay.
async fn apply(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<Value> {
    let result = apply_change(&state, &principal, &wait, body).await;
    count_change(&state, result)
}

async fn apply_change(
    state: &ApiState,
    principal: &crate::auth::Principal,
    wait: &ChangeQuery,
    body: Bytes,
) -> ApiResult<Value> {
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("expected a flagd flag file in UTF-8"))?;
    let set = grapevine_proto::eval::FlagSet::parse(text).map_err(ApiError::bad_request)?;
    access::covers_all(state, principal, set.flags.keys().map(String::as_str))?;
    let desired = state.engine.view().desired.flags.clone();
    let mut ops = Vec::new();
    for (name, flag) in set.flags {
        let mut flag = flag.map_err(ApiError::bad_request)?;
        let key: Key = name.parse().map_err(|error| ApiError::bad_request(format!("flag {name:?}: {error}")))?;
        for (field, value) in &set.metadata {
            flag.metadata.entry(field.clone()).or_insert_with(|| value.clone());
        }
        if desired.get(&key).is_some_and(|entry| *entry.value == flag) {
            continue;
        }
        ops.push(Op::SetFlag { key, definition: flag.to_json_text()? });
    }
    if ops.is_empty() {
        return Ok(Json(json!({"changed": 0, "message": "every flag in the file is already the log's latest"})));
    }
    let changed = ops.len();
    let change = Change { ops, policy: wait.policy(&state.default_policy)?, controls: Vec::new() };
    let mut answer = submit_change(state, change, None, wait).await?;
    answer["changed"] = json!(changed);
    Ok(answer)
}

/// `POST /v1/changes`: a change as a node prepared it (`?prepare=true` on any change request),
/// with its operator's signature, both hex of their postcard encoding. The node stores exactly
/// that change, after the checks every peer makes on it.
async fn signed_change(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<Value> {
    let result = signed_change_of(&state, &principal, &wait, body).await;
    count_change(&state, result)
}

async fn signed_change_of(
    state: &ApiState,
    principal: &crate::auth::Principal,
    wait: &ChangeQuery,
    body: Bytes,
) -> ApiResult<Value> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SignedChangeRequest {
        change: String,
        signed: String,
        /// The scheduled start the signature covers (Unix ms).
        #[serde(default)]
        start_at_ms: Option<u64>,
    }
    let shape = r#"{"change": "<hex>", "signed": "<hex>", "start_at_ms": null or Unix ms}"#;
    let request: SignedChangeRequest = parse_body(&body, shape)?;
    let change: Change = decode_hex(&request.change, "change")?;
    let signed: Box<Signed> = decode_hex(&request.signed, "signed")?;
    if wait.dry_run || wait.prepare {
        return Err(ApiError::bad_request(
            "a signed change is stored as signed: prepare and dry-run the request it came from",
        ));
    }
    access::covers_all(state, principal, change.ops.iter().map(|op| op.key().as_str()))?;
    for control in &change.controls {
        access::may_touch(state, principal, control.target()).await?;
    }
    submit_change(state, change, Some((signed, request.start_at_ms)), wait).await
}

/// Decodes `field`, hex of a postcard encoding in this build's wire format.
fn decode_hex<T: DeserializeOwned>(text: &str, field: &str) -> Result<T, ApiError> {
    let refused = |error: String| {
        let format = grapevine_proto::wire::WIRE_VERSION;
        ApiError::bad_request(format!("{field}: expected hex of its encoding in wire format {format}, got {error}"))
    };
    let bytes = hex::decode(text).map_err(|error| refused(format!("invalid hex ({error})")))?;
    match postcard::take_from_bytes(&bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, trailing)) => Err(refused(format!("{} trailing bytes", trailing.len()))),
        Err(error) => Err(refused(format!("bytes that do not decode ({error})"))),
    }
}

/// What `flag set` asks for: exactly one of the fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagSetRequest {
    on: Option<bool>,
    variant: Option<String>,
    definition: Option<Value>,
}

fn accepted(generation: &Generation) -> Value {
    let mut answer = json!({
        "generation": generation.id().to_string(),
        "hlc": generation.body.hlc.to_string(),
        "hash": generation.hash.to_string(),
        "members": generation.body.members,
        "author": generation.body.author,
    });
    add_start(&mut answer, generation.body.terms.as_ref().and_then(|terms| terms.start_at_ms));
    answer
}

/// Adds a change's scheduled start, as Unix ms and RFC 3339, to an answer.
fn add_start(answer: &mut Value, start_at_ms: Option<u64>) {
    if let Some(start) = start_at_ms {
        answer["start_at_ms"] = json!(start);
        answer["start_at"] = json!(grapevine_proto::schedule::rfc3339(start));
    }
}

/// Counts a change request by outcome: `accepted`, `refused` (4xx) or `failed` (5xx).
fn count_change(state: &ApiState, result: ApiResult<Value>) -> ApiResult<Value> {
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(error) if error.status.is_client_error() => "refused",
        Err(_) => "failed",
    };
    state.metrics.changes.get_or_create(&reason(outcome)).inc();
    result
}

/// The query of a change: `wait_replicas=K&timeout_ms=T` to answer only once K other nodes
/// hold it, `emergency=true` for a kill switch, and any rollout policy option
/// ([`PolicyOptions`]: `waves`, `bake`, `anomaly_quorum`, `max_error_rate`, ...) over the
/// node's default policy. An unknown option is refused, naming it.
#[derive(Default)]
pub struct ChangeQuery {
    wait_replicas: usize,
    timeout_ms: Option<u64>,
    emergency: bool,
    /// Check and describe the change (diff, waves), store nothing.
    dry_run: bool,
    /// A dry run that also answers what an operator signs (`POST /v1/changes` takes it back).
    prepare: bool,
    /// A scheduled start: an RFC 3339 time (`start_at`) or a duration from now (`start_in`).
    start_at: Option<String>,
    start_in: Option<String>,
    policy: PolicyOptions,
    /// Who submits the change: the `X-Grapevine-Author` header.
    author: Option<Author>,
}

impl<S: Send + Sync> FromRequestParts<S> for ChangeQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut query = ChangeQuery::parse(parts.uri.query().unwrap_or_default())?;
        // An authenticated client is who it proved to be; an anonymous one may say who it is.
        if let Some(principal) = parts.extensions.get::<crate::auth::Principal>().filter(|p| p.authenticated) {
            query.author = principal.name.parse().ok();
        } else if let Some(author) = parts.headers.get(AUTHOR_HEADER) {
            let author = author.to_str().unwrap_or("(not ASCII)").to_owned();
            query.author = Some(author.parse().map_err(|e| ApiError::bad_request(format!("{AUTHOR_HEADER}: {e}")))?);
        }
        Ok(query)
    }
}

impl ChangeQuery {
    fn parse(query: &str) -> Result<ChangeQuery, ApiError> {
        let refused = |error: String| ApiError::bad_request(format!("query: {error}"));
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| refused(e.to_string()))?;
        let mut parsed = ChangeQuery::default();
        let mut policy = Vec::new();
        for (name, value) in pairs {
            let invalid = |expected: &str| refused(format!("{name} must be {expected}, got {value:?}"));
            match name.as_str() {
                "wait_replicas" => parsed.wait_replicas = value.parse().map_err(|_| invalid("a count"))?,
                "timeout_ms" => parsed.timeout_ms = Some(value.parse().map_err(|_| invalid("milliseconds"))?),
                "emergency" => parsed.emergency = value.parse().map_err(|_| invalid("true or false"))?,
                "dry_run" => parsed.dry_run = value.parse().map_err(|_| invalid("true or false"))?,
                "prepare" => parsed.prepare = value.parse().map_err(|_| invalid("true or false"))?,
                "start_at" => parsed.start_at = Some(value),
                "start_in" => parsed.start_in = Some(value),
                _ => policy.push((name, value)),
            }
        }
        if parsed.start_at.is_some() && parsed.start_in.is_some() {
            return Err(refused("expected start_at or start_in, got both".into()));
        }
        // One option at a time first, so a bad value is refused naming its option
        // (`anomaly_quorum_min must be a number ..., got "-1"`), not serde's bare reason.
        for (name, value) in &policy {
            let one = serde_urlencoded::to_string([(name, value)]).map_err(|e| refused(e.to_string()))?;
            serde_urlencoded::from_str::<PolicyOptions>(&one).map_err(|error| match error.to_string() {
                unknown if unknown.starts_with("unknown field") => refused(unknown),
                reason => refused(format!("{name} must be {}, got {value:?} ({reason})", expected_option(name))),
            })?;
        }
        let policy = serde_urlencoded::to_string(&policy).map_err(|e| refused(e.to_string()))?;
        parsed.policy = serde_urlencoded::from_str(&policy).map_err(|e| refused(e.to_string()))?;
        Ok(parsed)
    }

    /// Whether the query schedules a start.
    fn schedules(&self) -> bool {
        self.start_at.is_some() || self.start_in.is_some()
    }

    /// The scheduled start the query asks for (Unix ms), checked against `now_ms`.
    fn start_at_ms(&self, now_ms: u64, max_offset_ms: u64) -> Result<Option<u64>, ApiError> {
        let refused = |error: String| ApiError::bad_request(format!("query: {error}"));
        let start = match (&self.start_at, &self.start_in) {
            (Some(at), _) => parse_time(at).map_err(|error| refused(format!("start_at: {error}")))?,
            (None, Some(within)) => {
                let ms = parse_duration_ms(within).map_err(|error| refused(format!("start_in: {}", error.0)))?;
                now_ms.saturating_add(ms)
            }
            (None, None) => return Ok(None),
        };
        check_start(start, now_ms, max_offset_ms).map_err(|error| refused(format!("start: {error}")))?;
        Ok(Some(start))
    }

    /// The policy the query asks for, checked.
    fn policy(&self, default: &Policy) -> Result<Policy, ApiError> {
        let base = if self.emergency { default.as_emergency() } else { default.clone() };
        self.policy.apply(base).map_err(|error| ApiError::bad_request(ValidationError::Policy { detail: error.0 }))
    }
}

/// What a numeric policy option of a change's query takes (the text ones take any text and are
/// checked by [`PolicyOptions::apply`]).
fn expected_option(name: &str) -> &'static str {
    match name {
        "anomaly_quorum_min" | "min_samples" | "max_latency_p99_ms" => "a whole number from 0",
        _ => "a number",
    }
}

/// The header that names who submits a change (`grapevine` sends `$USER@host` unless told).
pub const AUTHOR_HEADER: &str = "x-grapevine-author";

/// How long a change waits for replicas unless the request says otherwise.
const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a request may wait for replicas.
const MAX_REPLICA_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the replica count is checked while waiting.
const REPLICA_POLL: Duration = Duration::from_millis(5);

/// Submits a one-operation change and, if asked, waits until enough peers hold it.
async fn submit(state: &ApiState, op: Op, wait: &ChangeQuery) -> ApiResult<Value> {
    let change = Change { ops: vec![op], policy: wait.policy(&state.default_policy)?, controls: Vec::new() };
    submit_change(state, change, None, wait).await
}

/// The signature and the scheduled start of a change: a signed change's start is the one its
/// operator signed (from the body), an unsigned one's the query's; either is checked against
/// this node's clock (`now`).
fn start_of(
    state: &ApiState,
    signed: Option<(Box<Signed>, Option<u64>)>,
    wait: &ChangeQuery,
    now: u64,
) -> Result<(Option<Box<Signed>>, Option<u64>), ApiError> {
    let Some((signed, start_at_ms)) = signed else {
        return Ok((None, wait.start_at_ms(now, state.max_clock_offset_ms)?));
    };
    if wait.schedules() {
        return Err(ApiError::bad_request(
            "a signed change carries its start in the body (start_at_ms, signed with it), not in the query",
        ));
    }
    if let Some(start) = start_at_ms {
        check_start(start, now, state.max_clock_offset_ms)
            .map_err(|error| ApiError::bad_request(format!("start_at_ms: {error}")))?;
    }
    Ok((Some(signed), start_at_ms))
}

/// Submits a change (signed by its operator, where the cluster requires it, with the start the
/// signature covers) and, if asked, waits until enough peers hold it. An unsigned change starts
/// when its query says (`start_at`, `start_in`), checked against this node's clock.
pub(crate) async fn submit_change(
    state: &ApiState,
    change: Change,
    signed: Option<(Box<Signed>, Option<u64>)>,
    wait: &ChangeQuery,
) -> ApiResult<Value> {
    // One reading of the clock: `start_in` counts from it, and a prepared change is issued at it,
    // so the operator can check the start against what was asked.
    let now = clock::wall_ms(state.clock_skew_ms);
    let (signed, start_at_ms) = start_of(state, signed, wait, now)?;
    if wait.dry_run || wait.prepare {
        let preview = state.engine.preview(change.clone()).await?;
        let mut answer = serde_json::to_value(preview).expect("a preview always serializes");
        answer["dry_run"] = json!(true);
        add_start(&mut answer, start_at_ms);
        if wait.prepare {
            answer["sign"] = json!({
                "cluster": state.cluster,
                "format": grapevine_proto::wire::WIRE_VERSION,
                "issued_ms": now,
                "change": hex::encode(postcard::to_stdvec(&change).expect("a change always encodes")),
                "start_at_ms": start_at_ms,
            });
        }
        return Ok(Json(answer));
    }
    if wait.wait_replicas > MAX_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "wait_replicas must be at most {MAX_MEMBERS} (the member ceiling), got {}",
            wait.wait_replicas
        )));
    }
    let timeout = wait.timeout_ms.map_or(DEFAULT_REPLICA_TIMEOUT, Duration::from_millis).min(MAX_REPLICA_TIMEOUT);
    let terms = start_at_ms.map(|start_at_ms| Box::new(Terms { start_at_ms: Some(start_at_ms), ..Terms::default() }));
    let generation = state.engine.submit(change, wait.author.clone(), signed, terms).await?;
    let id = generation.id();
    let deadline = clock::now() + timeout;
    let mut replicas = state.holdings.count_holding(state.gossip.peer_version_vectors().await, id);
    while replicas < wait.wait_replicas {
        if clock::now() >= deadline {
            return Err(ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: format!(
                    "generation {id} is stored on {} but reached {replicas} of the {} other nodes asked for within {} ms; it keeps spreading",
                    state.name,
                    wait.wait_replicas,
                    timeout.as_millis()
                ),
            });
        }
        tokio::time::sleep(REPLICA_POLL).await;
        replicas = state.holdings.count_holding(state.gossip.peer_version_vectors().await, id);
    }
    let mut answer = accepted(&generation);
    answer["replicas"] = json!(replicas);
    Ok(Json(answer))
}

async fn set_flag(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<Value> {
    let result = set_flag_change(&state, key, &wait, body).await;
    count_change(&state, result)
}

async fn set_flag_change(state: &ApiState, key: String, wait: &ChangeQuery, body: Bytes) -> ApiResult<Value> {
    let key = parse_key(key)?;
    let request: FlagSetRequest = parse_body(&body, r#"{"on": bool} or {"variant": "NAME"} or {"definition": {...}}"#)?;
    // From the log's latest definition, not the applied one: a change builds on the one
    // before it even where that one has not reached this node's wave yet.
    let current = state.engine.view().desired.flags.get(&key).map(|entry| entry.value.as_ref().clone());
    let definition = match (request.on, request.variant, request.definition) {
        (Some(on), None, None) => switch_boolean(&key, current, on)?,
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

/// `--on`/`--off`: a boolean flag serving `on` or `off`. An existing flag keeps its metadata,
/// but a flag of another shape is not silently turned into a boolean.
fn switch_boolean(key: &Key, current: Option<FlagDefinition>, on: bool) -> Result<FlagDefinition, ApiError> {
    let Some(mut flag) = current else {
        return Ok(FlagDefinition::boolean(on));
    };
    if flag.variants != FlagDefinition::boolean(on).variants {
        let names: Vec<&str> = flag.variants.keys().map(String::as_str).collect();
        return Err(ApiError::bad_request(format!(
            "flag \"{key}\": --on/--off need variants on: true and off: false, got variants ({}); use --variant or --file",
            names.join(", ")
        )));
    }
    flag.state = FlagState::Enabled;
    flag.default_variant = Some(if on { "on" } else { "off" }.to_owned());
    Ok(flag)
}

/// `?desired=true` on a read: the log's latest value instead of the applied one.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    #[serde(default)]
    desired: bool,
}

fn flag_answer(
    state: &ApiState,
    key: &Key,
    context: &serde_json::Map<String, Value>,
    read: &ReadQuery,
) -> Result<Value, ApiError> {
    let view = state.engine.view();
    ApiError::unless_recovering(&view, state.name.as_str())?;
    let entry = if read.desired { &view.desired } else { &view.state }
        .flags
        .get(key)
        .ok_or_else(|| ApiError::not_found(format!("flag \"{key}\" not found on node {}", state.name)))?;
    let evaluation = entry.value.evaluate(key.as_str(), context, state.fractional, clock::unix_ms() / 1000);
    Ok(json!({
        "key": key,
        "value": evaluation.value,
        "variant": evaluation.variant,
        "reason": evaluation.reason,
        "error_code": evaluation.error_code,
        "error_message": evaluation.error_message,
        "generation": entry.generation.to_string(),
        "definition": entry.value,
    }))
}

async fn get_flag(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(read): Query<ReadQuery>,
) -> ApiResult<Value> {
    Ok(Json(flag_answer(&state, &parse_key(key)?, &Default::default(), &read)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateRequest {
    #[serde(default)]
    context: serde_json::Map<String, Value>,
}

async fn evaluate_flag(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(read): Query<ReadQuery>,
    body: Bytes,
) -> ApiResult<Value> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigPutRequest {
    value: Value,
    /// A JSON Schema the key's values must follow from now on; without it, the key keeps the
    /// schema it has.
    schema: Option<Value>,
}

async fn put_config(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<Value> {
    let result = put_config_change(&state, key, &wait, body).await;
    count_change(&state, result)
}

async fn put_config_change(state: &ApiState, key: String, wait: &ChangeQuery, body: Bytes) -> ApiResult<Value> {
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
fn if_none_match(headers: &axum::http::HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
}

/// `GET /v1/config/{key}`: the value, the generation that set it, and a strong `ETag` (the
/// generation); `304` on a matching `If-None-Match`.
async fn get_config(
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
    let body = json!({
        "key": key,
        "value": entry.value.to_value(),
        "generation": entry.generation.to_string(),
    });
    Ok(([(header::ETAG, etag)], Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::ChangeQuery;

    fn refusal(query: &str) -> String {
        ChangeQuery::parse(query).err().map(|e| e.message).unwrap_or_default()
    }

    #[test]
    fn a_bad_query_is_refused_naming_its_option() {
        let message = refusal("anomaly_quorum_min=-1");
        assert!(
            message.starts_with("query: anomaly_quorum_min must be a whole number from 0, got \"-1\""),
            "{message}"
        );
        assert!(refusal("health_quorum=lots").contains("health_quorum must be a number, got \"lots\""));
        assert!(refusal("wait=1").contains("unknown field `wait`"));
        assert!(refusal("wait_replicas=x").contains("wait_replicas must be a count, got \"x\""));
        assert!(ChangeQuery::parse("anomaly_quorum_min=2&waves=1,100%25&emergency=true").is_ok());
        assert!(
            refusal("start_at=2026-12-24T08:00:00Z&start_in=5s").contains("expected start_at or start_in, got both")
        );
    }

    #[test]
    fn a_start_is_read_from_the_query_and_checked_against_the_clock() {
        let now = grapevine_proto::schedule::parse_time("2026-12-24T08:00:00Z").unwrap();
        let start = |query: &str| {
            let parsed = ChangeQuery::parse(query).map_err(|e| e.message)?;
            parsed.start_at_ms(now, 100).map_err(|e| e.message)
        };
        assert_eq!(start(""), Ok(None));
        assert_eq!(start("start_in=3s"), Ok(Some(now + 3_000)));
        assert_eq!(start("start_at=2026-12-24T09:00:00%2B01:00"), Ok(Some(now)));
        let past = start("start_at=2026-12-24T07:00:00Z").unwrap_err();
        assert!(past.starts_with("query: start: the start 2026-12-24T07:00:00Z is 3600000 ms in the past"), "{past}");
        assert!(start("start_in=soon").unwrap_err().contains("start_in: expected a duration"));
        assert!(start("start_at=monday").unwrap_err().contains("start_at: expected an RFC 3339 time"));
        assert!(start("start_in=400d").is_err());
        assert!(start("start_in=9000h").unwrap_err().contains("more than 366 days ahead"));
    }
}
