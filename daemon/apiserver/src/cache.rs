//! The watch cache of one resource type: filled by one store watch, it serves lists (with a
//! namespace order and a spec.nodeName index) and every API watch of that type. Each change is
//! turned into JSON once (with its resourceVersion) and those bytes are shared by every list
//! and watcher. Watchers read one broadcast ring: one that falls more than the ring behind is
//! cut off with a resumable error instead of holding memory or slowing the others.

use super::kv::{prefix_end, Kv};
use bytes::Bytes;
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::selector::{FieldSelector, LabelSelector};
use flotilla_api::{proto, ResourceInfo};
use flotilla_store::proto::mvccpb::{event::EventType as StoreEventType, Event, KeyValue};
use flotilla_store::{KeyRange, WatchSpec, WatchUpdate};
use prost::Message;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

/// One object as the cache holds it.
#[derive(Debug)]
pub struct CachedObject {
    /// `namespace/name`, or `name` for cluster-scoped objects: the cache's sort order.
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: String,
    pub value: Value,
    /// `value` as JSON, with metadata.resourceVersion set.
    pub bytes: Bytes,
}

impl CachedObject {
    fn new(key: String, value: Value, rv: i64) -> Self {
        Self::with_json(key, value, rv, None)
    }

    /// An object read from the store outside the cache (`stored`: its bytes there).
    pub fn stored(key: String, value: Value, rv: i64, stored: &[u8]) -> Self {
        Self::with_json(key, value, rv, Some(stored))
    }

    /// `stored`: the object's bytes in the store, served as they are when their layout allows.
    fn with_json(key: String, mut value: Value, rv: i64, stored: Option<&[u8]>) -> Self {
        if let Some(m) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let bytes = stored
            .and_then(|s| super::served(s, rv))
            .unwrap_or_else(|| Bytes::from(serde_json::to_vec(&value).unwrap_or_default()));
        let meta = value.get("metadata");
        let namespace =
            meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("").to_string();
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let node_name =
            value.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").to_string();
        CachedObject { key, namespace, labels, node_name, value, bytes }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added = 0,
    Modified = 1,
    Deleted = 2,
}

#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventKind,
    pub rev: i64,
    pub obj: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
    /// When the cache saw it: watch event latency is measured from here.
    pub seen: Instant,
    /// The encoded event per wire and event type a watcher may see it as, built on first use.
    encoded: [OnceLock<Bytes>; 6],
}

impl CacheEvent {
    fn new(
        kind: EventKind,
        rev: i64,
        obj: Arc<CachedObject>,
        prev: Option<Arc<CachedObject>>,
        seen: Instant,
    ) -> Self {
        CacheEvent { kind, rev, obj, prev, seen, encoded: Default::default() }
    }

    /// This event as `as_kind` (a watcher's filter may turn MODIFIED into ADDED or DELETED)
    /// in a front's encoding, encoded once and shared by every watcher of that front.
    pub fn encoded(&self, wire: Wire, as_kind: EventKind) -> Bytes {
        debug_assert!(wire != Wire::Table, "tables are encoded per watcher");
        self.encoded[(wire as usize).min(1) * 3 + as_kind as usize]
            .get_or_init(|| encode_event(wire, as_kind, &self.obj.bytes))
            .clone()
    }
}

/// How a front frames watch events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// gRPC: a protobuf `WatchEvent` each.
    Proto = 0,
    /// HTTP: Kubernetes' `{"type":"ADDED","object":{…}}` lines.
    Json = 1,
    /// HTTP, each object as a one-row Table (`kubectl get -w`): made per watcher, since only
    /// the first carries the column definitions.
    Table = 2,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

