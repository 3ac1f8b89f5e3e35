//! Field ownership, as Kubernetes keeps it in every object's `metadata.managedFields`
//! (structured-merge-diff): which field manager set which fields, what an applied
//! configuration (server-side apply) sets, how it merges into the live object, what it removes
//! that its manager applied before, and when two managers conflict.
//!
//! Field sets are kept in FieldsV1's own shape: a trie keyed by path elements, `f:<field>`,
//! `k:<JSON of the key fields>` (an item of a list keyed by fields), `v:<JSON>` (an item of a
//! set) and `i:<index>`; a node that is itself a member has `"."`. How lists, maps and structs
//! merge comes from k8s.io/api's markers (`schema_table`): `+listType` (else patchStrategy
//! `merge` with its merge key, as kube-openapi falls back), `+mapType` and
//! `+structType=atomic`. Kinds the table does not know are "deduced": objects merge key by
//! key, lists are atomic.

use crate::error::{ApiError, FieldError, FieldErrorType, Reason};
use crate::schema_table::{ATOMIC_STRUCTS, FIELDS};
use crate::strategic::{field, Field};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

/// A set of field paths (FieldsV1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// The node itself is in the set (FieldsV1's `"."`, or a leaf's `{}`).
    member: bool,
    children: BTreeMap<String, Set>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn child(&mut self, pe: String) -> &mut Set {
        self.children.entry(pe).or_default()
    }

    fn insert(&mut self, path: &[String]) {
        let mut n = self;
        for pe in path {
            n = n.child(pe.clone());
        }
        n.member = true;
    }

    /// Parses FieldsV1.
    pub fn from_fields_v1(v: &Value) -> Result<Set, String> {
        let Value::Object(m) = v else { return Err("fieldsV1 is not a JSON object".into()) };
        let mut s = Set::default();
        for (k, c) in m {
            if k == "." {
                s.member = true;
                continue;
            }
            if !["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
                return Err(format!("unknown path element {k:?}"));
            }
            let mut child = Set::from_fields_v1(c)?;
            // `{}`: a leaf.
            if child.children.is_empty() {
                child.member = true;
            }
            s.children.insert(k.clone(), child);
        }
        Ok(s)
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    fn union_with(&mut self, o: &Set) {
        self.member |= o.member;
        for (k, c) in &o.children {
            self.child(k.clone()).union_with(c);
        }
    }

    pub fn union(&self, o: &Set) -> Set {
        let mut out = self.clone();
        out.union_with(o);
        out
    }

    pub fn difference(&self, o: &Set) -> Set {
        let mut out = Set { member: self.member && !o.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            let d = match o.children.get(k) {
                Some(oc) => c.difference(oc),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    pub fn intersection(&self, o: &Set) -> Set {
        let mut out = Set { member: self.member && o.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            if let Some(oc) = o.children.get(k) {
                let i = c.intersection(oc);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// Every member's path, in order.
    pub fn paths(&self) -> Vec<Vec<String>> {
        fn walk(s: &Set, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            if s.member {
                out.push(path.clone());
            }
            for (k, c) in &s.children {
                path.push(k.clone());
                walk(c, path, out);
                path.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }
}

/// A path as Kubernetes prints it: `.spec.containers[name="web"].image`.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let keys = match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                Err(_) => k.to_string(),
            };
            s.push_str(&format!("[{keys}]"));
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// How a value merges, from the schema.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A scalar, or anything owned whole: atomic lists, maps and structs.
    Leaf,
    /// A struct of this type; "" when unknown (deduced: every key is its own field).
    Struct(&'static str),
    /// A map whose values are of this struct type ("" for scalars).
    Map(&'static str),
    /// A list merged item by item: keyed by these fields (comma separated), or by value.
    List { elem: &'static str, keys: Option<&'static str> },
}

fn known_types() -> &'static HashSet<&'static str> {
    static T: OnceLock<HashSet<&'static str>> = OnceLock::new();
    T.get_or_init(|| FIELDS.iter().flat_map(|r| [r.0, r.2]).filter(|t| !t.is_empty()).collect())
}

impl Shape {
    /// An object of `apiVersion` and `kind`.
    pub fn root(api_version: &str, kind: &str) -> Shape {
        let ty = crate::strategic::root_type(api_version, kind);
        match known_types().get(ty.as_str()) {
            Some(t) => Shape::Struct(t),
            None => Shape::Struct(""),
        }
    }

    fn of_struct(ty: &'static str) -> Shape {
        if ty.is_empty() || ATOMIC_STRUCTS.contains(&ty) {
            Shape::Leaf
        } else {
            Shape::Struct(ty)
        }
    }

    fn of_field(f: Field) -> Shape {
        match f.shape {
            "list" => match f.list_type {
                "atomic" => Shape::Leaf,
                "set" => Shape::List { elem: f.elem, keys: None },
                t if t.starts_with("map:") => Shape::List { elem: f.elem, keys: Some(&t[4..]) },
                _ if f.strategy.contains("merge") && !f.merge_key.is_empty() => {
                    Shape::List { elem: f.elem, keys: Some(f.merge_key) }
                }
                _ if f.strategy.contains("merge") => Shape::List { elem: f.elem, keys: None },
                _ => Shape::Leaf,
            },
            "map" if f.list_type == "atomic" => Shape::Leaf,
            "map" => Shape::Map(f.elem),
            _ => Shape::of_struct(f.elem),
        }
    }

    /// The shape of a struct's field or a map's value under `key`.
    fn child(self, key: &str) -> Shape {
        match self {
            Shape::Struct("") => Shape::Struct(""),
            Shape::Struct(ty) => field(ty, key).map(Shape::of_field).unwrap_or(Shape::Leaf),
            Shape::Map(elem) => Shape::of_struct(elem),
            _ => Shape::Leaf,
        }
    }

    fn item(self) -> Shape {
        match self {
            Shape::List { elem, .. } => Shape::of_struct(elem),
            _ => Shape::Leaf,
        }
    }

    /// Whether `v` has the form this shape descends into.
    fn fits(self, v: &Value) -> bool {
        match self {
            Shape::Struct(_) | Shape::Map(_) => v.is_object(),
            Shape::List { .. } => v.is_array(),
            Shape::Leaf => false,
        }
    }

    /// Whether a node of this shape, wholly added or removed, is itself tracked (FieldsV1's
    /// "."): maps and list items are; a typed struct is only through its fields (Kubernetes'
    /// objects always have their non-pointer structs, so they are never added whole).
    fn tracked_whole(self) -> bool {
        !matches!(self, Shape::Struct(t) if !t.is_empty())
    }
}

/// The path element of a list item.
fn item_pe(keys: Option<&str>, item: &Value) -> Result<String, String> {
    let Some(keys) = keys else {
        return Ok(format!("v:{item}"));
    };
    let Value::Object(o) = item else {
        return Err("an item of a list keyed by fields is not an object".into());
    };
    let mut k = Map::new();
    for key in keys.split(',') {
        match o.get(key) {
            Some(v) if !v.is_null() => {
                k.insert(key.into(), v.clone());
            }
            // The schema's default for the one defaulted key (ports' protocol).
            _ if key == "protocol" => {
                k.insert(key.into(), json!("TCP"));
            }
            _ => {
                return Err(format!(
                    "associative list with keys has an element that omits key field {key:?} (and doesn't have default value)"
                ))
            }
        }
    }
    Ok(format!("k:{}", Value::Object(k)))
}

/// The path elements of a list's items, or an error (a key missing, or an item repeated).
fn index_items(shape: Shape, items: &[Value]) -> Result<Vec<String>, String> {
    let Shape::List { keys, .. } = shape else { return Err("not a list".into()) };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let pe = item_pe(keys, item).map_err(|e| format!("element {i}: {e}"))?;
        if !seen.insert(pe.clone()) {
            return Err(format!("element {i}: duplicate entries for key {}", path_string(&[pe])));
        }
        out.push(pe);
    }
    Ok(out)
}

/// The fields an applied configuration sets: its leaves, the items of its granular lists
/// and the keys of its granular maps.
pub fn applied_set(config: &Value, shape: Shape) -> Result<Set, String> {
    fn walk(v: &Value, shape: Shape, node: &mut Set, path: &mut String) -> Result<(), String> {
        match (shape, v) {
            (Shape::Struct(ty), Value::Object(m)) => {
                for (k, cv) in m {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    let c = node.child(format!("f:{k}"));
                    walk(cv, shape.child(k), c, path)?;
                    path.truncate(len);
                    if ty.is_empty() || cv.is_null() || cv.as_object().is_some_and(Map::is_empty) {
                        c.member = true;
                    }
                }
            }
            (Shape::Map(_), Value::Object(m)) => {
                for (k, cv) in m {
                    let c = node.child(format!("f:{k}"));
                    walk(cv, shape.child(k), c, path)?;
                    c.member = true;
                }
            }
            (Shape::List { .. }, Value::Array(items)) => {
                let pes = index_items(shape, items).map_err(|e| format!("{path}: {e}"))?;
                for (pe, item) in pes.into_iter().zip(items) {
                    let c = node.child(pe);
                    walk(item, shape.item(), c, path)?;
                    c.member = true;
                }
            }
            _ => node.member = true,
        }
        Ok(())
    }
    let mut s = Set::default();
    walk(config, shape, &mut s, &mut String::new())?;
    Ok(s)
}

/// What changed from one object to another, by path.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

/// Compares two versions of an object; `metadata.managedFields` is not part of it.
pub fn compare(old: &Value, new: &Value, shape: Shape) -> Comparison {
    fn leaf(l: Option<&Value>, r: Option<&Value>, path: &[String], c: &mut Comparison) {
        match (l, r) {
            (None, Some(_)) => c.added.insert(path),
            (Some(_), None) => c.removed.insert(path),
            (Some(a), Some(b)) if a != b => c.modified.insert(path),
            _ => {}
        }
    }
    fn walk(
        l: Option<&Value>,
        r: Option<&Value>,
        shape: Shape,
        path: &mut Vec<String>,
        c: &mut Comparison,
    ) {
        let fits = |v: Option<&Value>| v.is_none_or(|v| shape.fits(v));
        let empty = |v: Option<&Value>| {
            v.is_none_or(|v| match v {
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            })
        };
        if matches!(shape, Shape::Leaf) || !fits(l) || !fits(r) || (empty(l) && empty(r)) {
            return leaf(l, r, path, c);
        }
        match shape {
            Shape::Struct(ty) | Shape::Map(ty) => {
                let lm = l.and_then(Value::as_object);
                let rm = r.and_then(Value::as_object);
                let _ = ty;
                let skip_managed = path.len() == 1 && path[0] == "f:metadata";
                let keys = lm.into_iter().flat_map(|m| m.keys()).chain(
                    rm.into_iter()
                        .flat_map(|m| m.keys())
                        .filter(|k| !lm.is_some_and(|m| m.contains_key(*k))),
                );
                for k in keys {
                    if skip_managed && k == "managedFields" {
                        continue;
                    }
                    path.push(format!("f:{k}"));
                    walk(
                        lm.and_then(|m| m.get(k)),
                        rm.and_then(|m| m.get(k)),
                        shape.child(k),
                        path,
                        c,
                    );
                    path.pop();
                }
            }
            Shape::List { .. } => {
                let la = l.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                let ra = r.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                let (Ok(lp), Ok(rp)) = (index_items(shape, la), index_items(shape, ra)) else {
                    // Repeated or unkeyed items: the list is compared whole.
                    return leaf(l, r, path, c);
                };
                let li: HashMap<&str, usize> =
                    lp.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
                let ri: HashMap<&str, usize> =
                    rp.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
                let all = lp.iter().chain(rp.iter().filter(|p| !li.contains_key(p.as_str())));
                for pe in all {
                    path.push(pe.clone());
                    let lv = li.get(pe.as_str()).map(|&i| &la[i]);
                    let rv = ri.get(pe.as_str()).map(|&i| &ra[i]);
                    walk(lv, rv, shape.item(), path, c);
                    path.pop();
                }
            }
            Shape::Leaf => unreachable!(),
        }
        if shape.tracked_whole() || path.last().is_some_and(|p| !p.starts_with("f:")) {
            match (l, r) {
                (None, Some(_)) => c.added.insert(path),
                (Some(_), None) => c.removed.insert(path),
                _ => {}
            }
        }
    }
    let mut c = Comparison::default();
    walk(Some(old), Some(new), shape, &mut Vec::new(), &mut c);
    c
}

/// Merges an applied configuration into the live object: the configuration's values win,
/// granular maps and structs merge key by key, lists merge item by item in
/// structured-merge-diff's order. A null in the configuration removes the field.
pub fn merge(live: &Value, config: &Value, shape: Shape) -> Result<Value, String> {
    match (shape, live, config) {
        (Shape::Struct(_) | Shape::Map(_), Value::Object(lm), Value::Object(cm)) => {
            let mut out = lm.clone();
            for (k, cv) in cm {
                if cv.is_null() {
                    out.remove(k);
                    continue;
                }
                let v = match lm.get(k) {
                    Some(lv) => merge(lv, cv, shape.child(k))?,
                    None => cv.clone(),
                };
                out.insert(k.clone(), v);
            }
            Ok(Value::Object(out))
        }
        (Shape::List { .. }, Value::Array(la), Value::Array(ca)) => merge_list(la, ca, shape),
        _ => Ok(config.clone()),
    }
}

/// structured-merge-diff's list merge: live items keep their places, items both have are
/// merged in the configuration's order, new items follow the configuration.
fn merge_list(la: &[Value], ra: &[Value], shape: Shape) -> Result<Value, String> {
    let rpe = index_items(shape, ra)?;
    let Ok(lpe) = index_items(shape, la) else {
        // A live list that is not keyed as the schema says is replaced.
        return Ok(Value::Array(ra.to_vec()));
    };
    let lidx: HashMap<&str, usize> = lpe.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    let ridx: HashMap<&str, usize> = rpe.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    let mut shared = rpe.iter().filter(|p| lidx.contains_key(p.as_str()));
    let mut next_shared = shared.next();
    let mut merged_r: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(la.len().max(ra.len()));
    let (ll, rl) = (lpe.len(), rpe.len());
    let (mut li, mut ri) = (0, 0);
    while li < ll || ri < rl {
        if li < ll && ri < rl {
            let pe = &lpe[li];
            if pe == &rpe[ri] {
                merged_r.insert(pe);
                out.push(merge(&la[li], &ra[ri], shape.item())?);
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if ridx.contains_key(pe.as_str()) && next_shared.is_some_and(|n| n != pe) {
                // A shared item, not the one due in this round.
                li += 1;
                continue;
            }
        }
        if li < ll {
            let pe = &lpe[li];
            if !ridx.contains_key(pe.as_str()) {
                out.push(la[li].clone());
                li += 1;
                continue;
            } else if merged_r.contains(pe.as_str()) {
                li += 1;
            }
        }
        if ri < rl {
            let pe = &rpe[ri];
            merged_r.insert(pe);
            out.push(match lidx.get(pe.as_str()) {
                Some(&i) => merge(&la[i], &ra[ri], shape.item())?,
                None => ra[ri].clone(),
            });
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.next();
            }
        }
    }
    Ok(Value::Array(out))
}

/// Removes the fields of `rm` from `v`, but not a node under which `owned` has members.
fn remove(v: &mut Value, rm: &Set, owned: Option<&Set>, shape: Shape) {
    match (shape, v) {
        (Shape::Struct(_) | Shape::Map(_), Value::Object(m)) => {
            for (pe, child) in &rm.children {
                let Some(name) = pe.strip_prefix("f:") else { continue };
                let owned_child = owned.and_then(|o| o.children.get(pe));
                if child.member && owned_child.is_none() {
                    m.remove(name);
                } else if let Some(cv) = m.get_mut(name) {
                    remove(cv, child, owned_child, shape.child(name));
                }
            }
        }
        (Shape::List { keys, .. }, Value::Array(items)) => {
            for (pe, child) in &rm.children {
                let owned_child = owned.and_then(|o| o.children.get(pe));
                let is = |i: &Value| item_pe(keys, i).is_ok_and(|p| &p == pe);
                if child.member && owned_child.is_none() {
                    items.retain(|i| !is(i));
                } else {
                    for i in items.iter_mut().filter(|i| is(i)) {
                        remove(i, child, owned_child, shape.item());
                    }
                }
            }
        }
        _ => {}
    }
}

/// One field manager's entry in `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// "Apply" or "Update".
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub time: Option<String>,
    pub set: Set,
}

impl Entry {
    /// Kubernetes keys managers by name, operation and subresource, and Update managers
    /// also by API version.
    fn is(&self, who: &Manager<'_>, operation: &str) -> bool {
        self.manager == who.name
            && self.operation == operation
            && self.subresource == who.subresource
            && (operation == APPLY || self.api_version == who.api_version)
    }

    /// How a conflict names the manager: `"kubectl" using apps/v1` for an updater.
    fn display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == UPDATE {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

pub const APPLY: &str = "Apply";
pub const UPDATE: &str = "Update";

/// Who writes: the field manager, the subresource written, the object's API version, and
/// the time to record.
pub struct Manager<'a> {
    pub name: &'a str,
    pub subresource: &'a str,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// The managers of an object, from `metadata.managedFields`.
pub fn decode(obj: &Value) -> Result<Vec<Entry>, String> {
    let Some(list) = obj.pointer("/metadata/managedFields") else { return Ok(Vec::new()) };
    let Some(list) = list.as_array() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        if !matches!(s("fieldsType").as_str(), "FieldsV1" | "") {
            return Err(format!("[{i}].fieldsType: must be FieldsV1"));
        }
        let set = match e.get("fieldsV1") {
            Some(f) => Set::from_fields_v1(f).map_err(|m| format!("[{i}].fieldsV1: {m}"))?,
            None => Set::default(),
        };
        let operation = s("operation");
        if !matches!(operation.as_str(), APPLY | UPDATE) {
            return Err(format!("[{i}].operation: must be Apply or Update"));
        }
        out.push(Entry {
            manager: s("manager"),
            operation,
            api_version: s("apiVersion"),
            subresource: s("subresource"),
            time: e.get("time").and_then(Value::as_str).map(String::from),
            set,
        });
    }
    Ok(out)
}

/// Writes the managers into `metadata.managedFields` (removed when there are none), sorted
/// as Kubernetes sorts them: appliers first, then by time and name.
pub fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let list = entries
        .into_iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), json!(e.manager));
            m.insert("operation".into(), json!(e.operation));
            m.insert("apiVersion".into(), json!(e.api_version));
            if let Some(t) = e.time {
                m.insert("time".into(), json!(t));
            }
            m.insert("fieldsType".into(), json!("FieldsV1"));
            m.insert("fieldsV1".into(), e.set.to_fields_v1());
            if !e.subresource.is_empty() {
                m.insert("subresource".into(), json!(e.subresource));
            }
            Value::Object(m)
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(list));
}

/// What no manager owns: the object's identity and what the server sets.
fn strip_meta(s: &mut Set) {
    for f in ["apiVersion", "kind"] {
        if let Some(c) = s.children.get_mut(&format!("f:{f}")) {
            c.member = false;
        }
    }
    if let Some(m) = s.children.get_mut("f:metadata") {
        m.member = false;
        for f in [
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        ] {
            if let Some(c) = m.children.get_mut(&format!("f:{f}")) {
                c.member = false;
            }
        }
    }
    prune_empty(s);
}

fn prune_empty(s: &mut Set) {
    s.children.retain(|_, c| {
        prune_empty(c);
        !c.is_empty()
    });
}

/// Kubernetes keeps at most this many Update managers; older ones fold into one.
const MAX_UPDATE_MANAGERS: usize = 10;

fn cap_updaters(entries: &mut Vec<Entry>) {
    let n = entries.iter().filter(|e| e.operation == UPDATE).count();
    if n <= MAX_UPDATE_MANAGERS {
        return;
    }
    let mut updaters: Vec<usize> =
        (0..entries.len()).filter(|&i| entries[i].operation == UPDATE).collect();
    updaters.sort_by(|&a, &b| entries[a].time.cmp(&entries[b].time));
    let fold: HashSet<usize> = updaters[..n - MAX_UPDATE_MANAGERS + 1].iter().copied().collect();
    let mut ancient = Entry {
        manager: "ancient-changes".into(),
        operation: UPDATE.into(),
        api_version: String::new(),
        subresource: String::new(),
        time: None,
        set: Set::default(),
    };
    let mut kept = Vec::with_capacity(entries.len());
    for (i, e) in entries.drain(..).enumerate() {
        if fold.contains(&i) {
            ancient.set.union_with(&e.set);
            ancient.api_version = e.api_version;
            ancient.time = ancient.time.max(e.time);
        } else {
            kept.push(e);
        }
    }
    kept.push(ancient);
    *entries = kept;
}

/// An update (create, update, patch): the manager takes every field that changed, from
/// whoever had it, and loses what was removed. `entries` are the managers before it.
pub fn track_update(live: &Value, new: &mut Value, mut entries: Vec<Entry>, who: &Manager<'_>) {
    let shape = Shape::root(who.api_version, new["kind"].as_str().unwrap_or(""));
    let c = compare(live, new, shape);
    let changed = c.added.union(&c.modified);
    let mut mine = None;
    for (i, e) in entries.iter_mut().enumerate() {
        if e.is(who, UPDATE) {
            mine = Some(i);
            continue;
        }
        e.set = e.set.difference(&changed).difference(&c.removed);
    }
    let i = match mine {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: who.name.into(),
                operation: UPDATE.into(),
                api_version: who.api_version.into(),
                subresource: who.subresource.into(),
                time: None,
                set: Set::default(),
            });
            entries.len() - 1
        }
    };
    let e = &mut entries[i];
    e.set = e.set.union(&changed).difference(&c.removed);
    strip_meta(&mut e.set);
    if !c.is_empty() || e.time.is_none() {
        e.time = Some(who.now.into());
    }
    entries.retain(|e| !e.set.is_empty());
    cap_updaters(&mut entries);
    encode(new, entries);
}

