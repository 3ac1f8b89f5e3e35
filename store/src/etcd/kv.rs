//! etcd KV service.

use crate::node::{KvStore, StoreNode};
use crate::proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub node: Arc<StoreNode>,
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.node.range(r.into_inner()).await?))
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.node.put(r.into_inner()).await?))
    }

    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(self.node.delete_range(r.into_inner()).await?))
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(self.node.txn(r.into_inner()).await?))
    }

    async fn compact(
        &self,
        r: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(self.node.compact(r.into_inner().revision).await?))
    }
}
