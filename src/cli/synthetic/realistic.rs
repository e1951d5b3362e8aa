//! `synthetic --mix realistic`: a cluster shaped like real ones rather than N copies of one
//! Service, deterministic by seed.
//!
//! The random numbers come from a 64-bit xorshift* generator (Vigna's xorshift64*, seeded
//! through one SplitMix64 step so that small seeds give unrelated streams): no dependency,
//! and the output for a seed never changes with a crate upgrade.
//!
//! The mix, per Service (see `service`): 57% ClusterIP, 10% NodePort, 8% LoadBalancer, 20%
//! headless, 5% ExternalName; 1 port (70%), 2 (22%) or 3 (8%), each TCP (85%), UDP (12%) or
//! SCTP (3%); endpoint counts skewed: 1 (45%), 2 (25%), 3 (15%), else a Pareto tail
//! (`4/u`, capped at 1,000), cut into EndpointSlices of at most 100; 5% ClientIP session
//! affinity; 10% a Local traffic policy (external for NodePort/LoadBalancer, with a
//! healthCheckNodePort; internal otherwise); 20% topology hints on their endpoints; 3% of
//! endpoints terminating, 2% not ready; 10% dual-stack (one slice per family); 30% of
//! LoadBalancers with `loadBalancerSourceRanges`; 2% of ClusterIPs with an externalIP.
//! Node ports are allocated without collisions; when the 2,768 of the default range run
//! out, LoadBalancers get none (`allocateLoadBalancerNodePorts: false`) and NodePorts become
//! ClusterIPs, as an API server would refuse them.

use serde_json::{json, Value};

pub struct Spec {
    pub services: usize,
    pub seed: u64,
    pub node: String,
}

/// Nodes the endpoints are spread over; the first is `Spec::node`.
const NODES: usize = 50;
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
const NODE_PORT_BASE: usize = 30000;
const NODE_PORTS: usize = 2768;
const MAX_PER_SLICE: usize = 100;
const MAX_ENDPOINTS: usize = 1000;

/// xorshift64* (Vigna 2016), seeded with SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `percent`/100.
    fn pct(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn ip4(n: usize, first: u8, second: u8) -> String {
    // Second octet carries the overflow of the 16-bit host part.
    let hi = second as usize + (n >> 16);
    format!("{first}.{}.{}.{}", hi, (n >> 8) & 0xff, n & 0xff)
}

fn ip6(prefix: &str, n: usize) -> String {
    format!("{prefix}::{:x}:{:x}", n >> 16, n & 0xffff)
}

/// Well-known ports a Service's first port is drawn from; later ports add 1, 2.
const PORTS: [i64; 10] = [80, 443, 8080, 53, 9090, 5432, 6379, 3306, 8443, 9000];

/// The endpoint count: most 1–3, a Pareto tail to `MAX_ENDPOINTS`.
fn endpoint_count(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..45 => 1,
        45..70 => 2,
        70..85 => 3,
        _ => ((4.0 / rng.unit()) as usize).clamp(4, MAX_ENDPOINTS),
    }
}

struct Counters {
    node_ports: usize,
    pods: usize,
    lb: usize,
    ext: usize,
}

impl Counters {
    fn node_port(&mut self) -> Option<usize> {
        (self.node_ports < NODE_PORTS).then(|| {
            self.node_ports += 1;
            NODE_PORT_BASE + self.node_ports - 1
        })
    }
}

/// The cluster as the items of a `kind: List`: the Node, then each Service followed by its
/// EndpointSlices. Objects are produced one at a time, so a caller can stream them.
pub fn items(spec: &Spec) -> impl Iterator<Item = Value> + '_ {
    let mut rng = Rng::new(spec.seed);
    let mut c = Counters {
        node_ports: 0,
        pods: 0,
        lb: 0,
        ext: 0,
    };
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": spec.node, "labels": {"topology.kubernetes.io/zone": ZONES[0]}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.0.10"},
            {"type": "InternalIP", "address": "fd00:192:168::10"},
            {"type": "Hostname", "address": spec.node}
        ]}
    });
    std::iter::once(node)
        .chain((0..spec.services).flat_map(move |i| service(spec, i, &mut rng, &mut c).into_iter()))
}

