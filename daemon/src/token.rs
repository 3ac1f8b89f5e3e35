//! `flotillad token create | list | delete`: bootstrap tokens, as `kubeadm token`. A token is
//! a Secret `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token`; a node
//! presents `<id>.<secret>` once, to ask for its client certificate.

use anyhow::{bail, Context, Result};
use flotilla_client::{Client, Kubeconfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// kubeadm's group for its default node token; the default roles let it ask for node
/// certificates through `system:bootstrappers`.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:flotilla:default-node-token";

#[derive(clap::Args)]
pub struct TokenArgs {
    /// An administrator's kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    cmd: TokenCmd,
}

#[derive(clap::Subcommand)]
enum TokenCmd {
    /// A new token, and the `flotillad agent` command that joins a node with it.
    Create {
        /// How long the token works (0: forever).
        #[arg(long, default_value = "24h", value_parser = crate::trust::parse_lifetime_or_zero)]
        ttl: Duration,
        #[arg(long, default_value = "")]
        description: String,
        /// The address nodes reach the API server at (default: the kubeconfig's).
        #[arg(long)]
        server: Option<String>,
    },
    /// The tokens, as `kubeadm token list` prints them.
    List,
    /// Removes tokens (by ID or whole token): nodes can no longer join with them.
    Delete { tokens: Vec<String> },
}

fn random_chars(n: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source works");
    // 252 is the largest multiple of 36 below 256: no bias.
    let mut out = String::new();
    let mut i = 0;
    while out.len() < n {
        if i == b.len() {
            aws_lc_rs::rand::fill(&mut b).expect("random");
            i = 0;
        }
        if b[i] < 252 {
            out.push(ALPHA[(b[i] % 36) as usize] as char);
        }
        i += 1;
    }
    out
}

fn field(s: &Value, k: &str) -> String {
    use base64::Engine;
    s["data"][k]
        .as_str()
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

pub async fn run(a: TokenArgs) -> Result<()> {
    let conn = Kubeconfig::load(a.kubeconfig.as_deref())?.connection(None)?;
    let client = Client::connect_to(&conn).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let api = |e: flotilla_api::ApiError| anyhow::anyhow!("{}", e.message);
    match a.cmd {
        TokenCmd::Create { ttl, description, server } => {
            let (id, secret) = (random_chars(6), random_chars(16));
            let mut data = json!({"token-id": id, "token-secret": secret,
                "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                "auth-extra-groups": DEFAULT_GROUP});
            if !ttl.is_zero() {
                let exp =
                    jiff::Timestamp::now() + jiff::SignedDuration::from_secs(ttl.as_secs() as i64);
                data["expiration"] = json!(exp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            }
            if !description.is_empty() {
                data["description"] = json!(description);
            }
            let obj = json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
                "stringData": data});
            client.create("secrets", "kube-system", &obj).await.map_err(api)?;
            let ca = conn.ca_pem.as_deref().context("the kubeconfig has no cluster CA to pin")?;
            let hash = flotilla_pki::ca::ca_hash(ca)?;
            let server = server.unwrap_or(conn.server);
            println!(
                "flotillad agent --server {server} --token {id}.{secret} --ca-cert-hash {hash}"
            );
        }
        TokenCmd::List => {
            let list =
                client.list("secrets", "kube-system", &Default::default()).await.map_err(api)?;
            println!(
                "{:<24}{:<22}{:<40}{:<22}EXTRA GROUPS",
                "TOKEN", "EXPIRES", "USAGES", "DESCRIPTION"
            );
            for s in list.items.iter().filter(|s| s["type"] == "bootstrap.kubernetes.io/token") {
                let usages: Vec<&str> = ["authentication", "signing"]
                    .into_iter()
                    .filter(|u| field(s, &format!("usage-bootstrap-{u}")) == "true")
                    .collect();
                let exp = field(s, "expiration");
                println!(
                    "{:<24}{:<22}{:<40}{:<22}{}",
                    format!("{}.{}", field(s, "token-id"), "<redacted>"),
                    if exp.is_empty() { "<forever>".into() } else { exp },
                    usages.join(","),
                    field(s, "description"),
                    field(s, "auth-extra-groups")
                );
            }
        }
        TokenCmd::Delete { tokens } => {
            if tokens.is_empty() {
                bail!("give the token IDs (or tokens) to delete");
            }
            for t in tokens {
                let id = t.split('.').next().unwrap_or_default();
                let name = format!("bootstrap-token-{id}");
                client
                    .delete("secrets", "kube-system", &name, &Default::default())
                    .await
                    .map_err(api)?;
                println!("bootstrap token {id:?} deleted");
            }
        }
    }
    Ok(())
}