pub fn encode_event(wire: Wire, kind: EventKind, object: &Bytes) -> Bytes {
    match wire {
        Wire::Proto => {
            let t = match kind {
                EventKind::Added => proto::EventType::Added,
                EventKind::Modified => proto::EventType::Modified,
                EventKind::Deleted => proto::EventType::Deleted,
            };
            Bytes::from(
                proto::WatchEvent { r#type: t as i32, object: object.clone() }.encode_to_vec(),
            )
        }
        Wire::Json | Wire::Table => json_event(kind.as_str(), object),
    }
}

/// One line of an HTTP watch: the object's bytes as they are, framed.
pub fn json_event(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// What one list or watch selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: String,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn new(
        info: &ResourceInfo,
        ns: &str,
        labels: &str,
        fields: &str,
    ) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(labels)
            .map_err(|e| ApiError::bad_request(format!("invalid label selector: {e}")))?;
        let fields = FieldSelector::parse(fields)
            .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
        fields
            .check(info.field_selectors)
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", info.plural)))?;
        let namespace = if info.namespaced { ns.to_string() } else { String::new() };
        Ok(Filter { namespace, labels, fields })
    }

    pub fn matches(&self, o: &CachedObject) -> bool {
        (self.namespace.is_empty() || o.namespace == self.namespace)
            && self.labels.matches(&o.labels)
            && (self.fields.is_everything() || self.fields.matches(&o.value))
    }

    /// The event this watcher sees: an object that stops matching is DELETED for it, one that
    /// starts matching is ADDED, as in Kubernetes' watch cache.
    pub fn event_for(&self, ev: &CacheEvent) -> Option<EventKind> {
        let now = self.matches(&ev.obj);
        match ev.kind {
            EventKind::Added => now.then_some(EventKind::Added),
            EventKind::Deleted => now.then_some(EventKind::Deleted),
            EventKind::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(EventKind::Modified),
                    (false, true) => Some(EventKind::Added),
                    (true, false) => Some(EventKind::Deleted),
                    (false, false) => None,
                }
            }
        }
    }
}

struct State {
    /// Every change of this type up to `rev` has been applied.
    rev: i64,
    objects: BTreeMap<String, Arc<CachedObject>>,
    /// spec.nodeName → keys ("" holds the unbound): what agents and the scheduler list by.
    by_node: HashMap<String, BTreeSet<String>>,
    history: VecDeque<Arc<CacheEvent>>,
    /// Every event after this revision is in `history`.
    history_from: i64,
    /// No object of this type changed after this revision (up to `rev`): the state is the
    /// snapshot at any revision in `changed..=rev`.
    changed: i64,
    /// Bumped on every relist: watchers of an older generation must start over.
    generation: u64,
}

impl State {
    fn index(&mut self, o: &CachedObject) {
        self.by_node.entry(o.node_name.clone()).or_default().insert(o.key.clone());
    }
    fn unindex(&mut self, o: &CachedObject) {
        if let Some(s) = self.by_node.get_mut(&o.node_name) {
            s.remove(&o.key);
            if s.is_empty() {
                self.by_node.remove(&o.node_name);
            }
        }
    }
}

pub struct WatchCache {
    pub info: &'static ResourceInfo,
    state: RwLock<State>,
    tx: RwLock<broadcast::Sender<Arc<CacheEvent>>>,
    ring: usize,
    history_limit: usize,
    /// Wakes the filler to report progress (a consistent list is waiting).
    progress: Notify,
    /// Signalled whenever `rev` moves.
    advanced: Notify,
    /// Objects this server is writing, already decoded (store key → stored bytes, object):
    /// applying their event takes the object instead of parsing the bytes again.
    decoded: Mutex<HashMap<String, (Bytes, Value)>>,
}

/// Most hand-overs waiting: beyond this (writes whose events this cache never applies, such
/// as during a relist), they are dropped and the events parsed.
const MAX_DECODED: usize = 8192;

/// A snapshot for a new watcher: the events it must replay, then the live ring.
pub struct Subscription {
    pub initial: Vec<Arc<CachedObject>>,
    pub replay: Vec<Arc<CacheEvent>>,
    pub rx: broadcast::Receiver<Arc<CacheEvent>>,
    pub rev: i64,
    /// `initial` is the state at `rev` (possibly empty), sent before any event.
    pub with_initial: bool,
}

pub struct ListPage {
    /// The cached objects themselves: their bytes go out as they are, and readers that need
    /// fields (tables, evictions, metrics) need not parse them again.
    pub items: Vec<Arc<CachedObject>>,
    pub rev: i64,
    /// The key to continue after, when the page was cut by `limit`.
    pub next: Option<String>,
    pub remaining: i64,
}

/// Builds one list page from objects offered in key order: the matching ones up to `limit`
/// (0: no limit), and a count of the matching ones after it.
pub struct PageBuilder {
    limit: usize,
    page: ListPage,
}

impl PageBuilder {
    pub fn new(limit: usize, rev: i64) -> Self {
        PageBuilder { limit, page: ListPage { items: Vec::new(), rev, next: None, remaining: 0 } }
    }

