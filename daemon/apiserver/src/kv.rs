//! The API server's use of the store: reads, and writes as transactions guarded by revisions.

use crate::encryption::Encryption;
use flotilla_api::error::ApiError;
use flotilla_store::proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use flotilla_store::proto::mvccpb::KeyValue;
use flotilla_store::{KvStore, StoreError, StoreNode, WatchSpec, Watcher};
use std::sync::Arc;

/// The store, as the API server writes and reads it: values of the resources the
/// encryption configuration names are encrypted on the way in and decrypted on the way out.
#[derive(Clone)]
pub struct Kv(pub Arc<StoreNode>, pub Option<Arc<Encryption>>);

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub fn store_err(e: StoreError) -> ApiError {
    let reason = if e.is_retryable() {
        flotilla_api::Reason::Unavailable
    } else {
        flotilla_api::Reason::Internal
    };
    ApiError::new(reason, format!("store: {e}"))
}

/// One write op of a transaction.
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A condition on a key.
pub enum Cond {
    /// The key does not exist.
    Absent(String),
    /// The key was last written at this revision.
    ModRev(String, i64),
}

impl Kv {
    /// Decrypts a value read from the store in place; true when it was written with a
    /// provider or key that no longer writes (its next update re-encrypts it).
    pub fn open(&self, kv: &mut KeyValue) -> Result<bool, ApiError> {
        let Some(e) = &self.1 else { return Ok(false) };
        let key = String::from_utf8_lossy(&kv.key);
        let (plain, stale) = e.decrypt(&key, &kv.value).map_err(ApiError::internal)?;
        kv.value = plain;
        Ok(stale)
    }

    fn open_all(&self, kvs: &mut [KeyValue]) -> Result<(), ApiError> {
        if self.1.is_some() {
            for kv in kvs {
                self.open(kv)?;
            }
        }
        Ok(())
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, ApiError> {
        Ok(self.get_checked(key).await?.map(|(kv, _)| kv))
    }

    /// `get`, and whether the value is stale (see `open`).
    pub async fn get_checked(&self, key: &str) -> Result<Option<(KeyValue, bool)>, ApiError> {
        let r = self
            .0
            .range(RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() })
            .await
            .map_err(store_err)?;
        match r.kvs.into_iter().next() {
            Some(mut kv) => {
                let stale = self.open(&mut kv)?;
                Ok(Some((kv, stale)))
            }
            None => Ok(None),
        }
    }

    /// Every key under a prefix, and the revision read at.
    pub async fn range_all(
        &self,
        key: &[u8],
        end: &[u8],
    ) -> Result<(i64, Vec<KeyValue>), ApiError> {
        let r = self
            .0
            .range(RangeRequest {
                key: key.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        let mut kvs = r.kvs;
        self.open_all(&mut kvs)?;
        Ok((r.header.map(|h| h.revision).unwrap_or(0), kvs))
    }

    /// Every key in `[key, end)` as of revision `rev` (a list continued at its first page's
    /// snapshot). A compacted revision is `Expired`: the client must list again.
    pub async fn range_at(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
    ) -> Result<Vec<KeyValue>, ApiError> {
        let r = self
            .0
            .range(RangeRequest {
                key: key.to_vec(),
                range_end: end.to_vec(),
                revision: rev,
                ..Default::default()
            })
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } => ApiError::new(
                    flotilla_api::Reason::Expired,
                    format!(
                        "the continue token's snapshot (resourceVersion {rev}) has been \
                         compacted: start the list again without a continue token"
                    ),
                ),
                e => store_err(e),
            })?;
        let mut kvs = r.kvs;
        self.open_all(&mut kvs)?;
        Ok(kvs)
    }

    /// The store's current revision, read linearizably: a list served after the cache reaches
    /// it reflects every write acknowledged before the list began.
    pub async fn current_revision(&self) -> Result<i64, ApiError> {
        let r = self
            .0
            .range(RangeRequest {
                key: b"/registry/".to_vec(),
                limit: 1,
                keys_only: true,
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        Ok(r.header.map(|h| h.revision).unwrap_or(0))
    }

    pub fn watch(&self, spec: WatchSpec) -> Result<Watcher, StoreError> {
        self.0.watch(spec)
    }

    /// Runs the ops if every condition holds: `Ok(Some(revision))`, or `Ok(None)` if one failed.
    pub async fn txn(&self, conds: Vec<Cond>, ops: Vec<Op>) -> Result<Option<i64>, ApiError> {
        let compare = conds
            .into_iter()
            .map(|c| match c {
                Cond::Absent(k) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Create as i32,
                    key: k.into_bytes(),
                    target_union: Some(compare::TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
                Cond::ModRev(k, rev) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: k.into_bytes(),
                    target_union: Some(compare::TargetUnion::ModRevision(rev)),
                    ..Default::default()
                },
            })
            .collect();
        let success = ops
            .into_iter()
            .map(|o| RequestOp {
                request: Some(match o {
                    Op::Put(k, v) => request_op::Request::RequestPut(PutRequest {
                        value: match &self.1 {
                            Some(e) => e.encrypt(&k, v),
                            None => v,
                        },
                        key: k.into_bytes(),
                        ..Default::default()
                    }),
                    Op::Delete(k) => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: k.into_bytes(),
                        ..Default::default()
                    }),
                }),
            })
            .collect();
        let r = self
            .0
            .txn(TxnRequest { compare, success, failure: vec![] })
            .await
            .map_err(store_err)?;
        if !r.succeeded {
            return Ok(None);
        }
        // The revision of the write: every put/delete in a txn shares it.
        Ok(Some(r.header.map(|h| h.revision).unwrap_or(0)))
    }
}
