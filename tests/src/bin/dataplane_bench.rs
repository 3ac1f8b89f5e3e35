//! `cargo xtask bench dataplane`: Flotilla's eBPF service load balancing against the same
//! services written the way kube-proxy's iptables mode writes them, and against no service at
//! all (the pod IP), in the same run, on the same namespaces, veths, pods and load generator.
//!
//! For each service count (1, 1,000, 10,000 by default) a fresh two-node lab is built
//! (`flotilla_tests::netlab`), with the client pod on node 0 and two backend pods on node 1:
//!
//! - ClusterIP, new connections: a closed-loop load generator in the client pod (inside node 0's
//!   cgroup) opens a connection, sends a line, reads the reply and the server's close, over and
//!   over from several threads. Targets: the pod IP directly; the service's VIP through our socket
//!   programs (with all N services in the maps); the VIP through iptables DNAT rules for N
//!   services in node 0 (our maps emptied). The measured service sits in the middle of the N.
//! - NodePort from a client namespace outside the nodes, to node 0, whose backends are on node 1
//!   (DNAT + SNAT in both implementations): requests/s as above, and small (64-byte) UDP
//!   packets/s received by the backend while the client blasts for the same duration.
//!
//! Prints every figure and the ratios; a lone absolute number on a shared machine proves little.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use flotilla_dataplane::{Backend, Protocol, Selection, Service, ServicePort};
use flotilla_tests::netlab::{Lab, CLIENT_ADDR};
use std::net::Ipv4Addr;

#[derive(Parser)]
struct Args {
    /// Service counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Load generator threads.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Rounds per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Internal: the roles the bench runs inside the lab's namespaces.
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true)]
    role: Vec<String>,
}

const SERVER_PORT: u16 = 8080;
const NODE_PORTS: usize = 2000;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 16 + i as u32)
}

fn node_port(i: usize, measured: usize) -> Option<u16> {
    if i < NODE_PORTS {
        Some(30000 + i as u16)
    } else if i == measured {
        Some(30000 + NODE_PORTS as u16)
    } else {
        None
    }
}

