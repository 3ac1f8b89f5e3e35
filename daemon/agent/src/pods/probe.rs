//! Container probes: startup, liveness and readiness, by exec (in the container), tcpSocket,
//! httpGet and grpc (from inside the pod's network namespace, so the check does not depend on
//! the node's routing), with Kubernetes' timing fields and thresholds.
//!
//! ```text
//!  startup ──success──► started ──► liveness (failureThreshold → the container is killed)
//!                               └─► readiness (drives ready, and so the pod's Ready)
//! ```

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::sync::Notify;

#[derive(Clone, Debug, PartialEq)]
pub enum Handler {
    Exec(Vec<String>),
    Tcp(u16),
    Http {
        port: u16,
        path: String,
        host: Option<String>,
        headers: Vec<(String, String)>,
        /// scheme HTTPS: TLS without verifying the certificate, as the kubelet does.
        https: bool,
    },
    /// The standard gRPC health check (grpc.health.v1.Health/Check) of `service`.
    Grpc {
        port: u16,
        service: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(container: &Value, v: &Value) -> Result<u16, String> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).map_err(|_| format!("port {n} out of range"));
    }
    let name = v.as_str().unwrap_or_default();
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("no container port named {name:?}"))
}

/// The container's probe under `key` (livenessProbe, …), if it has one.
pub fn parse(container: &Value, key: &str) -> Option<Result<Spec, String>> {
    let p = container.get(key).filter(|p| p.is_object())?;
    let secs = |k: &str, d: u64| Duration::from_secs(p[k].as_u64().unwrap_or(d));
    let handler = if let Some(cmd) = p["exec"]["command"].as_array() {
        Ok(Handler::Exec(cmd.iter().filter_map(|s| s.as_str().map(String::from)).collect()))
    } else if p["tcpSocket"].is_object() {
        port(container, &p["tcpSocket"]["port"]).map(Handler::Tcp)
    } else if p["httpGet"].is_object() {
        let h = &p["httpGet"];
        port(container, &h["port"]).map(|port| Handler::Http {
            port,
            path: h["path"].as_str().filter(|s| !s.is_empty()).unwrap_or("/").to_string(),
            host: h["host"].as_str().filter(|s| !s.is_empty()).map(String::from),
            headers: h["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| {
                    Some((x["name"].as_str()?.to_string(), x["value"].as_str()?.to_string()))
                })
                .collect(),
            https: h["scheme"].as_str() == Some("HTTPS"),
        })
    } else if p["grpc"].is_object() {
        // Kubernetes takes a number only here: no named ports for grpc.
        let g = &p["grpc"];
        g["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{key}.grpc.port: must be a number from 1 to 65535"))
            .map(|port| Handler::Grpc {
                port,
                service: g["service"].as_str().unwrap_or_default().to_string(),
            })
    } else {
        Err(format!("{key}: no exec, tcpSocket, httpGet or grpc handler"))
    };
    Some(handler.map(|handler| Spec {
        handler,
        initial_delay: secs("initialDelaySeconds", 0),
        period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
        timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
        success_threshold: p["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
        failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
    }))
}

/// Where a probe runs: the container (exec) and its pod's network.
#[derive(Clone, Debug)]
pub struct Target {
    pub exe: super::RuntimeExe,
    pub runtime_root: PathBuf,
    pub container: String,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
}

/// Accepts any server certificate; the handshake's signatures are still checked against
/// it. Probes and hooks talk to the pod's own endpoint, usually with a self-signed
/// certificate, so the kubelet skips verification too.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn insecure_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

fn http_get(
    addr: SocketAddr,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    timeout: Duration,
    https: bool,
) -> Result<u16, String> {
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    if !https {
        return http_exchange(tcp, path, host, headers);
    }
    // SNI carries the Host (none for an address), as Go's client sends it.
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .or_else(|_| rustls::pki_types::ServerName::try_from(addr.ip().to_string()))
        .map_err(|e| e.to_string())?;
    let tls = rustls::ClientConnection::new(insecure_tls()?, name).map_err(|e| e.to_string())?;
    http_exchange(rustls::StreamOwned::new(tls, tcp), path, host, headers)
}

