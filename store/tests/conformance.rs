//! The store conformance suite: etcd semantics through the `KvStore` trait, run against a single
//! member and against a follower of a 3-member cluster (whose writes and linearizable reads are
//! forwarded to the leader).

mod common;

use common::start_cluster;
use flotilla_store::proto::etcdserverpb::{
    compare, range_request, request_op, Compare, DeleteRangeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use flotilla_store::proto::mvccpb::{event::EventType, Event};
use flotilla_store::{KeyRange, KvStore, WatchSpec, WatchUpdate};
use prost::Message;
use std::time::Duration;

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

fn get(k: &str) -> RangeRequest {
    RangeRequest { key: k.into(), ..Default::default() }
}

fn prefix(p: &str) -> RangeRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest { key: p.into(), range_end: end, ..Default::default() }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(put(k, v))) }
}

/// The store's revision as a linearizable read sees it. A member's own applied revision
/// can lag behind writes it forwarded (a follower applies after the leader commits).
async fn rev_of<S: KvStore>(s: &S) -> i64 {
    s.range(get("\0rev-probe")).await.expect("range").header.expect("header").revision
}

async fn value<S: KvStore>(s: &S, k: &str) -> Option<String> {
    let r = s.range(get(k)).await.expect("range");
    r.kvs.first().map(|kv| String::from_utf8(kv.value.clone()).unwrap())
}

