//! OFREP, the OpenFeature Remote Evaluation Protocol, on the node's HTTP port: any OpenFeature
//! SDK with an OFREP provider pointed at `http://localhost:7401` evaluates this node's
//! applied flags.
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}`: one flag. 200 with `key`, `value` (typed as in
//!   the definition), `variant`, `reason`, `metadata`; without `value` and `variant` when the
//!   caller's default applies (a disabled flag, no default variant). 404 `FLAG_NOT_FOUND`;
//!   400 `PARSE_ERROR`, `TARGETING_KEY_MISSING` (only where the rule buckets by the targeting
//!   key), `INVALID_CONTEXT` (a context that is not an object), `GENERAL`.
//! - `POST /ofrep/v1/evaluate/flags`: every flag, with a strong `ETag` over the answer and
//!   `304` on a matching `If-None-Match`, and `eventStreams` naming the SSE endpoint below.
//! - Both take flagd's `Flagd-Selector` header (`flagSetId=ID`, `prefix=P`; see
//!   `selector::Selector`): a flag outside it is not found, and the bulk answer leaves it
//!   out.
//! - `GET /ofrep/v1/events`: Server-Sent Events, one `refetchEvaluation` event each time the
//!   applied flags change (a change applied here, or a revert), with the flags' digest as
//!   the event id and `etag`.
//!
//! Flags are evaluated over the applied state with the node's `fractional` scheme. `evaluate_flag`
//! answers 200, or 404 `FLAG_NOT_FOUND`, 400 `INVALID_CONTEXT` for a bad context, or 400 with the
//! evaluation's error code. `evaluate_all` adds `eventStreams` with `inactivityDelaySec`
//! `INACTIVITY_DELAY_S` (120). `events` sends `refetchEvaluation` each time `flags_digest`, over
//! the applied flags' keys and generations, changes on the engine's view channel. OFREP errors keep
//! OFREP's shape, `{"errorCode", "errorDetails"}`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use grapevine_proto::eval::{ErrorCode, EvaluationContext, FlagDefinition, Reason, Resolution, ofrep_context};
use grapevine_proto::state::Entry;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::selector::{SELECTOR_HEADER, Selector};
use super::{ApiState, budget};
use crate::clock;
use crate::engine::View;

/// How long an idle SDK may keep the event stream before it should close it.
const INACTIVITY_DELAY_S: u64 = 120;

fn failure(status: StatusCode, key: Option<&str>, code: &str, details: String) -> Response {
    let mut body = json!({"errorCode": code, "errorDetails": details});
    if let Some(key) = key {
        body["key"] = json!(key);
    }
    (status, Json(body)).into_response()
}

/// 503 while the node recovers its log after a damaged store (the SDK keeps its last values).
fn recovering(state: &ApiState, key: Option<&str>, reason: &str) -> Response {
    let details = format!("node {} is recovering its log from peers ({reason})", state.name);
    failure(StatusCode::SERVICE_UNAVAILABLE, key, "GENERAL", details)
}

/// 503 for a request answered without its evaluation (`budget.rs`): the SDK serves its
/// default (or last value) and asks again later.
fn over_budget(key: Option<&str>, over: budget::OverBudget) -> Response {
    failure(StatusCode::SERVICE_UNAVAILABLE, key, "GENERAL", over.to_string())
}

/// One flag's answer in OFREP's shape, serialized as it stands (fields in the order the
/// JSON object of earlier versions had, so a bulk answer's `ETag` is unchanged): borrowed from
/// the flag, so that answering allocates only the output.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Answer<'a> {
    Success {
        key: &'a str,
        metadata: &'a BTreeMap<String, Value>,
        reason: Reason,
        /// Both, or neither when the caller's default applies.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        variant: Option<&'a str>,
    },
    Failure {
        #[serde(rename = "errorCode")]
        code: ErrorCode,
        #[serde(rename = "errorDetails")]
        details: String,
        key: &'a str,
    },
}

impl<'a> Answer<'a> {
    fn new(key: &'a str, resolution: Resolution<'a>, metadata: &'a BTreeMap<String, Value>) -> Answer<'a> {
        if let Some((code, details)) = resolution.error {
            return Answer::Failure { code, details, key };
        }
        let (value, variant) = match (resolution.value, resolution.variant) {
            (Some(value), Some(variant)) => (Some(value), Some(variant)),
            _ => (None, None),
        };
        Answer::Success { key, metadata, reason: resolution.reason, value, variant }
    }
}

/// The applied flag named `key`, if any.
fn applied<'v>(view: &'v View, key: &str) -> Option<&'v Entry<Arc<FlagDefinition>>> {
    view.state.flags.get(&key.parse::<grapevine_proto::Key>().ok()?)
}

/// Flag `key` (applied as `entry`) evaluated against the request's context.
fn evaluate<'a>(
    state: &ApiState,
    key: &'a str,
    entry: &'a Entry<Arc<FlagDefinition>>,
    context: &EvaluationContext,
    now_s: u64,
) -> Answer<'a> {
    let flag = &*entry.value;
    Answer::new(key, flag.resolve(key, context, state.fractional, now_s), &flag.metadata)
}

/// Counts an OFREP answer by status, and how long its evaluation took.
fn counted(state: &ApiState, started: std::time::Instant, response: Response) -> Response {
    state.metrics.ofrep_evaluation.observe(clock::elapsed(started).as_secs_f64());
    let status = match response.status().as_u16() {
        200 => "200",
        304 => "304",
        400 => "400",
        404 => "404",
        _ => "other",
    };
    state.metrics.ofrep_requests.get_or_create(&crate::metrics::reason(status)).inc();
    response
}

/// The `Flagd-Selector` header's selector (flagd's, `selector::Selector`), read in place:
/// every flag without one; what is wrong with one that does not parse.
pub struct SelectorHeader(Result<Selector, String>);

impl SelectorHeader {
    fn of(headers: &HeaderMap) -> SelectorHeader {
        let text = headers.get(SELECTOR_HEADER).map(|v| v.to_str().unwrap_or("")).unwrap_or("");
        SelectorHeader(Selector::parse(text))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SelectorHeader {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<SelectorHeader, Infallible> {
        Ok(SelectorHeader::of(&parts.headers))
    }
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn evaluate_flag(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    selector: SelectorHeader,
    body: Bytes,
) -> Response {
    let started = clock::now();
    let view = state.engine.view();
    let steps = budget::steps(applied(&view, &key).map(|entry| &*entry.value));
    let response = if budget::is_small(steps, body.len()) {
        evaluate_one(&state, &view, &key, selector, &body)
    } else {
        let (costly, asked, bytes) = (state.clone(), key.clone(), body.len());
        let work = move || evaluate_one(&costly, &view, &asked, selector, &body);
        state.evaluations.run(steps, bytes, work).await.unwrap_or_else(|over| over_budget(Some(&key), over))
    };
    counted(&state, started, response)
}

fn evaluate_one(state: &ApiState, view: &View, key: &str, selector: SelectorHeader, body: &[u8]) -> Response {
    let selector = match selector.0 {
        Ok(selector) => selector,
        Err(details) => return failure(StatusCode::BAD_REQUEST, Some(key), "GENERAL", details),
    };
    let context = match ofrep_context(body) {
        Ok(context) => context,
        Err(details) => return failure(StatusCode::BAD_REQUEST, Some(key), "INVALID_CONTEXT", details),
    };
    if let Some(reason) = &view.recovering {
        return recovering(state, Some(key), reason);
    }
    let Some(entry) = applied(view, key).filter(|entry| selector.matches(key, &entry.value)) else {
        let details = format!("flag {key:?} is not applied on node {}", state.name);
        return failure(StatusCode::NOT_FOUND, Some(key), "FLAG_NOT_FOUND", details);
    };
    let answer = evaluate(state, key, entry, &EvaluationContext::new(&context), clock::unix_ms() / 1000);
    let status = match answer {
        Answer::Success { .. } => StatusCode::OK,
        Answer::Failure { .. } => StatusCode::BAD_REQUEST,
    };
    (status, Json(answer)).into_response()
}

/// `POST /ofrep/v1/evaluate/flags`.
pub async fn evaluate_all(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = clock::now();
    let view = state.engine.view();
    let steps = budget::steps(view.state.flags.values().map(|entry| &*entry.value));
    let response = if budget::is_small(steps, body.len()) {
        evaluate_bulk(&state, &view, &principal, &headers, &body)
    } else {
        let (costly, bytes) = (state.clone(), body.len());
        let work = move || evaluate_bulk(&costly, &view, &principal, &headers, &body);
        state.evaluations.run(steps, bytes, work).await.unwrap_or_else(|over| over_budget(None, over))
    };
    counted(&state, started, response)
}

/// Every applied flag in the principal's scope, evaluated.
fn evaluate_bulk(
    state: &ApiState,
    view: &View,
    principal: &crate::auth::Principal,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let context = match ofrep_context(body) {
        Ok(context) => context,
        Err(details) => return failure(StatusCode::BAD_REQUEST, None, "INVALID_CONTEXT", details),
    };
    let selector = match SelectorHeader::of(headers).0 {
        Ok(selector) => selector,
        Err(details) => return failure(StatusCode::BAD_REQUEST, None, "GENERAL", details),
    };
    if let Some(reason) = &view.recovering {
        return recovering(state, None, reason);
    }
    // One context and one clock reading for every flag of the request.
    let (context, now_s) = (EvaluationContext::new(&context), clock::unix_ms() / 1000);
    let flags: Vec<Answer> = view
        .state
        .flags
        .iter()
        .filter(|(key, entry)| principal.covers(key.as_str()) && selector.matches(key.as_str(), &entry.value))
        .map(|(key, entry)| evaluate(state, key.as_str(), entry, &context, now_s))
        .collect();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let events = json!([{"type": "sse", "url": format!("http://{host}/ofrep/v1/events"), "inactivityDelaySec": INACTIVITY_DELAY_S}]);
    // Fields in the order of the JSON object earlier versions answered (see `Answer`).
    #[derive(Serialize)]
    struct Bulk<'a> {
        #[serde(rename = "eventStreams")]
        event_streams: Value,
        flags: Vec<Answer<'a>>,
    }
    let bytes = serde_json::to_vec(&Bulk { event_streams: events, flags }).expect("an answer always serializes");
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..16]));
    if super::if_none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (StatusCode::OK, [(header::ETAG, etag), (header::CONTENT_TYPE, "application/json".to_owned())], bytes)
        .into_response()
}

/// A digest of the applied flags: what every bulk evaluation depends on.
pub fn flags_digest(view: &View) -> String {
    let mut hasher = Sha256::new();
    for (key, entry) in &view.state.flags {
        hasher.update(key.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(entry.generation.to_string().as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// `GET /ofrep/v1/events`: a `refetchEvaluation` event each time the applied flags change.
pub async fn events(State(state): State<ApiState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watch = state.engine.watch();
    let last = flags_digest(&watch.borrow());
    let stream = futures_util::stream::unfold((watch, last), |(mut watch, last)| async move {
        loop {
            watch.changed().await.ok()?;
            let digest = flags_digest(&watch.borrow_and_update());
            if digest != last {
                let data = json!({"type": "refetchEvaluation", "etag": format!("\"{digest}\""), "lastModified": clock::unix_ms() / 1000});
                let event = Event::default().id(digest.clone()).event("message").data(data.to_string());
                return Some((Ok(event), (watch, digest)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_from_the_caller_has_no_value_and_an_error_has_its_code() {
        let metadata = BTreeMap::new();
        let resolution = Resolution { value: None, variant: None, reason: Reason::Disabled, error: None };
        let success = serde_json::to_value(Answer::new("f", resolution.clone(), &metadata)).unwrap();
        assert_eq!(success, json!({"key": "f", "reason": "DISABLED", "metadata": {}}));
        let on = json!(true);
        let resolved =
            Resolution { value: Some(&on), variant: Some("on"), reason: Reason::TargetingMatch, error: None };
        let success = serde_json::to_string(&Answer::new("f", resolved, &metadata)).unwrap();
        assert_eq!(success, r#"{"key":"f","metadata":{},"reason":"TARGETING_MATCH","value":true,"variant":"on"}"#);
        let failed = Resolution {
            error: Some((grapevine_proto::eval::ErrorCode::TargetingKeyMissing, "needs a targetingKey".into())),
            reason: Reason::Error,
            ..resolution
        };
        let failure = serde_json::to_value(Answer::new("f", failed, &metadata)).unwrap();
        assert_eq!(
            failure,
            json!({"key": "f", "errorCode": "TARGETING_KEY_MISSING", "errorDetails": "needs a targetingKey"})
        );
    }
}
