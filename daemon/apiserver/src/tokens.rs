//! Service account tokens, as Kubernetes' bound tokens: the API server signs them
//! (TokenRequest) with one Ed25519 key kept in the store, so every control-plane member issues
//! and accepts the same tokens; and it checks the bearer token a request carries (TokenReview):
//! signature, expiry, issuer, audience, and that the service account and the object the token
//! is bound to (pod, secret, node) still exist with the same uid, so deleting a pod revokes
//! its tokens. Also the ServiceAccount admission of new pods (the token volume).
//!
//! Authentication only: a valid token names its caller, an invalid one is refused, and a call
//! without one is anonymous. Nothing authorizes yet: every caller may do everything.

use super::kv::{Cond, Op};
use super::{meta_str, now_rfc3339, random_suffix, ApiServer};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use flotilla_api::admit::decode;
use flotilla_api::error::{ApiError, Errors};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where the signing key (PKCS#8) lives: outside `/registry/`, so no API call returns it.
const SIGNING_KEY: &str = "/flotilla/serviceaccount/signing-key";
/// The issuer, and the audience of tokens that do not name one (the API server's own).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Kubernetes' bounds on a requested lifetime (10 minutes, 2^32 seconds) and its default.
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;
const DEFAULT_EXPIRATION: i64 = 3600;
/// Clock skew allowed on `nbf`/`exp`, and how long after its pod's deletion a token still
/// works (Kubernetes allows 60 s for both).
const LEEWAY: i64 = 60;
/// Where the kubelet mounts the token volume, and the lifetime it asks for (3607 s: an hour,
/// and a marker Kubernetes uses to spot tokens of the default volume).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const DEFAULT_VOLUME_EXPIRATION: i64 = 3607;

pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The key id in each token's header: the public key's SHA-256, as Kubernetes derives it.
    kid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim: whose token it is and what it is bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Private {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Private,
}

impl Signer {
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| format!("the service account signing key is not Ed25519 PKCS#8: {e}"))?;
        let public = pair.public_key().as_ref();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
        Ok(Signer {
            encoding: EncodingKey::from_ed_der(der),
            decoding: DecodingKey::from_ed_der(public),
            kid: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
        })
    }

    pub fn generate() -> Result<Vec<u8>, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| format!("generating the service account signing key: {e}"))
    }

    /// The cluster's key: read from the store, or made and stored by the first member to start
    /// (a member that loses that race reads the winner's).
    pub async fn load_or_create(kv: &super::Kv) -> Result<Self, ApiError> {
        for _ in 0..3 {
            if let Some(kv) = kv.get(SIGNING_KEY).await? {
                return Self::from_pkcs8(&kv.value).map_err(ApiError::internal);
            }
            let der = Self::generate().map_err(ApiError::internal)?;
            let conds = vec![Cond::Absent(SIGNING_KEY.into())];
            if kv.txn(conds, vec![Op::Put(SIGNING_KEY.into(), der.clone())]).await?.is_some() {
                tracing::info!("made the service account signing key");
                return Self::from_pkcs8(&der).map_err(ApiError::internal);
            }
        }
        Err(ApiError::internal("could not read or store the service account signing key"))
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("signing a token: {e}")))
    }

    /// The claims of a token this key signed that is current, from our issuer and for one of
    /// `audiences`. Whether what it names still exists is [`ApiServer::review`]'s part.
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = LEEWAY as u64;
        v.validate_nbf = true;
        v.set_issuer(&[ISSUER]);
        v.set_audience(audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map(|d| d.claims).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired".to_string(),
                ErrorKind::ImmatureSignature => "token is not valid yet".to_string(),
                ErrorKind::InvalidAudience => {
                    format!("token audiences are invalid for the target audiences {audiences:?}")
                }
                ErrorKind::InvalidIssuer => "token was issued by someone else".to_string(),
                ErrorKind::InvalidSignature => "token signature is invalid".to_string(),
                _ => format!("token is malformed: {e}"),
            }
        })
    }
}

