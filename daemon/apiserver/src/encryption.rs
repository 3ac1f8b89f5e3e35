//! Encryption at rest, as Kubernetes' EncryptionConfiguration (`apiserver.config.k8s.io/v1`)
//! describes it: per resource, a list of providers; the first one writes, every one reads.
//! A stored value starts with `k8s:enc:<provider>:v1:<key name>:`, so a reader knows which
//! key wrote it; a value without a prefix is plain text (the `identity` provider).
//!
//! The formats are Kubernetes' own, so a store written by one reads in the other:
//! - `aesgcm`: 12-byte random nonce, then AES-GCM ciphertext and tag; the store key is the
//!   associated data (a value copied under another key does not decrypt).
//! - `aescbc`: 16-byte random IV, then AES-CBC with PKCS#7 padding.
//! - `secretbox`: 24-byte random nonce, then XSalsa20-Poly1305.
//!
//! AES comes from aws-lc-rs (which rustls already brings), secretbox from RustCrypto.

use anyhow::{bail, Context, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_192_GCM, AES_256_GCM};
use aws_lc_rs::cipher::{
    DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
    AES_256,
};
use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use serde::Deserialize;
use std::path::Path;

enum Cipher {
    AesGcm(LessSafeKey),
    AesCbc([u8; 32]),
    Secretbox(Box<XSalsa20Poly1305>),
}

struct Key {
    name: String,
    cipher: Cipher,
}

enum Provider {
    /// `aesgcm`, `aescbc` or `secretbox`, with its keys (the first encrypts).
    Keys {
        kind: &'static str,
        keys: Vec<Key>,
    },
    Identity,
}

struct Rule {
    /// Store key prefixes of the resources (`/registry/core/secrets/`).
    prefixes: Vec<String>,
    providers: Vec<Provider>,
}

