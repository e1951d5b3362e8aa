//! The codec and the stale-flow policy.

use super::*;
use crate::model::options::NodePortAddresses;
use crate::model::ServicePort;
use crate::model::{fixtures, Endpoint};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ep(addr: &str, port: u16) -> Endpoint {
    fixtures::endpoint(addr, port)
}

fn svc(proto: Proto, eps: Vec<Endpoint>) -> ServicePort {
    fixtures::service_port("dns", "udp", proto, "10.96.0.10", 53, eps)
}

fn model(services: Vec<ServicePort>) -> Model {
    Model {
        node_name: "n".into(),
        node_zone: None,
        node_ips: vec![ip("192.168.0.1")],
        host_addresses: vec![],
        families: vec![Family::V4, Family::V6],
        cluster_cidrs: vec![],
        service_cidrs: vec![],
        nodeport_addresses: NodePortAddresses::Primary,
        masquerade_all: false,
        masquerade_mark: 0x4000,
        local_traffic: crate::model::LocalTraffic::Cidrs(vec![]),
        services,
    }
}

fn ff(family: Family, dst: Option<&str>, port: Option<u16>, reply: Option<&str>) -> FlowFilter {
    FlowFilter {
        family,
        proto: Proto::Udp,
        orig_dst: dst.map(ip),
        orig_dst_port: port,
        reply_src: reply.map(ip),
    }
}

