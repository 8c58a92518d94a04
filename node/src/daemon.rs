//! The daemon: loads certificates and the store, binds the sockets, wires the tasks, and
//! shuts them all down when told.
//!
//! Start-up checks every resource (certificates, store, both ports) before it starts any task,
//! so a node that cannot run says why and leaves nothing behind. [`start`] returns a [`RunningNode`]; the binary wires
//! SIGINT/SIGTERM to [`RunningNode::stop`], the demo and tests call it themselves.
//!
//! **Architecture Invariant:** request work never runs on the runtime that drives gossip and sync.
//! The HTTP API (both listeners) is served by `ApiRuntime`, a multi-thread runtime of its own (the
//! cores, at most `MAX_API_THREADS`); gossip, sync, the engine, health, alerts, files and TLS
//! reload run on the node's main runtime. A costly evaluation, or many, can slow other requests,
//! never heartbeats (issue 17, D72). The listeners are bound on the main runtime and handed over as
//! std sockets; `ApiRuntime` shuts down in the background on drop.
//!
//! - `run(config, shutdown)` calls `start`, waits for the shutdown future, then calls
//!   `RunningNode::stop`. The demo, the scenario runner and the in-process benches call `start` and
//!   `stop` themselves, and reach into a running node through `RunningNode::engine` (the view and a
//!   `watch` on it), `RunningNode::metrics` and, in `testsuite` builds, `RunningNode::link_filter`.
//! - Start-up order: load TLS files (the certificate must name the node: `StartError::Name`), open
//!   and lock the store, load and validate the snapshot, every stored generation, the released set
//!   and the reverts (`engine::Stored`), create the `Health` handle, bind the API's TCP port, bind
//!   the admin socket (`bind_socket`: a stale file is replaced, one another process listens on
//!   refuses the start; then `chmod` to `socket_mode`), bind UDP (`Transport::bind`, which spawns
//!   the accept loop), start gossip, watch it for a live namesake
//!   (`binding::live_namesake_at_start`; `StartError::NameInUse`), create the `Alerts` handle,
//!   start the engine (`EngineParts`), then spawn the puller, the pusher, the sync server, the
//!   health task (`health::run` with a `HealthTask`), the watch feed (`api::watch::Feed::start`),
//!   the API server, with webhooks configured the alerts delivery task, with `[audit]` the audit
//!   task (`audit::run`; its file and cursor are opened with the store, `StartError::Audit`), and
//!   the files task (`files::run`). `PeerHoldings` and the `PullRequests` channel are shared between them.
//! - If any resource fails, `start` returns before any task has started. If gossip fails to start,
//!   the transport is closed first.
//! - Gossip starts with the keys `api`, `labels`, `wire` (`wire::newest()`) and `signing`
//!   (`Trust::fingerprint`). Without `[signing]` roots, `start` warns `changes are not signed
//!   ([signing] names no root key) ...`.
//! - `open_store` opens and reads the store on a blocking task. When that fails with damage
//!   (`Store::is_corruption`, or a panic inside redb, caught as the task's join error), it moves
//!   the file aside (`Store::quarantine`), logs the reason at `error`, opens a fresh store, and
//!   passes the reason to the engine as `EngineParts::recovering` (D54).
//! - Shutdown: `start` creates one `tokio_util::sync::CancellationToken`, and the puller, the
//!   pusher, the sync server, the health task, the alerts delivery task (dropping the alerts still
//!   queued or in flight), the watch feed, the files task (between renders) and the axum server
//!   (`with_graceful_shutdown`) all end when it is cancelled. `RunningNode::stop` cancels the
//!   token; shuts chitchat down and waits for it; closes the QUIC endpoint (waiting at most 1 s for
//!   it to go idle); drops its own `EngineHandle`; and waits for the tasks until one deadline,
//!   `SHUTDOWN_GRACE` after this point, warning if they have not all ended. The engine task ends
//!   once every `EngineHandle` has been dropped, and the store is released with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grapevine_proto::{NodeName, wire};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::alerts::Alerts;
use crate::api::{ApiParts, ApiState, router};
use crate::clock;
use crate::config::Config;
use crate::engine::{self, EngineHandle, EngineParts, Stored};
use crate::gossip::{Gossip, GossipConfig, KEY_API, KEY_LABELS, KEY_SIGNING, KEY_WIRE};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::sync::{PUSH_QUEUE_CAPACITY, PeerHoldings, PullRequests, Server, run_puller, run_pusher, run_server};
use crate::tls::TlsError;
use crate::tls::reload::TlsWatch;
use crate::transport::{Transport, TransportError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates in {dir}: {error}")]
    Tls { dir: String, error: TlsError },
    /// The certificate is issued for another node: the node would write under one name and
    /// authenticate as another (D70).
    #[error("--name {name} but the certificate in {dir} is issued for {found}")]
    Name { name: String, dir: String, found: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot listen on {addr}/TCP for the API: {error}")]
    Api { addr: SocketAddr, error: std::io::Error },
    #[error("admin socket {path}: {error} (set [auth] socket, or \"\" for none)")]
    Socket { path: String, error: std::io::Error },
    #[error(transparent)]
    Flagd(#[from] crate::flagd::FlagdError),
    #[error("gossip failed to start: {0}")]
    Gossip(anyhow::Error),
    /// The `[audit]` file or the audit cursor in the data directory cannot be opened.
    #[error("[audit]: {0}")]
    Audit(String),
    /// Another process gossips live under this node's name: both would write generations under
    /// one name, and each node would keep whichever it heard first.
    #[error(
        "node {name} is already live at {address}: refusing to start a second process under the same name (was a second certificate issued for {name}?)"
    )]
    NameInUse { name: String, address: SocketAddr },
}

