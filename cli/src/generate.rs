//! kubectl's generators: `flotilla create configmap | secret generic | secret tls | namespace |
//! serviceaccount | deployment | job | service clusterip | service nodeport`, with kubectl's
//! flags, `--dry-run[=client|server|none]` and `-o yaml|json|name`.

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::path::Path;

use crate::{server_error, Ctx, Output};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DryRun {
    /// Print the object; send nothing.
    Client,
    /// Ask the server to check it; store nothing.
    Server,
    None,
}

#[derive(clap::Args)]
pub struct Common {
    /// `client` (the default with no value): print what would be sent; `server`: the server
    /// checks it and stores nothing.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client", require_equals = true)]
    pub dry_run: Option<DryRun>,
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
}

#[derive(clap::Args)]
pub struct Data {
    pub name: String,
    /// `key=value` (repeatable).
    #[arg(long)]
    pub from_literal: Vec<String>,
    /// `[key=]path`: a file (its name is the key) or a directory (each regular file in it).
    #[arg(long)]
    pub from_file: Vec<String>,
    /// A file of `KEY=value` lines.
    #[arg(long)]
    pub from_env_file: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Subcommand)]
pub enum SecretKind {
    /// An Opaque Secret (or `--type`) from literals and files.
    Generic {
        #[command(flatten)]
        data: Data,
        #[arg(long = "type")]
        kind: Option<String>,
    },
    /// A `kubernetes.io/tls` Secret from a certificate and its key.
    Tls {
        name: String,
        #[arg(long)]
        cert: String,
        #[arg(long)]
        key: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
pub struct Named {
    pub name: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Subcommand)]
pub enum ServiceKind {
    /// A ClusterIP Service: `--tcp=port[:targetPort]` (repeatable); `--clusterip=None` for a
    /// headless one.
    Clusterip {
        name: String,
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<String>,
        #[arg(long)]
        clusterip: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// A NodePort Service: `--tcp=port[:targetPort]`, `--node-port`.
    Nodeport {
        name: String,
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<String>,
        #[arg(long)]
        node_port: Option<i64>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Subcommand)]
pub enum Gen {
    /// A ConfigMap from literals, files and env files.
    Configmap(Data),
    /// A Secret: `generic` or `tls`.
    #[command(subcommand)]
    Secret(SecretKind),
    Namespace(Named),
    Serviceaccount(Named),
    /// A Deployment of `--image` (repeatable), labelled `app=NAME`.
    Deployment {
        name: String,
        #[arg(long, required = true)]
        image: Vec<String>,
        #[arg(long, default_value_t = 1)]
        replicas: i64,
        #[arg(long)]
        port: Option<i64>,
        #[command(flatten)]
        common: Common,
        /// The command after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// A Job running `--image` (and the command after `--`).
    Job {
        name: String,
        #[arg(long, required = true)]
        image: String,
        #[command(flatten)]
        common: Common,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// A Service: `clusterip` or `nodeport`.
    #[command(subcommand)]
    Service(ServiceKind),
}

fn key_value(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{what} {s:?}: expected key=value"),
    }
}

/// The entries of `--from-literal`, `--from-file` and `--from-env-file`, in kubectl's order
/// and with its duplicate-key error.
fn entries(d: &Data) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |k: String, v: Vec<u8>| {
        if out.iter().any(|(x, _)| *x == k) {
            bail!("cannot add key {k}, another key by that name already exists");
        }
        out.push((k, v));
        Ok(())
    };
    for l in &d.from_literal {
        let (k, v) = key_value(l, "--from-literal")?;
        push(k, v.into_bytes())?;
    }
    for f in &d.from_file {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (Some(k.to_string()), p.to_string()),
            None => (None, f.clone()),
        };
        let p = Path::new(&path);
        if p.is_dir() {
            if key.is_some() {
                bail!("--from-file {f:?}: a key cannot name a directory");
            }
            let mut files: Vec<_> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for file in files {
                let k = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
                push(k, std::fs::read(&file)?)?;
            }
        } else {
            let k = key.unwrap_or_else(|| {
                p.file_name().unwrap_or_default().to_string_lossy().into_owned()
            });
            push(k, std::fs::read(p).with_context(|| format!("--from-file {path}"))?)?;
        }
    }
    for f in &d.from_env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("--from-env-file {f}"))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = key_value(line, f)?;
            push(k, v.into_bytes())?;
        }
    }
    Ok(out)
}

fn meta(name: &str) -> Value {
    json!({"name": name, "creationTimestamp": null})
}

/// kubectl's container name for an image: its last path segment without tag or digest.
fn container_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split(['@', ':']).next().unwrap_or(base);
    base.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect()
}

fn service(
    name: &str,
    ty: &str,
    tcp: &[String],
    cluster_ip: Option<&str>,
    node_port: Option<i64>,
) -> Result<Value> {
    let mut ports = Vec::new();
    for t in tcp {
        let (port, target) = t.split_once(':').unwrap_or((t, t));
        let port: i64 =
            port.parse().with_context(|| format!("--tcp {t:?}: the port is not a number"))?;
        let target_v: Value = target.parse::<i64>().map_or_else(|_| json!(target), |n| json!(n));
        let mut p = json!({"name": format!("{port}-{target}"), "protocol": "TCP", "port": port,
            "targetPort": target_v});
        if let Some(np) = node_port {
            p["nodePort"] = json!(np);
        }
        ports.push(p);
    }
    if ports.is_empty() && cluster_ip != Some("None") {
        bail!("at least one --tcp=port[:targetPort] is required");
    }
    let mut spec = json!({"type": ty, "selector": {"app": name}, "ports": ports});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
    }
    Ok(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "creationTimestamp": null, "labels": {"app": name}},
        "spec": spec, "status": {"loadBalancer": {}}}))
}

