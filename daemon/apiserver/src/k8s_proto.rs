//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) of request bodies, which
//! client-go's typed clients send and so kubectl's `create deployment|service|configmap|…`,
//! `certificate approve`, `drain`, `auth can-i` and `create token`. The body is the `k8s\0`
//! magic and a `runtime.Unknown` envelope around the object's message; it is turned into the
//! JSON the core takes, by one decoder that walks the table generated from k8s.io/api's
//! `generated.proto` files and Go types (`xtask/gen/k8s_proto.py`). A field this server does
//! not know is skipped, as protobuf decoders do; a type it does not know is an error.

use crate::proto_table::{FIELDS, LISTS};
use base64::Engine;
use flotilla_api::error::{ApiError, Reason};
use serde_json::{Map, Value};

const REPEATED: u8 = 1;
const INLINE: u8 = 2;
const KEEP_ZERO: u8 = 4;
/// Messages nest far less deeply than this; a hostile body must not exhaust the stack.
const MAX_DEPTH: usize = 64;

/// A protobuf wire value.
enum Wire<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("a varint runs past the end")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a varint is longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err("a field runs past the end of its message".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field's number and value.
    fn field(&mut self) -> Result<(u32, Wire<'a>), String> {
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "a field number is out of range")?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.take(8)?.try_into().expect("8 bytes")),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length is out of range")?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(self.take(4)?.try_into().expect("4 bytes")),
            w => return Err(format!("wire type {w} (groups) is not used by Kubernetes")),
        };
        Ok((tag, wire))
    }
}

fn fields_of(msg: &str) -> &'static [(&'static str, u32, &'static str, &'static str, u8)] {
    let start = FIELDS.partition_point(|f| f.0 < msg);
    let end = start + FIELDS[start..].partition_point(|f| f.0 == msg);
    &FIELDS[start..end]
}

fn known(msg: &str) -> bool {
    !fields_of(msg).is_empty() || LISTS.contains(&msg) || special(msg)
}

fn special(msg: &str) -> bool {
    matches!(
        msg,
        "meta.v1.Time"
            | "meta.v1.MicroTime"
            | "meta.v1.Duration"
            | "meta.v1.FieldsV1"
            | "intstr.IntOrString"
            | "resource.Quantity"
            | "resource.QuantityValue"
            | "runtime.RawExtension"
    )
}

struct Decoder {
    depth: usize,
}

