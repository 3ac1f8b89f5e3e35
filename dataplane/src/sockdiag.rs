//! Connected UDP sockets, listed and destroyed through sock_diag (`NETLINK_SOCK_DIAG`, as
//! `ss -K` does). Socket-level load balancing connects a UDP socket to one backend for good;
//! when that backend leaves its service the socket is destroyed (the application's next call
//! fails with ECONNABORTED and it connects again, to a live backend), as Cilium does with
//! `bpf_sock_destroy`.
//!
//! Everything here works on the calling thread's network namespace: run it through
//! [`crate::NetNs::run`] for another one.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// A connected UDP socket is in TCP_ESTABLISHED.
const TCP_ESTABLISHED: u32 = 1;

/// `struct inet_diag_sockid`: ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [[u8; 4]; 4],
    dst: [[u8; 4]; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The head of `struct inet_diag_msg` (family, state, timer, retrans, id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MsgHead {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct NlHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    hdr: NlHdr,
    req: ReqV2,
}

/// One connected IPv4 UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocket {
    id: SockId,
    pub local: SocketAddrV4,
    pub peer: SocketAddrV4,
    /// The socket cookie, as `bpf_get_socket_cookie` returns it.
    pub cookie: u64,
}

fn netlink() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, kind: u16, flags: u16, req: ReqV2) -> io::Result<()> {
    let msg = Request {
        hdr: NlHdr {
            len: std::mem::size_of::<Request>() as u32,
            kind,
            flags: libc::NLM_F_REQUEST as u16 | flags,
            seq: 1,
            pid: 0,
        },
        req,
    };
    // SAFETY: `msg` is plain old data of the size given; the kernel is the destination
    // (an unbound netlink socket sends to pid 0).
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&msg as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads netlink messages until DONE (a dump) or the first ERROR/ACK, handing each payload of
/// another type to `each`.
fn receive(fd: &OwnedFd, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer of the length given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= std::mem::size_of::<NlHdr>() {
            // SAFETY: at least a header's worth of bytes; read_unaligned copes with alignment.
            let hdr: NlHdr = unsafe { std::ptr::read_unaligned(msgs.as_ptr().cast()) };
            let len = hdr.len as usize;
            if len < std::mem::size_of::<NlHdr>() || len > msgs.len() {
                return Err(io::Error::other("sock_diag: truncated netlink message"));
            }
            let payload = &msgs[std::mem::size_of::<NlHdr>()..len];
            match hdr.kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                _ => each(payload),
            }
            // Messages are 4-byte aligned.
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
}

/// Every connected IPv4 UDP socket of this network namespace.
pub fn connected_udp() -> io::Result<Vec<UdpSocket>> {
    let fd = netlink()?;
    let req = ReqV2 {
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states: 1 << TCP_ESTABLISHED,
        ..Default::default()
    };
    send(&fd, SOCK_DIAG_BY_FAMILY, libc::NLM_F_DUMP as u16, req)?;
    let mut out = Vec::new();
    receive(&fd, |payload| {
        if payload.len() < std::mem::size_of::<MsgHead>() {
            return;
        }
        // SAFETY: long enough for the head; read_unaligned copes with alignment.
        let m: MsgHead = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
        let addr =
            |a: [u8; 4], p: [u8; 2]| SocketAddrV4::new(Ipv4Addr::from(a), u16::from_be_bytes(p));
        out.push(UdpSocket {
            id: m.id,
            local: addr(m.id.src[0], m.id.sport),
            peer: addr(m.id.dst[0], m.id.dport),
            cookie: u64::from(m.id.cookie[0]) | u64::from(m.id.cookie[1]) << 32,
        });
    })?;
    Ok(out)
}

/// Destroys `s` (found by its tuple and cookie): its owner's next call fails with
/// ECONNABORTED. A socket already gone is not an error.
pub fn destroy(s: &UdpSocket) -> io::Result<()> {
    let fd = netlink()?;
    let req = ReqV2 {
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states: u32::MAX,
        id: s.id,
        ..Default::default()
    };
    send(&fd, SOCK_DESTROY, libc::NLM_F_ACK as u16, req)?;
    match receive(&fd, |_| {}) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        flotilla_prereq::root("SOCK_DESTROY needs CAP_NET_ADMIN")
    }

    /// A connected socket is listed with its cookie, and destroying it aborts it.
    #[test]
    fn connected_udp_sockets_are_listed_and_destroyed() {
        if !root() {
            return;
        }
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(peer.local_addr().unwrap()).unwrap();
        let local = s.local_addr().unwrap();
        let found: Vec<UdpSocket> = connected_udp()
            .unwrap()
            .into_iter()
            .filter(|u| std::net::SocketAddr::V4(u.local) == local)
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(std::net::SocketAddr::V4(found[0].peer), peer.local_addr().unwrap());
        assert_ne!(found[0].cookie, 0);
        destroy(&found[0]).unwrap();
        let e = s.send(b"x").unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ECONNABORTED) | Some(libc::EDESTADDRREQ)),
            "{e}"
        );
        assert!(!connected_udp().unwrap().iter().any(|u| u.cookie == found[0].cookie));
        // Gone already: fine.
        destroy(&found[0]).unwrap();
    }
}