/// Binds the admin socket at `path` with `mode`: a file left by a node that stopped uncleanly
/// is replaced, one another process still listens on is refused.
fn bind_socket(
    crate::auth::AdminSocket { path, mode, .. }: &crate::auth::AdminSocket,
) -> Result<(tokio::net::UnixListener, std::path::PathBuf), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |error: std::io::Error| StartError::Socket { path: path.display().to_string(), error };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            let in_use = std::io::Error::new(std::io::ErrorKind::AddrInUse, "another process listens on it");
            return Err(failed(in_use));
        }
        std::fs::remove_file(path).map_err(failed)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).map_err(failed)?;
    Ok((listener, path.clone()))
}

/// Opens the store and reads it whole. A damaged store (unreadable by redb, failing its
/// integrity check, or holding a record that fails its hash) is never served from: the file is
/// moved aside, the node starts with an empty store and recovers the log from its peers, and
/// says so; until it has caught up it refuses reads and changes (see `engine::View::recovering`).
async fn open_store(config: &Config) -> Result<(Arc<Store>, Stored, Option<String>), StartError> {
    let read = |config: &Config| {
        let (data, name) = (config.data.clone(), config.name.clone());
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&data, &name)?;
            let stored = Stored {
                snapshot: store.snapshot()?,
                generations: store.load()?,
                released: store.released()?,
                reverts: store.reverts()?,
            };
            Ok::<_, StoreError>((Arc::new(store), stored))
        })
    };
    let damage = match read(config).await {
        Ok(Ok((store, stored))) => {
            // A recovery cut short by a restart goes on: the store is not whole yet.
            let unfinished = store.recovering()?;
            if let Some(reason) = &unfinished {
                tracing::warn!(%reason, "still recovering the log from peers after a damaged store");
            }
            return Ok((store, stored, unfinished));
        }
        Ok(Err(error)) if Store::is_corruption(&error) => error.to_string(),
        Ok(Err(error)) => return Err(error.into()),
        // A damaged page can make the database library panic; the task's end closed the file.
        Err(panic) => format!("store {}: reading it failed: {panic}", config.data.display()),
    };
    let aside = Store::quarantine(&config.data)?;
    let reason = format!("{damage}; moved aside to {}", aside.display());
    tracing::error!(%reason, "the store is damaged: starting empty and recovering the log from peers; reads and changes are refused until caught up");
    let (store, stored) = read(config).await.expect("store task panicked")?;
    store.set_recovering(Some(&reason))?;
    Ok((store, stored, Some(reason)))
}

/// A node that is running.
pub struct RunningNode {
    pub name: NodeName,
    /// Where peers reach this node.
    pub gossip_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    shutdown: CancellationToken,
    transport: Transport,
    gossip: Arc<Gossip>,
    engine: EngineHandle,
    tasks: Vec<JoinHandle<()>>,
    /// Where the HTTP API runs: apart from the tasks that drive gossip and sync.
    api_runtime: ApiRuntime,
}

/// Most worker threads of the API runtime: the machine's cores, up to this many. Evaluation is
/// CPU work; threads past the cores only add switching, and a node of many cores serves the
/// applications of one host.
const MAX_API_THREADS: usize = 8;

