//! What a container needs from the API besides its pod: env from values, ConfigMap and
//! Secret keys and the downward API, and volume contents. A missing reference is a
//! [`ConfigError`] that names it (the pod waits with CreateContainerConfigError).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use flotilla_api::Reason;
use flotilla_client::Client;
use serde_json::{json, Value};

use super::spec::{ConfigError, VolumeMount};

/// The key → value data of a ConfigMap or Secret (Secret values decoded).
async fn data(
    client: &Client,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
    let obj = match client.get(kind, ns, name).await {
        Ok(o) => o,
        Err(e) if e.reason == Reason::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {kind} {ns}/{name}: {e}")),
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let s = v.as_str().unwrap_or_default();
        let bytes = if kind == "secrets" {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("secret {ns}/{name} key {k}: {e}"))?
        } else {
            s.as_bytes().to_vec()
        };
        out.insert(k.clone(), bytes);
    }
    if kind == "secrets" {
        for (k, v) in obj["stringData"].as_object().into_iter().flatten() {
            out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
        }
    } else {
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            if let Ok(b) =
                base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default())
            {
                out.insert(k.clone(), b);
            }
        }
    }
    Ok(Some(out))
}

fn singular(kind: &str) -> &'static str {
    if kind == "secrets" {
        "secret"
    } else {
        "configmap"
    }
}

/// A downward API field of the pod (fieldRef.fieldPath).
pub fn field(
    pod: &Value,
    path: &str,
    pod_ip: Ipv4Addr,
    host_ip: &str,
) -> Result<String, ConfigError> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if let Some(rest) = path.strip_prefix("metadata.labels['").and_then(|r| r.strip_suffix("']")) {
        return Ok(s(&pod["metadata"]["labels"][rest]));
    }
    if let Some(rest) =
        path.strip_prefix("metadata.annotations['").and_then(|r| r.strip_suffix("']"))
    {
        return Ok(s(&pod["metadata"]["annotations"][rest]));
    }
    Ok(match path {
        "metadata.name" => s(&pod["metadata"]["name"]),
        "metadata.namespace" => s(&pod["metadata"]["namespace"]),
        "metadata.uid" => s(&pod["metadata"]["uid"]),
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        other => return Err(format!("unsupported fieldRef.fieldPath {other:?}")),
    })
}

/// A resourceFieldRef (limits.cpu, requests.memory, …) as the kubelet renders it, with
/// the node's allocatable where the container sets no limit.
fn resource(
    container: &Value,
    r: &Value,
    node_cpus: u64,
    node_memory: u64,
) -> Result<String, ConfigError> {
    use flotilla_api::quantity::Quantity;
    let what = r["resource"].as_str().unwrap_or_default();
    let (section, name) =
        what.split_once('.').ok_or_else(|| format!("resourceFieldRef.resource {what:?}"))?;
    let q = container["resources"][section][name].as_str().and_then(|s| Quantity::parse(s).ok());
    let divisor = r["divisor"].as_str().and_then(|s| Quantity::parse(s).ok());
    Ok(match name {
        "cpu" => {
            let milli = q.map(|q| q.milli_value()).unwrap_or(node_cpus as i128 * 1000);
            let div = divisor.map(|d| d.milli_value()).filter(|d| *d > 0).unwrap_or(1000);
            ((milli + div - 1) / div).to_string()
        }
        "memory" | "ephemeral-storage" => {
            let bytes = q.map(|q| q.value()).unwrap_or(node_memory as i128);
            let div = divisor.map(|d| d.value()).filter(|d| *d > 0).unwrap_or(1);
            ((bytes + div - 1) / div).to_string()
        }
        other => return Err(format!("unsupported resourceFieldRef resource {other:?}")),
    })
}

