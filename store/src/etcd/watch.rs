//! etcd Watch service: one bidirectional stream carries many watches, all delivering into the
//! stream's one sink, which becomes the response stream.
//!
//! ```text
//!  requests ─▶ stream task ── create ─▶ hub.watch(.., announce) ─▶ "created" + events ─┐
//!                  │         cancel ─▶ unregister, "canceled" ─────────────────────────┤
//!                  │         progress / ticks ─▶ "progress" for synced watches ────────┤
//!  hub (apply path) ── events ─────────────────────────────────────────────────────────┤
//!                                                                     sink ─▶ client ◀─┘
//! ```
//! "created" is queued under the MVCC read lock before the watch can receive anything, so
//! clients that match creations to requests by order (the Go client does) see them in order.

use crate::mvcc::KeyRange;
use crate::node::StoreNode;
use crate::proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchRequest, WatchResponse,
};
use crate::watch::{sink, Sink, SinkMsg, SinkReceiver, WatchHandle, WatchSpec};
use futures::StreamExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

pub struct WatchService {
    node: Arc<StoreNode>,
}

impl WatchService {
    pub fn new(node: Arc<StoreNode>) -> Self {
        WatchService { node }
    }
}

type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        r: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let incoming = r.into_inner();
        let (tx, rx) = sink(self.node.config().watch_queue_limit);
        tokio::spawn(run_stream(self.node.clone(), incoming, tx));
        Ok(Response::new(responses(self.node.clone(), rx)))
    }
}

/// Revisions one response may carry when a stream has fallen behind.
const COALESCE_REVISIONS: usize = 64;
const COALESCE_BYTES: usize = 1 << 20;

/// The sink as gRPC responses; headers are filled in as each response leaves. When a stream is
/// behind, queued revisions of the same watch leave as one response (whole revisions, in order),
/// so a backlog drains in fewer, larger messages.
fn responses(node: Arc<StoreNode>, rx: SinkReceiver) -> WatchStream {
    let state = (rx, node, None::<SinkMsg>);
    Box::pin(futures::stream::unfold(state, |(mut rx, node, carry)| async move {
        let msg = match carry {
            Some(m) => m,
            None => rx.recv().await?,
        };
        let mut carry = None;
        let resp = match msg {
            SinkMsg::Created { watch_id, revision } => WatchResponse {
                header: Some(node.header(revision)),
                watch_id,
                created: true,
                ..Default::default()
            },
            SinkMsg::Events { watch_id, mut revision, mut events } => {
                let mut merged = 1;
                let mut bytes: usize = events.iter().map(|e| e.len()).sum();
                while merged < COALESCE_REVISIONS && bytes < COALESCE_BYTES {
                    match rx.try_recv() {
                        Some(SinkMsg::Events { watch_id: w, revision: r, events: more })
                            if w == watch_id =>
                        {
                            bytes += more.iter().map(|e| e.len()).sum::<usize>();
                            events.extend(more);
                            revision = r;
                            merged += 1;
                        }
                        Some(other) => {
                            carry = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                WatchResponse {
                    header: Some(node.header(revision)),
                    watch_id,
                    events,
                    ..Default::default()
                }
            }
            SinkMsg::Progress { watch_id, revision } => WatchResponse {
                header: Some(node.header(revision)),
                watch_id,
                ..Default::default()
            },
            SinkMsg::Canceled { watch_id, reason, compact_revision } => WatchResponse {
                header: Some(node.header(node.sm.hub.published())),
                watch_id,
                canceled: true,
                compact_revision,
                cancel_reason: reason,
                ..Default::default()
            },
        };
        Some((Ok(resp), (rx, node, carry)))
    }))
}

struct StreamWatch {
    handle: Arc<WatchHandle>,
    progress_notify: bool,
}

async fn run_stream(node: Arc<StoreNode>, mut incoming: Streaming<WatchRequest>, out: Sink) {
    let hub = node.sm.hub.clone();
    let mut watches: HashMap<i64, StreamWatch> = HashMap::new();
    let mut next_id = 0i64;
    let mut ticker = tokio::time::interval(node.config().progress_notify_interval);
    ticker.tick().await;
    loop {
        let req = tokio::select! {
            r = incoming.next() => match r {
                Some(Ok(req)) => req,
                _ => break,
            },
            _ = ticker.tick() => {
                // Idle watches that asked for it learn the revision they are caught up to.
                let rev = hub.published();
                for (id, w) in &watches {
                    if w.progress_notify
                        && w.handle.synced.load(Ordering::Acquire)
                        && !w.handle.active.swap(false, Ordering::Relaxed)
                    {
                        out.push_control(SinkMsg::Progress { watch_id: *id, revision: rev });
                    }
                }
                continue;
            }
        };
        if out.closed() {
            break;
        }
        watches.retain(|_, w| !w.handle.done.load(Ordering::Acquire));
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let id = if c.watch_id > 0 { c.watch_id } else { next_id };
                if c.watch_id == 0 {
                    next_id += 1;
                    while watches.contains_key(&next_id) {
                        next_id += 1;
                    }
                }
                let spec = WatchSpec {
                    range: KeyRange::new(&c.key, &c.range_end),
                    start_revision: c.start_revision,
                    prev_kv: c.prev_kv,
                    no_put: c.filters.contains(&(FilterType::Noput as i32)),
                    no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                    progress_notify: c.progress_notify,
                };
                let refused = match watches.entry(id) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        Some(format!("etcdserver: duplicate watch ID {id} on this stream"))
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        match hub.watch(&node.sm.mvcc, spec, id, out.clone(), true) {
                            Ok(handle) => {
                                let progress_notify = c.progress_notify;
                                slot.insert(StreamWatch { handle, progress_notify });
                                None
                            }
                            Err(e) => Some(e.to_string()),
                        }
                    }
                };
                if let Some(reason) = refused {
                    out.push_control(SinkMsg::Created { watch_id: id, revision: hub.published() });
                    out.push_control(SinkMsg::Canceled {
                        watch_id: id,
                        reason,
                        compact_revision: 0,
                    });
                }
            }
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(w) = watches.remove(&c.watch_id) {
                    w.handle.done.store(true, Ordering::Release);
                    hub.unregister(w.handle.id);
                    out.push_control(SinkMsg::Canceled {
                        watch_id: c.watch_id,
                        reason: String::new(),
                        compact_revision: 0,
                    });
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Everything up to the published revision is already queued ahead of this.
                let rev = hub.published();
                for (id, w) in &watches {
                    if w.handle.synced.load(Ordering::Acquire) {
                        out.push_control(SinkMsg::Progress { watch_id: *id, revision: rev });
                    }
                }
            }
            None => {}
        }
    }
    for (_, w) in watches {
        w.handle.done.store(true, Ordering::Release);
        hub.unregister(w.handle.id);
    }
}
