//! Watches over the etcd gRPC API with the `etcd-client` crate: several watches on one stream
//! (creations answered in order, events routed by watch id), replay from a past revision,
//! progress on request and on idle timers, cancel, and an explicit compacted error.

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use flotilla_tests::Member;
use std::time::Duration;

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_watch_streams_should_multiplex_replay_report_progress_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("n0", dir.path());
    m.extra = vec!["--progress-notify-secs".into(), "1".into()];
    m.start().unwrap();
    let mut c = flotilla_tests::etcd_connect(&[m.endpoint()], &m.etcd_tls()).await.unwrap();
    let first = c.put("/w/a", "1", None).await.unwrap().header().unwrap().revision();
    c.put("/w/b", "2", None).await.unwrap();

    // Three watches on one stream: prefix from now, one key, prefix replayed from `first`.
    let mut s = c.watch("/w/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    s.watch("/w/a", None).await.unwrap();
    s.watch("/w/", Some(WatchOptions::new().with_prefix().with_start_revision(first)))
        .await
        .unwrap();
    let created: Vec<i64> = {
        let mut ids = Vec::new();
        while ids.len() < 3 {
            let r = next(&mut s).await;
            if r.created() {
                ids.push(r.watch_id());
            }
        }
        ids
    };
    assert_eq!(created, vec![0, 1, 2], "creations are answered in request order");

    let last = c.put("/w/a", "3", None).await.unwrap().header().unwrap().revision();
    // Expected per watch id: 0 sees the new put; 1 (key /w/a) sees it; 2 replays 1, 2, then 3.
    let mut seen: [Vec<(String, String)>; 3] = Default::default();
    while seen[0].is_empty() || seen[1].is_empty() || seen[2].len() < 3 {
        let r = next(&mut s).await;
        assert!(!r.canceled(), "unexpected cancel: {}", r.cancel_reason());
        for e in r.events() {
            assert_eq!(e.event_type(), EventType::Put);
            let kv = e.kv().unwrap();
            seen[r.watch_id() as usize]
                .push((kv.key_str().unwrap().into(), kv.value_str().unwrap().into()));
        }
    }
    assert_eq!(seen[0], vec![("/w/a".to_string(), "3".to_string())]);
    assert_eq!(seen[1], vec![("/w/a".to_string(), "3".to_string())]);
    assert_eq!(
        seen[2],
        vec![("/w/a".into(), "1".into()), ("/w/b".into(), "2".into()), ("/w/a".into(), "3".into())]
    );

    // Progress on request: every watch reports a revision covering what it was sent.
    s.request_progress().await.unwrap();
    let mut progressed = std::collections::BTreeSet::new();
    while progressed.len() < 3 {
        let r = next(&mut s).await;
        if r.events().is_empty() && !r.created() && !r.canceled() {
            assert!(r.header().unwrap().revision() >= last, "progress below delivered events");
            progressed.insert(r.watch_id());
        }
    }

    // Cancel one watch: it is acknowledged and gets nothing more.
    s.cancel(1).await.unwrap();
    loop {
        let r = next(&mut s).await;
        if r.canceled() {
            assert_eq!(r.watch_id(), 1);
            break;
        }
    }
    c.put("/w/a", "4", None).await.unwrap();
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 2 {
        let r = next(&mut s).await;
        if !r.events().is_empty() {
            assert_ne!(r.watch_id(), 1, "a cancelled watch received events");
            got.insert(r.watch_id());
        }
    }

    // Idle watch asking for progress notifications gets one (server interval: 1 s).
    let mut idle = c
        .watch("/idle/", Some(WatchOptions::new().with_prefix().with_progress_notify()))
        .await
        .unwrap();
    let mut r = next(&mut idle).await;
    while r.created() {
        r = next(&mut idle).await;
    }
    assert!(r.events().is_empty() && !r.canceled(), "expected a progress notification");
    assert!(r.header().unwrap().revision() >= last);

    // A watch from a compacted revision fails explicitly, carrying the compact revision.
    let now = c.put("/w/z", "z", None).await.unwrap().header().unwrap().revision();
    c.compact(now, None).await.unwrap();
    let mut old = c
        .watch("/w/", Some(WatchOptions::new().with_prefix().with_start_revision(first)))
        .await
        .unwrap();
    let mut r = next(&mut old).await;
    if r.created() && !r.canceled() {
        r = next(&mut old).await;
    }
    assert!(r.canceled(), "watch from a compacted revision must be cancelled");
    assert_eq!(r.compact_revision(), now);
    m.kill();
}
