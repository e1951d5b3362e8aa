//! Real-kernel packet tests: the ruleset kube-nftproxy programs into a node's
//! network namespace must move packets the way kube-proxy does (DNAT spread,
//! targetPort mapping, UDP, hairpin and NodePort masquerade, externalTrafficPolicy
//! Local, loadBalancerSourceRanges, reject without endpoints, ClientIP affinity,
//! hitless partial syncs, atomic transactions) and `apply` must program exactly
//! what `render` prints.
//!
//! Every test builds the harness topology (see `integration/support/cluster.rs`),
//! writes Services/EndpointSlices/Nodes as YAML and programs the node namespace
//! through [`program`]: `kube-nftproxy apply` run inside the node namespace, or,
//! while the binary has no `apply` subcommand yet, `kube-nftproxy render | nft -f -`
//! (never under CI=true).
//!
//! Needs root, `ip` and `nft`; skipped otherwise (panics instead if CI=true).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kube_nftproxy::nft::normalize::normalize;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nftproxy");
const BASE_ARGS: [&str; 2] = ["--hostname-override=node-a", "--cluster-cidr=10.244.0.0/16"];

// ---------------------------------------------------------------------------
// programming the node
// ---------------------------------------------------------------------------

/// How the node namespace was programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncPath {
    /// `kube-nftproxy apply ...` inside the node namespace (netlink).
    Apply,
    /// `kube-nftproxy render ... | nft -f -` inside the node namespace; only
    /// while the binary has no `apply` subcommand, never under CI.
    RenderFallback,
}

fn ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// Which path [`program`] takes: `apply` as soon as `kube-nftproxy apply --help`
/// succeeds. Under CI=true a missing `apply` is a failure, not a fallback.
fn sync_path() -> SyncPath {
    static PATH: OnceLock<SyncPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let ok = Command::new(BIN)
            .args(["apply", "--help"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            SyncPath::Apply
        } else if ci() {
            panic!(
                "CI=true but `kube-nftproxy apply --help` fails: the render|nft fallback \
                 is not allowed in CI"
            );
        } else {
            SyncPath::RenderFallback
        }
    })
}

