//! The gossip key schema: what each node publishes in chitchat, one small key per fact
//! (`docs/protocol.md`, "Keys each node publishes"), and the functions that write and read the version
//! vector and tallies as keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chitchat::{ChitchatId, NodeState};
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

/// Whether member `state` advertises a generation `ours` does not cover: `ours.is_behind` its
/// [`version_vector_of`], read in place. The puller asks it of every reachable peer on each
/// wake, and every member's state changes with each change (so [`Vectors`] would parse them
/// all again): this costs a comparison per `vv.` key, with no copy.
pub fn advertises_beyond(state: &NodeState, ours: &VersionVector) -> bool {
    with_prefix(state, PREFIX_VERSION_VECTOR).any(|(key, value)| {
        let origin = &key[PREFIX_VERSION_VECTOR.len()..];
        value.parse::<u64>().is_ok_and(|seq| seq > ours.get_by_name(origin)) && NodeName::is_valid(origin)
    })
}

/// Members whose parsed vector [`Vectors`] keeps; past it, it starts over.
const MAX_KEPT_VECTORS: usize = 16 * 1024;

/// Each member's version vector as last parsed, with the version of the member's state it was
/// parsed at. A member's chitchat state changes only by its owner's writes, each with a higher
/// version, so the same version means the same keys: the vector is parsed again only after the
/// member wrote something. The pusher and compaction read peers' vectors on each job and
/// check; parsing every `vv.` key of every member each time cost O(members^2) string parses
/// per change and node. (The puller compares in place instead: [`advertises_beyond`].)
#[derive(Default)]
pub struct Vectors(Mutex<HashMap<ChitchatId, (u64, VersionVector)>>);

impl Vectors {
    /// [`version_vector_of`] `state`, member `id`'s, parsed again only if it changed.
    pub fn of(&self, id: &ChitchatId, state: &NodeState) -> VersionVector {
        self.with(id, state, VersionVector::clone)
    }

    /// `read` of member `id`'s vector, without copying it.
    pub fn with<T>(&self, id: &ChitchatId, state: &NodeState, read: impl FnOnce(&VersionVector) -> T) -> T {
        let version = state.max_version();
        let mut kept = self.0.lock().expect("vectors lock poisoned");
        if let Some((at, vector)) = kept.get(id)
            && *at == version
        {
            return read(vector);
        }
        if kept.len() >= MAX_KEPT_VECTORS {
            kept.clear();
        }
        let (_, vector) = kept.entry(id.clone()).insert_entry((version, version_vector_of(state))).into_mut();
        read(vector)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_advertises_beyond_a_vector_as_its_parsed_vector_does() {
        let ours = version_vector_of(&{
            let mut state = NodeState::for_test();
            state.set("vv.n1", "5");
            state.set("vv.n2", "2");
            state
        });
        let cases: [(&[(&str, &str)], bool); 8] = [
            (&[], false),
            (&[("vv.n1", "5"), ("vv.n2", "2")], false),
            (&[("vv.n1", "4")], false),
            (&[("vv.n1", "6")], true),
            (&[("vv.n3", "1")], true),
            (&[("vv.n3", "0")], false),
            (&[("vv.n1", "not a number"), ("vv.n2", "-1")], false),
            (&[("vv.bad name!", "9"), ("vn.n1", "9"), ("vv.", "9")], false),
        ];
        for (keys, beyond) in cases {
            let mut state = NodeState::for_test();
            for (key, value) in keys {
                state.set(*key, *value);
            }
            assert_eq!(advertises_beyond(&state, &ours), beyond, "{keys:?}");
            assert_eq!(ours.is_behind(&version_vector_of(&state)), beyond, "{keys:?}: the parsed vector agrees");
        }
    }

    #[test]
    fn a_vector_is_parsed_again_only_after_its_member_writes() {
        let vectors = Vectors::default();
        let mut state = NodeState::for_test();
        let id = state.chitchat_id().clone();
        state.set("vv.n1", "3");
        let before = vectors.of(&id, &state);
        assert_eq!(before.iter().map(|(o, s)| (o.to_string(), s)).collect::<Vec<_>>(), [("n1".to_owned(), 3)]);
        assert_eq!(vectors.of(&id, &state), before, "the same version gives the same vector");
        // Not parsed again: a state of the same member and version with other keys (which
        // chitchat never makes) reads as the vector kept.
        let mut same_version = NodeState::for_test();
        same_version.set("vv.n9", "7");
        assert_eq!(same_version.max_version(), state.max_version());
        assert_eq!(vectors.of(&id, &same_version), before, "kept, not parsed again");
        state.set("vv.n1", "4");
        state.set("vv.n2", "1");
        let after: Vec<(String, u64)> = vectors.of(&id, &state).iter().map(|(o, s)| (o.to_string(), s)).collect();
        assert_eq!(after, [("n1".to_owned(), 4), ("n2".to_owned(), 1)], "a write is seen at once");
        state.delete("vv.n2");
        assert_eq!(vectors.of(&id, &state), version_vector_of(&state), "and so is a deletion");
    }
}
