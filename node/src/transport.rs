//! The peer plane: one quinn endpoint per node, mutual TLS, a cached connection per peer.
//!
//! Gossip travels as QUIC datagrams when it fits and on unidirectional streams otherwise; log
//! sync uses bidirectional streams. Every stream opens with one byte naming its kind, so a
//! later protocol can add kinds without confusing an older peer (it resets unknown kinds).
//!
//! Dialing and accepting share one endpoint, so a peer's connection comes from its gossip
//! address: chitchat replies to the address a message came from, and that must be where the
//! peer listens.
//!
//! [`Transport::set_tls`] swaps in reloaded certificates: new handshakes, both ways, use them
//! at once, and every open connection whose peer certificate the new CA bundle does not trust
//! is closed, so dropping a CA shuts its holders out without waiting for connections to end.
//!
//! The types: `Transport` (a cheap-to-clone handle to one `quinn::Endpoint`), `Inboxes`,
//! `IncomingStream` and `TransportError`.
//!
//! - `connect` returns whichever comes first, its handshake or a connection to the same address
//!   entering the map (`Inner::ours_or_theirs`, woken by `Inner::registered`): after a heal, the
//!   peer's dial often lands while ours waits out QUIC's Initial backoff.
//! - `send_gossip` sends a gossip message as a datagram if it fits, otherwise on a uni stream;
//!   `open_stream` opens a bi stream for sync. Stream kind bytes: `STREAM_GOSSIP` = 1,
//!   `STREAM_PULL` = 2, `STREAM_PUSH` = 3 and `STREAM_CLOCK` = 4 (`sync::clock`).
//! - In `testsuite` builds, the link filter (`faults.rs`) is consulted on gossip send
//!   (`send_gossip`) and receipt (`deliver_gossip`), on stream open (`open_stream`, which fails
//!   with `TransportError::Filtered`) and on stream accept (`hand_over_stream`, which drops the
//!   stream). Only the sending side waits out a delay.
//! - `is_tls_failure` decides what counts as `grapevine_tls_handshake_failures_total`: only TLS
//!   alerts, which QUIC carries as crypto error codes 0x100 to 0x1ff (raised here or received from
//!   the peer). A peer shutting down, a lost connection or a timeout is logged at debug.
//! - Certificates are swappable (`set_tls`, called by `reload`, the task that polls
//!   `tls::reload::TlsWatch`). The server config lives in the endpoint
//!   (`Endpoint::set_server_config`); the client config, the `PeerTrust` and the
//!   `NodeIdentity` of the latest set (`Transport::trust` and `Transport::identity`, which sign and
//!   check gossip reports) live in `Inner::tls`, a `tokio::sync::watch` of `ActiveTls`, and every
//!   dial reads it (`Endpoint::connect_with`). `set_tls` builds both configs before it applies
//!   either, so a failure changes nothing.
//! - Each connection's task (`serve_connection`) watches `Inner::tls`. When it starts and after
//!   each reload, `still_trusted` checks the certificate the peer presented at the handshake
//!   (`Connection::peer_identity`) with the verifier of the connection's side and closes the
//!   connection with `CLOSE_UNTRUSTED` (1) if it no longer chains. The check runs in each
//!   connection's own task, not over the per-address map, because the map keeps one connection per
//!   address and two dials that cross leave a second one open.
//! - Limits: `MAX_GOSSIP_MESSAGE_BYTES`, `GOSSIP_INBOX_CAPACITY`, `STREAM_INBOX_CAPACITY`,
//!   `MAX_CONNECTIONS`, `HANDSHAKE_TIMEOUT`, `IDLE_TIMEOUT` and `KEEP_ALIVE`.

pub mod reload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connecting, Connection, ConnectionError, Endpoint, RecvStream, SendStream, Side};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use crate::metrics::{Metrics, WarnLimiter, reason};
use crate::tls::{NodeIdentity, NodeTls, PeerTrust, TlsError, certificate_names};

/// Largest gossip message accepted on a stream. chitchat builds messages of up to 65,510
/// bytes, a little over UDP's 65,507: the stream path must take them whole.
pub const MAX_GOSSIP_MESSAGE_BYTES: usize = 66 * 1024;

