//! The MVCC key space with etcd's semantics, kept on one sled tree.
//!
//! ```text
//!  apply(Command) ──▶ in-memory index (key → revisions, current value) ──▶ Changes (for watchers)
//!        │
//!        └──▶ sled::Batch: 'k'+main+sub → mvccpb.Event   (the history, scanned by watches)
//!                          'l'+lease id → TTL
//!                          'm'+name     → revision, compact revision (+ Raft meta, by the caller)
//! ```
//!
//! Like etcd, the index lives in memory and is rebuilt from the history when the store opens;
//! unlike etcd, the current value of each live key is also kept in memory, so reads at the newest
//! revision never touch the disk. Reads at older revisions load the event from sled.
//!
//! A write transaction that changes anything takes the next revision; its changes get sub
//! revisions 0, 1, … in order. Everything a command does is validated before the first change, so
//! a rejected command changes nothing.

use crate::error::{show, StoreError};
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use crate::proto::peer::{command, command_result, Command, CommandResult};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

pub(crate) const EVENT_PREFIX: u8 = b'k';
pub(crate) const LEASE_PREFIX: u8 = b'l';
pub(crate) const META_PREFIX: u8 = b'm';

pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn event_key(main: i64, sub: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = EVENT_PREFIX;
    k[1..9].copy_from_slice(&main.to_be_bytes());
    k[9..17].copy_from_slice(&sub.to_be_bytes());
    k
}

fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE_PREFIX;
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k
}

fn parse_event_key(k: &[u8]) -> Option<(i64, i64)> {
    if k.len() != 17 || k[0] != EVENT_PREFIX {
        return None;
    }
    let main = i64::from_be_bytes(k[1..9].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rev {
    main: i64,
    sub: i64,
    tombstone: bool,
}

#[derive(Debug, Default)]
struct KeyHistory {
    /// Every revision of the key still in history, oldest first.
    revs: Vec<Rev>,
    /// The live value at the newest revision (`None`: deleted).
    current: Option<Arc<KeyValue>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// One change made by a command, as watchers see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: EventType,
    /// For a put the new key-value; for a delete the key with the deleting revision.
    pub kv: Arc<KeyValue>,
    pub prev: Option<Arc<KeyValue>>,
}

/// What applying a command did.
#[derive(Debug)]
pub struct Applied {
    pub result: CommandResult,
    /// The store revision after the command.
    pub revision: i64,
    /// The changes, all at `revision`; empty when the command changed no key.
    pub changes: Vec<Change>,
    pub lease_effect: Option<LeaseEffect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEffect {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

/// A key range as etcd defines it: `range_end` empty means the key alone, `"\0"` means every key
/// from `key` on, otherwise `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        KeyRange { key: key.to_vec(), range_end: range_end.to_vec() }
    }

    /// Rejects what etcd clients never mean: an empty key, or an end that is not after the key.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if !self.range_end.is_empty() && self.range_end != [0] && self.range_end <= self.key {
            return Err(StoreError::InvertedRange {
                key: show(&self.key),
                range_end: show(&self.range_end),
            });
        }
        Ok(())
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == self.key.as_slice();
        }
        if self.range_end == [0] {
            return k >= self.key.as_slice();
        }
        k >= self.key.as_slice() && k < self.range_end.as_slice()
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let start = if self.key == [0] && self.range_end == [0] {
            Bound::Unbounded
        } else {
            Bound::Included(self.key.as_slice())
        };
        let end = if self.range_end.is_empty() {
            Bound::Included(self.key.as_slice())
        } else if self.range_end == [0] {
            Bound::Unbounded
        } else {
            Bound::Excluded(self.range_end.as_slice())
        };
        (start, end)
    }
}

/// The MVCC state. Not thread-safe by itself: the state machine owns it behind a lock.
pub struct Mvcc {
    tree: sled::Tree,
    index: BTreeMap<Vec<u8>, KeyHistory>,
    rev: i64,
    compact_rev: i64,
    leases: BTreeMap<i64, Lease>,
}

/// The write in progress: its revision and the next sub revision.
struct WriteCtx<'b> {
    main: i64,
    sub: i64,
    batch: &'b mut sled::Batch,
    changes: Vec<Change>,
}

