//! Reverts, the engine's side: the reports the quorum reads, the store's record of a revert,
//! and what a revert sets off. When the quorum is reached, and how long to wait for a live
//! member's copy, is `proto::replica` (`revert.rs` there).
//!
//! - `revert_pass`: for each generation some member, live or dead, reports anomalous
//!   (`Gossip::anomalous_generations`) that the replica judges (`Replica::judges_revert_of`), it
//!   reads every member's report (`Gossip::all_reports_for`) and the live members that wrote the
//!   revert (`Gossip::live_revert_writers`, their `rv.` key), and writes the reverts
//!   `Replica::reverts_due` returns. A store failure is logged and the next pass tries again.
//! - `write_revert` stores the revert (`Store::put_reverts`, one committed transaction), logs
//!   `reverted` at warn (before anything that awaits: the chaos checker reads the reason of every
//!   revert stored), hands a `PushJob` with it to the pusher (swept for a rollback), then
//!   `take_effect`: `Replica::add_reverts` (both states refolded without the target),
//!   `Health::freeze` the target, publish. It then nudges every live peer, counts it
//!   (`grapevine_reverts_total{reason="quorum"|"rollback"|"revocation"}`), publishes
//!   `rv.<generation>` = the cause, and raises a `revert` alert.
//! - `rollback(target)` (an operator's) is checked by `Replica::rollback`: `already_reverted`, or
//!   refused for a control generation, a compacted or an unknown one; otherwise the same revert
//!   as the quorum would write, with the cause `rollback`.
//! - `ingest_reverts` stores the reverts the log lacks (`Replica::fresh_reverts`) in one
//!   transaction, after handing them to the pusher with the peer they came from (push on first
//!   receipt); a store failure drops them (they are pulled again). Then `take_effect`, `revert
//!   received` logged, `grapevine_reverts_total{reason="received"}` counted; no alert.
//!
//! **Architecture Invariant:** a revert is stored durably (`Store::put_reverts`) before it is
//! committed to the replica, applied, published or counted, and it is never undone. The one
//! exception to "a reverted generation is never applied" is a write that was already in this
//! node's snapshot when the revert arrived (`docs/operations.md`, "Automatic revert").

use std::collections::BTreeMap;
use std::net::SocketAddr;

use grapevine_proto::replica::{Anomaly, Cause, RollbackError, RollbackOutcome};
use grapevine_proto::{GenId, Revert};
use tracing::{error, info, warn};

use super::Engine;
use crate::alerts::{Alert, AlertKind};
use crate::clock;
use crate::metrics::reason;
use crate::store::StoreError;

impl Engine {
    /// Writes the revert of every generation whose anomaly quorum is reached in this node's
    /// view of the reports.
    pub(super) async fn revert_pass(&mut self) {
        let gossip = &self.parts.gossip;
        let mut anomalies = BTreeMap::new();
        for id in gossip.anomalous_generations().await {
            if !self.replica.judges_revert_of(&id) {
                continue;
            }
            let reports = gossip.all_reports_for(&id).await;
            let live_writers = gossip.live_revert_writers(&id).await.len();
            anomalies.insert(id, Anomaly { reports, live_writers });
        }
        if anomalies.is_empty() {
            return;
        }
        let now = self.now();
        let due = self.replica.reverts_due(&anomalies, now);
        for (id, quorum) in due {
            if let Err(error) = self.write_revert(&id, Cause::Quorum(quorum)).await {
                error!(generation = %id, %error, "could not store a revert; will try again");
            }
        }
    }

    /// Reverts every generation signed by a revoked key and ordered after its revocation.
    pub(super) async fn revocation_pass(&mut self) {
        for (target, key) in self.replica.revocations_due() {
            if let Err(error) = self.write_revert(&target, Cause::Revoked(key)).await {
                error!(generation = %target, %error, "could not store the revert of a revoked key's change; will try again");
            }
        }
    }