/// Gossip messages received but not yet taken by chitchat. chitchat handles a message in
/// microseconds; a full inbox means it is stalled, and dropping is what UDP would do.
const GOSSIP_INBOX_CAPACITY: usize = 1024;

/// Incoming sync streams waiting for the sync server; past it a stream is reset.
const STREAM_INBOX_CAPACITY: usize = 64;

/// Most open connections. Each costs a TLS session and buffers; a cluster of the member
/// ceiling (400) gossips with a few peers at a time, so this leaves room for sync too.
const MAX_CONNECTIONS: usize = 1024;

/// Most connections open at once with one peer (one certificate), whatever addresses it
/// comes from. A peer needs one, two while both sides dial at once, a few more across
/// restarts; past it a node with a valid certificate could take every connection slot.
const MAX_CONNECTIONS_PER_PEER: usize = 4;

/// How long a QUIC handshake may take before the peer is treated as unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection that hears nothing from its peer for this long closes itself, and the next
/// message dials afresh. Keep-alives hold live connections open however quiet, so this only
/// bounds how long messages to a peer that restarted on the same address (whose new endpoint
/// cannot reset the old connection) vanish: the chaos suite found 30 s islands with 30 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// How often a connection with nothing to send proves it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The kind byte of a unidirectional stream that carries one gossip message.
pub const STREAM_GOSSIP: u8 = 1;
/// The kind byte of a bidirectional stream that pulls generations (log sync).
pub const STREAM_PULL: u8 = 2;
/// The kind byte of a bidirectional stream that pushes new generations (eager push).
pub const STREAM_PUSH: u8 = 3;
/// The kind byte of a bidirectional stream that asks the peer's wall clock (`sync::clock`).
pub const STREAM_CLOCK: u8 = 4;

/// The application close code of a connection closed because a reload stopped trusting the
/// peer's certificate (0 is a shutdown). The peer redials and its handshake is refused.
pub const CLOSE_UNTRUSTED: u32 = 1;
/// The application close code of a connection over [`MAX_CONNECTIONS_PER_PEER`].
pub const CLOSE_TOO_MANY: u32 = 2;

/// Why the transport could not do something.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}/UDP: {error}")]
    /// The UDP port could not be bound.
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error(transparent)]
    /// The certificates could not be turned into a TLS config.
    Tls(#[from] TlsError),
    #[error("cannot dial {addr}: {error}")]
    /// quinn refused to start a connection (a bad address, a closed endpoint).
    Dial { addr: SocketAddr, error: String },
    #[error("handshake with {addr} timed out after {HANDSHAKE_TIMEOUT:?}")]
    /// The peer did not complete the handshake in time.
    HandshakeTimeout { addr: SocketAddr },
    #[error("connection to {addr} failed: {error}")]
    /// The handshake failed (TLS or transport error).
    Connection { addr: SocketAddr, error: ConnectionError },
    #[error("already {MAX_CONNECTIONS} connections open; refusing to dial {addr}")]
    /// The connection limit is reached.
    TooManyConnections { addr: SocketAddr },
    /// A stream could not be opened or written.
    #[error("stream to {addr} failed: {error}")]
    Stream { addr: SocketAddr, error: String },
    /// The test suite's link filter dropped it.
    #[error("the link filter drops traffic to {addr}")]
    Filtered { addr: SocketAddr },
}

/// A bidirectional stream a peer opened, after its kind byte.
pub struct IncomingStream {
    pub peer: SocketAddr,
    pub kind: u8,
    pub send: SendStream,
    pub recv: RecvStream,
}

/// What the transport hands to the tasks above it.
pub struct Inboxes {
    /// Raw gossip messages, with the address they came from.
    pub gossip: mpsc::Receiver<(SocketAddr, Bytes)>,
    /// Bidirectional streams opened by peers.
    pub streams: mpsc::Receiver<IncomingStream>,
}

/// A handle to the node's endpoint; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    /// The certificates of the latest load; every connection's task watches it.
    tls: watch::Sender<Arc<ActiveTls>>,
    /// Kept to build the configs of a reload the same way.
    transport_config: Arc<quinn::TransportConfig>,
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    /// Woken at each new entry of `connections`, for dials that would rather take it.
    registered: Notify,
    /// The names in each open connection's peer certificate, by its address: what gossip
    /// holds a member's claimed name to (`gossip::binding`). Copied on write: every gossip
    /// read takes the map, and connections come and go far less often.
    peer_names: Mutex<Arc<HashMap<SocketAddr, Vec<String>>>>,
    gossip_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    streams_tx: mpsc::Sender<IncomingStream>,
    metrics: Arc<Metrics>,
    warnings: WarnLimiter,
    #[cfg(feature = "testsuite")]
    filter: crate::faults::LinkFilter,
}

