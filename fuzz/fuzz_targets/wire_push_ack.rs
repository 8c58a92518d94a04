//! The answer to a push, as the pushing node reads it from its peer (node/src/sync/push.rs).

#![no_main]

use grapevine_fuzz::{check_peer_vector, wire_item};
use grapevine_proto::wire::PushAck;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(ack) = wire_item::<PushAck>(bytes, "push ack") {
        check_peer_vector(&ack.have);
    }
});
