//! healthCheckNodePort servers, as kube-proxy's `pkg/proxy/healthcheck/service_health.go`.
//!
//! A cloud load balancer in front of an `externalTrafficPolicy: Local` Service probes every
//! node on the Service's `spec.healthCheckNodePort` and sends traffic only to nodes that
//! answer 200. After each successful sync the agent calls
//! [`ServiceHealthServer::sync_services`] with every such Service's port (listeners open and
//! close to match) and [`ServiceHealthServer::sync_endpoints`] with each Service's count of
//! local ready endpoints.
//!
//! Every request on such a port, whatever its method or path, gets 200 when the Service has
//! at least one local endpoint and the proxy is healthy ([`ProxyHealth::is_healthy`], which
//! ignores the Node's eligibility), 503 otherwise, with headers `Content-Type:
//! application/json`, `X-Content-Type-Options: nosniff` and `X-Load-Balancing-Endpoint-Weight:
//! N`, and upstream's body byte for byte: `{`, newline, then one tab-indented field a line
//! (`"service": {` with `"namespace": "ns",` and `"name": "svc"` indented two tabs, `},`,
//! `"localEndpoints": 1,`, `"serviceProxyHealthy": true`), and a closing `}` without a final
//! newline.
//!
//! `serviceProxyHealthy` is the proxy's health itself, so an unhealthy proxy answers 503 with
//! `"serviceProxyHealthy": false` and the real endpoint count.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use super::health::ProxyHealth;
use super::http;
use super::metrics::Metrics;
use super::HttpServer;

