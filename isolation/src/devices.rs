//! Device rules on cgroup v2: there is no devices controller, so a container's
//! `linux.resources.devices` become an eBPF program (BPF_CGROUP_DEVICE, `ebpf/flotilla-ebpf/
//! src/devices.rs`) with the rules in its read-only data, attached to the container's cgroup.
//!
//! It is attached with BPF_PROG_ATTACH, as runc and crun do, not through a bpf link: a link
//! dies with the fd that made it, and `create` exits while the container runs. The
//! attachment lives exactly as long as the cgroup, so delete has nothing to undo.
//! BPF_F_ALLOW_MULTI lets it sit below programs of the host (systemd attaches its own to
//! slices): every attached program must allow an access. Loaded programs are kept pinned in
//! [`PROGRAM_CACHE`], one per program build and rule set, and reused by later creates.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use flotilla_ebpf_common::{
    DeviceRule, DeviceRules, ACC_MKNOD, ACC_READ, ACC_WRITE, ANY_MAJOR, ANY_MINOR, DEV_ALL,
    DEV_BLOCK, DEV_CHAR, MAX_DEVICE_RULES,
};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flotilla-devices"));

/// The rules as the program's table, in order. Errors name the entry and its field.
pub fn table(rules: &[LinuxDeviceCgroup]) -> Result<DeviceRules, (String, String)> {
    let field = |i: usize, f: &str| format!("linux.resources.devices[{i}]{f}");
    let mut t = DeviceRules::default();
    for (i, r) in rules.iter().enumerate() {
        let kind = match r.typ().unwrap_or_default() {
            LinuxDeviceType::A => DEV_ALL,
            LinuxDeviceType::B => DEV_BLOCK,
            // Unbuffered character devices are character devices to the kernel.
            LinuxDeviceType::C | LinuxDeviceType::U => DEV_CHAR,
            // FIFOs are not devices: the kernel never asks the device program about them.
            LinuxDeviceType::P => continue,
        };
        let mut access = 0;
        for c in r.access().as_deref().unwrap_or("rwm").chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                other => {
                    return Err((field(i, ".access"), format!("unknown access {other:?}")));
                }
            };
        }
        let number = |v: Option<i64>, f: &str| -> Result<Option<u32>, (String, String)> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) => u32::try_from(n)
                    .map(Some)
                    .map_err(|_| (field(i, f), format!("{n} is not a device number"))),
            }
        };
        let (major, minor) = (number(r.major(), ".major")?, number(r.minor(), ".minor")?);
        let n = t.count as usize;
        if n == MAX_DEVICE_RULES {
            return Err((
                "linux.resources.devices".into(),
                format!("more than {MAX_DEVICE_RULES} rules (with the defaults) on cgroup v2"),
            ));
        }
        t.rules[n] = DeviceRule {
            major: major.unwrap_or(0),
            minor: minor.unwrap_or(0),
            kind,
            access,
            allow: u8::from(r.allow()),
            flags: if major.is_none() { ANY_MAJOR } else { 0 }
                | if minor.is_none() { ANY_MINOR } else { 0 },
        };
        t.count += 1;
    }
    Ok(t)
}

// From include/uapi/linux/bpf.h. Raw calls: aya attaches cgroup programs only through links,
// and its `from_pin` probes kernel features before opening a pin.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Where loaded device programs are kept (pinned), one per distinct rule set. Nearly every
/// container has the same rules (the defaults), so a create finds its program here and
/// attaches it; loading one costs ~30 ms (aya parses the kernel's BTF first), crun's
/// generate-and-load several ms, the pinned lookup a syscall.
pub const PROGRAM_CACHE: &str = "/sys/fs/bpf/flotilla/devices";

/// The cache entry's name: a hash (FNV-1a) of the program's object (done by build.rs) and the
/// rules, so equal rules share a program and an upgraded program never finds an older build's.
fn cache_name(rules: &DeviceRules) -> String {
    let fnv = |h: u64, bytes: &[u8]| {
        bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
    };
    let object = u64::from_str_radix(env!("FLOTILLA_DEVICES_HASH"), 16).expect("build.rs hash");
    let mut h = object;
    let n = (rules.count as usize).min(MAX_DEVICE_RULES);
    for r in &rules.rules[..n] {
        h = fnv(h, &r.major.to_le_bytes());
        h = fnv(h, &r.minor.to_le_bytes());
        h = fnv(h, &[r.kind, r.access, r.allow, r.flags]);
    }
    format!("{n}-{h:016x}")
}

