//! Flotilla's object model: Kubernetes API types (k8s-openapi, Kubernetes 1.35), the table of
//! resources, manifest decoding, admission (defaults, validation, unknown-field warnings),
//! label and field selectors, patches, and the gRPC API's definitions (its client is
//! `flotilla-client`). No I/O.
//!
//! Objects travel and are stored as Kubernetes JSON. It is the encoding manifests, k8s-openapi
//! and every Kubernetes tool already speak, and `cargo xtask bench api` measures it against
//! the alternatives.

#![forbid(unsafe_code)]

pub mod admit;
pub mod error;
pub mod info;
pub mod kinds;
pub mod managed;
pub mod manifest;
pub mod patch;
pub mod pod;
pub mod prune;
pub mod quantity;
pub mod resources;
pub mod schema_table;
pub mod selector;
pub mod strategic;
pub mod table;
pub mod validate;

pub use error::{ApiError, FieldError, Reason};
pub use k8s_openapi;
pub use resources::{lookup, ResourceInfo, RESOURCES};

pub mod proto {
    //! Generated protobuf and gRPC code.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flotilla.api.v1");
}
