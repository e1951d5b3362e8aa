//! Render options: kube-proxy style command-line flags merged over an optional
//! KubeProxyConfiguration (v1alpha1) file, resolved into [`Options`].
//!
//! Flags override the file. All parsing and validation happens in [`resolve`] /
//! [`resolve_all`], so every error names the flag (or the file and field) and the bad value.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::model::options::{NodePortAddresses, Options};

/// The only `apiVersion` a config file may have.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The only `kind` a config file may have.
pub const KIND: &str = "KubeProxyConfiguration";
/// `nftables.masqueradeBit` when unset (mark 0x4000).
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;
/// `nftables.syncPeriod` when unset or zero.
/// kube-nftproxy forces a full sync hourly; partial syncs carry every change in between.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(3600);
/// `nftables.minSyncPeriod` when unset or zero.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);

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

/// Why the options could not be resolved. Every message names the flag or the config
/// file (and field) involved, and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax errors, unknown fields (the message names the field), wrong types.
    #[error("invalid config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config file {}: apiVersion is {found:?}, expected {API_VERSION:?}", path.display())]
    ApiVersion { path: PathBuf, found: String },
    #[error("config file {}: kind is {found:?}, expected {KIND:?}", path.display())]
    Kind { path: PathBuf, found: String },
    #[error(
        "config file {}: mode {mode:?} is not supported: kube-nftproxy only implements \
         nftables mode (set `mode: nftables` or leave it empty)",
        path.display()
    )]
    UnsupportedMode { path: PathBuf, mode: String },
    /// A bad value. `setting` is a flag (`--node-ip`) or `config file PATH: field`.
    #[error("{setting}: invalid value {value:?}: {reason}")]
    InvalidValue {
        setting: String,
        value: String,
        reason: String,
    },
    #[error("cannot determine the node name: {0}")]
    Hostname(String),
}

/// Sync timing (`nftables.syncPeriod`, `nftables.minSyncPeriod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSettings {
    /// How often a full resync happens (default 30s).
    pub sync_period: Duration,
    /// Minimum time between syncs (default 1s).
    pub min_sync_period: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
        }
    }
}

/// Everything [`resolve_all`] produces.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub options: Options,
    pub sync: SyncSettings,
    /// The parsed `--config` file, if one was given (for fields not folded into
    /// `options`, e.g. `clientConnection.kubeconfig`, `healthzBindAddress`).
    pub file: Option<KubeProxyConfiguration>,
}

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

/// Flags merged over the `--config` file, validated. See [`resolve_all`].
pub fn resolve(args: &RenderArgs) -> Result<Options, ConfigError> {
    resolve_all(args).map(|r| r.options)
}

/// The sync timing from the `--config` file (defaults 30s / 1s). Validates everything
/// [`resolve`] validates; prefer [`resolve_all`] when both are needed.
pub fn resolve_sync(args: &RenderArgs) -> Result<SyncSettings, ConfigError> {
    resolve_all(args).map(|r| r.sync)
}

