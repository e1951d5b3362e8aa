//! Which UDP flows a change makes stale (pure): compares the model before and after a sync.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{Family, Model, Proto, ServicePort};

use super::*;

/// What a UDP Service port is reachable at, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Target {
    /// ClusterIP, external IP or load-balancer IP, with the Service port.
    Vip(IpAddr, u16),
    /// A NodePort, on any node address of the family.
    NodePort(u16),
}

pub(super) type PortKey<'a> = (&'a str, &'a str, &'a str, Proto);

#[derive(Default)]
pub(super) struct Side {
    pub(super) targets: BTreeSet<Target>,
    /// Serving endpoints (`IP`, port) of the family.
    pub(super) endpoints: BTreeSet<(IpAddr, u16)>,
}

pub(super) fn sides(sp: &ServicePort) -> BTreeMap<Family, Side> {
    let mut out: BTreeMap<Family, Side> = BTreeMap::new();
    let vips = sp
        .cluster_ips
        .iter()
        .chain(&sp.external_ips)
        .chain(&sp.load_balancer_ips);
    for ip in vips {
        let side = out.entry(Family::of(ip)).or_default();
        side.targets.insert(Target::Vip(*ip, sp.port));
    }
    if let Some(np) = sp.node_port {
        // A NodePort is served in each family the Service has a ClusterIP in.
        for ip in &sp.cluster_ips {
            out.entry(Family::of(ip))
                .or_default()
                .targets
                .insert(Target::NodePort(np));
        }
    }
    // Like upstream, every serving endpoint counts, whatever traffic policies and topology
    // say: a change of policy must not break flows to endpoints that still serve.
    for e in sp.endpoints.iter().filter(|e| e.ready || e.serving) {
        if let Some(side) = out.get_mut(&Family::of(&e.ip)) {
            side.endpoints.insert((e.ip, e.port));
        }
    }
    out
}

pub(super) fn udp_ports(m: &Model) -> BTreeMap<PortKey<'_>, &ServicePort> {
    m.services
        .iter()
        .filter(|sp| sp.protocol == Proto::Udp)
        .map(|sp| {
            let key = (
                sp.namespace.as_str(),
                sp.name.as_str(),
                sp.port_name.as_str(),
                sp.protocol,
            );
            (key, sp)
        })
        .collect()
}

pub(super) fn filter(family: Family, target: Target, reply_src: Option<IpAddr>) -> FlowFilter {
    let (orig_dst, port) = match target {
        Target::Vip(ip, port) => (Some(ip), port),
        Target::NodePort(port) => (None, port),
    };
    FlowFilter {
        family,
        proto: Proto::Udp,
        orig_dst,
        orig_dst_port: Some(port),
        reply_src,
    }
}

/// The UDP conntrack entries made stale by going from `old` to `new`; sorted, no
/// duplicates.
///
/// * An endpoint (`IP:port`) that served a Service port and no longer does: flows to each
///   of the port's VIPs (`VIP:port`) and to its NodePort whose reply source is that IP.
/// * A Service port that goes from no serving endpoint (in a family) to some, and any
///   VIP or NodePort newly served with endpoints: every flow to it (created while nothing
///   DNATed it).
/// * A VIP or NodePort no longer served (Service deleted, ClusterIP or NodePort changed,
///   external IP removed): every flow to it.
///
/// TCP and SCTP flows are never listed, as upstream.
pub fn stale_flows(old: &Model, new: &Model) -> Vec<FlowFilter> {
    let old_ports = udp_ports(old);
    let new_ports = udp_ports(new);
    let keys: BTreeSet<PortKey<'_>> = old_ports.keys().chain(new_ports.keys()).copied().collect();
    let mut out = BTreeSet::new();
    for key in keys {
        let mut old_sides = old_ports.get(&key).map(|sp| sides(sp)).unwrap_or_default();
        let new_sides = new_ports.get(&key).map(|sp| sides(sp)).unwrap_or_default();
        for family in [Family::V4, Family::V6] {
            let o = old_sides.remove(&family).unwrap_or_default();
            let empty = Side::default();
            let n = new_sides.get(&family).unwrap_or(&empty);
            for &t in o.targets.difference(&n.targets) {
                out.insert(filter(family, t, None));
            }
            let gone: BTreeSet<IpAddr> = o
                .endpoints
                .difference(&n.endpoints)
                .map(|(ip, _)| *ip)
                .collect();
            for &t in o.targets.intersection(&n.targets) {
                for &ip in &gone {
                    out.insert(filter(family, t, Some(ip)));
                }
            }
            if !n.endpoints.is_empty() {
                for &t in &n.targets {
                    if o.endpoints.is_empty() || !o.targets.contains(&t) {
                        out.insert(filter(family, t, None));
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}
