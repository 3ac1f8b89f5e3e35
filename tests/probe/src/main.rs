//! `flotilla-probe`: runs inside a container (built static, std only) and reports what
//! the container looks like from within, one `key=value` per line, for tests to check.
//!
//! - `inspect`: pid, hostname, no_new_privs, seccomp mode, capabilities, open fds,
//!   masked and read-only paths, the root filesystem type, cgroup limits, what
//!   seccomp refuses.
//! - `hog MIB`: allocates and touches MIB mebibytes, 1 MiB at a time (OOM tests).
//! - `serve PORT`: answers each TCP connection with `$POD_NAME` and a newline.
//! - `echo PORT`, `connect ADDR N`, `udp ADDR N`, `hold ADDR N`: the dataplane tests' servers
//!   and clients (see each function).

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
    // Whitespace collapsed: "0 100000 65536" for one mapping line.
    let words = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "none".into())
    };
    out.push(format!("uid_map={}", words("/proc/self/uid_map")));
    out.push(format!("gid_map={}", words("/proc/self/gid_map")));
    out.push(format!("timens_offsets={}", words("/proc/self/timens_offsets")));
    // Whole seconds since boot as this time namespace sees it.
    out.push(format!("uptime={}", first_line("/proc/uptime").split('.').next().unwrap_or("")));
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
    // cgroup v1 (a directory per controller), else v2 (one directory, the container's).
    let v1 = std::path::Path::new("/sys/fs/cgroup/pids").is_dir();
    let pids = if v1 { "/sys/fs/cgroup/pids/pids.max" } else { "/sys/fs/cgroup/pids.max" };
    out.push(format!("pids.max={}", first_line(pids)));
    out.push(format!("cpu.shares={}", first_line("/sys/fs/cgroup/cpu/cpu.shares")));
    out.push(format!("cpu.cfs_quota_us={}", first_line("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")));
    out.push(format!("cpu.weight={}", first_line("/sys/fs/cgroup/cpu.weight")));
    out.push(format!("cpu.max={}", first_line("/sys/fs/cgroup/cpu.max")));
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

/// `http PORT`: HTTP/1.1 answering `GET /healthz` with 200 while /tmp/healthy exists and
/// 500 otherwise, anything else with 200 and `$POD_NAME`.
fn http(port: u16) {
    use std::io::BufRead;
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".into());
    let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
    println!("http {port}");
    for c in l.incoming().flatten() {
        let mut r = std::io::BufReader::new(c.try_clone().expect("clone"));
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        // Read to the blank line that ends the request head.
        let mut h = String::new();
        while r.read_line(&mut h).is_ok_and(|n| n > 2) {
            h.clear();
        }
        let (code, body) = if path == "/healthz" {
            if std::path::Path::new("/tmp/healthy").exists() {
                (200, "ok")
            } else {
                (500, "unhealthy")
            }
        } else {
            (200, name.as_str())
        };
        let mut c = c;
        let _ = write!(
            c,
            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// TCP and UDP on one port: a TCP connection gets `$POD_NAME` then an echo of each line; a
/// datagram gets `$POD_NAME` back. With `log`, prints each TCP client's address.
fn echo(port: u16, log: bool) {
    use std::io::BufRead;
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".into());
    let udp = std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
    let uname = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(uname.as_bytes(), from);
        }
    });
    let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
    println!("listening {port}");
    for c in l.incoming().flatten() {
        let name = name.clone();
        if log {
            println!("accepted from={}", c.peer_addr().map(|a| a.to_string()).unwrap_or_default());
        }
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut w = match c.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            if writeln!(w, "{name}").is_err() {
                return;
            }
            for line in std::io::BufReader::new(c).lines() {
                match line {
                    Ok(l) if writeln!(w, "{l}").is_ok() => {}
                    _ => return,
                }
            }
        });
    }
}

fn errno_name(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout".into(),
        _ => format!("os{}", e.raw_os_error().unwrap_or(0)),
    }
}

