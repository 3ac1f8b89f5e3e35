//! Containers: the lifecycle of the OCI runtime spec over a state directory.
//!
//! ```text
//!  create ─► created ─start─► running ─(exit | kill)─► stopped ─delete─► gone
//!    │                                                     ▲
//!    └─ monitor (own session) reaps the init, writes exit.json
//! ```
//! `create` forks, so it must run in a single-threaded process: the `flotillad runtime`
//! command, which long-running supervisors (the agent) call.

mod create;
mod exec;
mod init;
mod monitor;
mod ops;

use std::path::{Path, PathBuf};

pub use create::CreateOptions;
pub use exec::{ExecOptions, ExecResult};
pub use ops::parse_signal;

/// Default state root, as runc uses /run/runc.
pub const DEFAULT_ROOT: &str = "/run/flotilla/runtime";

/// Containers under one state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A container's state directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}
