//! In-process store clusters on loopback for tests, and the watch-guarantee checker.
#![allow(dead_code)]

use flotilla_store::etcd::serve;
use flotilla_store::proto::mvccpb::{event::EventType, Event};
use flotilla_store::{StoreConfig, StoreNode, WatchUpdate, Watcher};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;

pub struct Member {
    pub node: Arc<StoreNode>,
    pub client_addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: Arc<TempDir>,
}

impl Member {
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
        self.node.shutdown().await;
    }
}

/// Starts `n` members on loopback ports; `tweak` adjusts every member's configuration.
pub async fn start_cluster(n: usize, tweak: impl Fn(&mut StoreConfig)) -> Vec<Member> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        let c = TcpListener::bind("127.0.0.1:0").await.expect("bind client");
        let p = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
        listeners.push((c, p));
    }
    let addrs: Vec<(String, String)> = listeners
        .iter()
        .map(|(c, p)| (c.local_addr().unwrap().to_string(), p.local_addr().unwrap().to_string()))
        .collect();
    let initial: Vec<(String, String)> =
        (0..n).map(|i| (format!("m{i}"), addrs[i].1.clone())).collect();
    let mut members = Vec::new();
    for (i, (c, p)) in listeners.into_iter().enumerate() {
        let dir = Arc::new(TempDir::new().expect("tempdir"));
        let mut cfg = StoreConfig::single(
            &format!("m{i}"),
            dir.path().to_path_buf(),
            &addrs[i].1,
            &addrs[i].0,
        );
        if n > 1 {
            cfg.initial_cluster = initial.clone();
        }
        cfg.heartbeat_ms = 50;
        cfg.election_timeout_ms = (250, 500);
        tweak(&mut cfg);
        let node = StoreNode::start(cfg).await.expect("start member");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let n2 = node.clone();
        let server = tokio::spawn(async move {
            serve(n2, c, p, async move {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        members.push(Member {
            node,
            client_addr: addrs[i].0.clone(),
            stop: Some(tx),
            server: Some(server),
            _dir: dir,
        });
    }
    for m in &members {
        m.node.wait_for_leader(Duration::from_secs(10)).await.expect("a leader is elected");
    }
    members
}

pub fn leader_index(members: &[Member]) -> usize {
    members.iter().position(|m| m.node.is_leader()).expect("some member leads")
}

/// One change the writers saw acknowledged: (revision, key, kind).
pub type Expected = BTreeMap<i64, Vec<(Vec<u8>, EventType)>>;

/// What a watcher observed, in order.
#[derive(Debug, Clone)]
pub enum Observed {
    /// One response: its events as (revision, key, kind).
    Events(Vec<(i64, Vec<u8>, EventType)>),
    Progress(i64),
}

pub fn decode_events(events: &[bytes::Bytes]) -> Vec<(i64, Vec<u8>, EventType)> {
    events
        .iter()
        .map(|b| {
            let ev = Event::decode(b.as_ref()).expect("event decodes");
            let kv = ev.kv.expect("event has kv");
            let kind = if ev.r#type == EventType::Delete as i32 {
                EventType::Delete
            } else {
                EventType::Put
            };
            (kv.mod_revision, kv.key, kind)
        })
        .collect()
}

/// Checks a watcher's observations against the acknowledged history for revisions in
/// `[from, to]`, given which events the watch selects. Verifies the six guarantees: ordered,
/// unique, atomic per revision, no gaps, progress notifications honest, and (by being called on
/// the concatenation of a cut watch and its resumption) resumable.
pub fn check_watch(
    expected: &Expected,
    selects: impl Fn(&[u8], EventType) -> bool,
    from: i64,
    to: i64,
    observed: &[Observed],
) -> Result<(), String> {
    let mut last_rev = from - 1;
    let mut delivered: BTreeMap<i64, Vec<(Vec<u8>, EventType)>> = BTreeMap::new();
    let mut progress_floor = i64::MIN;
    for (i, obs) in observed.iter().enumerate() {
        match obs {
            Observed::Progress(p) => {
                if *p < last_rev {
                    return Err(format!("#{i}: progress {p} below delivered revision {last_rev}"));
                }
                progress_floor = progress_floor.max(*p);
            }
            Observed::Events(evs) => {
                if evs.is_empty() {
                    return Err(format!("#{i}: empty event response"));
                }
                let mut revs_here: Vec<i64> = evs.iter().map(|e| e.0).collect();
                if revs_here.windows(2).any(|w| w[0] > w[1]) {
                    return Err(format!(
                        "#{i}: events out of order within a response: {revs_here:?}"
                    ));
                }
                revs_here.dedup();
                for r in revs_here {
                    if r <= last_rev {
                        return Err(format!(
                            "#{i}: revision {r} after {last_rev} (out of order or duplicate)"
                        ));
                    }
                    if r <= progress_floor {
                        return Err(format!(
                            "#{i}: revision {r} after a progress notification at {progress_floor}"
                        ));
                    }
                    if delivered.contains_key(&r) {
                        return Err(format!(
                            "#{i}: revision {r} split over two responses or repeated"
                        ));
                    }
                    let got: Vec<(Vec<u8>, EventType)> =
                        evs.iter().filter(|e| e.0 == r).map(|e| (e.1.clone(), e.2)).collect();
                    delivered.insert(r, got);
                    last_rev = r;
                }
            }
        }
    }
    for rev in from..=to {
        let want: Vec<(Vec<u8>, EventType)> = expected
            .get(&rev)
            .map(|v| v.iter().filter(|(k, t)| selects(k, *t)).cloned().collect())
            .unwrap_or_default();
        let got = delivered.remove(&rev).unwrap_or_default();
        let mut want_sorted = want.clone();
        let mut got_sorted = got.clone();
        want_sorted.sort_by(|a, b| a.0.cmp(&b.0));
        got_sorted.sort_by(|a, b| a.0.cmp(&b.0));
        if want_sorted != got_sorted {
            return Err(format!(
                "revision {rev}: expected {:?}, delivered {:?}",
                show(&want),
                show(&got)
            ));
        }
    }
    if let Some((rev, evs)) = delivered.into_iter().next() {
        return Err(format!("delivered revision {rev} outside [{from}, {to}]: {:?}", show(&evs)));
    }
    Ok(())
}

fn show(v: &[(Vec<u8>, EventType)]) -> Vec<String> {
    v.iter().map(|(k, t)| format!("{:?} {}", t, String::from_utf8_lossy(k))).collect()
}

/// Drives a watcher until it has delivered revision `to` (or ended), with a deadline.
/// Returns the observations and, if the watch was cancelled, the cancel update.
pub async fn collect_until(
    w: &mut Watcher,
    to: i64,
    timeout: Duration,
) -> (Vec<Observed>, Option<WatchUpdate>) {
    let mut obs = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = w.progress_revision() {
            if p >= to {
                obs.push(Observed::Progress(p));
                return (obs, None);
            }
        }
        match tokio::time::timeout_at(deadline, w.next()).await {
            Err(_) => panic!("watcher did not reach revision {to} in {timeout:?}; saw {obs:?}"),
            Ok(None) => return (obs, None),
            Ok(Some(WatchUpdate::Events { revision, events })) => {
                obs.push(Observed::Events(decode_events(&events)));
                if revision >= to {
                    return (obs, None);
                }
            }
            Ok(Some(c @ WatchUpdate::Canceled { .. })) => return (obs, Some(c)),
        }
    }
}
