//! etcd Maintenance.Status and Cluster.MemberList.

use crate::node::StoreNode;
use crate::proto::etcdserverpb::{
    cluster_server::Cluster, maintenance_server::Maintenance, MemberListRequest,
    MemberListResponse, StatusRequest, StatusResponse,
};
use crate::KvStore;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct MaintenanceService {
    pub node: Arc<StoreNode>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.node.status()))
    }
}

pub struct ClusterService {
    pub node: Arc<StoreNode>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self.node.members().await;
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.header(self.node.revision())),
            members,
        }))
    }
}