/// Reads `--config` (if given) and applies the flags over it.
///
/// Precedence and mapping:
/// - hostname: `--hostname-override`, else `hostnameOverride`, else the machine's
///   hostname; trimmed and lowercased (as kube-proxy does).
/// - node IPs: `--node-ip`, else `bindAddress` if it is a specific (non-0.0.0.0/::)
///   address, else empty (take them from the Node object).
/// - cluster CIDRs: `--cluster-cidr`, else `clusterCIDR` (at most one per family).
/// - NodePort addresses: `--nodeport-addresses`, else `nodePortAddresses`, else primary.
/// - service CIDRs: `--service-cidr` only.
/// - masquerade-all: `--masquerade-all` or `nftables.masqueradeAll`.
/// - masquerade bit / sync periods: `nftables.*` (the `iptables` and `ipvs` sections
///   are accepted but ignored).
pub fn resolve_all(args: &RenderArgs) -> Result<Resolved, ConfigError> {
    let file = match &args.config {
        Some(path) => Some(load_config_file(path)?),
        None => None,
    };
    let empty = KubeProxyConfiguration::default();
    let cfg = file.as_ref().unwrap_or(&empty);
    let path = args.config.as_deref().unwrap_or(Path::new(""));
    let field = |name: &str| format!("config file {}: {name}", path.display());
    let nft = cfg.nftables.clone().unwrap_or_default();

    let hostname = resolve_hostname(
        args.hostname_override
            .as_deref()
            .or(cfg.hostname_override.as_deref()),
    )?;

    let node_ips = if args.node_ips.iter().any(|s| !s.trim().is_empty()) {
        parse_node_ips(&args.node_ips, "--node-ip")?
    } else {
        match cfg.bind_address.as_deref().map(str::trim) {
            Some(addr) if !addr.is_empty() => {
                let ip = parse_ip_sloppy(addr)
                    .ok_or_else(|| invalid(field("bindAddress"), addr, "not an IP address"))?;
                if ip.is_unspecified() {
                    Vec::new()
                } else {
                    vec![ip]
                }
            }
            _ => Vec::new(),
        }
    };

    let cluster_cidrs = match (&args.cluster_cidr, &cfg.cluster_cidr) {
        (Some(flag), _) => parse_cluster_cidrs(flag, "--cluster-cidr")?,
        (None, Some(value)) => parse_cluster_cidrs(value, &field("clusterCIDR"))?,
        (None, None) => Vec::new(),
    };

    let nodeport_addresses = match (&args.nodeport_addresses, &cfg.node_port_addresses) {
        (Some(flag), _) => parse_nodeport_addresses(flag.split(','), "--nodeport-addresses", flag)?,
        (None, Some(list)) => parse_nodeport_addresses(
            list.iter().map(String::as_str),
            &field("nodePortAddresses"),
            &list.join(","),
        )?,
        (None, None) => NodePortAddresses::Primary,
    };

    let service_cidrs = match &args.service_cidr {
        Some(flag) => dedup(parse_cidr_list(flag, "--service-cidr")?),
        None => Vec::new(),
    };

    let masquerade_bit = match nft.masquerade_bit {
        None => DEFAULT_MASQUERADE_BIT,
        Some(bit) => u8::try_from(bit).ok().filter(|b| *b <= 31).ok_or_else(|| {
            invalid(
                field("nftables.masqueradeBit"),
                &bit.to_string(),
                "must be within the range [0, 31]",
            )
        })?,
    };

    if let Some(mode) = cfg.detect_local_mode.as_deref() {
        if !mode.is_empty() && mode != "ClusterCIDR" {
            tracing::warn!(
                detect_local_mode = mode,
                "detectLocalMode is not supported by kube-nftproxy; pod traffic is detected \
                 with --cluster-cidr (ClusterCIDR mode)"
            );
        }
    }

    let sync = resolve_sync_settings(&nft, path)?;

    let options = Options {
        hostname,
        node_ips,
        cluster_cidrs,
        nodeport_addresses,
        service_cidrs,
        masquerade_all: args.masquerade_all || nft.masquerade_all.unwrap_or(false),
        masquerade_bit,
    };
    Ok(Resolved {
        options,
        sync,
        file,
    })
}

fn resolve_sync_settings(
    nft: &NftablesConfiguration,
    path: &Path,
) -> Result<SyncSettings, ConfigError> {
    let parse = |name: &str, value: Option<&String>, default: Duration| {
        let Some(value) = value else {
            return Ok(default);
        };
        let d = parse_go_duration(value).map_err(|reason| {
            invalid(
                format!("config file {}: nftables.{name}", path.display()),
                value,
                &reason,
            )
        })?;
        // As upstream's v1alpha1 defaulting: zero means "use the default".
        Ok(if d.is_zero() { default } else { d })
    };
    let sync_period = parse("syncPeriod", nft.sync_period.as_ref(), DEFAULT_SYNC_PERIOD)?;
    let min_sync_period = parse(
        "minSyncPeriod",
        nft.min_sync_period.as_ref(),
        DEFAULT_MIN_SYNC_PERIOD,
    )?;
    if min_sync_period > sync_period {
        return Err(invalid(
            format!("config file {}: nftables.minSyncPeriod", path.display()),
            nft.min_sync_period.as_deref().unwrap_or(""),
            &format!(
                "must not be longer than nftables.syncPeriod ({})",
                format_duration(sync_period)
            ),
        ));
    }
    Ok(SyncSettings {
        sync_period,
        min_sync_period,
    })
}

