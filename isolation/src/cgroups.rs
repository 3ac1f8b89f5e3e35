//! A container's cgroup, through `cgroups-rs`: unified (v2) hosts and v1/hybrid hosts alike.
//!
//! The cgroup is created and its limits written before the container's init runs user
//! code; the init is placed in it while it waits on its sync pipe.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::hierarchies;
use cgroups_rs::manager::{FsManager, Manager};
use cgroups_rs::CgroupPid;
use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources,
};

use crate::error::{Error, Result};
use crate::mounts::CgroupBind;

/// Where cgroups live when the spec names no `cgroupsPath`.
pub const DEFAULT_PARENT: &str = "flotilla";

/// The cgroup path (relative to each hierarchy's root) for a container.
pub fn path_for(id: &str, spec_path: Option<&Path>) -> String {
    match spec_path {
        Some(p) if !p.as_os_str().is_empty() => {
            p.to_string_lossy().trim_start_matches('/').to_string()
        }
        _ => format!("{DEFAULT_PARENT}/{id}"),
    }
}

/// Device rules every container gets after the spec's own, as runc adds them: mknod of
/// anything (use still needs a rule), and the standard nodes of `/dev` plus ptys.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .access(access.to_string())
            .build()
            .map(|mut r| {
                r.set_major(major);
                r.set_minor(minor);
                r
            })
    };
    let c = LinuxDeviceType::C;
    [
        rule(c, None, None, "m"),
        rule(LinuxDeviceType::B, None, None, "m"),
        rule(c, Some(1), Some(3), "rwm"), // null
        rule(c, Some(1), Some(5), "rwm"), // zero
        rule(c, Some(1), Some(7), "rwm"), // full
        rule(c, Some(1), Some(8), "rwm"), // random
        rule(c, Some(1), Some(9), "rwm"), // urandom
        rule(c, Some(5), Some(0), "rwm"), // tty
        rule(c, Some(5), Some(1), "rwm"), // console
        rule(c, Some(5), Some(2), "rwm"), // ptmx
        rule(c, Some(136), None, "rwm"),  // pts/*
    ]
    .into_iter()
    .map(|r| r.expect("complete device rule"))
    .collect()
}

/// The spec's resources with the default device rules appended, wildcards spelled out.
pub fn with_default_devices(resources: Option<&LinuxResources>) -> LinuxResources {
    let mut r = resources.cloned().unwrap_or_default();
    let mut devices = r.devices().clone().unwrap_or_default();
    devices.extend(default_device_rules());
    // OCI: an absent major or minor is any, absent access is rwm. cgroups-rs writes absent
    // numbers as 0 ("c 0:0 m") on v1, which would leave `c *:* m` (mknod) and the pts range
    // (136:*) unallowed.
    for d in &mut devices {
        d.set_major(Some(d.major().unwrap_or(-1)));
        d.set_minor(Some(d.minor().unwrap_or(-1)));
        d.set_access(Some(d.access().clone().unwrap_or_else(|| "rwm".into())));
    }
    r.set_devices(Some(devices));
    r
}

/// Puts the kernel's cgroup core in `favordynmods` mode (Linux 6.0+) through the host's
/// cgroup2 mount; `Ok(None)` when it already is.
///
/// Moving a process into a cgroup (every container create) write-locks
/// `cgroup_threadgroup_rwsem`, which by default first waits an RCU grace period: 6 to 25 ms
/// measured on the development machines, paid by runc and crun alike. In this mode the lock's
/// readers (fork and exit) take a slightly slower path and the move is immediate. It is one
/// switch for the whole kernel, v1 hierarchies included, as the kubelet owns other node-wide
/// kernel settings; a remount without the option turns it off.
pub fn favor_dynmods() -> std::io::Result<Option<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let Some((mountpoint, super_opts)) = info.lines().find_map(cgroup2_mount) else {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup2 mount"));
    };
    if super_opts.split(',').any(|o| o == "favordynmods") {
        return Ok(None);
    }
    // A remount replaces both the superblock options and the mount's flags: keep the rest.
    let mut opts: Vec<&str> =
        super_opts.split(',').filter(|o| !matches!(*o, "rw" | "ro" | "")).collect();
    opts.push("favordynmods");
    let have = nix::sys::statvfs::statvfs(mountpoint.as_path())?.flags();
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::MS_REMOUNT;
    for (f, m) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if have.contains(f) {
            flags |= m;
        }
    }
    nix::mount::mount(
        None::<&str>,
        &mountpoint,
        None::<&str>,
        flags,
        Some(opts.join(",").as_str()),
    )?;
    Ok(Some(mountpoint))
}

