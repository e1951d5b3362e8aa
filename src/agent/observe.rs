//! What the sync loop tells operators: metrics, the proxier health state, the
//! healthCheckNodePort servers, and warnings about skipped objects. The loop calls these
//! hooks at the points kube-proxy's proxier calls its own (change queued, sync done, sync
//! failed); everything here is optional, so tests and `--dry-run` can run without it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::events::{service_of, Events, Subject};
use super::health::ProxyHealth;
use super::metrics::{Metrics, SyncKind, TrafficPolicy};
use super::service_health::{NamespacedName, ServiceHealthServer};
use crate::model::Model;
use crate::objects::input::ClusterObjects;
use crate::vocab::{Family, Note};

/// Refused syncs in a row before an Event says so (a single refusal is retried at once).
const FAILURES_FOR_EVENT: u32 = 3;

#[derive(Default)]
pub struct Observe {
    pub metrics: Option<Arc<Metrics>>,
    pub health: Option<Arc<ProxyHealth>>,
    pub service_health: Option<Arc<ServiceHealthServer>>,
    pub events: Option<Events>,
    /// This node's name, for Events about it.
    pub node_name: String,
    /// The families this node proxies (health is tracked per family, as upstream).
    pub families: Vec<Family>,
    /// Notes already logged, by object: a note is logged at warn when it first appears
    /// and again only when its reason changes.
    logged: BTreeMap<String, String>,
    /// Whether the missing Node object has been reported.
    missing_node_said: bool,
    /// Syncs refused in a row.
    failures: u32,
}

impl Observe {
    pub fn new(families: Vec<Family>) -> Observe {
        Observe {
            families,
            ..Default::default()
        }
    }

    /// A change arrived that the next sync will program.
    pub fn queued(&self) {
        if let Some(h) = &self.health {
            for f in &self.families {
                h.queued_update(*f);
            }
        }
        if let Some(m) = &self.metrics {
            m.mark_queued();
        }
    }

    /// A sync was applied. `triggers` are the `last-change-trigger-time`s of the
    /// EndpointSlices it carried: network-programming latency runs from each, as upstream
    /// measures it (slices without the annotation are not measured).
    pub fn synced(&self, full: bool, elapsed: Duration, ops: usize, triggers: &[SystemTime]) {
        if let Some(m) = &self.metrics {
            m.observe_sync(kind(full), elapsed, true);
            m.set_transaction_messages(ops);
            m.set_pending(0, 0);
            m.inc_changes(0, triggers.len() as u64);
            for f in &self.families {
                for t in triggers {
                    m.observe_network_programming_since(*f, *t);
                }
            }
        }
        if let Some(h) = &self.health {
            for f in &self.families {
                h.updated(*f);
            }
        }
    }

    /// How long the kernel took to acknowledge the last transaction after it took effect.
    pub fn commit_acked(&self, delay: Duration) {
        if let Some(m) = &self.metrics {
            m.set_commit_ack_delay(delay);
        }
    }

    /// The size of what the kernel now holds: set and map elements across our tables.
    pub fn programmed(&self, ruleset: &crate::ruleset::ir::Ruleset) {
        if let Some(m) = &self.metrics {
            let n = ruleset
                .tables
                .iter()
                .flat_map(|t| &t.sets)
                .map(|s| s.elements.len())
                .sum();
            m.set_set_elements(n);
        }
    }

    /// Resets the failure streak after a sync went through.
    pub fn recovered(&mut self) {
        self.failures = 0;
    }

