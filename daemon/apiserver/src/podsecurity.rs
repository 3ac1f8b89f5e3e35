//! Pod Security admission, after Kubernetes' `k8s.io/pod-security-admission`: a namespace's
//! labels `pod-security.kubernetes.io/{enforce,audit,warn}` choose a level (privileged,
//! baseline, restricted) of the Pod Security Standards. `enforce` refuses a pod that violates
//! it, naming every check and field; `warn` answers with warnings; `audit` logs. Pods are
//! enforced; the pod templates of workload objects get warnings and audit only, as upstream.

use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Capabilities a baseline container may add (Kubernetes' default container set).
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn containers(spec: &Value) -> Vec<(&str, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten())
        .map(|c| (c["name"].as_str().unwrap_or(""), c))
        .collect()
}

/// Per container, the capabilities it adds that `allowed` refuses, in Kubernetes' words.
fn forbidden_adds(ctrs: &[(&str, &Value)], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for (n, c) in ctrs {
        let bad: Vec<&str> = c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|cap| !allowed(cap))
            .collect();
        if !bad.is_empty() {
            out.push(format!(
                "container {n:?} must not include {} in securityContext.capabilities.add",
                quoted(&bad)
            ));
        }
    }
    out
}

fn quoted(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    q.join(", ")
}

fn containers_phrase(names: &[&str]) -> String {
    if names.len() == 1 {
        format!("container {}", quoted(names))
    } else {
        format!("containers {}", quoted(names))
    }
}