/// The loaded configuration.
pub struct Encryption {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Encryption {
    /// Never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encryption({} rules)", self.rules.len())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    resources: Vec<FileResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileResource {
    resources: Vec<String>,
    providers: Vec<FileProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    aesgcm: Option<FileKeys>,
    aescbc: Option<FileKeys>,
    secretbox: Option<FileKeys>,
    identity: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    keys: Vec<FileKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    secret: String,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source works");
    b
}

fn cipher(kind: &str, secret: &[u8], field: &str) -> Result<Cipher> {
    Ok(match kind {
        "aesgcm" => {
            let alg = match secret.len() {
                16 => &AES_128_GCM,
                24 => &AES_192_GCM,
                32 => &AES_256_GCM,
                n => bail!("{field}: an aesgcm key must be 16, 24 or 32 bytes, got {n}"),
            };
            Cipher::AesGcm(LessSafeKey::new(UnboundKey::new(alg, secret).context("AES key")?))
        }
        "aescbc" => match <[u8; 32]>::try_from(secret) {
            Ok(k) => Cipher::AesCbc(k),
            Err(_) => bail!("{field}: an aescbc key must be 32 bytes, got {}", secret.len()),
        },
        _ => match crypto_secretbox::Key::from_exact_iter(secret.iter().copied()) {
            Some(k) => Cipher::Secretbox(Box::new(XSalsa20Poly1305::new(&k))),
            None => bail!("{field}: a secretbox key must be 32 bytes, got {}", secret.len()),
        },
    })
}

impl Encryption {
    /// Reads and checks a configuration file; every error names the field.
    pub fn load(path: &Path) -> Result<Encryption> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the encryption configuration {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("encryption configuration {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Encryption> {
        let f: FileConfig = serde_yaml::from_str(text)?;
        if f.kind != "EncryptionConfiguration" || f.api_version != "apiserver.config.k8s.io/v1" {
            bail!(
                "expected apiVersion apiserver.config.k8s.io/v1, kind EncryptionConfiguration; got {}, {}",
                f.api_version,
                f.kind
            );
        }
        let mut rules = Vec::new();
        for (i, r) in f.resources.iter().enumerate() {
            let mut prefixes = Vec::new();
            for (j, res) in r.resources.iter().enumerate() {
                let (plural, group) = res.split_once('.').unwrap_or((res, ""));
                let info = flotilla_api::lookup(plural).filter(|i| i.group == group).with_context(
                    || format!("resources[{i}].resources[{j}]: unknown resource {res:?}"),
                )?;
                prefixes.push(info.key_prefix());
            }
            if r.providers.is_empty() {
                bail!("resources[{i}].providers: at least one provider is required");
            }
            let mut providers = Vec::new();
            for (j, p) in r.providers.iter().enumerate() {
                let field = format!("resources[{i}].providers[{j}]");
                let set =
                    [("aesgcm", &p.aesgcm), ("aescbc", &p.aescbc), ("secretbox", &p.secretbox)];
                let given: Vec<_> = set.iter().filter(|(_, k)| k.is_some()).collect();
                match (given.as_slice(), &p.identity) {
                    ([], Some(_)) => providers.push(Provider::Identity),
                    ([(kind, Some(ks))], None) => {
                        if ks.keys.is_empty() {
                            bail!("{field}.{kind}.keys: at least one key is required");
                        }
                        let mut keys = Vec::new();
                        for (k, key) in ks.keys.iter().enumerate() {
                            let kf = format!("{field}.{kind}.keys[{k}]");
                            if key.name.is_empty() || key.name.contains(':') {
                                bail!(
                                    "{kf}.name: {:?} must be non-empty and without ':'",
                                    key.name
                                );
                            }
                            let secret = base64::engine::general_purpose::STANDARD
                                .decode(key.secret.trim())
                                .with_context(|| format!("{kf}.secret: not base64"))?;
                            keys.push(Key {
                                name: key.name.clone(),
                                cipher: cipher(kind, &secret, &format!("{kf}.secret"))?,
                            });
                        }
                        providers.push(Provider::Keys { kind, keys });
                    }
                    _ => bail!(
                        "{field}: exactly one of aesgcm, aescbc, secretbox or identity is required"
                    ),
                }
            }
            rules.push(Rule { prefixes, providers });
        }
        Ok(Encryption { rules })
    }

    /// A configuration for Secrets with one fresh random AES-GCM key, then identity (so that
    /// values written before encryption was on still read), written with mode 0600.
    pub fn write_default(path: &Path) -> Result<()> {
        let key = base64::engine::general_purpose::STANDARD.encode(random::<32>());
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  \
             - resources:\n      - secrets\n    providers:\n      - aesgcm:\n          keys:\n            \
             - name: key1\n              secret: {key}\n      - identity: {{}}\n"
        );
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    fn providers(&self, key: &str) -> Option<&[Provider]> {
        self.rules
            .iter()
            .find(|r| r.prefixes.iter().any(|p| key.starts_with(p)))
            .map(|r| r.providers.as_slice())
    }

    /// The value to store under `key`: encrypted by the first provider when the resource is
    /// configured, as is otherwise.
    pub fn encrypt(&self, key: &str, plain: Vec<u8>) -> Vec<u8> {
        let Some(Provider::Keys { kind, keys }) = self.providers(key).and_then(|p| p.first())
        else {
            return plain;
        };
        let k = &keys[0];
        let mut out = format!("k8s:enc:{kind}:v1:{}:", k.name).into_bytes();
        match &k.cipher {
            Cipher::AesGcm(c) => {
                let nonce = random::<12>();
                let mut buf = plain;
                c.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(key.as_bytes()),
                    &mut buf,
                )
                .expect("AES-GCM sealing does not fail for stored sizes");
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&buf);
            }
            Cipher::AesCbc(secret) => {
                let ek = PaddedBlockEncryptingKey::cbc_pkcs7(
                    UnboundCipherKey::new(&AES_256, secret).expect("32-byte key"),
                )
                .expect("CBC key");
                let mut buf = plain;
                let ctx = ek.encrypt(&mut buf).expect("AES-CBC encryption");
                let iv: &[u8] = (&ctx).try_into().expect("CBC has an IV");
                out.extend_from_slice(iv);
                out.extend_from_slice(&buf);
            }
            Cipher::Secretbox(c) => {
                let nonce = random::<24>();
                let sealed = c
                    .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plain.as_slice())
                    .expect("secretbox sealing");
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
            }
        }
        out
    }

    /// The plain value stored under `key`, and whether it was written by another provider
    /// or key than the one that writes now (it is rewritten on its next update).
    pub fn decrypt(&self, key: &str, stored: &[u8]) -> Result<(Vec<u8>, bool), String> {
        let Some(providers) = self.providers(key) else { return Ok((stored.to_vec(), false)) };
        let primary_is = |kind: &str, name: &str| match providers.first() {
            Some(Provider::Keys { kind: k, keys }) => *k == kind && keys[0].name == name,
            _ => false,
        };
        if let Some(rest) = stored.strip_prefix(b"k8s:enc:") {
            for p in providers {
                let Provider::Keys { kind, keys } = p else { continue };
                let Some(rest) = rest.strip_prefix(format!("{kind}:v1:").as_bytes()) else {
                    continue;
                };
                for k in keys {
                    let Some(data) = rest.strip_prefix(format!("{}:", k.name).as_bytes()) else {
                        continue;
                    };
                    let plain = open(&k.cipher, key, data)
                        .map_err(|e| format!("{key}: {kind} key {:?}: {e}", k.name))?;
                    return Ok((plain, !primary_is(kind, &k.name)));
                }
            }
            let head = String::from_utf8_lossy(&stored[..stored.len().min(40)]).into_owned();
            let head = head.split(':').take(5).collect::<Vec<_>>().join(":");
            return Err(format!("{key}: no configured provider and key can read {head}:"));
        }
        if providers.iter().any(|p| matches!(p, Provider::Identity)) {
            let stale = !matches!(providers.first(), Some(Provider::Identity));
            return Ok((stored.to_vec(), stale));
        }
        Err(format!("{key}: stored unencrypted, and no identity provider is configured to read it"))
    }
}

