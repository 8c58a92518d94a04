//! Grapevine's data model and every decision, as pure functions over plain data.
//!
//! **Architecture Invariant:** this crate depends on no async runtime, does no I/O, reads no
//! clock and draws no random number. Time arrives as an argument (`now_ms`), so every rule can
//! be unit-tested and simulated for thousands of nodes without a socket.
//!
//! The modules form layers, grouped below from the bottom: a module imports only from its own
//! layer and the layers before it. `docs/ARCHITECTURE.md` ("`proto/`") gives the order within
//! each layer, and `tests/layers.rs` checks every import against it.

// Leaves.
pub mod error;
pub mod hlc;
pub mod limits;
// Data: names, what a change carries, changes and generations, the snapshot, the log.
pub mod log;
pub mod model;
pub mod name;
pub mod policy;
pub mod report;
pub mod signing;
pub mod snapshot;
// Flags: what both evaluators share, the compiled tree, the interpreter, flag definitions;
// then the log folded into a state, and edits of it.
pub mod compiled;
pub mod cost;
pub mod edit;
pub mod eval;
pub mod flagd;
pub mod state;
pub mod targeting;
// Decisions on the data.
pub mod approvals;
pub mod audit;
pub mod cell;
pub mod health;
pub mod push;
pub mod rollout;
pub mod schedule;
pub mod trust;
pub mod validate;
pub mod wire;
// The replica, and the simulator around it.
pub mod replica;
pub mod sim;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;

pub use error::ValidationError;
pub use hlc::{Clock, ClockError, Stamp};
pub use log::{InsertOutcome, Log, Tally};
pub use model::{
    Change, ContentHash, Generation, GenerationBody, Governance, JsonText, MemberList, Op, OriginProof, Revert, Terms,
    VersionVector,
};
pub use name::{Author, CellName, GenId, Key, NodeName};
pub use snapshot::{Snapshot, Write};
pub use state::{AppliedState, Entry};
