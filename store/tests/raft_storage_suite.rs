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

/// A write retried after its first attempt was applied (the answer lost on the way) carries
/// the same request id and is answered from the first application: one revision, not two.
#[tokio::test]
async fn a_retried_write_with_the_same_request_id_is_applied_once() {
    use flotilla_store::proto::etcdserverpb::PutRequest;
    use flotilla_store::proto::peer::{command, Command};
    use flotilla_store::raft::types::Wire;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let dir = TempDir::new().expect("tempdir");
    let db = sled::Config::new().path(dir.path()).open().expect("open sled");
    let durability = Arc::new(Durability::open(&db, dir.path()).expect("open files"));
    let mut sm = StateMachine::open(&db, durability).expect("open state machine");
    let put = |id| Command {
        op: Some(command::Op::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
        request_id: id,
    };
    let entry = |index, cmd| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Wire(cmd)),
    };
    let first = sm.apply(vec![entry(1, put(42))]).await.expect("apply");
    let again = sm.apply(vec![entry(2, put(42))]).await.expect("apply");
    let other = sm.apply(vec![entry(3, put(43))]).await.expect("apply");
    let rev = |r: &Vec<Wire<flotilla_store::proto::peer::CommandResult>>| format!("{:?}", r[0].0);
    assert_eq!(rev(&first), rev(&again), "the retry is answered with the first result");
    assert_ne!(rev(&first), rev(&other), "another request is applied anew");
}