fn invalid(setting: impl Into<String>, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        setting: setting.into(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// kube-proxy's GetHostname: the override if non-empty, else the machine's hostname;
/// trimmed, lowercased, and not empty.
fn resolve_hostname(override_name: Option<&str>) -> Result<String, ConfigError> {
    let name = match override_name.map(str::trim).filter(|s| !s.is_empty()) {
        Some(name) => name.to_string(),
        None => gethostname::gethostname().into_string().map_err(|raw| {
            ConfigError::Hostname(format!(
                "the machine's hostname {raw:?} is not valid UTF-8; use --hostname-override"
            ))
        })?,
    };
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        return Err(ConfigError::Hostname(
            "the machine's hostname is empty; use --hostname-override".to_string(),
        ));
    }
    Ok(name)
}

/// Parses an IP address, also accepting IPv4 octets with leading zeros (`010.001.0.1`,
/// read as decimal) like Go's `ParseIPSloppy`.
fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (octet, part) in octets.iter_mut().zip(&parts) {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Parses `ADDRESS/PREFIX` (surrounding spaces tolerated) and clears host bits.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let Some((addr, prefix)) = s.split_once('/') else {
        return Err("not a CIDR (expected ADDRESS/PREFIX, like 10.244.0.0/16)".to_string());
    };
    let addr =
        parse_ip_sloppy(addr).ok_or_else(|| format!("{:?} is not an IP address", addr.trim()))?;
    let prefix = prefix.trim();
    let len: u8 = prefix
        .parse()
        .ok()
        .filter(|_| prefix.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{prefix:?} is not a prefix length"))?;
    IpNet::new(addr, len)
        .map(|net| net.trunc())
        .map_err(|_| format!("prefix length /{len} is too long for {addr}"))
}

/// A comma-separated CIDR list; empty entries are skipped.
fn parse_cidr_list(value: &str, setting: &str) -> Result<Vec<IpNet>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_cidr(s).map_err(|reason| invalid(setting, s, &reason)))
        .collect()
}

fn dedup(list: Vec<IpNet>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::with_capacity(list.len());
    for net in list {
        if !out.contains(&net) {
            out.push(net);
        }
    }
    out
}

/// `--cluster-cidr` / `clusterCIDR`: at most one CIDR per IP family.
fn parse_cluster_cidrs(value: &str, setting: &str) -> Result<Vec<IpNet>, ConfigError> {
    let cidrs = dedup(parse_cidr_list(value, setting)?);
    let v4 = cidrs.iter().filter(|c| matches!(c, IpNet::V4(_))).count();
    let v6 = cidrs.len() - v4;
    if v4 > 1 || v6 > 1 {
        let family = if v4 > 1 { "IPv4" } else { "IPv6" };
        return Err(invalid(
            setting,
            value.trim(),
            &format!(
                "more than one {family} CIDR; at most one CIDR per IP family is allowed \
                 (a dual-stack pair like 10.244.0.0/16,fd00:10:244::/56)"
            ),
        ));
    }
    Ok(cidrs)
}

