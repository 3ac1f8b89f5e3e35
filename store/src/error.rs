//! Store errors. Client-visible ones carry etcd's exact messages, because etcd clients turn those
//! strings back into typed errors (`rpctypes.ErrCompacted`, …); the details stay in the fields for
//! in-process callers. They map to gRPC codes in one place, [`StoreError::to_status`].

use tonic::{Code, Status};

/// Largest request the store accepts, like etcd's default `--max-request-bytes`.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Most operations in one transaction, like etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Longest lease TTL in seconds (etcd's MaxLeaseTTL).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps { max: usize },
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey { key: String },
    #[error(
        "etcdserver: range_end {range_end:?} is not after key {key:?}; a range is [key, range_end)"
    )]
    InvertedRange { key: String, range_end: String },
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision { requested: i64, current: i64 },
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { id: i64 },
    #[error("etcdserver: lease already exists")]
    LeaseExists { id: i64 },
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge { ttl: i64 },
    #[error("etcdserver: request is too large")]
    RequestTooLarge { size: usize, max: usize },
    /// Retryable: no leader is known right now (election in progress, or no quorum).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Retryable: the request could not reach the leader or did not finish in time.
    #[error("etcdserver: request failed: {0}")]
    Unavailable(String),
    /// An error that crossed the wire from another member, already in client terms.
    #[error("{message}")]
    Remote { code: i32, message: String },
    /// The store cannot go on (storage failure); the process should stop.
    #[error("store failure: {0}")]
    Fatal(String),
}

impl StoreError {
    pub fn code(&self) -> Code {
        use StoreError::*;
        match self {
            EmptyKey
            | KeyNotFound
            | ValueProvided
            | LeaseProvided
            | TooManyOps { .. }
            | DuplicateKey { .. }
            | InvertedRange { .. }
            | RequestTooLarge { .. } => Code::InvalidArgument,
            Compacted { .. } | FutureRevision { .. } | LeaseTtlTooLarge { .. } => Code::OutOfRange,
            LeaseNotFound { .. } => Code::NotFound,
            LeaseExists { .. } => Code::FailedPrecondition,
            NoLeader | Unavailable(_) => Code::Unavailable,
            Remote { code, .. } => Code::from_i32(*code),
            Fatal(_) => Code::Internal,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        self.code() == Code::Unavailable
    }

    /// The one place store errors become gRPC statuses.
    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    pub fn from_status(status: &Status) -> Self {
        StoreError::Remote { code: status.code() as i32, message: status.message().to_string() }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        e.to_status()
    }
}

pub(crate) fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
