//! Property tests of the whole render pipeline on arbitrary (mostly broken) cluster
//! objects: whatever the input, rendering never panics, is deterministic, prints text our
//! own parser reads back to the same IR, references only chains and sets that exist,
//! keeps set keys unique and well-typed, and keeps the fixed table layout.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube_nftproxy::model::options::{LocalDetect, NodePortAddresses, Options};
use kube_nftproxy::nft::{parse, text};
use kube_nftproxy::ruleset::ir::{
    ElementData, Expr, Family, KeyType, MapData, Ruleset, Table, Value as IrValue, Verdict,
};
use kube_nftproxy::ruleset::render;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// Value pools. Small pools make collisions (duplicate names, a slice matching its Service,
// an endpoint on this node) likely.

fn long(n: usize) -> String {
    "a".repeat(n)
}

/// Mostly one of a few valid names (so objects find each other), sometimes an invalid one.
fn names() -> BoxedStrategy<Value> {
    let bad: Vec<String> = ["Bad_Name", "", "-x", "x-", "ünï", "a b", "x/y", "a\"q"]
        .iter()
        .map(|s| s.to_string())
        .chain([long(64), long(300)])
        .collect();
    prop_oneof![
        8 => select(vec!["a".to_string(), "b".into(), "svc-1".into(), long(63)]),
        1 => select(bad),
    ]
    .prop_map(Value::String)
    .boxed()
}

fn namespaces() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => select(vec!["default".to_string(), "ns".into()]),
        1 => select(vec!["".to_string(), "NS".into(), "a.b".into(), long(63), long(64)]),
    ]
    .prop_map(Value::String)
    .boxed()
}

const GOOD_VIPS: &[&str] = &[
    "10.96.0.1",
    "10.96.0.2",
    "10.96.0.10",
    "fd00:96::1",
    "fd00:96::2",
];

const ODD_VIPS: &[&str] = &[
    "192.168.0.10",
    "::1",
    "0.0.0.0",
    "255.255.255.255",
    "127.0.0.1",
    "::ffff:10.96.0.1",
    "None",
    "",
    " 10.96.0.3 ",
    "10.96.0.300",
    "garbage",
    "10.96.0.0/24",
];

/// Mostly a plausible VIP, sometimes an odd or invalid one.
fn vip() -> BoxedStrategy<Value> {
    prop_oneof![5 => s(GOOD_VIPS), 1 => s(ODD_VIPS)].boxed()
}

const EP_IPS: &[&str] = &[
    "10.244.0.1",
    "10.244.0.1",
    "10.244.0.2",
    "10.244.0.2",
    "10.244.1.2",
    "10.244.1.1",
    "10.96.0.1",
    "fd00:244::1",
    "fd00:244::1",
    "fd00:244::2",
    "bad",
    "",
    " 10.244.0.3",
    "example.com",
];

const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    " 192.168.0.0/16 ",
    "0.0.0.0/0",
    "::/0",
    "fd00::/8",
    "garbage",
    "10.0.0.1",
    "10.0.0.0/33",
    "1.2.3.4/24",
    "1.2.3.4 /24",
    "",
];

const NODES: &[&str] = &["node-a", "node-b", ""];
const ZONES: &[&str] = &["zone-a", "zone-b", ""];

fn s(pool: &'static [&'static str]) -> impl Strategy<Value = Value> {
    select(pool).prop_map(|x| json!(x))
}

/// A value of the wrong type for whatever field it lands in.
fn junk() -> impl Strategy<Value = Value> {
    select(vec![
        json!(1),
        json!(-7),
        json!(2.5),
        json!("x"),
        json!(true),
        json!([1, "a"]),
        json!({"a": 1}),
        json!(null),
    ])
}

/// Usually `good`, sometimes a value of the wrong type.
fn or_junk(j: u32, good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    if j == 0 {
        good.boxed()
    } else {
        prop_oneof![20 => good, j => junk()].boxed()
    }
}

/// A field that may be absent.
fn opt(j: u32, v: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    proptest::option::weighted(0.8, or_junk(j, v)).boxed()
}

