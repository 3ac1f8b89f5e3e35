//! The peer service: Raft messages, and client requests forwarded by followers to the leader.

use crate::node::StoreNode;
use crate::proto::etcdserverpb::{LeaseKeepAliveResponse, LeaseTimeToLiveResponse, RangeResponse};
use crate::proto::peer::{
    raft_peer_server::RaftPeer, Command, CommandResult, ForwardKeepAliveRequest,
    ForwardReadRequest, ForwardTimeToLiveRequest, MemberInfo, MemberInfoRequest, RaftBytes,
};
use crate::raft::network::{serve_append, serve_snapshot, serve_vote};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct PeerService {
    pub node: Arc<StoreNode>,
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, r: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        Ok(Response::new(serve_append(&self.node.raft, r.get_ref()).await?))
    }

    async fn vote(&self, r: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        Ok(Response::new(serve_vote(&self.node.raft, r.get_ref()).await?))
    }

    async fn install_snapshot(&self, r: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        Ok(Response::new(serve_snapshot(&self.node.raft, r.get_ref()).await?))
    }

    async fn propose(&self, r: Request<Command>) -> Result<Response<CommandResult>, Status> {
        Ok(Response::new(self.node.propose_local(r.into_inner()).await?))
    }

    async fn read(
        &self,
        r: Request<ForwardReadRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = r.into_inner().range.unwrap_or_default();
        Ok(Response::new(self.node.read_local(&req).await?))
    }

    async fn keep_alive(
        &self,
        r: Request<ForwardKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        Ok(Response::new(self.node.keep_alive_local(r.into_inner().id)?))
    }

    async fn time_to_live(
        &self,
        r: Request<ForwardTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = r.into_inner().request.unwrap_or_default();
        Ok(Response::new(self.node.time_to_live_local(&req)?))
    }

    async fn info(&self, _r: Request<MemberInfoRequest>) -> Result<Response<MemberInfo>, Status> {
        let c = self.node.config();
        Ok(Response::new(MemberInfo {
            id: self.node.id(),
            name: c.name.clone(),
            client_url: c.client_addr.clone(),
            peer_url: c.peer_addr.clone(),
        }))
    }
}
