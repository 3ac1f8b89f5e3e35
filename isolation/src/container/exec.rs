//! `exec`: an extra process in a running container, through setns.
//!
//! ```text
//!  exec ──fork──► joiner: into the cgroup, setns(ipc, uts, net, cgroup, pid, mnt)
//!    │                └─fork──► process (now in the pid namespace): [pty], limits,
//!    │                           user, caps, no_new_privs, seccomp → execve
//!    ├── with --tty: the pty master comes back over a socket (SCM_RIGHTS); its output
//!    │   is copied to our stdout and our stdin to it
//!    └── waits the joiner, which exits with the process's status
//! ```
//! The pty is opened inside the container (its /dev/ptmx), as runc's console socket does,
//! so `tty` in the container names a device the container can see.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use oci_spec::runtime::Process;

use super::Runtime;
use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::process::ProcessPlan;
use crate::state::Status;
use crate::sys;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// Added to (and overriding) the container process's environment.
    pub env: Vec<String>,
    pub cwd: Option<std::path::PathBuf>,
    pub tty: bool,
    /// Return once the process runs, with its pid, instead of waiting for it.
    pub detach: bool,
    /// With `tty`: send the pty master to this unix socket (runc's `--console-socket`)
    /// instead of relaying it to our stdio, so the caller can also resize it.
    pub console_socket: Option<std::path::PathBuf>,
}

const NS_ORDER: &[(&str, CloneFlags)] = &[
    // First: the container's other namespaces may be owned by it.
    ("user", CloneFlags::CLONE_NEWUSER),
    ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    // Last: after it, host paths are out of reach.
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// How an exec ended: the exit code (128+signal when killed), or the pid when detached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecResult {
    Exited(i32),
    Detached(i32),
}

fn status_code(s: nix::Result<WaitStatus>) -> i32 {
    match s {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => 255,
    }
}

fn wait_child(pid: nix::unistd::Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Err(nix::Error::EINTR) => continue,
            other => return status_code(other),
        }
    }
}

impl Runtime {
    /// Runs a process in container `id` the way its own process runs (user, capabilities,
    /// no_new_privs, seccomp of its config), in all its namespaces and its cgroup.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<ExecResult> {
        let (st, status) = self.state(id)?;
        if status != Status::Running {
            return Err(Error::BadStatus {
                id: id.into(),
                status: status.as_str(),
                action: "exec",
                wanted: "running",
            });
        }
        if opts.args.is_empty() {
            return Err(Error::Init { id: id.into(), message: "exec needs a command".into() });
        }
        if sys::thread_count() > 1 {
            return Err(Error::Init {
                id: id.into(),
                message: "exec must be called from a single-threaded process".into(),
            });
        }
        let bundle = crate::spec::load_bundle(&st.bundle)?;
        let mut process: Process = bundle.spec.process().clone().expect("checked by load_bundle");
        process.set_args(Some(opts.args.clone()));
        let mut env = process.env().clone().unwrap_or_default();
        for e in &opts.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        process.set_env(Some(env));
        if let Some(c) = &opts.cwd {
            process.set_cwd(c.clone());
        }
        let linux = bundle.spec.linux().clone().unwrap_or_default();
        let plan = ProcessPlan::new(&process, linux.seccomp().as_ref())
            .map_err(|e| Error::config(&bundle.dir, e.field, e.reason))?;

