//! A container's root filesystem: overlayfs over the image's snapshots (shared, read-only)
//! with a writable upper directory of its own.
//!
//! ```text
//!  <dir>/upper  <dir>/work  ──►  <dir>/merged  (mount -t overlay)
//!  lowerdir = top layer : … : base layer
//! ```

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::ImageError;

/// Mounts the overlay for a container at `<dir>/merged` and returns that path.
/// `layers` are snapshot dirs, base layer first (manifest order).
pub fn mount_overlay(layers: &[PathBuf], dir: &Path) -> Result<PathBuf, ImageError> {
    if layers.is_empty() {
        return Err(ImageError::Invalid {
            what: format!("rootfs {}", dir.display()),
            reason: "the image has no layers".into(),
        });
    }
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(|e| ImageError::io("creating", d, e))?;
    }
    let lower: Vec<String> = layers.iter().rev().map(|p| escape(p)).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape(&upper),
        escape(&work)
    );
    mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
        .map_err(|e| ImageError::Invalid {
            what: format!("overlay mount on {}", merged.display()),
            reason: format!("{e} (options {data})"),
        })?;
    Ok(merged)
}

/// overlayfs splits options on `,` and lower dirs on `:`; both are escaped with `\`.
fn escape(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "\\\\").replace(':', "\\:").replace(',', "\\,")
}

/// Unmounts the overlay (if mounted) and removes the container's upper and work dirs.
pub fn remove(dir: &Path) -> Result<(), ImageError> {
    let merged = dir.join("merged");
    match umount2(&merged, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(ImageError::Invalid {
                what: format!("unmounting {}", merged.display()),
                reason: e.to_string(),
            })
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("removing", dir, e)),
    }
}