/// Every check, namespaced under `ns` so runs do not interfere.
async fn suite<S: KvStore>(s: &S, ns: &str) {
    let k = |name: &str| format!("{ns}/{name}");

    // Put and get: one revision per write; create/mod revision and version.
    let r1 = s.put(put(&k("a"), "1")).await.unwrap().header.unwrap().revision;
    let r2 = s.put(put(&k("a"), "2")).await.unwrap().header.unwrap().revision;
    assert_eq!(r2, r1 + 1, "each write takes the next revision");
    let kv = s.range(get(&k("a"))).await.unwrap().kvs.remove(0);
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r2, 2));
    assert_eq!(kv.value, b"2");

    // prev_kv on put; reads at a past revision.
    let prev =
        s.put(PutRequest { prev_kv: true, ..put(&k("a"), "3") }).await.unwrap().prev_kv.unwrap();
    assert_eq!(prev.value, b"2");
    let old = s.range(RangeRequest { revision: r1, ..get(&k("a")) }).await.unwrap();
    assert_eq!(old.kvs[0].value, b"1", "read at revision {r1}");

    // Ranges: prefix, limit/more/count, count-only, keys-only, sorting, from-key.
    for i in 0..5 {
        s.put(put(&k(&format!("r/{i}")), &format!("v{i}"))).await.unwrap();
    }
    let all = s.range(prefix(&k("r/"))).await.unwrap();
    assert_eq!(all.kvs.len(), 5);
    assert_eq!(all.count, 5);
    let lim = s.range(RangeRequest { limit: 2, ..prefix(&k("r/")) }).await.unwrap();
    assert_eq!((lim.kvs.len(), lim.more, lim.count), (2, true, 5));
    let cnt = s.range(RangeRequest { count_only: true, ..prefix(&k("r/")) }).await.unwrap();
    assert!(cnt.kvs.is_empty());
    assert_eq!(cnt.count, 5);
    let keys = s.range(RangeRequest { keys_only: true, ..prefix(&k("r/")) }).await.unwrap();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()));
    let desc = s
        .range(RangeRequest {
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Key as i32,
            limit: 1,
            ..prefix(&k("r/"))
        })
        .await
        .unwrap();
    assert_eq!(desc.kvs[0].key, k("r/4").as_bytes());
    let from_key = s
        .range(RangeRequest { key: k("r/3").into(), range_end: vec![0], ..Default::default() })
        .await
        .unwrap();
    assert!(from_key.kvs.iter().all(|kv| kv.key >= k("r/3").into_bytes()));
    assert!(from_key.kvs.iter().any(|kv| kv.key == k("r/4").as_bytes()));

    // Serializable reads see the member's applied state.
    let ser = s.range(RangeRequest { serializable: true, ..get(&k("a")) }).await.unwrap();
    assert!(ser.header.unwrap().revision >= r2);

    // Delete: prev_kvs and count; deleting nothing takes no revision.
    let before = rev_of(s).await;
    let d = s
        .delete_range(DeleteRangeRequest {
            key: k("r/0").into(),
            range_end: k("r/2").into(),
            prev_kv: true,
        })
        .await
        .unwrap();
    assert_eq!(d.deleted, 2);
    assert_eq!(d.prev_kvs.len(), 2);
    assert_eq!(d.header.unwrap().revision, before + 1, "one revision for the whole delete");
    let none = s
        .delete_range(DeleteRangeRequest { key: k("nothing").into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(none.deleted, 0);
    assert_eq!(none.header.unwrap().revision, before + 1, "a no-op delete takes no revision");
    // Recreated key: version restarts, create revision moves.
    s.put(put(&k("r/0"), "again")).await.unwrap();
    let kv = s.range(get(&k("r/0"))).await.unwrap().kvs.remove(0);
    assert_eq!(kv.version, 1);
    assert_eq!(kv.create_revision, kv.mod_revision);

    // Txn: compare on value/version/mod/create; both branches; one revision for all writes.
    let cmp = |target: compare::CompareTarget,
               result: compare::CompareResult,
               u: compare::TargetUnion| Compare {
        result: result as i32,
        target: target as i32,
        key: k("a").into(),
        target_union: Some(u),
        range_end: vec![],
    };
    let before = rev_of(s).await;
    let t = s
        .txn(TxnRequest {
            compare: vec![
                cmp(
                    compare::CompareTarget::Value,
                    compare::CompareResult::Equal,
                    compare::TargetUnion::Value(b"3".to_vec()),
                ),
                cmp(
                    compare::CompareTarget::Version,
                    compare::CompareResult::Greater,
                    compare::TargetUnion::Version(2),
                ),
                cmp(
                    compare::CompareTarget::Create,
                    compare::CompareResult::Equal,
                    compare::TargetUnion::CreateRevision(r1),
                ),
                cmp(
                    compare::CompareTarget::Mod,
                    compare::CompareResult::Less,
                    compare::TargetUnion::ModRevision(before + 1),
                ),
            ],
            success: vec![
                op_put(&k("t1"), "x"),
                op_put(&k("t2"), "y"),
                RequestOp { request: Some(request_op::Request::RequestRange(get(&k("t1")))) },
            ],
            failure: vec![op_put(&k("tf"), "no")],
        })
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.header.unwrap().revision, before + 1, "a txn is one revision");
    use flotilla_store::proto::etcdserverpb::response_op::Response as R;
    match &t.responses[2].response {
        Some(R::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"x", "a txn reads its own writes"),
        other => panic!("unexpected {other:?}"),
    }
    let t1 = s.range(get(&k("t1"))).await.unwrap().kvs.remove(0);
    let t2 = s.range(get(&k("t2"))).await.unwrap().kvs.remove(0);
    assert_eq!(t1.mod_revision, t2.mod_revision);
    let f = s
        .txn(TxnRequest {
            compare: vec![cmp(
                compare::CompareTarget::Value,
                compare::CompareResult::Equal,
                compare::TargetUnion::Value(b"nope".to_vec()),
            )],
            success: vec![op_put(&k("ts"), "no")],
            failure: vec![op_put(&k("tf"), "yes")],
        })
        .await
        .unwrap();
    assert!(!f.succeeded);
    assert_eq!(value(s, &k("tf")).await.as_deref(), Some("yes"));
    assert_eq!(value(s, &k("ts")).await, None);
    // Creation check (create_revision == 0) is how clients do "create if absent".
    let create = |key: &str| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.into(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            range_end: vec![],
        }],
        success: vec![op_put(key, "created")],
        failure: vec![],
    };
    assert!(s.txn(create(&k("once"))).await.unwrap().succeeded);
    assert!(!s.txn(create(&k("once"))).await.unwrap().succeeded);

    // Bad input: each rejected with a clear error and nothing applied.
    let before = rev_of(s).await;
    let e = s.put(put("", "v")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = s
        .range(RangeRequest { key: k("b").into(), range_end: k("a").into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("range_end"), "{e}");
    let e = s.put(PutRequest { lease: 0x7777, ..put(&k("l"), "v") }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.to_string().contains("lease not found"), "{e}");
    let many: Vec<RequestOp> = (0..200).map(|i| op_put(&k(&format!("m{i}")), "v")).collect();
    let e =
        s.txn(TxnRequest { compare: vec![], success: many, failure: vec![] }).await.unwrap_err();
    assert!(e.to_string().contains("too many operations"), "{e}");
    let e = s
        .txn(TxnRequest {
            compare: vec![],
            success: vec![op_put(&k("d"), "1"), op_put(&k("d"), "2")],
            failure: vec![],
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("duplicate key"), "{e}");
    let big = "x".repeat(2 << 20);
    let e = s.put(put(&k("big"), &big)).await.unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    let e = s.put(PutRequest { ignore_value: true, ..put(&k("absent"), "") }).await.unwrap_err();
    assert!(e.to_string().contains("key not found"), "{e}");
    // A txn whose chosen branch fails validation changes nothing, not even its valid ops.
    let e = s
        .txn(TxnRequest {
            compare: vec![],
            success: vec![
                op_put(&k("half"), "1"),
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        lease: 0x7778,
                        ..put(&k("half2"), "2")
                    })),
                },
            ],
            failure: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(value(s, &k("half")).await, None);
    assert_eq!(rev_of(s).await, before, "rejected requests took no revision");

    // Leases: grant, attach, time-to-live, keep-alive, revoke deletes the keys.
    let l = s.lease_grant(30, 0).await.unwrap();
    assert_eq!(l.ttl, 30);
    s.put(PutRequest { lease: l.id, ..put(&k("leased"), "v") }).await.unwrap();
    let ttl = s.lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: true }).await.unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 25 && ttl.ttl <= 30, "{}", ttl.ttl);
    assert_eq!(ttl.keys, vec![k("leased").into_bytes()]);
    assert_eq!(s.lease_keep_alive(l.id).await.unwrap().ttl, 30);
    let e = s.lease_grant(10, l.id).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    s.lease_revoke(l.id).await.unwrap();
    assert_eq!(value(s, &k("leased")).await, None, "revoking a lease deletes its keys");
    let e = s.lease_revoke(l.id).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let gone =
        s.lease_time_to_live(LeaseTimeToLiveRequest { id: l.id, keys: false }).await.unwrap();
    assert_eq!(gone.ttl, -1);

    // Expiry: a lease not kept alive is revoked through Raft and its keys deleted.
    let short = s.lease_grant(1, 0).await.unwrap();
    assert_eq!(short.ttl, 2, "TTLs below the minimum are raised to it");
    s.put(PutRequest { lease: short.id, ..put(&k("expiring"), "v") }).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while value(s, &k("expiring")).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "leased key was not deleted on expiry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Watch: from a past revision, with prev_kv, then live.
    let start = rev_of(s).await + 1;
    s.put(put(&k("w"), "1")).await.unwrap();
    s.put(put(&k("w"), "2")).await.unwrap();
    let mut w = s
        .watch(WatchSpec {
            range: KeyRange::new(k("w").as_bytes(), &[]),
            start_revision: start,
            prev_kv: true,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        })
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if seen.len() == 2 {
            s.delete_range(DeleteRangeRequest { key: k("w").into(), ..Default::default() })
                .await
                .unwrap();
        }
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("watch event") {
            Some(WatchUpdate::Events { events, .. }) => {
                seen.extend(events.iter().map(|b| Event::decode(b.as_ref()).unwrap()))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[0].kv.as_ref().unwrap().value, b"1");
    assert_eq!(seen[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(seen[2].r#type, EventType::Delete as i32);
    assert_eq!(seen[2].prev_kv.as_ref().unwrap().value, b"2");

    // Compaction: older revisions become unreadable; the compacted revision itself stays.
    let at = rev_of(s).await;
    s.put(put(&k("a"), "after-compact")).await.unwrap();
    s.compact(at).await.unwrap();
    let e = s.range(RangeRequest { revision: at - 1, ..get(&k("a")) }).await.unwrap_err();
    assert!(matches!(e.code(), tonic::Code::OutOfRange), "{e}");
    assert!(e.to_string().contains("compacted"), "{e}");
    assert_eq!(
        s.range(RangeRequest { revision: at, ..get(&k("a")) }).await.unwrap().kvs[0].value,
        b"3"
    );
    let e = s.compact(at).await.unwrap_err();
    assert!(e.to_string().contains("compacted"), "{e}");
    let e = s
        .range(RangeRequest { revision: rev_of(s).await + 100, ..get(&k("a")) })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("future revision"), "{e}");
    // Watches are served by the member itself, which may not have applied the compaction yet
    // (reads above were answered by the leader): wait for an entry written after it.
    let marker = s.put(put(&k("sync"), "x")).await.unwrap().header.unwrap().revision;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.revision() < marker {
        assert!(std::time::Instant::now() < deadline, "member did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut w = s
        .watch(WatchSpec {
            range: KeyRange::new(k("a").as_bytes(), &[]),
            start_revision: at - 1,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        })
        .unwrap();
    match w.next().await {
        Some(WatchUpdate::Canceled { compact_revision, .. }) => assert_eq!(compact_revision, at),
        other => panic!("a watch from a compacted revision must fail, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_store_should_pass_the_conformance_suite() {
    let mut members = start_cluster(1, |_| {}).await;
    suite(&*members[0].node, "/single").await;
    members[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_of_three_member_store_should_pass_the_conformance_suite() {
    let mut members = start_cluster(3, |_| {}).await;
    let leader = common::leader_index(&members);
    let follower = (leader + 1) % 3;
    suite(&*members[follower].node, "/follower").await;
    suite(&*members[leader].node, "/leader").await;
    for m in &mut members {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_window_should_compact_older_history_automatically() {
    let mut members = start_cluster(1, |c| c.retention_revisions = 10).await;
    let n = members[0].node.clone();
    for i in 0..40 {
        n.put(put(&format!("/ret/{}", i % 3), &i.to_string())).await.unwrap();
    }
    let rev = n.revision();
    // The leader compacts to `revision - 10` every few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let old = n.range(RangeRequest { revision: rev - 20, ..prefix("/ret/") }).await;
        if let Err(e) = old {
            assert!(e.to_string().contains("compacted"), "{e}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history older than the window was not compacted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Inside the window history is intact.
    let inside = n.range(RangeRequest { revision: rev - 5, ..prefix("/ret/") }).await.unwrap();
    assert_eq!(inside.kvs.len(), 3);
    members[0].stop().await;
}
