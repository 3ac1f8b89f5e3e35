//! `flotilla-probe`: runs inside a container (built static, std only) and reports what
//! the container looks like from within, one `key=value` per line, for tests to check.
//!
//! - `inspect`: pid, hostname, no_new_privs, seccomp mode, capabilities, open fds,
//!   masked and read-only paths, the root filesystem type, cgroup limits, what
//!   seccomp refuses.
//! - `hog MIB`: allocates and touches MIB mebibytes, 1 MiB at a time (OOM tests).
//! - `serve PORT`: answers each TCP connection with `$POD_NAME` and a newline.

#![forbid(unsafe_code)]

use std::io::{Read, Write};

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// "ok:<bytes>" when a file reads, "err:<kind>" when it does not.
fn try_read(path: &str) -> String {
    match std::fs::File::open(path) {
        Err(e) => format!("err:{}", e.raw_os_error().unwrap_or(0)),
        Ok(mut f) => {
            let mut buf = vec![0u8; 4096];
            match f.read(&mut buf) {
                Ok(n) => format!("ok:{n}"),
                Err(e) => format!("err:{}", e.raw_os_error().unwrap_or(0)),
            }
        }
    }
}

fn try_write(path: &str) -> String {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => "ok".into(),
        Err(e) => format!("err:{}", e.raw_os_error().unwrap_or(0)),
    }
}

fn root_fstype() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // The last mount on "/" is the one in effect.
    info.lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(" - ").nth(1).and_then(|r| r.split(' ').next()).map(str::to_string))
        .unwrap_or_default()
}

fn open_fds() -> String {
    // read_dir holds an fd of its own while listing: leave it out.
    let dir = std::fs::read_dir("/proc/self/fd").map(|d| {
        d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()
    });
    let mut fds: Vec<u32> = dir.unwrap_or_default().iter().filter_map(|s| s.parse().ok()).collect();
    fds.sort();
    // The highest is the directory being read.
    fds.pop();
    fds.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|_| "none".into())
}

fn inspect() {
    let mut out = Vec::new();
    out.push(format!("pid={}", std::process::id()));
    out.push(format!("hostname={}", first_line("/proc/sys/kernel/hostname")));
    for f in [
        "NoNewPrivs",
        "Seccomp",
        "CapEff",
        "CapPrm",
        "CapBnd",
        "CapInh",
        "CapAmb",
        "Uid",
        "Gid",
        "Groups",
    ] {
        out.push(format!("{f}={}", status_field(f)));
    }
    out.push(format!("fds={}", open_fds()));
    for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list"] {
        out.push(format!("read:{p}={}", try_read(p)));
    }
    let entries = std::fs::read_dir("/sys/firmware")
        .map(|d| d.count().to_string())
        .unwrap_or_else(|e| format!("err:{}", e.raw_os_error().unwrap_or(0)));
    out.push(format!("entries:/sys/firmware={entries}"));
    for p in ["/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/bin/busybox"] {
        out.push(format!("write:{p}={}", try_write(p)));
    }
    out.push(format!("rootfs={}", root_fstype()));
    out.push(format!("memory.limit={}", first_line("/sys/fs/cgroup/memory/memory.limit_in_bytes")));
    out.push(format!("memory.max={}", first_line("/sys/fs/cgroup/memory.max")));
    out.push(format!("pids.max={}", first_line("/sys/fs/cgroup/pids/pids.max")));
    out.push(format!("cpu.shares={}", first_line("/sys/fs/cgroup/cpu/cpu.shares")));
    out.push(format!("cpu.cfs_quota_us={}", first_line("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")));
    out.push(format!(
        "cgroup={}",
        std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default().replace('\n', ";")
    ));
    out.push(format!(
        "exe={}",
        std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_default()
    ));
    out.push(format!("env.HOME={}", std::env::var("HOME").unwrap_or_default()));
    out.push(format!(
        "cwd={}",
        std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default()
    ));
    println!("{}", out.join("\n"));
}

fn hog(mib: usize) {
    let mut keep: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        keep.push(vec![1u8; 1 << 20]);
        if i % 16 == 0 {
            println!("allocated {i} MiB");
        }
    }
    println!("allocated {mib} MiB, survived");
}

fn serve(port: u16) {
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".into());
    let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
    for c in l.incoming().flatten() {
        let mut c = c;
        let _ = writeln!(c, "{name}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("inspect") => inspect(),
        Some("hog") => hog(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024)),
        Some("serve") => serve(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8080)),
        _ => {
            eprintln!("usage: flotilla-probe inspect | hog MIB | serve PORT");
            std::process::exit(2);
        }
    }
}
