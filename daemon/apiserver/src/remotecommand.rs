//! pods/exec over WebSocket, as kubectl (1.30+), client-go and the Python client speak it:
//! the channel protocols `v5.channel.k8s.io` and `v4.channel.k8s.io`. Every binary message
//! starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the error channel (one `Status`
//! at the end: Success, or NonZeroExitCode with the code), 4 terminal resizes (JSON
//! `{"Width":…,"Height":…}`); v5 adds 255 (`[255, channel]`: the client closed that stream,
//! i.e. stdin reached its end). The session is relayed to the pod's agent through the same
//! ContainerExec stream the gRPC front uses.
//!
//! pods/attach speaks the same protocols and follows the container's output from the moment
//! it attaches (the agent's log stream of each of stdout and stderr, on their channels); the
//! container's stdin is not attachable yet.
//!
//! pods/portforward speaks the kubelet's WebSocket protocol (`v4.channel.k8s.io`, or no
//! subprotocol): for the i-th port of `?ports=`, channel 2i carries data both ways and 2i+1
//! the server's error text; each channel's first server message is its port (2 bytes, little
//! endian). Each port is one TCP connection, dialed by the pod's agent on the pod's localhost;
//! the socket closes once every connection has ended.

use super::request::RequestInfo;
use super::service::{admit_logged, credentials_of};
use super::ApiServer;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::Response;
use bytes::Bytes;
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::proto::{self, exec_input::Msg, exec_output};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What an exec request asks, from its query (`command` repeats, one per argument).
#[derive(Debug, Default, PartialEq)]
struct ExecOptions {
    command: Vec<String>,
    container: String,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl ExecOptions {
    /// Kubernetes' PodExecOptions validation (its texts, as a 400); attach's options are the
    /// same without a command.
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let o = Self::parse_streams(query)?;
        if o.command.is_empty() {
            return Err(ApiError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        Ok(o)
    }

    fn parse_streams(query: Option<&str>) -> Result<Self, ApiError> {
        let mut o = ExecOptions::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            // Go's strconv.ParseBool, as the HTTP front's other flags.
            let flag = || matches!(v.as_ref(), "1" | "t" | "T" | "true" | "TRUE" | "True");
            match k.as_ref() {
                "command" => o.command.push(v.into_owned()),
                "container" => o.container = v.into_owned(),
                "stdin" => o.stdin = flag(),
                "stdout" => o.stdout = flag(),
                "stderr" => o.stderr = flag(),
                "tty" => o.tty = flag(),
                _ => {}
            }
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err(ApiError::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        if o.tty && o.stderr {
            // As Kubernetes: a terminal merges stderr into stdout.
            o.stderr = false;
        }
        Ok(o)
    }
}

/// pods/{name}/exec, attach and portforward. Errors before the upgrade are `Status` answers.
pub(crate) async fn handle(
    s: &Arc<ApiServer>,
    req: Request,
    namespace: &str,
    name: &str,
    subresource: &str,
) -> Result<Response, ApiError> {
    let peer = req.extensions().get::<flotilla_pki::tls::Peer>().cloned();
    let creds = credentials_of(req.headers(), peer.as_ref());
    let source = peer.as_ref().and_then(|p| p.addr);
    // Both the WebSocket GET and the SPDY POST are "create" (Kubernetes authorizes a
    // WebSocket upgrade as create since 1.31).
    let what = RequestInfo::new("create", "pods").subresource(subresource).at(namespace, name);
    let started = Instant::now();
    admit_logged(s, creds, source, what)?;
    if subresource == "portforward" {
        return port_forward(s, req, namespace, name, started).await;
    }
    if subresource == "attach" {
        return attach(s, req, namespace, name, started).await;
    }
    if subresource != "exec" {
        return Err(ApiError::bad_request(format!(
            "pods/{subresource} is not supported by this server; pods/exec, pods/attach and pods/portforward are"
        )));
    }
    let options = ExecOptions::parse(req.uri().query())?;
    // Everything that can fail is checked before the upgrade is: kubectl retries any failed
    // WebSocket upgrade with SPDY, and shows only that second answer.
    let target = s.exec_target(namespace, name, &options.container).await?;
    let mut node =
        s.node_client(&target.url).await.map_err(|e| ApiError::new(Reason::Unavailable, e))?;
    let (upgrade, v5) = upgrade_channels(req, "exec").await?;
    let start = proto::ExecStart {
        namespace: target.namespace,
        name: name.to_string(),
        container: target.container,
        command: options.command.clone(),
        stdin: options.stdin,
        tty: options.tty,
        uid: target.uid,
        size: None,
    };
    // Stdin and resizes reach the agent through this channel once the socket is open.
    let (input, rx) = tokio::sync::mpsc::channel::<proto::ExecInput>(16);
    input
        .send(proto::ExecInput { msg: Some(Msg::Start(start)) })
        .await
        .map_err(|_| ApiError::internal("exec: the input channel closed"))?;
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let output = node.container_exec(outbound).await.map_err(ApiError::from)?.into_inner();
    s.record("exec", "pods", started);
    Ok(upgrade.on_upgrade(move |socket| relay(socket, input, output, options, v5)))
}

/// The WebSocket upgrade of pods/exec and pods/attach, with the subprotocol it settled on
/// (v5 or v4). Errors are answered before the upgrade: kubectl retries any failed WebSocket
/// upgrade with SPDY, and shows only that second answer.
async fn upgrade_channels(
    req: Request,
    subresource: &str,
) -> Result<(WebSocketUpgrade, bool), ApiError> {
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_err(|e| {
        // SPDY (kubectl before 1.30) lands here too.
        tracing::debug!(error = %e, "pods/{subresource} without a WebSocket upgrade");
        ApiError::bad_request(format!(
            "Upgrade request required: pods/{subresource} speaks WebSocket (v5.channel.k8s.io, v4.channel.k8s.io)"
        ))
    })?;
    let upgrade = upgrade.protocols([V5, V4]);
    let Some(protocol) = upgrade.selected_protocol().and_then(|p| p.to_str().ok()) else {
        return Err(ApiError::bad_request(format!(
            "no supported WebSocket subprotocol: pods/{subresource} speaks v5.channel.k8s.io and v4.channel.k8s.io"
        )));
    };
    let v5 = protocol == V5;
    Ok((upgrade, v5))
}

/// pods/attach: the container's output from now on, until it exits (then a Success status,
/// as the kubelet's) or the client goes.
async fn attach(
    s: &Arc<ApiServer>,
    req: Request,
    namespace: &str,
    name: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    let options = ExecOptions::parse_streams(req.uri().query())?;
    let target = s.exec_target(namespace, name, &options.container).await?;
    if options.stdin {
        return Err(ApiError::bad_request(format!(
            "attaching to the stdin of container {} is not supported by this server yet; attach without stdin follows its output",
            target.container
        )));
    }
    let mut node =
        s.node_client(&target.url).await.map_err(|e| ApiError::new(Reason::Unavailable, e))?;
    let (upgrade, _) = upgrade_channels(req, "attach").await?;
    // One log stream per output stream, so stderr stays on its own channel (a terminal
    // merges the two, as the kubelet's).
    let mut outputs = Vec::new();
    let wanted = [(options.stdout, "stdout", STDOUT), (options.stderr, "stderr", STDERR)];
    for (_, stream, channel) in wanted.into_iter().filter(|w| w.0) {
        let request = proto::PodLogsRequest {
            namespace: target.namespace.clone(),
            name: name.to_string(),
            container: target.container.clone(),
            follow: true,
            // Only what is written from now on, as an attached terminal sees it.
            tail_lines: 0,
            stream: if options.tty { String::new() } else { stream.to_string() },
            ..Default::default()
        };
        let output = node.container_logs(request).await.map_err(ApiError::from)?.into_inner();
        outputs.push(output.map(move |chunk| (channel, chunk)));
    }
    s.record("attach", "pods", started);
    Ok(upgrade.on_upgrade(move |socket| follow_output(socket, outputs)))
}

async fn follow_output<S>(socket: WebSocket, outputs: Vec<S>)
where
    S: futures::Stream<Item = (u8, Result<proto::LogChunk, tonic::Status>)> + Unpin + Send,
{
    let (mut tx, mut rx) = socket.split();
    let mut output = futures::stream::select_all(outputs);
    let writing = async move {
        let status = loop {
            match output.next().await {
                Some((channel, Ok(chunk))) => {
                    if tx.send(frame(channel, &chunk.data)).await.is_err() {
                        return;
                    }
                }
                Some((_, Err(e))) => break failure(&ApiError::from(e).message),
                // The kubelet's word when an attached container ends: Success.
                None => break exit_status(0, &[]),
            }
        };
        let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    };
    // Nothing the client sends matters but its going away.
    let reading = async move {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    tokio::select! {
        _ = writing => {}
        _ = reading => {}
    }
}

/// Copies the socket's stdin and resizes to the agent and the agent's output to the socket,
/// then writes the exit status on the error channel and closes the socket.
async fn relay(
    socket: WebSocket,
    input: tokio::sync::mpsc::Sender<proto::ExecInput>,
    mut output: tonic::Streaming<proto::ExecOutput>,
    options: ExecOptions,
    v5: bool,
) {
    let (mut tx, mut rx) = socket.split();
    let stdin = options.stdin;
    // The client's side: ends when the client closes the socket or goes away.
    let reading = async move {
        let mut input = Some(input);
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Binary(b) => b,
                // The Python client writes str stdin as text messages, channel byte first.
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let msg = match (data.first(), &data[1.min(data.len())..]) {
                (Some(&STDIN), d) if stdin && !d.is_empty() => Msg::Stdin(data.slice(1..)),
                (Some(&RESIZE), d) => match serde_json::from_slice::<serde_json::Value>(d) {
                    Ok(v) => Msg::Resize(proto::TerminalSize {
                        cols: v["Width"].as_u64().unwrap_or(0) as u32,
                        rows: v["Height"].as_u64().unwrap_or(0) as u32,
                    }),
                    Err(_) => continue,
                },
                (Some(&CLOSE), [STDIN]) if v5 && stdin => Msg::CloseStdin(true),
                _ => continue,
            };
            let closing = matches!(msg, Msg::CloseStdin(_));
            let Some(i) = &input else { continue };
            if i.send(proto::ExecInput { msg: Some(msg) }).await.is_err() {
                break;
            }
            if closing {
                input = None;
            }
        }
        // With v4 stdin has no end of its own: the client closing the socket is it.
        if let Some(i) = input {
            let _ = i.send(proto::ExecInput { msg: Some(Msg::CloseStdin(true)) }).await;
        }
    };
    let writing = async move {
        let status = loop {
            match output.next().await {
                Some(Ok(proto::ExecOutput { msg: Some(exec_output::Msg::Stdout(d)) })) => {
                    if options.stdout && tx.send(frame(STDOUT, &d)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(proto::ExecOutput { msg: Some(exec_output::Msg::Stderr(d)) })) => {
                    if options.stderr && tx.send(frame(STDERR, &d)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(proto::ExecOutput { msg: Some(exec_output::Msg::ExitCode(code)) })) => {
                    break exit_status(code, &options.command);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break failure(&ApiError::from(e).message),
                None => break failure("the exec stream ended without an exit code"),
            }
        };
        let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    };
    // The session ends with the command; a client that goes away ends its stdin.
    tokio::pin!(reading);
    tokio::select! {
        _ = writing => {}
        _ = &mut reading => {
            // The client closed its side: the command may still print (v4 clients close
            // after stdin), so nothing more is read; the agent ends the command's stdin.
        }
    }
}

/// The error channel's last word, as the kubelet writes it.
fn exit_status(code: i32, command: &[String]) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {:?}, exit code {code}",
            command
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn failure(message: &str) -> serde_json::Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    })
}

/// `?ports=` (repeated, or comma-separated as the Python client sends it), with the kubelet's
/// checks.
fn forward_ports(query: Option<&str>) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "ports" {
            continue;
        }
        if v.is_empty() {
            return Err(ApiError::bad_request("query parameter \"ports\" cannot be empty"));
        }
        for p in v.split(',') {
            let port: u16 = p.trim().parse().map_err(|e| {
                ApiError::bad_request(format!("unable to parse \"{p}\" as a port: {e}"))
            })?;
            if port < 1 {
                return Err(ApiError::bad_request(format!("port \"{p}\" must be > 0")));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request("query parameter \"ports\" is required"));
    }
    Ok(ports)
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::Binary(Bytes::from(m))
}

async fn port_forward(
    s: &Arc<ApiServer>,
    req: Request,
    namespace: &str,
    name: &str,
    started: Instant,
) -> Result<Response, ApiError> {
    let ports = forward_ports(req.uri().query())?;
    if ports.len() > 127 {
        return Err(ApiError::bad_request("at most 127 ports can be forwarded at once"));
    }
    let target = s.forward_target(namespace, name).await?;
    let node =
        s.node_client(&target.url).await.map_err(|e| ApiError::new(Reason::Unavailable, e))?;
    // No subprotocol at all is the kubelet's legacy binary form, the same framing as v4.
    let offered = req.headers().contains_key(axum::http::header::SEC_WEBSOCKET_PROTOCOL);
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_err(|e| {
        tracing::debug!(error = %e, "pods/portforward without a WebSocket upgrade");
        ApiError::bad_request(
            "Upgrade request required: pods/portforward speaks WebSocket (v4.channel.k8s.io)",
        )
    })?;
    let upgrade = upgrade.protocols([V4]);
    if offered && upgrade.selected_protocol().is_none() {
        return Err(ApiError::bad_request(
            "no supported WebSocket subprotocol: pods/portforward speaks v4.channel.k8s.io",
        ));
    }
    s.record("portforward", "pods", started);
    let start = proto::PortForwardStart {
        namespace: target.namespace,
        name: name.to_string(),
        uid: target.uid,
        port: 0,
    };
    Ok(upgrade.on_upgrade(move |socket| forward(socket, node, start, ports)))
}

type NodeClient = proto::node_client::NodeClient<tonic::transport::Channel>;

type Sink = Arc<tokio::sync::Mutex<futures::stream::SplitSink<WebSocket, Message>>>;

/// One port's connection through the agent: the client's bytes on `input` go to the pod,
/// the pod's come back on channel `data`; a failure is written on channel `error` in the
/// kubelet's words.
async fn forward_port(
    mut node: NodeClient,
    start: proto::PortForwardStart,
    mut input: tokio::sync::mpsc::Receiver<Bytes>,
    sink: Sink,
    data: u8,
    error: u8,
) {
    use proto::port_forward_input::Msg;
    let (port, name, uid) = (start.port, start.name.clone(), start.uid.clone());
    let (to_agent, agent_rx) = tokio::sync::mpsc::channel(16);
    let _ = to_agent.send(proto::PortForwardInput { msg: Some(Msg::Start(start)) }).await;
    let agent_rx = tokio_stream::wrappers::ReceiverStream::new(agent_rx);
    let outcome = match node.port_forward(agent_rx).await {
        Err(e) => Err(ApiError::from(e).message),
        Ok(out) => forward_both_ways(&mut input, to_agent, out.into_inner(), &sink, data).await,
    };
    if let Err(e) = outcome {
        let text = format!("error forwarding port {port} to pod {name}, uid {uid}: {e}");
        let _ = sink.lock().await.send(frame(error, text.as_bytes())).await;
    }
}

/// Both directions of one port's connection until the pod's side ends; the client's side
/// ending only half-closes it (the agent's stream ends when `to_agent` is dropped).
async fn forward_both_ways(
    input: &mut tokio::sync::mpsc::Receiver<Bytes>,
    to_agent: tokio::sync::mpsc::Sender<proto::PortForwardInput>,
    mut out: tonic::Streaming<proto::PortForwardOutput>,
    sink: &Sink,
    data: u8,
) -> Result<(), String> {
    use proto::port_forward_input::Msg;
    let mut to_agent = Some(to_agent);
    loop {
        tokio::select! {
            d = input.recv(), if to_agent.is_some() => {
                let sent = match (d, &to_agent) {
                    (Some(d), Some(t)) => {
                        t.send(proto::PortForwardInput { msg: Some(Msg::Data(d)) }).await.is_ok()
                    }
                    _ => false,
                };
                if !sent {
                    to_agent = None;
                }
            }
            o = out.next() => match o {
                Some(Ok(o)) => {
                    if sink.lock().await.send(frame(data, &o.data)).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(ApiError::from(e).message),
                None => return Ok(()),
            },
        }
    }
}

/// One TCP connection per port through the agent; the socket's reader routes each data
/// channel's messages to its connection.
async fn forward(
    socket: WebSocket,
    node: NodeClient,
    start: proto::PortForwardStart,
    ports: Vec<u16>,
) {
    let (tx, mut rx) = socket.split();
    let sink = Arc::new(tokio::sync::Mutex::new(tx));
    let mut inputs = Vec::with_capacity(ports.len());
    let mut connections = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        {
            let mut sink = sink.lock().await;
            for c in [data, error] {
                if sink.send(frame(c, &port.to_le_bytes())).await.is_err() {
                    return;
                }
            }
        }
        let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        inputs.push(in_tx);
        let start = proto::PortForwardStart { port: u32::from(port), ..start.clone() };
        connections.push(forward_port(node.clone(), start, in_rx, sink.clone(), data, error));
    }
    let reading = async move {
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some(&channel) = data.first() else { continue };
            // Only data channels carry anything from the client.
            if channel % 2 == 0 {
                if let Some(input) = inputs.get(usize::from(channel / 2)) {
                    if data.len() > 1 {
                        let _ = input.send(data.slice(1..)).await;
                    }
                }
            }
        }
    };
    tokio::pin!(reading);
    tokio::select! {
        _ = futures::future::join_all(connections) => {
            let close = Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }));
            let _ = sink.lock().await.send(close).await;
        }
        // The client went away: every connection is dropped with this future.
        _ = &mut reading => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_follow_kubernetes() {
        let o = ExecOptions::parse(Some(
            "command=sh&command=-c&command=echo%20hi&stdin=true&stdout=True&tty=1&stderr=true&container=c",
        ))
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.tty && !o.stderr, "a tty merges stderr: {o:?}");
        assert_eq!(o.container, "c");
        let e = ExecOptions::parse(Some("stdout=true")).unwrap_err();
        assert_eq!(e.message, "you must specify at least one command for the container");
        let e = ExecOptions::parse(Some("command=ls")).unwrap_err();
        assert_eq!(e.message, "you must specify at least 1 of stdin, stdout, stderr");
    }

    #[test]
    fn exit_status_is_what_client_go_decodes() {
        assert_eq!(exit_status(0, &[])["status"], "Success");
        let s = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
    }

    #[test]
    fn forwarded_ports_follow_the_kubelet() {
        assert_eq!(forward_ports(Some("ports=8080,9&ports=80")).unwrap(), [8080, 9, 80]);
        let e = forward_ports(Some("container=x")).unwrap_err();
        assert_eq!(e.message, "query parameter \"ports\" is required");
        let e = forward_ports(Some("ports=0")).unwrap_err();
        assert_eq!(e.message, "port \"0\" must be > 0");
        assert!(forward_ports(Some("ports=http")).unwrap_err().message.contains("\"http\""));
        assert!(forward_ports(Some("ports=70000")).is_err());
    }
}
