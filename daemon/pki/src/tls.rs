//! rustls for every port. Servers and clients read their certificate from a [`KeyHolder`],
//! which renewal swaps: new handshakes use the new certificate with no restart and no
//! reconnect.
//!
//! ```text
//!  TcpListener ──accept──▶ handshake (own task, 10 s) ──▶ TlsStream ──▶ tonic (peer_certs())
//!  tonic Endpoint ──connect_with_connector(Connector)──▶ TCP + rustls (ALPN h2) ──▶ HTTP/2
//! ```

use crate::{Issued, PkiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};

pub use tokio_rustls::server::TlsStream;

/// What a server knows of a connection's peer, in each request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<std::net::SocketAddr>,
    /// The verified client certificate's subject: (CN, O entries).
    pub subject: Option<(String, Vec<String>)>,
}

/// An accepted TLS connection; its [`Peer`] is parsed once, at the handshake.
pub struct Accepted {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

impl Accepted {
    fn new(stream: TlsStream<TcpStream>) -> Self {
        let (tcp, session) = stream.get_ref();
        let subject =
            session.peer_certificates().and_then(|c| c.first()).and_then(|c| crate::subject(c));
        let peer = Peer { addr: tcp.peer_addr().ok(), subject };
        Accepted { stream, peer }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl tokio::io::AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate and key that renewal replaces while servers and clients keep running.
#[derive(Debug)]
pub struct KeyHolder {
    current: RwLock<Arc<CertifiedKey>>,
    not_after: RwLock<(SystemTime, SystemTime)>,
}

impl KeyHolder {
    pub fn new(issued: &Issued) -> Result<Arc<KeyHolder>, PkiError> {
        let (key, validity) = certified(issued)?;
        Ok(Arc::new(KeyHolder { current: RwLock::new(key), not_after: RwLock::new(validity) }))
    }

    pub fn set(&self, issued: &Issued) -> Result<(), PkiError> {
        let (key, validity) = certified(issued)?;
        *self.current.write().expect("not poisoned") = key;
        *self.not_after.write().expect("not poisoned") = validity;
        Ok(())
    }

    pub fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("not poisoned").clone()
    }

    /// (not before, not after) of the current certificate.
    pub fn validity(&self) -> (SystemTime, SystemTime) {
        *self.not_after.read().expect("not poisoned")
    }

    /// When to renew: 80% into the certificate's life (kubelet renews between 70% and 90%).
    pub fn renew_at(&self) -> SystemTime {
        let (nb, na) = self.validity();
        let life = na.duration_since(nb).unwrap_or_default();
        nb + life.mul_f64(0.8)
    }
}

fn certified(issued: &Issued) -> Result<(Arc<CertifiedKey>, (SystemTime, SystemTime)), PkiError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| PkiError::Invalid(format!("certificate PEM: {e}")))?;
    let first = chain.first().ok_or_else(|| PkiError::Invalid("no certificate in PEM".into()))?;
    let validity = crate::validity(first)?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("private key PEM: {e}")))?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| PkiError::Invalid(format!("certificate and key: {e}")))?;
    Ok((Arc::new(ck), validity))
}

impl rustls::server::ResolvesServerCert for KeyHolder {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for KeyHolder {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Renews `holder` 80% into each certificate's life with `issue` until the task is dropped.
/// `issue` runs on a blocking thread (it may sign, or ask the API server to).
pub fn spawn_renewal<F, Fut>(holder: Arc<KeyHolder>, what: String, issue: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Issued, PkiError>> + Send,
{
    tokio::spawn(async move {
        loop {
            let wait = holder.renew_at().duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            match issue().await {
                Ok(i) => match holder.set(&i) {
                    Ok(()) => tracing::info!(%what, "renewed the certificate"),
                    Err(e) => tracing::error!(%what, error = %e, "renewed certificate unusable"),
                },
                Err(e) => {
                    tracing::warn!(%what, error = %e, "certificate renewal failed; retrying");
                    tokio::time::sleep(
                        Duration::from_secs(5).min(wait.max(Duration::from_secs(1))),
                    )
                    .await;
                }
            }
        }
    });
}

pub fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| PkiError::Invalid(format!("CA PEM: {e}")))?;
        roots.add(c).map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PkiError::Invalid("no CA certificate in the PEM data".into()));
    }
    Ok(Arc::new(roots))
}

