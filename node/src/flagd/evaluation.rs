//! `flagd.evaluation.v1.Service`: RPC providers ask the node to evaluate, as OFREP clients do,
//! and learn of changes on the event stream (`provider_ready` at connect, then
//! `configuration_change` naming the flags that changed, so their caches drop them).
//!
//! Errors are flagd's status codes, which providers map back to OpenFeature's: `NOT_FOUND`
//! (FLAG_NOT_FOUND), `INVALID_ARGUMENT` (TYPE_MISMATCH, TARGETING_KEY_MISSING, INVALID_CONTEXT),
//! `DATA_LOSS` (PARSE_ERROR), `UNKNOWN` (GENERAL), `UNAVAILABLE` while the node recovers its log.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use grapevine_proto::eval::{ErrorCode, Evaluation, Expected, Reason};
use prost_types::Struct;
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

use super::access::{Caller, interceptor};
use super::convert::{map_to_struct, struct_to_map};
use super::schema::evaluation::service_server::{Service, ServiceServer};
use super::schema::evaluation::*;
use super::{Shared, sync};
use crate::api::budget;
use crate::clock::unix_ms;
use crate::engine::View;

/// The evaluation service, behind the access checks.
pub fn service(shared: Shared) -> tonic::service::Routes {
    let interceptor = interceptor(shared.api.clone());
    let v2 = super::evaluation_v2::server(Evaluator { shared: shared.clone() }, interceptor.clone());
    tonic::service::Routes::new(ServiceServer::with_interceptor(Evaluator { shared }, interceptor)).add_service(v2)
}

pub(crate) struct Evaluator {
    pub(crate) shared: Shared,
}

/// `reason` as flagd's messages carry it.
pub(crate) fn reason_text(reason: Reason) -> String {
    serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The status flagd answers for an evaluation error.
pub(crate) fn error_status(code: ErrorCode, message: Option<String>) -> Status {
    let name = serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let message = format!("{name}: {}", message.unwrap_or_default());
    match code {
        ErrorCode::FlagNotFound => Status::not_found(message),
        ErrorCode::TypeMismatch | ErrorCode::TargetingKeyMissing | ErrorCode::InvalidContext => {
            Status::invalid_argument(message)
        }
        ErrorCode::ParseError => Status::data_loss(message),
        ErrorCode::General => Status::unknown(message),
    }
}

/// UNAVAILABLE while the node recovers its log after a damaged store.
pub(crate) fn serving(shared: &Shared, view: &View) -> Result<(), Status> {
    match &view.recovering {
        None => Ok(()),
        Some(reason) => {
            Err(Status::unavailable(format!("node {} is recovering its log from peers ({reason})", shared.api.name)))
        }
    }
}

impl Evaluator {
    /// The static context with the caller's over it.
    fn context(&self, context: Option<Struct>) -> Map<String, Value> {
        let mut merged = (*self.shared.context).clone();
        merged.extend(context.map(struct_to_map).unwrap_or_default());
        merged
    }

    /// Evaluates flag `key` for the caller; a flag it may not see or did not select is not found.
    fn evaluate(
        &self,
        caller: &Caller,
        key: &str,
        context: Option<Struct>,
        expected: Expected,
    ) -> Result<Evaluation, Status> {
        let view = self.shared.api.engine.view();
        serving(&self.shared, &view)?;
        let not_found = || {
            let detail = format!("flag {key:?} is not applied on node {} (or not selected)", self.shared.api.name);
            error_status(ErrorCode::FlagNotFound, Some(detail))
        };
        let parsed: grapevine_proto::Key = key.parse().map_err(|_| not_found())?;
        let entry =
            view.state.flags.get(&parsed).filter(|entry| caller.sees(key, &entry.value)).ok_or_else(not_found)?;
        let context = self.context(context);
        let mut evaluation =
            entry.value.evaluate(key, &context, self.shared.api.fractional, unix_ms() / 1000).expecting(expected);
        if let Some(code) = evaluation.error_code {
            return Err(error_status(code, evaluation.error_message));
        }
        evaluation.metadata = entry.value.metadata.clone();
        Ok(evaluation)
    }

    /// Runs `work`, an evaluation of rules bounded by `steps` on `context`, within the
    /// evaluation budget (`api::budget`): on the request's task when small, else on the blocking
    /// pool, answering `UNAVAILABLE` past its budget or when every permit is taken.
    async fn budgeted<T: Send + 'static>(
        &self,
        steps: u64,
        context: Option<Struct>,
        work: impl FnOnce(&Evaluator, Option<Struct>) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let bytes = context.as_ref().map_or(0, prost::Message::encoded_len);
        if budget::is_small(steps, bytes) {
            return work(self, context);
        }
        let this = Evaluator { shared: self.shared.clone() };
        let evaluations = &self.shared.api.evaluations;
        let work = move || work(&this, context);
        evaluations.run(steps, bytes, work).await.map_err(|over| Status::unavailable(over.to_string()))?
    }

    pub(crate) async fn resolve(
        &self,
        request: Request<(String, Option<Struct>)>,
        expected: Expected,
    ) -> Result<Resolved, Status> {
        let caller = Caller::of(&request)?;
        let (key, context) = request.into_inner();
        let steps = {
            let view = self.shared.api.engine.view();
            let flag = key.parse::<grapevine_proto::Key>().ok().and_then(|parsed| view.state.flags.get(&parsed));
            budget::steps(flag.map(|entry| &*entry.value))
        };
        let work = move |this: &Evaluator, context| this.evaluate(&caller, &key, context, expected);
        let evaluation = self.budgeted(steps, context, work).await?;
        Ok(Resolved {
            metadata: Some(map_to_struct(&evaluation.metadata)),
            reason: reason_text(evaluation.reason),
            variant: evaluation.variant.unwrap_or_default(),
            value: evaluation.value,
        })
    }
}

