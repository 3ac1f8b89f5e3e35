//! Events, as client-go's recorder writes them: one Event per (object, type, reason, message),
//! repeated occurrences bump `count` and `lastTimestamp` instead of adding objects. Recording
//! never blocks the caller: a full backlog drops the event (and says so in the log), as
//! client-go's broadcaster does, so a burst cannot slow a scheduler or controller down.

use crate::Client;
use serde_json::{json, Value};
use std::collections::HashMap;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Value>,
}

const BACKLOG: usize = 1000;
const REMEMBERED: usize = 4096;

fn now() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Self {
        let (tx, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(write_events(client, component.to_string(), rx));
        Recorder { tx }
    }

    pub fn normal(&self, obj: &Value, reason: &str, message: impl Into<String>) {
        self.record(obj, "Normal", reason, message.into());
    }

    pub fn warning(&self, obj: &Value, reason: &str, message: impl Into<String>) {
        self.record(obj, "Warning", reason, message.into());
    }

    fn record(&self, obj: &Value, kind: &str, reason: &str, message: String) {
        let m = &obj["metadata"];
        let ev = json!({
            "involvedObject": {
                "apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "namespace": m["namespace"], "name": m["name"], "uid": m["uid"],
                "resourceVersion": m["resourceVersion"],
            },
            "type": kind, "reason": reason, "message": message,
        });
        if self.tx.try_send(ev).is_err() {
            tracing::debug!(reason, "event backlog full; dropping the event");
        }
    }
}

/// (involved object's uid, type, reason, message): occurrences of one event. The value kept
/// is (namespace, Event name, count).
type EventKey = (String, String, String, String);

async fn write_events(client: Client, component: String, mut rx: mpsc::Receiver<Value>) {
    // (uid, type, reason, message) → (namespace, event name, count).
    let mut seen: HashMap<EventKey, (String, String, i64)> = HashMap::new();
    while let Some(mut ev) = rx.recv().await {
        let inv = &ev["involvedObject"];
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let key = (s(&inv["uid"]), s(&ev["type"]), s(&ev["reason"]), s(&ev["message"]));
        let ns = match inv["namespace"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => "default".to_string(),
        };
        let ts = now();
        if let Some((ns, name, count)) = seen.get_mut(&key) {
            let patch = json!({"count": *count + 1, "lastTimestamp": ts});
            if client.patch("events", ns, name, &patch, false, false).await.is_ok() {
                *count += 1;
                continue;
            }
        }
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        let obj_name = inv["name"].as_str().unwrap_or("object");
        let name = format!("{obj_name}.{:016x}", jiff::Timestamp::now().as_nanosecond() as u64);
        ev["apiVersion"] = json!("v1");
        ev["kind"] = json!("Event");
        ev["metadata"] = json!({"name": name, "namespace": ns});
        ev["source"] = json!({"component": component});
        ev["reportingComponent"] = json!(component);
        ev["firstTimestamp"] = json!(ts);
        ev["lastTimestamp"] = json!(ts);
        ev["count"] = json!(1);
        match client.create("events", &ns, &ev).await {
            Ok(_) => {
                seen.insert(key, (ns, name, 1));
            }
            Err(e) => tracing::debug!(error = %e, "recording an event failed"),
        }
    }
}
