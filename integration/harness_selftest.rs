//! Self-test of the real-kernel harness (integration/support).
//!
//! Needs root, `ip` and `nft`; skipped otherwise (panics instead if CI=true).

mod support;

use std::io::ErrorKind;
use std::time::Duration;

use support::*;

const SELFTEST_RULES: &str = r#"
table ip kntp-selftest {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.10 tcp dport 80 numgen random mod 2 vmap { 0 : goto a, 1 : goto b }
    }
    chain out {
        type nat hook output priority -100; policy accept;
        ip daddr 10.96.0.10 tcp dport 80 numgen random mod 2 vmap { 0 : goto a, 1 : goto b }
    }
    chain a {
        meta l4proto tcp dnat to 10.244.0.2:8080
    }
    chain b {
        meta l4proto tcp dnat to 10.244.0.3:8080
    }
}
"#;

fn assert_gone(names: &[String]) {
    let left: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn clusterip_dnat_reaches_both_endpoints() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let a = c.add_pod("a", "10.244.0.2");
    let b = c.add_pod("b", "10.244.0.3");
    let cl = c.add_pod("c", "10.244.0.4");
    a.spawn_tcp_server("10.244.0.2", 8080).unwrap();
    b.spawn_tcp_server("10.244.0.3", 8080).unwrap();

    // Before any rule the VIP goes nowhere (node routes it on-link to the LAN).
    let err = cl
        .tcp_request("10.96.0.10", 80, DROP_TIMEOUT)
        .expect_err("VIP must not answer without rules");
    assert_ne!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    c.node().nft_apply(SELFTEST_RULES).unwrap();
    let listed = c.node().nft_list_table("ip", "kntp-selftest");
    assert!(listed.contains("numgen random mod 2"), "{listed}");
    // The ruleset landed in the node namespace only, not in its neighbours.
    assert!(!c.node2().nft_list_ruleset().contains("kntp-selftest"));
    assert!(!cl.nft_list_ruleset().contains("kntp-selftest"));

    let sources = [
        ("pod c", cl.clone(), "10.244.0.4"),
        ("node", c.node().clone(), NODE_IP),
        ("client", c.client().clone(), CLIENT_IP),
    ];
    for (what, ns, expect_peer) in sources {
        let results = ns.tcp_requests("10.96.0.10", 80, 40, TIMEOUT);
        let (counts, errors) = tally(&results);
        assert!(errors.is_empty(), "{what}: errors {errors:?}");
        assert!(
            counts.get("a").copied().unwrap_or(0) > 0 && counts.get("b").copied().unwrap_or(0) > 0,
            "{what}: both endpoints must serve, got {counts:?}"
        );
        assert_eq!(counts.values().sum::<usize>(), 40, "{what}: {counts:?}");
        for r in &results {
            let id = Identity::parse(r.as_ref().unwrap());
            assert_eq!(
                id.peer.ip().to_string(),
                expect_peer,
                "{what}: source must be preserved (no masquerade rule)"
            );
            assert_eq!(id.local.port(), 8080, "{what}: {id:?}");
            let want_ip = if id.server == "a" {
                "10.244.0.2"
            } else {
                "10.244.0.3"
            };
            assert_eq!(id.local.ip().to_string(), want_ip, "{what}: {id:?}");
        }
    }

    // Port 80 on the VIP is DNATed; other ports are not (times out / no answer).
    let err = c
        .client()
        .tcp_request("10.96.0.10", 81, DROP_TIMEOUT)
        .expect_err("unrelated port must not be served");
    assert_ne!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    let names = c.namespace_names();
    assert_eq!(names.len(), 7);
    for n in &names {
        assert!(list_netns().contains(n), "{n} should exist while alive");
    }
    drop(c);
    drop((a, b, cl));
    assert_gone(&names);
}