/// A field manager's conflict with others over fields an apply would change.
fn conflict_error(conflicts: &[(String, Vec<String>)]) -> ApiError {
    let mut causes = Vec::new();
    for (who, paths) in conflicts {
        for p in paths {
            causes.push(FieldError {
                field: p.clone(),
                kind: FieldErrorType::ManagerConflict,
                message: format!("conflict with {who}"),
            });
        }
    }
    let message = if causes.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].0, causes[0].field
        )
    } else {
        let mut lines = Vec::new();
        for (who, paths) in conflicts {
            lines.push(format!("conflicts with {who}:"));
            lines.extend(paths.iter().map(|p| format!("- {p}")));
        }
        format!("Apply failed with {} conflicts: {}", causes.len(), lines.join("\n"))
    };
    ApiError { reason: Reason::Conflict, message, causes }
}

/// Server-side apply of `config` by `who` to `live` (`None`: the object does not exist yet).
/// Answers the new object, its managers recorded in it, or the conflicts with other managers
/// over fields whose values the configuration changes (unless `force`: then it takes them).
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    who: &Manager<'_>,
    force: bool,
) -> Result<Value, ApiError> {
    let kind = config["kind"].as_str().unwrap_or("");
    let shape = Shape::root(who.api_version, kind);
    let typed_err = |e: String| {
        ApiError::bad_request(format!(
            "failed to create typed patch object ({}, Kind={kind}): {e}",
            who.api_version
        ))
    };
    let mut set = applied_set(config, shape).map_err(typed_err)?;
    strip_meta(&mut set);
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);
    let mut entries = match live {
        Some(l) => decode(l).unwrap_or_default(),
        None => Vec::new(),
    };
    let mut merged = merge(live_v, config, shape).map_err(typed_err)?;
    if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let last = entries.iter().position(|e| e.is(who, APPLY));
    let last_set = last.map(|i| entries[i].set.clone());
    match last {
        Some(i) => {
            entries[i].set = set.clone();
            entries[i].api_version = who.api_version.into();
        }
        None => entries.push(Entry {
            manager: who.name.into(),
            operation: APPLY.into(),
            api_version: who.api_version.into(),
            subresource: who.subresource.into(),
            time: None,
            set: set.clone(),
        }),
    }
    // What this manager applied before and no one (itself included) owns now goes.
    if let Some(last_set) = last_set {
        let owned = entries.iter().fold(Set::default(), |acc, e| acc.union(&e.set));
        let rm = last_set.difference(&owned);
        if !rm.is_empty() {
            remove(&mut merged, &rm, Some(&owned), shape);
        }
    }
    let c = compare(live_v, &merged, shape);
    let changed = c.added.union(&c.modified);
    let mut conflicts = Vec::new();
    for e in entries.iter_mut() {
        if e.is(who, APPLY) {
            continue;
        }
        let clash = e.set.intersection(&changed);
        if !clash.is_empty() {
            conflicts.push((e.display(), clash.paths().iter().map(|p| path_string(p)).collect()));
            e.set = e.set.difference(&clash);
        }
        e.set = e.set.difference(&c.removed);
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        return Err(conflict_error(&conflicts));
    }
    let changed_any = !c.is_empty();
    for e in entries.iter_mut().filter(|e| e.is(who, APPLY)) {
        if changed_any || e.time.is_none() {
            e.time = Some(who.now.into());
        }
    }
    entries.retain(|e| !e.set.is_empty());
    cap_updaters(&mut entries);
    encode(&mut merged, entries);
    Ok(merged)
}