/// What new outgoing handshakes present and open connections are held to, replaced whole by
/// a reload. (The server side lives in the endpoint: `Endpoint::set_server_config`.)
struct ActiveTls {
    client: quinn::ClientConfig,
    trust: Arc<PeerTrust>,
    /// What gossip reports are signed with (`gossip::signed`).
    identity: Arc<NodeIdentity>,
}

/// The quinn configs of one certificate set: the server side, and the client side with the
/// trust that open connections are checked against.
fn quinn_configs(
    tls: &NodeTls,
    transport_config: &Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, ActiveTls), TlsError> {
    let server_crypto = QuicServerConfig::try_from(tls.server_config()?).map_err(|e| TlsError::Build(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport_config.clone());
    let client_crypto = QuicClientConfig::try_from(tls.client_config()?).map_err(|e| TlsError::Build(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport_config.clone());
    Ok((server, ActiveTls { client, trust: Arc::new(tls.peer_trust()?), identity: Arc::new(tls.identity()?) }))
}

impl Transport {
    /// Binds the endpoint on `listen` and starts accepting peers.
    pub fn bind(
        listen: SocketAddr,
        tls: &NodeTls,
        metrics: Arc<Metrics>,
    ) -> Result<(Transport, Inboxes), TransportError> {
        let mut transport_config = quinn::TransportConfig::default();
        transport_config.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits a varint")));
        transport_config.keep_alive_interval(Some(KEEP_ALIVE));
        let transport_config = Arc::new(transport_config);
        let (server_config, active) = quinn_configs(tls, &transport_config)?;
        let endpoint =
            Endpoint::server(server_config, listen).map_err(|error| TransportError::Bind { addr: listen, error })?;
        // The link filter is seeded by the bound port, so nodes of one process draw different losses.
        #[cfg(feature = "testsuite")]
        let filter_seed = u64::from(endpoint.local_addr().map_or(listen.port(), |bound| bound.port()));

        let (gossip_tx, gossip) = mpsc::channel(GOSSIP_INBOX_CAPACITY);
        let (streams_tx, streams) = mpsc::channel(STREAM_INBOX_CAPACITY);
        let inner = Arc::new(Inner {
            endpoint,
            tls: watch::Sender::new(Arc::new(active)),
            transport_config,
            connections: Mutex::new(HashMap::new()),
            registered: Notify::new(),
            peer_names: Mutex::new(Arc::default()),
            gossip_tx,
            streams_tx,
            metrics,
            warnings: WarnLimiter::new(Duration::from_secs(30)),
            #[cfg(feature = "testsuite")]
            filter: crate::faults::LinkFilter::new(filter_seed),
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok((Transport { inner }, Inboxes { gossip, streams }))
    }

    /// Swaps in a new certificate set: the next handshakes, incoming and outgoing, use it, and
    /// each open connection whose peer certificate it does not trust is closed by its task
    /// (`serve_connection`). Both configs are built before either is used: on an error
    /// nothing changed.
    pub fn set_tls(&self, tls: &NodeTls) -> Result<(), TransportError> {
        let (server_config, active) = quinn_configs(tls, &self.inner.transport_config)?;
        self.inner.endpoint.set_server_config(Some(server_config));
        self.inner.tls.send_replace(Arc::new(active));
        Ok(())
    }

    /// The address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.endpoint.local_addr().expect("a bound endpoint has an address")
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The node's certificate and key of the latest load, which sign its gossip reports.
    pub fn identity(&self) -> Arc<NodeIdentity> {
        self.inner.tls.borrow().identity.clone()
    }

    /// The CA bundle of the latest load, as a handshake checks it: peers' certificates in
    /// gossip are held to it. A reload makes a new one (compare with `Arc::ptr_eq`).
    pub fn trust(&self) -> Arc<PeerTrust> {
        self.inner.tls.borrow().trust.clone()
    }

    /// The names in the certificate of the peer of each open connection, by the peer's
    /// address. Dialing and accepting share one endpoint, so that is the peer's gossip address.
    pub fn peer_names(&self) -> Arc<HashMap<SocketAddr, Vec<String>>> {
        self.inner.peer_names.lock().expect("peer names lock poisoned").clone()
    }

    /// The link filter, for fault injection in tests.
    #[cfg(feature = "testsuite")]
    pub fn link_filter(&self) -> &crate::faults::LinkFilter {
        &self.inner.filter
    }

    /// The open connection to `addr`, dialing it if there is none.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        if let Some(connection) = self.inner.cached(addr) {
            return Ok(connection);
        }
        if self.inner.connection_count() >= MAX_CONNECTIONS {
            return Err(TransportError::TooManyConnections { addr });
        }
        // The name is not checked (see `tls`): peers are dialed by address.
        let client_config = self.inner.tls.borrow().client.clone();
        let connecting = self
            .inner
            .endpoint
            .connect_with(client_config, addr, "grapevine")
            .map_err(|e| TransportError::Dial { addr, error: e.to_string() })?;
        let connection =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.inner.ours_or_theirs(addr, connecting)).await {
                Err(_) => return Err(TransportError::HandshakeTimeout { addr }),
                Ok(Err(error)) => {
                    self.inner.handshake_failed(addr, &error, "outgoing");
                    return Err(TransportError::Connection { addr, error });
                }
                Ok(Ok(Dialed::Theirs(connection))) => return Ok(connection),
                Ok(Ok(Dialed::Ours(connection))) => connection,
            };
        self.inner.register(connection.clone());
        tokio::spawn(serve_connection(self.inner.clone(), connection.clone()));
        Ok(connection)
    }

    /// Opens a bidirectional stream of `kind` to `addr`.
    pub async fn open_stream(&self, addr: SocketAddr, kind: u8) -> Result<(SendStream, RecvStream), TransportError> {
        self.inner.admit(addr, Traffic::Sync).await.ok_or(TransportError::Filtered { addr })?;
        let connection = self.connect(addr).await?;
        let stream_error = |error: String| TransportError::Stream { addr, error };
        let (mut send, recv) = connection.open_bi().await.map_err(|e| stream_error(e.to_string()))?;
        send.write_all(&[kind]).await.map_err(|e| stream_error(e.to_string()))?;
        Ok((send, recv))
    }

    /// Sends one gossip message: as a datagram when it fits, else on a unidirectional stream.
    pub async fn send_gossip(&self, addr: SocketAddr, message: Bytes) -> Result<(), TransportError> {
        if self.inner.admit(addr, Traffic::Gossip).await.is_none() {
            self.inner.metrics.gossip_dropped.get_or_create(&reason("link_filter")).inc();
            return Ok(());
        }
        let connection = self.connect(addr).await?;
        let stream_error = |error: String| TransportError::Stream { addr, error };
        let length = message.len() as u64;
        if connection.max_datagram_size().is_some_and(|max| message.len() <= max) {
            connection.send_datagram(message).map_err(|e| stream_error(e.to_string()))?;
        } else {
            let mut send = connection.open_uni().await.map_err(|e| stream_error(e.to_string()))?;
            send.write_all(&[STREAM_GOSSIP]).await.map_err(|e| stream_error(e.to_string()))?;
            send.write_all(&message).await.map_err(|e| stream_error(e.to_string()))?;
            send.finish().map_err(|e| stream_error(e.to_string()))?;
        }
        self.inner.metrics.gossip_sent.inc();
        self.inner.metrics.gossip_bytes.get_or_create(&reason("sent")).inc_by(length);
        Ok(())
    }

    /// Closes every connection and waits briefly for peers to be told.
    pub async fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

/// What crosses a link, for the link filter: a gossip message, or a log-sync stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    Gossip,
    Sync,
}

/// How a dial ended: with our handshake, or with a connection that came up meanwhile.
enum Dialed {
    /// Our handshake completed: the connection is new and not yet registered.
    Ours(Connection),
    /// The peer dialed us (or another of our tasks dialed it) first: already registered and served.
    Theirs(Connection),
}

impl Inner {
    /// Our handshake with `addr`, or a connection to `addr` that registers while it runs,
    /// whichever comes first. After a partition heals, a handshake begun during it sends its
    /// next Initial only after QUIC's backoff (1 s, then 2 s, within `HANDSHAKE_TIMEOUT`), while
    /// the peer's own dial may land at once: the messages of a peer sender waiting on ours
    /// would otherwise wait out the timeout with a working connection in the map.
    async fn ours_or_theirs(&self, addr: SocketAddr, connecting: Connecting) -> Result<Dialed, ConnectionError> {
        tokio::pin!(connecting);
        loop {
            // Enabled before the map is read, so a registration in between still wakes us.
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            if let Some(connection) = self.cached(addr) {
                return Ok(Dialed::Theirs(connection));
            }
            tokio::select! {
                handshake = &mut connecting => return handshake.map(Dialed::Ours),
                () = &mut registered => {}
            }
        }
    }

    fn cached(&self, addr: SocketAddr) -> Option<Connection> {
        let connections = self.connections.lock().expect("connection map lock poisoned");
        connections.get(&addr).filter(|c| c.close_reason().is_none()).cloned()
    }

    fn connection_count(&self) -> usize {
        self.connections.lock().expect("connection map lock poisoned").len()
    }

    /// Open connections whose peer presented the same certificate as `connection`'s.
    fn connections_of_peer(&self, connection: &Connection) -> usize {
        let Some(certificate) = peer_certificate(connection) else { return 0 };
        let connections = self.connections.lock().expect("connection map lock poisoned");
        connections
            .values()
            .filter(|c| c.close_reason().is_none() && peer_certificate(c).as_deref() == Some(certificate.as_slice()))
            .count()
    }

    fn register(&self, connection: Connection) {
        let addr = connection.remote_address();
        let names = peer_certificate(&connection).map(|der| certificate_names(&CertificateDer::from(der)));
        let mut connections = self.connections.lock().expect("connection map lock poisoned");
        let mut peer_names = self.peer_names.lock().expect("peer names lock poisoned");
        Arc::make_mut(&mut peer_names).insert(addr, names.unwrap_or_default());
        drop(peer_names);
        connections.insert(addr, connection);
        drop(connections);
        self.registered.notify_waiters();
    }

    fn forget(&self, connection: &Connection) {
        let mut connections = self.connections.lock().expect("connection map lock poisoned");
        let addr = connection.remote_address();
        if connections.get(&addr).is_some_and(|c| c.stable_id() == connection.stable_id()) {
            connections.remove(&addr);
            Arc::make_mut(&mut self.peer_names.lock().expect("peer names lock poisoned")).remove(&addr);
        }
    }

    /// Counts a failed handshake and logs it, rate-limited: a rogue or misconfigured peer
    /// fails every gossip round.
    fn handshake_failed(&self, addr: SocketAddr, error: &ConnectionError, direction: &str) {
        if !is_tls_failure(error) {
            debug!(peer = %addr, %error, direction, "peer handshake did not complete");
            return;
        }
        self.metrics.tls_handshake_failures.inc();
        if self.warnings.allow(&format!("handshake {addr}")) {
            warn!(peer = %addr, %error, direction, "peer handshake failed (is its certificate from this cluster's CA?)");
        } else {
            debug!(peer = %addr, %error, direction, "peer handshake failed");
        }
    }

    /// Whether the link filter lets one message to or from `peer` through; waits out its delay.
    async fn admit(&self, peer: SocketAddr, traffic: Traffic) -> Option<()> {
        #[cfg(feature = "testsuite")]
        {
            let delay = self.filter.admit(peer, true, traffic == Traffic::Gossip)?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let _ = (peer, traffic);
        Some(())
    }

    /// Whether the link filter drops one incoming message from `peer` (no delay on receipt:
    /// the sender's filter delays).
    fn refuses(&self, peer: SocketAddr, traffic: Traffic) -> bool {
        #[cfg(feature = "testsuite")]
        return self.filter.admit(peer, false, traffic == Traffic::Gossip).is_none();
        #[cfg(not(feature = "testsuite"))]
        {
            let _ = (peer, traffic);
            false
        }
    }

    fn deliver_gossip(&self, from: SocketAddr, message: Bytes) {
        if self.refuses(from, Traffic::Gossip) {
            self.metrics.gossip_dropped.get_or_create(&reason("link_filter")).inc();
            return;
        }
        self.metrics.gossip_bytes.get_or_create(&reason("received")).inc_by(message.len() as u64);
        if self.gossip_tx.try_send((from, message)).is_err() {
            self.metrics.gossip_dropped.get_or_create(&reason("inbox_full")).inc();
        }
    }
}

/// True when a handshake failed on TLS (a certificate outside the CA, a bad signature, no
/// common ALPN), not because the peer timed out or shut down. QUIC carries TLS alerts as the
/// crypto error codes 0x100 to 0x1ff.
fn is_tls_failure(error: &ConnectionError) -> bool {
    let code = match error {
        ConnectionError::TransportError(error) => error.code,
        ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// The end-entity certificate the peer presented at the handshake (DER).
fn peer_certificate(connection: &Connection) -> Option<Vec<u8>> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    chain.first().map(|certificate| certificate.to_vec())
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        if inner.connection_count() >= MAX_CONNECTIONS {
            inner.metrics.peer_connections_refused.get_or_create(&reason("too_many")).inc();
            incoming.refuse();
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let connecting = match incoming.accept() {
                Ok(connecting) => connecting,
                Err(error) => return inner.handshake_failed(addr, &error, "incoming"),
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                Ok(Ok(connection)) => {
                    if inner.connections_of_peer(&connection) >= MAX_CONNECTIONS_PER_PEER {
                        inner.metrics.peer_connections_refused.get_or_create(&reason("per_peer")).inc();
                        let why = format!("already {MAX_CONNECTIONS_PER_PEER} connections open with this certificate");
                        connection.close(CLOSE_TOO_MANY.into(), why.as_bytes());
                        return;
                    }
                    inner.register(connection.clone());
                    serve_connection(inner, connection).await;
                }
                Ok(Err(error)) => inner.handshake_failed(addr, &error, "incoming"),
                Err(_) => debug!(peer = %addr, "incoming handshake timed out"),
            }
        });
    }
}

/// Reads everything a peer sends on one connection until it closes, or until a reload stops
/// trusting the peer's certificate.
async fn serve_connection(inner: Arc<Inner>, connection: Connection) {
    let peer = connection.remote_address();
    let mut tls = inner.tls.subscribe();
    // Checked once at the start too: a handshake that began before a reload used the old set.
    tls.mark_changed();
    loop {
        tokio::select! {
            changed = tls.changed() => {
                let active = tls.borrow_and_update().clone();
                if changed.is_err() || !still_trusted(&connection, &active.trust) {
                    break;
                }
            },
            datagram = connection.read_datagram() => match datagram {
                Ok(message) => inner.deliver_gossip(peer, message),
                Err(_) => break,
            },
            stream = connection.accept_uni() => match stream {
                Ok(recv) => { tokio::spawn(read_gossip_stream(inner.clone(), peer, recv)); }
                Err(_) => break,
            },
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => { tokio::spawn(hand_over_stream(inner.clone(), peer, send, recv)); }
                Err(_) => break,
            },
        }
    }
    inner.forget(&connection);
}

