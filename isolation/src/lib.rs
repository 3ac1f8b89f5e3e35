//! flotilla-isolation: images in, isolated processes out.
//!
//! ```text
//!  bundle (config.json + rootfs)
//!     │ spec: parse, check ──► mounts/process/seccomp plans (before fork)
//!     ▼
//!  container::Runtime ── cgroups (cgroups-rs, v1/hybrid and v2)
//!     │ fork monitor ─ fork init: namespaces, rootfs, pivot_root, caps, seccomp, exec
//!     ▼
//!  state dir: state.json, exec.fifo, exit.json; logs in CRI format
//! ```
//! Knows nothing of pods: the agent turns a pod's containers into bundles.

pub mod cgroups;
pub mod console;
pub mod container;
pub mod devices;
pub mod error;
pub mod image;
pub mod logs;
pub mod mounts;
pub mod paths;
pub mod process;
pub mod seccomp;
pub mod spec;
pub mod state;
mod sys;

pub use container::{CreateOptions, Runtime};
pub use error::{Error, Result};
pub use state::{Exit, State, Status};
pub use sys::{reexec_from_sealed_copy, CLONED_ENV};