/// The pinned device program at `pin`, if there is one. Raw bpf(2) rather than aya's
/// `from_pin`: that runs aya's kernel feature probes first (a dozen BTF and program loads),
/// which cost a create more than the whole attach.
fn pinned_program(pin: &Path) -> Option<OwnedFd> {
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).ok()?;
    // union bpf_attr, obj_get member: { u64 pathname; u32 bpf_fd; u32 file_flags; ... }.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr is a zeroed, correctly sized bpf_attr; the path outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 128usize) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Only a device program: bpf_prog_info begins with its u32 type.
    let mut info = [0u32; 64];
    let mut attr = [0u32; 32];
    attr[0] = fd.as_raw_fd() as u32;
    attr[1] = std::mem::size_of_val(&info) as u32;
    let ptr = info.as_mut_ptr() as u64;
    attr[2] = ptr as u32;
    attr[3] = (ptr >> 32) as u32;
    // SAFETY: as above; info is writable for the length given.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), 128usize)
    };
    (r == 0 && info[0] == BPF_PROG_TYPE_CGROUP_DEVICE).then_some(fd)
}

/// A bpffs at /sys/fs/bpf when `pin` lies under it, mounted if the host has none there (not
/// every boot mounts one): on the plain directory of sysfs nothing could be pinned, and
/// every create would load its program again.
fn ensure_bpffs(pin: &Path) -> Result<(), String> {
    let root = Path::new("/sys/fs/bpf");
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if !pin.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .or_else(|e| if is_bpffs(root) { Ok(()) } else { Err(e) })
        .map_err(|e| format!("mounting bpffs on {}: {e}", root.display()))
}