    /// An operator's rollback: the same revert the quorum would write.
    pub(super) async fn rollback(&mut self, target: GenId) -> Result<RollbackOutcome, RollbackError> {
        let outcome = |already_reverted| RollbackOutcome {
            generation: target.to_string(),
            revert: Revert::of(&target).to_string(),
            already_reverted,
        };
        if self.replica.rollback(&target)?.is_none() {
            return Ok(outcome(true));
        }
        self.write_revert(&target, Cause::Rollback).await.map_err(|error| RollbackError::Store(error.to_string()))?;
        Ok(outcome(false))
    }

    /// Stores the revert of `target`, applies it, spreads it, and says why.
    async fn write_revert(&mut self, target: &GenId, cause: Cause) -> Result<(), StoreError> {
        let revert = Revert::of(target);
        let trigger = cause.trigger();
        let (reason_text, reporting) = match &cause {
            Cause::Quorum(quorum) => (format!("anomaly quorum: {quorum}"), quorum.anomalous.clone()),
            Cause::Rollback => (format!("operator rollback on {}", self.parts.name), Vec::new()),
            Cause::Revoked(key) => (format!("signed by {key}, revoked before it"), Vec::new()),
        };
        self.store_reverts(vec![revert.clone()]).await?;
        // Logged as soon as it is durable, before anything that awaits: a node killed later
        // still leaves the reason for the revert it stored (the chaos checker reads it).
        warn!(generation = %target, revert = %revert, trigger, reason = %reason_text, "reverted");
        self.note_revert(target, Some(reason_text.clone()));
        // An operator's rollback is swept to every live peer, like a new change; a quorum's
        // revert is written by every node that sees the quorum, each pushing on first write.
        self.push(vec![revert.clone()], Vec::new(), None, matches!(cause, Cause::Rollback));
        self.take_effect(std::slice::from_ref(&revert)).await;
        // As for a new change: every live peer exchanges gossip with us now, learns our
        // reverts summary, and pulls what the push has not brought it yet.
        self.parts.gossip.nudge_live_peers().await;
        self.parts.metrics.reverts.get_or_create(&reason(trigger)).inc();
        self.parts.gossip.publish_revert_cause(target, trigger).await;
        let names: Vec<String> = reporting.iter().map(ToString::to_string).collect();
        let kpis = self.parts.gossip.kpis_of(&reporting).await;
        self.parts.alerts.raise(Alert {
            kind: AlertKind::Revert,
            node: self.parts.name.to_string(),
            generation: target.to_string(),
            trigger: Some(trigger),
            reason: reason_text,
            reporting_nodes: names,
            kpis,
            at_ms: clock::unix_ms(),
        });
        Ok(())
    }

    /// Stores and applies reverts from peer `from`; returns how many were new.
    pub(super) async fn ingest_reverts(&mut self, reverts: Vec<Revert>, from: Option<SocketAddr>) -> usize {
        let new = self.replica.fresh_reverts(reverts);
        if new.is_empty() {
            return 0;
        }
        // Forwarded before our own commit, as generations are (`Engine::ingest`).
        self.push(new.clone(), Vec::new(), from, false);
        if let Err(error) = self.store_reverts(new.clone()).await {
            let generations: Vec<String> = new.iter().map(|r| r.target.to_string()).collect();
            error!(%error, ?generations, "could not store reverts from a peer; they will be pulled again");
            return 0;
        }
        for revert in &new {
            self.note_revert(&revert.target, None);
            info!(generation = %revert.target, revert = %revert, "revert received");
        }
        self.parts.metrics.reverts.get_or_create(&reason("received")).inc_by(new.len() as u64);
        let count = new.len();
        self.take_effect(&new).await;
        count
    }

    /// Reverts just stored: into the replica (both states refolded without their targets),
    /// their targets no longer judged, and published.
    async fn take_effect(&mut self, reverts: &[Revert]) {
        self.replica.add_reverts(reverts);
        for revert in reverts {
            self.parts.health.freeze(&revert.target);
        }
        self.publish().await;
    }

    async fn store_reverts(&self, reverts: Vec<Revert>) -> Result<(), StoreError> {
        let store = self.parts.store.clone();
        tokio::task::spawn_blocking(move || store.put_reverts(&reverts)).await.expect("store task panicked")
    }
}