/// A YAML file in the temp dir, removed on drop.
/// Result of one sync of the node namespace.
#[derive(Debug)]
struct Synced {
    path: SyncPath,
    /// What `apply` printed (the rendered script on the fallback path).
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Synced {
    /// Lines `apply` printed that start with `prefix` (apply path only).
    fn has_line_starting(&self, prefix: &str) -> bool {
        self.stdout
            .lines()
            .any(|l| l.trim_start().starts_with(prefix))
    }
}

fn out_text(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Where `apply` keeps its last-applied state for namespace `ns`: a directory of
/// its own under the temp dir instead of the host's /run/kube-nftproxy. Directories
/// of namespaces that no longer exist (earlier tests, earlier runs) are removed.
fn state_dir(ns: &Netns) -> PathBuf {
    let root = std::env::temp_dir().join("kntp-kernel-state");
    let alive = list_netns();
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(NS_PREFIX) && !alive.contains(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    root.join(ns.name())
}

/// `kube-nftproxy <args> <file>` inside `ns`, from the repository root (paths in
/// testdata args files are relative to it), with extra environment variables.
fn run_in_ns(ns: &Netns, args: &[String], file: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = ns.command(BIN);
    cmd.args(args)
        .arg(file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .env("KUBE_NFTPROXY_STATE_DIR", state_dir(ns))
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running {BIN} in {}: {e}", ns.name()))
}

/// Programs `node` for the cluster objects in `yaml`, with
/// `--hostname-override=node-a --cluster-cidr=10.244.0.0/16` plus `extra_args`.
/// Returns the raw output (not checked) and the path used. `env` is only passed
/// on the apply path (test hooks).
fn try_program(
    node: &Netns,
    yaml: &str,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> (SyncPath, Output, Duration) {
    let dir = TempDir::new("kernel");
    let file = dir.write("cluster.yaml", yaml);
    let path = sync_path();
    let opts: Vec<String> = BASE_ARGS
        .iter()
        .chain(extra_args)
        .map(|s| s.to_string())
        .collect();
    let start = Instant::now();
    let out = match path {
        SyncPath::Apply => {
            let mut args = vec!["apply".to_string()];
            args.extend(opts);
            run_in_ns(node, &args, &file, env)
        }
        SyncPath::RenderFallback => {
            let mut args = vec!["render".to_string()];
            args.extend(opts);
            let rendered = run_in_ns(node, &args, &file, &[]);
            if !rendered.status.success() {
                rendered
            } else {
                let script = String::from_utf8_lossy(&rendered.stdout).into_owned();
                match node.nft_apply(&script) {
                    Ok(()) => rendered,
                    Err(e) => panic!("nft -f - refused the rendered script: {e}\n{script}"),
                }
            }
        }
    };
    let elapsed = start.elapsed();
    eprintln!(
        "program {}: via {} ({}), {:?}",
        node.name(),
        match path {
            SyncPath::Apply => "`kube-nftproxy apply`",
            SyncPath::RenderFallback =>
                "`kube-nftproxy render | nft -f -` (no apply subcommand yet)",
        },
        out.status,
        elapsed
    );
    (path, out, elapsed)
}

/// THE helper every test uses to program the node namespace; panics on failure.
fn program(node: &Netns, yaml: &str, extra_args: &[&str]) -> Synced {
    let (path, out, elapsed) = try_program(node, yaml, extra_args, &[]);
    assert!(
        out.status.success(),
        "programming {} failed: {}",
        node.name(),
        out_text(&out)
    );
    let synced = Synced {
        path,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    };
    if path == SyncPath::Apply {
        eprintln!("apply printed:\n{}", synced.stdout.trim_end());
    }
    if !synced.stderr.trim().is_empty() {
        eprintln!("stderr:\n{}", synced.stderr.trim_end());
    }
    synced
}

// ---------------------------------------------------------------------------
// cluster objects as YAML
// ---------------------------------------------------------------------------

const NODE_A: &str = "node-a";
const NODE_B: &str = "node-b";

fn nodes_yaml() -> String {
    let node = |name: &str, ip: &str, cidr: &str| {
        format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
             kubernetes.io/hostname: {name}\nspec:\n  podCIDR: {cidr}\n  podCIDRs:\n  - {cidr}\n\
             status:\n  addresses:\n  - address: {ip}\n    type: InternalIP\n  - address: {name}\n    \
             type: Hostname\n"
        )
    };
    node(NODE_A, NODE_IP, POD_CIDR) + &node(NODE_B, NODE2_IP, POD2_CIDR)
}

/// One Service port: `name`, protocol, port, targetPort (number or name), nodePort.
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

/// An EndpointSlice of Service `svc`: ports (name, protocol, port) and ready
/// endpoints (ip, nodeName).
fn slice(svc: &str, ports: &[(&str, &str, u16)], eps: &[(&str, &str)]) -> String {
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
         metadata:\n  name: {svc}-{}\n  namespace: default\n  labels:\n    \
         kubernetes.io/service-name: {svc}\n    \
         endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n",
        &random_id()[..5]
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

/// A ClusterIP Service `name` port 80/TCP -> 8080 ("http") with its slice.
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

// ---------------------------------------------------------------------------
// traffic assertions
// ---------------------------------------------------------------------------

fn ids(results: &[std::io::Result<String>], what: &str) -> Vec<Identity> {
    let (_, errors) = tally(results);
    assert!(
        errors.is_empty(),
        "{what}: {} of {} requests failed: {errors:?}",
        errors.len(),
        results.len()
    );
    results
        .iter()
        .map(|r| Identity::parse(r.as_ref().unwrap()))
        .collect()
}

fn counts(ids: &[Identity]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.server.clone()).or_insert(0) += 1;
    }
    m
}

fn peers(ids: &[Identity]) -> BTreeSet<String> {
    ids.iter().map(|i| i.peer.ip().to_string()).collect()
}

/// A request that must be dropped: it times out (no RST / icmp unreachable).
fn assert_dropped(r: std::io::Result<String>, what: &str) {
    match r {
        Ok(s) => panic!("{what}: must be dropped, but was served: {s}"),
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::TimedOut,
            "{what}: must be dropped (time out), got {e}"
        ),
    }
}

/// The source a node-a endpoint sees for masqueraded traffic: masquerade picks
/// the address of the outgoing interface, i.e. the node side of the pod's veth
/// (10.244.0.1) for a pod on the node and the LAN address (192.168.0.10) for a pod
/// on node2.
fn masq_source(endpoint_on: NodeId) -> &'static str {
    match endpoint_on {
        NodeId::Node => POD_GW,
        NodeId::Node2 => NODE_IP,
    }
}

fn skip_unless_apply(test: &str) -> bool {
    if sync_path() == SyncPath::Apply {
        return true;
    }
    eprintln!(
        "skipping {test}: only meaningful with `kube-nftproxy apply`, which this binary \
         does not have yet (render|nft fallback in use)"
    );
    false
}

// ---------------------------------------------------------------------------
// 1. ClusterIP spread
// ---------------------------------------------------------------------------

#[test]
fn clusterip_spreads_evenly_over_every_endpoint() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let eps = [
        ("e1", "10.244.0.11"),
        ("e2", "10.244.0.12"),
        ("e3", "10.244.0.13"),
    ];
    for (name, ip) in eps {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    // A second Service with more endpoints: each count has its own map and selection
    // chain (`select-service-endpoints-5`, `-3`), and both Services must spread evenly.
    let wide = [
        ("f1", "10.244.0.31"),
        ("f2", "10.244.0.32"),
        ("f3", "10.244.0.33"),
        ("f4", "10.244.0.34"),
        ("f5", "10.244.0.35"),
    ];
    for (name, ip) in wide {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let client = c.add_pod("c", "10.244.0.20");
    let remote = c.add_pod2("r", "10.244.1.20");
    let yaml = nodes_yaml()
        + &http_service("web", "10.96.0.10", &eps.map(|(_, ip)| (ip, NODE_A)), &[])
        + &http_service("wide", "10.96.0.11", &wide.map(|(_, ip)| (ip, NODE_A)), &[]);
    program(c.node(), &yaml, &[]);
    let listing = c.node().nft_list_table("ip", "kube-nftproxy");
    assert!(
        listing.contains("numgen random mod 5 map @service-endpoints-5")
            && listing.contains("numgen random mod 3 map @service-endpoints-3"),
        "one selection chain per endpoint count:\n{listing}"
    );

    // The wider Service: 300 connections, each of 5 endpoints 10..32 % (mean 20 %).
    let got = ids(
        &client.tcp_requests("10.96.0.11", 80, 300, TIMEOUT),
        "pod c to wide",
    );
    let n = counts(&got);
    for (name, _) in wide {
        let k = n.get(name).copied().unwrap_or(0);
        assert!(
            (30..=95).contains(&k),
            "pod c: endpoint {name} of wide got {k}/300 connections, want 10..32 %: {n:?}"
        );
    }

    // From a pod on the node: 300 connections, each endpoint 20..47 %.
    let got = ids(
        &client.tcp_requests("10.96.0.10", 80, 300, TIMEOUT),
        "pod c",
    );
    let n = counts(&got);
    for (name, ip) in eps {
        let k = n.get(name).copied().unwrap_or(0);
        assert!(
            (60..=141).contains(&k),
            "pod c: endpoint {name} got {k}/300 connections, want 20..47 %: {n:?}"
        );
        for id in got.iter().filter(|i| i.server == name) {
            assert_eq!(id.local, sa(ip, 8080), "{id:?}");
        }
    }
    assert_eq!(
        peers(&got),
        BTreeSet::from(["10.244.0.20".to_string()]),
        "pod-to-ClusterIP traffic from inside the cluster CIDR must keep its source"
    );

    // From the node itself (nat output hook): every endpoint, masqueraded
    // (source 192.168.0.10 is outside the cluster CIDR).
    let got = ids(
        &c.node().tcp_requests("10.96.0.10", 80, 60, TIMEOUT),
        "node",
    );
    let n = counts(&got);
    assert_eq!(n.len(), 3, "node: every endpoint must serve: {n:?}");
    for p in peers(&got) {
        assert!(
            p == POD_GW || p == NODE_IP,
            "node: endpoints must see a node address, saw {p}"
        );
    }

    // From a pod on node2, routed to the node (node2 runs no proxy here, so its
    // service route points at the node, as if node-a were its gateway).
    c.node2().ip(&format!(
        "route replace {SERVICE_CIDR} via {NODE_IP} dev eth0"
    ));
    let got = ids(
        &remote.tcp_requests("10.96.0.10", 80, 60, TIMEOUT),
        "pod r on node2",
    );
    let n = counts(&got);
    assert_eq!(
        n.len(),
        3,
        "pod r on node2: every endpoint must serve: {n:?}"
    );
    assert_eq!(
        peers(&got),
        BTreeSet::from(["10.244.1.20".to_string()]),
        "routed pod traffic must keep its source"
    );
}

/// Issue 16: whatever endpoint counts the cluster uses, a new connection costs one
/// dispatch and one draw, and a 2-endpoint Service still gets an even spread.
#[test]
fn two_endpoints_spread_evenly_among_counts_up_to_500() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let eps = [("d1", "10.244.0.41"), ("d2", "10.244.0.42")];
    for (name, ip) in eps {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let client = c.add_pod("c", "10.244.0.20");
    let mut yaml =
        nodes_yaml() + &http_service("dns", "10.96.0.10", &eps.map(|(_, ip)| (ip, NODE_A)), &[]);
    // Filler Services with endpoint counts 1..40 and 50, 60, .. 500 (endpoints that
    // serve nothing: only the maps and chains matter).
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
    program(c.node(), &yaml, &[]);
    let listing = c.node().nft_list_table("ip", "kube-nftproxy");
    assert_eq!(
        listing.matches("chain select-service-endpoints-").count(),
        sizes.len(),
        "one selection chain per count"
    );
    let got = ids(
        &client.tcp_requests("10.96.0.10", 80, 300, TIMEOUT),
        "pod c to dns",
    );
    let n = counts(&got);
    for (name, _) in eps {
        let k = n.get(name).copied().unwrap_or(0);
        assert!(
            (110..=190).contains(&k),
            "endpoint {name} got {k}/300 connections, want 37..63 %: {n:?}"
        );
    }
}

/// Issue 16: a selection that finds no endpoint (here: a slot removed by hand from the
/// count's map) is rejected, never forwarded un-NATed: the selection chain's last rule
/// counts the miss and marks the packet, and the filter chain of the path it takes
/// (forward for the pod's ClusterIP connection, input for the NodePort one) rejects it,
/// so the client sees a refusal at once rather than a timeout. The NodePort case has a
/// server of its own listening on the node's address and NodePort: an un-NATed packet
/// would reach it, an un-answered one would time out.
#[test]
fn a_selection_miss_is_rejected_not_forwarded() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let eps = [("m1", "10.244.0.51"), ("m2", "10.244.0.52")];
    let mut servers = Vec::new();
    for (name, ip) in eps {
        servers.push(c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap());
    }
    servers.push(c.node().spawn_tcp_server(NODE_IP, 30072).unwrap());
    let client = c.add_pod("c", "10.244.0.20");
    let eps_on: Vec<(&str, &str)> = eps.iter().map(|(_, ip)| (*ip, NODE_A)).collect();
    let yaml = nodes_yaml()
        + &service(
            "miss",
            "10.96.0.72",
            "NodePort",
            &[SvcPort("http", "TCP", 80, "8080", Some(30072))],
            &[],
            None,
        )
        + &slice("miss", &[("http", "TCP", 8080)], &eps_on);
    program(c.node(), &yaml, &[]);
    for (map, key) in [
        ("service-endpoints-2", "10.96.0.72 . tcp . 80 . 1"),
        ("nodeport-endpoints-2", "tcp . 30072 . 1"),
    ] {
        let elem = format!("{{ {key} }}");
        let out = c
            .node()
            .nft(["delete", "element", "ip", "kube-nftproxy", map, &elem]);
        assert!(out.status.success(), "{}", out_text(&out));
    }
    let mut refused = 0;
    for (what, from, dst, port) in [
        ("ClusterIP from a pod", &client, "10.96.0.72", 80),
        ("NodePort from outside", c.client(), NODE_IP, 30072),
    ] {
        let (mut served, mut missed) = (0, 0);
        for _ in 0..16 {
            match from.tcp_request(dst, port, TIMEOUT) {
                Ok(reply) => {
                    assert_eq!(Identity::parse(&reply).server, "m1", "{what}: {reply}");
                    served += 1;
                }
                Err(e) => {
                    // Rejected after the selection chain's miss: never forwarded un-NATed
                    // (nor dropped without an answer).
                    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{what}: {e}");
                    missed += 1;
                }
            }
        }
        assert!(
            served > 0 && missed > 0,
            "{what}: served {served}, refused {missed}"
        );
        refused += missed;
    }
    // The miss rules count what they refuse: at least one SYN per refused connection.
    let mut packets = 0u64;
    for chain in ["select-service-endpoints-2", "select-nodeport-endpoints-2"] {
        let listed = c
            .node()
            .exec_ok(["nft", "list", "chain", "ip", "kube-nftproxy", chain]);
        let line = (listed.lines())
            .find(|l| l.contains("no endpoint selected"))
            .unwrap_or_else(|| panic!("no miss rule:\n{listed}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let n: u64 = (words.iter().position(|w| *w == "packets"))
            .and_then(|i| words.get(i + 1)?.parse().ok())
            .unwrap_or_else(|| panic!("no counter on the miss rule: {line}"));
        assert!(n > 0, "{chain}: the miss counter stayed at 0: {line}");
        packets += n;
    }
    assert!(
        packets >= refused as u64,
        "the miss counters saw {packets} packets for {refused} refused connections"
    );
    drop(servers);
}

/// Issue 16: the agent keeps endpoints in stable slots. One endpoint of a 3-endpoint
/// Service replaced, through `Desired` and netlink as the agent syncs: the partial
/// transaction is one element deleted and one added, the new endpoint takes the old one's
/// slot (not address order), the kernel holds slots 0..2, and connections spread evenly
/// over the three endpoints.
#[test]
fn a_replaced_endpoint_takes_its_slot_and_the_spread_stays_even() {
    use kube_nftproxy::agent::desired::Desired;
    use kube_nftproxy::model::options::Options;
    use kube_nftproxy::nft::netlink;
    use kube_nftproxy::objects::input::ClusterObjects;
    use kube_nftproxy::ruleset::tx::Op;
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let pods = [
        ("s1", "10.244.0.81"),
        ("s2", "10.244.0.82"),
        ("s3", "10.244.0.83"),
        ("s4", "10.244.0.84"),
    ];
    for (name, ip) in pods {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let client = c.add_pod("c", "10.244.0.20");
    let objects = |eps: &[&str]| {
        let eps: Vec<(&str, &str)> = eps.iter().map(|ip| (*ip, NODE_A)).collect();
        let yaml = nodes_yaml() + &http_service("slots", "10.96.0.81", &eps, &[]);
        let mut o = ClusterObjects::default();
        o.add_text("slots", &yaml, &mut vec![]).unwrap();
        o.sort();
        o
    };
    let opts = Options {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Options::default()
    };
    let mut desired = Desired::new(opts);
    let mut sync = |o: &ClusterObjects| {
        let u = desired.update(o, false);
        let rs = desired.ruleset().clone();
        c.node()
            .run_in(|| {
                let extra = netlink::obsolete_tables(&rs);
                let decls = netlink::SetDecls::from_ruleset(&rs);
                netlink::apply_with(&u.tx, &extra, &decls, Some(&rs)).map(|_| ())
            })
            .unwrap_or_else(|e| panic!("kernel refused: {e:?}"));
        u
    };
    assert!(sync(&objects(&["10.244.0.81", "10.244.0.82", "10.244.0.83"])).full);
    // s2 (slot 1) is replaced by s4, which sorts last: address order would put it in slot
    // 2 and move s3 to slot 1.
    let u = sync(&objects(&["10.244.0.81", "10.244.0.83", "10.244.0.84"]));
    assert!(!u.full);
    let elems: Vec<String> = (u.tx.ops.iter())
        .flat_map(|op| match op {
            Op::AddElements { set, elements, .. } => elements
                .iter()
                .map(|e| format!("+{set} {:?}", e.key))
                .collect(),
            Op::DeleteElements { set, elements, .. } => elements
                .iter()
                .map(|e| format!("-{set} {:?}", e.key))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    // The pods run on this node, so their hairpin elements change too; in the endpoint
    // map, one slot.
    let (in_map, other): (Vec<&String>, Vec<&String>) = elems
        .iter()
        .partition(|e| e[1..].starts_with("service-endpoints-3 "));
    assert_eq!(in_map.len(), 2, "one delete and one add: {elems:?}");
    assert!(
        other
            .iter()
            .all(|e| e[1..].starts_with("hairpin-connections ")),
        "{elems:?}"
    );
    let listed = c.node().exec_ok([
        "nft",
        "list",
        "map",
        "ip",
        "kube-nftproxy",
        "service-endpoints-3",
    ]);
    let flat = listed.split_whitespace().collect::<Vec<_>>().join(" ");
    for (slot, ep) in [(0, "10.244.0.81"), (1, "10.244.0.84"), (2, "10.244.0.83")] {
        let want = format!("10.96.0.81 . tcp . 80 . {slot} : {ep} . 8080");
        assert!(flat.contains(&want), "want {want} in:\n{listed}");
    }
    let got = ids(
        &client.tcp_requests("10.96.0.81", 80, 300, TIMEOUT),
        "pod c after the replacement",
    );
    let n = counts(&got);
    for name in ["s1", "s3", "s4"] {
        let k = n.get(name).copied().unwrap_or(0);
        assert!(
            (60..=141).contains(&k),
            "endpoint {name} got {k}/300 connections, want 20..47 %: {n:?}"
        );
    }
    assert!(
        !n.contains_key("s2"),
        "the replaced endpoint still serves: {n:?}"
    );
}

/// Issue 16: two Services claiming one external IP and port. The first in order
/// (namespace/name) wins the dispatch entry, so every connection goes to its endpoints
/// (before, the endpoint maps were merged slot by slot and a third of a's traffic went to
/// b's pod); the other Service gets a note. Both for different and for equal counts.
#[test]
fn a_shared_external_ip_serves_the_winner_only() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let a = [("a1", "10.244.0.61"), ("a2", "10.244.0.62")];
    let b = [
        ("b1", "10.244.0.63"),
        ("b2", "10.244.0.64"),
        ("b3", "10.244.0.65"),
    ];
    for (name, ip) in a.iter().chain(b.iter()) {
        c.add_pod(name, *ip).spawn_tcp_server(*ip, 8080).unwrap();
    }
    let client = c.add_pod("c", "10.244.0.20");
    let ext = ["externalIPs:", "- 198.51.100.7"];
    for b_count in [3, 2] {
        let b_eps: Vec<(&str, &str)> = b[..b_count].iter().map(|(_, ip)| (*ip, NODE_A)).collect();
        let yaml = nodes_yaml()
            + &http_service(
                "a-shared",
                "10.96.0.81",
                &a.map(|(_, ip)| (ip, NODE_A)),
                &ext,
            )
            + &http_service("b-shared", "10.96.0.82", &b_eps, &ext);
        let synced = program(c.node(), &yaml, &[]);
        assert!(
            format!("{}{}", synced.stdout, synced.stderr).contains("b-shared"),
            "the losing Service gets a note: {synced:?}"
        );
        let got = ids(
            &client.tcp_requests("198.51.100.7", 80, 120, TIMEOUT),
            "pod c to the shared external IP",
        );
        let n = counts(&got);
        assert!(
            n.keys().all(|k| k.starts_with('a')) && n.len() == 2,
            "b has {b_count} endpoints: every connection must go to a's two: {n:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. targetPort
// ---------------------------------------------------------------------------

#[test]
fn target_port_numeric_and_named() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let n1 = c.add_pod("n1", "10.244.0.21");
    n1.spawn_tcp_server("10.244.0.21", 8080).unwrap();
    let m1 = c.add_pod("m1", "10.244.0.22");
    m1.spawn_tcp_server("10.244.0.22", 9090).unwrap();
    m1.spawn_tcp_server("10.244.0.22", 9101).unwrap();
    let client = c.add_pod("c", "10.244.0.20");

    // numeric: 80 -> 8080. named: http 80 -> targetPort "web" (slice says 9090),
    // metrics 9100 -> "metrics" (slice says 9101); slice ports listed in the other
    // order, so only the names can pair them.
    let yaml = nodes_yaml()
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
        );
    program(c.node(), &yaml, &[]);

    for (vip, port, want) in [
        ("10.96.0.21", 80, sa("10.244.0.21", 8080)),
        ("10.96.0.22", 80, sa("10.244.0.22", 9090)),
        ("10.96.0.22", 9100, sa("10.244.0.22", 9101)),
    ] {
        for id in ids(&client.tcp_requests(vip, port, 5, TIMEOUT), vip) {
            assert_eq!(id.local, want, "{vip}:{port} must be DNATed to {want}");
            assert_eq!(id.peer.ip().to_string(), "10.244.0.20");
        }
    }
    // A port the Service does not have is rejected, not passed on.
    let e = client
        .tcp_request("10.96.0.21", 8080, TIMEOUT)
        .expect_err("10.96.0.21:8080 is not a service port");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

// ---------------------------------------------------------------------------
// 3. UDP
// ---------------------------------------------------------------------------

#[test]
fn udp_clusterip_answers() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    for (name, ip) in [("u1", "10.244.0.31"), ("u2", "10.244.0.32")] {
        c.add_pod(name, ip).spawn_udp_server(ip, 5353).unwrap();
    }
    let client = c.add_pod("c", "10.244.0.20");
    let yaml = nodes_yaml()
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
        );
    program(c.node(), &yaml, &[]);

    let got = ids(&client.udp_requests("10.96.0.53", 53, 40, TIMEOUT), "udp");
    let n = counts(&got);
    assert_eq!(n.len(), 2, "both UDP endpoints must answer: {n:?}");
    for id in &got {
        assert_eq!(id.local.port(), 5353, "{id:?}");
        assert_eq!(id.peer.ip().to_string(), "10.244.0.20", "{id:?}");
    }
    // From the node too.
    let got = ids(
        &c.node().udp_requests("10.96.0.53", 53, 10, TIMEOUT),
        "udp from node",
    );
    assert!(got.iter().all(|i| i.local.port() == 5353));
}

// ---------------------------------------------------------------------------
// 4. hairpin
// ---------------------------------------------------------------------------

#[test]
fn hairpin_is_masqueraded() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let h = c.add_pod("h", "10.244.0.41");
    h.spawn_tcp_server("10.244.0.41", 8080).unwrap();
    let other = c.add_pod("o", "10.244.0.42");
    let yaml = nodes_yaml() + &http_service("self", "10.96.0.41", &[("10.244.0.41", NODE_A)], &[]);
    program(c.node(), &yaml, &[]);

    let got = ids(&h.tcp_requests("10.96.0.41", 80, 10, TIMEOUT), "hairpin");
    for id in &got {
        assert_eq!(id.server, "h");
        assert_ne!(
            id.peer.ip().to_string(),
            "10.244.0.41",
            "hairpin traffic must not keep the pod's own IP as source"
        );
        assert_eq!(
            id.peer.ip().to_string(),
            masq_source(NodeId::Node),
            "hairpin traffic must be masqueraded to the node"
        );
    }
    // Another pod's traffic to the same endpoint is not masqueraded.
    let got = ids(
        &other.tcp_requests("10.96.0.41", 80, 5, TIMEOUT),
        "other pod",
    );
    assert_eq!(peers(&got), BTreeSet::from(["10.244.0.42".to_string()]));
}

/// `detectLocalMode` InterfaceNamePrefix / BridgeInterface on real packets: a pod's
/// ClusterIP traffic keeps its source when it arrives on an interface the mode calls a pod's
/// (`iifname "vp*"`, or the pod's own veth by name), and is masqueraded otherwise, whatever
/// its address says (it is inside --cluster-cidr throughout).
#[test]
fn detect_local_interface_modes_decide_masquerade() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let server = c.add_pod("s", "10.244.0.61");
    server.spawn_tcp_server("10.244.0.61", 8080).unwrap();
    let client = c.add_pod("p", "10.244.0.62");
    let veth = c.pod("p").host_veth.clone();
    assert!(veth.starts_with("vp"), "{veth}");
    let yaml = nodes_yaml() + &http_service("web", "10.96.0.61", &[("10.244.0.61", NODE_A)], &[]);
    let bridge = format!("--pod-bridge-interface={veth}");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=vp",
            ],
            "10.244.0.62",
        ),
        (
            &[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=cali",
            ],
            masq_source(NodeId::Node),
        ),
        (
            &["--detect-local-mode=BridgeInterface", &bridge],
            "10.244.0.62",
        ),
        (
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cni0",
            ],
            masq_source(NodeId::Node),
        ),
    ];
    for (args, source) in cases {
        program(c.node(), &yaml, args);
        let got = ids(
            &client.tcp_requests("10.96.0.61", 80, 4, TIMEOUT),
            "pod to ClusterIP",
        );
        assert_eq!(
            peers(&got),
            BTreeSet::from([source.to_string()]),
            "with {args:?} the endpoint should see {source}"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. NodePort, externalTrafficPolicy
// ---------------------------------------------------------------------------

#[test]
fn nodeport_masquerade_and_external_traffic_policy_local() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let l = c.add_pod("l", "10.244.0.51");
    l.spawn_tcp_server("10.244.0.51", 8080).unwrap();
    let r = c.add_pod2("r", "10.244.1.51");
    r.spawn_tcp_server("10.244.1.51", 8080).unwrap();
    let pod = c.add_pod("c", "10.244.0.20");
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
    let local = ["externalTrafficPolicy: Local", "healthCheckNodePort: 32100"];
    let local2 = ["externalTrafficPolicy: Local", "healthCheckNodePort: 32101"];
    let yaml = nodes_yaml()
        + &np("cluster", "10.96.0.51", 30080, &[], &both)
        + &np("local", "10.96.0.52", 30081, &local, &both)
        + &np("remote", "10.96.0.53", 30082, &local2, &both[1..]);
    program(c.node(), &yaml, &[]);

    // Cluster policy: both endpoints, masqueraded.
    let got = ids(
        &c.client().tcp_requests(NODE_IP, 30080, 40, TIMEOUT),
        "nodeport",
    );
    let n = counts(&got);
    assert_eq!(n.len(), 2, "both endpoints must serve the node port: {n:?}");
    for id in &got {
        let on = if id.server == "l" {
            NodeId::Node
        } else {
            NodeId::Node2
        };
        assert_ne!(
            id.peer.ip().to_string(),
            CLIENT_IP,
            "must be masqueraded: {id:?}"
        );
        assert_eq!(id.peer.ip().to_string(), masq_source(on), "{id:?}");
    }

    // Local policy: only the node-a endpoint, client IP preserved.
    let got = ids(
        &c.client().tcp_requests(NODE_IP, 30081, 50, TIMEOUT),
        "etp local",
    );
    assert_eq!(
        counts(&got),
        BTreeMap::from([("l".to_string(), 50)]),
        "externalTrafficPolicy Local must use only the local endpoint"
    );
    assert_eq!(
        peers(&got),
        BTreeSet::from([CLIENT_IP.to_string()]),
        "externalTrafficPolicy Local must preserve the client IP"
    );
    // Cluster traffic to the Local service still uses every endpoint.
    let got = ids(
        &pod.tcp_requests("10.96.0.52", 80, 40, TIMEOUT),
        "etp local clusterIP",
    );
    assert_eq!(
        counts(&got).len(),
        2,
        "ClusterIP of a Local service: {:?}",
        counts(&got)
    );

    // Local policy, no local endpoint: dropped (time out, not refused).
    for _ in 0..2 {
        assert_dropped(
            c.client().tcp_request(NODE_IP, 30082, DROP_TIMEOUT),
            "node port 30082 (Local, endpoints only on node-b)",
        );
    }
    // ... while its ClusterIP still reaches the remote endpoint.
    let got = ids(
        &pod.tcp_requests("10.96.0.53", 80, 5, TIMEOUT),
        "remote-only clusterIP",
    );
    assert_eq!(counts(&got), BTreeMap::from([("r".to_string(), 5)]));
}

// ---------------------------------------------------------------------------
// 6. LoadBalancer source ranges
// ---------------------------------------------------------------------------

#[test]
fn loadbalancer_source_ranges() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let p = c.add_pod("lb", "10.244.0.61");
    p.spawn_tcp_server("10.244.0.61", 8080).unwrap();
    c.add_client_address("198.51.100.7");
    let yaml = nodes_yaml()
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
        );
    program(c.node(), &yaml, &[]);

    for _ in 0..5 {
        let id = Identity::parse(
            &c.client()
                .tcp_request_from(sa("198.51.100.7", 0), "203.0.113.10", 443, TIMEOUT)
                .expect("198.51.100.7 is inside loadBalancerSourceRanges"),
        );
        assert_eq!(id.server, "lb");
        assert_eq!(id.local, sa("10.244.0.61", 8080));
    }
    for _ in 0..2 {
        assert_dropped(
            c.client().tcp_request("203.0.113.10", 443, DROP_TIMEOUT),
            "LB IP from 192.168.0.100 (outside loadBalancerSourceRanges)",
        );
    }
    // The ranges filter the LB IP only: the node port stays open to everyone.
    let id = Identity::parse(&c.client().tcp_request(NODE_IP, 30443, TIMEOUT).unwrap());
    assert_eq!(id.server, "lb");
}

