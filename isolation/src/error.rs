//! The runtime's errors. Each names the container, file or field it is about.

use std::io;
use std::path::PathBuf;

/// What went wrong in a container operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container id {id:?} is invalid: {reason}")]
    InvalidId { id: String, reason: &'static str },

    #[error("container {id:?} already exists")]
    Exists { id: String },

    #[error("container {id:?} does not exist")]
    NotFound { id: String },

    #[error("container {id:?} is {status}, {action} needs it {wanted}")]
    BadStatus { id: String, status: &'static str, action: &'static str, wanted: &'static str },

    #[error("bundle {bundle}: cannot read config.json")]
    ReadConfig {
        bundle: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("bundle {bundle}: config.json field `{field}`: {reason}")]
    Config { bundle: PathBuf, field: String, reason: String },

    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },

    #[error("container {id:?}: cgroup {path}: {what}")]
    Cgroup { id: String, path: String, what: String },

    #[error("container {id:?}: seccomp profile: {reason}")]
    Seccomp { id: String, reason: String },

    /// The container's init reported a failure while setting itself up.
    #[error("container {id:?}: {message}")]
    Init { id: String, message: String },

    #[error("container {id:?}: state file {path} is corrupt: {reason}")]
    CorruptState { id: String, path: PathBuf, reason: String },

    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { what, path: path.into(), source }
    }

    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys { what: what.into(), source }
    }

    pub(crate) fn config(
        bundle: &std::path::Path,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config { bundle: bundle.to_path_buf(), field: field.into(), reason: reason.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
