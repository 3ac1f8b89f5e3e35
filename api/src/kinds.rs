//! Per-kind defaults and validation, after Kubernetes' `pkg/apis/*/v1/defaults.go` and
//! `pkg/apis/*/validation`, for the fields Flotilla supports.

use crate::admit::Kind;
use crate::error::Errors;
use crate::quantity::Quantity;
use crate::selector::LabelSelector;
use crate::validate::*;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::certificates::v1 as certificates;
use k8s_openapi::api::coordination::v1 as coord;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

fn one_of(errs: &mut Errors, field: String, value: Option<&str>, allowed: &[&str]) {
    if let Some(v) = value {
        if !allowed.contains(&v) {
            errs.not_supported(field, v, allowed);
        }
    }
}

fn non_negative<T: PartialOrd + Default + std::fmt::Display + Copy>(
    errs: &mut Errors,
    field: impl Into<String>,
    v: Option<T>,
) {
    if let Some(v) = v {
        if v < T::default() {
            errs.invalid(field, v, "must be greater than or equal to 0");
        }
    }
}

fn positive(errs: &mut Errors, field: impl Into<String>, v: Option<i32>) {
    if let Some(v) = v {
        if v < 1 {
            errs.invalid(field, v, "must be greater than or equal to 1");
        }
    }
}

/// Set fields of a one-of struct (a volume source, a probe handler): its JSON keys but `name`.
fn set_members<T: Serialize>(v: &T) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => {
            m.into_iter().filter(|(k, v)| k != "name" && !v.is_null()).map(|(k, _)| k).collect()
        }
        _ => Vec::new(),
    }
}

fn exactly_one(errs: &mut Errors, field: &str, set: &[String], what: &str) {
    match set.len() {
        1 => {}
        0 => errs.required(field, format!("must specify one {what}")),
        _ => errs.forbidden(
            field,
            format!("may not specify more than 1 {what} (found {})", set.join(", ")),
        ),
    }
}

// ---- pods ----

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn default_probe(p: &mut Option<core::Probe>) {
    if let Some(p) = p {
        p.timeout_seconds.get_or_insert(1);
        p.period_seconds.get_or_insert(10);
        p.success_threshold.get_or_insert(1);
        p.failure_threshold.get_or_insert(3);
        if let Some(h) = &mut p.http_get {
            h.path.get_or_insert_with(|| "/".into());
            h.scheme.get_or_insert_with(|| "HTTP".into());
        }
    }
}

fn default_container(c: &mut core::Container) {
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = Some(default_pull_policy(c.image.as_deref().unwrap_or("")).into());
    }
    c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy.get_or_insert_with(|| "File".into());
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            f.api_version.get_or_insert_with(|| "v1".into());
        }
    }
    // Limits without requests: the requests are the limits.
    if let Some(r) = &mut c.resources {
        if let Some(limits) = r.limits.clone() {
            let req = r.requests.get_or_insert_with(BTreeMap::new);
            for (k, v) in limits {
                req.entry(k).or_insert(v);
            }
        }
    }
    default_probe(&mut c.liveness_probe);
    default_probe(&mut c.readiness_probe);
    default_probe(&mut c.startup_probe);
}

pub fn default_pod_spec(s: &mut core::PodSpec) {
    s.restart_policy.get_or_insert_with(|| "Always".into());
    s.termination_grace_period_seconds.get_or_insert(30);
    s.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    s.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    s.security_context.get_or_insert_with(Default::default);
    s.enable_service_links.get_or_insert(true);
    if s.service_account_name.is_none() {
        s.service_account_name = s.service_account.clone().or_else(|| Some("default".into()));
    }
    for c in s.containers.iter_mut().chain(s.init_containers.iter_mut().flatten()) {
        default_container(c);
    }
    for v in s.volumes.iter_mut().flatten() {
        if let Some(cm) = &mut v.config_map {
            cm.default_mode.get_or_insert(0o644);
        }
        if let Some(sec) = &mut v.secret {
            sec.default_mode.get_or_insert(0o644);
        }
        if let Some(hp) = &mut v.host_path {
            hp.type_.get_or_insert_with(String::new);
        }
    }
}

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn validate_port_ref(errs: &mut Errors, field: String, port: &IntOrString) {
    match port {
        IntOrString::Int(p) if !(1..=65535).contains(p) => {
            errs.invalid(field, p, "must be between 1 and 65535, inclusive")
        }
        IntOrString::String(s) => {
            if let Some(e) = port_name_error(s) {
                errs.invalid_str(field, s, &e)
            }
        }
        _ => {}
    }
}

fn validate_handler(
    errs: &mut Errors,
    p: &str,
    exec: bool,
    http: Option<&core::HTTPGetAction>,
    tcp: Option<&core::TCPSocketAction>,
) {
    if let Some(h) = http {
        validate_port_ref(errs, format!("{p}.httpGet.port"), &h.port);
        one_of(errs, format!("{p}.httpGet.scheme"), h.scheme.as_deref(), &["HTTP", "HTTPS"]);
    }
    if let Some(t) = tcp {
        validate_port_ref(errs, format!("{p}.tcpSocket.port"), &t.port);
    }
    let _ = exec;
}

fn validate_probe(errs: &mut Errors, p: &str, probe: &core::Probe, liveness_like: bool) {
    let handlers: Vec<String> = [
        probe.exec.as_ref().map(|_| "exec"),
        probe.http_get.as_ref().map(|_| "httpGet"),
        probe.tcp_socket.as_ref().map(|_| "tcpSocket"),
        probe.grpc.as_ref().map(|_| "grpc"),
    ]
    .into_iter()
    .flatten()
    .map(String::from)
    .collect();
    exactly_one(errs, p, &handlers, "handler type");
    if let Some(e) = &probe.exec {
        if e.command.as_ref().is_none_or(|c| c.is_empty()) {
            errs.required(format!("{p}.exec.command"), "");
        }
    }
    validate_handler(
        errs,
        p,
        probe.exec.is_some(),
        probe.http_get.as_ref(),
        probe.tcp_socket.as_ref(),
    );
    if let Some(g) = &probe.grpc {
        if !(1..=65535).contains(&g.port) {
            errs.invalid(
                format!("{p}.grpc.port"),
                g.port,
                "must be between 1 and 65535, inclusive",
            );
        }
    }
    non_negative(errs, format!("{p}.initialDelaySeconds"), probe.initial_delay_seconds);
    positive(errs, format!("{p}.timeoutSeconds"), probe.timeout_seconds);
    positive(errs, format!("{p}.periodSeconds"), probe.period_seconds);
    positive(errs, format!("{p}.successThreshold"), probe.success_threshold);
    positive(errs, format!("{p}.failureThreshold"), probe.failure_threshold);
    if liveness_like && probe.success_threshold.is_some_and(|s| s != 1) {
        errs.invalid(
            format!("{p}.successThreshold"),
            probe.success_threshold.unwrap_or(0),
            "must be 1",
        );
    }
}

fn resource_name_ok(n: &str) -> bool {
    matches!(n, "cpu" | "memory" | "ephemeral-storage")
        || n.starts_with("hugepages-")
        || (n.contains('/') && qualified_name_error(n).is_none())
}

fn validate_resources(errs: &mut Errors, p: &str, r: &core::ResourceRequirements) {
    let mut parsed = |which: &str,
                      m: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        let mut out = BTreeMap::new();
        for (k, v) in m.iter().flatten() {
            let f = format!("{p}.{which}[{k}]");
            if !resource_name_ok(k) {
                errs.not_supported(
                    f.clone(),
                    k,
                    &["cpu", "memory", "ephemeral-storage", "hugepages-<size>", "<domain>/<name>"],
                );
                continue;
            }
            match Quantity::parse(&v.0) {
                Ok(q) if q.is_negative() => {
                    errs.invalid_str(f, &v.0, "must be greater than or equal to 0")
                }
                Ok(q) => {
                    out.insert(k.clone(), (q, v.0.clone()));
                }
                Err(e) => errs.invalid_str(f, &v.0, &e),
            }
        }
        out
    };
    let limits = parsed("limits", &r.limits);
    let requests = parsed("requests", &r.requests);
    for (k, (req, s)) in &requests {
        if let Some((lim, ls)) = limits.get(k) {
            if req > lim {
                errs.invalid_str(
                    format!("{p}.requests[{k}]"),
                    s,
                    &format!("must be less than or equal to {k} limit of {ls}"),
                );
            }
        }
    }
}