/// Whether the peer's certificate chains to the CA bundle in `trust`; closes the connection
/// (code [`CLOSE_UNTRUSTED`]) when it does not.
fn still_trusted(connection: &Connection, trust: &PeerTrust) -> bool {
    let chain = connection.peer_identity().and_then(|identity| identity.downcast::<Vec<CertificateDer>>().ok());
    let peer_is_server = connection.side() == Side::Client;
    let verdict = match &chain {
        Some(chain) => trust.check(chain, peer_is_server),
        None => Err(rustls::Error::NoCertificatesPresented),
    };
    let Err(error) = verdict else { return true };
    let peer = connection.remote_address();
    info!(%peer, %error, "closed a connection whose peer certificate is no longer trusted");
    connection.close(CLOSE_UNTRUSTED.into(), b"certificate no longer trusted");
    false
}

async fn read_gossip_stream(inner: Arc<Inner>, peer: SocketAddr, mut recv: RecvStream) {
    match recv.read_to_end(MAX_GOSSIP_MESSAGE_BYTES + 1).await {
        Ok(bytes) if bytes.first() == Some(&STREAM_GOSSIP) => {
            inner.deliver_gossip(peer, Bytes::from(bytes).slice(1..));
        }
        Ok(_) => {
            inner.metrics.peer_malformed.get_or_create(&reason("unknown_stream_kind")).inc();
        }
        Err(error) => {
            inner.metrics.peer_malformed.get_or_create(&reason("gossip_stream")).inc();
            debug!(%peer, %error, "dropped gossip stream");
        }
    }
}

