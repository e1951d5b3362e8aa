//! Stale UDP conntrack cleanup, as upstream kube-proxy does (`pkg/proxy/conntrack`).
//!
//! UDP has no connection teardown: a conntrack entry that was DNATed to an endpoint which
//! has gone away (or created before a Service port had endpoints, when nothing was
//! DNATed) keeps matching the client's packets until it times out, black-holing them.
//!
//! Two parts:
//! * [`stale_flows`] (pure) compares two [`Model`]s and says which flows are stale;
//! * [`delete_flows`] (kernel) deletes the matching entries over ctnetlink: one
//!   `IPCTNL_MSG_CT_GET` dump per family, filtering in user space, then one
//!   `IPCTNL_MSG_CT_DELETE` per matching entry, addressed by its original tuple (and its
//!   zone and id, so an entry re-created in the meantime is left alone).
//!
//! Call [`delete_flows`] after the new ruleset is in place (new packets must hit the new
//! DNAT rules), from a blocking context; it acts on the calling thread's network namespace.

mod codec;
#[cfg(test)]
mod netns_tests;
mod policy;
mod socket;
#[cfg(test)]
mod tests;

pub use codec::ConntrackError;
pub use policy::stale_flows;

// The submodules share their helpers through here.
use codec::*;
use policy::*;
use socket::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{Family, Model, Proto};

/// Which conntrack entries to delete: every `Some` field must match; `None` matches all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowFilter {
    pub family: Family,
    pub proto: Proto,
    /// Destination address in the original direction (the Service VIP).
    pub orig_dst: Option<IpAddr>,
    /// Destination port in the original direction (the Service port or NodePort).
    pub orig_dst_port: Option<u16>,
    /// Source address in the reply direction (the endpoint, after DNAT).
    pub reply_src: Option<IpAddr>,
}

impl std::fmt::Display for FlowFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fam = match self.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        write!(f, "{fam} proto {}", self.proto.number())?;
        if let Some(ip) = self.orig_dst {
            write!(f, " orig-dst {ip}")?;
        }
        if let Some(p) = self.orig_dst_port {
            write!(f, " orig-dport {p}")?;
        }
        if let Some(ip) = self.reply_src {
            write!(f, " reply-src {ip}")?;
        }
        Ok(())
    }
}

/// Deletes the conntrack entries that any of `filters` matches, in the calling thread's
/// network namespace; returns how many were deleted. Entries that vanish meanwhile are
/// not errors. Blocking.
pub fn delete_flows(filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
    if filters.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::open()?;
    let mut entries = Vec::new();
    for family in [Family::V4, Family::V6] {
        let fs: Vec<&FlowFilter> = filters.iter().filter(|f| f.family == family).collect();
        if fs.is_empty() {
            continue;
        }
        // Dump first, delete afterwards: the socket cannot take requests mid-dump.
        entries.extend(sock.dump_matching(family, &fs)?);
    }
    delete_entries(&mut sock, &entries)
}

/// The full check for a start-up, when no previous model is known (the agent restarted
/// while endpoints changed): deletes every UDP flow to a Service VIP or NodePort of `m`
/// whose reply source is not one of that port's serving endpoints now, including flows
/// never DNATed because the port had no endpoint when they began. Returns the count.
pub fn delete_stale_flows(m: &Model) -> Result<usize, ConntrackError> {
    let mut serving: BTreeMap<(Family, Target), BTreeSet<IpAddr>> = BTreeMap::new();
    for sp in udp_ports(m).into_values() {
        for (family, side) in sides(sp) {
            if side.endpoints.is_empty() {
                continue;
            }
            for t in side.targets {
                serving
                    .entry((family, t))
                    .or_default()
                    .extend(side.endpoints.iter().map(|(ip, _)| *ip));
            }
        }
    }
    if serving.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::open()?;
    let mut stale = Vec::new();
    for family in [Family::V4, Family::V6] {
        let all_udp = FlowFilter {
            family,
            proto: Proto::Udp,
            orig_dst: None,
            orig_dst_port: None,
            reply_src: None,
        };
        for e in sock.dump_matching(family, &[&all_udp])? {
            let Some(port) = e.orig.dst_port else {
                continue;
            };
            let allowed = e
                .orig
                .dst
                .and_then(|ip| serving.get(&(family, Target::Vip(ip, port))))
                .or_else(|| serving.get(&(family, Target::NodePort(port))));
            if let Some(allowed) = allowed {
                if !e.reply.src.is_some_and(|src| allowed.contains(&src)) {
                    stale.push(e);
                }
            }
        }
    }
    delete_entries(&mut sock, &stale)
}
