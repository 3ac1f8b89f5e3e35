//! Label selectors (equality- and set-based, as `kubectl -l` and `matchExpressions` write them)
//! and field selectors (`metadata.name=x,status.phase!=Running`).

use crate::validate::{label_key_error, label_value_error};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Op::Eq | Op::In => v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Op::NotEq | Op::NotIn => !v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt | Op::Lt => {
                let (Some(v), Some(bound)) = (v, self.values.first()) else { return false };
                match (v.parse::<i64>(), bound.parse::<i64>()) {
                    (Ok(v), Ok(b)) => {
                        if self.op == Op::Gt {
                            v > b
                        } else {
                            v < b
                        }
                    }
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        match self.op {
            Op::Eq => write!(f, "{k}={}", self.values[0]),
            Op::NotEq => write!(f, "{k}!={}", self.values[0]),
            Op::In => write!(f, "{k} in ({})", self.values.join(",")),
            Op::NotIn => write!(f, "{k} notin ({})", self.values.join(",")),
            Op::Exists => write!(f, "{k}"),
            Op::DoesNotExist => write!(f, "!{k}"),
            Op::Gt => write!(f, "{k}>{}", self.values[0]),
            Op::Lt => write!(f, "{k}<{}", self.values[0]),
        }
    }
}

/// A conjunction of requirements. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
    /// `matchExpressions` can say "nothing" (a null selector); the string form cannot.
    pub match_nothing: bool,
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn check_key(key: &str) -> Result<(), String> {
    label_key_error(key).map_or(Ok(()), |e| Err(format!("invalid label key {key:?}: {e}")))
}

fn check_value(v: &str) -> Result<(), String> {
    label_value_error(v).map_or(Ok(()), |e| Err(format!("invalid label value {v:?}: {e}")))
}

