//! The durable log of one node, in one redb file under the data directory.
//!
//! A generation is written and committed (fsync) before the node acknowledges it to a client
//! or counts it as received from a peer. redb holds an exclusive lock on the file, so a second
//! process on the same data directory is refused at start. Every record is checked against its
//! content hash when loaded; the applied state is not stored, it is the fold of the log.
//!
//! - Five tables. `generations` maps `(origin, seq)` to the versioned encoding of the generations
//!   held whole. `released` holds the `(origin, seq)` of every generation released to (applied on)
//!   this node. `reverts` holds the `(origin, seq)` of every revert's target; rows are never
//!   deleted. `snapshot` holds the encoded `Snapshot` under one key (`base`). `meta` records the
//!   owning node's name, and `recovering` while the node recovers its log after a damaged store
//!   (`set_recovering`, `recovering`). The file is `STORE_FILE` (`grapevine.redb`).
//! - `release(ids)` records releases in one transaction; `released()` reads them at start.
//!   `put_reverts(reverts)` records reverts in one transaction; `reverts()` reads them at start and
//!   for every pull served. A row whose origin is not a valid node name refuses the start
//!   (`StoreError::Corrupt`).
//! - `open` runs redb's `check_integrity` (page checksums); a file redb had to repair counts as
//!   `Corrupt`. `load` validates every record (`validate_generation`) and `snapshot` validates the
//!   snapshot (`validate_snapshot`). A record of another format version is `Format`, which refuses
//!   the start; `is_corruption` says which errors are damage (`Corrupt`, redb's `Corrupted`, I/O
//!   `UnexpectedEof`/`InvalidData`), which the daemon recovers from, and `quarantine(dir)` renames
//!   the file to `grapevine.redb.corrupt-UNIX_MS`. `WrongNode` names the data directory (not the
//!   redb file) and both node names.
//! - `compact(snapshot, covered)` replaces the snapshot and deletes `covered` from `generations`
//!   and `released`, in one transaction. `missing_from(have, max_bytes)` serves pulls.
//! - `backup_to(path)` copies every table (`copy_table`) as of one read transaction into a new redb
//!   file, while writes go on: a store of the same node, which restores it when put in place of
//!   `grapevine.redb`. Records are copied as they are (either wire format).
//! - Records are written in the newest wire format (`wire::encode`) and read in that or the one
//!   before (`wire::decode_versioned`). `open` rewrites every record of the older format in the
//!   newest, in one transaction (`rewrite_older_records`), so the next build, which reads only its
//!   format and the one before, reads the whole store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use grapevine_proto::validate::{validate_generation, validate_snapshot};
use grapevine_proto::wire::{WireError, decode_versioned, encode, newest};
use grapevine_proto::{GenId, Generation, NodeName, Revert, Snapshot, VersionVector};
use redb::{Database, DatabaseError, ReadableTable, TableDefinition};

use crate::clock;

/// Generations by `(origin, seq)`, each the versioned encoding of a [`Generation`].
const GENERATIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("generations");
/// Generations released to this node (applied), so a restart does not take them back while
/// the reports that opened their gates are still on their way.
const RELEASED: TableDefinition<(&str, u64), ()> = TableDefinition::new("released");
/// Targets of the reverts this node holds (grow-only, never deleted: a few bytes each).
const REVERTS: TableDefinition<(&str, u64), ()> = TableDefinition::new("reverts");
/// The snapshot of compacted generations, under [`SNAPSHOT_KEY`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const SNAPSHOT_KEY: &str = "base";
/// Facts about the store itself: which node owns it.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const META_NODE: &str = "node";
/// Present while the node recovers its log after a damaged store: a restart before the
/// recovery ends must not serve the empty store as if it were whole.
const META_RECOVERING: &str = "recovering";

