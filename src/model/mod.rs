//! The pure model: what each Service port means on this node, after validation. Built from
//! cluster objects and options; knows nothing about nftables.

mod build;
mod endpoints;
pub mod options;

use std::net::IpAddr;

use ipnet::IpNet;

pub use crate::vocab::{Family, Proto};
pub use build::{
    build, globals, group_slices, legacy_by_service, nodeport_ips, obj_key, parse_cidr,
    parse_ip_sloppy, service, NodePortIps, ObjKey, SvcKey, LABEL_SERVICE_NAME,
};
pub use endpoints::{categorize, Categorized};
pub use options::{LocalDetect, NodePortAddresses, Options};

/// Everything the rule builder needs, per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub node_name: String,
    pub node_zone: Option<String>,
    /// This node's IPs, primary first per family.
    pub node_ips: Vec<IpAddr>,
    /// This host's interface addresses (see `Options::host_addresses`).
    pub host_addresses: Vec<IpAddr>,
    /// IP families this node proxies; one table each.
    pub families: Vec<Family>,
    pub cluster_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub nodeport_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    pub masquerade_mark: u32,
    /// How the rules tell traffic from this node's pods (`detectLocalMode`, resolved).
    pub local_traffic: LocalTraffic,
    /// Sorted by namespace, name, port name, protocol.
    pub services: Vec<ServicePort>,
}

/// A resolved local-traffic detector (`Options::detect_local` with the data it needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalTraffic {
    /// Source address inside one of these (`ClusterCIDR`: `--cluster-cidr`; `NodeCIDR`: the
    /// Node's `spec.podCIDRs`). A family with no CIDR has no detector: as upstream's no-op
    /// detector, its table gets neither the masquerade rule nor the short-circuit rules.
    Cidrs(Vec<IpNet>),
    /// Input interface name starting with this prefix (`iifname "veth*"`).
    InterfacePrefix(String),
    /// Input interface named exactly this (`iifname "cni0"`).
    Interface(String),
}

/// One port of one Service: the unit kube-proxy programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Proto,
    /// At most one per family.
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    /// The port load balancers probe this node's endpoints of the Service on (set with
    /// `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Deduplicated, sorted by `IP:port` as upstream does.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `ns/name:port` (or `ns/name` for an unnamed port), as kube-proxy logs it.
    pub fn id(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    pub fn cluster_ip(&self, f: Family) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Runs on this node.
    pub local: bool,
    /// Zones from `hints.forZones`; `None` when the endpoint has no hints.
    pub zone_hints: Option<Vec<String>>,
    /// `hints.forNodes` read for this node: `None` when the endpoint has no node hints,
    /// `Some(true)` when one of them names this node (trafficDistribution `PreferSameNode`).
    pub for_this_node: Option<bool>,
}

impl Endpoint {
    /// The order upstream sorts endpoints in: the `IP:port` string.
    pub fn sort_key(&self) -> String {
        match self.ip {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

/// Fixtures for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A ready, serving, remote endpoint.
    pub fn endpoint(ip: &str, port: u16) -> Endpoint {
        Endpoint {
            ip: ip.parse().expect("test IP"),
            port,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            zone_hints: None,
            for_this_node: None,
        }
    }

    /// A plain ClusterIP Service port `ns/<name>:<port_name>` on `cluster_ip:port`.
    pub fn service_port(
        name: &str,
        port_name: &str,
        protocol: Proto,
        cluster_ip: &str,
        port: u16,
        endpoints: Vec<Endpoint>,
    ) -> ServicePort {
        ServicePort {
            namespace: "ns".into(),
            name: name.into(),
            port_name: port_name.into(),
            protocol,
            cluster_ips: vec![cluster_ip.parse().expect("test IP")],
            port,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            affinity_timeout: None,
            endpoints,
        }
    }
}
