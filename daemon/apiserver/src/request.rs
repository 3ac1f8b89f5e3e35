//! The request core's stages that are not per kind: who calls (authentication), whether they
//! may (authorization), and admission plugins around the per-kind strategy.
//!
//! ```text
//!  front (gRPC today; HTTP next) ── decodes a RequestInfo ──► ApiServer::admit_request
//!    authenticate (Credentials → User) → authorize (Attributes → Decision)
//!  ──► verb: get | list | watch | create | update | patch | delete | subresource
//!    writes: mutating admission → strategy (prepare, allocate, validate) → validating
//!    admission → storage
//! ```
//! A front decodes and encodes, nothing else: every rule is behind `admit_request` and the
//! verbs, so two fronts cannot disagree. Today a caller is a service account (a bearer
//! token the server issued) or anonymous, and everyone is allowed, as Kubernetes with
//! `--anonymous-auth --authorization-mode=AlwaysAllow`; the trust issue fills the `Seams`.

use flotilla_api::error::{ApiError, Reason};
use serde_json::Value;

/// Who makes a request (Kubernetes' user.Info).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl User {
    /// As a SelfSubjectReview or TokenReview shows it (Kubernetes' UserInfo).
    pub fn to_json(&self) -> Value {
        let mut u = serde_json::json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            u["uid"] = Value::String(self.uid.clone());
        }
        if !self.extra.is_empty() {
            u["extra"] = serde_json::json!(self.extra);
        }
        u
    }

    /// A caller that presented no credentials.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: Default::default(),
        }
    }

    /// The API server itself (system namespaces, the kube-dns Service).
    pub fn apiserver() -> User {
        User {
            name: "system:apiserver".into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into(), "system:masters".into()],
            extra: Default::default(),
        }
    }
}

/// What a front saw of the caller's credentials.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// A client certificate the TLS handshake verified against the cluster CA: its subject's
    /// CN and O entries.
    pub client_cert: Option<(String, Vec<String>)>,
    /// `Impersonate-User`: act as this user (needs the `impersonate` verb).
    pub impersonate_user: Option<String>,
    /// `Impersonate-Group`, repeated.
    pub impersonate_groups: Vec<String>,
}

/// What a request asks, before knowing who asks (Kubernetes' RequestInfo): what a front
/// decodes and hands to the core.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestInfo<'a> {
    pub verb: &'a str,
    /// "" for the resource's own group (from the resource table) and for non-resource requests.
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// A list's or watch's field selector (the node authorizer reads `spec.nodeName`).
    pub field_selector: &'a str,
    /// A non-resource request's path (`/healthz`, `/version`, `/api`).
    pub path: &'a str,
}

impl<'a> RequestInfo<'a> {
    pub fn new(verb: &'a str, resource: &'a str) -> Self {
        RequestInfo { verb, resource, ..Default::default() }
    }

    /// A request for a path that is not a resource (`get /healthz`).
    pub fn non_resource(verb: &'a str, path: &'a str) -> Self {
        RequestInfo { verb, path, ..Default::default() }
    }

    pub fn group(self, group: &'a str) -> Self {
        RequestInfo { group, ..self }
    }

    pub fn subresource(self, subresource: &'a str) -> Self {
        RequestInfo { subresource, ..self }
    }

    pub fn at(self, namespace: &'a str, name: &'a str) -> Self {
        RequestInfo { namespace, name, ..self }
    }

    pub fn fields(self, field_selector: &'a str) -> Self {
        RequestInfo { field_selector, ..self }
    }

    pub fn by(self, user: &'a User) -> Attributes<'a> {
        let RequestInfo {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
            field_selector,
            path,
        } = self;
        let group = match (group, resource) {
            ("", "") => "",
            ("", r) => flotilla_api::lookup(r).map_or("", |i| i.group),
            (g, _) => g,
        };
        Attributes {
            user,
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
            field_selector,
            path,
        }
    }
}

/// What a request does, as an authorizer sees it (Kubernetes' authorizer.Attributes).
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub user: &'a User,
    /// get, list, watch, create, update, patch, delete (and RBAC's bind, escalate, impersonate).
    pub verb: &'a str,
    pub group: &'a str,
    /// The resource's plural ("" for a non-resource request such as discovery).
    pub resource: &'a str,
    /// status, binding, log, exec, token, or "".
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub field_selector: &'a str,
    pub path: &'a str,
}

impl Attributes<'_> {
    pub fn is_resource(&self) -> bool {
        !self.resource.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, with the reason the caller is told.
    Deny(String),
    /// This authorizer has no opinion; the next one decides (none left: denied).
    NoOpinion,
}

