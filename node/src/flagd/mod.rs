//! flagd's gRPC services, so that every flagd provider works against a node unchanged (D75):
//!
//! - `flagd.evaluation.v1.Service` and `v2` (RPC providers, flagd's port 8013): the node evaluates, as
//!   for OFREP ([`evaluation`]);
//! - `flagd.sync.v1.FlagSyncService` (in-process providers, flagd's port 8015): the node streams
//!   its applied flags, and the provider evaluates them itself ([`sync`]).
//!
//! Both serve this host's **applied** flags, so a provider follows its host's wave and sees a
//! revert as soon as the node applies it. Both take flagd's selectors (`api::selector`), the API's
//! tokens and anonymous role, and its request rates ([`access`]); both are off unless the node's
//! config has a `[flagd]` section, and take TLS from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;

pub mod access;
pub mod convert;
pub mod evaluation;
pub mod evaluation_v2;
pub mod sync;

/// The types and service traits generated from flagd's schemas (`node/proto/`, `build.rs`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod schema {
    /// `flagd.evaluation.v1`: the RPC providers' evaluation service.
    pub mod evaluation {
        tonic::include_proto!("flagd.evaluation.v1");
    }
    /// `flagd.evaluation.v2`: the same, with optional values (newer providers).
    pub mod evaluation_v2 {
        tonic::include_proto!("flagd.evaluation.v2");
    }
    /// `flagd.sync.v1`: the in-process providers' sync service.
    pub mod sync {
        tonic::include_proto!("flagd.sync.v1");
    }
}

/// flagd's own ports, taken by an empty `[flagd]` section.
pub const DEFAULT_EVALUATION_ADDR: &str = "127.0.0.1:8013";
pub const DEFAULT_SYNC_ADDR: &str = "127.0.0.1:8015";

/// Most gRPC streams (event and sync streams) open at once per HTTP/2 connection: a provider
/// opens one or two; a proxy multiplexing many applications may open more.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Most static context fields (`[flagd.context]`): each is sent to every in-process provider
/// and merged into every evaluation.
const MAX_CONTEXT_FIELDS: usize = 64;

/// `[flagd]` in the node config, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagdSection {
    /// Where the evaluation service listens; default `127.0.0.1:8013`, `""` for off.
    pub evaluation: Option<String>,
    /// Where the sync service listens; default `127.0.0.1:8015`, `""` for off.
    pub sync: Option<String>,
    /// A PEM certificate chain and its key: both ports then speak TLS only (flagd's
    /// `--server-cert-path`, `--server-key-path`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Static evaluation context (flagd's `--context-value`): merged under every evaluation's
    /// context, and sent to in-process providers as the sync stream's `sync_context`.
    pub context: Option<Map<String, Value>>,
}

/// The checked `[flagd]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagdConfig {
    pub evaluation: Option<SocketAddr>,
    pub sync: Option<SocketAddr>,
    /// Certificate chain and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub context: Map<String, Value>,
}

impl FlagdConfig {
    pub fn from_section(section: &FlagdSection) -> Result<FlagdConfig, String> {
        let address = |option: &str, given: Option<&str>, default: &str| match given.unwrap_or(default) {
            "" => Ok(None),
            text => text.parse().map(Some).map_err(|_| format!("{option}: expected IP:PORT or \"\", got {text:?}")),
        };
        let tls = match (&section.tls_cert, &section.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err("tls_cert and tls_key go together: set both, or neither".to_owned()),
        };
        let context = section.context.clone().unwrap_or_default();
        if context.len() > MAX_CONTEXT_FIELDS {
            return Err(format!("context: at most {MAX_CONTEXT_FIELDS} fields, got {}", context.len()));
        }
        Ok(FlagdConfig {
            evaluation: address("evaluation", section.evaluation.as_deref(), DEFAULT_EVALUATION_ADDR)?,
            sync: address("sync", section.sync.as_deref(), DEFAULT_SYNC_ADDR)?,
            tls,
            context,
        })
    }
}

