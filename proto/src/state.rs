//! The applied state of a node: the fold of its released generations, last writer wins per key.
//!
//! Each key holds the value of the generation with the greatest `(hlc, origin, seq)` that set
//! it. (`seq` only breaks ties a correct clock never makes: one origin never reuses a stamp.)
//! Taking a maximum per key is commutative, so applying generations in any order gives the same
//! state, and two nodes with the same generations compute the same [`AppliedState::digest`].
//!
//! The maps are persistent (`imbl::OrdMap`): a copy shares every node it does not change, so
//! the engine publishes a new state to readers, and keeps the applied and desired states side
//! by side, at a cost per change, not per key held. For the same reason the digest is kept as
//! keys change rather than computed over every key. A flag is parsed once, and held once by
//! every state that holds it (`Arc`): the applied and the desired states share their flags.
//!
//! `AppliedState` keeps flags and config values in two separate maps of `Entry<T>`. `apply` (one
//! generation) and `apply_write` (one `Op` of a given generation and stamp) keep, for each key, the
//! entry with the greatest `(hlc, origin, seq)`; `fold` applies generations in any order,
//! `fold_from(snapshot, generations)` a snapshot's writes, then generations; `apply_sharing` and
//! `fold_sharing` take each parsed flag from the desired state. `schemas` holds the JSON Schema of
//! each config key whose winning write carries one; a winning write without a schema removes it.
//! `digest` is the sum modulo 2^256 of one SHA-256 per entry (per flag; per config key with its
//! schema): a multiset hash, so the order of the entries does not count, and replacing one is a
//! subtraction and an addition. `latest` is the applied generation that comes last in fold order.
//!
//! `Log::state(counts)` is the fold of the log's snapshot and of the generations held whole that
//! `counts` accepts and that are not reverted: with every generation, the desired state; with the
//! released ones, the applied state. `Log::state_sharing(counts, parsed)` is the same fold, taking
//! each flag from `parsed` (the desired state) when the same write set it there. Both are defined
//! here, above the log, which holds generations without parsing their flags.

use std::sync::Arc;

use imbl::OrdMap;
use sha2::{Digest, Sha256};

use crate::eval::FlagDefinition;
use crate::hlc::Stamp;
use crate::log::Log;
use crate::model::{ContentHash, Generation, JsonText, Op};
use crate::name::{GenId, Key};
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
    pub flags: OrdMap<Key, Entry<Arc<FlagDefinition>>>,
    pub config: OrdMap<Key, Entry<JsonText>>,
    /// The JSON Schema of each config key that has one (set with the key's latest value).
    pub schemas: OrdMap<Key, JsonText>,
    latest: Option<(Stamp, GenId)>,
    /// The sum of the entries' hashes ([`AppliedState::digest`]), kept as entries change.
    digest: DigestSum,
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

    /// Applies a snapshot's writes, then generations, as [`AppliedState::fold_from`], taking
    /// each flag that `parsed` holds from the same write from there instead of parsing it again.
    pub fn fold_sharing<'a>(
        snapshot: &Snapshot,
        generations: impl IntoIterator<Item = &'a Generation>,
        parsed: &AppliedState,
    ) -> Self {
        let mut state = AppliedState::default();
        for write in snapshot.writes() {
            state.write(&write.op, &write.generation, write.hlc, Some(parsed));
        }
        for generation in generations {
            state.apply_sharing(generation, parsed);
        }
        state
    }

    /// Applies one validated generation: each of its keys takes its value unless a generation
    /// later in `(hlc, origin, seq)` order already set that key.
    pub fn apply(&mut self, generation: &Generation) {
        let body = &generation.body;
        for op in &body.change.ops {
            self.write(op, &body.id, body.hlc, None);
        }
    }

    /// [`AppliedState::apply`], taking each flag that `parsed` holds from this generation from
    /// there: the applied state shares the flags the desired state parsed.
    pub fn apply_sharing(&mut self, generation: &Generation, parsed: &AppliedState) {
        let body = &generation.body;
        for op in &body.change.ops {
            self.write(op, &body.id, body.hlc, Some(parsed));
        }
    }

    /// Applies one write of generation `generation` stamped `hlc`, if it is the key's latest.
    pub fn apply_write(&mut self, op: &Op, generation: &GenId, hlc: Stamp) {
        self.write(op, generation, hlc, None);
    }

    fn write(&mut self, op: &Op, generation: &GenId, hlc: Stamp, parsed: Option<&AppliedState>) {
        match op {
            Op::SetFlag { key, definition } => {
                let shared = parsed.and_then(|p| p.flags.get(key)).filter(|e| e.generation == *generation);
                self.set_flag(key, definition, shared.map(|e| e.value.clone()), generation, hlc);
            }
            Op::PutConfig { key, value, schema } => self.put_config(key, value, schema.as_ref(), generation, hlc),
        }
        let is_later = |(latest_hlc, latest): &(Stamp, GenId)| (hlc, generation) > (*latest_hlc, latest);
        if self.latest.as_ref().is_none_or(is_later) {
            self.latest = Some((hlc, generation.clone()));
        }
    }

    /// Sets flag `key` from `definition`, or from `parsed` (the same definition, parsed).
    fn set_flag(
        &mut self,
        key: &Key,
        definition: &JsonText,
        parsed: Option<Arc<FlagDefinition>>,
        generation: &GenId,
        hlc: Stamp,
    ) {
        if !is_later(self.flags.get(key), generation, hlc) {
            return;
        }
        let Some(value) = parsed.or_else(|| FlagDefinition::parse(key, definition).ok().map(Arc::new)) else {
            // Unreachable for a validated generation; skipping keeps the old value.
            debug_assert!(false, "applied an unvalidated flag {key}");
            return;
        };
        let entry = Entry { value, generation: generation.clone(), hlc };
        self.digest.add(&flag_hash(key, &entry));
        if let Some(replaced) = self.flags.insert(key.clone(), entry) {
            self.digest.subtract(&flag_hash(key, &replaced));
        }
    }

    fn put_config(&mut self, key: &Key, value: &JsonText, schema: Option<&JsonText>, generation: &GenId, hlc: Stamp) {
        if !is_later(self.config.get(key), generation, hlc) {
            return;
        }
        let entry = Entry { value: value.clone(), generation: generation.clone(), hlc };
        self.digest.add(&config_hash(key, &entry, schema));
        let replaced_schema = match schema {
            Some(schema) => self.schemas.insert(key.clone(), schema.clone()),
            None => self.schemas.remove(key),
        };
        if let Some(replaced) = self.config.insert(key.clone(), entry) {
            self.digest.subtract(&config_hash(key, &replaced, replaced_schema.as_ref()));
        }
    }

    /// The applied generation that is last in `(hlc, origin, seq)` order.
    pub fn latest(&self) -> Option<&GenId> {
        self.latest.as_ref().map(|(_, id)| id)
    }

    /// A digest of every key, its value and the generation that set it: the sum, modulo
    /// 2^256, of one SHA-256 per entry (per flag; per config key with its schema). A sum does
    /// not depend on the order of the entries, and replacing one entry is a subtraction and
    /// an addition, so the digest costs nothing per key held. Equal states have equal digests
    /// on every node.
    pub fn digest(&self) -> ContentHash {
        ContentHash(self.digest.bytes())
    }
}

