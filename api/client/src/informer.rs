//! [`Informer`]: list, then watch; resume after disconnects; relist when the watch expires;
//! a local cache and a change feed (kube-rs's watcher + reflector, as one state machine).

use crate::{decode, object_key, Client, EventType, ListParams, WatchEvent, WatchParams};
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::prune::Keep;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;

/// A change the informer applied to its cache.
#[derive(Debug, Clone)]
pub enum Change {
    Added(Arc<Value>),
    Modified {
        old: Arc<Value>,
        new: Arc<Value>,
    },
    Deleted(Arc<Value>),
    /// A relist replaced the cache (after an expired watch); consumers resync.
    Resynced,
}

struct InformerState {
    objects: BTreeMap<String, Arc<Value>>,
    resource_version: String,
    synced: bool,
}

/// A local, always-current copy of one resource type (optionally narrowed by namespace and
/// selectors), as controllers, the scheduler and agents use it.
pub struct Informer {
    state: RwLock<InformerState>,
    changes: broadcast::Sender<Change>,
    synced: tokio::sync::watch::Sender<bool>,
    keep: &'static Keep,
}

impl Informer {
    /// Starts listing and watching in the background.
    pub fn start(client: Client, resource: &str, ns: &str, selectors: WatchParams) -> Arc<Self> {
        Self::start_with(client, resource, ns, selectors, &Keep::All)
    }

    /// As [`Informer::start`], keeping only `keep` of each object (client-go's SetTransform,
    /// done while decoding): a consumer that needs a few fields of many objects holds and
    /// decodes only those. `keep` must hold metadata's name, namespace and resourceVersion.
    pub fn start_with(
        client: Client,
        resource: &str,
        ns: &str,
        selectors: WatchParams,
        keep: &'static Keep,
    ) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        let inf = Arc::new(Informer {
            state: RwLock::new(InformerState {
                objects: BTreeMap::new(),
                resource_version: String::new(),
                synced: false,
            }),
            changes,
            synced: tokio::sync::watch::channel(false).0,
            keep,
        });
        let (me, resource, ns) = (Arc::downgrade(&inf), resource.to_string(), ns.to_string());
        tokio::spawn(async move { run_informer(me, client, resource, ns, selectors).await });
        inf
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Waits for the first complete list.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.synced.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .map_err(|_| ApiError::new(Reason::Unavailable, "informer did not sync in time"))?
            .map_err(|_| ApiError::internal("informer stopped"))?;
        Ok(())
    }

    pub fn has_synced(&self) -> bool {
        self.state.read().expect("informer lock").synced
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.state.read().expect("informer lock").objects.get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Value>> {
        self.state.read().expect("informer lock").objects.values().cloned().collect()
    }

    /// The objects of one namespace (keys are `namespace/name`, so this is a range).
    pub fn list_namespace(&self, ns: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{ns}/");
        self.state
            .read()
            .expect("informer lock")
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn resource_version(&self) -> String {
        self.state.read().expect("informer lock").resource_version.clone()
    }

    fn replace(&self, items: Vec<Value>, rv: String) {
        let mut st = self.state.write().expect("informer lock");
        st.objects = items.into_iter().map(|v| (object_key(&v), Arc::new(v))).collect();
        st.resource_version = rv;
        st.synced = true;
        drop(st);
        let _ = self.changes.send(Change::Resynced);
        self.synced.send_replace(true);
    }

    fn apply(&self, kind: EventType, json: &[u8]) -> Result<(), ApiError> {
        let ev = WatchEvent { kind, object: decode(json, self.keep)? };
        let mut st = self.state.write().expect("informer lock");
        let rv = ev.resource_version().to_string();
        if !rv.is_empty() {
            st.resource_version = rv;
        }
        let change = match ev.kind {
            EventType::Bookmark => None,
            EventType::Added | EventType::Modified => {
                let key = object_key(&ev.object);
                let new = Arc::new(ev.object);
                Some(match st.objects.insert(key, new.clone()) {
                    Some(old) => Change::Modified { old, new },
                    None => Change::Added(new),
                })
            }
            EventType::Deleted => {
                let key = object_key(&ev.object);
                st.objects.remove(&key);
                Some(Change::Deleted(Arc::new(ev.object)))
            }
        };
        drop(st);
        if let Some(c) = change {
            let _ = self.changes.send(c);
        }
        Ok(())
    }
}

async fn run_informer(
    me: std::sync::Weak<Informer>,
    client: Client,
    resource: String,
    ns: String,
    p: WatchParams,
) {
    use futures::StreamExt;
    let mut backoff = Duration::from_millis(100);
    let mut need_list = true;
    loop {
        let Some(inf) = me.upgrade() else { return };
        if need_list {
            let lp = ListParams {
                label_selector: p.label_selector.clone(),
                field_selector: p.field_selector.clone(),
                ..Default::default()
            };
            match client.list_all_with(&resource, &ns, &lp, inf.keep).await {
                Ok(l) => {
                    inf.replace(l.items, l.resource_version);
                    need_list = false;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::debug!(%resource, error = %e, "informer list failed; retrying");
                    drop(inf);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let wp = WatchParams {
            resource_version: inf.resource_version(),
            allow_bookmarks: true,
            ..p.clone()
        };
        drop(inf);
        let stream = match client.watch_json(&resource, &ns, &wp).await {
            Ok(s) => s,
            Err(e) => {
                need_list = e.reason == Reason::Expired;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let Some(inf) = me.upgrade() else { return };
            match item {
                Ok(events) => {
                    backoff = Duration::from_millis(100);
                    for (kind, json) in events {
                        if let Err(e) = inf.apply(kind, &json) {
                            tracing::warn!(%resource, error = %e, "informer skipped an event");
                        }
                    }
                }
                Err(e) => {
                    // Expired: the history we need is gone, relist. Anything else: resume
                    // from the last resourceVersion seen.
                    need_list = e.reason == Reason::Expired;
                    tracing::debug!(%resource, error = %e, relist = need_list, "informer watch ended");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
