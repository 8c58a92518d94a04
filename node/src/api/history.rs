//! `GET /v1/history`: the newest generations with their rollouts (`GenerationSummary`), or their
//! audit records.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use grapevine_proto::{Generation, JsonText, Op};
use serde::Deserialize;

use super::{ApiError, ApiState, MAX_HISTORY, access};
use crate::replies::{AuditRecords, GenerationSummary, Governance, GovernanceApproval, History, OpSummary, SignedBy};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    limit: Option<usize>,
    /// Include each `put_config` op's value (`value`), not only its size; parts its schema marks
    /// secret are redacted.
    #[serde(default)]
    values: bool,
    /// `records`: the audit records of the generations and of their reverts, oldest first
    /// (`history --format jsonl`).
    format: Option<String>,
}

/// What a generation's terms say of the approval process, for `history`.
pub(super) fn governance_summary(terms: &grapevine_proto::Terms) -> Option<Governance> {
    use grapevine_proto::Governance as Record;
    let approvals: Vec<GovernanceApproval> = terms
        .approvals
        .iter()
        .map(|a| GovernanceApproval { operator: a.delegation.operator.clone(), key: a.delegation.key.to_string() })
        .collect();
    let (record, proposal) = match terms.governance.as_ref()? {
        Record::Propose { change, expires_ms } => {
            let keys = change.ops.iter().map(|op| op.key().to_string()).collect();
            let (keys, expires_ms) = (Some(keys), Some(*expires_ms));
            return Some(Governance { record: "propose".into(), keys, expires_ms, proposal: None, approvals });
        }
        Record::Approve { proposal, .. } => ("approve", proposal),
        Record::Reject { proposal, .. } => ("reject", proposal),
        Record::Enact { proposal, .. } => ("enact", proposal),
    };
    let proposal = Some(proposal.to_string());
    Some(Governance { record: record.into(), keys: None, expires_ms: None, proposal, approvals })
}

/// One generation as `history` shows it, without its rollout.
pub(super) fn summary(generation: &Generation) -> GenerationSummary {
    let body = &generation.body;
    let ops = body.change.ops.iter().map(|op| match op {
        Op::SetFlag { key, definition } => {
            OpSummary::SetFlag { key: key.to_string(), definition: definition.to_value() }
        }
        Op::PutConfig { key, value, schema } => OpSummary::PutConfig {
            key: key.to_string(),
            bytes: value.as_str().len(),
            schema: schema.is_some(),
            value: None,
        },
    });
    let signed_by = body
        .signed
        .as_ref()
        .map(|signed| SignedBy { key: signed.delegation.key.to_string(), root: signed.delegation.root.to_string() });
    GenerationSummary {
        id: body.id.to_string(),
        origin: body.id.origin.to_string(),
        seq: body.id.seq,
        hlc: body.hlc.to_string(),
        hash: generation.hash.to_string(),
        author: body.author.clone(),
        signed_by,
        members: body.members.to_vec(),
        ops: ops.collect(),
        policy: body.change.policy.clone(),
        controls: body.change.controls.clone(),
        rollout: None,
        governance: body.terms.as_deref().and_then(governance_summary),
    }
}

/// Adds each `put_config` op's value to its summary (`?values=true`).
pub(super) fn with_values(summary: &mut GenerationSummary, generation: &Generation) {
    for (summary, op) in summary.ops.iter_mut().zip(&generation.body.change.ops) {
        if let (OpSummary::PutConfig { value: shown, .. }, Op::PutConfig { key, value, schema }) = (summary, op) {
            let schemas: Vec<serde_json::Value> = schema.iter().map(JsonText::to_value).collect();
            *shown = Some(grapevine_proto::audit::redact(key, &value.to_value(), &schemas).0);
        }
    }
}

pub(super) async fn history(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100).min(MAX_HISTORY);
    // A principal of some keys sees the changes of those keys only.
    let seen = principal.clone();
    match query.format.as_deref() {
        None => {}
        Some("records") => {
            let records = state.engine.audit_history(limit, Box::new(move |g| access::may_see(&seen, g))).await;
            let records = records.iter().map(|r| serde_json::to_value(r).expect("an audit record always serializes"));
            let node = state.name.to_string();
            return Ok(Json(AuditRecords { node, records: records.collect() }).into_response());
        }
        Some(other) => return Err(ApiError::bad_request(format!("format: expected records, got {other:?}"))),
    }
    let generations = state.engine.history(limit, Box::new(move |g| access::may_see(&seen, g))).await;
    let mut newest = Vec::new();
    for generation in &generations {
        let mut summary = summary(generation);
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
    Ok(Json(History { node: state.name.to_string(), total, compacted, generations: newest }).into_response())
}