/// Loads the device program with `rules` and attaches it to the cgroup v2 directory `dir`,
/// reusing (and adding to) the programs pinned in `cache` when it is given and on bpffs.
pub fn attach(dir: &Path, rules: &DeviceRules, cache: Option<&Path>) -> Result<(), String> {
    let pin = cache.map(|c| c.join(cache_name(rules)));
    let cached = pin.as_deref().and_then(pinned_program);
    // Kept until the attach: dropping the loader unloads a program that is not pinned.
    let mut ebpf = None;
    let prog = match &cached {
        Some(fd) => fd.as_fd(),
        None => {
            let ebpf = ebpf.insert(
                aya::EbpfLoader::new()
                    .override_global("RULES", rules, true)
                    .load(OBJECT)
                    .map_err(|e| format!("loading the device program: {e}"))?,
            );
            let prog: &mut aya::programs::CgroupDevice = ebpf
                .program_mut("flotilla_devices")
                .ok_or("the device program is missing from its object")?
                .try_into()
                .map_err(|e| format!("the device program: {e}"))?;
            prog.load().map_err(|e| format!("loading the device program: {e:#}"))?;
            if let Some(p) = &pin {
                // Best effort: another create may have pinned the same rules meanwhile, or
                // the directory is not on bpffs; this container has its program either way.
                let pinned = ensure_bpffs(p).and_then(|()| {
                    p.parent().map_or(Ok(()), std::fs::create_dir_all).map_err(|e| e.to_string())
                });
                if let Err(e) = pinned.and_then(|()| prog.pin(p).map_err(|e| e.to_string())) {
                    tracing::debug!(pin = %p.display(), "device program not cached: {e}");
                }
            }
            prog.fd().map_err(|e| e.to_string())?.as_fd()
        }
    };
    let cgroup = std::fs::File::open(dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
    // union bpf_attr, prog_attach member: { u32 target_fd; u32 attach_bpf_fd;
    // u32 attach_type; u32 attach_flags; u32 replace_bpf_fd; ... }.
    let mut attr = [0u32; 32];
    attr[0] = cgroup.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    attr[2] = BPF_CGROUP_DEVICE;
    attr[3] = BPF_F_ALLOW_MULTI;
    // SAFETY: attr is a zeroed, correctly sized bpf_attr; both fds are open for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, attr.as_mut_ptr(), 128usize) };
    if r < 0 {
        return Err(format!("attaching the device program: {}", std::io::Error::last_os_error()));
    }
    drop(ebpf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: i64,
        minor: i64,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access.to_string())
            .build()
            .unwrap();
        r.set_major(Some(major));
        r.set_minor(Some(minor));
        r
    }

    /// The host's cgroup2 mount: the whole tree on v2, `unified` on a hybrid host.
    fn cgroup2_root() -> Option<&'static Path> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"].into_iter().map(Path::new).find(|p| {
            nix::sys::statfs::statfs(*p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
    }

    /// Removes the test's program cache (its pins), pass or fail.
    struct GoneDir(std::path::PathBuf);
    impl Drop for GoneDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Removes the test's cgroup (after its processes are gone), pass or fail.
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// The program in the kernel: a shell moved into a cgroup with the default rules can
    /// open /dev/null and make any node, but cannot open a node the rules leave out (kmsg,
    /// a block device), while the same opens outside the cgroup succeed.
    #[test]
    fn the_program_enforces_the_rules_on_a_cgroup() {
        if !flotilla_prereq::root("the test makes a cgroup and attaches a device program") {
            return;
        }
        let root = cgroup2_root().expect("a cgroup2 mount");
        let cg = Gone(root.join(format!("flotilla-devices-test-{}", std::process::id())));
        std::fs::create_dir(&cg.0).unwrap();
        let mut rules = vec![rule(false, LinuxDeviceType::A, -1, -1, "rwm")];
        rules.extend(crate::cgroups::default_device_rules());
        // Loaded and pinned the first time, taken from the pin the second.
        let cache = GoneDir(
            Path::new("/sys/fs/bpf").join(format!("flotilla-devices-test-{}", std::process::id())),
        );
        let t = table(&rules).unwrap();
        attach(&cg.0, &t, Some(&cache.0)).unwrap();
        let pinned = cache.0.join(cache_name(&t));
        assert!(pinned.exists(), "{} pinned", pinned.display());
        let other = Gone(root.join(format!("flotilla-devices-test2-{}", std::process::id())));
        std::fs::create_dir(&other.0).unwrap();
        attach(&other.0, &t, Some(&cache.0)).unwrap();
        assert_eq!(std::fs::read_dir(&cache.0).unwrap().count(), 1, "one program for equal rules");

        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let script = "cd \"$1\" && mknod null c 1 3 && mknod kmsg c 1 11 && mknod loop b 7 0 && \
            for f in null kmsg loop; do if (: < $f) 2>/dev/null; then echo $f=ok; else echo $f=denied; fi; done";
        let run = |inside: bool| {
            let procs = cg.0.join("cgroup.procs");
            let mut cmd = std::process::Command::new("/bin/busybox");
            cmd.args(["sh", "-c", script, "sh"]).arg(dir.path());
            if inside {
                // SAFETY: only open and write between fork and exec.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                        std::fs::write(&procs, "0")
                    });
                }
            }
            let out = cmd.output().unwrap();
            for f in ["null", "kmsg", "loop"] {
                let _ = std::fs::remove_file(dir.path().join(f));
            }
            String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(run(true), "null=ok kmsg=denied loop=denied");
        assert_eq!(run(false), "null=ok kmsg=ok loop=ok");
    }

    #[test]
    fn rules_become_the_programs_table_or_an_error_naming_the_field() {
        let t = table(&[
            rule(false, LinuxDeviceType::A, -1, -1, "rwm"),
            rule(true, LinuxDeviceType::C, 1, 3, "rw"),
            rule(true, LinuxDeviceType::P, 0, 0, "rwm"),
            rule(true, LinuxDeviceType::B, 8, -1, "m"),
        ])
        .unwrap();
        assert_eq!(t.count, 3, "the FIFO rule is left out");
        assert_eq!(
            t.rules[0],
            DeviceRule {
                kind: DEV_ALL,
                access: 7,
                allow: 0,
                flags: ANY_MAJOR | ANY_MINOR,
                ..Default::default()
            }
        );
        assert_eq!(
            t.rules[1],
            DeviceRule {
                major: 1,
                minor: 3,
                kind: DEV_CHAR,
                access: ACC_READ | ACC_WRITE,
                allow: 1,
                flags: 0
            }
        );
        assert_eq!(
            t.rules[2],
            DeviceRule {
                major: 8,
                minor: 0,
                kind: DEV_BLOCK,
                access: ACC_MKNOD,
                allow: 1,
                flags: ANY_MINOR
            }
        );
        let bad = table(&[rule(true, LinuxDeviceType::C, 1, 3, "rx")]).unwrap_err();
        assert_eq!(bad.0, "linux.resources.devices[0].access");
        let bad = table(&[rule(true, LinuxDeviceType::C, 1 << 40, 3, "r")]).unwrap_err();
        assert_eq!(bad.0, "linux.resources.devices[0].major");
        let many = vec![rule(true, LinuxDeviceType::C, 1, 3, "r"); MAX_DEVICE_RULES + 1];
        assert_eq!(table(&many).unwrap_err().0, "linux.resources.devices");
    }
}