/// Server role: TCP answers a line with `ok` and closes after the client does (the client is
/// the active closer, so TIME_WAIT and its port reuse rules stay on the client, as with real
/// HTTP/1.1 clients); UDP datagrams are echoed.
fn serve(port: u16) -> Result<()> {
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    let tcp = std::net::TcpListener::bind(("0.0.0.0", port))?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async move {
            tcp.set_nonblocking(true).expect("nonblocking");
            let l = tokio::net::TcpListener::from_std(tcp).expect("listener");
            loop {
                let Ok((mut s, _)) = l.accept().await else { continue };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let _ = s.set_nodelay(true);
                    let mut buf = [0u8; 64];
                    let mut got = 0;
                    while got < buf.len() {
                        match s.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                got += n;
                                if buf[..got].contains(&b'\n') {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.write_all(b"ok\n").await;
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
    });
    println!("listening");
    // Serve until the bench closes stdin.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// TCP load role: `threads` closed loops of connect, request, reply, close for `ms`, each
/// connection to one of `addrs` (comma-separated) at random.
fn load_tcp(addrs: &str, ms: u64, threads: usize) -> Result<()> {
    let addrs: Vec<SocketAddr> = addrs.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_millis(ms);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                // Spread over the addresses at random per connection, as a service would.
                let mut seed =
                    0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                let mut lat = Vec::with_capacity(100_000);
                let mut errors = 0u64;
                let mut buf = [0u8; 16];
                while Instant::now() < deadline {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let addr = addrs[(seed % addrs.len() as u64) as usize];
                    let t = Instant::now();
                    let ok = (|| -> std::io::Result<()> {
                        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                        c.set_nodelay(true)?;
                        c.set_read_timeout(Some(Duration::from_secs(2)))?;
                        c.write_all(b"x\n")?;
                        let mut got = 0;
                        while !buf[..got].contains(&b'\n') {
                            match c.read(&mut buf[got..])? {
                                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                                n => got += n,
                            }
                        }
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().expect("load thread");
        lat.extend(l);
        errors += e;
    }
    println!("{}", summary(lat, errors));
    Ok(())
}

/// The load roles' result line: count, errors and latency percentiles (µs), parsed by the
/// bench (`field`).
fn summary(mut lat: Vec<u64>, errors: u64) -> String {
    lat.sort_unstable();
    let sorted: Vec<f64> = lat.iter().map(|&l| l as f64).collect();
    let pct =
        |p: f64| if sorted.is_empty() { 0 } else { flotilla_tests::percentile(&sorted, p) as u64 };
    format!(
        "conns={} errors={errors} p50_us={} p99_us={} p999_us={} max_us={} slow_over_100ms={}",
        lat.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        lat.last().copied().unwrap_or(0),
        lat.iter().filter(|&&l| l > 100_000).count()
    )
}

/// UDP load role: `threads` closed loops of a 64-byte request and its echo for `ms`; a lost
/// datagram costs its thread a 100 ms timeout and counts as an error.
fn load_udp(addr: SocketAddr, ms: u64, threads: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(ms);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<(Vec<u64>, u64)> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(addr)?;
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                let payload = [7u8; 64];
                let mut buf = [0u8; 128];
                let mut lat = Vec::with_capacity(200_000);
                let mut lost = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match s.send(&payload).and_then(|_| s.recv(&mut buf)) {
                        Ok(64) => lat.push(t.elapsed().as_micros() as u64),
                        _ => lost += 1,
                    }
                }
                Ok((lat, lost))
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().expect("udp thread")?;
        lat.extend(l);
        errors += e;
    }
    println!("{}", summary(lat, errors));
    Ok(())
}

/// The MAC address of `ifname` in the calling thread's network namespace.
fn mac_of(ifname: &str) -> Result<[u8; 6]> {
    // SAFETY: a plain socket for the ioctl, closed below; `ifr` is a zeroed ifreq whose name
    // is NUL-terminated (at most 15 bytes copied).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, b) in ifr.ifr_name.iter_mut().zip(ifname.bytes().take(15)) {
            *d = b as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        anyhow::ensure!(r == 0, "SIOCGIFHWADDR {ifname}: {err}");
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(ifr.ifr_ifru.ifru_hwaddr.sa_data.iter()) {
            *m = *b as u8;
        }
        Ok(mac)
    }
}

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet frames of 64-byte UDP datagrams from `flows` source ports of `src` to `dst`.
fn udp_frames(src: (Ipv4Addr, [u8; 6]), dst: (SocketAddr, [u8; 6]), flows: u16) -> Vec<Vec<u8>> {
    let SocketAddr::V4(d) = dst.0 else { return Vec::new() };
    (0..flows)
        .map(|i| {
            let mut f = Vec::with_capacity(14 + 20 + 8 + 64);
            f.extend_from_slice(&dst.1);
            f.extend_from_slice(&src.1);
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20u16 + 8 + 64).to_be_bytes());
            ip[8] = 64;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&src.0.octets());
            ip[16..20].copy_from_slice(&d.ip().octets());
            let c = ip_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&(20000 + i).to_be_bytes());
            f.extend_from_slice(&d.port().to_be_bytes());
            f.extend_from_slice(&(8u16 + 64).to_be_bytes());
            f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
            f.extend_from_slice(&[7u8; 64]);
            f
        })
        .collect()
}

/// Flood role: `threads` senders inject 64-byte UDP datagrams of 256 flows straight into `dev`
/// (AF_PACKET, 64 frames per sendmmsg, bypassing the qdisc) for `ms`, so the sender's own stack
/// costs little and the node under test has to keep up. Args: ADDR MS THREADS SRC_IP DST_MAC DEV.
fn load_flood(
    addr: SocketAddr,
    ms: u64,
    threads: usize,
    src: Ipv4Addr,
    dst_mac: &str,
    dev: &str,
) -> Result<()> {
    let mut dmac = [0u8; 6];
    for (m, h) in dmac.iter_mut().zip(dst_mac.split(':')) {
        *m = u8::from_str_radix(h, 16)?;
    }
    let frames = Arc::new(udp_frames((src, mac_of(dev)?), (addr, dmac), 256));
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(ifindex != 0, "no {dev}: {}", std::io::Error::last_os_error());
    let deadline = Instant::now() + Duration::from_millis(ms);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let frames = frames.clone();
            std::thread::spawn(move || -> std::io::Result<u64> {
                pin_to_cpu(0);
                // SAFETY: raw socket calls on a socket this thread owns, with buffers (frames,
                // iovecs, msghdrs, sockaddr_ll) that outlive every call; closed at the end.
                unsafe {
                    let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        fd,
                        libc::SOL_PACKET,
                        libc::PACKET_QDISC_BYPASS,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_ifindex = ifindex as i32;
                    sll.sll_halen = 6;
                    const BATCH: usize = 64;
                    let mut iov: Vec<libc::iovec> = (0..BATCH)
                        .map(|i| {
                            let f = &frames[(t * BATCH + i) % frames.len()];
                            libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() }
                        })
                        .collect();
                    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
                        .map(|i| {
                            let mut m: libc::mmsghdr = std::mem::zeroed();
                            m.msg_hdr.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
                            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                            m.msg_hdr.msg_iov = &mut iov[i];
                            m.msg_hdr.msg_iovlen = 1;
                            m
                        })
                        .collect();
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0);
                        if n > 0 {
                            sent += n as u64;
                        }
                    }
                    libc::close(fd);
                    Ok(sent)
                }
            })
        })
        .collect();
    let mut sent = 0;
    for h in handles {
        sent += h.join().expect("flood thread")?;
    }
    println!("sent={sent}");
    Ok(())
}

