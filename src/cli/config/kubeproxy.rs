//! kube-proxy's settings beyond the render options: bind addresses, conntrack, the API
//! client, logging, feature gates, local-traffic detection; the fate of every config
//! field; and the effective configuration as a KubeProxyConfiguration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// `healthzBindAddress` when unset.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
/// `metricsBindAddress` when unset.
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";
/// `oomScoreAdj` when unset.
pub const DEFAULT_OOM_SCORE_ADJ: i32 = -999;
/// `configSyncPeriod` when unset or zero.
pub const DEFAULT_CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(15 * 60);
/// `clientConnection.qps` when unset or zero.
pub const DEFAULT_QPS: f32 = 5.0;
/// `clientConnection.burst` when unset or zero.
pub const DEFAULT_BURST: i32 = 10;
/// `clientConnection.contentType` when unset or empty.
pub const DEFAULT_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The conntrack sysctls kube-proxy sets (`conntrack.*`), with its defaults; the agent
/// applies them (`agent::node`).
pub use crate::agent::node::ConntrackLimits as ConntrackSettings;

/// How the API client connects (`clientConnection`, `--kubeconfig`, `--master`,
/// `--kube-api-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// Kubeconfig file; `None`: in-cluster, then $KUBECONFIG, then ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: the API server URL, overriding the kubeconfig's.
    pub master: Option<String>,
    pub qps: f32,
    pub burst: i32,
    /// Recorded only: the client always speaks JSON.
    pub content_type: String,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            kubeconfig: None,
            master: None,
            qps: DEFAULT_QPS,
            burst: DEFAULT_BURST,
            content_type: DEFAULT_CONTENT_TYPE.to_string(),
        }
    }
}

/// `detectLocalMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectLocalMode {
    /// Pod traffic is traffic from `clusterCIDR` (the default).
    #[default]
    ClusterCidr,
    /// Pod traffic is traffic from the Node's `spec.podCIDRs`.
    NodeCidr,
    /// Pod traffic arrives on an interface whose name starts with the prefix.
    InterfaceNamePrefix,
    /// Pod traffic arrives on the bridge interface.
    BridgeInterface,
}

impl DetectLocalMode {
    /// Upstream's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectLocalMode::ClusterCidr => "ClusterCIDR",
            DetectLocalMode::NodeCidr => "NodeCIDR",
            DetectLocalMode::InterfaceNamePrefix => "InterfaceNamePrefix",
            DetectLocalMode::BridgeInterface => "BridgeInterface",
        }
    }
}

/// `detectLocalMode` and `detectLocal.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetectLocal {
    pub mode: DetectLocalMode,
    /// `detectLocal.interfaceNamePrefix` / `--pod-interface-name-prefix`.
    pub interface_prefix: String,
    /// `detectLocal.bridgeInterface` / `--pod-bridge-interface`.
    pub bridge_interface: String,
}

/// `logging.format` / `--logging-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The settings resolved here, folded into [`Resolved`].
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSettings {
    pub metrics_bind_address: Option<SocketAddr>,
    pub healthz_bind_address: Option<SocketAddr>,
    pub conntrack: ConntrackSettings,
    pub oom_score_adj: Option<i32>,
    pub logging_format: LogFormat,
    pub verbosity: u8,
    pub client: ClientSettings,
    pub config_sync_period: Duration,
    pub detect_local: DetectLocal,
    pub feature_gates: BTreeMap<String, bool>,
    pub warnings: Vec<String>,
}

