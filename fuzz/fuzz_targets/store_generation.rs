//! A generation record as a node reads it from its store at start-up (node/src/store.rs,
//! the format before the newest and the newest): decoded, then checked against its hash and
//! validated.

#![no_main]

use grapevine_fuzz::{check_generation, wire_item};
use grapevine_proto::Generation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(generation) = wire_item::<Generation>(bytes, "generation") {
        let verified = generation.verify();
        if grapevine_proto::validate::validate_generation(&generation).is_ok() {
            assert!(verified.is_ok(), "a valid generation matches its hash");
        }
        check_generation(&generation);
    }
});
