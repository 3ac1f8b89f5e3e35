//! OpenAPI v2 (`/openapi/v2`) and v3 (`/openapi/v3`, `/openapi/v3/<group-version>`), built
//! from the object model: k8s-openapi's schemas of the served kinds, with Kubernetes'
//! extensions (`x-kubernetes-group-version-kind`, the patch merge keys and list types of
//! `schema_table`) and the operations of every resource path. kubectl reads them to validate,
//! to find the query parameters the server supports (`fieldValidation`), for `explain`, and
//! to compute `apply`'s strategic merge patches.

use flotilla_api::{ResourceInfo, RESOURCES};
use k8s_openapi::api::certificates::v1 as certificates;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord};
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery, rbac::v1 as rbac};
use k8s_openapi::schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A served kind's schema: its name in the definitions, generated into `g`.
fn schema_of(plural: &str, g: &mut SchemaGenerator) -> Option<String> {
    fn add<T: JsonSchema>(g: &mut SchemaGenerator) -> String {
        g.subschema_for::<T>();
        T::schema_name().into_owned()
    }
    Some(match plural {
        "namespaces" => add::<core::Namespace>(g),
        "nodes" => add::<core::Node>(g),
        "pods" => add::<core::Pod>(g),
        "services" => add::<core::Service>(g),
        "endpoints" => add::<core::Endpoints>(g),
        "configmaps" => add::<core::ConfigMap>(g),
        "secrets" => add::<core::Secret>(g),
        "serviceaccounts" => add::<core::ServiceAccount>(g),
        "events" => add::<core::Event>(g),
        "leases" => add::<coord::Lease>(g),
        "endpointslices" => add::<discovery::EndpointSlice>(g),
        "replicasets" => add::<apps::ReplicaSet>(g),
        "deployments" => add::<apps::Deployment>(g),
        "daemonsets" => add::<apps::DaemonSet>(g),
        "statefulsets" => add::<apps::StatefulSet>(g),
        "controllerrevisions" => add::<apps::ControllerRevision>(g),
        "jobs" => add::<batch::Job>(g),
        "cronjobs" => add::<batch::CronJob>(g),
        "poddisruptionbudgets" => add::<policy::PodDisruptionBudget>(g),
        "roles" => add::<rbac::Role>(g),
        "clusterroles" => add::<rbac::ClusterRole>(g),
        "rolebindings" => add::<rbac::RoleBinding>(g),
        "clusterrolebindings" => add::<rbac::ClusterRoleBinding>(g),
        "certificatesigningrequests" => add::<certificates::CertificateSigningRequest>(g),
        _ => return None,
    })
}

/// `core.v1.Container` (schema_table's name) → `io.k8s.api.core.v1.Container`.
fn definition_name(table_name: &str) -> String {
    match table_name.strip_prefix("meta.") {
        Some(t) => format!("io.k8s.apimachinery.pkg.apis.meta.v1.{t}"),
        None => format!("io.k8s.api.{table_name}"),
    }
}

/// Every served kind's schema and what it refers to, with Kubernetes' extensions.
/// `v3`: references as `#/components/schemas/…`; else `#/definitions/…`.
fn definitions(v3: bool) -> (Map<String, Value>, BTreeMap<&'static str, String>) {
    let settings = if v3 { SchemaSettings::openapi3() } else { SchemaSettings::draft07() };
    let mut g = settings.into_generator();
    let mut names = BTreeMap::new();
    for r in RESOURCES {
        if let Some(n) = schema_of(r.plural, &mut g) {
            names.insert(r.plural, n);
        }
    }
    let mut defs = g.take_definitions(true);
    for r in RESOURCES {
        let Some(d) = names.get(r.plural).and_then(|n| defs.get_mut(n)) else { continue };
        d["x-kubernetes-group-version-kind"] =
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    }
    // `+structType=atomic`: server-side apply owns such a struct whole.
    for ty in flotilla_api::schema_table::ATOMIC_STRUCTS {
        if let Some(d) = defs.get_mut(&definition_name(ty)).and_then(Value::as_object_mut) {
            d.insert("x-kubernetes-map-type".into(), json!("atomic"));
        }
    }
    for &(ty, field, _, shape, strategy, key, list_type) in flotilla_api::schema_table::FIELDS {
        let Some(prop) = defs
            .get_mut(&definition_name(ty))
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if !strategy.is_empty() {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
        }
        if !key.is_empty() {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
        }
        match list_type.split_once(':') {
            _ if shape == "map" && !list_type.is_empty() => {
                prop.insert("x-kubernetes-map-type".into(), json!(list_type));
            }
            Some(("map", keys)) => {
                prop.insert("x-kubernetes-list-type".into(), json!("map"));
                prop.insert(
                    "x-kubernetes-list-map-keys".into(),
                    json!(keys.split(',').collect::<Vec<_>>()),
                );
            }
            _ if !list_type.is_empty() => {
                prop.insert("x-kubernetes-list-type".into(), json!(list_type));
            }
            _ => {}
        }
    }
    (defs, names)
}