/// The mount point and superblock options of a cgroup2 line of mountinfo.
fn cgroup2_mount(line: &str) -> Option<(PathBuf, &str)> {
    let (left, right) = line.split_once(" - ")?;
    let mut r = right.split(' ');
    if r.next()? != "cgroup2" {
        return None;
    }
    let super_opts = r.nth(1)?;
    let mountpoint = left.split(' ').nth(4)?;
    Some((PathBuf::from(unescape_octal(mountpoint)), super_opts))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let code = s.get(i + 1..i + 4).filter(|_| s.as_bytes()[i] == b'\\');
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(s.as_bytes()[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Usage figures for metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// Usage less inactive file cache: what the kubelet reports and evicts by.
    pub memory_working_set_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills: u64,
    pub pids: u64,
}

/// One container's cgroup.
pub struct Cgroup {
    id: String,
    path: String,
    manager: FsManager,
}

impl Cgroup {
    fn err(id: &str, path: &str, what: impl std::fmt::Display) -> Error {
        Error::Cgroup { id: id.to_string(), path: path.to_string(), what: what.to_string() }
    }

    /// Creates the cgroup (every hierarchy on v1) and writes the limits; `resources` as
    /// [`with_default_devices`] makes them (device wildcards spelled out).
    pub fn create(id: &str, path: &str, resources: &LinuxResources) -> Result<Self> {
        // A delete elsewhere may remove the shared, empty default parent between the creation
        // of the parent and of this cgroup (see `destroy`); that ENOENT is worth another try.
        let mut tries = 0;
        while let Err(e) = cgroups_rs::fs::Cgroup::new(hierarchies::auto(), path) {
            let vanished = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
            tries += 1;
            if !vanished || tries == 3 {
                return Err(Self::err(id, path, format!("creating: {e}")));
            }
        }
        let mut cg = Self::open(id, path)?;
        // cgroup v2 has no devices controller: the rules are an eBPF program on the cgroup
        // (crate::devices), attached before any process joins it.
        let mut resources = resources.clone();
        if cg.is_v2() {
            if let Some(rules) = resources.devices().as_deref().filter(|d| !d.is_empty()) {
                let attached = crate::devices::table(rules)
                    .map_err(|(field, why)| format!("{field}: {why}"))
                    .and_then(|t| {
                        crate::devices::attach(
                            &Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(path),
                            &t,
                            Some(Path::new(crate::devices::PROGRAM_CACHE)),
                        )
                    });
                if let Err(e) = attached {
                    let _ = cg.destroy();
                    return Err(Self::err(id, path, e));
                }
            }
            resources.set_devices(None);
        }
        {
            if let Err(e) = cg.manager.set(&resources) {
                let err = Self::err(id, path, format!("setting limits: {e}"));
                let _ = cg.destroy();
                return Err(err);
            }
        }
        Ok(cg)
    }

    /// Opens an existing cgroup (or one that may be gone, for cleanup).
    pub fn open(id: &str, path: &str) -> Result<Self> {
        let manager =
            FsManager::new(path).map_err(|e| Self::err(id, path, format!("opening: {e}")))?;
        Ok(Self { id: id.to_string(), path: path.to_string(), manager })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn is_v2(&self) -> bool {
        self.manager.v2()
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add(&mut self, pid: i32) -> Result<()> {
        self.manager
            .add_proc(CgroupPid::from(pid as u64))
            .map_err(|e| Self::err(&self.id, &self.path, format!("adding pid {pid}: {e}")))
    }

    /// The container's directory in each hierarchy, as the container should see them.
    pub fn binds(&self) -> Vec<CgroupBind> {
        let mut out: Vec<CgroupBind> = Vec::new();
        for mountpoint in self.manager.mounts().values() {
            let mp = Path::new(mountpoint);
            let Some(name) = mp.file_name() else { continue };
            let host_dir = mp.join(&self.path);
            if host_dir.is_dir() && !out.iter().any(|b| b.host_dir == host_dir) {
                out.push(CgroupBind { name: name.to_string_lossy().into_owned(), host_dir });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The memory controller's directory for this cgroup.
    fn memory_dir(&self) -> PathBuf {
        if self.is_v2() {
            Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(&self.path)
        } else {
            let mp = self
                .manager
                .mounts()
                .get("memory")
                .cloned()
                .unwrap_or_else(|| "/sys/fs/cgroup/memory".into());
            Path::new(&mp).join(&self.path)
        }
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let dir = self.memory_dir();
        let file =
            if self.is_v2() { dir.join("memory.events") } else { dir.join("memory.oom_control") };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0)
    }

    pub fn stats(&self) -> Stats {
        let s = self.manager.stats();
        let mem = s.memory.memory.as_ref();
        Stats {
            cpu_usage_ns: s.cpu.cpu_acct.as_ref().map(|c| c.total_usage).unwrap_or(0),
            memory_usage_bytes: mem.map(|m| m.usage).unwrap_or(0),
            memory_working_set_bytes: {
                let m = &s.memory;
                // v1 reports the hierarchy's total; v2's memory.stat is hierarchical already.
                let inactive =
                    if m.total_inactive_file > 0 { m.total_inactive_file } else { m.inactive_file };
                mem.map(|x| x.usage).unwrap_or(0).saturating_sub(inactive)
            },
            memory_limit_bytes: mem
                .and_then(|m| u64::try_from(m.limit).ok())
                .filter(|l| *l < i64::MAX as u64 / 2),
            oom_kills: self.oom_kills(),
            pids: s.pids.current,
        }
    }

    /// Removes the cgroup, and the default parent once it holds no other container's.
    /// Processes that are still exiting keep it busy for a moment, so EBUSY is retried for up
    /// to two seconds.
    pub fn destroy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.manager.destroy() {
                Ok(()) => {
                    if self.path.starts_with(&format!("{DEFAULT_PARENT}/")) {
                        remove_empty(DEFAULT_PARENT);
                    }
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::trace!(cgroup = %self.path, %e, "cgroup busy, retrying");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(Self::err(&self.id, &self.path, format!("removing: {e}"))),
            }
        }
    }
}

/// rmdir of the cgroup at `rel` on a unified host and in every v1 hierarchy (and the hybrid
/// cgroup2 mount); where it still has cgroups or processes it stays.
pub fn remove_empty(rel: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let _ = std::fs::remove_dir(root.join(rel));
    for h in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(h.path().join(rel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_default_under_flotilla_and_lose_their_leading_slash() {
        assert_eq!(path_for("c1", None), "flotilla/c1");
        assert_eq!(path_for("c1", Some(Path::new("/pods/p1/c1"))), "pods/p1/c1");
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let v1 = "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        assert_eq!(cgroup2_mount(v1), None);
        let v2 = "30 25 0:26 / /sys/fs/cgroup/uni\\040fied rw,nosuid,nodev shared:9 - cgroup2 \
                  cgroup2 rw,nsdelegate,memory_recursiveprot";
        let (mp, opts) = cgroup2_mount(v2).unwrap();
        assert_eq!(mp, Path::new("/sys/fs/cgroup/uni fied"));
        assert_eq!(opts, "rw,nsdelegate,memory_recursiveprot");
        assert_eq!(unescape_octal("a\\134b\\0"), "a\\b\\0");
    }
}