/// One Service and its EndpointSlices.
fn service(spec: &Spec, i: usize, rng: &mut Rng, c: &mut Counters) -> Vec<Value> {
    let name = format!("svc-{i}");
    let ns = format!("ns-{}", rng.below(200));
    let kind = rng.below(100);
    let mut type_ = match kind {
        0..57 => "ClusterIP",
        57..67 => "NodePort",
        67..75 => "LoadBalancer",
        75..95 => "ClusterIP", // headless
        _ => "ExternalName",
    };
    let headless = (75..95).contains(&kind);
    let dual = rng.pct(10);
    let affinity = rng.pct(5);
    let local = rng.pct(10);
    let hints = rng.pct(20);
    let nports = match rng.below(100) {
        0..70 => 1,
        70..92 => 2,
        _ => 3,
    };
    let base = PORTS[rng.below(PORTS.len())];
    let protos: Vec<&str> = (0..nports)
        .map(|_| match rng.below(100) {
            0..85 => "TCP",
            85..97 => "UDP",
            _ => "SCTP",
        })
        .collect();
    let endpoints = endpoint_count(rng);

    let meta = json!({"name": name, "namespace": ns, "uid": format!("uid-svc-{i}"), "resourceVersion": "1"});
    if type_ == "ExternalName" {
        return vec![json!({
            "apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": "ExternalName", "externalName": format!("{name}.example.com"),
                     "sessionAffinity": "None"},
            "status": {"loadBalancer": {}}
        })];
    }
    // Node ports first: a NodePort Service that gets none is a ClusterIP.
    let wants_node_ports = matches!(type_, "NodePort" | "LoadBalancer");
    let mut node_ports: Vec<Option<usize>> = vec![None; nports];
    if wants_node_ports {
        if c.node_ports + nports + usize::from(local) <= NODE_PORTS {
            node_ports = (0..nports).map(|_| c.node_port()).collect();
        } else if type_ == "NodePort" {
            type_ = "ClusterIP";
        }
    }
    let ports: Vec<Value> = (0..nports)
        .map(|p| {
            let mut v = json!({
                "name": format!("p{p}-{}", protos[p].to_lowercase()),
                "port": base + p as i64, "protocol": protos[p],
                "targetPort": 8000 + base + p as i64
            });
            if let Some(np) = node_ports[p] {
                v["nodePort"] = json!(np);
            }
            v
        })
        .collect();
    let families: &[&str] = if dual { &["IPv4", "IPv6"] } else { &["IPv4"] };
    let mut s = json!({
        "type": type_,
        "ipFamilies": families,
        "ipFamilyPolicy": if dual { "RequireDualStack" } else { "SingleStack" },
        "ports": ports,
        "sessionAffinity": if affinity { "ClientIP" } else { "None" },
        "internalTrafficPolicy": "Cluster",
    });
    if headless {
        s["clusterIP"] = json!("None");
        s["clusterIPs"] = json!(["None"]);
    } else {
        let v4 = ip4(i + 1, 10, 96);
        let mut ips = vec![v4.clone()];
        if dual {
            ips.push(ip6("fd00:10:96", i + 1));
        }
        s["clusterIP"] = json!(v4);
        s["clusterIPs"] = json!(ips);
    }
    if affinity {
        let timeout = [10800, 600, 60][rng.below(3)];
        s["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
    }
    if matches!(type_, "NodePort" | "LoadBalancer") {
        if local {
            s["externalTrafficPolicy"] = json!("Local");
            if let Some(hc) = c.node_port() {
                s["healthCheckNodePort"] = json!(hc);
            }
        } else {
            s["externalTrafficPolicy"] = json!("Cluster");
        }
    } else if local {
        s["internalTrafficPolicy"] = json!("Local");
    }
    let mut status = json!({"loadBalancer": {}});
    if type_ == "LoadBalancer" {
        if node_ports[0].is_none() {
            s["allocateLoadBalancerNodePorts"] = json!(false);
        }
        c.lb += 1;
        let mut ingress = vec![json!({"ip": ip4(c.lb, 172, 16), "ipMode": "VIP"})];
        if dual {
            ingress.push(json!({"ip": ip6("2001:db8:1b", c.lb), "ipMode": "VIP"}));
        }
        status = json!({"loadBalancer": {"ingress": ingress}});
        if rng.pct(30) {
            let ranges: Vec<String> = (0..1 + rng.below(3))
                .map(|_| format!("{}.{}.0.0/16", 100 + rng.below(100), rng.below(256)))
                .collect();
            s["loadBalancerSourceRanges"] = json!(ranges);
        }
    } else if type_ == "ClusterIP" && !headless && rng.pct(2) {
        c.ext += 1;
        s["externalIPs"] = json!([ip4(c.ext, 192, 0)]);
    }
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": s, "status": status
    })];

    // Endpoints: one set of pods, listed once per family, in slices of at most 100.
    let eports: Vec<Value> = (0..nports)
        .map(|p| {
            json!({"name": format!("p{p}-{}", protos[p].to_lowercase()),
                   "port": 8000 + base + p as i64, "protocol": protos[p]})
        })
        .collect();
    let first_pod = c.pods;
    c.pods += endpoints;
    let pods: Vec<(usize, usize, u8)> = (0..endpoints)
        .map(|k| {
            // (pod number, node index, condition: 0 ready, 1 terminating, 2 not ready)
            let state = match rng.below(100) {
                0..3 => 1,
                3..5 => 2,
                _ => 0,
            };
            (first_pod + k, rng.below(NODES), state)
        })
        .collect();
    let mut labels = json!({"kubernetes.io/service-name": name,
                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"});
    if headless {
        labels["service.kubernetes.io/headless"] = json!("");
    }
    for family in families {
        for (k, chunk) in pods.chunks(MAX_PER_SLICE).enumerate() {
            let eps: Vec<Value> = chunk
                .iter()
                .map(|&(pod, node, state)| {
                    let addr = if *family == "IPv4" {
                        ip4(pod, 10, 64)
                    } else {
                        ip6("fd00:10:64", pod)
                    };
                    let node_name = if node == 0 {
                        spec.node.clone()
                    } else {
                        format!("node-{node}")
                    };
                    let mut e = json!({
                        "addresses": [addr],
                        "conditions": {"ready": state == 0, "serving": state != 2,
                                       "terminating": state == 1},
                        "nodeName": node_name,
                        "zone": ZONES[node % ZONES.len()],
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{name}-pod-{pod}")}
                    });
                    if hints {
                        e["hints"] = json!({"forZones": [{"name": ZONES[node % ZONES.len()]}]});
                    }
                    e
                })
                .collect();
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{}{k}", if *family == "IPv4" { "v4" } else { "v6" }),
                    "namespace": ns, "labels": labels.clone(),
                    "resourceVersion": "1"
                },
                "addressType": family,
                "endpoints": eps,
                "ports": eports.clone()
            }));
        }
    }
    out
}
