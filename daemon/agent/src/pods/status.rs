//! The pod's status from what the worker sees: phase, conditions, container statuses —
//! Kubernetes' shapes and rules, computed without side effects.

use std::{collections::BTreeMap, net::Ipv4Addr};

use flotilla_isolation::Exit;
use serde_json::{json, Value};

use super::state::{Attempt, Ctr, State};

fn rfc3339_ns(ns: u128) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(|t| jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string())
        .unwrap_or_default()
}

fn terminated(a: &Attempt, e: &Exit) -> Value {
    let reason = if e.oom_killed {
        "OOMKilled"
    } else if e.code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({"exitCode": e.code, "reason": reason, "startedAt": a.started_at,
        "finishedAt": rfc3339_ns(e.finished_at_ns), "containerID": format!("flotilla://{}", a.id)});
    if let Some(s) = e.signal {
        t["signal"] = json!(s);
    }
    json!({"terminated": t})
}

/// One containerStatuses entry.
pub fn container_status(name: &str, image: &str, c: Option<&Ctr>) -> Value {
    let default = Ctr::default();
    let c = c.unwrap_or(&default);
    let waiting = |reason: &str, message: &str| {
        let mut w = json!({"reason": reason});
        if !message.is_empty() {
            w["message"] = json!(message);
        }
        json!({"waiting": w})
    };
    let last = c.last.as_ref().map(|(a, e)| terminated(a, e));
    let (state, last) = match &c.state {
        State::Running(a) => (json!({"running": {"startedAt": a.started_at}}), last),
        State::Exited { run, exit, next: Some(w) } => {
            (waiting(w.reason.as_str(), &w.message), Some(terminated(run, exit)))
        }
        State::Exited { run, exit, next: None } => (terminated(run, exit), last),
        State::Waiting(w) => (waiting(w.reason.as_str(), &w.message), last),
    };
    let running = c.running().is_some();
    // Probes, where the container has them: started after its startup probe, ready after
    // its readiness probe.
    let started = running && c.probe.as_ref().is_none_or(|p| p.started != Some(false));
    let ready = started && c.probe.as_ref().is_none_or(|p| p.ready != Some(false));
    let mut s = json!({
        "name": name,
        "state": state,
        "lastState": last.unwrap_or(json!({})),
        "ready": ready,
        "started": started,
        "restartCount": c.restarts(),
        "image": c.run().map(|a| a.image.as_str()).unwrap_or(image),
        "imageID": c.run().map(|a| a.image_id.as_str()).unwrap_or(""),
    });
    if let Some(a) = c.run() {
        s["containerID"] = json!(format!("flotilla://{}", a.id));
    }
    s
}

/// The phase, by Kubernetes' rules for the containers' states and the restart policy.
pub fn phase(pod: &Value, ctrs: &BTreeMap<String, Ctr>, initialized: bool) -> &'static str {
    let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    let inits = pod["spec"]["initContainers"].as_array().into_iter().flatten();
    let init_failed = inits.filter(|c| c["restartPolicy"].as_str() != Some("Always")).any(|c| {
        ctrs.get(c["name"].as_str().unwrap_or_default())
            .and_then(Ctr::exit)
            .is_some_and(|e| e.code != 0)
    });
    if init_failed && policy == "Never" {
        return "Failed";
    }
    if !initialized {
        return "Pending";
    }
    let apps: Vec<Option<&Ctr>> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| ctrs.get(c["name"].as_str().unwrap_or_default()))
        .collect();
    let exits: Vec<Option<Exit>> = apps.iter().map(|c| c.and_then(Ctr::exit)).collect();
    if apps.iter().any(|c| c.is_none_or(|c| c.run().is_none())) {
        return "Pending";
    }
    if exits.iter().any(Option::is_none) {
        return "Running";
    }
    let all_ok = exits.iter().all(|e| e.is_some_and(|e| e.code == 0));
    match policy {
        "Always" => "Running",
        "OnFailure" if !all_ok => "Running",
        _ if all_ok => "Succeeded",
        _ => "Failed",
    }
}

