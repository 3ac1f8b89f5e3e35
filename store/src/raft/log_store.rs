//! The Raft log and vote on sled. Appends and votes are flushed to disk before they are
//! acknowledged; a failed flush ends the process (an fsync is never retried: after a failed
//! fsync the kernel may have dropped the dirty pages, so a retry could report success falsely).
//!
//! An entry larger than [`PART_BYTES`] (a group-commit batch of many writes) is stored in parts:
//! the first under the entry's key, the rest under that key followed by the part number. sled
//! writes a page larger than a quarter of its 512 KiB segment to a file of its own, and a page is
//! a whole B-tree leaf (up to 17 items before it splits): such a file costs a create, a write,
//! two fsyncs (file and directory), a read back and a delete. Leaves of small parts stay in
//! sled's log, which the append's one flush already covers.
#![expect(
    clippy::result_large_err,
    reason = "openraft fixes StorageError as the storage traits' error type"
)]

use super::durability::Durability;
use super::types::{LogId, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StorageIOError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const ENTRY: u8 = b'e';
const VOTE: &[u8] = b"vote";
const PURGED: &[u8] = b"purged";
const COMMITTED: &[u8] = b"committed";

/// The largest value an entry is stored in: a leaf of 17 such parts stays below sled's limit
/// for pages kept in its log (segment / 4 − headers: about 128 KiB).
pub const PART_BYTES: usize = 7 * 1024;

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Part `n` (from 1) of entry `index`: sorts after the entry's key and before the next entry's.
fn part_key(index: u64, n: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..9].copy_from_slice(&entry_key(index));
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The end of a key range that ends with entry `index`, its parts included.
fn through(index: u64) -> Bound<Vec<u8>> {
    match index.checked_add(1) {
        Some(next) => Bound::Excluded(entry_key(next).to_vec()),
        None => Bound::Excluded(vec![ENTRY + 1]),
    }
}

/// Stops the process after a failed flush. See the module documentation for why.
pub(crate) fn flush_failed(what: &str, err: &dyn std::fmt::Display) -> ! {
    tracing::error!(%err, what, "flush to disk failed; stopping (a failed fsync is never retried)");
    eprintln!("flotilla-store: flush of {what} failed: {err}; exiting");
    std::process::exit(70)
}

#[derive(Clone)]
pub struct LogStore {
    durability: Arc<Durability>,
    tree: sled::Tree,
}

impl LogStore {
    pub fn open(db: &sled::Db, durability: Arc<Durability>) -> Result<Self, sled::Error> {
        Ok(LogStore { durability, tree: db.open_tree("raft")? })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let v = self.tree.get(key).map_err(|e| read_err(ErrorSubject::Store, e))?;
        v.map(|v| bincode::deserialize(&v))
            .transpose()
            .map_err(|e| read_err(ErrorSubject::Store, e))
    }

    async fn flush(&self, what: &str, deep: bool) {
        if let Err(e) = self.durability.sync(deep).await {
            flush_failed(what, &e);
        }
    }
}

fn read_err(subject: ErrorSubject<NodeId>, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, openraft::AnyError::new(&e)).into()
}

fn write_err(subject: ErrorSubject<NodeId>, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Write, openraft::AnyError::new(&e)).into()
}

impl LogStore {
    /// The entries whose keys lie in `range`, their parts joined.
    fn read_entries(
        &self,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let corrupt = |what: String| read_err(ErrorSubject::Logs, std::io::Error::other(what));
        let finish = |head: &sled::IVec, joined: &Option<Vec<u8>>| {
            bincode::deserialize::<Entry<TypeConfig>>(joined.as_deref().unwrap_or(head))
                .map_err(|e| read_err(ErrorSubject::Logs, e))
        };
        let mut out = Vec::new();
        // The entry being read: its key, its first value, and (only once a part follows) the
        // parts joined; the part number last seen.
        let mut current: Option<(sled::IVec, sled::IVec, Option<Vec<u8>>, u32)> = None;
        for item in self.tree.range::<Vec<u8>, _>(range) {
            let (k, v) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            if k.len() == 9 {
                if let Some((_, head, joined, _)) = current.take() {
                    out.push(finish(&head, &joined)?);
                }
                current = Some((k, v, None, 0));
                continue;
            }
            let n = k.get(9..).and_then(|n| <[u8; 4]>::try_from(n).ok()).map(u32::from_be_bytes);
            match (&mut current, n) {
                (Some((key, head, joined, parts)), Some(n))
                    if k[..9] == key[..] && n == *parts + 1 =>
                {
                    joined.get_or_insert_with(|| head.to_vec()).extend_from_slice(&v);
                    *parts = n;
                }
                _ => {
                    return Err(corrupt(format!("log key {k:?} is not the next part of an entry")))
                }
            }
        }
        if let Some((_, head, joined, _)) = current {
            out.push(finish(&head, &joined)?);
        }
        Ok(out)
    }
}