/// `connect ADDR N`: N connections, one line each: `reply=<first line> peer=<getpeername>`,
/// or `error=<kind> ms=<elapsed>`.
fn connect(addr: &str, n: usize) {
    use std::io::BufRead;
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR");
    for _ in 0..n {
        let t = std::time::Instant::now();
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)) {
            Ok(c) => {
                let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(3)));
                let mut line = String::new();
                let _ = std::io::BufReader::new(c).read_line(&mut line);
                println!("reply={} peer={peer}", line.trim());
            }
            Err(e) => println!("error={} ms={}", errno_name(&e), t.elapsed().as_millis()),
        }
    }
}

/// `udp ADDR N`: N datagrams from one unconnected socket: `reply=<name> from=<source>`.
fn udp(addr: &str, n: usize) {
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR");
    let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
    s.set_read_timeout(Some(std::time::Duration::from_secs(2))).expect("timeout");
    let mut buf = [0u8; 1500];
    for _ in 0..n {
        if let Err(e) = s.send_to(b"q", addr) {
            println!("error={}", errno_name(&e));
            continue;
        }
        match s.recv_from(&mut buf) {
            Ok((len, from)) => {
                println!("reply={} from={from}", String::from_utf8_lossy(&buf[..len]))
            }
            Err(e) => println!("error={}", errno_name(&e)),
        }
    }
}

/// `udp-connected ADDR`: one connected UDP socket; for every line on stdin, a request and its
/// reply: `reply=<name> peer=<getpeername>`. A call that fails prints `error=<kind> ` first,
/// then the socket connects again (as a resolver does) and the request is repeated.
fn udp_connected(addr: &str) {
    use std::io::BufRead;
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR");
    let open = || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(std::time::Duration::from_secs(2))).expect("timeout");
        s.connect(addr).expect("connect");
        s
    };
    let ask = |s: &std::net::UdpSocket| -> std::io::Result<String> {
        let mut buf = [0u8; 1500];
        s.send(b"q")?;
        let n = s.recv(&mut buf)?;
        Ok(format!("reply={} peer={}", String::from_utf8_lossy(&buf[..n]), s.peer_addr()?))
    };
    let mut s = open();
    for _ in std::io::stdin().lock().lines() {
        let line = match ask(&s) {
            Ok(l) => l,
            Err(e) => {
                s = open();
                let again = ask(&s).unwrap_or_else(|e| format!("error={}", errno_name(&e)));
                format!("error={} {again}", errno_name(&e))
            }
        };
        println!("{line}");
    }
}

/// `hold ADDR N`: opens N connections, prints `ready`, then round-trips a line on every
/// connection every 50 ms until stdin closes, and prints `alive=A broken=B`.
fn hold(addr: &str, n: usize) {
    use std::io::BufRead;
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR");
    let mut conns = Vec::new();
    for _ in 0..n {
        let c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(std::time::Duration::from_secs(2))).expect("timeout");
        let mut r = std::io::BufReader::new(c.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("greeting");
        conns.push((c, r, true));
    }
    println!("ready");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        d.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut round = 0u64;
    loop {
        let last = done.load(std::sync::atomic::Ordering::SeqCst);
        round += 1;
        for (c, r, ok) in conns.iter_mut().filter(|c| c.2) {
            let mut line = String::new();
            let good = writeln!(c, "ping{round}").is_ok()
                && r.read_line(&mut line).is_ok()
                && line.trim() == format!("ping{round}");
            *ok = good;
        }
        if last {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let alive = conns.iter().filter(|c| c.2).count();
    println!("alive={alive} broken={} rounds={round}", n - alive);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(1);
    match args.get(1).map(String::as_str) {
        Some("echo") => {
            echo(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8080), arg(3) == "log")
        }
        Some("connect") => connect(arg(2), num(3)),
        Some("udp") => udp(arg(2), num(3)),
        Some("hold") => hold(arg(2), num(3)),
        Some("udp-connected") => udp_connected(arg(2)),
        Some("inspect") => inspect(),
        Some("hog") => hog(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024)),
        Some("http") => http(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8080)),
        Some("serve") => serve(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8080)),
        _ => {
            eprintln!(
                "usage: flotilla-probe inspect | hog MIB | serve PORT | echo PORT | connect ADDR N | udp ADDR N | udp-connected ADDR | hold ADDR N"
            );
            std::process::exit(2);
        }
    }
}