/// Why the flagd ports could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FlagdError {
    #[error("cannot listen on {addr}/TCP for flagd's {service} service: {error}")]
    Listen { service: &'static str, addr: SocketAddr, error: std::io::Error },
    #[error("[flagd] tls_cert/tls_key: cannot read {path}: {error}")]
    Tls { path: String, error: std::io::Error },
}

/// What both services share: the API's state (engine, auth, limits, metrics) and the static
/// context.
#[derive(Clone)]
pub struct Shared {
    pub api: ApiState,
    pub context: Arc<Map<String, Value>>,
    /// The sync streams' configurations, serialized once per change and scope.
    pub configurations: Arc<sync::ConfigurationCache>,
    /// Ends every stream when the node stops.
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn new(api: ApiState, config: &FlagdConfig, shutdown: CancellationToken) -> Shared {
        Shared { api, context: Arc::new(config.context.clone()), configurations: Arc::default(), shutdown }
    }
}

/// The last item of every stream: the node is stopping. An error, not a clean end: providers
/// reconnect after an error (the JavaScript provider only then), and find the node again once
/// it is back.
pub(crate) fn stopping<T>() -> impl futures_util::Stream<Item = Result<T, tonic::Status>> + Send {
    futures_util::stream::once(async { Err(tonic::Status::unavailable("the node is stopping; reconnect")) })
}

/// The bound ports of the flagd services, ready to serve.
pub struct Bound {
    evaluation: Option<std::net::TcpListener>,
    sync: Option<std::net::TcpListener>,
    identity: Option<tonic::transport::Identity>,
    pub evaluation_addr: Option<SocketAddr>,
    pub sync_addr: Option<SocketAddr>,
}

/// Binds the configured ports and reads the TLS files: checked at start, before any task runs.
pub async fn bind(config: &FlagdConfig) -> Result<Bound, FlagdError> {
    async fn listen(
        service: &'static str,
        addr: Option<SocketAddr>,
    ) -> Result<Option<std::net::TcpListener>, FlagdError> {
        let Some(addr) = addr else { return Ok(None) };
        let failed = |error| FlagdError::Listen { service, addr, error };
        let listener = TcpListener::bind(addr).await.map_err(failed)?;
        listener.into_std().map(Some).map_err(failed)
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|error| FlagdError::Tls { path: path.display().to_string(), error })
    };
    let identity = match &config.tls {
        Some((cert, key)) => Some(tonic::transport::Identity::from_pem(read(cert)?, read(key)?)),
        None => None,
    };
    let evaluation = listen("evaluation", config.evaluation).await?;
    let sync = listen("sync", config.sync).await?;
    let local = |l: &Option<std::net::TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    Ok(Bound { evaluation_addr: local(&evaluation), sync_addr: local(&sync), evaluation, sync, identity })
}

impl Bound {
    /// The servers, to run on the API runtime until `shutdown`.
    pub fn serve(self, shared: Shared) -> Vec<impl Future<Output = ()> + Send + use<>> {
        let shutdown = shared.shutdown.clone();
        let mut servers = Vec::new();
        if let Some(listener) = self.evaluation {
            let service = evaluation::service(shared.clone());
            servers.push(run("evaluation", listener, self.identity.clone(), service, shutdown.clone()));
        }
        if let Some(listener) = self.sync {
            let service = sync::service(shared);
            servers.push(run("sync", listener, self.identity, service, shutdown));
        }
        servers
    }
}

type Routes = tonic::service::Routes;

async fn run(
    service: &'static str,
    listener: std::net::TcpListener,
    identity: Option<tonic::transport::Identity>,
    routes: Routes,
    shutdown: CancellationToken,
) {
    // Registered with the reactor of the runtime that serves it (the API runtime).
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => return tracing::error!(service, %error, "flagd server failed"),
    };
    let mut builder =
        tonic::transport::Server::builder().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION).tcp_nodelay(true);
    if let Some(identity) = identity {
        builder = match builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)) {
            Ok(builder) => builder,
            Err(error) => return tracing::error!(service, %error, "flagd server: bad TLS certificate or key"),
        };
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = builder.add_routes(routes).serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
    if let Err(error) = served.await {
        tracing::error!(service, %error, "flagd server failed");
    }
}
