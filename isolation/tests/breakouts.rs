//! The layer-breakout suite (root): malicious tarballs in the classes of containerd's
//! TestBreakouts. Each is unpacked into a layer directory next to an `outside` directory
//! holding canaries; every case must be refused or confined to the layer, and nothing
//! outside may change.

use flotilla_isolation::image::unpack::{unpack, UnpackOptions};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One tar entry, written with raw header bytes so names may hold `..` or be absolute.
enum E {
    File(&'static str, &'static [u8], u32),
    Dir(&'static str),
    Symlink(&'static str, String),
    Hardlink(&'static str, String),
    Device(&'static str, tar::EntryType, u32, u32),
    Fifo(&'static str),
    /// A PAX `path` record naming the next (regular file) entry.
    PaxFile(String, &'static [u8]),
    /// A GNU long-name record naming the next (regular file) entry.
    GnuLongFile(String, &'static [u8]),
    /// A file whose name is only known at run time (absolute paths of this test).
    FileAt(String, &'static [u8]),
}

fn raw_header(kind: tar::EntryType, name: &[u8], link: &[u8], size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    let old = h.as_old_mut();
    assert!(name.len() < 100 && link.len() < 100, "raw names must fit the old header");
    old.name[..name.len()].copy_from_slice(name);
    old.linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    h
}

fn tarball(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType as T;
    for e in entries {
        match e {
            E::File(n, data, mode) => b
                .append(&raw_header(T::Regular, n.as_bytes(), b"", data.len() as u64, *mode), *data)
                .unwrap(),
            E::FileAt(n, data) => b
                .append(&raw_header(T::Regular, n.as_bytes(), b"", data.len() as u64, 0o644), *data)
                .unwrap(),
            E::Dir(n) => {
                b.append(&raw_header(T::Directory, n.as_bytes(), b"", 0, 0o755), &[][..]).unwrap()
            }
            E::Symlink(n, t) => b
                .append(&raw_header(T::Symlink, n.as_bytes(), t.as_bytes(), 0, 0o777), &[][..])
                .unwrap(),
            E::Hardlink(n, t) => b
                .append(&raw_header(T::Link, n.as_bytes(), t.as_bytes(), 0, 0o644), &[][..])
                .unwrap(),
            E::Device(n, kind, major, minor) => {
                let mut h = raw_header(*kind, n.as_bytes(), b"", 0, 0o666);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap()
            }
            E::Fifo(n) => {
                b.append(&raw_header(T::Fifo, n.as_bytes(), b"", 0, 0o644), &[][..]).unwrap()
            }
            E::PaxFile(path, data) => {
                b.append_pax_extensions([("path", path.as_bytes())]).unwrap();
                b.append(
                    &raw_header(T::Regular, b"placeholder", b"", data.len() as u64, 0o644),
                    *data,
                )
                .unwrap();
            }
            E::GnuLongFile(path, data) => {
                let mut name = path.as_bytes().to_vec();
                name.push(0);
                b.append(
                    &raw_header(T::GNULongName, b"././@LongLink", b"", name.len() as u64, 0o644),
                    &name[..],
                )
                .unwrap();
                b.append(&raw_header(T::Regular, b"short", b"", data.len() as u64, 0o644), *data)
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Everything under `root` but `skip`: path → (mode, size, content or link target).
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes()
            } else if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            let xattr_marker = if m.is_dir() { opaque(&p) as u64 } else { 0 };
            out.insert(p.clone(), (m.mode(), m.len() + xattr_marker, content));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn opaque(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let name = c"trusted.overlay.opaque";
    let mut buf = [0u8; 8];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) > 0 }
}

enum Want {
    Refused(&'static str),
    /// Unpacked; the closure checks the result inside the layer.
    Confined(Box<dyn Fn(&Path)>),
    /// Either is acceptable; nothing outside may change.
    RefusedOrConfined,
}

struct Case {
    name: &'static str,
    entries: Vec<E>,
    want: Want,
}

fn cases(outside: &Path) -> Vec<Case> {
    let o = outside.to_string_lossy().into_owned();
    let canary = format!("{o}/canary");
    let confined = |f: fn(&Path)| Want::Confined(Box::new(f));
    vec![
        Case {
            name: "dotdot file",
            entries: vec![E::File("../escape", b"x", 0o644)],
            want: Want::Refused("'..'"),
        },
        Case {
            name: "dotdot deep",
            entries: vec![E::File("a/../../escape", b"x", 0o644)],
            want: Want::Refused("'..'"),
        },
        Case {
            name: "dotdot after dirs",
            entries: vec![
                E::Dir("a/"),
                E::Dir("a/b/"),
                E::File("a/b/../../../escape", b"x", 0o644),
            ],
            want: Want::Refused("'..'"),
        },
        Case {
            name: "absolute name",
            entries: vec![E::File("/abs", b"x", 0o644)],
            want: confined(|d| assert!(d.join("abs").is_file())),
        },
        Case {
            name: "absolute name of the canary",
            entries: vec![E::FileAt(canary.clone(), b"pwned")],
            want: Want::Confined(Box::new({
                let c = canary.clone();
                move |d| {
                    assert_eq!(std::fs::read(d.join(c.trim_start_matches('/'))).unwrap(), b"pwned")
                }
            })),
        },
        Case {
            name: "absolute symlink dir then file",
            entries: vec![E::Symlink("link", o.clone()), E::File("link/canary", b"pwned", 0o644)],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "relative symlink up then file",
            entries: vec![
                E::Symlink("up", "../../../..".into()),
                E::File("up/escaped", b"x", 0o644),
            ],
            want: confined(|d| assert!(d.join("escaped").is_file())),
        },
        Case {
            name: "multi-hop symlinks",
            entries: vec![
                E::Symlink("a", "b".into()),
                E::Symlink("b", "c/../..".into()),
                E::Dir("c/"),
                E::File("a/hop", b"x", 0o644),
            ],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "symlink to root then deep file",
            entries: vec![
                E::Dir("d/"),
                E::Symlink("d/l", "/".into()),
                E::File("d/l/etc/passwd", b"x", 0o644),
            ],
            want: confined(|d| assert!(d.join("etc/passwd").is_file())),
        },
        Case {
            name: "hardlink to an absolute outside file",
            entries: vec![E::Hardlink("h", canary.clone())],
            want: Want::Refused("hardlink target"),
        },
        Case {
            name: "hardlink with dotdot",
            entries: vec![E::Hardlink("h", "../outside/canary".into())],
            want: Want::Refused("'..'"),
        },
        Case {
            name: "hardlink through an outside symlink",
            entries: vec![E::Symlink("l", o.clone()), E::Hardlink("h", "l/canary".into())],
            want: Want::Refused("hardlink target"),
        },
        Case {
            name: "file replacing a symlink to the canary",
            entries: vec![E::Symlink("s", canary.clone()), E::File("s", b"pwned", 0o644)],
            want: confined(|d| assert!(std::fs::symlink_metadata(d.join("s")).unwrap().is_file())),
        },
        Case {
            name: "symlink replacing a dir, then a file through it",
            entries: vec![
                E::Dir("d/"),
                E::Symlink("d", o.clone()),
                E::File("d/canary", b"pwned", 0o644),
            ],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "whiteout of the root",
            entries: vec![E::File(".wh..", b"", 0o644)],
            want: Want::Refused("whiteout"),
        },
        Case {
            name: "whiteout of the parent",
            entries: vec![E::Dir("a/"), E::File("a/.wh...", b"", 0o644)],
            want: Want::Refused("whiteout"),
        },
        Case {
            name: "whiteout through an outside symlink",
            entries: vec![E::Symlink("l", o.clone()), E::File("l/.wh.canary", b"", 0o644)],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "absolute whiteout",
            entries: vec![E::File("/.wh.canary", b"", 0o644)],
            want: confined(|d| {
                assert!(std::fs::symlink_metadata(d.join("canary"))
                    .unwrap()
                    .file_type()
                    .is_char_device())
            }),
        },
        Case {
            name: "opaque through an outside symlink",
            entries: vec![E::Symlink("l", o.clone()), E::File("l/.wh..wh..opq", b"", 0o644)],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "opaque whiteout of the root",
            entries: vec![E::File(".wh..wh..opq", b"", 0o644)],
            want: confined(|d| assert!(opaque(d))),
        },
        Case {
            name: "character device",
            entries: vec![E::Device("dev/null", tar::EntryType::Char, 1, 3)],
            want: Want::Refused("device"),
        },
        Case {
            name: "block device",
            entries: vec![E::Device("sda", tar::EntryType::Block, 8, 0)],
            want: Want::Refused("device"),
        },
        Case {
            name: "setuid and setgid bits",
            entries: vec![E::File("suid", b"#!/bin/sh", 0o6755)],
            want: confined(|d| {
                assert_eq!(
                    std::fs::metadata(d.join("suid")).unwrap().permissions().mode() & 0o7777,
                    0o755
                )
            }),
        },
        Case {
            name: "fifo",
            entries: vec![E::Fifo("pipe")],
            want: confined(|d| {
                assert!(std::fs::symlink_metadata(d.join("pipe")).unwrap().file_type().is_fifo())
            }),
        },
        Case {
            name: "magic link through /proc",
            entries: vec![
                E::Symlink("p", format!("/proc/self/root{o}")),
                E::File("p/canary", b"pwned", 0o644),
            ],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "PAX path with dotdot",
            entries: vec![E::PaxFile("../../pax-escape".into(), b"x")],
            want: Want::Refused("'..'"),
        },
        Case {
            name: "PAX absolute path",
            entries: vec![E::PaxFile(canary.clone(), b"pwned")],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "GNU long name with dotdot",
            entries: vec![E::GnuLongFile(
                format!("{}/../../../long-escape", "d".repeat(120)),
                b"x",
            )],
            want: Want::Refused("'..'"),
        },
        Case {
            name: "symlink loop",
            entries: vec![
                E::Symlink("a", "b".into()),
                E::Symlink("b", "a".into()),
                E::File("a/x", b"x", 0o644),
            ],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "absolute hardlink to a file inside",
            entries: vec![E::File("f", b"inside", 0o644), E::Hardlink("h", "/f".into())],
            want: confined(|d| {
                assert_eq!(
                    std::fs::metadata(d.join("h")).unwrap().ino(),
                    std::fs::metadata(d.join("f")).unwrap().ino()
                )
            }),
        },
        Case {
            name: "hardlink to a directory",
            entries: vec![E::Dir("d/"), E::Hardlink("h", "d".into())],
            want: Want::Refused("directory"),
        },
        Case {
            name: "directory under an outside symlink",
            entries: vec![E::Symlink("d", o.clone()), E::Dir("d/sub/")],
            want: Want::RefusedOrConfined,
        },
        Case {
            name: "chmod through a symlink to the canary",
            entries: vec![E::Symlink("s", canary.clone()), E::Dir("s/")],
            want: confined(|d| assert!(std::fs::symlink_metadata(d.join("s")).unwrap().is_dir())),
        },
        Case {
            name: "hardlink chain out via symlinked dir",
            entries: vec![E::Symlink("x", "/".into()), E::Hardlink("h", format!("x{canary}"))],
            want: Want::Refused("hardlink target"),
        },
        Case {
            name: "symlink named like a whiteout target outside",
            entries: vec![
                E::Symlink("w", o.clone()),
                E::File("w/.wh..wh..opq", b"", 0o644),
                E::File("w/.wh.dir", b"", 0o644),
            ],
            want: Want::RefusedOrConfined,
        },
    ]
}

#[test]
fn every_malicious_layer_is_refused_or_confined_and_the_outside_is_unchanged() {
    if !flotilla_prereq::root("the breakout suite needs chown, mknod and trusted xattrs") {
        return;
    }
    let probe_dir = tempfile::tempdir().unwrap();
    let outside = probe_dir.path().join("outside");
    let cases_len = cases(&outside).len();
    assert!(cases_len >= 30, "the suite has {cases_len} cases");
    let mut failures = Vec::new();
    for i in 0..cases_len {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("canary"), b"canary").unwrap();
        std::fs::write(outside.join("dir/file"), b"inner canary").unwrap();
        // The cases name `outside` by the path of the first tempdir: rebuild for this one.
        let case = cases(&outside).into_iter().nth(i).unwrap();
        let layer = tmp.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        let before = snapshot(tmp.path(), &layer);
        let result = unpack(&tarball(&case.entries)[..], &layer, UnpackOptions::default());
        let after = snapshot(tmp.path(), &layer);
        if before != after {
            failures.push(format!("{}: the outside changed", case.name));
            continue;
        }
        match (&case.want, result) {
            (Want::Refused(needle), Err(e)) if e.to_string().contains(needle) => {}
            (Want::Refused(needle), other) => failures
                .push(format!("{}: wanted refusal with {needle:?}, got {other:?}", case.name)),
            (Want::Confined(check), Ok(_)) => {
                if let Err(p) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&layer)))
                {
                    failures.push(format!("{}: confined check failed: {p:?}", case.name));
                }
            }
            (Want::Confined(_), Err(e)) => {
                failures.push(format!("{}: wanted it confined, got {e}", case.name))
            }
            (Want::RefusedOrConfined, _) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases_len} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
