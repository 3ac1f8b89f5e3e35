//! An API server in process over a single-member store in a directory: what unit tests and
//! the request fuzzer drive, with no socket and no other process.

use crate::request::Seams;
use crate::{ApiConfig, ApiServer};
use flotilla_store::{StoreConfig, StoreNode};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A store and the API server over it. Dropping it does not stop the store's tasks: call
/// [`InProcess::shutdown`] (a test's runtime ending stops them too).
pub struct InProcess {
    pub store: Arc<StoreNode>,
    pub api: Arc<ApiServer>,
}

impl InProcess {
    /// Starts a single-member store in `dir` (it must be empty or hold an earlier run's
    /// state) and an API server over it, with fast Raft timers.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, Seams::default()).await
    }

    /// `start`, with these authentication, authorization and admission stages.
    pub async fn start_with(dir: &Path, seams: Seams) -> anyhow::Result<Self> {
        // No listener is opened: the addresses are only reported in the member list.
        let mut cfg = StoreConfig::single("test", dir.to_path_buf(), "127.0.0.1:0", "127.0.0.1:0");
        cfg.heartbeat_ms = 50;
        cfg.election_timeout_ms = (150, 300);
        let store = StoreNode::start(cfg).await?;
        store.wait_for_leader(Duration::from_secs(10)).await?;
        let api = ApiServer::start_with(store.clone(), ApiConfig::default(), seams)
            .await
            .map_err(|e| anyhow::anyhow!("starting the API server: {}", e.message))?;
        Ok(InProcess { store, api })
    }

    pub async fn shutdown(self) {
        self.store.shutdown().await;
    }
}
