//! The gossip key schema: what each node publishes in chitchat, one small key per fact
//! (`docs/protocol.md`, "Keys each node publishes"), and the functions that write and read the version
//! vector and tallies as keys.

use std::collections::BTreeMap;

use chitchat::NodeState;
use grapevine_proto::wire::OLDEST_READABLE;
use grapevine_proto::{NodeName, Tally, VersionVector};

pub const KEY_API: &str = "api";
pub const KEY_LABELS: &str = "labels";
pub const KEY_GENERATIONS: &str = "generations";
pub const KEY_APPLIED: &str = "applied";
pub const KEY_DIGEST: &str = "digest";
pub const PREFIX_VERSION_VECTOR: &str = "vv.";
/// `vh.<origin>` = what this node holds whole of `<origin>` up to its vector, summarised
/// (`Tally`: `after-through.sum`): a peer whose tally of the same range differs holds some id
/// with other content (a namesake or a wiped node wrote it again; D84).
pub const PREFIX_TALLY: &str = "vh.";
/// `rep.<generation>` = this node's report on a generation it applied (`h:12000`).
pub const PREFIX_REPORT: &str = "rep.";
/// This node's KPIs over the last minute (`requests:errors:latency_ms:intervals`), for peers
/// that compare theirs with it.
pub const KEY_KPI: &str = "kpi";
/// The summary of the reverts this node holds (`count.hash`); a peer with another pulls.
pub const KEY_REVERTS: &str = "reverts";
/// The newest wire format this node reads and writes (`wire::newest`).
pub const KEY_WIRE: &str = "wire";
/// Which root keys this node's `[signing]` trusts (`Trust::fingerprint`; `none` without
/// roots): members that differ store different changes, so `status` names them.
pub const KEY_SIGNING: &str = "signing";
/// `rv.<generation>` = why this node wrote the revert of a generation (`quorum`, `rollback`).
pub const PREFIX_REVERTED_BY: &str = "rv.";

/// The newest wire format a member reads, from its `wire` key ([`OLDEST_READABLE`] without).
pub(super) fn wire_version_in(state: &NodeState) -> u8 {
    state.get(KEY_WIRE).and_then(|v| v.parse().ok()).unwrap_or(OLDEST_READABLE)
}

/// A peer's version vector from its `vv.<origin>` keys; malformed entries are skipped.
pub fn version_vector_of(state: &NodeState) -> VersionVector {
    let mut vector = VersionVector::default();
    for (key, value) in with_prefix(state, PREFIX_VERSION_VECTOR) {
        let origin = &key[PREFIX_VERSION_VECTOR.len()..];
        if let (Ok(origin), Ok(seq)) = (origin.parse::<NodeName>(), value.parse::<u64>()) {
            vector.raise(origin, seq);
        }
    }
    vector
}

/// The live keys of `state` that start with `prefix`, and their values: a range of chitchat's
/// ordered map, not a scan of every key the member publishes.
pub fn with_prefix<'a>(state: &'a NodeState, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    state.iter_prefix(prefix).map(|(key, versioned)| (key, versioned.value.as_str()))
}

/// The keys that publish `tallies`, one per origin.
pub fn tally_keys(tallies: &BTreeMap<NodeName, Tally>) -> impl Iterator<Item = (String, String)> + '_ {
    tallies.iter().map(|(origin, tally)| (format!("{PREFIX_TALLY}{origin}"), tally.to_string()))
}

/// The keys that publish `vector`, one per origin.
pub fn version_vector_keys(vector: &VersionVector) -> impl Iterator<Item = (String, String)> + '_ {
    vector.iter().map(|(origin, seq)| (format!("{PREFIX_VERSION_VECTOR}{origin}"), seq.to_string()))
}