/// The runtime of the HTTP API (OFREP evaluation, admin, SSE), apart from the one that runs
/// gossip, sync, the engine and health: a request that takes the CPU (a costly targeting
/// rule, a burst of evaluations) can then slow other requests, never the failure detector's
/// heartbeats or log sync (issue 17: two slow evaluations stalled gossip until peers marked
/// the node dead). Stopped in the background on drop: dropping a runtime where a task awaits
/// would panic.
struct ApiRuntime(Option<tokio::runtime::Runtime>);

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl ApiRuntime {
    fn start() -> std::io::Result<ApiRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores().min(MAX_API_THREADS))
            .thread_name("grapevine-api")
            .enable_all()
            .build()?;
        Ok(ApiRuntime(Some(runtime)))
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        self.0.as_ref().expect("the API runtime runs until dropped").spawn(task)
    }
}

impl Drop for ApiRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Checks every resource, then starts the node's tasks.
pub async fn start(config: Config) -> Result<RunningNode, StartError> {
    #[cfg(feature = "testsuite")]
    if let Some(version) = config.test_wire_version {
        wire::act_as_version(version);
    }
    let dir = config.tls.display().to_string();
    // The name the certificate must carry: the node's own, unless a test plays a modified build.
    #[cfg(feature = "testsuite")]
    let certificate_name = match config.test_skip_name_checks {
        true => crate::tls::NodeTls::load(&config.tls).ok().and_then(|tls| tls.names().into_iter().next()),
        false => None,
    }
    .unwrap_or_else(|| config.name.to_string());
    #[cfg(not(feature = "testsuite"))]
    let certificate_name = config.name.to_string();
    let (tls_watch, tls) = TlsWatch::load(&config.tls, &certificate_name).map_err(|error| match error {
        TlsError::WrongName { expected, found } => StartError::Name { name: expected, dir: dir.clone(), found },
        error => StartError::Tls { dir: dir.clone(), error },
    })?;
    let (store, stored, recovering) = open_store(&config).await?;
    let audit = match &config.audit {
        Some(audit) => Some(crate::audit::Audit::open(audit, &config.data).map_err(StartError::Audit)?),
        None => None,
    };
    let health = Health::new(config.health.clone());
    let api_listener =
        TcpListener::bind(config.api).await.map_err(|error| StartError::Api { addr: config.api, error })?;
    let api_addr = api_listener.local_addr().map_err(|error| StartError::Api { addr: config.api, error })?;
    let socket_listener = config.auth.socket.as_ref().map(bind_socket).transpose()?;
    let flagd = match &config.flagd {
        Some(flagd) => Some((crate::flagd::bind(flagd).await?, flagd)),
        None => None,
    };
    let api_runtime = ApiRuntime::start().map_err(|error| StartError::Api { addr: api_addr, error })?;
    // Served by the API runtime, whose reactor takes it over.
    let api_listener = api_listener.into_std().map_err(|error| StartError::Api { addr: api_addr, error })?;
    let metrics = Arc::new(Metrics::new());
    // Binding starts the accept loop: the last check, so a failure leaves no task behind.
    let (transport, inboxes) = Transport::bind(config.listen, &tls, metrics.clone())?;
    #[cfg(feature = "testsuite")]
    if config.test_link_delay_ms > 0 {
        let rule = crate::faults::LinkRule { delay_ms: config.test_link_delay_ms, ..Default::default() };
        transport.link_filter().set(None, rule);
    }
    // Bound to port 0 (demo, tests): advertise the port the endpoint really has.
    let gossip_addr = config.advertise.unwrap_or_else(|| transport.local_addr());

    let gossip_config = GossipConfig {
        name: config.name.clone(),
        cluster_id: config.gossip_cluster_id(),
        advertise: gossip_addr,
        seeds: config.seeds.clone(),
        interval: config.gossip_interval,
        dead_node_grace_period: config.dead_node_grace_period,
        incarnation: clock::unix_ms(),
    };
    let initial_keys = vec![
        (KEY_API.to_owned(), format!("http://{}", reachable(api_addr, gossip_addr))),
        (KEY_LABELS.to_owned(), config.labels_text()),
        (KEY_WIRE.to_owned(), wire::newest().to_string()),
        (KEY_SIGNING.to_owned(), config.trust.fingerprint()),
    ];
    if !config.trust.required() {
        tracing::warn!(
            "changes are not signed ([signing] names no root key): any node with a cluster certificate can make one; see docs/security.md"
        );
    }
    let gossip = match Gossip::start(&gossip_config, transport.clone(), inboxes.gossip, initial_keys).await {
        Ok(gossip) => gossip,
        Err(error) => {
            transport.close().await;
            return Err(StartError::Gossip(error));
        }
    };
    #[cfg(feature = "testsuite")]
    let namesake_check = !config.test_skip_name_checks;
    #[cfg(not(feature = "testsuite"))]
    let namesake_check = true;
    if namesake_check
        && let Err(namesake) = crate::gossip::binding::live_namesake_at_start(&gossip, config.gossip_interval).await
    {
        gossip.shutdown().await;
        transport.close().await;
        return Err(StartError::NameInUse { name: config.name.to_string(), address: namesake.address });
    }
    let gossip = Arc::new(gossip);
    let shutdown = CancellationToken::new();
    let (alerts, alerts_task) = Alerts::new(&config.alerts, metrics.clone(), shutdown.clone());
    let (pushes, push_jobs) = mpsc::channel(PUSH_QUEUE_CAPACITY);
    let trust = Arc::new(config.trust.clone());
    let offsets = crate::clock::Offsets::default();
    let freezes = Arc::new(config.freezes.clone());
    let parts = EngineParts {
        name: config.name.clone(),
        max_clock_offset_ms: config.max_clock_offset_ms,
        clock_skew_ms: config.clock_skew_ms(),
        store: store.clone(),
        gossip: gossip.clone(),
        metrics: metrics.clone(),
        pushes,
        retention: config.retention,
        health: health.clone(),
        alerts: alerts.clone(),
        recovering,
        trust: trust.clone(),
        offsets: offsets.clone(),
        origins: crate::origin::Origins {
            transport: transport.clone(),
            cluster: config.cluster.clone(),
            unproven: config.unproven.clone(),
        },
        freezes: freezes.clone(),
    };
    let (engine, engine_task) = engine::spawn(parts, stored).await;

    let holdings = Arc::new(PeerHoldings::default());
    let (pulls, pull_requests) = PullRequests::channel();
    let puller = run_puller(
        transport.clone(),
        engine.clone(),
        gossip.clone(),
        pull_requests,
        config.gossip_interval,
        shutdown.clone(),
    );
    let pusher = run_pusher(
        config.name.clone(),
        transport.clone(),
        engine.clone(),
        gossip.clone(),
        holdings.clone(),
        push_jobs,
        shutdown.clone(),
    );
    let server = Server {
        store: store.clone(),
        engine: engine.clone(),
        transport: transport.clone(),
        pulls,
        clock_skew_ms: config.clock_skew_ms(),
    };
    let prober = crate::sync::clock::Prober {
        transport: transport.clone(),
        gossip: gossip.clone(),
        offsets: offsets.clone(),
        metrics: metrics.clone(),
        clock_skew_ms: config.clock_skew_ms(),
        max_clock_offset_ms: config.max_clock_offset_ms,
    };
    let prober = crate::sync::clock::run_prober(prober, shutdown.clone());
    let server = run_server(server, inboxes.streams, shutdown.clone());
    let binding_watch =
        crate::gossip::binding::run_watch(gossip.clone(), alerts.clone(), config.gossip_interval, shutdown.clone());
    let health_task = health::HealthTask {
        health: health.clone(),
        gossip: gossip.clone(),
        alerts,
        metrics: metrics.clone(),
        name: config.name.clone(),
    };
    let health_task = health::run(health_task, shutdown.clone());
    let (feed, feed_task) = crate::api::watch::Feed::start(engine.clone(), shutdown.clone());
    let files = crate::files::Files::default();
    let (files_health, metrics_for_files) = (health.clone(), metrics.clone());
    let api_state_metrics = metrics.clone();
    let api_state = ApiState::from(ApiParts {
        auth: Arc::new(config.auth.clone()),
        trust,
        limits: Arc::new(crate::api::limits::RateLimits::new(config.limits)),
        store,
        data: config.data.clone(),
        offsets,
        max_clock_offset_ms: config.max_clock_offset_ms,
        clock_skew_ms: config.clock_skew_ms(),
        freezes,
        // Half the cores at most on runaway evaluations: the rest stay for gossip and requests.
        evaluations: crate::api::budget::Budget::new(cores() / 2, metrics.clone()),
        feed,
        files: files.clone(),
        holdings,
        health,
        default_policy: config.rollout.clone(),
        fractional: config.fractional,
        #[cfg(feature = "testsuite")]
        transport: transport.clone(),
        name: config.name.clone(),
        cluster: config.cluster.clone(),
        cell: config.cell.clone(),
        engine: engine.clone(),
        gossip: gossip.clone(),
        metrics,
    });
    let flagd_servers = flagd.map(|(bound, flagd)| {
        let (evaluation, sync) = (bound.evaluation_addr, bound.sync_addr);
        info!(evaluation = ?evaluation, sync = ?sync, "flagd gRPC services listening");
        bound.serve(crate::flagd::Shared::new(api_state.clone(), flagd, shutdown.clone()))
    });
    let api_connections = config.limits.api_connections.get() as usize;
    let socket_api = socket_listener.map(|(listener, path)| {
        let (app, shutdown) = (router(api_state.clone()), shutdown.clone());
        async move {
            let listener = match listener.into_std().and_then(tokio::net::UnixListener::from_std) {
                Ok(listener) => listener,
                Err(error) => return tracing::error!(%error, "admin socket server failed"),
            };
            let app = app.into_make_service_with_connect_info::<crate::api::access::SocketPeer>();
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
                tracing::error!(%error, "admin socket server failed");
            }
            let _ = std::fs::remove_file(path);
        }
    });
    let api_shutdown = shutdown.clone();
    let api = async move {
        // Registered with the API runtime's reactor, which serves it.
        let listener = match TcpListener::from_std(api_listener) {
            Ok(listener) => listener,
            Err(error) => return tracing::error!(%error, "API server failed"),
        };
        let node = api_state.name.to_string();
        let listener =
            crate::api::limits::LimitedListener::new(listener, api_connections, node, api_state.metrics.clone());
        // With the client's address, by which anonymous clients are rate-limited.
        let app = router(api_state).into_make_service_with_connect_info::<crate::api::limits::ClientAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(api_shutdown.cancelled_owned());
        if let Err(error) = serve.await {
            tracing::error!(%error, "API server failed");
        }
    };
    let mut tasks = vec![
        tokio::spawn(puller),
        tokio::spawn(pusher),
        tokio::spawn(server),
        tokio::spawn(prober),
        api_runtime.spawn(api),
        tokio::spawn(health_task),
        tokio::spawn(binding_watch),
        engine_task,
    ];
    tasks.extend(alerts_task.map(tokio::spawn));
    if let Some(audit) = audit {
        let (engine, metrics, shutdown) = (engine.clone(), api_state_metrics.clone(), shutdown.clone());
        tasks.push(tokio::spawn(crate::audit::run(audit, engine, metrics, shutdown)));
    }
    tasks.extend(socket_api.map(|socket_api| api_runtime.spawn(socket_api)));
    tasks.extend(flagd_servers.into_iter().flatten().map(|server| api_runtime.spawn(server)));
    tasks.push(tokio::spawn(feed_task));
    let files_task = crate::files::FilesTask {
        files: config.files.clone(),
        engine: engine.clone(),
        health: files_health,
        metrics: metrics_for_files,
        data: config.data.clone(),
        statuses: files.clone(),
    };
    tasks.push(tokio::spawn(crate::files::run(files_task, shutdown.clone())));
    tasks.push(tokio::spawn(crate::transport::reload::run(tls_watch, transport.clone(), shutdown.clone())));
    info!(node = %config.name, gossip = %gossip_addr, api = %api_addr, "node started");
    Ok(RunningNode {
        name: config.name,
        gossip_addr,
        api_addr,
        shutdown,
        transport,
        gossip,
        engine,
        tasks,
        api_runtime,
    })
}

