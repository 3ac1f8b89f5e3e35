//! Decoding part of a JSON document: fields outside a [`Keep`] tree are skipped by the parser
//! instead of being built into a `Value` and dropped. An informer holding a few fields of many
//! objects (the scheduler's pods) spends its time on what it keeps.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// What to keep of a value: all of it, or some fields of an object (of each object, when the
/// value is an array of them). Scalars are kept whatever the tree says.
#[derive(Debug)]
pub enum Keep {
    All,
    Fields(&'static [(&'static str, Keep)]),
}

/// `json` decoded, keeping `keep` of it.
pub fn decode(json: &[u8], keep: &Keep) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = keep.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

impl<'de> DeserializeSeed<'de> for &Keep {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            Keep::All => serde::Deserialize::deserialize(d),
            Keep::Fields(fields) => d.deserialize_any(Pruned(fields)),
        }
    }
}

struct Pruned(&'static [(&'static str, Keep)]);

impl<'de> Visitor<'de> for Pruned {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let keep = Keep::Fields(self.0);
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(&keep)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(field) = map.next_key_seed(Field(self.0))? {
            match field {
                Some(i) => {
                    let (name, keep) = &self.0[i];
                    let v = map.next_value_seed(keep)?;
                    out.insert((*name).to_string(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// A key, as its index in the kept fields: no allocation for the ones skipped.
struct Field(&'static [(&'static str, Keep)]);

impl<'de> DeserializeSeed<'de> for Field {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Field {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(name, _)| *name == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static VIEW: Keep = Keep::Fields(&[
        ("metadata", Keep::Fields(&[("name", Keep::All), ("labels", Keep::All)])),
        ("items", Keep::Fields(&[("a", Keep::All)])),
        ("n", Keep::All),
    ]);

    #[test]
    fn only_the_kept_fields_are_decoded() {
        let doc = json!({
            "metadata": {"name": "x\"y", "labels": {"k": "v"}, "annotations": {"big": "z"}},
            "items": [{"a": [1, 2.5, null, true], "b": {"deep": [1]}}, 7, "s"],
            "n": -3, "other": {"metadata": {"name": "no"}},
        });
        let v = decode(doc.to_string().as_bytes(), &VIEW).unwrap();
        assert_eq!(
            v,
            json!({"metadata": {"name": "x\"y", "labels": {"k": "v"}},
                "items": [{"a": [1, 2.5, null, true]}, 7, "s"], "n": -3})
        );
        // The whole document, for Keep::All; escaped keys are matched by their value.
        assert_eq!(decode(doc.to_string().as_bytes(), &Keep::All).unwrap(), doc);
        let escaped = br#"{"metad\u0061ta": {"name": "e"}, "x": 1}"#;
        assert_eq!(decode(escaped, &VIEW).unwrap(), json!({"metadata": {"name": "e"}}));
    }

    #[test]
    fn malformed_json_is_an_error_even_in_skipped_fields() {
        assert!(decode(br#"{"other": {"a": tru}, "n": 1}"#, &VIEW).is_err());
        assert!(decode(br#"{"n": 1} trailing"#, &VIEW).is_err());
        assert!(decode(br#"{"n": 1"#, &VIEW).is_err());
    }
}
