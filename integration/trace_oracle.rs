//! Oracle: for every flow the real-kernel tests (`integration/kernel.rs`) send through a
//! node namespace, the library tracer (`ruleset::eval`) on the same objects and options
//! must predict what the real packets showed: the set of endpoints reached, whether the
//! connection is masqueraded, or that it is rejected / dropped. The objects are built
//! with the same helpers (copied from kernel.rs) and the same addresses; a mismatch fails.
//! Pure: needs no root.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kube_nftproxy::model::{self, LocalDetect, Options};
use kube_nftproxy::ruleset::eval::{self, Fate, Origin, Packet, Query};
use kube_nftproxy::ruleset::{self, render};
use kube_nftproxy::vocab::Proto;

const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";
const NODE_IP: &str = "192.168.0.10";
const CLIENT_IP: &str = "192.168.0.100";

fn nodes_yaml() -> String {
    let node = |name: &str, ip: &str, cidr: &str| {
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
             kubernetes.io/hostname: {name}\nspec:\n  podCIDR: {cidr}\n  podCIDRs:\n  - {cidr}\n\
             status:\n  addresses:\n  - address: {ip}\n    type: InternalIP\n  - address: {name}\n    \
             type: Hostname\n"
        )
    };
    node(NODE_A, NODE_IP, "10.244.0.0/24") + &node(NODE_B, "192.168.0.11", "10.244.1.0/24")
}

struct SvcPort<'a>(&'a str, &'a str, u16, &'a str, Option<u16>);

fn service(
    name: &str,
    cluster_ip: &str,
    typ: &str,
    ports: &[SvcPort],
    extra_spec: &[&str],
    lb_ingress: Option<&str>,
) -> String {
    let mut s = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: {typ}\n  clusterIP: {cluster_ip}\n  clusterIPs:\n  - {cluster_ip}\n  \
         ipFamilies:\n  - IPv4\n  ipFamilyPolicy: SingleStack\n  selector:\n    app: {name}\n  \
         ports:\n"
    );
    for SvcPort(pname, proto, port, target, node_port) in ports {
        s += &format!(
            "  - name: {pname}\n    protocol: {proto}\n    port: {port}\n    targetPort: {target}\n"
        );
        if let Some(np) = node_port {
            s += &format!("    nodePort: {np}\n");
        }
    }
    for l in extra_spec {
        s += &format!("  {l}\n");
    }
    match lb_ingress {
        Some(ip) => {
            s += &format!(
                "status:\n  loadBalancer:\n    ingress:\n    - ip: {ip}\n      ipMode: VIP\n"
            )
        }
        None => s += "status:\n  loadBalancer: {}\n",
    }
    s
}

fn slice(svc: &str, ports: &[(&str, &str, u16)], eps: &[(&str, &str)]) -> String {
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
         metadata:\n  name: {svc}-x\n  namespace: default\n  labels:\n    \
         kubernetes.io/service-name: {svc}\n    \
         endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n"
    );
    if eps.is_empty() {
        s += "endpoints: []\n";
    } else {
        s += "endpoints:\n";
        for (ip, node) in eps {
            s += &format!(
                "- addresses:\n  - {ip}\n  conditions:\n    ready: true\n    serving: true\n    \
                 terminating: false\n  nodeName: {node}\n"
            );
        }
    }
    s += "ports:\n";
    for (name, proto, port) in ports {
        s += &format!("- name: {name}\n  protocol: {proto}\n  port: {port}\n");
    }
    s
}

fn http_service(name: &str, cluster_ip: &str, eps: &[(&str, &str)], extra_spec: &[&str]) -> String {
    service(
        name,
        cluster_ip,
        "ClusterIP",
        &[SvcPort("http", "TCP", 80, "8080", None)],
        extra_spec,
        None,
    ) + &slice(name, &[("http", "TCP", 8080)], eps)
}

