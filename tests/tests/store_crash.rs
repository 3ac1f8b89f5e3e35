//! Crash durability: SIGKILL a store member during a stream of acknowledged writes, restart it,
//! and find every acknowledged write — 20 times, across Raft snapshots and log purges.

use etcd_client::GetOptions;
use flotilla_tests::Member;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: usize = 20;
const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_should_keep_every_acknowledged_write_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("n0", dir.path());
    // Small snapshot interval: crashes also land during snapshots and log purges.
    m.extra = vec!["--snapshot-every".into(), "300".into()];
    m.start().unwrap();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    for round in 0..ROUNDS {
        let client = flotilla_tests::etcd_connect(&[m.endpoint()], &m.etcd_tls()).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = client.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    // Overwrite some keys so acknowledged values, not just keys, must survive.
                    let key = format!("/crash/{round}/{w}/{}", i % 50);
                    let val = format!("{round}-{w}-{i}");
                    match c.put(key.clone(), val.clone(), None).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key, val);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Kill at a varying point in the stream.
        tokio::time::sleep(Duration::from_millis(150 + (round as u64 * 37) % 250)).await;
        m.kill();
        for t in tasks {
            t.await.unwrap();
        }
        m.start().unwrap();
        let mut c = flotilla_tests::etcd_connect(&[m.endpoint()], &m.etcd_tls()).await.unwrap();
        let resp = c.get("/crash/", Some(GetOptions::new().with_prefix())).await.unwrap();
        let stored: BTreeMap<String, String> = resp
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
            .collect();
        let acked = acked.lock().unwrap();
        assert!(!acked.is_empty());
        for (k, v) in acked.iter() {
            // A write may be durable without its ack reaching the client, so the stored value can
            // be newer than the last acknowledged one, never older.
            let got =
                stored.get(k).unwrap_or_else(|| panic!("round {round}: acknowledged key {k} lost"));
            let seq = |s: &str| s.rsplit('-').next().unwrap().parse::<u64>().unwrap();
            assert!(seq(got) >= seq(v), "round {round}: {k} went back from {v} to {got}");
        }
    }
    m.kill();
}
