//! A frame of a pull's answer, as a puller reads it from a peer's sync stream
//! (node/src/sync/pull.rs): decoded, then each kind checked as the puller checks it.

#![no_main]

use grapevine_fuzz::{check_generation, check_snapshot, wire_item};
use grapevine_proto::Snapshot;
use grapevine_proto::validate::validate_snapshot;
use grapevine_proto::wire::PullFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match wire_item::<PullFrame>(bytes, "pull frame") {
        Some(PullFrame::Generation(generation)) => check_generation(&generation),
        Some(PullFrame::SnapshotWrite(write)) => {
            let mut covers = grapevine_proto::VersionVector::default();
            covers.raise(write.generation.origin.clone(), write.generation.seq);
            let snapshot = Snapshot::from_parts(covers, [write]);
            if validate_snapshot(&snapshot).is_ok() {
                check_snapshot(&snapshot);
            }
        }
        Some(PullFrame::SnapshotEnd { covers }) => {
            let snapshot = Snapshot::from_parts(covers, []);
            if validate_snapshot(&snapshot).is_ok() {
                check_snapshot(&snapshot);
            }
        }
        Some(PullFrame::Revert(_) | PullFrame::End { .. }) | None => {}
    }
});