/// Whether the init containers are done (sidecars started and running). Once an app
/// container has run the pod stays initialized, whatever its sidecars do later (the
/// kubelet's HasAnyRegularContainerStarted).
pub fn initialized(pod: &Value, ctrs: &BTreeMap<String, Ctr>) -> bool {
    if super::plan::any_app_ran(pod, ctrs) {
        return true;
    }
    pod["spec"]["initContainers"].as_array().into_iter().flatten().all(|c| {
        let st = ctrs.get(c["name"].as_str().unwrap_or_default());
        if c["restartPolicy"].as_str() == Some("Always") {
            st.is_some_and(|s| s.running().is_some())
        } else {
            st.and_then(Ctr::exit).is_some_and(|e| e.code == 0)
        }
    })
}

fn condition(prev: &Value, kind: &str, ok: bool, reason: Option<&str>, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let old = prev["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let since = match old {
        Some(o) if o["status"] == status => o["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let (false, Some(r)) = (ok, reason) {
        c["reason"] = json!(r);
    }
    c
}

/// The whole status the worker would post for `pod`.
pub fn compute(
    pod: &Value,
    ctrs: &BTreeMap<String, Ctr>,
    ip: Option<Ipv4Addr>,
    sandbox_error: Option<&str>,
    host_ip: &str,
) -> Value {
    let prev = &pod["status"];
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or_default()
        .to_string();
    let init_done = initialized(pod, ctrs);
    let phase = phase(pod, ctrs, init_done);
    let statuses = |key: &str| -> Vec<Value> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default();
                container_status(name, c["image"].as_str().unwrap_or_default(), ctrs.get(name))
            })
            .collect()
    };
    let apps = statuses("containers");
    let inits = statuses("initContainers");
    let all_ready = !apps.is_empty() && apps.iter().all(|s| s["ready"] == true);
    let unready: Vec<&str> =
        apps.iter().filter(|s| s["ready"] != true).filter_map(|s| s["name"].as_str()).collect();
    let mut conditions = vec![
        condition(
            prev,
            "PodReadyToStartContainers",
            ip.is_some() && sandbox_error.is_none(),
            None,
            &now,
        ),
        condition(prev, "Initialized", init_done, Some("ContainersNotInitialized"), &now),
        condition(prev, "Ready", all_ready, Some("ContainersNotReady"), &now),
        condition(prev, "ContainersReady", all_ready, Some("ContainersNotReady"), &now),
        condition(prev, "PodScheduled", true, None, &now),
    ];
    if !all_ready {
        let msg = format!("containers with unready status: [{}]", unready.join(" "));
        conditions[2]["message"] = json!(msg);
        conditions[3]["message"] = json!(msg);
    }
    if let Some(e) = sandbox_error {
        conditions[0]["message"] = json!(e);
    }
    let mut s = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": prev["startTime"].as_str().unwrap_or(&now),
        "containerStatuses": apps,
        "qosClass": prev["qosClass"].as_str().unwrap_or(flotilla_api::kinds::pod_qos_class(pod)),
    });
    if !inits.is_empty() {
        s["initContainerStatuses"] = json!(inits);
    }
    if let Some(ip) = ip {
        s["podIP"] = json!(ip.to_string());
        s["podIPs"] = json!([{"ip": ip.to_string()}]);
    } else if let Some(old) = prev.get("podIP") {
        // A terminal pod keeps reporting the address it had.
        s["podIP"] = old.clone();
        s["podIPs"] = prev["podIPs"].clone();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Attempt {
        Attempt {
            id: format!("u-c-{n}"),
            attempt: n,
            image: "img".into(),
            image_id: "sha256:x".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn exit(code: i32) -> Exit {
        Exit { code, signal: None, oom_killed: false, finished_at_ns: 1_767_225_601_000_000_000 }
    }

    /// Run `n` of a container, running (None) or exited with a code.
    fn ctr(n: u32, code: Option<i32>) -> Ctr {
        let mut c = Ctr::default();
        c.adopt(attempt(n), code.map(exit));
        c
    }

    #[test]
    fn phases_follow_restart_policy() {
        let pod = |policy: &str| json!({"spec": {"restartPolicy": policy, "containers": [{"name": "a"}, {"name": "b"}]}});
        let mut m = BTreeMap::new();
        assert_eq!(phase(&pod("Always"), &m, true), "Pending");
        m.insert("a".to_string(), ctr(0, None));
        assert_eq!(phase(&pod("Always"), &m, true), "Pending");
        m.insert("b".to_string(), ctr(0, Some(0)));
        assert_eq!(phase(&pod("Never"), &m, true), "Running");
        m.insert("a".to_string(), ctr(0, Some(1)));
        assert_eq!(phase(&pod("Never"), &m, true), "Failed");
        assert_eq!(phase(&pod("OnFailure"), &m, true), "Running");
        assert_eq!(phase(&pod("Always"), &m, true), "Running");
        m.insert("a".to_string(), ctr(0, Some(0)));
        assert_eq!(phase(&pod("OnFailure"), &m, true), "Succeeded");
        assert_eq!(phase(&pod("Never"), &m, false), "Pending");
    }

    #[test]
    fn failed_init_fails_a_never_pod() {
        let pod = json!({"spec": {"restartPolicy": "Never", "initContainers": [{"name": "i"}], "containers": [{"name": "a"}]}});
        let mut m = BTreeMap::new();
        m.insert("i".to_string(), ctr(0, Some(3)));
        assert!(!initialized(&pod, &m));
        assert_eq!(phase(&pod, &m, false), "Failed");
        m.insert("i".to_string(), ctr(0, Some(0)));
        assert!(initialized(&pod, &m));
    }

    #[test]
    fn container_states() {
        let s = container_status("a", "img", None);
        assert_eq!(s["state"]["waiting"]["reason"], "ContainerCreating");
        assert_eq!(s["ready"], false);
        let mut c = ctr(1, Some(1));
        c.adopt(attempt(2), None);
        let s = container_status("a", "img", Some(&c));
        assert_eq!(s["state"]["running"]["startedAt"], "2026-01-01T00:00:00Z");
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(s["restartCount"], 2);
        assert_eq!(s["containerID"], "flotilla://u-c-2");
        let mut c = ctr(3, None);
        c.exited(Exit { oom_killed: true, ..exit(137) });
        let now = std::time::Instant::now();
        c.back_off("a", now + std::time::Duration::from_secs(10), now, Default::default());
        let s = container_status("a", "img", Some(&c));
        assert_eq!(s["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["lastState"]["terminated"]["reason"], "OOMKilled");
        let c = ctr(0, Some(0));
        let s = container_status("a", "img", Some(&c));
        assert_eq!(s["state"]["terminated"]["reason"], "Completed");
        assert_eq!(s["state"]["terminated"]["finishedAt"], "2026-01-01T00:00:01Z");
    }

    #[test]
    fn status_keeps_transition_times_and_reports_addresses() {
        let pod = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {"startTime": "2026-01-01T00:00:00Z", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-12-31T00:00:00Z"}]}});
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), ctr(0, None));
        let s = compute(&pod, &m, Some(Ipv4Addr::new(10, 244, 0, 2)), None, "192.0.2.2");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.0.2");
        assert_eq!(s["hostIP"], "192.0.2.2");
        assert_eq!(s["startTime"], "2026-01-01T00:00:00Z");
        assert_eq!(s["qosClass"], "Guaranteed");
        let sched = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PodScheduled")
            .unwrap();
        assert_eq!(sched["lastTransitionTime"], "2025-12-31T00:00:00Z");
        let ready =
            s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
    }
}
