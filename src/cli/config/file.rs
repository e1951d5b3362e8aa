//! The `--config` file: a KubeProxyConfiguration (v1alpha1), read and checked.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::*;

// ---------------------------------------------------------------------------------------
// The config file (KubeProxyConfiguration v1alpha1). Every field is optional so that
// `null` and missing fields both mean "unset"; unknown fields are errors.
// ---------------------------------------------------------------------------------------

/// `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration`. All upstream fields are
/// accepted; only some are used (see [`resolve_all`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_gates: Option<BTreeMap<String, bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_connection: Option<ClientConnectionConfiguration>,
    /// component-base logging options; accepted as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthz_bind_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_bind_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address_hard_fail: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_profiling: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_hidden_metrics_for_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iptables: Option<IptablesConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<IpvsConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nftables: Option<NftablesConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winkernel: Option<WinkernelConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_local_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_local: Option<DetectLocalConfiguration>,
    #[serde(rename = "clusterCIDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port_addresses: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackConfiguration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_sync_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_range: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows_run_as_service: Option<bool>,
    /// Removed upstream (userspace mode), still present in older generated files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_idle_timeout: Option<String>,
}

/// `clientConnection` (component-base ClientConnectionConfiguration).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConnectionConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_content_types: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
}

/// `iptables` (ignored by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IptablesConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade_bit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade_all: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localhost_node_ports: Option<bool>,
    #[serde(rename = "snatNodeInternalIP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_node_internal_ip: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_sync_period: Option<String>,
}

/// `ipvs` (ignored by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpvsConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_sync_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict_arp: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_fin_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<String>,
}

/// `nftables`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NftablesConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade_bit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade_all: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_sync_period: Option<String>,
}

/// `winkernel` (ignored by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WinkernelConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_vip: Option<String>,
    #[serde(rename = "enableDSR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_dsr: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_hns_endpoint_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_health_check_vip: Option<bool>,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DetectLocalConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name_prefix: Option<String>,
}

/// `conntrack` (not applied by kube-nftproxy).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConntrackConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_core: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_established_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_close_wait_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_be_liberal: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
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
