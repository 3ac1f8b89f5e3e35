//! What a pod's worker does next, decided without I/O: from the pod, what the worker has
//! observed of its containers, and the time, a list of actions for the executor
//! (`worker.rs`). The kubelet's rules live here: init containers in order, sidecars
//! (restartable init containers), restart policies, CrashLoopBackOff with its reset,
//! image pull back-off, probes that kill, and graceful termination.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::probe;
use super::state::{Ctr, Reason, State};

/// A container's run that lasted this long resets its crash back-off (the kubelet's
/// 10 minutes).
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The pod's grace period when it names none.
const DEFAULT_GRACE: u64 = 30;

/// The crash back-off: the first restart is immediate, then `initial` doubling to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Make the pod's network and directory (before any container).
    Sandbox,
    /// Stop the run whose liveness or startup probe failed: TERM, KILL after `grace`.
    Kill { name: String, id: String, grace: Duration, why: String },
    /// Start container `name`'s next run, after setting its crash back-off to `backoff`.
    Start { name: String, backoff: Option<Duration> },
    /// The run ended and the next waits: CrashLoopBackOff until `until`, then `backoff`.
    BackOff { name: String, until: Instant, backoff: Duration },
    /// A failed pull waits for its retry (ImagePullBackOff).
    PullBackOff { name: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The pod is being deleted: preStop hooks, TERM, KILL after `grace`, remove
    /// everything, then delete the object.
    Terminate { grace: Duration },
    /// Succeeded or Failed with nothing running: nothing runs again, the address goes back.
    Finished,
    /// These, in order (a failed Sandbox stops the rest).
    Run(Vec<Action>),
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or_default()
}

fn sidecar(c: &Value) -> bool {
    c["restartPolicy"].as_str() == Some("Always")
}

/// The next step for pod `pod` whose containers are as `ctrs` says.
pub fn plan(
    pod: &Value,
    ctrs: &BTreeMap<String, Ctr>,
    sandbox: bool,
    now: Instant,
    backoff: Backoff,
) -> Plan {
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        let grace = pod["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(DEFAULT_GRACE);
        return Plan::Terminate { grace: Duration::from_secs(grace) };
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") && ctrs.values().all(|c| c.running().is_none()) {
        return Plan::Finished;
    }
    let mut out = Vec::new();
    if !sandbox {
        out.push(Action::Sandbox);
    }
    let default = Ctr::default();
    let get = |n: &str| ctrs.get(n).unwrap_or(&default);

    // Probes first: a killed run's exit then goes through the restart policy.
    let grace = Duration::from_secs(
        pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(DEFAULT_GRACE),
    );
    for (n, c) in ctrs {
        if let (Some(a), Some(why)) = (c.running(), c.probe.as_ref().and_then(|p| p.kill.clone())) {
            out.push(Action::Kill { name: n.clone(), id: a.id.clone(), grace, why });
        }
    }

    let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    let empty = vec![];
    let inits = pod["spec"]["initContainers"].as_array().unwrap_or(&empty);
    let apps = pod["spec"]["containers"].as_array().unwrap_or(&empty);
    let mut initialized = true;
    if any_app_ran(pod, ctrs) {
        // Initialized already: sidecars restart beside the app containers; regular init
        // containers never run again.
        for c in inits.iter().filter(|c| sidecar(c)) {
            out.extend(next_run(name(c), get(name(c)), "Always", now, backoff));
        }
    } else {
        for c in inits {
            let (n, st) = (name(c), get(name(c)));
            // A sidecar must run before the next init container starts; a regular init
            // container must have succeeded.
            let done = match &st.state {
                State::Running(_) => sidecar(c),
                State::Exited { exit, .. } => !sidecar(c) && exit.code == 0,
                State::Waiting(_) => false,
            };
            if done {
                continue;
            }
            initialized = false;
            if !sidecar(c) && policy == "Never" && st.exit().is_some() {
                // A failed init container fails the pod.
                break;
            }
            let init_policy = if sidecar(c) { "Always" } else { "OnFailure" };
            out.extend(next_run(n, st, init_policy, now, backoff));
            break;
        }
    }
    if initialized {
        for c in apps {
            out.extend(next_run(name(c), get(name(c)), policy, now, backoff));
        }
    }
    for (n, c) in ctrs {
        let pull_failed =
            c.waiting().is_some_and(|w| w.reason == Reason::ErrImagePull && !w.due(now));
        if pull_failed {
            out.push(Action::PullBackOff { name: n.clone() });
        }
    }
    Plan::Run(out)
}