impl Decoder {
    /// `msg`'s fields from `buf`, into `out`.
    fn message(
        &mut self,
        msg: &str,
        buf: &[u8],
        out: &mut Map<String, Value>,
    ) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("messages nest deeper than {MAX_DEPTH}"));
        }
        let table = fields_of(msg);
        let mut r = Reader { buf };
        while !r.buf.is_empty() {
            let (tag, wire) = r.field()?;
            let Some(&(_, _, json, ty, flags)) = table.iter().find(|f| f.1 == tag) else {
                continue;
            };
            let at = |e: String| format!("{json}: {e}");
            if let Some(kv) = ty.strip_prefix("map:") {
                let (kt, vt) = kv.split_once(':').expect("map:K:V");
                let Wire::Bytes(entry) = wire else {
                    return Err(at("a map entry must be a message".into()));
                };
                let (k, v) = self.map_entry(kt, vt, entry).map_err(at)?;
                let m = out.entry(json).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = m {
                    m.insert(k, v);
                }
                continue;
            }
            if flags & REPEATED != 0 {
                let items = match (&wire, ty) {
                    // A packed list of numbers (proto3 style; gogo writes proto2 unpacked).
                    (Wire::Bytes(b), "int32" | "int64" | "bool" | "double" | "float") => {
                        let mut inner = Reader { buf: b };
                        let mut vs = Vec::new();
                        while !inner.buf.is_empty() {
                            let w = match ty {
                                "double" => Wire::Fixed64(inner.take(8)?.try_into().expect("8")),
                                "float" => Wire::Fixed32(inner.take(4)?.try_into().expect("4")),
                                _ => Wire::Varint(inner.varint()?),
                            };
                            vs.push(self.value(ty, w).map_err(at)?);
                        }
                        vs
                    }
                    _ => vec![self.value(ty, wire).map_err(at)?],
                };
                let list = out.entry(json).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(l) = list {
                    l.extend(items);
                }
                continue;
            }
            let v = self.value(ty, wire).map_err(at)?;
            if flags & INLINE != 0 {
                if let Value::Object(m) = v {
                    out.extend(m);
                }
            } else if v.is_null() {
                // The zero Time: Go writes null, which k8s-openapi's required times refuse.
                out.remove(json);
            } else if flags & KEEP_ZERO != 0 || !zero(&v) {
                out.insert(json.to_string(), v);
            } else {
                // proto2 has the last occurrence win, a zero one included.
                out.remove(json);
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn map_entry(&mut self, kt: &str, vt: &str, entry: &[u8]) -> Result<(String, Value), String> {
        let mut r = Reader { buf: entry };
        let (mut k, mut v) = (Value::String(String::new()), None);
        while !r.buf.is_empty() {
            match r.field()? {
                (1, w) => k = self.value(kt, w)?,
                (2, w) => v = Some(self.value(vt, w)?),
                _ => {}
            }
        }
        let k = match k {
            Value::String(s) => s,
            other => other.to_string(),
        };
        // An entry without a value has the type's zero value.
        let v = match v {
            Some(v) => v,
            None => self.value(vt, Wire::Bytes(&[]))?,
        };
        Ok((k, v))
    }

    /// One value of type `ty`.
    fn value(&mut self, ty: &str, wire: Wire<'_>) -> Result<Value, String> {
        Ok(match (ty, wire) {
            ("string", Wire::Bytes(b)) => Value::String(
                std::str::from_utf8(b).map_err(|_| "a string is not UTF-8")?.to_string(),
            ),
            ("bytes", Wire::Bytes(b)) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
            // int32 is sign-extended to 64 bits on the wire.
            ("int32", Wire::Varint(n)) => Value::from(n as i64 as i32),
            ("int64", Wire::Varint(n)) => Value::from(n as i64),
            ("bool", Wire::Varint(n)) => Value::Bool(n != 0),
            ("double", Wire::Fixed64(b)) => Value::from(f64::from_le_bytes(b)),
            ("float", Wire::Fixed32(b)) => Value::from(f64::from(f32::from_le_bytes(b))),
            (msg, Wire::Bytes(b)) if known(msg) => self.object(msg, b)?,
            (msg, Wire::Bytes(_)) if !matches!(msg, "string" | "bytes") => {
                return Err(format!("type {msg} is not known to this server"))
            }
            (ty, _) => return Err(format!("the wire type does not fit a {ty}")),
        })
    }

    /// A message's JSON: most are objects of their fields; a few have their own forms.
    fn object(&mut self, msg: &str, b: &[u8]) -> Result<Value, String> {
        let fields = |b: &[u8]| -> Result<Vec<(u32, Vec<u8>, u64)>, String> {
            let mut r = Reader { buf: b };
            let mut out = Vec::new();
            while !r.buf.is_empty() {
                match r.field()? {
                    (t, Wire::Varint(n)) => out.push((t, Vec::new(), n)),
                    (t, Wire::Bytes(b)) => out.push((t, b.to_vec(), 0)),
                    _ => {}
                }
            }
            Ok(out)
        };
        let num = |fs: &[(u32, Vec<u8>, u64)], t: u32| {
            fs.iter().rev().find(|f| f.0 == t).map_or(0, |f| f.2)
        };
        let bytes = |fs: &[(u32, Vec<u8>, u64)], t: u32| {
            fs.iter().rev().find(|f| f.0 == t).map(|f| f.1.clone()).unwrap_or_default()
        };
        let text =
            |v: Vec<u8>| String::from_utf8(v).map_err(|_| "a string is not UTF-8".to_string());
        Ok(match msg {
            // Time keeps whole seconds (meta/v1 time_proto.go); the zero time is JSON null.
            "meta.v1.Time" | "meta.v1.MicroTime" => {
                let fs = fields(b)?;
                let (secs, nanos) = (num(&fs, 1) as i64, num(&fs, 2) as i64 as i32);
                if b.is_empty() {
                    return Ok(Value::Null);
                }
                let ts = jiff::Timestamp::new(secs, if msg == "meta.v1.Time" { 0 } else { nanos })
                    .map_err(|e| format!("a time out of range: {e}"))?;
                let form = if msg == "meta.v1.Time" {
                    "%Y-%m-%dT%H:%M:%SZ"
                } else {
                    "%Y-%m-%dT%H:%M:%S.%6fZ"
                };
                Value::String(ts.strftime(form).to_string())
            }
            "meta.v1.Duration" => Value::String(go_duration(num(&fields(b)?, 1) as i64)),
            "resource.Quantity" | "resource.QuantityValue" => {
                Value::String(text(bytes(&fields(b)?, 1))?)
            }
            "intstr.IntOrString" => {
                let fs = fields(b)?;
                if num(&fs, 1) == 1 {
                    Value::String(text(bytes(&fs, 3))?)
                } else {
                    Value::from(num(&fs, 2) as i64 as i32)
                }
            }
            // Raw JSON (or, from a protobuf client, a nested protobuf object).
            "runtime.RawExtension" | "meta.v1.FieldsV1" => {
                let raw = bytes(&fields(b)?, 1);
                if raw.is_empty() {
                    Value::Null
                } else if raw.starts_with(b"k8s\0") {
                    self.envelope(&raw)?
                } else {
                    serde_json::from_slice(&raw).map_err(|e| format!("raw JSON: {e}"))?
                }
            }
            m if LISTS.contains(&m) => {
                let mut o = Map::new();
                self.message(m, b, &mut o)?;
                o.into_iter().next().map_or(Value::Array(Vec::new()), |(_, v)| v)
            }
            m => {
                let mut o = Map::new();
                self.message(m, b, &mut o)?;
                Value::Object(o)
            }
        })
    }

    /// `k8s\0` + runtime.Unknown{typeMeta{apiVersion, kind}, raw} as the object's JSON.
    fn envelope(&mut self, body: &[u8]) -> Result<Value, String> {
        let rest =
            body.strip_prefix(b"k8s\0").ok_or("a protobuf body must start with the k8s magic")?;
        let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
        let mut r = Reader { buf: rest };
        while !r.buf.is_empty() {
            match r.field()? {
                (1, Wire::Bytes(tm)) => {
                    let mut t = Reader { buf: tm };
                    while !t.buf.is_empty() {
                        match t.field()? {
                            (1, Wire::Bytes(s)) => api_version = String::from_utf8_lossy(s).into(),
                            (2, Wire::Bytes(s)) => kind = String::from_utf8_lossy(s).into(),
                            _ => {}
                        }
                    }
                }
                (2, Wire::Bytes(b)) => raw = b,
                (3, Wire::Bytes(enc)) if !enc.is_empty() => {
                    return Err(format!(
                        "content encoding {:?} is not supported",
                        String::from_utf8_lossy(enc)
                    ))
                }
                _ => {}
            }
        }
        let msg = message_of(&api_version, &kind).ok_or_else(|| {
            format!("{kind} of {api_version} has no protobuf encoding known to this server")
        })?;
        let mut o = Map::new();
        o.insert("apiVersion".into(), Value::String(api_version));
        o.insert("kind".into(), Value::String(kind));
        self.message(&msg, raw, &mut o)?;
        Ok(Value::Object(o))
    }
}

/// The table's message for a kind: `apps/v1` Deployment is `apps.v1.Deployment`; meta's kinds
/// (DeleteOptions, …) travel under any group.
fn message_of(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let pkg = if group.is_empty() { "core" } else { group.split('.').next()? };
    [format!("{pkg}.{version}.{kind}"), format!("meta.v1.{kind}")]
        .into_iter()
        .find(|m| !fields_of(m).is_empty())
}

fn zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Go's time.Duration.String(): "1h2m3.5s", "250ms", "0s".
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    if u < 1_000_000_000 {
        let (unit, div) = match u {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", frac(u, div));
    }
    let (h, rest) = (u / 3_600_000_000_000, u % 3_600_000_000_000);
    let (m, s) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let secs = format!("{}s", frac(s, 1_000_000_000));
    match (h, m) {
        (0, 0) => format!("{sign}{secs}"),
        (0, m) => format!("{sign}{m}m{secs}"),
        (h, m) => format!("{sign}{h}h{m}m{secs}"),
    }
}

/// `n / div` with its fraction, trailing zeros dropped.
fn frac(n: u64, div: u64) -> String {
    let (w, f) = (n / div, n % div);
    if f == 0 {
        return w.to_string();
    }
    let digits = div.to_string().len() - 1;
    let f = format!("{f:0digits$}");
    format!("{w}.{}", f.trim_end_matches('0'))
}

/// A protobuf body as JSON.
pub fn to_json(body: &[u8]) -> Result<Value, ApiError> {
    Decoder { depth: 0 }.envelope(body).map_err(|e| {
        if e.contains("no protobuf encoding known") {
            ApiError::new(Reason::UnsupportedMediaType, format!("{e}; send application/json"))
        } else {
            ApiError::bad_request(format!("invalid protobuf body: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf writer for the tests: (field, value) pairs.
    enum P {
        S(u32, &'static str),
        B(u32, Vec<u8>),
        V(u32, u64),
        M(u32, Vec<P>),
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn enc(fields: &[P]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            match f {
                P::S(t, s) => {
                    varint(u64::from(*t) << 3 | 2, &mut out);
                    varint(s.len() as u64, &mut out);
                    out.extend(s.as_bytes());
                }
                P::B(t, b) => {
                    varint(u64::from(*t) << 3 | 2, &mut out);
                    varint(b.len() as u64, &mut out);
                    out.extend(b);
                }
                P::V(t, n) => {
                    varint(u64::from(*t) << 3, &mut out);
                    varint(*n, &mut out);
                }
                P::M(t, m) => {
                    let b = enc(m);
                    varint(u64::from(*t) << 3 | 2, &mut out);
                    varint(b.len() as u64, &mut out);
                    out.extend(b);
                }
            }
        }
        out
    }

    fn body(api_version: &'static str, kind: &'static str, object: Vec<P>) -> Vec<u8> {
        let raw = enc(&object);
        let mut b = b"k8s\0".to_vec();
        b.extend(enc(&[P::M(1, vec![P::S(1, api_version), P::S(2, kind)])]));
        varint(2 << 3 | 2, &mut b);
        varint(raw.len() as u64, &mut b);
        b.extend(raw);
        b
    }

    #[test]
    fn a_deployment_decodes_as_kubectl_create_deployment_sends_it() {
        // What `kubectl create deployment web --image=nginx --replicas=0 --port=80` encodes:
        // non-pointer strings are always written, empty or not.
        let container = vec![
            P::S(1, "nginx"),
            P::S(2, "nginx"),
            P::M(6, vec![P::V(3, 80), P::S(4, "TCP")]),
            P::M(8, vec![]),
            P::S(13, ""),
        ];
        let template = vec![
            P::M(1, vec![P::M(11, vec![P::S(1, "app"), P::S(2, "web")])]),
            P::M(2, vec![P::M(2, container), P::S(3, "")]),
        ];
        let spec = vec![
            P::V(1, 0),
            P::M(2, vec![P::M(1, vec![P::S(1, "app"), P::S(2, "web")])]),
            P::M(3, template),
            P::M(4, vec![]),
        ];
        let meta = vec![P::S(1, "web"), P::S(2, ""), P::S(3, ""), P::M(8, vec![])];
        let b = body("apps/v1", "Deployment", vec![P::M(1, meta), P::M(2, spec), P::M(3, vec![])]);
        let v = to_json(&b).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(v["metadata"], serde_json::json!({"name": "web"}), "zero values are omitted");
        assert_eq!(v["spec"]["replicas"], 0, "a pointer's zero is kept");
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["name"], "nginx");
        assert_eq!(c["ports"], serde_json::json!([{"containerPort": 80, "protocol": "TCP"}]));
        assert_eq!(c["resources"], serde_json::json!({}));
        assert!(c.get("terminationMessagePath").is_none());
        assert_eq!(v["status"], serde_json::json!({}));
    }

    #[test]
    fn special_types_have_their_json_forms() {
        // A Service port: targetPort is an IntOrString, a string here.
        let port = vec![
            P::S(1, "http"),
            P::S(2, "TCP"),
            P::V(3, 80),
            P::M(4, vec![P::V(1, 1), P::S(3, "web")]),
        ];
        let b =
            body("v1", "Service", vec![P::M(1, vec![P::S(1, "s")]), P::M(2, vec![P::M(1, port)])]);
        let v = to_json(&b).unwrap();
        assert_eq!(v["spec"]["ports"][0]["targetPort"], "web");
        assert_eq!(v["spec"]["ports"][0]["port"], 80);
        // Secret data is bytes: base64 in JSON; creationTimestamp a Time.
        let entry = vec![P::S(1, "k"), P::S(2, "\u{1}\u{2}")];
        let meta = vec![P::S(1, "s"), P::M(8, vec![P::V(1, 1_700_000_000)])];
        let v = to_json(&body("v1", "Secret", vec![P::M(1, meta), P::M(2, entry)])).unwrap();
        assert_eq!(v["data"]["k"], "AQI=");
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        // Inline fields (Volume's VolumeSource) land in their parent.
        let vol = vec![P::S(1, "data"), P::M(2, vec![P::M(2, vec![P::S(1, "Memory")])])];
        let pod = vec![P::M(1, vec![P::S(1, "p")]), P::M(2, vec![P::M(1, vol)])];
        let v = to_json(&body("v1", "Pod", pod)).unwrap();
        assert_eq!(
            v["spec"]["volumes"][0],
            serde_json::json!({"name": "data", "emptyDir": {"medium": "Memory"}})
        );
        // ExtraValue is a Go []string: its JSON is the array.
        let extra = vec![P::S(1, "k"), P::M(2, vec![P::S(1, "a"), P::S(1, "b")])];
        let spec = vec![P::S(3, "alice"), P::M(5, extra)];
        let v =
            to_json(&body("authorization.k8s.io/v1", "SubjectAccessReview", vec![P::M(2, spec)]))
                .unwrap();
        assert_eq!(v["spec"]["extra"]["k"], serde_json::json!(["a", "b"]));
        // DeleteOptions come under any group.
        let v = to_json(&body(
            "meta.k8s.io/v1",
            "DeleteOptions",
            vec![P::V(1, 0), P::S(4, "Foreground")],
        ))
        .unwrap();
        assert_eq!(v["gracePeriodSeconds"], 0);
        assert_eq!(v["propagationPolicy"], "Foreground");
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        assert!(to_json(b"{}").is_err());
        let e = to_json(&body("example.com/v1", "Widget", vec![])).unwrap_err();
        assert_eq!(e.reason, Reason::UnsupportedMediaType);
        let mut b = body("v1", "ConfigMap", vec![P::M(1, vec![P::S(1, "c")])]);
        b.truncate(b.len() - 1);
        assert!(to_json(&b).unwrap_err().message.contains("past the end"));
        // A pathological nesting depth is refused, not a stack overflow.
        // A ControllerRevision's data is a RawExtension, which may hold another object.
        let mut deep = body("apps/v1", "ControllerRevision", vec![]);
        for _ in 0..200 {
            deep = body("apps/v1", "ControllerRevision", vec![P::M(2, vec![P::B(1, deep)])]);
        }
        assert!(to_json(&deep).unwrap_err().message.contains("deeper"));
        assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
        assert_eq!(go_duration(250_000_000), "250ms");
    }
}
