//! The render options as command-line flags (kube-proxy's names), kept as text until
//! [`super::resolve`] parses them.

use std::path::PathBuf;

/// Render options shared by the `render`, `apply` and `run` subcommands. Values are kept
/// as text here; [`resolve`] parses and validates them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RenderArgs {
    /// Use NAME as this node's name instead of the machine's hostname.
    #[arg(long = "hostname-override", value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// This node's IP address (at most one per family); repeat the flag or separate with
    /// commas for dual stack. Default: the addresses of this node's Node object.
    #[arg(long = "node-ip", value_name = "IP", value_delimiter = ',')]
    pub node_ips: Vec<String>,

    /// Pod CIDR range(s) of the cluster, at most one per IP family, used to tell pod
    /// traffic from outside traffic.
    #[arg(long = "cluster-cidr", value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,

    /// Node addresses that accept NodePort traffic: `primary` (the default: the node's
    /// primary IPs) or a comma-separated list of CIDRs (`0.0.0.0/0`, `::/0` for all).
    #[arg(long = "nodeport-addresses", value_name = "CIDR[,CIDR]|primary")]
    pub nodeport_addresses: Option<String>,

    /// Service ClusterIP range(s). Default: taken from the cluster's ServiceCIDR objects.
    #[arg(long = "service-cidr", value_name = "CIDR[,CIDR]")]
    pub service_cidr: Option<String>,

    /// SNAT all traffic sent to Service cluster IPs.
    #[arg(long = "masquerade-all")]
    pub masquerade_all: bool,

    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) YAML file; flags
    /// given on the command line override its values.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}
