//! etcd Watch service: one bidirectional stream carries many watches.
//!
//! ```text
//!  requests ─▶ stream task ── create ─▶ "created" (in request order) ─▶ spawn watch task
//!                  │         cancel ─▶ stop task, "canceled"
//!                  │         progress ─▶ poke every watch task
//!  watch tasks ── events / progress / canceled ─▶ outbox (bounded) ─▶ client
//! ```
//! "created" is sent by the stream task itself so that clients which match creations to
//! requests by order (the Go client does) see them in order.

use crate::mvcc::KeyRange;
use crate::node::{KvStore, StoreNode};
use crate::proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchRequest, WatchResponse,
};
use crate::watch::WatchSpec;
use crate::watcher::{WatchUpdate, Watcher};
use futures::StreamExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Responses queued per stream before its watch tasks wait (and, if the client stays slow,
/// fall a ring behind and are cancelled).
const OUTBOX: usize = 1024;

pub struct WatchService {
    node: Arc<StoreNode>,
    progress_interval: Duration,
}

impl WatchService {
    pub fn new(node: Arc<StoreNode>) -> Self {
        let progress_interval = node.config().progress_notify_interval;
        WatchService { node, progress_interval }
    }
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;
type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        r: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let incoming = r.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOX);
        tokio::spawn(run_stream(self.node.clone(), incoming, tx, self.progress_interval));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn run_stream(
    node: Arc<StoreNode>,
    mut incoming: Streaming<WatchRequest>,
    out: Out,
    progress_interval: Duration,
) {
    let mut watches: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
    let (poke_tx, _) = tokio::sync::watch::channel(0u64);
    let mut next_id = 0i64;
    while let Some(Ok(req)) = incoming.next().await {
        watches.retain(|_, h| !h.is_finished());
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
                let watcher = if watches.contains_key(&id) {
                    Err(format!("etcdserver: duplicate watch ID {id} on this stream"))
                } else {
                    node.watch(spec).map_err(|e| e.to_string())
                };
                let watcher = match watcher {
                    Ok(w) => w,
                    Err(reason) => {
                        let resp = WatchResponse {
                            header: Some(node.header(node.revision())),
                            watch_id: id,
                            created: true,
                            canceled: true,
                            cancel_reason: reason,
                            ..Default::default()
                        };
                        if out.send(Ok(resp)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let created = WatchResponse {
                    header: Some(node.header(watcher.subscribed_at())),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                if out.send(Ok(created)).await.is_err() {
                    break;
                }
                let task = run_watch(
                    node.clone(),
                    id,
                    watcher,
                    out.clone(),
                    poke_tx.subscribe(),
                    progress_interval,
                );
                watches.insert(id, tokio::spawn(task));
            }
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(h) = watches.remove(&c.watch_id) {
                    h.abort();
                    let resp = WatchResponse {
                        header: Some(node.header(node.revision())),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    if out.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                poke_tx.send_modify(|n| *n += 1);
            }
            None => {}
        }
    }
    for (_, h) in watches {
        h.abort();
    }
}

async fn run_watch(
    node: Arc<StoreNode>,
    id: i64,
    mut w: Watcher,
    out: Out,
    mut poke: tokio::sync::watch::Receiver<u64>,
    progress_interval: Duration,
) {
    let notify = w.spec().progress_notify;
    let mut ticker = tokio::time::interval(progress_interval);
    ticker.tick().await;
    let mut sent_since_tick = false;
    let mut want_progress = false;
    let progress =
        |rev| WatchResponse { header: Some(node.header(rev)), watch_id: id, ..Default::default() };
    loop {
        if want_progress {
            if let Some(rev) = w.progress_revision() {
                want_progress = false;
                if out.send(Ok(progress(rev))).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            u = w.next() => match u {
                Some(WatchUpdate::Events { revision, events }) => {
                    sent_since_tick = true;
                    let resp = WatchResponse {
                        header: Some(node.header(revision)),
                        watch_id: id,
                        events,
                        ..Default::default()
                    };
                    if out.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
                Some(WatchUpdate::Canceled { reason, compact_revision }) => {
                    let resp = WatchResponse {
                        header: Some(node.header(node.revision())),
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: reason,
                        ..Default::default()
                    };
                    let _ = out.send(Ok(resp)).await;
                    return;
                }
                None => return,
            },
            r = poke.changed() => {
                if r.is_err() {
                    return;
                }
                want_progress = true;
            }
            _ = ticker.tick(), if notify => {
                if !sent_since_tick {
                    want_progress = true;
                }
                sent_since_tick = false;
            }
            // A progress report waits for the watcher to drain what is queued; look again soon.
            _ = tokio::time::sleep(Duration::from_millis(5)), if want_progress => {}
        }
    }
}
