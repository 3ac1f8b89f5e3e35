//! Builds the eBPF programs (`ebpf/flotilla-ebpf`) for `bpfel-unknown-none` with the nightly
//! toolchain and bpf-linker (installed by `cargo xtask setup`), and leaves the object in
//! `OUT_DIR` for `include_bytes_aligned!`. The same flags as aya-build; done here because the
//! eBPF crate lives outside the workspace (it cannot build for the host).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let crate_dir = manifest.join("../ebpf/flotilla-ebpf");
    let common = manifest.join("../ebpf/flotilla-ebpf-common");
    for p in [
        crate_dir.join("src"),
        crate_dir.join("Cargo.toml"),
        crate_dir.join("Cargo.lock"),
        common.join("src"),
        common.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let target_dir = out.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&crate_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's settings would leak into the nested nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` ({e}); run `cargo xtask setup` first")
    });
    if !status.success() {
        panic!(
            "building the eBPF programs failed ({status}); `cargo xtask setup` installs the \
             nightly rust-src and bpf-linker they need"
        );
    }
    copy(&target_dir.join("bpfel-unknown-none/release/flotilla-ebpf"), &out.join("flotilla-ebpf"));
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}
