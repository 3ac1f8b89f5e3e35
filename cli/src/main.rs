//! `flotilla`: the user's command line, with kubectl's conventions.
#![forbid(unsafe_code)]

mod auth;
mod config;
mod exec;
mod generate;
mod print;
mod rbac;
mod rollout;
mod top;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use flotilla_api::error::ApiError;
use flotilla_api::manifest::{self, Manifest};
use flotilla_api::ResourceInfo;
use flotilla_client::{Client, DeleteParams, ListParams, WatchParams};
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Command line for a Flotilla cluster (kubectl conventions)"
)]
struct Cli {
    /// The kubeconfig file (default: $KUBECONFIG's files, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The API server's address, instead of the context's.
    #[arg(short = 's', long, global = true)]
    server: Option<String>,
    /// Do not verify the server's certificate (kubectl's flag; insecure).
    #[arg(long, global = true)]
    insecure_skip_tls_verify: bool,
    /// Namespace of the request (default: "default").
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Bearer token to present (a service account token), instead of the context's
    /// credentials; also FLOTILLA_TOKEN.
    #[arg(long, env = "FLOTILLA_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Act as this user (Kubernetes' impersonation; needs the `impersonate` verb).
    #[arg(long = "as", global = true)]
    as_user: Option<String>,
    /// Act as a member of this group (repeatable; with --as).
    #[arg(long = "as-group", global = true, requires = "as_user")]
    as_group: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Wide,
    Yaml,
    Json,
    Name,
}