#[test]
fn routing_udp_reject_and_drop() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let p = c.add_pod_dual("p", "10.244.0.2", "fd00:244::2");
    let x = c.add_pod_on(NodeId::Node2, "x", "10.244.1.2", Some("fd00:244:1::2"));
    x.spawn_tcp_server("10.244.1.2", 8080).unwrap();
    x.spawn_tcp_server("fd00:244:1::2", 8080).unwrap();
    x.spawn_udp_server("10.244.1.2", 5353).unwrap();
    p.spawn_udp_server("0.0.0.0", 5353).unwrap();

    // pod on node -> pod on node2 (routed over the LAN), v4 and v6.
    let id = Identity::parse(&p.tcp_request("10.244.1.2", 8080, TIMEOUT).unwrap());
    assert_eq!(id.server, "x");
    assert_eq!(id.peer.ip().to_string(), "10.244.0.2");
    let id = Identity::parse(&p.tcp_request("fd00:244:1::2", 8080, TIMEOUT).unwrap());
    assert_eq!(id.server, "x");
    assert_eq!(id.peer.ip().to_string(), "fd00:244::2");

    // UDP both ways through plain routes; fixed source port is visible.
    let id = Identity::parse(&p.udp_request("10.244.1.2", 5353, TIMEOUT).unwrap());
    assert_eq!(
        (id.server.as_str(), id.peer.ip().to_string()),
        ("x", "10.244.0.2".into())
    );
    let id = Identity::parse(
        &p.udp_request_from(sa("10.244.0.2", 40001), "10.244.1.2", 5353, TIMEOUT)
            .unwrap(),
    );
    assert_eq!(id.peer, sa("10.244.0.2", 40001));
    let id = Identity::parse(&x.udp_request("10.244.0.2", 5353, TIMEOUT).unwrap());
    assert_eq!(id.server, "p");
    assert_eq!(id.peer.ip().to_string(), "10.244.1.2");
    // Node reaches its pods directly as well.
    let id = Identity::parse(&c.node2().tcp_request("10.244.1.2", 8080, TIMEOUT).unwrap());
    assert_eq!(id.server, "x");

    // Reject vs drop are distinguishable.
    let e = p.tcp_request("10.244.1.2", 9999, TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    let e = p.udp_request("10.244.1.2", 9999, TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    c.node2()
        .nft_apply(
            "table inet kntp-drop {\n chain forward_drop {\n type filter hook forward priority 0; policy accept;\n \
             tcp dport 8080 drop\n udp dport 5353 drop\n }\n}\n",
        )
        .unwrap();
    let e = p.tcp_request("10.244.1.2", 8080, DROP_TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    let e = p.udp_request("10.244.1.2", 5353, DROP_TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    c.node2().nft(["delete", "table", "inet", "kntp-drop"]);
    p.tcp_request("10.244.1.2", 8080, TIMEOUT).unwrap();

    // A stopped server refuses.
    let h = x.spawn_tcp_server("10.244.1.2", 8081).unwrap();
    p.tcp_request("10.244.1.2", 8081, TIMEOUT).unwrap();
    h.stop();
    let e = p.tcp_request("10.244.1.2", 8081, TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    let names = c.namespace_names();
    drop((c, p, x));
    assert_gone(&names);
}

#[test]
fn client_source_addresses_and_ipv6_service() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let a = c.add_pod_dual("a", "10.244.0.2", "fd00:244::2");
    a.spawn_tcp_server("fd00:244::2", 8080).unwrap();
    c.node().spawn_tcp_server(NODE_IP, 30080).unwrap();
    c.node().spawn_udp_server(NODE_IP, 30053).unwrap();

    c.add_client_address("198.51.100.7");
    let id = Identity::parse(
        &c.client()
            .tcp_request_from(sa("198.51.100.7", 0), NODE_IP, 30080, TIMEOUT)
            .unwrap(),
    );
    assert_eq!(id.server, "node");
    assert_eq!(id.peer.ip().to_string(), "198.51.100.7");
    let id = Identity::parse(
        &c.client()
            .tcp_request_from(sa("198.51.100.7", 41000), NODE_IP, 30080, TIMEOUT)
            .unwrap(),
    );
    assert_eq!(id.peer, sa("198.51.100.7", 41000));
    let id = Identity::parse(&c.client().tcp_request(NODE_IP, 30080, TIMEOUT).unwrap());
    assert_eq!(id.peer.ip().to_string(), CLIENT_IP);
    let id = Identity::parse(
        &c.client()
            .udp_request_from(sa("198.51.100.7", 41001), NODE_IP, 30053, TIMEOUT)
            .unwrap(),
    );
    assert_eq!(id.peer, sa("198.51.100.7", 41001));
    let e = c
        .client()
        .tcp_request_from(sa("198.51.100.7", 0), NODE_IP, 30081, TIMEOUT)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    // IPv6 ClusterIP from the external client, through the node.
    c.node()
        .nft_apply(
            "table ip6 kntp-selftest6 {\n chain pre {\n \
             type nat hook prerouting priority dstnat; policy accept;\n \
             ip6 daddr fd00:96::10 tcp dport 80 dnat to [fd00:244::2]:8080\n }\n}\n",
        )
        .unwrap();
    let id = Identity::parse(&c.client().tcp_request("fd00:96::10", 80, TIMEOUT).unwrap());
    assert_eq!(id.server, "a");
    assert_eq!(id.peer.ip().to_string(), CLIENT_IP6);
    assert_eq!(id.local, sa("fd00:244::2", 8080));

    // Processes started in a namespace run there and die with it.
    let mut proc_ = c
        .node()
        .spawn_process({
            let mut cmd = c.node().command("sleep");
            cmd.arg("30");
            cmd
        })
        .unwrap();
    assert!(proc_.child().try_wait().unwrap().is_none());
    let pid = proc_.id();
    let out = c.node().exec(["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.168.0.10/24"));

    let names = c.namespace_names();
    drop(c);
    drop(a);
    assert_gone(&names);
    // The safety net killed the process when its namespace was destroyed.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if proc_.child().try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} survived namespace deletion"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn cleanup_happens_on_panic() {
    if !require_root_and_tools() {
        return;
    }
    let mut names = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut c = Cluster::new();
        let p = c.add_pod("p", "10.244.0.2");
        p.spawn_tcp_server("10.244.0.2", 8080).unwrap();
        names = c.namespace_names();
        panic!("intentional panic inside a test");
    }));
    assert!(r.is_err());
    assert_eq!(names.len(), 5);
    assert_gone(&names);
}