#[test]
fn endpoint_removed() {
    let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
    old.node_port = Some(30053);
    old.external_ips = vec![ip("203.0.113.7")];
    let mut new = old.clone();
    new.endpoints.remove(0);
    let got = stale_flows(&model(vec![old]), &model(vec![new]));
    let mut want = vec![
        ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.1.5")),
        ff(
            Family::V4,
            Some("203.0.113.7"),
            Some(53),
            Some("10.244.1.5"),
        ),
        ff(Family::V4, None, Some(30053), Some("10.244.1.5")),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn endpoint_no_longer_serving_is_removed_but_terminating_serving_is_not() {
    let old = svc(Proto::Udp, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
    let mut new = old.clone();
    new.endpoints[0].ready = false;
    new.endpoints[0].serving = false;
    new.endpoints[1].ready = false;
    new.endpoints[1].terminating = true;
    let got = stale_flows(&model(vec![old]), &model(vec![new]));
    assert_eq!(
        got,
        vec![ff(
            Family::V4,
            Some("10.96.0.10"),
            Some(53),
            Some("10.244.1.5")
        )]
    );
}

#[test]
fn scaled_to_zero() {
    let old = svc(Proto::Udp, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
    let new = svc(Proto::Udp, vec![]);
    let got = stale_flows(&model(vec![old]), &model(vec![new]));
    assert_eq!(
        got,
        vec![
            ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.1.5")),
            ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.2.6")),
        ]
    );
}

#[test]
fn first_endpoint_added() {
    let mut old = svc(Proto::Udp, vec![]);
    old.node_port = Some(30053);
    old.load_balancer_ips = vec![ip("198.51.100.1")];
    let mut new = old.clone();
    new.endpoints = vec![ep("10.244.1.5", 53)];
    let got = stale_flows(&model(vec![old.clone()]), &model(vec![new.clone()]));
    let mut want = vec![
        ff(Family::V4, Some("10.96.0.10"), Some(53), None),
        ff(Family::V4, Some("198.51.100.1"), Some(53), None),
        ff(Family::V4, None, Some(30053), None),
    ];
    want.sort();
    assert_eq!(got, want);
    // A second endpoint is not a first one.
    let mut newer = new.clone();
    newer.endpoints.push(ep("10.244.2.6", 53));
    assert!(stale_flows(&model(vec![new]), &model(vec![newer])).is_empty());
    // A new Service with endpoints: its VIP may have flows from before it existed.
    let got = stale_flows(
        &model(vec![]),
        &model(vec![svc(Proto::Udp, vec![ep("10.244.1.5", 53)])]),
    );
    assert_eq!(
        got,
        vec![ff(Family::V4, Some("10.96.0.10"), Some(53), None)]
    );
    // A new Service without endpoints: nothing yet.
    assert!(stale_flows(&model(vec![]), &model(vec![old])).is_empty());
}

#[test]
fn first_endpoint_per_family() {
    let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
    old.cluster_ips.push(ip("fd00:96::10"));
    let mut new = old.clone();
    new.endpoints.push(ep("fd00:244::5", 53));
    let got = stale_flows(&model(vec![old]), &model(vec![new]));
    assert_eq!(
        got,
        vec![ff(Family::V6, Some("fd00:96::10"), Some(53), None)]
    );
}

#[test]
fn cluster_ip_changed() {
    let old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
    let mut new = old.clone();
    new.cluster_ips = vec![ip("10.96.0.11")];
    let got = stale_flows(&model(vec![old]), &model(vec![new]));
    assert_eq!(
        got,
        vec![
            ff(Family::V4, Some("10.96.0.10"), Some(53), None),
            ff(Family::V4, Some("10.96.0.11"), Some(53), None),
        ]
    );
}

#[test]
fn node_port_changed() {
    let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
    old.node_port = Some(30053);
    let mut new = old.clone();
    new.node_port = Some(30054);
    let got = stale_flows(&model(vec![old]), &model(vec![new]));
    assert_eq!(
        got,
        vec![
            ff(Family::V4, None, Some(30053), None),
            ff(Family::V4, None, Some(30054), None),
        ]
    );
}

#[test]
fn service_deleted() {
    let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
    old.node_port = Some(30053);
    let got = stale_flows(&model(vec![old]), &model(vec![]));
    assert_eq!(
        got,
        vec![
            ff(Family::V4, None, Some(30053), None),
            ff(Family::V4, Some("10.96.0.10"), Some(53), None),
        ]
    );
}

#[test]
fn tcp_and_sctp_changes_produce_nothing() {
    for proto in [Proto::Tcp, Proto::Sctp] {
        let mut old = svc(proto, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
        old.node_port = Some(30053);
        let mut new = svc(proto, vec![]);
        new.cluster_ips = vec![ip("10.96.0.11")];
        new.node_port = Some(30054);
        let (a, b) = (model(vec![old]), model(vec![new]));
        assert!(stale_flows(&a, &b).is_empty());
        assert!(stale_flows(&b, &a).is_empty());
        assert!(stale_flows(&model(vec![]), &a).is_empty());
    }
}

#[test]
fn unchanged_model_produces_nothing() {
    let mut s = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
    s.node_port = Some(30053);
    let m = model(vec![s]);
    assert!(stale_flows(&m, &m).is_empty());
}

fn fake_entry_msg(family: u8, orig: &Tuple, reply: &Tuple, zone: Option<u16>) -> Vec<u8> {
    let mut a = tuple_attr(CTA_TUPLE_ORIG, orig);
    a.extend(tuple_attr(CTA_TUPLE_REPLY, reply));
    push_attr(&mut a, CTA_ID, &0xdead_beefu32.to_be_bytes());
    if let Some(z) = zone {
        push_attr(&mut a, CTA_ZONE, &z.to_be_bytes());
    }
    request(IPCTNL_MSG_CT_GET, 0, 7, family, &a)
}

fn tuple(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
    Tuple {
        src: Some(ip(src)),
        dst: Some(ip(dst)),
        proto: Some(17),
        src_port: Some(sport),
        dst_port: Some(dport),
    }
}

#[test]
fn parses_and_matches_entries() {
    let orig = tuple("10.0.0.1", "10.96.0.10", 4000, 53);
    let reply = tuple("10.244.1.5", "10.0.0.1", 53, 4000);
    let msg = fake_entry_msg(libc::AF_INET as u8, &orig, &reply, Some(3));
    let mut it = messages(&msg);
    let (_, _, seq, payload) = it.next().unwrap().unwrap();
    assert!(it.next().is_none());
    assert_eq!(seq, 7);
    let e = parse_entry(payload).unwrap().unwrap();
    assert_eq!(e.orig, orig);
    assert_eq!(e.reply, reply);
    assert_eq!(e.zone, Some(3));
    assert_eq!(e.id, Some(0xdead_beef));
    assert!(ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.1.5")).matches(&e));
    assert!(ff(Family::V4, None, Some(53), None).matches(&e));
    assert!(!ff(Family::V4, Some("10.96.0.10"), Some(54), None).matches(&e));
    assert!(!ff(Family::V4, None, None, Some("10.244.2.6")).matches(&e));
    assert!(!ff(Family::V6, None, None, None).matches(&e));
    let mut tcp = ff(Family::V4, None, None, None);
    tcp.proto = Proto::Tcp;
    assert!(!tcp.matches(&e));

    // The delete request echoes the original tuple, zone and id.
    let del = delete_request(9, &e);
    let (ty, flags, seq, payload) = messages(&del).next().unwrap().unwrap();
    assert_eq!(ty, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE);
    assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(seq, 9);
    let back = parse_entry(payload).unwrap();
    assert!(back.is_none(), "no reply tuple is sent");
    let types: Vec<u16> = attrs(&payload[4..]).map(|a| a.unwrap().0).collect();
    assert_eq!(types, vec![CTA_TUPLE_ORIG, CTA_ZONE, CTA_ID]);
    let (_, p, _) = attrs(&payload[4..]).next().unwrap().unwrap();
    assert_eq!(parse_tuple(p).unwrap(), orig);
}

#[test]
fn parses_ipv6_entries() {
    let orig = tuple("fd00::1", "fd00:96::10", 4000, 53);
    let reply = tuple("fd00:244::5", "fd00::1", 53, 4000);
    let msg = fake_entry_msg(libc::AF_INET6 as u8, &orig, &reply, None);
    let (_, _, _, payload) = messages(&msg).next().unwrap().unwrap();
    let e = parse_entry(payload).unwrap().unwrap();
    assert_eq!(
        (e.orig.clone(), e.reply.clone(), e.zone),
        (orig, reply, None)
    );
    assert!(ff(
        Family::V6,
        Some("fd00:96::10"),
        Some(53),
        Some("fd00:244::5")
    )
    .matches(&e));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let orig = tuple("10.0.0.1", "10.96.0.10", 4000, 53);
    let msg = fake_entry_msg(libc::AF_INET as u8, &orig, &orig, None);
    // Every truncation and every single-byte corruption: no panic.
    for cut in 0..msg.len() {
        let _ = messages(&msg[..cut]).count();
        let _ = parse_entry(msg.get(NLMSG_HDRLEN..cut).unwrap_or(&[]));
    }
    for i in 0..msg.len() {
        for v in [0u8, 1, 2, 3, 0x7f, 0xff] {
            let mut bad = msg.clone();
            bad[i] = v;
            let _ = messages(&bad).count();
            let _ = parse_entry(&bad[NLMSG_HDRLEN..]);
        }
    }
    assert!(parse_entry(&[]).is_err());
    assert!(error_code(&[1, 2]).is_err());
    let mut bad = msg.clone();
    bad[NLMSG_HDRLEN + NFGENMSG_LEN] = 2; // attribute length 2 < 4
    bad[NLMSG_HDRLEN + NFGENMSG_LEN + 1] = 0;
    assert!(parse_entry(&bad[NLMSG_HDRLEN..]).is_err());
    let mut bad = msg.clone();
    bad[0] = 0xff; // message longer than the buffer
    assert!(messages(&bad).next().unwrap().is_err());
}

#[test]
fn no_filters_touch_nothing() {
    assert_eq!(delete_flows(&[]).unwrap(), 0);
}