/// `api/v1`, `apis/apps/v1`: the v3 document's key for a group-version.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

struct Param {
    name: &'static str,
    ty: &'static str,
    description: &'static str,
}

const fn p(name: &'static str, ty: &'static str, description: &'static str) -> Param {
    Param { name, ty, description }
}

const WRITE: &[Param] = &[
    p(
        "dryRun",
        "string",
        "When present, indicates that modifications should not be persisted. Valid value: All.",
    ),
    p(
        "fieldManager",
        "string",
        "A name associated with the actor or entity that is making these changes.",
    ),
    p(
        "fieldValidation",
        "string",
        "How the server handles unknown fields: Ignore, Warn (the default) or Strict.",
    ),
];
const LIST: &[Param] = &[
    p("allowWatchBookmarks", "boolean", "Requests watch events with type BOOKMARK."),
    p("continue", "string", "The continue token of the previous page."),
    p("fieldSelector", "string", "Restricts the list by fields."),
    p("labelSelector", "string", "Restricts the list by labels."),
    p("limit", "integer", "At most this many items per page."),
    p("resourceVersion", "string", "Which resourceVersion the list or watch starts from."),
    p(
        "resourceVersionMatch",
        "string",
        "How resourceVersion applies to a list: Exact or NotOlderThan.",
    ),
    p("sendInitialEvents", "boolean", "A watch starts with the current objects as ADDED events."),
    p("timeoutSeconds", "integer", "Ends the list or watch after this long."),
    p("watch", "boolean", "Watch for changes instead of listing."),
];
const DELETE: &[Param] = &[
    p(
        "dryRun",
        "string",
        "When present, indicates that modifications should not be persisted. Valid value: All.",
    ),
    p("gracePeriodSeconds", "integer", "Seconds before the object is deleted."),
    p("propagationPolicy", "string", "Orphan, Background or Foreground."),
];
const PATCH: &[Param] =
    &[p("force", "boolean", "Server-side apply: take over the fields other managers own.")];

/// One operation of a path.
struct Op<'a> {
    action: &'static str,
    verb: &'static str,
    info: &'a ResourceInfo,
    params: Vec<&'a Param>,
    body: bool,
    code: &'static str,
}

/// The paths of one resource, as (path, method → operation) in either OpenAPI version.
fn resource_paths(info: &ResourceInfo, schema: &str, v3: bool, out: &mut Map<String, Value>) {
    let prefix = if info.group.is_empty() {
        format!("/api/{}", info.version)
    } else {
        format!("/apis/{}/{}", info.group, info.version)
    };
    let ns = if info.namespaced { "/namespaces/{namespace}" } else { "" };
    let collection = format!("{prefix}{ns}/{}", info.plural);
    let item = format!("{collection}/{{name}}");
    let op = |o: Op| operation(&o, schema, v3);
    let mut c = Map::new();
    let list: Vec<&Param> = LIST.iter().collect();
    let write: Vec<&Param> = WRITE.iter().collect();
    let delete: Vec<&Param> = DELETE.iter().collect();
    c.insert(
        "get".into(),
        op(Op {
            action: "list",
            verb: "list",
            info,
            params: list.clone(),
            body: false,
            code: "200",
        }),
    );
    c.insert(
        "post".into(),
        op(Op {
            action: "post",
            verb: "create",
            info,
            params: write.clone(),
            body: true,
            code: "201",
        }),
    );
    let mut dc = delete.clone();
    dc.extend(LIST.iter().filter(|p| matches!(p.name, "labelSelector" | "fieldSelector")));
    c.insert(
        "delete".into(),
        op(Op {
            action: "deletecollection",
            verb: "deletecollection",
            info,
            params: dc,
            body: false,
            code: "200",
        }),
    );
    c.insert("parameters".into(), path_params(info.namespaced, false, v3));
    out.insert(collection, Value::Object(c));
    let mut i = Map::new();
    i.insert(
        "get".into(),
        op(Op { action: "get", verb: "read", info, params: vec![], body: false, code: "200" }),
    );
    i.insert(
        "put".into(),
        op(Op {
            action: "put",
            verb: "replace",
            info,
            params: write.clone(),
            body: true,
            code: "200",
        }),
    );
    let mut pp = write.clone();
    pp.extend(PATCH.iter());
    i.insert(
        "patch".into(),
        op(Op { action: "patch", verb: "patch", info, params: pp, body: true, code: "200" }),
    );
    i.insert(
        "delete".into(),
        op(Op { action: "delete", verb: "delete", info, params: delete, body: false, code: "200" }),
    );
    i.insert("parameters".into(), path_params(info.namespaced, true, v3));
    out.insert(item.clone(), Value::Object(i));
    if info.has_status {
        let mut s = Map::new();
        s.insert(
            "get".into(),
            op(Op { action: "get", verb: "read", info, params: vec![], body: false, code: "200" }),
        );
        s.insert(
            "put".into(),
            op(Op {
                action: "put",
                verb: "replace",
                info,
                params: write.clone(),
                body: true,
                code: "200",
            }),
        );
        let mut pp = write;
        pp.extend(PATCH.iter());
        s.insert(
            "patch".into(),
            op(Op { action: "patch", verb: "patch", info, params: pp, body: true, code: "200" }),
        );
        s.insert("parameters".into(), path_params(info.namespaced, true, v3));
        out.insert(format!("{item}/status"), Value::Object(s));
    }
    if info.namespaced {
        let mut all = Map::new();
        all.insert(
            "get".into(),
            op(Op {
                action: "list",
                verb: "list",
                info,
                params: LIST.iter().collect(),
                body: false,
                code: "200",
            }),
        );
        out.insert(format!("{prefix}/{}", info.plural), Value::Object(all));
    }
}

