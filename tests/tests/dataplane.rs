//! Dataplane tests (root): two nodes and a client as network namespaces, pods on both nodes,
//! services programmed into the real eBPF load balancer. Each test's lab removes everything it
//! made when dropped, also on failure.

use std::net::Ipv4Addr;

use flotilla_dataplane::{Backend, Protocol, Selection, Service, ServicePort};
use flotilla_tests::netlab::{tally, Lab, CLIENT_ADDR};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn root() -> bool {
    flotilla_prereq::root("the lab makes network namespaces, veths and eBPF programs")
}

fn service(name: &str, vip: Ipv4Addr, ports: Vec<ServicePort>) -> Service {
    Service {
        name: name.into(),
        cluster_ip: vip,
        ports,
        affinity_timeout: None,
        selection: Selection::Random,
    }
}

fn port(
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    backends: &[(Ipv4Addr, u16)],
) -> ServicePort {
    ServicePort {
        name: format!("{protocol}-{port}"),
        protocol,
        port,
        node_port,
        backends: backends.iter().map(|&(a, p)| Backend::new(a, p)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_tcp_udp_across_nodes() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("cip", 2).await.unwrap();
    lab.start_lb(0).unwrap();
    lab.start_lb(1).unwrap();
    let client = lab.pod(0, "client").await.unwrap();
    let a = lab.pod(0, "web-a").await.unwrap();
    let b = lab.pod(1, "web-b").await.unwrap();
    assert_eq!(client.ip, Ipv4Addr::new(10, 244, 1, 2));
    assert_eq!(b.ip, Ipv4Addr::new(10, 244, 2, 2));
    lab.serve(&a, "web-a", 8080).unwrap();
    lab.serve(&b, "web-b", 8080).unwrap();

    // Pod to pod across nodes (host-gw routes), no service involved.
    let out = lab.run_in_pod(0, &client, &["connect", &format!("{}:8080", b.ip), "1"]).unwrap();
    assert_eq!(out, [format!("reply=web-b peer={}:8080", b.ip)]);

    let backends = [(a.ip, 8080), (b.ip, 8080)];
    let svc = service(
        "default/web",
        VIP,
        vec![port(Protocol::Tcp, 80, None, &backends), port(Protocol::Udp, 53, None, &backends)],
    );
    lab.lb(0).apply(&svc).unwrap();

    // TCP through the ClusterIP: spread over both nodes' backends; getpeername shows the VIP.
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "40"]).unwrap();
    let replies = tally(&out, "reply");
    assert_eq!(replies.values().sum::<usize>(), 40, "{out:?}");
    assert!(replies.get("web-a").copied().unwrap_or(0) >= 5, "{replies:?}");
    assert!(replies.get("web-b").copied().unwrap_or(0) >= 5, "{replies:?}");
    assert_eq!(tally(&out, "peer").keys().collect::<Vec<_>>(), ["10.96.0.10:80"]);

    // UDP request/response (DNS-style): replies appear to come from the VIP's port 53.
    let out = lab.run_in_pod(0, &client, &["udp", "10.96.0.10:53", "30"]).unwrap();
    let replies = tally(&out, "reply");
    assert_eq!(replies.values().sum::<usize>(), 30, "{out:?}");
    assert!(replies.len() == 2, "{replies:?}");
    assert_eq!(tally(&out, "from").keys().collect::<Vec<_>>(), ["10.96.0.10:53"]);

    // A removed backend gets no new connections.
    let only_a = service("default/web", VIP, vec![port(Protocol::Tcp, 80, None, &[(a.ip, 8080)])]);
    lab.lb(0).apply(&only_a).unwrap();
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "20"]).unwrap();
    assert_eq!(tally(&out, "reply").into_iter().collect::<Vec<_>>(), [("web-a".into(), 20)]);
    // The UDP port went with the update: nothing translates 10.96.0.10:53 now, and the fence
    // answers at once instead of the packet leaving the machine.
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:53", "1"]).unwrap();
    assert!(out[0].starts_with("error=os113"), "EHOSTUNREACH from the fence: {out:?}");

    // A terminating backend keeps its flows but gets no new ones.
    let mut term = service("default/web", VIP, vec![port(Protocol::Tcp, 80, None, &backends)]);
    term.ports[0].backends[1].terminating = true;
    lab.lb(0).apply(&term).unwrap();
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "20"]).unwrap();
    assert_eq!(tally(&out, "reply").into_iter().collect::<Vec<_>>(), [("web-a".into(), 20)]);

    // Session affinity: every connection from the client goes to one backend.
    let mut sticky = service("default/web", VIP, vec![port(Protocol::Tcp, 80, None, &backends)]);
    sticky.affinity_timeout = Some(60);
    lab.lb(0).apply(&sticky).unwrap();
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "30"]).unwrap();
    let replies = tally(&out, "reply");
    assert_eq!(replies.len(), 1, "affinity: {replies:?}");
    assert_eq!(replies.values().sum::<usize>(), 30);

    // No backends: refused at once, not after a timeout.
    let empty = service("default/web", VIP, vec![port(Protocol::Tcp, 80, None, &[])]);
    lab.lb(0).apply(&empty).unwrap();
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "1"]).unwrap();
    assert!(out[0].starts_with("error=refused"), "{out:?}");
    let ms: u64 = out[0].rsplit("ms=").next().unwrap().parse().unwrap();
    assert!(ms < 1000, "refusal took {ms} ms");

    // Node 1 has no services: its pods see no translation (programs are per node cgroup).
    let other = lab.pod(1, "other").await.unwrap();
    let out = lab.run_in_pod(1, &other, &["connect", "10.96.0.10:80", "1"]).unwrap();
    assert!(out[0].starts_with("error=os113"), "{out:?}");

    lab.lb(0).remove("default/web").unwrap();
    assert_eq!(lab.lb(0).key_count(), 0);
}

