//! A generated cluster for benchmarks: N ClusterIP Services with M endpoints each
//! (`uniform`), or a realistic mix (`realistic`), printed the way `kubectl get
//! svc,endpointslices,nodes -A -o json` prints a real one.
//!
//! `write_list` streams the objects one at a time, so writing a 10,000-Service cluster
//! holds one object in memory, not the whole document.

pub mod realistic;

use std::io::{self, Write};

use serde_json::{json, Value};

pub struct Spec {
    pub services: usize,
    pub endpoints: usize,
    pub node: String,
}

fn ip4(base: [u8; 2], n: usize) -> String {
    format!("{}.{}.{}.{}", base[0], base[1], (n >> 8) & 0xff, n & 0xff)
}

/// One `kind: List` with the node, then each Service followed by its EndpointSlice.
/// Every tenth Service is a NodePort (while NodePorts last: the first 27,680 Services), so
/// the NodePort maps are exercised too.
pub fn cluster(spec: &Spec) -> Value {
    let items: Vec<Value> = items(spec).collect();
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

/// The items of `cluster`, produced one at a time.
pub fn items(spec: &Spec) -> impl Iterator<Item = Value> + '_ {
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": spec.node, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}
    });
    std::iter::once(node).chain((0..spec.services).flat_map(move |i| uniform_service(spec, i)))
}

/// Service `i` of the uniform mix and its EndpointSlice; its endpoints are numbered after
/// those of the Services before it.
fn uniform_service(spec: &Spec, i: usize) -> [Value; 2] {
    let mut next_ep = i * spec.endpoints;
    let name = format!("svc-{i}");
    let ns = format!("ns-{}", i % 100);
    // NodePorts are unique in a real cluster (30000-32767): past 27,680 Services the
    // range is used up and the rest stay ClusterIPs.
    let node_port = i % 10 == 0 && i / 10 < 2768;
    let mut port = json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
    if node_port {
        port["nodePort"] = json!(30000 + i / 10);
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-svc-{i}"), "resourceVersion": "1"},
        "spec": {
            "type": if node_port { "NodePort" } else { "ClusterIP" },
            "clusterIP": ip4([10, 96], i + 1), "clusterIPs": [ip4([10, 96], i + 1)],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [port], "sessionAffinity": "None"
        },
        "status": {"loadBalancer": {}}
    });
    let endpoints: Vec<Value> = (0..spec.endpoints)
        .map(|_| {
            next_ep += 1;
            json!({
                "addresses": [ip4([10, 244], next_ep)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", next_ep % 50)
            })
        })
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-abcde"), "namespace": ns,
            "labels": {"kubernetes.io/service-name": name}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    });
    [service, slice]
}

