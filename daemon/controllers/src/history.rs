//! ControllerRevisions: the template history that StatefulSets and DaemonSets share. Each
//! template a controller has had is recorded as a ControllerRevision named `<owner>-<hash>`,
//! numbered in the order it became the update revision (a rollback renumbers the old one as
//! the newest); revisions no pod uses beyond `revisionHistoryLimit` (default 10) are pruned.

use super::deployment::template_hash;
use super::Ctx;
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_client::runtime::{controller_uid, meta, owner_ref};
use flotilla_client::DeleteParams;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// The pod label that names a pod's revision.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// A template the set has had, as its ControllerRevision records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub name: String,
    pub number: i64,
    pub template: Value,
}

impl Revision {
    fn from_object(cr: &Value) -> Revision {
        Revision {
            name: meta(cr, "name").to_string(),
            number: cr["revision"].as_i64().unwrap_or(0),
            template: cr.pointer("/data/spec/template").cloned().unwrap_or(json!({})),
        }
    }
}

/// The revision pods below the partition keep (`current`) and the set's template (`update`).
#[derive(Debug, Clone, PartialEq)]
pub struct Revisions {
    pub current: Revision,
    pub update: Revision,
}

/// The revision writes a sync needs before it touches pods.
#[derive(Debug, Default, PartialEq)]
pub struct History {
    /// A ControllerRevision to create for a template not recorded yet.
    pub create: Option<Value>,
    /// An older revision whose template is back (a rollback) becomes the newest: (name, number).
    pub renumber: Option<(String, i64)>,
    /// Revisions beyond `revisionHistoryLimit` that no pod uses, oldest first.
    pub prune: Vec<String>,
}

pub(crate) fn label_revision(p: &Value) -> Option<&str> {
    p["metadata"]["labels"][HASH_LABEL].as_str()
}

/// What a pod's `controller-revision-hash` label holds: the revision's name (StatefulSets) or
/// its template hash (DaemonSets), as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PodLabel {
    Name,
    Hash,
}

/// A controller's revisions from the ControllerRevisions it owns (and, for pruning, its
/// pods), for any controller of pods with a `spec.template` (StatefulSet, DaemonSet).
pub fn history_of(
    obj: &Value,
    owned: &[Arc<Value>],
    pods: &[Arc<Value>],
    pod_label: PodLabel,
) -> (Revisions, History) {
    let set = meta(obj, "name");
    let template = obj.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let name = format!("{set}-{hash}");
    let mut known: Vec<Revision> = owned.iter().map(|o| Revision::from_object(o)).collect();
    known.sort_by_key(|r| r.number);
    let newest = known.last().map_or(0, |r| r.number);
    let mut h = History::default();
    let update = match known.iter().find(|r| r.name == name) {
        Some(r) if r.number == newest => r.clone(),
        Some(r) => {
            h.renumber = Some((r.name.clone(), newest + 1));
            Revision { number: newest + 1, ..r.clone() }
        }
        None => {
            let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            labels[HASH_LABEL] = json!(if pod_label == PodLabel::Name { &name } else { &hash });
            h.create = Some(json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": name, "namespace": meta(obj, "namespace"), "labels": labels,
                             "ownerReferences": [owner_ref(obj)]},
                "data": {"spec": {"template": template}}, "revision": newest + 1}));
            Revision { name: name.clone(), number: newest + 1, template }
        }
    };
    let current = obj
        .pointer("/status/currentRevision")
        .and_then(Value::as_str)
        .and_then(|c| known.iter().find(|r| r.name == c))
        .filter(|r| r.name != update.name)
        .cloned()
        .unwrap_or_else(|| update.clone());
    let uid = meta(obj, "uid");
    let mut used: HashSet<String> = pods
        .iter()
        .filter(|p| controller_uid(p) == uid)
        .filter_map(|p| label_revision(p))
        .map(|l| if pod_label == PodLabel::Name { l.to_string() } else { format!("{set}-{l}") })
        .collect();
    used.extend([current.name.clone(), update.name.clone()]);
    let limit = obj.pointer("/spec/revisionHistoryLimit").and_then(Value::as_i64).unwrap_or(10);
    let unused: Vec<&Revision> = known.iter().filter(|r| !used.contains(&r.name)).collect();
    let excess = unused.len().saturating_sub(limit.max(0) as usize);
    h.prune = unused[..excess].iter().map(|r| r.name.clone()).collect();
    (Revisions { current, update }, h)
}

/// Records a new revision or renumbers a restored one, before pods are touched.
pub async fn record_history(ctx: &Ctx, ns: &str, h: &History) -> anyhow::Result<()> {
    let c = &ctx.client;
    if let Some(cr) = &h.create {
        match c.create("controllerrevisions", ns, cr).await {
            // The cache has not shown it yet.
            Ok(_) => {}
            Err(e) if e.reason == Reason::AlreadyExists => {}
            Err(e) => return Err(e).context("recording a revision"),
        }
    }
    if let Some((name, number)) = &h.renumber {
        let patch = json!({"revision": number});
        c.patch("controllerrevisions", ns, name, &patch, false, false)
            .await
            .context("renumbering a revision")?;
    }
    Ok(())
}

/// Deletes the revisions beyond the history limit.
pub async fn prune_history(ctx: &Ctx, ns: &str, h: &History) -> anyhow::Result<()> {
    for name in &h.prune {
        match ctx.client.delete("controllerrevisions", ns, name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if e.reason == Reason::NotFound => {}
            Err(e) => return Err(e).context("pruning the revision history"),
        }
    }
    Ok(())
}

/// The ControllerRevisions `obj` controls.
pub fn owned_revisions(ctx: &Ctx, obj: &Value) -> Vec<Arc<Value>> {
    let uid = meta(obj, "uid");
    ctx.inf("controllerrevisions")
        .list_namespace(meta(obj, "namespace"))
        .into_iter()
        .filter(|r| controller_uid(r) == uid)
        .collect()
}