fn validate_container(
    errs: &mut Errors,
    p: &str,
    c: &core::Container,
    volumes: &HashSet<&str>,
    init: bool,
) {
    if let Some(e) = dns1123_label_error(&c.name) {
        errs.invalid_str(format!("{p}.name"), &c.name, &e);
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.required(format!("{p}.image"), "");
    }
    one_of(
        errs,
        format!("{p}.imagePullPolicy"),
        c.image_pull_policy.as_deref(),
        &["Always", "IfNotPresent", "Never"],
    );
    one_of(
        errs,
        format!("{p}.terminationMessagePolicy"),
        c.termination_message_policy.as_deref(),
        &["File", "FallbackToLogsOnError"],
    );
    if let Some(rp) = c.restart_policy.as_deref() {
        if !init {
            errs.forbidden(
                format!("{p}.restartPolicy"),
                "may only be set on init containers (sidecars)",
            );
        } else if rp != "Always" {
            errs.not_supported(format!("{p}.restartPolicy"), rp, &["Always"]);
        }
    }
    let mut port_names = HashSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{p}.ports[{i}]");
        if !(1..=65535).contains(&port.container_port) {
            errs.invalid(
                format!("{pp}.containerPort"),
                port.container_port,
                "must be between 1 and 65535, inclusive",
            );
        }
        if let Some(h) = port.host_port {
            if !(0..=65535).contains(&h) {
                errs.invalid(format!("{pp}.hostPort"), h, "must be between 0 and 65535, inclusive");
            }
        }
        one_of(errs, format!("{pp}.protocol"), port.protocol.as_deref(), PROTOCOLS);
        if let Some(n) = &port.name {
            if let Some(e) = port_name_error(n) {
                errs.invalid_str(format!("{pp}.name"), n, &e);
            } else if !port_names.insert(n.clone()) {
                errs.duplicate(format!("{pp}.name"), n);
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = format!("{p}.env[{i}]");
        if e.name.is_empty()
            || e.name.contains('=')
            || !e.name.chars().all(|c| c.is_ascii_graphic())
        {
            errs.invalid_str(format!("{ep}.name"), &e.name, "a valid environment variable name must consist only of printable ASCII characters other than '='");
        }
        if let Some(src) = &e.value_from {
            if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.invalid(
                    format!("{ep}.valueFrom"),
                    "",
                    "may not be specified when `value` is not empty",
                );
            }
            exactly_one(errs, &format!("{ep}.valueFrom"), &set_members(src), "source");
            if let Some(f) = &src.field_ref {
                if f.field_path.is_empty() {
                    errs.required(format!("{ep}.valueFrom.fieldRef.fieldPath"), "");
                }
            }
        }
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{p}.volumeMounts[{i}]");
        if !volumes.contains(m.name.as_str()) {
            errs.push(
                format!("{mp}.name"),
                crate::error::FieldErrorType::NotSupported,
                format!("\"{}\": no volume of that name in spec.volumes", m.name),
            );
        }
        if m.mount_path.is_empty() {
            errs.required(format!("{mp}.mountPath"), "");
        } else if !m.mount_path.starts_with('/') || m.mount_path.split('/').any(|s| s == "..") {
            errs.invalid_str(
                format!("{mp}.mountPath"),
                &m.mount_path,
                "must be an absolute path without '..'",
            );
        }
    }
    if let Some(r) = &c.resources {
        validate_resources(errs, &format!("{p}.resources"), r);
    }
    if let Some(pr) = &c.liveness_probe {
        validate_probe(errs, &format!("{p}.livenessProbe"), pr, true);
    }
    if let Some(pr) = &c.startup_probe {
        validate_probe(errs, &format!("{p}.startupProbe"), pr, true);
    }
    if let Some(pr) = &c.readiness_probe {
        validate_probe(errs, &format!("{p}.readinessProbe"), pr, false);
    }
    if init && c.restart_policy.is_none() {
        for (name, pr) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if pr.is_some() {
                errs.forbidden(
                    format!("{p}.{name}"),
                    "may not be set for init containers without restartPolicy=Always",
                );
            }
        }
    }
    if let Some(l) = &c.lifecycle {
        for (n, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if let Some(h) = h {
                let hp = format!("{p}.lifecycle.{n}");
                exactly_one(errs, &hp, &set_members(h), "handler type");
                validate_handler(
                    errs,
                    &hp,
                    h.exec.is_some(),
                    h.http_get.as_ref(),
                    h.tcp_socket.as_ref(),
                );
            }
        }
    }
    if let Some(sc) = &c.security_context {
        non_negative(errs, format!("{p}.securityContext.runAsUser"), sc.run_as_user);
        non_negative(errs, format!("{p}.securityContext.runAsGroup"), sc.run_as_group);
        if sc.privileged == Some(true) && sc.allow_privilege_escalation == Some(false) {
            errs.invalid(
                format!("{p}.securityContext"),
                "",
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            );
        }
    }
}