/// The container's env, in order: envFrom sources, then env entries (later wins).
pub async fn env(
    client: &Client,
    pod: &Value,
    container: &Value,
    pod_ip: Ipv4Addr,
    host_ip: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |k: String, v: String, out: &mut Vec<(String, String)>| {
        out.retain(|(ek, _)| *ek != k);
        out.push((k, v));
    };
    for src in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = src["prefix"].as_str().unwrap_or_default();
        let (kind, r) = if src["configMapRef"].is_object() {
            ("configmaps", &src["configMapRef"])
        } else {
            ("secrets", &src["secretRef"])
        };
        let name = r["name"].as_str().unwrap_or_default();
        match data(client, kind, ns, name).await? {
            Some(d) => {
                for (k, v) in d {
                    set(format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned(), &mut out);
                }
            }
            None if r["optional"].as_bool() == Some(true) => {}
            None => return Err(format!("{} \"{name}\" not found", singular(kind))),
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            // $(VAR) in values refers to earlier entries.
            super::spec::expand(v, &out)
        } else if from["fieldRef"].is_object() {
            field(pod, from["fieldRef"]["fieldPath"].as_str().unwrap_or_default(), pod_ip, host_ip)?
        } else if from["resourceFieldRef"].is_object() {
            // The node's size, for refs to limits the container does not set.
            let (cpus, mem) = node_size();
            resource(container, &from["resourceFieldRef"], cpus, mem)?
        } else if from["configMapKeyRef"].is_object() || from["secretKeyRef"].is_object() {
            let (kind, r) = if from["configMapKeyRef"].is_object() {
                ("configmaps", &from["configMapKeyRef"])
            } else {
                ("secrets", &from["secretKeyRef"])
            };
            let (obj, key) =
                (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
            let optional = r["optional"].as_bool() == Some(true);
            match data(client, kind, ns, obj).await? {
                Some(d) => match d.get(key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {key} in {} {ns}/{obj}",
                            singular(kind)
                        ))
                    }
                },
                None if optional => continue,
                None => return Err(format!("{} \"{obj}\" not found", singular(kind))),
            }
        } else {
            String::new()
        };
        set(name, value, &mut out);
    }
    Ok(out)
}

/// Writes `files` (relative path → bytes, mode) into `dir` atomically: a new timestamped
/// directory, then `..data` swapped to it, with top-level links into `..data` — the
/// kubelet's atomic writer, so a reader never sees half an update.
fn write_atomic_dir(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    mode: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let stamp = format!("..{}", jiff::Timestamp::now().as_nanosecond());
    let new = dir.join(&stamp);
    std::fs::create_dir_all(&new)?;
    for (path, bytes) in files {
        let p = new.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data"))?;
    for top in
        files.keys().filter_map(|p| p.split('/').next()).collect::<std::collections::BTreeSet<_>>()
    {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    // Entries no longer present go.
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..")
            && !files.keys().any(|k| k.split('/').next() == Some(name.as_str()))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// The files a configMap/secret volume holds: every key, or the listed `items`.
fn project(
    d: &BTreeMap<String, Vec<u8>>,
    items: &Value,
    what: &str,
) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    let mut out = BTreeMap::new();
    match items.as_array() {
        Some(items) if !items.is_empty() => {
            for it in items {
                let key = it["key"].as_str().unwrap_or_default();
                let path = it["path"].as_str().unwrap_or(key);
                if path.split('/').any(|c| c == "..") || path.starts_with('/') {
                    return Err(format!("{what}: item path {path:?} escapes the volume"));
                }
                let v = d.get(key).ok_or_else(|| format!("{what}: no key {key}"))?;
                out.insert(path.to_string(), v.clone());
            }
        }
        _ => out.extend(d.iter().map(|(k, v)| (k.clone(), v.clone()))),
    }
    Ok(out)
}

fn tmpfs(dir: &Path) -> Result<(), ConfigError> {
    use nix::mount::{mount, MsFlags};
    let st = nix::sys::statfs::statfs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))
}

/// Whether `dir`'s current `..data` already holds exactly `files` with `mode`.
fn unchanged(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let data = dir.join("..data");
    let count = |d: &Path| -> usize {
        fn walk(d: &Path) -> usize {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
                .sum()
        }
        walk(d)
    };
    files.iter().all(|(p, bytes)| {
        let f = data.join(p);
        std::fs::read(&f).is_ok_and(|b| &b == bytes)
            && std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode)
    }) && count(&data) == files.len()
}

/// What the downward API needs besides the pod object: the addresses it was given.
#[derive(Clone, Copy)]
pub struct Downward<'a> {
    pub pod_ip: Ipv4Addr,
    pub host_ip: &'a str,
}

/// The contents of a volume the agent writes (configMap, secret, downwardAPI, projected).
struct Contents {
    files: BTreeMap<String, Vec<u8>>,
    mode: u32,
    /// Secrets and tokens stay in memory.
    tmpfs: bool,
}

