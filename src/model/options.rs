//! The resolved settings a render (and later a sync) runs with: flags merged over a
//! KubeProxyConfiguration file. Plain data; parsing lives in `config`.

use std::net::IpAddr;

use ipnet::IpNet;

/// Which node addresses accept NodePort traffic (`--nodeport-addresses`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// The node's primary IPs (one per family), the nftables-mode default.
    #[default]
    Primary,
    /// Node IPs inside any of these CIDRs; a `0.0.0.0/0` or `::/0` entry means every local
    /// address of that family (matched with `fib daddr type local`).
    Cidrs(Vec<IpNet>),
}

/// How traffic from this node's pods is told from other traffic (`detectLocalMode`), as
/// upstream's local-traffic detectors: the ClusterIP masquerade rule marks traffic that is
/// *not* local, and externally-reached Local-policy Services short-circuit traffic that is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDetect {
    /// `ip saddr` inside `--cluster-cidr` (the default).
    #[default]
    ClusterCidr,
    /// `ip saddr` inside this Node's `spec.podCIDRs`.
    NodeCidr,
    /// `iifname "PREFIX*"` (`--pod-interface-name-prefix`).
    InterfaceNamePrefix(String),
    /// `iifname "NAME"` (`--pod-bridge-interface`).
    BridgeInterface(String),
}

impl LocalDetect {
    /// The `detectLocalMode` value.
    pub fn mode_name(&self) -> &'static str {
        match self {
            LocalDetect::ClusterCidr => "ClusterCIDR",
            LocalDetect::NodeCidr => "NodeCIDR",
            LocalDetect::InterfaceNamePrefix(_) => "InterfaceNamePrefix",
            LocalDetect::BridgeInterface(_) => "BridgeInterface",
        }
    }
}

/// Everything the pure core needs besides the cluster objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// This node's name (`--hostname-override`, else the machine's hostname).
    pub hostname: String,
    /// `--node-ip`; empty means "take them from this node's Node object".
    pub node_ips: Vec<IpAddr>,
    /// The addresses of this host's interfaces, which `--nodeport-addresses` CIDRs are
    /// matched against as kube-proxy does. The agent reads them from the kernel; `render`
    /// has none and matches the node IPs instead.
    pub host_addresses: Vec<IpAddr>,
    /// `--cluster-cidr`: pod CIDRs used to tell pod traffic from outside traffic.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
    /// `--service-cidr`; empty means "take them from ServiceCIDR objects".
    pub service_cidrs: Vec<IpNet>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `nftables.masqueradeBit` (default 14, mark 0x4000).
    pub masquerade_bit: u8,
    /// `detectLocalMode` with its `detectLocal` settings.
    pub detect_local: LocalDetect,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hostname: String::new(),
            node_ips: Vec::new(),
            host_addresses: Vec::new(),
            cluster_cidrs: Vec::new(),
            nodeport_addresses: NodePortAddresses::Primary,
            service_cidrs: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            detect_local: LocalDetect::ClusterCidr,
        }
    }
}

impl Options {
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}