fn open(c: &Cipher, key: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    match c {
        Cipher::AesGcm(k) => {
            if data.len() < 12 + 16 {
                return Err("the value is too short".into());
            }
            let (nonce, sealed) = data.split_at(12);
            let mut buf = sealed.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
            let plain = k
                .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
                .map_err(|_| "authentication failed (wrong key, or the value was altered)")?;
            Ok(plain.to_vec())
        }
        Cipher::AesCbc(secret) => {
            if data.len() < 32 || !data.len().is_multiple_of(16) {
                return Err("the value is not whole AES blocks".into());
            }
            let (iv, body) = data.split_at(16);
            let dk = PaddedBlockDecryptingKey::cbc_pkcs7(
                UnboundCipherKey::new(&AES_256, secret).map_err(|_| "bad key")?,
            )
            .map_err(|_| "bad key")?;
            let mut buf = body.to_vec();
            let iv: [u8; 16] = iv.try_into().expect("16 bytes");
            let plain = dk
                .decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
                .map_err(|_| "decryption failed (wrong key, or the value was altered)")?;
            Ok(plain.to_vec())
        }
        Cipher::Secretbox(k) => {
            if data.len() < 24 + 16 {
                return Err("the value is too short".into());
            }
            let (nonce, sealed) = data.split_at(24);
            k.decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
                .map_err(|_| "authentication failed (wrong key, or the value was altered)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(providers: &str) -> String {
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        )
    }

    const K32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
    const K16: &str = "MDEyMzQ1Njc4OWFiY2RlZg=="; // 16 bytes

    #[test]
    fn every_provider_round_trips_with_kubernetes_prefixes() {
        let key = "/registry/core/secrets/default/s";
        for kind in ["aesgcm", "aescbc", "secretbox"] {
            let e = Encryption::parse(&config(&format!(
                "  - {kind}:\n      keys:\n      - name: k1\n        secret: {K32}\n  - identity: {{}}\n"
            )))
            .unwrap();
            let stored = e.encrypt(key, b"{\"data\":\"hunter2\"}".to_vec());
            let prefix = format!("k8s:enc:{kind}:v1:k1:");
            assert!(stored.starts_with(prefix.as_bytes()), "{kind}");
            assert!(!stored.windows(7).any(|w| w == b"hunter2"), "{kind}: plain text stored");
            assert_eq!(
                e.decrypt(key, &stored).unwrap(),
                (b"{\"data\":\"hunter2\"}".to_vec(), false)
            );
            // Plain values written before encryption read through identity, marked stale.
            assert_eq!(e.decrypt(key, b"{}").unwrap(), (b"{}".to_vec(), true));
            // Other resources are not touched.
            assert_eq!(e.encrypt("/registry/core/configmaps/d/c", b"x".to_vec()), b"x");
        }
    }

    #[test]
    fn aesgcm_binds_the_value_to_its_key_and_detects_tampering() {
        let e = Encryption::parse(&config(&format!(
            "  - aesgcm:\n      keys:\n      - name: k1\n        secret: {K16}\n"
        )))
        .unwrap();
        let stored = e.encrypt("/registry/core/secrets/a/x", b"v".to_vec());
        assert!(e.decrypt("/registry/core/secrets/a/y", &stored).is_err());
        let mut bad = stored.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(e
            .decrypt("/registry/core/secrets/a/x", &bad)
            .unwrap_err()
            .contains("authentication failed"));
        // No identity provider: plain text is refused, not served.
        assert!(e
            .decrypt("/registry/core/secrets/a/x", b"{}")
            .unwrap_err()
            .contains("no identity provider"));
    }

    #[test]
    fn rotation_reads_old_keys_and_marks_them_stale() {
        let old = Encryption::parse(&config(&format!(
            "  - aesgcm:\n      keys:\n      - name: k1\n        secret: {K32}\n"
        )))
        .unwrap();
        let k = "/registry/core/secrets/a/x";
        let stored = old.encrypt(k, b"v".to_vec());
        let new = Encryption::parse(&config(&format!(
            "  - aesgcm:\n      keys:\n      - name: k2\n        secret: {K16}\n      - name: k1\n        secret: {K32}\n"
        )))
        .unwrap();
        assert_eq!(new.decrypt(k, &stored).unwrap(), (b"v".to_vec(), true));
        let again = new.encrypt(k, b"v".to_vec());
        assert!(again.starts_with(b"k8s:enc:aesgcm:v1:k2:"));
        assert_eq!(new.decrypt(k, &again).unwrap(), (b"v".to_vec(), false));
        assert!(old
            .decrypt(k, &again)
            .unwrap_err()
            .contains("no configured provider and key can read k8s:enc:aesgcm:v1:k2:"));
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let short = Encryption::parse(&config(
            "  - aesgcm:\n      keys:\n      - name: k1\n        secret: c2hvcnQ=\n",
        ));
        let e = format!("{:#}", short.err().unwrap());
        assert!(e.contains("resources[0].providers[0].aesgcm.keys[0].secret: an aesgcm key must be 16, 24 or 32 bytes, got 5"), "{e}");
        let cbc = Encryption::parse(&config(&format!(
            "  - aescbc:\n      keys:\n      - name: k1\n        secret: {K16}\n"
        )));
        assert!(format!("{:#}", cbc.err().unwrap()).contains("an aescbc key must be 32 bytes"));
        let two = Encryption::parse(&config(&format!(
            "  - aesgcm:\n      keys:\n      - name: k1\n        secret: {K16}\n    identity: {{}}\n"
        )));
        assert!(format!("{:#}", two.err().unwrap()).contains("exactly one of aesgcm"));
        let unknown =
            Encryption::parse(&config("  - identity: {}\n").replace("[secrets]", "[widgets]"));
        assert!(format!("{:#}", unknown.err().unwrap()).contains("unknown resource \"widgets\""));
    }
}
