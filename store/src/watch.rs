//! The watch hub: applied revisions fan out to the watchers of this member.
//!
//! ```text
//!  state machine apply ──publish(rev, changes)──▶ registry of synced watchers
//!        (write lock held)                          │ exact keys: hash lookup per event
//!                                                   │ ranges/prefixes: one check per watcher
//!                                                   ▼
//!                                    each watcher's sink (its stream's queue) ─▶ client
//!  new watch from the past ─▶ catch-up task: history from sled, chunk by chunk, then joins the
//!                             registry under the MVCC read lock (no revision missed or repeated)
//! ```
//!
//! Like etcd's watchable store, delivery is synchronous in the apply path and costs nothing for
//! watchers an event does not match: no task per watcher wakes up. Each event is encoded once
//! ([`SharedEvent::encoded`]) and the bytes are shared by every watcher that receives it.
//!
//! Memory is bounded however slow a client is: a sink counts the bytes queued for its stream,
//! and a watcher whose stream is over the limit is cut off — removed from the registry with a
//! cancel telling it the revision to watch from again.

use crate::error::StoreError;
use crate::mvcc::{Change, KeyRange, Mvcc};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes a stream may have queued before its watchers are cut off.
pub const DEFAULT_QUEUE_LIMIT: usize = 64 << 20;
/// Events read from history per catch-up step.
const CATCH_UP_CHUNK: usize = 1024;

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

/// What a sink carries to its consumer, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkMsg {
    /// The watch is registered at `revision`; queued before any of its events.
    Created { watch_id: i64, revision: i64 },
    /// Events of whole revisions, oldest first; `revision` is the newest.
    Events { watch_id: i64, revision: i64, events: Vec<Bytes> },
    /// Every event up to `revision` has been queued before this.
    Progress { watch_id: i64, revision: i64 },
    /// The watch ended; no more messages for it.
    Canceled { watch_id: i64, reason: String, compact_revision: i64 },
}

impl SinkMsg {
    fn bytes(&self) -> usize {
        match self {
            SinkMsg::Events { events, .. } => {
                events.iter().map(|e| e.len() + 16).sum::<usize>() + 32
            }
            _ => 64,
        }
    }
}

/// The queue from the hub (and catch-up) to one consumer — a gRPC watch stream, shared by its
/// watches, or one in-process watcher. Unbounded in messages, bounded in bytes by cutting off.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<SinkMsg>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

/// The consuming end of a [`Sink`].
pub struct SinkReceiver {
    rx: mpsc::UnboundedReceiver<SinkMsg>,
    queued: Arc<AtomicUsize>,
}

pub fn sink(limit: usize) -> (Sink, SinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (Sink { tx, queued: queued.clone(), limit }, SinkReceiver { rx, queued })
}

impl Sink {
    /// Queues `msg` unless the consumer is gone. Returns false when over the byte limit (the
    /// message is still queued; the caller cuts the watcher off).
    fn push(&self, msg: SinkMsg) -> bool {
        let n = msg.bytes();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(msg).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
        before + n <= self.limit
    }

    /// Queues a small control message (created, progress, cancel) regardless of the limit.
    pub fn push_control(&self, msg: SinkMsg) {
        self.push(msg);
    }

    fn over(&self, fraction: usize) -> bool {
        self.queued.load(Ordering::Acquire) > self.limit / fraction
    }

    pub fn closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl SinkReceiver {
    pub async fn recv(&mut self) -> Option<SinkMsg> {
        let m = self.rx.recv().await?;
        self.queued.fetch_sub(m.bytes(), Ordering::AcqRel);
        Some(m)
    }

    pub fn try_recv(&mut self) -> Option<SinkMsg> {
        let m = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(m.bytes(), Ordering::AcqRel);
        Some(m)
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<SinkMsg>> {
        let p = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(m)) = &p {
            self.queued.fetch_sub(m.bytes(), Ordering::AcqRel);
        }
        p
    }
}

/// A registered watcher's state shared between the hub and its owner.
pub struct WatchHandle {
    pub id: u64,
    pub watch_id: i64,
    /// Set once the watcher receives live events from the hub (history replay is over).
    pub synced: AtomicBool,
    /// Set when the watcher ended (cut off, cancelled, compacted).
    pub done: AtomicBool,
    /// Events were queued since the last progress tick.
    pub active: AtomicBool,
    /// The revision the watch was registered at.
    pub registered_at: i64,
}

struct Entry {
    spec: WatchSpec,
    sink: Sink,
    handle: Arc<WatchHandle>,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<u64, Entry>,
    /// Watchers of one key, by key.
    by_key: HashMap<Vec<u8>, Vec<u64>>,
    /// Watchers of a range.
    ranges: Vec<u64>,
}

impl Registry {
    fn insert(&mut self, e: Entry) {
        let id = e.handle.id;
        if e.spec.range.range_end.is_empty() {
            self.by_key.entry(e.spec.range.key.clone()).or_default().push(id);
        } else {
            self.ranges.push(id);
        }
        self.entries.insert(id, e);
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        if e.spec.range.range_end.is_empty() {
            if let Some(v) = self.by_key.get_mut(&e.spec.range.key) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.by_key.remove(&e.spec.range.key);
                }
            }
        } else {
            self.ranges.retain(|x| *x != id);
        }
        Some(e)
    }
}

