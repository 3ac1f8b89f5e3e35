//! The watch hub: applied revisions fan out to every watcher of this member.
//!
//! ```text
//!  state machine apply ──publish(RevBatch)──▶ broadcast ring (bounded) ──▶ one task per watch
//!                                                                             │ filter by range/type
//!   history (sled) ──catch-up from start_revision──────────────────────────▶ │
//!                                                                             ▼
//!                                                         the stream's bounded outbox ─▶ client
//! ```
//!
//! Each event is encoded once ([`SharedEvent::encoded`]) and the bytes are shared by all watchers.
//! Memory is bounded however slow a client is: the ring holds a fixed number of revisions, the
//! outbox a fixed number of responses, and a watcher that falls a whole ring behind is cancelled
//! with a resumable error telling it which revision to watch from.

use crate::mvcc::{Change, KeyRange, Mvcc};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use bytes::Bytes;
use prost::Message;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::broadcast;

/// Revisions the ring holds before a watcher that has not read them is cut off.
pub const DEFAULT_RING: usize = 16 * 1024;

/// One event, encoded lazily once per form and shared.
#[derive(Debug)]
pub struct SharedEvent {
    pub kind: EventType,
    pub kv: Arc<KeyValue>,
    pub prev: Option<Arc<KeyValue>>,
    plain: OnceLock<Bytes>,
    with_prev: OnceLock<Bytes>,
}

impl SharedEvent {
    pub fn new(kind: EventType, kv: Arc<KeyValue>, prev: Option<Arc<KeyValue>>) -> Self {
        SharedEvent { kind, kv, prev, plain: OnceLock::new(), with_prev: OnceLock::new() }
    }

    pub fn key(&self) -> &[u8] {
        &self.kv.key
    }

    /// The encoded `mvccpb.Event`, with `prev_kv` when asked for.
    pub fn encoded(&self, prev_kv: bool) -> Bytes {
        let cell = if prev_kv { &self.with_prev } else { &self.plain };
        cell.get_or_init(|| {
            let ev = Event {
                r#type: self.kind as i32,
                kv: Some((*self.kv).clone()),
                prev_kv: if prev_kv { self.prev.as_deref().cloned() } else { None },
            };
            Bytes::from(ev.encode_to_vec())
        })
        .clone()
    }
}

/// Everything that happened at one revision.
#[derive(Debug)]
pub enum HubMessage {
    Revision {
        rev: i64,
        events: Vec<SharedEvent>,
    },
    /// The member's state was replaced by a snapshot: history watchers had may be gone.
    Reset {
        rev: i64,
    },
}

pub struct WatchHub {
    tx: broadcast::Sender<Arc<HubMessage>>,
    /// The newest revision published. Stored after the send, so a reader that sees `R` here and
    /// an empty receiver has received every revision up to `R`.
    published: AtomicI64,
}

impl WatchHub {
    pub fn new(ring: usize, rev: i64) -> Self {
        let (tx, _) = broadcast::channel(ring.max(16));
        WatchHub { tx, published: AtomicI64::new(rev) }
    }

    /// Called by the state machine, with its write lock held, after the revision is on disk.
    pub fn publish(&self, rev: i64, changes: Vec<Change>) {
        if !changes.is_empty() {
            let events =
                changes.into_iter().map(|c| SharedEvent::new(c.kind, c.kv, c.prev)).collect();
            let _ = self.tx.send(Arc::new(HubMessage::Revision { rev, events }));
        }
        self.published.store(rev, Ordering::Release);
    }

    pub fn reset(&self, rev: i64) {
        let _ = self.tx.send(Arc::new(HubMessage::Reset { rev }));
        self.published.store(rev, Ordering::Release);
    }

    pub fn published(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    pub fn watcher_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Subscribes under the MVCC read lock, so that history up to the returned revision plus the
    /// ring from there on cover every revision exactly once.
    pub fn subscribe(
        &self,
        mvcc: &RwLock<Mvcc>,
    ) -> (broadcast::Receiver<Arc<HubMessage>>, i64, i64) {
        let m = mvcc.read().expect("mvcc lock poisoned");
        (self.tx.subscribe(), m.revision(), m.compact_revision())
    }
}

/// What a watch asks for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub range: KeyRange,
    /// First revision to deliver (0: the next one).
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
}

impl WatchSpec {
    pub fn wants(&self, kind: EventType, key: &[u8]) -> bool {
        let filtered = match kind {
            EventType::Put => self.no_put,
            EventType::Delete => self.no_delete,
        };
        !filtered && self.range.contains(key)
    }
}
