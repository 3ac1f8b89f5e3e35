//! A 3-member store cluster: killing the leader mid-stream elects a new one within seconds and
//! loses no acknowledged write; a restarted member catches up through a snapshot and the log.

use etcd_client::{Client, GetOptions};
use flotilla_tests::{cluster, EtcdTls, Member};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cluster's shared CA and a client certificate (set once the members have written it).
static TLS: std::sync::OnceLock<EtcdTls> = std::sync::OnceLock::new();

async fn connect(ep: impl AsRef<str>) -> anyhow::Result<Client> {
    flotilla_tests::etcd_connect(&[ep], TLS.get().expect("TLS is set after the cluster starts"))
        .await
}

async fn leader_of(members: &[Member]) -> Option<(usize, u64)> {
    for m in members.iter().filter(|m| m.proc.is_some()) {
        let Ok(mut c) = connect(m.endpoint()).await else { continue };
        let Ok(s) = c.status().await else { continue };
        if s.leader() != 0 {
            let id = s.leader();
            // Map the leader id to a member by asking each for its own id.
            for (i, m2) in members.iter().enumerate().filter(|(_, m)| m.proc.is_some()) {
                if let Ok(mut c2) = connect(m2.endpoint()).await {
                    if let Ok(s2) = c2.status().await {
                        if s2.header().map(|h| h.member_id()) == Some(id) {
                            return Some((i, id));
                        }
                    }
                }
            }
        }
    }
    None
}

/// Writers that send each put to some live member, retrying elsewhere; only acknowledged
/// writes are recorded.
fn spawn_writers(
    endpoints: Arc<Mutex<Vec<String>>>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    acks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let (endpoints, acked, stop) = (endpoints.clone(), acked.clone(), stop.clone());
            let acks = acks.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let eps = endpoints.lock().unwrap().clone();
                    let ep = eps[(w + i as usize) % eps.len()].clone();
                    let key = format!("/ha/{w}/{}", i % 200);
                    let val = format!("{w}-{i}");
                    let put = async {
                        let mut c = connect(ep).await?;
                        anyhow::Ok(c.put(key.clone(), val.clone(), None).await?)
                    };
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), put).await {
                        acked.lock().unwrap().insert(key, val);
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect()
}

async fn check_all(ep: &str, acked: &BTreeMap<String, String>, serializable: bool) {
    let mut c = connect(ep).await.unwrap();
    let mut opts = GetOptions::new().with_prefix();
    if serializable {
        opts = opts.with_serializable();
    }
    let resp = c.get("/ha/", Some(opts)).await.unwrap();
    let stored: BTreeMap<String, String> = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
        .collect();
    let seq = |s: &str| s.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    for (k, v) in acked {
        let got = stored.get(k).unwrap_or_else(|| panic!("{ep}: acknowledged key {k} lost"));
        assert!(seq(got) >= seq(v), "{ep}: {k} went back from {v} to {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_should_survive_leader_loss_and_catch_up_a_returning_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = cluster(3, dir.path(), &["--snapshot-every", "100"]).unwrap();
    TLS.set(members[0].etcd_tls()).unwrap();
    for m in &mut members {
        m.log_level = Some("info".into());
    }
    let (old_leader, old_id) = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = leader_of(&members).await {
                break l;
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let endpoints = Arc::new(Mutex::new(members.iter().map(Member::endpoint).collect::<Vec<_>>()));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let writers = spawn_writers(endpoints.clone(), acked.clone(), acks.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Kill the leader mid-stream.
    let killed_at = Instant::now();
    members[old_leader].kill();
    endpoints.lock().unwrap().retain(|e| *e != members[old_leader].endpoint());
    let new_leader = loop {
        if let Some((i, id)) = leader_of(&members).await {
            if id != old_id {
                break i;
            }
        }
        assert!(killed_at.elapsed() < Duration::from_secs(5), "no new leader within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover = killed_at.elapsed();
    eprintln!("new leader {} after {failover:?}", members[new_leader].name);
    // Keep writing until the log has moved well past what the old leader has (snapshots every
    // 100 entries, 100 kept behind), so it can only catch up through a snapshot.
    let before = acks.load(Ordering::Relaxed);
    let raft_index = |ep: String| async move {
        let mut c = connect(ep).await.ok()?;
        Some(c.status().await.ok()?.raft_index())
    };
    let at_kill = raft_index(members[new_leader].endpoint()).await.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while raft_index(members[new_leader].endpoint()).await.unwrap_or(0) < at_kill + 400 {
        assert!(Instant::now() < deadline, "writes stalled after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acks.load(Ordering::Relaxed) > before, "writes continued after the failover");
    for m in members.iter().filter(|m| m.proc.is_some()) {
        check_all(&m.endpoint(), &acked, false).await;
    }

    // The old leader returns and catches up (snapshot + log), then serves the same data.
    members[old_leader].start().unwrap();
    let mut leader_c = connect(members[new_leader].endpoint()).await.unwrap();
    let target = leader_c.status().await.unwrap().header().unwrap().revision();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = connect(members[old_leader].endpoint()).await.unwrap();
        let r = c
            .get(
                "/ha/",
                Some(GetOptions::new().with_prefix().with_serializable().with_count_only()),
            )
            .await;
        if let Ok(r) = r {
            if r.header().unwrap().revision() >= target {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "returning member did not catch up to revision {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_all(&members[old_leader].endpoint(), &acked, true).await;
    assert!(
        members[old_leader].log().contains("installed snapshot"),
        "the returning member should have caught up through a snapshot"
    );
    for m in &mut members {
        m.kill();
    }
}
