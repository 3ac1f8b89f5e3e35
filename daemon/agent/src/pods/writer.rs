//! The agent's status manager: pod workers hand over their pods' statuses and go on; one
//! task writes them through the status subresource with bounded concurrency, keeping only
//! the newest status of a pod that changes again before its write goes out, and skipping
//! a status identical to the last one written. A burst of pods starting at once so costs
//! the store at most one write in flight per pod, and only the states that still matter.

use std::collections::{HashMap, HashSet, VecDeque};

use flotilla_api::error::Reason;
use flotilla_client::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Writes in flight at once.
const CONCURRENCY: usize = 16;

enum Msg {
    Update { uid: String, ns: String, name: String, status: Value },
    Forget(String),
}

#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::UnboundedSender<Msg>,
}

struct Pending {
    ns: String,
    name: String,
    status: Value,
}

impl StatusWriter {
    pub fn start(client: Client) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx));
        Self { tx }
    }

    /// Queues `status` as pod `uid`'s newest.
    pub fn send(&self, uid: &str, ns: &str, name: &str, status: Value) {
        let _ =
            self.tx.send(Msg::Update { uid: uid.into(), ns: ns.into(), name: name.into(), status });
    }

    /// The pod is gone from this node: drop what is kept of it.
    pub fn forget(&self, uid: &str) {
        let _ = self.tx.send(Msg::Forget(uid.into()));
    }
}

async fn write(client: Client, uid: String, p: Pending) -> (String, Value, bool) {
    // The uid test keeps a status from landing on a new pod of the same name; a JSON patch
    // replaces the status whole (a merge would keep a container's old `running` beside its
    // new `terminated`).
    let patch = json!([
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "add", "path": "/status", "value": p.status},
    ]);
    match client.patch("pods", &p.ns, &p.name, &patch, true, true).await {
        Ok(_) => (uid, p.status, true),
        Err(e) => {
            if !matches!(e.reason, Reason::NotFound | Reason::Invalid | Reason::Conflict) {
                tracing::warn!(pod = %format!("{}/{}", p.ns, p.name), "status: {e}");
            }
            (uid, p.status, false)
        }
    }
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut written: HashMap<String, Value> = HashMap::new();
    // Forgotten while a write was in flight: nothing is kept when it lands.
    let mut forgotten: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, Value, bool)> = JoinSet::new();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                None => break,
                Some(Msg::Update { uid, ns, name, status }) => {
                    if !in_flight.contains(&uid) && written.get(&uid) == Some(&status) {
                        pending.remove(&uid);
                        continue;
                    }
                    if pending.insert(uid.clone(), Pending { ns, name, status }).is_none() {
                        queue.push_back(uid);
                    }
                }
                Some(Msg::Forget(uid)) => {
                    written.remove(&uid);
                    pending.remove(&uid);
                    if in_flight.contains(&uid) {
                        forgotten.insert(uid);
                    }
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((uid, status, ok)) = done {
                    in_flight.remove(&uid);
                    if forgotten.remove(&uid) || !ok {
                        written.remove(&uid);
                    } else {
                        written.insert(uid.clone(), status);
                    }
                    // A newer status may be waiting for this one to finish.
                    if pending.contains_key(&uid) && !queue.contains(&uid) {
                        queue.push_back(uid);
                    }
                }
            }
        }
        let mut deferred = Vec::new();
        while in_flight.len() < CONCURRENCY {
            let Some(uid) = queue.pop_front() else { break };
            if in_flight.contains(&uid) {
                deferred.push(uid);
                continue;
            }
            let Some(p) = pending.remove(&uid) else { continue };
            if written.get(&uid) == Some(&p.status) {
                continue;
            }
            in_flight.insert(uid.clone());
            tasks.spawn(write(client.clone(), uid, p));
        }
        queue.extend(deferred);
    }
}
