//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) of the request bodies
//! that kubectl's typed clients send that way: the access and token reviews and TokenRequest
//! (`kubectl auth can-i`, `auth whoami`, `create token`). The body is the `k8s\0` magic and a
//! `runtime.Unknown` envelope around the object's message; it is turned into the JSON the core
//! takes. The messages below follow the field numbers of k8s.io/api's `generated.proto`.

use flotilla_api::error::{ApiError, Reason};
use prost::Message;
use serde_json::{json, Value};

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
    #[prost(string, tag = "3")]
    content_encoding: String,
    #[prost(string, tag = "4")]
    content_type: String,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    generate_name: String,
    #[prost(string, tag = "3")]
    namespace: String,
}

#[derive(Clone, PartialEq, Message)]
struct Selector {
    #[prost(string, tag = "1")]
    raw_selector: String,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    verb: String,
    #[prost(string, tag = "3")]
    group: String,
    #[prost(string, tag = "4")]
    version: String,
    #[prost(string, tag = "5")]
    resource: String,
    #[prost(string, tag = "6")]
    subresource: String,
    #[prost(string, tag = "7")]
    name: String,
    #[prost(message, optional, tag = "8")]
    field_selector: Option<Selector>,
    #[prost(message, optional, tag = "9")]
    label_selector: Option<Selector>,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    verb: String,
}

/// SelfSubjectAccessReviewSpec and SubjectAccessReviewSpec (a superset: user, groups, uid).
#[derive(Clone, PartialEq, Message)]
struct AccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[prost(string, tag = "3")]
    user: String,
    #[prost(string, repeated, tag = "4")]
    groups: Vec<String>,
    #[prost(string, tag = "6")]
    uid: String,
}

#[derive(Clone, PartialEq, Message)]
struct RulesReviewSpec {
    #[prost(string, tag = "1")]
    namespace: String,
}

#[derive(Clone, PartialEq, Message)]
struct BoundObjectReference {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    api_version: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    uid: String,
}

