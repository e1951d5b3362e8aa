//! Fuzzing on stable: proptest drivers that run in CI with a fixed case budget.
//!
//! * `decoder_*`: arbitrary text, and mutations (bytes, and values swapped deep inside the
//!   object tree) of every shipped `testdata/*/cluster.yaml`, into `ClusterObjects::add_text`
//!   (then `render`), and into the watcher's decoders (`objects::api` lists and watch
//!   events, then the conversion to the slim types): never a panic.
//! * `config_*`: arbitrary and mutated KubeProxyConfiguration files into `parse_config`:
//!   never a panic, and every error names the file.
//! * `sequences_*`: random sequences of Service/EndpointSlice adds, changes and deletes
//!   applied to `agent::desired::Desired`: after every step the kept IR equals a fresh
//!   render of the same objects, modulo the slot order under each endpoint map key (the
//!   agent keeps slots stable, render numbers them in address order: what must match is
//!   the endpoints under every key, with slots 0..N-1 all present); as root with `nft`, every transaction is also sent to the
//!   kernel of a network namespace this test creates, which must accept it.
//!
//! Budget: `FUZZ_CASES=N` sets the cases of every driver (CI default: a few seconds
//! each), e.g. `FUZZ_CASES=20000 cargo test --release --test fuzz -- --nocapture`.
//! Failures print proptest's minimal case; each one found becomes a named test below.

mod support;

use std::path::Path;

use kube::core::{ObjectList, WatchEvent};
use kube_nftproxy::agent::desired::Desired;
use kube_nftproxy::cli::config::parse_config;
use kube_nftproxy::model::options::Options;
use kube_nftproxy::nft::netlink;
use kube_nftproxy::objects::{self, api, input::ClusterObjects};
use kube_nftproxy::ruleset::render;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

fn opts() -> Options {
    Options {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Options::default()
    }
}

/// Every shipped cluster.yaml, as text.
fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path().join("cluster.yaml");
        if let Ok(t) = std::fs::read_to_string(&p) {
            out.push(t);
        }
    }
    out.sort();
    assert!(out.len() > 10, "testdata seeds");
    out
}

/// Values that break decoders and models: wrong types, out of range, odd strings.
fn weird() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("eighty")),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(65536)),
        Just(json!(2147483648u64)),
        Just(json!(-9223372036854775808i64)),
        Just(json!(1e308)),
        Just(json!(0.5)),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        Just(json!("")),
        Just(json!("::")),
        Just(json!("10.0.0.1/33")),
        Just(json!("256.1.1.1")),
        Just(json!("fe80::1%eth0")),
        Just(json!(" 10.0.0.1 ")),
        Just(json!("a".repeat(300))),
        Just(json!([null, "x", 1])),
        Just(json!({"items": [{"kind": "Service"}]})),
        Just(json!("SCTP")),
        Just(json!("Local")),
        Just(json!("ClientIP")),
        "\\PC{0,20}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]
}

/// Replaces the `n`-th node (depth-first, modulo the node count) of `v` with `with`.
fn replace_nth(v: &mut Value, n: usize, with: Value) {
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut Value, n: &mut usize, with: &mut Option<Value>) {
        if *n == 0 {
            if let Some(w) = with.take() {
                *v = w;
            }
            return;
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter_mut().for_each(|c| walk(c, n, with)),
            Value::Object(o) => o.values_mut().for_each(|c| walk(c, n, with)),
            _ => {}
        }
    }
    let mut n = n % count(v);
    walk(v, &mut n, &mut Some(with));
}

/// Byte-level mutations of a text.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, String),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 0..40usize).prop_map(|(i, l)| Mutation::Delete(i, l)),
        (
            any::<usize>(),
            prop_oneof![
                Just(": ".to_string()),
                Just("- ".to_string()),
                Just("\n".to_string()),
                Just("{".to_string()),
                Just("]".to_string()),
                Just("&a *a".to_string()),
                Just("!!binary".to_string()),
                Just("---\n".to_string()),
                Just("\"".to_string()),
                "\\PC{0,8}",
            ]
        )
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), 0..200usize).prop_map(|(i, l)| Mutation::Duplicate(i, l)),
    ]
}

