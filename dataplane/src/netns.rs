//! Network namespaces that outlive their processes: a namespace is bind-mounted onto a file
//! (as `ip netns` and CNI runtimes do), so a pod's network exists before its first container and
//! after its last.
//!
//! Work inside a namespace runs on a short-lived thread that `setns`es into it: a thread's network
//! namespace is its own, and sockets (netlink, tc attachment by ifindex) belong to the namespace
//! they were created in, so the caller's threads are never moved.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::statfs::{statfs, NSFS_MAGIC},
};

/// An open handle to a network namespace, by its bind-mounted path.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

fn io_err(e: nix::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what} {}: {e}", path.display()))
}

impl NetNs {
    /// Opens the namespace mounted at `path`, refusing a path that is not a namespace.
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref();
        let fs = statfs(path).map_err(|e| io_err(e, "statfs", path))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a network namespace mount", path.display()),
            ));
        }
        Ok(NetNs { path: path.to_owned(), file: File::open(path)? })
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<NetNs> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        Ok(NetNs { file: File::open(&path)?, path })
    }

    /// Creates a new namespace mounted at `path`, or opens the one already there (idempotent:
    /// a restarted agent adopts its pods' namespaces).
    pub fn create(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref();
        if let Ok(ns) = NetNs::open(path) {
            return Ok(ns);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::create(path)?;
        let target = path.to_owned();
        let made = std::thread::spawn(move || -> io::Result<()> {
            // Only this thread moves; it ends right after the mount.
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| io_err(e, "unshare netns for", &target))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| io_err(e, "bind-mount netns on", &target))
        })
        .join()
        .map_err(|_| io::Error::other("netns creation thread panicked"))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        NetNs::open(path)
    }

    /// Unmounts and removes a namespace file; the namespace itself goes when its last process
    /// and socket are gone. Missing paths are fine (teardown is idempotent).
    pub fn remove(path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        if !path.exists() {
            return Ok(());
        }
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(io_err(e, "unmount netns", path)),
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into this namespace (for a child between fork and exec, or a
    /// dedicated thread).
    pub fn enter(&self) -> io::Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| io_err(e, "setns into", &self.path))
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("netns worker thread panicked"))?
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        flotilla_prereq::root("the test makes network namespaces")
    }

    #[test]
    fn create_is_idempotent_and_isolated() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns1");
        let ns = NetNs::create(&path).unwrap();
        let again = NetNs::create(&path).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(ino(ns.path()).unwrap(), ino(again.path()).unwrap());
        // Inside, only loopback exists (procfs follows the thread's namespace; sysfs would not).
        let dev = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev")).unwrap().unwrap();
        let names: Vec<&str> =
            dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
        assert_eq!(names, ["lo"]);
        drop((ns, again));
        NetNs::remove(&path).unwrap();
        assert!(!path.exists());
        NetNs::remove(&path).unwrap();
        assert!(NetNs::open(dir.path()).is_err(), "a directory is not a namespace");
    }
}