/// Copies every row of `table` as `read` sees it into the same table of `write`.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    write: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), Box<redb::Error>> {
    fn boxed(error: impl Into<redb::Error>) -> Box<redb::Error> {
        Box::new(error.into())
    }
    let from = read.open_table(table).map_err(boxed)?;
    let mut to = write.open_table(table).map_err(boxed)?;
    for row in from.iter().map_err(boxed)? {
        let (key, value) = row.map_err(boxed)?;
        to.insert(key.value(), value.value()).map_err(boxed)?;
    }
    Ok(())
}

/// The file under the data directory.
pub const STORE_FILE: &str = "grapevine.redb";

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {error}")]
    CreateDir { path: PathBuf, error: std::io::Error },
    #[error("data directory {path} is locked by another process (is another grapevine node running on it?)")]
    Locked { path: PathBuf },
    #[error("data directory {path} belongs to node {found:?}, not {expected:?}")]
    WrongNode { path: PathBuf, expected: String, found: String },
    #[error("store {path} is corrupt: record {record}: {detail}")]
    Corrupt { path: PathBuf, record: String, detail: String },
    /// Written by a build of another format version: not damage, an upgrade to plan.
    #[error("store {path}: record {record}: {error} (see \"Format version\" in docs/operations.md)")]
    Format { path: PathBuf, record: String, error: grapevine_proto::wire::WireError },
    #[error("store {path}: {error}")]
    Database { path: PathBuf, error: Box<redb::Error> },
}

