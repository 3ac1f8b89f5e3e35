//! Kubernetes' kubeconfig files (`apiVersion: v1`, `kind: Config`): read as kubectl reads them
//! (`--kubeconfig`, else `$KUBECONFIG`'s files merged, first value wins, else
//! `~/.kube/config`) and written for the admin and each component.

use crate::PkiError;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion", default = "v1")]
    pub api_version: String,
    #[serde(default = "config_kind")]
    pub kind: String,
    #[serde(default)]
    pub clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    pub users: Vec<Named<AuthInfo>>,
    #[serde(default)]
    pub contexts: Vec<Named<Context>>,
    #[serde(rename = "current-context", default)]
    pub current_context: String,
    #[serde(default, skip_serializing_if = "serde_yaml::Value::is_null")]
    pub preferences: serde_yaml::Value,
}

fn v1() -> String {
    "v1".into()
}
fn config_kind() -> String {
    "Config".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Named<T> {
    pub name: String,
    #[serde(flatten)]
    pub value: T,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cluster {
    pub cluster: ClusterInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterInfo {
    pub server: String,
    #[serde(
        rename = "certificate-authority-data",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub certificate_authority_data: String,
    #[serde(rename = "certificate-authority", default, skip_serializing_if = "String::is_empty")]
    pub certificate_authority: String,
    #[serde(rename = "tls-server-name", default, skip_serializing_if = "String::is_empty")]
    pub tls_server_name: String,
    #[serde(
        rename = "insecure-skip-tls-verify",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub insecure_skip_tls_verify: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuthInfo {
    pub user: UserInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UserInfo {
    #[serde(rename = "client-certificate-data", default, skip_serializing_if = "String::is_empty")]
    pub client_certificate_data: String,
    #[serde(rename = "client-key-data", default, skip_serializing_if = "String::is_empty")]
    pub client_key_data: String,
    #[serde(rename = "client-certificate", default, skip_serializing_if = "String::is_empty")]
    pub client_certificate: String,
    #[serde(rename = "client-key", default, skip_serializing_if = "String::is_empty")]
    pub client_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(rename = "tokenFile", default, skip_serializing_if = "String::is_empty")]
    pub token_file: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Context {
    pub context: ContextInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContextInfo {
    pub cluster: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Everything a client needs to reach and authenticate to one cluster.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub server: String,
    /// PEM; `None` with `insecure`.
    pub ca_pem: Option<String>,
    pub insecure: bool,
    pub tls_server_name: Option<String>,
    /// (certificate PEM, key PEM)
    pub client_cert: Option<crate::Issued>,
    pub token: Option<String>,
    pub namespace: Option<String>,
    /// The context it came from.
    pub context: String,
}

impl Kubeconfig {
    /// One cluster, one user, one context named `<user>@<cluster>`, current.
    pub fn single(
        cluster: &str,
        server: &str,
        ca_pem: &str,
        user: &str,
        auth: UserInfo,
    ) -> Kubeconfig {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let ctx = format!("{user}@{cluster}");
        Kubeconfig {
            api_version: v1(),
            kind: config_kind(),
            clusters: vec![Named {
                name: cluster.into(),
                value: Cluster {
                    cluster: ClusterInfo {
                        server: server.into(),
                        certificate_authority_data: b64(ca_pem),
                        ..Default::default()
                    },
                },
            }],
            users: vec![Named { name: user.into(), value: AuthInfo { user: auth } }],
            contexts: vec![Named {
                name: ctx.clone(),
                value: Context {
                    context: ContextInfo {
                        cluster: cluster.into(),
                        user: user.into(),
                        namespace: String::new(),
                    },
                },
            }],
            current_context: ctx,
            preferences: serde_yaml::Value::Null,
        }
    }

    /// Client-certificate credentials, embedded.
    pub fn cert_user(issued: &crate::Issued) -> UserInfo {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        UserInfo {
            client_certificate_data: b64(&issued.cert_pem),
            client_key_data: b64(&issued.key_pem),
            ..Default::default()
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Kubeconfig, PkiError> {
        if text.trim().is_empty() {
            return Ok(Kubeconfig { api_version: v1(), kind: config_kind(), ..Default::default() });
        }
        serde_yaml::from_str(text)
            .map_err(|e| PkiError::Parse { path: path.to_path_buf(), what: e.to_string() })
    }

    /// A file, with its relative paths made absolute (for use).
    pub fn read(path: &Path) -> Result<Kubeconfig, PkiError> {
        let mut kc = Kubeconfig::read_raw(path)?;
        kc.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(kc)
    }

    /// A file as written (for changing and writing back).
    pub fn read_raw(path: &Path) -> Result<Kubeconfig, PkiError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PkiError::Io { path: path.to_path_buf(), source: e })?;
        Kubeconfig::parse(&text, path)
    }

    /// Relative file references are relative to the kubeconfig's directory (kubectl's rule).
    fn resolve_paths(&mut self, dir: &Path) {
        let abs = |p: &mut String| {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
                *p = dir.join(&*p).to_string_lossy().into_owned();
            }
        };
        for c in &mut self.clusters {
            abs(&mut c.value.cluster.certificate_authority);
        }
        for u in &mut self.users {
            abs(&mut u.value.user.client_certificate);
            abs(&mut u.value.user.client_key);
            abs(&mut u.value.user.token_file);
        }
    }

    /// Writes with mode 0600 (it holds keys).
    pub fn write(&self, path: &Path) -> Result<(), PkiError> {
        let text = serde_yaml::to_string(self)
            .map_err(|e| PkiError::Invalid(format!("encoding a kubeconfig: {e}")))?;
        crate::write_private(path, text.as_bytes())
    }

    /// The files kubectl would read, in order: `explicit`, else `$KUBECONFIG`'s entries, else
    /// `~/.kube/config`.
    pub fn paths(explicit: Option<&Path>) -> Vec<PathBuf> {
        if let Some(p) = explicit {
            return vec![p.to_path_buf()];
        }
        if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            return std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect();
        }
        home().map(|h| vec![h.join(".kube/config")]).unwrap_or_default()
    }

    /// The merged configuration: entries by name and the current context from the first file
    /// that has them (kubectl's merge). Missing `$KUBECONFIG` entries are skipped, as kubectl
    /// skips them; an explicit `--kubeconfig` must exist.
    pub fn load(explicit: Option<&Path>) -> Result<Kubeconfig, PkiError> {
        let mut merged =
            Kubeconfig { api_version: v1(), kind: config_kind(), ..Default::default() };
        for p in Kubeconfig::paths(explicit) {
            if explicit.is_none() && !p.exists() {
                continue;
            }
            merged.merge(Kubeconfig::read(&p)?);
        }
        Ok(merged)
    }

    fn merge(&mut self, other: Kubeconfig) {
        fn add<T>(into: &mut Vec<Named<T>>, from: Vec<Named<T>>) {
            for n in from {
                if !into.iter().any(|e| e.name == n.name) {
                    into.push(n);
                }
            }
        }
        add(&mut self.clusters, other.clusters);
        add(&mut self.users, other.users);
        add(&mut self.contexts, other.contexts);
        if self.current_context.is_empty() {
            self.current_context = other.current_context;
        }
    }

    pub fn context(&self, name: &str) -> Option<&ContextInfo> {
        self.contexts.iter().find(|c| c.name == name).map(|c| &c.value.context)
    }

    /// The connection of `context` (default: the current context).
    pub fn connection(&self, context: Option<&str>) -> Result<Connection, PkiError> {
        let name = context.unwrap_or(&self.current_context);
        if name.is_empty() {
            return Err(PkiError::Invalid("the kubeconfig has no current context".into()));
        }
        let ctx = self
            .context(name)
            .ok_or_else(|| PkiError::Invalid(format!("context \"{name}\" does not exist")))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .map(|c| &c.value.cluster)
            .ok_or_else(|| {
                PkiError::Invalid(format!(
                    "context \"{name}\": cluster \"{}\" does not exist",
                    ctx.cluster
                ))
            })?;
        let user = self.users.iter().find(|u| u.name == ctx.user).map(|u| &u.value.user);
        let data = |field: &str, b64: &str, file: &str| -> Result<Option<String>, PkiError> {
            if !b64.is_empty() {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| PkiError::Invalid(format!("context \"{name}\": {field}: {e}")))?;
                return String::from_utf8(raw).map(Some).map_err(|_| {
                    PkiError::Invalid(format!("context \"{name}\": {field} is not PEM text"))
                });
            }
            if !file.is_empty() {
                return std::fs::read_to_string(file)
                    .map(Some)
                    .map_err(|e| PkiError::Io { path: file.into(), source: e });
            }
            Ok(None)
        };
        let ca_pem = data(
            "certificate-authority-data",
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        )?;
        let mut conn = Connection {
            server: cluster.server.clone(),
            ca_pem,
            insecure: cluster.insecure_skip_tls_verify,
            tls_server_name: Some(cluster.tls_server_name.clone()).filter(|s| !s.is_empty()),
            namespace: Some(ctx.namespace.clone()).filter(|s| !s.is_empty()),
            context: name.to_string(),
            ..Default::default()
        };
        if let Some(u) = user {
            let cert =
                data("client-certificate-data", &u.client_certificate_data, &u.client_certificate)?;
            let key = data("client-key-data", &u.client_key_data, &u.client_key)?;
            match (cert, key) {
                (Some(cert_pem), Some(key_pem)) => {
                    conn.client_cert = Some(crate::Issued { cert_pem, key_pem })
                }
                (None, None) => {}
                _ => {
                    return Err(PkiError::Invalid(format!(
                        "user \"{}\": a client certificate needs both the certificate and the key",
                        ctx.user
                    )))
                }
            }
            if !u.token.is_empty() {
                conn.token = Some(u.token.clone());
            } else if !u.token_file.is_empty() {
                let t = std::fs::read_to_string(&u.token_file)
                    .map_err(|e| PkiError::Io { path: u.token_file.clone().into(), source: e })?;
                conn.token = Some(t.trim().to_string());
            }
        }
        Ok(conn)
    }
}

pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_kubeconfig_reads_back_with_its_credentials() {
        let ca = crate::Ca::generate("test-ca").unwrap();
        let admin =
            ca.issue(&crate::Request::client("flotilla-admin", &["system:masters"])).unwrap();
        let kc = Kubeconfig::single(
            "flotilla",
            "https://127.0.0.1:6443",
            ca.cert_pem(),
            "flotilla-admin",
            Kubeconfig::cert_user(&admin),
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.conf");
        kc.write(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let back = Kubeconfig::load(Some(&p)).unwrap();
        assert_eq!(back.current_context, "flotilla-admin@flotilla");
        let c = back.connection(None).unwrap();
        assert_eq!(c.server, "https://127.0.0.1:6443");
        assert_eq!(c.ca_pem.as_deref(), Some(ca.cert_pem()));
        assert_eq!(c.client_cert.unwrap().cert_pem, admin.cert_pem);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("current-context: flotilla-admin@flotilla"), "{text}");
        assert!(text.contains("certificate-authority-data:"), "{text}");
    }

    #[test]
    fn kubectls_own_format_parses_and_an_unknown_context_is_named() {
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n    insecure-skip-tls-verify: true\n  name: c\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- context:\n    cluster: c\n    user: u\n    namespace: team\n  name: x\ncurrent-context: x\npreferences: {}\n";
        let kc = Kubeconfig::parse(text, Path::new("k")).unwrap();
        let c = kc.connection(None).unwrap();
        assert!(c.insecure);
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.namespace.as_deref(), Some("team"));
        let e = kc.connection(Some("nope")).unwrap_err().to_string();
        assert!(e.contains("context \"nope\" does not exist"), "{e}");
    }
}
