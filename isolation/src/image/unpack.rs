//! Unpacking one layer into its own directory, confined to it.
//!
//! Every parent directory is resolved with `openat2(RESOLVE_IN_ROOT)` against the layer
//! directory, so symlinks in the layer (absolute, relative, chained) resolve as if the
//! layer were `/` and never lead outside it. The entry itself is created relative to its
//! parent's fd with `*at` calls that do not follow a final symlink. Names with `..` are
//! refused, absolute names are taken relative to the layer, hardlink targets are resolved
//! the same confined way, device nodes are refused and setuid/setgid bits dropped unless
//! the options allow them.
//!
//! Whiteouts become overlayfs whiteouts (a 0/0 character device) and `.wh..wh..opq`
//! marks its directory opaque (`trusted.overlay.opaque=y`), so the layers stack as
//! overlay lower directories.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, mknodat, Mode, SFlag};
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// What unpacking allows beyond the safe default.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackOptions {
    /// Create character and block devices found in the layer.
    pub allow_devices: bool,
    /// Keep setuid and setgid bits.
    pub keep_setid: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

/// A refused or failed entry.
#[derive(Debug, thiserror::Error)]
#[error("entry {path:?}: {reason}")]
pub struct EntryError {
    pub path: String,
    pub reason: String,
}

fn refuse(path: &[u8], reason: impl Into<String>) -> EntryError {
    EntryError { path: String::from_utf8_lossy(path).into_owned(), reason: reason.into() }
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Splits an entry name into its components: leading `/` and `.` dropped, `..` refused.
pub fn components(name: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("name holds '..', which could leave the layer".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

fn cstr(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| "name holds a NUL byte".to_string())
}

/// Opens `path` (components) below `root` as a directory, resolving inside `root`;
/// creates missing directories on the way when `create`.
fn open_dir(root: &OwnedFd, parts: &[&[u8]], create: bool) -> Result<OwnedFd, String> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let open = |p: &[u8]| -> nix::Result<OwnedFd> {
        let p = if p.is_empty() { b".".to_vec() } else { p.to_vec() };
        let c = CString::new(p).map_err(|_| nix::Error::EINVAL)?;
        // SAFETY: openat2 returned a new fd that nothing else owns.
        openat2(root.as_raw_fd(), c.as_c_str(), how()).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    };
    match open(&join(parts)) {
        Ok(fd) => return Ok(fd),
        Err(nix::Error::ENOENT) if create => {}
        Err(nix::Error::ENOTDIR) => {
            return Err(format!("{} is not a directory", String::from_utf8_lossy(&join(parts))))
        }
        Err(e) => return Err(format!("opening {}: {e}", String::from_utf8_lossy(&join(parts)))),
    }
    let mut cur = open(b"").map_err(|e| format!("opening layer root: {e}"))?;
    for (i, part) in parts.iter().enumerate() {
        match open(&join(&parts[..=i])) {
            Ok(fd) => cur = fd,
            Err(nix::Error::ENOENT) => {
                let c = cstr(part)?;
                match mkdirat(Some(cur.as_raw_fd()), c.as_c_str(), Mode::from_bits_truncate(0o755))
                {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => {
                        return Err(format!(
                            "creating {}: {e}",
                            String::from_utf8_lossy(&join(&parts[..=i]))
                        ))
                    }
                }
                // Re-resolve from the root: `part` may have been a dangling symlink.
                cur = open(&join(&parts[..=i])).map_err(|e| {
                    format!("opening {}: {e}", String::from_utf8_lossy(&join(&parts[..=i])))
                })?;
            }
            Err(e) => {
                return Err(format!(
                    "opening {}: {e}",
                    String::from_utf8_lossy(&join(&parts[..=i]))
                ))
            }
        }
    }
    Ok(cur)
}

/// Removes whatever is at `name` in `dir` (a directory recursively), never following it.
fn remove_existing(dir: &OwnedFd, name: &CString) -> Result<(), String> {
    match unlinkat(Some(dir.as_raw_fd()), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EISDIR) => {
            // Through /proc/self/fd the path is the directory's real one, inside the layer.
            let p = format!("/proc/self/fd/{}", dir.as_raw_fd());
            let real = std::fs::read_link(&p).map_err(|e| e.to_string())?;
            std::fs::remove_dir_all(real.join(std::ffi::OsStr::from_bytes(name.as_bytes())))
                .map_err(|e| format!("replacing a directory: {e}"))
        }
        Err(e) => Err(format!("removing old entry: {e}")),
    }
}

fn is_dir_at(dir: &OwnedFd, name: &CString) -> bool {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR)
}

