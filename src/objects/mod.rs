//! The cluster objects as the proxy keeps them: only what `model` and `desired` read.
//!
//! The agent holds every Service and EndpointSlice of the cluster between syncs (in the
//! reflector stores and in `desired`'s inputs), so their size is most of its memory. Files
//! (`input`) are decoded as k8s-openapi types, which check them, and API responses (`watch`)
//! as the `api` types below, which decode only the fields kept; both are converted here,
//! field by field, by one conversion body, into these types. Nothing else of an object is
//! kept. A field the model starts reading must be added here, to `api`, and to the
//! conversion.
//!
//! Compact forms: strings are `Box<str>` (no spare capacity); namespaces, node names, zone
//! names and port names, which repeat across thousands of objects, are interned `Arc<str>`;
//! endpoint addresses are parsed once (the raw text is kept only when it does not parse, for
//! the model's note); fields the model only compares against a constant become enums and
//! booleans. Everything the model prints (invalid IPs, CIDRs, protocols) stays verbatim,
//! so notes are unchanged.
//!
//! The types implement the reflector's `Lookup` (name and namespace are all a store needs),
//! not `kube::Resource`: they carry no `ObjectMeta`. The `api` types, which `kube::Api` and
//! the watcher handle one page or event at a time, implement `kube::Resource`.

pub mod input;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::Lookup;

pub const LABEL_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// Shares one allocation among equal strings (namespaces, node and zone names, port names).
/// Strings nobody else holds any more are dropped whenever the pool has doubled since the
/// last sweep, so node and namespace churn cannot grow it without bound.
pub fn intern(s: &str) -> Arc<str> {
    struct Pool {
        set: HashSet<Arc<str>>,
        sweep_at: usize,
    }
    static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
        Mutex::new(Pool {
            set: HashSet::new(),
            sweep_at: 1024,
        })
    });
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(a) = pool.set.get(s) {
        return a.clone();
    }
    if pool.set.len() >= pool.sweep_at {
        pool.set.retain(|a| Arc::strong_count(a) > 1);
        pool.sweep_at = (pool.set.len() * 2).max(1024);
    }
    let a: Arc<str> = Arc::from(s);
    pool.set.insert(a.clone());
    a
}

fn boxed(v: Option<Vec<String>>) -> Box<[Box<str>]> {
    v.into_iter()
        .flatten()
        .map(String::into_boxed_str)
        .collect()
}

/// Name and namespace: all of `metadata` the proxy reads besides a few labels, which each
/// kind keeps in its own fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub namespace: Option<Arc<str>>,
    pub name: Option<Box<str>>,
}

impl Meta {
    fn of(m: &mut ObjectMeta) -> Meta {
        Meta {
            namespace: m.namespace.as_deref().map(intern),
            name: m.name.take().map(String::into_boxed_str),
        }
    }
}

/// What every kind here has.
pub trait Object {
    fn metadata(&self) -> &Meta;
}

/// An IP address as the API gives it: parsed (after trimming spaces, as upstream
/// tolerates), or the raw text when it does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Ip(IpAddr),
    Invalid(Box<str>),
}

impl Address {
    pub fn parse(s: String) -> Address {
        match s.trim().parse() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::Invalid(s.into_boxed_str()),
        }
    }
}

/// A port protocol; an absent one is TCP, the API's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Other(Box<str>),
}

impl Protocol {
    fn of(p: Option<String>) -> Protocol {
        match p.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(_) => Protocol::Other(p.unwrap_or_default().into_boxed_str()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Other(s) => s,
        }
    }
}

/// `spec.type`; absent and unknown types behave as ClusterIP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub metadata: Meta,
    /// Labelled `service.kubernetes.io/service-proxy-name`: served by another proxy.
    pub other_proxy: bool,
    /// Labelled `service.kubernetes.io/headless`.
    pub headless_label: bool,
    pub spec: Option<ServiceSpec>,
    /// `status.loadBalancer.ingress[].ip`, without the ingresses in `ipMode: Proxy` (those
    /// deliver to the node, not to the VIP).
    pub load_balancer_ingress_ips: Box<[Box<str>]>,
    /// Why the watcher could not decode the object (e.g. `ports: "eighty"`): it is kept by
    /// name so the model notes it, and the rest of its list page still counts.
    pub invalid: Option<Box<str>>,
}

