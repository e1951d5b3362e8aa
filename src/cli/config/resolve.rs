//! Flags over the file over the defaults: every value parsed and validated, every error
//! naming the flag or the file field and the bad value.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::*;
use crate::model::options::{LocalDetect, NodePortAddresses, Options};

/// Flags merged over the `--config` file, validated. See [`resolve_all`].
pub fn resolve(args: &RenderArgs) -> Result<Options, ConfigError> {
    resolve_all(args).map(|r| r.options)
}

/// The sync timing from the `--config` file (defaults 1h / 1s). Validates everything
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
/// - masquerade-all: `--masquerade-all[=BOOL]`, else `nftables.masqueradeAll`.
/// - everything else kube-proxy has: see [`resolve_kube`] (flags over file over defaults).
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
        let bind = match &args.kube.bind_address {
            Some(flag) => Some((flag.as_str(), "--bind-address".to_string())),
            None => cfg
                .bind_address
                .as_deref()
                .map(|a| (a, field("bindAddress"))),
        };
        match bind.map(|(a, s)| (a.trim(), s)) {
            Some((addr, setting)) if !addr.is_empty() => {
                let ip = parse_ip_sloppy(addr)
                    .ok_or_else(|| invalid(setting, addr, "not an IP address"))?;
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

    let kube = resolve_kube(args, cfg, path)?;
    let warnings = kube.warnings;
    let detect_local = match kube.detect_local.mode {
        DetectLocalMode::ClusterCidr => LocalDetect::ClusterCidr,
        DetectLocalMode::NodeCidr => LocalDetect::NodeCidr,
        DetectLocalMode::InterfaceNamePrefix => {
            LocalDetect::InterfaceNamePrefix(kube.detect_local.interface_prefix.clone())
        }
        DetectLocalMode::BridgeInterface => {
            LocalDetect::BridgeInterface(kube.detect_local.bridge_interface.clone())
        }
    };

    let mut sync = resolve_sync_settings(&nft, path)?;
    // Upstream applies --iptables-(min-)sync-period in every mode but ipvs.
    let flag_period = |flag: &Option<String>, name: &str| -> Result<_, ConfigError> {
        flag.as_deref()
            .map(|v| parse_go_duration(v).map_err(|r| invalid(name, v, &r)))
            .transpose()
    };
    if let Some(d) = flag_period(&args.kube.iptables_sync_period, "--iptables-sync-period")? {
        if d.is_zero() {
            return Err(invalid(
                "--iptables-sync-period",
                "0",
                "must be greater than 0",
            ));
        }
        sync.sync_period = d;
    }
    if let Some(d) = flag_period(
        &args.kube.iptables_min_sync_period,
        "--iptables-min-sync-period",
    )? {
        sync.min_sync_period = d;
    }
    if sync.min_sync_period > sync.sync_period {
        return Err(invalid(
            "--iptables-min-sync-period",
            &format_duration(sync.min_sync_period),
            &format!(
                "must not be longer than the sync period ({})",
                format_duration(sync.sync_period)
            ),
        ));
    }

    let options = Options {
        hostname,
        node_ips,
        host_addresses: Vec::new(),
        cluster_cidrs,
        nodeport_addresses,
        service_cidrs,
        masquerade_all: args.masquerade_all.or(nft.masquerade_all).unwrap_or(false),
        masquerade_bit,
        detect_local,
    };
    Ok(Resolved {
        options,
        sync,
        file,
        metrics_bind_address: kube.metrics_bind_address,
        healthz_bind_address: kube.healthz_bind_address,
        conntrack: kube.conntrack,
        oom_score_adj: kube.oom_score_adj,
        logging_format: kube.logging_format,
        verbosity: kube.verbosity,
        client: kube.client,
        config_sync_period: kube.config_sync_period,
        detect_local: kube.detect_local,
        feature_gates: kube.feature_gates,
        warnings,
    })
}

pub(super) fn resolve_sync_settings(
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

pub(super) fn invalid(setting: impl Into<String>, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        setting: setting.into(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// kube-proxy's GetHostname: the override if non-empty, else the machine's hostname;
/// trimmed, lowercased, and not empty.
pub(super) fn resolve_hostname(override_name: Option<&str>) -> Result<String, ConfigError> {
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
pub(super) fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    crate::model::parse_ip_sloppy(s).map(|(ip, _)| ip)
}

/// Parses `ADDRESS/PREFIX` (surrounding spaces tolerated) and clears host bits.
pub(super) fn parse_cidr(s: &str) -> Result<IpNet, String> {
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
pub(super) fn parse_cidr_list(value: &str, setting: &str) -> Result<Vec<IpNet>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_cidr(s).map_err(|reason| invalid(setting, s, &reason)))
        .collect()
}

pub(super) fn dedup(list: Vec<IpNet>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::with_capacity(list.len());
    for net in list {
        if !out.contains(&net) {
            out.push(net);
        }
    }
    out
}

/// `--cluster-cidr` / `clusterCIDR`: at most one CIDR per IP family.
pub(super) fn parse_cluster_cidrs(value: &str, setting: &str) -> Result<Vec<IpNet>, ConfigError> {
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

/// `--node-ip`: addresses (entries may themselves be comma-separated), not 0.0.0.0 / ::.
/// The first of each family is the node's primary IP; all of them stand in for the host's
/// addresses when `--nodeport-addresses` CIDRs are matched offline (`render`).
pub(super) fn parse_node_ips(values: &[String], setting: &str) -> Result<Vec<IpAddr>, ConfigError> {
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
        ips.push(ip);
    }
    Ok(ips)
}

/// Whether every address in `net` is a loopback address.
pub(super) fn is_loopback_cidr(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() >= 8 && n.network().is_loopback(),
        IpNet::V6(n) => n.prefix_len() == 128 && n.network() == Ipv6Addr::LOCALHOST,
    }
}

/// `--nodeport-addresses` / `nodePortAddresses`: `primary` alone, or CIDRs (plus the
/// upstream keywords `all` = 0.0.0.0/0,::/0 and `localhost`, which is skipped).
pub(super) fn parse_nodeport_addresses<'a>(
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
pub(super) fn format_duration(d: Duration) -> String {
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