pub fn validate_pod_spec(errs: &mut Errors, p: &str, s: &core::PodSpec) {
    let mut volumes = HashSet::new();
    for (i, v) in s.volumes.iter().flatten().enumerate() {
        let vp = format!("{p}.volumes[{i}]");
        if let Some(e) = dns1123_label_error(&v.name) {
            errs.invalid_str(format!("{vp}.name"), &v.name, &e);
        } else if !volumes.insert(v.name.as_str()) {
            errs.duplicate(format!("{vp}.name"), &v.name);
        }
        exactly_one(errs, &vp, &set_members(v), "volume type");
        if let Some(ed) = &v.empty_dir {
            one_of(errs, format!("{vp}.emptyDir.medium"), ed.medium.as_deref(), &["", "Memory"]);
            if let Some(q) = &ed.size_limit {
                if let Err(e) = Quantity::parse(&q.0) {
                    errs.invalid_str(format!("{vp}.emptyDir.sizeLimit"), &q.0, &e);
                }
            }
        }
        if let Some(pr) = &v.projected {
            for (j, src) in pr.sources.iter().flatten().enumerate() {
                let sp = format!("{vp}.projected.sources[{j}]");
                exactly_one(errs, &sp, &set_members(src), "projection");
                if let Some(t) = &src.service_account_token {
                    let tp = format!("{sp}.serviceAccountToken");
                    match t.expiration_seconds {
                        Some(e) if e < 600 => errs.invalid(
                            format!("{tp}.expirationSeconds"),
                            e,
                            "may not specify a duration less than 10 minutes",
                        ),
                        Some(e) if e > 1 << 32 => errs.invalid(
                            format!("{tp}.expirationSeconds"),
                            e,
                            "may not specify a duration larger than 2^32 seconds",
                        ),
                        _ => {}
                    }
                    if t.path.is_empty() {
                        errs.required(format!("{tp}.path"), "");
                    } else if t.path.starts_with('/') || t.path.split('/').any(|c| c == "..") {
                        errs.invalid_str(
                            format!("{tp}.path"),
                            &t.path,
                            "must be a relative path without '..'",
                        );
                    }
                }
            }
        }
        if let Some(hp) = &v.host_path {
            if !hp.path.starts_with('/') {
                errs.invalid_str(
                    format!("{vp}.hostPath.path"),
                    &hp.path,
                    "must be an absolute path",
                );
            }
            one_of(
                errs,
                format!("{vp}.hostPath.type"),
                hp.type_.as_deref(),
                &[
                    "",
                    "DirectoryOrCreate",
                    "Directory",
                    "FileOrCreate",
                    "File",
                    "Socket",
                    "CharDevice",
                    "BlockDevice",
                ],
            );
        }
    }
    if s.containers.is_empty() {
        errs.required(format!("{p}.containers"), "");
    }
    let mut names = HashSet::new();
    for (list, field, init) in [
        (s.init_containers.as_deref().unwrap_or(&[]), "initContainers", true),
        (&s.containers[..], "containers", false),
    ] {
        for (i, c) in list.iter().enumerate() {
            let cp = format!("{p}.{field}[{i}]");
            if !names.insert(c.name.as_str()) {
                errs.duplicate(format!("{cp}.name"), &c.name);
            }
            validate_container(errs, &cp, c, &volumes, init);
        }
    }
    one_of(errs, format!("{p}.restartPolicy"), s.restart_policy.as_deref(), RESTART_POLICIES);
    one_of(
        errs,
        format!("{p}.dnsPolicy"),
        s.dns_policy.as_deref(),
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
    );
    non_negative(
        errs,
        format!("{p}.terminationGracePeriodSeconds"),
        s.termination_grace_period_seconds,
    );
    if let Some(a) = s.active_deadline_seconds {
        if a < 1 {
            errs.invalid(
                format!("{p}.activeDeadlineSeconds"),
                a,
                "must be between 1 and 2147483647, inclusive",
            );
        }
    }
    if let Some(ns) = &s.node_selector {
        validate_labels(ns, &format!("{p}.nodeSelector"), errs);
    }
    if let Some(n) = &s.node_name {
        if let Some(e) = dns1123_subdomain_error(n) {
            errs.invalid_str(format!("{p}.nodeName"), n, &e);
        }
    }
    if let Some(h) = &s.hostname {
        if let Some(e) = dns1123_label_error(h) {
            errs.invalid_str(format!("{p}.hostname"), h, &e);
        }
    }
    if let Some(sa) = &s.service_account_name {
        if let Some(e) = dns1123_subdomain_error(sa) {
            errs.invalid_str(format!("{p}.serviceAccountName"), sa, &e);
        }
    }
    for (i, t) in s.tolerations.iter().flatten().enumerate() {
        let tp = format!("{p}.tolerations[{i}]");
        one_of(errs, format!("{tp}.operator"), t.operator.as_deref(), &["Exists", "Equal"]);
        one_of(
            errs,
            format!("{tp}.effect"),
            t.effect.as_deref(),
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        );
        if t.operator.as_deref() == Some("Exists")
            && t.value.as_deref().is_some_and(|v| !v.is_empty())
        {
            errs.invalid_str(
                format!("{tp}.operator"),
                "Exists",
                "value must be empty when `operator` is 'Exists'",
            );
        }
        if t.key.as_deref().is_none_or(str::is_empty) && t.operator.as_deref() != Some("Exists") {
            errs.invalid_str(
                format!("{tp}.operator"),
                t.operator.as_deref().unwrap_or("Equal"),
                "operator must be Exists when `key` is empty",
            );
        }
        if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
            errs.invalid(
                format!("{tp}.effect"),
                "",
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            );
        }
    }
    if let Some(sc) = &s.security_context {
        non_negative(errs, format!("{p}.securityContext.runAsUser"), sc.run_as_user);
        non_negative(errs, format!("{p}.securityContext.runAsGroup"), sc.run_as_group);
        non_negative(errs, format!("{p}.securityContext.fsGroup"), sc.fs_group);
    }
}

/// QoS class of a defaulted pod spec, as Kubernetes' `GetPodQOS` computes it: only positive
/// cpu and memory amounts count, summed over init and app containers; Guaranteed needs cpu and
/// memory limits on every container and requests equal to limits (compared as quantities, so
/// `1000m` equals `1`). The one computation: the node agent reads the pod's `status.qosClass`
/// (or [`pod_qos_class`]) rather than computing its own.
pub fn qos_class(s: &core::PodSpec) -> &'static str {
    use std::collections::BTreeMap;
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    let all = s.init_containers.iter().flatten().chain(&s.containers);
    for c in all {
        let r = c.resources.as_ref();
        let positive = |m: Option<
            &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                        res: &str| {
            m.and_then(|m| m.get(res))
                .and_then(|q| Quantity::parse(&q.0).ok())
                .map(|q| q.0)
                .filter(|q| *q > 0)
        };
        let mut limits_found = 0;
        for res in ["cpu", "memory"] {
            // A limit without a request is also the request, as defaulting makes it.
            let request = r.and_then(|r| r.requests.as_ref()).filter(|m| m.contains_key(res));
            let request = request.or(r.and_then(|r| r.limits.as_ref()));
            if let Some(q) = positive(request, res) {
                *requests.entry(res).or_default() += q;
            }
            if let Some(q) = positive(r.and_then(|r| r.limits.as_ref()), res) {
                *limits.entry(res).or_default() += q;
                limits_found += 1;
            }
        }
        guaranteed &= limits_found == 2;
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    guaranteed &= requests.iter().all(|(res, q)| limits.get(res) == Some(q));
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A pod's QoS class: its `status.qosClass` (set when the API server admitted it), else
/// computed from its spec.
pub fn pod_qos_class(pod: &serde_json::Value) -> &'static str {
    match pod.pointer("/status/qosClass").and_then(serde_json::Value::as_str) {
        Some("Guaranteed") => "Guaranteed",
        Some("Burstable") => "Burstable",
        Some("BestEffort") => "BestEffort",
        _ => pod
            .get("spec")
            .and_then(|s| serde_json::from_value::<core::PodSpec>(s.clone()).ok())
            .map_or("BestEffort", |s| qos_class(&s)),
    }
}