/// What container `n` in state `st` does next under restart policy `policy`.
fn next_run(n: &str, st: &Ctr, policy: &str, now: Instant, backoff: Backoff) -> Option<Action> {
    let start = |b| Some(Action::Start { name: n.to_string(), backoff: b });
    match &st.state {
        State::Running(_) => None,
        State::Waiting(w) => w.due(now).then(|| start(None)).flatten(),
        State::Exited { exit, next, run } => {
            let restart = match policy {
                "Always" => true,
                "OnFailure" => exit.code != 0,
                _ => false,
            };
            if !restart {
                return None;
            }
            if let Some(w) = next {
                return w.due(now).then(|| start(None)).flatten();
            }
            let ran = (run.started_at.parse::<jiff::Timestamp>())
                .ok()
                .map(|t| {
                    let end =
                        jiff::Timestamp::from_nanosecond(exit.finished_at_ns as i128).unwrap_or(t);
                    Duration::from_secs(end.duration_since(t).as_secs().max(0) as u64)
                })
                .unwrap_or_default();
            if st.backoff.is_zero() || ran >= BACKOFF_RESET {
                return start(Some(backoff.initial));
            }
            Some(Action::BackOff {
                name: n.to_string(),
                until: now + st.backoff,
                backoff: (st.backoff * 2).min(backoff.max),
            })
        }
    }
}

/// Whether an app container has run: the pod was initialized then, for good.
pub fn any_app_ran(pod: &Value, ctrs: &BTreeMap<String, Ctr>) -> bool {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| ctrs.get(name(c)).is_some_and(|s| s.run().is_some()))
}