/// Feature gates known to Kubernetes, sorted (kube-proxy registers every gate of
/// `pkg/features`, component-base and client-go, so any of them is accepted as upstream
/// does; none changes kube-nftproxy's behaviour). Taken from upstream's
/// `pkg/features/kube_features.go` (the unversioned list) plus the proxy, logging,
/// client-go and commonly set versioned gates up to 1.35. An unknown gate is an error,
/// as upstream.
pub const KNOWN_FEATURE_GATES: &[&str] = &[
    "APIResponseCompression",
    "APIServerIdentity",
    "APIServerTracing",
    "AllAlpha",
    "AllBeta",
    "AllowDNSOnlyNodeCSR",
    "AllowInsecureKubeletCertificateSigningRequests",
    "AllowOverwriteTerminationGracePeriodSeconds",
    "AnyVolumeDataSource",
    "AppArmor",
    "AppArmorFields",
    "AuthorizeNodeWithSelectors",
    "CPUManager",
    "CPUManagerPolicyAlphaOptions",
    "CPUManagerPolicyBetaOptions",
    "CPUManagerPolicyOptions",
    "CSIMigrationPortworx",
    "CSIVolumeHealth",
    "ClientsAllowCBOR",
    "ClientsPreferCBOR",
    "ClusterTrustBundle",
    "ClusterTrustBundleProjection",
    "ComponentFlagz",
    "ComponentSLIs",
    "ComponentStatusz",
    "ConsistentListFromCache",
    "ContainerCheckpoint",
    "ContextualLogging",
    "CoordinatedLeaderElection",
    "CronJobsScheduledAnnotation",
    "CrossNamespaceVolumeDataSource",
    "CustomCPUCFSQuotaPeriod",
    "DRAAdminAccess",
    "DRAPrioritizedList",
    "DRAResourceClaimDeviceStatus",
    "DevicePluginCDIDevices",
    "DisableAllocatorDualWrite",
    "DisableCloudProviders",
    "DisableKubeletCloudCredentialProviders",
    "DisableNodeKubeProxyVersion",
    "DynamicResourceAllocation",
    "ElasticIndexedJob",
    "EventedPLEG",
    "ExecProbeTimeout",
    "GracefulNodeShutdown",
    "GracefulNodeShutdownBasedOnPodPriority",
    "HPAContainerMetrics",
    "HPAScaleToZero",
    "HonorPVReclaimPolicy",
    "IPTablesOwnershipCleanup",
    "ImageMaximumGCAge",
    "ImageVolume",
    "InOrderInformers",
    "InPlacePodVerticalScaling",
    "InTreePluginPortworxUnregister",
    "InformerResourceVersion",
    "JobBackoffLimitPerIndex",
    "JobManagedBy",
    "JobPodFailurePolicy",
    "JobPodReplacementPolicy",
    "JobSuccessPolicy",
    "KubeProxyDrainingTerminatingNodes",
    "KubeletCgroupDriverFromCRI",
    "KubeletFineGrainedAuthz",
    "KubeletInUserNamespace",
    "KubeletPodResourcesDynamicResources",
    "KubeletPodResourcesGet",
    "KubeletRegistrationGetOnExistsOnly",
    "KubeletSeparateDiskGC",
    "KubeletTracing",
    "LoadBalancerIPMode",
    "LocalStorageCapacityIsolationFSQuotaMonitoring",
    "LogarithmicScaleDown",
    "LoggingAlphaOptions",
    "LoggingBetaOptions",
    "MatchLabelKeysInPodAffinity",
    "MatchLabelKeysInPodTopologySpread",
    "MaxUnavailableStatefulSet",
    "MemoryManager",
    "MemoryQoS",
    "MinimizeIPTablesRestore",
    "MultiCIDRServiceAllocator",
    "MutatingAdmissionPolicy",
    "NFTablesProxyMode",
    "NodeInclusionPolicyInPodTopologySpread",
    "NodeLogQuery",
    "NodeSwap",
    "OpenAPIEnums",
    "PDBUnhealthyPodEvictionPolicy",
    "PersistentVolumeLastPhaseTransitionTime",
    "PodAndContainerStatsFromCRI",
    "PodDeletionCost",
    "PodDisruptionConditions",
    "PodHostIPs",
    "PodIndexLabel",
    "PodLevelResources",
    "PodLifecycleSleepAction",
    "PodReadyToStartContainersCondition",
    "PodSchedulingReadiness",
    "PortForwardWebsockets",
    "PreferSameTrafficDistribution",
    "ProcMountType",
    "ProxyTerminatingEndpoints",
    "QOSReserved",
    "RecoverVolumeExpansionFailure",
    "RecursiveReadOnlyMounts",
    "RelaxedDNSSearchValidation",
    "RelaxedEnvironmentVariableValidation",
    "ReloadKubeletServerCertificateFile",
    "ResourceHealthStatus",
    "RotateKubeletServerCertificate",
    "RuntimeClassInImageCriApi",
    "SELinuxChangePolicy",
    "SELinuxMount",
    "SELinuxMountReadWriteOncePod",
    "SchedulerQueueingHints",
    "SeparateTaintEvictionController",
    "ServiceAccountTokenJTI",
    "ServiceAccountTokenNodeBinding",
    "ServiceAccountTokenNodeBindingValidation",
    "ServiceAccountTokenPodNodeInfo",
    "ServiceInternalTrafficPolicy",
    "ServiceTrafficDistribution",
    "SidecarContainers",
    "SizeMemoryBackedVolumes",
    "StatefulSetAutoDeletePVC",
    "StatefulSetStartOrdinal",
    "StorageNamespaceIndex",
    "StorageVersionAPI",
    "StorageVersionMigrator",
    "StreamingCollectionEncodingToJSON",
    "StreamingCollectionEncodingToProtobuf",
    "StructuredAuthenticationConfiguration",
    "StructuredAuthorizationConfiguration",
    "SupplementalGroupsPolicy",
    "SystemdWatchdog",
    "TopologyAwareHints",
    "TopologyManagerPolicyAlphaOptions",
    "TopologyManagerPolicyBetaOptions",
    "TopologyManagerPolicyOptions",
    "TranslateStreamCloseWebsocketRequests",
    "UnknownVersionInteroperabilityProxy",
    "UserNamespacesPodSecurityStandards",
    "UserNamespacesSupport",
    "VolumeAttributesClass",
    "VolumeCapacityPriority",
    "WatchListClient",
    "WinDSR",
    "WinOverlay",
    "WindowsHostNetwork",
];

