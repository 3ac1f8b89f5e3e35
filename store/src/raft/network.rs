//! Raft messages between members over tonic. Each message is an openraft type encoded with
//! bincode inside a protobuf `bytes` field; replies carry `Result<Response, RaftError>` so a
//! remote Raft error reaches the sender as itself.

use super::types::{NodeId, Raft, TypeConfig};
use crate::proto::peer::raft_peer_client::RaftPeerClient;
use crate::proto::peer::RaftBytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A lazily connected channel to a member's peer port: mutual TLS when `tls` is set (the
/// member's peer certificate is both server and client), plain otherwise (in-process tests).
pub(crate) fn peer_channel(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
    let ep = Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10));
    Ok(match tls {
        Some(cfg) => {
            ep.connect_with_connector_lazy(flotilla_pki::tls::Connector::new(cfg.clone(), None))
        }
        None => ep.connect_lazy(),
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> RaftBytes {
    RaftBytes { data: bincode::serialize(v).expect("bincode of raft message") }
}

pub(crate) fn decode<T: DeserializeOwned>(b: &RaftBytes) -> Result<T, bincode::Error> {
    bincode::deserialize(&b.data)
}

/// Makes one client per target member; each keeps its own HTTP/2 connection.
pub struct PeerNetwork {
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = peer_channel(&node.addr, self.tls.as_ref()).ok().map(RaftPeerClient::new);
        PeerClient { target, addr: node.addr.clone(), client }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftPeerClient<Channel>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                "bad peer address {:?}",
                self.addr
            )))));
        };
        let mut request = tonic::Request::new(encode(req));
        request.set_timeout(timeout);
        let reply = match method {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| {
            if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded {
                RPCError::Unreachable(Unreachable::new(&s))
            } else {
                RPCError::Network(NetworkError::new(&s))
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

/// Server side of the Raft messages: hands each to the local Raft and encodes its answer.
pub(crate) async fn serve_append(raft: &Raft, req: &RaftBytes) -> Result<RaftBytes, tonic::Status> {
    let rpc: AppendEntriesRequest<TypeConfig> = decode(req).map_err(bad_request)?;
    Ok(encode(&raft.append_entries(rpc).await))
}

pub(crate) async fn serve_vote(raft: &Raft, req: &RaftBytes) -> Result<RaftBytes, tonic::Status> {
    let rpc: VoteRequest<NodeId> = decode(req).map_err(bad_request)?;
    Ok(encode(&raft.vote(rpc).await))
}

pub(crate) async fn serve_snapshot(
    raft: &Raft,
    req: &RaftBytes,
) -> Result<RaftBytes, tonic::Status> {
    let rpc: InstallSnapshotRequest<TypeConfig> = decode(req).map_err(bad_request)?;
    Ok(encode(&raft.install_snapshot(rpc).await))
}

fn bad_request(e: bincode::Error) -> tonic::Status {
    tonic::Status::invalid_argument(format!("malformed raft message: {e}"))
}