/// When to sync next: at the soonest retry, and at least every second (exits, probes and
/// volumes are polled).
pub fn next_sync(ctrs: &BTreeMap<String, Ctr>, now: Instant) -> Duration {
    ctrs.values()
        .filter_map(|c| c.waiting()?.until)
        .min()
        .map(|t| t.saturating_duration_since(now))
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// The running app containers' preStop hooks (exec or httpGet), in spec order.
pub fn pre_stop(pod: &Value, ctrs: &BTreeMap<String, Ctr>) -> Vec<(String, probe::Handler)> {
    let mut out = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        if ctrs.get(name(c)).is_none_or(|s| s.running().is_none()) {
            continue;
        }
        let hook = &c["lifecycle"]["preStop"];
        let handler = if let Some(cmd) = hook["exec"]["command"].as_array() {
            probe::Handler::Exec(cmd.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        } else if hook["httpGet"].is_object() {
            let as_probe =
                serde_json::json!({"ports": c["ports"], "hook": {"httpGet": hook["httpGet"]}});
            match probe::parse(&as_probe, "hook") {
                Some(Ok(spec)) => spec.handler,
                _ => continue,
            }
        } else {
            continue;
        };
        out.push((name(c).to_string(), handler));
    }
    out
}

#[cfg(test)]
mod tests {
    //! The plan reads no clock: these tests drive it, with the executor's state transitions,
    //! on a clock of their own, so minutes of back-off pass in microseconds.

    use super::*;
    use crate::pods::{probe::Results, state::Attempt, status};
    use flotilla_isolation::Exit;
    use serde_json::json;
    use std::time::{SystemTime, UNIX_EPOCH};

    const BACKOFF: Backoff =
        Backoff { initial: Duration::from_secs(10), max: Duration::from_secs(300) };

    /// A pod's worker without I/O: starts succeed unless the container's pulls fail.
    struct Sim {
        pod: Value,
        ctrs: BTreeMap<String, Ctr>,
        t0: Instant,
        now: Instant,
        failing_pulls: Vec<String>,
    }

    impl Sim {
        fn new(pod: Value) -> Sim {
            let now = Instant::now();
            Sim { pod, ctrs: BTreeMap::new(), t0: now, now, failing_pulls: vec![] }
        }

        fn wall(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_800_000_000) + (self.now - self.t0)
        }

        fn plan(&self) -> Plan {
            plan(&self.pod, &self.ctrs, true, self.now, BACKOFF)
        }

        /// One sync: plans, applies what the executor would, returns the actions.
        fn step(&mut self) -> Vec<Action> {
            let Plan::Run(actions) = self.plan() else { panic!("not running: {:?}", self.plan()) };
            for a in &actions {
                match a.clone() {
                    Action::Sandbox | Action::Kill { .. } => {}
                    Action::Start { name, backoff } => {
                        let wall = self.wall();
                        let c = self.ctrs.entry(name.clone()).or_default();
                        if let Some(b) = backoff {
                            c.backoff = b;
                        }
                        if self.failing_pulls.contains(&name) {
                            let m = "pulling image \"x\": refused".to_string();
                            c.start_failed(
                                Reason::ErrImagePull,
                                m,
                                self.now,
                                (BACKOFF.initial, BACKOFF.max),
                            );
                            continue;
                        }
                        let n = c.next_attempt();
                        c.started(Attempt {
                            id: format!("{name}-{n}"),
                            attempt: n,
                            image: "img".into(),
                            image_id: "sha256:x".into(),
                            started_at: flotilla_isolation::state::rfc3339(wall),
                        });
                    }
                    Action::BackOff { name, until, backoff } => {
                        self.ctrs.get_mut(&name).unwrap().back_off(&name, until, self.now, backoff)
                    }
                    Action::PullBackOff { name } => {
                        self.ctrs.get_mut(&name).unwrap().pull_back_off()
                    }
                }
            }
            actions
        }

        /// The names the step started.
        fn starts(&mut self) -> Vec<String> {
            self.step()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Start { name, .. } => Some(name),
                    _ => None,
                })
                .collect()
        }

        fn exit(&mut self, name: &str, code: i32) {
            let ns = self.wall().duration_since(UNIX_EPOCH).unwrap().as_nanos();
            let exit = Exit { code, signal: None, oom_killed: false, finished_at_ns: ns };
            self.ctrs.get_mut(name).unwrap().exited(exit);
        }

        fn advance(&mut self, secs: u64) {
            self.now += Duration::from_secs(secs);
        }

        fn ctr(&self, name: &str) -> &Ctr {
            &self.ctrs[name]
        }

        fn reason(&self, name: &str) -> Option<Reason> {
            self.ctr(name).waiting().map(|w| w.reason)
        }
    }

    fn pod(policy: &str, inits: Value, apps: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"},
               "spec": {"restartPolicy": policy, "initContainers": inits, "containers": apps}})
    }

    #[test]
    fn the_sandbox_comes_first() {
        let p = pod("Always", json!([]), json!([{"name": "a"}]));
        let Plan::Run(actions) = plan(&p, &BTreeMap::new(), false, Instant::now(), BACKOFF) else {
            panic!()
        };
        assert_eq!(actions[0], Action::Sandbox);
        assert_eq!(actions[1], Action::Start { name: "a".into(), backoff: None });
    }

    #[test]
    fn init_containers_run_one_at_a_time_in_order() {
        let mut s = Sim::new(pod(
            "Always",
            json!([{"name": "i1"}, {"name": "i2"}]),
            json!([{"name": "a"}, {"name": "b"}]),
        ));
        assert_eq!(s.starts(), ["i1"]);
        assert_eq!(s.starts(), Vec::<String>::new(), "i1 still runs");
        s.exit("i1", 0);
        assert_eq!(s.starts(), ["i2"]);
        // A failed init container is retried (OnFailure for inits of an Always pod).
        s.exit("i2", 1);
        assert_eq!(s.starts(), ["i2"]);
        assert!(!status::initialized(&s.pod, &s.ctrs));
        s.exit("i2", 0);
        assert!(status::initialized(&s.pod, &s.ctrs));
        assert_eq!(s.starts(), ["a", "b"]);
        assert_eq!(s.ctr("i2").last.as_ref().map(|(_, e)| e.code), Some(1));
        assert_eq!(s.ctr("i2").restarts(), 1);
    }

    #[test]
    fn a_failed_init_container_fails_a_never_pod() {
        let mut s = Sim::new(pod("Never", json!([{"name": "i"}]), json!([{"name": "a"}])));
        assert_eq!(s.starts(), ["i"]);
        s.exit("i", 2);
        assert_eq!(s.starts(), Vec::<String>::new());
        assert_eq!(status::phase(&s.pod, &s.ctrs, status::initialized(&s.pod, &s.ctrs)), "Failed");
    }

    #[test]
    fn sidecars_start_before_the_next_init_container_and_restart_beside_the_apps() {
        let mut s = Sim::new(pod(
            "Never",
            json!([{"name": "side", "restartPolicy": "Always"}, {"name": "i"}]),
            json!([{"name": "a"}]),
        ));
        assert_eq!(s.starts(), ["side"]);
        assert_eq!(s.starts(), ["i"], "the sidecar runs: the next init container starts");
        s.exit("i", 0);
        assert_eq!(s.starts(), ["a"]);
        // The sidecar restarts even in a Never pod, first at once, then after the back-off;
        // the pod stays initialized meanwhile and the app is not held back.
        s.exit("side", 1);
        assert_eq!(s.starts(), ["side"]);
        assert!(status::initialized(&s.pod, &s.ctrs));
        s.exit("side", 1);
        let acts = s.step();
        assert!(matches!(&acts[..], [Action::BackOff { name, .. }] if name == "side"), "{acts:?}");
        assert!(status::initialized(&s.pod, &s.ctrs));
        assert_eq!(s.reason("side"), Some(Reason::CrashLoopBackOff));
        // The regular init container never runs again.
        s.advance(10);
        assert_eq!(s.starts(), ["side"]);
    }

    #[test]
    fn each_restart_policy_restarts_what_it_says() {
        for (policy, code, restarts) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 1, true),
            ("Never", 0, false),
            ("Never", 1, false),
        ] {
            let mut s = Sim::new(pod(policy, json!([]), json!([{"name": "a"}])));
            assert_eq!(s.starts(), ["a"]);
            s.exit("a", code);
            let acts = s.step();
            assert_eq!(!acts.is_empty(), restarts, "{policy} after exit {code}: {acts:?}");
            let phase = status::phase(&s.pod, &s.ctrs, true);
            let expect = match (restarts, code) {
                (true, _) => "Running",
                (false, 0) => "Succeeded",
                (false, _) => "Failed",
            };
            assert_eq!(phase, expect, "{policy} after exit {code}");
        }
    }

    #[test]
    fn crash_loop_back_off_doubles_to_its_cap_and_resets_after_a_long_run() {
        let mut s = Sim::new(pod("Always", json!([]), json!([{"name": "a"}])));
        assert_eq!(s.starts(), ["a"]);
        s.exit("a", 1);
        // The first restart is immediate.
        assert_eq!(
            s.step(),
            [Action::Start { name: "a".into(), backoff: Some(Duration::from_secs(10)) }]
        );
        let mut waits = vec![];
        for _ in 0..7 {
            s.exit("a", 1);
            let acts = s.step();
            let [Action::BackOff { until, .. }] = acts[..] else { panic!("{acts:?}") };
            let wait = until - s.now;
            waits.push(wait.as_secs());
            assert_eq!(s.reason("a"), Some(Reason::CrashLoopBackOff));
            let status = status::container_status("a", "img", s.ctrs.get("a"));
            assert_eq!(status["state"]["waiting"]["reason"], "CrashLoopBackOff");
            assert_eq!(status["lastState"]["terminated"]["exitCode"], 1);
            // Not before its time; the worker wakes when it is due.
            s.advance(wait.as_secs() - 1);
            assert_eq!(s.starts(), Vec::<String>::new());
            assert_eq!(next_sync(&s.ctrs, s.now), Duration::from_secs(1));
            s.advance(1);
            assert_eq!(s.starts(), ["a"]);
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(s.ctr("a").restarts(), 8);
        // A run of ten minutes resets it: the restart is immediate again, then 10 s.
        s.advance(600);
        s.exit("a", 1);
        assert_eq!(
            s.step(),
            [Action::Start { name: "a".into(), backoff: Some(Duration::from_secs(10)) }]
        );
        s.exit("a", 1);
        let acts = s.step();
        let [Action::BackOff { until, .. }] = acts[..] else { panic!("{acts:?}") };
        assert_eq!(until - s.now, Duration::from_secs(10));
    }

    #[test]
    fn a_failed_pull_shows_err_image_pull_then_image_pull_back_off_and_is_retried() {
        let mut s = Sim::new(pod("Always", json!([]), json!([{"name": "a"}])));
        s.failing_pulls.push("a".into());
        assert_eq!(s.starts(), ["a"]);
        assert_eq!(s.reason("a"), Some(Reason::ErrImagePull));
        let status = status::container_status("a", "img", s.ctrs.get("a"));
        assert_eq!(status["state"]["waiting"]["reason"], "ErrImagePull");
        // The next sync, inside the back-off, shows ImagePullBackOff and does not pull.
        s.advance(1);
        assert_eq!(s.step(), [Action::PullBackOff { name: "a".into() }]);
        let w = s.ctr("a").waiting().unwrap();
        assert_eq!(w.reason, Reason::ImagePullBackOff);
        assert!(w.message.starts_with("Back-off pulling image: pulling image"), "{}", w.message);
        s.advance(9);
        assert_eq!(s.starts(), ["a"], "retried after 10 s");
        assert_eq!(s.reason("a"), Some(Reason::ErrImagePull));
        assert_eq!(s.ctr("a").start_backoff, Duration::from_secs(20));
        s.advance(19);
        assert_eq!(s.step(), [Action::PullBackOff { name: "a".into() }]);
        s.advance(1);
        s.failing_pulls.clear();
        assert_eq!(s.starts(), ["a"]);
        let c = s.ctr("a");
        assert!(c.running().is_some() && c.start_backoff.is_zero() && c.backoff.is_zero());
        // A later crash starts its own back-off: the first restart is immediate.
        s.exit("a", 1);
        assert!(matches!(&s.step()[..], [Action::Start { .. }]));
    }

    #[test]
    fn a_config_error_is_retried_after_a_second() {
        let mut c = Ctr::default();
        let now = Instant::now();
        c.start_failed(
            Reason::CreateContainerConfigError,
            "no secret".into(),
            now,
            (BACKOFF.initial, BACKOFF.max),
        );
        assert_eq!(c.waiting().unwrap().until, Some(now + Duration::from_secs(1)));
        assert_eq!(next_sync(&BTreeMap::from([("a".to_string(), c)]), now), Duration::from_secs(1));
    }

    #[test]
    fn failed_liveness_kills_and_readiness_gates_ready() {
        let mut p = pod("Always", json!([]), json!([{"name": "a"}]));
        p["spec"]["terminationGracePeriodSeconds"] = json!(7);
        let mut s = Sim::new(p);
        assert_eq!(s.starts(), ["a"]);
        let ready =
            |s: &Sim| status::container_status("a", "img", s.ctrs.get("a"))["ready"].clone();
        assert_eq!(ready(&s), true, "no probes: ready when running");
        s.ctrs.get_mut("a").unwrap().probe =
            Some(Results { started: Some(true), ready: Some(false), kill: None });
        assert_eq!(ready(&s), false);
        assert_eq!(s.step(), []);
        s.ctrs.get_mut("a").unwrap().probe =
            Some(Results { started: Some(false), ready: None, kill: None });
        let st = status::container_status("a", "img", s.ctrs.get("a"));
        assert_eq!((st["started"].clone(), st["ready"].clone()), (json!(false), json!(false)));
        s.ctrs.get_mut("a").unwrap().probe = Some(Results {
            started: Some(true),
            ready: Some(true),
            kill: Some("Liveness probe failed".into()),
        });
        assert_eq!(ready(&s), true);
        assert_eq!(
            s.step(),
            [Action::Kill {
                name: "a".into(),
                id: "a-0".into(),
                grace: Duration::from_secs(7),
                why: "Liveness probe failed".into()
            }]
        );
        // Its exit then goes through the restart policy.
        s.exit("a", 137);
        assert_eq!(s.starts(), ["a"]);
    }

    #[test]
    fn deletion_terminates_with_the_pods_grace_and_runs_pre_stop_hooks_of_running_containers() {
        let mut s = Sim::new(pod(
            "Always",
            json!([]),
            json!([
                {"name": "a", "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 1"]}}}},
                {"name": "b", "lifecycle": {"preStop": {"httpGet": {"path": "/quit", "port": 8080}}}},
                {"name": "c"},
            ]),
        ));
        assert_eq!(s.starts(), ["a", "b", "c"]);
        s.exit("b", 0);
        s.pod["metadata"]["deletionTimestamp"] = json!("2027-01-01T00:00:00Z");
        assert_eq!(s.plan(), Plan::Terminate { grace: Duration::from_secs(30) });
        s.pod["metadata"]["deletionGracePeriodSeconds"] = json!(5);
        assert_eq!(s.plan(), Plan::Terminate { grace: Duration::from_secs(5) });
        let hooks = pre_stop(&s.pod, &s.ctrs);
        assert_eq!(hooks.len(), 1, "only running containers' hooks: {hooks:?}");
        assert_eq!(hooks[0].0, "a");
        assert!(matches!(&hooks[0].1, probe::Handler::Exec(cmd) if cmd[2] == "sleep 1"));
    }

    #[test]
    fn a_finished_pod_runs_nothing_again() {
        let mut s = Sim::new(pod("Never", json!([]), json!([{"name": "a"}, {"name": "b"}])));
        assert_eq!(s.starts(), ["a", "b"]);
        s.exit("a", 0);
        s.pod["status"]["phase"] = json!("Succeeded");
        assert!(matches!(s.plan(), Plan::Run(_)), "b still runs");
        s.exit("b", 0);
        assert_eq!(s.plan(), Plan::Finished);
    }
}
