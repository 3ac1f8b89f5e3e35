//! The container's init: the child of the monitor that becomes the workload.
//!
//! ```text
//!  wait "go" (now in its cgroup) → setns joins → unshare → rootfs + pivot_root
//!  → hostname, sysctls, rlimits → find the program → "ready" to create
//!  → block on exec.fifo until start → drop privileges, seccomp → execve
//! ```
//! Failures before "ready" travel to `create` on the ready pipe, so the caller sees why;
//! after it, they go to the container's stderr.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;

use crate::mounts::MountPlan;
use crate::process::ProcessPlan;
use crate::sys;

/// The init's standard streams.
#[derive(Debug)]
pub enum InitStdio {
    /// Keep what the runtime was started with (runc's pass-through).
    Inherit,
    /// stdin from /dev/null, stdout and stderr into pipes read by the monitor.
    Pipes { stdout: OwnedFd, stderr: OwnedFd },
}

/// Everything the init does, prepared before fork.
pub struct InitPlan {
    /// Namespaces to create (never pid, user or time: the monitor makes those, as only the
    /// init's children, or the fork itself, can enter them).
    pub unshare: CloneFlags,
    /// The user and mount namespaces to join, user first, opened before fork; the monitor
    /// joins the others.
    pub join: Vec<(CloneFlags, File)>,
    /// The init is in a new user namespace whose mappings hold uid and gid 0: become them, so
    /// that what the setup creates (mount points, /dev) is owned by a mapped id.
    pub become_root: bool,
    pub mounts: Option<MountPlan>,
    pub hostname: Option<String>,
    pub sysctls: Vec<(PathBuf, String)>,
    pub process: ProcessPlan,
    pub stdio: InitStdio,
}

/// The init's ends of the sync channels.
pub struct InitSync {
    pub go: OwnedFd,
    pub ready: OwnedFd,
    /// exec.fifo opened O_PATH: after pivot_root the state dir is out of reach.
    pub fifo: OwnedFd,
}

/// Runs in the forked init; never returns.
pub fn run(plan: &InitPlan, sync: InitSync) -> ! {
    sys::set_undumpable();
    let mut one = [0u8; 1];
    // The monitor or create dropped us: nothing to do.
    if !matches!(nix::unistd::read(sync.go.as_raw_fd(), &mut one), Ok(1)) {
        sys::exit_now(1);
    }
    drop(sync.go);
    let program = match setup(plan) {
        Ok(p) => p,
        Err(msg) => {
            let _ = sys::write_all(&sync.ready, msg.as_bytes());
            sys::exit_now(1);
        }
    };
    drop(sync.ready); // EOF without a message: ready.

    // Block until `start` opens the fifo for reading.
    let fifo_path = format!("/proc/self/fd/{}", sync.fifo.as_raw_fd());
    match nix::fcntl::open(
        fifo_path.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => {
            let _ = nix::unistd::write(
                // SAFETY: fd was just returned by open and is owned here.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                b"0",
            );
            let _ = nix::unistd::close(fd);
        }
        Err(e) => {
            eprintln!("flotilla init: opening exec fifo: {e}");
            sys::exit_now(1);
        }
    }
    drop(sync.fifo);
    let err = plan.process.exec(&program);
    eprintln!("flotilla init: {err}");
    sys::exit_now(127)
}

fn setup(plan: &InitPlan) -> Result<std::ffi::CString, String> {
    if let InitStdio::Pipes { stdout, stderr } = &plan.stdio {
        let null = nix::fcntl::open("/dev/null", OFlag::O_RDONLY, nix::sys::stat::Mode::empty())
            .map_err(|e| format!("/dev/null: {e}"))?;
        for (from, to) in [(null, 0), (stdout.as_raw_fd(), 1), (stderr.as_raw_fd(), 2)] {
            nix::unistd::dup2(from, to).map_err(|e| format!("dup2 stdio: {e}"))?;
        }
    }
    if plan.become_root {
        let root = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
        nix::unistd::setresgid(root.0, root.0, root.0)
            .and_then(|()| nix::unistd::setresuid(root.1, root.1, root.1))
            .map_err(|e| format!("becoming root in the user namespace: {e}"))?;
    }
    for (kind, file) in &plan.join {
        nix::sched::setns(file, *kind).map_err(|e| format!("joining namespace {kind:?}: {e}"))?;
    }
    if !plan.unshare.is_empty() {
        nix::sched::unshare(plan.unshare)
            .map_err(|e| format!("creating namespaces {:?}: {e}", plan.unshare))?;
    }
    if let Some(m) = &plan.mounts {
        crate::mounts::setup_rootfs(m)
            .map_err(|e| format!("setting up rootfs {}: {}", m.rootfs.display(), e.0))?;
    }
    if let Some(h) = &plan.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("sethostname {h:?}: {e}"))?;
    }
    for (path, value) in &plan.sysctls {
        std::fs::write(path, value).map_err(|e| format!("sysctl {}: {e}", path.display()))?;
    }
    plan.process.apply_limits()?;
    nix::unistd::chdir(&plan.process.cwd)
        .map_err(|e| format!("chdir to cwd {}: {e}", plan.process.cwd.display()))?;
    plan.process.resolve_program()
}