/// Why an object as received could not be decoded, if it could not.
trait Invalid {
    fn invalid(&self) -> Option<Box<str>>;
}

impl Invalid for core::Service {
    fn invalid(&self) -> Option<Box<str>> {
        None
    }
}

impl Invalid for discovery::EndpointSlice {
    fn invalid(&self) -> Option<Box<str>> {
        None
    }
}

impl Invalid for api::EndpointSlice {
    fn invalid(&self) -> Option<Box<str>> {
        self.invalid.clone()
    }
}

impl Invalid for api::Service {
    fn invalid(&self) -> Option<Box<str>> {
        self.invalid.clone()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    pub type_: ServiceType,
    pub cluster_ip: Option<Box<str>>,
    /// Empty when absent.
    pub cluster_ips: Box<[Box<str>]>,
    pub external_ips: Box<[Box<str>]>,
    pub load_balancer_source_ranges: Box<[Box<str>]>,
    /// `sessionAffinity: ClientIP`.
    pub client_ip_affinity: bool,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout: Option<i32>,
    /// `externalTrafficPolicy: Local`.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort` (with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<i32>,
    pub ports: Box<[ServicePort]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for an unnamed port.
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: i32,
    pub node_port: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub metadata: Meta,
    /// The `kubernetes.io/service-name` label.
    pub service_name: Option<Box<str>>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation, as written.
    pub trigger_time: Option<Box<str>>,
    pub address_type: Arc<str>,
    pub ports: Box<[EndpointPort]>,
    pub endpoints: Box<[Endpoint]>,
    /// Why the watcher could not decode the object; it then has no ports or endpoints.
    pub invalid: Option<Box<str>>,
}

/// A port of an EndpointSlice or of an Endpoints subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    /// Empty for an unnamed port.
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The first address; the others are fungible, as upstream assumes.
    pub address: Option<Address>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Arc<str>>,
    /// `hints`; `None` when the endpoint has neither `forZones` nor `forNodes` (boxed: most
    /// endpoints have none, and this keeps an endpoint small).
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's topology hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hints {
    /// `hints.forZones[].name`; `None` without `forZones`.
    pub zones: Option<Box<[Arc<str>]>>,
    /// `hints.forNodes[].name` (trafficDistribution `PreferSameNode`); `None` without
    /// `forNodes`.
    pub nodes: Option<Box<[Arc<str>]>>,
}

