//! Reading a pod's status the way every consumer must agree on (controllers, evictions,
//! the node agent).

use serde_json::Value;

pub fn pod_condition<'a>(p: &'a Value, kind: &str) -> Option<&'a Value> {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"].as_str() == Some(kind))
}

/// The pod's Ready condition is True.
pub fn pod_ready(p: &Value) -> bool {
    pod_condition(p, "Ready").is_some_and(|c| c["status"] == "True")
}
