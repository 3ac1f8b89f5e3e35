//! The content-addressed blob store: `blobs/sha256/<hex>`.
//!
//! A blob is written to `ingest/` while its digest and size are computed, checked against
//! what the manifest promised, synced, and only then renamed into place: a partial or
//! tampered download is never visible under its digest.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::digest::Digest;
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

    /// Starts writing blob `expected`. `size` is the size the descriptor gives; `limit`
    /// caps it. Nothing is visible under the digest until [`Ingest::commit`].
    pub fn begin(
        &self,
        expected: Option<&Digest>,
        size: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Ingest, ImageError> {
        let name = expected.map(|d| d.to_string()).unwrap_or_else(|| "(unnamed blob)".into());
        if let (Some(s), Some(l)) = (size, limit) {
            if s > l {
                return Err(ImageError::TooLarge { digest: name, size: s, limit: l });
            }
        }
        let dir = self.root.join("ingest");
        let tmp = tempfile::Builder::new()
            .prefix("blob")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::io("creating ingest file in", &dir, e))?;
        Ok(Ingest {
            store: self.clone(),
            name,
            expected: expected.cloned(),
            size,
            cap: limit.or(size).unwrap_or(u64::MAX),
            tmp,
            hasher: sha2::Sha256::default(),
            count: 0,
        })
    }

    /// Stores what `reader` yields as blob `expected`; `progress` hears the byte count.
    pub fn ingest(
        &self,
        expected: &Digest,
        size: Option<u64>,
        limit: Option<u64>,
        mut reader: impl Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, ImageError> {
        if self.has(expected) {
            return Ok(self.path(expected));
        }
        let mut ing = self.begin(Some(expected), size, limit)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| ImageError::Fetch {
                what: format!("blob {expected}"),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            ing.write(&buf[..n])?;
            progress(ing.count);
        }
        ing.commit().map(|(_, p)| p)
    }

    /// Stores a blob whose digest is not known beforehand (docker-archive members).
    pub fn ingest_unnamed(&self, mut reader: impl Read) -> Result<(Digest, u64), ImageError> {
        let mut ing = self.begin(None, None, None)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| ImageError::Fetch {
                what: "blob (digest not yet known)".into(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            ing.write(&buf[..n])?;
        }
        let size = ing.count;
        ing.commit().map(|(d, _)| (d, size))
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
        super::digest::hex_named_entries(&self.root.join("blobs/sha256"))
    }

    pub fn remove(&self, d: &Digest) -> io::Result<()> {
        std::fs::remove_file(self.path(d))
    }
}

/// A blob being written: hashed and counted as it arrives.
pub struct Ingest {
    store: ContentStore,
    name: String,
    expected: Option<Digest>,
    size: Option<u64>,
    cap: u64,
    tmp: tempfile::NamedTempFile,
    hasher: sha2::Sha256,
    count: u64,
}

impl Ingest {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        use sha2::Digest as _;
        self.count += chunk.len() as u64;
        if self.count > self.cap {
            return Err(ImageError::TooLarge {
                digest: self.name.clone(),
                size: self.count,
                limit: self.cap,
            });
        }
        self.hasher.update(chunk);
        self.tmp
            .as_file_mut()
            .write_all(chunk)
            .map_err(|e| ImageError::io("writing", self.tmp.path(), e))
    }

    pub fn written(&self) -> u64 {
        self.count
    }

    /// Checks size and digest, syncs, and moves the blob into place.
    pub fn commit(self) -> Result<(Digest, PathBuf), ImageError> {
        use sha2::Digest as _;
        let got = Digest::from_sha256(self.hasher.finalize().into());
        if let Some(s) = self.size {
            if self.count != s {
                return Err(ImageError::SizeMismatch {
                    digest: self.name,
                    expected: s,
                    actual: self.count,
                });
            }
        }
        if let Some(e) = &self.expected {
            if &got != e {
                return Err(ImageError::DigestMismatch {
                    expected: e.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        self.tmp.as_file().sync_all().map_err(|e| ImageError::io("syncing", self.tmp.path(), e))?;
        let dest = self.store.path(&got);
        self.tmp.persist(&dest).map_err(|e| ImageError::io("storing blob", &dest, e.error))?;
        Ok((got, dest))
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