/// A UDP socket connected through the ClusterIP keeps its backend while it lives; when that
/// backend leaves the service, the socket is destroyed and the client, connecting again,
/// reaches a live one. Another service's connected sockets are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_udp_sockets_to_a_removed_backend_are_destroyed() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("cudp", 2).await.unwrap();
    lab.start_lb(0).unwrap();
    let client = lab.pod(0, "client").await.unwrap();
    let a = lab.pod(0, "dns-a").await.unwrap();
    let b = lab.pod(1, "dns-b").await.unwrap();
    lab.serve(&a, "dns-a", 8080).unwrap();
    lab.serve(&b, "dns-b", 8080).unwrap();
    let both = [(a.ip, 8080), (b.ip, 8080)];
    let dns = |backends: &[(Ipv4Addr, u16)]| {
        service("kube-system/dns", VIP, vec![port(Protocol::Udp, 53, None, backends)])
    };
    lab.lb(0).apply(&dns(&both)).unwrap();

    let cg = lab.nodes[0].cgroup.clone();
    let c = lab.spawn(&client.netns, Some(&cg), "client", &["udp-connected", "10.96.0.10:53"]);
    let c = c.unwrap();
    let ask = |lab: &mut Lab, child: usize| {
        lab.write_line(child, "q").unwrap();
        lab.read_line(child).unwrap()
    };
    let first = ask(&mut lab, c);
    let (chosen, gone, kept, kept_name) = if first.starts_with("reply=dns-a ") {
        ("dns-a", (a.ip, 8080), (b.ip, 8080), "dns-b")
    } else {
        ("dns-b", (b.ip, 8080), (a.ip, 8080), "dns-a")
    };
    assert_eq!(first, format!("reply={chosen} peer=10.96.0.10:53"));
    for _ in 0..3 {
        assert_eq!(ask(&mut lab, c), first, "a connected socket keeps its backend");
    }
    // Another service whose only backend is the same one, with a socket connected through it.
    let other_vip = Ipv4Addr::new(10, 96, 0, 11);
    let other = service("default/other", other_vip, vec![port(Protocol::Udp, 53, None, &[gone])]);
    lab.lb(0).apply(&other).unwrap();
    let o = lab.spawn(&client.netns, Some(&cg), "client", &["udp-connected", "10.96.0.11:53"]);
    let o = o.unwrap();
    let other_first = ask(&mut lab, o);
    assert_eq!(other_first, format!("reply={chosen} peer=10.96.0.11:53"));

    // The chosen backend leaves the DNS service: that socket is destroyed, and reconnecting
    // finds the other backend.
    lab.lb(0).apply(&dns(&[kept])).unwrap();
    let after = ask(&mut lab, c);
    assert!(after.starts_with("error="), "the socket was not destroyed: {after}");
    assert!(after.ends_with(&format!(" reply={kept_name} peer=10.96.0.10:53")), "{after}");
    assert_eq!(ask(&mut lab, c), format!("reply={kept_name} peer=10.96.0.10:53"));
    // The backend still serves the other service: that socket is untouched.
    assert_eq!(ask(&mut lab, o), other_first);
    lab.finish(c).unwrap();
    lab.finish(o).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_and_egress_snat() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("np", 2).await.unwrap();
    lab.start_lb(0).unwrap();
    lab.start_lb(1).unwrap();
    let a = lab.pod(0, "np-a").await.unwrap();
    let b = lab.pod(1, "np-b").await.unwrap();
    lab.serve(&a, "np-a", 8080).unwrap();
    lab.serve(&b, "np-b", 8080).unwrap();
    let backends = [(a.ip, 8080), (b.ip, 8080)];
    let svc = service(
        "default/np",
        Ipv4Addr::new(10, 96, 0, 20),
        vec![
            port(Protocol::Tcp, 80, Some(30080), &backends),
            port(Protocol::Udp, 53, Some(30053), &backends),
        ],
    );
    lab.lb(0).apply(&svc).unwrap();

    // From outside: local backend (DNAT) and remote backend (DNAT + SNAT via node 0).
    let node0 = lab.nodes[0].addr;
    let out = lab.run_in_client(&["connect", &format!("{node0}:30080"), "40"]).unwrap();
    let replies = tally(&out, "reply");
    assert_eq!(replies.values().sum::<usize>(), 40, "{out:?}");
    assert_eq!(replies.len(), 2, "both the local and the remote backend answer: {replies:?}");
    assert_eq!(tally(&out, "peer").into_keys().collect::<Vec<_>>(), [format!("{node0}:30080")]);

    let out = lab.run_in_client(&["udp", &format!("{node0}:30053"), "20"]).unwrap();
    let replies = tally(&out, "reply");
    assert_eq!(replies.values().sum::<usize>(), 20, "{out:?}");
    assert_eq!(tally(&out, "from").into_keys().collect::<Vec<_>>(), [format!("{node0}:30053")]);
    // A backend leaving a UDP service takes its tracked flows with it (TCP flows stay). The
    // one client socket is one flow, tracked to one of the backends.
    let used = if lab.lb(0).flows_to(a.ip, 8080, Protocol::Udp) > 0 { a.ip } else { b.ip };
    assert!(lab.lb(0).flows_to(used, 8080, Protocol::Udp) > 0);
    let mut fewer = svc.clone();
    fewer.ports[1].backends.retain(|x| x.addr != used);
    lab.lb(0).apply(&fewer).unwrap();
    assert_eq!(lab.lb(0).flows_to(used, 8080, Protocol::Udp), 0);
    assert!(lab.lb(0).flows_to(used, 8080, Protocol::Tcp) > 0);

    // Maglev with ClientIP affinity: one client keeps one backend.
    let mut sticky = svc.clone();
    sticky.selection = Selection::Maglev;
    sticky.affinity_timeout = Some(30);
    lab.lb(0).apply(&sticky).unwrap();
    let out = lab.run_in_client(&["connect", &format!("{node0}:30080"), "20"]).unwrap();
    assert_eq!(tally(&out, "reply").len(), 1, "{out:?}");
    // Maglev alone spreads flows (distinct source ports) over both.
    let mut maglev = svc.clone();
    maglev.selection = Selection::Maglev;
    lab.lb(0).apply(&maglev).unwrap();
    let out = lab.run_in_client(&["connect", &format!("{node0}:30080"), "40"]).unwrap();
    assert_eq!(tally(&out, "reply").len(), 2, "{out:?}");

    // Without endpoints the NodePort refuses at once.
    let mut empty = svc.clone();
    for p in &mut empty.ports {
        p.backends.clear();
    }
    lab.lb(0).apply(&empty).unwrap();
    let out = lab.run_in_client(&["connect", &format!("{node0}:30080"), "1"]).unwrap();
    assert!(out[0].starts_with("error=refused"), "{out:?}");

    // Pod egress to outside the cluster leaves with the node's address.
    let ns = lab.client.clone();
    let srv = lab.spawn(&ns, None, "outside", &["echo", "9000", "log"]).unwrap();
    assert!(lab.read_line(srv).unwrap().starts_with("listening"));
    let out = lab.run_in_pod(0, &a, &["connect", &format!("{CLIENT_ADDR}:9000"), "3"]).unwrap();
    assert_eq!(
        tally(&out, "reply").into_iter().collect::<Vec<_>>(),
        [("outside".into(), 3)],
        "{out:?}"
    );
    for _ in 0..3 {
        let seen = lab.read_line(srv).unwrap();
        assert!(seen.starts_with(&format!("accepted from={node0}:")), "SNAT to the node: {seen}");
    }
}