pub trait Authenticator: Send + Sync {
    /// The caller, or None when the credentials are not this authenticator's (the caller is
    /// then anonymous). Credentials that are this authenticator's but wrong are an error.
    fn authenticate(&self, credentials: &Credentials) -> Result<Option<User>, ApiError>;
}

pub trait Authorizer: Send + Sync {
    fn authorize(&self, attributes: &Attributes<'_>) -> Decision;
}

/// An admission plugin: runs on writes, around the per-kind strategy.
pub trait Admission: Send + Sync {
    fn name(&self) -> &'static str;

    /// Before the strategy: may change the object being written.
    fn mutate(
        &self,
        _attributes: &Attributes<'_>,
        _object: &mut Value,
        _old: Option<&Value>,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// After the strategy, before storage: may only refuse. `object` is None for a delete.
    fn validate(
        &self,
        _attributes: &Attributes<'_>,
        _object: Option<&Value>,
        _old: Option<&Value>,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Recognizes no credentials: everyone is anonymous.
pub struct NoAuthentication;

impl Authenticator for NoAuthentication {
    fn authenticate(&self, _: &Credentials) -> Result<Option<User>, ApiError> {
        Ok(None)
    }
}

/// Allows every request (Kubernetes' AlwaysAllow).
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _: &Attributes<'_>) -> Decision {
        Decision::Allow
    }
}

/// The stages the trust issue fills: authenticators tried in order, authorizers asked in
/// order (the first Allow or Deny decides), admission plugins run in order.
pub struct Seams {
    pub authenticators: Vec<Box<dyn Authenticator>>,
    pub authorizers: Vec<Box<dyn Authorizer>>,
    pub admission: Vec<Box<dyn Admission>>,
}

impl Default for Seams {
    /// Nothing beyond the built-in stages (x509, service-account and bootstrap tokens; the
    /// Node and RBAC authorizers; NodeRestriction and Pod Security admission).
    fn default() -> Seams {
        Seams { authenticators: vec![], authorizers: vec![], admission: vec![] }
    }
}

impl Seams {
    /// The first authenticator's answer that recognizes the credentials (None: none does).
    pub fn authenticate(&self, credentials: &Credentials) -> Result<Option<User>, ApiError> {
        for a in &self.authenticators {
            if let Some(user) = a.authenticate(credentials)? {
                return Ok(Some(user));
            }
        }
        Ok(None)
    }

    /// The configured authorizers in order; the first Allow or Deny decides.
    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        for z in &self.authorizers {
            match z.authorize(a) {
                Decision::NoOpinion => {}
                d => return d,
            }
        }
        Decision::NoOpinion
    }

    /// `decide`, with no opinion a denial in Kubernetes' words.
    pub fn authorize(&self, a: &Attributes<'_>) -> Result<(), ApiError> {
        match self.decide(a) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => Err(forbidden(a, &why)),
            Decision::NoOpinion => Err(forbidden(a, "")),
        }
    }

    pub fn mutate(
        &self,
        a: &Attributes<'_>,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        self.admission.iter().try_for_each(|p| p.mutate(a, object, old))
    }

    pub fn validate(
        &self,
        a: &Attributes<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        self.admission.iter().try_for_each(|p| p.validate(a, object, old))
    }
}

/// Kubernetes' Forbidden text: `pods "web" is forbidden: User "u" cannot get resource "pods"
/// in API group "" in the namespace "ns"`, with the authorizer's reason.
pub fn forbidden(a: &Attributes<'_>, why: &str) -> ApiError {
    let mut msg = if a.is_resource() {
        let resource = match a.subresource {
            "" => a.resource.to_string(),
            sub => format!("{}/{sub}", a.resource),
        };
        let qualified = match a.group {
            "" => a.resource.to_string(),
            g => format!("{}.{g}", a.resource),
        };
        let place = match a.namespace {
            "" => " at the cluster scope".to_string(),
            ns => format!(" in the namespace \"{ns}\""),
        };
        format!(
            "{} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{place}",
            if a.name.is_empty() { qualified } else { format!("{qualified} \"{}\"", a.name) },
            a.user.name,
            a.verb,
            a.group,
        )
    } else {
        format!("forbidden: User \"{}\" cannot {} path \"{}\"", a.user.name, a.verb, a.path)
    };
    if !why.is_empty() {
        msg.push_str(": ");
        msg.push_str(why);
    }
    ApiError::new(Reason::Forbidden, msg)
}
