//! Port-forward on the node: one TCP connection to `localhost:<port>` inside a pod's network
//! namespace, relayed to the API server, as the kubelet's port-forward (it too dials
//! localhost in the pod's namespace, so a server bound to 127.0.0.1 in the pod is reachable).
//!
//! ```text
//!  API server ══ PortForwardInput ══► TCP 127.0.0.1:PORT (pod netns) ══ PortForwardOutput ══►
//! ```

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use flotilla_api::proto::{self, port_forward_input::Msg as In};
use futures::{Stream, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tonic::Status;

use super::pods::Ctx;

pub type PortForwardStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<proto::PortForwardOutput, Status>> + Send>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The network namespace the pod's containers run in: its own, or the node's for a
/// hostNetwork pod (None: the agent's own namespace).
fn pod_netns(ctx: &Ctx, uid: &str, name: &str) -> Result<Option<PathBuf>, Status> {
    if let Some(net) = ctx.net.pod(uid).map_err(|e| Status::internal(e.to_string()))? {
        return Ok(Some(net.netns));
    }
    if ctx.pod_names.read().expect("pod names lock").contains_key(uid) {
        return Ok(ctx.net.config().netns.clone());
    }
    Err(Status::not_found(format!("pod {name} (uid {uid}) is not running on this node")))
}

/// Dials the port inside `netns`: the socket keeps the namespace it was made in.
async fn dial(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let connect = move || std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT);
    let std = tokio::task::spawn_blocking(move || match netns {
        Some(path) => flotilla_dataplane::netns::NetNs::open(&path)?.run(connect)?,
        None => connect(),
    })
    .await
    .map_err(std::io::Error::other)??;
    std.set_nonblocking(true)?;
    std.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// Connects as the stream's first message asks and relays until either side is done.
pub async fn start<S>(ctx: Arc<Ctx>, mut input: S) -> Result<PortForwardStream, Status>
where
    S: Stream<Item = Result<proto::PortForwardInput, Status>> + Send + Unpin + 'static,
{
    let start = match input.next().await {
        Some(Ok(proto::PortForwardInput { msg: Some(In::Start(s)) })) => s,
        Some(Err(e)) => return Err(e),
        _ => {
            return Err(Status::invalid_argument("port-forward: the first message must be `start`"))
        }
    };
    let port = u16::try_from(start.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Status::invalid_argument(format!("port {} is not valid", start.port)))?;
    let netns = pod_netns(&ctx, &start.uid, &start.name)?;
    let conn = dial(netns, port).await.map_err(|e| {
        Status::unavailable(format!(
            "failed to connect to localhost:{port} inside the network namespace of pod {}: {e}",
            start.name
        ))
    })?;
    tracing::debug!(pod = %start.name, port, "port-forward connected");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(relay(conn, input, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

async fn relay<S>(
    conn: tokio::net::TcpStream,
    mut input: S,
    tx: mpsc::Sender<Result<proto::PortForwardOutput, Status>>,
) where
    S: Stream<Item = Result<proto::PortForwardInput, Status>> + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = conn.into_split();
    let to_pod = async move {
        while let Some(Ok(m)) = input.next().await {
            if let Some(In::Data(d)) = m.msg {
                if wr.write_all(&d).await.is_err() {
                    return;
                }
            }
        }
        // The caller is done sending: the pod reads its end of stream.
        let _ = wr.shutdown().await;
        // Keep the write half open (dropping it would not close more than shutdown did).
        std::future::pending::<()>().await;
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(0) => return,
                    Ok(n) => {
                        let m = proto::PortForwardOutput { data: buf[..n].to_vec().into() };
                        if tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::aborted(format!("reading from the pod: {e}")))).await;
                        return;
                    }
                },
                // The API server went away: nobody reads any more.
                _ = tx.closed() => return,
            }
        }
    };
    // The pod's side closing ends the connection, as the kubelet's does.
    tokio::select! {
        _ = to_pod => {}
        _ = from_pod => {}
    }
}
