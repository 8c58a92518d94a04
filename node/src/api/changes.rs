//! Changes: `POST /v1/apply`, `POST /v1/changes` (a change signed elsewhere), the `ChangeQuery`
//! every change and control endpoint reads, and `submit`, which they all end in.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use grapevine_proto::limits::MAX_MEMBERS;
use grapevine_proto::policy::{Policy, PolicyOptions, parse_duration_ms};
use grapevine_proto::schedule::{check_start, parse_time};
use grapevine_proto::signing::Signed;
use grapevine_proto::{Author, Change, Op, Terms, ValidationError};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, ApiResult, ApiState, access, parse_body};
use crate::clock;
use crate::metrics::reason;
use crate::replies::{Accepted, ChangeReply, DiffEntry, DryRun, SignChange, Unchanged};

/// `POST /v1/apply`: a flagd flag file, unchanged. Every flag must be valid (its `$ref`s
/// resolved against the file's `$evaluators`, the file's `metadata` under each flag's); the
/// flags that differ from the log's latest become one change. Flags not in the file stay.
pub(super) async fn apply(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
    let result = apply_change(&state, &principal, &wait, body).await;
    count_change(&state, result)
}

pub(super) async fn apply_change(
    state: &ApiState,
    principal: &crate::auth::Principal,
    wait: &ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("expected a flagd flag file in UTF-8"))?;
    let set = grapevine_proto::eval::FlagSet::parse(text).map_err(ApiError::bad_request)?;
    access::covers_all(state, principal, set.flags.keys().map(String::as_str))?;
    let ops = grapevine_proto::edit::flag_file_ops(set, &state.engine.view().desired).map_err(ApiError::bad_request)?;
    if ops.is_empty() {
        let message = "every flag in the file is already the log's latest".to_owned();
        return Ok(Json(ChangeReply::Unchanged(Unchanged { changed: 0, message })));
    }
    let changed = Some(ops.len());
    let change = Change { ops, policy: wait.policy(&state.default_policy)?, controls: Vec::new() };
    let Json(mut answer) = submit_change(state, change, None, wait).await?;
    match &mut answer {
        ChangeReply::Accepted(accepted) => accepted.changed = changed,
        ChangeReply::DryRun(dry_run) => dry_run.changed = changed,
        ChangeReply::Unchanged(_) => {}
    }
    Ok(Json(answer))
}

/// `POST /v1/changes`: a change as a node prepared it (`?prepare=true` on any change request),
/// with its operator's signature, both hex of their postcard encoding. The node stores exactly
/// that change, after the checks every peer makes on it.
pub(super) async fn signed_change(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    wait: ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
    let result = signed_change_of(&state, &principal, &wait, body).await;
    count_change(&state, result)
}