/// One GET on an open connection; the response's status code.
fn http_exchange(
    mut c: impl Read + Write,
    path: &str,
    host: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: flotilla-probe/1.0\r\nAccept: */*\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // The status line may come in several segments: read until it is whole.
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        match c.read(&mut buf).map_err(|e| e.to_string())? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut words = line.split_whitespace();
    words
        .next()
        .filter(|v| v.starts_with("HTTP/"))
        .and(words.next())
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))
}

/// The gRPC health check, as the kubelet makes it: plaintext HTTP/2, and only SERVING is a
/// success. Runs on the calling thread (inside the pod's network namespace), with a runtime
/// of its own, so the connection's socket is made in that namespace.
fn grpc_check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let check = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(timeout)
                .connect()
                .await
                .map_err(|e| {
                    format!("timeout: failed to connect service {addr} within {timeout:?}: {e}")
                })?;
            let resp = HealthClient::new(channel)
                .check(HealthCheckRequest { service: service.to_string() })
                .await
                .map_err(|s| {
                    // grpc-go's wording, as the kubelet reports it.
                    format!(
                        "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
                        s.code(),
                        s.message()
                    )
                })?
                .into_inner();
            match ServingStatus::try_from(resp.status) {
                Ok(ServingStatus::Serving) => Ok(()),
                Ok(s) => Err(format!("service unhealthy (responded with {:?})", s.as_str_name())),
                Err(_) => Err(format!("service unhealthy (responded with {})", resp.status)),
            }
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(r) => r,
            Err(_) => Err(format!("timeout: health rpc did not complete within {timeout:?}")),
        }
    })
}

/// One check. Err carries why it failed (for the event/log).
pub async fn check(h: &Handler, t: &Target, timeout: Duration) -> Result<(), String> {
    match h {
        Handler::Exec(cmd) => {
            let mut c = tokio::process::Command::from(t.exe.command());
            c.arg("--root").arg(&t.runtime_root).arg("exec").arg(&t.container).arg("--").args(cmd);
            c.stdin(std::process::Stdio::null()).kill_on_drop(true);
            match tokio::time::timeout(timeout, c.output()).await {
                Err(_) => Err(format!("command timed out after {timeout:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(o)) if o.status.success() => Ok(()),
                Ok(Ok(o)) => Err(format!(
                    "exit {}: {}",
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stdout).trim()
                )),
            }
        }
        Handler::Tcp(_) | Handler::Http { .. } | Handler::Grpc { .. } => {
            let (h, t) = (h.clone(), t.clone());
            tokio::task::spawn_blocking(move || {
                let ns =
                    flotilla_dataplane::netns::NetNs::open(&t.netns).map_err(|e| e.to_string())?;
                ns.run(|| match &h {
                    Handler::Tcp(port) => {
                        TcpStream::connect_timeout(&SocketAddr::from((t.ip, *port)), timeout)
                            .map(|_| ())
                            .map_err(|e| format!("dial tcp {}:{port}: {e}", t.ip))
                    }
                    Handler::Http { port, path, host, headers, https } => {
                        let host = host.clone().unwrap_or_else(|| t.ip.to_string());
                        let addr = SocketAddr::from((t.ip, *port));
                        match http_get(addr, path, &host, headers, timeout, *https) {
                            Ok(code) if (200..400).contains(&code) => Ok(()),
                            Ok(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
                            Err(e) => {
                                let scheme = if *https { "https" } else { "http" };
                                Err(format!("Get \"{scheme}://{addr}{path}\": {e}"))
                            }
                        }
                    }
                    Handler::Grpc { port, service } => {
                        grpc_check(SocketAddr::from((t.ip, *port)), service, timeout)
                    }
                    Handler::Exec(_) => unreachable!(),
                })
                .map_err(|e| e.to_string())?
            })
            .await
            .map_err(|e| e.to_string())?
        }
    }
}

/// What a container's probes have found so far.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// None: no startup probe (started when running).
    pub started: Option<bool>,
    /// None: no readiness probe (ready when started).
    pub ready: Option<bool>,
    /// Why the container must be restarted (liveness or startup failed).
    pub kill: Option<String>,
}

/// A container's running probes; dropping it stops them.
pub struct Probes {
    pub results: Arc<Mutex<Results>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// Starts the container's probes; `wake` is notified whenever a result changes.
pub fn start(
    container: &Value,
    target: Target,
    wake: Arc<Notify>,
) -> Result<Option<Probes>, String> {
    let specs = [
        ("startupProbe", Kind::Startup),
        ("livenessProbe", Kind::Liveness),
        ("readinessProbe", Kind::Readiness),
    ];
    let mut parsed = Vec::new();
    for (key, kind) in specs {
        if let Some(s) = parse(container, key) {
            parsed.push((kind, s?));
        }
    }
    if parsed.is_empty() {
        return Ok(None);
    }
    let results = Arc::new(Mutex::new(Results {
        started: parsed.iter().any(|(k, _)| *k == Kind::Startup).then_some(false),
        ready: parsed.iter().any(|(k, _)| *k == Kind::Readiness).then_some(false),
        kill: None,
    }));
    let name = container["name"].as_str().unwrap_or_default().to_string();
    let tasks = parsed
        .into_iter()
        .map(|(kind, spec)| {
            let (r, t, w, name) = (results.clone(), target.clone(), wake.clone(), name.clone());
            tokio::spawn(run(kind, spec, t, r, w, name)).abort_handle()
        })
        .collect();
    Ok(Some(Probes { results, tasks }))
}

async fn run(
    kind: Kind,
    spec: Spec,
    t: Target,
    r: Arc<Mutex<Results>>,
    wake: Arc<Notify>,
    name: String,
) {
    tokio::time::sleep(spec.initial_delay).await;
    let (mut ok_run, mut bad_run) = (0u32, 0u32);
    loop {
        let started = r.lock().expect("probe results").started != Some(false);
        if kind == Kind::Startup || started {
            let result = check(&spec.handler, &t, spec.timeout).await;
            match &result {
                Ok(()) => (ok_run, bad_run) = (ok_run + 1, 0),
                Err(e) => {
                    tracing::debug!(container = %name, ?kind, failures = bad_run + 1, "probe failed: {e}");
                    (ok_run, bad_run) = (0, bad_run + 1)
                }
            }
            let mut res = r.lock().expect("probe results");
            let before = (res.started, res.ready, res.kill.clone());
            match kind {
                Kind::Startup if ok_run >= 1 => res.started = Some(true),
                Kind::Startup if bad_run >= spec.failure_threshold => {
                    res.kill = Some(format!(
                        "Container {name} failed startup probe, will be restarted: {}",
                        result.clone().unwrap_err()
                    ));
                }
                Kind::Liveness if bad_run >= spec.failure_threshold => {
                    res.kill = Some(format!(
                        "Container {name} failed liveness probe, will be restarted: {}",
                        result.clone().unwrap_err()
                    ));
                }
                Kind::Readiness if ok_run >= spec.success_threshold => res.ready = Some(true),
                Kind::Readiness if bad_run >= spec.failure_threshold => res.ready = Some(false),
                _ => {}
            }
            let changed = before != (res.started, res.ready, res.kill.clone());
            let done = res.kill.is_some() || (kind == Kind::Startup && res.started == Some(true));
            drop(res);
            if changed {
                wake.notify_one();
            }
            if done {
                return;
            }
        }
        tokio::time::sleep(spec.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Serves one connection with `parts`, written apart.
    fn serve_once(parts: &'static [&'static [u8]]) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let _ = c.read(&mut req);
            for p in parts {
                c.write_all(p).unwrap();
                c.flush().unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        addr
    }

    #[test]
    fn http_status_lines_split_across_segments_are_read_whole() {
        let t = Duration::from_secs(2);
        let split = serve_once(&[b"HTTP/1.1 ", b"204 No Content\r\n", b"\r\n"]);
        assert_eq!(http_get(split, "/healthz", "x", &[], t, false), Ok(204));
        let junk = serve_once(&[b"SSH-2.0-OpenSSH\r\n"]);
        let err = http_get(junk, "/", "x", &[], t, false).unwrap_err();
        assert!(err.contains("not an HTTP response"), "{err}");
    }

    /// scheme HTTPS: TLS to a server with a self-signed certificate (made by openssl), which
    /// the probe accepts, as the kubelet does; the request is the same as over HTTP.
    #[test]
    fn https_probes_skip_certificate_verification() {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "1", "-subj", "/CN=probe"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from_pem_file(&cert).unwrap()],
                    PrivateKeyDer::from_pem_file(&key).unwrap(),
                )
                .unwrap(),
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let served = std::thread::spawn(move || {
            let (tcp, _) = l.accept().unwrap();
            let tls = rustls::ServerConnection::new(server).unwrap();
            let mut s = rustls::StreamOwned::new(tls, tcp);
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            s.conn.send_close_notify();
            s.flush().unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        let t = Duration::from_secs(5);
        assert_eq!(http_get(addr, "/healthz", "probe.test", &[], t, true), Ok(204));
        let req = served.join().unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\nHost: probe.test\r\n"), "{req}");
        // Nothing listening: an error, not a hang.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(http_get(addr, "/", "x", &[], t, true).is_err());
    }

    /// A real health service (tonic-health) on loopback: SERVING passes; NOT_SERVING, an
    /// unknown service and a closed port fail, each saying why.
    #[test]
    fn grpc_checks_follow_the_health_service() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (reporter, service) = rt.block_on(async { tonic_health::server::health_reporter() });
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await
        });
        let t = Duration::from_secs(2);
        assert_eq!(grpc_check(addr, "", t), Ok(()));
        rt.block_on(reporter.set_service_status("db", tonic_health::ServingStatus::NotServing));
        let err = grpc_check(addr, "db", t).unwrap_err();
        assert_eq!(err, "service unhealthy (responded with \"NOT_SERVING\")");
        rt.block_on(reporter.set_service_status("db", tonic_health::ServingStatus::Serving));
        assert_eq!(grpc_check(addr, "db", t), Ok(()));
        let err = grpc_check(addr, "nosuch", t).unwrap_err();
        assert!(err.contains("health rpc probe failed: rpc error: code = NotFound"), "{err}");
        drop(rt);
        let err = grpc_check(addr, "", t).unwrap_err();
        assert!(err.contains("failed to connect service"), "{err}");
    }

    #[test]
    fn parses_handlers_timing_and_named_ports() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 1},
            "tlsProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}},
            "readinessProbe": {"tcpSocket": {"port": 9000}},
            "startupProbe": {"exec": {"command": ["cat", "/ready"]}, "initialDelaySeconds": 3},
            "badProbe": {"tcpSocket": {"port": "nope"}},
            "grpcProbe": {"grpc": {"port": 9090, "service": "db"}},
            "namedGrpc": {"grpc": {"port": "grpc"}}});
        let l = parse(&c, "livenessProbe").unwrap().unwrap();
        assert_eq!(
            l.handler,
            Handler::Http {
                port: 8080,
                path: "/healthz".into(),
                host: None,
                headers: vec![],
                https: false
            }
        );
        assert_eq!(
            (l.period, l.failure_threshold, l.timeout),
            (Duration::from_secs(2), 1, Duration::from_secs(1))
        );
        assert_eq!(parse(&c, "readinessProbe").unwrap().unwrap().handler, Handler::Tcp(9000));
        assert!(matches!(
            parse(&c, "tlsProbe").unwrap().unwrap().handler,
            Handler::Http { port: 8443, https: true, .. }
        ));
        let s = parse(&c, "startupProbe").unwrap().unwrap();
        assert_eq!(s.handler, Handler::Exec(vec!["cat".into(), "/ready".into()]));
        assert_eq!(
            (s.initial_delay, s.period, s.success_threshold),
            (Duration::from_secs(3), Duration::from_secs(10), 1)
        );
        assert!(parse(&c, "badProbe").unwrap().unwrap_err().contains("nope"));
        assert_eq!(
            parse(&c, "grpcProbe").unwrap().unwrap().handler,
            Handler::Grpc { port: 9090, service: "db".into() }
        );
        assert!(parse(&c, "namedGrpc").unwrap().unwrap_err().contains("grpc.port"));
        assert!(parse(&c, "missing").is_none());
    }
}