/// 100 long-lived connections through a ClusterIP (socket path) and 20 through a NodePort (tc
/// path, conntrack in a pinned map) survive ten stop/start cycles of the load balancer, each
/// of which replaces the programs inside the pinned links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hitless_restart() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("hitless", 2).await.unwrap();
    lab.start_lb(0).unwrap();
    let client = lab.pod(0, "client").await.unwrap();
    let a = lab.pod(0, "hl-a").await.unwrap();
    let b = lab.pod(1, "hl-b").await.unwrap();
    lab.serve(&a, "hl-a", 8080).unwrap();
    lab.serve(&b, "hl-b", 8080).unwrap();
    let svc = service(
        "default/hl",
        VIP,
        vec![port(Protocol::Tcp, 80, Some(30080), &[(a.ip, 8080), (b.ip, 8080)])],
    );
    lab.lb(0).apply(&svc).unwrap();

    let cg = lab.nodes[0].cgroup.clone();
    let inside =
        lab.spawn(&client.netns, Some(&cg), "client", &["hold", "10.96.0.10:80", "100"]).unwrap();
    assert_eq!(lab.read_line(inside).unwrap(), "ready");
    let ns = lab.client.clone();
    let node0 = lab.nodes[0].addr;
    let outside =
        lab.spawn(&ns, None, "client", &["hold", &format!("{node0}:30080"), "20"]).unwrap();
    assert_eq!(lab.read_line(outside).unwrap(), "ready");

    let before = lab.lb(0).links().unwrap();
    assert_eq!(before.len(), 6, "4 socket programs + tc ingress/egress: {before:?}");
    for round in 0..10 {
        lab.nodes[0].lb = None; // stopped: the pinned links keep the programs running
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        lab.start_lb(0).unwrap();
        lab.lb(0).sync(std::slice::from_ref(&svc)).unwrap();
        let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "2"]).unwrap();
        assert_eq!(tally(&out, "reply").values().sum::<usize>(), 2, "round {round}: {out:?}");
    }
    let after = lab.lb(0).links().unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, b.1), (&a.0, a.1), "same links");
        assert_ne!(b.2, a.2, "{}: program replaced", b.0);
    }
    let inside = lab.finish(inside).unwrap();
    assert_eq!(
        inside.last().unwrap().split(" rounds").next().unwrap(),
        "alive=100 broken=0",
        "{inside:?}"
    );
    let outside = lab.finish(outside).unwrap();
    assert_eq!(
        outside.last().unwrap().split(" rounds").next().unwrap(),
        "alive=20 broken=0",
        "{outside:?}"
    );
}

