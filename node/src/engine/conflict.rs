//! Conflicts: a peer sends other content under a generation id this node holds.
//!
//! Ids are `origin.seq`, chosen by the node named `origin`; only two processes writing under
//! one name (a second certificate for the name, or a node that lost its store and reused its
//! seqs) make two generations with one id. Which of them is the acknowledged write cannot be
//! told from the generations (they carry no signature by their origin), so the one held is
//! kept, always: a conflicting generation never replaces a held one, which, on the node that
//! accepted it, is the write it acknowledged. Nodes that heard the two in different orders
//! then hold different content under one id for good, so each conflict is surfaced: counted
//! (`grapevine_generation_conflicts_total`), logged, listed in `status` (`conflicts`), and
//! alerted once per id (the replica remembers the latest
//! `replica::MAX_CONFLICTS_SHOWN` ids).

use grapevine_proto::Generation;
use tracing::error;

use super::Engine;
use crate::alerts::{Alert, AlertKind};

impl Engine {
    /// Surfaces that a peer sent `generation`, whose id this node holds with other content;
    /// `first` when the id is new to `status` (then it is alerted, and the caller publishes).
    pub(super) fn conflict(&mut self, generation: &Generation, first: bool) -> bool {
        self.parts.metrics.generation_conflicts.inc();
        let id = generation.id();
        let own = id.origin == self.parts.name;
        if self.warnings.allow(&format!("conflict {}", id.origin)) {
            if own {
                error!(generation = %id, "a peer holds other content under one of this node's own generation ids: another process writes under this node's name; kept ours");
            } else {
                error!(generation = %id, "a peer holds other content under a known generation id: two processes wrote under one name; kept ours");
            }
        }
        if !first {
            return false;
        }
        self.parts.alerts.raise(Alert {
            kind: AlertKind::Conflict,
            node: self.parts.name.to_string(),
            generation: id.to_string(),
            trigger: None,
            reason: format!("a peer holds other content under {id}; this node keeps the content it holds"),
            reporting_nodes: Vec::new(),
            kpis: Default::default(),
            at_ms: crate::clock::unix_ms(),
        });
        true
    }
}