/// A field that is nearly always there.
fn often(j: u32, v: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    proptest::option::weighted(0.95, or_junk(j, v)).boxed()
}

fn list(v: impl Strategy<Value = Value> + 'static, max: usize) -> BoxedStrategy<Value> {
    proptest::collection::vec(v, 0..=max)
        .prop_map(Value::Array)
        .boxed()
}

fn obj(fields: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

fn port_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => select(vec![80i64, 443, 8080, 53, 1, 65535]).prop_map(|p| json!(p)),
        1 => select(vec![0i64, 65536, 70000, -1, i64::from(i32::MAX)]).prop_map(|p| json!(p)),
        1 => (1i64..=65535).prop_map(|p| json!(p)),
    ]
}

fn node_port() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => select(vec![30080i64, 30081, 30443]).prop_map(|p| json!(p)),
        1 => select(vec![0i64, 70000, -5]).prop_map(|p| json!(p)),
    ]
}

fn protocol() -> impl Strategy<Value = Value> {
    s(&[
        "TCP", "TCP", "TCP", "TCP", "TCP", "TCP", "UDP", "UDP", "SCTP", "tcp", "ICMP", "",
    ])
}

fn port_name() -> impl Strategy<Value = Value> {
    s(&["", "", "http", "http", "https", "Bad_Port"])
}

fn metadata(j: u32, with_labels: BoxedStrategy<Option<Value>>) -> impl Strategy<Value = Value> {
    (often(j, names()), often(j, namespaces()), with_labels)
        .prop_map(|(n, ns, l)| obj(vec![("name", n), ("namespace", ns), ("labels", l)]))
}

fn service_labels() -> BoxedStrategy<Option<Value>> {
    proptest::option::weighted(
        0.1,
        select(vec![
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
            json!({"service.kubernetes.io/headless": ""}),
            json!({"app": "x"}),
        ]),
    )
    .boxed()
}

fn service(j: u32) -> impl Strategy<Value = Value> {
    let port = (
        opt(j, port_name()),
        or_junk(j, port_number()).prop_map(Some),
        opt(j, protocol()),
        opt(j, node_port()),
        opt(j, prop_oneof![port_number(), s(&["http", "bad name"])]),
    )
        .prop_map(|(name, port, protocol, node_port, target)| {
            obj(vec![
                ("name", name),
                ("port", port),
                ("protocol", protocol),
                ("nodePort", node_port),
                ("targetPort", target),
            ])
        });
    let affinity_config = opt(
        j,
        prop_oneof![
            select(vec![
                -1i64,
                0,
                1,
                59,
                60,
                5400,
                10800,
                86400,
                86401,
                i64::from(i32::MAX)
            ])
            .prop_map(|t| json!({"clientIP": {"timeoutSeconds": t}})),
            Just(json!({"clientIP": {}})),
        ],
    );
    let spec = (
        opt(
            j,
            s(&[
                "ClusterIP",
                "NodePort",
                "LoadBalancer",
                "ExternalName",
                "Bogus",
                "",
            ]),
        ),
        often(j, vip()),
        proptest::option::weighted(0.3, or_junk(j, list(vip(), 3))).boxed(),
        often(
            j,
            proptest::collection::vec(port, 1..=3).prop_map(Value::Array),
        ),
        opt(j, list(vip(), 2)),
        opt(j, s(&["ClientIP", "None", "Bogus"])),
        affinity_config,
        opt(j, s(&["Local", "Cluster", "Bogus"])),
        opt(j, s(&["Local", "Cluster", "Bogus"])),
        opt(j, list(s(CIDRS), 3)),
    )
        .prop_map(|(ty, cip, cips, ports, ext, aff, affc, etp, itp, ranges)| {
            obj(vec![
                ("type", ty),
                ("clusterIP", cip),
                ("clusterIPs", cips),
                ("ports", ports),
                ("externalIPs", ext),
                ("sessionAffinity", aff),
                ("sessionAffinityConfig", affc),
                ("externalTrafficPolicy", etp),
                ("internalTrafficPolicy", itp),
                ("loadBalancerSourceRanges", ranges),
            ])
        });
    let ingress = (opt(j, vip()), opt(j, s(&["VIP", "Proxy", "Bogus"])))
        .prop_map(|(ip, mode)| obj(vec![("ip", ip), ("ipMode", mode), ("hostname", None)]));
    let status = opt(
        j,
        list(ingress, 3).prop_map(|i| json!({"loadBalancer": {"ingress": i}})),
    );
    (metadata(j, service_labels()), or_junk(j, spec), status).prop_map(|(md, spec, status)| {
        obj(vec![
            ("apiVersion", Some(json!("v1"))),
            ("kind", Some(json!("Service"))),
            ("metadata", Some(md)),
            ("spec", Some(spec)),
            ("status", status),
        ])
    })
}