/// Pins the calling thread to `cpu` (best effort: a one-CPU machine keeps its mask).
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// RPS role: steers `dev`'s received packets to the CPUs in `mask` (hex), in the network
/// namespace this process was started in. sysfs shows the namespace of whoever mounts it,
/// so a private mount namespace gets its own sysfs first. Args: DEV MASK.
fn set_rps(dev: &str, mask: &str) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
    mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>)?;
    let path = format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus");
    std::fs::write(&path, mask).with_context(|| format!("writing {path}"))?;
    println!("rps={mask}");
    Ok(())
}

fn role(args: &[String]) -> Result<()> {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match a(0) {
        "serve" => serve(a(1).parse()?),
        "tcp" => load_tcp(a(1), a(2).parse()?, a(3).parse()?),
        "udp" => load_udp(a(1).parse()?, a(2).parse()?, a(3).parse()?),
        "rps" => set_rps(a(1), a(2)),
        "flood" => {
            load_flood(a(1).parse()?, a(2).parse()?, a(3).parse()?, a(4).parse()?, a(5), a(6))
        }
        other => bail!("unknown role {other:?}"),
    }
}

struct Tcp {
    rate: f64,
    p50: u64,
    p99: u64,
    errors: u64,
}

fn field(line: &str, key: &str) -> Result<u64> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .with_context(|| format!("no {key} in {line:?}"))?
        .parse()
        .with_context(|| format!("{key} in {line:?}"))
}

struct Bench {
    lab: Lab,
    exe: std::path::PathBuf,
    ms: u64,
    threads: usize,
    client_pod: flotilla_dataplane::PodNetwork,
    backends: Vec<flotilla_dataplane::PodNetwork>,
    _servers: Vec<usize>,
}

impl Bench {
    /// Runs load role `role` ("tcp" or "udp") against `target`, from the client pod (inside
    /// node 0's cgroup) or from the outside client namespace.
    fn load(&mut self, role: &str, target: &str, from_pod: bool) -> Result<Tcp> {
        let (ns, cg) = if from_pod {
            (self.client_pod.netns.clone(), Some(self.lab.nodes[0].cgroup.clone()))
        } else {
            (self.lab.client.clone(), None)
        };
        let args = ["--role", role, target, &self.ms.to_string(), &self.threads.to_string()];
        let c = self.lab.spawn_exe(&self.exe, &ns, cg.as_deref(), "load", &args)?;
        Self::tcp_result(self.lab.finish(c)?, self.ms)
    }

    /// Closed-loop TCP load from the client pod to `addrs` (comma-separated, one picked at
    /// random per connection).
    fn tcp_from_pod(&mut self, addrs: &str) -> Result<Tcp> {
        self.load("tcp", addrs, true)
    }

    fn tcp_from_outside(&mut self, addr: SocketAddr) -> Result<Tcp> {
        self.load("tcp", &addr.to_string(), false)
    }

    fn udp_from_outside(&mut self, addr: SocketAddr) -> Result<Tcp> {
        self.load("udp", &addr.to_string(), false)
    }

    fn tcp_result(out: Vec<String>, ms: u64) -> Result<Tcp> {
        let line = out.last().context("no output from the load generator")?;
        if std::env::var_os("FLOTILLA_BENCH_DEBUG").is_some() {
            eprintln!("{line}");
        }
        Ok(Tcp {
            rate: field(line, "conns")? as f64 / (ms as f64 / 1000.0),
            p50: field(line, "p50_us")?,
            p99: field(line, "p99_us")?,
            errors: field(line, "errors")?,
        })
    }