/// The files of a volume made from API data, or `None` for other volume types. `dir` is
/// the volume's directory: a token written there is reused while it is fresh.
async fn contents(
    client: &Client,
    pod: &Value,
    v: &Value,
    dir: &Path,
    down: Downward<'_>,
) -> Result<Option<Contents>, ConfigError> {
    let name = v["name"].as_str().unwrap_or_default();
    let (sources, mode, tmpfs) = if v["projected"].is_object() {
        let list = v["projected"]["sources"].as_array().cloned().unwrap_or_default();
        (list, &v["projected"]["defaultMode"], true)
    } else if v["configMap"].is_object() {
        (vec![json!({"configMap": v["configMap"]})], &v["configMap"]["defaultMode"], false)
    } else if v["secret"].is_object() {
        let mut src = v["secret"].clone();
        src["name"] = src["secretName"].clone();
        (vec![json!({ "secret": src })], &v["secret"]["defaultMode"], true)
    } else if v["downwardAPI"].is_object() {
        (vec![json!({"downwardAPI": v["downwardAPI"]})], &v["downwardAPI"]["defaultMode"], false)
    } else {
        return Ok(None);
    };
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut files = BTreeMap::new();
    for src in &sources {
        if src["configMap"].is_object() || src["secret"].is_object() {
            let (kind, src) = if src["configMap"].is_object() {
                ("configmaps", &src["configMap"])
            } else {
                ("secrets", &src["secret"])
            };
            let obj = src["name"].as_str().unwrap_or_default();
            let what = format!("volume {name} ({} {obj})", singular(kind));
            let d = match data(client, kind, ns, obj).await? {
                Some(d) => d,
                None if src["optional"].as_bool() == Some(true) => BTreeMap::new(),
                None => return Err(format!("{what}: {} \"{obj}\" not found", singular(kind))),
            };
            files.extend(project(&d, &src["items"], &what)?);
        } else if src["downwardAPI"].is_object() {
            for it in src["downwardAPI"]["items"].as_array().into_iter().flatten() {
                let path = item_path(it["path"].as_str().unwrap_or_default(), name)?;
                let value = if it["fieldRef"].is_object() {
                    let f = it["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
                    field_file(pod, f, down)?
                } else if it["resourceFieldRef"].is_object() {
                    let r = &it["resourceFieldRef"];
                    let cname = r["containerName"].as_str().unwrap_or_default();
                    let c = pod["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["name"] == cname)
                        .ok_or_else(|| {
                            format!("volume {name}: resourceFieldRef: no container {cname:?}")
                        })?;
                    let (cpus, mem) = node_size();
                    resource(c, r, cpus, mem)?
                } else {
                    return Err(format!("volume {name}: item {path:?} has no source"));
                };
                files.insert(path, value.into_bytes());
            }
        } else if src["serviceAccountToken"].is_object() {
            let t = &src["serviceAccountToken"];
            let path = item_path(t["path"].as_str().unwrap_or_default(), name)?;
            let token = token(client, pod, t, &dir.join("..data").join(&path))
                .await
                .map_err(|e| format!("volume {name}: {e}"))?;
            files.insert(path, token.into_bytes());
        } else {
            return Err(format!("volume {name}: unsupported projected volume source"));
        }
    }
    let mode = mode.as_u64().unwrap_or(0o644) as u32;
    Ok(Some(Contents { files, mode, tmpfs }))
}

fn item_path(path: &str, volume: &str) -> Result<String, ConfigError> {
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(format!("volume {volume}: item path {path:?} escapes the volume"));
    }
    Ok(path.to_string())
}

/// A downward API field as a volume file renders it: labels and annotations as `k="v"` lines.
fn field_file(pod: &Value, path: &str, down: Downward<'_>) -> Result<String, ConfigError> {
    if let Some(key @ ("labels" | "annotations")) = path.strip_prefix("metadata.") {
        let map = pod["metadata"][key].as_object();
        let lines: Vec<String> = map
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or_default()))
            .collect();
        return Ok(lines.join("\n"));
    }
    field(pod, path, down.pod_ip, down.host_ip)
}

fn node_size() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let mem = nix::sys::sysinfo::sysinfo().map(|s| s.ram_total()).unwrap_or(0);
    (cpus, mem)
}

/// The claims of a token the agent needs to decide when to renew it (its signature is the
/// API server's business; this token came from it).
fn token_times(token: &str) -> Option<(i64, i64, Value)> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let c: Value = serde_json::from_slice(&bytes).ok()?;
    Some((c["iat"].as_i64()?, c["exp"].as_i64()?, c))
}

/// Whether the token an earlier sync wrote can stay: for the same audience and pod, and
/// younger than 80% of its lifetime and than 24 hours (the kubelet's token manager's rule).
fn reusable(token: &str, now: i64, audience: &str, pod_uid: &str) -> bool {
    let Some((iat, exp, c)) = token_times(token) else { return false };
    let age = now - iat;
    let same_audience =
        audience.is_empty() || c["aud"].as_array().is_some_and(|a| a.iter().any(|a| a == audience));
    c["kubernetes.io"]["pod"]["uid"] == pod_uid
        && same_audience
        && age < (exp - iat) * 8 / 10
        && age < 24 * 3600
}

