//! A bare HTTP/2 client for the HTTP API, over the same TLS, credentials and transport as the
//! gRPC client's (one multiplexed connection, ALPN h2), so that the API bench's HTTP and gRPC
//! rows differ only in the front they reach. Bodies stay bytes: the rows time the server and
//! the wire, not a client's JSON decoding.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use std::path::Path;

#[derive(Clone)]
pub struct H2 {
    send: SendRequest<Full<Bytes>>,
    base: String,
}

impl H2 {
    /// A new connection to the kubeconfig's server with its credentials (CA, client
    /// certificate).
    pub async fn connect(kubeconfig: &Path) -> Result<H2> {
        let conn = flotilla_pki::Kubeconfig::read(kubeconfig)?.connection(None)?;
        let identity = match &conn.client_cert {
            Some(issued) => Some(flotilla_pki::tls::KeyHolder::new(issued)?),
            None => None,
        };
        let cfg = flotilla_pki::tls::client_config(conn.ca_pem.as_deref(), identity)?;
        let addr = conn.server.trim_start_matches("https://").trim_end_matches('/').to_string();
        let tcp = tokio::net::TcpStream::connect(&addr).await.with_context(|| addr.clone())?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
        let (send, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                // As the gRPC client's: large lists must not wait on window updates.
                .initial_connection_window_size(8 << 20)
                .initial_stream_window_size(4 << 20)
                .handshake(hyper_util::rt::TokioIo::new(tls))
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H2 { send, base: format!("https://{addr}") })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<hyper::Request<Full<Bytes>>> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", accept);
        let body = match body {
            Some((content_type, bytes)) => {
                b = b.header("content-type", content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        Ok(b.body(Full::new(body))?)
    }

    /// One request; the status and the whole body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Bytes)> {
        let req = self.request(method, path, accept, body)?;
        let mut send = self.send.clone();
        send.ready().await.with_context(|| format!("{method} {path}"))?;
        let resp = send.send_request(req).await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A streaming GET (a watch): its body as it arrives.
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming> {
        let req = self.request("GET", path, "application/json", None)?;
        let mut send = self.send.clone();
        send.ready().await?;
        let resp = send.send_request(req).await?;
        anyhow::ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
        Ok(resp.into_body())
    }
}
