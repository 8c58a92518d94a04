//! The first message of a pull, as a node serving log sync reads it from a peer
//! (node/src/sync/server.rs, `serve_pull`).

#![no_main]

use grapevine_fuzz::{check_peer_vector, wire_item};
use grapevine_proto::wire::PullRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(request) = wire_item::<PullRequest>(bytes, "pull request") {
        // What the server computes from it before reading its store.
        let _ = usize::try_from(request.max_bytes);
        assert!(!request.have.is_behind(&request.have));
        check_peer_vector(&request.have);
    }
});
