//! One pod's worker: the executor of the pod's plan. It observes (exits from the runtime,
//! probe results), asks `plan::plan` what to do, does it, and reports what it sees.
//!
//! ```text
//!  pod (watch channel) ──► sync: observe ─► plan (pure) ─► execute: sandbox, kill, start, …
//!        ▲                  │                               status patched when it changes
//!        └── ≤1 s tick ─────┘
//! ```
//! Everything the worker knows is on disk (the runtime's state with our annotations, the
//! dataplane's IPAM, the pod directory), so a restarted agent adopts its pods as they are.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use flotilla_client::DeleteParams;
use flotilla_dataplane::net::PodNetwork;
use flotilla_isolation::{image::rootfs, Exit, State, Status};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::plan::{self, Action, Backoff, Plan};
use super::state::{Attempt, Ctr, Reason};
use super::{config, probe, sandbox, spec, status, Ctx};

pub const ANN_UID: &str = "io.kubernetes.pod.uid";
pub const ANN_NAME: &str = "io.kubernetes.pod.name";
pub const ANN_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const ANN_CONTAINER: &str = "io.kubernetes.container.name";
pub const ANN_ATTEMPT: &str = "io.flotilla.container.attempt";
pub const ANN_IMAGE: &str = "io.kubernetes.container.image";
pub const ANN_IMAGE_ID: &str = "io.flotilla.image.id";
pub const ANN_STARTED: &str = "io.flotilla.container.started";

/// How a run ended when nothing recorded it (its monitor died with it).
const UNKNOWN_EXIT: Exit = Exit { code: 255, signal: None, oom_killed: false, finished_at_ns: 0 };

pub struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    pub ctrs: BTreeMap<String, Ctr>,
    /// The pod's network as the dataplane made it (None before the sandbox, or released).
    net: Option<PodNetwork>,
    pub sandbox_error: Option<String>,
    /// The last pod seen, for a teardown after it is gone.
    last_pod: Option<Arc<Value>>,
    /// Running probes by container name, with the run they belong to.
    probes: std::collections::HashMap<String, (String, probe::Probes)>,
    /// Notified when a probe result changes.
    wake: Arc<tokio::sync::Notify>,
    /// When configMap and secret volumes were last compared with their sources.
    volumes_synced: Instant,
}

/// What the worker does next.
enum Next {
    /// Sync again on a change, or after this long.
    Wait(Duration),
    Done,
}

fn now_rfc3339() -> String {
    flotilla_isolation::state::rfc3339(SystemTime::now())
}

