//! One watch: replays history from its start revision, then follows the hub. A step function
//! ([`Watcher::next`]) the caller drives; cancellation-safe, so it can sit in a `select!` next to
//! progress timers and cancel requests.
//!
//! ```text
//!   CatchUp (history chunks from sled, up to the revision at subscribe time)
//!      │ caught up
//!      ▼
//!   Live (ring: skip what history covered, filter, coalesce queued revisions)
//!      │ fell a ring behind / snapshot reset / compacted start
//!      ▼
//!   Done (one Canceled update, then None)
//! ```

use crate::error::StoreError;
use crate::proto::mvccpb::{event::EventType, Event};
use crate::raft::state_machine::SmShared;
use crate::watch::{HubMessage, WatchSpec};
use bytes::Bytes;
use prost::Message;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Events read from history per step.
const CATCH_UP_CHUNK: usize = 1024;
/// Revisions already queued that one live step may merge into one update.
const COALESCE: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// Events of one or more whole revisions, oldest first; `revision` is the newest of them.
    Events { revision: i64, events: Vec<Bytes> },
    /// The watch ended. `compact_revision` is set when the start revision was compacted.
    Canceled { reason: String, compact_revision: i64 },
}

pub struct Watcher {
    sm: Arc<SmShared>,
    spec: WatchSpec,
    rx: broadcast::Receiver<Arc<HubMessage>>,
    /// The next revision this watcher has not delivered.
    next_rev: i64,
    /// History up to here comes from sled; the ring only holds later revisions.
    catch_up_until: i64,
    /// The newest revision taken from the ring (delivered or filtered out).
    seen_rev: i64,
    done: bool,
}

impl Watcher {
    pub(crate) fn new(sm: Arc<SmShared>, spec: WatchSpec) -> Self {
        let (rx, rev, _) = sm.hub.subscribe(&sm.mvcc);
        let next_rev = if spec.start_revision > 0 { spec.start_revision } else { rev + 1 };
        Watcher { sm, spec, rx, next_rev, catch_up_until: rev, seen_rev: rev, done: false }
    }

    /// The revision the watch was registered at: events after it come live from the hub.
    pub fn subscribed_at(&self) -> i64 {
        self.catch_up_until
    }

    pub fn spec(&self) -> &WatchSpec {
        &self.spec
    }

    /// The next update; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<WatchUpdate> {
        loop {
            if self.done {
                return None;
            }
            if self.next_rev <= self.catch_up_until {
                if let Some(u) = self.catch_up_step() {
                    return Some(u);
                }
                continue;
            }
            let msg = match self.rx.recv().await {
                Ok(m) => m,
                Err(RecvError::Lagged(_)) => return Some(self.fell_behind()),
                Err(RecvError::Closed) => {
                    self.done = true;
                    return None;
                }
            };
            let mut revision = 0;
            let mut events = Vec::new();
            let mut next = Some(msg);
            let mut merged = 0;
            while let Some(msg) = next.take() {
                match &*msg {
                    HubMessage::Revision { rev, events: evs } => {
                        self.seen_rev = *rev;
                        if *rev >= self.next_rev {
                            for e in evs.iter().filter(|e| self.spec.wants(e.kind, e.key())) {
                                events.push(e.encoded(self.spec.prev_kv));
                            }
                            self.next_rev = rev + 1;
                            revision = *rev;
                        }
                    }
                    HubMessage::Reset { rev } => {
                        self.done = true;
                        return Some(WatchUpdate::Canceled {
                            reason: format!(
                                "flotilla: member was restored from a snapshot at revision {rev}; \
                                 re-watch from revision {}",
                                self.next_rev
                            ),
                            compact_revision: 0,
                        });
                    }
                }
                merged += 1;
                if merged < COALESCE {
                    match self.rx.try_recv() {
                        Ok(m) => next = Some(m),
                        Err(TryRecvError::Lagged(_)) => return Some(self.fell_behind()),
                        Err(_) => {}
                    }
                }
            }
            if !events.is_empty() {
                return Some(WatchUpdate::Events { revision, events });
            }
        }
    }

    fn fell_behind(&mut self) -> WatchUpdate {
        self.done = true;
        tracing::warn!(next_revision = self.next_rev, "watcher fell behind; cancelling it");
        WatchUpdate::Canceled {
            reason: format!(
                "flotilla: watcher could not keep up; re-watch from revision {}",
                self.next_rev
            ),
            compact_revision: 0,
        }
    }

    fn catch_up_step(&mut self) -> Option<WatchUpdate> {
        let m = self.sm.mvcc.read().expect("mvcc lock poisoned");
        let chunk = match m.history(self.next_rev, self.catch_up_until, CATCH_UP_CHUNK) {
            Ok(c) => c,
            Err(StoreError::Compacted { compact_revision }) => {
                self.done = true;
                return Some(WatchUpdate::Canceled {
                    reason: "etcdserver: mvcc: required revision has been compacted".into(),
                    compact_revision,
                });
            }
            Err(e) => {
                self.done = true;
                return Some(WatchUpdate::Canceled { reason: e.to_string(), compact_revision: 0 });
            }
        };
        let full = chunk.len() >= CATCH_UP_CHUNK;
        let mut revision = 0;
        let mut events = Vec::new();
        for (rev, mut ev) in chunk {
            revision = rev;
            let key = ev.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
            let kind = if ev.r#type == EventType::Delete as i32 {
                EventType::Delete
            } else {
                EventType::Put
            };
            if !self.spec.wants(kind, key) {
                continue;
            }
            if self.spec.prev_kv {
                ev.prev_kv = m.prev_of(key, rev);
            }
            events.push(Bytes::from(Event::encode_to_vec(&ev)));
        }
        self.next_rev = if full && revision > 0 { revision + 1 } else { self.catch_up_until + 1 };
        (!events.is_empty()).then_some(WatchUpdate::Events { revision, events })
    }

    /// The revision a progress notification may report now: every event up to it has been
    /// delivered and any later one will have a higher revision. `None` while the watcher still
    /// has revisions to process.
    pub fn progress_revision(&self) -> Option<i64> {
        if self.done || self.next_rev <= self.catch_up_until {
            return None;
        }
        let published = self.sm.hub.published();
        if !self.rx.is_empty() {
            return None;
        }
        Some(published.max(self.seen_rev))
    }
}