/// The redb database of a node. Reads and writes are blocking: call them off the async
/// workers (`spawn_blocking`) where they may take long.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store of node `name` in `dir`.
    pub fn open(dir: &Path, name: &NodeName) -> Result<Store, StoreError> {
        crate::private::create_dir(dir).map_err(|error| StoreError::CreateDir { path: dir.to_owned(), error })?;
        let path = dir.join(STORE_FILE);
        let existed = path.exists();
        let mut db = match Database::create(&path) {
            Ok(db) if existed => {
                crate::private::warn_if_open(&path);
                db
            }
            Ok(db) => {
                let failed =
                    |error| StoreError::Database { path: path.clone(), error: Box::new(redb::Error::Io(error)) };
                crate::private::restrict(&path).map_err(failed)?;
                db
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path: dir.to_owned() });
            }
            Err(error) => {
                return Err(StoreError::Database { path, error: Box::new(error.into()) });
            }
        };
        // redb repairs what an unclean stop left on open; a file changed behind its back (a
        // bad disk, a truncation) shows here, before anything is served from it.
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                let detail = "failed redb's integrity check (redb repaired it, perhaps by dropping commits)";
                return Err(StoreError::Corrupt { path, record: "the file".into(), detail: detail.into() });
            }
            Err(error) => return Err(StoreError::Database { path, error: Box::new(error.into()) }),
        }
        let store = Store { db, path };
        store.claim(name)?;
        let rewritten = store.rewrite_older_records()?;
        if rewritten > 0 {
            tracing::info!(records = rewritten, format = newest(), "rewrote records of an older format in the newest");
        }
        Ok(store)
    }

    /// Rewrites in the newest format, in one transaction, every generation and the snapshot
    /// that an older build wrote, so that the next build, which reads only its own format and
    /// the one before, reads the whole store. A record that does not decode is left as it is:
    /// reading it later reports it. Returns how many records were rewritten.
    fn rewrite_older_records(&self) -> Result<usize, StoreError> {
        let e = self.error();
        let newest = newest();
        let older = |bytes: &[u8]| bytes.first().is_some_and(|&version| version < newest);
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        let mut rewritten = 0;
        {
            let mut table = txn.open_table(GENERATIONS).map_err(|x| e(x.into()))?;
            let mut old: Vec<((String, u64), Generation)> = Vec::new();
            for row in table.iter().map_err(|x| e(x.into()))? {
                let (key, value) = row.map_err(|x| e(x.into()))?;
                if older(value.value())
                    && let Ok((generation, _)) = decode_versioned::<Generation>(value.value(), "generation")
                {
                    let (origin, seq) = key.value();
                    old.push(((origin.to_owned(), seq), generation));
                }
            }
            for ((origin, seq), generation) in &old {
                table.insert((origin.as_str(), *seq), encode(generation).as_slice()).map_err(|x| e(x.into()))?;
            }
            rewritten += old.len();
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(|x| e(x.into()))?;
            let snapshot = match snapshots.get(SNAPSHOT_KEY).map_err(|x| e(x.into()))? {
                Some(bytes) if older(bytes.value()) => decode_versioned::<Snapshot>(bytes.value(), "snapshot").ok(),
                _ => None,
            };
            if let Some((snapshot, _)) = snapshot {
                snapshots.insert(SNAPSHOT_KEY, encode(&snapshot).as_slice()).map_err(|x| e(x.into()))?;
                rewritten += 1;
            }
        }
        txn.commit().map_err(|x| e(x.into()))?;
        Ok(rewritten)
    }

    /// Whether the error says the file's content is damaged (as opposed to the store being
    /// locked, owned by another node, or the disk refusing a write): the node then moves the
    /// file aside and recovers from its peers instead of refusing to start.
    pub fn is_corruption(error: &StoreError) -> bool {
        match error {
            StoreError::Corrupt { .. } => true,
            StoreError::Database { error, .. } => match error.as_ref() {
                // Not `UpgradeRequired`: a file of an older redb format is an upgrade to plan.
                redb::Error::Corrupted(_) => true,
                redb::Error::Io(io) => {
                    matches!(io.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData)
                }
                _ => false,
            },
            StoreError::CreateDir { .. }
            | StoreError::Locked { .. }
            | StoreError::WrongNode { .. }
            | StoreError::Format { .. } => false,
        }
    }

    /// Moves the store file of `dir` aside, to `grapevine.redb.corrupt-UNIX_MS`, and returns
    /// where it went: kept for a post-mortem, never read again.
    pub fn quarantine(dir: &Path) -> Result<PathBuf, StoreError> {
        let path = dir.join(STORE_FILE);
        let now = clock::unix_ms();
        let aside = dir.join(format!("{STORE_FILE}.corrupt-{now}"));
        std::fs::rename(&path, &aside)
            .map_err(|error| StoreError::Database { path, error: Box::new(redb::Error::Io(error)) })?;
        Ok(aside)
    }

    /// Why the node is recovering its log from peers, if an unfinished recovery left a mark.
    pub fn recovering(&self) -> Result<Option<String>, StoreError> {
        let e = self.error();
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let meta = txn.open_table(META).map_err(|x| e(x.into()))?;
        Ok(meta.get(META_RECOVERING).map_err(|x| e(x.into()))?.map(|v| v.value().to_owned()))
    }

    /// Marks the store as recovering (with why), or clears the mark once caught up.
    pub fn set_recovering(&self, reason: Option<&str>) -> Result<(), StoreError> {
        let e = self.error();
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|x| e(x.into()))?;
            match reason {
                Some(reason) => meta.insert(META_RECOVERING, reason).map(|_| ()),
                None => meta.remove(META_RECOVERING).map(|_| ()),
            }
            .map_err(|x| e(x.into()))?;
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// A record that does not decode: written by another format version, or damaged.
    fn undecodable(&self, record: &str, error: WireError) -> StoreError {
        let (path, record) = (self.path.clone(), record.to_owned());
        match error {
            WireError::UnknownVersion { .. } => StoreError::Format { path, record, error },
            other => StoreError::Corrupt { path, record, detail: other.to_string() },
        }
    }

    fn error(&self) -> impl Fn(redb::Error) -> StoreError + '_ {
        |error| StoreError::Database { path: self.path.clone(), error: Box::new(error) }
    }

    /// Records which node owns the store, or checks that it is `name`.
    fn claim(&self, name: &NodeName) -> Result<(), StoreError> {
        let e = self.error();
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|x| e(x.into()))?;
            let owner = meta.get(META_NODE).map_err(|x| e(x.into()))?.map(|v| v.value().to_owned());
            match owner {
                Some(found) if found != name.as_str() => {
                    let path = self.path.parent().unwrap_or(&self.path).to_owned();
                    return Err(StoreError::WrongNode { path, expected: name.to_string(), found });
                }
                Some(_) => {}
                None => {
                    meta.insert(META_NODE, name.as_str()).map_err(|x| e(x.into()))?;
                }
            }
            txn.open_table(GENERATIONS).map_err(|x| e(x.into()))?;
            txn.open_table(SNAPSHOTS).map_err(|x| e(x.into()))?;
            txn.open_table(RELEASED).map_err(|x| e(x.into()))?;
            txn.open_table(REVERTS).map_err(|x| e(x.into()))?;
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// The snapshot of compacted generations (empty before the first compaction), validated.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let e = self.error();
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(SNAPSHOTS).map_err(|x| e(x.into()))?;
        let Some(bytes) = table.get(SNAPSHOT_KEY).map_err(|x| e(x.into()))? else {
            return Ok(Snapshot::default());
        };
        let corrupt =
            |detail: String| StoreError::Corrupt { path: self.path.clone(), record: "snapshot".to_owned(), detail };
        let (snapshot, _) =
            decode_versioned::<Snapshot>(bytes.value(), "snapshot").map_err(|x| self.undecodable("snapshot", x))?;
        validate_snapshot(&snapshot).map_err(|x| corrupt(x.to_string()))?;
        Ok(snapshot)
    }

    /// Replaces the snapshot and deletes the generations it now covers, in one transaction.
    pub fn compact(&self, snapshot: &Snapshot, covered: &[GenId]) -> Result<(), StoreError> {
        let e = self.error();
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(|x| e(x.into()))?;
            snapshots.insert(SNAPSHOT_KEY, encode(snapshot).as_slice()).map_err(|x| e(x.into()))?;
            let mut table = txn.open_table(GENERATIONS).map_err(|x| e(x.into()))?;
            let mut released = txn.open_table(RELEASED).map_err(|x| e(x.into()))?;
            for id in covered {
                table.remove((id.origin.as_str(), id.seq)).map_err(|x| e(x.into()))?;
                released.remove((id.origin.as_str(), id.seq)).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// Records generations as released to this node, durably.
    pub fn release(&self, ids: &[GenId]) -> Result<(), StoreError> {
        let e = self.error();
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut table = txn.open_table(RELEASED).map_err(|x| e(x.into()))?;
            for id in ids {
                table.insert((id.origin.as_str(), id.seq), ()).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// The generations released to this node.
    pub fn released(&self) -> Result<BTreeSet<GenId>, StoreError> {
        self.ids(RELEASED)
    }

    /// Records reverts, durably.
    pub fn put_reverts(&self, reverts: &[Revert]) -> Result<(), StoreError> {
        let e = self.error();
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut table = txn.open_table(REVERTS).map_err(|x| e(x.into()))?;
            for revert in reverts {
                table.insert((revert.target.origin.as_str(), revert.target.seq), ()).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// The reverts this node holds.
    pub fn reverts(&self) -> Result<Vec<Revert>, StoreError> {
        Ok(self.ids(REVERTS)?.iter().map(Revert::of).collect())
    }

    /// The generation ids that key `table`.
    fn ids(&self, table: TableDefinition<(&str, u64), ()>) -> Result<BTreeSet<GenId>, StoreError> {
        let e = self.error();
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(table).map_err(|x| e(x.into()))?;
        let mut ids = BTreeSet::new();
        for row in table.iter().map_err(|x| e(x.into()))? {
            let (key, _) = row.map_err(|x| e(x.into()))?;
            let (origin, seq) = key.value();
            let origin = origin.parse::<NodeName>().map_err(|error| StoreError::Corrupt {
                path: self.path.clone(),
                record: format!("{origin}.{seq}"),
                detail: error.to_string(),
            })?;
            ids.insert(GenId { origin, seq });
        }
        Ok(ids)
    }

    /// Every stored generation, each checked against its hash and validated.
    pub fn load(&self) -> Result<Vec<Generation>, StoreError> {
        let e = self.error();
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(GENERATIONS).map_err(|x| e(x.into()))?;
        let mut generations = Vec::new();
        for row in table.iter().map_err(|x| e(x.into()))? {
            let (key, value) = row.map_err(|x| e(x.into()))?;
            let (origin, seq) = key.value();
            generations.push(self.decode_record(origin, seq, value.value())?);
        }
        Ok(generations)
    }

    fn decode_record(&self, origin: &str, seq: u64, bytes: &[u8]) -> Result<Generation, StoreError> {
        let corrupt =
            |detail: String| StoreError::Corrupt { path: self.path.clone(), record: format!("{origin}.{seq}"), detail };
        let (generation, _) = decode_versioned::<Generation>(bytes, "generation")
            .map_err(|x| self.undecodable(&format!("{origin}.{seq}"), x))?;
        validate_generation(&generation).map_err(|x| corrupt(x.to_string()))?;
        let id = generation.id();
        if id.origin.as_str() != origin || id.seq != seq {
            return Err(corrupt(format!("stored under {origin}.{seq} but holds {id}")));
        }
        Ok(generation)
    }

    /// Writes a consistent copy of the whole store to a new file at `path` (which must not
    /// exist): every table as of one read transaction, while the node goes on writing. The
    /// copy is a store of the same node, to put in place of `grapevine.redb` to restore it.
    pub fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        let boxed = |error: Box<redb::Error>| StoreError::Database { path: path.to_owned(), error };
        let failed = |error: redb::Error| boxed(Box::new(error));
        if path.exists() {
            let exists = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the backup file already exists");
            return Err(failed(redb::Error::Io(exists)));
        }
        let copy = Database::create(path).map_err(|x| failed(x.into()))?;
        crate::private::restrict(path).map_err(|x| failed(redb::Error::Io(x)))?;
        let read = self.db.begin_read().map_err(|x| failed(x.into()))?;
        let write = copy.begin_write().map_err(|x| failed(x.into()))?;
        copy_table(&read, &write, GENERATIONS).map_err(boxed)?;
        copy_table(&read, &write, RELEASED).map_err(boxed)?;
        copy_table(&read, &write, REVERTS).map_err(boxed)?;
        copy_table(&read, &write, SNAPSHOTS).map_err(boxed)?;
        copy_table(&read, &write, META).map_err(boxed)?;
        write.commit().map_err(|x| failed(x.into()))
    }

    /// Writes generations in one transaction and waits until they are durable.
    pub fn put(&self, generations: &[Generation]) -> Result<(), StoreError> {
        let e = self.error();
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut table = txn.open_table(GENERATIONS).map_err(|x| e(x.into()))?;
            for generation in generations {
                let id = generation.id();
                table.insert((id.origin.as_str(), id.seq), encode(generation).as_slice()).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// Generations a peer with vector `have` lacks, in id order, until their encoded size
    /// would pass `max_bytes` (at least one is returned, whatever its size). The flag is true
    /// when more were left out.
    pub fn missing_from(&self, have: &VersionVector, max_bytes: usize) -> Result<(Vec<Generation>, bool), StoreError> {
        let e = self.error();
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(GENERATIONS).map_err(|x| e(x.into()))?;
        let mut generations = Vec::new();
        let mut bytes = 0;
        for row in table.iter().map_err(|x| e(x.into()))? {
            let (key, value) = row.map_err(|x| e(x.into()))?;
            let (origin, seq) = key.value();
            let lacks = origin.parse::<NodeName>().map(|o| seq > have.get(&o)).unwrap_or(false);
            if !lacks {
                continue;
            }
            let value = value.value();
            if !generations.is_empty() && bytes + value.len() > max_bytes {
                return Ok((generations, true));
            }
            bytes += value.len();
            generations.push(self.decode_record(origin, seq, value)?);
        }
        Ok((generations, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(origin: &str, seq: u64) -> Generation {
        grapevine_proto::testing::put(origin, seq, seq, "k", &seq.to_string())
    }

    #[test]
    fn generations_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let name: NodeName = "n1".parse().unwrap();
        let stored = vec![generation("n1", 1), generation("n2", 1), generation("n2", 2)];
        Store::open(dir.path(), &name).unwrap().put(&stored).unwrap();
        let store = Store::open(dir.path(), &name).unwrap();
        assert_eq!(store.load().unwrap(), stored);
        let mut have = VersionVector::default();
        have.raise("n2".parse().unwrap(), 1);
        let (missing, more) = store.missing_from(&have, usize::MAX).unwrap();
        assert_eq!(missing, vec![stored[0].clone(), stored[2].clone()]);
        assert!(!more);
        let (first, more) = store.missing_from(&have, 1).unwrap();
        assert_eq!((first.len(), more), (1, true));
    }

    #[test]
    fn a_second_open_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let name: NodeName = "n1".parse().unwrap();
        let _first = Store::open(dir.path(), &name).unwrap();
        assert!(matches!(Store::open(dir.path(), &name), Err(StoreError::Locked { .. })));
    }

    #[test]
    fn another_nodes_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), &"n1".parse().unwrap()).unwrap());
        let error = Store::open(dir.path(), &"n2".parse().unwrap()).err().unwrap();
        assert!(error.to_string().contains("belongs to node \"n1\""), "{error}");
        assert!(!Store::is_corruption(&error));
    }

    /// Writes `bytes` as record n1.1, past every check.
    fn raw_record(store: &Store, bytes: &[u8]) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(GENERATIONS).unwrap().insert(("n1", 1), bytes).unwrap();
        txn.commit().unwrap();
    }

    /// A record of format 6, as the format-6 build wrote it: read, and rewritten in the newest
    /// format when the store opens, so the build after this one reads it too.
    #[test]
    fn records_of_older_formats_are_rewritten_in_the_newest_on_open() {
        let fixture = include_str!("../../proto/tests/fixtures/wire-v6.txt");
        let hex = fixture.lines().find_map(|line| line.strip_prefix("generation ")).unwrap();
        let older = hex::decode(hex).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let name: NodeName = "old1".parse().unwrap();
        let store = Store::open(dir.path(), &name).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(GENERATIONS).unwrap().insert(("old1", 7), older.as_slice()).unwrap();
        txn.commit().unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded[0].id().to_string(), "old1.7", "read as it is before the rewrite");
        drop(store);
        let store = Store::open(dir.path(), &name).unwrap();
        let txn = store.db.begin_read().unwrap();
        let stored = txn.open_table(GENERATIONS).unwrap().get(("old1", 7)).unwrap().unwrap().value().to_vec();
        assert_eq!(stored[0], grapevine_proto::wire::WIRE_VERSION);
        assert_eq!(store.load().unwrap(), loaded, "the same generation, hash and all");
    }

    #[test]
    fn a_damaged_record_is_corruption_and_another_format_version_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let name: NodeName = "n1".parse().unwrap();
        let store = Store::open(dir.path(), &name).unwrap();
        let mut bytes = encode(&generation("n1", 1));
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        raw_record(&store, &bytes);
        let damaged = store.load().unwrap_err();
        assert!(Store::is_corruption(&damaged), "{damaged}");
        bytes[0] = 2;
        raw_record(&store, &bytes);
        let older = store.load().unwrap_err();
        assert!(!Store::is_corruption(&older), "{older}");
        assert!(older.to_string().contains("expected format version 6 to 7, got version 2"), "{older}");
        drop(store);
        let aside = Store::quarantine(dir.path()).unwrap();
        assert!(aside.file_name().unwrap().to_string_lossy().starts_with("grapevine.redb.corrupt-"));
        assert!(Store::open(dir.path(), &name).unwrap().load().unwrap().is_empty(), "a fresh store after quarantine");
    }
}