/// `--node-ip`: addresses (entries may themselves be comma-separated), at most one per
/// family, not 0.0.0.0 / ::.
fn parse_node_ips(values: &[String], setting: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for entry in values.iter().flat_map(|v| v.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let ip =
            parse_ip_sloppy(entry).ok_or_else(|| invalid(setting, entry, "not an IP address"))?;
        if ip.is_unspecified() {
            return Err(invalid(
                setting,
                entry,
                "the unspecified address is not a node IP",
            ));
        }
        if ips.contains(&ip) {
            continue;
        }
        if ips.iter().any(|other| other.is_ipv4() == ip.is_ipv4()) {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(invalid(
                setting,
                &values.join(","),
                &format!("more than one {family} address; give at most one IP per family"),
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// Whether every address in `net` is a loopback address.
fn is_loopback_cidr(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() >= 8 && n.network().is_loopback(),
        IpNet::V6(n) => n.prefix_len() == 128 && n.network() == Ipv6Addr::LOCALHOST,
    }
}

/// `--nodeport-addresses` / `nodePortAddresses`: `primary` alone, or CIDRs (plus the
/// upstream keywords `all` = 0.0.0.0/0,::/0 and `localhost`, which is skipped).
fn parse_nodeport_addresses<'a>(
    entries: impl IntoIterator<Item = &'a str>,
    setting: &str,
    raw: &str,
) -> Result<NodePortAddresses, ConfigError> {
    let mut primary = false;
    let mut others = false;
    let mut cidrs: Vec<IpNet> = Vec::new();
    let warn_loopback = |entry: &str| {
        tracing::warn!(
            setting,
            entry,
            "nodeport addresses include localhost but localhost NodePorts are not \
             supported; skipping it"
        );
    };
    for entry in entries.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        if entry.eq_ignore_ascii_case("primary") {
            primary = true;
            continue;
        }
        others = true;
        if entry.eq_ignore_ascii_case("all") {
            cidrs.push(IpNet::V4(ipnet::Ipv4Net::default()));
            cidrs.push(IpNet::V6(ipnet::Ipv6Net::default()));
        } else if entry.eq_ignore_ascii_case("localhost") {
            warn_loopback(entry);
        } else {
            let cidr = parse_cidr(entry).map_err(|reason| {
                invalid(
                    setting,
                    entry,
                    &format!("{reason}; expected CIDRs or the word \"primary\""),
                )
            })?;
            if is_loopback_cidr(&cidr) {
                warn_loopback(entry);
            } else {
                cidrs.push(cidr);
            }
        }
    }
    if primary && others {
        return Err(invalid(
            setting,
            raw.trim(),
            "\"primary\" cannot be combined with CIDRs; give either \"primary\" or a CIDR list",
        ));
    }
    if !others {
        return Ok(NodePortAddresses::Primary);
    }
    if cidrs.is_empty() {
        tracing::warn!(
            setting,
            value = raw,
            "no usable nodeport addresses remain; NodePorts will not be reachable"
        );
    }
    Ok(NodePortAddresses::Cidrs(dedup(cidrs)))
}

/// Parses a Go `time.Duration` string (`"30s"`, `"1h0m0s"`, `"500ms"`, `"1.5h"`, `"0"`).
/// Units: ns, us (µs), ms, s, m, h. Negative durations are rejected.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    const MAX_NANOS: u128 = i64::MAX as u128;
    let text = s.trim();
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err("not a duration (expected e.g. \"30s\", \"1m30s\", \"500ms\")".to_string());
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => f.split_at(f.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!(
                "not a duration: expected a number at {rest:?} (e.g. \"30s\", \"1m30s\")"
            ));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("missing unit (ns, us, ms, s, m or h) in duration".to_string()),
            other => return Err(format!("unknown unit {other:?} in duration")),
        };
        let too_long = || "duration is too long".to_string();
        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_long())?
        };
        let mut nanos = int_value.checked_mul(unit_nanos).ok_or_else(too_long)?;
        // Fractions beyond nanosecond precision are truncated, like Go.
        let mut scale: u128 = 1;
        let mut frac: u128 = 0;
        for digit in frac_part.bytes().take(20) {
            frac = frac * 10 + u128::from(digit - b'0');
            scale *= 10;
        }
        nanos += frac * unit_nanos / scale;
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        if total > MAX_NANOS {
            return Err(too_long());
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err("must not be negative".to_string());
    }
    let nanos = u64::try_from(total).map_err(|_| "duration is too long".to_string())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way Go prints it for whole seconds and above (`"1m30s"`),
