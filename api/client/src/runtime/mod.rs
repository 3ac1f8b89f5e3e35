//! The controller runtime the scheduler and the controllers share: shared informers (from
//! `flotilla_client`) feed [`WorkQueue`]s through change handlers; workers pop keys and run
//! idempotent reconcilers; failures retry with per-key back-off; [`Expectations`] stop a
//! controller from acting again on a stale cache right after its own writes; [`leader`] makes
//! one member act at a time; [`events`] records what users need to see.
//!
//! ```text
//!  API watch ─► Informer (cache) ─► on_change ─► WorkQueue ─► workers ─► reconcile(key) ─► API
//!                                                    ▲                         │ Err: back-off
//!                                                    └─────────────────────────┘
//! ```

pub mod events;
pub mod leader;
pub mod queue;

pub use queue::WorkQueue;

use crate::{Change, Informer};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a reconcile returns: `Some(d)` asks to look at the key again after `d`.
pub type Reconciled = anyhow::Result<Option<Duration>>;

/// Runs `workers` workers over `queue` until it shuts down.
pub async fn run_workers<F, Fut>(name: &'static str, queue: Arc<WorkQueue>, workers: usize, f: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reconciled> + Send,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (q, f) = (queue.clone(), f.clone());
        set.spawn(async move {
            while let Some(key) = q.get().await {
                let started = Instant::now();
                match f(key.clone()).await {
                    Ok(after) => {
                        q.forget(&key);
                        if let Some(d) = after {
                            q.add_after(key.clone(), d);
                        }
                        tracing::trace!(controller = name, %key, elapsed = ?started.elapsed(), "reconciled");
                    }
                    Err(e) => {
                        tracing::warn!(controller = name, %key, error = %format!("{e:#}"), failures = q.failures(&key), "reconcile failed; retrying with back-off");
                        q.add_rate_limited(key.clone());
                    }
                }
                q.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Calls `f` for every change `inf` applies, for as long as the informer lives. A handler that
/// fell behind the change feed gets `Change::Resynced` (it must look at everything again).
pub fn on_change(inf: &Arc<Informer>, f: impl Fn(&Change) + Send + 'static) {
    let mut rx = inf.subscribe();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(c) => f(&c),
                Err(RecvError::Lagged(_)) => f(&Change::Resynced),
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Every key in an informer, for resyncs.
pub fn keys(inf: &Informer) -> Vec<String> {
    inf.list().iter().map(|o| crate::object_key(o)).collect()
}

/// A controller's outstanding creates and deletes per owner key, as client-go's
/// ControllerExpectations: until the informer has shown them (or 5 minutes pass), the owner's
/// cache is stale and the controller must not create or delete again.
#[derive(Default)]
pub struct Expectations {
    m: Mutex<HashMap<String, Expected>>,
}

struct Expected {
    adds: i64,
    dels: HashSet<String>,
    at: Instant,
}

const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

impl Expectations {
    pub fn expect(&self, owner: &str, adds: usize, dels: impl IntoIterator<Item = String>) {
        self.m.lock().expect("expectations lock").insert(
            owner.to_string(),
            Expected { adds: adds as i64, dels: dels.into_iter().collect(), at: Instant::now() },
        );
    }

    /// A create was seen in the cache, or failed (it will never be seen).
    pub fn created(&self, owner: &str) {
        if let Some(e) = self.m.lock().expect("expectations lock").get_mut(owner) {
            e.adds -= 1;
        }
    }

    /// A delete (of object `key`) was seen, or failed.
    pub fn deleted(&self, owner: &str, key: &str) {
        if let Some(e) = self.m.lock().expect("expectations lock").get_mut(owner) {
            e.dels.remove(key);
        }
    }

    pub fn satisfied(&self, owner: &str) -> bool {
        match self.m.lock().expect("expectations lock").get(owner) {
            None => true,
            Some(e) => (e.adds <= 0 && e.dels.is_empty()) || e.at.elapsed() > EXPECTATIONS_TTL,
        }
    }

    pub fn forget(&self, owner: &str) {
        self.m.lock().expect("expectations lock").remove(owner);
    }
}

// ---- object helpers shared by the reconcilers ----

pub fn meta<'a>(o: &'a Value, field: &str) -> &'a str {
    o["metadata"][field].as_str().unwrap_or("")
}

pub fn labels(o: &Value) -> std::collections::BTreeMap<String, String> {
    o.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default()
}

/// The ownerReference with `controller: true`.
pub fn controller_ref(o: &Value) -> Option<&Value> {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
}

pub fn controller_uid(o: &Value) -> &str {
    controller_ref(o).and_then(|r| r["uid"].as_str()).unwrap_or("")
}

/// An ownerReference naming `owner` as controller.
pub fn owner_ref(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"],
           "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
           "controller": true, "blockOwnerDeletion": true})
}

pub fn terminating(o: &Value) -> bool {
    !meta(o, "deletionTimestamp").is_empty()
}

pub fn pod_phase(p: &Value) -> &str {
    p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending")
}

/// Counts toward a controller's replicas: not finished and not being deleted.
pub fn pod_active(p: &Value) -> bool {
    !matches!(pod_phase(p), "Succeeded" | "Failed") && !terminating(p)
}

pub fn pod_condition<'a>(p: &'a Value, kind: &str) -> Option<&'a Value> {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"].as_str() == Some(kind))
}

pub fn pod_ready(p: &Value) -> bool {
    pod_condition(p, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Ready for at least `min_ready` (Kubernetes' "available").
pub fn pod_available(p: &Value, min_ready: i64, now: jiff::Timestamp) -> bool {
    let Some(c) = pod_condition(p, "Ready").filter(|c| c["status"] == "True") else {
        return false;
    };
    if min_ready <= 0 {
        return true;
    }
    c["lastTransitionTime"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t + jiff::SignedDuration::from_secs(min_ready) <= now)
}

/// RFC 3339 to the second, as metav1.Time.
pub fn now_rfc3339() -> String {
    rfc3339_seconds(jiff::Timestamp::now())
}

/// `t` as metav1.Time writes it: RFC 3339 with whole seconds.
pub fn rfc3339_seconds(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// Sets condition `kind` in `conds` (a conditions array), keeping lastTransitionTime when the
/// status did not change. Returns whether anything changed.
pub fn set_condition(
    conds: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    msg: &str,
) -> bool {
    let now = now_rfc3339();
    if let Some(c) = conds.iter_mut().find(|c| c["type"] == kind) {
        if c["status"] == status && c["reason"] == reason && c["message"] == msg {
            return false;
        }
        if c["status"] != status {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(msg);
        return true;
    }
    conds.push(json!({"type": kind, "status": status, "reason": reason, "message": msg,
                      "lastTransitionTime": now}));
    true
}
