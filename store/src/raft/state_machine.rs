//! The Raft state machine: applies committed commands to the MVCC key space, publishes the
//! changes to the watch hub, and builds and installs snapshots.
//!
//! Applied state is written to sled without a flush: the Raft log is durable before anything is
//! applied, and the last-applied log id is written in the same atomic batch as the changes, so
//! after a crash the state machine resumes from a consistent point and Raft re-applies the rest.
#![expect(
    clippy::result_large_err,
    reason = "openraft fixes StorageError as the storage traits' error type"
)]

use super::durability::Durability;
use super::log_store::flush_failed;
use super::types::{LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Wire};
use crate::mvcc::{meta_key, LeaseEffect, Mvcc};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::peer::command::Op;
use crate::proto::peer::command_result::Op as ResultOp;
use crate::proto::peer::{CommandResult, CommandResults};
use crate::watch::WatchHub;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError,
};
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

const SNAPSHOT_KEY: &[u8] = b"current";

/// State shared by the state machine, readers and watchers of one member.
pub struct SmShared {
    pub(crate) db: sled::Db,
    pub(crate) durability: Arc<Durability>,
    pub(crate) mvcc: Arc<RwLock<Mvcc>>,
    pub(crate) hub: Arc<WatchHub>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// When each lease expires if not kept alive. Acted on by the leader only.
    pub(crate) lease_deadlines: Mutex<HashMap<i64, Instant>>,
    snapshots: sled::Tree,
    /// Results of recently applied writes by request id, so that a retried write is answered
    /// instead of applied twice. Every member applies the same log, so a new leader knows
    /// the ids too; kept in memory, for the seconds a write is retried.
    recent: Mutex<RecentRequests>,
}

#[derive(Default)]
pub(crate) struct RecentRequests {
    results: HashMap<u64, CommandResult>,
    order: std::collections::VecDeque<u64>,
}

impl RecentRequests {
    const CAPACITY: usize = 16_384;

    fn insert(&mut self, id: u64, result: &CommandResult) {
        if self.results.insert(id, result.clone()).is_none() {
            self.order.push_back(id);
            if self.order.len() > Self::CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.results.remove(&old);
                }
            }
        }
    }
}

impl SmShared {
    pub fn applied(&self) -> (Option<LogId>, StoredMembership) {
        self.applied.lock().expect("poisoned").clone()
    }

    /// Resets every lease deadline to a full TTL from now (on becoming leader, as etcd does).
    pub fn refresh_leases(&self) {
        let m = self.mvcc.read().expect("poisoned");
        let now = Instant::now();
        let mut d = self.lease_deadlines.lock().expect("poisoned");
        d.clear();
        for (id, l) in m.leases() {
            d.insert(*id, now + std::time::Duration::from_secs(l.ttl.max(0) as u64));
        }
    }
}

#[derive(Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<SmShared>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl StateMachine {
    pub fn open(db: &sled::Db, durability: Arc<Durability>) -> Result<Self, StorageError> {
        let tree = db
            .open_tree("state")
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let snapshots = db
            .open_tree("snapshots")
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let mvcc =
            Mvcc::open(tree).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let applied = read_applied(mvcc.tree())?;
        let hub = Arc::new(WatchHub::new(mvcc.revision()));
        let shared = Arc::new(SmShared {
            db: db.clone(),
            durability,
            mvcc: Arc::new(RwLock::new(mvcc)),
            hub,
            applied: Mutex::new(applied),
            lease_deadlines: Mutex::new(HashMap::new()),
            snapshots,
            recent: Mutex::new(RecentRequests::default()),
        });
        shared.refresh_leases();
        Ok(StateMachine { shared })
    }
}