fn mutate(text: &str, muts: &[Mutation]) -> String {
    let mut b = text.as_bytes().to_vec();
    for m in muts {
        let at = |i: usize| if b.is_empty() { 0 } else { i % (b.len() + 1) };
        match m {
            Mutation::Flip(i, x) if !b.is_empty() => {
                let i = i % b.len();
                b[i] ^= x;
            }
            Mutation::Flip(..) => {}
            Mutation::Delete(i, l) => {
                let i = at(*i);
                let end = (i + l).min(b.len());
                b.drain(i..end);
            }
            Mutation::Insert(i, s) => {
                let i = at(*i);
                b.splice(i..i, s.bytes());
            }
            Mutation::Duplicate(i, l) => {
                let i = at(*i);
                let end = (i + l).min(b.len());
                let piece = b[i..end].to_vec();
                b.splice(end..end, piece);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The file path: add_text, then render. Never panics.
fn file_path(text: &str) {
    let mut objects = ClusterObjects::default();
    let mut notes = vec![];
    if objects.add_text("fuzz", text, &mut notes).is_ok() {
        let _ = render::ruleset(&objects, &opts());
    }
}

fn decode_as<K, S>(items: Vec<Value>)
where
    K: serde::de::DeserializeOwned + Clone,
    S: From<K>,
{
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "7"}, "items": items.clone()});
    if let Ok(l) = serde_json::from_value::<ObjectList<K>>(list) {
        l.items.into_iter().for_each(|o| drop(S::from(o)));
    }
    for item in items {
        for t in ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"] {
            let ev = json!({"type": t, "object": item});
            if let Ok(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) =
                serde_json::from_value::<WatchEvent<K>>(ev)
            {
                drop(S::from(o));
            }
        }
    }
}

/// The watcher path: the objects of a document, by kind, as list pages and watch events
/// decoded into the `api` types and converted. Never panics.
fn api_path(doc: &Value) {
    let items: Vec<Value> = match doc.get("items").and_then(Value::as_array) {
        Some(i) => i.clone(),
        None => vec![doc.clone()],
    };
    let of = |k: &str| -> Vec<Value> {
        items
            .iter()
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some(k))
            .cloned()
            .collect()
    };
    decode_as::<api::Service, objects::Service>(of("Service"));
    decode_as::<api::EndpointSlice, objects::EndpointSlice>(of("EndpointSlice"));
    decode_as::<api::Endpoints, objects::Endpoints>(of("Endpoints"));
    decode_as::<api::Node, objects::Node>(of("Node"));
    decode_as::<api::ServiceCIDR, objects::ServiceCidr>(of("ServiceCIDR"));
}