fn path_params(namespaced: bool, named: bool, v3: bool) -> Value {
    let mut ps = Vec::new();
    if named {
        ps.push(("name", "name of the object"));
    }
    if namespaced {
        ps.push(("namespace", "object name and auth scope, such as for teams and projects"));
    }
    Value::Array(
        ps.into_iter()
            .map(|(n, d)| {
                if v3 {
                    json!({"name": n, "in": "path", "required": true, "description": d,
                        "schema": {"type": "string", "uniqueItems": true}})
                } else {
                    json!({"name": n, "in": "path", "required": true, "description": d,
                        "type": "string", "uniqueItems": true})
                }
            })
            .collect(),
    )
}

fn operation(o: &Op, schema: &str, v3: bool) -> Value {
    let info = o.info;
    let ref_to = |n: &str| {
        if v3 {
            json!({"$ref": format!("#/components/schemas/{n}")})
        } else {
            json!({"$ref": format!("#/definitions/{n}")})
        }
    };
    let kind_part = if o.action == "list" || o.action == "deletecollection" {
        format!("{}{}", info.kind, if o.action == "list" { "List" } else { "" })
    } else {
        info.kind.to_string()
    };
    let scope = if info.namespaced { "Namespaced" } else { "" };
    let group = info.group.split('.').next().unwrap_or("core");
    let group = if group.is_empty() { "core" } else { group };
    let id = format!("{}{}{}{scope}{kind_part}", o.verb, capital(group), capital(info.version));
    let params: Vec<Value> = o
        .params
        .iter()
        .map(|p| {
            if v3 {
                json!({"name": p.name, "in": "query", "description": p.description,
                    "schema": {"type": p.ty, "uniqueItems": true}})
            } else {
                json!({"name": p.name, "in": "query", "description": p.description,
                    "type": p.ty, "uniqueItems": true})
            }
        })
        .collect();
    let response_schema = match o.action {
        "list" => json!({"type": "object", "description": format!("{}List", info.kind)}),
        "deletecollection" => ref_to("io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
        _ => ref_to(schema),
    };
    let mut v = json!({
        "description": format!("{} {}", o.action, info.kind),
        "operationId": id,
        "tags": [format!("{}_{}", group, info.version)],
        "parameters": params,
        "x-kubernetes-action": o.action,
        "x-kubernetes-group-version-kind": {"group": info.group, "version": info.version,
            "kind": info.kind},
    });
    if v3 {
        v["responses"] = json!({o.code: {"description": "OK", "content": {
            "application/json": {"schema": response_schema}}}});
        if o.body {
            let body_types: &[&str] = if o.action == "patch" {
                &[
                    "application/apply-patch+yaml",
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/strategic-merge-patch+json",
                ]
            } else {
                &["application/json", "application/yaml"]
            };
            let schema = if o.action == "patch" {
                json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."})
            } else {
                ref_to(schema)
            };
            let content: Map<String, Value> =
                body_types.iter().map(|t| (t.to_string(), json!({"schema": schema}))).collect();
            v["requestBody"] = json!({"content": content, "required": true});
        }
    } else {
        v["responses"] = json!({o.code: {"description": "OK", "schema": response_schema}});
        v["consumes"] = if o.action == "patch" {
            json!([
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml"
            ])
        } else {
            json!(["*/*"])
        };
        v["produces"] = json!(["application/json", "application/yaml"]);
        v["schemes"] = json!(["https"]);
        if o.body {
            let schema =
                if o.action == "patch" { json!({"type": "object"}) } else { ref_to(schema) };
            v["parameters"]
                .as_array_mut()
                .expect("an array")
                .push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
        }
    }
    v
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().collect::<String>() + c.as_str())
}

