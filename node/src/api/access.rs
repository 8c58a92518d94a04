//! Authentication and authorization of every request (`crate::auth` holds the rules): the
//! principal of the request, what its endpoint needs, and the 401 or 403 when it falls short.
//!
//! `authorize` is a `route_layer`, so it runs on matched routes only. `requirement(method, matched
//! path, key)` says what each endpoint needs (anything not listed needs `write` over every key);
//! the principal comes from `ConnectInfo<SocketPeer>` (the admin socket's server adds it, with the
//! peer's uid) or from `Authorization`, and is handed to handlers as an `Extension<Principal>`.
//! `refused` answers 401 (with `WWW-Authenticate`) or 403 and counts `api_auth_refusals`.
//! `may_see`, `may_touch` and `covers_all` are the handlers' checks of keys named outside the path
//! (history and rollouts filtered, rollout actions, apply, OFREP bulk, watch prefix).

use axum::extract::connect_info::Connected;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use super::limits::Class;
use super::{ApiError, ApiState};
use crate::auth::{Principal, Refusal, Requirement, Role, check};
use crate::metrics::reason;

/// The peer of an admin-socket connection: its Unix user, from the kernel.
#[derive(Clone, Copy, Debug)]
pub struct SocketPeer {
    pub uid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for SocketPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        SocketPeer { uid: stream.io().peer_cred().ok().map(|cred| cred.uid()) }
    }
}

/// What the endpoint matched by `path` needs for `method`, and the rate budget it draws from:
/// one table, so an endpoint cannot be added to one and forgotten in the other. Endpoints that
/// name keys other than in the path check them in their handler (see [`Requirement::Role`]).
fn endpoint(method: &Method, path: &str, key: Option<String>) -> (Requirement, Class) {
    let role = |role: Role| Requirement::Role { role, key: key.clone() };
    use Class::{Admin, Applications};
    match (path, method.as_str()) {
        // The fleet page's static files: no data, and the page sends credentials with its calls.
        ("/healthz" | "/readyz" | "/metrics" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css", _) => {
            (Requirement::Public, Admin)
        }
        ("/v1/flags/{key}" | "/v1/config/{key}", "POST") => (role(Role::Write), Admin),
        ("/v1/apply" | "/v1/changes" | "/v1/rollouts/{generation}/{action}", "POST") => (role(Role::Write), Admin),
        // The proposal's keys are checked in the handlers (`api/proposals.rs`).
        ("/v1/proposals" | "/v1/proposals/{proposal}/{action}", "POST") => (role(Role::Write), Admin),
        ("/v1/proposals" | "/v1/proposals/{proposal}", "GET") => (role(Role::Read), Admin),
        ("/v1/health", "POST") => (role(Role::Report), Applications),
        ("/v1/status" | "/v1/history" | "/v1/rollouts" | "/v1/rollouts/{generation}" | "/v1/keys", "GET")
        | ("/v1/whoami" | "/v1/events", "GET") => (role(Role::Read), Admin),
        ("/v1/flags/{key}" | "/v1/config/{key}" | "/v1/watch" | "/ofrep/v1/events", "GET")
        | ("/v1/flags/{key}/evaluate" | "/ofrep/v1/evaluate/flags/{*key}" | "/ofrep/v1/evaluate/flags", "POST") => {
            (role(Role::Read), Applications)
        }
        ("/v1/backup", "GET") => (Requirement::Unrestricted(Role::Read), Admin),
        // Anything else (the test-suite endpoints, and any endpoint added without a line
        // here) needs every right.
        _ => (Requirement::Unrestricted(Role::Write), Admin),
    }
}