impl LabelSelector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty() && !self.match_nothing
    }

    /// Parses `kubectl -l` syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h,n>3`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let mut reqs = Vec::new();
        if s.is_empty() {
            return Ok(Self::default());
        }
        for part in split_top(s)? {
            let p = part.trim();
            if p.is_empty() {
                return Err(format!("empty requirement in label selector {s:?}"));
            }
            reqs.push(Self::parse_requirement(p)?);
        }
        Ok(LabelSelector { requirements: reqs, match_nothing: false })
    }

    fn parse_requirement(p: &str) -> Result<Requirement, String> {
        let set_op = |p: &str, word: &str| -> Option<(String, String)> {
            let idx = p.find(&format!(" {word} ")).or_else(|| p.find(&format!(" {word}(")))?;
            Some((p[..idx].trim().to_string(), p[idx + word.len() + 1..].trim().to_string()))
        };
        let set_values = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("expected (values) in {p:?}"))?;
            let vals: Vec<String> =
                inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
            if vals.is_empty() {
                return Err(format!("set requirement {p:?} needs at least one value"));
            }
            for v in &vals {
                check_value(v)?;
            }
            Ok(vals)
        };
        if let Some((key, rest)) = set_op(p, "notin") {
            check_key(&key)?;
            return Ok(Requirement { key, op: Op::NotIn, values: set_values(&rest)? });
        }
        if let Some((key, rest)) = set_op(p, "in") {
            check_key(&key)?;
            return Ok(Requirement { key, op: Op::In, values: set_values(&rest)? });
        }
        for (tok, op) in
            [("!=", Op::NotEq), ("==", Op::Eq), ("=", Op::Eq), (">", Op::Gt), ("<", Op::Lt)]
        {
            if let Some((k, v)) = p.split_once(tok) {
                let (key, value) = (k.trim().to_string(), v.trim().to_string());
                check_key(&key)?;
                if matches!(op, Op::Gt | Op::Lt) {
                    value
                        .parse::<i64>()
                        .map_err(|_| format!("{p:?}: {value:?} is not an integer"))?;
                } else {
                    check_value(&value)?;
                }
                return Ok(Requirement { key, op, values: vec![value] });
            }
        }
        if let Some(key) = p.strip_prefix('!') {
            let key = key.trim().to_string();
            check_key(&key)?;
            return Ok(Requirement { key, op: Op::DoesNotExist, values: vec![] });
        }
        if p.contains(char::is_whitespace) {
            return Err(format!("cannot parse label requirement {p:?}"));
        }
        check_key(p)?;
        Ok(Requirement { key: p.to_string(), op: Op::Exists, values: vec![] })
    }

    /// A `metav1.LabelSelector` (matchLabels AND matchExpressions). An empty one matches
    /// everything, as in Kubernetes' `LabelSelectorAsSelector`.
    pub fn from_k8s(sel: &metav1::LabelSelector) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            check_key(k)?;
            check_value(v)?;
            reqs.push(Requirement { key: k.clone(), op: Op::Eq, values: vec![v.clone()] });
        }
        for e in sel.match_expressions.iter().flatten() {
            check_key(&e.key)?;
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(format!(
                        "{other:?} is not a valid label selector operator (In, NotIn, Exists, DoesNotExist)"
                    ))
                }
            };
            match op {
                Op::In | Op::NotIn if values.is_empty() => {
                    return Err(format!("operator {} needs values", e.operator))
                }
                Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                    return Err(format!("operator {} takes no values", e.operator))
                }
                _ => {}
            }
            for v in &values {
                check_value(v)?;
            }
            reqs.push(Requirement { key: e.key.clone(), op, values });
        }
        Ok(LabelSelector { requirements: reqs, match_nothing: false })
    }

    /// The `metav1.LabelSelector` at `pointer` in `obj` (`/spec/selector`): None when unset,
    /// an error naming the field when it does not parse.
    pub fn at(obj: &Value, pointer: &str) -> Result<Option<Self>, String> {
        let Some(sel) = obj.pointer(pointer).filter(|s| !s.is_null()) else {
            return Ok(None);
        };
        let field = pointer.trim_start_matches('/').replace('/', ".");
        let s: metav1::LabelSelector =
            serde_json::from_value(sel.clone()).map_err(|e| format!("{field}: {e}"))?;
        Self::from_k8s(&s).map(Some).map_err(|e| format!("{field}: {e}"))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.match_nothing && self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// `metadata.name=web,status.phase!=Running`: only `=`, `==` and `!=`, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid field selector term {part:?}: expected field=value or field!=value"
                ));
            };
            terms.push((field.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value `field` must equal, if the selector pins it (an index can serve it).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.terms.iter().find(|(f, eq, _)| f == field && *eq).map(|(_, _, v)| v.as_str())
    }

    /// Checks every field against the fields this resource supports.
    pub fn check(&self, supported: &[&str]) -> Result<(), String> {
        for (f, _, _) in &self.terms {
            if f != "metadata.name" && f != "metadata.namespace" && !supported.contains(&f.as_str())
            {
                let mut all = vec!["metadata.name", "metadata.namespace"];
                all.extend_from_slice(supported);
                return Err(format!(
                    "field label not supported: {f} (supported: {})",
                    all.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Matches an object in its JSON form; a missing field reads as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(f, eq, v)| (field_value(obj, f) == *v) == *eq)
    }
}

/// The string value of a dotted field path (`spec.nodeName`); "" when absent.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_and_matches_kubectl_syntax() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db, cache)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing!=x", true),
            ("app=web,tier in (front),!canary", true),
            ("n>3", true),
            ("n<3", false),
            ("example.com/role=x", false),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.matches(&l), *want, "{s}");
        }
        assert_eq!(
            LabelSelector::parse("a=b, c in (x,y),!d").unwrap().to_string(),
            "a=b,c in (x,y),!d"
        );
    }

    #[test]
    fn rejects_bad_selectors() {
        for s in ["app in (", "a=b,,c", "app in ()", "-bad=x", "a=b c", "a=in valid", "n>x", "a=b)"]
        {
            assert!(LabelSelector::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn converts_match_expressions() {
        let sel = metav1::LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["prod".into()]),
            }]),
        };
        let s = LabelSelector::from_k8s(&sel).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        let bad = metav1::LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "Exists".into(),
                values: Some(vec!["x".into()]),
            }]),
        };
        assert!(LabelSelector::from_k8s(&bad).is_err());
        assert!(LabelSelector::from_k8s(&metav1::LabelSelector::default())
            .unwrap()
            .is_everything());
    }

    #[test]
    fn field_selectors() {
        let pod = serde_json::json!({"metadata": {"name": "a", "namespace": "ns"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let ok = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(ok("spec.nodeName=n1"));
        assert!(ok("spec.nodeName==n1,status.phase!=Pending"));
        assert!(!ok("status.phase=Pending"));
        assert!(ok("spec.unset="));
        assert!(FieldSelector::parse("nope").is_err());
        let fs = FieldSelector::parse("spec.nodeName=n1").unwrap();
        assert_eq!(fs.exact("spec.nodeName"), Some("n1"));
        assert!(fs.check(&["spec.nodeName"]).is_ok());
        assert!(fs.check(&[]).unwrap_err().contains("field label not supported: spec.nodeName"));
    }
}
