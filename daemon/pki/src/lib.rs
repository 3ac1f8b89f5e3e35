//! The cluster's trust material: the CA and what it issues ([`ca`]), rustls configurations
//! for every port with certificates that renew in place ([`tls`]), and kubeconfig files
//! ([`kubeconfig`]).
//!
//! ```text
//!  <data-dir>/pki/ca.crt, ca.key ──issue──▶ apiserver (6443, 2379, 2380 serving)
//!                                  ├──────▶ apiserver-kubelet-client (API server → node API)
//!                                  ├──────▶ admin.conf (flotilla-admin, system:masters)
//!                                  └──────▶ scheduler, controller manager, nodes (own names)
//! ```

#![forbid(unsafe_code)]

pub mod ca;
pub mod kubeconfig;
pub mod tls;

pub use ca::{ca_hash, self_signed, Ca, Issued, Request};
pub use kubeconfig::{Connection, Kubeconfig};
pub use tls::{ClientAuth, KeyHolder};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Parse { path: PathBuf, what: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0:?} is not a valid DNS name for a certificate")]
    Name(String),
    #[error("certificate signing request: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("issuing a certificate: {0}")]
    Rcgen(#[source] rcgen::Error),
}

/// Writes a key or a kubeconfig: created with mode 0600 (never readable by others, even
/// briefly), replaced atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    write_mode(path, data, 0o600)
}

pub fn write_public(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    write_mode(path, data, 0o644)
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The first certificate in PEM data, DER.
pub fn first_cert_der(pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

/// A certificate's subject CN and O entries: Kubernetes' user name and groups.
pub fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let orgs =
        subject.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Some((cn, orgs))
}

/// (not before, not after).
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("certificate does not parse: {e}")))?;
    let v = cert.validity();
    let t = |t: x509_parser::time::ASN1Time| {
        let s = t.timestamp();
        if s >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((t(v.not_before), t(v.not_after)))
}

/// The host's name and the addresses a serving certificate should name, plus the
/// `kubernetes` Service's names and ClusterIP (kubeadm's apiserver SANs).
pub fn apiserver_names(
    listen_ips: &[std::net::IpAddr],
    service_ip: Option<std::net::IpAddr>,
    extra: &[String],
) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let mut dns = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    if let Ok(h) = nix_hostname() {
        if !h.is_empty() && !dns.contains(&h) {
            dns.push(h);
        }
    }
    let mut ips: Vec<std::net::IpAddr> =
        vec![std::net::Ipv4Addr::LOCALHOST.into(), std::net::Ipv6Addr::LOCALHOST.into()];
    for e in extra {
        match e.parse::<std::net::IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(e.clone()),
        }
    }
    ips.extend(listen_ips.iter().filter(|ip| !ip.is_unspecified()));
    ips.extend(service_ip);
    ips.sort();
    ips.dedup();
    dns.dedup();
    (dns, ips)
}

fn nix_hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string())
}

/// A bootstrap token's `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`, Kubernetes'
/// format), split; None when the text is not one.
pub fn bootstrap_token_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}
