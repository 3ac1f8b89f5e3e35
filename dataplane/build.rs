//! Builds the eBPF programs and leaves the load balancer's object (`flotilla-ebpf`) in
//! `OUT_DIR`; see `ebpf/build_support.rs`.

include!("../ebpf/build_support.rs");

fn main() {
    build_ebpf(&["flotilla-ebpf"]);
}
