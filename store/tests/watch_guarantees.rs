//! Watch guarantees, checked on recorded histories: ordered, unique, atomic per revision, no gaps,
//! resumable, and honest progress notifications — under concurrent writers, with a slow consumer
//! that is cut off and resumes, and with compaction while watching.

mod common;

use common::{check_watch, collect_until, start_cluster, Expected, Observed};
use flotilla_store::proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use flotilla_store::proto::mvccpb::event::EventType;
use flotilla_store::{KeyRange, KvStore, StoreNode, WatchSpec, WatchUpdate};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which events a watch should receive.
type Selector = dyn Fn(&[u8], EventType) -> bool;

fn spec(key: &str, end: &[u8], start: i64) -> WatchSpec {
    WatchSpec {
        range: KeyRange::new(key.as_bytes(), end),
        start_revision: start,
        prev_kv: false,
        no_put: false,
        no_delete: false,
        progress_notify: false,
    }
}

/// Runs `writers` tasks doing puts, multi-key txns and deletes on keys under `/g/`, recording
/// every acknowledged change by revision.
async fn write_load(node: Arc<StoreNode>, writers: usize, ops: usize) -> Expected {
    let expected = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let node = node.clone();
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ops {
                let key = |j: usize| format!("/g/{}/{}", ["a", "b"][j % 2], (w * 7 + j) % 13);
                let mut rec: Vec<(Vec<u8>, EventType)> = Vec::new();
                let rev = match i % 5 {
                    0..=2 => {
                        let k = key(i);
                        let r = node
                            .put(PutRequest {
                                key: k.clone().into(),
                                value: vec![i as u8],
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        rec.push((k.into_bytes(), EventType::Put));
                        r.header.unwrap().revision
                    }
                    3 => {
                        // Two keys in one revision.
                        let (a, b) = (key(i), format!("/g/c/{w}-{i}"));
                        let op = |k: &str| RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: k.into(),
                                value: b"t".to_vec(),
                                ..Default::default()
                            })),
                        };
                        let r = node
                            .txn(TxnRequest {
                                compare: vec![],
                                success: vec![op(&a), op(&b)],
                                failure: vec![],
                            })
                            .await
                            .unwrap();
                        rec.push((a.into_bytes(), EventType::Put));
                        rec.push((b.into_bytes(), EventType::Put));
                        r.header.unwrap().revision
                    }
                    _ => {
                        let k = key(i + 1);
                        let r = node
                            .delete_range(DeleteRangeRequest {
                                key: k.into(),
                                range_end: vec![],
                                prev_kv: true,
                            })
                            .await
                            .unwrap();
                        for kv in r.prev_kvs {
                            rec.push((kv.key, EventType::Delete));
                        }
                        r.header.unwrap().revision
                    }
                };
                if !rec.is_empty() {
                    let prev = expected.lock().unwrap().insert(rev, rec);
                    assert!(prev.is_none(), "two writes acknowledged at revision {rev}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(expected).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_should_see_every_revision_once_in_order_under_concurrent_writes() {
    let mut members = start_cluster(1, |_| {}).await;
    let node = members[0].node.clone();
    let start = node.revision() + 1;
    let prefix_end = b"/g/b0".to_vec();
    let mut watchers = vec![
        ("all", node.watch(spec("/g/", b"/g0", 0)).unwrap()),
        ("prefix /g/b/", node.watch(spec("/g/b/", &prefix_end, 0)).unwrap()),
        ("one key", node.watch(spec("/g/a/0", &[], 0)).unwrap()),
        (
            "no deletes",
            node.watch(WatchSpec { no_delete: true, ..spec("/g/", b"/g0", 0) }).unwrap(),
        ),
    ];
    let expected = write_load(node.clone(), 6, 150).await;
    let end = node.revision();
    for (name, w) in &mut watchers {
        let (obs, cancel) = collect_until(w, end, Duration::from_secs(20)).await;
        assert!(cancel.is_none(), "{name}: cancelled: {cancel:?}");
        let sel: Box<Selector> = match *name {
            "all" => Box::new(|k: &[u8], _| k.starts_with(b"/g/")),
            "prefix /g/b/" => Box::new(|k: &[u8], _| k.starts_with(b"/g/b/")),
            "one key" => Box::new(|k: &[u8], _| k == b"/g/a/0"),
            _ => Box::new(|k: &[u8], t| k.starts_with(b"/g/") && t == EventType::Put),
        };
        check_watch(&expected, sel, start, end, &obs).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A watch from the first revision replays the same history from disk.
    let mut replay = node.watch(spec("/g/", b"/g0", start)).unwrap();
    let (obs, _) = collect_until(&mut replay, end, Duration::from_secs(20)).await;
    check_watch(&expected, |k, _| k.starts_with(b"/g/"), start, end, &obs).unwrap();
    members[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_should_be_cut_off_with_bounded_memory_and_resume_without_loss() {
    // A 16 KiB queue: a watcher that reads nothing while 600 revisions are written must be
    // cancelled, not buffered.
    let mut members = start_cluster(1, |c| c.watch_queue_limit = 16 << 10).await;
    let node = members[0].node.clone();
    let start = node.revision() + 1;
    let mut slow = node.watch(spec("/g/", b"/g0", 0)).unwrap();
    let expected = write_load(node.clone(), 4, 150).await;
    let end = node.revision();
    let (mut obs, cancel) = collect_until(&mut slow, end, Duration::from_secs(20)).await;
    let Some(WatchUpdate::Canceled { reason, compact_revision: 0 }) = cancel else {
        panic!("a watcher a whole ring behind must be cancelled; got {cancel:?}");
    };
    // The reason names the revision to resume from.
    let resume: i64 = reason
        .rsplit("revision ")
        .next()
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resume revision in {reason:?}"));
    let mut resumed = node.watch(spec("/g/", b"/g0", resume)).unwrap();
    let (more, cancel) = collect_until(&mut resumed, end, Duration::from_secs(20)).await;
    assert!(cancel.is_none(), "{cancel:?}");
    obs.extend(more);
    check_watch(&expected, |k, _| k.starts_with(b"/g/"), start, end, &obs).unwrap();
    members[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_watching_should_fail_explicitly_or_deliver_everything() {
    let mut members = start_cluster(1, |_| {}).await;
    let node = members[0].node.clone();
    let start = node.revision() + 1;
    let expected = write_load(node.clone(), 4, 100).await;
    let end = node.revision();
    // Start replaying from the beginning, take one update, then compact in the middle.
    let mut w = node.watch(spec("/g/", b"/g0", start)).unwrap();
    let first = w.next().await.expect("first update");
    let at = start + (end - start) / 2;
    node.compact(at).await.unwrap();
    let (rest, cancel) = collect_until(&mut w, end, Duration::from_secs(20)).await;
    let mut obs = vec![match first {
        WatchUpdate::Events { events, .. } => Observed::Events(common::decode_events(&events)),
        other => panic!("{other:?}"),
    }];
    obs.extend(rest);
    match cancel {
        None => check_watch(&expected, |k, _| k.starts_with(b"/g/"), start, end, &obs).unwrap(),
        Some(WatchUpdate::Canceled { compact_revision, .. }) => {
            assert_eq!(compact_revision, at, "cancel carries the compact revision");
        }
        Some(other) => panic!("{other:?}"),
    }
    // From before the compaction: explicit failure with the compact revision.
    let mut old = node.watch(spec("/g/", b"/g0", at - 1)).unwrap();
    match old.next().await {
        Some(WatchUpdate::Canceled { compact_revision, .. }) => assert_eq!(compact_revision, at),
        other => panic!("expected a compacted error, got {other:?}"),
    }
    // From the compact revision on, history is complete.
    let mut from_at = node.watch(spec("/g/", b"/g0", at)).unwrap();
    let (obs, cancel) = collect_until(&mut from_at, end, Duration::from_secs(20)).await;
    assert!(cancel.is_none());
    check_watch(&expected, |k, _| k.starts_with(b"/g/"), at, end, &obs).unwrap();
    members[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_should_never_precede_events_they_cover() {
    let mut members = start_cluster(1, |_| {}).await;
    let node = members[0].node.clone();
    let start = node.revision() + 1;
    let mut w = node.watch(spec("/g/a/", b"/g/a0", 0)).unwrap();
    let writer = tokio::spawn(write_load(node.clone(), 3, 120));
    // Interleave progress checks with events while writes run.
    let mut obs = Vec::new();
    let mut progresses = 0;
    while !writer.is_finished() {
        if let Some(p) = w.progress_revision() {
            obs.push(Observed::Progress(p));
            progresses += 1;
        }
        if let Ok(Some(u)) = tokio::time::timeout(Duration::from_millis(2), w.next()).await {
            match u {
                WatchUpdate::Events { events, .. } => {
                    obs.push(Observed::Events(common::decode_events(&events)))
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let expected = writer.await.unwrap();
    let end = node.revision();
    let (more, _) = collect_until(&mut w, end, Duration::from_secs(20)).await;
    obs.extend(more);
    assert!(progresses > 0, "no progress notification was possible during the run");
    check_watch(&expected, |k, _| k.starts_with(b"/g/a/"), start, end, &obs).unwrap();
    // Idle and caught up: progress reports the newest revision.
    assert_eq!(w.progress_revision(), Some(node.revision()));
    members[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watchers_should_see_the_same_history_as_the_leader() {
    let mut members = start_cluster(3, |_| {}).await;
    let leader = common::leader_index(&members);
    let follower = members[(leader + 1) % 3].node.clone();
    let leader_node = members[leader].node.clone();
    let start = leader_node.revision() + 1;
    let mut w = follower.watch(spec("/g/", b"/g0", 0)).unwrap();
    // Writes go through the follower (forwarded), watch is served by the follower.
    let expected = write_load(follower.clone(), 4, 60).await;
    let end = leader_node.revision();
    let (obs, cancel) = collect_until(&mut w, end, Duration::from_secs(20)).await;
    assert!(cancel.is_none());
    check_watch(&expected, |k, _| k.starts_with(b"/g/"), start, end, &obs).unwrap();
    for m in &mut members {
        m.stop().await;
    }
}

/// The checker itself must catch each kind of violation, or the tests above prove nothing.
#[test]
fn checker_should_reject_gaps_duplicates_splits_reordering_and_early_progress() {
    let mut expected: Expected = BTreeMap::new();
    expected.insert(1, vec![(b"a".to_vec(), EventType::Put)]);
    expected.insert(2, vec![(b"a".to_vec(), EventType::Put), (b"b".to_vec(), EventType::Put)]);
    expected.insert(3, vec![(b"a".to_vec(), EventType::Delete)]);
    let ev = |r: i64, k: &str, t| (r, k.as_bytes().to_vec(), t);
    let all = |_: &[u8], _| true;
    let good = vec![
        Observed::Events(vec![ev(1, "a", EventType::Put)]),
        Observed::Progress(1),
        Observed::Events(vec![
            ev(2, "a", EventType::Put),
            ev(2, "b", EventType::Put),
            ev(3, "a", EventType::Delete),
        ]),
    ];
    check_watch(&expected, all, 1, 3, &good).unwrap();
    let gap = vec![
        Observed::Events(vec![ev(1, "a", EventType::Put)]),
        Observed::Events(vec![ev(3, "a", EventType::Delete)]),
    ];
    assert!(check_watch(&expected, all, 1, 3, &gap).is_err(), "gap");
    let mut dup = good.clone();
    dup.push(Observed::Events(vec![ev(3, "a", EventType::Delete)]));
    assert!(check_watch(&expected, all, 1, 3, &dup).is_err(), "duplicate");
    let split = vec![
        Observed::Events(vec![ev(1, "a", EventType::Put), ev(2, "a", EventType::Put)]),
        Observed::Events(vec![ev(2, "b", EventType::Put), ev(3, "a", EventType::Delete)]),
    ];
    assert!(check_watch(&expected, all, 1, 3, &split).is_err(), "split revision");
    let reordered = vec![
        Observed::Events(vec![ev(2, "a", EventType::Put), ev(2, "b", EventType::Put)]),
        Observed::Events(vec![ev(1, "a", EventType::Put)]),
        Observed::Events(vec![ev(3, "a", EventType::Delete)]),
    ];
    assert!(check_watch(&expected, all, 1, 3, &reordered).is_err(), "reordered");
    let early = vec![
        Observed::Events(vec![ev(1, "a", EventType::Put)]),
        Observed::Progress(2),
        Observed::Events(vec![
            ev(2, "a", EventType::Put),
            ev(2, "b", EventType::Put),
            ev(3, "a", EventType::Delete),
        ]),
    ];
    assert!(check_watch(&expected, all, 1, 3, &early).is_err(), "progress before covered events");
    let wrong_kind = vec![Observed::Events(vec![
        ev(1, "a", EventType::Put),
        ev(2, "a", EventType::Put),
        ev(2, "b", EventType::Put),
        ev(3, "a", EventType::Put),
    ])];
    assert!(check_watch(&expected, all, 1, 3, &wrong_kind).is_err(), "wrong event type");
}
