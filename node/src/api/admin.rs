//! The node's own endpoints: `/readyz`, `/metrics`, `/v1/status` and `/v1/backup`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::clock;
use crate::engine::short_digest;
use crate::metrics::{CellLabel, GenerationLabel, VerdictLabel, reason};

use super::{ApiError, ApiResult, ApiState, NoParameters};
use crate::replies::{
    ActiveFreeze, CellStatus, Clock, Conflicts, FileStatus, Freeze, HealthSource, MemberStatus, Namesake, Readiness,
    Signing, Status,
};
use grapevine_proto::cell::REPRESENTATIVES;
use grapevine_proto::{CellName, NodeName};

/// `GET /readyz`: 200 once the node has caught up with its live peers' logs and applied
/// every generation whose wave is open for it; 503 with what it still waits for.
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let crate::engine::Readiness { ready, behind, open_not_applied, recovering } = state.engine.readiness().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, behind, open_not_applied, recovering })).into_response()
}

/// `GET /v1/backup`: a consistent copy of this node's store, as a redb file to put in place
/// of `grapevine.redb` (of this node name) to restore it. Written next to the store first
/// (the same disk, so no other file system fills up), then streamed and removed.
pub(super) async fn backup(State(state): State<ApiState>, _: Query<NoParameters>) -> Result<Response, ApiError> {
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

pub(super) async fn metrics(State(state): State<ApiState>) -> Response {
    // Membership is read from chitchat at scrape time, so the gauge is never stale.
    let members = state.gossip.members().await;
    let alive = members.iter().filter(|m| m.alive).count();
    state.metrics.members.get_or_create(&reason("alive")).set(alive as i64);
    state.metrics.members.get_or_create(&reason("dead")).set((members.len() - alive) as i64);
    let representative = representatives(&state.cell, &members).contains(&state.name.to_string());
    let cell = CellLabel { cell: state.cell.to_string() };
    state.metrics.cell_representative.get_or_create(&cell).set(i64::from(representative));
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
            grapevine_proto::report::Verdict::Healthy => "healthy",
            grapevine_proto::report::Verdict::Inconclusive => "inconclusive",
            grapevine_proto::report::Verdict::Anomalous => "anomalous",
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

/// Where this node's clock stands against its peers' (`None` before any was measured).
pub(super) fn clock_status(state: &ApiState) -> Option<Clock> {
    let standing = state.offsets.standing();
    let max_offset_ms = state.max_clock_offset_ms;
    standing.map(|s| Clock { ahead_ms: s.ahead_ms, peers: s.peers, max_offset_ms, fenced: s.fenced(max_offset_ms) })
}

pub(super) async fn status(State(state): State<ApiState>, _: Query<NoParameters>) -> ApiResult<Status> {
    let members = members(&state).await;
    let view = state.engine.view();
    let health = state.health.sources().into_iter();
    let files = state.files.statuses().into_iter();
    let trust = &state.trust;
    let cell = CellStatus { name: state.cell.to_string(), representatives: representatives(&state.cell, &members) };
    Ok(Json(Status {
        node: state.name.to_string(),
        cluster: state.cluster.clone(),
        cell,
        generations: view.generations,
        compacted: view.compacted,
        reverted: view.reverted.len(),
        version_vector: view.version_vector.iter().map(|(origin, seq)| (origin.to_string(), seq)).collect(),
        applied: view.state.latest().map(ToString::to_string),
        state_digest: short_digest(&view.state),
        recovering: view.recovering.clone(),
        clock: clock_status(&state),
        health: health.map(|s| HealthSource { source: s.source, ok: s.ok, detail: s.detail }).collect(),
        files: files
            .map(|f| FileStatus { path: f.path, generation: f.generation, ok: f.ok, detail: f.detail })
            .collect(),
        signing: Signing {
            required: trust.required(),
            roots: trust.roots.iter().map(ToString::to_string).collect(),
            fingerprint: trust.fingerprint(),
            approvals: trust.approvals.clone(),
        },
        freeze: freeze_status(&state),
        members,
        conflicts: Conflicts {
            generations: view.conflicts.iter().map(ToString::to_string).collect(),
            namesakes: state
                .gossip
                .live_namesakes()
                .into_iter()
                .map(|n| Namesake { address: n.address, incarnation: n.incarnation })
                .collect(),
        },
    }))
}

/// The representatives of `cell` among the `members` alive, by name.
fn representatives(cell: &CellName, members: &[MemberStatus]) -> Vec<String> {
    let alive = members.iter().filter(|m| m.alive).filter_map(|m| m.name.parse::<NodeName>().ok());
    grapevine_proto::cell::representatives(cell, alive.map(|name| (name.clone(), name)), REPRESENTATIVES)
        .into_iter()
        .map(String::from)
        .collect()
}

/// Every member in this node's gossip view, with when this node last heard from it directly.
async fn members(state: &ApiState) -> Vec<MemberStatus> {
    let heard = state.gossip.last_heard();
    let members = state.gossip.members().await.into_iter();
    members
        .map(|member| MemberStatus {
            last_heard_ms: heard.get(&member.gossip).map(|age| age.as_millis() as u64),
            ..member
        })
        .collect()
}

/// The freeze windows of this node, their fingerprint (the same on nodes that carry the same
/// windows), and the freeze in force now, if any.
pub(super) fn freeze_status(state: &ApiState) -> Freeze {
    let now = clock::wall_ms(state.clock_skew_ms);
    let active = state.freezes.covering(now).map(|(window, until_ms)| ActiveFreeze {
        window,
        until_ms,
        until: grapevine_proto::schedule::rfc3339(until_ms),
    });
    Freeze {
        windows: state.freezes.names().map(str::to_owned).collect(),
        fingerprint: state.freezes.fingerprint(),
        active,
    }
}
