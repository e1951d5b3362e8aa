//! The agent's operator-facing HTTP side, as kube-proxy has it: Prometheus metrics, the
//! proxier health server (`/healthz`, `/livez`) and the per-Service healthCheckNodePort
//! servers.
//!
//! These modules depend on nothing else in the crate: the sync loop feeds them plain values
//! (durations, counts, IP families, Service names), so they survive changes to the model.
//!
//! - [`metrics`]: the [`metrics::Metrics`] registry with upstream kube-proxy's metric names,
//!   types, labels and buckets, plus our own `kube_nftproxy_*` ones; [`metrics::serve_metrics`].
//! - [`health`]: [`health::ProxyHealth`] (upstream's `ProxyHealthServer` state) and
//!   [`health::serve_health`].
//! - [`service_health`]: [`service_health::ServiceHealthServer`], one listener per
//!   `externalTrafficPolicy: Local` Service's `healthCheckNodePort`.

pub mod health;
mod http;
pub mod metrics;
pub mod service_health;

pub use http::HttpServer;

use std::fmt;

/// An IP family, spelled as Kubernetes spells `v1.IPFamily` (`IPv4`, `IPv6`); that spelling
/// is the value of upstream's `ip_family` metric label and the key of the health body's
/// `status` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl IpFamily {
    /// `"IPv4"` or `"IPv6"`.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        }
    }

    /// The family of an address.
    pub fn of(ip: std::net::IpAddr) -> IpFamily {
        match ip {
            std::net::IpAddr::V4(_) => IpFamily::IPv4,
            std::net::IpAddr::V6(_) => IpFamily::IPv6,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
