//! `GET /v1/watch?prefix=P`: the applied changes of this node as Server-Sent Events, with
//! `Last-Event-ID` resume.
//!
//! A feed task diffs each new applied state against the previous one and records one event per
//! key whose value changed: `{"kind": "config"|"flag", "key", "value" (null when the key is
//! gone), "generation", "cause": "change"|"revert"}` (`revert` when the generation that set
//! the previous value was reverted). Events carry ids `<incarnation>-<seq>`: the last
//! [`FEED_CAPACITY`] are kept, and a client that reconnects with `Last-Event-ID` gets the ones
//! it missed. When it missed more than that, or comes from another incarnation of the node (a
//! restart), it gets a `resync` event, then the current value of every key under the prefix,
//! then the live feed: it never silently skips a change.
//!
//! `Feed::start` runs the feed task: it diffs each new view of the engine against the previous one
//! (`diff`: `OrdMap::diff`, which skips what the two states share, so it costs per key changed) and
//! records each `Change` with the next `seq`, keeping the newest `FEED_CAPACITY` (4096) and
//! broadcasting it. `watch` subscribes first, then replays the kept changes after a `Last-Event-ID`
//! of this incarnation, or sends `resync` and the current values (`snapshot`), then the live
//! changes under the prefix; a lagging subscriber gets `resync`.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use grapevine_proto::{Entry, GenId, JsonText, Key};
use imbl::{OrdMap, ordmap::DiffItem};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::ApiState;
use crate::engine::{EngineHandle, View};

/// Events kept for clients that reconnect.
pub const FEED_CAPACITY: usize = 4096;

/// One applied change of one key.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    #[serde(skip)]
    pub seq: u64,
    pub kind: &'static str,
    pub key: String,
    pub value: Value,
    pub generation: Option<String>,
    pub cause: &'static str,
}

/// The feed of applied changes; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    incarnation: u64,
    recent: Mutex<VecDeque<Change>>,
    live: broadcast::Sender<Change>,
    engine: EngineHandle,
}

impl Feed {
    /// Starts the feed task over `engine`'s views, until shutdown.
    pub fn start(engine: EngineHandle, shutdown: CancellationToken) -> (Feed, impl std::future::Future<Output = ()>) {
        let (live, _) = broadcast::channel(FEED_CAPACITY);
        let incarnation = crate::clock::unix_ms();
        let inner = Arc::new(FeedInner { incarnation, recent: Mutex::new(VecDeque::new()), live, engine });
        let feed = Feed { inner: inner.clone() };
        let task = async move {
            let mut views = inner.engine.watch();
            let mut previous = views.borrow_and_update().clone();
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = views.changed() => if changed.is_err() { return },
                }
                let current = views.borrow_and_update().clone();
                for mut change in diff(&previous, &current) {
                    seq += 1;
                    change.seq = seq;
                    let mut recent = inner.recent.lock().expect("feed lock poisoned");
                    if recent.len() >= FEED_CAPACITY {
                        recent.pop_front();
                    }
                    recent.push_back(change.clone());
                    drop(recent);
                    let _ = inner.live.send(change);
                }
                previous = current;
            }
        };
        (feed, task)
    }

    fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.inner.incarnation)
    }
}

/// The keys whose applied value differs between two views. Generations are compared; only
/// the values of changed keys are copied. Two states share every part of their maps that no
/// change touched, and the diff skips those: it costs per key changed, not per key held.
fn diff(before: &View, after: &View) -> Vec<Change> {
    let mut changes = Vec::new();
    let flag =
        |flag: &Arc<grapevine_proto::eval::FlagDefinition>| serde_json::to_value(flag.as_ref()).unwrap_or_default();
    diff_kind("config", &before.state.config, &after.state.config, JsonText::to_value, &after.reverted, &mut changes);
    diff_kind("flag", &before.state.flags, &after.state.flags, flag, &after.reverted, &mut changes);
    changes
}