/// The log's folds: defined here, above the log, so that the log itself knows nothing of flags.
impl Log {
    /// The fold of the snapshot and of the generations `counts` accepts that are not
    /// reverted: with every generation, the desired state; with the released ones, the
    /// applied state.
    pub fn state(&self, counts: impl Fn(&GenId) -> bool) -> AppliedState {
        let live = self.iter().filter(|g| counts(g.id()) && !self.is_reverted(g.id()));
        AppliedState::fold_from(self.base(), live)
    }

    /// [`Log::state`], sharing the flags `parsed` (another fold of this log) holds from the
    /// same writes: the applied state holds the desired state's flags, not copies.
    pub fn state_sharing(&self, counts: impl Fn(&GenId) -> bool, parsed: &AppliedState) -> AppliedState {
        let live = self.iter().filter(|g| counts(g.id()) && !self.is_reverted(g.id()));
        AppliedState::fold_sharing(self.base(), live, parsed)
    }
}

/// Whether a write of `generation` stamped `hlc` comes after the key's `current` entry.
fn is_later<T>(current: Option<&Entry<T>>, generation: &GenId, hlc: Stamp) -> bool {
    current.is_none_or(|existing| existing.order_key() < (hlc, generation))
}

fn flag_hash(key: &Key, entry: &Entry<Arc<FlagDefinition>>) -> [u8; 32] {
    let text = serde_json::to_string(entry.value.as_ref()).expect("a flag always serializes");
    let mut hasher = Sha256::new();
    hash_entry(&mut hasher, "flag", key, &entry.generation, &text);
    hasher.finalize().into()
}

fn config_hash(key: &Key, entry: &Entry<JsonText>, schema: Option<&JsonText>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hash_entry(&mut hasher, "config", key, &entry.generation, entry.value.as_str());
    hash_entry(&mut hasher, "schema", key, &entry.generation, schema.map_or("", JsonText::as_str));
    hasher.finalize().into()
}

fn hash_entry(hasher: &mut Sha256, kind: &str, key: &Key, generation: &GenId, value: &str) {
    // Length-prefix each field so that no two different entries hash the same bytes.
    for field in [kind, key.as_str(), generation.origin.as_str(), value] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update(generation.seq.to_le_bytes());
}