pub(super) async fn signed_change_of(
    state: &ApiState,
    principal: &crate::auth::Principal,
    wait: &ChangeQuery,
    body: Bytes,
) -> ApiResult<ChangeReply> {
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
pub(super) fn decode_hex<T: DeserializeOwned>(text: &str, field: &str) -> Result<T, ApiError> {
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

/// Counts a change request by outcome: `accepted`, `refused` (4xx) or `failed` (5xx).
pub(super) fn count_change<T>(state: &ApiState, result: ApiResult<T>) -> ApiResult<T> {
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
    pub(super) wait_replicas: usize,
    pub(super) timeout_ms: Option<u64>,
    pub(super) emergency: bool,
    /// Check and describe the change (diff, waves), store nothing.
    pub(super) dry_run: bool,
    /// A dry run that also answers what an operator signs (`POST /v1/changes` takes it back).
    pub(super) prepare: bool,
    /// A scheduled start: an RFC 3339 time (`start_at`) or a duration from now (`start_in`).
    pub(super) start_at: Option<String>,
    pub(super) start_in: Option<String>,
    pub(super) policy: PolicyOptions,
    /// Who submits the change: the `X-Grapevine-Author` header.
    pub(super) author: Option<Author>,
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
    pub(super) fn parse(query: &str) -> Result<ChangeQuery, ApiError> {
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
    pub(super) fn schedules(&self) -> bool {
        self.start_at.is_some() || self.start_in.is_some()
    }

    /// The scheduled start the query asks for (Unix ms), checked against `now_ms`.
    pub(super) fn start_at_ms(&self, now_ms: u64, max_offset_ms: u64) -> Result<Option<u64>, ApiError> {
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
    pub(super) fn policy(&self, default: &Policy) -> Result<Policy, ApiError> {
        let base = if self.emergency { default.as_emergency() } else { default.clone() };
        self.policy.apply(base).map_err(|error| ApiError::bad_request(ValidationError::Policy { detail: error.0 }))
    }
}

/// What a numeric policy option of a change's query takes (the text ones take any text and are
/// checked by [`PolicyOptions::apply`]).
pub(super) fn expected_option(name: &str) -> &'static str {
    match name {
        "anomaly_quorum_min" | "min_samples" | "max_latency_p99_ms" => "a whole number from 0",
        _ => "a number",
    }
}

/// The header that names who submits a change (`grapevine` sends `$USER@host` unless told).
pub const AUTHOR_HEADER: &str = "x-grapevine-author";

/// How long a change waits for replicas unless the request says otherwise.
pub(super) const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a request may wait for replicas.
pub(super) const MAX_REPLICA_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the replica count is checked while waiting.
pub(super) const REPLICA_POLL: Duration = Duration::from_millis(5);

/// Submits a one-operation change and, if asked, waits until enough peers hold it.
pub(super) async fn submit(state: &ApiState, op: Op, wait: &ChangeQuery) -> ApiResult<ChangeReply> {
    let change = Change { ops: vec![op], policy: wait.policy(&state.default_policy)?, controls: Vec::new() };
    submit_change(state, change, None, wait).await
}

/// The signature and the scheduled start of a change: a signed change's start is the one its
/// operator signed (from the body), an unsigned one's the query's; either is checked against
/// this node's clock (`now`).
pub(super) fn start_of(
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
) -> ApiResult<ChangeReply> {
    // One reading of the clock: `start_in` counts from it, and a prepared change is issued at it,
    // so the operator can check the start against what was asked.
    let now = clock::wall_ms(state.clock_skew_ms);
    let (signed, start_at_ms) = start_of(state, signed, wait, now)?;
    if wait.dry_run || wait.prepare {
        return Ok(Json(ChangeReply::DryRun(dry_run(state, change, wait.prepare.then_some(now), start_at_ms).await?)));
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
    Ok(Json(ChangeReply::Accepted(Accepted { replicas: Some(replicas), ..Accepted::of(&generation) })))
}

/// What `change` would do, stored nowhere; with `issued_ms` (`?prepare=true`), also what an
/// operator signs to store it.
async fn dry_run(
    state: &ApiState,
    change: Change,
    issued_ms: Option<u64>,
    start_at_ms: Option<u64>,
) -> Result<DryRun, ApiError> {
    let sign = issued_ms.map(|issued_ms| SignChange {
        cluster: state.cluster.clone(),
        format: grapevine_proto::wire::WIRE_VERSION.into(),
        issued_ms,
        change: hex::encode(postcard::to_stdvec(&change).expect("a change always encodes")),
        start_at_ms,
    });
    let preview = state.engine.preview(change).await?;
    let diff = preview.diff.into_iter();
    Ok(DryRun {
        dry_run: true,
        generation: preview.generation,
        policy: preview.policy,
        waves: preview.waves,
        diff: diff.map(|d| DiffEntry { kind: d.kind.into(), key: d.key, before: d.before, after: d.after }).collect(),
        start_at_ms,
        start_at: start_at_ms.map(grapevine_proto::schedule::rfc3339),
        sign,
        changed: None,
    })
}
