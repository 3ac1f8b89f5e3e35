//! OCI images: a verified content store, layers unpacked into confined snapshot
//! directories, overlayfs root filesystems over them.
//!
//! ```text
//!  registry / OCI layout / docker-archive
//!        │ ingest: digest + size checked, then renamed into place
//!        ▼
//!  content/blobs/sha256/<hex> ──unpack (diff_id checked)──► snapshots/<diff_id>/fs
//!                                                              │ lowerdir=…
//!                                                              ▼
//!                                        overlay: rootfs of one container (upper, work)
//! ```

pub mod content;
pub mod digest;
pub mod pull;
pub mod rootfs;
pub mod store;
pub mod unpack;

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub use content::ContentStore;
pub use digest::Digest;
use digest::HashingReader;
pub use unpack::{UnpackOptions, UnpackStats};

/// Why an image operation failed; each names the blob, entry or file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {expected}: content has digest {actual}, refusing it")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest}: {actual} bytes where the descriptor says {expected}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    #[error("blob {digest}: {size} bytes is over the {limit}-byte limit")]
    TooLarge { digest: String, size: u64, limit: u64 },
    /// `what`: "blob sha256:…", "manifest of NAME", …
    #[error("{what}: {reason}")]
    Fetch { what: String, reason: String },
    #[error("blob {digest} is not in the content store")]
    MissingBlob { digest: String },
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: String,
        #[source]
        source: unpack::EntryError,
    },
    #[error("layer {digest}: uncompressed content has digest {actual}, the image config says {expected}")]
    DiffIdMismatch { digest: String, expected: String, actual: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl ImageError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io { what, path: path.into(), source }
    }
}

/// A layer's compression, from its media type or, failing that, its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(mt: &str) -> Option<Self> {
        if mt.ends_with("+gzip")
            || mt.ends_with(".gzip")
            || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        {
            Some(Self::Gzip)
        } else if mt.ends_with("+zstd") {
            Some(Self::Zstd)
        } else if mt.ends_with(".tar") || mt.ends_with("layer.v1.tar") {
            Some(Self::None)
        } else {
            None
        }
    }

    fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// Where unpacked layers live: `snapshots/<diff_id hex>/fs`, each complete or absent.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

impl Snapshots {
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root).map_err(|e| ImageError::io("creating", root, e))?;
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn fs_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join(diff_id.hex()).join("fs")
    }

    pub fn has(&self, diff_id: &Digest) -> bool {
        self.fs_dir(diff_id).is_dir()
    }

    /// Unpacks blob `digest` (compressed as `compression`, or sniffed) whose uncompressed
    /// digest must be `diff_id`. The snapshot appears under its name only when complete
    /// and verified.
    pub fn apply(
        &self,
        content: &ContentStore,
        digest: &Digest,
        diff_id: &Digest,
        compression: Option<Compression>,
        opts: UnpackOptions,
    ) -> Result<PathBuf, ImageError> {
        let final_dir = self.root.join(diff_id.hex());
        if final_dir.join("fs").is_dir() {
            return Ok(final_dir.join("fs"));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.root)
            .map_err(|e| ImageError::io("creating in", &self.root, e))?;
        let fs = tmp.path().join("fs");
        std::fs::create_dir(&fs).map_err(|e| ImageError::io("creating", &fs, e))?;
        let blob = content.path(digest);
        let file = std::fs::File::open(&blob).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::MissingBlob { digest: digest.to_string() },
            _ => ImageError::io("opening", &blob, e),
        })?;
        // The blob was verified at ingest; hash it again on the way through in case the
        // disk changed since.
        let mut compressed = BufReader::with_capacity(256 * 1024, HashingReader::new(file));
        let head = compressed.fill_buf().map_err(|e| ImageError::io("reading", &blob, e))?;
        let compression = compression.unwrap_or_else(|| Compression::sniff(head));
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut compressed),
            Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(&mut compressed)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut compressed)
                    .map_err(|e| ImageError::io("zstd", &blob, e))?,
            ),
        };
        let mut tar_stream = HashingReader::new(decoder);
        unpack::unpack(&mut tar_stream, &fs, opts)
            .map_err(|source| ImageError::Unpack { digest: digest.to_string(), source })?;
        let (actual, _) =
            tar_stream.finish().map_err(|e| ImageError::io("decompressing", &blob, e))?;
        if &actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                digest: digest.to_string(),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        let (blob_digest, _) =
            compressed.into_inner().finish().map_err(|e| ImageError::io("reading", &blob, e))?;
        if &blob_digest != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual: blob_digest.to_string(),
            });
        }
        let dir = tmp.keep();
        match std::fs::rename(&dir, &final_dir) {
            Ok(()) => Ok(final_dir.join("fs")),
            // Someone else finished the same layer first.
            Err(_) if final_dir.join("fs").is_dir() => {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(final_dir.join("fs"))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(ImageError::io("storing snapshot", final_dir, e))
            }
        }
    }

    /// Every complete snapshot, by diff_id.
    pub fn list(&self) -> Vec<Digest> {
        digest::hex_named_entries(&self.root)
    }

    pub fn remove(&self, diff_id: &Digest) -> io::Result<()> {
        std::fs::remove_dir_all(self.root.join(diff_id.hex()))
    }
}
