//! One API watch, whichever front serves it: replays what it must (the initial state, the
//! history after the start revision), then follows the cache's ring, with bookmarks. The
//! front gives the wire encoding and turns the batches into its stream.

use super::cache::{encode_event, json_event, CacheEvent, CachedObject, EventKind, Filter};
use super::cache::{Subscription, WatchCache, Wire};
use super::{encode, ApiServer};
use bytes::Bytes;
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::{proto, table};
use prost::Message;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc};

/// Events one batch carries at most. With the queue below this bounds what a watcher that
/// does not read can hold: the ring cuts it off beyond that.
const WATCH_BATCH: usize = 64;
/// Batches queued per watcher ahead of the network.
pub const WATCH_QUEUE: usize = 4;
/// Initial-state events per batch.
const INITIAL_BATCH: usize = 500;

/// What a watch sends its front: a batch of encoded events, or the error that ends it.
pub type Batch = Result<Vec<Bytes>, ApiError>;

pub struct Watch {
    pub s: Arc<ApiServer>,
    pub cache: Arc<WatchCache>,
    pub filter: Filter,
    pub from: i64,
    pub bookmarks: bool,
    /// The client asked for the initial state explicitly and wants to know where it ends.
    pub initial_end: bool,
    pub wire: Wire,
    pub tx: mpsc::Sender<Batch>,
    /// A Table watch has sent its column definitions.
    pub table_headers_sent: AtomicBool,
}

impl Watch {
    fn bookmark(&self, rev: i64, initial_end: bool) -> Bytes {
        let info = self.cache.info;
        let mut obj = json!({"apiVersion": info.api_version(), "kind": info.kind,
            "metadata": {"resourceVersion": rev.to_string()}});
        if initial_end {
            // Tells the client the initial state is complete, as Kubernetes does.
            obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        match self.wire {
            Wire::Proto => {
                let t = proto::EventType::Bookmark as i32;
                Bytes::from(proto::WatchEvent { r#type: t, object: encode(&obj) }.encode_to_vec())
            }
            Wire::Json | Wire::Table => json_event("BOOKMARK", &encode(&obj)),
        }
    }

    fn push(&self, ev: &CacheEvent, out: &mut Vec<Bytes>) {
        if let Some(k) = self.filter.event_for(ev) {
            out.push(match self.wire {
                Wire::Table => self.table_event(k, &ev.obj),
                w => ev.encoded(w, k),
            });
        }
    }

    fn event(&self, kind: EventKind, obj: &CachedObject) -> Bytes {
        match self.wire {
            Wire::Table => self.table_event(kind, obj),
            w => encode_event(w, kind, &obj.bytes),
        }
    }

    /// The object as a one-row Table; column definitions only in the first, as upstream.
    fn table_event(&self, kind: EventKind, obj: &CachedObject) -> Bytes {
        let info = self.cache.info;
        let meta = json!({"resourceVersion": obj.value["metadata"]["resourceVersion"]});
        let columns = !self.table_headers_sent.swap(true, Ordering::Relaxed);
        let mut t = Vec::new();
        table::write_table(info, [&obj.value], &meta, "Metadata", columns, &mut t);
        json_event(kind.as_str(), &t)
    }

    async fn send(&self, events: Vec<Bytes>, seen: Option<Instant>) -> bool {
        if events.is_empty() {
            return true;
        }
        let plural = self.cache.info.plural;
        self.s.metrics.watch_events.with_label_values(&[plural]).inc_by(events.len() as u64);
        let ok = self.tx.send(Ok(events)).await.is_ok();
        if let Some(seen) = seen {
            self.s
                .metrics
                .watch_latency
                .with_label_values(&[plural])
                .observe(seen.elapsed().as_secs_f64());
        }
        ok
    }

    async fn end(&self, e: ApiError) {
        let _ = self.tx.send(Err(e)).await;
    }

    pub async fn run(self, mut sub: Subscription) {
        let plural = self.cache.info.plural;
        let gauge = self.s.metrics.watchers.with_label_values(&[plural]);
        gauge.inc();
        let _dec = scopeguard(move || gauge.dec());
        // Events at or below `last` are covered by the initial state or the start revision.
        let mut last = if sub.with_initial { sub.rev.max(self.from) } else { self.from };
        for chunk in std::mem::take(&mut sub.initial).chunks(INITIAL_BATCH) {
            let events = chunk.iter().map(|o| self.event(EventKind::Added, o)).collect();
            if !self.send(events, None).await {
                return;
            }
        }
        if sub.with_initial
            && self.initial_end
            && self.bookmarks
            && !self.send(vec![self.bookmark(last, true)], None).await
        {
            return;
        }
        let mut out = Vec::new();
        for ev in std::mem::take(&mut sub.replay) {
            self.push(&ev, &mut out);
            last = last.max(ev.rev);
            if out.len() >= WATCH_BATCH && !self.send(std::mem::take(&mut out), None).await {
                return;
            }
        }
        if !self.send(out, None).await {
            return;
        }
        let mut tick = tokio::time::interval(self.s.config.bookmark_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut bookmarked = last;
        loop {
            tokio::select! {
                r = sub.rx.recv() => {
                    let mut out = Vec::new();
                    let mut first_seen = None;
                    let mut next = r;
                    loop {
                        match next {
                            Ok(ev) => {
                                if ev.rev > last {
                                    first_seen.get_or_insert(ev.seen);
                                    self.push(&ev, &mut out);
                                    last = ev.rev;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                self.s.metrics.watch_cutoffs.with_label_values(&[plural]).inc();
                                let _ = self.send(out, first_seen).await;
                                return self.end(ApiError::new(Reason::TooManyRequests, format!(
                                    "watch of {plural} fell {n} events behind and was cut off; resume from resourceVersion {last}"
                                ))).await;
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                let _ = self.send(out, first_seen).await;
                                return self.end(ApiError::new(Reason::Expired, format!(
                                    "the {plural} watch cache was rebuilt; relist"
                                ))).await;
                            }
                        }
                        if out.len() >= WATCH_BATCH {
                            break;
                        }
                        match sub.rx.try_recv() {
                            Ok(ev) => next = Ok(ev),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(n)) => next = Err(broadcast::error::RecvError::Lagged(n)),
                            Err(broadcast::error::TryRecvError::Closed) => next = Err(broadcast::error::RecvError::Closed),
                        }
                    }
                    if !self.send(out, first_seen).await {
                        return;
                    }
                }
                _ = tick.tick(), if self.bookmarks => {
                    // Read the revision before checking the ring: everything up to it was
                    // queued before it became visible.
                    let rev = self.cache.rev();
                    // Ask the cache to catch up with revisions of other types for the next tick.
                    self.cache.request_progress();
                    if sub.rx.is_empty() && rev > bookmarked.max(last) {
                        last = rev;
                        bookmarked = rev;
                        if !self.send(vec![self.bookmark(rev, false)], None).await {
                            return;
                        }
                    }
                }
                _ = self.tx.closed() => return,
            }
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    G(Some(f))
}
