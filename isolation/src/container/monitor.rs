//! The monitor: a forked copy of the runtime that parents the container's init, relays
//! its output to the log, reaps it and records how it ended.
//!
//! It lives in its own session, so it outlives `create` and the supervisor that called
//! it: a restarted agent reads `exit.json` instead of losing the exit status.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;

use super::init::{self, InitPlan, InitStdio, InitSync};
use crate::logs::LogWriter;
use crate::state::{write_atomic, Exit, EXIT_FILE};
use crate::sys;

/// How the pid namespace of the init comes about.
pub enum PidNamespace {
    New,
    Join(std::fs::File),
    Host,
}

pub struct MonitorPlan {
    pub state_dir: PathBuf,
    /// Namespaces joined before the init is forked (all but user and mount).
    pub join: Vec<(CloneFlags, std::fs::File)>,
    /// A new time namespace for the init, with these `timens_offsets` lines.
    pub time_offsets: Option<String>,
    /// Fork the init into a new user namespace (and a new pid namespace owned by it).
    pub new_user: bool,
    pub pid_ns: PidNamespace,
    /// Where the init's output goes when `InitStdio::Pipes`: (stdout read end, stderr read end).
    pub log: Option<(LogWriter, OwnedFd, OwnedFd)>,
    /// cgroup memory dir's OOM counter, read after the init exits.
    pub oom_kills: Box<dyn Fn() -> u64>,
    pub oom_kills_at_create: u64,
}

/// The monitor's ends of the sync channels.
pub struct MonitorSync {
    /// Where the init's pid goes (4 bytes, native endian).
    pub pid: OwnedFd,
    /// Where the monitor reports its own failures (the init's ready pipe).
    pub ready: OwnedFd,
}

/// Runs in the forked monitor; never returns.
pub fn run(plan: MonitorPlan, init_plan: &InitPlan, sync: MonitorSync, init_sync: InitSync) -> ! {
    let fail = |ready: &OwnedFd, msg: String| -> ! {
        let _ = sys::write_all(ready, msg.as_bytes());
        sys::exit_now(1)
    };
    sys::set_undumpable();
    let _ = nix::unistd::setsid();
    for (kind, file) in &plan.join {
        if let Err(e) = nix::sched::setns(file, *kind) {
            fail(&sync.ready, format!("joining namespace {kind:?}: {e}"));
        }
    }
    if let Some(offsets) = &plan.time_offsets {
        // Only children enter it, and its offsets are fixed once one has.
        if let Err(e) = nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)) {
            fail(&sync.ready, format!("creating time namespace: {e}"));
        }
        if let Err(e) = std::fs::write("/proc/self/timens_offsets", offsets) {
            fail(&sync.ready, format!("setting time offsets {offsets:?}: {e}"));
        }
    }
    let mut clone = CloneFlags::empty();
    if plan.new_user {
        clone |= CloneFlags::CLONE_NEWUSER;
    }
    match &plan.pid_ns {
        PidNamespace::New if plan.new_user => clone |= CloneFlags::CLONE_NEWPID,
        PidNamespace::New => {
            if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
                fail(&sync.ready, format!("creating pid namespace: {e}"));
            }
        }
        PidNamespace::Join(f) => {
            if let Err(e) = nix::sched::setns(f, CloneFlags::CLONE_NEWPID) {
                fail(&sync.ready, format!("joining pid namespace: {e}"));
            }
        }
        PidNamespace::Host => {}
    }
    // SAFETY: the monitor is a fork of a single-threaded process and so single-threaded;
    // the init never signals itself through glibc.
    let child = match unsafe { sys::fork_into(clone) } {
        Ok(ForkResult::Child) => {
            // create's read of the ready pipe ends when the init closes the last write end.
            drop(sync.pid);
            drop(sync.ready);
            if let Some((_, out, err)) = &plan.log {
                let _ = (nix::unistd::close(out.as_raw_fd()), nix::unistd::close(err.as_raw_fd()));
            }
            init::run(init_plan, init_sync)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(&sync.ready, format!("forking init: {e}")),
    };
    drop(init_sync);
    let _ = sys::write_all(&sync.pid, &child.as_raw().to_ne_bytes());
    drop(sync.pid);
    drop(sync.ready);
    // Keep nothing of the caller's: a shell reading create's output must see EOF.
    if let Ok(null) =
        nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty())
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null, fd);
        }
    }
    // The init's own copies of the log pipes' write ends live in the init only.
    if let InitStdio::Pipes { stdout, stderr } = &init_plan.stdio {
        let _ = (nix::unistd::close(stdout.as_raw_fd()), nix::unistd::close(stderr.as_raw_fd()));
    }
    if let Some((writer, out, err)) = plan.log {
        crate::logs::relay(writer, out, err, child.as_raw());
    }
    let status = loop {
        match waitpid(child, None) {
            Err(nix::Error::EINTR) => continue,
            Ok(WaitStatus::StillAlive) => continue,
            other => break other,
        }
    };
    let (code, signal) = match status {
        Ok(WaitStatus::Exited(_, code)) => (code, None),
        Ok(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    // Like containerd: any OOM kill in the container's cgroup during its life.
    let oom_killed = (plan.oom_kills)() > plan.oom_kills_at_create;
    let exit = Exit {
        code,
        signal,
        oom_killed,
        finished_at_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    };
    let _ = write_atomic(
        &plan.state_dir.join(EXIT_FILE),
        &serde_json::to_vec(&exit).unwrap_or_default(),
    );
    sys::exit_now(0)
}