/// Invalid services are refused with the service and field named, and leave the maps as they
/// were; a service that does not fit the maps is refused without a half-written backend set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_maps_stay_whole() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("bad", 1).await.unwrap();
    lab.start_lb(0).unwrap();
    let client = lab.pod(0, "client").await.unwrap();
    let a = lab.pod(0, "bad-a").await.unwrap();
    lab.serve(&a, "bad-a", 8080).unwrap();
    let good =
        service("default/good", VIP, vec![port(Protocol::Tcp, 80, Some(30080), &[(a.ip, 8080)])]);
    lab.lb(0).apply(&good).unwrap();
    assert_eq!(lab.lb(0).key_count(), 2);

    let mut bad = good.clone();
    bad.cluster_ip = Ipv4Addr::BROADCAST;
    let e = lab.lb(0).apply(&bad).unwrap_err().to_string();
    assert!(e.contains("default/good") && e.contains("clusterIP"), "{e}");
    let mut bad = good.clone();
    bad.ports[0].backends[0].port = 0;
    let e = lab.lb(0).apply(&bad).unwrap_err().to_string();
    assert!(e.contains("ports[0].backends[0].port"), "{e}");
    let mut bad = good.clone();
    bad.ports[0].backends =
        (0..2000).map(|i| Backend::new(Ipv4Addr::from(0x0af4_0100 + i), 80)).collect();
    let e = lab.lb(0).apply(&bad).unwrap_err().to_string();
    assert!(e.contains("more than the 1024"), "{e}");
    assert!("SCTP".parse::<Protocol>().is_err());
    let mut clash = good.clone();
    clash.name = "default/other".into();
    clash.cluster_ip = Ipv4Addr::new(10, 96, 0, 11);
    let e = lab.lb(0).apply(&clash).unwrap_err().to_string();
    assert!(e.contains("NodePort 30080/TCP is already used by service default/good"), "{e}");

    // Still exactly the good service, and it still works.
    assert_eq!(lab.lb(0).key_count(), 2);
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "3"]).unwrap();
    assert_eq!(tally(&out, "reply").into_iter().collect::<Vec<_>>(), [("bad-a".into(), 3)]);

    // Fill the backend map with 1024-backend services until it refuses one.
    let many: Vec<(Ipv4Addr, u16)> =
        (0..1024).map(|i| (Ipv4Addr::from(0x0af4_0100 + i), 80)).collect();
    let mut applied = 0;
    let err = loop {
        let vip = Ipv4Addr::from(0x0a61_0000 + applied);
        let s =
            service(&format!("fill/{applied}"), vip, vec![port(Protocol::Tcp, 80, None, &many)]);
        match lab.lb(0).apply(&s) {
            Ok(()) => applied += 1,
            Err(e) => break e.to_string(),
        }
        assert!(applied < 1000, "the backend map never filled up");
    };
    assert!(err.contains("BACKENDS"), "{err}");
    assert_eq!(lab.lb(0).key_count(), 2 + applied as usize, "the refused service left no key");
    // The good service is untouched and an update that does not fit keeps its old backends.
    let mut grown = good.clone();
    grown.ports[0].backends = many.iter().map(|&(a, p)| Backend::new(a, p)).collect();
    assert!(lab.lb(0).apply(&grown).is_err());
    let out = lab.run_in_pod(0, &client, &["connect", "10.96.0.10:80", "3"]).unwrap();
    assert_eq!(tally(&out, "reply").into_iter().collect::<Vec<_>>(), [("bad-a".into(), 3)]);
    // Removing the fill makes room again.
    for i in 0..applied {
        lab.lb(0).remove(&format!("fill/{i}")).unwrap();
    }
    lab.lb(0).apply(&grown).unwrap();
}