/// Why a config field is not honoured; `None` for the fields kube-nftproxy honours.
fn inapplicable_reason(path: &str) -> Option<&'static str> {
    const HONOURED: &[&str] = &[
        "apiVersion",
        "kind",
        "featureGates",
        "clientConnection.kubeconfig",
        "clientConnection.qps",
        "clientConnection.burst",
        "logging.format",
        "logging.verbosity",
        "hostnameOverride",
        "bindAddress",
        "healthzBindAddress",
        "metricsBindAddress",
        "mode",
        "nftables",
        "detectLocalMode",
        "detectLocal",
        "clusterCIDR",
        "nodePortAddresses",
        "oomScoreAdj",
        "conntrack",
        "configSyncPeriod",
    ];
    let honoured = HONOURED
        .iter()
        .any(|h| path == *h || path.starts_with(&format!("{h}.")));
    if honoured {
        return None;
    }
    let top = path.split('.').next().unwrap_or(path);
    Some(match top {
        "iptables" | "ipvs" | "winkernel" | "windowsRunAsService" => {
            "not applicable in nftables mode"
        }
        "clientConnection" => "not applicable: the API client always speaks JSON",
        "logging" => "not applicable: only logging.format and logging.verbosity are honoured",
        "enableProfiling" => "not applicable: kube-nftproxy serves no pprof endpoints",
        "showHiddenMetricsForVersion" => "not applicable: kube-nftproxy has no hidden metrics",
        "bindAddressHardFail" => "not applicable: kube-nftproxy binds no proxy port",
        "portRange" | "udpIdleTimeout" => "not applicable: removed upstream (userspace mode)",
        _ => "not applicable",
    })
}

/// Whether a config value counts as unset (what v1alpha1 defaulting would fill in):
/// null, false, 0, "", "0", a zero duration, or a list/map of such.
fn is_zero(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            s.is_empty() || parse_go_duration(s).map(|d| d.is_zero()).unwrap_or(false)
        }
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    if is_zero(v) {
        return;
    }
    let Some(reason) = inapplicable_reason(prefix) else {
        return;
    };
    match v {
        // Report the leaves, so that each warning names one field.
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                walk(&format!("{prefix}.{k}"), child, out);
            }
        }
        _ => out.push(format!("config field {prefix} is {reason}; ignored")),
    }
}

/// The fate of every field set in `cfg`: one warning per field that is set (to a
/// non-zero value) and not honoured by kube-nftproxy. Honoured fields give none.
/// Pure; sorted by field path.
pub fn field_fates(cfg: &KubeProxyConfiguration) -> Vec<String> {
    let value = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    let mut out = Vec::new();
    if let serde_json::Value::Object(map) = &value {
        for (k, child) in map {
            walk(k, child, &mut out);
        }
    }
    out
}

