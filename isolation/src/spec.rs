//! Loading and checking an OCI bundle's `config.json` before anything is created.
//!
//! Every check here runs in the caller, before a cgroup, a state directory or a
//! process exists, so a bad bundle leaves nothing behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// The capabilities containerd gives a container by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from containers by default (containerd's list).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containers see read-only by default (containerd's list).
pub const DEFAULT_READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A bundle whose config parsed and passed the checks.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute path of the root filesystem.
    pub rootfs: PathBuf,
}

/// Reads `<dir>/config.json` and checks it. Errors name the JSON path of the bad field.
pub fn load_bundle(dir: &Path) -> Result<Bundle> {
    let dir = std::path::absolute(dir).map_err(|e| Error::io("resolving bundle", dir, e))?;
    let path = dir.join("config.json");
    let bytes =
        std::fs::read(&path).map_err(|source| Error::ReadConfig { bundle: dir.clone(), source })?;
    let spec = parse(&dir, &bytes)?;
    let rootfs = check(&dir, &spec)?;
    Ok(Bundle { dir, spec, rootfs })
}

/// Parses a config, reporting the JSON path of a field that does not fit the OCI schema.
pub fn parse(bundle: &Path, bytes: &[u8]) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let reason = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            inner.to_string()
        };
        Error::config(bundle, if field == "." { "(document)".to_string() } else { field }, reason)
    })
}

/// Checks what the schema cannot: a runnable process, a root that exists, namespaces we
/// support, absolute mount destinations. Returns the absolute rootfs path.
pub fn check(bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    let err = |field: &str, reason: String| Error::config(bundle, field, reason);

    let root = spec.root().as_ref().ok_or_else(|| err("root", "missing".into()))?;
    let rootfs =
        if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(err("root.path", format!("{} is not a directory", rootfs.display()))),
        Err(e) => return Err(err("root.path", format!("{}: {e}", rootfs.display()))),
    }

    let process = spec.process().as_ref().ok_or_else(|| err("process", "missing".into()))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(err("process.args", "must name the program to run".into())),
    }
    if !process.cwd().is_absolute() {
        return Err(err("process.cwd", format!("{:?} is not absolute", process.cwd())));
    }
    if process.terminal() == Some(true) {
        return Err(err(
            "process.terminal",
            "terminals are not supported for the container's init process; use exec --tty".into(),
        ));
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.contains('\0') {
            return Err(err(&format!("process.env[{i}]"), format!("{e:?} is not KEY=VALUE")));
        }
    }

    if let Some(linux) = spec.linux() {
        let mut seen = HashSet::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            let field = format!("linux.namespaces[{i}]");
            if !seen.insert(ns.typ()) {
                return Err(err(&field, format!("namespace {} listed twice", ns.typ())));
            }
            if let Some(p) = ns.path() {
                if !p.is_absolute() || !p.exists() {
                    return Err(err(
                        &format!("{field}.path"),
                        format!("{} is not an existing absolute path", p.display()),
                    ));
                }
            }
        }
        check_user_and_time(linux, &err)?;
        if let Some(r) = linux.resources() {
            // The spec's rules come first, so an index names the spec's own entry.
            let all = crate::cgroups::with_default_devices(Some(r));
            if let Err((field, why)) =
                crate::devices::table(all.devices().as_deref().unwrap_or(&[]))
            {
                // The program's size bounds the rules on cgroup v2 only.
                if field != "linux.resources.devices"
                    || cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode()
                {
                    return Err(err(&field, why));
                }
            }
        }
        for (field, list) in [
            ("linux.maskedPaths", linux.masked_paths()),
            ("linux.readonlyPaths", linux.readonly_paths()),
        ] {
            for (i, p) in list.iter().flatten().enumerate() {
                if !p.starts_with('/') {
                    return Err(err(&format!("{field}[{i}]"), format!("{p:?} is not absolute")));
                }
            }
        }
        if let Some(p) = linux.rootfs_propagation() {
            if crate::mounts::propagation_flag(p).is_none() {
                return Err(err("linux.rootfsPropagation", format!("unknown propagation {p:?}")));
            }
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(err(
                &format!("mounts[{i}].destination"),
                format!("{:?} is not absolute", m.destination()),
            ));
        }
    }
    Ok(rootfs)
}

