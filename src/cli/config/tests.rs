//! Flags, files and their resolution.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use super::*;
use crate::model::NodePortAddresses;

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

const HEADER: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

fn err_text(args: &RenderArgs) -> String {
    match resolve_all(args) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn node_ip_takes_several_addresses_of_a_family_the_first_primary() {
    let opts = resolve(&with_host(cli(&[
        "--node-ip",
        "10.0.0.1,192.168.5.1",
        "--node-ip",
        "fd00::5",
    ])))
    .expect("resolve");
    assert_eq!(
        opts.node_ips,
        vec![ip("10.0.0.1"), ip("192.168.5.1"), ip("fd00::5")]
    );
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
    let opts = resolve(&cli(&["--hostname-override", "  Worker-A.Example.COM "])).expect("resolve");
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
    assert_eq!(args.masquerade_all, Some(true));
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
  AllAlpha: true
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
        cfg.feature_gates.and_then(|g| g.get("AllAlpha").copied()),
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
