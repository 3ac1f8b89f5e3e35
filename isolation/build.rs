//! Builds the eBPF programs and leaves the cgroup v2 device filter (`flotilla-devices`) in
//! `OUT_DIR`; see `ebpf/build_support.rs`. Also hashes the object (FNV-1a) into
//! `FLOTILLA_DEVICES_HASH`, the seed of the program cache's names, so a create does not hash
//! it again.

include!("../ebpf/build_support.rs");

fn main() {
    build_ebpf(&["flotilla-devices"]);
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = std::fs::read(out.join("flotilla-devices")).expect("the device program");
    let hash = object
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    println!("cargo:rustc-env=FLOTILLA_DEVICES_HASH={hash:016x}");
}
