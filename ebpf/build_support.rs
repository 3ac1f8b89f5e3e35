// Shared by the build scripts of `flotilla-dataplane` and `flotilla-isolation` (through
// `include!`): builds the eBPF crate (`ebpf/flotilla-ebpf`, every object in it) for
// `bpfel-unknown-none` with the pinned nightly and bpf-linker (installed by `cargo xtask
// setup`), with aya-build's flags, and copies the named objects into `OUT_DIR` for
// `include_bytes_aligned!`. Done here rather than with aya-build because the eBPF crate lives
// outside the workspace (it cannot build for the host).
//
// Both scripts share one target directory (`target/ebpf`), so the nightly build runs once;
// cargo's lock serialises them.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn build_ebpf(objects: &[&str]) {
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
        crate_dir.join("rust-toolchain.toml"),
        manifest.join("../ebpf/build_support.rs"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let target_dir = manifest.join("../target/ebpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    let toolchain = toolchain(&crate_dir);
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--release", "--locked"])
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
        "CLIPPY_ARGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run {toolchain} cargo` ({e}); run `cargo xtask setup` first")
    });
    if !status.success() {
        panic!(
            "building the eBPF programs failed ({status}); `cargo xtask setup` installs the \
             {toolchain} toolchain with rust-src and the bpf-linker they need"
        );
    }
    for name in objects {
        copy(&target_dir.join("bpfel-unknown-none/release").join(name), &out.join(name));
    }
}

/// The pinned nightly of the eBPF crate's rust-toolchain.toml.
fn toolchain(crate_dir: &Path) -> String {
    let file = crate_dir.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?
                .trim()
                .strip_prefix('"')?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("{}: no channel", file.display()))
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}