/// A service account token bound to the pod, for a serviceAccountToken projection: the one
/// at `current` while it is [`reusable`], else a new one from the API server.
async fn token(
    client: &Client,
    pod: &Value,
    src: &Value,
    current: &Path,
) -> Result<String, ConfigError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let audience = src["audience"].as_str().unwrap_or_default();
    let expiration = src["expirationSeconds"].as_i64().unwrap_or(3600);
    if let Ok(t) = std::fs::read_to_string(current) {
        if reusable(&t, jiff::Timestamp::now().as_second(), audience, uid) {
            return Ok(t);
        }
    }
    let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": if audience.is_empty() { json!([]) } else { json!([audience]) },
                 "expirationSeconds": expiration,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                     "name": pod["metadata"]["name"], "uid": uid}}});
    let out = client
        .create_token(ns, sa, &req)
        .await
        .map_err(|e| format!("token for serviceaccount {ns}/{sa}: {e}"))?;
    out["status"]["token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("token for serviceaccount {ns}/{sa}: the answer has no token"))
}

/// The kubelet's periodic sync of volumes made from API data (configMap, secret,
/// downwardAPI, projected): each one whose content changed, or whose token is due for
/// renewal, is rewritten through the atomic `..data` swap, so containers see the new files
/// (not through subPath mounts, as in Kubernetes). A source that is gone keeps what was
/// written. Returns the volumes that changed.
pub async fn refresh_volumes(
    client: &Client,
    pod: &Value,
    dir: &Path,
    down: Downward<'_>,
) -> Vec<String> {
    let mut changed = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        let path = dir.join(name);
        if !path.join("..data").exists() {
            continue;
        }
        let c = match contents(client, pod, v, &path, down).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!("refreshing {e}");
                continue;
            }
        };
        if unchanged(&path, &c.files, c.mode) {
            continue;
        }
        match write_atomic_dir(&path, &c.files, c.mode) {
            Ok(()) => changed.push(name.to_string()),
            Err(e) => tracing::warn!("volume {name}: refreshing: {e}"),
        }
    }
    changed
}

/// Makes (or refreshes) the pod's volumes under `dir` and returns their paths by name.
/// Secrets, tokens and memory-backed emptyDirs live on tmpfs.
pub async fn volumes(
    client: &Client,
    pod: &Value,
    dir: &Path,
    down: Downward<'_>,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let mut out = BTreeMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default();
        let path = dir.join(name);
        let mkdir =
            |p: &Path| std::fs::create_dir_all(p).map_err(|e| format!("volume {name}: {e}"));
        if v["emptyDir"].is_object() {
            mkdir(&path)?;
            if v["emptyDir"]["medium"].as_str() == Some("Memory") {
                tmpfs(&path)?;
            }
        } else if v["hostPath"].is_object() {
            let host = PathBuf::from(v["hostPath"]["path"].as_str().unwrap_or_default());
            match v["hostPath"]["type"].as_str().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&host).map_err(|e| format!("volume {name}: {e}"))?
                }
                "FileOrCreate" => {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&host)
                        .map_err(|e| format!("volume {name}: {e}"))?;
                }
                "Directory" if !host.is_dir() => {
                    return Err(format!(
                        "volume {name}: hostPath {} is not a directory",
                        host.display()
                    ))
                }
                "File" if !host.is_file() => {
                    return Err(format!("volume {name}: hostPath {} is not a file", host.display()))
                }
                _ => {}
            }
            out.insert(name.to_string(), host);
            continue;
        } else if let Some(c) = contents(client, pod, v, &path, down).await? {
            mkdir(&path)?;
            if c.tmpfs {
                tmpfs(&path)?;
            }
            if !unchanged(&path, &c.files, c.mode) {
                write_atomic_dir(&path, &c.files, c.mode)
                    .map_err(|e| format!("volume {name}: {e}"))?;
            }
        } else {
            return Err(format!("volume {name}: unsupported volume source"));
        }
        out.insert(name.to_string(), path);
    }
    Ok(out)
}

