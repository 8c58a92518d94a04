//! Grapevine's data model and every decision, as pure functions over plain data.
//!
//! **Architecture Invariant:** this crate depends on no async runtime, does no I/O, reads no
//! clock and draws no random number. Time arrives as an argument (`now_ms`), so every rule can
//! be unit-tested and simulated for thousands of nodes without a socket.

pub mod approvals;
pub mod audit;
pub mod compiled;
pub mod cost;
pub mod edit;
pub mod error;
pub mod eval;
pub mod flagd;
pub mod health;
pub mod hlc;
pub mod limits;
pub mod log;
pub mod model;
pub mod name;
pub mod policy;
pub mod replica;
pub mod report;
pub mod rollout;
pub mod schedule;
pub mod signing;
pub mod sim;
pub mod snapshot;
pub mod state;
pub mod targeting;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;
pub mod trust;
pub mod validate;
pub mod wire;

pub use error::ValidationError;
pub use hlc::{Clock, ClockError, Stamp};
pub use log::{InsertOutcome, Log, Tally};
pub use model::{
    Change, ContentHash, Generation, GenerationBody, Governance, JsonText, Op, OriginProof, Revert, Terms,
    VersionVector,
};
pub use name::{Author, GenId, Key, NodeName};
pub use snapshot::{Snapshot, Write};
pub use state::{AppliedState, Entry};
