//! `/v1/proposals`: changes that wait for other operators' signatures (four eyes, D79).
//!
//! - `GET /v1/proposals`: every proposal of the log (`EngineHandle::proposals`) whose keys the
//!   caller may see, oldest first.
//! - `GET /v1/proposals/{proposal}`: one, with `diff` (per key, this node's applied value and the
//!   proposed one), `conflicts` (newer changes of its keys) and `sign`: what an approver signs
//!   (cluster, format, the node's time as `issued_ms`, the proposal's digest and expiry, and its
//!   change in postcard hex, so that the CLI checks the digest against the change it shows).
//! - `POST /v1/proposals` `{"change", "signed", "expires_ms", "start_at_ms"}`: the change a node prepared
//!   (`?prepare=true` on `flag set`, `config put` or `apply`), signed by the proposer; stored as a
//!   `Propose` record that applies nowhere. Needs `[signing]` roots.
//! - `POST /v1/proposals/{proposal}/approve` and `.../reject` `{"signed"}`: an approval or a
//!   rejection signed over the proposal (`SecretKey::sign_approval`, `sign_rejection`). The
//!   approval that meets every rule enacts the proposal at once (`enacted: true`).
//!
//! Status codes: an unknown proposal 404; one no longer pending, or a key that signed it
//! already, 409; a signature refused 403 (counted in `grapevine_unsigned_changes_total`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use grapevine_proto::approvals::{DEFAULT_PROPOSAL_LIFETIME_MS, MAX_PROPOSAL_LIFETIME_MS};
use grapevine_proto::signing::Signed;
use grapevine_proto::{Change, GenId, Governance, Op, Terms};
use serde::Deserialize;

use super::{ApiError, ApiResult, ApiState, NoParameters, access, decode_hex, parse_body};
use crate::auth::Principal;
use crate::engine::{ProposalError, ProposalView, Vote, record_change};
use crate::replies::{Accepted, ProposalDiff, ProposalShown, Proposals, Proposed, SignApproval, Voted};

impl From<ProposalError> for ApiError {
    fn from(error: ProposalError) -> Self {
        let status = match &error {
            ProposalError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProposalError::NotPending { .. } | ProposalError::AlreadySigned { .. } => StatusCode::CONFLICT,
            ProposalError::Submit(_) => {
                let ProposalError::Submit(error) = error else { unreachable!() };
                return ApiError::from(error);
            }
        };
        ApiError { status, message: error.to_string() }
    }
}

fn parse_id(text: &str) -> Result<GenId, ApiError> {
    text.parse::<GenId>().map_err(|error| ApiError::bad_request(format!("proposal: {error}")))
}

fn may_see(principal: &Principal, proposal: &ProposalView) -> bool {
    principal.unrestricted() || proposal.summary.keys.iter().all(|key| principal.covers(key))
}

/// `GET /v1/proposals`.
pub async fn list(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    _: Query<NoParameters>,
) -> ApiResult<Proposals> {
    let seen = state.engine.proposals().await.into_iter().filter(|p| may_see(&principal, p));
    let proposals = seen.map(|proposal| proposal.summary).collect();
    Ok(Json(Proposals { node: state.name.to_string(), proposals }))
}

/// The proposal `id`, if the caller may see it.
async fn find(state: &ApiState, principal: &Principal, id: &GenId) -> Result<ProposalView, ApiError> {
    let wanted = id.to_string();
    let found = state.engine.proposals().await.into_iter().find(|p| p.summary.id == wanted);
    let proposal = found.ok_or_else(|| ApiError::from(ProposalError::NotFound { id: id.clone() }))?;
    access::covers_all(state, principal, proposal.summary.keys.iter().map(String::as_str))?;
    Ok(proposal)
}