/// Every check `level` fails for a pod (`meta` its metadata, `spec` its spec), in
/// Kubernetes' words: `check (details)`.
pub fn violations(level: Level, meta: &Value, spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let ctrs = containers(spec);
    let psc = &spec["securityContext"];

    // ---- baseline ----
    let hosts: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec[**k] == true)
        .map(|k| format!("{k}=true"))
        .collect();
    if !hosts.is_empty() {
        out.push(format!("host namespaces ({})", hosts.join(", ")));
    }
    let privileged: Vec<&str> = ctrs
        .iter()
        .filter(|(_, c)| c["securityContext"]["privileged"] == true)
        .map(|(n, _)| *n)
        .collect();
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            containers_phrase(&privileged)
        ));
    }
    let caps = forbidden_adds(&ctrs, |cap| BASELINE_CAPS.contains(&cap));
    if !caps.is_empty() {
        out.push(format!("non-default capabilities ({})", caps.join("; ")));
    }
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    let host_paths: Vec<&str> = volumes
        .iter()
        .filter(|v| v["hostPath"].is_object())
        .map(|v| v["name"].as_str().unwrap_or(""))
        .collect();
    if !host_paths.is_empty() {
        let what = if host_paths.len() == 1 { "volume" } else { "volumes" };
        out.push(format!("hostPath volumes ({what} {})", quoted(&host_paths)));
    }
    let mut ports = Vec::new();
    for (n, c) in &ctrs {
        let hp: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64())
            .filter(|p| *p != 0)
            .map(|p| p.to_string())
            .collect();
        if !hp.is_empty() {
            ports.push(format!(
                "container {n:?} uses {} {}",
                if hp.len() == 1 { "hostPort" } else { "hostPorts" },
                hp.join(", ")
            ));
        }
    }
    if !ports.is_empty() {
        out.push(format!("hostPort ({})", ports.join("; ")));
    }
    // AppArmor: the field and the legacy annotations.
    let mut apparmor = Vec::new();
    if psc["appArmorProfile"]["type"] == "Unconfined" {
        apparmor.push(
            "pod must not set securityContext.appArmorProfile.type to \"Unconfined\"".to_string(),
        );
    }
    for (n, c) in &ctrs {
        if c["securityContext"]["appArmorProfile"]["type"] == "Unconfined" {
            apparmor.push(format!("container {n:?} must not set securityContext.appArmorProfile.type to \"Unconfined\""));
        }
    }
    for (k, v) in meta["annotations"].as_object().into_iter().flatten() {
        if let Some(c) = k.strip_prefix("container.apparmor.security.beta.kubernetes.io/") {
            let v = v.as_str().unwrap_or("");
            if v != "runtime/default" && !v.starts_with("localhost/") {
                apparmor
                    .push(format!("container {c:?} must not set the AppArmor annotation to {v:?}"));
            }
        }
    }
    if !apparmor.is_empty() {
        out.push(format!("forbidden AppArmor profile ({})", apparmor.join("; ")));
    }
    let selinux_ok = |o: &Value| {
        let t = o["type"].as_str().unwrap_or("");
        ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"]
            .contains(&t)
            && o["user"].as_str().unwrap_or("").is_empty()
            && o["role"].as_str().unwrap_or("").is_empty()
    };
    let mut selinux = Vec::new();
    if !selinux_ok(&psc["seLinuxOptions"]) {
        selinux.push("pod".to_string());
    }
    for (n, c) in &ctrs {
        if !selinux_ok(&c["securityContext"]["seLinuxOptions"]) {
            selinux.push(format!("container {n:?}"));
        }
    }
    if !selinux.is_empty() {
        out.push(format!(
            "seLinuxOptions ({} set forbidden securityContext.seLinuxOptions: type must be one of container_t, container_init_t, container_kvm_t, container_engine_t; user and role must not be set)",
            selinux.join(", ")
        ));
    }
    let proc: Vec<&str> = ctrs
        .iter()
        .filter(|(_, c)| c["securityContext"]["procMount"].as_str().is_some_and(|p| p != "Default"))
        .map(|(n, _)| *n)
        .collect();
    if !proc.is_empty() {
        out.push(format!(
            "procMount ({} must not set securityContext.procMount to \"Unmasked\")",
            containers_phrase(&proc)
        ));
    }
    let mut unconfined = Vec::new();
    if psc["seccompProfile"]["type"] == "Unconfined" {
        unconfined.push("pod".to_string());
    }
    for (n, c) in &ctrs {
        if c["securityContext"]["seccompProfile"]["type"] == "Unconfined" {
            unconfined.push(format!("container {n:?}"));
        }
    }
    if !unconfined.is_empty() {
        out.push(format!(
            "seccompProfile ({} must not set securityContext.seccompProfile.type to \"Unconfined\")",
            unconfined.join(" and ")
        ));
    }
    let sysctls: Vec<&str> = psc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .collect();
    if !sysctls.is_empty() {
        out.push(format!("forbidden sysctls ({})", sysctls.join(", ")));
    }
    if level == Level::Baseline {
        return out;
    }

    // ---- restricted ----
    let mut restricted_vols = Vec::new();
    for v in &volumes {
        let kind = v
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, val)| *k != "name" && val.is_object())
            .map(|(k, _)| k.as_str())
            .unwrap_or("");
        if !kind.is_empty() && !RESTRICTED_VOLUMES.contains(&kind) {
            restricted_vols.push(format!(
                "volume {:?} uses restricted volume type {kind:?}",
                v["name"].as_str().unwrap_or("")
            ));
        }
    }
    if !restricted_vols.is_empty() {
        out.push(format!("restricted volume types ({})", restricted_vols.join("; ")));
    }
    let escalation: Vec<&str> = ctrs
        .iter()
        .filter(|(_, c)| c["securityContext"]["allowPrivilegeEscalation"] != false)
        .map(|(n, _)| *n)
        .collect();
    if !escalation.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            containers_phrase(&escalation)
        ));
    }
    // runAsNonRoot: the pod's value, unless a container sets its own.
    let pod_nonroot = psc["runAsNonRoot"].as_bool();
    let explicit_false: Vec<&str> = ctrs
        .iter()
        .filter(|(_, c)| c["securityContext"]["runAsNonRoot"] == false)
        .map(|(n, _)| *n)
        .collect();
    let unset: Vec<&str> = ctrs
        .iter()
        .filter(|(_, c)| {
            c["securityContext"]["runAsNonRoot"].is_null() && pod_nonroot != Some(true)
        })
        .map(|(n, _)| *n)
        .collect();
    if pod_nonroot == Some(false) || !explicit_false.is_empty() || !unset.is_empty() {
        let mut why = Vec::new();
        if pod_nonroot == Some(false) {
            why.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        if !explicit_false.is_empty() {
            why.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                containers_phrase(&explicit_false)
            ));
        }
        if !unset.is_empty() && pod_nonroot != Some(false) {
            why.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&unset)
            ));
        }
        out.push(format!("runAsNonRoot != true ({})", why.join("; ")));
    }
    let mut root = Vec::new();
    if psc["runAsUser"] == 0 {
        root.push("pod".to_string());
    }
    for (n, c) in &ctrs {
        if c["securityContext"]["runAsUser"] == 0 {
            root.push(format!("container {n:?}"));
        }
    }
    if !root.is_empty() {
        out.push(format!("runAsUser=0 ({} must not set runAsUser=0)", root.join(" and ")));
    }
    let allowed_seccomp = |t: &Value| t == "RuntimeDefault" || t == "Localhost";
    let pod_seccomp = allowed_seccomp(&psc["seccompProfile"]["type"]);
    let no_seccomp: Vec<&str> = ctrs
        .iter()
        .filter(|(_, c)| {
            let t = &c["securityContext"]["seccompProfile"]["type"];
            if t.is_null() {
                !pod_seccomp
            } else {
                !allowed_seccomp(t) && t != "Unconfined"
            }
        })
        .map(|(n, _)| *n)
        .collect();
    if !no_seccomp.is_empty() {
        out.push(format!(
            "seccompProfile (pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            containers_phrase(&no_seccomp)
        ));
    }
    let mut caps = Vec::new();
    let no_drop: Vec<&str> = ctrs
        .iter()
        .filter(|(_, c)| {
            !c["securityContext"]["capabilities"]["drop"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d == "ALL")
        })
        .map(|(n, _)| *n)
        .collect();
    if !no_drop.is_empty() {
        caps.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop)
        ));
    }
    caps.extend(forbidden_adds(&ctrs, |cap| cap == "NET_BIND_SERVICE"));
    if !caps.is_empty() {
        out.push(format!("unrestricted capabilities ({})", caps.join("; ")));
    }
    out
}

