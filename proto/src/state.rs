//! The applied state of a node: the fold of its released generations, last writer wins per key.
//!
//! Each key holds the value of the generation with the greatest `(hlc, origin, seq)` that set
//! it. (`seq` only breaks ties a correct clock never makes: one origin never reuses a stamp.)
//! Taking a maximum per key is commutative, so applying generations in any order gives the same
//! state, and two nodes with the same generations compute the same [`AppliedState::digest`].

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::eval::FlagDefinition;
use crate::hlc::Stamp;
use crate::model::{ContentHash, GenId, Generation, JsonText, Key, Op};
use crate::snapshot::Snapshot;

/// A value and the generation that set it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<T> {
    pub value: T,
    pub generation: GenId,
    pub hlc: Stamp,
}

impl<T> Entry<T> {
    fn order_key(&self) -> (Stamp, &GenId) {
        (self.hlc, &self.generation)
    }
}

/// Flags and config values as applied on one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedState {
    pub flags: BTreeMap<Key, Entry<FlagDefinition>>,
    pub config: BTreeMap<Key, Entry<JsonText>>,
    /// The JSON Schema of each config key that has one (set with the key's latest value).
    pub schemas: BTreeMap<Key, JsonText>,
    latest: Option<(Stamp, GenId)>,
}

impl AppliedState {
    /// Applies generations in any order.
    pub fn fold<'a>(generations: impl IntoIterator<Item = &'a Generation>) -> Self {
        let mut state = AppliedState::default();
        for generation in generations {
            state.apply(generation);
        }
        state
    }

    /// Applies a snapshot's writes, then generations: the same state as folding every
    /// generation the snapshot folded, plus the others.
    pub fn fold_from<'a>(snapshot: &Snapshot, generations: impl IntoIterator<Item = &'a Generation>) -> Self {
        let mut state = AppliedState::default();
        for write in snapshot.writes() {
            state.apply_write(&write.op, &write.generation, write.hlc);
        }
        for generation in generations {
            state.apply(generation);
        }
        state
    }

    /// Applies one validated generation: each of its keys takes its value unless a generation
    /// later in `(hlc, origin, seq)` order already set that key.
    pub fn apply(&mut self, generation: &Generation) {
        let body = &generation.body;
        for op in &body.change.ops {
            self.apply_write(op, &body.id, body.hlc);
        }
    }

    /// Applies one write of generation `generation` stamped `hlc`, if it is the key's latest.
    pub fn apply_write(&mut self, op: &Op, generation: &GenId, hlc: Stamp) {
        let entry = |value| Entry { value, generation: generation.clone(), hlc };
        match op {
            Op::SetFlag { key, definition } => match FlagDefinition::parse(key, definition) {
                Ok(flag) => {
                    set_if_later(&mut self.flags, key, entry(flag));
                }
                // Unreachable for a validated generation; skipping keeps the old value.
                Err(_) => debug_assert!(false, "applied an unvalidated flag {key}"),
            },
            Op::PutConfig { key, value, schema } => {
                let entry = Entry { value: value.clone(), generation: generation.clone(), hlc };
                if set_if_later(&mut self.config, key, entry) {
                    match schema {
                        Some(schema) => self.schemas.insert(key.clone(), schema.clone()),
                        None => self.schemas.remove(key),
                    };
                }
            }
        }
        let is_later = |(latest_hlc, latest): &(Stamp, GenId)| (hlc, generation) > (*latest_hlc, latest);
        if self.latest.as_ref().is_none_or(is_later) {
            self.latest = Some((hlc, generation.clone()));
        }
    }

    /// The applied generation that is last in `(hlc, origin, seq)` order.
    pub fn latest(&self) -> Option<&GenId> {
        self.latest.as_ref().map(|(_, id)| id)
    }

    /// A digest of every key, its value and the generation that set it. Equal states have
    /// equal digests on every node.
    pub fn digest(&self) -> ContentHash {
        let mut hasher = Sha256::new();
        for (key, entry) in &self.flags {
            let text = serde_json::to_string(&entry.value).expect("a flag always serializes");
            hash_entry(&mut hasher, "flag", key, &entry.generation, &text);
        }
        for (key, entry) in &self.config {
            hash_entry(&mut hasher, "config", key, &entry.generation, entry.value.as_str());
            let schema = self.schemas.get(key).map_or("", JsonText::as_str);
            hash_entry(&mut hasher, "schema", key, &entry.generation, schema);
        }
        ContentHash(hasher.finalize().into())
    }
}

/// Sets `key` to `entry` if it is later than the current one; true when it was set.
fn set_if_later<T>(map: &mut BTreeMap<Key, Entry<T>>, key: &Key, entry: Entry<T>) -> bool {
    match map.get(key) {
        Some(existing) if existing.order_key() >= entry.order_key() => false,
        _ => {
            map.insert(key.clone(), entry);
            true
        }
    }
}

fn hash_entry(hasher: &mut Sha256, kind: &str, key: &Key, generation: &GenId, value: &str) {
    // Length-prefix each field so that no two different entries hash the same bytes.
    for field in [kind, key.as_str(), generation.origin.as_str(), value] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update(generation.seq.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::put;

    #[test]
    fn later_stamp_wins_and_origin_breaks_ties() {
        let early = put("b", 1, 10, "k", "1");
        let late = put("a", 1, 20, "k", "2");
        let tie = put("b", 2, 20, "k", "3");
        let state = AppliedState::fold([&late, &tie, &early]);
        assert_eq!(state.config[&"k".parse::<Key>().unwrap()].value.as_str(), "3");
        assert_eq!(state.latest(), Some(tie.id()));
    }

    proptest! {
        #[test]
        fn any_order_gives_the_same_state(
            specs in proptest::collection::vec((0..3usize, 0..40u64, 0..4usize), 1..10),
            seed in any::<u64>(),
        ) {
            let generations: Vec<Generation> = specs.iter().enumerate().map(|(i, (origin, wall_ms, key))| {
                put(["a", "b", "c"][*origin], i as u64 + 1, *wall_ms, &format!("k{key}"), &i.to_string())
            }).collect();
            let mut shuffled: Vec<&Generation> = generations.iter().collect();
            // A deterministic permutation from the seed: rotate, then reverse on odd seeds.
            let len = shuffled.len();
            shuffled.rotate_left(seed as usize % len);
            if seed % 2 == 1 { shuffled.reverse(); }
            let forward = AppliedState::fold(&generations);
            let permuted = AppliedState::fold(shuffled);
            prop_assert_eq!(forward.digest(), permuted.digest());
            prop_assert_eq!(forward, permuted);
        }
    }
}