fn endpoint_slice(j: u32) -> impl Strategy<Value = Value> {
    let labels = proptest::option::weighted(
        0.9,
        or_junk(
            j,
            (opt(j, names()), any::<bool>()).prop_map(|(n, extra)| {
                let mut l = obj(vec![("kubernetes.io/service-name", n)]);
                if extra {
                    l["endpointslice.kubernetes.io/managed-by"] = json!("x");
                }
                l
            }),
        ),
    )
    .boxed();
    let conditions = (
        opt(j, proptest::bool::weighted(0.8).prop_map(Value::Bool)),
        opt(j, any::<bool>().prop_map(Value::Bool)),
        opt(j, proptest::bool::weighted(0.2).prop_map(Value::Bool)),
    )
        .prop_map(|(r, s, t)| obj(vec![("ready", r), ("serving", s), ("terminating", t)]));
    let hints =
        list(s(ZONES).prop_map(|z| json!({ "name": z })), 2).prop_map(|z| json!({ "forZones": z }));
    let endpoint = (
        or_junk(
            j,
            prop_oneof![
                6 => proptest::collection::vec(s(EP_IPS), 1..=2).prop_map(Value::Array),
                1 => Just(json!([])),
            ],
        ),
        opt(j, conditions),
        opt(j, s(NODES)),
        opt(j, hints),
        opt(j, s(ZONES)),
    )
        .prop_map(|(addrs, c, node, hints, zone)| {
            obj(vec![
                ("addresses", Some(addrs)),
                ("conditions", c),
                ("nodeName", node),
                ("hints", hints),
                ("zone", zone),
            ])
        });
    let port = (
        opt(j, port_name()),
        opt(j, port_number()),
        opt(j, protocol()),
    )
        .prop_map(|(n, p, pr)| obj(vec![("name", n), ("port", p), ("protocol", pr)]));
    (
        metadata(j, labels),
        or_junk(
            j,
            s(&[
                "IPv4", "IPv4", "IPv4", "IPv4", "IPv6", "IPv6", "FQDN", "Bogus",
            ]),
        ),
        list(endpoint, 4),
        opt(j, list(port, 3)),
    )
        .prop_map(|(md, at, eps, ports)| {
            obj(vec![
                ("apiVersion", Some(json!("discovery.k8s.io/v1"))),
                ("kind", Some(json!("EndpointSlice"))),
                ("metadata", Some(md)),
                ("addressType", Some(at)),
                ("endpoints", Some(eps)),
                ("ports", ports),
            ])
        })
}

fn endpoints(j: u32) -> impl Strategy<Value = Value> {
    let addr = (or_junk(j, s(EP_IPS)), opt(j, s(NODES)))
        .prop_map(|(ip, node)| obj(vec![("ip", Some(ip)), ("nodeName", node)]));
    let port = (
        opt(j, port_name()),
        or_junk(j, port_number()),
        opt(j, protocol()),
    )
        .prop_map(|(n, p, pr)| obj(vec![("name", n), ("port", Some(p)), ("protocol", pr)]));
    let subset = (
        opt(j, list(addr.clone(), 3)),
        opt(j, list(addr, 2)),
        opt(j, list(port, 2)),
    )
        .prop_map(|(a, nr, p)| {
            obj(vec![
                ("addresses", a),
                ("notReadyAddresses", nr),
                ("ports", p),
            ])
        });
    (metadata(j, Just(None).boxed()), opt(j, list(subset, 2))).prop_map(|(md, subsets)| {
        obj(vec![
            ("apiVersion", Some(json!("v1"))),
            ("kind", Some(json!("Endpoints"))),
            ("metadata", Some(md)),
            ("subsets", subsets),
        ])
    })
}

