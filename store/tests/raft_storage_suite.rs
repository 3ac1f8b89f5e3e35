//! Proves the sled-backed Raft log and state machine satisfy openraft's own storage suite
//! (log state, membership, vote, truncation, purge, apply, snapshots).

use flotilla_store::raft::durability::Durability;
use flotilla_store::raft::log_store::LogStore;
use flotilla_store::raft::state_machine::StateMachine;
use flotilla_store::raft::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use std::sync::Arc;
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("open sled");
        let durability = Arc::new(Durability::open(&db, dir.path()).expect("open files"));
        let log = LogStore::open(&db, durability.clone()).expect("open log");
        let sm = StateMachine::open(&db, durability)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_log_and_state_machine_should_pass_openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("openraft storage suite");
}
