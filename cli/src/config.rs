//! `flotilla config view | get-contexts | current-context | use-context`: kubeconfig files,
//! read and changed as `kubectl config` does.

use anyhow::{bail, Context as _, Result};
use flotilla_client::Kubeconfig;
use std::path::{Path, PathBuf};

use crate::print::table;

#[derive(clap::Subcommand)]
pub enum Config {
    /// The merged kubeconfig (certificate and key data redacted unless --raw).
    View {
        /// Only the current context and what it uses.
        #[arg(long)]
        minify: bool,
        /// Show certificate, key and token data.
        #[arg(long)]
        raw: bool,
        #[arg(short, long)]
        output: Option<crate::Output>,
    },
    /// The contexts, the current one marked with `*`.
    GetContexts {
        /// Only the names.
        #[arg(short, long, value_parser = ["name"])]
        output: Option<String>,
    },
    /// The current context's name.
    CurrentContext,
    /// Makes a context the current one (in the file that sets current-context, else the first).
    UseContext { name: String },
}

pub fn run(explicit: Option<&Path>, context: Option<&str>, c: Config) -> Result<()> {
    let kc = Kubeconfig::load(explicit)?;
    match c {
        Config::View { minify, raw, output } => {
            let mut v = kc.clone();
            if minify {
                let name = context.unwrap_or(&kc.current_context).to_string();
                let ctx = kc
                    .context(&name)
                    .with_context(|| format!("cannot minify: context \"{name}\" does not exist"))?
                    .clone();
                v.contexts.retain(|c| c.name == name);
                v.clusters.retain(|c| c.name == ctx.cluster);
                v.users.retain(|u| u.name == ctx.user);
                v.current_context = name;
            }
            if !raw {
                for c in &mut v.clusters {
                    redact(&mut c.value.cluster.certificate_authority_data, "DATA+OMITTED");
                }
                for u in &mut v.users {
                    redact(&mut u.value.user.client_certificate_data, "DATA+OMITTED");
                    redact(&mut u.value.user.client_key_data, "DATA+OMITTED");
                    redact(&mut u.value.user.token, "REDACTED");
                }
            }
            match output {
                Some(crate::Output::Json) => println!("{}", serde_json::to_string_pretty(&v)?),
                _ => print!("{}", serde_yaml::to_string(&v)?),
            }
        }
        Config::GetContexts { output } => {
            if output.is_some() {
                for c in &kc.contexts {
                    println!("{}", c.name);
                }
                return Ok(());
            }
            let mut rows = vec![["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"]
                .map(String::from)
                .to_vec()];
            for c in &kc.contexts {
                let i = &c.value.context;
                let mark = if c.name == kc.current_context { "*" } else { "" };
                rows.push(vec![
                    mark.into(),
                    c.name.clone(),
                    i.cluster.clone(),
                    i.user.clone(),
                    i.namespace.clone(),
                ]);
            }
            table(&rows);
        }
        Config::CurrentContext => {
            if kc.current_context.is_empty() {
                bail!("current-context is not set");
            }
            println!("{}", kc.current_context);
        }
        Config::UseContext { name } => {
            if kc.context(&name).is_none() {
                bail!("no context exists with the name: \"{name}\"");
            }
            let file = target_file(explicit)?;
            let mut own = if file.exists() { Kubeconfig::read_raw(&file)? } else { kc.clone() };
            own.current_context = name.clone();
            own.write(&file)?;
            println!("Switched to context \"{name}\".");
        }
    }
    Ok(())
}

fn redact(s: &mut String, with: &str) {
    if !s.is_empty() {
        *s = with.into();
    }
}

/// The file `use-context` changes: kubectl's rule, the first file that sets current-context,
/// else the first file.
fn target_file(explicit: Option<&Path>) -> Result<PathBuf> {
    let paths = Kubeconfig::paths(explicit);
    for p in &paths {
        if p.exists() && !Kubeconfig::read_raw(p)?.current_context.is_empty() {
            return Ok(p.clone());
        }
    }
    paths.into_iter().next().context("no kubeconfig file to change (set HOME or KUBECONFIG)")
}