fn node(j: u32) -> impl Strategy<Value = Value> {
    let addr = (
        s(&["InternalIP", "ExternalIP", "Hostname", "Bogus"]),
        or_junk(
            j,
            s(&[
                "192.168.0.10",
                "192.168.0.11",
                "fd00:192::10",
                " 10.1.1.1",
                "bad",
                "",
            ]),
        ),
    )
        .prop_map(|(t, a)| json!({"type": t, "address": a}));
    (
        s(NODES),
        opt(
            j,
            s(ZONES).prop_map(|z| json!({ "topology.kubernetes.io/zone": z })),
        ),
        opt(j, list(addr, 3)),
    )
        .prop_map(|(name, labels, addrs)| {
            obj(vec![
                ("apiVersion", Some(json!("v1"))),
                ("kind", Some(json!("Node"))),
                (
                    "metadata",
                    Some(obj(vec![("name", Some(name)), ("labels", labels)])),
                ),
                ("status", addrs.map(|a| json!({ "addresses": a }))),
            ])
        })
}

fn service_cidr(j: u32) -> impl Strategy<Value = Value> {
    (
        s(&["kubernetes", "extra", ""]),
        opt(j, list(s(CIDRS), 2).prop_map(|c| json!({ "cidrs": c }))),
    )
        .prop_map(|(name, spec)| {
            obj(vec![
                ("apiVersion", Some(json!("networking.k8s.io/v1"))),
                ("kind", Some(json!("ServiceCIDR"))),
                ("metadata", Some(json!({ "name": name }))),
                ("spec", spec),
            ])
        })
}

/// A Service with EndpointSlices (or an Endpoints object) that mostly belong to it: the
/// slices copy its namespace, name and port names, so the endpoint paths are exercised.
fn linked(j: u32) -> impl Strategy<Value = Vec<Value>> {
    (
        service(j),
        proptest::collection::vec((endpoint_slice(j), 0u8..6, 1000i64..1003), 0..3),
        proptest::option::weighted(0.2, endpoints(j)),
    )
        .prop_map(|(svc, slices, legacy)| {
            let ns = svc.pointer("/metadata/namespace").cloned();
            let name = svc.pointer("/metadata/name").cloned();
            let ports: Vec<Value> = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let copy_ports = |target_port: i64| -> Value {
                ports
                    .iter()
                    .map(|p| {
                        let mut q = json!({ "port": target_port });
                        for k in ["name", "protocol"] {
                            if let Some(v) = p.get(k) {
                                q[k] = v.clone();
                            }
                        }
                        q
                    })
                    .collect()
            };
            let mut out = vec![svc.clone()];
            for (mut slice, how, target_port) in slices {
                if how > 0 && slice["metadata"].is_object() {
                    if let Some(ns) = &ns {
                        slice["metadata"]["namespace"] = ns.clone();
                    }
                    if let Some(name) = &name {
                        slice["metadata"]["labels"] = json!({ "kubernetes.io/service-name": name });
                    }
                }
                // A junk document may not be an object; IndexMut would panic on it.
                if how > 1 && slice.is_object() {
                    slice["ports"] = copy_ports(target_port);
                }
                out.push(slice);
            }
            if let Some(mut eps) = legacy {
                if eps["metadata"].is_object() {
                    eps["metadata"]["namespace"] = ns.clone().unwrap_or(Value::Null);
                    eps["metadata"]["name"] = name.clone().unwrap_or(Value::Null);
                }
                if let Some(subsets) = eps.get_mut("subsets").and_then(Value::as_array_mut) {
                    for sub in subsets.iter_mut().filter(|s| s.is_object()) {
                        sub["ports"] = copy_ports(8080);
                    }
                }
                out.push(eps);
            }
            out
        })
}