/// v1 Endpoints, the fallback when EndpointSlices are not served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub metadata: Meta,
    pub subsets: Box<[EndpointSubset]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSubset {
    pub addresses: Box<[EndpointAddress]>,
    pub not_ready_addresses: Box<[EndpointAddress]>,
    pub ports: Box<[EndpointPort]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAddress {
    pub ip: Address,
    pub node_name: Option<Arc<str>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub metadata: Meta,
    /// The `topology.kubernetes.io/zone` label.
    pub zone: Option<Box<str>>,
    pub addresses: Box<[NodeAddress]>,
    /// Being deleted (`deletionTimestamp`) or drained by the cluster autoscaler (taint
    /// `ToBeDeletedByClusterAutoscaler`): load balancers should stop sending to it.
    pub draining: bool,
    /// `spec.podCIDRs`: the pod CIDRs allocated to this node, which `detectLocalMode:
    /// NodeCIDR` tells pod traffic by.
    pub pod_cidrs: Box<[Box<str>]>,
}

/// The cluster autoscaler's taint on a node it is about to remove.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
/// When the change an EndpointSlice carries was triggered (RFC 3339), set by the
/// EndpointSlice controller; network-programming latency is measured from it.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub type_: Box<str>,
    pub address: Box<str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCidr {
    pub metadata: Meta,
    pub cidrs: Box<[Box<str>]>,
}

fn labels(m: &mut ObjectMeta) -> BTreeMap<String, String> {
    m.labels.take().unwrap_or_default()
}

fn endpoint_port(
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i32>,
) -> EndpointPort {
    EndpointPort {
        name: intern(name.as_deref().unwrap_or("")),
        protocol: Protocol::of(protocol),
        port,
    }
}

/// The conversions, from the k8s-openapi types (files) and from the `api` types (watchers):
/// one body for both, as the two have the same field names and types for every field read.
macro_rules! conversions {
    ($core:ident, $discovery:ident, $networking:ident) => {
        impl From<$core::Service> for Service {
            fn from(mut o: $core::Service) -> Service {
                let invalid = Invalid::invalid(&o);
                let labels = labels(&mut o.metadata);
                let load_balancer_ingress_ips = o
                    .status
                    .and_then(|s| s.load_balancer)
                    .and_then(|l| l.ingress)
                    .into_iter()
                    .flatten()
                    .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|i| i.ip.map(String::into_boxed_str))
                    .collect();
                let spec = o.spec.map(|s| ServiceSpec {
                    type_: match s.type_.as_deref() {
                        Some("NodePort") => ServiceType::NodePort,
                        Some("LoadBalancer") => ServiceType::LoadBalancer,
                        Some("ExternalName") => ServiceType::ExternalName,
                        _ => ServiceType::ClusterIp,
                    },
                    cluster_ip: s.cluster_ip.map(String::into_boxed_str),
                    cluster_ips: boxed(s.cluster_ips),
                    external_ips: boxed(s.external_ips),
                    load_balancer_source_ranges: boxed(s.load_balancer_source_ranges),
                    client_ip_affinity: s.session_affinity.as_deref() == Some("ClientIP"),
                    affinity_timeout: s
                        .session_affinity_config
                        .and_then(|c| c.client_ip)
                        .and_then(|c| c.timeout_seconds),
                    external_policy_local: s.external_traffic_policy.as_deref() == Some("Local"),
                    internal_policy_local: s.internal_traffic_policy.as_deref() == Some("Local"),
                    health_check_node_port: s.health_check_node_port,
                    ports: s
                        .ports
                        .into_iter()
                        .flatten()
                        .map(|p| ServicePort {
                            name: intern(p.name.as_deref().unwrap_or("")),
                            protocol: Protocol::of(p.protocol),
                            port: p.port,
                            node_port: p.node_port,
                        })
                        .collect(),
                });
                Service {
                    metadata: Meta::of(&mut o.metadata),
                    other_proxy: labels.contains_key(LABEL_PROXY_NAME),
                    headless_label: labels.contains_key(LABEL_HEADLESS),
                    spec,
                    load_balancer_ingress_ips,
                    invalid,
                }
            }
        }

        impl From<$discovery::EndpointSlice> for EndpointSlice {
            fn from(mut o: $discovery::EndpointSlice) -> EndpointSlice {
                let invalid = Invalid::invalid(&o);
                let service_name = labels(&mut o.metadata)
                    .remove(LABEL_SERVICE_NAME)
                    .map(String::into_boxed_str);
                let trigger_time = o
                    .metadata
                    .annotations
                    .as_mut()
                    .and_then(|a| a.remove(ANNOTATION_TRIGGER_TIME))
                    .map(String::into_boxed_str);
                EndpointSlice {
                    metadata: Meta::of(&mut o.metadata),
                    service_name,
                    trigger_time,
                    address_type: intern(&o.address_type),
                    ports: o
                        .ports
                        .into_iter()
                        .flatten()
                        .map(|p| endpoint_port(p.name, p.protocol, p.port))
                        .collect(),
                    endpoints: o
                        .endpoints
                        .into_iter()
                        .map(|e| {
                            let c = e.conditions.unwrap_or_default();
                            Endpoint {
                                address: e.addresses.into_iter().next().map(Address::parse),
                                ready: c.ready,
                                serving: c.serving,
                                terminating: c.terminating,
                                node_name: e.node_name.as_deref().map(intern),
                                hints: e.hints.and_then(|h| {
                                    let zones = h
                                        .for_zones
                                        .map(|z| z.iter().map(|z| intern(&z.name)).collect());
                                    let nodes = h
                                        .for_nodes
                                        .map(|n| n.iter().map(|n| intern(&n.name)).collect());
                                    (zones.is_some() || nodes.is_some())
                                        .then(|| Box::new(Hints { zones, nodes }))
                                }),
                            }
                        })
                        .collect(),
                    invalid,
                }
            }
        }

        impl From<$core::Endpoints> for Endpoints {
            fn from(mut o: $core::Endpoints) -> Endpoints {
                let addresses = |v: Option<Vec<$core::EndpointAddress>>| -> Box<[EndpointAddress]> {
                    v.into_iter()
                        .flatten()
                        .map(|a| EndpointAddress {
                            ip: Address::parse(a.ip),
                            node_name: a.node_name.as_deref().map(intern),
                        })
                        .collect()
                };
                Endpoints {
                    metadata: Meta::of(&mut o.metadata),
                    subsets: o
                        .subsets
                        .into_iter()
                        .flatten()
                        .map(|s| EndpointSubset {
                            addresses: addresses(s.addresses),
                            not_ready_addresses: addresses(s.not_ready_addresses),
                            ports: s
                                .ports
                                .into_iter()
                                .flatten()
                                .map(|p| endpoint_port(p.name, p.protocol, Some(p.port)))
                                .collect(),
                        })
                        .collect(),
                }
            }
        }

        impl From<$core::Node> for Node {
            fn from(mut o: $core::Node) -> Node {
                let zone = labels(&mut o.metadata)
                    .remove(LABEL_ZONE)
                    .map(String::into_boxed_str);
                let draining = o.metadata.deletion_timestamp.is_some()
                    || o.spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
                let pod_cidrs = boxed(o.spec.as_mut().and_then(|s| s.pod_cidrs.take()));
                Node {
                    metadata: Meta::of(&mut o.metadata),
                    zone,
                    draining,
                    pod_cidrs,
                    addresses: o
                        .status
                        .and_then(|s| s.addresses)
                        .into_iter()
                        .flatten()
                        .map(|a| NodeAddress {
                            type_: a.type_.into_boxed_str(),
                            address: a.address.into_boxed_str(),
                        })
                        .collect(),
                }
            }
        }

        impl From<$networking::ServiceCIDR> for ServiceCidr {
            fn from(mut o: $networking::ServiceCIDR) -> ServiceCidr {
                ServiceCidr {
                    metadata: Meta::of(&mut o.metadata),
                    cidrs: boxed(o.spec.and_then(|s| s.cidrs)),
                }
            }
        }
    };
}