async fn hand_over_stream(inner: Arc<Inner>, peer: SocketAddr, send: SendStream, mut recv: RecvStream) {
    let mut kind = [0u8; 1];
    let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, recv.read_exact(&mut kind)).await;
    if !matches!(read, Ok(Ok(()))) {
        inner.metrics.peer_malformed.get_or_create(&reason("stream_kind")).inc();
        return;
    }
    if inner.refuses(peer, Traffic::Sync) {
        return;
    }
    let stream = IncomingStream { peer, kind: kind[0], send, recv };
    if inner.streams_tx.try_send(stream).is_err() {
        inner.metrics.sync_served.get_or_create(&reason("busy")).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ca_init, ca_issue};

    /// A dial whose handshake stalls (its first Initial was lost, as in a partition) takes the
    /// connection the peer dials meanwhile, instead of waiting for QUIC to retransmit after
    /// about a second, or out the handshake timeout.
    #[tokio::test]
    async fn a_stalled_dial_takes_the_connection_its_peer_dials_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca_init(&ca).unwrap();
        for name in ["a", "b"] {
            ca_issue(&ca, name, &["127.0.0.1".parse().unwrap()], &[], &dir.path().join(name)).unwrap();
        }
        let bind = |name: &str, addr: SocketAddr| {
            let tls = NodeTls::load(&dir.path().join(name)).unwrap();
            Transport::bind(addr, &tls, Arc::new(Metrics::new())).unwrap()
        };
        let (a, _a_inboxes) = bind("a", "127.0.0.1:0".parse().unwrap());
        // b's address answers nothing at first: a's first Initial is lost.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_addr = silent.local_addr().unwrap();
        let dialing = tokio::spawn({
            let a = a.clone();
            async move { a.connect(b_addr).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(silent);
        let (b, _b_inboxes) = bind("b", b_addr);
        b.connect(a.local_addr()).await.unwrap();
        // Well before a's Initial is retransmitted (quinn's first PTO is about 1 s).
        let connection = tokio::time::timeout(Duration::from_millis(700), dialing)
            .await
            .expect("the dial still waits on its own handshake")
            .unwrap()
            .unwrap();
        assert_eq!(connection.side(), Side::Server, "the dial should return the connection b opened");
    }

    /// A node that dials from many addresses with one certificate gets at most
    /// [`MAX_CONNECTIONS_PER_PEER`] connections; the next is closed, saying why, and counted.
    #[tokio::test]
    async fn one_peer_gets_a_bounded_number_of_connections() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca_init(&ca).unwrap();
        for name in ["a", "b"] {
            ca_issue(&ca, name, &["127.0.0.1".parse().unwrap()], &[], &dir.path().join(name)).unwrap();
        }
        let bind = |name: &str| {
            let tls = NodeTls::load(&dir.path().join(name)).unwrap();
            Transport::bind("127.0.0.1:0".parse().unwrap(), &tls, Arc::new(Metrics::new())).unwrap()
        };
        let (server, _server_inboxes) = bind("b");
        let mut clients = Vec::new();
        let mut connections = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_PEER + 1 {
            let (client, inboxes) = bind("a");
            connections.push(client.connect(server.local_addr()).await.unwrap());
            clients.push((client, inboxes));
            // The server registers each connection once its handshake is done.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let last = connections.last().unwrap();
        let why = tokio::time::timeout(Duration::from_secs(5), last.closed()).await.unwrap();
        let quinn::ConnectionError::ApplicationClosed(close) = why else { panic!("{why:?}") };
        assert_eq!(close.error_code, CLOSE_TOO_MANY.into());
        assert_eq!(String::from_utf8_lossy(&close.reason), "already 4 connections open with this certificate");
        assert!(connections[..MAX_CONNECTIONS_PER_PEER].iter().all(|c| c.close_reason().is_none()));
        assert_eq!(server.metrics().peer_connections_refused.get_or_create(&reason("per_peer")).get(), 1);
    }
}
