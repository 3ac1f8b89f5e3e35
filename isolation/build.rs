//! Builds the eBPF programs and leaves the cgroup v2 device filter (`flotilla-devices`) in
//! `OUT_DIR`; see `ebpf/build_support.rs`.

include!("../ebpf/build_support.rs");

fn main() {
    build_ebpf(&["flotilla-devices"]);
}