conversions!(core, discovery, networking);
conversions!(api, api, api);

/// `Object` and the reflector's `Lookup`, with the API coordinates of the k8s-openapi type.
macro_rules! object {
    ($slim:ty, $api:ty) => {
        impl Object for $slim {
            fn metadata(&self) -> &Meta {
                &self.metadata
            }
        }

        impl Lookup for $slim {
            type DynamicType = ();

            fn kind(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::kind(&())
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::group(&())
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::version(&())
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::plural(&())
            }
            fn name(&self) -> Option<Cow<'_, str>> {
                self.metadata.name.as_deref().map(Cow::Borrowed)
            }
            fn namespace(&self) -> Option<Cow<'_, str>> {
                self.metadata.namespace.as_deref().map(Cow::Borrowed)
            }
            /// Not kept: the watcher tracks versions on the objects it decodes, and a
            /// store's keys ignore it.
            fn resource_version(&self) -> Option<Cow<'_, str>> {
                None
            }
            fn uid(&self) -> Option<Cow<'_, str>> {
                None
            }
        }
    };
}

object!(Service, core::Service);
object!(EndpointSlice, discovery::EndpointSlice);
object!(Endpoints, core::Endpoints);
object!(Node, core::Node);
object!(ServiceCidr, networking::ServiceCIDR);

/// The API's JSON as the watchers decode it: only the fields the slim types keep, with the
/// names and types of their k8s-openapi counterparts (so one conversion serves both).
/// Every other field is skipped by the decoder without being built: decoding full
/// k8s-openapi objects only to drop most of them left the agent's heap fragmented.
/// `tests::api_and_file_decoding_agree` holds the two decodings to the same result.
pub mod api {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use k8s_openapi::api::networking::v1 as networking;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use serde::{Deserialize, Deserializer};

