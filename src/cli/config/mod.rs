//! Render options: kube-proxy style command-line flags merged over an optional
//! KubeProxyConfiguration (v1alpha1) file, resolved into [`Options`].
//!
//! Flags override the file. All parsing and validation happens in [`resolve`] /
//! [`resolve_all`], so every error names the flag (or the file and field) and the bad value.

mod file;
mod flags;
mod kubeproxy;
#[cfg(test)]
mod kubeproxy_tests;
mod resolve;
#[cfg(test)]
mod tests;

pub use file::*;
pub use flags::{InapplicableBoolFlags, InapplicableFlags, KubeProxyFlags, RenderArgs};
pub use kubeproxy::*;
pub use resolve::*;

use std::path::PathBuf;
use std::time::Duration;

use crate::model::options::Options;

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
    /// How often a full resync happens (default 1h).
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
    /// `metricsBindAddress` / `--metrics-bind-address` (default 127.0.0.1:10249);
    /// `None`: disabled (the flag given empty, or port 0 / empty port).
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    /// `healthzBindAddress` / `--healthz-bind-address` (default 0.0.0.0:10256);
    /// `None`: disabled.
    pub healthz_bind_address: Option<std::net::SocketAddr>,
    /// `conntrack.*` / `--conntrack-*`: the sysctls to set.
    pub conntrack: ConntrackSettings,
    /// `oomScoreAdj` / `--oom-score-adj` (default -999).
    pub oom_score_adj: Option<i32>,
    /// `logging.format` / `--logging-format`.
    pub logging_format: LogFormat,
    /// `logging.verbosity` / `--v`.
    pub verbosity: u8,
    /// `clientConnection.*`, `--kubeconfig`, `--master`, `--kube-api-*`.
    pub client: ClientSettings,
    /// `configSyncPeriod` / `--config-sync-period` (default 15m): informer resync.
    pub config_sync_period: Duration,
    /// `detectLocalMode`, `detectLocal.*`, `--detect-local-mode`, `--pod-*`.
    pub detect_local: DetectLocal,
    /// `featureGates` / `--feature-gates`, all known names.
    pub feature_gates: std::collections::BTreeMap<String, bool>,
    /// One line per setting that is accepted but not honoured; `run` logs each at warn.
    pub warnings: Vec<String>,
}
