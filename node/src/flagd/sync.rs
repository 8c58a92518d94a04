//! `flagd.sync.v1.FlagSyncService`: in-process providers take the node's applied flags whole
//! and evaluate them themselves. `SyncFlags` sends the flag configuration at connect and again
//! each time the caller's flags change on this node (a wave reaching this host, a revert);
//! `FetchAllFlags` sends it once; `GetMetadata` (deprecated by flagd) the static context.
//!
//! The configuration is a flagd flag file: `{"flags": {...}, "metadata": {...}}`. Each flag is
//! as the node stores it, its `$ref`s already resolved (so no `$evaluators`), its metadata
//! holding the metadata of the file it was applied from; the top-level `metadata` is what all
//! the sent flags share (a file's `flagSetId` and `version`, when one file's flags are sent).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use grapevine_proto::eval::FlagDefinition;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::Shared;
use super::access::{Caller, interceptor};
use super::convert::map_to_struct;
use super::evaluation::serving;
use super::schema::sync::flag_sync_service_server::{FlagSyncService, FlagSyncServiceServer};
use super::schema::sync::{
    FetchAllFlagsRequest, FetchAllFlagsResponse, GetMetadataRequest, GetMetadataResponse, SyncFlagsRequest,
    SyncFlagsResponse,
};
use crate::api::selector::Selector;
use crate::engine::View;

/// The sync service, behind the access checks.
pub fn service(shared: Shared) -> tonic::service::Routes {
    let interceptor = interceptor(shared.api.clone());
    tonic::service::Routes::new(FlagSyncServiceServer::with_interceptor(Syncer { shared }, interceptor))
}

struct Syncer {
    shared: Shared,
}

/// Distinct scopes (a token's prefixes and a selector) whose configuration is kept: streams
/// of one scope share one serialization per change. Past this many the cache starts over.
const MAX_CACHED_SCOPES: usize = 256;

type Scope = (Vec<String>, Selector);

/// A configuration and the view it was serialized from.
type Serialized = (Arc<View>, Arc<str>);

/// The configuration last serialized for each scope, with the view it was made from (held, so
/// that the view's address identifies it).
#[derive(Default)]
pub struct ConfigurationCache {
    by_scope: Mutex<HashMap<Scope, Serialized>>,
}

impl ConfigurationCache {
    /// The caller's flag configuration in `view`.
    fn get(&self, view: &Arc<View>, caller: &Caller) -> Arc<str> {
        let scope = (caller.principal.prefixes.clone(), caller.selector.clone());
        let mut cache = self.by_scope.lock().expect("the cache lock is never poisoned");
        if let Some((seen, text)) = cache.get(&scope).filter(|(seen, _)| Arc::ptr_eq(seen, view)) {
            let _ = seen;
            return text.clone();
        }
        let text: Arc<str> = configuration(view, caller).into();
        if cache.len() >= MAX_CACHED_SCOPES {
            cache.clear();
        }
        cache.insert(scope, (view.clone(), text.clone()));
        text
    }
}

/// The flagd flag file of the flags the caller sees.
pub fn configuration(view: &View, caller: &Caller) -> String {
    let selected: Vec<_> =
        view.state.flags.iter().filter(|(key, entry)| caller.sees(key.as_str(), &entry.value)).collect();
    let flags: Map<String, Value> = selected
        .iter()
        .map(|(key, entry)| {
            (key.to_string(), serde_json::to_value(&*entry.value).expect("a flag definition always serializes"))
        })
        .collect();
    let mut file = Map::from_iter([("flags".to_owned(), Value::Object(flags))]);
    let metadata = common_metadata(selected.iter().map(|(_, entry)| &*entry.value));
    if !metadata.is_empty() {
        file.insert("metadata".to_owned(), Value::Object(metadata.into_iter().collect()));
    }
    serde_json::to_string(&file).expect("a flag file always serializes")
}

/// The metadata fields every flag holds with one value: the flag set's metadata, when the
/// flags come from one file (none when there are no flags).
pub fn common_metadata<'a>(mut flags: impl Iterator<Item = &'a FlagDefinition>) -> BTreeMap<String, Value> {
    let Some(first) = flags.next() else { return BTreeMap::new() };
    let mut common = first.metadata.clone();
    for flag in flags {
        common.retain(|name, value| flag.metadata.get(name) == Some(value));
        if common.is_empty() {
            break;
        }
    }
    common
}

impl Syncer {
    /// The caller, with the request's `selector` field in place of the header when it has one.
    fn caller<T>(request: &Request<T>, selector: &str) -> Result<Caller, Status> {
        let mut caller = Caller::of(request)?;
        if !selector.is_empty() {
            caller.selector = Selector::parse(selector).map_err(Status::invalid_argument)?;
        }
        Ok(caller)
    }

    fn response(&self, view: &Arc<View>, caller: &Caller) -> SyncFlagsResponse {
        SyncFlagsResponse {
            flag_configuration: self.shared.configurations.get(view, caller).to_string(),
            sync_context: Some(map_to_struct(self.shared.context.iter())),
        }
    }
}

#[tonic::async_trait]
impl FlagSyncService for Syncer {
    type SyncFlagsStream = Pin<Box<dyn Stream<Item = Result<SyncFlagsResponse, Status>> + Send>>;

    async fn sync_flags(&self, request: Request<SyncFlagsRequest>) -> Result<Response<Self::SyncFlagsStream>, Status> {
        let caller = Self::caller(&request, &request.get_ref().selector)?;
        let mut watch = self.shared.api.engine.watch();
        let view = watch.borrow_and_update().clone();
        serving(&self.shared, &view)?;
        let first = self.response(&view, &caller);
        let last = super::evaluation::selection(&view, &caller);
        let syncer = Syncer { shared: self.shared.clone() };
        let changes = futures_util::stream::unfold(
            (watch, last, caller, syncer),
            |(mut watch, last, caller, syncer)| async move {
                loop {
                    watch.changed().await.ok()?;
                    let view = watch.borrow_and_update().clone();
                    if view.recovering.is_some() {
                        continue;
                    }
                    let now = super::evaluation::selection(&view, &caller);
                    if now != last {
                        let response = syncer.response(&view, &caller);
                        return Some((Ok(response), (watch, now, caller, syncer)));
                    }
                }
            },
        );
        let stream = futures_util::stream::once(async { Ok(first) })
            .chain(changes)
            .take_until(self.shared.shutdown.clone().cancelled_owned())
            .chain(super::stopping());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_all_flags(
        &self,
        request: Request<FetchAllFlagsRequest>,
    ) -> Result<Response<FetchAllFlagsResponse>, Status> {
        let caller = Self::caller(&request, &request.get_ref().selector)?;
        let view = self.shared.api.engine.view();
        serving(&self.shared, &view)?;
        Ok(Response::new(FetchAllFlagsResponse { flag_configuration: configuration(&view, &caller) }))
    }

    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        Caller::of(&request)?;
        Ok(Response::new(GetMetadataResponse { metadata: Some(map_to_struct(self.shared.context.iter())) }))
    }
}
