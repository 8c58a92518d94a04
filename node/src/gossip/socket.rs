//! chitchat's `Transport` and `Socket` over the node's QUIC endpoint: `send` queues per peer
//! and returns at once (it runs inside chitchat's single gossip loop, which must never wait on a
//! handshake), one sender task per peer drains its queue; `recv` reads what the transport's
//! gossip streams delivered. Counted: `grapevine_gossip_received_total`,
//! `grapevine_gossip_dropped_total{reason="queue_full"|"malformed"|"send_failed"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chitchat::transport::{Socket, Transport as ChitchatTransport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use tokio::sync::mpsc;
use tracing::debug;

use super::heard::HeardFrom;
use crate::clock;
use crate::metrics::{Metrics, reason};
use crate::transport::Transport;

/// Gossip messages waiting to be sent to one peer. chitchat sends a few per round; a full
/// queue means the peer is unreachable or slow, and the message is dropped as UDP would.
const PEER_QUEUE_CAPACITY: usize = 16;

/// A peer's sender task ends after this long without messages, so unused peers cost nothing.
const PEER_SENDER_IDLE: Duration = Duration::from_secs(60);

/// Most peers with a live sender task; past it, messages to new peers are dropped.
const MAX_PEER_SENDERS: usize = 1024;

/// chitchat's `Transport` on our endpoint. chitchat calls `open` once, with the address the
/// endpoint is already bound to.
pub(super) struct QuicGossip {
    pub(super) transport: Transport,
    pub(super) inbox: Mutex<Option<mpsc::Receiver<(SocketAddr, Bytes)>>>,
    pub(super) heard: Arc<HeardFrom>,
}

#[async_trait]
impl ChitchatTransport for QuicGossip {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let bound = self.transport.local_addr();
        anyhow::ensure!(
            listen_addr == bound,
            "gossip must listen on the endpoint's address {bound}, got {listen_addr}"
        );
        let inbox = self.inbox.lock().expect("inbox lock poisoned").take();
        let inbox = inbox.ok_or_else(|| anyhow::anyhow!("the gossip socket of {bound} is already open"))?;
        let heard = self.heard.clone();
        Ok(Box::new(GossipSocket { transport: self.transport.clone(), inbox, peers: HashMap::new(), heard }))
    }
}

/// chitchat's `Socket`: `send` queues and returns at once (it runs inside chitchat's single
/// gossip loop, which must never wait on a handshake); `recv` is cancel-safe (an mpsc recv).
struct GossipSocket {
    transport: Transport,
    inbox: mpsc::Receiver<(SocketAddr, Bytes)>,
    peers: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    heard: Arc<HeardFrom>,
}

impl GossipSocket {
    fn metrics(&self) -> &Metrics {
        self.transport.metrics()
    }

    fn sender_for(&mut self, to: SocketAddr) -> Option<&mpsc::Sender<Bytes>> {
        if self.peers.get(&to).is_none_or(|sender| sender.is_closed()) {
            if self.peers.len() >= MAX_PEER_SENDERS {
                self.peers.retain(|_, sender| !sender.is_closed());
                if self.peers.len() >= MAX_PEER_SENDERS {
                    return None;
                }
            }
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
            tokio::spawn(run_peer_sender(self.transport.clone(), to, receiver));
            self.peers.insert(to, sender);
        }
        self.peers.get(&to)
    }
}

#[async_trait]
impl Socket for GossipSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let bytes = Bytes::from(message.serialize_to_vec());
        let queued = self.sender_for(to).is_some_and(|sender| sender.try_send(bytes).is_ok());
        if !queued {
            self.metrics().gossip_dropped.get_or_create(&reason("queue_full")).inc();
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (from, bytes) = self.inbox.recv().await.ok_or_else(|| anyhow::anyhow!("the transport has stopped"))?;
            match ChitchatMessage::deserialize(&mut &bytes[..]) {
                Ok(message) => {
                    self.metrics().gossip_received.inc();
                    // Before chitchat applies it: the key events it fires then find the sender
                    // already counted as reachable.
                    self.heard.record(from, clock::now());
                    return Ok((from, message));
                }
                Err(error) => {
                    self.metrics().gossip_dropped.get_or_create(&reason("malformed")).inc();
                    debug!(peer = %from, %error, "dropped malformed gossip message");
                }
            }
        }
    }
}

/// Sends one peer's queued gossip in order; ends when idle or when the socket is dropped.
async fn run_peer_sender(transport: Transport, to: SocketAddr, mut queue: mpsc::Receiver<Bytes>) {
    while let Ok(Some(message)) = tokio::time::timeout(PEER_SENDER_IDLE, queue.recv()).await {
        if let Err(error) = transport.send_gossip(to, message).await {
            debug!(peer = %to, %error, "gossip send failed");
            let mut dropped = 1;
            while queue.try_recv().is_ok() {
                dropped += 1;
            }
            transport.metrics().gossip_dropped.get_or_create(&reason("send_failed")).inc_by(dropped);
        }
    }
}