/// The managers a write starts from: those of the live object, unless the request sets
/// `metadata.managedFields` itself (not through a subresource): `[{}]` clears them, any
/// other valid non-empty list replaces them, and an empty or undecodable one is ignored so
/// that clients unaware of the field cannot drop it.
pub fn starting_entries(live: Option<&Value>, request: &Value, subresource: &str) -> Vec<Entry> {
    let from_live = || live.map(|l| decode(l).unwrap_or_default()).unwrap_or_default();
    if !subresource.is_empty() {
        return from_live();
    }
    match request.pointer("/metadata/managedFields").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            if list.iter().all(|e| e.as_object().is_some_and(Map::is_empty)) {
                return Vec::new();
            }
            decode(request).unwrap_or_else(|_| from_live())
        }
        _ => from_live(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image,
                        "ports": [{"containerPort": 80}]}]}}}})
    }

    fn who<'a>(name: &'a str) -> Manager<'a> {
        Manager { name, subresource: "", api_version: "apps/v1", now: "2026-12-07T00:00:00Z" }
    }

    fn fields_of(obj: &Value, manager: &str) -> Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == manager)
            .map(|e| e["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn fields_v1_round_trips() {
        let f = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}});
        assert_eq!(Set::from_fields_v1(&f).unwrap().to_fields_v1(), f);
        assert!(Set::from_fields_v1(&json!({"x:y": {}})).is_err());
    }

    #[test]
    fn an_applied_set_has_leaves_items_and_map_keys() {
        let d = deploy(2, "nginx");
        let shape = Shape::root("apps/v1", "Deployment");
        let mut s = applied_set(&d, shape).unwrap();
        strip_meta(&mut s);
        let f = s.to_fields_v1();
        assert_eq!(f["f:metadata"], json!({"f:labels": {"f:app": {}}}));
        let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        // Ports are keyed by containerPort and protocol, which defaults to TCP.
        assert!(c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object());
        // The selector is atomic: owned whole.
        assert_eq!(f["f:spec"]["f:selector"], json!({}));
        assert!(f.get("f:apiVersion").is_none() && f["f:metadata"].get("f:name").is_none());
    }

    #[test]
    fn apply_creates_then_conflicts_with_another_manager_unless_forced() {
        let first = apply(None, &deploy(2, "nginx"), &who("alice"), false).unwrap();
        assert_eq!(first["spec"]["replicas"], 2);
        assert_eq!(first["metadata"]["managedFields"][0]["operation"], "Apply");
        // The same values from someone else: shared, no conflict.
        let shared = apply(Some(&first), &deploy(2, "nginx"), &who("bob"), false).unwrap();
        assert_eq!(shared["metadata"]["managedFields"].as_array().unwrap().len(), 2);
        // A different value for a field alice owns: a conflict naming her and the field.
        let e = apply(Some(&first), &deploy(3, "nginx"), &who("bob"), false).unwrap_err();
        assert_eq!(e.reason, Reason::Conflict);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
        );
        assert_eq!(e.causes[0].field, ".spec.replicas");
        // Forced: bob takes it, alice loses it.
        let forced = apply(Some(&first), &deploy(3, "nginx"), &who("bob"), true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        assert!(fields_of(&forced, "alice")["f:spec"].get("f:replicas").is_none());
        assert_eq!(fields_of(&forced, "bob")["f:spec"]["f:replicas"], json!({}));
    }

    #[test]
    fn an_update_takes_fields_and_the_next_apply_conflicts() {
        let applied = apply(None, &deploy(2, "nginx"), &who("kubectl"), false).unwrap();
        let mut scaled = applied.clone();
        scaled["spec"]["replicas"] = json!(5);
        let entries = starting_entries(Some(&applied), &scaled, "");
        track_update(&applied, &mut scaled, entries, &who("kubectl-scale"));
        assert_eq!(fields_of(&scaled, "kubectl-scale"), json!({"f:spec": {"f:replicas": {}}}));
        let e = apply(Some(&scaled), &deploy(2, "nginx"), &who("kubectl"), false).unwrap_err();
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        // Leaving the field out of the configuration gives it up instead.
        let mut without = deploy(2, "nginx");
        without["spec"].as_object_mut().unwrap().remove("replicas");
        let ok = apply(Some(&scaled), &without, &who("kubectl"), false).unwrap();
        assert_eq!(ok["spec"]["replicas"], 5);
    }

    #[test]
    fn fields_dropped_from_the_configuration_are_removed_unless_owned_by_others() {
        let mut two = deploy(1, "nginx");
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox"}));
        two["metadata"]["labels"]["tier"] = json!("front");
        let applied = apply(None, &two, &who("kubectl"), false).unwrap();
        // Another manager adds an annotation; it must survive kubectl's next apply.
        let mut annotated = applied.clone();
        annotated["metadata"]["annotations"] = json!({"note": "x"});
        let entries = starting_entries(Some(&applied), &annotated, "");
        track_update(&applied, &mut annotated, entries, &who("editor"));
        let again = apply(Some(&annotated), &deploy(1, "nginx"), &who("kubectl"), false).unwrap();
        let containers = again["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{again:#}");
        assert!(again["metadata"]["labels"].get("tier").is_none());
        assert_eq!(again["metadata"]["annotations"]["note"], "x");
    }

    #[test]
    fn lists_merge_in_structured_merge_diffs_order() {
        let shape = Shape::List { elem: "core.v1.Container", keys: Some("name") };
        let live = json!([{"name": "a"}, {"name": "b", "image": "x"}, {"name": "c"}]);
        let config = json!([{"name": "d"}, {"name": "b", "image": "y"}]);
        let out = merge(&live, &config, shape).unwrap();
        let names: Vec<&str> =
            out.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "d", "b", "c"]);
        assert_eq!(out[2]["image"], "y");
    }

    #[test]
    fn a_missing_key_is_a_clear_error() {
        let mut d = deploy(1, "nginx");
        d["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().remove("name");
        let e = apply(None, &d, &who("kubectl"), false).unwrap_err();
        assert!(e.message.contains(".spec.template.spec.containers: element 0: associative list with keys has an element that omits key field \"name\""), "{}", e.message);
    }

    #[test]
    fn updates_keep_at_most_ten_updaters() {
        let mut obj = deploy(1, "nginx");
        for i in 0..12 {
            let mut next = obj.clone();
            next["metadata"]["labels"][format!("l{i}")] = json!("x");
            let entries = starting_entries(Some(&obj), &next, "");
            let name = format!("m{i}");
            let now = format!("2026-12-07T00:00:{i:02}Z");
            let w = Manager { name: &name, subresource: "", api_version: "apps/v1", now: &now };
            track_update(&obj, &mut next, entries, &w);
            obj = next;
        }
        let list = obj["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(list.len(), 10);
        assert!(list.iter().any(|e| e["manager"] == "ancient-changes"));
    }
}