/// The container's volumeMounts, resolved against the pod's volumes.
pub fn mounts(
    container: &Value,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<VolumeMount>, ConfigError> {
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or_default();
        let base =
            volumes.get(name).ok_or_else(|| format!("volumeMount {name}: no such volume"))?;
        let sub = m["subPath"].as_str().unwrap_or_default();
        if sub.split('/').any(|c| c == "..") || sub.starts_with('/') {
            return Err(format!("volumeMount {name}: subPath {sub:?} escapes the volume"));
        }
        let source = if sub.is_empty() { base.clone() } else { base.join(sub) };
        if !sub.is_empty() && !source.exists() {
            std::fs::create_dir_all(&source).map_err(|e| format!("volumeMount {name}: {e}"))?;
        }
        out.push(VolumeMount {
            source,
            destination: m["mountPath"].as_str().unwrap_or_default().to_string(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_renewed_at_80_percent_of_their_life_or_after_a_day() {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let tok = |iat: i64, exp: i64, aud: &str| {
            let c = serde_json::json!({"iat": iat, "exp": exp, "aud": [aud],
                "kubernetes.io": {"pod": {"name": "p", "uid": "u1"}}});
            format!("h.{}.s", b.encode(c.to_string()))
        };
        let t = tok(1000, 1000 + 3600, "api");
        assert!(super::reusable(&t, 1000 + 2879, "", "u1"));
        assert!(!super::reusable(&t, 1000 + 2880, "", "u1"), "80% of an hour");
        assert!(super::reusable(&t, 1100, "api", "u1"));
        assert!(!super::reusable(&t, 1100, "vault", "u1"), "another audience");
        assert!(!super::reusable(&t, 1100, "", "u2"), "another pod");
        let long = tok(1000, 1000 + 7 * 86400, "api");
        assert!(!super::reusable(&long, 1000 + 86400, "", "u1"), "a day old");
        assert!(!super::reusable("garbage", 1100, "", "u1"));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn downward_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "serviceAccountName": "sa"}});
        let ip = Ipv4Addr::new(10, 244, 0, 9);
        assert_eq!(field(&pod, "metadata.name", ip, "1.2.3.4").unwrap(), "p");
        assert_eq!(field(&pod, "status.podIP", ip, "1.2.3.4").unwrap(), "10.244.0.9");
        assert_eq!(field(&pod, "status.hostIP", ip, "1.2.3.4").unwrap(), "1.2.3.4");
        assert_eq!(field(&pod, "metadata.labels['app']", ip, "").unwrap(), "web");
        assert!(field(&pod, "spec.bogus", ip, "").unwrap_err().contains("spec.bogus"));
    }

    #[test]
    fn resource_refs_round_up_by_divisor() {
        let c = json!({"resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}}});
        assert_eq!(resource(&c, &json!({"resource": "limits.cpu"}), 4, 0).unwrap(), "2");
        assert_eq!(
            resource(&c, &json!({"resource": "limits.cpu", "divisor": "1m"}), 4, 0).unwrap(),
            "1500"
        );
        assert_eq!(
            resource(&c, &json!({"resource": "limits.memory", "divisor": "1Mi"}), 4, 0).unwrap(),
            "64"
        );
        assert_eq!(resource(&json!({}), &json!({"resource": "limits.cpu"}), 4, 0).unwrap(), "4");
    }

    #[test]
    fn atomic_dir_swaps_and_prunes() {
        let d = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::new();
        files.insert("a".to_string(), b"1".to_vec());
        files.insert("sub/b".to_string(), b"2".to_vec());
        write_atomic_dir(d.path(), &files, 0o644).unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(d.path().join("sub/b")).unwrap(), b"2");
        files.remove("sub/b");
        files.insert("a".to_string(), b"3".to_vec());
        write_atomic_dir(d.path(), &files, 0o644).unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"3");
        assert!(!d.path().join("sub").exists());
        let stamps = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
            .count();
        assert_eq!(stamps, 1, "old data directories are removed");
    }

    #[test]
    fn items_and_subpaths_cannot_escape() {
        let mut d = BTreeMap::new();
        d.insert("k".to_string(), b"v".to_vec());
        assert!(project(&d, &json!([{"key": "k", "path": "../x"}]), "vol").is_err());
        assert_eq!(project(&d, &json!([{"key": "k", "path": "dir/f"}]), "vol").unwrap().len(), 1);
        let mut vols = BTreeMap::new();
        vols.insert("v".to_string(), PathBuf::from("/tmp/v"));
        assert!(mounts(
            &json!({"volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": "../../etc"}]}),
            &vols
        )
        .is_err());
        assert!(
            mounts(&json!({"volumeMounts": [{"name": "w", "mountPath": "/m"}]}), &vols).is_err()
        );
    }
}
