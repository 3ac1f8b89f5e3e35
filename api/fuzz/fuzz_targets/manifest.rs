//! Manifest decoding and admission must reject garbage with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(manifests) = flotilla_api::manifest::decode(text) {
        for m in manifests {
            let mut obj = m.object.clone();
            if obj.get("metadata").is_none_or(|m| !m.is_object()) {
                obj["metadata"] = serde_json::json!({});
            }
            obj["metadata"]["namespace"] = serde_json::json!("default");
            let _ = (m.resource.admit)(&obj, None, m.resource);
            let _ = (m.resource.admit)(&obj, Some(&m.object), m.resource);
        }
    }
});
