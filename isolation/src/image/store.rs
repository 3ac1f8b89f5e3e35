//! The image store: named references over the content store, manifest resolution for
//! linux/amd64, imports of OCI layouts and docker-archive tarballs, unpacking, and
//! garbage collection.
//!
//! ```text
//!  <root>/refs.json        reference → manifest digest
//!  <root>/content/…        blobs (content.rs)
//!  <root>/snapshots/…      unpacked layers (mod.rs)
//! ```

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::content::{ContentStore, MAX_METADATA_BYTES};
use super::{Compression, Digest, ImageError, Snapshots, UnpackOptions};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The platform images must be for.
pub const OS: &str = "linux";
pub const ARCH: &str = "amd64";

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub diff_id: Digest,
}

/// A resolved, verified image.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    pub manifest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub layers: Vec<Layer>,
}

/// Progress of a pull or unpack, for a progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub layers_total: usize,
    pub layers_done: usize,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub blobs_removed: usize,
    pub snapshots_removed: usize,
}

#[derive(Default, Serialize, Deserialize)]
struct Refs {
    refs: BTreeMap<String, String>,
}

pub struct ImageStore {
    root: PathBuf,
    pub content: ContentStore,
    pub snapshots: Snapshots,
    refs_lock: Mutex<()>,
}

/// `busybox` → `docker.io/library/busybox:latest`, `reg:5000/a/b` → `reg:5000/a/b:latest`.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    match digest {
        Some(d) => format!("{full}@{d}"),
        None => full,
    }
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> ImageError {
    ImageError::Invalid { what: what.into(), reason: reason.into() }
}

fn parse_digest(what: &str, s: &str) -> Result<Digest, ImageError> {
    Digest::parse(s).map_err(|e| invalid(what, e))
}

/// The manifest of `index` for linux/amd64.
pub fn select_platform(what: &str, index: &ImageIndex) -> Result<(Digest, u64), ImageError> {
    let mut seen = Vec::new();
    for m in index.manifests() {
        match m.platform() {
            Some(p) if p.os().to_string() == OS && p.architecture().to_string() == ARCH => {
                return Ok((parse_digest(what, m.digest().as_ref())?, m.size()));
            }
            Some(p) => seen.push(format!("{}/{}", p.os(), p.architecture())),
            None => seen.push("(no platform)".into()),
        }
    }
    Err(invalid(
        what,
        format!("no {OS}/{ARCH} manifest in the index (it has: {})", seen.join(", ")),
    ))
}

