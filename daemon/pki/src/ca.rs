//! The cluster CA: created once (`ca.crt`, `ca.key`, mode 0600), then issuing the serving and
//! client certificates of every component, as kubeadm's `certs` phase does.

use crate::PkiError;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// The CA's own lifetime: kubeadm's ten years.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaf certificates: kubeadm's one year, unless a test asks for less.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating absorbs clock skew between machines (kubeadm backdates by five minutes).
const BACKDATE: Duration = Duration::from_secs(300);

pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a certificate says and may be used for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The subject's CN: the user name for client certificates.
    pub common_name: String,
    /// The subject's O entries: the groups.
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub server: bool,
    pub client: bool,
    /// Zero: [`LEAF_LIFETIME`].
    pub lifetime: Duration,
}

impl Request {
    pub fn client(cn: &str, orgs: &[&str]) -> Self {
        Request {
            common_name: cn.into(),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            client: true,
            ..Request::default()
        }
    }

    pub fn server(cn: &str, dns_names: Vec<String>, ips: Vec<IpAddr>) -> Self {
        Request { common_name: cn.into(), dns_names, ips, server: true, ..Request::default() }
    }

    pub fn lifetime(mut self, d: Duration) -> Self {
        self.lifetime = d;
        self
    }

    fn params(&self) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::default();
        // rcgen keeps one value per attribute type, so a second O would silently replace the
        // first: refuse it rather than issue a certificate with fewer groups than asked.
        if self.organizations.len() > 1 {
            return Err(PkiError::Invalid(format!(
                "certificate for {:?}: one organization (group) per certificate is supported, \
                 got {:?}; bind roles to the user or to one group",
                self.common_name, self.organizations
            )));
        }
        let mut dn = DistinguishedName::new();
        for o in &self.organizations {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        p.distinguished_name = dn;
        for d in &self.dns_names {
            let name = d.clone().try_into().map_err(|_| PkiError::Name(d.clone()))?;
            p.subject_alt_names.push(SanType::DnsName(name));
        }
        p.subject_alt_names.extend(self.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if self.server {
            p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client {
            p.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let lifetime = if self.lifetime.is_zero() { LEAF_LIFETIME } else { self.lifetime };
        validity(&mut p, lifetime);
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(serial());
        Ok(p)
    }
}

fn validity(p: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // A short-lived certificate (tests) is not backdated by more than its own lifetime.
    p.not_before = now - BACKDATE.min(lifetime / 2);
    p.not_after = now + lifetime;
}

fn serial() -> rcgen::SerialNumber {
    let mut b = [0u8; 16];
    aws_fill(&mut b);
    b[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&b)
}

fn aws_fill(b: &mut [u8]) {
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(b)
        .expect("the system's random source works");
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a private key in a log line.
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl Ca {
    /// `dir/ca.crt` and `dir/ca.key`, created on first use.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() || key.exists() {
            return Ca::load(dir);
        }
        let ca = Ca::generate("flotilla-ca")?;
        crate::write_private(&key, ca.issuer.key().serialize_pem().as_bytes())?;
        crate::write_public(&crt, ca.cert_pem.as_bytes())?;
        tracing::info!(dir = %dir.display(), "created the cluster CA");
        Ok(ca)
    }

    /// A new self-signed CA (kept in memory; [`Ca::load_or_create`] writes one).
    pub fn generate(cn: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        validity(&mut p, CA_LIFETIME);
        p.serial_number = Some(serial());
        let cert = p.self_signed(&key).map_err(PkiError::Rcgen)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(p, key) })
    }

    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let cert_pem = read(&crt)?;
        let key_pem = read(&key)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Parse { path: key.clone(), what: e.to_string() })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| PkiError::Parse { path: crt.clone(), what: e.to_string() })?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// kubeadm's `--discovery-token-ca-cert-hash`: `sha256:` and the hex SHA-256 of the CA's
    /// SubjectPublicKeyInfo.
    pub fn hash(&self) -> String {
        ca_hash(&self.cert_pem).expect("our own CA certificate parses")
    }

    /// A new key and a certificate for it.
    pub fn issue(&self, req: &Request) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
        let cert = req.params()?.signed_by(&key, &self.issuer).map_err(PkiError::Rcgen)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs a PKCS#10 request's key with what `req` says (the requester's own subject and
    /// names are not trusted: the caller decides them, as a signer does).
    pub fn sign_csr(&self, csr_pem: &str, req: &Request) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::Csr)?;
        let signed = CertificateSigningRequestParams { params: req.params()?, ..csr };
        Ok(signed.signed_by(&self.issuer).map_err(PkiError::Rcgen)?.pem())
    }
}

/// A self-signed serving certificate (the kubelet's default when it is given none).
pub fn self_signed(name: &str, ips: Vec<IpAddr>) -> Result<Issued, PkiError> {
    let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
    let p = Request::server(name, vec![name.to_string()], ips).params()?;
    let cert = p.self_signed(&key).map_err(PkiError::Rcgen)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A new key and a PKCS#10 request for it (`req`'s subject): what a node sends in a
/// CertificateSigningRequest. Returns the request and the key, PEM.
pub fn new_csr(req: &Request) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
    // A request carries the subject only: validity, serial and usages are the signer's.
    let mut p = CertificateParams::default();
    p.distinguished_name = req.params()?.distinguished_name;
    let csr = p.serialize_request(&key).map_err(PkiError::Rcgen)?;
    Ok((csr.pem().map_err(PkiError::Rcgen)?, key.serialize_pem()))
}

/// The subject CN and organizations (and DNS names) a PKCS#10 request asks for.
pub fn csr_subject(csr_pem: &str) -> Result<(String, Vec<String>), PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::Csr)?;
    let dn = &csr.params.distinguished_name;
    let text = dn_text;
    let cn = dn.get(&DnType::CommonName).map(text).unwrap_or_default();
    let orgs =
        dn.iter().filter(|(t, _)| **t == DnType::OrganizationName).map(|(_, v)| text(v)).collect();
    Ok((cn, orgs))
}

fn dn_text(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        rcgen::DnValue::UniversalString(_) | rcgen::DnValue::BmpString(_) => String::new(),
        _ => String::new(),
    }
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo (kubeadm's CA pin).
pub fn ca_hash(cert_pem: &str) -> Result<String, PkiError> {
    let der = crate::first_cert_der(cert_pem)
        .ok_or_else(|| PkiError::Invalid("no certificate in the PEM data".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Invalid(format!("the CA certificate does not parse: {e}")))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    let sum = Sha256::digest(spki);
    Ok(format!("sha256:{}", sum.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

fn read(p: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(p).map_err(|e| PkiError::Io { path: p.to_path_buf(), source: e })
}

/// The paths of a certificate pair in a PKI directory: `<dir>/<name>.crt`, `<dir>/<name>.key`.
pub fn pair_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}