impl Kind for core::Pod {
    fn set_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_pod_spec(spec);
        let qos = qos_class(spec);
        let status = self.status.get_or_insert_with(Default::default);
        status.phase.get_or_insert_with(|| "Pending".into());
        status.qos_class.get_or_insert_with(|| qos.into());
    }
    fn validate(&self, errs: &mut Errors) {
        match &self.spec {
            Some(s) => validate_pod_spec(errs, "spec", s),
            None => errs.required("spec", ""),
        }
        if let Some(p) = self.status.as_ref().and_then(|s| s.phase.as_deref()) {
            one_of(
                errs,
                "status.phase".into(),
                Some(p),
                &["Pending", "Running", "Succeeded", "Failed", "Unknown"],
            );
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        // Only images, activeDeadlineSeconds, tolerations, grace period and a first nodeName
        // (binding) may change on a pod: blank them out and compare the rest.
        let strip = |s: &core::PodSpec| {
            let mut s = s.clone();
            for c in s.containers.iter_mut().chain(s.init_containers.iter_mut().flatten()) {
                c.image = None;
            }
            s.active_deadline_seconds = None;
            s.tolerations = None;
            s.termination_grace_period_seconds = None;
            s.scheduling_gates = None;
            s
        };
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        if old.node_name.as_deref().is_some_and(|n| !n.is_empty()) && new.node_name != old.node_name
        {
            errs.forbidden("spec.nodeName", "may not be changed once the pod is bound");
        }
        let (mut a, mut b) = (strip(new), strip(old));
        a.node_name = None;
        b.node_name = None;
        if a != b {
            errs.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds`");
        }
    }
}

// ---- workloads ----

/// The template's labels must be selected by the selector, and the selector must not be empty.
fn validate_selector_and_template(
    errs: &mut Errors,
    selector: Option<&K8sSelector>,
    template: &core::PodTemplateSpec,
    restart_policies: &[&str],
) {
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    if let Some(sel) = selector {
        match LabelSelector::from_k8s(sel) {
            Ok(s) if s.requirements.is_empty() => {
                errs.invalid("spec.selector", "{}", "empty selector is invalid for this kind")
            }
            Ok(s) if !s.matches(&labels) => errs.invalid(
                "spec.template.metadata.labels",
                format!("{labels:?}"),
                "`selector` does not match template `labels`",
            ),
            Ok(_) => {}
            Err(e) => errs.invalid("spec.selector", "", &e),
        }
    }
    validate_labels(&labels, "spec.template.metadata.labels", errs);
    match &template.spec {
        Some(s) => {
            validate_pod_spec(errs, "spec.template.spec", s);
            if let Some(rp) = s.restart_policy.as_deref() {
                if !restart_policies.contains(&rp) {
                    errs.not_supported("spec.template.spec.restartPolicy", rp, restart_policies);
                }
            }
        }
        None => errs.required("spec.template.spec", ""),
    }
}

fn default_template(t: &mut core::PodTemplateSpec) {
    default_pod_spec(t.spec.get_or_insert_with(Default::default));
}

fn int_or_percent(errs: &mut Errors, field: &str, v: Option<&IntOrString>) -> Option<i64> {
    match v? {
        IntOrString::Int(i) => {
            if *i < 0 {
                errs.invalid(field, i, "must be greater than or equal to 0");
            }
            Some(*i as i64)
        }
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(n) if (0..=100).contains(&n) => Some(n),
            Some(n) => {
                errs.invalid_str(field, s, "must not be greater than 100%");
                Some(n)
            }
            None => {
                errs.invalid_str(field, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%')");
                None
            }
        },
    }
}

fn selector_immutable(errs: &mut Errors, new: &K8sSelector, old: &K8sSelector) {
    if new != old {
        errs.invalid("spec.selector", "", "field is immutable");
    }
}

impl Kind for apps::Deployment {
    fn set_defaults(&mut self) {
        let s = self.spec.get_or_insert_with(Default::default);
        s.replicas.get_or_insert(1);
        s.revision_history_limit.get_or_insert(10);
        s.progress_deadline_seconds.get_or_insert(600);
        let st = s.strategy.get_or_insert_with(Default::default);
        let ty = st.type_.get_or_insert_with(|| "RollingUpdate".into());
        if ty == "RollingUpdate" {
            let ru = st.rolling_update.get_or_insert_with(Default::default);
            ru.max_surge.get_or_insert(IntOrString::String("25%".into()));
            ru.max_unavailable.get_or_insert(IntOrString::String("25%".into()));
        }
        default_template(&mut s.template);
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        non_negative(errs, "spec.replicas", s.replicas);
        non_negative(errs, "spec.revisionHistoryLimit", s.revision_history_limit);
        non_negative(errs, "spec.minReadySeconds", s.min_ready_seconds);
        if let (Some(p), m) = (s.progress_deadline_seconds, s.min_ready_seconds.unwrap_or(0)) {
            if p <= m {
                errs.invalid(
                    "spec.progressDeadlineSeconds",
                    p,
                    "must be greater than minReadySeconds",
                );
            }
        }
        if let Some(st) = &s.strategy {
            one_of(
                errs,
                "spec.strategy.type".into(),
                st.type_.as_deref(),
                &["RollingUpdate", "Recreate"],
            );
            if st.type_.as_deref() == Some("Recreate") && st.rolling_update.is_some() {
                errs.forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
            if let Some(ru) = &st.rolling_update {
                let surge = int_or_percent(
                    errs,
                    "spec.strategy.rollingUpdate.maxSurge",
                    ru.max_surge.as_ref(),
                );
                let unavail = int_or_percent(
                    errs,
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    ru.max_unavailable.as_ref(),
                );
                if surge == Some(0) && unavail == Some(0) {
                    errs.invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        0,
                        "may not be 0 when `maxSurge` is 0",
                    );
                }
            }
        }
        validate_selector_and_template(errs, Some(&s.selector), &s.template, &["Always"]);
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(errs, &n.selector, &o.selector);
        }
    }
}

impl Kind for apps::ReplicaSet {
    fn set_defaults(&mut self) {
        let s = self.spec.get_or_insert_with(Default::default);
        s.replicas.get_or_insert(1);
        if let Some(t) = &mut s.template {
            default_template(t);
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        non_negative(errs, "spec.replicas", s.replicas);
        non_negative(errs, "spec.minReadySeconds", s.min_ready_seconds);
        match &s.template {
            Some(t) => validate_selector_and_template(errs, Some(&s.selector), t, &["Always"]),
            None => errs.required("spec.template", ""),
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(errs, &n.selector, &o.selector);
        }
    }
}

impl Kind for apps::DaemonSet {
    fn set_defaults(&mut self) {
        let s = self.spec.get_or_insert_with(Default::default);
        s.revision_history_limit.get_or_insert(10);
        let us = s.update_strategy.get_or_insert_with(Default::default);
        if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            let ru = us.rolling_update.get_or_insert_with(Default::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        default_template(&mut s.template);
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        if let Some(us) = &s.update_strategy {
            one_of(
                errs,
                "spec.updateStrategy.type".into(),
                us.type_.as_deref(),
                &["RollingUpdate", "OnDelete"],
            );
            if let Some(ru) = &us.rolling_update {
                int_or_percent(
                    errs,
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                    ru.max_unavailable.as_ref(),
                );
                int_or_percent(
                    errs,
                    "spec.updateStrategy.rollingUpdate.maxSurge",
                    ru.max_surge.as_ref(),
                );
            }
        }
        validate_selector_and_template(errs, Some(&s.selector), &s.template, &["Always"]);
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(errs, &n.selector, &o.selector);
        }
    }
}

impl Kind for apps::StatefulSet {
    fn set_defaults(&mut self) {
        let s = self.spec.get_or_insert_with(Default::default);
        s.replicas.get_or_insert(1);
        s.revision_history_limit.get_or_insert(10);
        s.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
        let us = s.update_strategy.get_or_insert_with(Default::default);
        if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            us.rolling_update.get_or_insert_with(Default::default).partition.get_or_insert(0);
        }
        default_template(&mut s.template);
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        non_negative(errs, "spec.replicas", s.replicas);
        one_of(
            errs,
            "spec.podManagementPolicy".into(),
            s.pod_management_policy.as_deref(),
            &["OrderedReady", "Parallel"],
        );
        if let Some(us) = &s.update_strategy {
            one_of(
                errs,
                "spec.updateStrategy.type".into(),
                us.type_.as_deref(),
                &["RollingUpdate", "OnDelete"],
            );
        }
        if let Some(n) = &s.service_name {
            if !n.is_empty() {
                if let Some(e) = dns1035_label_error(n) {
                    errs.invalid_str("spec.serviceName", n, &e);
                }
            }
        }
        validate_selector_and_template(errs, Some(&s.selector), &s.template, &["Always"]);
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let (Some(n), Some(o)) = (&self.spec, &old.spec) else { return };
        let mut a = n.clone();
        // Kubernetes lets these change on a StatefulSet; everything else is fixed.
        a.replicas = o.replicas;
        a.template = o.template.clone();
        a.update_strategy = o.update_strategy.clone();
        a.min_ready_seconds = o.min_ready_seconds;
        a.persistent_volume_claim_retention_policy =
            o.persistent_volume_claim_retention_policy.clone();
        a.ordinals = o.ordinals.clone();
        a.revision_history_limit = o.revision_history_limit;
        if &a != o {
            errs.forbidden("spec", "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden");
        }
    }
}

/// A revision's `data` is the template it records; only its number may change (a rollback
/// makes an old revision the newest), as in Kubernetes' ValidateControllerRevisionUpdate.
impl Kind for apps::ControllerRevision {
    fn validate(&self, errs: &mut Errors) {
        non_negative(errs, "revision", Some(self.revision));
        if self.data.as_ref().is_none_or(|d| d.0.is_null()) {
            errs.required("data", "");
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.data != old.data {
            errs.invalid("data", "", "field is immutable");
        }
    }
}

impl Kind for batch::Job {
    fn set_defaults(&mut self) {
        let s = self.spec.get_or_insert_with(Default::default);
        if s.completions.is_none() && s.parallelism.is_none() {
            s.completions = Some(1);
            s.parallelism = Some(1);
        }
        s.parallelism.get_or_insert(1);
        s.backoff_limit.get_or_insert(6);
        s.completion_mode.get_or_insert_with(|| "NonIndexed".into());
        s.suspend.get_or_insert(false);
        s.manual_selector.get_or_insert(false);
        default_template(&mut s.template);
        // Jobs select their pods by their own uid unless the user picked a selector (the
        // server assigns the uid before admission).
        if s.manual_selector != Some(true) {
            if let Some(uid) = self.metadata.uid.clone() {
                let name = self.metadata.name.clone().unwrap_or_default();
                let key = "batch.kubernetes.io/controller-uid".to_string();
                s.selector.get_or_insert_with(|| K8sSelector {
                    match_labels: Some([(key.clone(), uid.clone())].into()),
                    match_expressions: None,
                });
                let labels = s
                    .template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(BTreeMap::new);
                labels.entry(key).or_insert(uid);
                labels.entry("batch.kubernetes.io/job-name".into()).or_insert(name);
            }
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        non_negative(errs, "spec.parallelism", s.parallelism);
        non_negative(errs, "spec.completions", s.completions);
        non_negative(errs, "spec.backoffLimit", s.backoff_limit);
        non_negative(errs, "spec.ttlSecondsAfterFinished", s.ttl_seconds_after_finished);
        if let Some(a) = s.active_deadline_seconds {
            if a < 1 {
                errs.invalid("spec.activeDeadlineSeconds", a, "must be greater than 0");
            }
        }
        one_of(
            errs,
            "spec.completionMode".into(),
            s.completion_mode.as_deref(),
            &["NonIndexed", "Indexed"],
        );
        if s.completion_mode.as_deref() == Some("Indexed") && s.completions.is_none() {
            errs.required("spec.completions", "when completion mode is Indexed");
        }
        validate_selector_and_template(
            errs,
            s.selector.as_ref(),
            &s.template,
            &["OnFailure", "Never"],
        );
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let (Some(n), Some(o)) = (&self.spec, &old.spec) else { return };
        if n.selector != o.selector {
            errs.invalid("spec.selector", "", "field is immutable");
        }
        if n.completions != o.completions {
            errs.invalid("spec.completions", n.completions.unwrap_or(0), "field is immutable");
        }
        if n.template != o.template && o.suspend != Some(true) {
            errs.invalid("spec.template", "", "field is immutable");
        }
    }
}

/// Five space-separated fields (or a `@daily`-style macro); the CronJob controller parses it
/// fully.
fn cron_error(s: &str) -> Option<String> {
    let s = s.trim();
    if s.starts_with('@') {
        if let Some(d) = s.strip_prefix("@every ") {
            return match crate::quantity::parse_go_duration(d.trim()) {
                Some(d) if d.is_positive() => None,
                Some(_) => Some(format!("{s}: the interval must be positive")),
                None => Some(format!(
                    "failed to parse duration {}: a Go duration such as 90s, 5m or 1h30m, at \
                     most 2562047h",
                    d.trim()
                )),
            };
        }
        let ok = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]
            .contains(&s);
        return (!ok).then(|| format!("unknown descriptor {s}"));
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    let fields = match fields.first() {
        Some(f) if f.starts_with("TZ=") || f.starts_with("CRON_TZ=") => {
            return Some("timezone is not supported in the schedule; use spec.timeZone".into())
        }
        _ => fields,
    };
    if fields.len() != 5 {
        return Some(format!("expected exactly 5 fields, found {}: {s}", fields.len()));
    }
    for f in fields {
        if !f.chars().all(|c| c.is_ascii_alphanumeric() || "*/,-?".contains(c)) {
            return Some(format!("invalid field {f:?}"));
        }
    }
    None
}

impl Kind for batch::CronJob {
    fn set_defaults(&mut self) {
        let s = self.spec.get_or_insert_with(Default::default);
        s.concurrency_policy.get_or_insert_with(|| "Allow".into());
        s.suspend.get_or_insert(false);
        s.successful_jobs_history_limit.get_or_insert(3);
        s.failed_jobs_history_limit.get_or_insert(1);
        if let Some(js) = &mut s.job_template.spec {
            js.backoff_limit.get_or_insert(6);
            default_template(&mut js.template);
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        if s.schedule.is_empty() {
            errs.required("spec.schedule", "");
        } else if let Some(e) = cron_error(&s.schedule) {
            errs.invalid_str("spec.schedule", &s.schedule, &e);
        }
        if let Some(z) = &s.time_zone {
            if z.parse::<chrono_tz::Tz>().is_err() {
                errs.invalid_str("spec.timeZone", z, &format!("unknown time zone {z}"));
            }
        }
        one_of(
            errs,
            "spec.concurrencyPolicy".into(),
            s.concurrency_policy.as_deref(),
            &["Allow", "Forbid", "Replace"],
        );
        non_negative(errs, "spec.startingDeadlineSeconds", s.starting_deadline_seconds);
        non_negative(errs, "spec.successfulJobsHistoryLimit", s.successful_jobs_history_limit);
        non_negative(errs, "spec.failedJobsHistoryLimit", s.failed_jobs_history_limit);
        match &s.job_template.spec {
            Some(js) => {
                let mut sub = Errors::default();
                validate_selector_and_template(
                    &mut sub,
                    js.selector.as_ref(),
                    &js.template,
                    &["OnFailure", "Never"],
                );
                for mut e in sub.0 {
                    e.field = e.field.replacen("spec.", "spec.jobTemplate.spec.", 1);
                    errs.0.push(e);
                }
            }
            None => errs.required("spec.jobTemplate.spec", ""),
        }
    }
}

// ---- core ----

impl Kind for core::Namespace {
    fn set_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.finalizers.is_none() {
            spec.finalizers = Some(vec!["kubernetes".into()]);
        }
        self.status
            .get_or_insert_with(Default::default)
            .phase
            .get_or_insert_with(|| "Active".into());
    }
    fn validate(&self, errs: &mut Errors) {
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        one_of(errs, "status.phase".into(), phase, &["Active", "Terminating"]);
    }
}

impl Kind for core::Node {
    fn validate(&self, errs: &mut Errors) {
        if let Some(cidr) = self.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
            if cidr_error(cidr).is_some() {
                errs.invalid_str("spec.podCIDR", cidr, "must be a valid CIDR (e.g. 10.244.1.0/24)");
            }
        }
        for (i, t) in self.spec.iter().flat_map(|s| s.taints.iter().flatten()).enumerate() {
            if let Some(e) = label_key_error(&t.key) {
                errs.invalid_str(format!("spec.taints[{i}].key"), &t.key, &e);
            }
            one_of(
                errs,
                format!("spec.taints[{i}].effect"),
                Some(&t.effect),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            );
        }
    }
}

pub fn cidr_error(s: &str) -> Option<String> {
    let Some((ip, len)) = s.split_once('/') else { return Some("missing prefix length".into()) };
    let Ok(ip) = ip.parse::<IpAddr>() else { return Some("bad address".into()) };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(l) if l <= max => None,
        _ => Some("bad prefix length".into()),
    }
}

impl Kind for core::Service {
    fn set_defaults(&mut self) {
        let s = self.spec.get_or_insert_with(Default::default);
        s.type_.get_or_insert_with(|| "ClusterIP".into());
        s.session_affinity.get_or_insert_with(|| "None".into());
        if s.session_affinity.as_deref() == Some("ClientIP") {
            let cfg = s.session_affinity_config.get_or_insert_with(Default::default);
            cfg.client_ip.get_or_insert_with(Default::default).timeout_seconds.get_or_insert(10800);
        }
        if s.type_.as_deref() != Some("ExternalName") {
            s.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
        }
        if matches!(s.type_.as_deref(), Some("NodePort") | Some("LoadBalancer")) {
            s.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
        }
        for p in s.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if p.target_port.is_none() {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return errs.required("spec", "") };
        let ty = s.type_.as_deref().unwrap_or("ClusterIP");
        one_of(
            errs,
            "spec.type".into(),
            Some(ty),
            &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        );
        one_of(
            errs,
            "spec.sessionAffinity".into(),
            s.session_affinity.as_deref(),
            &["None", "ClientIP"],
        );
        one_of(
            errs,
            "spec.internalTrafficPolicy".into(),
            s.internal_traffic_policy.as_deref(),
            &["Cluster", "Local"],
        );
        one_of(
            errs,
            "spec.externalTrafficPolicy".into(),
            s.external_traffic_policy.as_deref(),
            &["Cluster", "Local"],
        );
        if let Some(t) = s
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
        {
            if !(1..=86400).contains(&t) {
                errs.invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                );
            }
        }
        let headless = s.cluster_ip.as_deref() == Some("None");
        if let Some(ip) = s.cluster_ip.as_deref() {
            if !ip.is_empty() && !headless && ip.parse::<IpAddr>().is_err() {
                errs.invalid_str(
                    "spec.clusterIP",
                    ip,
                    "must be empty, 'None', or a valid IP address",
                );
            }
        }
        if ty == "ExternalName" {
            match s.external_name.as_deref() {
                Some(n) if dns1123_subdomain_error(n).is_none() => {}
                Some(n) => errs.invalid_str("spec.externalName", n, "must be a valid DNS name"),
                None => errs.required("spec.externalName", ""),
            }
        }
        let ports = s.ports.as_deref().unwrap_or(&[]);
        if ports.is_empty() && !headless && ty != "ExternalName" {
            errs.required("spec.ports", "");
        }
        let (mut names, mut keys) = (HashSet::new(), HashSet::new());
        for (i, p) in ports.iter().enumerate() {
            let pp = format!("spec.ports[{i}]");
            match p.name.as_deref() {
                None | Some("") if ports.len() > 1 => {
                    errs.required(format!("{pp}.name"), "when more than one port is defined")
                }
                None | Some("") => {}
                Some(n) => {
                    // A Service's port names are DNS labels (`80-8080` is one, as kubectl's
                    // `create service` names them); IANA service names are for containers.
                    if let Some(e) = dns1123_label_error(n) {
                        errs.invalid_str(format!("{pp}.name"), n, &e);
                    } else if !names.insert(n) {
                        errs.duplicate(format!("{pp}.name"), n);
                    }
                }
            }
            if !(1..=65535).contains(&p.port) {
                errs.invalid(
                    format!("{pp}.port"),
                    p.port,
                    "must be between 1 and 65535, inclusive",
                );
            }
            one_of(errs, format!("{pp}.protocol"), p.protocol.as_deref(), PROTOCOLS);
            if !keys.insert((p.port, p.protocol.clone())) {
                errs.duplicate(
                    pp.clone(),
                    &format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                );
            }
            if let Some(t) = &p.target_port {
                validate_port_ref(errs, format!("{pp}.targetPort"), t);
            }
            if let Some(np) = p.node_port {
                if ty == "ClusterIP" && np != 0 {
                    errs.forbidden(
                        format!("{pp}.nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    );
                } else if !(0..=65535).contains(&np) {
                    errs.invalid(
                        format!("{pp}.nodePort"),
                        np,
                        "must be between 1 and 65535, inclusive",
                    );
                }
            }
        }
        if let Some(sel) = &s.selector {
            validate_labels(sel, "spec.selector", errs);
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        let (Some(n), Some(o)) = (&self.spec, &old.spec) else { return };
        let old_ip = o.cluster_ip.as_deref().unwrap_or("");
        if !old_ip.is_empty()
            && n.cluster_ip.as_deref().unwrap_or("") != old_ip
            && n.type_.as_deref() != Some("ExternalName")
        {
            errs.invalid_str(
                "spec.clusterIP",
                n.cluster_ip.as_deref().unwrap_or(""),
                "field is immutable",
            );
        }
    }
}

fn validate_config_keys<'a>(
    errs: &mut Errors,
    field: &str,
    keys: impl Iterator<Item = &'a String>,
    seen: &mut HashSet<&'a str>,
) {
    for k in keys {
        if let Some(e) = config_key_error(k) {
            errs.invalid_str(format!("{field}[{k}]"), k, &e);
        } else if !seen.insert(k) {
            errs.duplicate(format!("{field}[{k}]"), k);
        }
    }
}

/// ConfigMaps and Secrets: at most this much data, as in Kubernetes.
const MAX_CONFIG_BYTES: usize = 1 << 20;

impl Kind for core::ConfigMap {
    fn validate(&self, errs: &mut Errors) {
        let mut seen = HashSet::new();
        validate_config_keys(errs, "data", self.data.iter().flatten().map(|(k, _)| k), &mut seen);
        validate_config_keys(
            errs,
            "binaryData",
            self.binary_data.iter().flatten().map(|(k, _)| k),
            &mut seen,
        );
        let size: usize = self.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + self.binary_data.iter().flatten().map(|(k, v)| k.len() + v.0.len()).sum::<usize>();
        if size > MAX_CONFIG_BYTES {
            errs.push(
                "data",
                crate::error::FieldErrorType::TooLong,
                format!("must have at most {MAX_CONFIG_BYTES} bytes"),
            );
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if old.immutable == Some(true)
            && (self.data != old.data
                || self.binary_data != old.binary_data
                || self.immutable != old.immutable)
        {
            errs.forbidden("data", "field is immutable when `immutable` is set");
        }
    }
}

impl Kind for core::Secret {
    fn set_defaults(&mut self) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        // stringData is write-only: merged into data on write, as Kubernetes does.
        if let Some(sd) = self.string_data.take() {
            let data = self.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in sd {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let mut seen = HashSet::new();
        validate_config_keys(errs, "data", self.data.iter().flatten().map(|(k, _)| k), &mut seen);
        let size: usize = self.data.iter().flatten().map(|(k, v)| k.len() + v.0.len()).sum();
        if size > MAX_CONFIG_BYTES {
            errs.push(
                "data",
                crate::error::FieldErrorType::TooLong,
                format!("must have at most {MAX_CONFIG_BYTES} bytes"),
            );
        }
        let data = self.data.clone().unwrap_or_default();
        match self.type_.as_deref() {
            Some("kubernetes.io/dockerconfigjson") => match data.get(".dockerconfigjson") {
                None => errs.required("data[.dockerconfigjson]", ""),
                Some(b) => {
                    if serde_json::from_slice::<serde_json::Value>(&b.0).is_err() {
                        errs.invalid(
                            "data[.dockerconfigjson]",
                            "<secret contents redacted>",
                            "must be valid JSON",
                        );
                    }
                }
            },
            Some("kubernetes.io/tls") => {
                for k in ["tls.crt", "tls.key"] {
                    if !data.contains_key(k) {
                        errs.required(format!("data[{k}]"), "");
                    }
                }
            }
            _ => {}
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.type_ != old.type_ {
            errs.invalid_str("type", self.type_.as_deref().unwrap_or(""), "field is immutable");
        }
        if old.immutable == Some(true) && (self.data != old.data || self.immutable != old.immutable)
        {
            errs.forbidden("data", "field is immutable when `immutable` is set");
        }
    }
}

impl Kind for core::ServiceAccount {}

impl Kind for core::Endpoints {
    fn validate(&self, errs: &mut Errors) {
        for (i, s) in self.subsets.iter().flatten().enumerate() {
            for (field, list) in
                [("addresses", &s.addresses), ("notReadyAddresses", &s.not_ready_addresses)]
            {
                for (j, a) in list.iter().flatten().enumerate() {
                    if a.ip.parse::<IpAddr>().is_err() {
                        errs.invalid_str(
                            format!("subsets[{i}].{field}[{j}].ip"),
                            &a.ip,
                            "must be a valid IP address",
                        );
                    }
                }
            }
            for (j, p) in s.ports.iter().flatten().enumerate() {
                if !(1..=65535).contains(&p.port) {
                    errs.invalid(
                        format!("subsets[{i}].ports[{j}].port"),
                        p.port,
                        "must be between 1 and 65535, inclusive",
                    );
                }
                one_of(
                    errs,
                    format!("subsets[{i}].ports[{j}].protocol"),
                    p.protocol.as_deref(),
                    PROTOCOLS,
                );
            }
        }
    }
}

impl Kind for discovery::EndpointSlice {
    fn validate(&self, errs: &mut Errors) {
        one_of(errs, "addressType".into(), Some(&self.address_type), &["IPv4", "IPv6", "FQDN"]);
    }
}

impl Kind for core::Event {
    fn validate(&self, errs: &mut Errors) {
        if self.involved_object.kind.as_deref().unwrap_or("").is_empty() {
            errs.required("involvedObject.kind", "");
        }
        one_of(errs, "type".into(), self.type_.as_deref(), &["Normal", "Warning"]);
    }
}

impl Kind for coord::Lease {
    fn validate(&self, errs: &mut Errors) {
        if let Some(s) = &self.spec {
            positive(errs, "spec.leaseDurationSeconds", s.lease_duration_seconds);
            non_negative(errs, "spec.leaseTransitions", s.lease_transitions);
        }
    }
}

// ---- policy ----

impl Kind for policy::PodDisruptionBudget {
    /// Kubernetes' ValidatePodDisruptionBudgetSpec.
    fn validate(&self, errs: &mut Errors) {
        let Some(s) = &self.spec else { return };
        if s.min_available.is_some() && s.max_unavailable.is_some() {
            errs.invalid("spec", "", "minAvailable and maxUnavailable cannot be both set");
        }
        int_or_percent(errs, "spec.minAvailable", s.min_available.as_ref());
        int_or_percent(errs, "spec.maxUnavailable", s.max_unavailable.as_ref());
        if let Some(sel) = &s.selector {
            if let Err(e) = LabelSelector::from_k8s(sel) {
                errs.invalid("spec.selector", "", &e);
            }
        }
        if let Some(p) = s.unhealthy_pod_eviction_policy.as_deref() {
            let allowed = ["IfHealthyBudget", "AlwaysAllow"];
            if !allowed.contains(&p) {
                errs.not_supported("spec.unhealthyPodEvictionPolicy", p, &allowed);
            }
        }
    }
}

// ---- rbac.authorization.k8s.io ----

/// Kubernetes' `ValidatePolicyRule`: resource rules name groups and resources, non-resource
/// rules only URLs (and only in ClusterRoles).
fn validate_rules(errs: &mut Errors, rules: Option<&Vec<rbac::PolicyRule>>, namespaced: bool) {
    for (i, r) in rules.into_iter().flatten().enumerate() {
        let p = format!("rules[{i}]");
        if r.verbs.is_empty() {
            errs.required(format!("{p}.verbs"), "verbs must contain at least one value");
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        let groups = r.api_groups.as_deref().unwrap_or_default();
        let resources = r.resources.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if namespaced {
                errs.invalid_str(
                    format!("{p}.nonResourceURLs"),
                    &urls.join(", "),
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if !groups.is_empty() || !resources.is_empty() {
                errs.invalid_str(
                    format!("{p}.nonResourceURLs"),
                    &urls.join(", "),
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if groups.is_empty() {
            errs.required(
                format!("{p}.apiGroups"),
                "resource rules must supply at least one api group",
            );
        }
        if resources.is_empty() {
            errs.required(
                format!("{p}.resources"),
                "resource rules must supply at least one resource",
            );
        }
    }
}

fn validate_role_ref(errs: &mut Errors, r: &rbac::RoleRef, kinds: &[&str]) {
    if r.api_group != "rbac.authorization.k8s.io" {
        errs.not_supported("roleRef.apiGroup", &r.api_group, &["rbac.authorization.k8s.io"]);
    }
    if !kinds.contains(&r.kind.as_str()) {
        errs.not_supported("roleRef.kind", &r.kind, kinds);
    }
    if r.name.is_empty() {
        errs.required("roleRef.name", "");
    } else if let Some(e) = path_segment_error(&r.name) {
        errs.invalid_str("roleRef.name", &r.name, &e);
    }
}

fn validate_subjects(errs: &mut Errors, subjects: Option<&Vec<rbac::Subject>>, cluster: bool) {
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let p = format!("subjects[{i}]");
        if s.name.is_empty() {
            errs.required(format!("{p}.name"), "");
        }
        let group = s.api_group.as_deref().unwrap_or("");
        match s.kind.as_str() {
            "ServiceAccount" => {
                if let Some(e) =
                    (!s.name.is_empty()).then(|| dns1123_subdomain_error(&s.name)).flatten()
                {
                    errs.invalid_str(format!("{p}.name"), &s.name, &e);
                }
                if !group.is_empty() {
                    errs.not_supported(format!("{p}.apiGroup"), group, &[""]);
                }
                if cluster && s.namespace.as_deref().unwrap_or("").is_empty() {
                    errs.required(format!("{p}.namespace"), "");
                }
            }
            "User" | "Group" => {
                if group != "rbac.authorization.k8s.io" {
                    errs.not_supported(
                        format!("{p}.apiGroup"),
                        group,
                        &["rbac.authorization.k8s.io"],
                    );
                }
            }
            k => errs.not_supported(format!("{p}.kind"), k, &["ServiceAccount", "User", "Group"]),
        }
    }
}

impl Kind for rbac::Role {
    fn validate(&self, errs: &mut Errors) {
        validate_rules(errs, self.rules.as_ref(), true);
    }
}

impl Kind for rbac::ClusterRole {
    fn validate(&self, errs: &mut Errors) {
        validate_rules(errs, self.rules.as_ref(), false);
        for (i, s) in self
            .aggregation_rule
            .iter()
            .flat_map(|a| a.cluster_role_selectors.iter().flatten())
            .enumerate()
        {
            if let Err(e) = LabelSelector::from_k8s(s) {
                errs.invalid_str(format!("aggregationRule.clusterRoleSelectors[{i}]"), "", &e);
            }
        }
    }
}

/// Subjects of the RBAC `rbac.authorization.k8s.io` group default it, as Kubernetes does.
fn default_subjects(subjects: &mut Option<Vec<rbac::Subject>>) {
    for s in subjects.iter_mut().flatten() {
        if s.api_group.is_none() && matches!(s.kind.as_str(), "User" | "Group") {
            s.api_group = Some("rbac.authorization.k8s.io".into());
        }
    }
}

impl Kind for rbac::RoleBinding {
    fn set_defaults(&mut self) {
        default_subjects(&mut self.subjects);
    }
    fn validate(&self, errs: &mut Errors) {
        validate_role_ref(errs, &self.role_ref, &["Role", "ClusterRole"]);
        validate_subjects(errs, self.subjects.as_ref(), false);
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.role_ref != old.role_ref {
            errs.invalid_str("roleRef", &self.role_ref.name, "cannot change roleRef");
        }
    }
}

impl Kind for rbac::ClusterRoleBinding {
    fn set_defaults(&mut self) {
        default_subjects(&mut self.subjects);
    }
    fn validate(&self, errs: &mut Errors) {
        validate_role_ref(errs, &self.role_ref, &["ClusterRole"]);
        validate_subjects(errs, self.subjects.as_ref(), true);
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.role_ref != old.role_ref {
            errs.invalid_str("roleRef", &self.role_ref.name, "cannot change roleRef");
        }
    }
}

// ---- certificates.k8s.io ----

const KEY_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

impl Kind for certificates::CertificateSigningRequest {
    fn validate(&self, errs: &mut Errors) {
        let s = &self.spec;
        let pem = String::from_utf8_lossy(&s.request.0);
        if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
            errs.invalid_str(
                "spec.request",
                "<request>",
                "PEM block type must be CERTIFICATE REQUEST",
            );
        }
        if s.signer_name.is_empty() {
            errs.required("spec.signerName", "");
        } else if !s.signer_name.contains('/') {
            errs.invalid_str(
                "spec.signerName",
                &s.signer_name,
                "must be a fully qualified domain and path of the form 'example.com/signer-name'",
            );
        }
        for (i, u) in s.usages.iter().flatten().enumerate() {
            if !KEY_USAGES.contains(&u.as_str()) {
                errs.not_supported(format!("spec.usages[{i}]"), u, KEY_USAGES);
            }
        }
        if let Some(e) = s.expiration_seconds {
            if e < 600 {
                errs.invalid(
                    "spec.expirationSeconds",
                    e,
                    "may not specify a duration less than 600 seconds (10 minutes)",
                );
            }
        }
    }
    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.spec != old.spec {
            errs.forbidden("spec", "field is immutable");
        }
        let conds =
            |c: &Self| c.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let (new, before) = (conds(self), conds(old));
        let has = |cs: &[certificates::CertificateSigningRequestCondition], t: &str| {
            cs.iter().any(|c| c.type_ == t)
        };
        for (i, c) in new.iter().enumerate() {
            let path = format!("status.conditions[{i}]");
            if new[..i].iter().any(|d| d.type_ == c.type_) {
                errs.invalid_str(format!("{path}.type"), &c.type_, "duplicate condition type");
            }
            if matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed") && c.status != "True" {
                errs.not_supported(format!("{path}.status"), &c.status, &["True"]);
            }
        }
        if has(&new, "Approved") && has(&new, "Denied") {
            errs.invalid_str(
                "status.conditions",
                "Approved",
                "Approved and Denied conditions are mutually exclusive",
            );
        }
        for t in ["Approved", "Denied"] {
            if has(&before, t) && !has(&new, t) {
                errs.forbidden(
                    "status.conditions",
                    format!("updates may not remove the {t} condition"),
                );
            }
        }
        let cert = |c: &Self| c.status.as_ref().and_then(|s| s.certificate.clone());
        if let (Some(was), now) = (cert(old), cert(self)) {
            if !was.0.is_empty() && now.as_ref() != Some(&was) {
                errs.forbidden(
                    "status.certificate",
                    "updates may not modify existing certificate content",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{core, pod_qos_class, qos_class};
    use crate::resources::lookup;
    use serde_json::{json, Value};

    fn admit(resource: &str, v: Value) -> Result<Value, crate::error::ApiError> {
        let r = lookup(resource).unwrap();
        (r.admit)(&v, None, r).map(|a| a.object)
    }

    fn deployment(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}]}})
    }

    #[test]
    fn deployment_defaults_like_kubernetes() {
        let d = admit(
            "deploy",
            deployment(
                json!({"selector": {"matchLabels": {"app": "web"}}, "template": template()}),
            ),
        )
        .unwrap();
        let s = &d["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(s["revisionHistoryLimit"], 10);
        assert_eq!(s["progressDeadlineSeconds"], 600);
        assert_eq!(
            s["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let pod = &s["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["resources"]["requests"], json!({"cpu": "500m", "memory": "128Mi"}));
    }

    #[test]
    fn invalid_objects_name_their_fields() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "deploy",
                deployment(
                    json!({"selector": {"matchLabels": {"app": "other"}}, "template": template()}),
                ),
                "spec.template.metadata.labels",
            ),
            (
                "deploy",
                deployment(
                    json!({"replicas": -1, "selector": {"matchLabels": {"app": "web"}}, "template": template()}),
                ),
                "spec.replicas",
            ),
            (
                "deploy",
                deployment(json!({"selector": {}, "template": template()})),
                "spec.selector",
            ),
            (
                "deploy",
                deployment(
                    json!({"selector": {"matchLabels": {"app": "web"}}, "strategy": {"type": "Blue"}, "template": template()}),
                ),
                "spec.strategy.type",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c"}]}}),
                "spec.containers[0].image",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "P", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
                "metadata.name",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": "x"}]}}),
                "spec.restartPolicy",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}}),
                "spec.containers[0].resources.requests[cpu]",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"memory": "lots"}}}]}}),
                "spec.containers[0].resources.limits[memory]",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 70000}]}]}}),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "labels": {"a b": "c"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
                "metadata.labels",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x", "livenessProbe": {"periodSeconds": 5}}]}}),
                "spec.containers[0].livenessProbe",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x", "readinessProbe": {"grpc": {"port": 0}}}]}}),
                "spec.containers[0].readinessProbe.grpc.port",
            ),
            (
                "po",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]}}),
                "spec.containers[0].volumeMounts[0].name",
            ),
            (
                "svc",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}, {"port": 81}]}}),
                "spec.ports[0].name",
            ),
            (
                "svc",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}),
                "metadata.name",
            ),
            (
                "svc",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": {"type": "Magic", "ports": [{"port": 80}]}}),
                "spec.type",
            ),
            (
                "cm",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": {"a/b": "x"}}),
                "data[a/b]",
            ),
            (
                "cj",
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "default"}, "spec": {"schedule": "every minute", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}}),
                "spec.schedule",
            ),
            (
                "cj",
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "default"}, "spec": {"schedule": "0 * * * *", "timeZone": "Mars/Olympus", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}}),
                "spec.timeZone",
            ),
            (
                "jobs",
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "default", "uid": "u1"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
                "spec.template.spec.restartPolicy",
            ),
            (
                "ns",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}),
                "metadata.name",
            ),
        ];
        for (res, obj, field) in cases {
            let e = admit(res, obj).expect_err(field);
            assert!(e.causes.iter().any(|c| c.field == field), "{field}: {}", e.message);
        }
    }

    #[test]
    fn pod_update_rules() {
        let pods = lookup("po").unwrap();
        let pod = |image: &str, node: Option<&str>, rp: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": node, "restartPolicy": rp, "containers": [{"name": "c", "image": image}]}})
        };
        let old = (pods.admit)(&pod("a", None, "Always"), None, pods).unwrap().object;
        assert!((pods.admit)(&pod("b", Some("n1"), "Always"), Some(&old), pods).is_ok());
        let e = (pods.admit)(&pod("a", None, "Never"), Some(&old), pods).unwrap_err();
        assert_eq!(e.causes[0].field, "spec");
        let bound = (pods.admit)(&pod("a", Some("n1"), "Always"), None, pods).unwrap().object;
        assert!((pods.admit)(&pod("a", Some("n2"), "Always"), Some(&bound), pods).is_err());
    }

    #[test]
    fn service_and_secret_defaults() {
        let s = admit("svc", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        let sec = admit("secrets", json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"},
            "stringData": {"user": "admin"}})).unwrap();
        assert_eq!(sec["type"], "Opaque");
        assert_eq!(sec["data"]["user"], "YWRtaW4=");
        assert!(sec.get("stringData").is_none());
        let job = admit("jobs", json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "default", "uid": "u1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})).unwrap();
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"],
            "j"
        );
        let pod = admit("po", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
        assert_eq!(pod["status"], json!({"phase": "Pending", "qosClass": "BestEffort"}));
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }

    #[test]
    fn qos_compares_quantities_and_follows_kubernetes() {
        let pod = |resources: Value, init: Option<Value>| {
            let mut spec =
                json!({"containers": [{"name": "c", "image": "i", "resources": resources}]});
            if let Some(r) = init {
                spec["initContainers"] = json!([{"name": "i", "image": "i", "resources": r}]);
            }
            serde_json::from_value::<core::PodSpec>(spec).unwrap()
        };
        let rl = |req: Value, lim: Value| json!({"requests": req, "limits": lim});
        let g = json!({"cpu": "1", "memory": "32Mi"});
        assert_eq!(qos_class(&pod(rl(g.clone(), g.clone()), None)), "Guaranteed");
        // 1000m is 1: the node agent once said Burstable here and gave the process 999.
        let milli = json!({"cpu": "1000m", "memory": "33554432"});
        assert_eq!(qos_class(&pod(rl(milli, g.clone()), None)), "Guaranteed");
        assert_eq!(qos_class(&pod(json!({"limits": g.clone()}), None)), "Guaranteed");
        let less = json!({"cpu": "500m", "memory": "32Mi"});
        assert_eq!(qos_class(&pod(rl(less, g.clone()), None)), "Burstable");
        assert_eq!(qos_class(&pod(json!({"limits": {"cpu": "1"}}), None)), "Burstable");
        // Only cpu and memory count, and only positive amounts.
        let other = json!({"requests": {"ephemeral-storage": "1Gi", "cpu": "0"}});
        assert_eq!(qos_class(&pod(other, None)), "BestEffort");
        // An init container without limits makes the pod Burstable.
        let init = json!({"requests": {"cpu": "100m"}});
        assert_eq!(qos_class(&pod(rl(g.clone(), g.clone()), Some(init))), "Burstable");
        // The agent reads the admitted class; without one it computes the same.
        let v = json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "1000m", "memory": "32Mi"}, "limits": g}}]}});
        assert_eq!(pod_qos_class(&v), "Guaranteed");
        let mut admitted = v.clone();
        admitted["status"] = json!({"qosClass": "Burstable"});
        assert_eq!(pod_qos_class(&admitted), "Burstable");
    }
}
