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

/// Reconcile outcomes per controller, in the process's default Prometheus registry (the API
/// server's `/metrics` serves it too, as controller-runtime's `controller_runtime_reconcile_*`).
struct ReconcileMetrics {
    total: prometheus::IntCounterVec,
    panics: prometheus::IntCounterVec,
}

fn reconcile_metrics() -> &'static ReconcileMetrics {
    static M: std::sync::OnceLock<ReconcileMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let total = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "flotilla_controller_reconcile_total",
                "Reconciles by controller and result (success, requeue_after, error, panic)",
            ),
            &["controller", "result"],
        )
        .expect("valid metric");
        let panics = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "flotilla_controller_reconcile_panics_total",
                "Reconciles that panicked, by controller (the key is retried with back-off)",
            ),
            &["controller"],
        )
        .expect("valid metric");
        let r = prometheus::default_registry();
        // Registered once per process; a second registration could only be a duplicate name.
        let _ = r.register(Box::new(total.clone()));
        let _ = r.register(Box::new(panics.clone()));
        ReconcileMetrics { total, panics }
    })
}

/// How many reconciles of `controller` panicked in this process.
pub fn reconcile_panics(controller: &str) -> u64 {
    reconcile_metrics().panics.with_label_values(&[controller]).get()
}

/// Runs `workers` workers over `queue` until it shuts down. A reconcile that panics is logged
/// with its key, counted, and retried with back-off like an error: one bad object must not
/// take a worker (and after a few, the whole controller) down with it.
pub async fn run_workers<F, Fut>(name: &'static str, queue: Arc<WorkQueue>, workers: usize, f: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reconciled> + Send,
{
    use futures::FutureExt;
    let metrics = reconcile_metrics();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (q, f) = (queue.clone(), f.clone());
        set.spawn(async move {
            while let Some(key) = q.get().await {
                let started = Instant::now();
                let span = tracing::info_span!("reconcile", controller = name, key = %key);
                let work = tracing::Instrument::instrument(f(key.clone()), span.clone());
                let outcome = std::panic::AssertUnwindSafe(work).catch_unwind().await;
                let _enter = span.enter();
                let result = match outcome {
                    Ok(Ok(after)) => {
                        q.forget(&key);
                        if let Some(d) = after {
                            q.add_after(key.clone(), d);
                        }
                        tracing::trace!(elapsed = ?started.elapsed(), "reconciled");
                        if after.is_some() {
                            "requeue_after"
                        } else {
                            "success"
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), failures = q.failures(&key), "reconcile failed; retrying with back-off");
                        q.add_rate_limited(key.clone());
                        "error"
                    }
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a non-string payload".into());
                        metrics.panics.with_label_values(&[name]).inc();
                        tracing::error!(panic = %what, failures = q.failures(&key), "reconcile panicked; retrying with back-off");
                        q.add_rate_limited(key.clone());
                        "panic"
                    }
                };
                metrics.total.with_label_values(&[name, result]).inc();
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

pub use flotilla_api::pod::{pod_condition, pod_ready};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_is_counted_and_retried_and_the_workers_live_on() {
        let q = WorkQueue::with_backoff(Duration::from_millis(10), Duration::from_secs(1));
        let bad_calls = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Mutex::new(Vec::<String>::new()));
        let (calls, seen) = (bad_calls.clone(), done.clone());
        let reconcile = move |key: String| {
            let (calls, seen) = (calls.clone(), seen.clone());
            async move {
                // "bad" and "worse" panic on their first two tries, then reconcile.
                if key != "good" && calls.fetch_add(1, Ordering::SeqCst) < 4 {
                    panic!("bad object {key}");
                }
                seen.lock().unwrap().push(key);
                Ok(None)
            }
        };
        // One worker: if a panic killed it, nothing after the first bad key would run.
        let workers = tokio::spawn(run_workers("test-panics", q.clone(), 1, reconcile));
        for k in ["bad", "worse", "good"] {
            q.add(k);
        }
        for _ in 0..200 {
            if done.lock().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut seen = done.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["bad", "good", "worse"]);
        assert_eq!(reconcile_panics("test-panics"), 4);
        // A retried key's failures are forgotten once it reconciles.
        assert_eq!(q.failures("bad"), 0);
        q.shutdown();
        workers.await.unwrap();
    }
}
