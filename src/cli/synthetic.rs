//! A generated cluster for benchmarks: N ClusterIP Services with M endpoints each, printed
//! the way `kubectl get svc,endpointslices,nodes -A -o json` prints a real one.

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
/// Every tenth Service is a NodePort, so the NodePort maps are exercised too.
pub fn cluster(spec: &Spec) -> Value {
    let mut items = Vec::with_capacity(spec.services * 2 + 1);
    items.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": spec.node, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}
    }));
    let mut next_ep = 0usize;
    for i in 0..spec.services {
        let name = format!("svc-{i}");
        let ns = format!("ns-{}", i % 100);
        let node_port = i % 10 == 0;
        let mut port = json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
        if node_port {
            port["nodePort"] = json!(30000 + (i / 10) % 2768);
        }
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-svc-{i}"), "resourceVersion": "1"},
            "spec": {
                "type": if node_port { "NodePort" } else { "ClusterIP" },
                "clusterIP": ip4([10, 96], i + 1), "clusterIPs": [ip4([10, 96], i + 1)],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [port], "sessionAffinity": "None"
            },
            "status": {"loadBalancer": {}}
        }));
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
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-abcde"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name}
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
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

/// A realistic mix, deterministic by `seed`: endpoint counts as in `realistic_count`, 20%
/// NodePort Services, 30% with a second (UDP) port. Same shape of output as `cluster`.
pub fn realistic(services: usize, seed: u64, node: &str) -> Value {
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
mod tests {
    use super::*;

    #[test]
    fn realistic_is_deterministic_by_seed_and_has_the_mix() {
        let a = realistic(2000, 7, "node-a");
        assert_eq!(a, realistic(2000, 7, "node-a"));
        assert_ne!(a, realistic(2000, 8, "node-a"));
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
