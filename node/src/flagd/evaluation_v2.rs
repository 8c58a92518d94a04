//! `flagd.evaluation.v2.Service`, beside v1 on the evaluation port: the same evaluations (see
//! [`super::evaluation`]), with flagd's v2 messages, whose value and variant are optional (unset
//! when the caller's default applies). Newer providers call it (the Python provider 0.6).

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use grapevine_proto::eval::Expected;
use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::access::Caller;
use super::convert::map_to_struct;
use super::evaluation::{Evaluator, Resolved, error_status, parts};
use super::schema::evaluation_v2::service_server::{Service, ServiceServer};
use super::schema::evaluation_v2::{
    AnyFlag, EventStreamRequest, EventStreamResponse, ResolveAllRequest, ResolveAllResponse, ResolveBooleanRequest,
    ResolveBooleanResponse, ResolveFloatRequest, ResolveFloatResponse, ResolveIntRequest, ResolveIntResponse,
    ResolveObjectRequest, ResolveObjectResponse, ResolveStringRequest, ResolveStringResponse, any_flag,
};
use grapevine_proto::eval::ErrorCode;

/// The v2 service of `evaluator`, behind `interceptor`.
pub(crate) fn server<F>(evaluator: Evaluator, interceptor: F) -> InterceptedService<ServiceServer<Evaluator>, F>
where
    F: tonic::service::Interceptor,
{
    ServiceServer::with_interceptor(evaluator, interceptor)
}

/// The variant, unset when the caller's default applies.
fn variant(resolved: &Resolved) -> Option<String> {
    Some(resolved.variant.clone()).filter(|variant| !variant.is_empty())
}

fn any_value(value: Option<Value>) -> Option<any_flag::Value> {
    Some(match super::evaluation::any_value(value)? {
        super::schema::evaluation::any_flag::Value::BoolValue(b) => any_flag::Value::BoolValue(b),
        super::schema::evaluation::any_flag::Value::StringValue(s) => any_flag::Value::StringValue(s),
        super::schema::evaluation::any_flag::Value::DoubleValue(d) => any_flag::Value::DoubleValue(d),
        super::schema::evaluation::any_flag::Value::ObjectValue(o) => any_flag::Value::ObjectValue(o),
    })
}

#[tonic::async_trait]
impl Service for Evaluator {
    async fn resolve_boolean(
        &self,
        request: Request<ResolveBooleanRequest>,
    ) -> Result<Response<ResolveBooleanResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Boolean).await?;
        let value = r.value.as_ref().and_then(Value::as_bool);
        Ok(Response::new(ResolveBooleanResponse {
            value,
            variant: variant(&r),
            reason: r.reason,
            metadata: r.metadata,
        }))
    }

    async fn resolve_string(
        &self,
        request: Request<ResolveStringRequest>,
    ) -> Result<Response<ResolveStringResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::String).await?;
        let value = r.value.as_ref().and_then(Value::as_str).map(str::to_owned);
        Ok(Response::new(ResolveStringResponse { value, variant: variant(&r), reason: r.reason, metadata: r.metadata }))
    }

    async fn resolve_float(
        &self,
        request: Request<ResolveFloatRequest>,
    ) -> Result<Response<ResolveFloatResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Float).await?;
        let value = r.value.as_ref().and_then(Value::as_f64);
        Ok(Response::new(ResolveFloatResponse { value, variant: variant(&r), reason: r.reason, metadata: r.metadata }))
    }

    async fn resolve_int(&self, request: Request<ResolveIntRequest>) -> Result<Response<ResolveIntResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Integer).await?;
        let value = r.value.as_ref().and_then(Value::as_i64);
        Ok(Response::new(ResolveIntResponse { value, variant: variant(&r), reason: r.reason, metadata: r.metadata }))
    }

    async fn resolve_object(
        &self,
        request: Request<ResolveObjectRequest>,
    ) -> Result<Response<ResolveObjectResponse>, Status> {
        let r = self.resolve(parts(request, |r| r.flag_key.clone(), |r| r.context), Expected::Object).await?;
        let value = match &r.value {
            Some(Value::Object(object)) => Some(map_to_struct(object)),
            Some(other) => {
                let message = format!("expected an object, got {other}");
                return Err(error_status(ErrorCode::TypeMismatch, Some(message)));
            }
            None => None,
        };
        Ok(Response::new(ResolveObjectResponse { value, variant: variant(&r), reason: r.reason, metadata: r.metadata }))
    }

    async fn resolve_all(&self, request: Request<ResolveAllRequest>) -> Result<Response<ResolveAllResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (flags, metadata) = Evaluator::resolve_all(self, caller, request.into_inner().context).await?;
        let flags = flags
            .into_iter()
            .map(|(key, r)| {
                let flag =
                    AnyFlag { variant: variant(&r), reason: r.reason, value: any_value(r.value), metadata: r.metadata };
                (key, flag)
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