pub struct WatchHub {
    registry: Mutex<Registry>,
    /// The newest revision published. Stored after delivery, so anything that reads `R` here
    /// knows every event up to `R` is already in its sink.
    published: AtomicI64,
    next_id: AtomicU64,
    /// Bumped when a snapshot replaces the state: catch-ups that started before it must not join.
    epoch: AtomicU64,
}

impl WatchHub {
    pub fn new(rev: i64) -> Self {
        WatchHub {
            registry: Mutex::new(Registry::default()),
            published: AtomicI64::new(rev),
            next_id: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn published(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    pub fn watcher_count(&self) -> usize {
        self.registry.lock().expect("poisoned").entries.len()
    }

    /// Called by the state machine with its write lock held, after the revision is in sled.
    pub fn publish(&self, rev: i64, changes: Vec<Change>) {
        if !changes.is_empty() {
            let events: Vec<SharedEvent> =
                changes.into_iter().map(|c| SharedEvent::new(c.kind, c.kv, c.prev)).collect();
            let mut reg = self.registry.lock().expect("poisoned");
            // Range watchers are checked one by one; single-key watchers are looked up by key.
            let mut keyed: Vec<u64> = Vec::new();
            for e in &events {
                if let Some(ids) = reg.by_key.get(e.key()) {
                    keyed.extend_from_slice(ids);
                }
            }
            if events.len() > 1 {
                keyed.sort_unstable();
                keyed.dedup();
            }
            let mut cut = Vec::new();
            for &id in reg.ranges.iter().chain(keyed.iter()) {
                let Some(entry) = reg.entries.get(&id) else { continue };
                let spec = &entry.spec;
                let out: Vec<Bytes> = events
                    .iter()
                    .filter(|e| spec.wants(e.kind, e.key()))
                    .map(|e| e.encoded(spec.prev_kv))
                    .collect();
                if out.is_empty() {
                    continue;
                }
                entry.handle.active.store(true, Ordering::Relaxed);
                let msg =
                    SinkMsg::Events { watch_id: entry.handle.watch_id, revision: rev, events: out };
                if !entry.sink.push(msg) || entry.sink.closed() {
                    cut.push(id);
                }
            }
            for id in cut {
                if let Some(e) = reg.remove(id) {
                    e.handle.done.store(true, Ordering::Release);
                    if !e.sink.closed() {
                        tracing::warn!(
                            watch_id = e.handle.watch_id,
                            "watcher could not keep up; cut off"
                        );
                        e.sink.push(SinkMsg::Canceled {
                            watch_id: e.handle.watch_id,
                            reason: format!(
                                "flotilla: watcher could not keep up; re-watch from revision {}",
                                rev + 1
                            ),
                            compact_revision: 0,
                        });
                    }
                }
            }
        }
        self.published.store(rev, Ordering::Release);
    }

    /// The state was replaced by a snapshot: every watcher may have missed history.
    pub fn reset(&self, rev: i64) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut reg = self.registry.lock().expect("poisoned");
        let ids: Vec<u64> = reg.entries.keys().copied().collect();
        for id in ids {
            if let Some(e) = reg.remove(id) {
                e.handle.done.store(true, Ordering::Release);
                e.sink.push(SinkMsg::Canceled {
                    watch_id: e.handle.watch_id,
                    reason: format!(
                        "flotilla: member was restored from a snapshot at revision {rev}; re-watch"
                    ),
                    compact_revision: 0,
                });
            }
        }
        self.published.store(rev, Ordering::Release);
    }

    /// Removes a watcher (cancelled by its client, or its consumer went away).
    pub fn unregister(&self, id: u64) {
        if let Some(e) = self.registry.lock().expect("poisoned").remove(id) {
            e.handle.done.store(true, Ordering::Release);
        }
    }

    /// Starts a watch delivering into `sink` (announcing it first with `Created` if `announce`,
    /// ordered before any of its events). A watch from the present joins the registry at
    /// once; one from the past first replays history in a background task.
    pub fn watch(
        self: &Arc<Self>,
        mvcc: &Arc<RwLock<Mvcc>>,
        spec: WatchSpec,
        watch_id: i64,
        sink: Sink,
        announce: bool,
    ) -> Result<Arc<WatchHandle>, StoreError> {
        spec.range.validate()?;
        let m = mvcc.read().expect("poisoned");
        let current = m.revision();
        if announce {
            sink.push(SinkMsg::Created { watch_id, revision: current });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(WatchHandle {
            id,
            watch_id,
            synced: AtomicBool::new(false),
            done: AtomicBool::new(false),
            active: AtomicBool::new(false),
            registered_at: current,
        });
        if spec.start_revision <= 0 || spec.start_revision > current {
            // Nothing to replay: live from the next revision (holding the read lock, no
            // revision can be published in between).
            handle.synced.store(true, Ordering::Release);
            self.registry.lock().expect("poisoned").insert(Entry {
                spec,
                sink,
                handle: handle.clone(),
            });
            return Ok(handle);
        }
        if spec.start_revision < m.compact_revision() {
            handle.done.store(true, Ordering::Release);
            sink.push(SinkMsg::Canceled {
                watch_id,
                reason: "etcdserver: mvcc: required revision has been compacted".into(),
                compact_revision: m.compact_revision(),
            });
            return Ok(handle);
        }
        drop(m);
        let epoch = self.epoch.load(Ordering::Acquire);
        tokio::spawn(catch_up(self.clone(), mvcc.clone(), spec, sink, handle.clone(), epoch));
        Ok(handle)
    }
}

/// Replays history from `spec.start_revision`, then joins the registry.
async fn catch_up(
    hub: Arc<WatchHub>,
    mvcc: Arc<RwLock<Mvcc>>,
    spec: WatchSpec,
    sink: Sink,
    handle: Arc<WatchHandle>,
    epoch: u64,
) {
    let mut next = spec.start_revision;
    loop {
        // Let the consumer drain before reading more; a stalled consumer stalls only this task.
        while sink.over(2) {
            if sink.closed() || handle.done.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if handle.done.load(Ordering::Acquire) || sink.closed() {
            return;
        }
        let m = mvcc.read().expect("poisoned");
        if hub.epoch.load(Ordering::Acquire) != epoch {
            handle.done.store(true, Ordering::Release);
            sink.push(SinkMsg::Canceled {
                watch_id: handle.watch_id,
                reason: "flotilla: member was restored from a snapshot; re-watch".into(),
                compact_revision: 0,
            });
            return;
        }
        let current = m.revision();
        let chunk = match m.history(next, current, CATCH_UP_CHUNK) {
            Ok(c) => c,
            Err(StoreError::Compacted { compact_revision }) => {
                handle.done.store(true, Ordering::Release);
                sink.push(SinkMsg::Canceled {
                    watch_id: handle.watch_id,
                    reason: "etcdserver: mvcc: required revision has been compacted".into(),
                    compact_revision,
                });
                return;
            }
            Err(e) => {
                handle.done.store(true, Ordering::Release);
                sink.push(SinkMsg::Canceled {
                    watch_id: handle.watch_id,
                    reason: e.to_string(),
                    compact_revision: 0,
                });
                return;
            }
        };
        let full = chunk.len() >= CATCH_UP_CHUNK;
        let mut revision = 0;
        let mut events = Vec::new();
        for (rev, mut ev) in chunk {
            revision = rev;
            let key = ev.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
            let kind = if ev.r#type == EventType::Delete as i32 {
                EventType::Delete
            } else {
                EventType::Put
            };
            if !spec.wants(kind, &key) {
                continue;
            }
            if spec.prev_kv {
                ev.prev_kv = m.prev_of(&key, rev);
            }
            events.push(Bytes::from(ev.encode_to_vec()));
        }
        if !events.is_empty() {
            handle.active.store(true, Ordering::Relaxed);
            sink.push(SinkMsg::Events { watch_id: handle.watch_id, revision, events });
        }
        if full && revision > 0 {
            next = revision + 1;
            continue;
        }
        // Caught up to `current` under the read lock: join the registry before any later
        // revision can be published.
        handle.synced.store(true, Ordering::Release);
        hub.registry.lock().expect("poisoned").insert(Entry { spec, sink, handle });
        return;
    }
}