/// kubectl's `--since`: a Go duration (`90s`, `5m`, `1h30m`) in whole seconds, rounded up.
fn parse_since(s: &str) -> std::result::Result<i64, String> {
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(n);
        let u = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(u);
        let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        total += v * match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            _ => return Err(format!("invalid duration {s:?}: units are h, m, s, ms")),
        };
        rest = next;
    }
    if s.is_empty() {
        return Err("invalid duration \"\"".into());
    }
    Ok(total.ceil() as i64)
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or update objects from manifests (idempotent).
    Apply {
        /// File, directory (every .yaml/.yml/.json in it) or "-" for stdin.
        #[arg(short, long, required = true)]
        filename: Vec<String>,
        #[arg(long)]
        dry_run: bool,
        /// Server-side apply: the server merges the manifest and records which fields this
        /// field manager owns, refusing to take fields another manager owns.
        #[arg(long)]
        server_side: bool,
        /// With --server-side: take the fields other managers own instead of failing.
        #[arg(long, requires = "server_side")]
        force_conflicts: bool,
        /// The field manager the server records for this apply.
        #[arg(long, default_value = "flotilla")]
        field_manager: String,
    },
    /// Create objects from manifests (existing ones are an error), or a token.
    #[command(args_conflicts_with_subcommands = true)]
    Create {
        #[command(subcommand)]
        what: Option<auth::CreateWhat>,
        #[arg(short, long)]
        filename: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Replace objects from manifests, whole (kubectl's `replace -f`).
    Replace {
        /// File, directory or "-" for stdin.
        #[arg(short, long, required = true)]
        filename: Vec<String>,
    },
    /// Inspect authentication and authorization: `auth whoami`, `auth can-i`.
    #[command(subcommand)]
    Auth(auth::Auth),
    /// Kubeconfig files: view, get-contexts, current-context, use-context.
    #[command(subcommand)]
    Config(config::Config),
    /// List or show objects.
    Get {
        /// Kind (pods, po, deploy, svc, …), or several separated by commas.
        #[arg(required_unless_present = "raw")]
        kind: Option<String>,
        names: Vec<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long)]
        field_selector: Option<String>,
        #[arg(short, long, value_enum)]
        output: Option<Output>,
        /// After listing, print changes as they happen.
        #[arg(short, long)]
        watch: bool,
        /// Print only the changes, not the initial list.
        #[arg(long)]
        watch_only: bool,
        /// List in pages of this many.
        #[arg(long, default_value_t = 500)]
        chunk_size: i64,
        /// Print what the API server answers for this path of its HTTP API (`/version`,
        /// `/api/v1/namespaces/default/pods`, `/metrics`), as kubectl's `get --raw`.
        #[arg(long, conflicts_with_all = ["names", "output", "watch", "selector"])]
        raw: Option<String>,
        /// Keep metadata.managedFields in -o json|yaml (hidden by default, as kubectl).
        #[arg(long)]
        show_managed_fields: bool,
    },
    /// Show an object in detail, with its events.
    Describe {
        kind: String,
        names: Vec<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Delete objects by name, from manifests, or all of a kind.
    Delete {
        kind: Option<String>,
        names: Vec<String>,
        #[arg(short, long)]
        filename: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long)]
        grace_period: Option<i64>,
        /// background, foreground or orphan.
        #[arg(long, default_value = "background")]
        cascade: String,
        #[arg(long)]
        ignore_not_found: bool,
    },
    /// Edit an object in $EDITOR; the update fails if someone else changed it meanwhile.
    Edit { kind: String, name: String },
    /// Patch an object (JSON merge patch by default).
    Patch {
        kind: String,
        name: String,
        #[arg(short, long)]
        patch: String,
        /// merge or json.
        #[arg(long = "type", default_value = "merge")]
        patch_type: String,
        #[arg(long)]
        subresource: Option<String>,
    },
    /// Set or remove labels: key=value, key- .
    Label {
        kind: String,
        name: String,
        changes: Vec<String>,
        #[arg(long)]
        overwrite: bool,
    },
    /// Set or remove annotations: key=value, key- .
    Annotate {
        kind: String,
        name: String,
        changes: Vec<String>,
        #[arg(long)]
        overwrite: bool,
    },
    /// Events, oldest first (as `kubectl events`): what controllers, the scheduler and agents
    /// recorded about objects.
    Events {
        /// Only events about this object: KIND/NAME (e.g. pod/web-1).
        #[arg(long = "for")]
        for_object: Option<String>,
        /// Only these types (Normal, Warning), comma-separated.
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// CPU and memory usage of pods or nodes.
    #[command(subcommand)]
    Top(top::Top),
    /// Manage the rollout of a Deployment, StatefulSet or DaemonSet: status, history, undo,
    /// restart; pause and resume (Deployments).
    #[command(subcommand)]
    Rollout(rollout::Rollout),
    /// Set the replicas of a Deployment, ReplicaSet or StatefulSet.
    Scale {
        kind: String,
        name: String,
        #[arg(long)]
        replicas: i32,
    },
    /// Print a container's log (streamed from its node through the API server).
    Logs {
        pod: String,
        /// The container (needed when the pod has several).
        #[arg(short, long)]
        container: Option<String>,
        /// Keep streaming until the container ends.
        #[arg(short, long)]
        follow: bool,
        /// The log of the previous run, after a restart.
        #[arg(short, long)]
        previous: bool,
        /// The last N lines only.
        #[arg(long, default_value_t = -1)]
        tail: i64,
        /// Prefix each line with its RFC 3339 time.
        #[arg(long)]
        timestamps: bool,
        /// Only lines newer than this duration (5s, 2m, 3h).
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Only lines written at or after this RFC 3339 time.
        #[arg(long, conflicts_with = "since")]
        since_time: Option<String>,
        /// Stop after this many bytes.
        #[arg(long)]
        limit_bytes: Option<i64>,
    },
    /// Run a command in a container (relayed through the API server to the pod's node).
    #[command(arg_required_else_help = true)]
    Exec {
        pod: String,
        /// The container (default: the pod's default-container annotation, else the first).
        #[arg(short, long)]
        container: Option<String>,
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Allocate a terminal in the container (with -i and a terminal here).
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// The kinds this server serves.
    ApiResources,
    /// Client and server versions.
    Version,
    /// Shell completion script.
    Completion { shell: clap_complete::Shell },
}

struct Ctx {
    client: Client,
    namespace: String,
    explicit_ns: bool,
}

#[derive(Clone, Copy)]
struct ApplyHow {
    dry_run: bool,
    server_side: bool,
    force: bool,
}

impl Ctx {
    fn with_field_manager(&self, name: &str) -> Ctx {
        Ctx {
            client: self.client.clone().with_field_manager(name),
            namespace: self.namespace.clone(),
            explicit_ns: self.explicit_ns,
        }
    }
}

/// Where and as whom to connect: the kubeconfig's context, with the flags over it.
fn connection(cli: &Cli) -> Result<flotilla_client::Connection> {
    let kc = flotilla_client::Kubeconfig::load(cli.kubeconfig.as_deref())?;
    let mut c = if kc.contexts.is_empty() && cli.context.is_none() {
        flotilla_client::Connection::default()
    } else {
        kc.connection(cli.context.as_deref())?
    };
    if let Some(s) = &cli.server {
        c.server = s.clone();
    }
    if c.server.is_empty() {
        anyhow::bail!(
            "no server: no kubeconfig at --kubeconfig, $KUBECONFIG or ~/.kube/config, and no --server \
             (`cargo xtask up` links the cluster's admin kubeconfig to ~/.kube/config)"
        );
    }
    if let Some(t) = cli.token.as_deref().filter(|t| !t.is_empty()) {
        // The flag replaces the kubeconfig's credentials: a client certificate would otherwise
        // win (x509 is authenticated first) and `--token` would be silently ignored.
        c.token = Some(t.to_string());
        c.client_cert = None;
    }
    c.insecure |= cli.insecure_skip_tls_verify;
    Ok(c)
}

fn resource(kind: &str) -> Result<&'static ResourceInfo> {
    flotilla_api::lookup(kind).with_context(|| {
        format!("the server doesn't have a resource type \"{kind}\" (see `flotilla api-resources`)")
    })
}