        let mut namespaces = Vec::new();
        for (name, flag) in NS_ORDER {
            if !st.namespaces.iter().any(|n| n == name) {
                continue;
            }
            let path = format!("/proc/{}/ns/{name}", st.pid);
            let f = File::open(&path).map_err(|e| Error::io("opening", path, e))?;
            namespaces.push((*flag, f));
        }
        // The pid was checked alive with its start time by state(); re-check after opening.
        if !st.init_alive() {
            return Err(Error::BadStatus {
                id: id.into(),
                status: "stopped",
                action: "exec",
                wanted: "running",
            });
        }
        let mut cgroup = Cgroup::open(id, &st.cgroup)?;
        let (pty_ours, pty_theirs) =
            socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| Error::sys("socketpair", e))?;
        let (pid_r, pid_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;

        // SAFETY: checked above that this process is single-threaded.
        let joiner = match unsafe { sys::fork() } {
            Ok(ForkResult::Child) => {
                drop((pty_ours, pid_r, err_r));
                let fail = |msg: String| -> ! {
                    let _ = sys::write_all(&err_w, msg.as_bytes());
                    sys::exit_now(126)
                };
                sys::set_undumpable();
                if let Err(e) = cgroup.add(std::process::id() as i32) {
                    fail(e.to_string());
                }
                for (flag, f) in &namespaces {
                    if let Err(e) = nix::sched::setns(f, *flag) {
                        fail(format!("joining {flag:?}: {e}"));
                    }
                    if *flag == CloneFlags::CLONE_NEWUSER {
                        // As the init did: root inside, where the mappings have one.
                        let _ = nix::unistd::setresgid(0.into(), 0.into(), 0.into());
                        let _ = nix::unistd::setresuid(0.into(), 0.into(), 0.into());
                    }
                }
                // SAFETY: the joiner is a fork of a single-threaded process.
                match unsafe { sys::fork() } {
                    Ok(ForkResult::Child) => run_process(&plan, opts.tty, pty_theirs, err_w),
                    Ok(ForkResult::Parent { child }) => {
                        drop(pty_theirs);
                        let _ = sys::write_all(&pid_w, &child.as_raw().to_ne_bytes());
                        drop(pid_w);
                        if opts.detach {
                            // The process is reparented to the container's init, which reaps it.
                            sys::exit_now(0);
                        }
                        drop(err_w);
                        sys::exit_now(wait_child(child))
                    }
                    Err(e) => fail(format!("fork: {e}")),
                }
            }
            Ok(ForkResult::Parent { child }) => child,
            Err(e) => return Err(Error::sys("fork", e)),
        };
        drop((pty_theirs, pid_w, err_w, namespaces));

        let pid_bytes = sys::read_to_end(&pid_r);
        let master = if opts.tty { crate::console::receive_fd(&pty_ours).ok() } else { None };
        drop(pty_ours);
        let err = sys::read_to_end(&err_r);
        if !err.is_empty() {
            let _ = wait_child(joiner);
            return Err(Error::Init {
                id: id.into(),
                message: format!("exec: {}", String::from_utf8_lossy(&err)),
            });
        }
        let pid = <[u8; 4]>::try_from(pid_bytes.as_slice()).map(i32::from_ne_bytes).unwrap_or(0);
        if opts.detach {
            let _ = wait_child(joiner);
            return Ok(ExecResult::Detached(pid));
        }
        match (master, &opts.console_socket) {
            (Some(m), Some(path)) => {
                if let Err(e) = send_fd(path, &m) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = wait_child(joiner);
                    return Err(Error::io("sending the pty to", path.clone(), e));
                }
            }
            (Some(m), None) => relay_pty(&m),
            (None, _) => {}
        }
        Ok(ExecResult::Exited(wait_child(joiner)))
    }
}

/// In the container's namespaces: optional pty, then the process plan and execve.
fn run_process(plan: &ProcessPlan, tty: bool, pty_sock: OwnedFd, err: OwnedFd) -> ! {
    let fail = |msg: String| -> ! {
        let _ = sys::write_all(&err, msg.as_bytes());
        sys::exit_now(126)
    };
    if tty {
        if let Err(e) = attach_pty(&pty_sock) {
            fail(format!("setting up the pty: {e}"));
        }
    }
    drop(pty_sock);
    if let Err(e) = plan.apply_limits() {
        fail(e);
    }
    if let Err(e) = nix::unistd::chdir(&plan.cwd) {
        fail(format!("chdir to {}: {e}", plan.cwd.display()));
    }
    let program = match plan.resolve_program() {
        Ok(p) => p,
        Err(e) => fail(e),
    };
    // From here the error pipe closes at exec (CLOEXEC): no message means it ran.
    let msg = plan.exec(&program);
    fail(msg)
}

/// Opens a pty from the container's /dev/ptmx, makes its slave our controlling terminal
/// and stdio, and sends the master to the caller.
fn attach_pty(sock: &OwnedFd) -> nix::Result<()> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY takes an int argument; slave is an open terminal fd.
    if unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) } != 0 {
        return Err(nix::Error::last());
    }
    for fd in 0..3 {
        nix::unistd::dup2(slave, fd)?;
    }
    let _ = nix::unistd::close(slave);
    crate::console::send_fd(sock, master.as_raw_fd())
}

/// Sends `fd` over the unix socket at `path`, as runc does for `--console-socket`.
fn send_fd(path: &std::path::Path, fd: &OwnedFd) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixStream::connect(path)?;
    Ok(crate::console::send_fd(&sock, fd.as_raw_fd())?)
}

/// Copies the pty's output to our stdout and our stdin to the pty until the process side
/// closes (EIO on the master once every slave fd is gone). A terminal on our stdin is
/// switched to raw mode meanwhile.
fn relay_pty(master: &OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::termios;
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(stdin.as_fd()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
    }
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let master_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let stdin_ready =
            stdin_open && fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        drop(fds);
        if master_ready {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = sys::write_all(&std::io::stdout(), &buf[..n]);
                }
            }
        }
        if stdin_ready {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = sys::write_all(master, &buf[..n]);
                }
            }
        }
    }
    if let Some(t) = saved {
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &t);
    }
}
