//! A pod's container as an OCI runtime spec: the image's defaults under the container's
//! command, env, user and security context, joined to the pod's namespaces, with its
//! volumes and the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname bound in. Pure: the
//! caller resolved env, volumes and the image beforehand.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use flotilla_api::quantity::Quantity;
use flotilla_isolation::spec::{
    DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
};
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};

/// The namespaces and files a pod's containers share.
#[derive(Clone, Debug)]
pub struct SandboxPaths {
    pub netns: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    pub hostname: PathBuf,
}

/// A volume mount, resolved to a directory (or file) on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

pub struct Plan<'a> {
    pub pod: &'a Value,
    pub container: &'a Value,
    pub image: &'a ImageConfiguration,
    pub rootfs: &'a Path,
    /// The container's env, resolved (values, refs, downward API), in order.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<VolumeMount>,
    pub sandbox: &'a SandboxPaths,
    pub cgroup: String,
    pub annotations: BTreeMap<String, String>,
}

/// Why a container cannot be made from its spec (CreateContainerConfigError).
pub type ConfigError = String;

fn str_list(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
}

/// `$(VAR)` references in command and args, as Kubernetes expands them: defined variables
/// are substituted, `$$` escapes, undefined references stay as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(j) => {
                    let name = &inner[..j];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[j + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process's argv: Kubernetes' rules over the image's Entrypoint and Cmd.
pub fn argv(
    container: &Value,
    image: &ImageConfiguration,
    env: &[(String, String)],
) -> Vec<String> {
    let cfg = image.config().as_ref();
    let entrypoint = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let command = str_list(&container["command"]).filter(|c| !c.is_empty());
    let args = str_list(&container["args"]).filter(|a| !a.is_empty());
    let mut argv: Vec<String> = match (command, args) {
        (Some(c), Some(a)) => c.into_iter().chain(a).collect(),
        (Some(c), None) => c,
        (None, Some(a)) => entrypoint.into_iter().chain(a).collect(),
        (None, None) => entrypoint.into_iter().chain(cmd).collect(),
    };
    if container["command"].is_array() || container["args"].is_array() {
        argv = argv.iter().map(|a| expand(a, env)).collect();
    }
    argv
}

/// A user (or group) of the image's `User`: numeric, or a name from the rootfs's
/// /etc/passwd (/etc/group).
fn lookup(rootfs: &Path, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    if let Ok(n) = name.parse() {
        return Some((n, None));
    }
    let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            Some((f[2].parse().ok()?, f.get(3).and_then(|g| g.parse().ok())))
        } else {
            None
        }
    })
}

/// uid and gid: the security context's, else the image's `User` (`user[:group]`).
pub fn user(
    pod: &Value,
    container: &Value,
    image: &ImageConfiguration,
    rootfs: &Path,
) -> Result<(u32, u32), ConfigError> {
    let sc = |k: &str| {
        container["securityContext"][k].as_u64().or(pod["spec"]["securityContext"][k].as_u64())
    };
    let image_user = image.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
    let (img_uid, img_gid) = if image_user.is_empty() {
        (0, 0)
    } else {
        let (u, g) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user.as_str(), None),
        };
        let (uid, passwd_gid) = lookup(rootfs, "etc/passwd", u)
            .ok_or_else(|| format!("image user {u:?} is not in the image's /etc/passwd"))?;
        let gid = match g {
            Some(g) => {
                lookup(rootfs, "etc/group", g)
                    .ok_or_else(|| format!("image group {g:?} is not in the image's /etc/group"))?
                    .0
            }
            None => passwd_gid.unwrap_or(0),
        };
        (uid, gid)
    };
    let uid = sc("runAsUser").map(|u| u as u32).unwrap_or(img_uid);
    let gid = sc("runAsGroup").map(|g| g as u32).unwrap_or(img_gid);
    let non_root = container["securityContext"]["runAsNonRoot"]
        .as_bool()
        .or(pod["spec"]["securityContext"]["runAsNonRoot"].as_bool())
        .unwrap_or(false);
    if non_root && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    Ok((uid, gid))
}

/// The capability set: containerd's default, then drop, then add (or all when privileged).
pub fn capabilities(container: &Value, privileged: bool) -> Vec<String> {
    let norm = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    if privileged {
        return caps::all().into_iter().map(|c| c.to_string()).collect();
    }
    let sc = &container["securityContext"]["capabilities"];
    let drop: Vec<String> =
        str_list(&sc["drop"]).unwrap_or_default().iter().map(|c| norm(c)).collect();
    let mut set: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).filter(|c| !drop.contains(c)).collect()
    };
    for a in str_list(&sc["add"]).unwrap_or_default() {
        let a = norm(&a);
        if a == "CAP_ALL" {
            return caps::all().into_iter().map(|c| c.to_string()).collect();
        }
        if !set.contains(&a) {
            set.push(a);
        }
    }
    set
}

