//! The few raw syscalls the runtime needs that `nix` does not wrap safely.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Forks the calling process. Only for single-threaded callers: the child of a
/// multi-threaded process may only make async-signal-safe calls, and ours allocate.
///
/// # Safety
/// The caller must be single-threaded.
pub unsafe fn fork() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the caller guarantees it is single-threaded.
    unsafe { nix::unistd::fork() }
}

/// Forks the calling process into new namespaces at once (`clone` with `flags`, no new
/// stack: fork semantics). With CLONE_NEWUSER the kernel creates the user namespace first,
/// so a CLONE_NEWPID in the same call makes a pid namespace owned by it, which unshare in
/// the parent cannot do without entering that user namespace itself.
///
/// # Safety
/// The caller must be single-threaded. The child must not rely on glibc's cached thread id
/// (pthread_kill/raise on itself): clone does not refresh it as fork does.
pub unsafe fn fork_into(flags: nix::sched::CloneFlags) -> nix::Result<nix::unistd::ForkResult> {
    if flags.is_empty() {
        // SAFETY: forwarded from the caller.
        return unsafe { fork() };
    }
    let f = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and a null stack behaves as fork: the child gets a
    // copy of the address space and continues here.
    let r = unsafe { libc::syscall(libc::SYS_clone, f, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(nix::Error::last()),
        0 => Ok(nix::unistd::ForkResult::Child),
        pid => {
            Ok(nix::unistd::ForkResult::Parent { child: nix::unistd::Pid::from_raw(pid as i32) })
        }
    }
}

/// The number of threads of this process, from /proc/self/stat.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rfind(')').and_then(|i| s[i + 2..].split(' ').nth(17).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(1)
}

/// A pidfd for `pid`, which becomes readable when the process exits (child or not).
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `pid` has exited, or `timeout` passes. Returns whether it exited.
/// A pid that is already gone counts as exited.
pub fn wait_exit(pid: i32, timeout: Duration) -> bool {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(_) => return true,
    };
    wait_readable(&fd, timeout)
}

/// Polls `fd` for readability (or hang-up) for up to `timeout`.
pub fn wait_readable(fd: &impl AsFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Reads until EOF (retrying EINTR), for the sync pipes.
pub fn read_to_end(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(_) => return out,
        }
    }
}

/// Writes all of `buf`, retrying EINTR and short writes.
pub fn write_all(fd: &impl AsFd, mut buf: &[u8]) -> nix::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Exits the current (forked) process without running destructors or atexit handlers
/// that belong to the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Makes this process undumpable, so that processes of the container cannot open its
/// /proc entries (`/proc/PID/exe` is the runtime binary) while it joins the container.
/// exec resets it for the workload.
pub fn set_undumpable() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes a flag of this process only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

/// Set in the environment of a runtime re-executed from a sealed copy of itself.
pub const CLONED_ENV: &str = "_FLOTILLA_CLONED_BINARY";

/// Re-executes the current binary from a sealed memfd copy, unless already running from
/// one. A process joining a container (`exec`) is then, until its own execve, a binary
/// that cannot be written: a container that tricks it into running `/proc/self/exe`
/// (the CVE-2019-5736 class) gets a read-only, sealed copy, never the file on the host.
/// Costs one copy of the binary, so only `exec` does it; `create` never runs where a
/// container process could reach it (the init is alone in its namespaces until start).
pub fn reexec_from_sealed_copy() -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    if std::env::var_os(CLONED_ENV).is_some() {
        return Ok(());
    }
    let mut src = std::fs::File::open("/proc/self/exe")?;
    let memfd = memfd_create(
        c"flotillad-sealed",
        MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    let mut dst = std::fs::File::from(memfd);
    std::io::copy(&mut src, &mut dst)?;
    fcntl(
        dst.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )?;
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .map(|a| std::ffi::CString::new(std::os::unix::ffi::OsStringExt::into_vec(a)))
        .collect::<Result<_, _>>()
        .map_err(std::io::Error::other)?;
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = std::os::unix::ffi::OsStringExt::into_vec(k);
            kv.push(b'=');
            kv.extend(std::os::unix::ffi::OsStringExt::into_vec(v));
            std::ffi::CString::new(kv).ok()
        })
        .collect();
    env.push(std::ffi::CString::new(format!("{CLONED_ENV}=1")).expect("no NUL"));
    let err = nix::unistd::fexecve(dst.as_raw_fd(), &args, &env).unwrap_err();
    Err(err.into())
}