/// Every flag's evaluation by key, and the metadata they share.
pub(crate) type ResolvedAll = (Vec<(String, Resolved)>, Option<Struct>);

/// One evaluation, before it takes its response type.
pub(crate) struct Resolved {
    pub(crate) value: Option<Value>,
    pub(crate) reason: String,
    pub(crate) variant: String,
    pub(crate) metadata: Option<Struct>,
}

/// The request's flag key and context, with its extensions (the caller).
pub(crate) fn parts<T>(
    request: Request<T>,
    key: impl FnOnce(&T) -> String,
    context: impl FnOnce(T) -> Option<Struct>,
) -> Request<(String, Option<Struct>)> {
    request.map(|inner| (key(&inner), context(inner)))
}

#[tonic::async_trait]
impl Service for Evaluator {
    async fn resolve_boolean(
        &self,
        request: Request<ResolveBooleanRequest>,
    ) -> Result<Response<ResolveBooleanResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Boolean).await?;
        let value = r.value.as_ref().and_then(Value::as_bool).unwrap_or_default();
        Ok(Response::new(ResolveBooleanResponse { value, reason: r.reason, variant: r.variant, metadata: r.metadata }))
    }

    async fn resolve_string(
        &self,
        request: Request<ResolveStringRequest>,
    ) -> Result<Response<ResolveStringResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::String).await?;
        let value = r.value.as_ref().and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(Response::new(ResolveStringResponse { value, reason: r.reason, variant: r.variant, metadata: r.metadata }))
    }

    async fn resolve_float(
        &self,
        request: Request<ResolveFloatRequest>,
    ) -> Result<Response<ResolveFloatResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Float).await?;
        let value = r.value.as_ref().and_then(Value::as_f64).unwrap_or_default();
        Ok(Response::new(ResolveFloatResponse { value, reason: r.reason, variant: r.variant, metadata: r.metadata }))
    }

    async fn resolve_int(&self, request: Request<ResolveIntRequest>) -> Result<Response<ResolveIntResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Integer).await?;
        let value = r.value.as_ref().and_then(Value::as_i64).unwrap_or_default();
        Ok(Response::new(ResolveIntResponse { value, reason: r.reason, variant: r.variant, metadata: r.metadata }))
    }

    async fn resolve_object(
        &self,
        request: Request<ResolveObjectRequest>,
    ) -> Result<Response<ResolveObjectResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Object).await?;
        let value = match r.value {
            Some(Value::Object(object)) => Some(map_to_struct(&object)),
            // An array is a JSON object value to OFREP, but flagd's Struct cannot hold one.
            Some(other) => {
                return Err(error_status(ErrorCode::TypeMismatch, Some(format!("expected an object, got {other}"))));
            }
            None => None,
        };
        Ok(Response::new(ResolveObjectResponse { value, reason: r.reason, variant: r.variant, metadata: r.metadata }))
    }

    async fn resolve_all(&self, request: Request<ResolveAllRequest>) -> Result<Response<ResolveAllResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (flags, metadata) = self.resolve_all(caller, request.into_inner().context).await?;
        let flags = flags
            .into_iter()
            .map(|(key, r)| {
                (key, AnyFlag { reason: r.reason, variant: r.variant, value: any_value(r.value), metadata: r.metadata })
            })
            .collect();
        Ok(Response::new(ResolveAllResponse { flags, metadata }))
    }

    type EventStreamStream = Pin<Box<dyn Stream<Item = Result<EventStreamResponse, Status>> + Send>>;

    async fn event_stream(
        &self,
        request: Request<EventStreamRequest>,
    ) -> Result<Response<Self::EventStreamStream>, Status> {
        let caller = Caller::of(&request)?;
        let events =
            self.events(caller).map(|(r#type, data)| Ok(EventStreamResponse { r#type, data })).chain(super::stopping());
        Ok(Response::new(Box::pin(events)))
    }
}

/// A value as `AnyFlag` holds it (an integer as a double; no arrays).
pub(crate) fn any_value(value: Option<Value>) -> Option<any_flag::Value> {
    match value? {
        Value::Bool(b) => Some(any_flag::Value::BoolValue(b)),
        Value::String(s) => Some(any_flag::Value::StringValue(s)),
        Value::Number(n) => n.as_f64().map(any_flag::Value::DoubleValue),
        Value::Object(o) => Some(any_flag::Value::ObjectValue(map_to_struct(&o))),
        _ => None,
    }
}

impl Evaluator {
    /// Every flag the caller sees, evaluated (flagd leaves out those whose evaluation fails),
    /// and the metadata they share.
    pub(crate) async fn resolve_all(&self, caller: Caller, context: Option<Struct>) -> Result<ResolvedAll, Status> {
        let steps = budget::steps(self.shared.api.engine.view().state.flags.values().map(|entry| &*entry.value));
        self.budgeted(steps, context, move |this, context| this.resolve_all_now(&caller, context)).await
    }

    fn resolve_all_now(&self, caller: &Caller, context: Option<Struct>) -> Result<ResolvedAll, Status> {
        let context = self.context(context);
        let view = self.shared.api.engine.view();
        serving(&self.shared, &view)?;
        let selected: Vec<_> =
            view.state.flags.iter().filter(|(key, entry)| caller.sees(key.as_str(), &entry.value)).collect();
        let mut flags = Vec::new();
        for (key, entry) in &selected {
            let evaluation = entry.value.evaluate(key.as_str(), &context, self.shared.api.fractional, unix_ms() / 1000);
            if evaluation.error_code.is_some() {
                continue;
            }
            let resolved = Resolved {
                reason: reason_text(evaluation.reason),
                variant: evaluation.variant.unwrap_or_default(),
                value: evaluation.value,
                metadata: Some(map_to_struct(&entry.value.metadata)),
            };
            flags.push((key.to_string(), resolved));
        }
        let metadata = sync::common_metadata(selected.iter().map(|(_, entry)| &*entry.value));
        Ok((flags, Some(map_to_struct(&metadata))))
    }

    /// The event stream's events as (type, data): `provider_ready` at once, then a
    /// `configuration_change` each time the caller's flags change; ends when the node stops.
    pub(crate) fn events(&self, caller: Caller) -> impl Stream<Item = (String, Option<Struct>)> + Send + 'static {
        let mut watch = self.shared.api.engine.watch();
        let last = selection(&watch.borrow_and_update(), &caller);
        let changes = futures_util::stream::unfold((watch, last, caller), |(mut watch, last, caller)| async move {
            loop {
                watch.changed().await.ok()?;
                let now = selection(&watch.borrow_and_update(), &caller);
                if now != last {
                    let data = Some(map_to_struct(&changed_flags(&last, &now)));
                    return Some((("configuration_change".to_owned(), data), (watch, now, caller)));
                }
            }
        });
        futures_util::stream::once(async { ("provider_ready".to_owned(), None) })
            .chain(changes)
            .take_until(self.shared.shutdown.clone().cancelled_owned())
    }
}

/// The generation of each flag the caller sees: what changes when its flags change.
pub(crate) fn selection(view: &View, caller: &Caller) -> BTreeMap<String, String> {
    view.state
        .flags
        .iter()
        .filter(|(key, entry)| caller.sees(key.as_str(), &entry.value))
        .map(|(key, entry)| (key.to_string(), entry.generation.to_string()))
        .collect()
}

/// flagd's `configuration_change` data: `{"flags": {KEY: {"type": "write" | "update" | "delete"}}}`.
fn changed_flags(last: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Map<String, Value> {
    let mut flags = Map::new();
    for (key, generation) in now {
        match last.get(key) {
            None => flags.insert(key.clone(), json!({"type": "write", "flagKey": key})),
            Some(before) if before != generation => {
                flags.insert(key.clone(), json!({"type": "update", "flagKey": key}))
            }
            Some(_) => None,
        };
    }
    for key in last.keys().filter(|key| !now.contains_key(*key)) {
        flags.insert(key.clone(), json!({"type": "delete", "flagKey": key}));
    }
    Map::from_iter([("flags".to_owned(), Value::Object(flags))])
}