    /// Steers node 0's eth0 receive processing to the CPUs in `mask` ("0": off).
    fn node0_rps(&mut self, mask: &str) -> Result<()> {
        let node0 = self.lab.nodes[0].netns.clone();
        let c =
            self.lab.spawn_exe(&self.exe, &node0, None, "rps", &["--role", "rps", "eth0", mask])?;
        self.lab.finish(c)?;
        Ok(())
    }

    /// Packets/s node 0 forwards: the outside client's 64-byte datagrams to `addr` are injected
    /// on the LAN bridge's port in front of node 0 (sending through the client's veth and the
    /// bridge cost the sending core more than node 0 spends on them), and what node 0 sends
    /// back out of eth0 is counted and dropped as it arrives on that same port (so the bridge
    /// and node 1 spend nothing on them and the forwarding core works for node 0 alone).
    fn flood_from_outside(&mut self, addr: SocketAddr) -> Result<Flood> {
        let ns = self.lab.lan();
        let sink = flotilla_dataplane::NetNs::open(&ns)?.run(|| ipv4_sink("n0"))??;
        let before = rx_packets(&ns, "n0")?;
        let node0 = flotilla_dataplane::NetNs::open(&self.lab.nodes[0].netns)?;
        let mac = node0.run(|| mac_of("eth0"))??;
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let src = CLIENT_ADDR.to_string();
        // The senders run on CPU 0 and node 0 receives on CPU 1 (RPS on its eth0), so the
        // figure is what the node forwards on one core, not what the generator and the node
        // manage together: with both on every core, the generator's own cost dilutes the
        // difference between forwarding paths.
        let split = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        if split {
            self.node0_rps("2")?;
        }
        let ms = self.ms.to_string();
        let args = ["--role", "flood", &addr.to_string(), &ms, "2", &src, &mac, "n0"];
        let busy_before = if split { cpu_busy(1)? } else { 0.0 };
        let c = self.lab.spawn_exe(&self.exe, &ns, None, "load", &args)?;
        let out = self.lab.finish(c);
        std::thread::sleep(Duration::from_millis(100));
        let busy = if split { Some(cpu_busy(1)? - busy_before) } else { None };
        if split {
            self.node0_rps("0")?;
        }
        let out = out?;
        let forwarded = rx_packets(&ns, "n0")? - before;
        drop(sink);
        let sent = field(out.last().context("flood output")?, "sent")?;
        let secs = self.ms as f64 / 1000.0;
        Ok(Flood {
            forwarded: forwarded as f64 / secs,
            sent: sent as f64 / secs,
            busy: busy.map(|b| (b / secs).min(1.0)),
            per_core: busy.filter(|&b| b > 0.0).map(|b| forwarded as f64 / b),
        })
    }
}

/// Seconds CPU `cpu` has spent busy (user, nice, system, irq, softirq; not idle, iowait or
/// steal, which are time it could not or did not need to work) since boot, from /proc/stat.
fn cpu_busy(cpu: usize) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    anyhow::ensure!(f.len() >= 7, "short {name} line in /proc/stat: {line:?}");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((f[0] + f[1] + f[2] + f[5] + f[6]) as f64 / hz)
}

fn services(n: usize, measured: usize, backends: &[(Ipv4Addr, u16)]) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            name: format!("bench/svc-{i}"),
            cluster_ip: vip(i),
            ports: vec![
                ServicePort {
                    name: "tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: node_port(i, measured),
                    backends: backends.iter().map(|&(a, p)| Backend::new(a, p)).collect(),
                },
                ServicePort {
                    name: "udp".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: node_port(i, measured),
                    backends: backends.iter().map(|&(a, p)| Backend::new(a, p)).collect(),
                },
            ],
            affinity_timeout: None,
            selection: Selection::Random,
        })
        .collect()
}