// ---------------------------------------------------------------------------
// 7. no endpoints
// ---------------------------------------------------------------------------

#[test]
fn no_endpoints_rejects_at_once() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let client = c.add_pod("c", "10.244.0.20");
    let yaml = nodes_yaml() + &http_service("empty", "10.96.0.71", &[], &[]);
    program(c.node(), &yaml, &[]);

    for (what, ns) in [("pod", &client), ("node", c.node())] {
        for _ in 0..3 {
            let t = Instant::now();
            let e = ns
                .tcp_request("10.96.0.71", 80, TIMEOUT)
                .expect_err("a Service without endpoints must not answer");
            let took = t.elapsed();
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{what}: {e}");
            assert!(
                took < Duration::from_secs(1),
                "{what}: refusal must be immediate, took {took:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 8. session affinity
// ---------------------------------------------------------------------------

#[test]
fn session_affinity_client_ip() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let eps = [
        ("s1", "10.244.0.81"),
        ("s2", "10.244.0.82"),
        ("s3", "10.244.0.83"),
    ];
    for (name, ip) in eps {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let clients: Vec<Netns> = (0..8)
        .map(|i| c.add_pod(&format!("c{i}"), format!("10.244.0.{}", 100 + i)))
        .collect();
    let yaml = nodes_yaml()
        + &http_service(
            "sticky",
            "10.96.0.81",
            &eps.map(|(_, ip)| (ip, NODE_A)),
            &[
                "sessionAffinity: ClientIP",
                "sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}",
            ],
        );
    program(c.node(), &yaml, &[]);

    let got = ids(
        &clients[0].tcp_requests("10.96.0.81", 80, 30, TIMEOUT),
        "c0",
    );
    let n = counts(&got);
    assert_eq!(
        n.len(),
        1,
        "30 connections from one client must stick to one endpoint: {n:?}"
    );

    let mut chosen = BTreeMap::new();
    for (i, cl) in clients.iter().enumerate() {
        let got = ids(
            &cl.tcp_requests("10.96.0.81", 80, 5, TIMEOUT),
            &format!("c{i}"),
        );
        let n = counts(&got);
        assert_eq!(n.len(), 1, "c{i} must stick to one endpoint: {n:?}");
        chosen.insert(format!("c{i}"), n.into_keys().next().unwrap());
    }
    let distinct: BTreeSet<&String> = chosen.values().collect();
    assert!(
        distinct.len() > 1,
        "8 different clients all landed on one endpoint (affinity must be per client): {chosen:?}"
    );

    // `trace --live` with the affinity map full of the datapath's entries: those are not
    // read back (docs/trace.md), so the live trace is the offline one, a client not seen
    // before, spread over all three endpoints.
    let listing = c.node().nft_list_table("ip", "kube-nftproxy");
    assert!(
        listing.contains("expires"),
        "the datapath remembered clients:\n{listing}"
    );
    let dir = TempDir::new("affinity-trace");
    let file = dir.write("cluster.yaml", &yaml);
    let trace = |live: bool| {
        let mut cmd = c.node().command(BIN);
        cmd.args([
            "trace",
            "--src",
            "10.244.0.100",
            "--dst",
            "10.96.0.81",
            "--port",
            "80",
        ])
        .args(["--output", "json"])
        .args(BASE_ARGS)
        .arg(&file);
        if live {
            cmd.arg("--live");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "trace: {}", out_text(&out));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        j["outcomes"].clone()
    };
    let live = trace(true);
    assert_eq!(live, trace(false));
    assert_eq!(live.as_array().map(Vec::len), Some(3), "{live}");
}

/// The affinity sets of our `ip` table in `ns` and the clients each holds, by set name
/// (`affinity-<hash>-ns/name/proto/port__<endpoint ip>/<port>`), from `nft list`.
fn affinity_sets(ns: &Netns) -> BTreeMap<String, BTreeSet<String>> {
    let text = ns.nft_list_table("ip", "kube-nftproxy");
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_elements = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("set affinity-") {
            let name = format!("affinity-{}", rest.trim_end_matches(" {"));
            out.insert(name.clone(), BTreeSet::new());
            current = Some(name);
            continue;
        }
        let Some(name) = &current else { continue };
        if line == "}" && !in_elements {
            current = None;
            continue;
        }
        let body = match line.strip_prefix("elements = {") {
            Some(b) => {
                in_elements = true;
                b
            }
            None if in_elements => line,
            None => continue,
        };
        for word in body.split(|c: char| c == ',' || c.is_whitespace()) {
            if word.parse::<std::net::Ipv4Addr>().is_ok() {
                out.get_mut(name).unwrap().insert(word.to_string());
            }
        }
        if body.contains('}') {
            in_elements = false;
        }
    }
    out
}

/// The endpoint IP an affinity set belongs to (from its name).
fn set_endpoint(name: &str) -> &str {
    name.rsplit_once("__")
        .and_then(|(_, ep)| ep.split_once('/'))
        .map(|(ip, _)| ip)
        .unwrap_or("")
}

/// Which endpoint (server name) each client reaches on `vip`, one request each; every
/// client must get an answer.
fn picks(clients: &[(String, Netns)], vip: &str) -> BTreeMap<String, String> {
    clients
        .iter()
        .map(|(name, ns)| {
            let r = ns.tcp_request(vip, 80, TIMEOUT);
            let id = Identity::parse(r.as_ref().unwrap_or_else(|e| panic!("{name}: {e}")));
            (name.clone(), id.server)
        })
        .collect()
}

const AFFINITY_3S: [&str; 2] = [
    "sessionAffinity: ClientIP",
    "sessionAffinityConfig: {clientIP: {timeoutSeconds: 3}}",
];

#[test]
fn a_busy_affinity_client_stays_past_the_timeout() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let eps = [
        ("e1", "10.244.0.111"),
        ("e2", "10.244.0.112"),
        ("e3", "10.244.0.113"),
        ("e4", "10.244.0.114"),
    ];
    for (name, ip) in eps {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let client = c.add_pod("busy", "10.244.0.120");
    let yaml = nodes_yaml()
        + &http_service(
            "sticky",
            "10.96.0.111",
            &eps.map(|(_, ip)| (ip, NODE_A)),
            &AFFINITY_3S,
        );
    program(c.node(), &yaml, &[]);
    // One connection a second for 7 s with a 3 s timeout: each reuse refreshes the
    // timeout, so the client never expires (without the refresh it would be forgotten at
    // 3 s and 6 s and drawn again among 4 endpoints).
    let mut seen = Vec::new();
    for _ in 0..8 {
        let r = client.tcp_request("10.96.0.111", 80, TIMEOUT);
        seen.push(Identity::parse(&r.expect("busy client")).server);
        std::thread::sleep(Duration::from_secs(1));
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 1, "a busy client moved: {seen:?}");
    // It is remembered in its endpoint's set only.
    let holding: Vec<String> = affinity_sets(c.node())
        .into_iter()
        .filter(|(_, clients)| clients.contains("10.244.0.120"))
        .map(|(name, _)| name)
        .collect();
    let ip_of = |server: &str| eps.iter().find(|(n, _)| *n == server).unwrap().1;
    assert_eq!(holding.len(), 1, "{holding:?}");
    assert_eq!(set_endpoint(&holding[0]), ip_of(&seen[0]), "{holding:?}");
    // Idle past the timeout, it is forgotten (the datapath expires it).
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        affinity_sets(c.node()).values().all(|cl| cl.is_empty()),
        "an idle client is still remembered after its timeout: {:?}",
        affinity_sets(c.node())
    );
}

#[test]
fn affinity_survives_scale_up_full_sync_and_forgets_only_a_gone_endpoint() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    let eps = [
        ("e1", "10.244.0.131"),
        ("e2", "10.244.0.132"),
        ("e3", "10.244.0.133"),
    ];
    for (name, ip) in eps {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let clients: Vec<(String, Netns)> = (0..8)
        .map(|i| {
            let name = format!("c{i}");
            let ns = c.add_pod(&name, format!("10.244.0.{}", 140 + i));
            (name, ns)
        })
        .collect();
    let sticky = ["sessionAffinity: ClientIP"]; // the default timeout, 3 h
                                                // A plain Service beside it, whose endpoint count changes at the full sync: the
                                                // rewrite must then delete a per-count map and chain the flushed rules and maps
                                                // referred to, in the same transaction.
    let plain = |n: usize| {
        let eps = [("10.244.0.131", NODE_A), ("10.244.0.132", NODE_A)];
        http_service("plain", "10.96.0.139", &eps[..n], &[])
    };
    let with_plain = |eps: &[(&str, &str)], n: usize| {
        let eps: Vec<(&str, &str)> = eps.iter().map(|(_, ip)| (*ip, NODE_A)).collect();
        nodes_yaml() + &http_service("sticky", "10.96.0.131", &eps, &sticky) + &plain(n)
    };
    let with = |eps: &[(&str, &str)]| with_plain(eps, 2);
    program(c.node(), &with_plain(&eps[..2], 1), &[]);
    let first = picks(&clients, "10.96.0.131");
    assert!(first.values().all(|s| s == "e1" || s == "e2"), "{first:?}");

    // Scale-up (a partial sync): every remembered client keeps its endpoint.
    let up = program(c.node(), &with_plain(&eps, 1), &[]);
    if up.path == SyncPath::Apply {
        assert!(up.has_line_starting("partial sync"), "{}", up.stdout);
    }
    assert_eq!(picks(&clients, "10.96.0.131"), first, "after the scale-up");

    // A full sync over the existing table (no last-applied state: `apply` cannot diff)
    // rewrites it in place and keeps the affinity sets.
    let _ = std::fs::remove_dir_all(state_dir(c.node()));
    let full = program(c.node(), &with(&eps), &[]);
    if full.path == SyncPath::Apply {
        assert!(full.has_line_starting("full sync"), "{}", full.stdout);
    }
    assert_eq!(picks(&clients, "10.96.0.131"), first, "after a full sync");
    let listed = c.node().nft_list_table("ip", "kube-nftproxy");
    assert!(
        listed.contains("map service-endpoints-2") && !listed.contains("service-endpoints-1"),
        "{listed}"
    );
    let plain_served = counts(&ids(
        &clients[0].1.tcp_requests("10.96.0.139", 80, 20, TIMEOUT),
        "plain",
    ));
    assert_eq!(plain_served.len(), 2, "{plain_served:?}");

    // The endpoint of c0 goes away: its clients are drawn again, every other client
    // keeps its endpoint, and the gone endpoint's set goes with it.
    let gone = first["c0"].clone();
    let kept: Vec<(&str, &str)> = eps.iter().copied().filter(|(n, _)| *n != gone).collect();
    program(c.node(), &with(&kept), &[]);
    let after = picks(&clients, "10.96.0.131");
    for (client, server) in &first {
        if *server == gone {
            assert_ne!(
                after[client], gone,
                "{client} still reaches the gone endpoint"
            );
        } else {
            assert_eq!(
                &after[client], server,
                "{client} lost its endpoint: {after:?}"
            );
        }
    }
    let gone_ip = eps.iter().find(|(n, _)| *n == gone).unwrap().1;
    let sets = affinity_sets(c.node());
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert!(sets.keys().all(|n| set_endpoint(n) != gone_ip), "{sets:?}");
}

#[test]
fn two_affinity_services_do_not_share_capacity() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    for (name, ip) in [("a1", "10.244.0.151"), ("b1", "10.244.0.152")] {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let client = c.add_pod("k", "10.244.0.160");
    let yaml = nodes_yaml()
        + &http_service(
            "sa",
            "10.96.0.151",
            &[("10.244.0.151", NODE_A)],
            &AFFINITY_3S,
        )
        + &http_service(
            "sb",
            "10.96.0.152",
            &[("10.244.0.152", NODE_A)],
            &AFFINITY_3S,
        );
    program(c.node(), &yaml, &[]);
    let listed = c.node().nft_list_table("ip", "kube-nftproxy");
    let sets = affinity_sets(c.node());
    let names: Vec<&String> = sets.keys().collect();
    assert_eq!(names.len(), 2, "one set per Service endpoint: {names:?}");
    assert!(
        names.iter().any(|n| n.contains("/sa/")) && names.iter().any(|n| n.contains("/sb/")),
        "{names:?}"
    );
    // Each set has its own capacity: the kernel's default cap for a set `update` writes
    // (we declare no size: a declared one is also the initial hash table size).
    assert_eq!(listed.matches("size 65535").count(), 2, "{listed}");
    ids(&client.tcp_requests("10.96.0.151", 80, 3, TIMEOUT), "sa");
    let sets = affinity_sets(c.node());
    for (name, clients) in &sets {
        let want: BTreeSet<String> = if name.contains("/sa/") {
            ["10.244.0.160".to_string()].into()
        } else {
            BTreeSet::new()
        };
        assert_eq!(clients, &want, "{name}: traffic to sa fills sa's set only");
    }
}

// ---------------------------------------------------------------------------
// 9. live endpoint change (partial sync)
// ---------------------------------------------------------------------------

#[test]
fn endpoint_change_is_hitless() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::new();
    for (name, ip) in [
        ("a", "10.244.0.91"),
        ("b", "10.244.0.92"),
        ("n", "10.244.0.93"),
    ] {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let client = c.add_pod("k", "10.244.0.20");
    // Unrelated Services, so a partial sync has something to leave alone.
    let others = http_service("other", "10.96.0.95", &[("10.244.0.93", NODE_A)], &[])
        + &http_service("nothing", "10.96.0.96", &[], &[]);
    let state_a = nodes_yaml()
        + &http_service(
            "live",
            "10.96.0.91",
            &[("10.244.0.91", NODE_A), ("10.244.0.92", NODE_A)],
            &[],
        )
        + &others;
    let state_b = nodes_yaml()
        + &http_service(
            "live",
            "10.96.0.91",
            &[("10.244.0.91", NODE_A), ("10.244.0.93", NODE_A)],
            &[],
        )
        + &others;
    let first = program(c.node(), &state_a, &[]);
    if first.path == SyncPath::Apply {
        assert!(
            first.has_line_starting("full sync"),
            "first apply into an empty namespace must report a full sync:\n{}",
            first.stdout
        );
    }
    let n = counts(&ids(
        &client.tcp_requests("10.96.0.91", 80, 30, TIMEOUT),
        "state A",
    ));
    assert_eq!(n.keys().collect::<Vec<_>>(), ["a", "b"], "state A: {n:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let stop = stop.clone();
        let client = client.clone();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = client.tcp_request("10.96.0.91", 80, TIMEOUT);
                log.push((t, r));
                std::thread::sleep(Duration::from_millis(20));
            }
            log
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = Instant::now();
    let second = program(c.node(), &state_b, &[]);
    let after = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let log = bg.join().expect("client thread");

    let errors: Vec<String> = log
        .iter()
        .filter_map(|(t, r)| {
            let at = if *t >= before {
                format!("+{:?}", *t - before)
            } else {
                format!("-{:?}", before - *t)
            };
            r.as_ref()
                .err()
                .map(|e| format!("{at} from sync start: {e}"))
        })
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} connections failed during the endpoint change: {errors:?}",
        errors.len(),
        log.len()
    );
    let served = |from: Instant, to: Instant| {
        let v: Vec<Identity> = log
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, r)| Identity::parse(r.as_ref().unwrap()))
            .collect();
        counts(&v)
    };
    let far_past = before - Duration::from_secs(3600);
    let old = served(far_past, before);
    let new = served(after, Instant::now());
    eprintln!(
        "{} connections; before the change {old:?}, after {new:?}; sync took {:?}",
        log.len(),
        second.elapsed
    );
    assert!(
        !old.contains_key("n"),
        "the new endpoint served before the change: {old:?}"
    );
    assert!(
        new.get("n").copied().unwrap_or(0) > 0,
        "the new endpoint gets no traffic after the change: {new:?}"
    );
    assert!(
        !new.contains_key("b"),
        "the removed endpoint still gets traffic: {new:?}"
    );
    let n = counts(&ids(
        &client.tcp_requests("10.96.0.91", 80, 30, TIMEOUT),
        "state B",
    ));
    assert_eq!(n.keys().collect::<Vec<_>>(), ["a", "n"], "state B: {n:?}");
    // The untouched Services still work.
    let id = Identity::parse(&client.tcp_request("10.96.0.95", 80, TIMEOUT).unwrap());
    assert_eq!(id.server, "n");
    let e = client.tcp_request("10.96.0.96", 80, TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    if second.path == SyncPath::Apply {
        assert!(
            second.has_line_starting("partial sync"),
            "re-apply over existing tables must be a partial sync:\n{}",
            second.stdout
        );
    } else {
        eprintln!("fallback path: partial-sync report not checked");
    }
}

