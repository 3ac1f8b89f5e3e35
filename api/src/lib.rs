//! Flotilla's API object model: Kubernetes types, the gRPC API, validation, defaulting, selectors
//! and manifest decoding. No I/O. (Filled in by the API server work.)
#![forbid(unsafe_code)]
