//! The content-addressed blob store: `blobs/sha256/<hex>`.
//!
//! A blob is written to `ingest/` while its digest and size are computed, checked against
//! what the manifest promised, synced, and only then renamed into place: a partial or
//! tampered download is never visible under its digest.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::digest::{Digest, HashingReader};
use super::ImageError;

/// Manifests, indexes and configs larger than this are refused (containerd uses 4 MiB for
/// manifests; configs of real images stay far below 8 MiB).
pub const MAX_METADATA_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for d in ["blobs/sha256", "ingest"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io("creating", &p, e))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// Stores what `reader` yields as blob `expected`. `size` is the size the descriptor
    /// gives; `limit` caps it. `progress` hears the byte count as data arrives.
    pub fn ingest(
        &self,
        expected: &Digest,
        size: Option<u64>,
        limit: Option<u64>,
        reader: impl Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, ImageError> {
        let dest = self.path(expected);
        if dest.exists() {
            return Ok(dest);
        }
        if let (Some(s), Some(l)) = (size, limit) {
            if s > l {
                return Err(ImageError::TooLarge {
                    digest: expected.to_string(),
                    size: s,
                    limit: l,
                });
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix(expected.hex())
            .tempfile_in(self.root.join("ingest"))
            .map_err(|e| ImageError::io("creating ingest file in", self.root.join("ingest"), e))?;
        let cap = limit.or(size.map(|s| s + 1)).unwrap_or(u64::MAX);
        let mut hashing = HashingReader::new(reader.take(cap.saturating_add(1)));
        let mut file = tmp.as_file();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = hashing.read(&mut buf).map_err(|e| ImageError::Fetch {
                digest: expected.to_string(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(|e| ImageError::io("writing", tmp.path(), e))?;
            total += n as u64;
            progress(total);
            if total > cap {
                return Err(ImageError::TooLarge {
                    digest: expected.to_string(),
                    size: total,
                    limit: cap,
                });
            }
        }
        let (got, count) = hashing.finish().map_err(|e| ImageError::Fetch {
            digest: expected.to_string(),
            reason: e.to_string(),
        })?;
        if let Some(s) = size {
            if count != s {
                return Err(ImageError::SizeMismatch {
                    digest: expected.to_string(),
                    expected: s,
                    actual: count,
                });
            }
        }
        if &got != expected {
            return Err(ImageError::DigestMismatch {
                expected: expected.to_string(),
                actual: got.to_string(),
            });
        }
        file.sync_all().map_err(|e| ImageError::io("syncing", tmp.path(), e))?;
        tmp.persist(&dest).map_err(|e| ImageError::io("storing blob", &dest, e.error))?;
        Ok(dest)
    }

    /// Stores bytes already in memory (manifests, configs).
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<PathBuf, ImageError> {
        self.ingest(
            expected,
            Some(bytes.len() as u64),
            Some(MAX_METADATA_BYTES),
            bytes,
            &mut |_| {},
        )
    }

    /// Reads a small blob, checking size cap and digest again: the disk may have changed.
    pub fn read_verified(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, ImageError> {
        let p = self.path(d);
        let f = File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::MissingBlob { digest: d.to_string() }
            } else {
                ImageError::io("reading", &p, e)
            }
        })?;
        let mut bytes = Vec::new();
        f.take(limit + 1).read_to_end(&mut bytes).map_err(|e| ImageError::io("reading", &p, e))?;
        if bytes.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                digest: d.to_string(),
                size: bytes.len() as u64,
                limit,
            });
        }
        let got = Digest::of(&bytes);
        if &got != d {
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Every stored blob.
    pub fn list(&self) -> Vec<Digest> {
        std::fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect()
    }

    pub fn remove(&self, d: &Digest) -> io::Result<()> {
        std::fs::remove_file(self.path(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_stored_only_when_digest_and_size_match() {
        let d = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(d.path()).unwrap();
        let data = b"layer bytes".to_vec();
        let digest = Digest::of(&data);
        let wrong = Digest::of(b"other");
        let e =
            cs.ingest(&wrong, Some(data.len() as u64), None, &data[..], &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains(&wrong.to_string()), "{e}");
        assert!(!cs.has(&wrong));
        let e = cs.ingest(&digest, Some(3), None, &data[..], &mut |_| {}).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. } | ImageError::SizeMismatch { .. }), "{e}");
        assert!(!cs.has(&digest));
        let mut seen = 0;
        cs.ingest(&digest, Some(data.len() as u64), None, &data[..], &mut |n| seen = n).unwrap();
        assert_eq!(seen, data.len() as u64);
        assert_eq!(cs.read_verified(&digest, 1024).unwrap(), data);
        assert_eq!(
            std::fs::read_dir(d.path().join("ingest")).unwrap().count(),
            0,
            "no ingest leftovers"
        );
    }

    #[test]
    fn a_blob_changed_on_disk_is_refused_on_read() {
        let d = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(d.path()).unwrap();
        let digest = Digest::of(b"{}");
        cs.put(&digest, b"{}").unwrap();
        std::fs::write(cs.path(&digest), b"{\"x\":1}").unwrap();
        let e = cs.read_verified(&digest, 1024).unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    }
}
