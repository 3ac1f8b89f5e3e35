//! A control-plane member's certificates: the cluster CA in `<home>/pki` (created on first
//! start), the serving certificate of its ports, its client certificate towards node agents,
//! the identities of its in-process components, and the admin kubeconfig. Every certificate
//! it issues for itself renews in place 80% into its life.

use anyhow::{Context, Result};
use flotilla_client::Tls;
use flotilla_pki::tls::{self, ClientAuth};
use flotilla_pki::{Ca, Issued, KeyHolder, Kubeconfig, PkiError, Request};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The API server's client certificate towards node agents (kubeadm's
/// `apiserver-kubelet-client`): the only identity the node API accepts.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The O of members' peer certificates: the only callers the store's peer port admits.
pub const STORE_PEERS: &str = "flotilla:store-peers";

/// The store's client port admits this group only (etcd has a CA of its own in kubeadm;
/// with one CA, a node's certificate must not reach the store).
pub const STORE_CLIENTS: &str = "system:masters";

pub struct ControlPlane {
    pub ca: Arc<Ca>,
    pub serving: Arc<KeyHolder>,
    pub kubelet_client: Arc<KeyHolder>,
    /// This member on the store's peer port, as server and as client.
    pub peer: Arc<KeyHolder>,
    pub lifetime: Duration,
}

impl ControlPlane {
    /// Loads or creates the CA in `dir` and issues this member's certificates (written there
    /// too, for operators: `apiserver.crt`, `apiserver-kubelet-client.crt`).
    pub fn init(
        dir: &Path,
        listen: &[IpAddr],
        extra_sans: &[String],
        lifetime: Duration,
    ) -> Result<Arc<ControlPlane>> {
        let ca =
            Arc::new(Ca::load_or_create(dir).with_context(|| {
                format!("the cluster CA in {} (ca.crt, ca.key)", dir.display())
            })?);
        let (dns, ips) =
            flotilla_pki::apiserver_names(listen, Some(IpAddr::from([10, 96, 0, 1])), extra_sans);
        let serving_req =
            Request::server("kube-apiserver", dns.clone(), ips.clone()).lifetime(lifetime);
        let kubelet_req = Request::client(KUBELET_CLIENT, &["system:masters"]).lifetime(lifetime);
        let peer_req = Request {
            organizations: vec![STORE_PEERS.into()],
            client: true,
            ..Request::server("flotilla-store-peer", dns, ips)
        }
        .lifetime(lifetime);
        // For etcdctl and other etcd clients (kubeadm's apiserver-etcd-client).
        let etcd_client_req =
            Request::client("kube-apiserver-etcd-client", &[STORE_CLIENTS]).lifetime(lifetime);
        let serving = persist(dir, "apiserver", ca.issue(&serving_req)?)?;
        let kubelet = persist(dir, "apiserver-kubelet-client", ca.issue(&kubelet_req)?)?;
        let peer = persist(dir, "store-peer", ca.issue(&peer_req)?)?;
        let etcd_client = persist(dir, "apiserver-etcd-client", ca.issue(&etcd_client_req)?)?;
        let cp = ControlPlane {
            ca: ca.clone(),
            serving: KeyHolder::new(&serving)?,
            kubelet_client: KeyHolder::new(&kubelet)?,
            peer: KeyHolder::new(&peer)?,
            lifetime,
        };
        renew(&cp.serving, ca.clone(), serving_req, Some((dir.into(), "apiserver")));
        let file = Some((dir.into(), "apiserver-kubelet-client"));
        renew(&cp.kubelet_client, ca.clone(), kubelet_req, file);
        renew(&cp.peer, ca.clone(), peer_req, Some((dir.into(), "store-peer")));
        // Only the files use this one; a holder keeps the renewal schedule.
        let file = Some((dir.into(), "apiserver-etcd-client"));
        renew(&KeyHolder::new(&etcd_client)?, ca, etcd_client_req, file);
        Ok(Arc::new(cp))
    }

    /// A client identity for an in-process component, renewed in place.
    pub fn identity(&self, cn: &str, orgs: &[&str]) -> Result<Arc<KeyHolder>> {
        let req = Request::client(cn, orgs).lifetime(self.lifetime);
        let holder = KeyHolder::new(&self.ca.issue(&req)?)?;
        renew(&holder, self.ca.clone(), req, None);
        Ok(holder)
    }

    /// TLS towards this member's API server as `identity`.
    pub fn client_tls(&self, identity: Arc<KeyHolder>) -> Tls {
        Tls { ca_pem: Some(self.ca.cert_pem().into()), identity: Some(identity), server_name: None }
    }

