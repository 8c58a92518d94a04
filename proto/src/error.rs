//! `ValidationError`: why a name, a value, a change, a generation or a snapshot was refused,
//! each variant saying what was expected and what was found.
//!
//! It sits at the bottom of the crate, below the types that return it: names, keys and JSON
//! check themselves while they are deserialized (`name.rs`, `model.rs`), and flag definitions
//! while they are parsed (`eval.rs`). The checks of whole changes and generations, which return
//! it too, live above them in `validate.rs`.

/// Why a change, a name or a generation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A node name outside the allowed alphabet or length.
    #[error("node name must be 1 to 32 ASCII letters, digits, '-' or '_', got {found:?}")]
    NodeName { found: String },
    /// A cell name outside the allowed alphabet or length.
    #[error("cell name must be 1 to 32 ASCII letters, digits, '-' or '_', got {found:?}")]
    CellName { found: String },
    /// A flag or config key outside the allowed alphabet or length.
    #[error("key must be 1 to 128 ASCII letters, digits, '-', '_', '.' or '/', got {found:?}")]
    Key { found: String },
    /// An author outside the allowed alphabet or length.
    #[error("author must be 1 to 64 ASCII letters, digits or any of - _ . @ / + :, got {found:?}")]
    Author { found: String },
    /// A generation id that is not `ORIGIN.SEQ`.
    #[error("generation id must look like ORIGIN.SEQ with SEQ >= 1 (e.g. n1.3), got {found:?}")]
    GenId { found: String },
    /// Input that should hold a JSON value holds nothing.
    #[error("expected a JSON value, got empty input")]
    EmptyValue,
    /// Text that does not parse as JSON.
    #[error("expected valid JSON, got a parse error: {error}")]
    Json { error: String },
    /// Something larger than its limit.
    #[error("{what} must be at most {limit} bytes, got {found} bytes")]
    TooLarge { what: &'static str, limit: usize, found: usize },
    /// A flag definition that is not a valid flagd flag.
    #[error("flag {key:?}: {detail}")]
    Flag { key: String, detail: String },
    /// A config value that is refused.
    #[error("config {key:?}: {detail}")]
    Config { key: String, detail: String },
    /// A change without operations.
    #[error("a change must have at least one operation, got none")]
    EmptyChange,
    /// A change with more operations than allowed.
    #[error("a change may have at most {limit} operations, got {found}")]
    TooManyOps { limit: usize, found: usize },
    /// A change that sets the same key twice.
    #[error("a change may set each key once, got {kind} {key:?} twice")]
    DuplicateKey { kind: &'static str, key: String },
    /// A generation recording more members than a cluster may have.
    #[error("a cluster may have at most {limit} members (the member ceiling), got {found}")]
    TooManyMembers { limit: usize, found: usize },
    /// A rollout policy that cannot work.
    #[error("rollout policy: {detail}")]
    Policy { detail: String },
    /// A snapshot that contradicts itself.
    #[error("invalid snapshot: {detail}")]
    Snapshot { detail: String },
    /// A generation id, or a snapshot's entry, past the highest sequence number.
    #[error("{what} must have a sequence number of at most {limit}, got {found}")]
    SeqTooLarge { what: String, limit: u64, found: u64 },
    /// A generation whose content does not match its hash.
    #[error("generation {id}: content hash mismatch, expected {expected}, got {found}")]
    HashMismatch { id: String, expected: String, found: String },
    /// Terms or a governance record that break their shape's rule.
    #[error("governance record: {detail}")]
    Governance { detail: String },
}