impl Worker {
    /// A worker for pod `uid`, adopting whatever of it the runtime still has.
    pub fn adopt(ctx: Arc<Ctx>, uid: &str) -> Worker {
        let mut ctrs: BTreeMap<String, Ctr> = BTreeMap::new();
        let mut mine: Vec<(State, Status)> = ctx
            .runtime
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|(st, _)| st.annotations.get(ANN_UID).map(String::as_str) == Some(uid))
            .collect();
        mine.sort_by_key(|(st, _)| {
            st.annotations.get(ANN_ATTEMPT).and_then(|a| a.parse::<u32>().ok())
        });
        for (st, status) in mine {
            let a = &st.annotations;
            let name = a.get(ANN_CONTAINER).cloned().unwrap_or_default();
            // A stopped run whose monitor is still writing its exit is read at the next sync.
            let exit = match (status, State::exit(&ctx.runtime.dir(&st.id))) {
                (Status::Stopped, Some(e)) => Some(e),
                (Status::Stopped, None) if !st.monitor_alive() => Some(UNKNOWN_EXIT),
                _ => None,
            };
            let attempt = Attempt {
                id: st.id.clone(),
                attempt: a.get(ANN_ATTEMPT).and_then(|s| s.parse().ok()).unwrap_or(0),
                image: a.get(ANN_IMAGE).cloned().unwrap_or_default(),
                image_id: a.get(ANN_IMAGE_ID).cloned().unwrap_or_default(),
                started_at: a.get(ANN_STARTED).cloned().unwrap_or_else(|| st.created.clone()),
            };
            ctrs.entry(name).or_default().adopt(attempt, exit);
        }
        let net = ctx.net.pod(uid).ok().flatten();
        Worker {
            ctx,
            uid: uid.to_string(),
            ctrs,
            net,
            sandbox_error: None,
            last_pod: None,
            probes: Default::default(),
            wake: Default::default(),
            volumes_synced: Instant::now(),
        }
    }

    /// Kills and removes everything of the pod on this node, at once.
    pub async fn remove_now(mut self) {
        self.teardown(None).await;
    }

    pub fn has_anything(&self) -> bool {
        !self.ctrs.is_empty() || self.net.is_some() || self.ctx.pod_dir(&self.uid).exists()
    }

    /// Runs until the pod is gone from the API and from the node.
    pub async fn run(
        mut self,
        mut rx: watch::Receiver<Option<Arc<Value>>>,
        done: mpsc::UnboundedSender<String>,
    ) {
        let wake = self.wake.clone();
        loop {
            let pod = rx.borrow_and_update().clone();
            let next = match pod {
                Some(p) => {
                    self.last_pod = Some(p.clone());
                    self.sync(&p).await
                }
                None => {
                    self.teardown(None).await;
                    Next::Done
                }
            };
            match next {
                Next::Done => break,
                Next::Wait(d) => {
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(d) => {}
                    }
                }
            }
        }
        drop(rx);
        let _ = done.send(self.uid.clone());
    }

    /// Observes how running containers ended.
    fn refresh_exits(&mut self) {
        for c in self.ctrs.values_mut() {
            let Some(a) = c.running() else { continue };
            let exit = match self.ctx.runtime.state(&a.id) {
                Ok((st, Status::Stopped)) => match State::exit(&self.ctx.runtime.dir(&a.id)) {
                    Some(e) => Some(e),
                    // The init is gone but its monitor has not written how yet.
                    None if st.monitor_alive() => None,
                    None => Some(UNKNOWN_EXIT),
                },
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(container = %a.id, "container state: {e}");
                    Some(UNKNOWN_EXIT)
                }
            };
            if let Some(e) = exit {
                c.exited(e);
            }
        }
    }

    /// Observes what the running containers' probes found.
    fn refresh_probes(&mut self) {
        for (name, c) in self.ctrs.iter_mut() {
            c.probe = match (c.running(), self.probes.get(name)) {
                (Some(a), Some((id, p))) if a.id == *id => {
                    Some(p.results.lock().expect("probe results").clone())
                }
                _ => None,
            };
        }
    }

    async fn sync(&mut self, pod: &Value) -> Next {
        let name = format!(
            "{}/{}",
            pod["metadata"]["namespace"].as_str().unwrap_or(""),
            pod["metadata"]["name"].as_str().unwrap_or("")
        );
        self.refresh_exits();
        self.refresh_probes();
        let now = Instant::now();
        let backoff = Backoff { initial: self.ctx.backoff.0, max: self.ctx.backoff.1 };
        let sandbox = self.net.is_some() && self.ctx.pod_dir(&self.uid).join("etc/hosts").exists();
        let actions = match plan::plan(pod, &self.ctrs, sandbox, now, backoff) {
            Plan::Terminate { grace } => return self.terminate(pod, &name, grace).await,
            Plan::Finished => {
                if self.net.is_some() {
                    let _ = self.ctx.net.remove_pod(&self.uid).await;
                    self.net = None;
                }
                return Next::Wait(Duration::from_secs(3600));
            }
            Plan::Run(actions) => actions,
        };
        for action in actions {
            match action {
                Action::Sandbox => {
                    if let Err(e) = self.ensure_sandbox(pod).await {
                        tracing::warn!(pod = %name, "sandbox: {e:#}");
                        self.sandbox_error = Some(format!("{e:#}"));
                        self.post(pod).await;
                        return Next::Wait(Duration::from_secs(2));
                    }
                    self.sandbox_error = None;
                }
                Action::Kill { name, id, grace, why } => self.kill(&name, &id, grace, &why),
                Action::Start { name, backoff } => {
                    if let Some(b) = backoff {
                        self.ctrs.entry(name.clone()).or_default().backoff = b;
                    }
                    self.start(pod, &name).await;
                }
                Action::BackOff { name, until, backoff } => {
                    if let Some(c) = self.ctrs.get_mut(&name) {
                        c.back_off(&name, until, now, backoff);
                    }
                }
                Action::PullBackOff { name } => {
                    if let Some(c) = self.ctrs.get_mut(&name) {
                        c.pull_back_off();
                    }
                }
            }
        }
        self.sync_probes(pod);
        if self.volumes_synced.elapsed() >= self.ctx.volume_sync {
            self.volumes_synced = Instant::now();
            let dir = self.ctx.pod_dir(&self.uid).join("volumes");
            let ip = self.net.as_ref().map_or(std::net::Ipv4Addr::UNSPECIFIED, |n| n.ip);
            let down = config::Downward { pod_ip: ip, host_ip: &self.ctx.node_ip };
            let changed = config::refresh_volumes(&self.ctx.client, pod, &dir, down).await;
            if !changed.is_empty() {
                tracing::info!(pod = %name, volumes = ?changed, "volumes updated from their sources");
            }
        }
        self.post(pod).await;
        Next::Wait(plan::next_sync(&self.ctrs, Instant::now()))
    }

    /// Stops everything within `grace`, removes it, then deletes the pod object.
    async fn terminate(&mut self, pod: &Value, name: &str, grace: Duration) -> Next {
        self.teardown(Some(grace)).await;
        let p = DeleteParams {
            grace_period_seconds: Some(0),
            precondition_uid: self.uid.clone(),
            ..Default::default()
        };
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let pname = pod["metadata"]["name"].as_str().unwrap_or("");
        match self.ctx.client.delete("pods", ns, pname, &p).await {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.reason,
                    flotilla_api::Reason::NotFound | flotilla_api::Reason::Conflict
                ) => {}
            Err(e) => {
                tracing::warn!(pod = %name, "deleting: {e}");
                return Next::Wait(Duration::from_secs(1));
            }
        }
        tracing::info!(pod = %name, "pod stopped and removed");
        Next::Done
    }

    /// Stops run `id` of container `name`, whose liveness or startup probe failed: TERM,
    /// then KILL after the pod's grace period; its exit then goes through the restart policy.
    fn kill(&mut self, name: &str, id: &str, grace: Duration, why: &str) {
        self.probes.remove(name);
        tracing::warn!(pod = %self.uid, container = %name, "{why}");
        let rt = self.ctx.runtime.clone();
        let _ = rt.kill(id, nix::sys::signal::Signal::SIGTERM);
        let id = id.to_string();
        tokio::spawn(async move {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(rt.state(&id), Ok((_, Status::Running))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = rt.kill(&id, nix::sys::signal::Signal::SIGKILL);
        });
    }

    /// Probes follow the running containers: started for a new run (or one adopted after a
    /// restart, which is probed anew), stopped with it; their findings go to the status.
    fn sync_probes(&mut self, pod: &Value) {
        let specs: Vec<&Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                pod["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["restartPolicy"] == "Always"),
            )
            .collect();
        for c in specs {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let Some(st) = self.ctrs.get(&name) else { continue };
            let run = st.running().map(|a| a.id.clone());
            match (run, self.probes.get(&name)) {
                (Some(id), Some((pid, _))) if *pid == id => {}
                (Some(id), _) => {
                    self.probes.remove(&name);
                    match probe::start(c, self.probe_target(&id), self.wake.clone()) {
                        Ok(Some(p)) => {
                            self.probes.insert(name.clone(), (id, p));
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(pod = %self.uid, container = %name, "probe: {e}"),
                    }
                }
                (None, _) => {
                    self.probes.remove(&name);
                }
            }
        }
        self.refresh_probes();
    }

    fn container_id(&self, cname: &str, attempt: u32) -> String {
        format!("{}-{cname}-{attempt}", self.uid)
    }

    async fn ensure_sandbox(&mut self, pod: &Value) -> anyhow::Result<()> {
        let dir = self.ctx.pod_dir(&self.uid);
        if self.net.is_some() && dir.join("etc/hosts").exists() {
            return Ok(());
        }
        let t = Instant::now();
        let net = self.ctx.net.add_pod(&self.uid).await?;
        let t_net = t.elapsed();
        let paths = sandbox::paths(&dir, net.netns.clone());
        let (pod, dir2, ctx) = (pod.clone(), dir.clone(), self.ctx.clone());
        tokio::task::spawn_blocking(move || {
            sandbox::create(&dir2, &pod, &paths, net.ip, ctx.dns, &ctx.domain)
        })
        .await??;
        tracing::debug!(pod = %self.uid, ?t_net, total = ?t.elapsed(), "sandbox ready");
        self.net = Some(net);
        Ok(())
    }

    /// Starts the next run of container `cname`; a failure becomes its waiting reason.
    async fn start(&mut self, pod: &Value, cname: &str) {
        let spec = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
            .find(|c| c["name"].as_str() == Some(cname))
            .cloned();
        let Some(c) = spec else { return };
        let st = self.ctrs.entry(cname.to_string()).or_default();
        let attempt = st.next_attempt();
        st.creating();
        let result = self.launch(pod, &c, cname, attempt).await;
        let st = self.ctrs.get_mut(cname).expect("tracked");
        match result {
            Ok(a) => {
                if let Some(old) = st.started(a) {
                    self.ctx.remove_container(&self.uid, &old.id).await;
                }
            }
            Err((reason, message)) => {
                tracing::warn!(pod = %self.uid, container = cname, %reason, "{message}");
                st.start_failed(reason, message, Instant::now(), self.ctx.backoff);
            }
        }
    }

    /// Image, volumes, env, rootfs, bundle, then `flotillad runtime run`.
    async fn launch(
        &mut self,
        pod: &Value,
        c: &Value,
        cname: &str,
        attempt: u32,
    ) -> Result<Attempt, (Reason, String)> {
        let ctx = self.ctx.clone();
        let net = self.net.clone().expect("sandbox first");
        let ip = net.ip;
        let cfg_err = |m: String| (Reason::CreateContainerConfigError, m);
        let image_ref = c["image"].as_str().unwrap_or_default().to_string();
        let pull = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent").to_string();
        let t0 = Instant::now();
        let image = ctx.image(pod, &image_ref, &pull).await?;
        let t_image = t0.elapsed();
        let dir = ctx.pod_dir(&self.uid);
        let down = config::Downward { pod_ip: ip, host_ip: &ctx.node_ip };
        let vols = config::volumes(&ctx.client, pod, &dir.join("volumes"), down)
            .await
            .map_err(|m| (Reason::CreateContainerConfigError, m))?;
        let mounts = config::mounts(c, &vols).map_err(cfg_err)?;
        let env = config::env(&ctx.client, pod, c, ip, &ctx.node_ip).await.map_err(cfg_err)?;

        let id = self.container_id(cname, attempt);
        let bundle = dir.join("containers").join(&id);
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let pname = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let log = log_path(&ctx.logs_dir, &ns, &pname, &self.uid, cname, attempt);
        let started = now_rfc3339();
        let mut annotations = BTreeMap::new();
        for (k, v) in [
            (ANN_UID, self.uid.clone()),
            (ANN_NAME, pname.clone()),
            (ANN_NAMESPACE, ns.clone()),
            (ANN_CONTAINER, cname.to_string()),
            (ANN_ATTEMPT, attempt.to_string()),
            (ANN_IMAGE, image_ref.clone()),
            (ANN_IMAGE_ID, image.manifest.to_string()),
            (ANN_STARTED, started.clone()),
        ] {
            annotations.insert(k.to_string(), v);
        }
        let cgroup = format!("{}/pod{}/{id}", ctx.cgroup_parent, self.uid);
        let (pod2, c2, id2) = (pod.clone(), c.clone(), id.clone());
        let sandbox = sandbox::paths(&dir, net.netns);
        let image_id = image.manifest.to_string();
        let ctx2 = ctx.clone();
        let t_config = t0.elapsed();
        let made = tokio::task::spawn_blocking(move || -> Result<(), (Reason, String)> {
            let t1 = Instant::now();
            let create_err = |m: String| (Reason::CreateContainerError, m);
            let layers = ctx2
                .images
                .unpack(&image, Default::default(), &mut |_| {})
                .map_err(|e| create_err(format!("unpacking {}: {e}", image.reference)))?;
            std::fs::create_dir_all(&bundle)
                .map_err(|e| create_err(format!("{}: {e}", bundle.display())))?;
            let t_unpack = t1.elapsed();
            let merged = rootfs::mount_overlay(&layers, &bundle.join("rootfs"))
                .map_err(|e| create_err(e.to_string()))?;
            let plan = spec::Plan {
                pod: &pod2,
                container: &c2,
                image: &image.config,
                rootfs: &merged,
                env,
                mounts,
                sandbox: &sandbox,
                cgroup,
                annotations,
            };
            let spec =
                spec::oci_spec(&plan).map_err(|m| (Reason::CreateContainerConfigError, m))?;
            std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec).expect("json"))
                .map_err(|e| create_err(format!("writing the bundle: {e}")))?;
            if let Some(parent) = log.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| create_err(format!("{}: {e}", parent.display())))?;
            }
            let t_spec = t1.elapsed();
            let out = ctx2
                .exe
                .command()
                .arg("--root")
                .arg(ctx2.runtime.root())
                .arg("run")
                .arg("--bundle")
                .arg(&bundle)
                .arg("--log-path")
                .arg(&log)
                .arg(&id2)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| {
                    (Reason::RunContainerError, format!("running {}: {e}", ctx2.exe.path.display()))
                })?;
            if !out.status.success() {
                let _ = rootfs::remove(&bundle.join("rootfs"));
                let _ = std::fs::remove_dir_all(&bundle);
                let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err((
                    Reason::RunContainerError,
                    msg.strip_prefix("Error: ").unwrap_or(&msg).to_string(),
                ));
            }
            let run = t1.elapsed() - t_spec;
            tracing::debug!(container = %id2, ?t_unpack, ?t_spec, ?run, "container started");
            Ok(())
        })
        .await
        .map_err(|e| (Reason::RunContainerError, e.to_string()))?;
        made?;
        tracing::debug!(container = %id, ?t_image, ?t_config, total = ?t0.elapsed(), "launched");
        Ok(Attempt { id, attempt, image: image_ref, image_id, started_at: started })
    }

    /// The running containers' preStop hooks, with where they run.
    fn pre_stop_hooks(&self) -> Vec<(String, probe::Handler, probe::Target)> {
        let Some(pod) = &self.last_pod else { return vec![] };
        plan::pre_stop(pod, &self.ctrs)
            .into_iter()
            .filter_map(|(name, handler)| {
                let id = &self.ctrs.get(&name)?.running()?.id;
                Some((name.clone(), handler, self.probe_target(id)))
            })
            .collect()
    }

    /// Stops every container (TERM, up to `grace`, then KILL; `None`: at once), then removes
    /// containers, rootfs, pod cgroup, network and directory.
    async fn teardown(&mut self, grace: Option<Duration>) {
        self.refresh_exits();
        let running: Vec<String> =
            self.ctrs.values().filter_map(|c| c.running().map(|a| a.id.clone())).collect();
        let rt = self.ctx.runtime.clone();
        if let Some(grace) = grace.filter(|g| !g.is_zero()) {
            let deadline = Instant::now() + grace;
            // preStop hooks first, all at once, inside the grace period (as the kubelet).
            let hooks: Vec<_> = self.pre_stop_hooks();
            let runs = hooks.iter().map(|(name, h, t)| async move {
                if let Err(e) = probe::check(h, t, grace).await {
                    tracing::warn!(container = %name, "preStop hook failed: {e}");
                }
            });
            let _ = tokio::time::timeout(grace, futures::future::join_all(runs)).await;
            for id in &running {
                let _ = rt.kill(id, nix::sys::signal::Signal::SIGTERM);
            }
            loop {
                let alive =
                    running.iter().any(|id| matches!(rt.state(id), Ok((_, Status::Running))));
                if !alive || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let ids: Vec<String> = self
            .ctrs
            .values()
            .flat_map(|c| c.run().into_iter().chain(c.last.as_ref().map(|(a, _)| a)))
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            self.ctx.remove_container(&self.uid, &id).await;
        }
        self.ctrs.clear();
        self.probes.clear();
        self.ctx.remove_pod_cgroup(&self.uid);
        if let Err(e) = self.ctx.net.remove_pod(&self.uid).await {
            tracing::warn!(pod = %self.uid, "removing the pod network: {e}");
        }
        self.net = None;
        let dir = self.ctx.pod_dir(&self.uid);
        if let Err(e) = tokio::task::spawn_blocking(move || sandbox::remove(&dir))
            .await
            .unwrap_or_else(|e| Err(e.into()))
        {
            tracing::warn!(pod = %self.uid, "removing the pod directory: {e:#}");
        }
        if let Some(p) = &self.last_pod {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
            let name = p["metadata"]["name"].as_str().unwrap_or("");
            let _ = std::fs::remove_dir_all(
                self.ctx.logs_dir.join(format!("{ns}_{name}_{}", self.uid)),
            );
        }
    }

    /// Writes the pod's status when it differs from what the API has.
    async fn post(&mut self, pod: &Value) {
        let st = status::compute(
            pod,
            &self.ctrs,
            self.pod_ip(),
            self.sandbox_error.as_deref(),
            &self.ctx.node_ip,
        );
        if pod["status"] == st {
            return;
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        self.ctx.status.send(&self.uid, ns, name, st);
    }

    pub fn pod_ip(&self) -> Option<Ipv4Addr> {
        self.net.as_ref().map(|n| n.ip)
    }

    /// Where a probe or hook of run `id` executes: the container, and the pod's network.
    fn probe_target(&self, id: &str) -> probe::Target {
        probe::Target {
            exe: self.ctx.exe.clone(),
            runtime_root: self.ctx.runtime.root().to_path_buf(),
            container: id.to_string(),
            netns: self.net.as_ref().map(|n| n.netns.clone()).unwrap_or_default(),
            ip: self.pod_ip().unwrap_or(Ipv4Addr::LOCALHOST),
        }
    }
}

/// Where a pod's container logs live (the kubelet's /var/log/pods layout).
pub fn log_path(
    root: &std::path::Path,
    ns: &str,
    name: &str,
    uid: &str,
    cname: &str,
    attempt: u32,
) -> PathBuf {
    root.join(format!("{ns}_{name}_{uid}")).join(cname).join(format!("{attempt}.log"))
}
