//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing it already has.

use crate::util::{have, run};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Debian packages the build, the tests and the benchmarks need.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker is built against LLVM 22 (see ARCHITECTURE.md, Toolchain for eBPF).
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    // protoc, for the etcd-client crate that the tests and benchmarks use as an independent client.
    "protobuf-compiler",
    // protoc's well-known types (google/protobuf/*.proto): only a Recommends of
    // protobuf-compiler, which --no-install-recommends skips.
    "libprotobuf-dev",
    // The peer the store is compared with, and the real etcdctl for compatibility tests.
    "etcd-server",
    "etcd-client",
    "iproute2",
    // The runtime's test images and peers: busybox for bundles, runc and crun to compare
    // with, a real registry and skopeo for the image tests.
    "busybox-static",
    "runc",
    "crun",
    // The pod startup benchmark's peer: containerd (with runc) driven by ctr.
    "containerd",
    "docker-registry",
    "skopeo",
    // htpasswd, for the registry that demands basic auth.
    "apache2-utils",
    // A self-signed certificate for the HTTPS probe test.
    "openssl",
    // Kubernetes' Python client, one of the clients the HTTP API is tested with.
    "python3-kubernetes",
    // The dataplane benchmark's peer: kube-proxy-style rules through iptables-restore.
    "iptables",
    // `cargo xtask vm`: a KVM guest with pure cgroup v2 (where crun runs).
    "qemu-system-x86",
    "linux-image-amd64",
    "cpio",
];

pub fn setup() -> Result<()> {
    apt()?;
    kubectl()?;
    nightly()?;
    bpf_linker()?;
    Ok(())
}

/// Where Debian's kubectl 1.20 is unpacked (never installed over the kubectl on PATH): the
/// HTTP API's tests run kubectl's scenario with it too.
pub fn old_kubectl() -> PathBuf {
    crate::util::workspace_root().join("target/kubectl-1.20/usr/bin/kubectl")
}

/// A kubectl on PATH (Debian's kubernetes-client where none exists), and Debian's 1.20
/// unpacked into `target/`.
fn kubectl() -> Result<()> {
    // (kubectl has no --version, so `have` cannot tell.)
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("kubectl").is_file()));
    if !on_path {
        apt_install(&["kubernetes-client"])?;
    }
    let old = old_kubectl();
    if old.exists() {
        return Ok(());
    }
    let dir = old.ancestors().nth(3).expect("target/kubectl-1.20").to_path_buf();
    let download = dir.with_file_name("kubectl-1.20.download");
    std::fs::create_dir_all(&download)?;
    let mut get = Command::new("apt-get");
    get.args(["download", "-q", "kubernetes-client"]).current_dir(&download);
    if run(get).is_err() {
        let mut update = Command::new("apt-get");
        update.arg("update").arg("-q");
        run(update)?;
        let mut get = Command::new("apt-get");
        get.args(["download", "-q", "kubernetes-client"]).current_dir(&download);
        run(get)?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download kubernetes-client left no .deb")?;
    let mut x = Command::new("dpkg");
    x.arg("-x").arg(&deb).arg(&dir);
    run(x)?;
    let _ = std::fs::remove_dir_all(&download);
    anyhow::ensure!(old.exists(), "{} is not in {}", old.display(), deb.display());
    Ok(())
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let mut update = Command::new("apt-get");
    update.arg("update").arg("-q");
    run(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(install)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    apt_install(&missing)
}

/// The eBPF crate's pinned nightly with rust-src (for build-std), rustfmt and clippy (lints).
fn nightly() -> Result<()> {
    let toolchain = crate::util::ebpf_toolchain()?;
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", &toolchain])
        .output()
        .context("rustup is required")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && ["rust-src", "rustfmt", "clippy"].iter().all(|c| listed.contains(c))
    {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", &toolchain, "--profile", "minimal"]).args([
        "--component",
        "rust-src",
        "--component",
        "rustfmt",
        "--component",
        "clippy",
    ]);
    run(cmd)
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
    });
    home.join("bin").join(name)
}

/// cargo-fuzz, for `cargo xtask fuzz` (pinned: its flags are part of that command).
pub fn cargo_fuzz() -> Result<()> {
    if cargo_bin("cargo-fuzz").exists() {
        return Ok(());
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "--locked", "cargo-fuzz", "--version", "0.13.2"]);
    run(cmd)
}

fn bpf_linker() -> Result<()> {
    if have("bpf-linker") || cargo_bin("bpf-linker").exists() {
        return Ok(());
    }
    // A plain `cargo install bpf-linker` looks for libLLVM in the wrong place on Debian.
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22");
    run(cmd)
}
