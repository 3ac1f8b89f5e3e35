//! HTTPS GETs against Flotilla's ports (`/metrics` and the like) and bare TLS handshakes, to
//! check who a port lets in.

use anyhow::{Context, Result};
use flotilla_pki::tls::{client_config, KeyHolder};
use flotilla_pki::Issued;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client identity: a certificate and key in PEM files.
pub fn identity(cert: &Path, key: &Path) -> Result<Arc<KeyHolder>> {
    let issued = Issued {
        cert_pem: std::fs::read_to_string(cert).with_context(|| cert.display().to_string())?,
        key_pem: std::fs::read_to_string(key).with_context(|| key.display().to_string())?,
    };
    Ok(KeyHolder::new(&issued)?)
}

/// A TLS connection to `addr` with `cfg`, verifying the name `localhost` (in every serving
/// certificate's SANs).
async fn connect(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| addr.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    Ok(tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?)
}

/// `GET path` over HTTP/1.1 in TLS, trusting `ca_pem` (None: any server certificate) and
/// presenting `identity` when asked. The status code and body; an error if the handshake or
/// the request fails.
pub async fn get(
    addr: &str,
    path: &str,
    ca_pem: Option<&str>,
    identity: Option<Arc<KeyHolder>>,
) -> Result<(u16, String)> {
    let mut cfg = (*client_config(ca_pem, identity)?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tls = connect(addr, Arc::new(cfg)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // With TLS 1.3 a refused client certificate surfaces here, on the first read.
    tls.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:.200}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// What a plain-text HTTP/1.1 request to `addr` gets back (a TLS port answers as Go's servers
/// do: 400, "Client sent an HTTP request to an HTTPS server.").
pub async fn plain_http(addr: &str) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    String::from_utf8_lossy(&raw).into_owned()
}

/// Whether `addr` admits a client presenting `identity` (trusting `ca_pem`): a TLS handshake
/// with ALPN h2, then the HTTP/2 preface; an admitted client reads the server's SETTINGS, a
/// refused one the TLS alert (with TLS 1.3 a refused client certificate shows only then).
pub async fn admitted(addr: &str, ca_pem: &str, identity: Option<Arc<KeyHolder>>) -> Result<()> {
    let cfg = client_config(Some(ca_pem), identity)?;
    let mut tls = connect(addr, cfg).await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await?;
    tls.flush().await?;
    let mut b = [0u8; 9];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut b))
        .await
        .context("no answer in 5 s")??;
    anyhow::ensure!(n > 0, "the server closed the connection");
    Ok(())
}

/// The certificate `addr` serves (DER), verified against `ca_pem` now.
pub async fn server_certificate(addr: &str, ca_pem: &str) -> Result<Vec<u8>> {
    let cfg = client_config(Some(ca_pem), None)?;
    let tls = connect(addr, cfg).await?;
    let certs = tls.get_ref().1.peer_certificates().context("no server certificate")?;
    Ok(certs[0].to_vec())
}