    /// This node's Node object: a node being deleted or drained by the autoscaler fails
    /// `/healthz` (load balancers stop sending to it), as upstream; a Node that is not
    /// there (a wrong `--hostname-override`) is said once.
    pub fn node(&mut self, objects: &ClusterObjects, hostname: &str) {
        let node = objects
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(hostname));
        if let Some(h) = &self.health {
            h.set_node_eligible(!node.is_some_and(|n| n.draining));
        }
        if node.is_none() && !self.missing_node_said {
            tracing::warn!(
                node = hostname,
                "no Node object named {hostname:?}: its addresses and zone are unknown, so \
                 NodePorts get no addresses (is --hostname-override right?)"
            );
            self.missing_node_said = true;
        } else if node.is_some() {
            self.missing_node_said = false;
        }
    }

    /// The kernel refused a sync; the previous rules keep serving.
    pub fn failed(&mut self, full: bool, elapsed: Duration, error: &str) {
        if let Some(m) = &self.metrics {
            m.observe_sync(kind(full), elapsed, false);
        }
        self.failures += 1;
        if self.failures == FAILURES_FOR_EVENT {
            if let Some(e) = &self.events {
                e.warn(
                    Subject::Node(self.node_name.clone()),
                    "SyncFailed",
                    format!(
                        "{} syncs in a row failed; the previous rules keep serving: {error}",
                        self.failures
                    ),
                );
            }
        }
    }

    /// Logs each new or changed note at warn (once, not every sync) and forgets notes that
    /// went away; the metrics count the current notes.
    pub fn notes(&mut self, notes: &[Note], complete: bool) {
        let mut seen = BTreeMap::new();
        for n in notes {
            if self.logged.get(&n.object) != Some(&n.reason) {
                tracing::warn!(object = %n.object, reason = %n.reason, "{n}");
                if let (Some(e), Some(svc)) = (&self.events, service_of(&n.object)) {
                    e.warn(svc, "ServiceSkipped", n.reason.clone());
                }
            }
            seen.insert(n.object.clone(), n.reason.clone());
        }
        if complete {
            self.logged = seen;
        } else {
            self.logged.extend(seen);
        }
        if let Some(m) = &self.metrics {
            m.set_notes([("skipped-or-reduced", self.logged.len())]);
        }
    }

    /// Whether [`Observe::services`] has anything to update.
    pub fn serves_services(&self) -> bool {
        self.service_health.is_some() || self.metrics.is_some()
    }

    /// After a sync: the healthCheckNodePort servers follow the Services with
    /// `externalTrafficPolicy: Local`, and report their local endpoints.
    pub async fn services(&self, model: &Model) {
        let (ports, local) = health_check_ports(model);
        if let Some(m) = &self.metrics {
            for f in &self.families {
                let missing = model
                    .services
                    .iter()
                    .filter(|sp| sp.external_policy_local && sp.health_check_node_port.is_some())
                    .filter(|sp| !sp.endpoints.iter().any(|e| e.local && e.ready))
                    .filter(|sp| sp.cluster_ip(*f).is_some())
                    .count();
                m.set_no_local_endpoints(TrafficPolicy::External, *f, missing);
            }
        }
        if let Some(s) = &self.service_health {
            s.set_node_ips(health_check_addresses(model)).await;
            for e in s.sync_services(&ports).await {
                tracing::error!(error = %e, "cannot serve a healthCheckNodePort");
            }
            s.sync_endpoints(&local);
        }
    }
}

fn kind(full: bool) -> SyncKind {
    if full {
        SyncKind::Full
    } else {
        SyncKind::Partial
    }
}

/// Where healthCheckNodePorts listen, as upstream's `newServiceHealthServer`: every address
/// (`None`) when the nodeport addresses match all of a family (`0.0.0.0/0`, `::/0`), else
/// the node IPs they select (nftables mode's default: the node's primary IPs). Empty until
/// those are known.
pub fn health_check_addresses(model: &Model) -> Option<Vec<std::net::IpAddr>> {
    let mut ips = Vec::new();
    for f in &model.families {
        match crate::model::nodeport_ips(model, *f) {
            crate::model::NodePortIps::AllLocal => return None,
            crate::model::NodePortIps::List(l) => ips.extend(l),
        }
    }
    Some(ips)
}

/// The healthCheckNodePort of every `externalTrafficPolicy: Local` Service, and how many
/// ready endpoints it has on this node (counted once per endpoint address, as upstream
/// counts a Service's local endpoints).
pub fn health_check_ports(
    model: &Model,
) -> (HashMap<NamespacedName, u16>, HashMap<NamespacedName, usize>) {
    let mut ports = HashMap::new();
    let mut local: HashMap<NamespacedName, std::collections::BTreeSet<std::net::IpAddr>> =
        HashMap::new();
    for sp in &model.services {
        let Some(port) = sp.health_check_node_port else {
            continue;
        };
        let name = NamespacedName::new(sp.namespace.clone(), sp.name.clone());
        ports.insert(name.clone(), port);
        let ips = local.entry(name).or_default();
        ips.extend(
            sp.endpoints
                .iter()
                .filter(|e| e.local && e.ready)
                .map(|e| e.ip),
        );
    }
    let counts = local.into_iter().map(|(k, v)| (k, v.len())).collect();
    (ports, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodePortAddresses, Options};
    use crate::objects::input::ClusterObjects;

    /// Upstream's `newServiceHealthServer`: all addresses only when the nodeport addresses
    /// match all; otherwise the node IPs they select, the primary IP by default.
    #[test]
    fn health_check_ports_listen_on_the_nodeport_addresses() {
        let model = |np: NodePortAddresses| {
            let opts = Options {
                hostname: "node-a".into(),
                node_ips: vec![
                    "192.168.0.10".parse().unwrap(),
                    "192.168.0.11".parse().unwrap(),
                ],
                host_addresses: vec!["192.168.0.10".parse().unwrap(), "10.0.0.5".parse().unwrap()],
                nodeport_addresses: np,
                ..Options::default()
            };
            crate::model::globals(&ClusterObjects::default(), &opts, &mut Vec::new())
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            health_check_addresses(&model(NodePortAddresses::Primary)),
            Some(vec![ip("192.168.0.10")])
        );
        assert_eq!(
            health_check_addresses(&model(NodePortAddresses::Cidrs(vec!["10.0.0.0/8"
                .parse()
                .unwrap()]))),
            Some(vec![ip("10.0.0.5")])
        );
        assert_eq!(
            health_check_addresses(&model(NodePortAddresses::Cidrs(vec!["0.0.0.0/0"
                .parse()
                .unwrap()]))),
            None
        );
    }
}
