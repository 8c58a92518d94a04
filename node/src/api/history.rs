//! `GET /v1/history`: the newest generations with their rollouts (`GenerationSummary`), or their
//! audit records.

use axum::Json;
use axum::extract::{Query, State};
use grapevine_proto::rollout::Policy;
use grapevine_proto::{Generation, JsonText, NodeName, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, MAX_HISTORY, access};

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

/// One generation as `history` shows it.
#[derive(Serialize)]
pub(super) struct GenerationSummary {
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
pub(super) fn governance_summary(terms: &grapevine_proto::Terms) -> Option<Value> {
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
pub(super) fn with_values(summary: &mut GenerationSummary, generation: &Generation) {
    for (summary, op) in summary.ops.iter_mut().zip(&generation.body.change.ops) {
        if let Op::PutConfig { key, value, schema } = op {
            let schemas: Vec<Value> = schema.iter().map(JsonText::to_value).collect();
            summary["value"] = grapevine_proto::audit::redact(key, &value.to_value(), &schemas).0;
        }
    }
}

pub(super) async fn history(
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