/// The identity a token stands for (authentication.k8s.io/v1 UserInfo).
fn user_info(c: &Claims, sa_uid: &str) -> Value {
    let k = &c.kubernetes;
    let mut extra = serde_json::Map::new();
    let mut add = |key: &str, v: &str| {
        extra.insert(format!("authentication.kubernetes.io/{key}"), json!([v]));
    };
    if let Some(p) = &k.pod {
        add("pod-name", &p.name);
        add("pod-uid", &p.uid);
    }
    if let Some(n) = &k.node {
        add("node-name", &n.name);
        add("node-uid", &n.uid);
    }
    add("credential-id", &format!("JTI={}", c.jti));
    json!({
        "username": c.sub,
        "uid": sa_uid,
        "groups": ["system:serviceaccounts",
                   format!("system:serviceaccounts:{}", k.namespace),
                   "system:authenticated"],
        "extra": extra,
    })
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl ApiServer {
    fn cached(&self, resource: &str, key: &str) -> Option<Value> {
        let info = flotilla_api::lookup(resource)?;
        self.cache(info).get(key).map(|o| o.value.clone())
    }

    /// A TokenRequest for service account `ns/name` (its `token` subresource), answered with
    /// `status.token` and `status.expirationTimestamp`.
    pub async fn create_token(&self, ns: &str, name: &str, body: &[u8]) -> Result<Value, ApiError> {
        let what = "TokenRequest.authentication.k8s.io";
        let mut input: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("{what}: not valid JSON: {e}")))?;
        // The status is the answer; what a client sends there (Go's zero values) is ignored.
        if let Some(o) = input.as_object_mut() {
            o.remove("status");
        }
        let mut req: TokenRequest =
            decode(&input).map_err(|e| ApiError::invalid(what, name, vec![e]))?;
        let mut errs = Errors::default();
        let exp = req.spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION);
        if exp < MIN_EXPIRATION {
            errs.invalid(
                "spec.expirationSeconds",
                exp,
                "may not specify a duration less than 10 minutes",
            );
        } else if exp > MAX_EXPIRATION {
            errs.invalid(
                "spec.expirationSeconds",
                exp,
                "may not specify a duration larger than 2^32 seconds",
            );
        }
        if let Some(b) = &req.spec.bound_object_ref {
            if !matches!(b.kind.as_deref(), Some("Pod" | "Secret" | "Node")) {
                errs.invalid(
                    "spec.boundObjectRef.kind",
                    format!("{:?}", b.kind.as_deref().unwrap_or("")),
                    "supported values: \"Pod\", \"Secret\", \"Node\"",
                );
            }
            if b.name.as_deref().unwrap_or("").is_empty() {
                errs.required("spec.boundObjectRef.name", "");
            }
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(what, name, errs.0));
        }
        let sa = self.get(self.resource("serviceaccounts")?, ns, name).await?;
        let sa_ref = ObjectRef { name: name.to_string(), uid: meta_str(&sa, "uid").to_string() };
        let mut private = Private {
            namespace: ns.to_string(),
            serviceaccount: sa_ref,
            pod: None,
            secret: None,
            node: None,
        };
        if let Some(b) = &req.spec.bound_object_ref {
            let kind = b.kind.as_deref().unwrap_or("");
            let bname = b.name.as_deref().unwrap_or("");
            let (resource, bns) = match kind {
                "Pod" => ("pods", ns),
                "Secret" => ("secrets", ns),
                _ => ("nodes", ""),
            };
            let obj = self.get(self.resource(resource)?, bns, bname).await?;
            let uid = meta_str(&obj, "uid").to_string();
            if let Some(want) = b.uid.as_deref().filter(|u| !u.is_empty() && *u != uid) {
                return Err(ApiError::conflict(
                    resource,
                    bname,
                    &format!(
                        "the UID in the bound object reference ({want}) does not match the UID \
                         in record ({uid}); the object might have been deleted and then recreated"
                    ),
                ));
            }
            let r = ObjectRef { name: bname.to_string(), uid };
            match kind {
                "Pod" => {
                    let pod_sa = obj["spec"]["serviceAccountName"].as_str().unwrap_or("default");
                    if pod_sa != name {
                        return Err(ApiError::bad_request(format!(
                            "cannot bind a token for serviceaccount \"{name}\" to pod \"{bname}\", \
                             which runs as serviceaccount \"{pod_sa}\""
                        )));
                    }
                    // Kubernetes names the pod's node too, so node-bound checks can use it.
                    let node = obj["spec"]["nodeName"].as_str().unwrap_or("");
                    if !node.is_empty() {
                        let uid = self
                            .cached("nodes", node)
                            .map(|n| meta_str(&n, "uid").to_string())
                            .unwrap_or_default();
                        private.node = Some(ObjectRef { name: node.to_string(), uid });
                    }
                    private.pod = Some(r);
                }
                "Secret" => private.secret = Some(r),
                _ => private.node = Some(r),
            }
        }
        let audiences = if req.spec.audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            req.spec.audiences.clone()
        };
        let iat = now();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: format!("system:serviceaccount:{ns}:{name}"),
            aud: audiences.clone(),
            exp: iat + exp,
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: private,
        };
        let token = self.signer.sign(&claims)?;
        req.spec.audiences = audiences;
        req.spec.expiration_seconds = Some(exp);
        let mut out = serde_json::to_value(&req).map_err(|e| ApiError::internal(e.to_string()))?;
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenRequest");
        out["metadata"] =
            json!({"name": name, "namespace": ns, "creationTimestamp": now_rfc3339()});
        let expires =
            jiff::Timestamp::from_second(claims.exp).map(|t| t.to_string()).unwrap_or_default();
        out["status"] = json!({"token": token, "expirationTimestamp": expires});
        tracing::debug!(serviceaccount = %format!("{ns}/{name}"), jti = %claims.jti, "issued a token");
        Ok(out)
    }

    /// Who `token` stands for (a UserInfo), if it is valid for one of `audiences` (none: the
    /// API server's) and what it names still exists: the service account, and the pod, secret
    /// or node it is bound to, with the uids it was issued for.
    pub fn review(&self, token: &str, audiences: &[String]) -> Result<Value, String> {
        let default = [ISSUER.to_string()];
        let audiences = if audiences.is_empty() { &default[..] } else { audiences };
        let c = self.signer.verify(token, audiences)?;
        let k = &c.kubernetes;
        let ns = &k.namespace;
        let check =
            |resource: &str, kind: &str, key: &str, want: &ObjectRef| -> Result<Value, String> {
                let obj = self
                    .cached(resource, key)
                    .ok_or_else(|| format!("{kind} {key} has been deleted"))?;
                let uid = meta_str(&obj, "uid");
                if uid != want.uid {
                    return Err(format!("{kind} UID ({uid}) does not match claim ({})", want.uid));
                }
                Ok(obj)
            };
        check(
            "serviceaccounts",
            "service account",
            &format!("{ns}/{}", k.serviceaccount.name),
            &k.serviceaccount,
        )?;
        if let Some(p) = &k.pod {
            let pod = check("pods", "pod", &format!("{ns}/{}", p.name), p)?;
            let deleted = meta_str(&pod, "deletionTimestamp");
            if let Ok(t) = deleted.parse::<jiff::Timestamp>() {
                if t.as_second() + LEEWAY < now() {
                    return Err("token has been invalidated: its pod is being deleted".into());
                }
            }
        }
        if let Some(s) = &k.secret {
            check("secrets", "secret", &format!("{ns}/{}", s.name), s)?;
        }
        // A pod's token names its node only for information; a node-bound one needs the node.
        if let (Some(n), None) = (&k.node, &k.pod) {
            check("nodes", "node", &n.name, n)?;
        }
        Ok(user_info(&c, &k.serviceaccount.uid))
    }

    /// A TokenReview answered: `status.authenticated` and the user, or `status.error`.
    pub fn token_review(&self, body: &[u8]) -> Result<Value, ApiError> {
        let what = "TokenReview.authentication.k8s.io";
        let mut input: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("{what}: not valid JSON: {e}")))?;
        if let Some(o) = input.as_object_mut() {
            o.remove("status");
        }
        let review: TokenReview =
            decode(&input).map_err(|e| ApiError::invalid(what, "", vec![e]))?;
        let token = review.spec.token.clone().unwrap_or_default();
        if token.is_empty() {
            let mut errs = Errors::default();
            errs.required("spec.token", "");
            return Err(ApiError::invalid(what, "", errs.0));
        }
        let mut out =
            serde_json::to_value(&review).map_err(|e| ApiError::internal(e.to_string()))?;
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenReview");
        let audiences = review.spec.audiences.clone().unwrap_or_default();
        out["status"] = match self.review(&token, &audiences) {
            Ok(user) => {
                let aud = if audiences.is_empty() { vec![ISSUER.to_string()] } else { audiences };
                json!({"authenticated": true, "user": user, "audiences": aud})
            }
            Err(e) => json!({"authenticated": false, "error": e}),
        };
        Ok(out)
    }

    /// Kubernetes' ServiceAccount admission of a new pod: `spec.serviceAccountName` defaults to
    /// "default"; unless automounting is off (on the pod, else on its service account), a
    /// projected `kube-api-access-*` volume (a token bound to the pod, and the namespace) is
    /// mounted read-only at [`TOKEN_MOUNT_PATH`] in every container that has nothing there.
    /// A missing service account is not an error here: the pod waits for it on its node
    /// (CreateContainerConfigError), as for a missing ConfigMap.
    pub fn admit_pod_service_account(&self, ns: &str, pod: &mut Value) {
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
        let sa = spec
            .get("serviceAccountName")
            .or_else(|| spec.get("serviceAccount"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        spec.insert("serviceAccountName".into(), json!(sa));
        let automount =
            spec.get("automountServiceAccountToken").and_then(Value::as_bool).or_else(|| {
                self.cached("serviceaccounts", &format!("{ns}/{sa}"))
                    .and_then(|s| s["automountServiceAccountToken"].as_bool())
            });
        if automount == Some(false) {
            return;
        }
        let volume = format!("kube-api-access-{}", random_suffix(5));
        let mut mounted = false;
        for key in ["initContainers", "containers"] {
            for c in spec.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
                if c.is_object() && add_token_mount(c, &volume) {
                    mounted = true;
                }
            }
        }
        if !mounted {
            return;
        }
        let v = json!({"name": volume, "projected": {"defaultMode": 0o644, "sources": [
            {"serviceAccountToken": {"expirationSeconds": DEFAULT_VOLUME_EXPIRATION, "path": "token"}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(list) => list.push(v),
            None => {
                spec.insert("volumes".into(), json!([v]));
            }
        }
    }
}

/// Mounts `volume` read-only at [`TOKEN_MOUNT_PATH`] in container `c`, unless something is
/// mounted there already; whether it did.
fn add_token_mount(c: &mut Value, volume: &str) -> bool {
    let taken = c["volumeMounts"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["mountPath"] == TOKEN_MOUNT_PATH));
    if taken {
        return false;
    }
    let m = json!({"name": volume, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true});
    match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
        Some(list) => list.push(m),
        None => c["volumeMounts"] = json!([m]),
    }
    true
}

/// On a pod update, the token volume and its mounts that admission added stay, as a
/// strategic merge patch would keep them: a client that sends the pod as it wrote it (a
/// merge patch replacing `containers` to change an image) does not lose them, which pod
/// validation would refuse as a spec change.
pub fn keep_token_volume(current: &Value, new: &mut Value) {
    let injected = |v: &&Value| {
        v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-"))
            && v["projected"].is_object()
    };
    let Some(vol) = current["spec"]["volumes"].as_array().and_then(|v| v.iter().find(injected))
    else {
        return;
    };
    let name = vol["name"].as_str().unwrap_or_default();
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(list) = volumes.as_array_mut() {
        if !list.iter().any(|v| v["name"] == name) {
            list.push(vol.clone());
        }
    }
    for key in ["initContainers", "containers"] {
        let had: Vec<&str> = current["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["volumeMounts"].as_array().is_some_and(|m| {
                    m.iter().any(|m| m["name"] == name && m["mountPath"] == TOKEN_MOUNT_PATH)
                })
            })
            .filter_map(|c| c["name"].as_str())
            .collect();
        for c in spec.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
            if c["name"].as_str().is_some_and(|n| had.contains(&n)) {
                add_token_mount(c, name);
            }
        }
    }
}

