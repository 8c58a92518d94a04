//! Access to the flagd services, as to the HTTP API (`crate::auth`): a bearer token in the
//! gRPC metadata (`authorization: Bearer TOKEN`), or the anonymous role where `[auth]` gives
//! one; the `read` role is needed, and a token's prefixes bound which flags it sees. Each call
//! (each stream, when it opens) draws from the caller's `applications` rate budget.

use tonic::{Request, Status};

use crate::api::ApiState;
use crate::api::limits::Class;
use crate::api::selector::{SELECTOR_HEADER, Selector};
use crate::auth::{Principal, Refusal, Requirement, Role, check};
use crate::metrics::reason;

/// Who calls, and which flags it asked for: put in the request's extensions by [`interceptor`].
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    /// From the `flagd-selector` metadata; a sync request's `selector` field replaces it.
    pub selector: Selector,
}

impl Caller {
    /// The caller of `request`, as the interceptor found it.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        request.extensions().get::<Caller>().cloned().ok_or_else(|| Status::internal("no caller: interceptor missing"))
    }

    /// Whether the caller may see and selected flag `key`.
    pub fn sees(&self, key: &str, flag: &grapevine_proto::eval::FlagDefinition) -> bool {
        self.principal.covers(key) && self.selector.matches(key, flag)
    }
}

/// The interceptor of both services.
pub fn interceptor(api: ApiState) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync {
    move |mut request: Request<()>| {
        let caller = authorize(&api, &request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

fn authorize(api: &ApiState, request: &Request<()>) -> Result<Caller, Status> {
    let authorization = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or(""));
    let needs = Requirement::Role { role: Role::Read, key: None };
    let principal = api
        .auth
        .over_tcp(authorization)
        .and_then(|principal| check(principal.as_ref(), &needs).map(|()| principal))
        .map_err(|refusal| refused(api, refusal))?
        .expect("check refuses a missing principal");
    // Authenticated clients are limited by name, anonymous ones by address, as on the API.
    let client = match request.remote_addr() {
        _ if principal.authenticated => principal.name.clone(),
        Some(address) => format!("ip:{}", address.ip()),
        None => "anonymous".to_owned(),
    };
    if let Err(wait) = api.limits.take(Class::Applications, &client) {
        api.metrics.api_rate_limited.get_or_create(&reason(Class::Applications.label())).inc();
        let rate = api.limits.rate(Class::Applications);
        let message = format!(
            "{client} is over its {rate} requests per second on the applications endpoints; retry in {} ms",
            wait.as_millis().max(1)
        );
        return Err(Status::resource_exhausted(message));
    }
    let selector = request.metadata().get(SELECTOR_HEADER).map(|v| v.to_str().unwrap_or("")).unwrap_or("");
    let selector = Selector::parse(selector).map_err(Status::invalid_argument)?;
    Ok(Caller { principal, selector })
}

/// UNAUTHENTICATED or PERMISSION_DENIED, counted as the API counts its 401 and 403.
fn refused(api: &ApiState, refusal: Refusal) -> Status {
    let (label, status) = match refusal {
        Refusal::Unauthenticated(message) => (
            "unauthenticated",
            Status::unauthenticated(
                message.replace("`Authorization: Bearer TOKEN`", "gRPC metadata `authorization: Bearer TOKEN`"),
            ),
        ),
        Refusal::Forbidden(message) => ("forbidden", Status::permission_denied(message)),
    };
    api.metrics.api_auth_refusals.get_or_create(&reason(label)).inc();
    status
}