/// Adds `e` to `batch`, in parts when it is large.
fn insert_entry(batch: &mut sled::Batch, e: &Entry<TypeConfig>) -> Result<(), StorageError> {
    let v = bincode::serialize(e).map_err(|err| write_err(ErrorSubject::Logs, err))?;
    let index = e.get_log_id().index;
    let mut chunks = v.chunks(PART_BYTES);
    batch.insert(&entry_key(index), chunks.next().unwrap_or_default());
    for (n, part) in (1u32..).zip(chunks) {
        batch.insert(&part_key(index, n), part);
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => entry_key(*i),
            Bound::Excluded(i) => entry_key(*i + 1),
            Bound::Unbounded => entry_key(0),
        };
        let end = match range.end_bound() {
            Bound::Included(i) => through(*i),
            Bound::Excluded(i) => Bound::Excluded(entry_key(*i).to_vec()),
            Bound::Unbounded => through(u64::MAX),
        };
        self.read_entries((Bound::Included(start.to_vec()), end))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta::<Option<LogId>>(PURGED)?.flatten();
        let last = self
            .tree
            .scan_prefix([ENTRY])
            .next_back()
            .transpose()
            .map_err(|e| read_err(ErrorSubject::Logs, e))?;
        let last_index =
            last.and_then(|(k, _)| Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?)));
        let last_log_id = match last_index {
            Some(i) => {
                let range = (Bound::Included(entry_key(i).to_vec()), through(i));
                self.read_entries(range)?.last().map(|e| *e.get_log_id())
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let v = bincode::serialize(vote).map_err(|e| write_err(ErrorSubject::Vote, e))?;
        self.tree.insert(VOTE, v).map_err(|e| write_err(ErrorSubject::Vote, e))?;
        self.flush("vote", false).await;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: the committed index is a hint that lets a restart apply sooner; Raft
        // recovers it from the quorum if it is lost.
        let v = bincode::serialize(&committed).map_err(|e| write_err(ErrorSubject::Store, e))?;
        self.tree.insert(COMMITTED, v).map_err(|e| write_err(ErrorSubject::Store, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            insert_entry(&mut batch, &e)?;
        }
        self.tree.apply_batch(batch).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        // Acknowledged only once durable; concurrent proposals share this flush (group commit).
        self.flush("log entries", false).await;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let range = (Bound::Included(entry_key(log_id.index).to_vec()), through(u64::MAX));
        for item in self.tree.range::<Vec<u8>, _>(range) {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        self.flush("log truncation", false).await;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let v = bincode::serialize(&Some(log_id)).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        batch.insert(PURGED, v);
        let range = (Bound::Included(entry_key(0).to_vec()), through(log_id.index));
        for item in self.tree.range::<Vec<u8>, _>(range) {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::proto::peer::{command, Command};
    use crate::raft::types::Wire;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, value_len: usize) -> Entry<TypeConfig> {
        let cmd = Command {
            op: Some(command::Op::Put(PutRequest {
                key: format!("k{index}").into_bytes(),
                value: (0..value_len).map(|i| (i % 251) as u8).collect(),
                ..Default::default()
            })),
            request_id: index,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Wire(cmd)),
        }
    }

    #[tokio::test]
    async fn large_entries_are_stored_in_parts_and_never_as_blob_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let durability = Arc::new(Durability::open(&db, dir.path()).unwrap());
        let mut log = LogStore::open(&db, durability.clone()).unwrap();
        // Small, exactly one part, several parts, large: around every boundary.
        let sizes = [10, PART_BYTES - 200, PART_BYTES * 3 + 17, 1 << 20, 5];
        let mut batch = sled::Batch::default();
        for (i, len) in sizes.iter().enumerate() {
            insert_entry(&mut batch, &entry(i as u64 + 1, *len)).unwrap();
        }
        log.tree.apply_batch(batch).unwrap();
        durability.sync(false).await.unwrap();
        // Many large entries, so leaves fill, split and are rewritten whole.
        let mut batch = sled::Batch::default();
        for i in 100..160 {
            insert_entry(&mut batch, &entry(i, 300 << 10)).unwrap();
        }
        log.tree.apply_batch(batch).unwrap();
        durability.sync(false).await.unwrap();
        let blobs = std::fs::read_dir(dir.path().join("blobs")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(blobs, 0, "no page became a blob file");
        assert_eq!(log.try_get_log_entries(100..160).await.unwrap().len(), 60);
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 100)).await.unwrap();

        // Entries compared by their encoding: their Debug form leaves the payload out.
        let debug = |v: &[Entry<TypeConfig>]| bincode::serialize(v).unwrap();
        let all: Vec<_> = (1..=5).map(|i| entry(i, sizes[i as usize - 1])).collect();
        assert_eq!(debug(&log.try_get_log_entries(1..=5).await.unwrap()), debug(&all));
        assert_eq!(debug(&log.try_get_log_entries(..).await.unwrap()), debug(&all));
        assert_eq!(debug(&log.try_get_log_entries(3..4).await.unwrap()), debug(&all[2..3]));
        assert_eq!(debug(&log.try_get_log_entries(2..=4).await.unwrap()), debug(&all[1..4]));
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(all[4].log_id));

        // Truncating at a large entry removes its parts too; the last entry is then large.
        log.truncate(all[4].log_id).await.unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(all[3].log_id));
        log.truncate(all[3].log_id).await.unwrap();
        assert_eq!(debug(&log.try_get_log_entries(..).await.unwrap()), debug(&all[..3]));
        // Purging through a large entry leaves none of its parts behind.
        log.purge(all[2].log_id).await.unwrap();
        assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
        assert_eq!(log.tree.scan_prefix([ENTRY]).count(), 0);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(all[2].log_id));
    }

    #[tokio::test]
    async fn a_part_without_its_entry_is_reported_not_misread() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let durability = Arc::new(Durability::open(&db, dir.path()).unwrap());
        let mut log = LogStore::open(&db, durability).unwrap();
        let mut batch = sled::Batch::default();
        insert_entry(&mut batch, &entry(1, PART_BYTES * 2)).unwrap();
        log.tree.apply_batch(batch).unwrap();
        log.tree.remove(entry_key(1)).unwrap();
        let err = log.try_get_log_entries(..).await.unwrap_err();
        assert!(err.to_string().contains("not the next part"), "{err}");
    }
}