/// Middleware on every route: finds the request's principal (admin socket, bearer token or
/// anonymous), checks it against the endpoint, and hands it to the handler as an extension.
pub async fn authorize(
    State(state): State<ApiState>,
    path: MatchedPath,
    params: RawPathParams,
    mut request: Request,
    next: Next,
) -> Response {
    let key = params.iter().find(|(name, _)| *name == "key").map(|(_, value)| value.to_owned());
    let (needs, class) = endpoint(request.method(), path.as_str(), key);
    if needs == Requirement::Public {
        // Probes and scrapers are served whatever credentials they carry, stale ones included.
        return next.run(request).await;
    }
    let principal = match request.extensions().get::<axum::extract::ConnectInfo<SocketPeer>>() {
        Some(peer) => Ok(Some(state.auth.over_socket(peer.0.uid))),
        None => {
            let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
            state.auth.over_tcp(authorization)
        }
    };
    let checked = principal.and_then(|principal| check(principal.as_ref(), &needs).map(|()| principal));
    let principal = match checked {
        Ok(principal) => principal,
        Err(refusal) => return refused(&state, refusal).into_response(),
    };
    // Authenticated clients are limited by name, anonymous ones by address.
    let client = match (&principal, request.extensions().get::<axum::extract::ConnectInfo<super::limits::ClientAddr>>())
    {
        (Some(principal), _) if principal.authenticated => principal.name.clone(),
        (_, Some(address)) => format!("ip:{}", address.0.0.ip()),
        _ => "anonymous".to_owned(),
    };
    if let Err(wait) = state.limits.take(class, &client) {
        return rate_limited(&state, class, &client, wait);
    }
    if let Some(principal) = principal {
        request.extensions_mut().insert(principal);
    }
    next.run(request).await
}

/// 429 with `Retry-After` (whole seconds, at least 1) and a message that says the limit.
fn rate_limited(state: &ApiState, class: Class, client: &str, wait: std::time::Duration) -> Response {
    state.metrics.api_rate_limited.get_or_create(&reason(class.label())).inc();
    let rate = state.limits.rate(class);
    let message = format!(
        "{client} is over its {rate} requests per second on the {} endpoints; retry in {} ms",
        class.label(),
        wait.as_millis().max(1)
    );
    let mut response = ApiError { status: StatusCode::TOO_MANY_REQUESTS, message }.into_response();
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
    response
}

/// The answer to a refused request, counted by reason.
pub fn refused(state: &ApiState, refusal: Refusal) -> AccessError {
    let (label, status, message) = match refusal {
        Refusal::Unauthenticated(message) => ("unauthenticated", StatusCode::UNAUTHORIZED, message),
        Refusal::Forbidden(message) => ("forbidden", StatusCode::FORBIDDEN, message),
    };
    state.metrics.api_auth_refusals.get_or_create(&reason(label)).inc();
    AccessError(ApiError { status, message })
}

/// A 401 or 403: a JSON error, and for a 401 the `WWW-Authenticate` challenge.
pub struct AccessError(pub ApiError);

impl IntoResponse for AccessError {
    fn into_response(self) -> Response {
        let challenge = self.0.status == StatusCode::UNAUTHORIZED;
        let mut response = self.0.into_response();
        if challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> ApiError {
        error.0
    }
}

/// Whether the principal may see `generation`: a change of keys all in its scope (a control
/// or a change that touches any other key needs every key).
pub fn may_see(principal: &Principal, generation: &grapevine_proto::Generation) -> bool {
    let ops = &generation.body.change.ops;
    principal.unrestricted() || (!ops.is_empty() && ops.iter().all(|op| principal.covers(op.key().as_str())))
}

/// 403 unless the principal may see the generation `id` (a generation this node does not hold
/// whole can only be judged by a principal of every key).
pub async fn may_touch(state: &ApiState, principal: &Principal, id: &grapevine_proto::GenId) -> Result<(), ApiError> {
    if principal.unrestricted() {
        return Ok(());
    }
    let wanted = id.clone();
    let found = state.engine.history(1, Box::new(move |g| *g.id() == wanted)).await;
    match found.first() {
        Some(generation) if may_see(principal, generation) => Ok(()),
        _ => {
            let message = format!(
                "{} may touch {}, and {id} is not a change of those keys here",
                principal.name,
                principal.scope()
            );
            Err(refused(state, Refusal::Forbidden(message)).into())
        }
    }
}

/// 403 unless every key lies in the principal's scope.
pub fn covers_all<'a>(
    state: &ApiState,
    principal: &Principal,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiError> {
    for key in keys {
        crate::auth::forbid_outside(principal, key).map_err(|refusal| ApiError::from(refused(state, refusal)))?;
    }
    Ok(())
}
