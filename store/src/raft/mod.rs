//! openraft glue: type configuration, the sled log store, the state machine and the network.

pub mod durability;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;