// ---------------------------------------------------------------------------
// 10. apply == render
// ---------------------------------------------------------------------------

/// `nft list table <family> kube-nftproxy` for each family that has the table.
fn list_ours(ns: &Netns) -> BTreeMap<String, String> {
    let tables = ns.exec_ok(["nft", "list", "tables"]);
    let mut out = BTreeMap::new();
    for fam in ["ip", "ip6", "inet"] {
        if tables
            .lines()
            .any(|l| l.trim() == format!("table {fam} kube-nftproxy"))
        {
            out.insert(fam.to_string(), ns.nft_list_table(fam, "kube-nftproxy"));
        }
    }
    out
}

#[test]
fn apply_programs_exactly_what_render_prints() {
    if !require_root_and_tools() || !skip_unless_apply("apply_programs_exactly_what_render_prints")
    {
        return;
    }
    let dirs: Vec<PathBuf> = scenario_dirs()
        .into_iter()
        .filter(|d| d.join("expected.nft").is_file())
        .collect();
    assert!(dirs.len() >= 20, "only {} scenarios found", dirs.len());
    let id = random_id();
    let mut failures = Vec::new();
    let t = Instant::now();
    for (i, dir) in dirs.iter().enumerate() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let a = Netns::create(&format!("kntp-{id}-ca{i}"), "apply").unwrap();
        let b = Netns::create(&format!("kntp-{id}-cb{i}"), "nft").unwrap();
        let mut args = vec!["apply".to_string()];
        args.extend(scenario_args(dir));
        let out = run_in_ns(&a, &args, &dir.join("cluster.yaml"), &[]);
        if !out.status.success() {
            failures.push(format!("{name}: apply failed: {}", out_text(&out)));
            continue;
        }
        let expected = std::fs::read_to_string(dir.join("expected.nft")).unwrap();
        if let Err(e) = b.nft_apply(&expected) {
            failures.push(format!("{name}: nft -f expected.nft failed: {e}"));
            continue;
        }
        let (la, lb) = (list_ours(&a), list_ours(&b));
        if la.keys().ne(lb.keys()) {
            failures.push(format!(
                "{name}: apply created tables in families {:?}, expected.nft in {:?}",
                la.keys().collect::<Vec<_>>(),
                lb.keys().collect::<Vec<_>>()
            ));
            continue;
        }
        for (fam, want) in &lb {
            let got = &la[fam];
            if normalize(got) != normalize(want) {
                failures.push(format!(
                    "{name}: table {fam} kube-nftproxy differs\n{}",
                    line_diff(&normalize(want), &normalize(got))
                ));
            }
        }
        // Namespaces a, b are destroyed here (drop).
    }
    eprintln!("{} scenarios compared in {:?}", dirs.len(), t.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Lines only in `want` (-) or only in `got` (+), in order of appearance.
fn line_diff(want: &str, got: &str) -> String {
    let w: BTreeSet<&str> = want.lines().collect();
    let g: BTreeSet<&str> = got.lines().collect();
    let mut s = String::new();
    for l in want.lines().filter(|l| !g.contains(l)) {
        s += &format!("- {l}\n");
    }
    for l in got.lines().filter(|l| !w.contains(l)) {
        s += &format!("+ {l}\n");
    }
    if s.is_empty() {
        s = "(same lines, different order or count)\n".into();
    }
    s
}

// ---------------------------------------------------------------------------
// 11. atomicity
// ---------------------------------------------------------------------------

#[test]
fn refused_transaction_leaves_previous_ruleset_serving() {
    if !require_root_and_tools()
        || !skip_unless_apply("refused_transaction_leaves_previous_ruleset_serving")
    {
        return;
    }
    let mut c = Cluster::new();
    for (name, ip) in [("a", "10.244.0.111"), ("b", "10.244.0.112")] {
        c.add_pod(name, ip).spawn_tcp_server(ip, 8080).unwrap();
    }
    let client = c.add_pod("k", "10.244.0.20");
    let state = |eps: &[(&str, &str)]| {
        nodes_yaml()
            + &http_service("svc", "10.96.0.111", eps, &[])
            + &http_service("gone-in-b", "10.96.0.112", &[("10.244.0.111", NODE_A)], &[])
    };
    let state_a = state(&[("10.244.0.111", NODE_A)]);
    // B: other endpoint, one Service removed, one added.
    let state_b = nodes_yaml()
        + &http_service("svc", "10.96.0.111", &[("10.244.0.112", NODE_A)], &[])
        + &http_service("new-in-b", "10.96.0.113", &[("10.244.0.112", NODE_A)], &[]);

    program(c.node(), &state_a, &[]);
    let check_a = |what: &str| {
        let n = counts(&ids(
            &client.tcp_requests("10.96.0.111", 80, 20, TIMEOUT),
            what,
        ));
        assert_eq!(n, BTreeMap::from([("a".to_string(), 20)]), "{what}");
        let id = Identity::parse(&client.tcp_request("10.96.0.112", 80, TIMEOUT).unwrap());
        assert_eq!(id.server, "a", "{what}");
        assert!(
            client.tcp_request("10.96.0.113", 80, DROP_TIMEOUT).is_err(),
            "{what}: B's new Service must not exist"
        );
    };
    check_a("state A");
    // Another program holds `ip6 kube-nftproxy` (nft's owner flag): this IPv4-only apply
    // deletes our table of a family it no longer proxies in the same batch, so the kernel
    // refuses the whole batch.
    let holder = c
        .node()
        .hold_owned_table("ip6", "kube-nftproxy")
        .expect("hold an owned ip6 table");
    let listing_a = c.node().nft_list_ruleset();

    let (_, out, _) = try_program(c.node(), &state_b, &[], &[]);
    assert!(
        !out.status.success(),
        "apply must fail while another program owns ip6 kube-nftproxy (the kernel refuses the batch): {}",
        out_text(&out)
    );
    eprintln!(
        "refused apply said: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let listing_after = c.node().nft_list_ruleset();
    assert!(
        listing_after == listing_a,
        "a refused transaction changed the ruleset:\n{}",
        line_diff(&listing_a, &listing_after)
    );
    drop(holder);
    check_a("after the refused transaction");

    let synced = program(c.node(), &state_b, &[]);
    let n = counts(&ids(
        &client.tcp_requests("10.96.0.111", 80, 20, TIMEOUT),
        "state B",
    ));
    assert_eq!(n, BTreeMap::from([("b".to_string(), 20)]), "state B");
    let id = Identity::parse(&client.tcp_request("10.96.0.113", 80, TIMEOUT).unwrap());
    assert_eq!(id.server, "b");
    assert!(
        client.tcp_request("10.96.0.112", 80, DROP_TIMEOUT).is_err(),
        "removed Service must be gone"
    );
    eprintln!("repairing sync: {}", synced.stdout.trim());
}

// ---------------------------------------------------------------------------
// cleanup
// ---------------------------------------------------------------------------

/// `kube-nftproxy cleanup` inside `ns` (with the same state dir as apply there).
fn cleanup(ns: &Netns) -> Output {
    let mut cmd = ns.command(BIN);
    cmd.arg("cleanup")
        .env("RUST_LOG", "warn")
        .env("KUBE_NFTPROXY_STATE_DIR", state_dir(ns))
        .stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("running cleanup in {}: {e}", ns.name()))
}

#[test]
fn cleanup_removes_only_our_tables() {
    if !require_root_and_tools() || !skip_unless_apply("cleanup_removes_only_our_tables") {
        return;
    }
    let mut c = Cluster::new();
    c.add_pod("a", "10.244.0.121")
        .spawn_tcp_server("10.244.0.121", 8080)
        .unwrap();
    let client = c.add_pod("k", "10.244.0.20");
    let yaml = nodes_yaml() + &http_service("svc", "10.96.0.121", &[("10.244.0.121", NODE_A)], &[]);
    program(c.node(), &yaml, &[]);
    c.node()
        .nft_apply("table inet not-ours {\n chain c {\n type filter hook input priority 0; policy accept;\n }\n}\n")
        .unwrap();
    let id = Identity::parse(&client.tcp_request("10.96.0.121", 80, TIMEOUT).unwrap());
    assert_eq!(id.server, "a");

    let out = cleanup(c.node());
    assert!(out.status.success(), "cleanup failed: {}", out_text(&out));
    let tables = c.node().exec_ok(["nft", "list", "tables"]);
    assert_eq!(
        tables.trim(),
        "table inet not-ours",
        "cleanup must remove exactly the kube-nftproxy tables"
    );
    assert!(
        client.tcp_request("10.96.0.121", 80, DROP_TIMEOUT).is_err(),
        "the ClusterIP must be gone after cleanup"
    );
    // A second cleanup is harmless; a new apply is a full sync again.
    let out = cleanup(c.node());
    assert!(
        out.status.success(),
        "second cleanup failed: {}",
        out_text(&out)
    );
    let again = program(c.node(), &yaml, &[]);
    assert!(again.has_line_starting("full sync"), "{}", again.stdout);
    let id = Identity::parse(&client.tcp_request("10.96.0.121", 80, TIMEOUT).unwrap());
    assert_eq!(id.server, "a");
}

/// `apply` of an input with no object the proxy reads (an empty file) is an error that
/// changes nothing; `--allow-empty` applies the empty ruleset.
#[test]
fn apply_of_an_empty_input_changes_nothing_unless_allowed() {
    if !require_root_and_tools() {
        return;
    }
    let c = Cluster::new();
    let node = c.node();
    let dir = TempDir::new("empty");
    let empty = dir.write("empty.yaml", "# nothing here\n");
    let apply = |extra: &[&str]| {
        node.command(BIN)
            .arg("apply")
            .args(BASE_ARGS)
            .args(extra)
            .arg(&empty)
            .env("KUBE_NFTPROXY_STATE_DIR", dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = apply(&[]);
    assert!(!out.status.success(), "an empty input must be an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty.yaml") && err.contains("nothing changed"),
        "{err}"
    );
    assert!(
        !node
            .nft(["list", "table", "ip", "kube-nftproxy"])
            .status
            .success(),
        "a refused empty apply created our table"
    );
    let out = apply(&["--allow-empty"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node
        .nft(["list", "table", "ip", "kube-nftproxy"])
        .status
        .success());
}

/// `trace --live` and `explain --live` in the container image's root filesystem (assembled
/// by `deploy/build-image.sh --rootfs-only` around this build's binary: the binary and the
/// libraries `ldd` names, no `nft`, no shell), chrooted inside the node namespace: they
/// read the tables `apply` programmed over netlink and trace them like the rendered ones.
#[test]
fn trace_live_runs_in_the_image_rootfs_without_nft() {
    if !require_root_and_tools() {
        return;
    }
    if Command::new("chroot").arg("--version").output().is_err() {
        eprintln!("skipping: no chroot");
        return;
    }
    let c = Cluster::new();
    let eps = [("10.244.0.91", NODE_A), ("10.244.1.91", NODE_B)];
    let yaml = nodes_yaml() + &http_service("live", "10.96.0.91", &eps, &[]);
    program(c.node(), &yaml, &[]);

    let dir = TempDir::new("rootfs");
    let rootfs = dir.path().join("rootfs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("deploy/build-image.sh"))
        .arg("--rootfs-only")
        .arg(&rootfs)
        .env("KUBE_NFTPROXY_BIN", BIN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "build-image.sh: {}", out_text(&out));
    for tool in ["usr/sbin/nft", "sbin/nft", "usr/bin/nft", "bin/sh"] {
        assert!(!rootfs.join(tool).exists(), "the image has {tool}");
    }
    std::fs::write(rootfs.join("cluster.yaml"), &yaml).unwrap();

    let run = |args: &[&str]| {
        let out = c
            .node()
            .command("chroot")
            .arg(&rootfs)
            .arg("/usr/local/bin/kube-nftproxy")
            .args(args)
            .args(BASE_ARGS)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", out_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let trace = |files: &[&str]| {
        let mut args = vec![
            "trace",
            "--live",
            "--src",
            "10.244.0.20",
            "--dst",
            "10.96.0.91",
            "--port",
            "80",
            "--output",
            "json",
        ];
        args.extend(files);
        let j: serde_json::Value = serde_json::from_str(&run(&args)).expect("trace JSON");
        assert_eq!(j["source"], "live");
        let eps: BTreeSet<String> = (j["outcomes"].as_array().unwrap().iter())
            .map(|o| {
                assert_eq!(o["verdict"], "dnat", "{o}");
                let d = &o["destination"];
                format!("{}:{}", d["addr"].as_str().unwrap(), d["port"])
            })
            .collect();
        assert_eq!(
            eps,
            BTreeSet::from(["10.244.0.91:8080".to_string(), "10.244.1.91:8080".into()]),
            "{j}"
        );
    };
    // no files: the kernel's tables alone; with files: they also name the owners
    trace(&[]);
    trace(&["/cluster.yaml"]);
    let explained = run(&["explain", "--live", "default/live", "/cluster.yaml"]);
    let j: serde_json::Value = serde_json::from_str(&run(&[
        "explain",
        "--live",
        "default/live",
        "--output",
        "json",
        "/cluster.yaml",
    ]))
    .expect("explain JSON");
    assert_eq!(j["source"], "live");
    assert_eq!(j["ports"][0]["endpoints"].as_array().map(Vec::len), Some(2));
    assert!(
        explained.contains("(rules: this node's kernel)")
            && explained.contains(
                "ip @service-endpoints-2: 10.96.0.91 . tcp . 80 . 1 : 10.244.1.91 . 8080"
            ),
        "{explained}"
    );
}