/// The API address as peers should print it: the gossip host when the API listens on any.
fn reachable(api: SocketAddr, gossip: SocketAddr) -> SocketAddr {
    if api.ip().is_unspecified() { SocketAddr::new(gossip.ip(), api.port()) } else { api }
}

/// How long shutdown waits, in all, for tasks to end before it lets them go. Well under
/// systemd's `TimeoutStopSec=15` in `deploy/systemd/grapevine.service`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl RunningNode {
    /// The node's engine: its current view, and a watch on every new one.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.transport.metrics()
    }

    /// The link filter of this node's transport, for fault injection in tests.
    #[cfg(feature = "testsuite")]
    pub fn link_filter(&self) -> &crate::faults::LinkFilter {
        self.transport.link_filter()
    }

    /// Stops every task, closes the sockets and releases the store.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.gossip.shutdown().await;
        self.transport.close().await;
        drop(self.gossip);
        // The engine ends (and releases the store) once its last handle is gone.
        drop(self.engine);
        let deadline = clock::now() + SHUTDOWN_GRACE;
        for task in self.tasks {
            if tokio::time::timeout_at(deadline.into(), task).await.is_err() {
                tracing::warn!("tasks did not stop within {SHUTDOWN_GRACE:?}; exiting without them");
                break;
            }
        }
        drop(self.api_runtime);
        info!(node = %self.name, "node stopped");
    }
}

/// Runs a node until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), StartError> {
    let node = start(config).await?;
    shutdown.await;
    node.stop().await;
    Ok(())
}