/// falling back to Rust's debug form for sub-second values.
fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 || d.is_zero() {
        return format!("{d:?}");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::str::FromStr;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        render: RenderArgs,
    }

    fn cli(args: &[&str]) -> RenderArgs {
        let mut argv = vec!["kube-nftproxy"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("flags parse").render
    }

    fn net(s: &str) -> IpNet {
        IpNet::from_str(s).expect("test CIDR")
    }

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).expect("test IP")
    }

    fn with_host(mut args: RenderArgs) -> RenderArgs {
        if args.hostname_override.is_none() {
            args.hostname_override = Some("node-1".to_string());
        }
        args
    }

    /// Writes a config file under the temp dir; unique per test and process.
    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "kube-nftproxy-config-test-{}-{name}.yaml",
                std::process::id()
            ));
            std::fs::write(&path, contents).expect("write temp config");
            TempConfig(path)
        }

        fn args(&self) -> RenderArgs {
            RenderArgs {
                config: Some(self.0.clone()),
                ..Default::default()
            }
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const HEADER: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    fn err_text(args: &RenderArgs) -> String {
        match resolve_all(args) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let args = with_host(RenderArgs::default());
        let resolved = resolve_all(&args).expect("resolve");
        assert_eq!(
            resolved.options,
            Options {
                hostname: "node-1".to_string(),
                ..Options::default()
            }
        );
        assert_eq!(
            resolved.options.nodeport_addresses,
            NodePortAddresses::Primary
        );
        assert_eq!(resolved.options.masquerade_bit, 14);
        assert_eq!(resolved.options.masquerade_mark(), 0x4000);
        assert!(!resolved.options.masquerade_all);
        assert_eq!(
            resolved.sync,
            SyncSettings {
                sync_period: Duration::from_secs(3600),
                min_sync_period: Duration::from_secs(1)
            }
        );
        assert!(resolved.file.is_none());
        assert_eq!(resolve_sync(&args).expect("sync"), SyncSettings::default());
    }

    #[test]
    fn default_hostname_is_machine_hostname_lowercased() {
        let machine = gethostname::gethostname()
            .into_string()
            .expect("utf-8 hostname")
            .trim()
            .to_lowercase();
        if machine.is_empty() {
            return;
        }
        let opts = resolve(&RenderArgs::default()).expect("resolve");
        assert_eq!(opts.hostname, machine);
        // An empty override also falls back to the machine's name.
        let opts = resolve(&RenderArgs {
            hostname_override: Some("  ".to_string()),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(opts.hostname, machine);
    }

    #[test]
    fn hostname_override_is_trimmed_and_lowercased() {
        let opts =
            resolve(&cli(&["--hostname-override", "  Worker-A.Example.COM "])).expect("resolve");
        assert_eq!(opts.hostname, "worker-a.example.com");
    }

    #[test]
    fn flags_parse_and_resolve() {
        let args = cli(&[
            "--hostname-override",
            "n1",
            "--node-ip",
            "10.0.0.5,fd00::5",
            "--cluster-cidr",
            " 10.244.0.0/16 , fd00:10:244::/56",
            "--nodeport-addresses",
            "192.168.1.0/24, 10.0.0.1/8",
            "--service-cidr",
            "10.96.0.0/12,fd00:10:96::/112",
            "--masquerade-all",
        ]);
        assert_eq!(args.hostname_override.as_deref(), Some("n1"));
        assert_eq!(args.node_ips, vec!["10.0.0.5", "fd00::5"]);
        assert!(args.masquerade_all);
        assert!(args.config.is_none());

        let opts = resolve(&args).expect("resolve");
        assert_eq!(opts.node_ips, vec![ip("10.0.0.5"), ip("fd00::5")]);
        assert_eq!(
            opts.cluster_cidrs,
            vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]
        );
        // Host bits are cleared: 10.0.0.1/8 becomes 10.0.0.0/8.
        assert_eq!(
            opts.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("192.168.1.0/24"), net("10.0.0.0/8")])
        );
        assert_eq!(
            opts.service_cidrs,
            vec![net("10.96.0.0/12"), net("fd00:10:96::/112")]
        );
        assert!(opts.masquerade_all);
        assert_eq!(opts.masquerade_bit, 14);
    }

    #[test]
    fn node_ip_is_repeatable() {
        let args = cli(&["--node-ip", "10.0.0.5", "--node-ip", "fd00::5"]);
        let opts = resolve(&with_host(args)).expect("resolve");
        assert_eq!(opts.node_ips, vec![ip("10.0.0.5"), ip("fd00::5")]);
    }

    #[test]
    fn sloppy_ipv4_is_accepted() {
        let args = with_host(cli(&[
            "--node-ip",
            "010.000.000.005",
            "--cluster-cidr",
            "203.0.113.000/025",
        ]));
        let opts = resolve(&args).expect("resolve");
        assert_eq!(opts.node_ips, vec![ip("10.0.0.5")]);
        assert_eq!(opts.cluster_cidrs, vec![net("203.0.113.0/25")]);
    }

    #[test]
    fn nodeport_primary_and_all_keywords() {
        let opts = resolve(&with_host(cli(&["--nodeport-addresses", "primary"]))).expect("resolve");
        assert_eq!(opts.nodeport_addresses, NodePortAddresses::Primary);
        let opts = resolve(&with_host(cli(&["--nodeport-addresses", "all"]))).expect("resolve");
        assert_eq!(
            opts.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("0.0.0.0/0"), net("::/0")])
        );
        let opts = resolve(&with_host(cli(&["--nodeport-addresses", ""]))).expect("resolve");
        assert_eq!(opts.nodeport_addresses, NodePortAddresses::Primary);
    }

    #[test]
    fn loopback_nodeport_cidrs_are_skipped() {
        let args = with_host(cli(&[
            "--nodeport-addresses",
            "127.0.0.0/8,::1/128,10.0.0.0/8,localhost,127.0.0.1/32",
        ]));
        let opts = resolve(&args).expect("resolve");
        assert_eq!(
            opts.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("10.0.0.0/8")])
        );
        // 0.0.0.0/0 contains loopback but is not only loopback: kept.
        let args = with_host(cli(&["--nodeport-addresses", "0.0.0.0/0"]));
        assert_eq!(
            resolve(&args).expect("resolve").nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("0.0.0.0/0")])
        );
    }

    #[test]
    fn full_upstream_config_file_loads() {
        let file = TempConfig::new(
            "full",
            &format!(
                "{HEADER}\
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: \"\"
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: \"\"
  interfaceNamePrefix: \"\"
detectLocalMode: \"\"
enableProfiling: false
featureGates:
  SomeGate: true
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: Worker-7
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 1s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: \"\"
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: \"0\"
    text:
      infoBufferSize: \"0\"
  verbosity: 0
metricsBindAddress: 127.0.0.1:10249
mode: nftables
nftables:
  masqueradeAll: true
  masqueradeBit: 5
  minSyncPeriod: 500ms
  syncPeriod: 1h0m0s
nodePortAddresses:
- 192.168.0.0/16
- fd00::/64
oomScoreAdj: -999
portRange: \"\"
showHiddenMetricsForVersion: \"\"
windowsRunAsService: false
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: \"\"
  rootHnsEndpointName: \"\"
  sourceVip: \"\"
"
            ),
        );
        let resolved = resolve_all(&file.args()).expect("resolve");
        let opts = &resolved.options;
        assert_eq!(opts.hostname, "worker-7");
        assert!(
            opts.node_ips.is_empty(),
            "bindAddress 0.0.0.0 is not a node IP"
        );
        assert_eq!(
            opts.cluster_cidrs,
            vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]
        );
        assert_eq!(
            opts.nodeport_addresses,
            NodePortAddresses::Cidrs(vec![net("192.168.0.0/16"), net("fd00::/64")])
        );
        assert!(opts.service_cidrs.is_empty());
        assert!(opts.masquerade_all);
        assert_eq!(opts.masquerade_bit, 5);
        assert_eq!(
            resolved.sync,
            SyncSettings {
                sync_period: Duration::from_secs(3600),
                min_sync_period: Duration::from_millis(500),
            }
        );
        let cfg = resolved.file.expect("file kept");
        assert_eq!(
            cfg.client_connection.and_then(|c| c.kubeconfig).as_deref(),
            Some("/var/lib/kube-proxy/kubeconfig.conf")
        );
        assert_eq!(cfg.oom_score_adj, Some(-999));
        assert_eq!(
            cfg.feature_gates.and_then(|g| g.get("SomeGate").copied()),
            Some(true)
        );
    }

    #[test]
    fn minimal_config_file_uses_defaults() {
        let file = TempConfig::new("minimal", HEADER);
        let resolved = resolve_all(&with_host(file.args())).expect("resolve");
        assert_eq!(
            resolved.options,
            Options {
                hostname: "node-1".to_string(),
                ..Options::default()
            }
        );
        assert_eq!(resolved.sync, SyncSettings::default());
    }

    #[test]
    fn bind_address_becomes_node_ip() {
        let file = TempConfig::new("bindaddr", &format!("{HEADER}bindAddress: 192.0.2.10\n"));
        let opts = resolve(&with_host(file.args())).expect("resolve");
        assert_eq!(opts.node_ips, vec![ip("192.0.2.10")]);
        // --node-ip wins.
        let mut args = with_host(file.args());
        args.node_ips = vec!["192.0.2.20".to_string()];
        assert_eq!(
            resolve(&args).expect("resolve").node_ips,
            vec![ip("192.0.2.20")]
        );
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let file = TempConfig::new(
            "unknown-top",
            &format!("{HEADER}mode: nftables\nnodePortAdresses: [primary]\n"),
        );
        let msg = err_text(&file.args());
        assert!(msg.contains("nodePortAdresses"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(msg.contains(&file.0.display().to_string()), "{msg}");
    }

    #[test]
    fn unknown_nested_field_is_named() {
        let file = TempConfig::new(
            "unknown-nested",
            &format!("{HEADER}nftables:\n  masqueradeBits: 3\n"),
        );
        let msg = err_text(&file.args());
        assert!(msg.contains("masqueradeBits"), "{msg}");
        assert!(msg.contains(&file.0.display().to_string()), "{msg}");
    }

    #[test]
    fn wrong_api_version_kind_and_mode() {
        let file = TempConfig::new(
            "apiversion",
            "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
        );
        let msg = err_text(&file.args());
        assert!(msg.contains("apiVersion"), "{msg}");
        assert!(msg.contains("v1beta1"), "{msg}");

        let file = TempConfig::new(
            "kind",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
        );
        let msg = err_text(&file.args());
        assert!(msg.contains("kind is \"KubeletConfiguration\""), "{msg}");

        let file = TempConfig::new("noapiversion", "kind: KubeProxyConfiguration\n");
        assert!(err_text(&file.args()).contains("apiVersion is \"\""));

        let file = TempConfig::new("mode", &format!("{HEADER}mode: ipvs\n"));
        let msg = err_text(&file.args());
        assert!(msg.contains("\"ipvs\""), "{msg}");
        assert!(msg.contains("only implements nftables mode"), "{msg}");
    }

    #[test]
    fn missing_config_file_names_path() {
        let path = std::env::temp_dir().join("kube-nftproxy-config-test-does-not-exist.yaml");
        let args = RenderArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = resolve(&args).expect_err("missing file");
        assert!(matches!(err, ConfigError::ReadFile { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn flags_override_config() {
        let file = TempConfig::new(
            "override",
            &format!(
                "{HEADER}hostnameOverride: from-file\nclusterCIDR: 10.244.0.0/16\n\
                 nodePortAddresses: [10.0.0.0/8]\nnftables:\n  masqueradeAll: false\n"
            ),
        );
        let from_file = resolve(&file.args()).expect("resolve");
        assert_eq!(from_file.hostname, "from-file");
        assert_eq!(from_file.cluster_cidrs, vec![net("10.244.0.0/16")]);
        assert!(!from_file.masquerade_all);

        let mut args = cli(&[
            "--hostname-override",
            "from-flag",
            "--cluster-cidr",
            "10.100.0.0/16",
            "--nodeport-addresses",
            "primary",
            "--masquerade-all",
        ]);
        args.config = Some(file.0.clone());
        let opts = resolve(&args).expect("resolve");
        assert_eq!(opts.hostname, "from-flag");
        assert_eq!(opts.cluster_cidrs, vec![net("10.100.0.0/16")]);
        assert_eq!(opts.nodeport_addresses, NodePortAddresses::Primary);
        assert!(opts.masquerade_all);
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["--node-ip", "10.0.0.300"], "--node-ip", "10.0.0.300"),
            (&["--node-ip", "0.0.0.0"], "--node-ip", "0.0.0.0"),
            (&["--node-ip", "10.0.0.1,10.0.0.2"], "--node-ip", "IPv4"),
            (
                &["--cluster-cidr", "10.244.0.0"],
                "--cluster-cidr",
                "10.244.0.0",
            ),
            (
                &["--cluster-cidr", "10.244.0.0/33"],
                "--cluster-cidr",
                "/33",
            ),
            (
                &["--cluster-cidr", "10.244.0.0/16,10.245.0.0/16"],
                "--cluster-cidr",
                "more than one IPv4 CIDR",
            ),
            (
                &["--cluster-cidr", "fd00::/64,fd01::/64"],
                "--cluster-cidr",
                "more than one IPv6 CIDR",
            ),
            (
                &["--nodeport-addresses", "primary,10.0.0.0/8"],
                "--nodeport-addresses",
                "cannot be combined",
            ),
            (
                &["--nodeport-addresses", "eth0"],
                "--nodeport-addresses",
                "\"eth0\"",
            ),
            (
                &["--service-cidr", "10.96.0.0/xx"],
                "--service-cidr",
                "10.96.0.0/xx",
            ),
        ];
        for (flags, flag, needle) in cases {
            let msg = err_text(&with_host(cli(flags)));
            assert!(msg.starts_with(flag), "{flags:?}: {msg}");
            assert!(msg.contains(needle), "{flags:?}: {msg}");
        }
    }

    #[test]
    fn bad_config_values_name_the_file_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "nftables:\n  masqueradeBit: 32\n",
                "nftables.masqueradeBit",
                "32",
            ),
            (
                "nftables:\n  masqueradeBit: -1\n",
                "nftables.masqueradeBit",
                "[0, 31]",
            ),
            (
                "nftables:\n  syncPeriod: 30x\n",
                "nftables.syncPeriod",
                "30x",
            ),
            (
                "nftables:\n  syncPeriod: 10s\n  minSyncPeriod: 1m\n",
                "nftables.minSyncPeriod",
                "10s",
            ),
            (
                "clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n",
                "clusterCIDR",
                "IPv4",
            ),
            ("clusterCIDR: nope\n", "clusterCIDR", "nope"),
            (
                "nodePortAddresses: [primary, 10.0.0.0/8]\n",
                "nodePortAddresses",
                "primary",
            ),
            ("bindAddress: not-an-ip\n", "bindAddress", "not-an-ip"),
        ];
        for (i, (body, field, needle)) in cases.iter().enumerate() {
            let file = TempConfig::new(&format!("bad-{i}"), &format!("{HEADER}{body}"));
            let msg = err_text(&with_host(file.args()));
            let prefix = format!("config file {}: {field}", file.0.display());
            assert!(msg.starts_with(&prefix), "{body}: {msg}");
            assert!(msg.contains(needle), "{body}: {msg}");
        }
    }

    #[test]
    fn wrong_type_in_config_is_a_parse_error() {
        let file = TempConfig::new(
            "wrongtype",
            &format!("{HEADER}nftables:\n  masqueradeAll: maybe\n"),
        );
        let err = resolve(&with_host(file.args())).expect_err("wrong type");
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("masqueradeAll"), "{err}");
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1s", Duration::from_secs(1)),
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("2h22m", Duration::from_secs(2 * 3600 + 22 * 60)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1m30.25s", Duration::from_millis(90_250)),
            ("10us", Duration::from_micros(10)),
            ("10\u{b5}s", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("+5s", Duration::from_secs(5)),
            ("-0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_go_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "5",
            "s",
            "1x",
            "1.5.3s",
            "-1s",
            "1h-5m",
            "99999999999999h",
            "ms",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr(" 10.0.0.1/8 "), Ok(net("10.0.0.0/8")));
        assert_eq!(parse_cidr("fd00::1/64"), Ok(net("fd00::/64")));
        assert!(parse_cidr("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.0/+8").is_err());
        assert!(parse_cidr("fd00::/129").is_err());
        assert!(is_loopback_cidr(&net("127.0.0.0/8")));
        assert!(is_loopback_cidr(&net("127.1.0.0/16")));
        assert!(is_loopback_cidr(&net("::1/128")));
        assert!(!is_loopback_cidr(&net("0.0.0.0/0")));
        assert!(!is_loopback_cidr(&net("::/0")));
    }
}