fn quantity(v: &Value) -> Option<Quantity> {
    v.as_str()
        .and_then(|s| Quantity::parse(s).ok())
        .or_else(|| v.as_i64().map(|n| Quantity(n as i128 * 1000)))
}

/// requests and limits → cgroup resources (cpu shares and quota, memory limit, no swap).
pub fn resources(container: &Value) -> Value {
    let r = &container["resources"];
    let cpu_limit = quantity(&r["limits"]["cpu"]).map(|q| q.milli_value());
    let cpu_request = quantity(&r["requests"]["cpu"]).map(|q| q.milli_value()).or(cpu_limit);
    let mem_limit = quantity(&r["limits"]["memory"]).map(|q| q.value());
    let mut cpu = serde_json::Map::new();
    // The kubelet's mapping: 1 cpu = 1024 shares (at least 2), quota per 100 ms period.
    let shares = cpu_request.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2);
    cpu.insert("shares".into(), json!(shares));
    if let Some(m) = cpu_limit {
        cpu.insert("quota".into(), json!((m * 100).max(1000)));
        cpu.insert("period".into(), json!(100_000));
    }
    let mut res = json!({"cpu": cpu});
    if let Some(bytes) = mem_limit {
        res["memory"] = json!({"limit": bytes, "swap": bytes});
    }
    res
}

/// The lowest OOM score this agent's runtime can give a container. Lowering a score needs
/// CAP_SYS_RESOURCE; a host that withholds it even from root (some sandboxes do) leaves the
/// agent's own score as the floor, and scores are raised to it, as containerd's
/// `restrict_oom_score_adj` does, rather than failing every Guaranteed pod.
pub fn oom_score_floor() -> i64 {
    static FLOOR: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *FLOOR.get_or_init(|| {
        let cap = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE);
        if cap.unwrap_or(false) {
            return -1000;
        }
        let own = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        tracing::warn!(
            floor = own,
            "no CAP_SYS_RESOURCE: containers' OOM scores are raised to the agent's own \
             (Guaranteed pods get {own}, not the kubelet's -997)"
        );
        own
    })
}

/// The kubelet's OOM score by QoS class: Guaranteed -997, BestEffort 1000, Burstable by
/// its memory request's share of the node (between 2 and 999); never below
/// [`oom_score_floor`].
pub fn oom_score_adj(pod: &Value, container: &Value) -> i64 {
    kubelet_oom_score_adj(pod, container).max(oom_score_floor())
}

fn kubelet_oom_score_adj(pod: &Value, container: &Value) -> i64 {
    match flotilla_api::kinds::pod_qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = quantity(&container["resources"]["requests"]["memory"])
                .or_else(|| quantity(&container["resources"]["limits"]["memory"]))
                .map(|q| q.value())
                .unwrap_or(0);
            let total =
                nix::sys::sysinfo::sysinfo().map(|s| s.ram_total() as i128).unwrap_or(1).max(1);
            (1000 - 1000 * request / total).clamp(2, 999) as i64
        }
    }
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    options.push(if read_only { "ro" } else { "rw" });
    json!({"destination": destination, "type": "bind", "source": source, "options": options})
}

