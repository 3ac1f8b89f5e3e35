//! `create`: from a bundle to an init waiting on exec.fifo.
//!
//! ```text
//!  create ──fork──► monitor ──(unshare pid ns) fork──► init
//!    │  ◄── init pid ───┘                               │
//!    ├── cgroup.add(init) ── "go" ─────────────────────►│ namespaces, rootfs, …
//!    │  ◄───────────────────────────── ready / error ───┤
//!    └── state.json, exit                               └ blocks on exec.fifo
//! ```

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::ForkResult;
use oci_spec::runtime::LinuxNamespaceType;

use super::init::{InitPlan, InitStdio, InitSync};
use super::monitor::{self, MonitorPlan, MonitorSync, PidNamespace};
use super::Runtime;
use crate::cgroups::{self, Cgroup};
use crate::error::{Error, Result};
use crate::logs::{LogConfig, LogWriter};
use crate::mounts;
use crate::process::ProcessPlan;
use crate::spec::{self, Bundle};
use crate::state::{self, State, FIFO_FILE};
use crate::sys;

/// How to create a container.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    /// Where to write the init's pid (runc's `--pid-file`).
    pub pid_file: Option<PathBuf>,
    /// Send stdout/stderr to a CRI log instead of passing the runtime's stdio through.
    pub log: Option<LogConfig>,
}