/// The rules kube-proxy's iptables mode writes for these services (KUBE-SERVICES → KUBE-SVC-*
/// with statistic-mode random probabilities → KUBE-SEP-* DNAT; NodePorts through KUBE-NODEPORTS
/// and KUBE-EXT-*, marked for masquerading in KUBE-POSTROUTING), as one iptables-restore input.
fn kube_proxy_rules(svcs: &[Service]) -> String {
    let mut chains = vec![
        ":KUBE-SERVICES - [0:0]".to_string(),
        ":KUBE-NODEPORTS - [0:0]".into(),
        ":KUBE-POSTROUTING - [0:0]".into(),
        ":KUBE-MARK-MASQ - [0:0]".into(),
    ];
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            .to_string(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".into(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into(),
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully".into(),
    ];
    let mut nodeports = Vec::new();
    for (i, s) in svcs.iter().enumerate() {
        for (j, p) in s.ports.iter().enumerate() {
            let proto = if p.protocol == Protocol::Tcp { "tcp" } else { "udp" };
            let svc = format!("KUBE-SVC-{i:08X}{j:08X}");
            chains.push(format!(":{svc} - [0:0]"));
            rules.push(format!(
                "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"{}:{} cluster IP\" -m {proto} --dport {} -j {svc}",
                s.cluster_ip, s.name, p.name, p.port
            ));
            rules.push(format!(
                "-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p {proto} -m {proto} --dport {} -j KUBE-MARK-MASQ",
                s.cluster_ip, p.port
            ));
            let n = p.backends.len();
            for (k, b) in p.backends.iter().enumerate() {
                let sep = format!("KUBE-SEP-{i:06X}{j:02X}{k:08X}");
                chains.push(format!(":{sep} - [0:0]"));
                if k + 1 < n {
                    rules.push(format!(
                        "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                        1.0 / (n - k) as f64
                    ));
                } else {
                    rules.push(format!("-A {svc} -j {sep}"));
                }
                rules.push(format!("-A {sep} -s {}/32 -j KUBE-MARK-MASQ", b.addr));
                rules.push(format!(
                    "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {}:{}",
                    b.addr, b.port
                ));
            }
            if let Some(np) = p.node_port {
                let ext = format!("KUBE-EXT-{i:08X}{j:08X}");
                chains.push(format!(":{ext} - [0:0]"));
                nodeports
                    .push(format!("-A KUBE-NODEPORTS -p {proto} -m {proto} --dport {np} -j {ext}"));
                rules.push(format!("-A {ext} -j KUBE-MARK-MASQ"));
                rules.push(format!("-A {ext} -j {svc}"));
            }
        }
    }
    rules.extend(nodeports);
    rules.push(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
            .into(),
    );
    format!("*nat\n{}\n{}\nCOMMIT\n", chains.join("\n"), rules.join("\n"))
}

/// Attaches a tc ingress program to `dev` (in the calling thread's network namespace) that
/// drops IPv4 and passes the rest, so ARP still flows. It is five instructions loaded with
/// bpf(2) rather than a tc action (these kernels have no cls_matchall or act_gact), attached
/// as a tcx link: closing the returned fd, or the process ending, detaches it.
fn ipv4_sink(dev: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    #[repr(C)]
    struct Insn {
        code: u8,
        regs: u8, // dst in the low nibble, src in the high one
        off: i16,
        imm: i32,
    }
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
    }
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_INGRESS: u32 = 46;
    let insns = [
        // r2 = skb->protocol (network byte order)
        Insn { code: 0x61, regs: 0x12, off: 16, imm: 0 },
        // r0 = TC_ACT_OK
        Insn { code: 0xb7, regs: 0x00, off: 0, imm: 0 },
        // if r2 != htons(ETH_P_IP) goto exit
        Insn { code: 0x55, regs: 0x02, off: 1, imm: 0x0008 },
        // r0 = TC_ACT_SHOT
        Insn { code: 0xb7, regs: 0x00, off: 0, imm: 2 },
        // exit
        Insn { code: 0x95, regs: 0, off: 0, imm: 0 },
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) with an attr that points at live buffers (instructions, license, log).
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &load, std::mem::size_of::<ProgLoad>())
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let log = String::from_utf8_lossy(&log);
        bail!("loading the sink program: {err}: {}", log.trim_end_matches('\0'));
    }
    // SAFETY: a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(ifindex != 0, "no {dev}: {}", std::io::Error::last_os_error());
    let link = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        flags: 0,
    };
    // SAFETY: bpf(2) with an attr on the stack.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, &link, std::mem::size_of::<LinkCreate>())
    };
    anyhow::ensure!(
        fd >= 0,
        "attaching the sink program to {dev}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd that nothing else owns; the link keeps the program.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Packets received on `dev` in a namespace.
fn rx_packets(netns: &std::path::Path, dev: &str) -> Result<u64> {
    let stats = flotilla_dataplane::NetNs::open(netns)?
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
    let prefix = format!("{dev}:");
    let line = stats
        .lines()
        .find(|l| l.trim_start().starts_with(&prefix))
        .with_context(|| format!("no {dev}"))?;
    let fields: Vec<&str> =
        line.split(':').nth(1).context("dev line")?.split_whitespace().collect();
    Ok(fields.get(1).context("rx packets")?.parse()?)
}

fn iptables_restore(netns: &std::path::Path, rules: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["iptables-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running iptables-restore (apt-get install iptables)")?;
    child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("iptables-restore failed: {status}");
    }
    Ok(t.elapsed())
}

