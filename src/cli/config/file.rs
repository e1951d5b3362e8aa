//! The `--config` file: a KubeProxyConfiguration (v1alpha1), read and checked.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::*;

// ---------------------------------------------------------------------------------------
// The config file (KubeProxyConfiguration v1alpha1). Every field is optional so that
// `null` and missing fields both mean "unset"; unknown fields are errors.
// ---------------------------------------------------------------------------------------

/// `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration`. All upstream fields are
/// accepted; only some are used (see [`resolve_all`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub client_connection: Option<ClientConnectionConfiguration>,
    /// component-base logging options; accepted as is.
    pub logging: Option<serde_json::Value>,
    pub hostname_override: Option<String>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub mode: Option<String>,
    pub iptables: Option<IptablesConfiguration>,
    pub ipvs: Option<IpvsConfiguration>,
    pub nftables: Option<NftablesConfiguration>,
    pub winkernel: Option<WinkernelConfiguration>,
    pub detect_local_mode: Option<String>,
    pub detect_local: Option<DetectLocalConfiguration>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Option<ConntrackConfiguration>,
    pub config_sync_period: Option<String>,
    pub port_range: Option<String>,
    pub windows_run_as_service: Option<bool>,
    /// Removed upstream (userspace mode), still present in older generated files.
    pub udp_idle_timeout: Option<String>,
}

/// `clientConnection` (component-base ClientConnectionConfiguration).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConnectionConfiguration {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

/// `iptables` (ignored by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IptablesConfiguration {
    pub masquerade_bit: Option<i64>,
    pub masquerade_all: Option<bool>,
    pub localhost_node_ports: Option<bool>,
    #[serde(rename = "snatNodeInternalIP")]
    pub snat_node_internal_ip: Option<bool>,
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
}

/// `ipvs` (ignored by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpvsConfiguration {
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    pub tcp_timeout: Option<String>,
    pub tcp_fin_timeout: Option<String>,
    pub udp_timeout: Option<String>,
}

/// `nftables`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NftablesConfiguration {
    pub masquerade_bit: Option<i64>,
    pub masquerade_all: Option<bool>,
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
}

/// `winkernel` (ignored by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WinkernelConfiguration {
    pub network_name: Option<String>,
    pub source_vip: Option<String>,
    #[serde(rename = "enableDSR")]
    pub enable_dsr: Option<bool>,
    pub root_hns_endpoint_name: Option<String>,
    pub forward_health_check_vip: Option<bool>,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectLocalConfiguration {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
}

/// `conntrack` (not applied by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConntrackConfiguration {
    pub max_per_core: Option<i64>,
    pub min: Option<i64>,
    pub tcp_established_timeout: Option<String>,
    pub tcp_close_wait_timeout: Option<String>,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: Option<String>,
    pub udp_stream_timeout: Option<String>,
}

/// Reads and checks a KubeProxyConfiguration file: YAML (or JSON), no unknown fields,
/// the right `apiVersion` and `kind`, and `mode` empty or `nftables`.
pub fn load_config_file(path: &Path) -> Result<KubeProxyConfiguration, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(&text, path)
}

/// Parses config file text; `path` is only used in error messages.
pub fn parse_config(text: &str, path: &Path) -> Result<KubeProxyConfiguration, ConfigError> {
    let cfg: KubeProxyConfiguration =
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let api_version = cfg.api_version.as_deref().unwrap_or("");
    if api_version != API_VERSION {
        return Err(ConfigError::ApiVersion {
            path: path.to_path_buf(),
            found: api_version.to_string(),
        });
    }
    let kind = cfg.kind.as_deref().unwrap_or("");
    if kind != KIND {
        return Err(ConfigError::Kind {
            path: path.to_path_buf(),
            found: kind.to_string(),
        });
    }
    match cfg.mode.as_deref() {
        None | Some("") | Some("nftables") => {}
        Some(other) => {
            return Err(ConfigError::UnsupportedMode {
                path: path.to_path_buf(),
                mode: other.to_string(),
            })
        }
    }
    Ok(cfg)
}