#[derive(Clone, PartialEq, Message)]
struct TokenRequestSpec {
    #[prost(string, repeated, tag = "1")]
    audiences: Vec<String>,
    #[prost(message, optional, tag = "3")]
    bound_object_ref: Option<BoundObjectReference>,
    #[prost(int64, optional, tag = "4")]
    expiration_seconds: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct TokenReviewSpec {
    #[prost(string, tag = "1")]
    token: String,
    #[prost(string, repeated, tag = "2")]
    audiences: Vec<String>,
}

/// Objects with metadata (1) and spec (2).
macro_rules! object {
    ($name:ident, $spec:ty) => {
        #[derive(Clone, PartialEq, Message)]
        struct $name {
            #[prost(message, optional, tag = "1")]
            metadata: Option<ObjectMeta>,
            #[prost(message, optional, tag = "2")]
            spec: Option<$spec>,
        }
    };
}
object!(AccessReview, AccessReviewSpec);
object!(RulesReview, RulesReviewSpec);
object!(TokenRequest, TokenRequestSpec);
object!(TokenReview, TokenReviewSpec);

fn meta_json(m: &Option<ObjectMeta>) -> Value {
    let m = m.clone().unwrap_or_default();
    let mut v = json!({});
    for (k, s) in [("name", m.name), ("generateName", m.generate_name), ("namespace", m.namespace)]
    {
        if !s.is_empty() {
            v[k] = json!(s);
        }
    }
    v
}

fn non_empty(v: &mut Value, k: &str, s: &str) {
    if !s.is_empty() {
        v[k] = json!(s);
    }
}

fn access_spec(s: AccessReviewSpec) -> Value {
    let mut v = json!({});
    if let Some(r) = s.resource_attributes {
        let mut a = json!({});
        for (k, x) in [
            ("namespace", &r.namespace),
            ("verb", &r.verb),
            ("group", &r.group),
            ("version", &r.version),
            ("resource", &r.resource),
            ("subresource", &r.subresource),
            ("name", &r.name),
        ] {
            non_empty(&mut a, k, x);
        }
        if let Some(f) = r.field_selector.filter(|f| !f.raw_selector.is_empty()) {
            a["fieldSelector"] = json!({"rawSelector": f.raw_selector});
        }
        if let Some(l) = r.label_selector.filter(|l| !l.raw_selector.is_empty()) {
            a["labelSelector"] = json!({"rawSelector": l.raw_selector});
        }
        v["resourceAttributes"] = a;
    }
    if let Some(n) = s.non_resource_attributes {
        v["nonResourceAttributes"] = json!({"path": n.path, "verb": n.verb});
    }
    non_empty(&mut v, "user", &s.user);
    non_empty(&mut v, "uid", &s.uid);
    if !s.groups.is_empty() {
        v["groups"] = json!(s.groups);
    }
    v
}

fn decode<M: Message + Default>(raw: &[u8], kind: &str) -> Result<M, ApiError> {
    M::decode(raw).map_err(|e| ApiError::bad_request(format!("{kind}: invalid protobuf: {e}")))
}

/// A protobuf body as JSON.
pub fn to_json(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ApiError::bad_request("a protobuf body must start with the k8s magic"))?;
    let u = Unknown::decode(rest)
        .map_err(|e| ApiError::bad_request(format!("invalid protobuf envelope: {e}")))?;
    let tm = u.type_meta.unwrap_or_default();
    let kind = tm.kind.as_str();
    let raw = &u.raw[..];
    let mut v = json!({"apiVersion": tm.api_version, "kind": kind});
    match kind {
        "SelfSubjectAccessReview" | "SubjectAccessReview" => {
            let o: AccessReview = decode(raw, kind)?;
            v["metadata"] = meta_json(&o.metadata);
            v["spec"] = access_spec(o.spec.unwrap_or_default());
        }
        "SelfSubjectRulesReview" => {
            let o: RulesReview = decode(raw, kind)?;
            v["metadata"] = meta_json(&o.metadata);
            v["spec"] = json!({"namespace": o.spec.unwrap_or_default().namespace});
        }
        "SelfSubjectReview" => {
            let o: RulesReview = decode(raw, kind)?;
            v["metadata"] = meta_json(&o.metadata);
        }
        "TokenRequest" => {
            let o: TokenRequest = decode(raw, kind)?;
            v["metadata"] = meta_json(&o.metadata);
            let s = o.spec.unwrap_or_default();
            let mut spec = json!({"audiences": s.audiences});
            if let Some(e) = s.expiration_seconds {
                spec["expirationSeconds"] = json!(e);
            }
            if let Some(b) = s.bound_object_ref {
                spec["boundObjectRef"] = json!({"kind": b.kind, "apiVersion": b.api_version,
                    "name": b.name, "uid": b.uid});
            }
            v["spec"] = spec;
        }
        "TokenReview" => {
            let o: TokenReview = decode(raw, kind)?;
            v["metadata"] = meta_json(&o.metadata);
            let s = o.spec.unwrap_or_default();
            v["spec"] = json!({"token": s.token, "audiences": s.audiences});
        }
        other => {
            return Err(ApiError::new(
                Reason::UnsupportedMediaType,
                format!("{other}: this server takes protobuf only for the access and token reviews and TokenRequest; send application/json"),
            ))
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_subject_access_review_decodes() {
        let spec = AccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: "default".into(),
                verb: "create".into(),
                resource: "pods".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = AccessReview { metadata: Some(ObjectMeta::default()), spec: Some(spec) };
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: "authorization.k8s.io/v1".into(),
                kind: "SelfSubjectAccessReview".into(),
            }),
            raw: o.encode_to_vec(),
            ..Default::default()
        };
        let mut body = b"k8s\0".to_vec();
        body.extend(u.encode_to_vec());
        let v = to_json(&body).unwrap();
        assert_eq!(v["spec"]["resourceAttributes"]["verb"], "create");
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert!(to_json(b"{}").is_err());
    }
}
