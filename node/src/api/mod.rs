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
//! `[rollout]` policy, `fractional`, the watch `Feed` and the `Files` statuses), `ApiError` and the
//! body and key parsers; one file per resource holds its handlers: `admin.rs` (`/readyz`,
//! `/metrics`, `/v1/status`, `/v1/backup`), `history.rs`, `flags.rs` (`/v1/flags/{key}`,
//! `/v1/flags/{key}/evaluate`), `config.rs` (`/v1/config/{key}`), `changes.rs` (`/v1/apply`,
//! `/v1/changes`, `ChangeQuery`, `submit_change`), `rollout.rs`, `proposals.rs`, `keys.rs`,
//! `events.rs`, `watch.rs`, `ofrep.rs`, `ui.rs`, and, in `testsuite` builds only, `links.rs`
//! (`POST`/`DELETE /v1/testsuite/links`). The answers are the types of `crate::replies`, which
//! the CLI client and the cluster tests read back.
//!
//! - `proto::edit::switch_boolean` implements `--on`/`--off`. It and `--variant` start from the **desired** flag
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
//! - `apply` (`POST /v1/apply`) reads the body with `FlagSet::parse` and submits one change with
//!   the ops of `proto::edit::flag_file_ops` (refused whole at the first invalid flag; the file's
//!   metadata merged under each flag's; a `SetFlag` per flag that differs from the desired state:
//!   `changed`); none differing answers `changed: 0` without submitting.
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
//! - `history` adds each change's `replies::Rollout` (`rollout`; `null` for a control generation);
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

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use grapevine_proto::flagd::Fractional;
use grapevine_proto::limits::MAX_VALUE_BYTES;
use grapevine_proto::policy::Policy;
use grapevine_proto::signing::SigningError;
use grapevine_proto::{Key, NodeName, ValidationError};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::engine::{EngineHandle, SubmitError};
use crate::gossip::Gossip;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::sync::PeerHoldings;

pub mod access;
mod admin;
pub mod budget;
mod changes;
mod config;
mod events;
mod flags;
mod history;
mod keys;
pub mod limits;
#[cfg(feature = "testsuite")]
mod links;
mod ofrep;
mod proposals;
mod rollout;
pub mod selector;
mod ui;
pub mod watch;

use admin::{backup, metrics, readyz, status};
pub use changes::{AUTHOR_HEADER, ChangeQuery};
use changes::{apply, count_change, decode_hex, signed_change, submit, submit_change};
use config::{get_config, if_none_match, put_config};
use flags::{evaluate_flag, get_flag, set_flag};
use history::history;

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
    /// This node's cell.
    pub cell: grapevine_proto::CellName,
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
    pub trust: Arc<grapevine_proto::trust::Trust>,
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
    let router = router.route("/v1/testsuite/links", post(links::set_link).delete(links::clear_links));
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
        (self.status, Json(crate::replies::ErrorReply { error: self.message })).into_response()
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

/// `?desired=true` on a read: the log's latest value instead of the applied one.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    #[serde(default)]
    desired: bool,
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
