//! Every limit of the data model, each a named constant with the reason for its value.
//!
//! Limits are checked where data enters (the admin API and peers' streams) with an error that
//! names the limit, the expected bound and what was found.
//!
//! The rollout limits (`MAX_WAVES`, `MAX_BAKE_MS`, `MAX_WATCH_WINDOW_MS`) live in `policy.rs`, the
//! judgement's constants in `health.rs`, `MAX_REF_DEPTH` in `targeting.rs`, `FLAGD_OPERATOR_STEPS`
//! in `cost.rs`, and the signing limits in `signing.rs` and `trust.rs`.

/// Longest node name. Node names travel in every chitchat digest, whose whole must fit one
/// 65,507-byte datagram (DESIGN.md, "Measured constraints"): short names keep room for members.
pub const MAX_NODE_NAME_BYTES: usize = 32;

/// Longest flag or config key. Long enough for dotted namespaces, short enough to index cheaply.
pub const MAX_KEY_BYTES: usize = 128;

/// Largest JSON text of one config value or flag definition. Values travel on QUIC streams,
/// never in chitchat, so the bound is about memory per pull and per apply, not datagram size.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// Most operations in one change. A change is applied atomically on each node; a bound keeps
/// validation and history readable.
pub const MAX_OPS_PER_CHANGE: usize = 256;

/// Largest encoded generation. Bounds the buffer a peer may make us hold for one frame of log
/// sync; a change of several large values must be split into several changes.
pub const MAX_GENERATION_BYTES: usize = 2 * MAX_VALUE_BYTES + 64 * 1024;

/// Largest total of generation bytes a push carries inline. Larger generations are only
/// announced (the receiver learns the sender's vector) and pulled, so one push stream never
/// carries megabytes that the receiver may already hold. Receivers size their push frame
/// limit from it.
pub const PUSH_INLINE_BYTES: usize = 64 * 1024;

/// Largest encoded snapshot. A node that comes back after the retention takes the whole
/// snapshot in one pull, so it bounds that pull's memory; compaction stops short of it.
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// Longest author of a change (`alice@laptop`, `ci/deploy-bot`): a name for `history`, not a
/// document; it travels in every generation.
pub const MAX_AUTHOR_BYTES: usize = 64;

/// Most members of one gossip cluster. chitchat's full digest must fit one datagram of 65,507
/// bytes: with 32-byte names and addresses that is about 800 members; half leaves headroom.
pub const MAX_MEMBERS: usize = 400;

/// Highest sequence number of a generation, and so of a version vector's entry from a peer.
/// A node accepts a handful of changes a second: 2^53 lasts 285,000 years at 1,000 a second.
/// The bound keeps `seq + 1` from overflowing in the log, and every seq exact as a JSON number.
pub const MAX_SEQ: u64 = 1 << 53;

/// Most variants in one flag definition. flagd flags rarely have more than a handful.
pub const MAX_VARIANTS: usize = 256;

/// Highest cost bound of a targeting rule, in steps (`cost.rs`). The costliest steps measured
/// (`merge`, `fractional`, `sem_ver` in iterations nested over literal arrays) take about 50 ns
/// on a 2-core test machine (`cargo run --release -p grapevine-proto --example rule_cost`), so
/// the costliest rule accepted evaluates in about 12 ms, and the common costly shape (`in`
/// over a long allow-list, 2 ns a step) in 0.5 ms. Room enough for an allow-list of 100,000
/// items, or for `some` over a context's 1,000 groups with a body of 250 steps; the rule of
/// issue 17 (71 s) costs 80 billion.
pub const MAX_RULE_COST: u64 = 250_000;

/// Deepest nesting of operations in a targeting rule. datalogic recurses once per level on
/// the evaluating thread's stack; flagd's testbed nests at most 6 deep.
pub const MAX_RULE_DEPTH: usize = 32;

/// Most items of an array in an evaluation context, which the cost bound of a rule assumes of
/// every context array it iterates (`cost.rs`). OpenFeature contexts hold a handful of
/// attributes; a list of a user's groups or entitlements fits with room to spare.
pub const MAX_CONTEXT_ARRAY_ITEMS: u64 = 1_000;

/// Longest string `cat` may produce. A rule that joins an accumulator to itself in `reduce`
/// doubles it per item; bucket keys and names are far shorter.
pub const MAX_CAT_BYTES: usize = 64 * 1024;