    pub fn offer(&mut self, f: &Filter, o: &Arc<CachedObject>) {
        if !f.matches(o) {
            return;
        }
        if self.limit > 0 && self.page.items.len() >= self.limit {
            self.page.remaining += 1;
        } else {
            self.page.items.push(o.clone());
            self.page.next = Some(o.key.clone());
        }
    }

    /// The page; `next` only when something matching is left.
    pub fn finish(mut self) -> ListPage {
        if self.page.remaining == 0 {
            self.page.next = None;
        }
        self.page
    }
}

impl WatchCache {
    pub fn new(info: &'static ResourceInfo, ring: usize, history_limit: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(ring.max(16));
        Arc::new(WatchCache {
            info,
            state: RwLock::new(State {
                rev: 0,
                objects: BTreeMap::new(),
                by_node: HashMap::new(),
                history: VecDeque::new(),
                history_from: 0,
                changed: 0,
                generation: 0,
            }),
            tx: RwLock::new(tx),
            ring: ring.max(16),
            history_limit,
            progress: Notify::new(),
            advanced: Notify::new(),
            decoded: Mutex::new(HashMap::new()),
        })
    }

    /// Hands over the object a write is about to store as `stored` under `key`, so that
    /// applying its event needs no decoding. Call before the write; `forget` if it fails.
    pub fn expect(&self, key: &str, stored: Bytes, object: Value) {
        let mut d = self.decoded.lock().expect("decoded lock");
        if d.len() >= MAX_DECODED {
            d.clear();
        }
        d.insert(key.to_string(), (stored, object));
    }

    /// Takes back what `expect` handed over for a write that did not happen.
    pub fn forget(&self, key: &str, stored: &[u8]) -> Option<Value> {
        self.take_decoded(key.as_bytes(), stored)
    }

