//! The Raft log and vote on sled. Appends and votes are flushed to disk before they are
//! acknowledged; a failed flush ends the process (an fsync is never retried: after a failed
//! fsync the kernel may have dropped the dirty pages, so a retry could report success falsely).
#![expect(
    clippy::result_large_err,
    reason = "openraft fixes StorageError as the storage traits' error type"
)]

use super::durability::{Durability, BLOB_HINT_BYTES};
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

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
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
            Bound::Included(i) => Bound::Included(entry_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(entry_key(*i)),
            Bound::Unbounded => Bound::Included(entry_key(u64::MAX)),
        };
        let mut out = Vec::new();
        for item in self.tree.range::<[u8; 9], _>((Bound::Included(start), end)) {
            let (_, v) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            let entry: Entry<TypeConfig> =
                bincode::deserialize(&v).map_err(|e| read_err(ErrorSubject::Logs, e))?;
            out.push(entry);
        }
        Ok(out)
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
        let last_log_id = match last {
            Some((_, v)) => {
                let e: Entry<TypeConfig> =
                    bincode::deserialize(&v).map_err(|e| read_err(ErrorSubject::Logs, e))?;
                Some(*e.get_log_id())
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
        let mut deep = false;
        for e in entries {
            let v = bincode::serialize(&e).map_err(|err| write_err(ErrorSubject::Logs, err))?;
            deep |= v.len() >= BLOB_HINT_BYTES;
            batch.insert(&entry_key(e.get_log_id().index), v);
        }
        self.tree.apply_batch(batch).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        // Acknowledged only once durable; concurrent proposals share this flush (group commit).
        self.flush("log entries", deep).await;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.tree.range(entry_key(log_id.index)..=entry_key(u64::MAX)) {
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
        for item in self.tree.range(entry_key(0)..=entry_key(log_id.index)) {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        Ok(())
    }
}
