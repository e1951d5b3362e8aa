//! kube-proxy's command line and config file: kubeadm's ConfigMap and DaemonSet command,
//! the fate of every field, errors naming the field, and one test per honoured field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::*;
use crate::cli::{with_default_subcommand, Cli, Command};

const HEADER: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

fn kubeadm_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/kubeadm/config.conf")
}

/// Parses a command line as the binary does (argv[0] included).
fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(with_default_subcommand(argv.iter().copied()))
}

fn run_args(argv: &[&str]) -> RenderArgs {
    match parse(argv).expect("parses").command {
        Command::Run { flags } | Command::Config { flags } => flags.args,
        other => panic!("not run: {other:?}"),
    }
}

/// Flags after the binary name, with a hostname so resolution does not depend on the
/// machine.
fn flags(extra: &[&str]) -> RenderArgs {
    let mut argv = vec!["kube-nftproxy", "--hostname-override=node-a"];
    argv.extend_from_slice(extra);
    run_args(&argv)
}

struct Temp(PathBuf);

impl Temp {
    fn new(name: &str, body: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "kube-nftproxy-kp-test-{}-{name}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, format!("{HEADER}{body}")).expect("write");
        Temp(path)
    }
    fn resolve(&self, extra: &[&str]) -> Result<Resolved, ConfigError> {
        let mut args = flags(extra);
        args.config = Some(self.0.clone());
        resolve_all(&args)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file_err(name: &str, body: &str) -> String {
    Temp::new(name, body)
        .resolve(&[])
        .expect_err("must fail")
        .to_string()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn kubeadm_configmap_and_daemonset_command_resolve_unchanged() {
    // kubeadm's DaemonSet: `kube-proxy --config=/var/lib/kube-proxy/config.conf
    // --hostname-override=$(NODE_NAME)`, with our binary's name.
    let config = format!("--config={}", kubeadm_config().display());
    let argv = [
        "kube-nftproxy",
        config.as_str(),
        "--hostname-override=node-a",
    ];
    let cli = parse(&argv).expect("kubeadm's command line parses");
    let Command::Run { flags } = &cli.command else {
        panic!("no subcommand must mean run: {:?}", cli.command)
    };
    let r = resolve_all(&flags.args).expect("kubeadm's config.conf resolves");
    assert_eq!(r.options.hostname, "node-a");
    assert_eq!(
        r.options.cluster_cidrs,
        vec!["10.244.0.0/16".parse().unwrap()]
    );
    assert!(r.options.node_ips.is_empty());
    assert_eq!(r.metrics_bind_address, Some(sa("127.0.0.1:10249")));
    assert_eq!(r.healthz_bind_address, Some(sa("0.0.0.0:10256")));
    assert_eq!(r.conntrack, ConntrackSettings::default());
    assert_eq!(r.oom_score_adj, Some(-999));
    assert_eq!(r.logging_format, LogFormat::Text);
    assert_eq!(r.verbosity, 0);
    assert_eq!(
        r.client.kubeconfig,
        Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!((r.client.qps, r.client.burst), (5.0, 10));
    assert_eq!(r.config_sync_period, Duration::from_secs(900));
    assert_eq!(r.detect_local, DetectLocal::default());
    assert_eq!(r.options.masquerade_bit, 14);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // The space form parses to the same.
    let kubeadm = kubeadm_config().display().to_string();
    let spaced = parse(&[
        "kube-nftproxy",
        "--config",
        &kubeadm,
        "--hostname-override",
        "node-a",
    ])
    .expect("parses");
    assert_eq!(
        format!("{:?}", spaced.command),
        format!("{:?}", cli.command)
    );
}

#[test]
fn no_subcommand_equals_run() {
    let line = [
        "--config=/x.yaml",
        "--v=2",
        "--proxy-mode=nftables",
        "--cluster-cidr=10.244.0.0/16",
        "--metrics-bind-address=0.0.0.0:10249",
        "--conntrack-max-per-core=0",
        "--oom-score-adj=-500",
        "--masquerade-all",
        "--iptables-sync-period=30s",
        "--ipvs-strict-arp",
    ];
    let mut implicit = vec!["kube-nftproxy"];
    implicit.extend(line);
    let mut explicit = vec!["kube-nftproxy", "run"];
    explicit.extend(line);
    let a = parse(&implicit).expect("implicit run");
    let b = parse(&explicit).expect("explicit run");
    assert_eq!(format!("{:?}", a.command), format!("{:?}", b.command));
    assert!(matches!(a.command, Command::Run { .. }));
    // No arguments at all is kube-proxy too; help and version stay top-level.
    assert!(matches!(
        parse(&["kube-nftproxy"]).expect("bare").command,
        Command::Run { .. }
    ));
    assert_eq!(
        with_default_subcommand(["kube-nftproxy", "--help"]),
        vec!["kube-nftproxy", "--help"]
    );
    assert_eq!(
        with_default_subcommand(["kube-nftproxy", "render", "x"]),
        vec!["kube-nftproxy", "render", "x"]
    );
}

#[test]
fn verbosity_forms() {
    for form in [
        &["--v=4"][..],
        &["--v", "4"],
        &["-v=4"],
        &["-v", "4"],
        &["-v4"],
    ] {
        let r = resolve_all(&flags(form)).expect("resolve");
        assert_eq!(r.verbosity, 4, "{form:?}");
    }
    assert!(resolve_all(&flags(&["--v=loud"]))
        .unwrap_err()
        .to_string()
        .contains("--v"));
}

#[test]
fn proxy_mode_other_than_nftables_is_an_error() {
    let msg = resolve_all(&flags(&["--proxy-mode=iptables"]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("kube-nftproxy implements nftables mode only; got --proxy-mode=iptables"),
        "{msg}"
    );
    resolve_all(&flags(&["--proxy-mode=nftables"])).expect("nftables is fine");
    resolve_all(&flags(&["--proxy-mode="])).expect("empty is fine");
    let msg = file_err("mode", "mode: ipvs\n");
    assert!(msg.contains("nftables mode"), "{msg}");
}

#[test]
fn unknown_field_is_an_error_naming_field_and_line() {
    let msg = file_err("unknown", "clusterCIDR: 10.0.0.0/8\nfrobnicate: true\n");
    assert!(msg.contains("frobnicate"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
    let msg = file_err("unknown-nested", "conntrack:\n  maxPerCPU: 3\n");
    assert!(msg.contains("maxPerCPU"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
}

#[test]
fn wrong_type_is_an_error_naming_field_and_line() {
    let msg = file_err("type", "oomScoreAdj: very-low\n");
    assert!(msg.contains("oomScoreAdj"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    let msg = file_err("type-gate", "featureGates:\n  NFTablesProxyMode: maybe\n");
    assert!(msg.contains("NFTablesProxyMode"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
}

#[test]
fn unknown_feature_gate_is_an_error_naming_it() {
    let msg = file_err("gate", "featureGates:\n  NoSuchGate: true\n");
    assert!(msg.contains("featureGates.NoSuchGate"), "{msg}");
    assert!(msg.contains("unrecognized feature gate"), "{msg}");
    let msg = resolve_all(&flags(&["--feature-gates=AllAlpha=false,Bogus=true"]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("--feature-gates") && msg.contains("Bogus"),
        "{msg}"
    );
    let msg = resolve_all(&flags(&["--feature-gates=AllAlpha=perhaps"]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("AllAlpha"), "{msg}");
    let r = Temp::new("gates", "featureGates:\n  NFTablesProxyMode: true\n")
        .resolve(&["--feature-gates=AllBeta=false"])
        .expect("known gates");
    assert_eq!(r.feature_gates.get("NFTablesProxyMode"), Some(&true));
    assert_eq!(r.feature_gates.get("AllBeta"), Some(&false));
}

#[test]
fn invalid_durations_are_errors_naming_the_field() {
    for (field, body) in [
        (
            "conntrack.tcpEstablishedTimeout",
            "conntrack:\n  tcpEstablishedTimeout: 5 parsecs\n",
        ),
        (
            "conntrack.tcpCloseWaitTimeout",
            "conntrack:\n  tcpCloseWaitTimeout: 1x\n",
        ),
        ("conntrack.udpTimeout", "conntrack:\n  udpTimeout: soon\n"),
        (
            "conntrack.udpStreamTimeout",
            "conntrack:\n  udpStreamTimeout: 2\n",
        ),
        ("configSyncPeriod", "configSyncPeriod: forever\n"),
        ("nftables.syncPeriod", "nftables:\n  syncPeriod: 1y\n"),
        ("nftables.minSyncPeriod", "nftables:\n  minSyncPeriod: -\n"),
    ] {
        let msg = file_err(field, body);
        assert!(msg.contains(field), "{field}: {msg}");
    }
    let msg = resolve_all(&flags(&["--conntrack-udp-timeout=abc"]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--conntrack-udp-timeout"), "{msg}");
    let msg = resolve_all(&flags(&["--config-sync-period", "abc"]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--config-sync-period"), "{msg}");
}

/// One check per honoured field: changing it in the file changes the resolved value,
/// and so does the flag.
#[test]
fn each_honoured_field_changes_the_resolved_value() {
    let base = Temp::new("base", "").resolve(&[]).expect("base");
    type Check = fn(&Resolved, &Resolved) -> bool;
    let cases: &[(&str, &str, &[&str], Check)] = &[
        (
            "metricsBindAddress",
            "metricsBindAddress: 0.0.0.0:9999\n",
            &["--metrics-bind-address=0.0.0.0:9999"],
            |a, b| a.metrics_bind_address != b.metrics_bind_address,
        ),
        (
            "healthzBindAddress",
            "healthzBindAddress: 127.0.0.1:1234\n",
            &["--healthz-bind-address=127.0.0.1:1234"],
            |a, b| a.healthz_bind_address != b.healthz_bind_address,
        ),
        (
            "bindAddress",
            "bindAddress: 192.0.2.7\n",
            &["--bind-address=192.0.2.7"],
            |a, b| a.options.node_ips != b.options.node_ips,
        ),
        (
            "clusterCIDR",
            "clusterCIDR: 10.9.0.0/16\n",
            &["--cluster-cidr=10.9.0.0/16"],
            |a, b| a.options.cluster_cidrs != b.options.cluster_cidrs,
        ),
        (
            "nodePortAddresses",
            "nodePortAddresses: [10.0.0.0/8]\n",
            &["--nodeport-addresses=10.0.0.0/8"],
            |a, b| a.options.nodeport_addresses != b.options.nodeport_addresses,
        ),
        (
            "nftables.masqueradeAll",
            "nftables:\n  masqueradeAll: true\n",
            &["--masquerade-all"],
            |a, b| a.options.masquerade_all != b.options.masquerade_all,
        ),
        (
            "conntrack.maxPerCore",
            "conntrack:\n  maxPerCore: 0\n",
            &["--conntrack-max-per-core=0"],
            |a, b| a.conntrack.max_per_core != b.conntrack.max_per_core,
        ),
        (
            "conntrack.min",
            "conntrack:\n  min: 5\n",
            &["--conntrack-min", "5"],
            |a, b| a.conntrack.min != b.conntrack.min,
        ),
        (
            "conntrack.tcpEstablishedTimeout",
            "conntrack:\n  tcpEstablishedTimeout: 1h\n",
            &["--conntrack-tcp-timeout-established=1h"],
            |a, b| a.conntrack.tcp_established != b.conntrack.tcp_established,
        ),
        (
            "conntrack.tcpCloseWaitTimeout",
            "conntrack:\n  tcpCloseWaitTimeout: 5m\n",
            &["--conntrack-tcp-timeout-close-wait=5m"],
            |a, b| a.conntrack.tcp_close_wait != b.conntrack.tcp_close_wait,
        ),
        (
            "conntrack.tcpBeLiberal",
            "conntrack:\n  tcpBeLiberal: true\n",
            &["--conntrack-tcp-be-liberal"],
            |a, b| a.conntrack.tcp_be_liberal != b.conntrack.tcp_be_liberal,
        ),
        (
            "conntrack.udpTimeout",
            "conntrack:\n  udpTimeout: 30s\n",
            &["--conntrack-udp-timeout=30s"],
            |a, b| a.conntrack.udp_timeout != b.conntrack.udp_timeout,
        ),
        (
            "conntrack.udpStreamTimeout",
            "conntrack:\n  udpStreamTimeout: 2m\n",
            &["--conntrack-udp-timeout-stream=2m"],
            |a, b| a.conntrack.udp_stream_timeout != b.conntrack.udp_stream_timeout,
        ),
        (
            "oomScoreAdj",
            "oomScoreAdj: -500\n",
            &["--oom-score-adj=-500"],
            |a, b| a.oom_score_adj != b.oom_score_adj,
        ),
        (
            "clientConnection.kubeconfig",
            "clientConnection:\n  kubeconfig: /k\n",
            &["--kubeconfig=/k"],
            |a, b| a.client.kubeconfig != b.client.kubeconfig,
        ),
        (
            "clientConnection.qps",
            "clientConnection:\n  qps: 50\n",
            &["--kube-api-qps=50"],
            |a, b| a.client.qps != b.client.qps,
        ),
        (
            "clientConnection.burst",
            "clientConnection:\n  burst: 100\n",
            &["--kube-api-burst=100"],
            |a, b| a.client.burst != b.client.burst,
        ),
        (
            "configSyncPeriod",
            "configSyncPeriod: 1m\n",
            &["--config-sync-period=1m"],
            |a, b| a.config_sync_period != b.config_sync_period,
        ),
        (
            "logging.format",
            "logging:\n  format: json\n",
            &["--logging-format=json"],
            |a, b| a.logging_format != b.logging_format,
        ),
        (
            "logging.verbosity",
            "logging:\n  verbosity: 5\n",
            &["--v=5"],
            |a, b| a.verbosity != b.verbosity,
        ),
        (
            "featureGates",
            "featureGates:\n  AllAlpha: true\n",
            &["--feature-gates=AllAlpha=true"],
            |a, b| a.feature_gates != b.feature_gates,
        ),
        (
            "detectLocalMode",
            "detectLocalMode: NodeCIDR\n",
            &["--detect-local-mode=NodeCIDR"],
            |a, b| a.detect_local.mode != b.detect_local.mode,
        ),
        (
            "detectLocal.interfaceNamePrefix",
            "detectLocalMode: InterfaceNamePrefix\ndetectLocal:\n  interfaceNamePrefix: veth\n",
            &[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=veth",
            ],
            |a, b| a.detect_local.interface_prefix != b.detect_local.interface_prefix,
        ),
        (
            "detectLocal.bridgeInterface",
            "detectLocalMode: BridgeInterface\ndetectLocal:\n  bridgeInterface: cbr0\n",
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cbr0",
            ],
            |a, b| a.detect_local.bridge_interface != b.detect_local.bridge_interface,
        ),
        (
            "nftables.masqueradeBit",
            "nftables:\n  masqueradeBit: 3\n",
            &[],
            |a, b| a.options.masquerade_bit != b.options.masquerade_bit,
        ),
        (
            "nftables.syncPeriod",
            "nftables:\n  syncPeriod: 2h\n",
            &["--iptables-sync-period=2h"],
            |a, b| a.sync.sync_period != b.sync.sync_period,
        ),
        (
            "nftables.minSyncPeriod",
            "nftables:\n  minSyncPeriod: 5s\n",
            &["--iptables-min-sync-period=5s"],
            |a, b| a.sync.min_sync_period != b.sync.min_sync_period,
        ),
        (
            "hostnameOverride",
            "",
            &["--hostname-override=other"],
            |a, b| a.options.hostname != b.options.hostname,
        ),
    ];
    for (name, body, flag, changed) in cases {
        if !body.is_empty() {
            let r = Temp::new(&name.replace('.', "-"), body)
                .resolve(&[])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(changed(&r, &base), "{name} in the file changed nothing");
            assert!(
                !r.warnings
                    .iter()
                    .any(|w| w.contains(&format!("field {name} "))),
                "{name}: {:?}",
                r.warnings
            );
        }
        if !flag.is_empty() {
            let r = resolve_all(&flags(flag)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(changed(&r, &base), "{name}'s flag changed nothing");
        }
    }
}

#[test]
fn flags_override_the_file() {
    let t = Temp::new(
        "override",
        "metricsBindAddress: 0.0.0.0:1\nnftables:\n  masqueradeAll: true\nconntrack:\n  min: 7\n",
    );
    let r = t
        .resolve(&[
            "--metrics-bind-address=",
            "--masquerade-all=false",
            "--conntrack-min=9",
        ])
        .expect("resolve");
    assert_eq!(r.metrics_bind_address, None, "an empty flag disables");
    assert!(!r.options.masquerade_all);
    assert_eq!(r.conntrack.min, 9);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("kube-proxy would ignore")),
        "{:?}",
        r.warnings
    );
    // An empty value in the file is "unset" (defaulted), as kubeadm writes it.
    let r = Temp::new("empty", "metricsBindAddress: \"\"\n")
        .resolve(&[])
        .expect("resolve");
    assert_eq!(r.metrics_bind_address, Some(sa("127.0.0.1:10249")));
    let r = Temp::new("port0", "healthzBindAddress: 0.0.0.0:0\n")
        .resolve(&[])
        .expect("resolve");
    assert_eq!(r.healthz_bind_address, None, "port 0 disables");
}

#[test]
fn out_of_range_values_name_the_setting() {
    let msg = file_err("oom", "oomScoreAdj: 2000\n");
    assert!(msg.contains("oomScoreAdj"), "{msg}");
    let msg = resolve_all(&flags(&["--oom-score-adj=-1001"]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--oom-score-adj"), "{msg}");
    let msg = file_err("ct", "conntrack:\n  maxPerCore: -1\n");
    assert!(msg.contains("conntrack.maxPerCore"), "{msg}");
    let msg = file_err("dl", "detectLocalMode: Magic\n");
    assert!(msg.contains("detectLocalMode"), "{msg}");
    let msg = file_err("dlp", "detectLocalMode: InterfaceNamePrefix\n");
    assert!(msg.contains("interfaceNamePrefix"), "{msg}");
    let msg = file_err(
        "dlb",
        "detectLocalMode: BridgeInterface\ndetectLocal:\n  bridgeInterface: a-name-longer-than-15\n",
    );
    assert!(
        msg.contains("detectLocalMode") && msg.contains("15 bytes"),
        "{msg}"
    );
    let msg = resolve_all(&flags(&["--kube-api-burst=-1"]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("--kube-api-burst") && msg.contains("non-negative"),
        "{msg}"
    );
    let msg = file_err("burst", "clientConnection:\n  burst: -3\n");
    assert!(msg.contains("clientConnection.burst"), "{msg}");
    let msg = file_err("fmt", "logging:\n  format: xml\n");
    assert!(msg.contains("logging.format"), "{msg}");
    let msg = resolve_all(&flags(&["--healthz-bind-address=nowhere"]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--healthz-bind-address"), "{msg}");
}

#[test]
fn inapplicable_fields_give_one_warning_each() {
    let cfg = parse_config(
        &format!(
            "{HEADER}ipvs:\n  scheduler: rr\n  strictARP: true\niptables:\n  syncPeriod: 0s\n\
             enableProfiling: true\nportRange: 30000-32767\nlogging:\n  flushFrequency: 5s\n"
        ),
        std::path::Path::new("x"),
    )
    .expect("parses");
    let fates = field_fates(&cfg);
    for field in [
        "ipvs.scheduler",
        "ipvs.strictARP",
        "enableProfiling",
        "portRange",
        "logging.flushFrequency",
    ] {
        let n = fates
            .iter()
            .filter(|w| w.contains(&format!("field {field} ")))
            .count();
        assert_eq!(n, 1, "{field}: {fates:?}");
    }
    assert_eq!(fates.len(), 5, "{fates:?}");
    assert!(fates
        .iter()
        .any(|w| w.contains("not applicable in nftables mode")));
    // The kubeadm file sets nothing inapplicable.
    let kubeadm = load_config_file(&kubeadm_config()).expect("kubeadm");
    assert!(field_fates(&kubeadm).is_empty());
}

#[test]
fn inapplicable_flags_are_accepted_with_a_warning() {
    let r = resolve_all(&flags(&[
        "--ipvs-sync-period=30s",
        "--ipvs-scheduler",
        "rr",
        "--ipvs-strict-arp",
        "--profiling=false",
        "--alsologtostderr",
        "--log-flush-frequency=5s",
        "--show-hidden-metrics-for-version=1.34",
    ]))
    .expect("accepted");
    assert_eq!(r.warnings.len(), 7, "{:?}", r.warnings);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("--ipvs-sync-period=30s is not applicable in nftables mode")));
}

#[test]
fn config_output_is_a_config_that_resolves_the_same() {
    let t = Temp::new(
        "roundtrip",
        "clusterCIDR: 10.244.0.0/16,fd00::/56\nconntrack:\n  maxPerCore: 0\n\
         featureGates:\n  AllAlpha: false\nlogging:\n  format: json\n",
    );
    let r = t
        .resolve(&["--v=3", "--oom-score-adj=-10"])
        .expect("resolve");
    let yaml = effective_config_yaml(&r);
    let back = Temp(t.0.with_extension("out.yaml"));
    std::fs::write(&back.0, &yaml).expect("write");
    let again = back.resolve(&[]).expect("the printed config resolves");
    assert_eq!(again.options, r.options);
    assert_eq!(again.conntrack, r.conntrack);
    assert_eq!(again.verbosity, 3);
    assert_eq!(again.oom_score_adj, Some(-10));
    assert_eq!(again.logging_format, LogFormat::Json);
    assert_eq!(again.feature_gates, r.feature_gates);
    assert_eq!(again.metrics_bind_address, r.metrics_bind_address);
    assert_eq!(again.config_sync_period, r.config_sync_period);
    assert!(yaml.starts_with(HEADER), "{yaml}");
}

#[test]
fn go_durations_print_as_go_does() {
    assert_eq!(format_duration_go(Duration::ZERO), "0s");
    assert_eq!(format_duration_go(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(format_duration_go(Duration::from_secs(90)), "1m30s");
    assert_eq!(format_duration_go(Duration::from_millis(500)), "500ms");
    assert_eq!(format_duration_go(Duration::from_millis(1500)), "1.5s");
}

/// `detectLocalMode` and its settings reach the rules: each mode renders the eTP=Local
/// scenario with its own local-traffic match, and none of them is only warned about.
#[test]
fn detect_local_mode_changes_the_rendered_rules() {
    let yaml = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/etp-local/cluster.yaml"),
    )
    .expect("scenario");
    let objects =
        crate::ruleset::render::read_sources([("etp-local", yaml.as_str())], &mut Vec::new())
            .expect("reads");
    let render = |extra: &[&str]| -> String {
        let mut f = vec!["--cluster-cidr=10.244.0.0/16"];
        f.extend_from_slice(extra);
        let r = resolve_all(&flags(&f)).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert!(
            !r.warnings.iter().any(|w| w.contains("detectLocal")),
            "{:?}",
            r.warnings
        );
        crate::nft::text::script(&crate::ruleset::render::ruleset(&objects, &r.options).0)
    };
    let cluster = render(&[]);
    let node = render(&["--detect-local-mode=NodeCIDR"]);
    let prefix = render(&[
        "--detect-local-mode=InterfaceNamePrefix",
        "--pod-interface-name-prefix=veth",
    ]);
    let bridge = render(&[
        "--detect-local-mode=BridgeInterface",
        "--pod-bridge-interface=cni0",
    ]);
    let has = |text: &str, what: &str| text.contains(what);
    assert!(
        has(&cluster, "ip saddr != 10.244.0.0/16 meta mark set"),
        "{cluster}"
    );
    assert!(
        has(&cluster, "ip saddr 10.244.0.0/16 goto endpoints"),
        "{cluster}"
    );
    // node-a's spec.podCIDRs is 10.244.0.0/24.
    assert!(
        has(&node, "ip saddr != 10.244.0.0/24 meta mark set"),
        "{node}"
    );
    assert!(
        has(&node, "ip saddr 10.244.0.0/24 goto endpoints"),
        "{node}"
    );
    assert!(
        has(&prefix, "iifname != \"veth*\" meta mark set"),
        "{prefix}"
    );
    assert!(has(&prefix, "iifname \"veth*\" goto endpoints"), "{prefix}");
    assert!(
        has(&bridge, "iifname != \"cni0\" meta mark set"),
        "{bridge}"
    );
    assert!(has(&bridge, "iifname \"cni0\" goto endpoints"), "{bridge}");
    for t in [&prefix, &bridge] {
        assert!(!t.contains("ip saddr 10.244.0.0/16"), "{t}");
    }
    // The prefix flag alone does nothing without the mode, as upstream.
    assert_eq!(render(&["--pod-interface-name-prefix=veth"]), cluster);
}