    /// The handed-over object for this event, if its bytes are exactly what was stored.
    fn take_decoded(&self, key: &[u8], value: &[u8]) -> Option<Value> {
        let mut d = self.decoded.lock().expect("decoded lock");
        if d.is_empty() {
            return None;
        }
        let key = std::str::from_utf8(key).ok()?;
        match d.get(key) {
            Some((b, _)) if b.as_ref() == value => d.remove(key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn rev(&self) -> i64 {
        self.state.read().expect("cache lock").rev
    }

    /// Every object, shared with the cache (no copies, no decoding).
    pub fn objects(&self) -> Vec<Arc<CachedObject>> {
        self.state.read().expect("cache lock").objects.values().cloned().collect()
    }

    /// Changes when the cache's contents do (a relist, or an event applied); not when only
    /// its revision moves. Derived state (the RBAC index) rebuilds when this changes.
    pub fn version(&self) -> (u64, i64) {
        let st = self.state.read().expect("cache lock");
        (st.generation, st.changed)
    }

    /// The objects whose `spec.nodeName` is `node` (pods).
    pub fn on_node(&self, node: &str) -> Vec<Arc<CachedObject>> {
        let st = self.state.read().expect("cache lock");
        st.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| st.objects.get(k).cloned())
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.state.read().expect("cache lock").objects.get(key).cloned()
    }

    /// Keys relative to the resource's prefix (`ns/name` or `name`).
    fn rel_key(&self, full: &[u8]) -> String {
        let prefix = self.info.key_prefix();
        String::from_utf8_lossy(&full[prefix.len().min(full.len())..]).into_owned()
    }

    /// Keeps the cache in step with the store, relisting whenever the watch ends.
    pub async fn run(self: Arc<Self>, store: Kv) {
        let prefix = self.info.key_prefix().into_bytes();
        let end = prefix_end(&prefix);
        let mut backoff = Duration::from_millis(50);
        loop {
            let kvs = match store.range_all(&prefix, &end).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(resource = self.info.plural, error = %e, "watch cache list failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let (list_rev, kvs) = kvs;
            self.reset(list_rev, kvs);
            let spec = WatchSpec {
                range: KeyRange::new(&prefix, &end),
                start_revision: list_rev + 1,
                prev_kv: false,
                no_put: false,
                no_delete: false,
                progress_notify: false,
            };
            let mut watcher = match store.watch(spec) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(resource = self.info.plural, error = %e, "watch cache watch failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            loop {
                tokio::select! {
                    u = watcher.next() => match u {
                        Some(WatchUpdate::Events { revision, events }) => self.apply(revision, &events, &store),
                        Some(WatchUpdate::Canceled { reason, .. }) => {
                            tracing::warn!(resource = self.info.plural, %reason, "store watch ended; relisting");
                            break;
                        }
                        None => break,
                    },
                    _ = self.progress.notified() => {}
                }
                if let Some(p) = watcher.progress_revision() {
                    self.advance(p);
                }
            }
        }
    }

    fn reset(&self, rev: i64, kvs: Vec<KeyValue>) {
        let mut st = self.state.write().expect("cache lock");
        st.objects.clear();
        st.by_node.clear();
        for kv in kvs {
            let Ok(v) = serde_json::from_slice::<Value>(&kv.value) else {
                tracing::error!(key = %String::from_utf8_lossy(&kv.key), "undecodable object in the store; skipped");
                continue;
            };
            let o = Arc::new(CachedObject::new(self.rel_key(&kv.key), v, kv.mod_revision));
            st.index(&o);
            st.objects.insert(o.key.clone(), o);
        }
        st.rev = rev;
        st.changed = rev;
        st.history.clear();
        st.history_from = rev;
        st.generation += 1;
        // Watchers of the previous generation see their channel close and start over.
        *self.tx.write().expect("cache tx") = broadcast::channel(self.ring).0;
        drop(st);
        self.advanced.notify_waiters();
    }

    fn advance(&self, rev: i64) {
        let mut st = self.state.write().expect("cache lock");
        if rev > st.rev {
            st.rev = rev;
            drop(st);
            self.advanced.notify_waiters();
        }
    }

    fn apply(&self, revision: i64, events: &[Bytes], store: &Kv) {
        let seen = Instant::now();
        let mut st = self.state.write().expect("cache lock");
        let tx = self.tx.read().expect("cache tx").clone();
        for raw in events {
            let Ok(ev) = Event::decode(raw.as_ref()) else { continue };
            let Some(mut kv) = ev.kv else { continue };
            let key = self.rel_key(&kv.key);
            if ev.r#type != StoreEventType::Delete as i32 {
                if let Err(e) = store.open(&mut kv) {
                    tracing::error!(%key, error = %e.message, "undecryptable object in the store; skipped");
                    continue;
                }
            }
            let prev = st.objects.get(&key).cloned();
            let out = if ev.r#type == StoreEventType::Delete as i32 {
                let Some(p) = prev.clone() else { continue };
                st.unindex(&p);
                st.objects.remove(&key);
                // A deleted object carries the deletion's revision, as in Kubernetes.
                let obj = Arc::new(CachedObject::new(key, p.value.clone(), kv.mod_revision));
                CacheEvent::new(EventKind::Deleted, kv.mod_revision, obj, prev, seen)
            } else {
                let decoded = self.take_decoded(&kv.key, &kv.value);
                let Some(v) = decoded.or_else(|| serde_json::from_slice::<Value>(&kv.value).ok())
                else {
                    tracing::error!(%key, "undecodable object in the store; skipped");
                    continue;
                };
                let obj = Arc::new(CachedObject::with_json(
                    key.clone(),
                    v,
                    kv.mod_revision,
                    Some(&kv.value),
                ));
                if let Some(p) = &prev {
                    st.unindex(p);
                }
                st.index(&obj);
                st.objects.insert(key, obj.clone());
                let kind = if prev.is_some() { EventKind::Modified } else { EventKind::Added };
                CacheEvent::new(kind, kv.mod_revision, obj, prev, seen)
            };
            let ev = Arc::new(out);
            st.changed = st.changed.max(ev.rev);
            st.history.push_back(ev.clone());
            if st.history.len() > self.history_limit {
                if let Some(old) = st.history.pop_front() {
                    st.history_from = old.rev;
                }
            }
            // No receivers is fine; a lagging receiver notices on its own.
            let _ = tx.send(ev);
        }
        st.rev = st.rev.max(revision);
        drop(st);
        self.advanced.notify_waiters();
    }

    /// Has the filler move `rev` up to the store's revision if no event of this type is due.
    pub fn request_progress(&self) {
        self.progress.notify_one();
    }

    /// Waits until everything the store had at `target` is in the cache.
    pub async fn wait_for(&self, target: i64, timeout: Duration) -> Result<(), ApiError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.advanced.notified();
            if self.rev() >= target {
                return Ok(());
            }
            self.progress.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::new(
                    Reason::Timeout,
                    format!(
                        "the {} cache is at revision {} and did not reach {target} in time",
                        self.info.plural,
                        self.rev()
                    ),
                ));
            }
            // Progress may lag the store by a moment: poll as well as wait.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(5)), notified).await;
        }
    }

    /// One page of matching objects, in key order after `after`.
    pub fn list(&self, f: &Filter, limit: usize, after: Option<&str>) -> ListPage {
        let st = self.state.read().expect("cache lock");
        Self::list_state(&st, self.info, f, limit, after)
    }

    /// The page after `after` of the snapshot at revision `rv`, if the cache still holds that
    /// snapshot (nothing of this type changed since).
    pub fn list_at(&self, f: &Filter, limit: usize, after: &str, rv: i64) -> Option<ListPage> {
        let st = self.state.read().expect("cache lock");
        if !(st.changed..=st.rev).contains(&rv) {
            return None;
        }
        let page = Self::list_state(&st, self.info, f, limit, Some(after));
        Some(ListPage { rev: rv, ..page })
    }

    fn list_state(
        st: &State,
        info: &ResourceInfo,
        f: &Filter,
        limit: usize,
        after: Option<&str>,
    ) -> ListPage {
        let mut page = PageBuilder::new(limit, st.rev);
        let lower = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None if !f.namespace.is_empty() => {
                std::ops::Bound::Included(format!("{}/", f.namespace))
            }
            None => std::ops::Bound::Unbounded,
        };
        let node = f.fields.exact("spec.nodeName").filter(|_| info.plural == "pods");
        match node {
            Some(n) => {
                for k in st.by_node.get(n).into_iter().flatten() {
                    if after.is_some_and(|a| k.as_str() <= a) {
                        continue;
                    }
                    if let Some(o) = st.objects.get(k) {
                        page.offer(f, o);
                    }
                }
            }
            None => {
                let ns_prefix = (!f.namespace.is_empty()).then(|| format!("{}/", f.namespace));
                for (k, o) in st.objects.range((lower, std::ops::Bound::Unbounded)) {
                    if ns_prefix.as_ref().is_some_and(|p| !k.starts_with(p.as_str())) {
                        break;
                    }
                    page.offer(f, o);
                }
            }
        }
        page.finish()
    }

    /// Registers a watcher from `from` (0: now, with the current state as `initial`).
    pub fn subscribe(
        &self,
        from: i64,
        f: &Filter,
        initial: bool,
    ) -> Result<Subscription, ApiError> {
        let st = self.state.read().expect("cache lock");
        let rx = self.tx.read().expect("cache tx").subscribe();
        let mut sub = Subscription {
            initial: Vec::new(),
            replay: Vec::new(),
            rx,
            rev: st.rev,
            with_initial: false,
        };
        if from == 0 || initial {
            if from != 0 && from != st.rev {
                return Err(ApiError::bad_request(
                    "sendInitialEvents with a resourceVersion other than the current one is not supported; watch from \"\" instead",
                ));
            }
            sub.initial = st.objects.values().filter(|o| f.matches(o)).cloned().collect();
            sub.with_initial = true;
            return Ok(sub);
        }
        if from < st.history_from {
            return Err(ApiError::new(
                Reason::Expired,
                format!(
                    "too old resource version: {from} ({}): the watch cache of {} starts after {}; relist",
                    st.history_from, self.info.plural, st.history_from
                ),
            ));
        }
        sub.replay = st.history.iter().filter(|e| e.rev > from).cloned().collect();
        Ok(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handed_over_objects_are_taken_only_for_their_exact_bytes() {
        let c = WatchCache::new(flotilla_api::lookup("pods").unwrap(), 16, 16);
        let key = "/registry/core/pods/default/a";
        let stored = Bytes::from_static(br#"{"metadata":{"name":"a"}}"#);
        c.expect(key, stored.clone(), json!({"metadata": {"name": "a"}}));
        // Other bytes under the key (someone else's write): parsed, the hand-over stays.
        assert!(c.take_decoded(key.as_bytes(), br#"{"metadata":{"name":"b"}}"#).is_none());
        assert_eq!(
            c.take_decoded(key.as_bytes(), &stored),
            Some(json!({"metadata": {"name": "a"}}))
        );
        assert!(c.take_decoded(key.as_bytes(), &stored).is_none(), "taken once");
        // A failed write takes its object back; nothing is left behind.
        c.expect(key, stored.clone(), json!({"x": 1}));
        assert_eq!(c.forget(key, b"other"), None);
        assert_eq!(c.forget(key, &stored), Some(json!({"x": 1})));
        assert!(c.decoded.lock().unwrap().is_empty());
    }
}