#[test]
fn decoder_arbitrary_text_never_panics() {
    runner(512)
        .run(&"\\PC{0,400}", |t| {
            file_path(&t);
            if let Ok(v) = serde_json::from_str::<Value>(&t) {
                api_path(&v);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn decoder_mutated_text_never_panics() {
    let seeds = seeds();
    runner(512)
        .run(
            &(0..seeds.len(), prop::collection::vec(mutation(), 1..6)),
            |(s, muts)| {
                file_path(&mutate(&seeds[s], &muts));
                Ok(())
            },
        )
        .unwrap();
}

/// Structure-aware: a seed's documents as one JSON List, with values swapped deep inside,
/// written as JSON or YAML, through both the file path and the watcher path.
#[test]
fn decoder_mutated_objects_never_panic() {
    let seeds: Vec<Value> = seeds()
        .iter()
        .map(|t| {
            let mut items = vec![];
            for d in serde_yaml::Deserializer::from_str(t) {
                let v: Value = serde::Deserialize::deserialize(d).unwrap();
                match v.get("items").and_then(Value::as_array) {
                    Some(i) => items.extend(i.iter().cloned()),
                    None if !v.is_null() => items.push(v),
                    None => {}
                }
            }
            json!({"apiVersion": "v1", "kind": "List", "items": items})
        })
        .collect();
    runner(512)
        .run(
            &(
                0..seeds.len(),
                prop::collection::vec((any::<usize>(), weird()), 1..5),
                any::<bool>(),
            ),
            |(s, swaps, yaml)| {
                let mut doc = seeds[s].clone();
                for (n, w) in swaps {
                    replace_nth(&mut doc, n, w);
                }
                let text = if yaml {
                    serde_yaml::to_string(&doc).unwrap()
                } else {
                    doc.to_string()
                };
                file_path(&text);
                api_path(&doc);
                Ok(())
            },
        )
        .unwrap();
}

fn config_seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<String> = [
        "testdata/config-file/kube-proxy-config.yaml",
        "testdata/kubeadm/config.conf",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(root.join(p)).unwrap())
    .collect();
    out.push(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n\
         clusterCIDR: 10.244.0.0/16,fd00::/48\nnftables:\n  syncPeriod: 30s\n  minSyncPeriod: 1s\n\
         conntrack:\n  maxPerCore: 32768\n  tcpEstablishedTimeout: 24h0m0s\n\
         featureGates:\n  NFTablesProxyMode: true\nnodePortAddresses: [primary]\n"
            .to_string(),
    );
    out
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = parse_config(text, Path::new("/etc/fuzz.yaml")) {
        let msg = e.to_string();
        prop_assert!(
            msg.contains("fuzz.yaml"),
            "error does not name the file: {msg}"
        );
    }
    Ok(())
}

#[test]
fn config_arbitrary_text_never_panics_and_errors_name_the_file() {
    runner(512)
        .run(&"\\PC{0,300}", |t| check_config(&t))
        .unwrap();
}

#[test]
fn config_mutated_never_panics_and_errors_name_the_file() {
    let seeds = config_seeds();
    let keyed: Vec<Value> = seeds
        .iter()
        .map(|t| serde_yaml::from_str(t).unwrap())
        .collect();
    runner(1024)
        .run(
            &(
                0..seeds.len(),
                prop::collection::vec(mutation(), 0..4),
                prop::collection::vec((any::<usize>(), weird()), 0..3),
            ),
            |(s, muts, swaps)| {
                check_config(&mutate(&seeds[s], &muts))?;
                let mut doc = keyed[s].clone();
                for (n, w) in swaps {
                    replace_nth(&mut doc, n, w);
                }
                check_config(&serde_yaml::to_string(&doc).unwrap())
            },
        )
        .unwrap();
}

// ---- object sequences -> IR ----

#[derive(Debug, Clone)]
enum Step {
    /// Adds or replaces Service `i` with variant `v`.
    Service(usize, u16),
    DeleteService(usize),
    /// Adds or replaces slice `k` of Service `i` with `n` endpoints of variant `v`.
    Slice(usize, usize, usize, u16),
    DeleteSlice(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..6usize, any::<u16>()).prop_map(|(i, v)| Step::Service(i, v)),
        1 => (0..6usize).prop_map(Step::DeleteService),
        5 => (0..6usize, 0..2usize, 0..5usize, any::<u16>()).prop_map(|(i, k, n, v)| Step::Slice(i, k, n, v)),
        1 => (0..6usize, 0..2usize).prop_map(|(i, k)| Step::DeleteSlice(i, k)),
    ]
}

/// Service `i` in variant `v`: the bits choose type, ports, protocols, affinity, policies,
/// family and a ClusterIP from a small pool (so Services sometimes collide).
fn service(i: usize, v: u16) -> Value {
    let bit = |b: u16| v & (1 << b) != 0;
    let type_ = ["ClusterIP", "NodePort", "LoadBalancer", "ClusterIP"][(v & 3) as usize];
    let dual = bit(2);
    let ip = format!("10.96.0.{}", 1 + (v >> 3) % 5);
    let proto = ["TCP", "UDP", "SCTP", "TCP"][((v >> 6) & 3) as usize];
    let mut ports = vec![json!({"name": "a", "port": 80, "protocol": proto, "targetPort": 8080})];
    if bit(8) {
        ports.push(json!({"name": "b", "port": 53, "protocol": "UDP", "targetPort": 5353}));
    }
    if type_ != "ClusterIP" {
        for (k, p) in ports.iter_mut().enumerate() {
            p["nodePort"] = json!(30000 + (v >> 9) as usize % 4 + 10 * k);
        }
    }
    let mut spec = json!({
        "type": type_, "clusterIP": ip, "ports": ports,
        "sessionAffinity": if bit(12) { "ClientIP" } else { "None" },
        "externalTrafficPolicy": if bit(13) { "Local" } else { "Cluster" },
        "internalTrafficPolicy": if bit(14) { "Local" } else { "Cluster" },
    });
    if dual {
        spec["clusterIPs"] = json!([ip, format!("fd00::{}", 1 + (v >> 3) % 5)]);
        spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
    }
    if bit(13) && type_ != "ClusterIP" {
        spec["healthCheckNodePort"] = json!(31000 + i);
    }
    let mut status = json!({});
    if type_ == "LoadBalancer" {
        status = json!({"loadBalancer": {"ingress": [{"ip": format!("192.0.2.{}", 1 + i)}]}});
        if bit(15) {
            spec["loadBalancerSourceRanges"] = json!(["198.51.100.0/24"]);
        }
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("s{i}"), "namespace": "ns"}, "spec": spec, "status": status})
}

