//! Flotilla's store: a Raft-replicated (openraft) MVCC key/value space on sled, with etcd's
//! semantics and an etcd v3 compatible gRPC face. Knows nothing of pods.
//!
//! ```text
//!   etcd gRPC (etcd/) ─┐
//!   in-process users ──┴─▶ StoreNode (node.rs: KvStore) ──▶ openraft (raft/) ──▶ sled log
//!                              │ reads, watches                    │ apply
//!                              ▼                                   ▼
//!                          Mvcc (mvcc.rs) ◀──────────── state machine ──▶ WatchHub (watch.rs)
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod etcd;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod watch;
pub mod watcher;

pub mod proto {
    //! Generated protobuf and gRPC code.
    #![allow(clippy::all, missing_docs)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod flotilla {
        pub mod store {
            pub mod v1 {
                tonic::include_proto!("flotilla.store.v1");
            }
        }
    }
    pub use flotilla::store::v1 as peer;
}

pub use error::StoreError;
pub use mvcc::KeyRange;
pub use node::{member_id, KvStore, StoreConfig, StoreNode, StoreTls};
pub use watch::WatchSpec;
pub use watcher::{WatchUpdate, Watcher};
