//! A gossip message as a node takes it from a peer's QUIC stream (node/src/gossip.rs,
//! `GossipSocket::recv`: chitchat 0.11.2's `ChitchatMessage::deserialize`, on at most
//! `transport::MAX_GOSSIP_MESSAGE_BYTES`). The codec is chitchat's; the node hands it
//! whatever a peer sent, so it is fuzzed as the node uses it. chitchat handles a decoded
//! message in a private method (`process_message`), which only a running chitchat reaches.

#![no_main]

use chitchat::{ChitchatMessage, Deserializable, Serializable};
use libfuzzer_sys::fuzz_target;

/// node/src/transport.rs `MAX_GOSSIP_MESSAGE_BYTES`: longer messages never reach the codec.
const MAX_GOSSIP_MESSAGE_BYTES: usize = 66 * 1024;

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() > MAX_GOSSIP_MESSAGE_BYTES {
        return;
    }
    let Ok(message) = ChitchatMessage::deserialize(&mut &bytes[..]) else { return };
    let _ = format!("{message:?}");
    // A delta keeps the length it had on the wire, and writing it again asserts that it
    // compresses to that length: chitchat never writes a received delta again (it applies
    // it), so only messages without a delta are checked to read back as they were.
    if matches!(message, ChitchatMessage::Syn { .. } | ChitchatMessage::BadCluster) {
        let again = message.serialize_to_vec();
        let reread = ChitchatMessage::deserialize(&mut &again[..]).expect("a message chitchat wrote reads back");
        assert_eq!(reread, message, "a gossip message changed when written back");
    }
});