    /// The API port: client certificates from the CA identify their holder; callers without
    /// one go on to token authentication or are anonymous.
    pub fn api_server_tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        Ok(tls::server_config(self.ca.cert_pem(), self.serving.clone(), ClientAuth::Optional)?)
    }

    /// The store's ports: the client port (2379) admits client certificates of
    /// [`STORE_CLIENTS`], the peer port (2380) those of [`STORE_PEERS`]; plain text and other
    /// CAs are refused (etcd's `--client-cert-auth` and `--peer-client-cert-auth`).
    pub fn store_tls(&self) -> Result<flotilla_store::StoreTls> {
        let ca = self.ca.cert_pem();
        let groups = |g: &str| ClientAuth::Groups(vec![g.to_string()]);
        Ok(flotilla_store::StoreTls {
            client: tls::server_config(ca, self.serving.clone(), groups(STORE_CLIENTS))?,
            peer_server: tls::server_config(ca, self.peer.clone(), groups(STORE_PEERS))?,
            peer_client: tls::client_config(Some(ca), Some(self.peer.clone()))?,
        })
    }

    /// The API server towards node agents. The agents' serving certificates are not verified
    /// (they may be self-signed, as kubelets' are by default; kube-apiserver verifies them only
    /// with --kubelet-certificate-authority); the agents verify ours.
    pub fn node_client_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        Ok(tls::client_config(None, Some(self.kubelet_client.clone()))?)
    }

    /// A kubeconfig for `cn` (O `orgs`) against `server`, written with mode 0600.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        cn: &str,
        orgs: &[&str],
    ) -> Result<()> {
        let issued = self.ca.issue(&Request::client(cn, orgs).lifetime(self.lifetime))?;
        kubeconfig(&self.ca, server, cn, &issued).write(path)?;
        Ok(())
    }

    /// `<home>/admin.conf` for `flotilla-admin` (group `system:masters`), as kubeadm writes
    /// `/etc/kubernetes/admin.conf`. Kept across restarts unless it is for another CA or
    /// server, or past 80% of its life.
    pub fn write_admin_conf(&self, path: &Path, server: &str) -> Result<()> {
        if let Ok(kc) = Kubeconfig::read(path) {
            if let Ok(c) = kc.connection(None) {
                let fresh = c.client_cert.as_ref().is_some_and(|i| {
                    KeyHolder::new(i).is_ok_and(|h| h.renew_at() > std::time::SystemTime::now())
                });
                if c.server == server && c.ca_pem.as_deref() == Some(self.ca.cert_pem()) && fresh {
                    return Ok(());
                }
            }
        }
        self.write_kubeconfig(path, server, "flotilla-admin", &["system:masters"])
            .with_context(|| format!("writing the admin kubeconfig {}", path.display()))
    }
}

pub fn kubeconfig(ca: &Ca, server: &str, user: &str, issued: &Issued) -> Kubeconfig {
    Kubeconfig::single("flotilla", server, ca.cert_pem(), user, Kubeconfig::cert_user(issued))
}

fn persist(dir: &Path, name: &str, issued: Issued) -> Result<Issued> {
    let (crt, key) = flotilla_pki::ca::pair_paths(dir, name);
    flotilla_pki::write_private(&key, issued.key_pem.as_bytes())?;
    flotilla_pki::write_public(&crt, issued.cert_pem.as_bytes())?;
    Ok(issued)
}

/// Re-issues `req` into `holder` as it nears expiry; with `file`, also rewrites
/// `<dir>/<name>.crt` and `.key`.
fn renew(
    holder: &Arc<KeyHolder>,
    ca: Arc<Ca>,
    req: Request,
    file: Option<(PathBuf, &'static str)>,
) {
    tls::spawn_renewal(holder.clone(), req.common_name.clone(), move || {
        let (ca, req, file) = (ca.clone(), req.clone(), file.clone());
        async move {
            let issued = ca.issue(&req)?;
            match file {
                Some((dir, name)) => {
                    persist(&dir, name, issued).map_err(|e| PkiError::Invalid(format!("{e:#}")))
                }
                None => Ok(issued),
            }
        }
    });
}

/// Parses a Go-style duration (`8760h`, `90s`, `10m`) or seconds.
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    flotilla_api::quantity::parse_go_duration(s)
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration such as 8760h, 30m or 90s"))
}

/// `parse_lifetime`, with 0 allowed (a token that never expires).
pub fn parse_lifetime_or_zero(s: &str) -> Result<Duration, String> {
    if s == "0" || s == "0s" {
        return Ok(Duration::ZERO);
    }
    parse_lifetime(s)
}
