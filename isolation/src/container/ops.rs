//! start, state, kill, wait, delete, list, stats.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Runtime;
use crate::cgroups::{Cgroup, Stats};
use crate::error::{Error, Result};
use crate::state::{Exit, State, Status, FIFO_FILE};
use crate::sys;

/// How long `delete --force` waits for the killed init to be reaped.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// Parses `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::UnknownSignal(s.into()));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    name.parse::<Signal>().map_err(|_| Error::UnknownSignal(s.into()))
}

impl Runtime {
    /// The recorded state and the current status.
    pub fn state(&self, id: &str) -> Result<(State, Status)> {
        super::create::validate_id(id)?;
        let dir = self.dir(id);
        let st = State::load(&dir, id)?;
        let status = st.status(&dir);
        Ok((st, status))
    }

    /// Lets a created container's init exec the workload.
    pub fn start(&self, id: &str) -> Result<()> {
        let (st, status) = self.state(id)?;
        if status != Status::Created {
            return Err(Error::BadStatus {
                id: id.into(),
                status: status.as_str(),
                action: "start",
                wanted: "created",
            });
        }
        let fifo = self.dir(id).join(FIFO_FILE);
        // Non-blocking open: it succeeds without a writer, so a dead init cannot hang us.
        let fd = nix::fcntl::open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("container {id:?}: opening {}", fifo.display()), e))?;
        // SAFETY: open just returned this fd; it is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(fd.as_raw_fd(), &mut byte) {
                Ok(1) => break,
                Ok(_) | Err(nix::Error::EAGAIN) => {
                    if !st.init_alive() {
                        return Err(Error::Init {
                            id: id.into(),
                            message: "the init exited before start".into(),
                        });
                    }
                    sys::wait_readable(&fd, Duration::from_millis(100));
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    return Err(Error::sys(format!("container {id:?}: reading exec fifo"), e))
                }
            }
        }
        let _ = std::fs::remove_file(&fifo);
        tracing::debug!(container = %id, "started");
        Ok(())
    }

    /// Sends `signal` to the init (all processes of the container die with it when the
    /// container has its own pid namespace).
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let (st, status) = self.state(id)?;
        if status == Status::Stopped {
            return Err(Error::BadStatus {
                id: id.into(),
                status: status.as_str(),
                action: "kill",
                wanted: "created or running",
            });
        }
        match nix::sys::signal::kill(Pid::from_raw(st.pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(format!("container {id:?}: kill {signal}"), e)),
        }
    }

    /// Waits up to `timeout` for the container to stop; returns its exit once recorded.
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<Option<Exit>> {
        let (st, _) = self.state(id)?;
        let dir = self.dir(id);
        if let Some(e) = State::exit(&dir) {
            return Ok(Some(e));
        }
        if st.monitor_alive() && !sys::wait_exit(st.monitor_pid, timeout) {
            return Ok(None);
        }
        Ok(State::exit(&dir))
    }

    /// Removes a stopped (or created) container; `force` kills a running one first.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let (st, status) = self.state(id)?;
        if status == Status::Running && !force {
            return Err(Error::BadStatus {
                id: id.into(),
                status: status.as_str(),
                action: "delete",
                wanted: "stopped (or use --force)",
            });
        }
        if status != Status::Stopped {
            let _ = nix::sys::signal::kill(Pid::from_raw(st.pid), Signal::SIGKILL);
        }
        if st.monitor_alive() && !sys::wait_exit(st.monitor_pid, KILL_PATIENCE) {
            return Err(Error::Init {
                id: id.into(),
                message: format!("the container did not exit within {KILL_PATIENCE:?} of SIGKILL"),
            });
        }
        let mut cg = Cgroup::open(id, &st.cgroup)?;
        cg.destroy()?;
        let dir = self.dir(id);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing state dir", dir, e))?;
        tracing::debug!(container = %id, "deleted");
        Ok(())
    }

    /// Every container under the root, with its status.
    pub fn list(&self) -> Result<Vec<(State, Status)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("listing", &self.root, e)),
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Ok(s) = self.state(&id) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    /// cgroup usage of a container.
    pub fn stats(&self, id: &str) -> Result<Stats> {
        let (st, _) = self.state(id)?;
        Ok(Cgroup::open(id, &st.cgroup)?.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_short_name_and_number() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
    }
}