// ---- bootstrap tokens (Kubernetes' `bootstrap.kubernetes.io/token` Secrets) ----

/// The user a bootstrap token authenticates: `system:bootstrap:<id>`, in
/// `system:bootstrappers` and the token's extra groups. The refusal says why (the joining
/// node prints it), never the secret.
pub fn bootstrap_user(
    secrets: &crate::cache::WatchCache,
    id: &str,
    secret: &str,
) -> Result<super::request::User, String> {
    let key = format!("kube-system/bootstrap-token-{id}");
    let Some(obj) = secrets.get(&key) else {
        return Err(format!(
            "bootstrap token {id:?} does not exist (never created, deleted, or expired and removed)"
        ));
    };
    let s = &obj.value;
    if s["type"] != "bootstrap.kubernetes.io/token" {
        return Err(format!("secret {key} is not of type bootstrap.kubernetes.io/token"));
    }
    let field = |k: &str| -> String {
        s["data"][k]
            .as_str()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    };
    if !s["metadata"]["deletionTimestamp"].is_null() {
        return Err(format!("bootstrap token {id:?} is being deleted"));
    }
    let want = field("token-secret");
    // Constant-time: the secret is compared without revealing how much of it matched.
    let same = want.len() == secret.len()
        && want.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if field("token-id") != id || !same {
        return Err(format!("bootstrap token {id:?}: the secret does not match"));
    }
    let exp = field("expiration");
    if !exp.is_empty() {
        let expired = exp.parse::<jiff::Timestamp>().map(|t| t <= jiff::Timestamp::now());
        if expired.unwrap_or(true) {
            return Err(format!("bootstrap token {id:?} expired at {exp}"));
        }
    }
    if field("usage-bootstrap-authentication") != "true" {
        return Err(format!("bootstrap token {id:?} may not be used for authentication"));
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in field("auth-extra-groups").split(',').map(str::trim).filter(|g| !g.is_empty()) {
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Ok(super::request::User {
        name: format!("system:bootstrap:{id}"),
        uid: String::new(),
        groups,
        extra: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_update_without_the_token_volume_keeps_it() {
        let mount = json!({"name": "kube-api-access-abcde", "mountPath": TOKEN_MOUNT_PATH, "readOnly": true});
        let vol = json!({"name": "kube-api-access-abcde", "projected": {"sources": []}});
        let current = json!({"spec": {"containers": [{"name": "c", "image": "a", "volumeMounts": [mount]}],
            "volumes": [vol]}});
        let mut new = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        keep_token_volume(&current, &mut new);
        assert_eq!(new["spec"]["volumes"], json!([vol]));
        assert_eq!(new["spec"]["containers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(new["spec"]["containers"][0]["image"], "b");
        // Sent whole, nothing is added twice.
        let again = new.clone();
        keep_token_volume(&current, &mut new);
        assert_eq!(new, again);
    }

    use super::*;

    fn claims(exp_in: i64, aud: &str) -> Claims {
        let t = now();
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:ns:sa".into(),
            aud: vec![aud.into()],
            exp: t + exp_in,
            iat: t,
            nbf: t,
            jti: "j".into(),
            kubernetes: Private {
                namespace: "ns".into(),
                serviceaccount: ObjectRef { name: "sa".into(), uid: "u".into() },
                pod: Some(ObjectRef { name: "p".into(), uid: "pu".into() }),
                secret: None,
                node: None,
            },
        }
    }

    #[test]
    fn signed_tokens_verify_and_carry_their_claims() {
        let s = Signer::from_pkcs8(&Signer::generate().unwrap()).unwrap();
        let c = claims(600, ISSUER);
        let t = s.sign(&c).unwrap();
        assert_eq!(s.verify(&t, &[ISSUER.into()]).unwrap(), c);
        // The header names the algorithm and the key.
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(s.kid.as_str()));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let s = Signer::from_pkcs8(&Signer::generate().unwrap()).unwrap();
        let other = Signer::from_pkcs8(&Signer::generate().unwrap()).unwrap();
        let aud = [ISSUER.to_string()];
        let expired = s.sign(&claims(-LEEWAY - 10, ISSUER)).unwrap();
        assert_eq!(s.verify(&expired, &aud).unwrap_err(), "token has expired");
        let foreign = other.sign(&claims(600, ISSUER)).unwrap();
        assert_eq!(s.verify(&foreign, &aud).unwrap_err(), "token signature is invalid");
        let vault = s.sign(&claims(600, "vault")).unwrap();
        assert!(s.verify(&vault, &aud).unwrap_err().contains("audiences are invalid"));
        assert!(s.verify(&vault, &["vault".into()]).is_ok());
        let mut c = claims(600, ISSUER);
        c.iss = "https://elsewhere".into();
        assert_eq!(
            s.verify(&s.sign(&c).unwrap(), &aud).unwrap_err(),
            "token was issued by someone else"
        );
        // A flipped payload byte breaks the signature.
        let mut parts: Vec<String> =
            s.sign(&claims(600, ISSUER)).unwrap().split('.').map(String::from).collect();
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut payload: Value = serde_json::from_slice(&b.decode(&parts[1]).unwrap()).unwrap();
        payload["sub"] = json!("system:serviceaccount:kube-system:admin");
        parts[1] = b.encode(serde_json::to_vec(&payload).unwrap());
        assert_eq!(s.verify(&parts.join("."), &aud).unwrap_err(), "token signature is invalid");
        assert!(s.verify("not-a-token", &aud).unwrap_err().starts_with("token is malformed"));
    }
}
