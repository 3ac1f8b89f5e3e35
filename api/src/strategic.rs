//! Strategic merge patch (`application/strategic-merge-patch+json`): what `kubectl apply`
//! (client-side), `kubectl patch` (its default type) and `kubectl edit` send. A merge patch
//! (RFC 7386) in which lists that Kubernetes marks `patchStrategy: merge` merge by their
//! `patchMergeKey` (containers by name, ports by containerPort, ...) or, for scalars, as sets,
//! with the directives `$patch` (replace | delete | merge), `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`. The merge metadata comes
//! from k8s.io/api's struct tags (`schema_table`, generated); fields it does not know merge
//! as in a JSON merge patch, as upstream does for unknown fields.

use crate::error::ApiError;
use crate::schema_table::FIELDS;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// One field's merge metadata.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The element's struct type (for objects, list items and map values); "" for scalars.
    pub elem: &'static str,
    /// "list", "map", or "" for a struct.
    pub shape: &'static str,
    /// `patchStrategy`: "merge", "retainKeys", "merge,retainKeys" or "".
    pub strategy: &'static str,
    pub merge_key: &'static str,
    /// `+listType`: "atomic", "set", "map:<keys>" or ""; for a map, `+mapType` ("atomic").
    pub list_type: &'static str,
}

fn index() -> &'static HashMap<(&'static str, &'static str), Field> {
    static INDEX: OnceLock<HashMap<(&'static str, &'static str), Field>> = OnceLock::new();
    INDEX.get_or_init(|| {
        FIELDS
            .iter()
            .map(|&(ty, name, elem, shape, strategy, merge_key, list_type)| {
                ((ty, name), Field { elem, shape, strategy, merge_key, list_type })
            })
            .collect()
    })
}

/// The metadata of `field` in struct type `ty`, if the schema has it.
pub fn field(ty: &str, field: &str) -> Option<Field> {
    if let Some(f) = index().get(&(ty, field)) {
        return Some(*f);
    }
    // The fields of embedded structs (`json:",inline"`: Probe's ProbeHandler) are its own.
    static INLINE: OnceLock<HashMap<&'static str, Vec<&'static str>>> = OnceLock::new();
    let inline = INLINE.get_or_init(|| {
        let mut m: HashMap<_, Vec<_>> = HashMap::new();
        for r in FIELDS.iter().filter(|r| r.1.is_empty()) {
            m.entry(r.0).or_default().push(r.2);
        }
        m
    });
    inline.get(ty)?.iter().find_map(|t| self::field(t, field))
}

/// The struct type of an object: `apps/v1` + `Deployment` → `apps.v1.Deployment`.
pub fn root_type(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("core", api_version));
    let pkg = group.split('.').next().unwrap_or(group);
    format!("{pkg}.{version}.{kind}")
}