/// A Service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> NamespacedName {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A healthCheckNodePort that could not be opened (it is retried at the next
/// [`ServiceHealthServer::sync_services`]).
#[derive(Debug)]
pub struct BindError {
    pub service: NamespacedName,
    pub port: u16,
    pub addr: SocketAddr,
    pub error: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failed to start healthcheck \"{}\" on port {} ({}): {}",
            self.service, self.port, self.addr, self.error
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The open listeners of one Service.
#[derive(Debug)]
struct Instance {
    port: u16,
    servers: Vec<HttpServer>,
}

/// The healthCheckNodePort servers of this node.
#[derive(Debug)]
pub struct ServiceHealthServer {
    /// Where the listeners are; `None` is every address.
    node_ips: Mutex<Option<Vec<IpAddr>>>,
    proxy: Arc<ProxyHealth>,
    metrics: Option<Arc<Metrics>>,
    /// Serializes `sync_services` calls.
    syncing: tokio::sync::Mutex<()>,
    instances: Mutex<HashMap<NamespacedName, Instance>>,
    /// Local endpoint counts of the open Services; shared with the handlers.
    endpoints: Arc<Mutex<HashMap<NamespacedName, usize>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ServiceHealthServer {
    /// Servers that listen on each of `node_ips` (upstream: the node IPs matching
    /// `nodePortAddresses`), or on every address of the node (one dual-stack socket, as Go's
    /// `0.0.0.0`) when `node_ips` is empty. `proxy` decides `serviceProxyHealthy`; a listener
    /// that cannot be opened is counted in `kube_nftproxy_healthcheck_bind_errors_total` when
    /// `metrics` is given.
    pub fn new(
        node_ips: Vec<IpAddr>,
        proxy: Arc<ProxyHealth>,
        metrics: Option<Arc<Metrics>>,
    ) -> ServiceHealthServer {
        ServiceHealthServer {
            node_ips: Mutex::new(listen_set(Some(node_ips).filter(|v| !v.is_empty()))),
            proxy,
            metrics,
            syncing: tokio::sync::Mutex::new(()),
            instances: Mutex::new(HashMap::new()),
            endpoints: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Moves the listeners to `node_ips` (`None`: every address; an empty list: nowhere,
    /// e.g. before the Node's IPs are known). When the set changes, every open port is
    /// closed; the next [`ServiceHealthServer::sync_services`] opens them on the new
    /// addresses.
    pub async fn set_node_ips(&self, node_ips: Option<Vec<IpAddr>>) {
        let _syncing = self.syncing.lock().await;
        let want = listen_set(node_ips);
        let closing: Vec<(NamespacedName, Instance)> = {
            let mut current = locked(&self.node_ips);
            if *current == want {
                return;
            }
            tracing::info!(addresses = ?want, "healthCheckNodePorts move to these addresses (none: all)");
            *current = want;
            locked(&self.endpoints).clear();
            locked(&self.instances).drain().collect()
        };
        for (_, instance) in closing {
            for server in instance.servers {
                server.shutdown().await;
            }
        }
    }

    /// Makes the open listeners match `services` (Service → healthCheckNodePort): closes the
    /// ports of Services that are gone or whose port changed, then opens the missing ones;
    /// Services already open on the same port are left alone. A newly opened Service reports
    /// 0 local endpoints until the next [`ServiceHealthServer::sync_endpoints`].
    ///
    /// A port that cannot be opened (on any one address) is logged, counted, left closed on
    /// all addresses and returned; it is tried again at the next call. Returns once the
    /// closed ports are closed. Call it inside a Tokio runtime.
    pub async fn sync_services(&self, services: &HashMap<NamespacedName, u16>) -> Vec<BindError> {
        let _syncing = self.syncing.lock().await;

        let closing: Vec<(NamespacedName, Instance)> = {
            let mut instances = locked(&self.instances);
            let gone: Vec<NamespacedName> = instances
                .iter()
                .filter(|(name, instance)| services.get(*name) != Some(&instance.port))
                .map(|(name, _)| name.clone())
                .collect();
            let mut endpoints = locked(&self.endpoints);
            gone.into_iter()
                .filter_map(|name| {
                    endpoints.remove(&name);
                    instances.remove(&name).map(|instance| (name, instance))
                })
                .collect()
        };
        for (name, instance) in closing {
            tracing::info!(service = %name, port = instance.port, "closing healthcheck");
            for server in instance.servers {
                server.shutdown().await;
            }
        }

        let mut opening: Vec<(&NamespacedName, u16)> = {
            let instances = locked(&self.instances);
            services
                .iter()
                .filter(|(name, _)| !instances.contains_key(*name))
                .map(|(name, port)| (name, *port))
                .collect()
        };
        opening.sort();
        let mut errors = Vec::new();
        for (name, port) in opening {
            match self.open(name, port) {
                Ok(servers) => {
                    tracing::info!(service = %name, port, "opening healthcheck");
                    locked(&self.endpoints).insert(name.clone(), 0);
                    locked(&self.instances).insert(name.clone(), Instance { port, servers });
                }
                Err(error) => {
                    tracing::error!("{error}");
                    if let Some(metrics) = &self.metrics {
                        metrics.inc_healthcheck_bind_errors();
                    }
                    errors.push(error);
                }
            }
        }
        errors
    }

    /// Opens `port` on every listening address, or none.
    fn open(&self, name: &NamespacedName, port: u16) -> Result<Vec<HttpServer>, BindError> {
        let addrs: Vec<SocketAddr> = match &*locked(&self.node_ips) {
            None => vec![SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)],
            Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
        };
        let mut servers = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let handler = handler(name.clone(), self.endpoints.clone(), self.proxy.clone());
            match http::bind(addr).and_then(|listener| http::spawn(listener, handler)) {
                Ok(server) => servers.push(server),
                // Dropping `servers` closes what was opened.
                Err(error) => {
                    return Err(BindError {
                        service: name.clone(),
                        port,
                        addr,
                        error,
                    })
                }
            }
        }
        Ok(servers)
    }

    /// Sets each open Service's count of local ready endpoints: its entry in `endpoints`, or
    /// 0 when it has none (entries for Services without a listener are ignored).
    pub fn sync_endpoints(&self, endpoints: &HashMap<NamespacedName, usize>) {
        for (name, count) in locked(&self.endpoints).iter_mut() {
            *count = endpoints.get(name).copied().unwrap_or(0);
        }
    }

    /// The Services with open listeners and their ports.
    pub fn services(&self) -> HashMap<NamespacedName, u16> {
        locked(&self.instances)
            .iter()
            .map(|(name, instance)| (name.clone(), instance.port))
            .collect()
    }

    /// The addresses a Service's listeners are bound to (the actual ports when 0 was asked
    /// for); empty when it has none.
    pub fn local_addrs(&self, service: &NamespacedName) -> Vec<SocketAddr> {
        locked(&self.instances)
            .get(service)
            .map(|instance| {
                instance
                    .servers
                    .iter()
                    .map(HttpServer::local_addr)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Closes every listener.
    pub async fn shutdown(&self) {
        self.sync_services(&HashMap::new()).await;
    }
}

fn listen_set(node_ips: Option<Vec<IpAddr>>) -> Option<Vec<IpAddr>> {
    node_ips.map(|mut v| {
        v.sort();
        v.dedup();
        v
    })
}

/// The request handler of one Service's listeners.
fn handler(
    name: NamespacedName,
    endpoints: Arc<Mutex<HashMap<NamespacedName, usize>>>,
    proxy: Arc<ProxyHealth>,
) -> impl Fn(&hyper::Request<hyper::body::Incoming>) -> http::Reply + Send + Sync + 'static {
    move |_request| {
        let Some(count) = locked(&endpoints).get(&name).copied() else {
            // Upstream logs and writes nothing, which Go sends as an empty 200.
            tracing::error!(service = %name, "received request for closed healthcheck");
            return http::reply(200, &[], "");
        };
        let healthy = proxy.is_healthy();
        let weight = count.to_string();
        http::reply(
            if count != 0 && healthy { 200 } else { 503 },
            &[
                ("Content-Type", "application/json"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-Load-Balancing-Endpoint-Weight", &weight),
            ],
            body(&name, count, healthy),
        )
    }
}

/// Upstream's body: a dedented, tab-indented template filled with `%q`, `%d`, `%v`.
fn body(name: &NamespacedName, count: usize, healthy: bool) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&name.namespace),
        quote(&name.name),
        count,
        healthy
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_upstreams_template() {
        let b = body(&NamespacedName::new("ns", "svc"), 1, true);
        assert_eq!(
            b,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"svc\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["service"]["name"], "svc");
        assert_eq!(v["localEndpoints"], 1);
    }
}