/// The OCI runtime spec for one attempt of a container.
pub fn oci_spec(p: &Plan) -> Result<Value, ConfigError> {
    let (c, pod) = (p.container, p.pod);
    let name = c["name"].as_str().unwrap_or("");
    let argv = argv(c, p.image, &p.env);
    if argv.is_empty() {
        return Err(format!("container {name}: no command: the image has no Entrypoint or Cmd and the container sets none"));
    }
    let (uid, gid) = user(pod, c, p.image, p.rootfs)?;
    let sc = &c["securityContext"];
    let privileged = sc["privileged"].as_bool().unwrap_or(false);
    let caps = capabilities(c, privileged);
    let no_new_privs = !sc["allowPrivilegeEscalation"].as_bool().unwrap_or(true) && !privileged;

    // Image env first, the container's over it (same name: the container wins).
    let mut env: Vec<(String, String)> = p
        .image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
    }
    env.push(("HOSTNAME".into(), pod["metadata"]["name"].as_str().unwrap_or("").into()));
    for (k, v) in &p.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    let cwd = c["workingDir"]
        .as_str()
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .or_else(|| {
            p.image
                .config()
                .as_ref()
                .and_then(|c| c.working_dir().clone())
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/".into());
    let groups: Vec<u64> = pod["spec"]["securityContext"]["supplementalGroups"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        bind(&p.sandbox.hosts, "/etc/hosts", false),
        bind(&p.sandbox.resolv, "/etc/resolv.conf", false),
        bind(&p.sandbox.hostname, "/etc/hostname", false),
    ];
    for m in &p.mounts {
        mounts.push(bind(&m.source, &m.destination, m.read_only));
    }

    let ns = |t: &str, path: Option<&Path>| match path {
        Some(p) => json!({"type": t, "path": p}),
        None => json!({"type": t}),
    };
    let mut linux = json!({
        "cgroupsPath": p.cgroup,
        "resources": resources(c),
        "namespaces": [
            ns("pid", None),
            ns("mount", None),
            ns("network", Some(&p.sandbox.netns)),
            ns("ipc", Some(&p.sandbox.ipc)),
            ns("uts", Some(&p.sandbox.uts)),
        ],
    });
    if !privileged {
        linux["maskedPaths"] = json!(DEFAULT_MASKED_PATHS);
        linux["readonlyPaths"] = json!(DEFAULT_READONLY_PATHS);
        let seccomp = pod["spec"]["securityContext"]["seccompProfile"]["type"]
            .as_str()
            .or(sc["seccompProfile"]["type"].as_str());
        if seccomp != Some("Unconfined") {
            // RuntimeDefault unless the pod opts out (the kubelet's --seccomp-default).
            linux["seccomp"] = serde_json::to_value(flotilla_isolation::seccomp::default_profile())
                .map_err(|e| format!("seccomp profile: {e}"))?;
        }
    }
    Ok(json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": argv,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": no_new_privs,
            // No rlimits: containers inherit the agent's, as pods inherit containerd's.
            "oomScoreAdj": oom_score_adj(pod, c),
        },
        "root": {"path": p.rootfs, "readonly": sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false)},
        "mounts": mounts,
        "annotations": p.annotations,
        "linux": linux,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(cfg: Value) -> ImageConfiguration {
        serde_json::from_value(json!({"architecture": "amd64", "os": "linux", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": []}}))
        .unwrap()
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let img = image(json!({"Entrypoint": ["/ep"], "Cmd": ["a", "b"]}));
        assert_eq!(argv(&json!({}), &img, &[]), ["/ep", "a", "b"]);
        assert_eq!(argv(&json!({"args": ["x"]}), &img, &[]), ["/ep", "x"]);
        assert_eq!(argv(&json!({"command": ["/c"]}), &img, &[]), ["/c"]);
        assert_eq!(argv(&json!({"command": ["/c"], "args": ["y"]}), &img, &[]), ["/c", "y"]);
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(
            argv(&json!({"command": ["echo", "$(A)", "$$(A)", "$(B)"]}), &img, &env),
            ["echo", "1", "$(A)", "$(B)"]
        );
    }

    #[test]
    fn expand_handles_edges() {
        let env = vec![("X".to_string(), "v".to_string())];
        assert_eq!(expand("a$(X)b", &env), "avb");
        assert_eq!(expand("$(X", &env), "$(X");
        assert_eq!(expand("$", &env), "$");
        assert_eq!(expand("$$", &env), "$");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn user_from_context_image_and_passwd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:101:102::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let pod = json!({"spec": {}});
        let img = |u: &str| image(json!({"User": u}));
        assert_eq!(user(&pod, &json!({}), &img(""), dir.path()).unwrap(), (0, 0));
        assert_eq!(user(&pod, &json!({}), &img("web"), dir.path()).unwrap(), (101, 102));
        assert_eq!(user(&pod, &json!({}), &img("web:staff"), dir.path()).unwrap(), (101, 50));
        assert_eq!(user(&pod, &json!({}), &img("7:8"), dir.path()).unwrap(), (7, 8));
        assert!(user(&pod, &json!({}), &img("nobody"), dir.path()).unwrap_err().contains("nobody"));
        let c = json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 3000}});
        assert_eq!(user(&pod, &c, &img("web"), dir.path()).unwrap(), (1000, 3000));
        let nonroot = json!({"spec": {"securityContext": {"runAsNonRoot": true}}});
        assert!(user(&nonroot, &json!({}), &img(""), dir.path())
            .unwrap_err()
            .contains("runAsNonRoot"));
        assert_eq!(user(&nonroot, &json!({}), &img("web"), dir.path()).unwrap(), (101, 102));
    }

    #[test]
    fn capabilities_add_drop_all() {
        let base = capabilities(&json!({}), false);
        assert_eq!(base.len(), DEFAULT_CAPABILITIES.len());
        let c =
            json!({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}});
        assert_eq!(capabilities(&c, false), ["CAP_NET_ADMIN"]);
        let c = json!({"securityContext": {"capabilities": {"drop": ["KILL"]}}});
        assert!(!capabilities(&c, false).contains(&"CAP_KILL".to_string()));
        assert!(capabilities(&json!({}), true).contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn resources_map_to_cgroup_values() {
        let c = json!({"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}});
        let r = resources(&c);
        assert_eq!(r["cpu"]["shares"], 256);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 64 << 20);
        // A limit alone is also the request.
        let r = resources(&json!({"resources": {"limits": {"cpu": "2"}}}));
        assert_eq!(r["cpu"]["shares"], 2048);
        assert_eq!(resources(&json!({}))["cpu"]["shares"], 2);
    }
}