/// A namespace's policy: level and version per mode.
#[derive(Debug, Default)]
pub struct Policy {
    pub enforce: Option<(Level, String)>,
    pub audit: Option<(Level, String)>,
    pub warn: Option<(Level, String)>,
}

impl Policy {
    /// From a namespace's labels; an unknown level is treated as `restricted`, as upstream
    /// does for malformed labels (fail closed).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Policy {
        let mode = |m: &str| {
            labels.get(&format!("pod-security.kubernetes.io/{m}")).map(|l| {
                let level = Level::parse(l).unwrap_or(Level::Restricted);
                let version = labels
                    .get(&format!("pod-security.kubernetes.io/{m}-version"))
                    .cloned()
                    .unwrap_or_else(|| "latest".into());
                (level, version)
            })
        };
        Policy { enforce: mode("enforce"), audit: mode("audit"), warn: mode("warn") }
    }

    pub fn is_empty(&self) -> bool {
        self.enforce.is_none() && self.audit.is_none() && self.warn.is_none()
    }
}

/// The pod (metadata, spec) inside an object Pod Security looks at, and whether the object
/// is a pod (enforced) or a workload (warned and audited only).
pub fn pod_of<'a>(resource: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value, bool)> {
    match resource {
        "pods" => Some((&obj["metadata"], &obj["spec"], true)),
        "deployments"
        | "replicasets"
        | "statefulsets"
        | "daemonsets"
        | "jobs"
        | "replicationcontrollers" => {
            let t = &obj["spec"]["template"];
            Some((&t["metadata"], &t["spec"], false))
        }
        "cronjobs" => {
            let t = &obj["spec"]["jobTemplate"]["spec"]["template"];
            Some((&t["metadata"], &t["spec"], false))
        }
        _ => None,
    }
}

