//! OCI seccomp profiles compiled to classic BPF with `seccompiler`, and the default profile.
//!
//! seccompiler gives one match action per filter, while an OCI profile gives one per rule.
//! So a profile becomes a main filter (default action on mismatch, allow on match) plus one
//! filter per other action (allow on mismatch). The kernel runs them all and keeps the most
//! severe verdict; for verdicts of the same kind, the filter installed last wins, which is
//! why the per-action filters go after the main one.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Compiles a profile into the filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, String> {
    let default_errno = profile.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(profile.default_action(), Some(default_errno))?;

    // Rules grouped by the action they take.
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    let mut unconditional = std::collections::HashSet::new();
    for (i, sc) in profile.syscalls().iter().flatten().enumerate() {
        let act = action(sc.action(), sc.errno_ret().or(Some(libc::EPERM as u32)))
            .map_err(|e| format!("syscalls[{i}].action: {e}"))?;
        if act == default {
            continue;
        }
        let rule = rule(sc).map_err(|e| format!("syscalls[{i}].args: {e}"))?;
        let slot = match by_action.iter().position(|(a, _)| *a == act) {
            Some(p) => p,
            None => {
                by_action.push((act, BTreeMap::new()));
                by_action.len() - 1
            }
        };
        for name in sc.names() {
            // Profiles list names of every architecture (chown32, …): like runc, skip
            // those this one lacks.
            let Ok(nr) = syscalls::Sysno::from_str(name) else {
                tracing::trace!(syscall = %name, "seccomp: not a syscall on this architecture");
                continue;
            };
            let key = (slot, nr.id() as i64);
            let rules = by_action[slot].1.entry(key.1).or_default();
            match &rule {
                // An empty rule list matches unconditionally: conditions would narrow it.
                None => {
                    rules.clear();
                    unconditional.insert(key);
                }
                Some(r) if !unconditional.contains(&key) => rules.push(r.clone()),
                Some(_) => {}
            }
        }
    }

    let arch = TargetArch::x86_64;
    let mut out = Vec::new();
    let compile = |rules, mismatch, on_match| -> Result<BpfProgram, String> {
        let f = SeccompFilter::new(rules, mismatch, on_match, arch).map_err(|e| e.to_string())?;
        BpfProgram::try_from(f).map_err(|e| e.to_string())
    };
    let allow_pos = by_action.iter().position(|(a, _)| *a == SeccompAction::Allow);
    if default != SeccompAction::Allow {
        let allowed = allow_pos.map(|p| by_action[p].1.clone()).unwrap_or_default();
        out.push(compile(allowed, default, SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        if act == SeccompAction::Allow || rules.is_empty() {
            continue;
        }
        out.push(compile(rules, SeccompAction::Allow, act)?);
    }
    Ok(out)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => return Err("SCMP_ACT_NOTIFY is not supported".into()),
    })
}

/// The rule for a syscall entry, or `None` when it has no argument conditions.
fn rule(sc: &LinuxSyscall) -> Result<Option<SeccompRule>, String> {
    let Some(args) = sc.args().as_ref().filter(|a| !a.is_empty()) else { return Ok(None) };
    let mut conds = Vec::new();
    for a in args {
        let op = match a.op() {
            LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
            LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
            LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
            LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
            LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
            LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
            // libseccomp's masked compare: (arg & value) == valueTwo.
            LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
        };
        let value = match a.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
            _ => a.value(),
        };
        let index = u8::try_from(a.index())
            .map_err(|_| format!("argument index {} out of range", a.index()))?;
        conds.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| e.to_string())?,
        );
    }
    SeccompRule::new(conds).map(Some).map_err(|e| e.to_string())
}

/// Installs compiled filters on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install(filters: &[BpfProgram]) -> Result<(), String> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| format!("installing seccomp filter: {e}"))?;
    }
    Ok(())
}

/// Syscalls the default profile allows unconditionally: the allow-list of the profile
/// Docker and containerd ship, for x86_64.
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chroot",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Namespace flags `clone` may not carry under the default profile (Docker's mask).
const CLONE_NAMESPACE_MASK: u64 = 0x7E02_0000;
/// `personality` values the default profile accepts (Docker's list).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
/// AF_VSOCK: sockets of this family are refused, as Docker does.
const AF_VSOCK: u64 = 40;

/// The default profile: refuse with EPERM what is not listed, allow the list, `clone`
/// without namespace flags, `socket` but for vsock, known `personality` values, and
/// `clone3` refused with ENOSYS so that libc falls back to `clone`.
pub fn default_profile() -> LinuxSeccomp {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let arg = |index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator| {
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .value_two(value_two)
            .op(op)
            .build()
            .expect("complete arg")
    };
    let allow = |n: &[&str]| {
        LinuxSyscallBuilder::default()
            .names(names(n))
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .expect("complete syscall")
    };
    let mut syscalls = vec![allow(DEFAULT_ALLOWED)];
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(names(&["clone"]))
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![arg(0, CLONE_NAMESPACE_MASK, 0, LinuxSeccompOperator::ScmpCmpMaskedEq)])
            .build()
            .expect("complete syscall"),
    );
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(names(&["socket"]))
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![arg(0, AF_VSOCK, 0, LinuxSeccompOperator::ScmpCmpNe)])
            .build()
            .expect("complete syscall"),
    );
    for p in PERSONALITIES {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(names(&["personality"]))
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(0, *p, 0, LinuxSeccompOperator::ScmpCmpEq)])
                .build()
                .expect("complete syscall"),
        );
    }
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(names(&["clone3"]))
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()
            .expect("complete syscall"),
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .syscalls(syscalls)
        .build()
        .expect("complete profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_to_a_main_filter_and_an_enosys_filter() {
        let filters = compile(&default_profile()).unwrap();
        assert_eq!(filters.len(), 2, "allow-list filter plus the clone3 ENOSYS filter");
        assert!(filters[0].len() > 300, "every allowed syscall has its own jump");
    }

    #[test]
    fn notify_is_refused_with_the_rule_named() {
        let mut p = default_profile();
        let mut calls = p.syscalls().clone().unwrap();
        calls[0].set_action(LinuxSeccompAction::ScmpActNotify);
        p.set_syscalls(Some(calls));
        let e = compile(&p).unwrap_err();
        assert!(e.contains("syscalls[0].action"), "{e}");
    }

    #[test]
    fn names_of_other_architectures_are_skipped() {
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(vec!["chown32".to_string(), "read".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        assert_eq!(compile(&p).unwrap().len(), 1);
    }
}
