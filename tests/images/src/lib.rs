//! The images the tests and `cargo xtask images` use, built by the project itself: the
//! `flotilla-probe` binary (static) and Debian's `busybox-static`, packed as OCI image
//! layouts and importable tarballs.

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The busybox applets the images link (busybox runs the one named by argv[0]).
pub const APPLETS: &[&str] = &[
    "sh", "true", "false", "cat", "ls", "echo", "sleep", "hostname", "id", "grep", "mount", "head",
    "readlink", "ps", "dd", "touch", "stat", "wc", "tail", "env", "wget", "nc", "ip", "mkdir",
    "rm", "cp", "mv", "date", "uname", "df", "top", "kill", "vi", "httpd", "nslookup", "ping",
    "mknod",
];

/// Builds `flotilla-probe` static (glibc with crt-static) into `<target_dir>/release/`,
/// with the `cargo` of the caller, and returns its path.
pub fn build_probe(target_dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "-p", "flotilla-probe", "--target-dir"])
        .arg(target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "building flotilla-probe failed");
    Ok(target_dir.join("release/flotilla-probe"))
}

/// What [`build_all`] wrote: importable tarballs (OCI layouts), with their image names.
pub struct Built {
    pub tarballs: Vec<(PathBuf, String)>,
}

/// Writes `probe.tar` (`localhost/probe:<tag>`) and `busybox.tar`
/// (`localhost/busybox:<tag>`) into `out`, each an OCI layout tarball as `flotillad image
/// import` and a node's `images/` directory take.
pub fn build_all(out: &Path, probe: &Path, tag: &str) -> Result<Built> {
    std::fs::create_dir_all(out)?;
    let mut tarballs = Vec::new();
    for name in ["probe", "busybox"] {
        let layout = out.join(format!("{name}.layout"));
        let _ = std::fs::remove_dir_all(&layout);
        match name {
            "probe" => write_probe_layout(&layout, probe, tag, "amd64", false)?,
            _ => write_busybox_layout(&layout, tag)?,
        };
        let tarball = out.join(format!("{name}.tar"));
        // Renamed into place: a node importing the directory never sees half a tarball.
        let tmp = out.join(format!(".{name}.tar.tmp"));
        tar_layout(&layout, &tmp)?;
        std::fs::rename(&tmp, &tarball)?;
        std::fs::remove_dir_all(&layout)?;
        tarballs.push((tarball, format!("localhost/{name}:{tag}")));
    }
    Ok(Built { tarballs })
}

pub fn sha256(b: &[u8]) -> String {
    let h = Sha256::digest(b);
    format!("sha256:{}", h.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// A layer entry: path (a trailing / for a directory), mode, content or symlink target, and
/// whether it is a symlink.
type Entry = (String, u32, Vec<u8>, bool);

fn tar_of(files: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data, is_link) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if *is_link {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, std::str::from_utf8(data)?)?;
        } else if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, &[][..])?;
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, &data[..])?;
        }
    }
    Ok(b.into_inner()?)
}

/// What [`write_probe_layout`] made.
pub struct Layout {
    pub manifest: String,
    pub config: String,
    /// Compressed blob digests, base layer first.
    pub layers: Vec<String>,
}

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn gzip(tar: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar)?;
    Ok(gz.finish()?)
}

/// One layer: its uncompressed tar (for the diff_id), its blob and the blob's media type.
struct LayerBlob {
    tar: Vec<u8>,
    blob: Vec<u8>,
    media_type: &'static str,
}