struct Row {
    n: usize,
    direct: Tcp,
    ebpf: Tcp,
    /// The pod-IP baseline measured in the iptables phase.
    direct_ipt: Tcp,
    ipt: Tcp,
    np_ebpf: Tcp,
    np_ipt: Tcp,
    udp_ebpf: Tcp,
    udp_ipt: Tcp,
    flood_plain: Flood,
    flood_ebpf: Flood,
    flood_ipt: Flood,
    program_ebpf: Duration,
    program_ipt: Duration,
}

/// One NodePort flood: packets/s node 0 forwarded and packets/s the client sent; the share of
/// the flood the forwarding core was busy, and packets forwarded per second of its busy time
/// (what it forwards when fully busy). The last two are None without a core to itself.
#[derive(Clone, Copy)]
struct Flood {
    forwarded: f64,
    sent: f64,
    busy: Option<f64>,
    per_core: Option<f64>,
}

/// The run with the median rate, with the median per-core rate (of its own, not that run's).
fn median_flood(mut runs: Vec<Flood>) -> Flood {
    let mut per_core: Vec<f64> = runs.iter().filter_map(|f| f.per_core).collect();
    per_core.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.forwarded.total_cmp(&b.forwarded));
    let per_core = (per_core.len() == runs.len()).then(|| per_core[per_core.len() / 2]);
    Flood { per_core, ..runs[runs.len() / 2] }
}

