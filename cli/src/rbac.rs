//! `flotilla create role | clusterrole | rolebinding | clusterrolebinding` and
//! `flotilla auth can-i`, with kubectl's flags and output.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::print::table;
use crate::{server_error, Ctx};

#[derive(clap::Args)]
pub struct RoleArgs {
    pub name: String,
    /// Verbs the rule allows (repeatable or comma-separated; `*` for all).
    #[arg(long, value_delimiter = ',')]
    pub verb: Vec<String>,
    /// Resources the rule applies to: `pods`, `deployments.apps`, `pods/log`, `*`.
    #[arg(long, value_delimiter = ',')]
    pub resource: Vec<String>,
    /// Only these objects.
    #[arg(long, value_delimiter = ',')]
    pub resource_name: Vec<String>,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short, long)]
    pub output: Option<crate::Output>,
}

#[derive(clap::Args)]
pub struct BindingArgs {
    pub name: String,
    /// The ClusterRole to bind.
    #[arg(long, conflicts_with = "role")]
    pub clusterrole: Option<String>,
    /// The Role to bind (rolebinding only).
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub user: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub group: Vec<String>,
    /// `namespace:name`.
    #[arg(long, value_delimiter = ',')]
    pub serviceaccount: Vec<String>,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short, long)]
    pub output: Option<crate::Output>,
}

/// kubectl's rules from `--verb`/`--resource`/`--resource-name`: one rule per API group.
fn rules(a: &RoleArgs) -> Result<Vec<Value>> {
    let mut by_group: Vec<(String, Vec<String>)> = Vec::new();
    for r in &a.resource {
        let (res, sub) = match r.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (r.as_str(), None),
        };
        let (plural, group) = if res == "*" {
            ("*".to_string(), "*".to_string())
        } else {
            let (name, group) = match res.split_once('.') {
                Some((n, g)) => (n, Some(g)),
                None => (res, None),
            };
            let info = flotilla_api::lookup(res)
                .or_else(|| flotilla_api::lookup(name))
                .filter(|i| group.is_none_or(|g| g == i.group))
                .with_context(|| format!("the server doesn't have a resource type \"{res}\""))?;
            (info.plural.to_string(), info.group.to_string())
        };
        let full = match sub {
            Some(s) => format!("{plural}/{s}"),
            None => plural,
        };
        match by_group.iter_mut().find(|(g, _)| *g == group) {
            Some((_, rs)) => rs.push(full),
            None => by_group.push((group, vec![full])),
        }
    }
    Ok(by_group
        .into_iter()
        .map(|(g, rs)| {
            let mut r = json!({"verbs": a.verb, "apiGroups": [g], "resources": rs});
            if !a.resource_name.is_empty() {
                r["resourceNames"] = json!(a.resource_name);
            }
            r
        })
        .collect())
}

fn subjects(b: &BindingArgs, ns: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for u in &b.user {
        out.push(json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": u}));
    }
    for g in &b.group {
        out.push(json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}));
    }
    for sa in &b.serviceaccount {
        let Some((sa_ns, name)) = sa.split_once(':') else {
            bail!("serviceaccount must be <namespace>:<name>, got {sa:?}");
        };
        let sa_ns = if sa_ns.is_empty() { ns } else { sa_ns };
        out.push(json!({"kind": "ServiceAccount", "namespace": sa_ns, "name": name}));
    }
    Ok(out)
}

/// Builds the object for one of the four `create` subcommands.
pub fn object(
    ctx: &Ctx,
    kind: &str,
    role: Option<&RoleArgs>,
    bind: Option<&BindingArgs>,
) -> Result<Value> {
    let api = "rbac.authorization.k8s.io/v1";
    let namespaced = matches!(kind, "Role" | "RoleBinding");
    let mut meta = json!({"name": role.map(|r| &r.name).or(bind.map(|b| &b.name))});
    if namespaced {
        meta["namespace"] = json!(ctx.namespace);
    }
    let mut obj = json!({"apiVersion": api, "kind": kind, "metadata": meta});
    if let Some(r) = role {
        if r.resource.is_empty() && kind == "Role" {
            bail!("at least one resource must be specified (--resource)");
        }
        if r.verb.is_empty() && !r.resource.is_empty() {
            bail!("at least one verb must be specified (--verb)");
        }
        obj["rules"] = json!(rules(r)?);
    }
    if let Some(b) = bind {
        let (rk, rn) = match (&b.clusterrole, &b.role) {
            (Some(c), None) => ("ClusterRole", c),
            (None, Some(r)) if kind == "RoleBinding" => ("Role", r),
            (None, Some(_)) => {
                bail!("--role is for rolebindings: a clusterrolebinding binds a --clusterrole")
            }
            _ => bail!("exactly one of clusterrole or role must be specified"),
        };
        obj["roleRef"] = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": rk, "name": rn});
        obj["subjects"] = json!(subjects(b, &ctx.namespace)?);
    }
    Ok(obj)
}

