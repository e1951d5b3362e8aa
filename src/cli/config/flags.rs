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

    /// SNAT all traffic sent to Service cluster IPs (`--masquerade-all`,
    /// `--masquerade-all=false`).
    #[arg(long = "masquerade-all", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub masquerade_all: Option<bool>,

    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) YAML file; flags
    /// given on the command line override its values.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// kube-proxy's other flags (same names and forms).
    #[command(flatten)]
    pub kube: KubeProxyFlags,
}

/// kube-proxy's command-line flags beyond the render options, with upstream's names.
/// Values stay text until [`super::resolve_all`] parses them, so every error names the
/// flag. Boolean flags take Go's forms: `--flag` or `--flag=true|false`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct KubeProxyFlags {
    /// Which proxy mode to use; only `nftables` (or empty) is implemented.
    #[arg(long = "proxy-mode", value_name = "MODE")]
    pub proxy_mode: Option<String>,
    /// Log verbosity (kube-proxy's `--v`): 0-1 info, 2-4 debug, 5+ trace.
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub v: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long = "logging-format", value_name = "FORMAT")]
    pub logging_format: Option<String>,
    /// Kubeconfig file; default: in-cluster service account, then $KUBECONFIG, then
    /// ~/.kube/config.
    #[arg(long = "kubeconfig", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address (overrides the kubeconfig's server).
    #[arg(long = "master", value_name = "URL")]
    pub master: Option<String>,
    /// Node IP to use (`0.0.0.0` / `::`: take it from the Node object).
    #[arg(long = "bind-address", value_name = "IP")]
    pub bind_address: Option<String>,
    /// Accepted; kube-nftproxy binds no proxy port of its own.
    #[arg(long = "bind-address-hard-fail", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub bind_address_hard_fail: Option<bool>,
    /// IP:port for /healthz and /livez (default 0.0.0.0:10256); empty disables.
    #[arg(long = "healthz-bind-address", value_name = "IP:PORT")]
    pub healthz_bind_address: Option<String>,
    /// IP:port for /metrics (default 127.0.0.1:10249); empty disables.
    #[arg(long = "metrics-bind-address", value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,
    /// Feature gates, `Name=true,Other=false`.
    #[arg(long = "feature-gates", value_name = "NAME=BOOL,...")]
    pub feature_gates: Option<String>,
    /// How pod traffic is told from other traffic: ClusterCIDR, NodeCIDR,
    /// InterfaceNamePrefix or BridgeInterface.
    #[arg(long = "detect-local-mode", value_name = "MODE")]
    pub detect_local_mode: Option<String>,
    /// Interface name prefix of pod interfaces (detect-local-mode InterfaceNamePrefix).
    #[arg(long = "pod-interface-name-prefix", value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
    /// Bridge interface of pods (detect-local-mode BridgeInterface).
    #[arg(long = "pod-bridge-interface", value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,
    /// Conntrack entries per CPU core (0: leave nf_conntrack_max as is).
    #[arg(
        long = "conntrack-max-per-core",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub conntrack_max_per_core: Option<i32>,
    /// Minimum nf_conntrack_max.
    #[arg(
        long = "conntrack-min",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub conntrack_min: Option<i32>,
    /// Idle timeout of established TCP connections (0: leave as is).
    #[arg(long = "conntrack-tcp-timeout-established", value_name = "DURATION")]
    pub conntrack_tcp_timeout_established: Option<String>,
    /// Timeout of TCP connections in CLOSE_WAIT (0: leave as is).
    #[arg(long = "conntrack-tcp-timeout-close-wait", value_name = "DURATION")]
    pub conntrack_tcp_timeout_close_wait: Option<String>,
    /// Set nf_conntrack_tcp_be_liberal.
    #[arg(long = "conntrack-tcp-be-liberal", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// UDP conntrack timeout (0: leave as is).
    #[arg(long = "conntrack-udp-timeout", value_name = "DURATION")]
    pub conntrack_udp_timeout: Option<String>,
    /// UDP stream conntrack timeout (0: leave as is).
    #[arg(long = "conntrack-udp-timeout-stream", value_name = "DURATION")]
    pub conntrack_udp_timeout_stream: Option<String>,
    /// oom_score_adj of this process, in [-1000, 1000] (default -999).
    #[arg(
        long = "oom-score-adj",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub oom_score_adj: Option<i32>,
    /// API client QPS (default 5).
    #[arg(
        long = "kube-api-qps",
        value_name = "QPS",
        allow_negative_numbers = true
    )]
    pub kube_api_qps: Option<f32>,
    /// API client burst (default 10).
    #[arg(
        long = "kube-api-burst",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub kube_api_burst: Option<i32>,
    /// Content type of API requests (default application/vnd.kubernetes.protobuf).
    #[arg(long = "kube-api-content-type", value_name = "TYPE")]
    pub kube_api_content_type: Option<String>,
    /// How often the informers resync (default 15m).
    #[arg(long = "config-sync-period", value_name = "DURATION")]
    pub config_sync_period: Option<String>,
    /// Remove kube-nftproxy's tables and exit (as `kube-nftproxy cleanup`).
    #[arg(long = "cleanup", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub cleanup: Option<bool>,
    /// Write the effective configuration to FILE (as `kube-nftproxy config`) and exit.
    #[arg(long = "write-config-to", value_name = "FILE")]
    pub write_config_to: Option<PathBuf>,
    /// Resolve and check the configuration, then exit.
    #[arg(long = "init-only", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub init_only: Option<bool>,

    /// The nftables sync period, under its iptables-mode name (upstream applies it in
    /// every mode but ipvs).
    #[arg(long = "iptables-sync-period", value_name = "DURATION")]
    pub iptables_sync_period: Option<String>,
    /// The nftables minimum sync period, under its iptables-mode name.
    #[arg(long = "iptables-min-sync-period", value_name = "DURATION")]
    pub iptables_min_sync_period: Option<String>,

    /// kube-proxy flags that take a value and have no meaning here.
    #[command(flatten)]
    pub inapplicable: InapplicableFlags,
    /// kube-proxy boolean flags that have no meaning here.
    #[command(flatten)]
    pub inapplicable_bools: InapplicableBoolFlags,
}