/// Writes `{"apiVersion":"v1","items":[...],"kind":"List",...}` with the items serialized
/// one at a time: byte for byte what `serde_json::to_writer(cluster(..))` writes (keys in
/// sorted order, as `Value` keeps them), in memory bounded by the largest item.
pub fn write_list(items: impl Iterator<Item = Value>, out: &mut impl Write) -> io::Result<()> {
    out.write_all(br#"{"apiVersion":"v1","items":["#)?;
    for (n, item) in items.enumerate() {
        if n > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, &item)?;
    }
    out.write_all(br#"],"kind":"List","metadata":{"resourceVersion":""}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::input::ClusterObjects;

    #[test]
    fn streamed_uniform_equals_the_value() {
        let spec = Spec {
            services: 23,
            endpoints: 3,
            node: "node-a".into(),
        };
        let mut out = Vec::new();
        write_list(items(&spec), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&cluster(&spec)).unwrap()
        );
    }

    fn realistic_text(services: usize, seed: u64) -> String {
        let spec = realistic::Spec {
            services,
            seed,
            node: "node-a".into(),
        };
        let mut out = Vec::new();
        write_list(realistic::items(&spec), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn realistic_is_deterministic_by_seed() {
        assert_eq!(realistic_text(300, 7), realistic_text(300, 7));
        assert_ne!(realistic_text(300, 7), realistic_text(300, 8));
    }

    /// Every object decodes without a note, and the mix has what it promises.
    #[test]
    fn realistic_mix_has_every_feature() {
        let text = realistic_text(3000, 1);
        let mut objects = ClusterObjects::default();
        let mut notes = vec![];
        objects.add_text("realistic", &text, &mut notes).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        objects.sort();
        let opts = crate::model::options::Options {
            hostname: "node-a".into(),
            ..Default::default()
        };
        let (rs, notes) = crate::ruleset::render::ruleset(&objects, &opts);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(rs.tables.len(), 2, "dual-stack: an ip and an ip6 table");
        let v: Value = serde_json::from_str(&text).unwrap();
        let items = v["items"].as_array().unwrap();
        let services: Vec<&Value> = items.iter().filter(|o| o["kind"] == "Service").collect();
        assert_eq!(services.len(), 3000);
        assert_eq!(objects.services.len(), 3000);
        let count = |f: &dyn Fn(&Value) -> bool| services.iter().filter(|s| f(s)).count();
        let share = |n: usize| n as f64 / 3000.0;
        for t in ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] {
            assert!(count(&|s| s["spec"]["type"] == t) > 100, "{t}");
        }
        let headless = count(&|s| s["spec"]["clusterIP"] == "None");
        assert!(
            (0.15..0.25).contains(&share(headless)),
            "headless {headless}"
        );
        let affinity = count(&|s| s["spec"]["sessionAffinity"] == "ClientIP");
        assert!(
            (0.03..0.07).contains(&share(affinity)),
            "affinity {affinity}"
        );
        let local = count(&|s| {
            s["spec"]["externalTrafficPolicy"] == "Local"
                || s["spec"]["internalTrafficPolicy"] == "Local"
        });
        assert!((0.07..0.13).contains(&share(local)), "local {local}");
        let dual = count(&|s| s["spec"]["ipFamilies"].as_array().map(Vec::len) == Some(2));
        assert!((0.07..0.13).contains(&share(dual)), "dual {dual}");
        assert!(count(&|s| s["spec"]["loadBalancerSourceRanges"].is_array()) > 20);
        for proto in ["TCP", "UDP", "SCTP"] {
            assert!(
                count(&|s| s["spec"]["ports"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["protocol"] == proto)))
                    > 10,
                "{proto}"
            );
        }
        assert!(count(&|s| s["spec"]["ports"].as_array().map(Vec::len) == Some(3)) > 50);
        // Endpoint counts: most Services 1-3, a tail in several slices of at most 100.
        let mut per_service = std::collections::BTreeMap::<&str, usize>::new();
        let mut slices = std::collections::BTreeMap::<&str, usize>::new();
        let (mut terminating, mut hinted) = (0, 0);
        for s in items.iter().filter(|o| o["kind"] == "EndpointSlice") {
            let eps = s["endpoints"].as_array().unwrap();
            assert!(eps.len() <= 100);
            let svc = s["metadata"]["labels"]["kubernetes.io/service-name"]
                .as_str()
                .unwrap();
            if s["addressType"] == "IPv4" {
                *per_service.entry(svc).or_default() += eps.len();
                *slices.entry(svc).or_default() += 1;
            }
            terminating += eps
                .iter()
                .filter(|e| e["conditions"]["terminating"] == true)
                .count();
            hinted += eps.iter().filter(|e| e["hints"].is_object()).count();
        }
        let small = per_service.values().filter(|&&n| n <= 3).count();
        assert!(share(small) > 0.7, "1-3 endpoints: {small}");
        assert!(per_service.values().any(|&n| n > 300));
        assert!(slices.values().any(|&n| n >= 3));
        assert!(terminating > 0 && hinted > 0);
        // Node ports never collide.
        let mut node_ports: Vec<i64> = services
            .iter()
            .flat_map(|s| {
                let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
                ports
                    .into_iter()
                    .filter_map(|p| p["nodePort"].as_i64())
                    .chain(s["spec"]["healthCheckNodePort"].as_i64())
            })
            .collect();
        let n = node_ports.len();
        node_ports.sort();
        node_ports.dedup();
        assert_eq!(n, node_ports.len());
    }
}

