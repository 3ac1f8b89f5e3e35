//! Leader election through a Lease, as client-go's leaderelection: acquire when the Lease is free
//! or its holder stopped renewing for `lease_duration` (timed on our own clock, from when we last
//! saw the record change, so clock skew between members does not matter), renew every `retry`,
//! and step down when renewals fail for `renew_deadline`.

use crate::Client;
use anyhow::{Context, Result};
use flotilla_api::error::Reason;
use serde_json::json;
use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl LeaderConfig {
    /// kube-scheduler's and kube-controller-manager's defaults: 15 s, 10 s, 2 s. The identity
    /// is `<host>[_<member>]_<uuid>`: unique per process, and saying which member leads.
    pub fn new(name: &str, member: Option<&str>) -> Self {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "flotilla".into());
        let member = member.map(|m| format!("_{m}")).unwrap_or_default();
        LeaderConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: format!("{host}{member}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

fn now_micro() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

struct Elector {
    client: Client,
    cfg: LeaderConfig,
    /// The holder and renewTime we last saw, and when we saw them change.
    observed: Option<(String, String, Instant)>,
}

impl Elector {
    /// One attempt: true when we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let (ns, name) = (self.cfg.namespace.clone(), self.cfg.name.clone());
        let now = now_micro();
        let lease = match self.client.get("leases", &ns, &name).await {
            Ok(l) => l,
            Err(e) if e.reason == Reason::NotFound => {
                let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"holderIdentity": self.cfg.identity,
                             "leaseDurationSeconds": self.cfg.lease_duration.as_secs(),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}});
                return match self.client.create("leases", &ns, &l).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.reason == Reason::AlreadyExists => Ok(false),
                    Err(e) => Err(e).context("creating the leader Lease"),
                };
            }
            Err(e) => return Err(e).context("reading the leader Lease"),
        };
        let spec = &lease["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or("").to_string();
        let renew = spec["renewTime"].as_str().unwrap_or("").to_string();
        let changed = self.observed.as_ref().is_none_or(|(h, r, _)| *h != holder || *r != renew);
        if changed {
            self.observed = Some((holder.clone(), renew.clone(), Instant::now()));
        }
        let duration = spec["leaseDurationSeconds"]
            .as_u64()
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.lease_duration);
        let seen = self.observed.as_ref().map(|o| o.2).unwrap_or_else(Instant::now);
        let mine = holder == self.cfg.identity;
        if !mine && !holder.is_empty() && seen.elapsed() < duration {
            return Ok(false);
        }
        let mut l = lease.clone();
        l["spec"]["holderIdentity"] = json!(self.cfg.identity);
        l["spec"]["leaseDurationSeconds"] = json!(self.cfg.lease_duration.as_secs());
        l["spec"]["renewTime"] = json!(now);
        if !mine {
            l["spec"]["acquireTime"] = json!(now);
            let t = spec["leaseTransitions"].as_i64().unwrap_or(0);
            l["spec"]["leaseTransitions"] = json!(t + 1);
        }
        // The update carries the resourceVersion we read: a rival's write in between wins.
        match self.client.update("leases", &ns, &l).await {
            Ok((v, _)) => {
                let r = v["spec"]["renewTime"].as_str().unwrap_or("").to_string();
                self.observed = Some((self.cfg.identity.clone(), r, Instant::now()));
                Ok(true)
            }
            Err(e) if e.reason == Reason::Conflict => Ok(false),
            Err(e) => Err(e).context("updating the leader Lease"),
        }
    }
}

/// Runs `work` whenever this process leads; stops it (drops the future) when leadership is lost
/// and campaigns again. Returns only if `work` returns an error while leading.
pub async fn run_elected<F, Fut>(client: Client, cfg: LeaderConfig, mut work: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut el = Elector { client, cfg: cfg.clone(), observed: None };
    loop {
        loop {
            match el.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(lease = %cfg.name, error = %format!("{e:#}"), "election attempt failed")
                }
            }
            tokio::time::sleep(cfg.retry).await;
        }
        tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
        let renew = async {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(cfg.retry).await;
                match el.try_acquire_or_renew().await {
                    Ok(true) => last = Instant::now(),
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(lease = %cfg.name, error = %format!("{e:#}"), "renewing leadership failed")
                    }
                }
                if last.elapsed() > cfg.renew_deadline {
                    return;
                }
            }
        };
        tokio::select! {
            r = work() => {
                r?;
                return Ok(());
            }
            _ = renew => tracing::warn!(lease = %cfg.name, "lost leadership; stopping and campaigning again"),
        }
    }
}