/// What the kernel test observed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// Served by exactly these endpoints (`ip:port`), masqueraded or not.
    Served(&'static [&'static str], bool),
    /// Served by these endpoints; the kernel test does not check the source.
    ServedAnySource(&'static [&'static str]),
    Refused,
    Dropped,
    /// Some connections served by exactly these endpoints, the others refused (the kernel
    /// test does not check the source).
    ServedOrRefused(&'static [&'static str]),
}

struct Flow {
    test: &'static str,
    what: &'static str,
    origin: Origin,
    src: &'static str,
    dst: &'static str,
    port: u16,
    proto: Proto,
    want: Want,
}

fn flow(
    test: &'static str,
    what: &'static str,
    origin: Origin,
    src: &'static str,
    dst: &'static str,
    port: u16,
    want: Want,
) -> Flow {
    Flow {
        test,
        what,
        origin,
        src,
        dst,
        port,
        proto: Proto::Tcp,
        want,
    }
}

fn check(yaml: &str, flows: &[Flow]) -> Vec<String> {
    check_full(yaml, flows, LocalDetect::ClusterCidr, None, |_| {})
}

/// `check` with a `detectLocalMode` and the interface the flows arrive on.
fn check_with(
    yaml: &str,
    flows: &[Flow],
    detect_local: LocalDetect,
    in_interface: Option<&str>,
) -> Vec<String> {
    check_full(yaml, flows, detect_local, in_interface, |_| {})
}

/// [`check`] on the ruleset as `edit` leaves it: for a kernel test that changes the
/// programmed tables by hand before sending traffic.
fn check_edited(
    yaml: &str,
    flows: &[Flow],
    edit: impl Fn(&mut ruleset::ir::Ruleset),
) -> Vec<String> {
    check_full(yaml, flows, LocalDetect::ClusterCidr, None, edit)
}

fn check_full(
    yaml: &str,
    flows: &[Flow],
    detect_local: LocalDetect,
    in_interface: Option<&str>,
    edit: impl Fn(&mut ruleset::ir::Ruleset),
) -> Vec<String> {
    let opts = Options {
        hostname: NODE_A.into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        detect_local,
        ..Options::default()
    };
    let mut notes = Vec::new();
    let objects = render::read_sources([("oracle.yaml", yaml)], &mut notes).unwrap();
    let (m, _) = model::build(&objects, &opts);
    let (mut rs, _) = ruleset::build(&m);
    edit(&mut rs);
    let mut failures = Vec::new();
    for f in flows {
        let q = Query {
            packet: Packet {
                proto: f.proto,
                saddr: f.src.parse().unwrap(),
                sport: 40000,
                daddr: f.dst.parse().unwrap(),
                dport: f.port,
            },
            origin: f.origin,
            local_addrs: m.node_ips.clone(),
            in_interface: in_interface.map(String::from),
        };
        let t = match eval::trace(&rs, &q) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{} / {}: refused: {e}", f.test, f.what));
                continue;
            }
        };
        let total: f64 = t.paths.iter().map(|p| p.probability).sum();
        assert!(
            (total - 1.0).abs() < 1e-9,
            "{}: probabilities sum to {total}",
            f.what
        );
        // Paths share every step before the choice where they part (the text view's tree
        // relies on it).
        for w in t.paths.windows(2) {
            let k = w[0]
                .choices
                .iter()
                .zip(&w[1].choices)
                .take_while(|(a, b)| a == b)
                .count();
            let at = |p: &eval::Path| {
                (p.steps.iter())
                    .enumerate()
                    .filter(|(_, s)| matches!(s, eval::Step::Choice { .. }))
                    .nth(k)
                    .map(|(i, _)| i)
            };
            let (a, b) = (at(&w[0]), at(&w[1]));
            assert!(
                a.is_some() && a == b && w[0].steps[..a.unwrap()] == w[1].steps[..a.unwrap()],
                "{}: paths do not share their prefix",
                f.what
            );
        }
        // Every endpoint of a Service is equally likely (the kernel tests check the spread).
        let mut shares: Vec<f64> = Vec::new();
        for (o, p) in t.outcomes() {
            if o.dnat.is_some() {
                shares.push(p);
            }
        }
        if let Some(first) = shares.first() {
            assert!(
                shares.iter().all(|p| (p - first).abs() < 1e-9),
                "{}: uneven spread {shares:?}",
                f.what
            );
        }
        let mut eps = BTreeSet::new();
        let mut masq = BTreeSet::new();
        let mut fates = BTreeSet::new();
        for (o, _) in t.outcomes() {
            match o.fate {
                Fate::Delivered { addr, port, .. } => {
                    fates.insert("served");
                    eps.insert(format!("{addr}:{port}"));
                    masq.insert(o.masquerade.is_some());
                }
                Fate::Rejected => {
                    fates.insert("refused");
                }
                Fate::Dropped => {
                    fates.insert("dropped");
                }
            }
        }
        let got = match fates.iter().copied().collect::<Vec<_>>().as_slice() {
            ["served"] => {
                let want_eps: BTreeSet<String> = match &f.want {
                    Want::Served(e, _) | Want::ServedAnySource(e) | Want::ServedOrRefused(e) => {
                        e.iter().map(|s| s.to_string()).collect()
                    }
                    _ => BTreeSet::new(),
                };
                let masq_ok = match &f.want {
                    Want::Served(_, m) => masq == BTreeSet::from([*m]),
                    _ => true,
                };
                let served_only = !matches!(f.want, Want::ServedOrRefused(_));
                if eps == want_eps && masq_ok && served_only {
                    continue;
                }
                format!("served by {eps:?}, masquerade {masq:?}")
            }
            ["refused"] if f.want == Want::Refused => continue,
            ["dropped"] if f.want == Want::Dropped => continue,
            ["refused", "served"] => match &f.want {
                Want::ServedOrRefused(e)
                    if eps == e.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>() =>
                {
                    continue
                }
                _ => format!("served by {eps:?} or refused"),
            },
            other => format!("{other:?}"),
        };
        failures.push(format!(
            "{} / {}: kernel showed {:?}, trace predicts {got}",
            f.test, f.what, f.want
        ));
    }
    failures
}

