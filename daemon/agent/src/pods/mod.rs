//! The pods bound to this node: one worker per pod (by uid), fed by an informer on
//! `spec.nodeName=<node>`; pods found on the node but not in the API are torn down.
//!
//! ```text
//!  informer(pods, spec.nodeName) ──► manager ──watch──► worker(uid) ──► sandbox, images,
//!                                      │                               containers, status
//!  runtime state, IPAM, pods dir ─────►┘ (adoption after a restart)
//! ```

pub mod config;
pub mod plan;
pub mod probe;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod status;
pub mod worker;
pub mod writer;

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use base64::Engine as _;
use flotilla_client::{Change, Client, Informer, WatchParams};
use flotilla_dataplane::net::NodeNetwork;
use flotilla_isolation::cgroups::remove_empty as remove_cgroup_dir;
use flotilla_isolation::{
    image::{
        pull::{Auth, PullOptions},
        rootfs,
        store::{normalize, Image, ImageStore},
    },
    Runtime,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// What every pod worker shares.
pub struct Ctx {
    pub client: Client,
    pub node: String,
    pub node_ip: String,
    pub net: NodeNetwork,
    pub images: ImageStore,
    pub runtime: Runtime,
    /// The OCI runtime containers are made with (create forks: it needs its own process).
    pub exe: RuntimeExe,
    pub pods_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// Pods' cgroups go under `<cgroup_parent>/pod<uid>/`.
    pub cgroup_parent: String,
    pub dns: Ipv4Addr,
    pub domain: String,
    pub insecure_registries: Vec<String>,
    /// Restart and pull back-off: initial, maximum.
    pub backoff: (Duration, Duration),
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Writes pods' statuses (coalesced, bounded).
    pub status: writer::StatusWriter,
    /// How often configMap and secret volumes are compared with their sources.
    pub volume_sync: Duration,
    /// Pod uid → (namespace, name) for the pods this agent runs (metrics name them).
    pub pod_names: std::sync::RwLock<HashMap<String, (String, String)>>,
}

type Failure = (state::Reason, String);

/// How the agent runs the OCI runtime: `flotilla-runtime` beside this binary (the same code
/// in a small binary, so each create, exec and probe starts faster), else `flotillad runtime`.
#[derive(Clone, Debug)]
pub struct RuntimeExe {
    pub path: PathBuf,
    /// Whether `runtime` must be passed first (the path is flotillad itself).
    subcommand: bool,
}

impl RuntimeExe {
    pub fn find() -> Result<RuntimeExe> {
        let me = std::env::current_exe()?;
        let lean = me.with_file_name("flotilla-runtime");
        Ok(if lean.is_file() {
            RuntimeExe { path: lean, subcommand: false }
        } else {
            RuntimeExe { path: me, subcommand: true }
        })
    }

    /// The runtime's command, ready for `--root` and a subcommand.
    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.path);
        if self.subcommand {
            c.arg("runtime");
        }
        c
    }
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        node: String,
        node_ip: String,
        net: NodeNetwork,
        images: ImageStore,
        data_dir: &std::path::Path,
        cgroup_parent: String,
        dns: Ipv4Addr,
        insecure_registries: Vec<String>,
        backoff: (Duration, Duration),
    ) -> Result<Ctx> {
        Ok(Ctx {
            status: writer::StatusWriter::start(client.clone()),
            client,
            node,
            node_ip,
            net,
            images,
            runtime: Runtime::new(data_dir.join("runtime")),
            exe: RuntimeExe::find()?,
            pods_dir: data_dir.join("pods"),
            logs_dir: data_dir.join("logs"),
            cgroup_parent,
            dns,
            domain: "cluster.local".into(),
            insecure_registries,
            backoff,
            pulls: Mutex::new(HashMap::new()),
            pod_names: Default::default(),
            volume_sync: Duration::from_secs(60),
        })
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// Registry credentials for `reference` from the pod's imagePullSecrets
    /// (kubernetes.io/dockerconfigjson or dockercfg).
    async fn pull_auth(&self, pod: &Value, reference: &str) -> Auth {
        let norm = normalize(reference);
        let host = norm.split('/').next().unwrap_or_default().to_string();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        for s in pod["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
            let Some(name) = s["name"].as_str() else { continue };
            let Ok(secret) = self.client.get("secrets", ns, name).await else { continue };
            let b64 = |k: &str| {
                secret["data"][k]
                    .as_str()
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            };
            let auths = match b64(".dockerconfigjson") {
                Some(v) => v["auths"].clone(),
                None => b64(".dockercfg").unwrap_or_default(),
            };
            for (server, a) in auths.as_object().into_iter().flatten() {
                let server_host = server
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
                let matches = server_host == host
                    || (host == "docker.io" && server_host.ends_with("docker.io"));
                if !matches {
                    continue;
                }
                let (mut user, mut pass) = (
                    a["username"].as_str().unwrap_or_default().to_string(),
                    a["password"].as_str().unwrap_or_default().to_string(),
                );
                if let Some(decoded) = a["auth"]
                    .as_str()
                    .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                {
                    if let Some((u, p)) = String::from_utf8_lossy(&decoded).split_once(':') {
                        (user, pass) = (u.to_string(), p.to_string());
                    }
                }
                if !user.is_empty() {
                    return Auth::Basic { username: user, password: pass };
                }
                if let Some(t) = a["registrytoken"].as_str().or(a["identitytoken"].as_str()) {
                    return Auth::Bearer(t.to_string());
                }
            }
        }
        Auth::Anonymous
    }

    /// The image for a container, per its imagePullPolicy; failures are the kubelet's
    /// waiting reasons (ErrImageNeverPull, ErrImagePull).
    pub async fn image(
        &self,
        pod: &Value,
        reference: &str,
        policy: &str,
    ) -> Result<Image, Failure> {
        let local = self.images.resolve(reference);
        match (policy, local) {
            ("Never", Ok(img)) | ("IfNotPresent", Ok(img)) => return Ok(img),
            ("Never", Err(_)) => {
                return Err((
                    state::Reason::ErrImageNeverPull,
                    format!(
                        "Container image \"{reference}\" is not present with pull policy of Never"
                    ),
                ))
            }
            _ => {}
        }
        let lock =
            self.pulls.lock().expect("pulls").entry(normalize(reference)).or_default().clone();
        let _held = lock.lock().await;
        if policy == "IfNotPresent" {
            if let Ok(img) = self.images.resolve(reference) {
                return Ok(img);
            }
        }
        let opts = PullOptions {
            auth: self.pull_auth(pod, reference).await,
            insecure_registries: self.insecure_registries.clone(),
        };
        let started = std::time::Instant::now();
        match self.images.pull(reference, &opts, &mut |_| {}).await {
            Ok(img) => {
                tracing::info!(image = reference, elapsed = ?started.elapsed(), "pulled");
                Ok(img)
            }
            Err(e) => {
                Err((state::Reason::ErrImagePull, format!("pulling image \"{reference}\": {e}")))
            }
        }
    }

    /// Deletes a container (killing it if it runs) with its rootfs and bundle.
    pub async fn remove_container(&self, uid: &str, id: &str) {
        let rt = self.runtime.clone();
        let bundle = self.pod_dir(uid).join("containers").join(id);
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            match rt.delete(&id, true) {
                Ok(()) | Err(flotilla_isolation::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(container = %id, "deleting: {e}"),
            }
            if let Err(e) = rootfs::remove(&bundle.join("rootfs")) {
                tracing::warn!(container = %id, "removing the rootfs: {e}");
            }
            let _ = std::fs::remove_dir_all(&bundle);
        })
        .await;
    }

    /// Removes the pod-level cgroup directory in every hierarchy (its containers' are gone).
    pub fn remove_pod_cgroup(&self, uid: &str) {
        remove_cgroup_dir(&format!("{}/pod{uid}", self.cgroup_parent));
    }
}