fn slice(i: usize, k: usize, n: usize, v: u16) -> Value {
    let v6 = v & 1 != 0;
    let eps: Vec<Value> = (0..n)
        .map(|e| {
            let c = (v >> (1 + e * 2)) & 3;
            let addr = if v6 {
                format!("fd00:244::{}", 1 + e + 4 * k)
            } else {
                format!("10.244.{k}.{}", 1 + e + (v as usize >> 12))
            };
            let mut ep = json!({"addresses": [addr],
                "conditions": {"ready": c != 1, "serving": c != 2, "terminating": c == 1},
                "nodeName": if c == 3 { "node-a" } else { "node-b" }});
            if v & (1 << 11) != 0 {
                ep["hints"] = json!({"forZones": [{"name": "zone-a"}]});
            }
            ep
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("s{i}-{k}"), "namespace": "ns",
                        "labels": {"kubernetes.io/service-name": format!("s{i}")}},
           "addressType": if v6 { "IPv6" } else { "IPv4" },
           "endpoints": eps,
           "ports": [{"name": "a", "port": 8080, "protocol": "TCP"},
                     {"name": "b", "port": 5353, "protocol": "UDP"}]})
}

const NODE: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a","labels":{"topology.kubernetes.io/zone":"zone-a"}},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.10"},{"type":"InternalIP","address":"fd00:192::10"}]}}"#;