macro_rules! inapplicable_flags {
    ($ty:ident, $extra:tt, $( $field:ident = $name:literal, )*) => {
        /// kube-proxy flags accepted for compatibility and ignored with one startup
        /// warning each ("not applicable in nftables mode").
        #[derive(clap::Args, Debug, Clone, Default, PartialEq)]
        pub struct $ty {
            $(
                #[arg(long = $name, hide = true, value_name = "VALUE")]
                #[arg $extra]
                pub $field: Option<String>,
            )*
        }

        impl $ty {
            /// The given ones, as (flag name, value).
            pub fn given(&self) -> Vec<(&'static str, &str)> {
                let mut out = Vec::new();
                $( if let Some(v) = &self.$field { out.push(($name, v.as_str())); } )*
                out
            }
        }
    };
}

inapplicable_flags!(
    InapplicableFlags,
    (allow_hyphen_values = true),
    iptables_masquerade_bit = "iptables-masquerade-bit",
    ipvs_exclude_cidrs = "ipvs-exclude-cidrs",
    ipvs_min_sync_period = "ipvs-min-sync-period",
    ipvs_scheduler = "ipvs-scheduler",
    ipvs_sync_period = "ipvs-sync-period",
    ipvs_tcp_timeout = "ipvs-tcp-timeout",
    ipvs_tcpfin_timeout = "ipvs-tcpfin-timeout",
    ipvs_udp_timeout = "ipvs-udp-timeout",
    show_hidden_metrics_for_version = "show-hidden-metrics-for-version",
    log_flush_frequency = "log-flush-frequency",
    vmodule = "vmodule",
    log_dir = "log-dir",
    log_file = "log-file",
    log_file_max_size = "log-file-max-size",
    log_backtrace_at = "log-backtrace-at",
    stderrthreshold = "stderrthreshold",
    log_text_info_buffer_size = "log-text-info-buffer-size",
    log_json_info_buffer_size = "log-json-info-buffer-size",
    proxy_port_range = "proxy-port-range",
    healthz_port = "healthz-port",
    metrics_port = "metrics-port",
    udp_timeout = "udp-timeout",
);

inapplicable_flags!(
    InapplicableBoolFlags,
    (
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    ),
    iptables_localhost_nodeports = "iptables-localhost-nodeports",
    ipvs_strict_arp = "ipvs-strict-arp",
    profiling = "profiling",
    alsologtostderr = "alsologtostderr",
    logtostderr = "logtostderr",
    add_dir_header = "add-dir-header",
    skip_headers = "skip-headers",
    skip_log_headers = "skip-log-headers",
    one_output = "one-output",
    log_text_split_stream = "log-text-split-stream",
    log_json_split_stream = "log-json-split-stream",
    windows_service = "windows-service",
);