/// Removes the node's cgroup parent and, when no other node uses it, the parent's parent
/// (`flotilla` of `flotilla/<node>`), in every hierarchy.
pub fn remove_cgroup_parent(rel: &str) {
    remove_cgroup_dir(rel);
    if let Some(up) = std::path::Path::new(rel).parent().filter(|p| !p.as_os_str().is_empty()) {
        remove_cgroup_dir(&up.to_string_lossy());
    }
}

/// Pod uids the node holds something of: containers, addresses, directories.
fn local_uids(ctx: &Ctx) -> BTreeSet<String> {
    let mut uids = BTreeSet::new();
    for (st, _) in ctx.runtime.list().unwrap_or_default() {
        if let Some(u) = st.annotations.get(worker::ANN_UID) {
            uids.insert(u.clone());
        }
    }
    for (_, u) in ctx.net.pods().unwrap_or_default() {
        uids.insert(u);
    }
    for e in std::fs::read_dir(&ctx.pods_dir).into_iter().flatten().flatten() {
        uids.insert(e.file_name().to_string_lossy().into_owned());
    }
    uids
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or_default().to_string()
}

struct Manager {
    ctx: Arc<Ctx>,
    workers: HashMap<String, watch::Sender<Option<Arc<Value>>>>,
    done: mpsc::UnboundedSender<String>,
}