fn set_xattr(fd: RawFd, name: &str, value: &[u8]) -> Result<(), String> {
    let n = CString::new(name).expect("static name");
    let path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    // SAFETY: both strings are NUL-terminated and value is a valid slice for its length.
    let r =
        unsafe { libc::setxattr(path.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        return Err(format!("setting {name}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Unpacks a tar stream (already decompressed) into `dest`, an empty directory.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    opts: UnpackOptions,
) -> Result<UnpackStats, EntryError> {
    let root_fd = nix::fcntl::open(
        dest,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| refuse(dest.as_os_str().as_bytes(), format!("opening layer dir: {e}")))?;
    // SAFETY: open returned a new fd that nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let mut archive = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    let entries = archive.entries().map_err(|e| refuse(b"", format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(b"", format!("reading tar: {e}")))?;
        let name = entry.path_bytes().into_owned();
        stats.entries += 1;
        unpack_entry(&root, &mut entry, &name, opts, &mut stats).map_err(|r| refuse(&name, r))?;
    }
    Ok(stats)
}

fn unpack_entry<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    name: &[u8],
    opts: UnpackOptions,
    stats: &mut UnpackStats,
) -> Result<(), String> {
    let parts = components(name)?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(()); // the layer root itself: nothing to create
    };
    let kind = entry.header().entry_type();
    let parent = open_dir(root, parents, true)?;

    if last.starts_with(WHITEOUT_PREFIX) {
        stats.whiteouts += 1;
        if *last == OPAQUE {
            return set_xattr(parent.as_raw_fd(), "trusted.overlay.opaque", b"y");
        }
        let target = &last[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." || target.starts_with(b".wh.") {
            return Err("whiteout names no file".into());
        }
        let t = cstr(target)?;
        remove_existing(&parent, &t)?;
        return mknodat(Some(parent.as_raw_fd()), t.as_c_str(), SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| format!("creating whiteout: {e}"));
    }

    let c = cstr(last)?;
    let header = entry.header();
    let mut mode = header.mode().map_err(|e| e.to_string())? & 0o7777;
    if !opts.keep_setid {
        mode &= !0o6000;
    }
    let uid = header.uid().map_err(|e| e.to_string())? as u32;
    let gid = header.gid().map_err(|e| e.to_string())? as u32;
    let perm = Mode::from_bits_truncate(mode);

    use tar::EntryType as T;
    match kind {
        T::Directory => {
            if !is_dir_at(&parent, &c) {
                remove_existing(&parent, &c)?;
                mkdirat(Some(parent.as_raw_fd()), c.as_c_str(), perm)
                    .map_err(|e| format!("mkdir: {e}"))?;
            }
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            remove_existing(&parent, &c)?;
            let fd = nix::fcntl::openat(
                Some(parent.as_raw_fd()),
                c.as_c_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| format!("create: {e}"))?;
            // SAFETY: openat returned a new fd that nothing else owns.
            let mut f = unsafe { File::from_raw_fd(fd) };
            stats.bytes += io::copy(entry, &mut f).map_err(|e| format!("writing: {e}"))?;
        }
        T::Symlink => {
            let target = entry.link_name_bytes().ok_or("symlink without a target")?.into_owned();
            remove_existing(&parent, &c)?;
            // The target is stored as is: it resolves inside the container's root at run
            // time and inside the layer (RESOLVE_IN_ROOT) while unpacking.
            symlinkat(cstr(&target)?.as_c_str(), Some(parent.as_raw_fd()), c.as_c_str())
                .map_err(|e| format!("symlink: {e}"))?;
        }
        T::Link => {
            let target = entry.link_name_bytes().ok_or("hardlink without a target")?.into_owned();
            let tparts = components(&target).map_err(|e| format!("hardlink target: {e}"))?;
            let Some((tlast, tparents)) = tparts.split_last() else {
                return Err("hardlink to the layer root".into());
            };
            let tdir =
                open_dir(root, tparents, false).map_err(|e| format!("hardlink target: {e}"))?;
            let tname = cstr(tlast)?;
            let st = nix::sys::stat::fstatat(
                Some(tdir.as_raw_fd()),
                tname.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| format!("hardlink target {}: {e}", String::from_utf8_lossy(&target)))?;
            if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
                return Err("hardlink to a directory".into());
            }
            remove_existing(&parent, &c)?;
            nix::unistd::linkat(
                Some(tdir.as_raw_fd()),
                tname.as_c_str(),
                Some(parent.as_raw_fd()),
                c.as_c_str(),
                nix::fcntl::AtFlags::empty(),
            )
            .map_err(|e| format!("hardlink: {e}"))?;
            return Ok(()); // shares the target's inode and metadata
        }
        T::Char | T::Block => {
            if !opts.allow_devices {
                return Err("device nodes are not allowed in layers".into());
            }
            let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
            let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
            let t = if kind == T::Char { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
            remove_existing(&parent, &c)?;
            mknodat(
                Some(parent.as_raw_fd()),
                c.as_c_str(),
                t,
                perm,
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|e| format!("mknod: {e}"))?;
        }
        T::Fifo => {
            remove_existing(&parent, &c)?;
            mknodat(Some(parent.as_raw_fd()), c.as_c_str(), SFlag::S_IFIFO, perm, 0)
                .map_err(|e| format!("mkfifo: {e}"))?;
        }
        other => {
            tracing::debug!(entry = %String::from_utf8_lossy(name), ?other, "skipping tar entry of unsupported type");
            return Ok(());
        }
    }
    fchownat(
        Some(parent.as_raw_fd()),
        c.as_c_str(),
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| format!("chown: {e}"))?;
    if kind != T::Symlink {
        // After chown: chown clears setuid bits.
        nix::sys::stat::fchmodat(
            Some(parent.as_raw_fd()),
            c.as_c_str(),
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| format!("chmod: {e}"))?;
    }
    if let Ok(mtime) = entry.header().mtime() {
        let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
        let _ = nix::sys::stat::utimensat(
            Some(parent.as_raw_fd()),
            c.as_c_str(),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_leading_slashes_and_dots_and_refuse_dotdot() {
        assert_eq!(components(b"/a/./b//c").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert!(components(b"a/../../etc").is_err());
        assert!(components(b"..").is_err());
        assert_eq!(components(b"./").unwrap(), Vec::<&[u8]>::new());
    }
}