/// `GET /v1/proposals/{proposal}`.
pub async fn show(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    _: Query<NoParameters>,
) -> ApiResult<ProposalShown> {
    let id = parse_id(&id)?;
    let proposal = find(&state, &principal, &id).await?;
    let view = state.engine.view();
    let diff = proposal.change.ops.iter().map(|op| {
        let key = op.key();
        let (applied, proposed) = match op {
            Op::SetFlag { definition, .. } => {
                let applied = view.state.flags.get(key).map(|e| serde_json::to_value(&e.value));
                (applied.transpose().expect("a flag definition always serializes"), definition.to_value())
            }
            Op::PutConfig { value, .. } => (view.state.config.get(key).map(|e| e.value.to_value()), value.to_value()),
        };
        ProposalDiff { kind: op.kind().to_owned(), key: key.to_string(), applied, proposed }
    });
    let diff = diff.collect();
    let sign = SignApproval {
        cluster: state.cluster.clone(),
        format: grapevine_proto::wire::WIRE_VERSION.into(),
        issued_ms: crate::clock::unix_ms(),
        proposal: proposal.summary.id.clone(),
        digest: proposal.digest.to_string(),
        expires_ms: proposal.summary.expires_ms,
        start_at_ms: proposal.summary.start_at_ms,
        change: hex::encode(postcard::to_stdvec(&proposal.change).expect("a change always encodes")),
    };
    let policy = proposal.change.policy.clone();
    let node = state.name.to_string();
    Ok(Json(ProposalShown { node, proposal: proposal.summary, diff, policy, sign }))
}

/// `POST /v1/proposals`: a signed change, stored as a proposal.
pub async fn propose(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    _: Query<NoParameters>,
    body: Bytes,
) -> ApiResult<Proposed> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ProposeRequest {
        change: String,
        signed: String,
        expires_ms: Option<u64>,
        /// A scheduled start the proposer signed with the change; the enactment keeps it.
        start_at_ms: Option<u64>,
    }
    let shape = r#"{"change": "<hex>", "signed": "<hex>", "expires_ms": 1800000000000, "start_at_ms": null}"#;
    let request: ProposeRequest = parse_body(&body, shape)?;
    let change: Change = decode_hex(&request.change, "change")?;
    let signed: Box<Signed> = decode_hex(&request.signed, "signed")?;
    if !state.trust.required() {
        return Err(ApiError::bad_request(
            "this cluster's [signing] names no root key, so nothing counts approvals: make the change itself",
        ));
    }
    access::covers_all(&state, &principal, change.ops.iter().map(|op| op.key().as_str()))?;
    let expires_ms = request.expires_ms.unwrap_or(signed.issued_ms + DEFAULT_PROPOSAL_LIFETIME_MS);
    let now = crate::clock::unix_ms();
    if expires_ms <= now || expires_ms > signed.issued_ms + MAX_PROPOSAL_LIFETIME_MS {
        return Err(ApiError::bad_request(format!(
            "expires_ms must lie after now ({now}) and at most {MAX_PROPOSAL_LIFETIME_MS} ms after the signing ({}), got {expires_ms}",
            signed.issued_ms
        )));
    }
    let needed = state.trust.approvals_needed(&change);
    let governance = Some(Governance::Propose { change, expires_ms });
    let terms = Terms { start_at_ms: request.start_at_ms, governance, ..Terms::default() };
    let generation = state.engine.submit(record_change(), None, Some(signed), Some(Box::new(terms))).await?;
    let proposal = generation.id().to_string();
    Ok(Json(Proposed { record: Accepted::of(&generation), proposal, expires_ms, approvals_needed: needed }))
}

/// `POST /v1/proposals/{proposal}/{approve|reject}`.
pub async fn vote(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    _: Query<NoParameters>,
    body: Bytes,
) -> ApiResult<Voted> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct VoteRequest {
        signed: String,
    }
    let vote = match action.as_str() {
        "approve" => Vote::Approve,
        "reject" => Vote::Reject,
        other => return Err(ApiError::not_found(format!("expected approve or reject, got {other:?}"))),
    };
    let id = parse_id(&id)?;
    let request: VoteRequest = parse_body(&body, r#"{"signed": "<hex>"}"#)?;
    let signed: Box<Signed> = decode_hex(&request.signed, "signed")?;
    find(&state, &principal, &id).await?;
    let (generation, enacted) = state.engine.vote(id.clone(), signed, vote).await?;
    Ok(Json(Voted { record: Accepted::of(&generation), proposal: id.to_string(), enacted }))
}
