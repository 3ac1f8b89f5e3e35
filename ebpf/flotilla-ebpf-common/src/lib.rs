//! Map key and value layouts shared by the eBPF programs (`no_std`) and the dataplane loader.
#![no_std]