fn diff_kind<T: PartialEq>(
    kind: &'static str,
    old: &OrdMap<Key, Entry<T>>,
    new: &OrdMap<Key, Entry<T>>,
    value: impl Fn(&T) -> Value,
    reverted: &BTreeSet<GenId>,
    out: &mut Vec<Change>,
) {
    let cause =
        |previous: Option<&GenId>| if previous.is_some_and(|id| reverted.contains(id)) { "revert" } else { "change" };
    // Keys set or changed first, then keys gone, each in key order.
    let mut gone = Vec::new();
    for item in old.diff(new) {
        let (key, entry, previous) = match item {
            DiffItem::Add(key, entry) => (key, entry, None),
            DiffItem::Update { old: (_, before), new: (key, entry) } if before.generation != entry.generation => {
                (key, entry, Some(&before.generation))
            }
            DiffItem::Update { .. } => continue,
            DiffItem::Remove(key, entry) => {
                let cause = cause(Some(&entry.generation));
                gone.push(Change { seq: 0, kind, key: key.to_string(), value: Value::Null, generation: None, cause });
                continue;
            }
        };
        out.push(Change {
            seq: 0,
            kind,
            key: key.to_string(),
            value: value(&entry.value),
            generation: Some(entry.generation.to_string()),
            cause: cause(previous),
        });
    }
    out.append(&mut gone);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    #[serde(default)]
    prefix: String,
}

fn event(feed: &Feed, change: &Change) -> Event {
    Event::default().id(feed.id(change.seq)).event(change.kind).data(json!(change).to_string())
}

/// `GET /v1/watch?prefix=P`.
pub async fn watch(
    State(state): State<ApiState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    Query(query): Query<WatchQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, super::ApiError> {
    // Every key under the prefix must be in the principal's scope.
    super::access::covers_all(&state, &principal, [query.prefix.as_str()])?;
    // A node recovering from a damaged store would stream an empty state as the truth.
    super::ApiError::unless_recovering(&state.engine.view(), state.name.as_str())?;
    let feed = state.feed.clone();
    let prefix = query.prefix;
    // Subscribe before reading the kept events, so nothing falls between the two.
    let live = feed.inner.live.subscribe();
    let resume = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .and_then(|id| id.split_once('-'))
        .and_then(|(incarnation, seq)| Some((incarnation.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)));
    let mut first: Vec<Event> = Vec::new();
    let newest = || feed.inner.recent.lock().expect("feed lock poisoned").back().map_or(0, |c| c.seq);
    let replay = {
        let recent = feed.inner.recent.lock().expect("feed lock poisoned");
        let oldest = recent.front().map_or(u64::MAX, |c| c.seq);
        match resume {
            Some((incarnation, seq))
                if incarnation == feed.inner.incarnation && (seq + 1 >= oldest || recent.is_empty()) =>
            {
                Some(recent.iter().filter(|c| c.seq > seq).cloned().collect::<Vec<_>>())
            }
            _ => None,
        }
    };
    let last_seq = match (resume, replay) {
        (_, Some(missed)) => {
            for change in missed.iter().filter(|c| c.key.starts_with(&prefix)) {
                first.push(event(&feed, change));
            }
            missed.last().map_or(resume.map_or(0, |(_, seq)| seq), |c| c.seq)
        }
        (Some(_), None) => {
            // Too far behind, or another incarnation: start again from the current values. The
            // resync carries the id to resume from after them.
            let last_seq = newest();
            let reason = json!({"reason": "the missed events are no longer kept; current values follow"});
            first.push(Event::default().id(feed.id(last_seq)).event("resync").data(reason.to_string()));
            first.extend(snapshot(&feed, &prefix));
            last_seq
        }
        (None, None) => newest(),
    };
    let initial = futures_util::stream::iter(first.into_iter().map(Ok));
    let rest =
        futures_util::stream::unfold((live, feed, prefix, last_seq), |(mut live, feed, prefix, last)| async move {
            loop {
                match live.recv().await {
                    Ok(change) if change.seq > last && change.key.starts_with(&prefix) => {
                        let item = event(&feed, &change);
                        return Some((Ok(item), (live, feed, prefix, change.seq)));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // The client reads slower than changes come: it resumes with what it has.
                        let item =
                            Event::default().event("resync").data(json!({"reason": "client too slow"}).to_string());
                        return Some((Ok(item), (live, feed, prefix, last)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    Ok(Sse::new(futures_util::StreamExt::chain(initial, rest))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The current value of every key under `prefix`, as events without ids.
fn snapshot(feed: &Feed, prefix: &str) -> Vec<Event> {
    let view = feed.inner.engine.view();
    let empty = View::default();
    diff(&empty, &view)
        .into_iter()
        .filter(|c| c.key.starts_with(prefix))
        .map(|change| Event::default().event(change.kind).data(json!(change).to_string()))
        .collect()
}
