//! Pulling from an OCI distribution (v2) registry with `oci-client`: anonymous, basic or
//! bearer-token auth; HTTPS unless the registry is marked insecure. Every manifest and
//! blob goes through the content store's verification before anything uses it.

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use oci_client::{Client, Reference};

use super::content::MAX_METADATA_BYTES;
use super::store::{
    normalize, parse_manifest_doc, select_platform, Image, ImageStore, ManifestDoc, Progress,
    MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use super::{Digest, ImageError};

/// Registry credentials.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
}

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub auth: Auth,
    /// `host:port` of registries spoken to over plain HTTP (a loopback test registry).
    pub insecure_registries: Vec<String>,
}

const ACCEPT: &[&str] =
    &[MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST];

fn fetch_err(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Fetch { what: what.to_string(), reason: e.to_string() }
}

impl ImageStore {
    /// Pulls `reference` (manifest, config, missing layers), tags it and returns it resolved.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Image, ImageError> {
        let norm = normalize(reference);
        let r: Reference = norm.parse().map_err(|e| ImageError::Invalid {
            what: format!("reference {reference:?}"),
            reason: format!("{e}"),
        })?;
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
            ..Default::default()
        });
        let auth = match &opts.auth {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Auth::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        };
        if let RegistryAuth::Basic(..) = auth {
            // Exchange the credentials for a token now: oci-client would otherwise swallow a
            // refused exchange and report the anonymous request's 401 instead.
            client.auth(&r, &auth, RegistryOperation::Pull).await.map_err(|e| {
                fetch_err(&format!("credentials for {norm}"), format!("refused: {e}"))
            })?;
        }

        let top =
            self.fetch_manifest(&client, &r, &auth, r.digest().map(str::to_string), &norm).await?;
        let bytes = self.content.read_verified(&top, MAX_METADATA_BYTES)?;
        let manifest_digest = match parse_manifest_doc(&norm, &bytes)? {
            ManifestDoc::Manifest(_) => top.clone(),
            ManifestDoc::Index(idx) => {
                let (d, _) = select_platform(&format!("image {norm}"), &idx)?;
                let by_digest = r.clone_with_digest(d.to_string());
                self.fetch_manifest(&client, &by_digest, &auth, Some(d.to_string()), &norm).await?
            }
        };
        let bytes = self.content.read_verified(&manifest_digest, MAX_METADATA_BYTES)?;
        let ManifestDoc::Manifest(manifest) = parse_manifest_doc(&norm, &bytes)? else {
            return Err(ImageError::Invalid {
                what: format!("image {norm}"),
                reason: "nested image indexes are not supported".into(),
            });
        };

        let config = manifest.config();
        let config_digest = Digest::parse(config.digest().as_ref())
            .map_err(|e| ImageError::Invalid { what: norm.clone(), reason: e })?;
        self.fetch_blob(
            &client,
            &r,
            &config_digest,
            config.size(),
            Some(MAX_METADATA_BYTES),
            &mut |_| {},
        )
        .await?;

        let mut p = Progress {
            layers_total: manifest.layers().len(),
            bytes_total: manifest.layers().iter().map(|l| l.size()).sum(),
            ..Default::default()
        };
        progress(p);
        for l in manifest.layers() {
            let d = Digest::parse(l.digest().as_ref())
                .map_err(|e| ImageError::Invalid { what: norm.clone(), reason: e })?;
            let base = p.bytes_done;
            self.fetch_blob(&client, &r, &d, l.size(), None, &mut |n| {
                p.bytes_done = base + n;
                progress(p);
            })
            .await?;
            p.bytes_done = base + l.size();
            p.layers_done += 1;
            progress(p);
        }
        // Check the whole image before the name points at it.
        let image = self.resolve_digest(&norm, &top)?;
        if norm.contains('@') {
            return Ok(image);
        }
        self.tag(&norm, &top)?;
        Ok(image)
    }

    async fn fetch_manifest(
        &self,
        client: &Client,
        r: &Reference,
        auth: &RegistryAuth,
        expected: Option<String>,
        name: &str,
    ) -> Result<Digest, ImageError> {
        let (bytes, _) = client.pull_manifest_raw(r, auth, ACCEPT).await.map_err(|e| {
            let hint = match e {
                OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_) => {
                    " (the registry wants credentials with pull access to this repository)"
                }
                _ => "",
            };
            fetch_err(&format!("manifest of {name}"), format!("{e}{hint}"))
        })?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(ImageError::TooLarge {
                digest: format!("manifest of {name}"),
                size: bytes.len() as u64,
                limit: MAX_METADATA_BYTES,
            });
        }
        // The digest is ours to compute; a registry's header is not trusted.
        let d = match expected {
            Some(e) => Digest::parse(&e)
                .map_err(|er| ImageError::Invalid { what: name.to_string(), reason: er })?,
            None => Digest::of(&bytes),
        };
        self.content.put(&d, &bytes)?;
        Ok(d)
    }

    async fn fetch_blob(
        &self,
        client: &Client,
        r: &Reference,
        d: &Digest,
        size: u64,
        limit: Option<u64>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), ImageError> {
        if self.content.has(d) {
            return Ok(());
        }
        let mut ing = self.content.begin(Some(d), Some(size), limit)?;
        let digest = d.to_string();
        let what = format!("blob {digest}");
        let mut stream =
            client.pull_blob_stream(r, digest.as_str()).await.map_err(|e| fetch_err(&what, e))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| fetch_err(&what, e))?;
            ing.write(&chunk)?;
            progress(ing.written());
        }
        ing.commit()?;
        Ok(())
    }
}