fn ip(a: &str) -> IpAddr {
    a.parse().unwrap()
}

#[test]
fn trace_predicts_every_kernel_flow() {
    use Origin::{External, Node, Pod};
    use Want::*;
    let mut failures = Vec::new();

    // 1. clusterip_spreads_evenly_over_every_endpoint
    let eps = [
        ("10.244.0.11", NODE_A),
        ("10.244.0.12", NODE_A),
        ("10.244.0.13", NODE_A),
    ];
    let wide = [
        ("10.244.0.31", NODE_A),
        ("10.244.0.32", NODE_A),
        ("10.244.0.33", NODE_A),
        ("10.244.0.34", NODE_A),
        ("10.244.0.35", NODE_A),
    ];
    let web: &[&str] = &["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let t = "clusterip_spreads_evenly_over_every_endpoint";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service("web", "10.96.0.10", &eps, &[])
            + &http_service("wide", "10.96.0.11", &wide, &[])),
        &[
            flow(
                t,
                "pod c to wide",
                Pod,
                "10.244.0.20",
                "10.96.0.11",
                80,
                Served(
                    &[
                        "10.244.0.31:8080",
                        "10.244.0.32:8080",
                        "10.244.0.33:8080",
                        "10.244.0.34:8080",
                        "10.244.0.35:8080",
                    ],
                    false,
                ),
            ),
            flow(
                t,
                "pod c",
                Pod,
                "10.244.0.20",
                "10.96.0.10",
                80,
                Served(web, false),
            ),
            flow(
                t,
                "node",
                Node,
                NODE_IP,
                "10.96.0.10",
                80,
                Served(web, true),
            ),
            flow(
                t,
                "pod r on node2",
                Pod,
                "10.244.1.20",
                "10.96.0.10",
                80,
                Served(web, false),
            ),
        ],
    ));

    // 2. target_port_numeric_and_named
    let t = "target_port_numeric_and_named";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service("numeric", "10.96.0.21", &[("10.244.0.21", NODE_A)], &[])
            + &service(
                "named",
                "10.96.0.22",
                "ClusterIP",
                &[
                    SvcPort("http", "TCP", 80, "web", None),
                    SvcPort("metrics", "TCP", 9100, "metrics", None),
                ],
                &[],
                None,
            )
            + &slice(
                "named",
                &[("metrics", "TCP", 9101), ("http", "TCP", 9090)],
                &[("10.244.0.22", NODE_A)],
            )),
        &[
            flow(
                t,
                "numeric",
                Pod,
                "10.244.0.20",
                "10.96.0.21",
                80,
                Served(&["10.244.0.21:8080"], false),
            ),
            flow(
                t,
                "named http",
                Pod,
                "10.244.0.20",
                "10.96.0.22",
                80,
                Served(&["10.244.0.22:9090"], false),
            ),
            flow(
                t,
                "named metrics",
                Pod,
                "10.244.0.20",
                "10.96.0.22",
                9100,
                Served(&["10.244.0.22:9101"], false),
            ),
            flow(
                t,
                "port the Service lacks",
                Pod,
                "10.244.0.20",
                "10.96.0.21",
                8080,
                Refused,
            ),
        ],
    ));

    // 3. udp_clusterip_answers
    let t = "udp_clusterip_answers";
    let udp = |what, origin, src| Flow {
        proto: Proto::Udp,
        ..flow(
            t,
            what,
            origin,
            src,
            "10.96.0.53",
            53,
            match origin {
                Node => ServedAnySource(&["10.244.0.31:5353", "10.244.0.32:5353"]),
                _ => Served(&["10.244.0.31:5353", "10.244.0.32:5353"], false),
            },
        )
    };
    failures.extend(check(
        &(nodes_yaml()
            + &service(
                "dns",
                "10.96.0.53",
                "ClusterIP",
                &[SvcPort("dns", "UDP", 53, "5353", None)],
                &[],
                None,
            )
            + &slice(
                "dns",
                &[("dns", "UDP", 5353)],
                &[("10.244.0.31", NODE_A), ("10.244.0.32", NODE_A)],
            )),
        &[
            udp("udp", Pod, "10.244.0.20"),
            udp("udp from node", Node, NODE_IP),
        ],
    ));

    // 4. hairpin_is_masqueraded
    let t = "hairpin_is_masqueraded";
    failures.extend(check(
        &(nodes_yaml() + &http_service("self", "10.96.0.41", &[("10.244.0.41", NODE_A)], &[])),
        &[
            flow(
                t,
                "hairpin",
                Pod,
                "10.244.0.41",
                "10.96.0.41",
                80,
                Served(&["10.244.0.41:8080"], true),
            ),
            flow(
                t,
                "other pod",
                Pod,
                "10.244.0.42",
                "10.96.0.41",
                80,
                Served(&["10.244.0.41:8080"], false),
            ),
        ],
    ));

    // 5. nodeport_masquerade_and_external_traffic_policy_local
    let t = "nodeport_masquerade_and_external_traffic_policy_local";
    let both = [("10.244.0.51", NODE_A), ("10.244.1.51", NODE_B)];
    let np = |name: &str, vip: &str, node_port: u16, extra: &[&str], eps: &[(&str, &str)]| {
        service(
            name,
            vip,
            "NodePort",
            &[SvcPort("http", "TCP", 80, "8080", Some(node_port))],
            extra,
            None,
        ) + &slice(name, &[("http", "TCP", 8080)], eps)
    };
    let two: &[&str] = &["10.244.0.51:8080", "10.244.1.51:8080"];
    failures.extend(check(
        &(nodes_yaml()
            + &np("cluster", "10.96.0.51", 30080, &[], &both)
            + &np(
                "local",
                "10.96.0.52",
                30081,
                &["externalTrafficPolicy: Local", "healthCheckNodePort: 32100"],
                &both,
            )
            + &np(
                "remote",
                "10.96.0.53",
                30082,
                &["externalTrafficPolicy: Local", "healthCheckNodePort: 32101"],
                &both[1..],
            )),
        &[
            flow(
                t,
                "nodeport",
                External,
                CLIENT_IP,
                NODE_IP,
                30080,
                Served(two, true),
            ),
            flow(
                t,
                "etp local",
                External,
                CLIENT_IP,
                NODE_IP,
                30081,
                Served(&["10.244.0.51:8080"], false),
            ),
            flow(
                t,
                "etp local clusterIP",
                Pod,
                "10.244.0.20",
                "10.96.0.52",
                80,
                Served(two, false),
            ),
            flow(
                t,
                "node port 30082 (Local, endpoints only on node-b)",
                External,
                CLIENT_IP,
                NODE_IP,
                30082,
                Dropped,
            ),
            flow(
                t,
                "remote-only clusterIP",
                Pod,
                "10.244.0.20",
                "10.96.0.53",
                80,
                Served(&["10.244.1.51:8080"], false),
            ),
        ],
    ));

    // 6. loadbalancer_source_ranges
    let t = "loadbalancer_source_ranges";
    failures.extend(check(
        &(nodes_yaml()
            + &service(
                "shop",
                "10.96.0.61",
                "LoadBalancer",
                &[SvcPort("https", "TCP", 443, "8080", Some(30443))],
                &["loadBalancerSourceRanges: [198.51.100.0/24]"],
                Some("203.0.113.10"),
            )
            + &slice(
                "shop",
                &[("https", "TCP", 8080)],
                &[("10.244.0.61", NODE_A)],
            )),
        &[
            flow(
                t,
                "LB IP from inside the ranges",
                External,
                "198.51.100.7",
                "203.0.113.10",
                443,
                ServedAnySource(&["10.244.0.61:8080"]),
            ),
            flow(
                t,
                "LB IP from outside the ranges",
                External,
                CLIENT_IP,
                "203.0.113.10",
                443,
                Dropped,
            ),
            flow(
                t,
                "node port open to everyone",
                External,
                CLIENT_IP,
                NODE_IP,
                30443,
                ServedAnySource(&["10.244.0.61:8080"]),
            ),
        ],
    ));

    // 7. no_endpoints_rejects_at_once
    let t = "no_endpoints_rejects_at_once";
    failures.extend(check(
        &(nodes_yaml() + &http_service("empty", "10.96.0.71", &[], &[])),
        &[
            flow(t, "pod", Pod, "10.244.0.20", "10.96.0.71", 80, Refused),
            flow(t, "node", Node, NODE_IP, "10.96.0.71", 80, Refused),
        ],
    ));

    // 8. session_affinity_client_ip: a client not seen before reaches any endpoint.
    let t = "session_affinity_client_ip";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service(
                "sticky",
                "10.96.0.81",
                &[
                    ("10.244.0.81", NODE_A),
                    ("10.244.0.82", NODE_A),
                    ("10.244.0.83", NODE_A),
                ],
                &[
                    "sessionAffinity: ClientIP",
                    "sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}",
                ],
            )),
        &[flow(
            t,
            "c0",
            Pod,
            "10.244.0.100",
            "10.96.0.81",
            80,
            Served(
                &["10.244.0.81:8080", "10.244.0.82:8080", "10.244.0.83:8080"],
                false,
            ),
        )],
    ));

    // 8b. Session affinity as upstream (per-endpoint sets): a client not seen before
    // reaches any endpoint; what later connections reuse is the datapath's, not the
    // tracer's (its dynamic sets are empty).
    let sticky3 = [
        "sessionAffinity: ClientIP",
        "sessionAffinityConfig: {clientIP: {timeoutSeconds: 3}}",
    ];
    let t = "a_busy_affinity_client_stays_past_the_timeout";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service(
                "sticky",
                "10.96.0.111",
                &[
                    ("10.244.0.111", NODE_A),
                    ("10.244.0.112", NODE_A),
                    ("10.244.0.113", NODE_A),
                    ("10.244.0.114", NODE_A),
                ],
                &sticky3,
            )),
        &[flow(
            t,
            "busy",
            Pod,
            "10.244.0.120",
            "10.96.0.111",
            80,
            Served(
                &[
                    "10.244.0.111:8080",
                    "10.244.0.112:8080",
                    "10.244.0.113:8080",
                    "10.244.0.114:8080",
                ],
                false,
            ),
        )],
    ));
    let t = "affinity_survives_scale_up_full_sync_and_forgets_only_a_gone_endpoint";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service(
                "sticky",
                "10.96.0.131",
                &[("10.244.0.131", NODE_A), ("10.244.0.132", NODE_A)],
                &["sessionAffinity: ClientIP"],
            )),
        &[flow(
            t,
            "c0",
            Pod,
            "10.244.0.140",
            "10.96.0.131",
            80,
            Served(&["10.244.0.131:8080", "10.244.0.132:8080"], false),
        )],
    ));
    let t = "two_affinity_services_do_not_share_capacity";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service("sa", "10.96.0.151", &[("10.244.0.151", NODE_A)], &sticky3)
            + &http_service("sb", "10.96.0.152", &[("10.244.0.152", NODE_A)], &sticky3)),
        &[
            flow(
                t,
                "sa",
                Pod,
                "10.244.0.160",
                "10.96.0.151",
                80,
                Served(&["10.244.0.151:8080"], false),
            ),
            flow(
                t,
                "sb",
                Pod,
                "10.244.0.160",
                "10.96.0.152",
                80,
                Served(&["10.244.0.152:8080"], false),
            ),
        ],
    ));

    // 9. endpoint_change_is_hitless: states A and B.
    let t = "endpoint_change_is_hitless";
    let others = http_service("other", "10.96.0.95", &[("10.244.0.93", NODE_A)], &[])
        + &http_service("nothing", "10.96.0.96", &[], &[]);
    failures.extend(check(
        &(nodes_yaml()
            + &http_service(
                "live",
                "10.96.0.91",
                &[("10.244.0.91", NODE_A), ("10.244.0.92", NODE_A)],
                &[],
            )
            + &others),
        &[flow(
            t,
            "state A",
            Pod,
            "10.244.0.20",
            "10.96.0.91",
            80,
            Served(&["10.244.0.91:8080", "10.244.0.92:8080"], false),
        )],
    ));
    failures.extend(check(
        &(nodes_yaml()
            + &http_service(
                "live",
                "10.96.0.91",
                &[("10.244.0.91", NODE_A), ("10.244.0.93", NODE_A)],
                &[],
            )
            + &others),
        &[
            flow(
                t,
                "state B",
                Pod,
                "10.244.0.20",
                "10.96.0.91",
                80,
                Served(&["10.244.0.91:8080", "10.244.0.93:8080"], false),
            ),
            flow(
                t,
                "untouched other",
                Pod,
                "10.244.0.20",
                "10.96.0.95",
                80,
                Served(&["10.244.0.93:8080"], false),
            ),
            flow(
                t,
                "untouched nothing",
                Pod,
                "10.244.0.20",
                "10.96.0.96",
                80,
                Refused,
            ),
        ],
    ));

    // 10. refused_transaction_leaves_previous_ruleset_serving: states A and B.
    let t = "refused_transaction_leaves_previous_ruleset_serving";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service("svc", "10.96.0.111", &[("10.244.0.111", NODE_A)], &[])
            + &http_service("gone-in-b", "10.96.0.112", &[("10.244.0.111", NODE_A)], &[])),
        &[flow(
            t,
            "state A",
            Pod,
            "10.244.0.20",
            "10.96.0.111",
            80,
            Served(&["10.244.0.111:8080"], false),
        )],
    ));
    failures.extend(check(
        &(nodes_yaml()
            + &http_service("svc", "10.96.0.111", &[("10.244.0.112", NODE_A)], &[])
            + &http_service("new-in-b", "10.96.0.113", &[("10.244.0.112", NODE_A)], &[])),
        &[flow(
            t,
            "state B",
            Pod,
            "10.244.0.20",
            "10.96.0.111",
            80,
            Served(&["10.244.0.112:8080"], false),
        )],
    ));

    // 11. cleanup_removes_only_our_tables
    let t = "cleanup_removes_only_our_tables";
    failures.extend(check(
        &(nodes_yaml() + &http_service("svc", "10.96.0.121", &[("10.244.0.121", NODE_A)], &[])),
        &[flow(
            t,
            "before cleanup",
            Pod,
            "10.244.0.20",
            "10.96.0.121",
            80,
            Served(&["10.244.0.121:8080"], false),
        )],
    ));

    // 12. two_endpoints_spread_evenly_among_counts_up_to_500: the same filler Services, so
    // the selection chains and endpoint maps of every count 1..40, 50..500 exist.
    let t = "two_endpoints_spread_evenly_among_counts_up_to_500";
    let mut yaml = nodes_yaml()
        + &http_service(
            "dns",
            "10.96.0.10",
            &[("10.244.0.41", NODE_A), ("10.244.0.42", NODE_A)],
            &[],
        );
    let mut next = 0usize;
    let sizes: Vec<usize> = (1..=40).chain((50..=500).step_by(10)).collect();
    for (j, n) in sizes.iter().enumerate() {
        let ips: Vec<String> = (0..*n)
            .map(|_| {
                next += 1;
                format!("10.200.{}.{}", next / 250, next % 250 + 1)
            })
            .collect();
        let eps: Vec<(&str, &str)> = ips.iter().map(|ip| (ip.as_str(), NODE_B)).collect();
        let vip = format!("10.96.{}.{}", 1 + j / 250, j % 250 + 1);
        yaml += &http_service(&format!("filler-{n}"), &vip, &eps, &[]);
    }
    failures.extend(check(
        &yaml,
        &[flow(
            t,
            "pod c to dns among 87 endpoint counts",
            Pod,
            "10.244.0.20",
            "10.96.0.10",
            80,
            ServedAnySource(&["10.244.0.41:8080", "10.244.0.42:8080"]),
        )],
    ));

    // 13. a_selection_miss_is_rejected_not_forwarded: the test deletes slot 1 of the
    // Service's entries in service-endpoints-2 and nodeport-endpoints-2 by hand; traced on
    // the IR without them.
    let t = "a_selection_miss_is_rejected_not_forwarded";
    failures.extend(check_edited(
        &(nodes_yaml()
            + &service(
                "miss",
                "10.96.0.72",
                "NodePort",
                &[SvcPort("http", "TCP", 80, "8080", Some(30072))],
                &[],
                None,
            )
            + &slice(
                "miss",
                &[("http", "TCP", 8080)],
                &[("10.244.0.51", NODE_A), ("10.244.0.52", NODE_A)],
            )),
        &[
            flow(
                t,
                "ClusterIP from a pod, slot 1 deleted",
                Pod,
                "10.244.0.20",
                "10.96.0.72",
                80,
                ServedOrRefused(&["10.244.0.51:8080"]),
            ),
            flow(
                t,
                "NodePort from outside, slot 1 deleted",
                External,
                CLIENT_IP,
                NODE_IP,
                30072,
                ServedOrRefused(&["10.244.0.51:8080"]),
            ),
        ],
        |rs| {
            use ruleset::ir::Value;
            for (name, key) in [
                (
                    "service-endpoints-2",
                    vec![
                        Value::Addr(ip("10.96.0.72")),
                        Value::Proto(Proto::Tcp),
                        Value::Port(80),
                        Value::Slot(1),
                    ],
                ),
                (
                    "nodeport-endpoints-2",
                    vec![Value::Proto(Proto::Tcp), Value::Port(30072), Value::Slot(1)],
                ),
            ] {
                let map = (rs.tables[0].sets.iter_mut())
                    .find(|s| s.name == name)
                    .unwrap_or_else(|| panic!("the map {name}"));
                assert!(
                    map.elements.remove(&key).is_some(),
                    "slot 1 was programmed in {name}"
                );
            }
        },
    ));

    // 13b. a_replaced_endpoint_takes_its_slot_and_the_spread_stays_even: the agent's
    // Desired programs the Service with s1..s3, then with s2 replaced by s4; the kernel
    // holds the second state (slots in another order than a fresh render, the same
    // endpoints per key), and pod c reaches s1, s3 and s4.
    let t = "a_replaced_endpoint_takes_its_slot_and_the_spread_stays_even";
    failures.extend(check(
        &(nodes_yaml()
            + &http_service(
                "slots",
                "10.96.0.81",
                &[
                    ("10.244.0.81", NODE_A),
                    ("10.244.0.83", NODE_A),
                    ("10.244.0.84", NODE_A),
                ],
                &[],
            )),
        &[flow(
            t,
            "pod c after s2 was replaced by s4",
            Pod,
            "10.244.0.20",
            "10.96.0.81",
            80,
            ServedAnySource(&["10.244.0.81:8080", "10.244.0.83:8080", "10.244.0.84:8080"]),
        )],
    ));

    // 14. a_shared_external_ip_serves_the_winner_only: b with 3, then 2 endpoints.
    let t = "a_shared_external_ip_serves_the_winner_only";
    let ext = ["externalIPs:", "- 198.51.100.7"];
    let b = ["10.244.0.63", "10.244.0.64", "10.244.0.65"];
    for (b_count, what) in [
        (3, "pod c to the shared external IP, b with 3"),
        (2, "pod c to the shared external IP, b with 2"),
    ] {
        let b_eps: Vec<(&str, &str)> = b[..b_count].iter().map(|ip| (*ip, NODE_A)).collect();
        failures.extend(check(
            &(nodes_yaml()
                + &http_service(
                    "a-shared",
                    "10.96.0.81",
                    &[("10.244.0.61", NODE_A), ("10.244.0.62", NODE_A)],
                    &ext,
                )
                + &http_service("b-shared", "10.96.0.82", &b_eps, &ext)),
            &[flow(
                t,
                what,
                Pod,
                "10.244.0.20",
                "198.51.100.7",
                80,
                ServedAnySource(&["10.244.0.61:8080", "10.244.0.62:8080"]),
            )],
        ));
    }

    // detect_local_interface_modes_decide_masquerade: the pod's veth is vp<N>.
    let t = "detect_local_interface_modes_decide_masquerade";
    let yaml = nodes_yaml() + &http_service("web", "10.96.0.61", &[("10.244.0.61", NODE_A)], &[]);
    for (detect, masqueraded) in [
        (LocalDetect::InterfaceNamePrefix("vp".into()), false),
        (LocalDetect::InterfaceNamePrefix("cali".into()), true),
        (LocalDetect::BridgeInterface("vp1".into()), false),
        (LocalDetect::BridgeInterface("cni0".into()), true),
    ] {
        failures.extend(check_with(
            &yaml,
            &[flow(
                t,
                "pod to ClusterIP",
                Pod,
                "10.244.0.62",
                "10.96.0.61",
                80,
                Served(&["10.244.0.61:8080"], masqueraded),
            )],
            detect,
            Some("vp1"),
        ));
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every kernel test that sends traffic has its flows above: a new test in kernel.rs must
/// be added here (or to the list of tests that send none).
#[test]
fn every_kernel_test_with_traffic_is_in_the_oracle() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let kernel = std::fs::read_to_string(root.join("integration/kernel.rs")).unwrap();
    let oracle = std::fs::read_to_string(root.join("integration/trace_oracle.rs")).unwrap();
    // sends no packets: compares listings only
    let no_traffic = [
        "apply_programs_exactly_what_render_prints",
        "apply_of_an_empty_input_changes_nothing_unless_allowed",
        // traces the kernel's tables with `trace --live`; sends no packet
        "trace_live_runs_in_the_image_rootfs_without_nft",
    ];
    let mut missing = Vec::new();
    let mut lines = kernel.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "#[test]" {
            continue;
        }
        let Some(f) = lines.next() else { break };
        let name = f
            .trim()
            .trim_start_matches("fn ")
            .split('(')
            .next()
            .unwrap_or("")
            .to_string();
        if !no_traffic.contains(&name.as_str()) && !oracle.contains(&format!("let t = \"{name}\";"))
        {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "kernel tests whose flows the trace oracle lacks: {missing:?}"
    );
}
