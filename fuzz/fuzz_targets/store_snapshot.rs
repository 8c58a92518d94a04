//! The snapshot record as a node reads it from its store (node/src/store.rs, `snapshot`):
//! decoded, then validated; a valid one is absorbed into a log as the engine does.

#![no_main]

use grapevine_fuzz::{check_snapshot, wire_item};
use grapevine_proto::Snapshot;
use grapevine_proto::validate::validate_snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(snapshot) = wire_item::<Snapshot>(bytes, "snapshot") {
        if validate_snapshot(&snapshot).is_ok() {
            check_snapshot(&snapshot);
        }
    }
});