fn object(g: Gen) -> Result<(Value, Common)> {
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    Ok(match g {
        Gen::Configmap(d) => {
            let mut data = Map::new();
            let mut binary = Map::new();
            for (k, v) in entries(&d)? {
                match String::from_utf8(v) {
                    Ok(s) => data.insert(k, json!(s)),
                    Err(e) => binary.insert(k, json!(b64(e.as_bytes()))),
                };
            }
            let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&d.name)});
            if !data.is_empty() {
                o["data"] = Value::Object(data);
            }
            if !binary.is_empty() {
                o["binaryData"] = Value::Object(binary);
            }
            (o, d.common)
        }
        Gen::Secret(SecretKind::Generic { data, kind }) => {
            let d: Map<String, Value> =
                entries(&data)?.into_iter().map(|(k, v)| (k, json!(b64(&v)))).collect();
            let mut o = json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(&data.name),
                "type": kind.unwrap_or_else(|| "Opaque".into())});
            if !d.is_empty() {
                o["data"] = Value::Object(d);
            }
            (o, data.common)
        }
        Gen::Secret(SecretKind::Tls { name, cert, key, common }) => {
            let c = std::fs::read(&cert).with_context(|| format!("--cert {cert}"))?;
            let k = std::fs::read(&key).with_context(|| format!("--key {key}"))?;
            let o = json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(&name),
                "type": "kubernetes.io/tls", "data": {"tls.crt": b64(&c), "tls.key": b64(&k)}});
            (o, common)
        }
        Gen::Namespace(n) => (
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(&n.name),
                "spec": {}, "status": {}}),
            n.common,
        ),
        Gen::Serviceaccount(n) => (
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(&n.name)}),
            n.common,
        ),
        Gen::Deployment { name, image, replicas, port, common, command } => {
            let containers: Vec<Value> = image
                .iter()
                .map(|i| {
                    let mut c = json!({"name": container_name(i), "image": i, "resources": {}});
                    if let Some(p) = port {
                        c["ports"] = json!([{"containerPort": p}]);
                    }
                    if !command.is_empty() {
                        c["command"] = json!(command);
                    }
                    c
                })
                .collect();
            let labels = json!({"app": name});
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "creationTimestamp": null, "labels": labels},
                "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                    "strategy": {}, "template": {"metadata": {"creationTimestamp": null,
                        "labels": labels}, "spec": {"containers": containers}}},
                "status": {}}),
                common,
            )
        }
        Gen::Job { name, image, common, command } => {
            let mut c = json!({"name": name, "image": image, "resources": {}});
            if !command.is_empty() {
                c["command"] = json!(command);
            }
            (
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(&name),
                "spec": {"template": {"metadata": {"creationTimestamp": null},
                    "spec": {"containers": [c], "restartPolicy": "Never"}}},
                "status": {}}),
                common,
            )
        }
        Gen::Service(ServiceKind::Clusterip { name, tcp, clusterip, common }) => {
            (service(&name, "ClusterIP", &tcp, clusterip.as_deref(), None)?, common)
        }
        Gen::Service(ServiceKind::Nodeport { name, tcp, node_port, common }) => {
            (service(&name, "NodePort", &tcp, None, node_port)?, common)
        }
    })
}

pub async fn create(ctx: &Ctx, g: Gen) -> Result<()> {
    let (obj, common) = object(g)?;
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let info = flotilla_api::lookup(&kind).context("generated kinds are registered")?;
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let shown = match common.dry_run {
        Some(DryRun::Client) => {
            let mut o = obj;
            if info.namespaced && ctx.namespace != "default" {
                o["metadata"]["namespace"] = json!(ctx.namespace);
            }
            o
        }
        dry => {
            let ns = if info.namespaced { ctx.namespace.as_str() } else { "" };
            let server_dry = dry == Some(DryRun::Server);
            let (created, warnings) = ctx
                .client
                .create_opts(info.plural, ns, &obj, server_dry)
                .await
                .map_err(server_error)?;
            crate::warn(&warnings);
            created
        }
    };
    match common.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&shown)?),
        Some(Output::Yaml) => print!("{}", serde_yaml::to_string(&shown)?),
        o => {
            let suffix = match common.dry_run {
                Some(DryRun::Client) => " (dry run)",
                Some(DryRun::Server) => " (server dry run)",
                _ => "",
            };
            let r = crate::print::ref_name(info, &name);
            if o == Some(Output::Name) {
                println!("{r}");
            } else {
                println!("{r} created{suffix}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_objects_are_kubectls() {
        let d = Data {
            name: "web".into(),
            from_literal: vec!["a=1".into(), "b=x=y".into()],
            from_file: vec![],
            from_env_file: vec![],
            common: Common { dry_run: Some(DryRun::Client), output: None },
        };
        let (o, _) = object(Gen::Configmap(d)).unwrap();
        assert_eq!(o["data"], json!({"a": "1", "b": "x=y"}));
        let dup = Data {
            name: "web".into(),
            from_literal: vec!["a=1".into(), "a=2".into()],
            from_file: vec![],
            from_env_file: vec![],
            common: Common { dry_run: None, output: None },
        };
        assert!(object(Gen::Configmap(dup)).is_err());
        assert_eq!(container_name("registry.example:5000/team/nginx:1.27"), "nginx");
        let s = service("web", "ClusterIP", &["80:8080".into()], None, None).unwrap();
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"name": "80-8080", "protocol": "TCP",
            "port": 80, "targetPort": 8080})
        );
    }
}