/// Pod networks made ahead are handed to pods whole (address, eth0, route) and replaced; a
/// restarted node drops the ones no pod took, and teardown removes them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_networks_made_ahead_are_handed_to_pods() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("pw", 1).await.unwrap();
    let net = &lab.nodes[0].net;
    let until_ready = |n: usize| async move {
        while net.ready() < n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let (a, b) = tokio::select! {
        _ = net.keep_warm(2) => unreachable!("keep_warm returns only when dropped"),
        r = async {
            tokio::time::timeout(std::time::Duration::from_secs(20), until_ready(2)).await.unwrap();
            let made: Vec<_> = net.slots().unwrap();
            assert_eq!(made.len(), 2, "{made:?}");
            assert!(net.pods().unwrap().is_empty(), "ready networks are no pods");
            let a = net.add_pod("uid-a").await.unwrap();
            assert!(made.contains(&a.ip), "{a:?} taken from {made:?}");
            // The taken one is replaced.
            tokio::time::timeout(std::time::Duration::from_secs(20), until_ready(2)).await.unwrap();
            let b = net.add_pod("uid-b").await.unwrap();
            (a, b)
        } => r,
    };
    let mut want = vec![(a.ip, "uid-a".to_string()), (b.ip, "uid-b".to_string())];
    want.sort();
    assert_eq!(net.pods().unwrap(), want);
    assert_eq!(net.pod("uid-a").unwrap(), Some(a.clone()));
    // Handed over whole: one pod reaches the other.
    lab.serve(&b, "uid-b", 8080).unwrap();
    let out = lab.run_in_pod(0, &a, &["connect", &format!("{}:8080", b.ip), "1"]).unwrap();
    assert!(out[0].starts_with("reply=uid-b"), "{out:?}");
    // A restarted node keeps the pods and drops the ready ones nobody took.
    let cfg = lab.nodes[0].net.config().clone();
    let again = flotilla_dataplane::NodeNetwork::setup(cfg.clone()).await.unwrap();
    assert_eq!(again.slots().unwrap().len(), 2, "only the two pods remain");
    assert_eq!(again.add_pod("uid-a").await.unwrap(), a);
    again.teardown().await.unwrap();
    let left: Vec<_> =
        std::fs::read_dir(cfg.state_dir.join("netns")).into_iter().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The pod network is idempotent (a restarted agent re-adopts: same address, same namespace,
/// nothing recreated) and its teardown removes every link, route and namespace it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_network_readopts_and_tears_down() {
    if !root() {
        return;
    }
    let mut lab = Lab::new("pn", 1).await.unwrap();
    let node_ns = lab.nodes[0].netns.clone();
    let p1 = lab.pod(0, "uid-1").await.unwrap();
    let p2 = lab.pod(0, "uid-2").await.unwrap();
    assert_ne!(p1.ip, p2.ip);
    // A restarted agent: setup and add_pod again find and keep what is there.
    let cfg = lab.nodes[0].net.config().clone();
    let again = flotilla_dataplane::NodeNetwork::setup(cfg.clone()).await.unwrap();
    assert_eq!(again.add_pod("uid-1").await.unwrap(), p1);
    let links = flotilla_dataplane::net::links(Some(&node_ns)).await.unwrap();
    assert!(links.contains(&"flotilla0".to_string()) && links.contains(&p1.host_veth), "{links:?}");
    let inside = flotilla_dataplane::net::links(Some(&p1.netns)).await.unwrap();
    assert_eq!(inside.iter().filter(|l| *l == "eth0").count(), 1, "{inside:?}");
    // The pod is reachable from the node's other pod.
    lab.serve(&p2, "uid-2", 8080).unwrap();
    let out = lab.run_in_pod(0, &p1, &["connect", &format!("{}:8080", p2.ip), "1"]).unwrap();
    assert!(out[0].starts_with("reply=uid-2"), "{out:?}");
    // Removing one pod frees its address and interface; removing twice is fine.
    again.remove_pod("uid-1").await.unwrap();
    again.remove_pod("uid-1").await.unwrap();
    assert!(!p1.netns.exists());
    let links = flotilla_dataplane::net::links(Some(&node_ns)).await.unwrap();
    assert!(!links.contains(&p1.host_veth), "{links:?}");
    assert_eq!(again.add_pod("uid-3").await.unwrap().ip, p1.ip, "released address reused");
    // Teardown: bridge, pods and Flotilla's routes all gone.
    let route_table = || {
        flotilla_dataplane::NetNs::open(&node_ns)
            .unwrap()
            .run(|| std::fs::read_to_string("/proc/thread-self/net/route"))
            .unwrap()
            .unwrap()
    };
    // The fences (10.96.0.0/12 and 10.244.0.0/16, little-endian hex in /proc) are there first.
    let before = route_table();
    assert!(before.contains("0000600A") && before.contains("0000F40A"), "{before}");
    again.teardown().await.unwrap();
    let links = flotilla_dataplane::net::links(Some(&node_ns)).await.unwrap();
    assert!(links.iter().all(|l| l == "lo" || l == "eth0"), "{links:?}");
    assert!(!p2.netns.exists());
    let routes = route_table();
    assert!(!routes.contains("flotilla0"), "{routes}");
    assert!(
        !routes.contains("0000600A") && !routes.contains("0000F40A"),
        "fences removed: {routes}"
    );
}
