//! The receiving side of `exec --tty --console-socket` (runc's convention): the pty master
//! arrives over a unix socket, and its owner relays and resizes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;

/// Sends `fd` with a one-byte message over the unix socket `sock`.
pub fn send_fd(sock: &impl AsFd, fd: RawFd) -> nix::Result<()> {
    let fds = [fd];
    nix::sys::socket::sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &[io::IoSlice::new(b"p")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives the fd sent with the first message on the unix socket `sock` (blocking).
pub fn receive_fd(sock: &impl AsFd) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 64];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel installed this fd for us with the message; nobody else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(io::Error::other("no fd in the socket's message"))
}

/// Sets a terminal's window size (which sends SIGWINCH to its foreground process group).
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer; fd is a valid open fd.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fd` non-blocking and registers it with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    let fl = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))?;
    // SAFETY: the AsyncFd takes ownership of the fd, so it stays open (and is the same file)
    // for as long as it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}
