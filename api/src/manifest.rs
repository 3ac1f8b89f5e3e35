//! Manifests as users write them: YAML (several documents separated by `---`) or JSON, a
//! single object or a `List`. Each object is matched to its resource here; admission
//! (`admit.rs`) checks its fields.

use crate::resources::{by_kind, by_kind_any_version, ResourceInfo};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Manifest {
    pub resource: &'static ResourceInfo,
    pub object: Value,
    /// Where it came from, for messages: `document 2`, `document 1, item 3`.
    pub origin: String,
}

impl Manifest {
    pub fn name(&self) -> &str {
        self.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.object.pointer("/metadata/namespace").and_then(Value::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ManifestError {
    pub origin: String,
    pub message: String,
}

/// Parses YAML or JSON text into objects; null (empty) documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<(String, Value)>, ManifestError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| ManifestError {
            origin: "JSON".into(),
            message: format!("line {} column {}: {e}", e.line(), e.column()),
        })?;
        return Ok(match v {
            Value::Array(items) => {
                items.into_iter().enumerate().map(|(i, v)| (format!("item {}", i + 1), v)).collect()
            }
            v => vec![("document 1".into(), v)],
        });
    }
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = format!("document {}", i + 1);
        let v = Value::deserialize(doc).map_err(|e| ManifestError {
            origin: origin.clone(),
            message: format!("invalid YAML: {e}"),
        })?;
        if !v.is_null() {
            out.push((origin, v));
        }
    }
    Ok(out)
}

/// Parses and resolves every object; `List`s are flattened.
pub fn decode(text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for (origin, v) in parse_documents(text)? {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
            let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                out.push(resolve(format!("{origin}, item {}", j + 1), item)?);
            }
        } else {
            out.push(resolve(origin, v)?);
        }
    }
    Ok(out)
}

pub fn resolve(origin: String, v: Value) -> Result<Manifest, ManifestError> {
    let err = |m: String| ManifestError { origin: origin.clone(), message: m };
    if !v.is_object() {
        return Err(err("expected an object with apiVersion, kind and metadata".into()));
    }
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() {
        return Err(err("apiVersion is required (e.g. apps/v1)".into()));
    }
    if kind.is_empty() {
        return Err(err("kind is required (e.g. Deployment)".into()));
    }
    let resource = match by_kind(api_version, kind) {
        Some(r) => r,
        None => {
            return Err(err(match by_kind_any_version(kind) {
                Some(r) => {
                    format!("{kind} is served as apiVersion {}, not {api_version}", r.api_version())
                }
                None => format!(
                    "no kind {kind:?} in {api_version}: Flotilla serves {}",
                    crate::resources::RESOURCES
                        .iter()
                        .map(|r| r.kind)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }))
        }
    };
    Ok(Manifest { resource, object: v, origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
data: {k: v}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: s}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d}
"#;
        let m = decode(text).unwrap();
        let kinds: Vec<&str> = m.iter().map(|m| m.resource.kind).collect();
        assert_eq!(kinds, ["ConfigMap", "Service", "Deployment"]);
        assert_eq!(m[2].origin, "document 3, item 2");
        assert_eq!(m[0].name(), "a");
    }

    #[test]
    fn json_single_and_array() {
        let m = decode(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#).unwrap();
        assert_eq!(m[0].resource.plural, "pods");
        let m = decode(
            r#"[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}},
                          {"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}]"#,
        )
        .unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn bad_manifests_say_what_to_fix() {
        let cases = [
            ("kind: Pod\nmetadata: {name: p}\n", "document 1: apiVersion is required"),
            ("apiVersion: v1\nmetadata: {name: p}\n", "document 1: kind is required"),
            (
                "apiVersion: extensions/v1beta1\nkind: Deployment\n",
                "Deployment is served as apiVersion apps/v1",
            ),
            ("apiVersion: v1\nkind: Widget\n", "no kind \"Widget\" in v1"),
            ("apiVersion: v1\nkind: Pod\nmetadata: [\n", "document 1: invalid YAML"),
            ("{\"apiVersion\": ", "JSON: line 1"),
            ("- a\n- b\n", "expected an object"),
        ];
        for (text, want) in cases {
            let e = decode(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}

/// The fuzz targets' properties (api/fuzz), run on deterministic pseudo-random inputs so every
/// `cargo test` exercises them without nightly.
#[cfg(test)]
mod robustness {
    use super::decode;
    use crate::selector::LabelSelector;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545F4914F6CDD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const SEED: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: default\n  labels: {app: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: c\n        image: nginx:1.27\n        ports: [{containerPort: 80}]\n        resources: {limits: {cpu: 500m, memory: 128Mi}}\n";

    #[test]
    fn mutated_manifests_never_panic() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        let alphabet = b" \n:-{}[]\"'#&*!|>%@`,0123456789abcdefghijklmnopqrstuvwxyzAPIKVMNS.";
        for _ in 0..3000 {
            let mut b = SEED.as_bytes().to_vec();
            for _ in 0..1 + rng.below(6) {
                let i = rng.below(b.len());
                match rng.below(3) {
                    0 => b[i] = alphabet[rng.below(alphabet.len())],
                    1 => b.insert(i, alphabet[rng.below(alphabet.len())]),
                    _ => {
                        b.remove(i);
                    }
                }
            }
            let Ok(text) = String::from_utf8(b) else { continue };
            if let Ok(ms) = decode(&text) {
                for m in ms {
                    let _ = (m.resource.admit)(&m.object, None, m.resource);
                }
            }
        }
    }

    #[test]
    fn random_selectors_never_panic_and_round_trip() {
        let mut rng = Rng(42);
        let alphabet = b"ab=!,() innotin.-/_xyz01";
        for _ in 0..20000 {
            let len = rng.below(24);
            let s: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())] as char).collect();
            if let Ok(sel) = LabelSelector::parse(&s) {
                let printed = sel.to_string();
                assert_eq!(
                    LabelSelector::parse(&printed).as_ref(),
                    Ok(&sel),
                    "{s:?} → {printed:?}"
                );
            }
        }
    }
}