/// `create clusterrole` also takes `--non-resource-url` and `--aggregation-rule`.
pub fn add_cluster_role_parts(
    obj: &mut Value,
    verbs: &[String],
    urls: &[String],
    aggregation: &[String],
) -> Result<()> {
    if obj["rules"].as_array().is_none_or(|r| r.is_empty())
        && urls.is_empty()
        && aggregation.is_empty()
    {
        bail!("at least one resource or non-resource URL must be specified");
    }
    if !urls.is_empty() {
        if verbs.is_empty() {
            bail!("at least one verb must be specified (--verb)");
        }
        obj["rules"]
            .as_array_mut()
            .expect("rules")
            .push(json!({"verbs": verbs, "nonResourceURLs": urls}));
    }
    if !aggregation.is_empty() {
        let mut labels = serde_json::Map::new();
        for kv in aggregation {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--aggregation-rule {kv:?}: expected key=value");
            };
            labels.insert(k.into(), json!(v));
        }
        obj["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": labels}]});
        obj.as_object_mut().expect("object").remove("rules");
    }
    Ok(())
}

/// Creates `obj` and prints what kubectl prints.
pub async fn create(
    ctx: &Ctx,
    obj: Value,
    dry_run: bool,
    output: Option<crate::Output>,
) -> Result<()> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let info = flotilla_api::lookup(&kind).context("RBAC kinds are registered")?;
    let ns = if info.namespaced { ctx.namespace.as_str() } else { "" };
    let (created, warnings) =
        ctx.client.create_opts(info.plural, ns, &obj, dry_run).await.map_err(server_error)?;
    crate::warn(&warnings);
    match output {
        Some(crate::Output::Json) => println!("{}", serde_json::to_string_pretty(&created)?),
        Some(crate::Output::Yaml) => print!("{}", serde_yaml::to_string(&created)?),
        _ => {
            let name = created["metadata"]["name"].as_str().unwrap_or_default();
            let suffix = if dry_run { " (dry run)" } else { "" };
            println!("{}.{}/{name} created{suffix}", kind.to_lowercase(), info.group);
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct CanI {
    /// get, list, create, … (`*` for all).
    #[arg(required_unless_present = "list")]
    pub verb: Option<String>,
    /// TYPE, TYPE/NAME or a non-resource URL (`/logs`); not needed with --list.
    pub resource: Option<String>,
    pub name: Option<String>,
    /// Ask about every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(long)]
    pub subresource: Option<String>,
    /// Print what you may do in the namespace instead.
    #[arg(long)]
    pub list: bool,
    /// Answer with the exit code only.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn can_i(ctx: &Ctx, mut a: CanI) -> Result<bool> {
    let ns = if a.all_namespaces { "" } else { ctx.namespace.as_str() };
    if a.list {
        let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": ns}});
        let out = ctx.client.review_access(&review).await.map_err(server_error)?;
        print_rules(&out["status"]);
        return Ok(true);
    }
    let verb = a.verb.take().unwrap_or_default();
    let what =
        a.resource.take().context("give a resource: flotilla auth can-i VERB TYPE[/NAME]")?;
    let attrs = if what.starts_with('/') {
        json!({"nonResourceAttributes": {"verb": verb, "path": what}})
    } else {
        let (res, name) = match what.split_once('/') {
            Some((r, n)) => (r.to_string(), n.to_string()),
            None => (what.clone(), a.name.clone().unwrap_or_default()),
        };
        let (plural, group) = if res == "*" {
            ("*".to_string(), "*".to_string())
        } else {
            match flotilla_api::lookup(&res) {
                Some(i) => (i.plural.to_string(), i.group.to_string()),
                None => {
                    eprintln!("Warning: the server doesn't have a resource type '{res}'");
                    (res.clone(), String::new())
                }
            }
        };
        json!({"resourceAttributes": {"namespace": ns, "verb": verb, "group": group,
            "resource": plural, "subresource": a.subresource.clone().unwrap_or_default(),
            "name": name}})
    };
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": attrs});
    let out = ctx.client.review_access(&review).await.map_err(server_error)?;
    let allowed = out["status"]["allowed"].as_bool().unwrap_or(false);
    if !a.quiet {
        match (allowed, out["status"]["reason"].as_str()) {
            (true, _) => println!("yes"),
            (false, Some(r)) if !r.is_empty() => println!("no - {r}"),
            (false, _) => println!("no"),
        }
    }
    Ok(allowed)
}

fn print_rules(status: &Value) {
    let list = |v: &Value| -> String {
        let items: Vec<&str> =
            v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        format!("[{}]", items.join(" "))
    };
    let mut rows = vec![vec![
        "Resources".to_string(),
        "Non-Resource URLs".into(),
        "Resource Names".into(),
        "Verbs".into(),
    ]];
    for r in status["resourceRules"].as_array().into_iter().flatten() {
        let groups: Vec<&str> =
            r["apiGroups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        for res in r["resources"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            for g in &groups {
                let name = if g.is_empty() { res.to_string() } else { format!("{res}.{g}") };
                rows.push(vec![name, "[]".into(), list(&r["resourceNames"]), list(&r["verbs"])]);
            }
        }
    }
    for r in status["nonResourceRules"].as_array().into_iter().flatten() {
        rows.push(vec![String::new(), list(&r["nonResourceURLs"]), "[]".into(), list(&r["verbs"])]);
    }
    table(&rows);
}
