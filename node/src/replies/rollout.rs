//! What the rollout endpoints answer: `GET /v1/rollouts[/{generation}]` and
//! `POST /v1/rollouts/{generation}/rollback`.

use std::collections::BTreeMap;

use grapevine_proto::NodeName;
use grapevine_proto::policy::{Controls, Policy};
use grapevine_proto::replica::Release;
use grapevine_proto::report::Report;
use grapevine_proto::rollout::AnomalyQuorum;
use serde::{Deserialize, Serialize};

/// `GET /v1/rollouts`: the newest rollouts, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollouts {
    pub node: String,
    pub rollouts: Vec<Rollout>,
}

/// One generation's rollout as the answering node sees it (the engine builds it: `Engine::rollout`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub generation: String,
    /// `flag KEY` or `config KEY`, one per operation.
    pub keys: Vec<String>,
    pub policy: Policy,
    pub controls: Controls,
    pub waves: Vec<Wave>,
    /// Waves open in this node's view, from the first on.
    pub open_waves: usize,
    pub all_waves_open: bool,
    /// Whether this node ever applied it (a revert since does not erase the record).
    pub applied_here: bool,
    pub reverted: bool,
    pub anomaly_quorum: AnomalyQuorum,
    /// The nodes that wrote its revert, and why (`quorum` or `rollback`), as gossip tells.
    pub reverted_by: BTreeMap<String, String>,
    /// Why this node judges it as it does, if it judges it.
    pub judgement: Option<String>,
    /// When and on what evidence this node applied it, if it did since it started.
    pub release: Option<Release>,
    /// When its first wave opens (Unix ms), if it was scheduled.
    pub start_at_ms: Option<u64>,
    /// Why this node holds it now, while it has not applied it.
    pub hold: Option<Hold>,
}

impl Rollout {
    /// Whether it will not move on its own any more: every wave open and each of its members
    /// applied it, or paused (it waits for someone to resume it), or reverted (for good).
    pub fn finished(&self) -> bool {
        let applied_everywhere =
            || self.waves.iter().all(|wave| wave.members.iter().all(|member| member.report.is_some()));
        (self.all_waves_open && applied_everywhere()) || self.controls.paused || self.reverted
    }
}

/// One wave of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub index: usize,
    pub open: bool,
    pub members: Vec<WaveMember>,
}

/// One member of a wave and its report (`null`: none, not live here, or no longer reporting).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveMember {
    pub name: NodeName,
    pub report: Option<Report>,
}

/// Why a node holds a rollout: before its scheduled start, or in a freeze window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// `scheduled` or `frozen`.
    pub kind: String,
    /// The freeze window (`frozen` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    pub until_ms: u64,
    /// `until_ms` in RFC 3339.
    pub until: String,
    /// The time left on the node's clock.
    pub in_ms: u64,
    /// `scheduled to start at ...` or `frozen by NAME until ...`.
    pub reason: String,
}

/// `POST /v1/rollouts/{generation}/rollback`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub generation: String,
    /// The revert's id, `generation/revert`.
    pub revert: String,
    /// True when the node held the revert already: nothing was written.
    pub already_reverted: bool,
}