/// One object; one in five may have fields of the wrong type (which makes the whole
/// object fail to decode, so the others stay clean to reach the renderer).
fn document() -> impl Strategy<Value = Vec<Value>> {
    prop_oneof![
        6 => linked(0),
        1 => linked(1),
        2 => service(0).prop_map(|d| vec![d]),
        1 => service(1).prop_map(|d| vec![d]),
        2 => endpoint_slice(0).prop_map(|d| vec![d]),
        1 => endpoint_slice(1).prop_map(|d| vec![d]),
        1 => endpoints(1).prop_map(|d| vec![d]),
        1 => node(0).prop_map(|d| vec![d]),
        1 => node(1).prop_map(|d| vec![d]),
        1 => service_cidr(0).prop_map(|d| vec![d]),
        1 => junk().prop_map(|d| vec![d]),
    ]
}

/// The input files' text: YAML documents (sometimes one `kind: List`), or JSON.
fn cluster_text() -> impl Strategy<Value = String> {
    (proptest::collection::vec(document(), 0..10), 0u8..4).prop_map(|(docs, form)| {
        let docs: Vec<Value> = docs.into_iter().flatten().collect();
        match form {
            0 => serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": docs}))
                .unwrap(),
            1 => serde_yaml::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": docs}))
                .unwrap(),
            _ => docs
                .iter()
                .map(|d| serde_yaml::to_string(d).unwrap())
                .collect::<Vec<_>>()
                .join("---\n"),
        }
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn options() -> impl Strategy<Value = Options> {
    let node_ips = proptest::collection::vec(
        select(vec![
            "192.168.0.10",
            "192.168.0.11",
            "fd00:192::10",
            "10.244.0.1",
        ])
        .prop_map(ip),
        0..3,
    );
    let cidrs = || {
        proptest::collection::vec(
            select(vec![
                "10.244.0.0/16",
                "10.96.0.0/12",
                "fd00:244::/64",
                "fd00:96::/108",
                "0.0.0.0/0",
            ])
            .prop_map(net),
            0..3,
        )
    };
    let nodeport = prop_oneof![
        Just(NodePortAddresses::Primary),
        proptest::collection::vec(
            select(vec![
                "0.0.0.0/0",
                "::/0",
                "192.168.0.0/24",
                "fd00:192::/64",
                "10.0.0.0/8"
            ])
            .prop_map(net),
            0..3,
        )
        .prop_map(NodePortAddresses::Cidrs),
    ];
    (
        select(NODES),
        node_ips,
        cidrs(),
        nodeport,
        cidrs(),
        any::<bool>(),
        0u8..=31,
        prop_oneof![
            Just(LocalDetect::ClusterCidr),
            Just(LocalDetect::NodeCidr),
            Just(LocalDetect::InterfaceNamePrefix("veth".into())),
            Just(LocalDetect::BridgeInterface("cni0".into())),
        ],
    )
        .prop_map(
            |(
                host,
                node_ips,
                cluster_cidrs,
                nodeport_addresses,
                service_cidrs,
                masquerade_all,
                masquerade_bit,
                detect_local,
            )| Options {
                hostname: host.to_string(),
                node_ips,
                host_addresses: vec![],
                cluster_cidrs,
                nodeport_addresses,
                service_cidrs,
                masquerade_all,
                masquerade_bit,
                detect_local,
            },
        )
}

// ---------------------------------------------------------------------------------------
// Checks

fn render_text(input: &str, opts: &Options) -> (Ruleset, String) {
    let mut notes = Vec::new();
    let objects = render::read_sources([("cluster.yaml", input)], &mut notes)
        .unwrap_or_else(|e| panic!("generated input does not read: {e}\n{input}"));
    let (rs, _) = render::ruleset(&objects, opts);
    let text = text::script(&rs);
    (rs, text)
}

/// Whether a set is one of the per-endpoint-count maps (`service-endpoints-3`): their
/// number is bounded by the distinct endpoint counts in use, not by the Services.
fn per_count(name: &str) -> bool {
    name.rsplit_once('-')
        .is_some_and(|(base, n)| base.ends_with("-endpoints") && n.parse::<u32>().is_ok())
}

/// The dynamic set of one endpoint of a Service port with session affinity: only those
/// Services add sets (see rules/README.md).
fn per_endpoint(name: &str) -> bool {
    name.starts_with("affinity-")
}

/// Set names (but the per-count maps and per-endpoint affinity sets) and base chain names of each table of an
/// empty-cluster render.
fn layout(t: &Table) -> (Vec<String>, Vec<String>) {
    (
        t.sets
            .iter()
            .filter(|s| !per_count(&s.name) && !per_endpoint(&s.name))
            .map(|s| s.name.clone())
            .collect(),
        t.chains
            .iter()
            .filter(|c| c.base.is_some())
            .map(|c| c.name.clone())
            .collect(),
    )
}

fn empty_layout() -> (Vec<String>, Vec<String>) {
    let (rs, _) = render_text("", &Options::default());
    assert_eq!(rs.tables.len(), 1);
    layout(&rs.tables[0])
}

fn verdict_targets<'a>(v: &'a Verdict, chains: &mut Vec<&'a str>, sets: &mut Vec<&'a str>) {
    match v {
        Verdict::Jump(c) | Verdict::Goto(c) => chains.push(c),
        Verdict::Vmap { map, .. } | Verdict::DnatMap { map, .. } => sets.push(map),
        _ => {}
    }
}

fn key_type_of(v: &IrValue) -> KeyType {
    match v {
        IrValue::Addr(_) => KeyType::Addr,
        IrValue::Proto(_) => KeyType::Proto,
        IrValue::Port(_) => KeyType::Service,
        IrValue::Slot(_) => KeyType::Slot,
    }
}

fn check_values(t: &Table, what: &str, types: &[KeyType], vals: &[IrValue]) -> Result<(), String> {
    if types.len() != vals.len() {
        return Err(format!(
            "{what}: {} values for a type of {}",
            vals.len(),
            types.len()
        ));
    }
    for (ty, v) in types.iter().zip(vals) {
        if key_type_of(v) != *ty {
            return Err(format!("{what}: value {v:?} is not a {ty:?}"));
        }
        if let IrValue::Addr(a) = v {
            if Family::of(a) != t.family {
                return Err(format!("{what}: address {a} in a {:?} table", t.family));
            }
        }
    }
    Ok(())
}

fn check_table(t: &Table, expected_layout: &(Vec<String>, Vec<String>)) -> Result<(), String> {
    let chain_names: BTreeSet<&str> = t.chains.iter().map(|c| c.name.as_str()).collect();
    if chain_names.len() != t.chains.len() {
        return Err("two chains share a name".into());
    }
    let set_names: BTreeMap<&str, bool> = t
        .sets
        .iter()
        .map(|s| (s.name.as_str(), s.is_map()))
        .collect();
    for name in t
        .chains
        .iter()
        .map(|c| &c.name)
        .chain(t.sets.iter().map(|s| &s.name))
    {
        if name.len() > 255 {
            return Err(format!("name longer than nft allows: {name}"));
        }
    }
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    for c in &t.chains {
        for r in &c.rules {
            if let Some(v) = &r.verdict {
                verdict_targets(v, &mut chains, &mut sets);
            }
            for e in &r.exprs {
                match e {
                    Expr::Lookup { set, .. } => sets.push(set),
                    Expr::Update { set, .. } => sets.push(set),
                    _ => {}
                }
            }
        }
    }
    for s in &t.sets {
        // Keys are unique by construction (elements are a map by key).
        for (key, data) in &s.elements {
            check_values(t, &format!("set {}", s.name), &s.key, key)?;
            match (&s.data, data) {
                (None, None) => {}
                (Some(MapData::Verdict), Some(ElementData::Verdict(v))) => {
                    verdict_targets(v, &mut chains, &mut sets)
                }
                (Some(MapData::Values(types)), Some(ElementData::Values(vals))) => {
                    check_values(t, &format!("map {} data", s.name), types, vals)?
                }
                (d, ed) => {
                    return Err(format!(
                        "set {}: element data {ed:?} for type {d:?}",
                        s.name
                    ))
                }
            }
        }
    }
    for c in chains {
        if !chain_names.contains(c) {
            return Err(format!("jump/goto to missing chain {c}"));
        }
    }
    for s in sets {
        if !set_names.contains_key(s) {
            return Err(format!("reference to missing set @{s}"));
        }
    }
    let got = layout(t);
    if &got != expected_layout {
        return Err(format!(
            "table layout changed: sets {:?}, base chains {:?}; empty cluster has {:?}",
            got.0, got.1, expected_layout
        ));
    }
    Ok(())
}

proptest! {
    // PROPTEST_CASES=5000 for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_input_renders_a_sound_ruleset(input in cluster_text(), opts in options()) {
        let expected_layout = empty_layout();
        let (rs, text) = render_text(&input, &opts);

        // Our parser reads the text back to the same IR, which prints the same text.
        let parsed = parse::parse_script(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&parsed, &rs);
        prop_assert_eq!(text::script(&parsed), text.clone());

        prop_assert!(!rs.tables.is_empty());
        for t in &rs.tables {
            if let Err(e) = check_table(t, &expected_layout) {
                return Err(TestCaseError::fail(format!("{:?} table: {e}\n{text}", t.family)));
            }
        }

        // Determinism: the same input renders to the same text.
        let (_, again) = render_text(&input, &opts);
        prop_assert_eq!(again, text);
    }
}

#[test]
fn layout_does_not_grow_with_the_cluster() {
    use kube_nftproxy::cli::synthetic::{cluster, Spec};
    let expected = empty_layout();
    assert!(!expected.0.is_empty() && !expected.1.is_empty());
    let opts = Options {
        hostname: "node-0".into(),
        ..Options::default()
    };
    let mut counts = Vec::new();
    for n in [10, 1000] {
        let doc = cluster(&Spec {
            services: n,
            endpoints: 2,
            node: "node-0".into(),
        });
        let input = serde_json::to_string(&doc).unwrap();
        let (rs, text) = render_text(&input, &opts);
        assert_eq!(rs.tables.len(), 1);
        let t = &rs.tables[0];
        check_table(t, &expected).unwrap();
        let maps = t.sets.iter().filter(|s| s.is_map()).count();
        counts.push((t.sets.len(), maps, layout(t).1.len()));
        assert!(
            t.set("service-ips").unwrap().elements.len() >= n,
            "every Service has its VIP entry"
        );
        assert_eq!(parse::parse_script(&text).unwrap(), rs);
    }
    assert_eq!(
        counts[0], counts[1],
        "(sets, maps, base chains) for 10 vs 1000 Services"
    );
}

/// `cargo test --test properties coverage -- --ignored --nocapture`: how often the
/// generated inputs reach each part of the ruleset (a generator health check).
#[test]
#[ignore]
fn coverage_stats() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut stats: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..128 {
        let input = cluster_text().new_tree(&mut runner).unwrap().current();
        let opts = options().new_tree(&mut runner).unwrap().current();
        let (rs, text) = render_text(&input, &opts);
        *stats
            .entry(format!("tables={}", rs.tables.len()))
            .or_default() += 1;
        for t in &rs.tables {
            for c in &t.chains {
                let kind = c.name.split('-').next().unwrap_or("");
                if c.name.contains('/') {
                    *stats.entry(format!("chain {kind}")).or_default() += 1;
                }
            }
            for st in &t.sets {
                if !st.elements.is_empty() {
                    *stats.entry(format!("set {}", st.name)).or_default() += 1;
                }
            }
        }
        for (k, pat) in [
            ("aff", "update @affinity"),
            ("numgen", "numgen"),
            ("fib", "fib daddr"),
            ("drop-unalloc", "unallocated"),
            ("noep-drop", ": drop"),
            ("noep-reject", ": goto reject-chain"),
            ("short-circuit", "short-circuit"),
        ] {
            if text.contains(pat) {
                *stats.entry(k.to_string()).or_default() += 1;
            }
        }
    }
    eprintln!("{stats:#?}");
}
