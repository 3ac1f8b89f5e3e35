//! Per-node IP address management, persisted on disk like CNI's host-local plugin: one file per
//! allocated address, created with `O_EXCL`, holding the owner's id. A crash can never hand one
//! address to two pods, and a restarted agent sees exactly what is allocated.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;

#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    net: Ipv4Net,
}

impl Ipam {
    /// Allocates from `net`, skipping the network address, the gateway (first host) and the
    /// broadcast address.
    pub fn open(dir: impl AsRef<Path>, net: Ipv4Net) -> io::Result<Ipam> {
        let dir = dir.as_ref().join(net.to_string().replace('/', "_"));
        fs::create_dir_all(&dir)?;
        Ok(Ipam { dir, net })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.net.hosts().next().unwrap_or(self.net.network())
    }

    /// The address held by `owner`, if any.
    pub fn lookup(&self, owner: &str) -> io::Result<Option<Ipv4Addr>> {
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if fs::read_to_string(e.path()).unwrap_or_default() == owner {
                if let Ok(a) = e.file_name().to_string_lossy().parse() {
                    return Ok(Some(a));
                }
            }
        }
        Ok(None)
    }

    /// Returns `owner`'s address, allocating the lowest free one the first time (idempotent).
    pub fn allocate(&self, owner: &str) -> io::Result<Ipv4Addr> {
        if let Some(a) = self.lookup(owner)? {
            return Ok(a);
        }
        let gw = self.gateway();
        for addr in self.net.hosts().filter(|a| *a != gw) {
            let path = self.dir.join(addr.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())?;
                    f.sync_all()?;
                    return Ok(addr);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("pod CIDR {} has no free address for {owner}", self.net),
        ))
    }

    /// Hands `addr` from `from` to `to` in one step (a crash leaves it with one of them).
    pub fn reassign(&self, addr: Ipv4Addr, from: &str, to: &str) -> io::Result<()> {
        let path = self.dir.join(addr.to_string());
        let held = fs::read_to_string(&path)?;
        if held != from {
            return Err(io::Error::other(format!("{addr} is held by {held:?}, not {from:?}")));
        }
        // Not a parseable address: lookups never see the temporary file.
        let tmp = self.dir.join(format!(".{addr}.new"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(to.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    }

    /// Frees `owner`'s address; freeing twice is fine.
    pub fn release(&self, owner: &str) -> io::Result<Option<Ipv4Addr>> {
        let a = self.lookup(owner)?;
        if let Some(a) = a {
            match fs::remove_file(self.dir.join(a.to_string())) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(a)
    }

    pub fn allocated(&self) -> io::Result<Vec<(Ipv4Addr, String)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if let Ok(a) = e.file_name().to_string_lossy().parse() {
                out.push((a, fs::read_to_string(e.path())?));
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_persist_release() {
        let dir = tempfile::tempdir().unwrap();
        let net: Ipv4Net = "10.244.1.0/29".parse().unwrap();
        let ipam = Ipam::open(dir.path(), net).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        let a = ipam.allocate("pod-a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("pod-a").unwrap(), a, "idempotent");
        // A second instance (a restarted agent) sees the allocation.
        let again = Ipam::open(dir.path(), net).unwrap();
        assert_eq!(again.allocate("pod-b").unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        for p in ["c", "d", "e"] {
            again.allocate(p).unwrap();
        }
        let full = again.allocate("f").unwrap_err();
        assert!(full.to_string().contains("no free address"), "{full}");
        assert_eq!(again.release("pod-a").unwrap(), Some(a));
        assert_eq!(again.release("pod-a").unwrap(), None);
        assert_eq!(again.allocate("f").unwrap(), a, "released addresses are reused");
        assert_eq!(again.allocated().unwrap().len(), 5);
        again.reassign(a, "f", "g").unwrap();
        assert_eq!(again.lookup("g").unwrap(), Some(a));
        assert_eq!(again.lookup("f").unwrap(), None);
        assert!(again.reassign(a, "f", "h").is_err(), "only from its holder");
        assert_eq!(again.allocated().unwrap().len(), 5, "no temporary file listed");
    }
}