impl Manager {
    fn dispatch(&mut self, uid: String, pod: Option<Arc<Value>>) {
        if let Some(p) = &pod {
            let name = |k: &str| p["metadata"][k].as_str().unwrap_or_default().to_string();
            let mut names = self.ctx.pod_names.write().expect("pod names lock");
            if !names.contains_key(&uid) {
                names.insert(uid.clone(), (name("namespace"), name("name")));
            }
        }
        if let Some(tx) = self.workers.get(&uid) {
            if tx.send(pod.clone()).is_ok() {
                return;
            }
        }
        let w = worker::Worker::adopt(self.ctx.clone(), &uid);
        if pod.is_none() && !w.has_anything() {
            return;
        }
        let names = self.ctx.pod_names.read().expect("pod names lock");
        let (ns, name) = names.get(&uid).cloned().unwrap_or_default();
        drop(names);
        // The worker's whole life is one span: every line it logs names the pod.
        let span = tracing::info_span!("pod", pod = %format_args!("{ns}/{name}"), %uid);
        let (tx, rx) = watch::channel(pod);
        self.workers.insert(uid, tx);
        tokio::spawn(tracing::Instrument::instrument(w.run(rx, self.done.clone()), span));
    }

    /// Every pod in the informer to its worker; every local pod not in it torn down.
    fn resync(&mut self, inf: &Informer) {
        let pods = inf.list();
        let known: BTreeSet<String> = pods.iter().map(|p| uid_of(p)).collect();
        for p in pods {
            self.dispatch(uid_of(&p), Some(p));
        }
        let mut gone: BTreeSet<String> =
            local_uids(&self.ctx).difference(&known).cloned().collect();
        gone.extend(self.workers.keys().filter(|u| !known.contains(*u)).cloned());
        for uid in gone {
            self.dispatch(uid, None);
        }
    }
}

/// Removes every pod from the node at once (containers, rootfs, sandboxes, cgroups):
/// `flotillad agent --reset`, for taking a node out of service and for tests' cleanup.
pub async fn reset(ctx: Arc<Ctx>) {
    for uid in local_uids(&ctx) {
        worker::Worker::adopt(ctx.clone(), &uid).remove_now().await;
    }
    remove_cgroup_dir(&ctx.cgroup_parent);
}

/// Runs the node's pods for as long as the agent runs.
pub async fn run(ctx: Arc<Ctx>) -> Result<()> {
    let params =
        WatchParams { field_selector: format!("spec.nodeName={}", ctx.node), ..Default::default() };
    let inf = Informer::start(ctx.client.clone(), "pods", "", params);
    let mut changes = inf.subscribe();
    while inf.wait_synced(Duration::from_secs(30)).await.is_err() {
        tracing::warn!(node = %ctx.node, "waiting for the pod list");
    }
    let (done, mut finished) = mpsc::unbounded_channel();
    let mut m = Manager { ctx: ctx.clone(), workers: HashMap::new(), done };
    m.resync(&inf);
    tracing::info!(node = %ctx.node, pods = m.workers.len(), "pods adopted");
    loop {
        tokio::select! {
            ch = changes.recv() => match ch {
                Ok(Change::Added(p)) | Ok(Change::Modified { new: p, .. }) => m.dispatch(uid_of(&p), Some(p)),
                Ok(Change::Deleted(p)) => m.dispatch(uid_of(&p), None),
                Ok(Change::Resynced) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => m.resync(&inf),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => anyhow::bail!("pod informer stopped"),
            },
            Some(uid) = finished.recv() => {
                // A worker that finished takes its channel with it; a later event starts anew.
                if m.workers.get(&uid).is_some_and(|tx| tx.is_closed()) {
                    m.workers.remove(&uid);
                    ctx.pod_names.write().expect("pod names lock").remove(&uid);
                    ctx.status.forget(&uid);
                }
            }
        }
    }
}