/// SplitMix64: a small deterministic generator, so a seed gives the same cluster anywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The endpoint count of one Service in the realistic mix: 35% one, 20% two, 15% three,
/// the other 30% spread from 4 to 300, denser at the small end (log-uniform squared).
fn realistic_count(r: &mut SplitMix) -> usize {
    let u = r.unit();
    if u < 0.35 {
        1
    } else if u < 0.55 {
        2
    } else if u < 0.70 {
        3
    } else {
        let t = r.unit();
        let (lo, hi) = (4f64.ln(), 300f64.ln());
        ((lo + t * t * (hi - lo)).exp().round() as usize).clamp(4, 300)
    }
}

/// Issue 16's endpoint-count mix, deterministic by `seed` (what `bench --mix realistic`
/// measures cold start on): endpoint counts as in `realistic_count`, 20% NodePort Services,
/// 30% with a second (UDP) port; one-port shapes otherwise. The richer mix of Service types,
/// policies and families that `synthetic --mix realistic` prints is `realistic::items`.
pub fn selection_mix(services: usize, seed: u64, node: &str) -> Value {
    let mut r = SplitMix(seed);
    let mut items = Vec::with_capacity(services * 2 + 1);
    items.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}
    }));
    let mut next_ep = 0usize;
    let mut next_node_port = 0usize;
    for i in 0..services {
        let name = format!("svc-{i}");
        let ns = format!("ns-{}", i % 100);
        let n = realistic_count(&mut r);
        let node_port = r.unit() < 0.2;
        let udp = r.unit() < 0.3;
        let mut ports =
            vec![json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080})];
        let mut ep_ports = vec![json!({"name": "http", "port": 8080, "protocol": "TCP"})];
        if udp {
            ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}));
            ep_ports.push(json!({"name": "dns", "port": 5353, "protocol": "UDP"}));
        }
        if node_port {
            for p in &mut ports {
                p["nodePort"] = json!(30000 + next_node_port % 2768);
                next_node_port += 1;
            }
        }
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-svc-{i}"), "resourceVersion": "1"},
            "spec": {
                "type": if node_port { "NodePort" } else { "ClusterIP" },
                "clusterIP": ip4([10, 96], i + 1), "clusterIPs": [ip4([10, 96], i + 1)],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": ports, "sessionAffinity": "None"
            },
            "status": {"loadBalancer": {}}
        }));
        let endpoints: Vec<Value> = (0..n)
            .map(|_| {
                next_ep += 1;
                json!({
                    "addresses": [ip4([10, 244], next_ep)],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{}", next_ep % 50)
                })
            })
            .collect();
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-abcde"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name}
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ep_ports
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

#[cfg(test)]
mod selection_mix_tests {
    use super::*;

    #[test]
    fn realistic_is_deterministic_by_seed_and_has_the_mix() {
        let a = selection_mix(2000, 7, "node-a");
        assert_eq!(a, selection_mix(2000, 7, "node-a"));
        assert_ne!(a, selection_mix(2000, 8, "node-a"));
        let items = a["items"].as_array().unwrap();
        let counts: Vec<usize> = items
            .iter()
            .filter(|i| i["kind"] == "EndpointSlice")
            .map(|i| i["endpoints"].as_array().unwrap().len())
            .collect();
        let share = |f: &dyn Fn(usize) -> bool| {
            counts.iter().filter(|c| f(**c)).count() as f64 / counts.len() as f64
        };
        assert!((share(&|c| c == 1) - 0.35).abs() < 0.04);
        assert!((share(&|c| c == 2) - 0.20).abs() < 0.04);
        assert!(counts.iter().all(|c| (1..=300).contains(c)));
        assert!(counts.iter().any(|c| *c > 100));
    }
}