/// `kubectl`-style server errors: `Error from server (NotFound): pods "x" not found`.
fn server_error(e: ApiError) -> anyhow::Error {
    let reason = format!("{:?}", e.reason);
    let reason = match reason.as_str() {
        "Forbidden" => "Forbidden".to_string(),
        r => r.to_string(),
    };
    anyhow::anyhow!("Error from server ({reason}): {}", e.message)
}

fn warn(ws: &[String]) {
    for w in ws {
        eprintln!("Warning: {w}");
    }
}

fn read_manifests(files: &[String]) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for f in files {
        let mut paths = Vec::new();
        if f == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            out.extend(
                manifest::decode(&s).map_err(|e| anyhow::anyhow!("error parsing stdin: {e}"))?,
            );
            continue;
        }
        let p = Path::new(f);
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {f}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
                })
                .collect();
            entries.sort();
            paths.extend(entries);
        } else {
            paths.push(p.to_path_buf());
        }
        for p in paths {
            let text = std::fs::read_to_string(&p).with_context(|| {
                format!("the path \"{}\" does not exist or cannot be read", p.display())
            })?;
            out.extend(
                manifest::decode(&text)
                    .map_err(|e| anyhow::anyhow!("error parsing {}: {e}", p.display()))?,
            );
        }
    }
    Ok(out)
}

use print::{kind_ref, ref_name};

impl Ctx {
    /// The namespace a command on `info` addresses: -n (or "default"), "" if cluster-scoped.
    fn ns(&self, info: &ResourceInfo) -> String {
        if info.namespaced {
            self.namespace.clone()
        } else {
            String::new()
        }
    }

    fn ns_for(&self, info: &ResourceInfo, m: Option<&str>) -> Result<String> {
        if !info.namespaced {
            return Ok(String::new());
        }
        match m {
            Some(ns) if self.explicit_ns && ns != self.namespace => bail!(
                "the namespace from the provided object \"{ns}\" does not match the namespace \"{}\". You must pass '--namespace={ns}' to perform this operation.",
                self.namespace
            ),
            Some(ns) if !ns.is_empty() => Ok(ns.to_string()),
            _ => Ok(self.namespace.clone()),
        }
    }

    async fn apply(&self, files: &[String], how: ApplyHow) -> Result<()> {
        let manifests = read_manifests(files)?;
        let mut failed = false;
        for m in manifests {
            let applied = if how.server_side {
                self.apply_server_side(&m, how).await
            } else {
                self.apply_one(&m, how.dry_run).await
            };
            if let Err(e) = applied {
                eprintln!("{e:#}");
                failed = true;
            }
        }
        if failed {
            std::process::exit(1);
        }
        Ok(())
    }

    /// kubectl's `apply --server-side`: the manifest as this field manager's configuration.
    async fn apply_server_side(&self, m: &Manifest, how: ApplyHow) -> Result<()> {
        let info = m.resource;
        let ns = self.ns_for(info, m.namespace())?;
        let (v, w) = self
            .client
            .apply(info.plural, &ns, &m.object, how.force, how.dry_run)
            .await
            .map_err(server_error)?;
        warn(&w);
        let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let suffix = if how.dry_run { " (server dry run)" } else { "" };
        println!("{} serverside-applied{suffix}", ref_name(info, name));
        Ok(())
    }

