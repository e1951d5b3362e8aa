//! The node agent: watches the API server, keeps the desired state between syncs, programs
//! the kernel (`run`), and answers operators as kube-proxy does.
//!
//! - [`watch`], [`desired`], [`reconcile`], [`sink`], [`conntrack`]: the sync pipeline.
//! - [`migrate`]: removing what kube-proxy left in the node's kernel.
//! - [`metrics`]: the [`metrics::Metrics`] registry with upstream kube-proxy's metric names,
//!   types, labels and buckets, plus our own `kube_nftproxy_*` ones; [`metrics::serve_metrics`].
//! - [`health`]: [`health::ProxyHealth`] (upstream's `ProxyHealthServer` state) and
//!   [`health::serve_health`].
//! - [`service_health`]: [`service_health::ServiceHealthServer`], one listener per
//!   `externalTrafficPolicy: Local` Service's `healthCheckNodePort`.
//! - [`ratelimit`]: the API client's `qps` / `burst` token bucket, a tower layer.

pub mod addresses;
pub mod conntrack;
pub mod desired;
pub mod events;
pub mod health;
mod http;
pub mod metrics;
pub mod migrate;
pub mod node;
pub mod observe;
pub mod ratelimit;
pub mod reconcile;
pub mod service_health;
pub mod sink;
pub mod watch;

pub use http::HttpServer;