impl Mvcc {
    /// Opens the key space kept in `tree`, rebuilding the in-memory index from its history.
    pub fn open(tree: sled::Tree) -> Result<Self, StoreError> {
        let mut m =
            Mvcc { tree, index: BTreeMap::new(), rev: 0, compact_rev: 0, leases: BTreeMap::new() };
        m.rebuild()?;
        Ok(m)
    }

    fn read_i64(&self, name: &str) -> Result<i64, StoreError> {
        match self.tree.get(meta_key(name)).map_err(fatal)? {
            Some(v) => Ok(i64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StoreError::Fatal(format!("bad meta {name}")))?,
            )),
            None => Ok(0),
        }
    }

    /// Rebuilds the index from the tree (after open or after installing a snapshot).
    pub fn rebuild(&mut self) -> Result<(), StoreError> {
        self.index.clear();
        self.leases.clear();
        self.rev = self.read_i64("rev")?;
        self.compact_rev = self.read_i64("compact")?;
        for item in self.tree.scan_prefix([EVENT_PREFIX]) {
            let (k, v) = item.map_err(fatal)?;
            let (main, sub) = parse_event_key(&k)
                .ok_or_else(|| StoreError::Fatal("malformed history key".into()))?;
            let ev = Event::decode(v.as_ref()).map_err(|e| StoreError::Fatal(e.to_string()))?;
            let kv = ev.kv.unwrap_or_default();
            let tombstone = ev.r#type == EventType::Delete as i32;
            let hist = self.index.entry(kv.key.clone()).or_default();
            hist.revs.push(Rev { main, sub, tombstone });
            hist.current = if tombstone { None } else { Some(Arc::new(kv)) };
        }
        for item in self.tree.scan_prefix([LEASE_PREFIX]) {
            let (k, v) = item.map_err(fatal)?;
            let id = i64::from_be_bytes(k[1..9].try_into().map_err(|_| bad("lease key"))?);
            let ttl = i64::from_be_bytes(v.as_ref().try_into().map_err(|_| bad("lease ttl"))?);
            self.leases.insert(id, Lease { ttl, keys: BTreeSet::new() });
        }
        for (k, hist) in &self.index {
            if let Some(kv) = &hist.current {
                if let Some(l) = self.leases.get_mut(&kv.lease) {
                    l.keys.insert(k.clone());
                }
            }
        }
        Ok(())
    }

    pub fn revision(&self) -> i64 {
        self.rev
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub fn leases(&self) -> &BTreeMap<i64, Lease> {
        &self.leases
    }

    pub fn key_count(&self) -> usize {
        self.index.values().filter(|h| h.current.is_some()).count()
    }

    /// The value of `hist` at revision `rev` (`rev` not compacted).
    fn kv_at(&self, hist: &KeyHistory, rev: i64) -> Result<Option<Arc<KeyValue>>, StoreError> {
        if rev >= self.rev {
            return Ok(hist.current.clone());
        }
        let Some(r) = hist.revs.iter().rev().find(|r| r.main <= rev) else {
            return Ok(None);
        };
        if r.tombstone {
            return Ok(None);
        }
        if hist.revs.last() == Some(r) {
            return Ok(hist.current.clone());
        }
        Ok(Some(Arc::new(self.load_event(r.main, r.sub)?.kv.unwrap_or_default())))
    }

    fn load_event(&self, main: i64, sub: i64) -> Result<Event, StoreError> {
        let v = self
            .tree
            .get(event_key(main, sub))
            .map_err(fatal)?
            .ok_or_else(|| StoreError::Fatal(format!("history entry {main}/{sub} missing")))?;
        Event::decode(v.as_ref()).map_err(|e| StoreError::Fatal(e.to_string()))
    }

    fn check_read_revision(&self, requested: i64) -> Result<i64, StoreError> {
        let rev = if requested <= 0 { self.rev } else { requested };
        if rev > self.rev {
            return Err(StoreError::FutureRevision { requested: rev, current: self.rev });
        }
        if rev < self.compact_rev {
            return Err(StoreError::Compacted { compact_revision: self.compact_rev });
        }
        Ok(rev)
    }

    /// A range read (header left for the caller to fill).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        range.validate()?;
        let rev = self.check_read_revision(req.revision)?;
        let mut kvs: Vec<Arc<KeyValue>> = Vec::new();
        let mut count = 0i64;
        let sorted_by_key = req.sort_target == range_request::SortTarget::Key as i32
            && req.sort_order != range_request::SortOrder::Descend as i32;
        let filtered = req.min_mod_revision > 0
            || req.max_mod_revision > 0
            || req.min_create_revision > 0
            || req.max_create_revision > 0;
        // Without sorting or filters the scan can stop once it has one more key than the limit.
        let early_stop = sorted_by_key && !filtered && req.limit > 0 && !req.count_only;
        for (_, hist) in self.index.range::<[u8], _>(range.bounds()) {
            let Some(kv) = self.kv_at(hist, rev)? else { continue };
            count += 1;
            if req.count_only {
                continue;
            }
            if (req.min_mod_revision > 0 && kv.mod_revision < req.min_mod_revision)
                || (req.max_mod_revision > 0 && kv.mod_revision > req.max_mod_revision)
                || (req.min_create_revision > 0 && kv.create_revision < req.min_create_revision)
                || (req.max_create_revision > 0 && kv.create_revision > req.max_create_revision)
            {
                continue;
            }
            kvs.push(kv);
            if early_stop && kvs.len() as i64 > req.limit {
                // `count` must still be the whole range: count the rest without loading values.
                count += self.count_rest(&range, rev, &kvs.last().expect("non-empty").key)?;
                break;
            }
        }
        if !sorted_by_key {
            sort_kvs(&mut kvs, req.sort_target, req.sort_order);
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        let kvs = kvs
            .into_iter()
            .map(|kv| {
                let mut kv = Arc::unwrap_or_clone(kv);
                if req.keys_only {
                    kv.value.clear();
                }
                kv
            })
            .collect();
        Ok(RangeResponse { header: None, kvs, more, count })
    }

    fn count_rest(&self, range: &KeyRange, rev: i64, after: &[u8]) -> Result<i64, StoreError> {
        let (_, end) = range.bounds();
        let mut n = 0;
        for (_, hist) in self.index.range::<[u8], _>((Bound::Excluded(after), end)) {
            if rev >= self.rev {
                n += hist.current.is_some() as i64;
            } else if self.kv_at(hist, rev)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Applies one replicated command. Changes to sled go into `batch`, which the caller writes
    /// atomically together with its own bookkeeping.
    pub fn apply(&mut self, cmd: &Command, batch: &mut sled::Batch) -> Applied {
        let mut ctx = WriteCtx { main: self.rev + 1, sub: 0, batch, changes: Vec::new() };
        let mut lease_effect = None;
        let outcome: Result<command_result::Op, StoreError> = match &cmd.op {
            Some(command::Op::Put(p)) => {
                self.check_put(p).and_then(|()| self.put(&mut ctx, p)).map(command_result::Op::Put)
            }
            Some(command::Op::DeleteRange(d)) => KeyRange::new(&d.key, &d.range_end)
                .validate()
                .map(|()| command_result::Op::DeleteRange(self.delete_range(&mut ctx, d))),
            Some(command::Op::Txn(t)) => self.txn(&mut ctx, t).map(command_result::Op::Txn),
            Some(command::Op::Compact(c)) => self
                .compact(c.revision, ctx.batch)
                .map(|()| command_result::Op::Compact(Default::default())),
            Some(command::Op::LeaseGrant(g)) => {
                if self.leases.contains_key(&g.id) || g.id == 0 {
                    Err(StoreError::LeaseExists { id: g.id })
                } else {
                    self.leases.insert(g.id, Lease { ttl: g.ttl, keys: BTreeSet::new() });
                    ctx.batch.insert(&lease_key(g.id), &g.ttl.to_be_bytes());
                    lease_effect = Some(LeaseEffect::Granted { id: g.id, ttl: g.ttl });
                    Ok(command_result::Op::LeaseGrant(LeaseGrantResponse {
                        header: None,
                        id: g.id,
                        ttl: g.ttl,
                        error: String::new(),
                    }))
                }
            }
            Some(command::Op::LeaseRevoke(r)) => match self.leases.remove(&r.id) {
                None => Err(StoreError::LeaseNotFound { id: r.id }),
                Some(lease) => {
                    ctx.batch.remove(&lease_key(r.id));
                    for key in lease.keys {
                        self.delete_key(&mut ctx, &key);
                    }
                    lease_effect = Some(LeaseEffect::Revoked { id: r.id });
                    Ok(command_result::Op::LeaseRevoke(LeaseRevokeResponse { header: None }))
                }
            },
            // Batches are unpacked by the state machine; one reaching here is malformed.
            Some(command::Op::Batch(_)) | None => {
                Err(StoreError::Fatal("malformed command".into()))
            }
        };
        if ctx.sub > 0 {
            self.rev = ctx.main;
            ctx.batch.insert(meta_key("rev"), &self.rev.to_be_bytes());
        }
        let result = match outcome {
            Ok(op) => CommandResult { op: Some(op), error_code: 0, error: String::new() },
            Err(e) => {
                debug_assert!(ctx.changes.is_empty(), "a rejected command changed keys: {e}");
                CommandResult { op: None, error_code: e.code() as u32, error: e.to_string() }
            }
        };
        Applied { result, revision: self.rev, changes: ctx.changes, lease_effect }
    }

    /// Checks what a put needs from the current state, before anything changes.
    fn check_put(&self, p: &PutRequest) -> Result<(), StoreError> {
        if p.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        let current = self.index.get(&p.key).and_then(|h| h.current.as_ref());
        if p.ignore_value && !p.value.is_empty() {
            return Err(StoreError::ValueProvided);
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(StoreError::LeaseProvided);
        }
        if (p.ignore_value || p.ignore_lease) && current.is_none() {
            return Err(StoreError::KeyNotFound);
        }
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(StoreError::LeaseNotFound { id: p.lease });
        }
        Ok(())
    }

    fn put(&mut self, ctx: &mut WriteCtx<'_>, p: &PutRequest) -> Result<PutResponse, StoreError> {
        let hist = self.index.entry(p.key.clone()).or_default();
        let prev = hist.current.clone();
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        let kv = Arc::new(KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(ctx.main, |p| p.create_revision),
            mod_revision: ctx.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        });
        let sub = ctx.sub;
        ctx.sub += 1;
        hist.revs.push(Rev { main: ctx.main, sub, tombstone: false });
        hist.current = Some(kv.clone());
        let ev = Event { r#type: EventType::Put as i32, kv: Some((*kv).clone()), prev_kv: None };
        ctx.batch.insert(&event_key(ctx.main, sub), ev.encode_to_vec());
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if let Some(l) = self.leases.get_mut(&old_lease) {
                l.keys.remove(&p.key);
            }
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(p.key.clone());
        }
        ctx.changes.push(Change { kind: EventType::Put, kv, prev: prev.clone() });
        Ok(PutResponse {
            header: None,
            prev_kv: if p.prev_kv { prev.map(Arc::unwrap_or_clone) } else { None },
        })
    }

    fn delete_range(
        &mut self,
        ctx: &mut WriteCtx<'_>,
        d: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let range = KeyRange::new(&d.key, &d.range_end);
        let keys: Vec<Vec<u8>> = self
            .index
            .range::<[u8], _>(range.bounds())
            .filter(|(_, h)| h.current.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let mut prev_kvs = Vec::new();
        for k in &keys {
            if let Some(prev) = self.delete_key(ctx, k) {
                if d.prev_kv {
                    prev_kvs.push(Arc::unwrap_or_clone(prev));
                }
            }
        }
        DeleteRangeResponse { header: None, deleted: keys.len() as i64, prev_kvs }
    }

    fn delete_key(&mut self, ctx: &mut WriteCtx<'_>, key: &[u8]) -> Option<Arc<KeyValue>> {
        let hist = self.index.get_mut(key)?;
        let prev = hist.current.take()?;
        let sub = ctx.sub;
        ctx.sub += 1;
        hist.revs.push(Rev { main: ctx.main, sub, tombstone: true });
        let kv =
            Arc::new(KeyValue { key: key.to_vec(), mod_revision: ctx.main, ..Default::default() });
        let ev = Event { r#type: EventType::Delete as i32, kv: Some((*kv).clone()), prev_kv: None };
        ctx.batch.insert(&event_key(ctx.main, sub), ev.encode_to_vec());
        if let Some(l) = self.leases.get_mut(&prev.lease) {
            l.keys.remove(key);
        }
        ctx.changes.push(Change { kind: EventType::Delete, kv, prev: Some(prev.clone()) });
        Some(prev)
    }

    fn compare(&self, c: &Compare) -> bool {
        let range = KeyRange::new(&c.key, &c.range_end);
        let cmp_one = |kv: Option<&KeyValue>| -> bool {
            use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
            let ord = match (c.target(), &c.target_union) {
                (T::Version, Some(U::Version(v))) => kv.map_or(0, |kv| kv.version).cmp(v),
                (T::Create, Some(U::CreateRevision(v))) => {
                    kv.map_or(0, |kv| kv.create_revision).cmp(v)
                }
                (T::Mod, Some(U::ModRevision(v))) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
                (T::Lease, Some(U::Lease(v))) => kv.map_or(0, |kv| kv.lease).cmp(v),
                (T::Value, Some(U::Value(v))) => match kv {
                    // etcd: a value comparison against a missing key is false.
                    None => return false,
                    Some(kv) => kv.value.as_slice().cmp(v.as_slice()),
                },
                // A target without a matching value compares against the zero value.
                (T::Version | T::Create | T::Mod | T::Lease, _) => {
                    let got = kv.map_or(0, |kv| match c.target() {
                        T::Version => kv.version,
                        T::Create => kv.create_revision,
                        T::Mod => kv.mod_revision,
                        _ => kv.lease,
                    });
                    got.cmp(&0)
                }
                (T::Value, _) => match kv {
                    None => return false,
                    Some(kv) => kv.value.as_slice().cmp(&[][..]),
                },
            };
            match c.result() {
                R::Equal => ord.is_eq(),
                R::NotEqual => ord.is_ne(),
                R::Greater => ord.is_gt(),
                R::Less => ord.is_lt(),
            }
        };
        if c.range_end.is_empty() {
            return cmp_one(self.index.get(&c.key).and_then(|h| h.current.as_deref()));
        }
        // Over a range: every live key must satisfy the comparison.
        self.index
            .range::<[u8], _>(range.bounds())
            .filter_map(|(_, h)| h.current.as_deref())
            .all(|kv| cmp_one(Some(kv)))
    }

    /// The branch of every (nested) txn, decided up front against the state before the txn, as
    /// etcd does; `true` means success.
    fn txn_path(&self, t: &TxnRequest, path: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
                self.txn_path(inner, path);
            }
        }
    }

    fn check_txn(&self, t: &TxnRequest, path: &[bool], at: &mut usize) -> Result<(), StoreError> {
        let ok = path[*at];
        *at += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => self.check_put(p)?,
                Some(request_op::Request::RequestRange(r)) => {
                    KeyRange::new(&r.key, &r.range_end).validate()?;
                    self.check_read_revision(r.revision)?;
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    KeyRange::new(&d.key, &d.range_end).validate()?
                }
                Some(request_op::Request::RequestTxn(inner)) => self.check_txn(inner, path, at)?,
                None => {}
            }
        }
        Ok(())
    }

    fn txn(&mut self, ctx: &mut WriteCtx<'_>, t: &TxnRequest) -> Result<TxnResponse, StoreError> {
        let mut path = Vec::new();
        self.txn_path(t, &mut path);
        self.check_txn(t, &path, &mut 0)?;
        Ok(self.exec_txn(ctx, t, &path, &mut 0))
    }

    fn exec_txn(
        &mut self,
        ctx: &mut WriteCtx<'_>,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> TxnResponse {
        let ok = path[*at];
        *at += 1;
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            let resp = match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    // Checked in `check_txn`; a put only fails on what that checks.
                    let r = self.put(ctx, p).expect("txn put was checked");
                    Some(response_op::Response::ResponsePut(r))
                }
                Some(request_op::Request::RequestRange(r)) => {
                    // Reads inside a txn see the txn's own earlier writes, as in etcd.
                    let r = self.range(r).unwrap_or_default();
                    Some(response_op::Response::ResponseRange(r))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    Some(response_op::Response::ResponseDeleteRange(self.delete_range(ctx, d)))
                }
                Some(request_op::Request::RequestTxn(inner)) => {
                    Some(response_op::Response::ResponseTxn(self.exec_txn(ctx, inner, path, at)))
                }
                None => None,
            };
            responses.push(ResponseOp { response: resp });
        }
        TxnResponse { header: None, succeeded: ok, responses }
    }

    /// Drops history older than `at`: for each key every revision before its newest revision at
    /// or below `at`, and that one too if it is a deletion before `at`. Reads and watches from
    /// `at` on still see everything.
    fn compact(&mut self, at: i64, batch: &mut sled::Batch) -> Result<(), StoreError> {
        if at <= self.compact_rev {
            return Err(StoreError::Compacted { compact_revision: self.compact_rev });
        }
        if at > self.rev {
            return Err(StoreError::FutureRevision { requested: at, current: self.rev });
        }
        let mut emptied = Vec::new();
        for (k, hist) in self.index.iter_mut() {
            let Some(pos) = hist.revs.iter().rposition(|r| r.main <= at) else { continue };
            let r = hist.revs[pos];
            let drop_upto = if r.tombstone && r.main < at { pos + 1 } else { pos };
            for old in hist.revs.drain(..drop_upto) {
                batch.remove(&event_key(old.main, old.sub));
            }
            if hist.revs.is_empty() {
                emptied.push(k.clone());
            }
        }
        for k in emptied {
            self.index.remove(&k);
        }
        self.compact_rev = at;
        batch.insert(meta_key("compact"), &at.to_be_bytes());
        Ok(())
    }

    /// History events with revision in `[from, to]`, in order, at most about `max` of them (a
    /// revision is never split). Fails if `from` has been compacted.
    pub fn history(&self, from: i64, to: i64, max: usize) -> Result<Vec<(i64, Event)>, StoreError> {
        if from < self.compact_rev {
            return Err(StoreError::Compacted { compact_revision: self.compact_rev });
        }
        let mut out: Vec<(i64, Event)> = Vec::new();
        let start = event_key(from, 0);
        let end = event_key(to + 1, 0);
        for item in self.tree.range(start..end) {
            let (k, v) = item.map_err(fatal)?;
            let (main, _) = parse_event_key(&k).ok_or_else(|| bad("history key"))?;
            if out.len() >= max && out.last().is_some_and(|(r, _)| *r != main) {
                break;
            }
            out.push((
                main,
                Event::decode(v.as_ref()).map_err(|e| StoreError::Fatal(e.to_string()))?,
            ));
        }
        Ok(out)
    }

    /// The value `key` had just before revision `rev` (for watchers that ask for prev_kv while
    /// replaying history). `None` if it did not exist or that revision is compacted away.
    pub fn prev_of(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        let hist = self.index.get(key)?;
        let r = hist.revs.iter().rev().find(|r| r.main < rev)?;
        if r.tombstone {
            return None;
        }
        self.load_event(r.main, r.sub).ok()?.kv
    }
}