/// What admission does: Err(message) when enforce refuses; otherwise the warnings to return
/// and the audit annotations to log.
pub fn admit(
    policy: &Policy,
    resource: &str,
    name: &str,
    obj: &Value,
) -> Result<(Vec<String>, Vec<String>), String> {
    let Some((meta, spec, is_pod)) = pod_of(resource, obj) else { return Ok((vec![], vec![])) };
    if let (true, Some((level, version))) = (is_pod, &policy.enforce) {
        let v = violations(*level, meta, spec);
        if !v.is_empty() {
            return Err(format!(
                "{resource} {name:?} is forbidden: violates PodSecurity \"{}:{version}\": {}",
                level.name(),
                v.join(", ")
            ));
        }
    }
    let mut warnings = Vec::new();
    // Workloads are warned about for the enforce level too, as upstream: their pods would be refused.
    let warn_levels = [policy.warn.as_ref(), if is_pod { None } else { policy.enforce.as_ref() }];
    let mut seen = Vec::new();
    for (level, version) in warn_levels.into_iter().flatten() {
        if seen.contains(level) {
            continue;
        }
        seen.push(*level);
        let v = violations(*level, meta, spec);
        if !v.is_empty() {
            warnings.push(format!(
                "would violate PodSecurity \"{}:{version}\": {}",
                level.name(),
                v.join(", ")
            ));
        }
    }
    let mut audit = Vec::new();
    if let Some((level, version)) = &policy.audit {
        let v = violations(*level, meta, spec);
        if !v.is_empty() {
            audit.push(format!(
                "would violate PodSecurity \"{}:{version}\": {}",
                level.name(),
                v.join(", ")
            ));
        }
    }
    Ok((warnings, audit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn restricted_ok() -> Value {
        json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "x", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]})
    }

    #[test]
    fn restricted_pods_pass_and_every_relaxation_is_named() {
        let meta = json!({});
        assert!(violations(Level::Restricted, &meta, &restricted_ok()).is_empty());
        let bare = json!({"containers": [{"name": "c", "image": "x"}]});
        assert!(violations(Level::Baseline, &meta, &bare).is_empty());
        let v = violations(Level::Restricted, &meta, &bare);
        assert_eq!(v, [
            "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false)",
            "runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true)",
            "seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            "unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"])",
        ]);
        let mut s = restricted_ok();
        s["containers"][0]["securityContext"]["capabilities"]["add"] =
            json!(["NET_BIND_SERVICE", "CHOWN"]);
        s["containers"][0]["securityContext"]["runAsUser"] = json!(0);
        s["volumes"] = json!([{"name": "h", "hostPath": {"path": "/"}}]);
        let v = violations(Level::Restricted, &meta, &s);
        assert!(v.contains(&"hostPath volumes (volume \"h\")".to_string()), "{v:?}");
        assert!(
            v.contains(
                &"restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")"
                    .to_string()
            ),
            "{v:?}"
        );
        assert!(
            v.contains(&"runAsUser=0 (container \"c\" must not set runAsUser=0)".to_string()),
            "{v:?}"
        );
        assert!(v.contains(&"unrestricted capabilities (container \"c\" must not include \"CHOWN\" in securityContext.capabilities.add)".to_string()), "{v:?}");
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let meta = json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}});
        let s = json!({"hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}],
                "securityContext": {"privileged": true, "procMount": "Unmasked",
                    "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}, "seccompProfile": {"type": "Unconfined"}}}]});
        let v = violations(Level::Baseline, &meta, &s);
        assert_eq!(v, [
            "host namespaces (hostNetwork=true, hostPID=true)",
            "privileged (container \"c\" must not set securityContext.privileged=true)",
            "non-default capabilities (container \"c\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
            "hostPort (container \"c\" uses hostPort 8080)",
            "forbidden AppArmor profile (container \"c\" must not set the AppArmor annotation to \"unconfined\")",
            "procMount (container \"c\" must not set securityContext.procMount to \"Unmasked\")",
            "seccompProfile (container \"c\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
            "forbidden sysctls (kernel.msgmax)",
        ]);
        assert!(violations(Level::Privileged, &meta, &s).is_empty());
    }

    #[test]
    fn enforce_refuses_pods_and_warns_for_workloads() {
        let labels: BTreeMap<String, String> = [
            ("pod-security.kubernetes.io/enforce".to_string(), "baseline".to_string()),
            ("pod-security.kubernetes.io/warn".to_string(), "restricted".to_string()),
        ]
        .into();
        let p = Policy::from_labels(&labels);
        let pod = json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": true, "containers": [{"name": "c"}]}});
        let e = admit(&p, "pods", "p", &pod).unwrap_err();
        assert!(e.starts_with("pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"), "{e}");
        let deploy = json!({"spec": {"template": {"metadata": {}, "spec": pod["spec"]}}});
        let (w, _) = admit(&p, "deployments", "d", &deploy).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("would violate PodSecurity \"restricted:latest\""), "{w:?}");
        assert!(
            w[1].starts_with("would violate PodSecurity \"baseline:latest\": host namespaces"),
            "{w:?}"
        );
        let ok = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        let (w, _) = admit(&p, "pods", "p", &ok).unwrap();
        assert_eq!(w.len(), 1);
    }
}
