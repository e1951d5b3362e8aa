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