/// A 256-bit number, in little-endian 64-bit limbs: the sum of the entries' hashes, each read
/// as a little-endian number. Addition modulo 2^256 is commutative and invertible, which makes
/// the sum a hash of the set of entries (a multiset hash) that follows one change at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DigestSum([u64; 4]);

impl DigestSum {
    fn add(&mut self, hash: &[u8; 32]) {
        let mut carry = false;
        for (limb, term) in self.0.iter_mut().zip(limbs(hash)) {
            let (sum, over) = limb.overflowing_add(term);
            let (sum, over_carry) = sum.overflowing_add(u64::from(carry));
            (*limb, carry) = (sum, over || over_carry);
        }
    }

    fn subtract(&mut self, hash: &[u8; 32]) {
        let mut borrow = false;
        for (limb, term) in self.0.iter_mut().zip(limbs(hash)) {
            let (difference, under) = limb.overflowing_sub(term);
            let (difference, under_borrow) = difference.overflowing_sub(u64::from(borrow));
            (*limb, borrow) = (difference, under || under_borrow);
        }
    }

    fn bytes(&self) -> [u8; 32] {
        let mut bytes = [0; 32];
        for (chunk, limb) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        bytes
    }
}

fn limbs(hash: &[u8; 32]) -> impl Iterator<Item = u64> + '_ {
    hash.chunks_exact(8).map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
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

    /// Generation `origin.seq` at `wall_ms` writing `key`: a flag, a config value with a
    /// schema, or one without (`kind` 0, 1, 2).
    fn write(origin: &str, seq: u64, wall_ms: u64, kind: usize, key: &str, value: u64) -> Generation {
        let key: Key = key.parse().unwrap();
        let op = match kind {
            0 => Op::SetFlag {
                key,
                definition: JsonText::try_from(format!(
                    r#"{{"state":"ENABLED","variants":{{"a":{value},"b":0}},"defaultVariant":"a"}}"#
                ))
                .unwrap(),
            },
            _ => Op::PutConfig {
                key,
                value: JsonText::try_from(value.to_string()).unwrap(),
                schema: (kind == 1).then(|| JsonText::try_from(r#"{"type":"number"}"#.to_owned()).unwrap()),
            },
        };
        crate::model::GenerationBody {
            id: GenId { origin: origin.parse().unwrap(), seq },
            hlc: Stamp { wall_ms, logical: 0 },
            members: vec![].into(),
            groups: vec![],
            change: crate::model::Change::with_ops(vec![op]),
            author: None,
            signed: None,
            terms: None,
        }
        .seal()
    }

    /// The digest summed over the entries the state holds now, from nothing.
    fn digest_from_scratch(state: &AppliedState) -> ContentHash {
        let mut sum = DigestSum::default();
        for (key, entry) in &state.flags {
            sum.add(&flag_hash(key, entry));
        }
        for (key, entry) in &state.config {
            sum.add(&config_hash(key, entry, state.schemas.get(key)));
        }
        ContentHash(sum.bytes())
    }

    #[test]
    fn adding_then_subtracting_a_hash_gives_the_sum_back() {
        let mut sum = DigestSum::default();
        sum.add(&[0xFF; 32]);
        let before = sum;
        sum.add(&[0xAB; 32]);
        assert_ne!(sum, before);
        sum.subtract(&[0xAB; 32]);
        assert_eq!(sum, before);
        sum.subtract(&[0xFF; 32]);
        assert_eq!(sum, DigestSum::default(), "the carries and borrows cancel");
    }

    #[test]
    fn a_different_value_or_generation_gives_a_different_digest() {
        let one = AppliedState::fold([&write("a", 1, 10, 2, "k", 1)]);
        let other_value = AppliedState::fold([&write("a", 1, 10, 2, "k", 2)]);
        let other_generation = AppliedState::fold([&write("b", 1, 10, 2, "k", 1)]);
        assert_ne!(one.digest(), other_value.digest());
        assert_ne!(one.digest(), other_generation.digest());
        assert_ne!(one.digest(), AppliedState::default().digest());
    }

    proptest! {
        #[test]
        fn the_digest_kept_as_keys_change_is_the_digest_of_the_entries(
            specs in proptest::collection::vec((0..2usize, 0..30u64, 0..3usize, 0..3usize, 0..4u64), 1..16),
        ) {
            // Keys overwritten by later and by earlier stamps, schemas set and dropped.
            let mut state = AppliedState::default();
            for (i, (origin, wall_ms, kind, key, value)) in specs.into_iter().enumerate() {
                let key = format!("{}{key}", if kind == 0 { "f" } else { "c" });
                state.apply(&write(["a", "b"][origin], i as u64 + 1, wall_ms, kind, &key, value));
                prop_assert_eq!(state.digest(), digest_from_scratch(&state));
            }
        }
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
