//! `flotilla create token` and `flotilla auth whoami`: service account tokens, as kubectl's.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::print::table;
use crate::{server_error, Ctx};

#[derive(clap::Subcommand)]
pub enum CreateWhat {
    /// A token for a service account (a TokenRequest), printed on stdout.
    Token {
        service_account: String,
        /// Who the token is for (repeatable; default: the API server).
        #[arg(long)]
        audience: Vec<String>,
        /// Lifetime: seconds, or a duration such as 10m, 1h, 1h30m (default: 1h).
        #[arg(long)]
        duration: Option<String>,
        /// Bind the token to an object (Pod, Secret or Node): it stops working when the
        /// object is deleted.
        #[arg(long, requires = "bound_object_name")]
        bound_object_kind: Option<String>,
        #[arg(long, requires = "bound_object_kind")]
        bound_object_name: Option<String>,
        /// The bound object's uid (the request fails if it does not match).
        #[arg(long, requires = "bound_object_kind")]
        bound_object_uid: Option<String>,
    },
    /// A Role: `--verb=get,list --resource=pods,deployments.apps [--resource-name=x]`.
    Role(crate::rbac::RoleArgs),
    /// A ClusterRole: as a role, plus `--non-resource-url` and `--aggregation-rule`.
    Clusterrole {
        #[command(flatten)]
        role: crate::rbac::RoleArgs,
        #[arg(long, value_delimiter = ',')]
        non_resource_url: Vec<String>,
        /// `key=value` labels of the ClusterRoles to aggregate.
        #[arg(long, value_delimiter = ',')]
        aggregation_rule: Vec<String>,
    },
    /// A RoleBinding: `--clusterrole=X | --role=Y` to `--user`, `--group`, `--serviceaccount=ns:name`.
    Rolebinding(crate::rbac::BindingArgs),
    /// A ClusterRoleBinding: `--clusterrole=X` to users, groups or service accounts.
    Clusterrolebinding(crate::rbac::BindingArgs),
    #[command(flatten)]
    Generated(crate::generate::Gen),
}

#[derive(clap::Subcommand)]
pub enum Auth {
    /// Who the server takes you for (from --token).
    Whoami {
        #[arg(short, long)]
        output: Option<crate::Output>,
    },
    /// Whether you may do something: `can-i VERB TYPE[/NAME]`, or `can-i --list`. Exits 1
    /// for "no".
    CanI(crate::rbac::CanI),
}

/// Seconds in `10m`, `1h30m`, `45s` (Go's durations, as kubectl takes them) or a plain
/// number of seconds.
fn parse_duration(s: &str) -> Result<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    match flotilla_api::quantity::parse_go_duration(s) {
        Some(d) => Ok(d.as_secs()),
        None => bail!("--duration {s:?} is not a duration such as 10m, 1h30m or 600"),
    }
}

pub async fn create(ctx: &Ctx, what: CreateWhat) -> Result<()> {
    use crate::rbac;
    let (obj, dry_run, output) = match what {
        CreateWhat::Token { .. } => return create_token(ctx, what).await,
        CreateWhat::Generated(g) => return crate::generate::create(ctx, g).await,
        CreateWhat::Role(r) => (rbac::object(ctx, "Role", Some(&r), None)?, r.dry_run, r.output),
        CreateWhat::Clusterrole { role, non_resource_url, aggregation_rule } => {
            let mut obj = rbac::object(ctx, "ClusterRole", Some(&role), None)?;
            rbac::add_cluster_role_parts(
                &mut obj,
                &role.verb,
                &non_resource_url,
                &aggregation_rule,
            )?;
            (obj, role.dry_run, role.output)
        }
        CreateWhat::Rolebinding(b) => {
            (rbac::object(ctx, "RoleBinding", None, Some(&b))?, b.dry_run, b.output)
        }
        CreateWhat::Clusterrolebinding(b) => {
            (rbac::object(ctx, "ClusterRoleBinding", None, Some(&b))?, b.dry_run, b.output)
        }
    };
    rbac::create(ctx, obj, dry_run, output).await
}

async fn create_token(ctx: &Ctx, what: CreateWhat) -> Result<()> {
    let CreateWhat::Token {
        service_account,
        audience,
        duration,
        bound_object_kind,
        bound_object_name,
        bound_object_uid,
    } = what
    else {
        unreachable!("only tokens come here")
    };
    let mut spec = json!({"audiences": audience});
    if let Some(d) = duration {
        spec["expirationSeconds"] = json!(parse_duration(&d)?);
    }
    if let (Some(kind), Some(name)) = (bound_object_kind, bound_object_name) {
        let api = if kind == "Pod" || kind == "Secret" || kind == "Node" { "v1" } else { "" };
        spec["boundObjectRef"] = json!({"kind": kind, "apiVersion": api, "name": name});
        if let Some(uid) = bound_object_uid {
            spec["boundObjectRef"]["uid"] = json!(uid);
        }
    }
    let req =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let out = ctx
        .client
        .create_token(&ctx.namespace, &service_account, &req)
        .await
        .map_err(server_error)?;
    println!("{}", out["status"]["token"].as_str().unwrap_or_default());
    Ok(())
}

pub async fn run(ctx: &Ctx, a: Auth) -> Result<()> {
    let output = match a {
        Auth::Whoami { output } => output,
        Auth::CanI(c) => {
            if !crate::rbac::can_i(ctx, c).await? {
                std::process::exit(1);
            }
            return Ok(());
        }
    };
    let review = ctx.client.who_am_i().await.map_err(server_error)?;
    match output {
        Some(crate::Output::Json) => println!("{}", serde_json::to_string_pretty(&review)?),
        Some(crate::Output::Yaml) => print!("{}", serde_yaml::to_string(&review)?),
        _ => {
            let u = &review["status"]["userInfo"];
            let mut rows = vec![vec!["ATTRIBUTE".to_string(), "VALUE".to_string()]];
            rows.push(vec!["Username".into(), u["username"].as_str().unwrap_or("").into()]);
            if let Some(uid) = u["uid"].as_str() {
                rows.push(vec!["UID".into(), uid.into()]);
            }
            let groups: Vec<&str> =
                u["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            rows.push(vec!["Groups".into(), format!("[{}]", groups.join(" "))]);
            for (k, v) in u["extra"].as_object().into_iter().flatten() {
                let vals: Vec<&str> =
                    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                rows.push(vec![format!("Extra: {k}"), format!("[{}]", vals.join(" "))]);
            }
            table(&rows);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_kubectls() {
        assert_eq!(super::parse_duration("600").unwrap(), 600);
        assert_eq!(super::parse_duration("10m").unwrap(), 600);
        assert_eq!(super::parse_duration("1h30m").unwrap(), 5400);
        assert!(super::parse_duration("1d").is_err());
        assert!(super::parse_duration("10").is_ok());
        assert!(super::parse_duration("5m3").is_err());
    }
}
