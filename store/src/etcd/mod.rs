//! The etcd v3 gRPC face of a store member (client port) and the peer service (peer port).
//!
//! ```text
//!  etcdctl / etcd clients ──▶ KV, Watch, Lease, Cluster, Maintenance ──▶ StoreNode (KvStore)
//!  other members          ──▶ RaftPeer (Raft messages, forwarded writes and reads)
//! ```
//! Errors become `tonic::Status` only through [`crate::StoreError::to_status`].

mod kv;
mod lease;
mod maintenance;
mod peer;
mod watch;

use crate::error::MAX_REQUEST_BYTES;
use crate::node::StoreNode;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::peer::raft_peer_server::RaftPeerServer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use watch::WatchService;

/// Serves the etcd API on `client` and the peer service on `peer` until `shutdown` resolves.
pub async fn serve(
    node: Arc<StoreNode>,
    client: TcpListener,
    peer: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stop_rx2 = stop_rx.clone();
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let tls = node.config().tls.clone();
    let n = node.clone();
    let peer_router = tonic::transport::Server::builder().tcp_nodelay(true).add_service(
        RaftPeerServer::new(peer::PeerService { node: n })
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20),
    );
    // Leave headroom over the request limit so an oversized request reaches our own check and
    // gets etcd's error rather than a transport error.
    let max = MAX_REQUEST_BYTES * 2;
    let client_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            KvServer::new(kv::KvService { node: node.clone() }).max_decoding_message_size(max),
        )
        .add_service(
            WatchServer::new(WatchService::new(node.clone())).max_decoding_message_size(max),
        )
        .add_service(LeaseServer::new(lease::LeaseService { node: node.clone() }))
        .add_service(ClusterServer::new(maintenance::ClusterService { node: node.clone() }))
        .add_service(MaintenanceServer::new(maintenance::MaintenanceService { node }));
    let (peer_tls, client_tls) = match &tls {
        Some(t) => (Some(t.peer_server.clone()), Some(t.client.clone())),
        None => (None, None),
    };
    // Accepted connections get Nagle off either way: small gRPC frames must not wait for
    // delayed ACKs (the builder's `tcp_nodelay` only applies to listeners tonic binds itself).
    let peer_srv = async move {
        match peer_tls {
            Some(cfg) => {
                let inc = flotilla_pki::tls::incoming(peer, cfg);
                peer_router.serve_with_incoming_shutdown(inc, stop(stop_rx.clone())).await
            }
            None => {
                let inc = TcpIncoming::from(peer).with_nodelay(Some(true));
                peer_router.serve_with_incoming_shutdown(inc, stop(stop_rx.clone())).await
            }
        }
    };
    let client_srv = async move {
        match client_tls {
            Some(cfg) => {
                let inc = flotilla_pki::tls::incoming(client, cfg);
                client_router.serve_with_incoming_shutdown(inc, stop(stop_rx2)).await
            }
            None => {
                let inc = TcpIncoming::from(client).with_nodelay(Some(true));
                client_router.serve_with_incoming_shutdown(inc, stop(stop_rx2)).await
            }
        }
    };
    let (a, b) = tokio::join!(peer_srv, client_srv);
    a.and(b)
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let sa: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad address {addr:?}: {e}"))
    })?;
    TcpListener::bind(sa)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
