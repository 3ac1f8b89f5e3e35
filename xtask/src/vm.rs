//! `cargo xtask vm -- CMD…`: runs a command as root in a guest (KVM or software emulation) with a pure cgroup v2
//! hierarchy, the one setup these hybrid-cgroup machines cannot give.
//!
//! ```text
//!  Debian's linux-image-amd64 kernel + an initramfs of busybox and the 9p/virtio modules
//!    └─ init: mounts this host's / read-only over 9p, the workspace read-write at its own
//!       path (both cached in the guest: the host leaves them alone during a run),
//!       tmpfs on /tmp /var/tmp /run, cgroup2 on /sys/fs/cgroup (controllers
//!       enabled), switches root, runs CMD in the workspace, writes its exit code, powers off
//! ```
//! The guest sees the same binaries, libraries and workspace paths as the host, so
//! release binaries built here run there unchanged.

use crate::util::workspace_root;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules the initramfs loads to reach the 9p root, in dependency order.
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

fn kernel() -> Result<(PathBuf, String)> {
    let mut found: Vec<String> = std::fs::read_dir("/boot")?
        .flatten()
        .filter_map(|e| {
            e.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_string)
        })
        .filter(|v| Path::new("/lib/modules").join(v).join("kernel/fs/9p").exists())
        .collect();
    found.sort();
    let v = found
        .pop()
        .context("no /boot/vmlinuz-* with 9p modules (apt install linux-image-amd64)")?;
    Ok((PathBuf::from(format!("/boot/vmlinuz-{v}")), v))
}

fn module_path(version: &str, name: &str) -> Result<PathBuf> {
    let out = Command::new("modinfo").args(["-k", version, "-F", "filename", name]).output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() || p == "(builtin)" {
        bail!("module {name} not found for {version}");
    }
    Ok(PathBuf::from(p))
}

/// `name` and its dependencies, dependencies first; built-ins left out.
fn with_deps(version: &str, name: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    if out.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let deps = Command::new("modinfo").args(["-k", version, "-F", "depends", name]).output()?;
    for d in String::from_utf8_lossy(&deps.stdout).trim().split(',').filter(|d| !d.is_empty()) {
        with_deps(version, d, out)?;
    }
    // A module without a file is built into the kernel.
    if let Ok(p) = module_path(version, name) {
        out.push((name.to_string(), p));
    }
    Ok(())
}

fn build_initramfs(dir: &Path, version: &str) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    for a in [
        "sh",
        "mount",
        "insmod",
        "mkdir",
        "switch_root",
        "poweroff",
        "echo",
        "cat",
        "sleep",
        "umount",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    let mut mods = Vec::new();
    for m in ROOT_MODULES {
        with_deps(version, m, &mut mods)?;
    }
    let mut insmods = String::new();
    for (i, (name, path)) in mods.iter().enumerate() {
        let file = format!("{i:02}-{name}.ko");
        std::fs::copy(path, root.join("modules").join(&file))?;
        insmods.push_str(&format!("insmod /modules/{file} || echo 'vm: insmod {name} failed'\n"));
    }
    let ws = workspace_root();
    let init = format!(
        r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{insmods}
# cache=loose: nothing changes these trees during a run, and without a page cache every exec
# and page fault crosses 9p, which cost 4x on runtime timings (a benchmark of the transport).
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot || {{ echo 'vm: mounting the host root failed'; poweroff -f; }}
for d in tmp var/tmp run root; do mount -t tmpfs tmpfs /newroot/$d; done
# After the tmpfs mounts: a workspace under one of them (a CI clone in /var/tmp) stays visible.
mkdir -p /newroot{ws}
mount -t 9p -o trans=virtio,version=9p2000.L,rw,cache=loose,msize=262144 work /newroot{ws} || echo 'vm: mounting the workspace failed'
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
mount -t bpf bpf /newroot/sys/fs/bpf
echo '+cpu +memory +pids +io +cpuset' > /newroot/sys/fs/cgroup/cgroup.subtree_control
# switch_root, not chroot: inside a chroot the kernel refuses new user namespaces (EPERM),
# and the runtime's tests make them. The host's static busybox powers off afterwards.
exec switch_root /newroot /bin/sh -c 'cd {ws} && export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/root/.cargo/bin; ip link set lo up; sh target/vm/cmd.sh; echo $? > target/vm/exit; /bin/busybox sync; /bin/busybox poweroff -f'
"#,
        ws = ws.display()
    );
    std::fs::write(root.join("init"), init)?;
    std::fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            out.display()
        ))
        .status()?;
    if !status.success() {
        bail!("building the initramfs failed");
    }
    Ok(out)
}

pub fn run(memory_mib: u32, cpus: u32, kvm: bool, command: &[String]) -> Result<()> {
    if command.is_empty() {
        bail!("usage: cargo xtask vm -- COMMAND [ARGS…]");
    }
    if kvm && !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm is missing: run without --kvm (software emulation)");
    }
    let (kernel, version) = kernel()?;
    let dir = workspace_root().join("target/vm");
    std::fs::create_dir_all(&dir)?;
    let initramfs = build_initramfs(&dir, &version)?;
    let quoted: Vec<String> =
        command.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
    std::fs::write(dir.join("cmd.sh"), format!("{}\n", quoted.join(" ")))?;
    let _ = std::fs::remove_file(dir.join("exit"));
    let ws = workspace_root();
    let mut qemu = Command::new("qemu-system-x86_64");
    // Nested KVM on these machines hangs at kernel entry, so software emulation is the
    // default; `--kvm` uses the host CPU where nesting works.
    if kvm {
        qemu.args(["-enable-kvm", "-cpu", "host,-arch-capabilities"]);
    } else {
        qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    qemu.args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .args(["-m", &memory_mib.to_string(), "-smp", &cpus.to_string()])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap"])
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=work,security_model=passthrough", ws.display()));
    let status = qemu.status().context("qemu-system-x86_64 (apt install qemu-system-x86)")?;
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    let code: i32 = std::fs::read_to_string(dir.join("exit"))
        .context("the guest did not record an exit code")?
        .trim()
        .parse()?;
    if code != 0 {
        bail!("the command exited with {code} in the VM");
    }
    Ok(())
}
