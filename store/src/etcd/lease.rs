//! etcd Lease service. Keep-alives are answered by the leader, which tracks lease deadlines.

use crate::node::{KvStore, StoreNode};
use crate::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct LeaseService {
    pub node: Arc<StoreNode>,
}

type KeepAliveStream =
    Pin<Box<dyn futures::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        r: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(self.node.lease_grant(r.ttl, r.id).await?))
    }

    async fn lease_revoke(
        &self,
        r: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(self.node.lease_revoke(r.into_inner().id).await?))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut incoming = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = incoming.next().await {
                let resp = match node.lease_keep_alive(req.id).await {
                    Ok(r) => Ok(r),
                    // etcd answers a keep-alive for an unknown lease with TTL 0, not an error
                    // (locally, or from the leader: the code survives forwarding).
                    Err(e) if e.code() == tonic::Code::NotFound => Ok(LeaseKeepAliveResponse {
                        header: Some(node.header(node.revision())),
                        id: req.id,
                        ttl: 0,
                    }),
                    Err(e) => Err(e.to_status()),
                };
                if tx.send(resp).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(self.node.lease_time_to_live(r.into_inner()).await?))
    }

    async fn lease_leases(
        &self,
        _r: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.node.leases()))
    }
}