/// A new user namespace needs uid and gid mappings (and mappings need one); time offsets
/// need a new time namespace and name clocks it can offset.
fn check_user_and_time(
    linux: &oci_spec::runtime::Linux,
    err: &impl Fn(&str, String) -> Error,
) -> Result<()> {
    let new_ns = |t: LinuxNamespaceType| {
        linux.namespaces().iter().flatten().any(|n| n.typ() == t && n.path().is_none())
    };
    let new_user = new_ns(LinuxNamespaceType::User);
    for (field, maps) in
        [("linux.uidMappings", linux.uid_mappings()), ("linux.gidMappings", linux.gid_mappings())]
    {
        let maps = maps.as_deref().unwrap_or_default();
        match (new_user, maps.is_empty()) {
            (true, true) => {
                return Err(err(field, "a new user namespace needs at least one mapping".into()))
            }
            (false, false) => {
                return Err(err(
                    field,
                    "mappings need a new user namespace in linux.namespaces".into(),
                ))
            }
            _ => {}
        }
        // The kernel takes at most 340 lines and refuses overlaps with EINVAL; say which.
        if maps.len() > 340 {
            return Err(err(
                field,
                format!("{} mappings; the kernel takes at most 340", maps.len()),
            ));
        }
        for (i, m) in maps.iter().enumerate() {
            if m.size() == 0 {
                return Err(err(&format!("{field}[{i}].size"), "must be at least 1".into()));
            }
            let end = |start: u32| u64::from(start) + u64::from(m.size());
            if end(m.container_id()) > 1 << 32 || end(m.host_id()) > 1 << 32 {
                return Err(err(&format!("{field}[{i}]"), "range goes past 2^32".into()));
            }
            for (j, o) in maps[..i].iter().enumerate() {
                let overlap = |a: u32, b: u32| {
                    u64::from(a) < u64::from(b) + u64::from(o.size()) && u64::from(b) < end(a)
                };
                if overlap(m.container_id(), o.container_id()) || overlap(m.host_id(), o.host_id())
                {
                    return Err(err(&format!("{field}[{i}]"), format!("overlaps {field}[{j}]")));
                }
            }
        }
    }
    let offsets = linux.time_offsets().as_ref().filter(|o| !o.is_empty());
    if let Some(offsets) = offsets {
        if !new_ns(LinuxNamespaceType::Time) {
            return Err(err(
                "linux.timeOffsets",
                "offsets need a new time namespace in linux.namespaces".into(),
            ));
        }
        for (clock, o) in offsets {
            let field = format!("linux.timeOffsets.{clock}");
            if clock != "monotonic" && clock != "boottime" {
                return Err(err(&field, "only monotonic and boottime can be offset".into()));
            }
            if o.nanosecs().unwrap_or(0) >= 1_000_000_000 {
                return Err(err(&format!("{field}.nanosecs"), "must be below 1000000000".into()));
            }
        }
    }
    Ok(())
}

/// The lines for `/proc/PID/uid_map` or `gid_map`.
pub fn id_map_lines(maps: &[oci_spec::runtime::LinuxIdMapping]) -> String {
    maps.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
}

/// The lines for `/proc/self/timens_offsets`.
pub fn time_offset_lines(
    offsets: &std::collections::HashMap<String, oci_spec::runtime::LinuxTimeOffset>,
) -> String {
    offsets
        .iter()
        .map(|(clock, o)| {
            format!("{clock} {} {}\n", o.secs().unwrap_or(0), o.nanosecs().unwrap_or(0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> (tempfile::TempDir, Result<Bundle>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let r = load_bundle(dir.path());
        (dir, r)
    }

    const GOOD: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"user":{"uid":0,"gid":0},"args":["/bin/true"],"cwd":"/"},
        "linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#;

    #[test]
    fn a_minimal_bundle_loads_with_an_absolute_rootfs() {
        let (dir, r) = bundle_with(GOOD);
        let b = r.unwrap();
        assert_eq!(b.rootfs, dir.path().join("rootfs"));
    }

    #[test]
    fn an_unknown_namespace_type_is_named_with_its_path() {
        let (_d, r) = bundle_with(&GOOD.replace(r#"{"type":"mount"}"#, r#"{"type":"bogus"}"#));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("linux.namespaces[1].type"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        let (_d, r) = bundle_with("{\"ociVersion\": ");
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("malformed JSON"), "{msg}");
    }

    #[test]
    fn a_missing_rootfs_is_named() {
        let (_d, r) = bundle_with(&GOOD.replace("\"rootfs\"", "\"nothere\""));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("root.path") && msg.contains("nothere"), "{msg}");
    }

    #[test]
    fn empty_args_and_relative_cwd_are_rejected() {
        let (_d, r) = bundle_with(&GOOD.replace(r#"["/bin/true"]"#, "[]"));
        assert!(r.unwrap_err().to_string().contains("process.args"));
        let (_d, r) = bundle_with(&GOOD.replace(r#""cwd":"/""#, r#""cwd":"tmp""#));
        assert!(r.unwrap_err().to_string().contains("process.cwd"));
    }

    #[test]
    fn duplicate_namespaces_and_unmapped_user_namespaces_are_rejected() {
        let (_d, r) = bundle_with(&GOOD.replace(r#"{"type":"mount"}"#, r#"{"type":"pid"}"#));
        assert!(r.unwrap_err().to_string().contains("listed twice"));
        let (_d, r) = bundle_with(&GOOD.replace(r#"{"type":"mount"}"#, r#"{"type":"user"}"#));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("linux.uidMappings") && msg.contains("at least one mapping"), "{msg}");
    }

    #[test]
    fn id_mappings_and_time_offsets_become_the_kernels_lines() {
        let maps: Vec<oci_spec::runtime::LinuxIdMapping> = serde_json::from_str(
            r#"[{"containerID":0,"hostID":100000,"size":1000},{"containerID":1000,"hostID":5000,"size":1}]"#,
        )
        .unwrap();
        assert_eq!(id_map_lines(&maps), "0 100000 1000\n1000 5000 1\n");
        let offsets = serde_json::from_str(r#"{"boottime":{"secs":-5,"nanosecs":7}}"#).unwrap();
        assert_eq!(time_offset_lines(&offsets), "boottime -5 7\n");
    }
}
