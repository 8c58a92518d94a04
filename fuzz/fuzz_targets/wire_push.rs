//! An eager push, as a node serving log sync reads it from a peer (node/src/sync/server.rs,
//! `serve_push`): decoded, then each generation validated (`keep_valid`).

#![no_main]

use grapevine_fuzz::{check_generation, check_peer_vector, wire_item};
use grapevine_proto::wire::Push;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(push) = wire_item::<Push>(bytes, "push") {
        check_peer_vector(&push.sender_has);
        for generation in &push.generations {
            check_generation(generation);
        }
    }
});