/// Status and the other meta types operations refer to that no kind embeds.
fn meta_extras(defs: &mut Map<String, Value>) {
    defs.entry("io.k8s.apimachinery.pkg.apis.meta.v1.Status").or_insert_with(|| {
        json!({"description": "Status is a return value for calls that don't return other objects.",
            "type": "object", "properties": {
                "apiVersion": {"type": "string"}, "code": {"type": "integer", "format": "int32"},
                "details": {"type": "object"}, "kind": {"type": "string"},
                "message": {"type": "string"}, "metadata": {"type": "object"},
                "reason": {"type": "string"}, "status": {"type": "string"}},
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}]})
    });
}

/// `/openapi/v2`: one Swagger 2.0 document of every served path.
pub fn v2() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        let (mut defs, names) = definitions(false);
        meta_extras(&mut defs);
        let mut paths = Map::new();
        for r in RESOURCES {
            if let Some(n) = names.get(r.plural) {
                resource_paths(r, n, false, &mut paths);
            }
        }
        let doc = json!({"swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.35.0"},
            "paths": paths, "definitions": defs,
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization",
                "in": "header", "description": "Bearer Token authentication"}},
            "security": [{"BearerToken": []}]});
        serde_json::to_vec(&doc).unwrap_or_default()
    })
}

/// The v3 documents, one per group-version, and their hashes.
fn v3_docs() -> &'static BTreeMap<String, (Vec<u8>, String)> {
    static DOCS: OnceLock<BTreeMap<String, (Vec<u8>, String)>> = OnceLock::new();
    DOCS.get_or_init(|| {
        use sha2::Digest;
        let (mut defs, names) = definitions(true);
        meta_extras(&mut defs);
        let mut groups: BTreeMap<String, Vec<&ResourceInfo>> = BTreeMap::new();
        for r in RESOURCES {
            groups.entry(gv_path(r.group, r.version)).or_default().push(r);
        }
        groups
            .into_iter()
            .map(|(path, rs)| {
                let mut paths = Map::new();
                for r in &rs {
                    if let Some(n) = names.get(r.plural) {
                        resource_paths(r, n, true, &mut paths);
                    }
                }
                // Every schema travels with each group-version, as upstream's do (kubectl
                // reads one document per group-version).
                let doc = json!({"openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": "v1.35.0"},
                    "paths": paths, "components": {"schemas": defs,
                        "securitySchemes": {"BearerToken": {"type": "apiKey",
                            "name": "authorization", "in": "header"}}}});
                let bytes = serde_json::to_vec(&doc).unwrap_or_default();
                let hash = sha2::Sha512::digest(&bytes)
                    .iter()
                    .take(32)
                    .map(|b| format!("{b:02X}"))
                    .collect::<String>();
                (path, (bytes, hash))
            })
            .collect()
    })
}

/// `/openapi/v3`: where each group-version's document is.
pub fn v3_root() -> Value {
    let paths: Map<String, Value> = v3_docs()
        .iter()
        .map(|(p, (_, hash))| {
            (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}))
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/<group-version>`.
pub fn v3(path: &str) -> Option<&'static [u8]> {
    v3_docs().get(path).map(|(b, _)| b.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_a_schema_with_its_gvk_and_merge_keys() {
        let mut g = SchemaSettings::draft07().into_generator();
        for r in RESOURCES {
            assert!(schema_of(r.plural, &mut g).is_some(), "{} has no schema", r.plural);
        }
        let v3: Value = serde_json::from_slice(v3("apis/apps/v1").unwrap()).unwrap();
        let d = &v3["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(d["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        let c =
            &v3["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(c["x-kubernetes-patch-merge-key"], "name");
        let patch =
            &v3["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let v2: Value = serde_json::from_slice(super::v2()).unwrap();
        assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
        assert!(v3_root()["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .contains("hash="));
    }
}