fn read_applied(tree: &sled::Tree) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let get = |name: &str| {
        tree.get(meta_key(name)).map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    };
    let applied = match get("applied")? {
        Some(v) => bincode::deserialize(&v)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?,
        None => None,
    };
    let membership = match get("membership")? {
        Some(v) => bincode::deserialize(&v)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sh = &self.shared;
        // Hold the read lock so the dump is one consistent revision.
        let (data, applied, membership) = {
            let m = sh.mvcc.read().expect("poisoned");
            let (applied, membership) = sh.applied();
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for item in m.tree().iter() {
                let (k, v) =
                    item.map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
                pairs.push((k.to_vec(), v.to_vec()));
            }
            let data = bincode::serialize(&pairs)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
            (data, applied, membership)
        };
        let snapshot_id = format!(
            "{}-{}",
            applied.map_or(0, |l| l.leader_id.term),
            applied.map_or(0, |l| l.index)
        );
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        keep_snapshot(sh, &meta, &data)?;
        // Raft purges the log up to this snapshot next: it and the applied state must be durable.
        if let Err(e) = sh.durability.sync(true).await {
            flush_failed("snapshot", &e);
        }
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.shared.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Wire<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let sh = &self.shared;
        let mut m = sh.mvcc.write().expect("poisoned");
        let mut batch = sled::Batch::default();
        let mut results = Vec::new();
        let mut published = Vec::new();
        let mut lease_effects = Vec::new();
        let (mut applied, mut membership) = sh.applied();
        let mut recent = sh.recent.lock().expect("poisoned");
        for entry in entries {
            applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(Wire(CommandResult::default())),
                EntryPayload::Membership(mem) => {
                    membership = StoredMembership::new(Some(entry.log_id), mem);
                    results.push(Wire(CommandResult::default()));
                }
                EntryPayload::Normal(Wire(cmd)) => {
                    let mut apply_one = |cmd: &crate::proto::peer::Command| {
                        if cmd.request_id != 0 {
                            if let Some(r) = recent.results.get(&cmd.request_id) {
                                return r.clone();
                            }
                        }
                        let mut a = m.apply(cmd, &mut batch);
                        if let Some(header) = header_slot(&mut a.result) {
                            *header = a.revision;
                        }
                        if !a.changes.is_empty() {
                            published.push((a.revision, a.changes));
                        }
                        lease_effects.extend(a.lease_effect);
                        if cmd.request_id != 0 {
                            recent.insert(cmd.request_id, &a.result);
                        }
                        a.result
                    };
                    let result = match &cmd.op {
                        Some(Op::Batch(b)) => CommandResult {
                            op: Some(ResultOp::Batch(CommandResults {
                                results: b.commands.iter().map(&mut apply_one).collect(),
                            })),
                            ..Default::default()
                        },
                        _ => apply_one(&cmd),
                    };
                    results.push(Wire(result));
                }
            }
        }
        batch.insert(meta_key("applied"), enc(&applied));
        batch.insert(meta_key("membership"), enc(&membership));
        m.tree()
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        *sh.applied.lock().expect("poisoned") = (applied, membership);
        {
            let mut d = sh.lease_deadlines.lock().expect("poisoned");
            for e in lease_effects {
                match e {
                    LeaseEffect::Granted { id, ttl } => {
                        d.insert(id, Instant::now() + std::time::Duration::from_secs(ttl as u64));
                    }
                    LeaseEffect::Revoked { id } => {
                        d.remove(&id);
                    }
                }
            }
        }
        for (rev, changes) in published {
            sh.hub.publish(rev, changes);
        }
        if sh.hub.published() < m.revision() {
            sh.hub.publish(m.revision(), Vec::new());
        }
        drop(m);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let sh = &self.shared;
        let data = snapshot.into_inner();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = bincode::deserialize(&data).map_err(|e| {
            io_err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, e)
        })?;
        let rev = {
            let mut m = sh.mvcc.write().expect("poisoned");
            let tree = m.tree().clone();
            let mut batch = sled::Batch::default();
            for item in tree.iter() {
                let (k, _) =
                    item.map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
                batch.remove(k);
            }
            for (k, v) in pairs {
                batch.insert(k, v);
            }
            batch.insert(meta_key("applied"), enc(&meta.last_log_id));
            batch.insert(meta_key("membership"), enc(&meta.last_membership));
            tree.apply_batch(batch)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
            m.rebuild().map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
            *sh.applied.lock().expect("poisoned") =
                (meta.last_log_id, meta.last_membership.clone());
            keep_snapshot(sh, meta, &data)?;
            sh.hub.reset(m.revision());
            m.revision()
        };
        sh.refresh_leases();
        if let Err(e) = sh.durability.sync(true).await {
            flush_failed("installed snapshot", &e);
        }
        tracing::info!(revision = rev, snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(v) = self
            .shared
            .snapshots
            .get(SNAPSHOT_KEY)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let s: StoredSnapshot = bincode::deserialize(&v)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

/// The response header of a command's result (`None` for a batch, whose parts have their own).
pub(crate) fn result_header(op: &mut ResultOp) -> Option<&mut Option<ResponseHeader>> {
    Some(match op {
        ResultOp::Put(x) => &mut x.header,
        ResultOp::DeleteRange(x) => &mut x.header,
        ResultOp::Txn(x) => &mut x.header,
        ResultOp::Compact(x) => &mut x.header,
        ResultOp::LeaseGrant(x) => &mut x.header,
        ResultOp::LeaseRevoke(x) => &mut x.header,
        ResultOp::Batch(_) => return None,
    })
}

/// Where the revision goes in a command's response header.
fn header_slot(r: &mut CommandResult) -> Option<&mut i64> {
    let h = result_header(r.op.as_mut()?)?;
    Some(&mut h.get_or_insert_with(Default::default).revision)
}

/// Keeps `data` as the member's current snapshot (what `get_current_snapshot` returns).
fn keep_snapshot(sh: &SmShared, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    // Same encoding as `StoredSnapshot`, without copying the data.
    #[derive(serde::Serialize)]
    struct Ref<'a> {
        meta: &'a SnapshotMeta,
        data: &'a [u8],
    }
    let bytes = bincode::serialize(&Ref { meta, data })
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
    sh.snapshots
        .insert(SNAPSHOT_KEY, bytes)
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
    Ok(())
}

/// bincode of the plain meta records, which cannot fail.
fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("bincode of plain data")
}