    async fn apply_one(&self, m: &Manifest, dry_run: bool) -> Result<()> {
        let info = m.resource;
        let ns = self.ns_for(info, m.namespace())?;
        let name = m.name().to_string();
        if name.is_empty() {
            bail!("error from {}: {} needs metadata.name to be applied", m.origin, info.kind);
        }
        let mut desired = m.object.clone();
        let mut last = desired.clone();
        if let Some(a) = last.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
            a.remove(LAST_APPLIED);
        }
        let last_text = serde_json::to_string(&last)?;
        desired["metadata"]["annotations"][LAST_APPLIED] = Value::String(last_text.clone());
        let suffix = if dry_run { " (dry run)" } else { "" };
        match self.client.get(info.plural, &ns, &name).await {
            Err(e) if e.reason == flotilla_api::Reason::NotFound => {
                let (_, w) = self
                    .client
                    .create_opts(info.plural, &ns, &desired, dry_run)
                    .await
                    .map_err(server_error)?;
                warn(&w);
                println!("{} created{suffix}", ref_name(info, &name));
            }
            Err(e) => return Err(server_error(e)),
            Ok(current) => {
                // kubectl's three-way merge: the diff from what was last applied to what is
                // applied now, laid over the live object.
                let previous: Value = current
                    .pointer(&format!("/metadata/annotations/{}", LAST_APPLIED.replace('/', "~1")))
                    .and_then(Value::as_str)
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_else(|| json!({}));
                let mut patch = flotilla_api::patch::merge_diff(&previous, &last);
                patch["metadata"]["annotations"][LAST_APPLIED] = Value::String(last_text);
                if dry_run {
                    println!("{} configured{suffix}", ref_name(info, &name));
                    return Ok(());
                }
                let (after, w) = self
                    .client
                    .patch(info.plural, &ns, &name, &patch, false, false)
                    .await
                    .map_err(server_error)?;
                warn(&w);
                let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
                let what = if rv(&after) == rv(&current) { "unchanged" } else { "configured" };
                println!("{} {what}", ref_name(info, &name));
            }
        }
        Ok(())
    }

    async fn create(&self, files: &[String], dry_run: bool) -> Result<()> {
        self.write_manifests(files, Some(dry_run)).await
    }

    /// kubectl's `replace`: each object written whole, as given (a stale resourceVersion is
    /// a conflict).
    async fn replace(&self, files: &[String]) -> Result<()> {
        self.write_manifests(files, None).await
    }

    /// Creates (`Some(dry_run)`) or replaces (`None`) every object in `files`, printing what
    /// kubectl prints; exits 1 after the others if any failed.
    async fn write_manifests(&self, files: &[String], create: Option<bool>) -> Result<()> {
        let mut failed = false;
        for m in read_manifests(files)? {
            let info = m.resource;
            let ns = self.ns_for(info, m.namespace())?;
            let written = match create {
                Some(dry_run) => {
                    self.client.create_opts(info.plural, &ns, &m.object, dry_run).await
                }
                None => self.client.update(info.plural, &ns, &m.object).await,
            };
            match written {
                Ok((v, w)) => {
                    warn(&w);
                    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                    let done = match create {
                        Some(true) => "created (dry run)",
                        Some(false) => "created",
                        None => "replaced",
                    };
                    println!("{} {done}", ref_name(info, name));
                }
                Err(e) => {
                    eprintln!("{:#}", server_error(e));
                    failed = true;
                }
            }
        }
        if failed {
            std::process::exit(1);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn get(
        &self,
        kinds: &str,
        names: &[String],
        all_ns: bool,
        selector: Option<String>,
        field_selector: Option<String>,
        output: Option<Output>,
        watch: bool,
        watch_only: bool,
        chunk: i64,
    ) -> Result<()> {
        let kinds: Vec<&str> = kinds.split(',').filter(|k| !k.is_empty()).collect();
        // `get deploy/web` and `get deploy web`.
        let (kinds, names): (Vec<String>, Vec<String>) = match kinds.as_slice() {
            [k] if k.contains('/') => {
                let (k, n) = k.split_once('/').expect("contains /");
                (
                    vec![k.to_string()],
                    std::iter::once(n.to_string()).chain(names.iter().cloned()).collect(),
                )
            }
            _ => (kinds.iter().map(|s| s.to_string()).collect(), names.to_vec()),
        };
        let multi = kinds.len() > 1;
        // `-o json|yaml` prints one document for the whole query (kubectl's List), unless one
        // object was asked for by name.
        let document = matches!(output, Some(Output::Json | Output::Yaml)) && !watch;
        let mut found: Vec<serde_json::Value> = Vec::new();
        let mut first_missing = None;
        for kind in &kinds {
            let info = resource(kind)?;
            let ns =
                if all_ns || !info.namespaced { String::new() } else { self.namespace.clone() };
            let mut items = Vec::new();
            let rv;
            // A named watch follows that object: kubectl's `get KIND NAME -w`.
            let field_selector = match (watch, names.as_slice()) {
                (true, [n]) => Some(match &field_selector {
                    Some(f) if !f.is_empty() => format!("{f},metadata.name={n}"),
                    _ => format!("metadata.name={n}"),
                }),
                _ => field_selector.clone(),
            };
            let listing = names.is_empty() || watch;
            if listing && !(watch && names.len() > 1) {
                let p = ListParams {
                    label_selector: selector.clone().unwrap_or_default(),
                    field_selector: field_selector.clone().unwrap_or_default(),
                    limit: if watch_only { 1 } else { chunk },
                    ..Default::default()
                };
                let l = if watch_only {
                    self.client.list(info.plural, &ns, &p).await
                } else {
                    self.client.list_all(info.plural, &ns, &p).await
                }
                .map_err(server_error)?;
                rv = l.resource_version;
                if !watch_only {
                    items = l.items;
                }
                if watch && names.len() == 1 && items.is_empty() && !watch_only {
                    return Err(server_error(ApiError::not_found(
                        &info.qualified_plural(),
                        &names[0],
                    )));
                }
            } else {
                let mut missing = Vec::new();
                for n in &names {
                    match self.client.get(info.plural, &ns, n).await {
                        Ok(v) => items.push(v),
                        Err(e) if e.reason == flotilla_api::Reason::NotFound => {
                            missing.push(server_error(e))
                        }
                        Err(e) => return Err(server_error(e)),
                    }
                }
                if document {
                    found.extend(items);
                    first_missing = first_missing.or(missing.into_iter().next());
                    continue;
                }
                if !items.is_empty() {
                    print::objects(info, &items, output, all_ns && info.namespaced, multi)?;
                }
                if let Some(e) = missing.into_iter().next() {
                    return Err(e);
                }
                continue;
            }
            if document {
                found.extend(items);
                continue;
            }
            if items.is_empty() && !watch && output.is_none() {
                if info.namespaced && !all_ns {
                    eprintln!("No resources found in {} namespace.", self.namespace);
                } else {
                    eprintln!("No resources found");
                }
                continue;
            }
            if !(watch_only || (watch && items.is_empty())) {
                print::objects(info, &items, output, all_ns && info.namespaced, multi)?;
            }
            if watch {
                let p = WatchParams {
                    label_selector: selector.clone().unwrap_or_default(),
                    field_selector: field_selector.clone().unwrap_or_default(),
                    resource_version: rv,
                    ..Default::default()
                };
                let stream = self.client.watch(info.plural, &ns, &p).await.map_err(server_error)?;
                futures::pin_mut!(stream);
                let mut header = items.is_empty();
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(server_error)?;
                    for ev in batch {
                        if ev.kind == flotilla_client::EventType::Bookmark {
                            continue;
                        }
                        print::watch_row(info, &ev, output, all_ns && info.namespaced, header)?;
                        header = false;
                    }
                }
            }
        }
        if document {
            if !(found.is_empty() && first_missing.is_some()) {
                let one_named = kinds.len() == 1 && names.len() == 1;
                print::json_or_yaml(&found, one_named, output.expect("a document output"))?;
            }
            if let Some(e) = first_missing {
                return Err(e);
            }
        }
        Ok(())
    }

    /// `get --raw PATH`: the body as the server sent it; an error status as kubectl reports it.
    async fn raw(&self, path: &str) -> Result<()> {
        use std::io::Write;
        let (code, body) = self.client.raw_get(path).await.map_err(server_error)?;
        if (200..300).contains(&code) {
            std::io::stdout().write_all(&body)?;
            return Ok(());
        }
        let status: Value = serde_json::from_slice(&body).unwrap_or_default();
        let e = ApiError::new(
            status["reason"]
                .as_str()
                .and_then(|r| serde_json::from_value(Value::String(r.to_string())).ok())
                .unwrap_or(flotilla_api::Reason::Internal),
            status["message"]
                .as_str()
                .map_or_else(|| String::from_utf8_lossy(&body).into_owned(), String::from),
        );
        Err(server_error(e))
    }

    async fn describe(&self, kind: &str, names: &[String], selector: Option<String>) -> Result<()> {
        let info = resource(kind)?;
        let ns = self.ns(info);
        let objects = if names.is_empty() {
            let p =
                ListParams { label_selector: selector.unwrap_or_default(), ..Default::default() };
            self.client.list_all(info.plural, &ns, &p).await.map_err(server_error)?.items
        } else {
            let mut v = Vec::new();
            for n in names {
                v.push(self.client.get(info.plural, &ns, n).await.map_err(server_error)?);
            }
            v
        };
        for (i, o) in objects.iter().enumerate() {
            if i > 0 {
                println!();
            }
            let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            let mut fs = format!("involvedObject.name={name},involvedObject.kind={}", info.kind);
            if info.namespaced {
                fs.push_str(&format!(",involvedObject.namespace={ns}"));
            }
            let p = ListParams { field_selector: fs, ..Default::default() };
            let events =
                self.client.list_all("events", &ns, &p).await.map(|l| l.items).unwrap_or_default();
            print::describe(info, o, &events)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn delete(
        &self,
        kind: Option<String>,
        names: Vec<String>,
        files: Vec<String>,
        all: bool,
        selector: Option<String>,
        grace: Option<i64>,
        cascade: &str,
        ignore_not_found: bool,
    ) -> Result<()> {
        let propagation = match cascade {
            "background" | "true" => "Background",
            "foreground" => "Foreground",
            "orphan" | "false" => "Orphan",
            other => bail!("--cascade must be background, foreground or orphan, not {other:?}"),
        };
        let params = DeleteParams {
            grace_period_seconds: grace,
            propagation_policy: propagation.into(),
            ..Default::default()
        };
        let mut targets: Vec<(&'static ResourceInfo, String, String)> = Vec::new();
        if !files.is_empty() {
            for m in read_manifests(&files)? {
                let ns = self.ns_for(m.resource, m.namespace())?;
                targets.push((m.resource, ns, m.name().to_string()));
            }
        } else {
            let Some(kind) = kind else {
                bail!("you must provide one or more resources by argument or filename (-f)")
            };
            let (kind, names) = match kind.split_once('/') {
                Some((k, n)) => {
                    (k.to_string(), std::iter::once(n.to_string()).chain(names).collect())
                }
                None => (kind, names),
            };
            let info = resource(&kind)?;
            let ns = self.ns(info);
            if all || selector.is_some() {
                if !names.is_empty() {
                    bail!("names cannot be given together with --all or --selector");
                }
                let p = ListParams {
                    label_selector: selector.unwrap_or_default(),
                    ..Default::default()
                };
                for o in
                    self.client.list_all(info.plural, &ns, &p).await.map_err(server_error)?.items
                {
                    let n = o
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    targets.push((info, ns.clone(), n));
                }
            } else if names.is_empty() {
                bail!("resource(s) were provided, but no name was specified (use --all to delete every one)");
            } else {
                for n in names {
                    targets.push((info, ns.clone(), n));
                }
            }
        }
        let mut failed = false;
        for (info, ns, name) in targets {
            match self.client.delete(info.plural, &ns, &name, &params).await {
                Ok(_) => println!("{} \"{name}\" deleted", kind_ref(info)),
                Err(e) if e.reason == flotilla_api::Reason::NotFound && ignore_not_found => {}
                Err(e) => {
                    eprintln!("{:#}", server_error(e));
                    failed = true;
                }
            }
        }
        if failed {
            std::process::exit(1);
        }
        Ok(())
    }

    async fn edit(&self, kind: &str, name: &str) -> Result<()> {
        let info = resource(kind)?;
        let ns = self.ns(info);
        let current = self.client.get(info.plural, &ns, name).await.map_err(server_error)?;
        let text = serde_yaml::to_string(&current)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(format!("{}-{name}.yaml", info.plural));
        std::fs::write(&path, &text)?;
        let editor = std::env::var("KUBE_EDITOR")
            .or_else(|_| std::env::var("EDITOR"))
            .unwrap_or_else(|_| "vi".into());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&path)
            .status()
            .with_context(|| format!("running the editor {editor:?}"))?;
        if !status.success() {
            bail!("the editor {editor:?} exited with {status}; nothing was changed");
        }
        let edited = std::fs::read_to_string(&path)?;
        if edited == text {
            println!("Edit cancelled, no changes made.");
            return Ok(());
        }
        let docs = manifest::decode(&edited)
            .map_err(|e| anyhow::anyhow!("error parsing the edited object: {e}"))?;
        let [m] = docs.as_slice() else { bail!("the edited file must hold exactly one object") };
        let (_, w) = self.client.update(info.plural, &ns, &m.object).await.map_err(server_error)?;
        warn(&w);
        println!("{} edited", ref_name(info, name));
        Ok(())
    }

    async fn patch_cmd(
        &self,
        kind: &str,
        name: &str,
        patch: &str,
        ty: &str,
        sub: Option<String>,
    ) -> Result<()> {
        let info = resource(kind)?;
        let ns = self.ns(info);
        let value: Value = serde_json::from_str(patch)
            .or_else(|_| serde_yaml::from_str(patch))
            .context("the patch is neither JSON nor YAML")?;
        let json = match ty {
            "merge" => false,
            "json" => true,
            "strategic" => {
                bail!("strategic merge patch is not supported; use --type merge or --type json")
            }
            o => bail!("--type must be merge or json, not {o:?}"),
        };
        let status = match sub.as_deref() {
            None | Some("") => false,
            Some("status") => true,
            Some(o) => bail!("unknown subresource {o:?}"),
        };
        let (before, after) = {
            let b = self.client.get(info.plural, &ns, name).await.map_err(server_error)?;
            let (a, w) = self
                .client
                .patch(info.plural, &ns, name, &value, json, status)
                .await
                .map_err(server_error)?;
            warn(&w);
            (b, a)
        };
        let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
        let what = if rv(&before) == rv(&after) { "patched (no change)" } else { "patched" };
        println!("{} {what}", ref_name(info, name));
        Ok(())
    }

    async fn meta_map(
        &self,
        field: &str,
        kind: &str,
        name: &str,
        changes: &[String],
        overwrite: bool,
    ) -> Result<()> {
        let info = resource(kind)?;
        let ns = self.ns(info);
        let current = self.client.get(info.plural, &ns, name).await.map_err(server_error)?;
        let existing = current.pointer(&format!("/metadata/{field}")).cloned().unwrap_or(json!({}));
        let mut m = serde_json::Map::new();
        for c in changes {
            if let Some(k) = c.strip_suffix('-') {
                m.insert(k.to_string(), Value::Null);
            } else if let Some((k, v)) = c.split_once('=') {
                if !overwrite && existing.get(k).is_some_and(|old| old != v) {
                    bail!(
                        "'{k}' already has a value ({}), and --overwrite is false",
                        existing[k].as_str().unwrap_or("")
                    );
                }
                m.insert(k.to_string(), Value::String(v.to_string()));
            } else {
                bail!("invalid {field} change {c:?}: expected key=value or key-");
            }
        }
        let mut patch = json!({"metadata": {}, });
        patch["metadata"][field] = Value::Object(m);
        patch["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        self.client
            .patch(info.plural, &ns, name, &patch, false, false)
            .await
            .map_err(server_error)?;
        println!(
            "{} {}",
            ref_name(info, name),
            if field == "labels" { "labeled" } else { "annotated" }
        );
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "flotilla",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Cmd::Version => {
            println!("Client Version: v{}", env!("CARGO_PKG_VERSION"));
        }
        _ => {}
    }
    if let Cmd::Config(c) = cli.cmd {
        return config::run(cli.kubeconfig.as_deref(), cli.context.as_deref(), c);
    }
    let conn = connection(&cli)?;
    if conn.server.starts_with("http://") {
        // Go's servers answer a plain request on a TLS port with a 400 that kubectl prints;
        // gRPC over a plain connection would only say "frame with invalid size".
        let https = conn.server.replacen("http://", "https://", 1);
        anyhow::bail!("{}: Flotilla's API server serves HTTPS only: use {https}", conn.server);
    }
    let mut client =
        Client::connect_to(&conn).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if let Some(u) = &cli.as_user {
        client = client.impersonate(u, &cli.as_group).map_err(server_error)?;
    }
    let ctx = Ctx {
        client,
        explicit_ns: cli.namespace.is_some(),
        namespace: cli
            .namespace
            .clone()
            .or(conn.namespace.clone())
            .unwrap_or_else(|| "default".into()),
    };
    match cli.cmd {
        Cmd::Apply { filename, dry_run, server_side, force_conflicts, field_manager } => {
            let how = ApplyHow { dry_run, server_side, force: force_conflicts };
            ctx.with_field_manager(&field_manager).apply(&filename, how).await
        }
        Cmd::Create { what: Some(what), .. } => auth::create(&ctx, what).await,
        Cmd::Create { what: None, filename, dry_run } => {
            if filename.is_empty() {
                anyhow::bail!("create: give -f FILE (or a subcommand such as `create token`)");
            }
            ctx.create(&filename, dry_run).await
        }
        Cmd::Auth(a) => auth::run(&ctx, a).await,
        Cmd::Replace { filename } => ctx.replace(&filename).await,
        Cmd::Get {
            kind,
            names,
            all_namespaces,
            selector,
            field_selector,
            output,
            watch,
            watch_only,
            chunk_size,
            raw,
            show_managed_fields,
        } => {
            print::SHOW_MANAGED_FIELDS
                .store(show_managed_fields, std::sync::atomic::Ordering::Relaxed);
            if let Some(path) = raw {
                return ctx.raw(&path).await;
            }
            ctx.get(
                kind.as_deref().unwrap_or_default(),
                &names,
                all_namespaces,
                selector,
                field_selector,
                output,
                watch || watch_only,
                watch_only,
                chunk_size,
            )
            .await
        }
        Cmd::Describe { kind, names, selector } => ctx.describe(&kind, &names, selector).await,
        Cmd::Delete {
            kind,
            names,
            filename,
            all,
            selector,
            grace_period,
            cascade,
            ignore_not_found,
        } => {
            ctx.delete(
                kind,
                names,
                filename,
                all,
                selector,
                grace_period,
                &cascade,
                ignore_not_found,
            )
            .await
        }
        Cmd::Edit { kind, name } => ctx.edit(&kind, &name).await,
        Cmd::Patch { kind, name, patch, patch_type, subresource } => {
            ctx.patch_cmd(&kind, &name, &patch, &patch_type, subresource).await
        }
        Cmd::Label { kind, name, changes, overwrite } => {
            ctx.meta_map("labels", &kind, &name, &changes, overwrite).await
        }
        Cmd::Annotate { kind, name, changes, overwrite } => {
            ctx.meta_map("annotations", &kind, &name, &changes, overwrite).await
        }
        Cmd::Logs {
            pod,
            container,
            follow,
            previous,
            tail,
            timestamps,
            since,
            since_time,
            limit_bytes,
        } => {
            use futures::StreamExt;
            use std::io::Write;
            let pod =
                pod.strip_prefix("pod/").or(pod.strip_prefix("pods/")).unwrap_or(&pod).to_string();
            let req = flotilla_api::proto::PodLogsRequest {
                namespace: ctx.namespace.clone(),
                name: pod,
                container: container.unwrap_or_default(),
                follow,
                previous,
                tail_lines: tail,
                timestamps,
                since_seconds: since,
                since_time: since_time.unwrap_or_default(),
                limit_bytes,
                stream: String::new(),
            };
            let mut s = ctx.client.pod_logs(req).await.map_err(server_error)?;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = s.next().await {
                out.write_all(&chunk.map_err(server_error)?)?;
                out.flush()?;
            }
            Ok(())
        }
        Cmd::Exec { pod, container, stdin, tty, command } => {
            let code = exec::run(&ctx, &pod, container, stdin, tty, command).await?;
            if code != 0 {
                eprintln!("command terminated with exit code {code}");
                std::process::exit(code);
            }
            Ok(())
        }
        Cmd::Rollout(r) => rollout::run(&ctx, r).await,
        Cmd::Top(t) => top::run(&ctx, t).await,
        Cmd::Events { for_object, types, all_namespaces } => {
            let mut fs = Vec::new();
            if let Some(f) = &for_object {
                let (kind, name) =
                    f.split_once('/').context("--for takes KIND/NAME, e.g. pod/web-1")?;
                fs.push(format!("involvedObject.kind={}", resource(kind)?.kind));
                fs.push(format!("involvedObject.name={name}"));
            }
            let ns = if all_namespaces { String::new() } else { ctx.namespace.clone() };
            let p = ListParams { field_selector: fs.join(","), ..Default::default() };
            let mut items =
                ctx.client.list_all("events", &ns, &p).await.map_err(server_error)?.items;
            if !types.is_empty() {
                items.retain(|e| types.iter().any(|t| e["type"].as_str() == Some(t.as_str())));
            }
            let when = |e: &Value| {
                ["lastTimestamp", "eventTime", "firstTimestamp"]
                    .iter()
                    .find_map(|k| e[*k].as_str().filter(|s| !s.is_empty()))
                    .or_else(|| e.pointer("/metadata/creationTimestamp").and_then(Value::as_str))
                    .unwrap_or("")
                    .to_string()
            };
            items.sort_by_key(when);
            if items.is_empty() {
                println!(
                    "No events found in {} namespace.",
                    if all_namespaces { "any" } else { &ctx.namespace }
                );
                return Ok(());
            }
            print::objects(resource("events")?, &items, None, all_namespaces, false)
        }
        Cmd::Scale { kind, name, replicas } => {
            let info = resource(&kind)?;
            if !matches!(info.kind, "Deployment" | "ReplicaSet" | "StatefulSet") {
                bail!(
                    "cannot scale a {}; only Deployments, ReplicaSets and StatefulSets scale",
                    info.kind
                );
            }
            if replicas < 0 {
                bail!("--replicas must be >= 0");
            }
            let patch = json!({"spec": {"replicas": replicas}});
            ctx.client
                .patch(info.plural, &ctx.namespace, &name, &patch, false, false)
                .await
                .map_err(server_error)?;
            println!("{} scaled", ref_name(info, &name));
            Ok(())
        }
        Cmd::ApiResources => {
            let d = ctx.client.discovery().await.map_err(server_error)?;
            let mut rows = vec![vec![
                "NAME".to_string(),
                "SHORTNAMES".into(),
                "APIVERSION".into(),
                "NAMESPACED".into(),
                "KIND".into(),
            ]];
            for r in d.resources {
                let av = if r.group.is_empty() {
                    r.version.clone()
                } else {
                    format!("{}/{}", r.group, r.version)
                };
                rows.push(vec![
                    r.plural,
                    r.short_names.join(","),
                    av,
                    r.namespaced.to_string(),
                    r.kind,
                ]);
            }
            print::table(&rows);
            Ok(())
        }
        Cmd::Version => {
            let d = ctx.client.discovery().await.map_err(server_error)?;
            println!(
                "Server Version: v{} (Kubernetes API 1.35, {} resources)",
                d.server_version,
                d.resources.len()
            );
            Ok(())
        }
        Cmd::Completion { .. } | Cmd::Config(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_reads_go_durations() {
        assert_eq!(parse_since("90s"), Ok(90));
        assert_eq!(parse_since("1h30m"), Ok(5400));
        assert_eq!(parse_since("1.5s"), Ok(2));
        assert!(
            parse_since("5d").is_err() && parse_since("").is_err() && parse_since("m").is_err()
        );
    }

    use super::*;
    use flotilla_api::RESOURCES;

    #[test]
    fn cli_parses_kubectl_forms() {
        Cli::command().debug_assert();
        let c = Cli::parse_from(["flotilla", "get", "po", "-A", "-o", "wide", "-l", "app=web"]);
        assert!(matches!(c.cmd, Cmd::Get { all_namespaces: true, output: Some(Output::Wide), .. }));
        let c = Cli::parse_from([
            "flotilla",
            "-n",
            "kube-system",
            "delete",
            "deploy",
            "web",
            "--grace-period",
            "0",
        ]);
        assert_eq!(c.namespace.as_deref(), Some("kube-system"));
        assert!(RESOURCES.iter().all(|r| resource(r.plural).is_ok()));
    }
}
