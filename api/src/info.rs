//! What the API knows of a resource type: its names, scope, name rule and admission
//! function. The table of them is `resources`; admission and validation take an entry.
//! (This module depends on nothing else of the crate, so neither does any layer above it.)

use crate::error::ApiError;
use serde_json::Value;

/// The admitted object (defaults applied, unknown fields dropped) and what was dropped.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub object: Value,
    /// `unknown field "spec.replica"`, as kubectl prints them.
    pub warnings: Vec<String>,
}

pub type AdmitFn = fn(&Value, Option<&Value>, &'static ResourceInfo) -> Result<Admitted, ApiError>;

/// How an object's name is checked, as in Kubernetes' per-kind `ValidateName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain: most kinds.
    Subdomain,
    /// DNS-1123 label: namespaces.
    Label,
    /// DNS-1035 label (starts with a letter): services, which become DNS names.
    Label1035,
    /// A URL path segment (not `.` or `..`, no `/` or `%`): RBAC objects, whose names carry
    /// colons (`system:node`).
    PathSegment,
}

pub struct ResourceInfo {
    pub kind: &'static str,
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Status is written only through the status subresource.
    pub has_status: bool,
    pub name_rule: NameRule,
    /// Field selector paths beyond metadata.name and metadata.namespace.
    pub field_selectors: &'static [&'static str],
    pub admit: AdmitFn,
}

impl std::fmt::Debug for ResourceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResourceInfo({})", self.plural)
    }
}

impl ResourceInfo {
    /// `v1`, `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `Deployment.apps`, `Pod`: how error messages name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// `deployments.apps`, `pods`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Store key prefix of this resource: `/registry/<group>/<plural>/` (group "core" for "").
    pub fn key_prefix(&self) -> String {
        let g = if self.group.is_empty() { "core" } else { self.group };
        format!("/registry/{g}/{}/", self.plural)
    }

    /// The object's store key.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}{namespace}/{name}", self.key_prefix())
        } else {
            format!("{}{name}", self.key_prefix())
        }
    }

    /// Key prefix of one namespace's objects (or of all of them for "").
    pub fn namespace_prefix(&self, namespace: &str) -> String {
        if self.namespaced && !namespace.is_empty() {
            format!("{}{namespace}/", self.key_prefix())
        } else {
            self.key_prefix()
        }
    }
}