/// Runs `steps`; after each, the kept IR must equal a fresh render modulo slot order
/// (`ruleset::canonical_slots`, which also fails on a key missing a slot), and `kernel`
/// (when given) must accept the transaction.
fn run_sequence(steps: &[Step], kernel: Option<&support::Netns>) -> Result<(), TestCaseError> {
    use std::collections::BTreeMap;
    let mut services: BTreeMap<usize, Value> = BTreeMap::new();
    let mut slices: BTreeMap<(usize, usize), Value> = BTreeMap::new();
    let mut desired = Desired::new(opts());
    for (n, s) in steps.iter().enumerate() {
        match *s {
            Step::Service(i, v) => drop(services.insert(i, service(i, v))),
            Step::DeleteService(i) => drop(services.remove(&i)),
            Step::Slice(i, k, e, v) => drop(slices.insert((i, k), slice(i, k, e, v))),
            Step::DeleteSlice(i, k) => drop(slices.remove(&(i, k))),
        }
        let mut items: Vec<Value> = vec![serde_json::from_str(NODE).unwrap()];
        items.extend(services.values().cloned());
        items.extend(slices.values().cloned());
        let text = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
        let mut objects = ClusterObjects::default();
        objects.add_text("seq", &text, &mut vec![]).unwrap();
        objects.sort();
        let update = desired.update(&objects, false);
        let (fresh, _) = render::ruleset(&objects, &opts());
        let canonical = |rs| {
            kube_nftproxy::ruleset::canonical_slots(rs)
                .map_err(|e| TestCaseError::fail(format!("step {n} ({s:?}): {e}")))
        };
        if canonical(desired.ruleset())? != canonical(&fresh)? {
            let kept = kube_nftproxy::nft::text::script(desired.ruleset());
            let want = kube_nftproxy::nft::text::script(&fresh);
            return Err(TestCaseError::fail(format!(
                "step {n} ({s:?}, partial: {}): kept IR differs from a fresh render\n--- kept\n{kept}\n--- fresh\n{want}",
                !update.full
            )));
        }
        if let Some(ns) = kernel {
            let rs = desired.ruleset();
            let r = ns.run_in(|| {
                let extra = netlink::obsolete_tables(rs);
                let decls = netlink::SetDecls::from_ruleset(rs);
                netlink::apply_with(&update.tx, &extra, &decls, Some(rs)).map(|_| ())
            });
            prop_assert!(r.is_ok(), "step {n} ({s:?}): kernel refused: {:?}", r.err());
        }
    }
    Ok(())
}

#[test]
fn sequences_keep_the_ir_equal_to_a_fresh_render() {
    runner(96)
        .run(&prop::collection::vec(step(), 1..40), |steps| {
            run_sequence(&steps, None)
        })
        .unwrap();
}

#[test]
fn sequences_are_accepted_by_the_kernel() {
    if !support::require_root_and_tools() {
        return;
    }
    let ns = support::Netns::create(&format!("kntp-{}-fuzz", support::random_id()), "node")
        .expect("namespace");
    let r = runner(32).run(&prop::collection::vec(step(), 1..30), |steps| {
        run_sequence(&steps, Some(&ns))
    });
    ns.destroy();
    r.unwrap();
}

// ---- regression tests: findings and decoder robustness ----

const BAD_PORTS: &str = r#"{"metadata":{"name":"bad","namespace":"ns","resourceVersion":"5"},
  "spec":{"clusterIP":"10.96.0.9","ports":"eighty"}}"#;
const GOOD: &str = r#"{"metadata":{"name":"good","namespace":"ns","resourceVersion":"6"},
  "spec":{"clusterIP":"10.96.0.10","ports":[{"port":80,"protocol":"TCP"}]}}"#;

/// From a file, a Service that does not decode is skipped with a note; the others stay.
#[test]
fn file_input_skips_an_undecodable_service_with_a_note() {
    let with_kind = |s: &str| {
        let mut v: Value = serde_json::from_str(s).unwrap();
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Service");
        v
    };
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [with_kind(BAD_PORTS), with_kind(GOOD)]});
    for text in [list.to_string(), serde_yaml::to_string(&list).unwrap()] {
        let mut objects = ClusterObjects::default();
        let mut notes = vec![];
        objects.add_text("f", &text, &mut notes).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.services[0].metadata.name.as_deref(), Some("good"));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].object.contains("ns/bad"), "{notes:?}");
    }
}