/// Undoes a half-made container when create fails.
struct Cleanup<'a> {
    dir: &'a Path,
    cgroup: Option<Cgroup>,
    monitor: Option<i32>,
    init: Option<i32>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.init {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(m) = self.monitor {
            // The monitor is our child: reap it.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(m), None);
        }
        if let Some(cg) = &mut self.cgroup {
            let _ = cg.destroy();
        }
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

const NS_FLAGS: &[(LinuxNamespaceType, CloneFlags, &str)] = &[
    (LinuxNamespaceType::Mount, CloneFlags::CLONE_NEWNS, "mnt"),
    (LinuxNamespaceType::Uts, CloneFlags::CLONE_NEWUTS, "uts"),
    (LinuxNamespaceType::Ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
    (LinuxNamespaceType::Network, CloneFlags::CLONE_NEWNET, "net"),
    (LinuxNamespaceType::Cgroup, CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    (LinuxNamespaceType::Pid, CloneFlags::CLONE_NEWPID, "pid"),
    (LinuxNamespaceType::User, CloneFlags::CLONE_NEWUSER, "user"),
    (LinuxNamespaceType::Time, CloneFlags::from_bits_retain(libc::CLONE_NEWTIME), "time"),
];

pub(super) fn validate_id(id: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidId { id: id.to_string(), reason });
    if id.is_empty() || id.len() > 1024 {
        return bad("must be 1 to 1024 characters");
    }
    if id == "." || id == ".." {
        return bad("must not be . or ..");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b)) {
        return bad("may only hold letters, digits and _ + - .");
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("creating a sync pipe", e))
}

impl Runtime {
    /// Creates container `id` from a bundle. On return the init waits for [`Runtime::start`];
    /// on error nothing of the container is left.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<State> {
        validate_id(id)?;
        let bundle = spec::load_bundle(&opts.bundle)?;
        if sys::thread_count() > 1 {
            // fork of a multi-threaded process may deadlock in the child.
            return Err(Error::Init { id: id.into(), message: "create must be called from a single-threaded process (run `flotillad runtime create`)".into() });
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io("creating runtime root", &self.root, e))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists { id: id.into() })
            }
            Err(e) => return Err(Error::io("creating state dir", dir, e)),
        }
        let mut cleanup =
            Cleanup { dir: &dir, cgroup: None, monitor: None, init: None, armed: true };
        let state = self.create_in(id, &bundle, opts, &dir, &mut cleanup)?;
        cleanup.armed = false;
        Ok(state)
    }

    fn create_in(
        &self,
        id: &str,
        bundle: &Bundle,
        opts: &CreateOptions,
        dir: &Path,
        cleanup: &mut Cleanup<'_>,
    ) -> Result<State> {
        let t0 = std::time::Instant::now();
        let spec = &bundle.spec;
        let cfg_err = |field: &str, reason: String| Error::config(&bundle.dir, field, reason);
        let linux = spec.linux().clone().unwrap_or_default();
        let process = spec.process().as_ref().expect("checked by spec::check");

        // Namespaces: new ones are unshared, ones with a path are joined. The monitor joins
        // all but the user and mount namespaces before it forks the init (from inside a new
        // user namespace, joining a host-owned one is refused); the init joins those two.
        // A new user namespace is made by the fork itself, with a new pid namespace in the
        // same call so that the init is root over it (and may mount /proc).
        let mut unshare = CloneFlags::empty();
        let mut join = Vec::new();
        let mut monitor_join = Vec::new();
        let mut pid_ns = PidNamespace::Host;
        let mut new_user = false;
        let mut new_time = false;
        let mut ns_names = Vec::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            let Some((_, flag, name)) = NS_FLAGS.iter().find(|(t, _, _)| *t == ns.typ()) else {
                return Err(cfg_err(
                    &format!("linux.namespaces[{i}]"),
                    format!("namespace {} is not supported", ns.typ()),
                ));
            };
            ns_names.push(name.to_string());
            match ns.path() {
                Some(p) => {
                    let f = File::open(p).map_err(|e| {
                        cfg_err(
                            &format!("linux.namespaces[{i}].path"),
                            format!("{}: {e}", p.display()),
                        )
                    })?;
                    match ns.typ() {
                        LinuxNamespaceType::Pid => pid_ns = PidNamespace::Join(f),
                        // The user namespace first: the others may be owned by it.
                        LinuxNamespaceType::User => join.insert(0, (*flag, f)),
                        LinuxNamespaceType::Mount => join.push((*flag, f)),
                        _ => monitor_join.push((*flag, f)),
                    }
                }
                None => match ns.typ() {
                    LinuxNamespaceType::Pid => pid_ns = PidNamespace::New,
                    LinuxNamespaceType::User => new_user = true,
                    LinuxNamespaceType::Time => new_time = true,
                    _ => unshare |= *flag,
                },
            }
        }
        let id_maps = new_user.then(|| {
            (
                spec::id_map_lines(linux.uid_mappings().as_deref().unwrap_or_default()),
                spec::id_map_lines(linux.gid_mappings().as_deref().unwrap_or_default()),
            )
        });
        // Root inside is where the init does its setup, when the mappings have one; the
        // host ids it has then must own what it opens of ours (exec.fifo).
        let host_id_of_root = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
            m.into_iter().flatten().find(|m| m.container_id() == 0).map(|m| m.host_id())
        };
        let inside_root = match (
            host_id_of_root(linux.uid_mappings().as_ref()),
            host_id_of_root(linux.gid_mappings().as_ref()),
        ) {
            (Some(uid), Some(gid)) if new_user => Some((uid, gid)),
            _ => None,
        };
        let become_root = inside_root.is_some();
        let time_offsets = new_time.then(|| {
            linux.time_offsets().as_ref().map(spec::time_offset_lines).unwrap_or_default()
        });
        let new_mount_ns = unshare.contains(CloneFlags::CLONE_NEWNS)
            || join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWNS);
        if !new_mount_ns {
            return Err(cfg_err(
                "linux.namespaces",
                "a mount namespace is required (pivot_root needs one)".into(),
            ));
        }

        let oom_score_adj = process.oom_score_adj();
        let process_plan = ProcessPlan::new(process, linux.seccomp().as_ref())
            .map_err(|e| cfg_err(&e.field, e.reason))?;
        let mut sysctls = Vec::new();
        for (k, v) in linux.sysctl().iter().flatten() {
            if k.contains('/') || k.contains("..") {
                return Err(cfg_err(&format!("linux.sysctl.{k}"), "not a sysctl name".into()));
            }
            sysctls.push((Path::new("/proc/sys").join(k.replace('.', "/")), v.clone()));
        }
        let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        if hostname.is_some() && !unshare.contains(CloneFlags::CLONE_NEWUTS) {
            return Err(cfg_err("hostname", "setting a hostname needs a new uts namespace".into()));
        }

        // cgroup before anything runs in it.
        let cg_path = cgroups::path_for(id, linux.cgroups_path().as_deref());
        let cgroup = Cgroup::create(
            id,
            &cg_path,
            &cgroups::with_default_devices(linux.resources().as_ref()),
        )?;
        let t_cgroup = t0.elapsed();
        let binds = cgroup.binds();
        let v2 = cgroup.is_v2();
        let oom_at_create = cgroup.oom_kills();
        cleanup.cgroup = Some(cgroup);

        let mount_plan = mounts::plan(spec, &bundle.dir, &bundle.rootfs, binds, v2);

        let fifo = dir.join(FIFO_FILE);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::sys(format!("mkfifo {}", fifo.display()), e))?;
        if let Some((uid, gid)) = inside_root {
            std::os::unix::fs::chown(&fifo, Some(uid), Some(gid))
                .map_err(|e| Error::io("chown exec fifo", &fifo, e))?;
        }
        let fifo_fd = nix::fcntl::open(
            &fifo,
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::sys("opening exec fifo", e))?;
        // SAFETY: open just returned this fd; it is owned here only.
        let fifo_fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fifo_fd) };

        let (stdio, log) = match &opts.log {
            None => (InitStdio::Inherit, None),
            Some(cfg) => {
                let writer = LogWriter::open(cfg.clone())
                    .map_err(|e| Error::io("opening log", &cfg.path, e))?;
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                (InitStdio::Pipes { stdout: out_w, stderr: err_w }, Some((writer, out_r, err_r)))
            }
        };
        let init_plan = InitPlan {
            unshare,
            join,
            become_root,
            mounts: Some(mount_plan),
            hostname,
            sysctls,
            process: process_plan,
            stdio,
        };

        let (pid_r, pid_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        let oom_cg = cg_path.clone();
        let oom_id = id.to_string();
        let mplan = MonitorPlan {
            state_dir: dir.to_path_buf(),
            join: monitor_join,
            time_offsets,
            new_user,
            pid_ns,
            log,
            oom_kills: Box::new(move || {
                Cgroup::open(&oom_id, &oom_cg).map(|c| c.oom_kills()).unwrap_or(0)
            }),
            oom_kills_at_create: oom_at_create,
        };

        // SAFETY: create checked above that this process is single-threaded.
        match unsafe { sys::fork() } {
            Ok(ForkResult::Child) => {
                drop((pid_r, go_w, ready_r));
                let ready_for_monitor = match ready_w.try_clone() {
                    Ok(f) => f,
                    Err(_) => sys::exit_now(1),
                };
                monitor::run(
                    mplan,
                    &init_plan,
                    MonitorSync { pid: pid_w, ready: ready_for_monitor },
                    InitSync { go: go_r, ready: ready_w, fifo: fifo_fd },
                )
            }
            Ok(ForkResult::Parent { child }) => cleanup.monitor = Some(child.as_raw()),
            Err(e) => return Err(Error::sys("forking the monitor", e)),
        }
        drop((pid_w, go_r, ready_w, fifo_fd, init_plan, mplan));

        let init_err = |message: String| Error::Init { id: id.into(), message };
        let pid_bytes = sys::read_to_end(&pid_r);
        let Ok(pid_bytes) = <[u8; 4]>::try_from(pid_bytes.as_slice()) else {
            let msg = String::from_utf8_lossy(&sys::read_to_end(&ready_r)).into_owned();
            return Err(init_err(if msg.is_empty() {
                "the monitor exited before starting the init".into()
            } else {
                msg
            }));
        };
        let pid = i32::from_ne_bytes(pid_bytes);
        cleanup.init = Some(pid);
        cleanup.cgroup.as_mut().expect("set above").add(pid)?;
        if let Some((uid_map, gid_map)) = &id_maps {
            // One write each, before the init does anything as root inside.
            for (file, lines, field) in [
                ("uid_map", uid_map, "linux.uidMappings"),
                ("gid_map", gid_map, "linux.gidMappings"),
            ] {
                let path = format!("/proc/{pid}/{file}");
                std::fs::write(&path, lines)
                    .map_err(|e| cfg_err(field, format!("writing {path}: {e}")))?;
            }
        }
        if let Some(adj) = oom_score_adj {
            // From here, in the host's user namespace: lowering the score needs
            // CAP_SYS_RESOURCE there, which a process inside a new user namespace never has.
            let path = format!("/proc/{pid}/oom_score_adj");
            std::fs::write(&path, adj.to_string()).map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::EACCES) {
                    "lowering a process's OOM score below its parent's needs CAP_SYS_RESOURCE, \
                     which this runtime does not have"
                        .to_string()
                } else {
                    format!("writing {path}: {e}")
                };
                cfg_err("process.oomScoreAdj", format!("{adj}: {why}"))
            })?;
        }
        let t_add = t0.elapsed();
        sys::write_all(&go_w, b"g").map_err(|e| Error::sys("signalling the init", e))?;
        drop(go_w);
        let msg = sys::read_to_end(&ready_r);
        if !msg.is_empty() {
            return Err(init_err(String::from_utf8_lossy(&msg).into_owned()));
        }

        let monitor_pid = cleanup.monitor.expect("set above");
        let state = State {
            id: id.to_string(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            pid,
            pid_start: state::process_start_time(pid)
                .ok_or_else(|| init_err("the init exited during create".into()))?,
            monitor_pid,
            monitor_start: state::process_start_time(monitor_pid).unwrap_or(0),
            cgroup: cg_path,
            created: state::rfc3339(SystemTime::now()),
            annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
            namespaces: ns_names,
            oom_kills_at_create: oom_at_create,
        };
        state.save(dir)?;
        if let Some(p) = &opts.pid_file {
            state::write_atomic(p, pid.to_string().as_bytes())
                .map_err(|e| Error::io("writing pid file", p, e))?;
        }
        // The cgroup figures show what host cgroup settings cost (see `favor_dynmods`).
        tracing::debug!(container = %id, pid, monitor = monitor_pid, ?t_cgroup, ?t_add, total = ?t0.elapsed(), "created");
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_like_runc() {
        assert!(validate_id("web-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