fn median(mut runs: Vec<Tcp>) -> Tcp {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

async fn measure(args: &Args, n: usize) -> Result<Row> {
    let mut lab = Lab::new(&format!("bench{n}"), 2).await?;
    lab.start_lb(0)?;
    let client_pod = lab.pod(0, "client").await?;
    let b0 = lab.pod(1, "backend-0").await?;
    let b1 = lab.pod(1, "backend-1").await?;
    let exe = std::env::current_exe()?;
    let mut servers = Vec::new();
    for b in [&b0, &b1] {
        let s = lab.spawn_exe(
            &exe,
            &b.netns,
            None,
            "backend",
            &["--role", "serve", &SERVER_PORT.to_string()],
        )?;
        let line = lab.read_line(s)?;
        anyhow::ensure!(line == "listening", "backend server: {line:?}");
        servers.push(s);
    }
    // The clients' ports: closed-loop connections from one address reuse them quickly.
    for ns in [&client_pod.netns, &lab.client] {
        flotilla_dataplane::NetNs::open(ns)?.run(|| -> std::io::Result<()> {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000")?;
            std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
        })??;
    }
    let backends = [(b0.ip, SERVER_PORT), (b1.ip, SERVER_PORT)];
    let measured = n / 2;
    let svcs = services(n, measured, &backends);
    let t = Instant::now();
    lab.lb(0).sync(&svcs)?;
    let program_ebpf = t.elapsed();
    let node0 = lab.nodes[0].addr;
    let np = node_port(measured, measured).context("measured service has a NodePort")?;
    let nodeport = SocketAddr::from((node0, np));
    let mut bench = Bench {
        lab,
        exe,
        ms: (args.seconds * 1000.0) as u64,
        threads: args.concurrency,
        client_pod,
        backends: vec![b0.clone(), b1.clone()],
        _servers: servers,
    };
    let service = format!("{}:80", vip(measured));
    // Both backends, picked at random per connection like the service does.
    let pods =
        format!("{}:{SERVER_PORT},{}:{SERVER_PORT}", bench.backends[0].ip, bench.backends[1].ip);
    let _ = bench.tcp_from_pod(&service)?; // warm caches, ARP, code paths
    let (mut direct, mut ebpf, mut np_ebpf, mut udp_ebpf) = (vec![], vec![], vec![], vec![]);
    let mut flood_ebpf = vec![];
    let mut flood_plain = vec![];
    // The outside client can reach pod IPs through node 0 for the plain-forwarding baseline.
    let outside = flotilla_dataplane::NetNs::open(&bench.lab.client)?;
    flotilla_dataplane::net::add_route(&outside, "10.244.0.0/16".parse()?, node0).await?;
    let pod_addr = SocketAddr::from((bench.backends[0].ip, SERVER_PORT));
    for _ in 0..args.rounds {
        flood_plain.push(bench.flood_from_outside(pod_addr)?);
        direct.push(bench.tcp_from_pod(&pods)?);
        ebpf.push(bench.tcp_from_pod(&service)?);
        np_ebpf.push(bench.tcp_from_outside(nodeport)?);
        udp_ebpf.push(bench.udp_from_outside(nodeport)?);
        flood_ebpf.push(bench.flood_from_outside(nodeport)?);
    }

    // The same services, kube-proxy style, on the same node with our programs detached and
    // maps gone (a node runs one or the other; leftover flow state would be unfair to both).
    if let Some(lb) = bench.lab.nodes[0].lb.take() {
        lb.teardown()?;
    }
    let node_ns = bench.lab.nodes[0].netns.clone();
    let program_ipt = iptables_restore(&node_ns, &kube_proxy_rules(&svcs))?;
    let _ = bench.tcp_from_pod(&service)?;
    let (mut direct_ipt, mut ipt, mut np_ipt, mut udp_ipt) = (vec![], vec![], vec![], vec![]);
    let mut flood_ipt = vec![];
    for _ in 0..args.rounds {
        direct_ipt.push(bench.tcp_from_pod(&pods)?);
        ipt.push(bench.tcp_from_pod(&service)?);
        np_ipt.push(bench.tcp_from_outside(nodeport)?);
        udp_ipt.push(bench.udp_from_outside(nodeport)?);
        flood_ipt.push(bench.flood_from_outside(nodeport)?);
    }
    Ok(Row {
        n,
        direct: median(direct),
        ebpf: median(ebpf),
        direct_ipt: median(direct_ipt),
        ipt: median(ipt),
        np_ebpf: median(np_ebpf),
        np_ipt: median(np_ipt),
        udp_ebpf: median(udp_ebpf),
        udp_ipt: median(udp_ipt),
        flood_plain: median_flood(flood_plain),
        flood_ebpf: median_flood(flood_ebpf),
        flood_ipt: median_flood(flood_ipt),
        program_ebpf,
        program_ipt,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.role.is_empty() {
        return role(&args.role);
    }
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the dataplane benchmark needs root");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ipt_version = std::process::Command::new("iptables").arg("--version").output()?;
    println!(
        "dataplane benchmark: {} s per figure, {} load threads, {}; client pod on node 0, backends on node 1; outside client {CLIENT_ADDR}",
        args.seconds,
        args.concurrency,
        String::from_utf8_lossy(&ipt_version.stdout).trim()
    );
    let mut rows = Vec::new();
    for &n in &args.services {
        let row = rt.block_on(measure(&args, n))?;
        eprintln!("measured {n} services");
        rows.push(row);
    }
    println!();
    println!("ClusterIP: new connections per second (connect, request, reply, close) and latency per connection");
    println!(
        "{:>8} | {:>22} | {:>22} | {:>22} | {:>22} | {:>11} | {:>12} | {:>13}",
        "services",
        "pod IP conn/s p50/p99",
        "eBPF conn/s p50/p99",
        "pod IP (2nd phase)",
        "iptables conn/s p50/p99",
        "eBPF/pod IP",
        "iptables/pod",
        "eBPF/iptables"
    );
    let cell = |t: &Tcp| {
        let e = if t.errors > 0 { format!(" ({} err)", t.errors) } else { String::new() };
        format!("{:>8.0} {:>5}/{:<6}{e}", t.rate, t.p50, t.p99)
    };
    for r in &rows {
        println!(
            "{:>8} | {:>22} | {:>22} | {:>22} | {:>22} | {:>10.3}x | {:>11.3}x | {:>12.2}x",
            r.n,
            cell(&r.direct),
            cell(&r.ebpf),
            cell(&r.direct_ipt),
            cell(&r.ipt),
            r.ebpf.rate / r.direct.rate,
            r.ipt.rate / r.direct_ipt.rate,
            r.ebpf.rate / r.ipt.rate
        );
    }
    println!(
        "(latencies in µs; medians of {} rounds; the second pod-IP baseline runs with the iptables rules \
         loaded, so it pays for the connection tracking kube-proxy's rules turn on for all traffic)",
        args.rounds
    );
    println!();
    println!(
        "NodePort from outside to node 0, backends on node 1 (DNAT + SNAT): TCP requests/s (new connection each), \
         64-byte UDP request/replies/s (2 translated packets each)"
    );
    println!(
        "{:>8} | {:>22} | {:>22} | {:>7} | {:>22} | {:>22} | {:>7}",
        "services",
        "tc TCP req/s p50/p99",
        "iptables TCP req/s",
        "ratio",
        "tc UDP rr/s p50/p99",
        "iptables UDP rr/s",
        "ratio"
    );
    for r in &rows {
        println!(
            "{:>8} | {:>22} | {:>22} | {:>6.2}x | {:>22} | {:>22} | {:>6.2}x",
            r.n,
            cell(&r.np_ebpf),
            cell(&r.np_ipt),
            r.np_ebpf.rate / r.np_ipt.rate,
            cell(&r.udp_ebpf),
            cell(&r.udp_ipt),
            r.udp_ebpf.rate / r.udp_ipt.rate,
        );
    }
    println!();
    println!(
        "NodePort forwarding: 64-byte UDP packets/s (256 flows) node 0 translates and forwards to node 1; \
         the outside client's frames are injected with AF_PACKET from CPU 0 on the LAN port in front of node 0, \
         node 0 receives on CPU 1 (RPS), and what it sends back out is counted and dropped on arrival at that \
         port, so CPU 1 works for node 0 alone: the figure is one core's forwarding rate. In brackets: how busy \
         CPU 1 was during the flood"
    );
    println!(
        "{:>8} | {:>18} | {:>18} | {:>18} | {:>7} | {:>8}",
        "services", "to pod IP, no NAT", "tc/eBPF pps", "iptables pps", "ratio", "tc/plain"
    );
    let cell = |f: Flood| match f.busy {
        Some(b) => format!("{:>9.0} ({:>3.0}%)", f.forwarded, b * 100.0),
        None => format!("{:>9.0}", f.forwarded),
    };
    for r in &rows {
        let (p, e, i) = (r.flood_plain, r.flood_ebpf, r.flood_ipt);
        println!(
            "{:>8} | {:>18} | {:>18} | {:>18} | {:>6.2}x | {:>7.2}x",
            r.n,
            cell(p),
            cell(e),
            cell(i),
            e.forwarded / i.forwarded,
            e.forwarded / p.forwarded
        );
    }
    // The sender blocks on its socket buffer, whose frames are released only as CPU 1 processes
    // them (CPU 0 idles during a slow path's flood), so a slow path slows the sender too: "all
    // that was sent arrived" says nothing about who set the pace; the core's idle time does.
    let floods = rows.iter().flat_map(|r| [r.flood_plain, r.flood_ebpf, r.flood_ipt]);
    if floods.clone().any(|f| f.busy.is_some_and(|b| b < 0.9)) {
        println!(
            "(a figure whose core was under 90% busy was held back by the sender: it is a lower bound)"
        );
    }
    let lost = floods.map(|f| 1.0 - f.forwarded / f.sent).fold(0.0, f64::max);
    if lost > 0.01 {
        println!("(up to {:.0}% of the packets sent were lost on the way)", lost * 100.0);
    }
    if rows.iter().all(|r| r.flood_ebpf.per_core.is_some() && r.flood_ipt.per_core.is_some()) {
        println!();
        println!(
            "NodePort forwarding per core: the same floods' packets forwarded per second CPU 1 was busy \
             (user+system+irq+softirq in /proc/stat, which also counts anything else that ran there), i.e. a \
             fully busy core's rate, whoever set the pace"
        );
        println!(
            "{:>8} | {:>17} | {:>17} | {:>17} | {:>7}",
            "services", "to pod IP, no NAT", "tc/eBPF pps/core", "iptables pps/core", "ratio"
        );
        let per = |f: Flood| f.per_core.unwrap_or(f64::NAN);
        for r in &rows {
            println!(
                "{:>8} | {:>17.0} | {:>17.0} | {:>17.0} | {:>6.2}x",
                r.n,
                per(r.flood_plain),
                per(r.flood_ebpf),
                per(r.flood_ipt),
                per(r.flood_ebpf) / per(r.flood_ipt)
            );
        }
    }
    println!();
    println!("Programming all services: eBPF maps vs iptables-restore");
    for r in &rows {
        println!(
            "{:>8} services: eBPF {:>9.1} ms, iptables-restore {:>9.1} ms",
            r.n,
            r.program_ebpf.as_secs_f64() * 1000.0,
            r.program_ipt.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