/// Who may connect to a server.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Certificates from the CA are verified and identify the caller; others are refused;
    /// callers without one go on to other authentication (the API server).
    Optional,
    /// A certificate from the CA is required (etcd's `--client-cert-auth`, Raft peers).
    Required,
    /// A certificate from the CA whose CN is one of these (the node API: the API server only).
    Names(Vec<String>),
    /// A certificate from the CA with one of these O entries (the store's ports: with one CA
    /// for everything, "any certificate of the CA" would let a node's certificate in).
    Groups(Vec<String>),
}

pub fn server_config(
    ca_pem: &str,
    key: Arc<KeyHolder>,
    auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let p = provider();
    let b = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, p.clone());
    let b = if matches!(auth, ClientAuth::Optional) { b.allow_unauthenticated() } else { b };
    let webpki = b.build().map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
    let verifier: Arc<dyn ClientCertVerifier> = match auth {
        ClientAuth::Names(names) => Arc::new(Only { inner: webpki, names, groups: vec![] }),
        ClientAuth::Groups(groups) => Arc::new(Only { inner: webpki, names: vec![], groups }),
        _ => webpki,
    };
    let mut c = rustls::ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(key);
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A client configuration trusting `ca_pem` (or, with `None`, nothing: `insecure`, for the
/// node API's self-signed certificates as the kube-apiserver treats kubelets without
/// `--kubelet-certificate-authority`), presenting `identity` when the server asks.
pub fn client_config(
    ca_pem: Option<&str>,
    identity: Option<Arc<KeyHolder>>,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let p = provider();
    let b = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Invalid(e.to_string()))?;
    let b = match ca_pem {
        Some(ca) => b.with_root_certificates(roots(ca)?),
        None => b.dangerous().with_custom_certificate_verifier(Arc::new(AnyServer(p))),
    };
    let mut c = match identity {
        Some(k) => b.with_client_cert_resolver(k),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// A CA-issued client certificate whose CN is one of `names` or whose O has one of `groups`.
#[derive(Debug)]
struct Only {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
    groups: Vec<String>,
}

impl ClientCertVerifier for Only {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match crate::subject(end_entity) {
            Some((cn, o))
                if self.names.contains(&cn) || o.iter().any(|g| self.groups.contains(g)) =>
            {
                Ok(ok)
            }
            Some((cn, _)) => Err(rustls::Error::General(format!(
                "client certificate for {cn:?} is not allowed on this port"
            ))),
            None => Err(rustls::Error::General("client certificate has no subject".into())),
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate (signatures still checked).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepted TLS connections; handshakes run concurrently in their own tasks so a slow or
/// silent client holds up nobody. Failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Accepted>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (mut tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if refuse_plain(&mut tcp).await {
                    tracing::debug!(%peer, "plain-text request on a TLS port refused");
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(Accepted::new(s))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A connection whose first byte is not a TLS handshake record gets Go's answer (what
/// kube-apiserver and the kubelet send) instead of a silent close, so a client pointed at an
/// `http://` URL learns why. True when it was refused.
async fn refuse_plain(tcp: &mut TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut b)).await {
        Ok(Ok(1)) if b[0] != 0x16 => {
            let answer = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
            let _ = tcp.write_all(answer).await;
            let _ = tcp.shutdown().await;
            true
        }
        _ => false,
    }
}

/// TCP + rustls for tonic's `Endpoint::connect_with_connector`: `https://` URLs only.
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    /// The name to verify instead of the URL's host (kubeconfig's `tls-server-name`).
    server_name: Option<String>,
}

impl Connector {
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: Option<String>) -> Self {
        Connector { config, server_name }
    }
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            if uri.scheme_str() != Some("https") {
                return Err(bad(format!("{uri}: only https:// is served")));
            }
            let host = uri.host().ok_or_else(|| bad(format!("{uri} has no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = this.server_name.clone().unwrap_or(host);
            let name = ServerName::try_from(name.clone())
                .map_err(|e| bad(format!("{name:?} is not a server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(this.config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