/// Writes an OCI image layout of `layers` (base first) at `dir`, named
/// `localhost/<name>:<tag>` in containerd's annotation, with `config` as the image's
/// runtime config (Env, Cmd, WorkingDir).
fn write_layout(
    dir: &Path,
    name: &str,
    tag: &str,
    arch: &str,
    layers: &[LayerBlob],
    config: serde_json::Value,
) -> Result<Layout> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<String> {
        let d = sha256(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes)?;
        Ok(d)
    };
    let mut descriptors = Vec::new();
    let mut digests = Vec::new();
    for l in layers {
        let d = put(&l.blob)?;
        descriptors.push(
            serde_json::json!({"mediaType": l.media_type, "digest": d, "size": l.blob.len()}),
        );
        digests.push(d);
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(&l.tar)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))?;
    let cd = put(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descriptors
    }))?;
    let md = put(&manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": format!("localhost/{name}:{tag}")}
        }]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Layout { manifest: md, config: cd, layers: digests })
}

/// busybox and links for `applets` under bin/.
fn busybox_files(applets: &[&str]) -> Result<Vec<Entry>> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} (apt install busybox-static)"))?;
    let mut files = vec![
        ("bin/".to_string(), 0o755, vec![], false),
        ("etc/".to_string(), 0o755, vec![], false),
        ("tmp/".to_string(), 0o1777, vec![], false),
        ("bin/busybox".to_string(), 0o755, busybox, false),
    ];
    for a in applets {
        files.push((format!("bin/{a}"), 0o777, b"busybox".to_vec(), true));
    }
    Ok(files)
}

/// Writes an OCI image layout at `dir` tagged `tag` (`localhost/probe:<tag>` for
/// importers that read containerd's annotation), for `arch`: layer 1 (gzip) busybox with
/// applets and /etc/removed; layer 2 (zstd when `zstd_top`, docker-archives cannot hold it)
/// the probe and a whiteout of /etc/removed.
pub fn write_probe_layout(
    dir: &Path,
    probe: &Path,
    tag: &str,
    arch: &str,
    zstd_top: bool,
) -> Result<Layout> {
    let mut base = busybox_files(&["sh", "true", "ls", "cat", "sleep", "echo"])?;
    base.push(("etc/removed".into(), 0o644, b"gone in layer 2".to_vec(), false));
    base.push(("etc/hostname".into(), 0o644, b"image\n".to_vec(), false));
    let top = vec![
        ("bin/flotilla-probe".to_string(), 0o755, std::fs::read(probe)?, false),
        ("etc/.wh.removed".to_string(), 0o644, vec![], false),
    ];
    let tar1 = tar_of(&base)?;
    let tar2 = tar_of(&top)?;
    let (blob2, media_type) =
        if zstd_top { (zstd::encode_all(&tar2[..], 3)?, ZSTD) } else { (gzip(&tar2)?, GZIP) };
    let layers = [
        LayerBlob { blob: gzip(&tar1)?, tar: tar1, media_type: GZIP },
        LayerBlob { tar: tar2, blob: blob2, media_type },
    ];
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/flotilla-probe", "inspect"], "WorkingDir": "/"});
    write_layout(dir, "probe", tag, arch, &layers, config)
}

/// Writes a one-layer busybox image (`localhost/busybox:<tag>`, linux/amd64) at `dir`: the
/// applets in [`APPLETS`], root and nobody in /etc/passwd, `sh` as its command.
pub fn write_busybox_layout(dir: &Path, tag: &str) -> Result<Layout> {
    let mut files = busybox_files(APPLETS)?;
    for d in ["root/", "proc/", "sys/", "dev/"] {
        files.push((d.to_string(), 0o755, vec![], false));
    }
    files.push((
        "etc/passwd".into(),
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        false,
    ));
    files.push(("etc/group".into(), 0o644, b"root:x:0:\nnogroup:x:65534:\n".to_vec(), false));
    let tar = tar_of(&files)?;
    let layers = [LayerBlob { blob: gzip(&tar)?, tar, media_type: GZIP }];
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"});
    write_layout(dir, "busybox", tag, "amd64", &layers, config)
}

/// Tars up a layout directory (an importable OCI layout tarball).
pub fn tar_layout(dir: &Path, out: &Path) -> Result<()> {
    let mut b = tar::Builder::new(std::fs::File::create(out)?);
    b.append_dir_all(".", dir)?;
    b.finish()?;
    Ok(())
}