/// Parses `--feature-gates` (`A=true,B=false`).
pub fn parse_feature_gates_flag(value: &str) -> Result<BTreeMap<String, bool>, ConfigError> {
    let mut out = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, v)) = entry.split_once('=') else {
            return Err(invalid(
                "--feature-gates",
                entry,
                "missing bool value (expected Name=true or Name=false)",
            ));
        };
        let b = parse_go_bool(v.trim()).ok_or_else(|| {
            invalid(
                "--feature-gates",
                entry,
                &format!("invalid value of {}: {v:?} is not a bool", name.trim()),
            )
        })?;
        out.insert(name.trim().to_string(), b);
    }
    Ok(out)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A bind address (`IP:PORT`); empty or port 0 disables the server.
fn parse_bind_address(value: &str, setting: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let (host, port) = v.rsplit_once(':').ok_or_else(|| {
        invalid(
            setting,
            v,
            "expected IP:PORT (e.g. 0.0.0.0:10256, [::]:10256)",
        )
    })?;
    if port.is_empty() {
        return Ok(None);
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = parse_ip_sloppy(host)
        .ok_or_else(|| invalid(setting, v, &format!("{host:?} is not an IP address")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(setting, v, &format!("{port:?} is not a port number")))?;
    Ok((port != 0).then_some(SocketAddr::new(ip, port)))
}

/// Resolves the kube-proxy settings: flags over the file over the defaults.
pub(super) fn resolve_kube(
    args: &RenderArgs,
    cfg: &KubeProxyConfiguration,
    path: &std::path::Path,
) -> Result<KubeSettings, ConfigError> {
    let f = &args.kube;
    let field = |name: &str| format!("config file {}: {name}", path.display());
    let mut warnings = field_fates(cfg);

    // --proxy-mode (the file's mode was checked when it was read).
    if let Some(mode) = f.proxy_mode.as_deref() {
        if !mode.is_empty() && mode != "nftables" {
            return Err(invalid(
                "--proxy-mode",
                mode,
                &format!(
                    "kube-nftproxy implements nftables mode only; got --proxy-mode={mode} \
                     (use --proxy-mode=nftables or leave it empty)"
                ),
            ));
        }
    }

    // Bind addresses: a flag (even empty, which disables) wins; an empty file value is
    // "unset" and defaulted, as v1alpha1 defaulting does.
    let bind = |flag: &Option<String>, file: &Option<String>, name: &str, default: &str| match (
        flag,
        file.as_deref().map(str::trim).filter(|s| !s.is_empty()),
    ) {
        (Some(v), _) => parse_bind_address(v, &format!("--{}", kebab(name))),
        (None, Some(v)) => parse_bind_address(v, &field(name)),
        (None, None) => parse_bind_address(default, name),
    };
    let metrics_bind_address = bind(
        &f.metrics_bind_address,
        &cfg.metrics_bind_address,
        "metricsBindAddress",
        DEFAULT_METRICS_BIND_ADDRESS,
    )?;
    let healthz_bind_address = bind(
        &f.healthz_bind_address,
        &cfg.healthz_bind_address,
        "healthzBindAddress",
        DEFAULT_HEALTHZ_BIND_ADDRESS,
    )?;

    // Conntrack.
    let ct = cfg.conntrack.clone().unwrap_or_default();
    let def = ConntrackSettings::default();
    let dur = |flag: &Option<String>, file: &Option<String>, flag_name: &str, name: &str, d| {
        let (value, setting) = match (flag, file) {
            (Some(v), _) => (v, format!("--{flag_name}")),
            (None, Some(v)) => (v, field(name)),
            (None, None) => return Ok(d),
        };
        parse_go_duration(value).map_err(|reason| invalid(setting, value, &reason))
    };
    let count = |flag: Option<i32>, file: Option<i64>, flag_name: &str, name: &str, d: i32| {
        let (v, setting) = match (flag, file) {
            (Some(v), _) => (i64::from(v), format!("--{flag_name}")),
            (None, Some(v)) => (v, field(name)),
            (None, None) => return Ok(d),
        };
        i32::try_from(v)
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| invalid(setting, &v.to_string(), "must be between 0 and 2147483647"))
    };
    let conntrack = ConntrackSettings {
        max_per_core: count(
            f.conntrack_max_per_core,
            ct.max_per_core,
            "conntrack-max-per-core",
            "conntrack.maxPerCore",
            def.max_per_core,
        )?,
        min: count(
            f.conntrack_min,
            ct.min,
            "conntrack-min",
            "conntrack.min",
            def.min,
        )?,
        tcp_established: dur(
            &f.conntrack_tcp_timeout_established,
            &ct.tcp_established_timeout,
            "conntrack-tcp-timeout-established",
            "conntrack.tcpEstablishedTimeout",
            def.tcp_established,
        )?,
        tcp_close_wait: dur(
            &f.conntrack_tcp_timeout_close_wait,
            &ct.tcp_close_wait_timeout,
            "conntrack-tcp-timeout-close-wait",
            "conntrack.tcpCloseWaitTimeout",
            def.tcp_close_wait,
        )?,
        tcp_be_liberal: f
            .conntrack_tcp_be_liberal
            .or(ct.tcp_be_liberal)
            .unwrap_or(def.tcp_be_liberal),
        udp_timeout: dur(
            &f.conntrack_udp_timeout,
            &ct.udp_timeout,
            "conntrack-udp-timeout",
            "conntrack.udpTimeout",
            def.udp_timeout,
        )?,
        udp_stream_timeout: dur(
            &f.conntrack_udp_timeout_stream,
            &ct.udp_stream_timeout,
            "conntrack-udp-timeout-stream",
            "conntrack.udpStreamTimeout",
            def.udp_stream_timeout,
        )?,
    };

    // oomScoreAdj.
    let oom_score_adj = match (f.oom_score_adj, cfg.oom_score_adj) {
        (Some(v), _) => Some((v, "--oom-score-adj".to_string())),
        (None, Some(v)) => Some((v, field("oomScoreAdj"))),
        (None, None) => None,
    };
    let oom_score_adj = match oom_score_adj {
        Some((v, setting)) if !(-1000..=1000).contains(&v) => {
            return Err(invalid(
                setting,
                &v.to_string(),
                "must be within the range [-1000, 1000]",
            ))
        }
        Some((v, _)) => v,
        None => DEFAULT_OOM_SCORE_ADJ,
    };

    // Logging.
    let logging = cfg.logging.clone().unwrap_or(serde_json::Value::Null);
    let file_format = logging.get("format").and_then(|v| v.as_str());
    let logging_format = match (f.logging_format.as_deref(), file_format) {
        (Some(v), _) => parse_log_format(v, "--logging-format")?,
        (None, Some(v)) => parse_log_format(v, &field("logging.format"))?,
        (None, None) => LogFormat::Text,
    };
    let verbosity = match (f.v.as_deref(), logging.get("verbosity")) {
        (Some(v), _) => v
            .trim()
            .parse::<u8>()
            .map_err(|_| invalid("--v", v, "expected a number between 0 and 255"))?,
        (None, Some(v)) if !v.is_null() => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| {
                invalid(
                    field("logging.verbosity"),
                    &v.to_string(),
                    "expected a number between 0 and 255",
                )
            })?,
        _ => 0,
    };

    // API client.
    let cc = cfg.client_connection.clone().unwrap_or_default();
    let kubeconfig = f.kubeconfig.clone().or_else(|| {
        cc.kubeconfig
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(PathBuf::from)
    });
    let qps = match (f.kube_api_qps, cc.qps) {
        (Some(v), _) => v,
        (None, Some(v)) => v as f32,
        (None, None) => 0.0,
    };
    let burst = match (f.kube_api_burst, cc.burst) {
        (Some(v), _) => v,
        (None, Some(v)) => i32::try_from(v).map_err(|_| {
            invalid(
                field("clientConnection.burst"),
                &v.to_string(),
                "out of range",
            )
        })?,
        (None, None) => 0,
    };
    if burst < 0 {
        // As upstream's ValidateClientConnectionConfiguration.
        let setting = match f.kube_api_burst {
            Some(_) => "--kube-api-burst".to_string(),
            None => field("clientConnection.burst"),
        };
        return Err(invalid(setting, &burst.to_string(), "must be non-negative"));
    }
    if let Some(ct) = f.kube_api_content_type.as_deref().filter(|s| !s.is_empty()) {
        warnings.push(format!(
            "flag --kube-api-content-type={ct} is not applicable: the API client always speaks \
             JSON; ignored"
        ));
    }
    let content_type = f
        .kube_api_content_type
        .clone()
        .or(cc.content_type.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string());
    let client = ClientSettings {
        kubeconfig,
        master: f.master.clone().filter(|m| !m.is_empty()),
        qps: if qps == 0.0 { DEFAULT_QPS } else { qps },
        burst: if burst == 0 { DEFAULT_BURST } else { burst },
        content_type,
    };

    // configSyncPeriod.
    let config_sync_period = match (&f.config_sync_period, &cfg.config_sync_period) {
        (Some(v), _) => parse_go_duration(v).map_err(|r| invalid("--config-sync-period", v, &r))?,
        (None, Some(v)) => {
            parse_go_duration(v).map_err(|r| invalid(field("configSyncPeriod"), v, &r))?
        }
        (None, None) => Duration::ZERO,
    };
    let config_sync_period = if config_sync_period.is_zero() {
        DEFAULT_CONFIG_SYNC_PERIOD
    } else {
        config_sync_period
    };

    // Local-traffic detection.
    let dl = cfg.detect_local.clone().unwrap_or_default();
    let (mode_text, mode_setting) = match (&f.detect_local_mode, &cfg.detect_local_mode) {
        (Some(v), _) => (v.clone(), "--detect-local-mode".to_string()),
        (None, Some(v)) => (v.clone(), field("detectLocalMode")),
        (None, None) => (String::new(), String::new()),
    };
    let mode = match mode_text.as_str() {
        "" | "ClusterCIDR" => DetectLocalMode::ClusterCidr,
        "NodeCIDR" => DetectLocalMode::NodeCidr,
        "InterfaceNamePrefix" => DetectLocalMode::InterfaceNamePrefix,
        "BridgeInterface" => DetectLocalMode::BridgeInterface,
        other => {
            return Err(invalid(
                mode_setting,
                other,
                "expected ClusterCIDR, NodeCIDR, InterfaceNamePrefix or BridgeInterface",
            ))
        }
    };
    let detect_local = DetectLocal {
        mode,
        interface_prefix: f
            .pod_interface_name_prefix
            .clone()
            .or(dl.interface_name_prefix)
            .unwrap_or_default(),
        bridge_interface: f
            .pod_bridge_interface
            .clone()
            .or(dl.bridge_interface)
            .unwrap_or_default(),
    };
    match mode {
        DetectLocalMode::InterfaceNamePrefix if detect_local.interface_prefix.is_empty() => {
            return Err(invalid(
                mode_setting,
                &mode_text,
                "requires detectLocal.interfaceNamePrefix (--pod-interface-name-prefix)",
            ))
        }
        DetectLocalMode::BridgeInterface if detect_local.bridge_interface.is_empty() => {
            return Err(invalid(
                mode_setting,
                &mode_text,
                "requires detectLocal.bridgeInterface (--pod-bridge-interface)",
            ))
        }
        _ => {}
    }
    // The rules compare the name in the kernel's IFNAMSIZ bytes (15 and a NUL), and nft's
    // text form cannot hold a quote; a longer name would match nothing.
    let bad_name =
        |n: &str| n.len() > 15 || n.contains(['"', '*', '/']) || n.contains(char::is_whitespace);
    let name_in_use = match mode {
        DetectLocalMode::InterfaceNamePrefix => Some(&detect_local.interface_prefix),
        DetectLocalMode::BridgeInterface => Some(&detect_local.bridge_interface),
        _ => None,
    };
    if let Some(n) = name_in_use.filter(|n| bad_name(n)) {
        return Err(invalid(
            mode_setting,
            &mode_text,
            &format!("interface name {n:?} is not a valid Linux interface name (at most 15 bytes, no quote, '*', '/' or space)"),
        ));
    }

    // Feature gates: the file's, then the flag's over them.
    let mut feature_gates = cfg.feature_gates.clone().unwrap_or_default();
    let from_file: Vec<String> = feature_gates.keys().cloned().collect();
    if let Some(flag) = &f.feature_gates {
        feature_gates.extend(parse_feature_gates_flag(flag)?);
    }
    for name in feature_gates.keys() {
        if !KNOWN_FEATURE_GATES.contains(&name.as_str()) {
            let setting = if from_file.contains(name) && f.feature_gates.is_none() {
                field(&format!("featureGates.{name}"))
            } else {
                "--feature-gates".to_string()
            };
            return Err(invalid(setting, name, "unrecognized feature gate"));
        }
    }

    // Flags kube-proxy has and kube-nftproxy ignores.
    for (name, value) in f
        .inapplicable
        .given()
        .into_iter()
        .chain(f.inapplicable_bools.given())
    {
        let why = if name.starts_with("iptables-") || name.starts_with("ipvs-") {
            "not applicable in nftables mode"
        } else {
            "not applicable to kube-nftproxy"
        };
        warnings.push(format!("flag --{name}={value} is {why}; ignored"));
    }
    if let Some(v) = f.bind_address_hard_fail {
        warnings.push(format!(
            "flag --bind-address-hard-fail={v} is not applicable: kube-nftproxy binds no proxy \
             port; ignored"
        ));
    }
    if args.config.is_some() {
        let ignored_upstream = given_flags_upstream_ignores(args);
        if !ignored_upstream.is_empty() {
            warnings.push(format!(
                "flags {} override the --config file here; kube-proxy would ignore them when \
                 --config is given",
                ignored_upstream.join(", ")
            ));
        }
    }

    Ok(KubeSettings {
        metrics_bind_address,
        healthz_bind_address,
        conntrack,
        oom_score_adj: Some(oom_score_adj),
        logging_format,
        verbosity,
        client,
        config_sync_period,
        detect_local,
        feature_gates,
        warnings,
    })
}

