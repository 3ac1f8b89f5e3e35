//! The container's filesystem view: mount options parsed into a plan before fork, then
//! carried out by the container's init inside its new mount namespace.
//!
//! ```text
//!  spec.mounts ──plan()──► MountPlan ──(init, new mount ns)──► setup_rootfs()
//!                                          rslave /; bind rootfs; mounts; /dev;
//!                                          pivot_root; masked + read-only paths
//! ```

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::Spec;

use crate::paths::secure_join;

/// One mount of the spec, with its options already split into flags and data.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedMount {
    pub destination: PathBuf,
    pub source: Option<PathBuf>,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Option<String>,
}

impl PlannedMount {
    fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// A cgroup hierarchy as the host mounts it, and the container's directory in it.
#[derive(Debug, Clone)]
pub struct CgroupBind {
    /// Directory name under the container's `/sys/fs/cgroup` (`memory`, `cpu`, `unified`).
    pub name: String,
    /// The container's cgroup directory on the host.
    pub host_dir: PathBuf,
}

/// Everything the init needs to build the container's filesystem, computed before fork.
#[derive(Debug, Clone)]
pub struct MountPlan {
    pub rootfs: PathBuf,
    pub root_propagation: MsFlags,
    pub mounts: Vec<PlannedMount>,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub root_readonly: bool,
    /// cgroup hierarchies to show in a `cgroup` mount; empty on a unified (v2) host.
    pub cgroup_binds: Vec<CgroupBind>,
    pub cgroup_v2: bool,
}

/// Splits fstab-style options into mount flags, propagation changes and fs data.
pub fn parse_options(options: &[String]) -> (MsFlags, Vec<MsFlags>, Option<String>) {
    let mut flags = MsFlags::empty();
    let mut propagation = Vec::new();
    let mut data = Vec::new();
    for o in options {
        if let Some(p) = propagation_flag(o) {
            propagation.push(p);
            continue;
        }
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
    }
    let data = if data.is_empty() { None } else { Some(data.join(",")) };
    (flags, propagation, data)
}

/// The propagation flag an option or `rootfsPropagation` value names.
pub fn propagation_flag(o: &str) -> Option<MsFlags> {
    Some(match o {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Builds the plan from a checked spec. `bundle` anchors relative bind sources.
pub fn plan(
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    cgroup_binds: Vec<CgroupBind>,
    cgroup_v2: bool,
) -> MountPlan {
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let (flags, propagation, data) = parse_options(m.options().as_deref().unwrap_or(&[]));
        let fstype = m.typ().clone().filter(|t| !t.is_empty());
        let mut flags = flags;
        if fstype.as_deref() == Some("bind") {
            flags |= MsFlags::MS_BIND;
        }
        let source = m.source().as_ref().map(|s| {
            if flags.contains(MsFlags::MS_BIND) && s.is_relative() {
                bundle.join(s)
            } else {
                s.clone()
            }
        });
        mounts.push(PlannedMount {
            destination: m.destination().clone(),
            source,
            fstype,
            flags,
            propagation,
            data,
        });
    }
    let linux = spec.linux().as_ref();
    let root_propagation = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    let paths =
        |v: Option<&Vec<String>>| v.into_iter().flatten().map(PathBuf::from).collect::<Vec<_>>();
    MountPlan {
        rootfs: rootfs.to_path_buf(),
        root_propagation,
        mounts,
        masked: paths(linux.and_then(|l| l.masked_paths().as_ref())),
        readonly: paths(linux.and_then(|l| l.readonly_paths().as_ref())),
        root_readonly: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
        cgroup_binds,
        cgroup_v2,
    }
}

/// A failed step of the rootfs setup, for the init to report.
#[derive(Debug)]
pub struct SetupError(pub String);

type SetupResult<T = ()> = Result<T, SetupError>;

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> SetupResult<T> {
    r.map_err(|e| SetupError(format!("{}: {e}", what())))
}

fn do_mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> SetupResult {
    ctx(mount(src, dst, fstype, flags, data), || {
        format!(
            "mount {} on {} (type {:?}, flags {:?}, data {:?})",
            src.map(|s| s.display().to_string()).unwrap_or_default(),
            dst.display(),
            fstype,
            flags,
            data
        )
    })
}

/// Creates `path` as a directory, or as an empty file when `file` (a bind of a file).
fn create_target(path: &Path, file: bool) -> SetupResult {
    if file {
        if let Some(parent) = path.parent() {
            ctx(std::fs::create_dir_all(parent), || format!("creating {}", parent.display()))?;
        }
        if std::fs::symlink_metadata(path).is_err() {
            ctx(std::fs::File::create(path), || format!("creating {}", path.display()))?;
        }
        Ok(())
    } else {
        ctx(std::fs::create_dir_all(path), || format!("creating {}", path.display()))
    }
}

/// Runs in the container's init, in its own mount namespace, before `pivot_root`.
pub fn setup_rootfs(plan: &MountPlan) -> SetupResult {
    let root = &plan.rootfs;
    do_mount(None, Path::new("/"), None, plan.root_propagation, None)?;
    // pivot_root needs the new root to be a mount point.
    do_mount(Some(root), root, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;

    let mut dev_is_tmpfs = false;
    for m in &plan.mounts {
        let dest = ctx(secure_join(root, &m.destination), || {
            format!("resolving {}", m.destination.display())
        })?;
        if m.fstype.as_deref() == Some("cgroup") || m.fstype.as_deref() == Some("cgroup2") {
            mount_cgroups(plan, m, &dest)?;
            continue;
        }
        if m.is_bind() {
            let src = m.source.as_deref().ok_or_else(|| {
                SetupError(format!("bind mount on {} has no source", m.destination.display()))
            })?;
            let meta = ctx(std::fs::metadata(src), || format!("bind source {}", src.display()))?;
            create_target(&dest, !meta.is_dir())?;
            do_mount(Some(src), &dest, None, m.flags & (MsFlags::MS_BIND | MsFlags::MS_REC), None)?;
            // A bind ignores the other flags; they take effect on a remount.
            let extra = m.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            if !extra.is_empty() {
                remount_keeping_locked(&dest, extra | MsFlags::MS_BIND)?;
            }
        } else {
            create_target(&dest, false)?;
            let fstype = m.fstype.as_deref();
            let res = mount(m.source.as_deref(), &dest, fstype, m.flags, m.data.as_deref());
            match res {
                // sysfs cannot be mounted outside a new network namespace: show the host's read-only.
                Err(nix::Error::EPERM) if fstype == Some("sysfs") => {
                    do_mount(
                        Some(Path::new("/sys")),
                        &dest,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                    )?;
                    remount_keeping_locked(
                        &dest,
                        MsFlags::MS_BIND
                            | MsFlags::MS_RDONLY
                            | MsFlags::MS_NOSUID
                            | MsFlags::MS_NODEV
                            | MsFlags::MS_NOEXEC,
                    )?;
                }
                r => ctx(r, || format!("mount {:?} on {}", fstype, m.destination.display()))?,
            }
            if m.destination == Path::new("/dev") && fstype == Some("tmpfs") {
                dev_is_tmpfs = true;
            }
        }
        for p in &m.propagation {
            do_mount(None, &dest, None, *p, None)?;
        }
    }
    if dev_is_tmpfs {
        populate_dev(root)?;
    }
    pivot(root)?;
    for p in &plan.masked {
        mask(p)?;
    }
    for p in &plan.readonly {
        make_readonly(p)?;
    }
    if plan.root_readonly {
        remount_keeping_locked(Path::new("/"), MsFlags::MS_BIND | MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

/// `/sys/fs/cgroup`: cgroup2 on a unified host; on a v1/hybrid host a tmpfs holding a bind
/// of the container's own directory in each hierarchy, so limits are visible inside.
fn mount_cgroups(plan: &MountPlan, m: &PlannedMount, dest: &Path) -> SetupResult {
    create_target(dest, false)?;
    let flags = m.flags & !MsFlags::MS_RDONLY;
    if plan.cgroup_v2 {
        return do_mount(Some(Path::new("cgroup2")), dest, Some("cgroup2"), m.flags, None);
    }
    do_mount(Some(Path::new("tmpfs")), dest, Some("tmpfs"), flags, Some("mode=755"))?;
    for b in &plan.cgroup_binds {
        let target = dest.join(&b.name);
        create_target(&target, false)?;
        do_mount(Some(&b.host_dir), &target, None, MsFlags::MS_BIND, None)?;
        remount_keeping_locked(&target, MsFlags::MS_BIND | (m.flags & !MsFlags::MS_BIND))?;
    }
    if m.flags.contains(MsFlags::MS_RDONLY) {
        remount_keeping_locked(dest, MsFlags::MS_BIND | m.flags)?;
    }
    Ok(())
}

/// Remounts with `flags`, keeping nosuid/nodev/noexec/atime flags the mount already has
/// (a bind remount that drops a locked flag fails with EPERM).
fn remount_keeping_locked(path: &Path, flags: MsFlags) -> SetupResult {
    let st = ctx(nix::sys::statvfs::statvfs(path), || format!("statvfs {}", path.display()))?;
    use nix::sys::statvfs::FsFlags;
    let mut keep = MsFlags::empty();
    for (f, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(f) {
            keep |= m;
        }
    }
    do_mount(None, path, None, flags | keep | MsFlags::MS_REMOUNT, None)
}

/// The standard device nodes of a container's `/dev` and its conventional links.
fn populate_dev(root: &Path) -> SetupResult {
    let dev = root.join("dev");
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        let _ = std::fs::remove_file(&p);
        match mknod(&p, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major, minor)) {
            // In a user namespace mknod is refused: bind the host's node instead, as runc does.
            Err(nix::Error::EPERM) => {
                create_target(&p, true)?;
                let host = Path::new("/dev").join(name);
                do_mount(Some(&host), &p, None, MsFlags::MS_BIND, None)?;
                continue;
            }
            r => ctx(r, || format!("mknod {}", p.display()))?,
        }
        // mknod is subject to the umask.
        ctx(std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)), || {
            format!("chmod {}", p.display())
        })?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let _ = symlink(target, dev.join(link));
    }
    if dev.join("pts/ptmx").exists() {
        let _ = symlink("pts/ptmx", dev.join("ptmx"));
    }
    Ok(())
}

/// pivot_root(".", ".") then detach the old root, as runc does: no directory for the old
/// root is needed inside the container.
fn pivot(root: &Path) -> SetupResult {
    ctx(nix::unistd::chdir(root), || format!("chdir {}", root.display()))?;
    ctx(nix::unistd::pivot_root(".", "."), || "pivot_root".to_string())?;
    // Keep unmount events of the old root from reaching the host.
    do_mount(None, Path::new("."), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || "detaching the old root".to_string())?;
    ctx(nix::unistd::chdir("/"), || "chdir /".to_string())
}

fn mask(p: &Path) -> SetupResult {
    match std::fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            do_mount(Some(Path::new("tmpfs")), p, Some("tmpfs"), MsFlags::MS_RDONLY, None)
        }
        Ok(_) => do_mount(Some(Path::new("/dev/null")), p, None, MsFlags::MS_BIND, None),
    }
}

fn make_readonly(p: &Path) -> SetupResult {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    do_mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    remount_keeping_locked(
        p,
        MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let (f, p, d) =
            parse_options(&opts(&["nosuid", "strictatime", "mode=755", "size=65536k", "rslave"]));
        assert_eq!(f, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(p, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(d.as_deref(), Some("mode=755,size=65536k"));
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let (f, _, _) = parse_options(&opts(&["ro", "rw", "rbind"]));
        assert_eq!(f, MsFlags::MS_BIND | MsFlags::MS_REC);
    }
}
