//! `GET /v1/events`: Server-Sent Events that tell a client when what `/v1/status`,
//! `/v1/rollouts` and `/v1/history` answer may have changed, so that a dashboard (the fleet
//! page, `docs/ui.md`) reads again at once instead of polling.
//!
//! An event carries no data of its own beyond what woke it: the client reads what it shows
//! through the endpoints above, with its own scope. Causes: this node's log or applied state
//! changed (a generation arrived, was applied or reverted), a member's report, revert cause,
//! applied generation or version vector changed in gossip, or a member joined or left.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::Notify;

use super::ApiState;
use crate::gossip::{KEY_APPLIED, KEY_REVERTS, PREFIX_REPORT, PREFIX_REVERTED_BY, PREFIX_VERSION_VECTOR};

/// Changes closer together than this make one event: a wave opening on many members at once
/// is one read for the client, not one per member, and a client stays well under the admin
/// rate (`[limits]`) however busy gossip is.
pub const COALESCE: Duration = Duration::from_millis(250);

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The gossip keys whose changes a rollout view or the member list shows.
const WATCHED_KEYS: [&str; 5] = [PREFIX_REPORT, PREFIX_REVERTED_BY, PREFIX_VERSION_VECTOR, KEY_APPLIED, KEY_REVERTS];

/// What one stream waits on.
struct Sources {
    views: tokio::sync::watch::Receiver<Arc<crate::engine::View>>,
    gossip: Arc<Notify>,
    members: tokio::sync::watch::Receiver<std::collections::BTreeMap<chitchat::ChitchatId, chitchat::NodeState>>,
    live: BTreeSet<chitchat::ChitchatId>,
    /// Kept for as long as the stream lives: dropping them ends the gossip subscriptions.
    _listeners: Vec<chitchat::ListenerHandle>,
    sent: u64,
}

impl Sources {
    /// Waits for the next change, then for [`COALESCE`] to gather the ones right after it;
    /// `None` once the node stops.
    async fn next(&mut self) -> Option<&'static str> {
        loop {
            let cause = tokio::select! {
                changed = self.views.changed() => { changed.ok()?; "log" }
                () = self.gossip.notified() => "gossip",
                changed = self.members.changed() => {
                    changed.ok()?;
                    let live: BTreeSet<_> = self.members.borrow_and_update().keys().cloned().collect();
                    if live == self.live { continue }
                    self.live = live;
                    "members"
                }
            };
            tokio::time::sleep(COALESCE).await;
            self.views.borrow_and_update();
            return Some(cause);
        }
    }
}

/// `GET /v1/events`: an `event: changed` with `{"seq": N, "cause": "log"|"gossip"|"members"}`
/// after each burst of changes (the first cause of the burst), and one `event: ready` at once.
pub async fn events(
    State(state): State<ApiState>,
    _: Query<super::NoParameters>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let gossip = Arc::new(Notify::new());
    let listeners = state.gossip.subscribe_keys(&WATCHED_KEYS, &gossip).await;
    let mut members = state.gossip.live_members_watcher().await;
    let live = members.borrow_and_update().keys().cloned().collect();
    let mut views = state.engine.watch();
    views.borrow_and_update();
    let sources = Sources { views, gossip, members, live, _listeners: listeners, sent: 0 };
    let ready = Event::default().event("ready").data(json!({"node": state.name}).to_string());
    let first = futures_util::stream::iter([Ok(ready)]);
    let rest = futures_util::stream::unfold(sources, |mut sources| async move {
        let cause = sources.next().await?;
        sources.sent += 1;
        let data = json!({"seq": sources.sent, "cause": cause}).to_string();
        Some((Ok(Event::default().event("changed").data(data)), sources))
    });
    Sse::new(futures_util::StreamExt::chain(first, rest)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