/// The flags given with `--config` that upstream kube-proxy would ignore (it replaces its
/// flag-built configuration with the file, keeping only the logging flags, then applies
/// `--hostname-override`).
fn given_flags_upstream_ignores(args: &RenderArgs) -> Vec<&'static str> {
    let f = &args.kube;
    let mut out = Vec::new();
    let mut check = |given: bool, name: &'static str| {
        if given {
            out.push(name);
        }
    };
    check(args.cluster_cidr.is_some(), "--cluster-cidr");
    check(args.nodeport_addresses.is_some(), "--nodeport-addresses");
    check(args.masquerade_all.is_some(), "--masquerade-all");
    check(f.bind_address.is_some(), "--bind-address");
    check(f.healthz_bind_address.is_some(), "--healthz-bind-address");
    check(f.metrics_bind_address.is_some(), "--metrics-bind-address");
    check(f.feature_gates.is_some(), "--feature-gates");
    check(f.detect_local_mode.is_some(), "--detect-local-mode");
    check(
        f.pod_interface_name_prefix.is_some(),
        "--pod-interface-name-prefix",
    );
    check(f.pod_bridge_interface.is_some(), "--pod-bridge-interface");
    check(
        f.conntrack_max_per_core.is_some(),
        "--conntrack-max-per-core",
    );
    check(f.conntrack_min.is_some(), "--conntrack-min");
    check(
        f.conntrack_tcp_timeout_established.is_some(),
        "--conntrack-tcp-timeout-established",
    );
    check(
        f.conntrack_tcp_timeout_close_wait.is_some(),
        "--conntrack-tcp-timeout-close-wait",
    );
    check(
        f.conntrack_tcp_be_liberal.is_some(),
        "--conntrack-tcp-be-liberal",
    );
    check(f.conntrack_udp_timeout.is_some(), "--conntrack-udp-timeout");
    check(
        f.conntrack_udp_timeout_stream.is_some(),
        "--conntrack-udp-timeout-stream",
    );
    check(f.oom_score_adj.is_some(), "--oom-score-adj");
    check(f.kube_api_qps.is_some(), "--kube-api-qps");
    check(f.kube_api_burst.is_some(), "--kube-api-burst");
    check(f.kubeconfig.is_some(), "--kubeconfig");
    check(f.config_sync_period.is_some(), "--config-sync-period");
    check(f.iptables_sync_period.is_some(), "--iptables-sync-period");
    check(
        f.iptables_min_sync_period.is_some(),
        "--iptables-min-sync-period",
    );
    out
}

