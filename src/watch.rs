//! The API edge: kube-rs watchers and reflectors for every kind the proxy uses. Events only
//! mark that something changed (`Changes`); the reconcile loop reads the stores when it
//! syncs, so a sync never waits on the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints,
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::input::ClusterObjects;

/// kube-proxy's selectors: Services served by another proxy, and headless ones, are not ours.
pub const PROXY_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Which API carries endpoints (`--endpoints-api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointsApi {
    /// EndpointSlices when the server serves discovery.k8s.io/v1, else v1 Endpoints.
    Auto,
    Endpointslices,
    Endpoints,
}

/// What happened since the last sync. Each event records when it arrived, so a sync can
/// report how long its changes waited (network programming latency).
#[derive(Default)]
pub struct Changes {
    notify: Notify,
    pending: Mutex<Vec<Instant>>,
    dirty: Mutex<Dirty>,
}

/// Which objects changed since the last sync, so that it can refresh its copy of the caches
/// object by object instead of copying and sorting all of them (9 ms at 10,000 Services).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Unknown (a relist replaced a whole store, or too many changes to list): refresh all.
    pub all: bool,
    /// (kind, namespace, name)
    pub objects: BTreeSet<(String, Option<String>, String)>,
}

/// More changed objects than this between two syncs: a full copy is as cheap.
const DIRTY_MAX: usize = 4096;

impl Changes {
    /// Something changed, but not one known object: the next sync reads every store.
    pub fn mark(&self) {
        if let Ok(mut d) = self.dirty.lock() {
            d.all = true;
        }
        self.arrived();
    }

    /// Object `kind` `namespace/name` was added, changed or deleted.
    pub fn mark_object(&self, kind: &str, namespace: Option<&str>, name: &str) {
        if let Ok(mut d) = self.dirty.lock() {
            if d.objects.len() < DIRTY_MAX {
                (d.objects).insert((kind.into(), namespace.map(Into::into), name.into()));
            } else {
                d.all = true;
            }
        }
        self.arrived();
    }

    fn arrived(&self) {
        if let Ok(mut p) = self.pending.lock() {
            // Bounded: under a storm only the oldest arrival matters for the latency.
            if p.len() < 4096 {
                p.push(Instant::now());
            }
        }
        self.notify.notify_one();
    }

    /// Takes the objects changed since the last call.
    pub fn take_dirty(&self) -> Dirty {
        self.dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or(Dirty {
                all: true,
                objects: BTreeSet::new(),
            })
    }

    /// Waits for the next change (returns at once if one is pending).
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Puts back the arrivals of a sync that failed: their changes are still not applied.
    pub fn restore(&self, arrivals: Vec<Instant>) {
        if let Ok(mut p) = self.pending.lock() {
            p.extend(arrivals);
        }
    }

    /// Takes the arrival times of the changes a sync is about to apply.
    pub fn take(&self) -> Vec<Instant> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// The reflector stores, read at each sync.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub endpoint_slices: Option<Store<EndpointSlice>>,
    pub endpoints: Option<Store<Endpoints>>,
    pub nodes: Store<Node>,
    pub service_cidrs: Option<Store<ServiceCIDR>>,
}

impl Stores {
    /// A consistent-enough view of the caches: each store is read once, without copying
    /// objects.
    pub fn snapshot(&self) -> ClusterObjects {
        let mut o = ClusterObjects {
            services: self.services.state(),
            endpoint_slices: self
                .endpoint_slices
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
            endpoints: self
                .endpoints
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
            nodes: self.nodes.state(),
            service_cidrs: self
                .service_cidrs
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
        };
        o.sort();
        o
    }

    /// Brings `objects`, a snapshot taken earlier, up to date for the objects in `dirty`:
    /// each is looked up in its store and put in, replaced or removed at its place in the
    /// sorted lists. Takes a full snapshot when there is none yet or `dirty.all` is set.
    /// A change that arrives while this runs is marked again, so the next sync sees it.
    pub fn refresh(&self, objects: &mut Option<ClusterObjects>, dirty: &Dirty) {
        let Some(o) = objects.as_mut().filter(|_| !dirty.all) else {
            *objects = Some(self.snapshot());
            return;
        };
        for (kind, ns, name) in &dirty.objects {
            let ns = ns.as_deref();
            match kind.as_str() {
                "Service" => patch(&self.services, &mut o.services, ns, name),
                "EndpointSlice" => {
                    if let Some(s) = &self.endpoint_slices {
                        patch(s, &mut o.endpoint_slices, ns, name)
                    }
                }
                "Endpoints" => {
                    if let Some(s) = &self.endpoints {
                        patch(s, &mut o.endpoints, ns, name)
                    }
                }
                "Node" => patch(&self.nodes, &mut o.nodes, ns, name),
                "ServiceCIDR" => {
                    if let Some(s) = &self.service_cidrs {
                        patch(s, &mut o.service_cidrs, ns, name)
                    }
                }
                _ => {}
            }
        }
    }

    /// Resolves once every watched kind has delivered its first complete list: before
    /// that, the caches could be empty and programming them would drop every Service.
    pub async fn ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        if let Some(s) = &self.endpoint_slices {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.endpoints {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.service_cidrs {
            let _ = s.wait_until_ready().await;
        }
    }
}

/// Whether the server serves this kind and lets us list it (a 404 or 403 on a one-item list
/// means no; other errors mean the server is not answering yet and are retried).
async fn served<K>(client: &Client) -> bool
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    served_api(Api::<K>::all(client.clone())).await
}

async fn served_api<K>(api: Api<K>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return true,
            // Not served, or not allowed by our RBAC: either way not usable.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
                tracing::info!(code = e.code, reason = %e.reason, "API not usable; not watching it");
                return false;
            }
            Err(e) => {
                // The server is not answering yet; the agent must not start without knowing.
                tracing::warn!(error = %e, "discovery request failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Puts the store's current copy of `namespace/name` (or its absence) into `list`, which
/// is sorted as `ClusterObjects::sort` sorts.
fn patch<K>(store: &Store<K>, list: &mut Vec<Arc<K>>, namespace: Option<&str>, name: &str)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut r = ObjectRef::<K>::new_with(name, Default::default());
    if let Some(ns) = namespace {
        r = r.within(ns);
    }
    let now = store.get(&r);
    let key = (namespace, Some(name));
    let at = list.binary_search_by(|o| {
        let m = o.meta();
        (m.namespace.as_deref(), m.name.as_deref()).cmp(&key)
    });
    match (at, now) {
        (Ok(i), Some(o)) => list[i] = o,
        (Ok(i), None) => {
            list.remove(i);
        }
        (Err(i), Some(o)) => list.insert(i, o),
        (Err(_), None) => {}
    }
}

fn watch<K>(api: Api<K>, config: watcher::Config, changes: Arc<Changes>) -> Store<K>
where
    K: Slim + Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    // Fields the proxy never reads can be most of an object's size on a real server.
    let slim = |o: &mut K| o.slim();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(slim));
    tokio::spawn(async move {
        stream
            .for_each(|ev| {
                match ev {
                    Ok(watcher::Event::Init) | Ok(watcher::Event::InitApply(_)) => {}
                    // A relist replaced the store wholesale.
                    Ok(watcher::Event::InitDone) => changes.mark(),
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::Delete(o)) => {
                        let m = o.meta();
                        let name = m.name.as_deref().unwrap_or_default();
                        changes.mark_object(&kind, m.namespace.as_deref(), name)
                    }
                    Err(e) => {
                        tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff")
                    }
                }
                futures::future::ready(())
            })
            .await;
    });
    reader
}

/// Strips a watched object down to what the proxy reads, before the reflector stores it.
///
/// Each kind keeps a whitelist: the fields `model::build`, `model::endpoints` and `desired`
/// read (and the name, namespace and resourceVersion the reflector needs); everything else
/// (managedFields, annotations, ownerReferences, uid, selectors, targetRefs, the Node's spec
/// and most of its status...) is dropped. A field the model starts reading must be added
/// here; `tests::slim_objects_render_the_same_rules` renders every golden scenario with and
/// without slimming and requires the same rules and notes.
pub trait Slim {
    fn slim(&mut self);
}

/// Labels under `kubernetes.io/` and `*.kubernetes.io/` (the proxy reads
/// `service.kubernetes.io/service-proxy-name`, `service.kubernetes.io/headless`,
/// `kubernetes.io/service-name` and `topology.kubernetes.io/zone`); application labels are
/// dropped.
fn well_known_label(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(prefix, _)| prefix == "kubernetes.io" || prefix.ends_with(".kubernetes.io"))
}

fn slim_meta(md: &mut ObjectMeta) {
    let labels = md.labels.take().and_then(|l| {
        let kept: BTreeMap<String, String> =
            l.into_iter().filter(|(k, _)| well_known_label(k)).collect();
        (!kept.is_empty()).then_some(kept)
    });
    *md = ObjectMeta {
        name: md.name.take(),
        namespace: md.namespace.take(),
        resource_version: md.resource_version.take(),
        labels,
        ..ObjectMeta::default()
    };
}

impl Slim for Service {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.spec = self.spec.take().map(|s| ServiceSpec {
            type_: s.type_,
            cluster_ip: s.cluster_ip,
            cluster_ips: s.cluster_ips,
            external_ips: s.external_ips,
            load_balancer_source_ranges: s.load_balancer_source_ranges,
            session_affinity: s.session_affinity,
            session_affinity_config: s.session_affinity_config,
            external_traffic_policy: s.external_traffic_policy,
            internal_traffic_policy: s.internal_traffic_policy,
            ports: s.ports.map(|ps| {
                ps.into_iter()
                    .map(|p| ServicePort {
                        name: p.name,
                        protocol: p.protocol,
                        port: p.port,
                        node_port: p.node_port,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            ..ServiceSpec::default()
        });
        self.status = self.status.take().map(|s| ServiceStatus {
            load_balancer: s.load_balancer.map(|lb| LoadBalancerStatus {
                ingress: lb.ingress.map(|v| {
                    v.into_iter()
                        .map(|i| LoadBalancerIngress {
                            ip: i.ip,
                            ip_mode: i.ip_mode,
                            ..LoadBalancerIngress::default()
                        })
                        .collect()
                }),
            }),
            ..ServiceStatus::default()
        });
    }
}

impl Slim for EndpointSlice {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.ports = self.ports.take().map(|ps| {
            ps.into_iter()
                .map(|p| EndpointPort {
                    name: p.name,
                    protocol: p.protocol,
                    port: p.port,
                    ..EndpointPort::default()
                })
                .collect()
        });
        self.endpoints = std::mem::take(&mut self.endpoints)
            .into_iter()
            .map(|e| Endpoint {
                // Only the first address is used (they are fungible, as upstream assumes).
                addresses: e.addresses.into_iter().take(1).collect(),
                conditions: e.conditions,
                node_name: e.node_name,
                hints: e.hints.and_then(|h| h.for_zones).map(|z| EndpointHints {
                    for_zones: Some(z),
                    ..EndpointHints::default()
                }),
                ..Endpoint::default()
            })
            .collect();
    }
}

impl Slim for Endpoints {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        let addresses = |v: Option<Vec<EndpointAddress>>| {
            v.map(|v| {
                v.into_iter()
                    .map(|a| EndpointAddress {
                        ip: a.ip,
                        node_name: a.node_name,
                        ..EndpointAddress::default()
                    })
                    .collect()
            })
        };
        self.subsets = self.subsets.take().map(|subsets| {
            subsets
                .into_iter()
                .map(|s| EndpointSubset {
                    addresses: addresses(s.addresses),
                    not_ready_addresses: addresses(s.not_ready_addresses),
                    ports: s.ports.map(|ps| {
                        ps.into_iter()
                            .map(|p| CoreEndpointPort {
                                name: p.name,
                                protocol: p.protocol,
                                port: p.port,
                                ..CoreEndpointPort::default()
                            })
                            .collect()
                    }),
                })
                .collect()
        });
    }
}

impl Slim for Node {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.spec = None;
        self.status = self.status.take().map(|s| NodeStatus {
            addresses: s.addresses,
            ..NodeStatus::default()
        });
    }
}

impl Slim for ServiceCIDR {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.status = None;
    }
}

/// Starts every watcher and returns the stores they fill.
pub async fn start(
    client: &Client,
    node_name: &str,
    endpoints_api: EndpointsApi,
    changes: Arc<Changes>,
) -> Stores {
    let selected = || watcher::Config::default().labels(PROXY_SELECTOR);
    let use_slices = match endpoints_api {
        EndpointsApi::Endpointslices => true,
        EndpointsApi::Endpoints => false,
        EndpointsApi::Auto => served::<EndpointSlice>(client).await,
    };
    tracing::info!(
        api = if use_slices {
            "discovery.k8s.io/v1 EndpointSlice"
        } else {
            "v1 Endpoints"
        },
        "watching endpoints"
    );
    let with_cidrs = served_api(Api::<ServiceCIDR>::all(client.clone())).await;
    let services = watch(
        Api::<Service>::all(client.clone()),
        selected(),
        changes.clone(),
    );
    let endpoint_slices = use_slices.then(|| {
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            selected(),
            changes.clone(),
        )
    });
    let endpoints = (!use_slices).then(|| {
        watch(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default().labels("!service.kubernetes.io/headless"),
            changes.clone(),
        )
    });
    let nodes = watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        changes.clone(),
    );
    let service_cidrs = with_cidrs.then(|| {
        watch(
            Api::<ServiceCIDR>::all(client.clone()),
            watcher::Config::default(),
            changes.clone(),
        )
    });
    Stores {
        services,
        endpoint_slices,
        endpoints,
        nodes,
        service_cidrs,
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use clap::Parser;

    use super::*;
    use crate::nft::text;
    use crate::options::Options;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: crate::config::RenderArgs,
    }

    fn slimmed<K: Slim + Clone>(v: &[Arc<K>]) -> Vec<Arc<K>> {
        v.iter()
            .map(|o| {
                let mut o = K::clone(o);
                o.slim();
                Arc::new(o)
            })
            .collect()
    }

    fn slim_all(o: &ClusterObjects) -> ClusterObjects {
        ClusterObjects {
            services: slimmed(&o.services),
            endpoint_slices: slimmed(&o.endpoint_slices),
            endpoints: slimmed(&o.endpoints),
            nodes: slimmed(&o.nodes),
            service_cidrs: slimmed(&o.service_cidrs),
        }
    }

    /// The script and the notes: slimming must change neither.
    fn render(o: &ClusterObjects, opts: &Options) -> (String, Vec<String>) {
        let (rs, notes) = crate::render::ruleset(o, opts);
        (
            text::script(&rs),
            notes.iter().map(ToString::to_string).collect(),
        )
    }

    fn read(name: &str, text: &str) -> ClusterObjects {
        crate::render::read_sources([(name, text)], &mut Vec::new()).expect("input reads")
    }

    #[test]
    fn slim_objects_render_the_same_rules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .expect("testdata exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("cluster.yaml").is_file())
            .collect();
        dirs.sort();
        let mut compared = 0;
        for dir in &dirs {
            let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
            let Ok(cli) = Cli::try_parse_from(
                std::iter::once("render")
                    .chain(args.lines().map(str::trim).filter(|l| !l.is_empty())),
            ) else {
                continue;
            };
            let Ok(opts) = crate::config::resolve(&cli.args) else {
                continue;
            };
            let text = std::fs::read_to_string(dir.join("cluster.yaml")).unwrap();
            let objects = read("cluster.yaml", &text);
            assert_eq!(
                render(&slim_all(&objects), &opts),
                render(&objects, &opts),
                "{}",
                dir.display()
            );
            compared += 1;
        }
        assert!(compared > 20, "only {compared} of {} scenarios", dirs.len());
    }

    /// Everything a real server adds, on every kind, and every field the model reads.
    const FULL: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  uid: 0c3e5f1a-1111-2222-3333-444455556666
  resourceVersion: "17"
  creationTimestamp: "2026-01-01T00:00:00Z"
  labels: {topology.kubernetes.io/zone: z1, kubernetes.io/hostname: node-a, team: x}
  annotations: {node.alpha.kubernetes.io/ttl: "0", kubectl.kubernetes.io/last-applied-configuration: "{}"}
  managedFields: [{manager: kubelet, operation: Update, apiVersion: v1}]
spec: {podCIDR: 10.244.0.0/24, podCIDRs: [10.244.0.0/24], providerID: "kind://x"}
status:
  addresses: [{type: Hostname, address: node-a}, {type: ExternalIP, address: 203.0.113.9}, {type: InternalIP, address: 192.168.0.10}]
  conditions: [{type: Ready, status: "True"}]
  images: [{names: ["registry.k8s.io/pause:3.10"], sizeBytes: 320000}]
  nodeInfo: {machineID: m, systemUUID: s, bootID: b, kernelVersion: "6.1", osImage: Debian, containerRuntimeVersion: "containerd://2", kubeletVersion: v1.35.0, kubeProxyVersion: "", operatingSystem: linux, architecture: amd64}
  capacity: {cpu: "2"}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes, uid: u1, generation: 1}
spec: {cidrs: [10.96.0.0/16]}
status: {conditions: [{type: Ready, status: "True", lastTransitionTime: "2026-01-01T00:00:00Z", reason: r, message: m}]}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  uid: 8b2c1d6e-aaaa-bbbb-cccc-ddddeeeeffff
  resourceVersion: "42"
  generation: 3
  creationTimestamp: "2026-01-01T00:00:00Z"
  labels: {app: web, service.kubernetes.io/topology-mode: auto}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}", example.com/owner: team}
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: u2}]
  finalizers: [service.kubernetes.io/load-balancer-cleanup]
spec:
  type: LoadBalancer
  selector: {app: web}
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  externalIPs: [198.51.100.7]
  loadBalancerSourceRanges: [203.0.113.0/24]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Cluster
  healthCheckNodePort: 31999
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  allocateLoadBalancerNodePorts: true
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP, appProtocol: http}
  - {name: dns, port: 53, targetPort: dns, nodePort: 30053, protocol: UDP}
status:
  loadBalancer:
    ingress:
    - {ip: 192.0.2.10, ipMode: VIP, hostname: lb.example.com, ports: [{port: 80, protocol: TCP}]}
    - {ip: 192.0.2.11, ipMode: Proxy}
  conditions: [{type: x, status: "True", lastTransitionTime: "2026-01-01T00:00:00Z", reason: r, message: m}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: default
  uid: u3
  resourceVersion: "43"
  generation: 5
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io, app: web}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-01-01T00:00:00Z"}
  ownerReferences: [{apiVersion: v1, kind: Service, name: web, uid: u4, controller: true, blockOwnerDeletion: true}]
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP, appProtocol: http}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.0.5, 10.244.0.55]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
  zone: z1
  hostname: web-0
  hints: {forZones: [{name: z1}], forNodes: [{name: node-a}]}
  targetRef: {kind: Pod, namespace: default, name: web-0, uid: u5}
  deprecatedTopology: {kubernetes.io/hostname: node-a}
- addresses: [10.244.1.6]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-b
  zone: z2
  hints: {forZones: [{name: z2}]}
  targetRef: {kind: Pod, namespace: default, name: web-1, uid: u6}
- addresses: [10.244.1.7]
  conditions: {ready: true}
  nodeName: node-b
  zone: z1
  hints: {forZones: [{name: z1}]}
  targetRef: {kind: Pod, namespace: default, name: web-2, uid: u7}
---
apiVersion: v1
kind: Service
metadata:
  name: legacy
  namespace: default
  uid: u8
  labels: {app: legacy}
spec:
  type: NodePort
  selector: {app: legacy}
  clusterIP: 10.96.0.30
  internalTrafficPolicy: Local
  ports: [{name: tcp, port: 81, targetPort: 9090, nodePort: 30081, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: legacy
  namespace: default
  uid: u9
  labels: {app: legacy}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-01-01T00:00:00Z"}
subsets:
- addresses:
  - {ip: 10.244.0.8, nodeName: node-a, hostname: l-0, targetRef: {kind: Pod, name: l-0, namespace: default}}
  notReadyAddresses:
  - {ip: 10.244.1.9, nodeName: node-b, targetRef: {kind: Pod, name: l-1, namespace: default}}
  ports: [{name: tcp, port: 9090, protocol: TCP, appProtocol: tcp}]
"#;

    #[test]
    fn slimming_drops_what_the_model_never_reads_and_keeps_its_rules() {
        let objects = read("full.yaml", FULL);
        assert_eq!(objects.services.len(), 2);
        assert_eq!(objects.endpoint_slices.len(), 1);
        assert_eq!(objects.endpoints.len(), 1);
        let slim = slim_all(&objects);
        for (cluster_cidrs, hostname) in [(vec![], "node-a"), (vec!["10.244.0.0/16"], "node-b")] {
            let opts = Options {
                hostname: hostname.into(),
                cluster_cidrs: cluster_cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                ..Options::default()
            };
            let (script, notes) = render(&objects, &opts);
            assert!(script.contains("10.244.0.5"), "{script}");
            assert!(script.contains("192.0.2.10"), "{script}");
            assert_eq!(render(&slim, &opts), (script, notes));
        }
        // What is gone.
        let svc = &slim
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("web"));
        let svc = svc.unwrap();
        assert_eq!(svc.metadata.uid, None);
        assert_eq!(svc.metadata.annotations, None);
        assert_eq!(svc.metadata.owner_references, None);
        assert_eq!(svc.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            svc.metadata.labels.as_ref().map(|l| l.len()),
            Some(1),
            "only service.kubernetes.io/topology-mode is left"
        );
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.selector, None);
        assert!(spec.ports.iter().flatten().all(|p| p.target_port.is_none()));
        let slice = &slim.endpoint_slices[0];
        assert!(slice
            .endpoints
            .iter()
            .all(|e| e.target_ref.is_none() && e.deprecated_topology.is_none()));
        assert_eq!(slice.endpoints[0].addresses.len(), 1);
        let node = &slim.nodes[0];
        assert_eq!(node.spec, None);
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.node_info.is_none());
        assert_eq!(status.addresses.as_ref().map(Vec::len), Some(3));
        assert!(slim.endpoints[0].subsets.iter().flatten().all(|s| s
            .addresses
            .iter()
            .flatten()
            .all(|a| a.target_ref.is_none())));
    }

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip}
        }))
        .unwrap()
    }

    fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
    }

    #[test]
    fn refresh_patches_only_what_changed_and_matches_a_full_snapshot() {
        use kube::runtime::watcher::Event;
        let (services, mut sw) = reflector::store::<Service>();
        let (nodes, _nw) = reflector::store::<Node>();
        for (ns, n) in [("b", "s2"), ("a", "s1"), ("c", "s3"), ("a", "s0")] {
            sw.apply_watcher_event(&Event::Apply(svc(ns, n, "10.96.0.1")));
        }
        let stores = Stores {
            services,
            endpoint_slices: None,
            endpoints: None,
            nodes,
            service_cidrs: None,
        };
        let mut objects = None;
        stores.refresh(&mut objects, &Dirty::default());
        let first = objects.clone().unwrap();
        assert_eq!(first.services.len(), 4);

        // one changed, one added, one deleted, one marked that did not change at all
        sw.apply_watcher_event(&Event::Apply(svc("a", "s1", "10.96.0.9")));
        sw.apply_watcher_event(&Event::Apply(svc("b", "s9", "10.96.0.8")));
        sw.apply_watcher_event(&Event::Delete(svc("c", "s3", "10.96.0.1")));
        let changes = Changes::default();
        for (ns, n) in [("a", "s1"), ("b", "s9"), ("c", "s3"), ("a", "s0")] {
            changes.mark_object("Service", Some(ns), n);
        }
        stores.refresh(&mut objects, &changes.take_dirty());
        let patched = objects.clone().unwrap();
        assert!(same(&patched.services, &stores.snapshot().services));
        let names: Vec<_> = (patched.services.iter())
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["s0", "s1", "s2", "s9"]);
        // untouched objects are the very same Arcs, so `Desired` sees them as unchanged
        assert!(Arc::ptr_eq(&first.services[0], &patched.services[0]));
        assert!(!Arc::ptr_eq(&first.services[1], &patched.services[1]));
        assert_eq!(changes.take_dirty(), Dirty::default(), "taken");

        changes.mark();
        assert!(
            changes.take_dirty().all,
            "an unknown change asks for a full snapshot"
        );
    }
}