fn sort_kvs(kvs: &mut [Arc<KeyValue>], target: i32, order: i32) {
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    let order = SortOrder::try_from(order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target == SortTarget::Key {
        return;
    }
    kvs.sort_by(|a, b| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    });
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

/// Validation a request gets before it is proposed, so an invalid request never reaches the log.
pub fn validate_txn(t: &TxnRequest) -> Result<(), StoreError> {
    let mut ops = 0usize;
    validate_txn_inner(t, &mut ops)
}

fn validate_txn_inner(t: &TxnRequest, ops: &mut usize) -> Result<(), StoreError> {
    *ops += t.compare.len().max(t.success.len()).max(t.failure.len());
    if *ops > crate::error::MAX_TXN_OPS {
        return Err(StoreError::TooManyOps { max: crate::error::MAX_TXN_OPS });
    }
    for c in &t.compare {
        KeyRange::new(&c.key, &c.range_end).validate()?;
    }
    for branch in [&t.success, &t.failure] {
        validate_branch(branch, ops)?;
    }
    Ok(())
}

fn validate_branch(ops_list: &[RequestOp], ops: &mut usize) -> Result<(), StoreError> {
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    let mut deletes: Vec<KeyRange> = Vec::new();
    for op in ops_list {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if p.key.is_empty() {
                    return Err(StoreError::EmptyKey);
                }
                if !puts.insert(&p.key) {
                    return Err(StoreError::DuplicateKey { key: show(&p.key) });
                }
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                let r = KeyRange::new(&d.key, &d.range_end);
                r.validate()?;
                deletes.push(r);
            }
            Some(request_op::Request::RequestRange(r)) => {
                KeyRange::new(&r.key, &r.range_end).validate()?
            }
            Some(request_op::Request::RequestTxn(inner)) => validate_txn_inner(inner, ops)?,
            None => {}
        }
    }
    if let Some(k) = puts.iter().find(|k| deletes.iter().any(|d| d.contains(k))) {
        return Err(StoreError::DuplicateKey { key: show(k) });
    }
    Ok(())
}

fn fatal(e: sled::Error) -> StoreError {
    StoreError::Fatal(e.to_string())
}

fn bad(what: &str) -> StoreError {
    StoreError::Fatal(format!("malformed {what} in the store"))
}
