//! `POST`/`DELETE /v1/testsuite/links`, in `testsuite` builds only: the rules of this node's
//! link filter (`faults.rs`), which the partition and chaos tests set without root.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;

use super::{ApiResult, ApiState, parse_body};
use crate::replies::Done;

/// `POST /v1/testsuite/links`: `{"peer": "IP:PORT" or null for every peer, "drop", "loss",
/// "delay_ms", "outbound_only", "gossip_only"}` sets a rule of this node's link filter.
pub(super) async fn set_link(State(state): State<ApiState>, body: Bytes) -> ApiResult<Done> {
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
        #[serde(default)]
        gossip_only: bool,
    }
    let request: LinkRequest = parse_body(
        &body,
        r#"{"peer": "IP:PORT"|null, "drop": bool, "loss": 0.2, "delay_ms": 10, "outbound_only": bool, "gossip_only": bool}"#,
    )?;
    let rule = crate::faults::LinkRule {
        drop: request.drop,
        loss: request.loss,
        delay_ms: request.delay_ms,
        outbound_only: request.outbound_only,
        gossip_only: request.gossip_only,
    };
    state.transport.link_filter().set(request.peer, rule);
    Ok(Json(Done::OK))
}

/// `DELETE /v1/testsuite/links`: every link passes again.
pub(super) async fn clear_links(State(state): State<ApiState>) -> ApiResult<Done> {
    state.transport.link_filter().clear();
    Ok(Json(Done::OK))
}