    /// A required field: absent or `null` is its default, as k8s-openapi reads it (the API
    /// server writes `endpoints: null` for an EndpointSlice without endpoints).
    fn required<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }

    /// Name, namespace, resourceVersion (the watcher resumes from it) and labels.
    fn meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
            labels: Option<BTreeMap<String, String>>,
            annotations: Option<BTreeMap<String, String>>,
            deletion_timestamp: Option<Time>,
        }
        let m = Meta::deserialize(d)?;
        // Of the annotations, only the one the proxy reads is kept.
        let annotations = m
            .annotations
            .and_then(|mut a| a.remove_entry(super::ANNOTATION_TRIGGER_TIME))
            .map(|kv| BTreeMap::from([kv]));
        Ok(ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            resource_version: m.resource_version,
            labels: m.labels,
            annotations,
            deletion_timestamp: m.deletion_timestamp,
            ..ObjectMeta::default()
        })
    }

    #[derive(Clone, Debug)]
    pub struct Service {
        pub metadata: ObjectMeta,
        pub spec: Option<ServiceSpec>,
        pub status: Option<ServiceStatus>,
        /// Set when the object did not decode: metadata only, and why.
        pub invalid: Option<Box<str>>,
    }

    #[derive(Deserialize)]
    struct StrictService {
        #[serde(default, deserialize_with = "meta")]
        metadata: ObjectMeta,
        spec: Option<ServiceSpec>,
        status: Option<ServiceStatus>,
    }

    /// One malformed Service (`ports: "eighty"`) must not fail the whole list page it came
    /// in: it is read through a JSON value, and when it does not decode, its name is kept
    /// with the reason, for the model to note.
    impl<'de> Deserialize<'de> for Service {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(match lenient::<StrictService, D>(d)? {
                Ok(s) => Service {
                    metadata: s.metadata,
                    spec: s.spec,
                    status: s.status,
                    invalid: None,
                },
                Err((metadata, why)) => Service {
                    metadata,
                    spec: None,
                    status: None,
                    invalid: Some(why),
                },
            })
        }
    }

    /// An object that did not decode: its metadata, and why.
    type Undecoded = (ObjectMeta, Box<str>);

    /// Reads an object through a JSON value: the strict form, or, when it does not
    /// decode, its metadata and why.
    fn lenient<'de, T, D>(d: D) -> Result<Result<T, Undecoded>, D::Error>
    where
        T: serde::de::DeserializeOwned,
        D: Deserializer<'de>,
    {
        let v = serde_json::Value::deserialize(d)?;
        Ok(T::deserialize(&v).map_err(|e| {
            let metadata = (v.get("metadata"))
                .and_then(|m| meta(m).ok())
                .unwrap_or_default();
            (metadata, e.to_string().into_boxed_str())
        }))
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceSpec {
        #[serde(rename = "type")]
        pub type_: Option<String>,
        #[serde(rename = "clusterIP")]
        pub cluster_ip: Option<String>,
        #[serde(rename = "clusterIPs")]
        pub cluster_ips: Option<Vec<String>>,
        #[serde(rename = "externalIPs")]
        pub external_ips: Option<Vec<String>>,
        pub load_balancer_source_ranges: Option<Vec<String>>,
        pub session_affinity: Option<String>,
        pub session_affinity_config: Option<SessionAffinityConfig>,
        pub external_traffic_policy: Option<String>,
        pub health_check_node_port: Option<i32>,
        pub internal_traffic_policy: Option<String>,
        pub ports: Option<Vec<ServicePort>>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct SessionAffinityConfig {
        #[serde(rename = "clientIP")]
        pub client_ip: Option<ClientIpConfig>,
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ClientIpConfig {
        pub timeout_seconds: Option<i32>,
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ServicePort {
        pub name: Option<String>,
        pub protocol: Option<String>,
        #[serde(default, deserialize_with = "required")]
        pub port: i32,
        pub node_port: Option<i32>,
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceStatus {
        pub load_balancer: Option<LoadBalancerStatus>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct LoadBalancerStatus {
        pub ingress: Option<Vec<LoadBalancerIngress>>,
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct LoadBalancerIngress {
        pub ip: Option<String>,
        pub ip_mode: Option<String>,
    }

    #[derive(Clone, Debug)]
    pub struct EndpointSlice {
        pub metadata: ObjectMeta,
        pub address_type: String,
        pub endpoints: Vec<Endpoint>,
        pub ports: Option<Vec<EndpointPort>>,
        /// Set when the object did not decode: metadata only, and why.
        pub invalid: Option<Box<str>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct StrictEndpointSlice {
        #[serde(default, deserialize_with = "meta")]
        metadata: ObjectMeta,
        #[serde(default, deserialize_with = "required")]
        address_type: String,
        #[serde(default, deserialize_with = "required")]
        endpoints: Vec<Endpoint>,
        ports: Option<Vec<EndpointPort>>,
    }

    /// As for [`Service`]: one malformed slice does not fail its list page.
    impl<'de> Deserialize<'de> for EndpointSlice {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(match lenient::<StrictEndpointSlice, D>(d)? {
                Ok(s) => EndpointSlice {
                    metadata: s.metadata,
                    address_type: s.address_type,
                    endpoints: s.endpoints,
                    ports: s.ports,
                    invalid: None,
                },
                Err((metadata, why)) => EndpointSlice {
                    metadata,
                    address_type: String::new(),
                    endpoints: Vec::new(),
                    ports: None,
                    invalid: Some(why),
                },
            })
        }
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Endpoint {
        #[serde(default, deserialize_with = "required")]
        pub addresses: Vec<String>,
        pub conditions: Option<EndpointConditions>,
        pub node_name: Option<String>,
        pub hints: Option<EndpointHints>,
    }

    #[derive(Clone, Debug, Default, Deserialize)]
    pub struct EndpointConditions {
        pub ready: Option<bool>,
        pub serving: Option<bool>,
        pub terminating: Option<bool>,
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EndpointHints {
        pub for_zones: Option<Vec<ForZone>>,
        pub for_nodes: Option<Vec<ForNode>>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct ForNode {
        #[serde(default, deserialize_with = "required")]
        pub name: String,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct ForZone {
        #[serde(default, deserialize_with = "required")]
        pub name: String,
    }

    /// A port of an EndpointSlice (v1 Endpoints ports have the same fields).
    #[derive(Clone, Debug, Deserialize)]
    pub struct EndpointPort {
        pub name: Option<String>,
        pub protocol: Option<String>,
        pub port: Option<i32>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct Endpoints {
        #[serde(default, deserialize_with = "meta")]
        pub metadata: ObjectMeta,
        pub subsets: Option<Vec<EndpointSubset>>,
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EndpointSubset {
        pub addresses: Option<Vec<EndpointAddress>>,
        pub not_ready_addresses: Option<Vec<EndpointAddress>>,
        pub ports: Option<Vec<CoreEndpointPort>>,
    }

    #[derive(Clone, Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EndpointAddress {
        #[serde(default, deserialize_with = "required")]
        pub ip: String,
        pub node_name: Option<String>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct CoreEndpointPort {
        pub name: Option<String>,
        pub protocol: Option<String>,
        #[serde(default, deserialize_with = "required")]
        pub port: i32,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct Node {
        #[serde(default, deserialize_with = "meta")]
        pub metadata: ObjectMeta,
        pub spec: Option<NodeSpec>,
        pub status: Option<NodeStatus>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct NodeSpec {
        pub taints: Option<Vec<Taint>>,
        #[serde(rename = "podCIDRs")]
        pub pod_cidrs: Option<Vec<String>>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct Taint {
        #[serde(default)]
        pub key: String,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct NodeStatus {
        pub addresses: Option<Vec<NodeAddress>>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct NodeAddress {
        #[serde(default, deserialize_with = "required")]
        pub address: String,
        #[serde(rename = "type", default, deserialize_with = "required")]
        pub type_: String,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct ServiceCIDR {
        #[serde(default, deserialize_with = "meta")]
        pub metadata: ObjectMeta,
        pub spec: Option<ServiceCIDRSpec>,
    }

    #[derive(Clone, Debug, Deserialize)]
    pub struct ServiceCIDRSpec {
        pub cidrs: Option<Vec<String>>,
    }

    /// What `kube::Api` and the watcher need: the coordinates and scope of the k8s-openapi
    /// type, and the metadata decoded above.
    macro_rules! resource {
        ($wire:ty, $k8s:ty) => {
            impl kube::Resource for $wire {
                type DynamicType = ();
                type Scope = <$k8s as kube::Resource>::Scope;

                fn kind(_: &()) -> Cow<'_, str> {
                    <$k8s as kube::Resource>::kind(&())
                }
                fn group(_: &()) -> Cow<'_, str> {
                    <$k8s as kube::Resource>::group(&())
                }
                fn version(_: &()) -> Cow<'_, str> {
                    <$k8s as kube::Resource>::version(&())
                }
                fn plural(_: &()) -> Cow<'_, str> {
                    <$k8s as kube::Resource>::plural(&())
                }
                fn meta(&self) -> &ObjectMeta {
                    &self.metadata
                }
                fn meta_mut(&mut self) -> &mut ObjectMeta {
                    &mut self.metadata
                }
            }
        };
    }

    resource!(Service, core::Service);
    resource!(EndpointSlice, discovery::EndpointSlice);
    resource!(Endpoints, core::Endpoints);
    resource!(Node, core::Node);
    resource!(ServiceCIDR, networking::ServiceCIDR);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;

    use kube::runtime::reflector::ObjectRef;

    use super::*;
    use crate::objects::input::ClusterObjects;

    /// Everything a real server adds, on every kind, and every field the model reads.
    pub(crate) const FULL: &str = r#"
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

    fn read(text: &str) -> ClusterObjects {
        let mut objects = ClusterObjects::default();
        objects
            .add_text("full.yaml", text, &mut Vec::new())
            .expect("input reads");
        objects.sort();
        objects
    }

    fn ip(s: &str) -> Option<Address> {
        Some(Address::Ip(s.parse::<IpAddr>().unwrap()))
    }

    #[test]
    fn objects_keep_what_the_model_reads() {
        let o = read(FULL);
        let web = o
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("web"))
            .unwrap();
        assert_eq!(web.metadata.namespace.as_deref(), Some("default"));
        assert!(!web.other_proxy && !web.headless_label);
        let spec = web.spec.as_ref().unwrap();
        assert_eq!(spec.type_, ServiceType::LoadBalancer);
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.20"));
        assert_eq!(&*spec.cluster_ips, &["10.96.0.20".into()]);
        assert_eq!(&*spec.external_ips, &["198.51.100.7".into()]);
        assert_eq!(
            &*spec.load_balancer_source_ranges,
            &["203.0.113.0/24".into()]
        );
        assert!(spec.client_ip_affinity && spec.external_policy_local);
        assert!(!spec.internal_policy_local);
        assert_eq!(spec.affinity_timeout, Some(600));
        assert_eq!(
            spec.ports
                .iter()
                .map(|p| (&*p.name, p.protocol.as_str(), p.port, p.node_port))
                .collect::<Vec<_>>(),
            [
                ("http", "TCP", 80, Some(30080)),
                ("dns", "UDP", 53, Some(30053))
            ]
        );
        // The Proxy-mode ingress is dropped.
        assert_eq!(&*web.load_balancer_ingress_ips, &["192.0.2.10".into()]);

        let slice = &o.endpoint_slices[0];
        assert_eq!(slice.service_name.as_deref(), Some("web"));
        assert_eq!(&*slice.address_type, "IPv4");
        assert_eq!(slice.ports.len(), 2);
        assert_eq!(slice.ports[1].port, Some(5353));
        let e = &slice.endpoints;
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].address, ip("10.244.0.5"));
        assert_eq!(
            (e[0].ready, e[0].serving, e[0].terminating),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(
            (e[2].ready, e[2].serving, e[2].terminating),
            (Some(true), None, None)
        );
        assert_eq!(e[0].node_name.as_deref(), Some("node-a"));
        let hints = e[0].hints.as_deref().unwrap();
        assert_eq!(hints.zones.as_deref().map(|z| z.len()), Some(1));
        assert_eq!(
            hints
                .nodes
                .as_deref()
                .map(|n| n.iter().map(|n| &**n).collect::<Vec<_>>()),
            Some(vec!["node-a"])
        );
        let hints = e[1].hints.as_deref().unwrap();
        assert!(hints.zones.is_some() && hints.nodes.is_none());
        assert!(Arc::ptr_eq(
            e[1].node_name.as_ref().unwrap(),
            e[2].node_name.as_ref().unwrap()
        ));

        let legacy = &o.endpoints[0];
        let subset = &legacy.subsets[0];
        assert_eq!(subset.addresses[0].ip, ip("10.244.0.8").unwrap());
        assert_eq!(
            subset.not_ready_addresses[0].node_name.as_deref(),
            Some("node-b")
        );
        assert_eq!(subset.ports[0].port, Some(9090));

        let node = &o.nodes[0];
        assert_eq!(node.zone.as_deref(), Some("z1"));
        assert_eq!(node.addresses.len(), 3);
        assert_eq!(&*o.service_cidrs[0].cidrs, &["10.96.0.0/16".into()]);
    }

    #[test]
    fn an_address_that_does_not_parse_keeps_its_text() {
        assert_eq!(
            Address::parse(" 10.0.0.1 ".into()),
            Address::Ip([10, 0, 0, 1].into())
        );
        assert_eq!(
            Address::parse("10.0.0.999".into()),
            Address::Invalid("10.0.0.999".into())
        );
    }

    #[test]
    fn the_store_key_is_name_and_namespace() {
        let o = read(FULL);
        let r = ObjectRef::from_obj(&*o.endpoint_slices[0]);
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("web-abcde", Some("default"))
        );
        assert_eq!(EndpointSlice::group(&()), "discovery.k8s.io");
        assert_eq!(EndpointSlice::plural(&()), "endpointslices");
        assert_eq!(ServiceCidr::kind(&()), "ServiceCIDR");
        assert_eq!(<Node as Lookup>::api_version(&()), "v1");
        assert_eq!(ObjectRef::from_obj(&*o.nodes[0]).namespace, None);
    }

    #[test]
    fn interned_strings_are_shared_and_swept() {
        let a = intern("interned-test-a");
        assert!(Arc::ptr_eq(&a, &intern("interned-test-a")));
        // Enough distinct strings to force sweeps: the pool keeps only what is held.
        for i in 0..5000 {
            intern(&format!("interned-test-{i}"));
        }
        assert!(Arc::ptr_eq(&a, &intern("interned-test-a")));
    }

    /// The same object decoded as k8s-openapi (files) or as `api` (watchers) converts to
    /// the same slim object, for every object of every golden scenario and of `FULL`.
    #[test]
    fn api_and_file_decoding_agree() {
        use serde::de::DeserializeOwned;
        use serde::Deserialize;
        use serde_json::Value;

        fn same<K, W, S>(v: &Value) -> bool
        where
            K: DeserializeOwned,
            W: DeserializeOwned,
            S: From<K> + From<W> + PartialEq + std::fmt::Debug,
        {
            let Ok(k) = serde_json::from_value::<K>(v.clone()) else {
                return false; // the file path rejects it with a note; no watcher sees it
            };
            let w =
                serde_json::from_value::<W>(v.clone()).expect("api decodes what k8s-openapi does");
            assert_eq!(S::from(w), S::from(k), "{v}");
            true
        }
        fn each(v: Value, compared: &mut usize) {
            if let Some(items) = v.get("items").and_then(Value::as_array) {
                for i in items {
                    each(i.clone(), compared);
                }
                return;
            }
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
            *compared += usize::from(match kind {
                "Service" => same::<core::Service, api::Service, Service>(&v),
                "EndpointSlice" => {
                    same::<discovery::EndpointSlice, api::EndpointSlice, EndpointSlice>(&v)
                }
                "Endpoints" => same::<core::Endpoints, api::Endpoints, Endpoints>(&v),
                "Node" => same::<core::Node, api::Node, Node>(&v),
                "ServiceCIDR" => same::<networking::ServiceCIDR, api::ServiceCIDR, ServiceCidr>(&v),
                _ => false,
            });
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut texts = vec![FULL.to_string()];
        for e in std::fs::read_dir(root).unwrap() {
            if let Ok(t) = std::fs::read_to_string(e.unwrap().path().join("cluster.yaml")) {
                texts.push(t);
            }
        }
        let mut compared = 0;
        for text in &texts {
            for doc in serde_yaml::Deserializer::from_str(text) {
                each(Value::deserialize(doc).unwrap(), &mut compared);
            }
        }
        assert!(compared > 150, "only {compared} objects");
    }

    /// The size the objects are kept at: 100,000 endpoints at 10,000 Services.
    #[test]
    fn an_endpoint_is_small() {
        assert!(
            std::mem::size_of::<Endpoint>() <= 64,
            "{}",
            std::mem::size_of::<Endpoint>()
        );
    }
}
