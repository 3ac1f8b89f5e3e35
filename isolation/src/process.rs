//! The last steps before a container process runs user code: limits, user and groups,
//! capabilities, no_new_privs, seccomp, closing inherited fds, exec.
//!
//! Everything that allocates or can fail on bad input is prepared in [`ProcessPlan::new`],
//! before fork; the child only makes syscalls with what is ready.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxSeccomp, PosixRlimitType, Process};
use seccompiler::BpfProgram;

/// The capability sets to leave the process with.
#[derive(Debug, Clone, Default)]
pub struct CapsPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// A container process, ready to be set up and exec'd.
#[derive(Debug, Clone)]
pub struct ProcessPlan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapsPlan,
    pub no_new_privs: bool,
    pub seccomp: Vec<BpfProgram>,
    pub rlimits: Vec<(i32, u64, u64)>,
}

/// An error in a field of `process`, for the caller to wrap with the bundle.
#[derive(Debug)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), reason: reason.into() }
}

fn cap_set(
    field: &str,
    set: Option<&HashSet<oci_spec::runtime::Capability>>,
) -> Result<CapsHashSet, FieldError> {
    let mut out = CapsHashSet::new();
    for c in set.into_iter().flatten() {
        // oci-spec serializes capabilities by their kernel names ("CAP_KILL").
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let cap: Capability =
            name.parse().map_err(|_| field_err(field, format!("unknown capability {name:?}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn rlimit_resource(t: PosixRlimitType) -> Option<i32> {
    use PosixRlimitType::*;
    Some(match t {
        RlimitCpu => libc::RLIMIT_CPU as i32,
        RlimitFsize => libc::RLIMIT_FSIZE as i32,
        RlimitData => libc::RLIMIT_DATA as i32,
        RlimitStack => libc::RLIMIT_STACK as i32,
        RlimitCore => libc::RLIMIT_CORE as i32,
        RlimitRss => libc::RLIMIT_RSS as i32,
        RlimitNproc => libc::RLIMIT_NPROC as i32,
        RlimitNofile => libc::RLIMIT_NOFILE as i32,
        RlimitMemlock => libc::RLIMIT_MEMLOCK as i32,
        RlimitAs => libc::RLIMIT_AS as i32,
        RlimitLocks => libc::RLIMIT_LOCKS as i32,
        RlimitSigpending => libc::RLIMIT_SIGPENDING as i32,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE as i32,
        RlimitNice => libc::RLIMIT_NICE as i32,
        RlimitRtprio => libc::RLIMIT_RTPRIO as i32,
        RlimitRttime => libc::RLIMIT_RTTIME as i32,
    })
}

impl ProcessPlan {
    /// Prepares `process` (and the container's seccomp profile) for running.
    pub fn new(process: &Process, seccomp: Option<&LinuxSeccomp>) -> Result<Self, FieldError> {
        let cstr = |field: &str, s: &str| {
            CString::new(s).map_err(|_| field_err(field, format!("{s:?} contains a NUL byte")))
        };
        let args = process
            .args()
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, a)| cstr(&format!("process.args[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        if args.is_empty() {
            return Err(field_err("process.args", "must name the program to run"));
        }
        let env = process
            .env()
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, a)| cstr(&format!("process.env[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let caps = match process.capabilities() {
            Some(c) => CapsPlan {
                bounding: cap_set("process.capabilities.bounding", c.bounding().as_ref())?,
                effective: cap_set("process.capabilities.effective", c.effective().as_ref())?,
                permitted: cap_set("process.capabilities.permitted", c.permitted().as_ref())?,
                inheritable: cap_set("process.capabilities.inheritable", c.inheritable().as_ref())?,
                ambient: cap_set("process.capabilities.ambient", c.ambient().as_ref())?,
            },
            // No capabilities object: the process gets none, as runc does.
            None => CapsPlan::default(),
        };
        let mut rlimits = Vec::new();
        for (i, r) in process.rlimits().iter().flatten().enumerate() {
            let res = rlimit_resource(r.typ())
                .ok_or_else(|| field_err(format!("process.rlimits[{i}].type"), "unknown"))?;
            if r.soft() > r.hard() {
                return Err(field_err(
                    format!("process.rlimits[{i}]"),
                    "soft limit above hard limit",
                ));
            }
            rlimits.push((res, r.soft(), r.hard()));
        }
        let seccomp = match seccomp {
            Some(p) => crate::seccomp::compile(p).map_err(|e| field_err("linux.seccomp", e))?,
            None => Vec::new(),
        };
        let user = process.user();
        Ok(Self {
            args,
            env,
            cwd: process.cwd().clone(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
            caps,
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            seccomp,
            rlimits,
        })
    }

    /// Finds the program in the container's filesystem (now `/`): as given when it holds a
    /// slash, else along the process's `PATH`.
    pub fn resolve_program(&self) -> Result<CString, String> {
        let arg0 = self.args[0].as_bytes();
        let is_exec = |p: &Path| {
            nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
        };
        if arg0.contains(&b'/') {
            let p = Path::new(std::ffi::OsStr::from_bytes(arg0));
            let full = if p.is_absolute() { p.to_path_buf() } else { self.cwd.join(p) };
            if !is_exec(&full) {
                return Err(format!("executable {} not found or not executable", p.display()));
            }
            return Ok(self.args[0].clone());
        }
        let path = self
            .env
            .iter()
            .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
            .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        for dir in path.split(|b| *b == b':') {
            let cand =
                Path::new(std::ffi::OsStr::from_bytes(dir)).join(std::ffi::OsStr::from_bytes(arg0));
            if is_exec(&cand) {
                return CString::new(cand.as_os_str().as_bytes()).map_err(|e| e.to_string());
            }
        }
        Err(format!("executable {:?} not found in PATH", String::from_utf8_lossy(arg0)))
    }

    /// rlimits, applied while still privileged. (The OOM score is written by `create`, from
    /// outside any new user namespace: see there.)
    pub fn apply_limits(&self) -> Result<(), String> {
        for &(res, soft, hard) in &self.rlimits {
            let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            // SAFETY: setrlimit reads a valid, initialized rlimit struct.
            if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
                return Err(format!("setrlimit({res}): {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// Drops privileges as the spec says and execs `program`. Returns only on failure.
    pub fn exec(&self, program: &CStr) -> String {
        match self.finalize() {
            Ok(()) => {}
            Err(e) => return e,
        }
        let err = nix::unistd::execve(program, &self.args, &self.env).unwrap_err();
        format!("exec {}: {err}", program.to_string_lossy())
    }

    fn finalize(&self) -> Result<(), String> {
        if let Some(mask) = self.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        }
        close_inherited_fds()?;
        // Without no_new_privs a filter needs CAP_SYS_ADMIN, so install it while we have it.
        if !self.no_new_privs {
            crate::seccomp::install(&self.seccomp)?;
        }
        self.set_user_and_caps()?;
        if self.no_new_privs {
            nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
            crate::seccomp::install(&self.seccomp)?;
        }
        Ok(())
    }

    fn set_user_and_caps(&self) -> Result<(), String> {
        let c = &self.caps;
        for cap in caps::all() {
            if !c.bounding.contains(&cap) {
                // Kernels older than the cap list report EINVAL for caps they lack.
                let _ = caps::drop(None, CapSet::Bounding, cap);
            }
        }
        // Keep permitted caps across the uid change; we set them explicitly after.
        nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
        let gids: Vec<nix::unistd::Gid> =
            self.additional_gids.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&gids)
            .map_err(|e| format!("setgroups {:?}: {e}", self.additional_gids))?;
        nix::unistd::setresgid(self.gid.into(), self.gid.into(), self.gid.into())
            .map_err(|e| format!("setgid {}: {e}", self.gid))?;
        nix::unistd::setresuid(self.uid.into(), self.uid.into(), self.uid.into())
            .map_err(|e| format!("setuid {}: {e}", self.uid))?;
        nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("keepcaps: {e}"))?;
        // Inheritable first, while CAP_SETPCAP is still effective; effective must stay a
        // subset of permitted at every step.
        caps::set(None, CapSet::Inheritable, &c.inheritable)
            .map_err(|e| format!("inheritable caps: {e}"))?;
        let eff_now: CapsHashSet = c
            .effective
            .intersection(&caps::read(None, CapSet::Permitted).unwrap_or_default())
            .copied()
            .collect();
        caps::set(None, CapSet::Effective, &eff_now).map_err(|e| format!("effective caps: {e}"))?;
        caps::set(None, CapSet::Permitted, &c.permitted)
            .map_err(|e| format!("permitted caps (effective must be a subset): {e}"))?;
        caps::set(None, CapSet::Effective, &c.effective)
            .map_err(|e| format!("effective caps: {e}"))?;
        caps::clear(None, CapSet::Ambient).map_err(|e| format!("ambient caps: {e}"))?;
        // The kernel raises an ambient cap only if it is permitted and inheritable; runc
        // skips the others (its default config lists ambient caps it does not make
        // inheritable), and so do we.
        for cap in
            c.ambient.iter().filter(|c2| c.inheritable.contains(c2) && c.permitted.contains(c2))
        {
            caps::raise(None, CapSet::Ambient, *cap).map_err(|e| format!("ambient {cap}: {e}"))?;
        }
        Ok(())
    }
}

/// Marks every fd above stderr close-on-exec: nothing of the runtime leaks into the
/// container (fifo, sync pipes, the runtime binary; the CVE-2019-5736 class).
pub fn close_inherited_fds() -> Result<(), String> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes plain integers and touches only this process's fd table.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