/// Where a value sits in the schema.
#[derive(Clone, Copy)]
enum Ty<'a> {
    /// A struct type ("" when unknown: plain merge-patch rules).
    Struct(&'a str),
    /// A map's values, of this struct type ("" for scalars).
    MapOf(&'static str),
}

impl Ty<'_> {
    fn field(self, name: &str) -> Option<Field> {
        match self {
            Ty::Struct(t) if !t.is_empty() => field(t, name),
            Ty::MapOf(elem) if !elem.is_empty() => {
                Some(Field { elem, shape: "", strategy: "", merge_key: "", list_type: "" })
            }
            _ => None,
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Applies a strategic merge patch to `target`, an object with apiVersion and kind.
pub fn apply(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let Value::Object(p) = patch else {
        return Err(bad("a strategic merge patch must be a JSON object"));
    };
    let api_version = target["apiVersion"].as_str().unwrap_or("v1");
    let ty = root_type(api_version, target["kind"].as_str().unwrap_or(""));
    let mut out = target.clone();
    match &mut out {
        Value::Object(o) => merge_map(o, p, Ty::Struct(&ty))?,
        _ => return Err(bad("the patched object is not a JSON object")),
    }
    Ok(out)
}

fn merge_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    ty: Ty,
) -> Result<(), ApiError> {
    match patch.get("$patch").map(|v| v.as_str()) {
        None | Some(Some("merge")) => {}
        Some(Some("replace")) => {
            *orig = strip(patch);
            return Ok(());
        }
        Some(Some("delete")) => {
            orig.clear();
            return Ok(());
        }
        Some(other) => return Err(bad(format!("unknown patch directive $patch: {other:?}"))),
    }
    let mut orders = Vec::new();
    for (k, pv) in patch {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(gone) = pv else {
                return Err(bad(format!("{k}: must be a list")));
            };
            if let Some(Value::Array(list)) = orig.get_mut(f) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if let Some(f) = k.strip_prefix("$setElementOrder/") {
            orders.push((f, pv));
            continue;
        }
        if pv.is_null() {
            orig.remove(k);
            continue;
        }
        let field = ty.field(k);
        let Some(cur) = orig.get_mut(k) else {
            orig.insert(k.clone(), strip_value(pv, field));
            continue;
        };
        match (cur, pv) {
            (Value::Object(c), Value::Object(pm)) => {
                let sub = match field {
                    Some(f) if f.shape == "map" => Ty::MapOf(f.elem),
                    Some(f) => Ty::Struct(f.elem),
                    None => Ty::Struct(""),
                };
                merge_map(c, pm, sub)?;
            }
            (Value::Array(c), Value::Array(pl))
                if field.is_some_and(|f| f.strategy.contains("merge") && f.shape == "list") =>
            {
                let f = field.expect("checked");
                merge_list(c, pl, f, k)?;
            }
            (cur, pv) => *cur = strip_value(pv, field),
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (f, order) in orders {
        let (Some(Value::Array(list)), Value::Array(order)) = (orig.get_mut(f), order) else {
            continue;
        };
        let key = ty.field(f).map_or("", |x| x.merge_key);
        let rank = |v: &Value| {
            order
                .iter()
                .position(|o| if key.is_empty() { o == v } else { o.get(key) == v.get(key) })
                .unwrap_or(usize::MAX)
        };
        list.sort_by_key(rank);
    }
    Ok(())
}

fn merge_list(
    orig: &mut Vec<Value>,
    patch: &[Value],
    f: Field,
    name: &str,
) -> Result<(), ApiError> {
    if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *orig = patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(|p| strip_value(p, None))
            .collect();
        return Ok(());
    }
    let key = f.merge_key;
    if key.is_empty() {
        // A list of scalars merges as a set.
        for p in patch {
            if !orig.contains(p) {
                orig.push(p.clone());
            }
        }
        return Ok(());
    }
    for p in patch {
        let Value::Object(pm) = p else {
            return Err(bad(format!(
                "{name}: the items of a list merged by {key} must be objects"
            )));
        };
        let Some(k) = pm.get(key) else {
            return Err(bad(format!("{name}: an item has no merge key {key:?}: {p}")));
        };
        let at = orig.iter().position(|o| o.get(key) == Some(k));
        match (pm.get("$patch").and_then(Value::as_str), at) {
            (Some("delete"), Some(i)) => {
                orig.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => match &mut orig[i] {
                Value::Object(o) => merge_map(o, pm, Ty::Struct(f.elem))?,
                other => *other = strip_value(p, None),
            },
            (_, None) => orig.push(Value::Object(strip(pm))),
        }
    }
    Ok(())
}

/// A patch value without its directives, as it is stored when nothing was there before.
fn strip_value(v: &Value, _field: Option<Field>) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip(m)),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| x.get("$patch").and_then(Value::as_str) != Some("delete"))
                .map(|x| strip_value(x, None))
                .collect(),
        ),
        v => v.clone(),
    }
}

fn strip(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip_value(v, None)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "finalizers": ["a"], "labels": {"app": "web"}},
            "spec": {"replicas": 1, "template": {"spec": {
                "containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}],
                     "ports": [{"containerPort": 80}]},
                    {"name": "side", "image": "side:1"}],
                "tolerations": [{"key": "x"}]}}}})
    }

    #[test]
    fn containers_merge_by_name_and_atomic_lists_are_replaced() {
        let p = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]}],
            "tolerations": [{"key": "y"}]}}}});
        let out = apply(&deploy(), &p).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "app:2");
        assert_eq!(cs[0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        assert_eq!(cs[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(out["spec"]["template"]["spec"]["tolerations"], json!([{"key": "y"}]));
    }

    #[test]
    fn directives() {
        let p = json!({"metadata": {"finalizers": ["b"], "labels": {"app": null}},
            "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = apply(&deploy(), &p).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);

        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"template": {"spec": {"containers": [{"name": "only", "image": "o"}, {"$patch": "replace"}]}}}});
        let out = apply(&deploy(), &p).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "o"}])
        );

        let p = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "app:3"}]}}}});
        let out = apply(&deploy(), &p).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            (cs[0]["name"].as_str(), cs[1]["image"].as_str()),
            (Some("side"), Some("app:3"))
        );

        let p = json!({"spec": {"replicas": 3, "$patch": "bogus"}});
        assert!(apply(&deploy(), &p).is_err());
    }

    #[test]
    fn the_schema_knows_the_served_kinds() {
        assert_eq!(field("core.v1.PodSpec", "containers").unwrap().merge_key, "name");
        assert_eq!(field("core.v1.ServiceSpec", "ports").unwrap().merge_key, "port");
        assert_eq!(field("apps.v1.Deployment", "metadata").unwrap().elem, "meta.ObjectMeta");
        assert_eq!(root_type("rbac.authorization.k8s.io/v1", "Role"), "rbac.v1.Role");
        assert_eq!(root_type("v1", "Pod"), "core.v1.Pod");
    }
}