/// The watcher decodes a list page as `ObjectList<api::Service>`: one Service with
/// `ports: "eighty"` used to fail the whole page, so the reflector never completed its list
/// and the agent programmed nothing (found by these fuzz drivers). `api::Service` now
/// decodes such an object as its name plus why, and the model notes it.
#[test]
fn watch_list_page_survives_an_undecodable_service() {
    let page = format!(
        r#"{{"apiVersion":"v1","kind":"ServiceList","metadata":{{"resourceVersion":"6"}},"items":[{BAD_PORTS},{GOOD}]}}"#
    );
    let list = serde_json::from_str::<ObjectList<api::Service>>(&page);
    assert!(list.is_ok(), "the page failed: {}", list.unwrap_err());
    // The bad one is kept by name with why, for the model to note; the good one is whole.
    let items = list.unwrap().items;
    assert_eq!(items.len(), 2);
    assert!(
        items[0]
            .invalid
            .as_deref()
            .is_some_and(|w| w.contains("eighty")),
        "{:?}",
        items[0].invalid
    );
    assert!(items[1].invalid.is_none() && items[1].spec.is_some());
}

/// The same for a watch event: today the event is a stream error, and kube's watcher
/// restarts with a relist, which fails as above.
#[test]
fn watch_event_with_an_undecodable_service_is_skipped() {
    let ev = format!(r#"{{"type":"MODIFIED","object":{BAD_PORTS}}}"#);
    assert!(serde_json::from_str::<WatchEvent<api::Service>>(&ev).is_ok());
}

/// What the two tests above rely on: the good page decodes.
#[test]
fn watch_list_page_of_good_services_decodes() {
    let page = format!(
        r#"{{"apiVersion":"v1","kind":"ServiceList","metadata":{{"resourceVersion":"6"}},"items":[{GOOD}]}}"#
    );
    let list = serde_json::from_str::<ObjectList<api::Service>>(&page).unwrap();
    assert_eq!(
        objects::Service::from(list.items[0].clone())
            .spec
            .unwrap()
            .ports
            .len(),
        1
    );
}

/// Found by the realistic benchmark (BENCHMARKS.md): the render of a dual-stack Service
/// with ClientIP affinity had an ip6 affinity rule (`update @affinity { ip6 saddr . ip6
/// daddr . meta l4proto . th dport ... : <ip6> . <port> }`) that nftables 1.0.6's `nft -f`
/// aborted on (`netlink_linearize.c:799: netlink_gen_expr: Assertion 'dreg <
/// ctx->reg_low'`), while the same ruleset applied over netlink. Affinity now keeps one
/// set of client addresses per endpoint (`update @affinity-… { ip6 saddr }`), which
/// `nft -f` 1.0.6 loads: `render` keeps its promise for IPv6 affinity too.
#[test]
fn ipv6_affinity_render_loads_with_nft_f() {
    if !support::require_root_and_tools() {
        return;
    }
    let steps = [
        Step::Service(0, (1 << 2) | (1 << 12)),
        Step::Slice(0, 0, 1, 1),
    ];
    let text = {
        let mut items: Vec<Value> = vec![serde_json::from_str(NODE).unwrap()];
        items.push(service(0, (1 << 2) | (1 << 12)));
        items.push(slice(0, 0, 1, 1));
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
    };
    let mut objects = ClusterObjects::default();
    objects.add_text("t", &text, &mut vec![]).unwrap();
    let (rs, _) = render::ruleset(&objects, &opts());
    let script = kube_nftproxy::nft::text::script(&rs);
    assert!(script.contains("{ ip6 saddr }"), "{script}");
    let ns = support::Netns::create(&format!("kntp-{}-aff6", support::random_id()), "node")
        .expect("namespace");
    // The netlink path accepts it; then the same ruleset as text.
    let by_netlink = run_sequence(&steps, Some(&ns));
    let r = ns.nft_apply(&script);
    ns.destroy();
    by_netlink.unwrap();
    r.unwrap();
}