/// What a manifest-or-index document is.
pub enum ManifestDoc {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

/// Parses a manifest or index, by its `mediaType` or, failing that, its shape.
pub fn parse_manifest_doc(what: &str, bytes: &[u8]) -> Result<ManifestDoc, ImageError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(what, format!("not JSON: {e}")))?;
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    let is_index = mt == MEDIA_OCI_INDEX
        || mt == MEDIA_DOCKER_LIST
        || (mt.is_empty() && v.get("manifests").is_some());
    if is_index {
        ImageIndex::from_reader(bytes)
            .map(|i| ManifestDoc::Index(Box::new(i)))
            .map_err(|e| invalid(what, format!("bad image index: {e}")))
    } else {
        ImageManifest::from_reader(bytes)
            .map(|m| ManifestDoc::Manifest(Box::new(m)))
            .map_err(|e| invalid(what, format!("bad manifest: {e}")))
    }
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root).map_err(|e| ImageError::io("creating", root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            content: ContentStore::open(&root.join("content"))?,
            snapshots: Snapshots::open(&root.join("snapshots"))?,
            refs_lock: Mutex::new(()),
        })
    }

    fn read_refs(&self) -> Result<Refs, ImageError> {
        let p = self.root.join("refs.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| invalid(format!("{}", p.display()), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Refs::default()),
            Err(e) => Err(ImageError::io("reading", p, e)),
        }
    }

    fn write_refs(&self, refs: &Refs) -> Result<(), ImageError> {
        let p = self.root.join("refs.json");
        crate::state::write_atomic(&p, &serde_json::to_vec_pretty(refs).expect("refs serialize"))
            .map_err(|e| ImageError::io("writing", p, e))
    }

    /// Points `reference` at a stored manifest (or index).
    pub fn tag(&self, reference: &str, manifest: &Digest) -> Result<(), ImageError> {
        let _g = self.refs_lock.lock().expect("refs lock");
        let mut refs = self.read_refs()?;
        refs.refs.insert(normalize(reference), manifest.to_string());
        self.write_refs(&refs)
    }

    pub fn list(&self) -> Result<Vec<(String, Digest)>, ImageError> {
        let refs = self.read_refs()?;
        refs.refs.into_iter().map(|(r, d)| Ok((r, parse_digest("refs.json", &d)?))).collect()
    }

    pub fn untag(&self, reference: &str) -> Result<bool, ImageError> {
        let _g = self.refs_lock.lock().expect("refs lock");
        let mut refs = self.read_refs()?;
        let removed = refs.refs.remove(&normalize(reference)).is_some();
        self.write_refs(&refs)?;
        Ok(removed)
    }

    /// Resolves a reference (or a `name@sha256:…` stored here) to a verified linux/amd64
    /// image whose blobs are all present.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let norm = normalize(reference);
        let top = match norm.split_once('@') {
            Some((_, d)) => parse_digest(reference, d)?,
            None => {
                let refs = self.read_refs()?;
                let d = refs.refs.get(&norm).ok_or_else(|| {
                    invalid(
                        format!("image {reference}"),
                        "not found in the image store (pull or import it)",
                    )
                })?;
                parse_digest(reference, d)?
            }
        };
        self.resolve_digest(&norm, &top)
    }

    pub fn resolve_digest(&self, reference: &str, top: &Digest) -> Result<Image, ImageError> {
        let what = format!("image {reference}");
        let bytes = self.content.read_verified(top, MAX_METADATA_BYTES)?;
        let (manifest_digest, manifest) = match parse_manifest_doc(&what, &bytes)? {
            ManifestDoc::Manifest(m) => (top.clone(), *m),
            ManifestDoc::Index(idx) => {
                let (d, _) = select_platform(&what, &idx)?;
                let b = self.content.read_verified(&d, MAX_METADATA_BYTES)?;
                match parse_manifest_doc(&what, &b)? {
                    ManifestDoc::Manifest(m) => (d, *m),
                    ManifestDoc::Index(_) => {
                        return Err(invalid(what, "nested image indexes are not supported"))
                    }
                }
            }
        };
        let config_digest = parse_digest(&what, manifest.config().digest().as_ref())?;
        let config_bytes = self.content.read_verified(&config_digest, MAX_METADATA_BYTES)?;
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| invalid(format!("{what} config {config_digest}"), e.to_string()))?;
        if config.os().to_string() != OS || config.architecture().to_string() != ARCH {
            return Err(invalid(
                &what,
                format!(
                    "image is for {}/{}, this node runs {OS}/{ARCH}",
                    config.os(),
                    config.architecture()
                ),
            ));
        }
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(invalid(
                &what,
                format!(
                    "manifest has {} layers but the config lists {} diff_ids",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (l, diff) in manifest.layers().iter().zip(diff_ids) {
            layers.push(Layer {
                digest: parse_digest(&what, l.digest().as_ref())?,
                size: l.size(),
                media_type: l.media_type().to_string(),
                diff_id: parse_digest(&what, diff)?,
            });
        }
        Ok(Image {
            reference: reference.to_string(),
            manifest: manifest_digest,
            config_digest,
            config,
            layers,
        })
    }

    /// Unpacks every layer not yet unpacked; returns the snapshot dirs, base layer first.
    pub fn unpack(
        &self,
        image: &Image,
        opts: UnpackOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<PathBuf>, ImageError> {
        let mut p = Progress {
            layers_total: image.layers.len(),
            bytes_total: image.layers.iter().map(|l| l.size).sum(),
            ..Default::default()
        };
        let mut dirs = Vec::new();
        for l in &image.layers {
            let dir = self.snapshots.apply(
                &self.content,
                &l.digest,
                &l.diff_id,
                Compression::from_media_type(&l.media_type),
                opts,
            )?;
            dirs.push(dir);
            p.layers_done += 1;
            p.bytes_done += l.size;
            progress(p);
        }
        Ok(dirs)
    }

    /// Imports an OCI image layout or a docker-archive tarball; returns the references
    /// it tagged. Every blob is verified against its name before it is kept.
    pub fn import_tar(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let file = std::fs::File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let mut files: BTreeMap<String, Digest> = BTreeMap::new();
        let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let what = |n: &str| format!("{} member {n}", path.display());
        for entry in archive.entries().map_err(|e| ImageError::io("reading", path, e))? {
            let mut entry = entry.map_err(|e| ImageError::io("reading", path, e))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name =
                String::from_utf8_lossy(&entry.path_bytes()).trim_start_matches("./").to_string();
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                // An OCI layout blob: its name is its digest.
                let d = parse_digest(&what(&name), &format!("sha256:{hex}"))?;
                let size = entry.size();
                self.content.ingest(&d, Some(size), None, &mut entry, &mut |_| {})?;
                files.insert(name, d);
            } else if name == "index.json" || name == "manifest.json" || name == "oci-layout" {
                let mut b = Vec::new();
                (&mut entry)
                    .take(MAX_METADATA_BYTES + 1)
                    .read_to_end(&mut b)
                    .map_err(|e| ImageError::io("reading", path, e))?;
                if b.len() as u64 > MAX_METADATA_BYTES {
                    return Err(invalid(what(&name), "over the metadata size limit"));
                }
                small.insert(name, b);
            } else {
                // docker-archive members (config JSON, layer.tar) are named by path.
                let (d, _) = self.content.ingest_unnamed(&mut entry)?;
                files.insert(name, d);
            }
        }
        if let Some(index) = small.get("index.json") {
            self.import_oci_index(path, index)
        } else if let Some(manifest) = small.get("manifest.json") {
            self.import_docker_manifest(path, manifest, &files)
        } else {
            Err(invalid(
                path.display().to_string(),
                "neither an OCI layout (index.json) nor a docker-archive (manifest.json)",
            ))
        }
    }

    fn import_oci_index(&self, path: &Path, index: &[u8]) -> Result<Vec<String>, ImageError> {
        let what = format!("{} index.json", path.display());
        let idx = ImageIndex::from_reader(index).map_err(|e| invalid(&what, e.to_string()))?;
        let mut tagged = Vec::new();
        for m in idx.manifests() {
            let d = parse_digest(&what, m.digest().as_ref())?;
            if !self.content.has(&d) {
                return Err(ImageError::MissingBlob { digest: d.to_string() });
            }
            let ann = m.annotations().clone().unwrap_or_default();
            let name = ann
                .get("io.containerd.image.name")
                .or_else(|| ann.get("org.opencontainers.image.ref.name"))
                .cloned();
            let Some(name) = name else { continue };
            // A bare ref.name is a tag ("latest"), not a repository.
            let reference = if name.contains('/') || name.contains(':') {
                name
            } else {
                format!("localhost/imported:{name}")
            };
            // Resolve now, so a broken import fails here and not at container start.
            self.resolve_digest(&reference, &d)?;
            self.tag(&reference, &d)?;
            tagged.push(normalize(&reference));
        }
        Ok(tagged)
    }

    fn import_docker_manifest(
        &self,
        path: &Path,
        manifest: &[u8],
        files: &BTreeMap<String, Digest>,
    ) -> Result<Vec<String>, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let what = format!("{} manifest.json", path.display());
        let entries: Vec<Entry> =
            serde_json::from_slice(manifest).map_err(|e| invalid(&what, e.to_string()))?;
        let find = |name: &str| {
            files
                .get(name.trim_start_matches("./"))
                .cloned()
                .ok_or_else(|| invalid(&what, format!("names {name}, which the archive lacks")))
        };
        let mut tagged = Vec::new();
        for e in entries {
            let config = find(&e.config)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let d = find(l)?;
                let size = std::fs::metadata(self.content.path(&d))
                    .map_err(|er| ImageError::io("stat", self.content.path(&d), er))?
                    .len();
                layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": size}));
            }
            let config_size = std::fs::metadata(self.content.path(&config))
                .map_err(|er| ImageError::io("stat", self.content.path(&config), er))?
                .len();
            // docker-archive layers are uncompressed tars: an OCI manifest describes them exactly.
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
                "layers": layers,
            });
            let bytes = serde_json::to_vec(&m).expect("manifest serializes");
            let d = Digest::of(&bytes);
            self.content.put(&d, &bytes)?;
            for t in e.repo_tags.unwrap_or_default() {
                self.resolve_digest(&t, &d)?;
                self.tag(&t, &d)?;
                tagged.push(normalize(&t));
            }
        }
        Ok(tagged)
    }

    /// Imports every `*.tar` in `dir` (how an air-gapped node preloads images). A bad
    /// tarball is reported and skipped; the others still import.
    pub fn import_dir(&self, dir: &Path) -> Vec<(PathBuf, Result<Vec<String>, ImageError>)> {
        let mut out = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        paths.sort();
        for p in paths {
            let r = self.import_tar(&p);
            if let Err(e) = &r {
                tracing::warn!(tarball = %p.display(), %e, "image import failed");
            }
            out.push((p, r));
        }
        out
    }

    /// Removes blobs and snapshots no tagged image uses and that are not in `in_use`
    /// (snapshot diff_ids of running containers whose image was untagged).
    pub fn gc(&self, in_use: &HashSet<Digest>) -> Result<GcStats, ImageError> {
        let mut keep_blobs: HashSet<Digest> = HashSet::new();
        let mut keep_snaps: HashSet<Digest> = in_use.clone();
        for (reference, top) in self.list()? {
            keep_blobs.insert(top.clone());
            if let Ok(bytes) = self.content.read_verified(&top, MAX_METADATA_BYTES) {
                if let Ok(ManifestDoc::Index(idx)) = parse_manifest_doc(&reference, &bytes) {
                    for m in idx.manifests() {
                        if let Ok(d) = Digest::parse(m.digest().as_ref()) {
                            keep_blobs.insert(d);
                        }
                    }
                }
            }
            if let Ok(img) = self.resolve_digest(&reference, &top) {
                keep_blobs.insert(img.manifest);
                keep_blobs.insert(img.config_digest);
                for l in img.layers {
                    keep_blobs.insert(l.digest);
                    keep_snaps.insert(l.diff_id);
                }
            }
        }
        let mut stats = GcStats::default();
        for d in self.content.list() {
            if !keep_blobs.contains(&d) && self.content.remove(&d).is_ok() {
                stats.blobs_removed += 1;
            }
        }
        for d in self.snapshots.list() {
            if !keep_snaps.contains(&d) && self.snapshots.remove(&d).is_ok() {
                stats.snapshots_removed += 1;
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("me/app:1"), "docker.io/me/app:1");
        assert_eq!(normalize("127.0.0.1:5000/probe"), "127.0.0.1:5000/probe:latest");
        assert_eq!(normalize("localhost/x:y"), "localhost/x:y");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize(&format!("reg.io/a@{d}")), format!("reg.io/a@{d}"));
    }
}
