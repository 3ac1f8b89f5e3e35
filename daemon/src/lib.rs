//! The command lines of `flotillad runtime` and `flotillad image`, which both binaries
//! (`flotillad` and the small, static `flotilla-runtime`) share. Everything else `flotillad`
//! runs lives in the role crates it wires together: `flotilla-apiserver`,
//! `flotilla-scheduler`, `flotilla-controllers` and `flotilla-agent`.

#![forbid(unsafe_code)]

pub mod image;
pub mod runtime;