fn parse_log_format(v: &str, setting: &str) -> Result<LogFormat, ConfigError> {
    match v.trim() {
        "" | "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(invalid(setting, v, "expected \"text\" or \"json\"")),
    }
}

/// `metricsBindAddress` → `metrics-bind-address`.
fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The effective configuration (defaults, then the file, then the flags) as a
/// KubeProxyConfiguration, for `kube-nftproxy config` and `--write-config-to`. Fields
/// kube-nftproxy does not honour keep the file's value.
pub fn effective_config(r: &Resolved) -> KubeProxyConfiguration {
    use crate::model::options::NodePortAddresses;
    let mut c = r.file.clone().unwrap_or_default();
    let go = |d: Duration| format_duration_go(d);
    let addr = |a: Option<SocketAddr>| Some(a.map(|a| a.to_string()).unwrap_or_default());
    c.api_version = Some(API_VERSION.to_string());
    c.kind = Some(KIND.to_string());
    c.mode = Some("nftables".to_string());
    c.hostname_override = Some(r.options.hostname.clone());
    c.bind_address = Some(match r.options.node_ips.first() {
        Some(ip) if r.options.node_ips.len() == 1 => ip.to_string(),
        _ => "0.0.0.0".to_string(),
    });
    c.cluster_cidr = Some(
        r.options
            .cluster_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    c.node_port_addresses = Some(match &r.options.nodeport_addresses {
        NodePortAddresses::Primary => vec!["primary".to_string()],
        NodePortAddresses::Cidrs(list) => list.iter().map(|n| n.to_string()).collect(),
    });
    c.metrics_bind_address = addr(r.metrics_bind_address);
    c.healthz_bind_address = addr(r.healthz_bind_address);
    c.oom_score_adj = r.oom_score_adj;
    c.config_sync_period = Some(go(r.config_sync_period));
    c.feature_gates = Some(r.feature_gates.clone());
    let mut cc = c.client_connection.clone().unwrap_or_default();
    cc.kubeconfig = Some(
        r.client
            .kubeconfig
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    cc.qps = Some(f64::from(r.client.qps));
    cc.burst = Some(i64::from(r.client.burst));
    cc.content_type = Some(r.client.content_type.clone());
    c.client_connection = Some(cc);
    let mut logging = match c.logging.take() {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    logging.insert(
        "format".to_string(),
        serde_json::Value::String(
            match r.logging_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .to_string(),
        ),
    );
    logging.insert(
        "verbosity".to_string(),
        serde_json::Value::from(r.verbosity),
    );
    c.logging = Some(serde_json::Value::Object(logging));
    c.conntrack = Some(ConntrackConfiguration {
        max_per_core: Some(i64::from(r.conntrack.max_per_core)),
        min: Some(i64::from(r.conntrack.min)),
        tcp_established_timeout: Some(go(r.conntrack.tcp_established)),
        tcp_close_wait_timeout: Some(go(r.conntrack.tcp_close_wait)),
        tcp_be_liberal: Some(r.conntrack.tcp_be_liberal),
        udp_timeout: Some(go(r.conntrack.udp_timeout)),
        udp_stream_timeout: Some(go(r.conntrack.udp_stream_timeout)),
    });
    c.detect_local_mode = Some(r.detect_local.mode.as_str().to_string());
    c.detect_local = Some(DetectLocalConfiguration {
        bridge_interface: Some(r.detect_local.bridge_interface.clone()),
        interface_name_prefix: Some(r.detect_local.interface_prefix.clone()),
    });
    c.nftables = Some(NftablesConfiguration {
        masquerade_bit: Some(i64::from(r.options.masquerade_bit)),
        masquerade_all: Some(r.options.masquerade_all),
        sync_period: Some(go(r.sync.sync_period)),
        min_sync_period: Some(go(r.sync.min_sync_period)),
    });
    c
}

/// [`effective_config`] as YAML.
pub fn effective_config_yaml(r: &Resolved) -> String {
    serde_yaml::to_string(&effective_config(r)).unwrap_or_default()
}

/// Go's `Duration.String()` (`0s`, `1h0m0s`, `1m30s`, `500ms`).
pub fn format_duration_go(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let nanos = d.as_nanos();
    if nanos < 1_000_000_000 {
        return if nanos % 1_000_000 == 0 {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let s = if frac == 0 {
        format!("{}s", secs % 60)
    } else {
        let f = format!("{:09}", frac);
        format!("{}.{}s", secs % 60, f.trim_end_matches('0'))
    };
    let (h, m) = (secs / 3600, (secs / 60) % 60);
    if h > 0 {
        format!("{h}h{m}m{s}")
    } else if m > 0 {
        format!("{m}m{s}")
    } else {
        s
    }
}
