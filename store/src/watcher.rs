//! One in-process watch: what the API server (and tests) use instead of a gRPC stream. A step
//! function ([`Watcher::next`]) over the watch's own sink; cancellation-safe, so it can sit in a
//! `select!` next to timers. Dropping it unregisters the watch.

use crate::error::StoreError;
use crate::raft::state_machine::SmShared;
use crate::watch::{sink, SinkMsg, SinkReceiver, WatchHandle, WatchHub, WatchSpec};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Queued updates one step may merge.
const COALESCE: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// Events of one or more whole revisions, oldest first; `revision` is the newest of them.
    Events { revision: i64, events: Vec<Bytes> },
    /// The watch ended. `compact_revision` is set when the start revision was compacted.
    Canceled { reason: String, compact_revision: i64 },
}

pub struct Watcher {
    hub: Arc<WatchHub>,
    handle: Arc<WatchHandle>,
    rx: SinkReceiver,
    spec: WatchSpec,
    /// The newest revision delivered.
    last_rev: i64,
    /// A cancel that arrived behind events, delivered on the next step.
    pending_cancel: Option<WatchUpdate>,
    done: bool,
}

impl Watcher {
    pub(crate) fn new(
        sm: &SmShared,
        spec: WatchSpec,
        queue_limit: usize,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = sink(queue_limit);
        let handle = sm.hub.watch(&sm.mvcc, spec.clone(), 0, tx, false)?;
        Ok(Watcher {
            hub: sm.hub.clone(),
            handle,
            rx,
            spec,
            last_rev: 0,
            pending_cancel: None,
            done: false,
        })
    }

    /// The revision the watch was registered at: events after it come live from the hub.
    pub fn subscribed_at(&self) -> i64 {
        self.handle.registered_at
    }

    pub fn spec(&self) -> &WatchSpec {
        &self.spec
    }

    /// The next update; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<WatchUpdate> {
        if let Some(c) = self.pending_cancel.take() {
            return Some(c);
        }
        if self.done {
            return None;
        }
        let mut msg = self.rx.recv().await;
        let mut out: Option<(i64, Vec<Bytes>)> = None;
        let mut merged = 0;
        loop {
            match msg {
                Some(SinkMsg::Events { revision, events, .. }) => {
                    self.last_rev = revision;
                    match &mut out {
                        Some((r, evs)) => {
                            *r = revision;
                            evs.extend(events);
                        }
                        None => out = Some((revision, events)),
                    }
                }
                Some(SinkMsg::Canceled { reason, compact_revision, .. }) => {
                    self.done = true;
                    // Deliver what came before the cancel first, the cancel on the next step.
                    if let Some((revision, events)) = out {
                        self.pending_cancel =
                            Some(WatchUpdate::Canceled { reason, compact_revision });
                        return Some(WatchUpdate::Events { revision, events });
                    }
                    return Some(WatchUpdate::Canceled { reason, compact_revision });
                }
                Some(SinkMsg::Created { .. } | SinkMsg::Progress { .. }) => {}
                None => {
                    self.done = true;
                    return out.map(|(revision, events)| WatchUpdate::Events { revision, events });
                }
            }
            merged += 1;
            if merged >= COALESCE {
                break;
            }
            match self.rx.try_recv() {
                Some(m) => msg = Some(m),
                None => break,
            }
        }
        out.map(|(revision, events)| WatchUpdate::Events { revision, events })
    }

    /// The revision a progress notification may report now: every event up to it has been
    /// delivered and any later one will have a higher revision. `None` while history is still
    /// being replayed or updates are waiting.
    pub fn progress_revision(&self) -> Option<i64> {
        if self.done || !self.handle.synced.load(Ordering::Acquire) {
            return None;
        }
        // Read the published revision before looking at the queue: everything up to it was
        // queued before it was stored.
        let published = self.hub.published();
        if !self.rx.is_empty() {
            return None;
        }
        Some(published.max(self.last_rev))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.handle.done.store(true, Ordering::Release);
        self.hub.unregister(self.handle.id);
    }
}
