//! The ruleset as upstream kube-proxy's nftables mode writes it (its newest, "G4" form; see
//! the research notes, sections 1.3-1.9 and 1.20), generated as `nft -f` text from the same
//! `Model` our render uses, so `bench` can load both layouts side by side. Table
//! `ip`/`ip6 kube-proxy-upstream` (its own name: it never collides with kube-proxy's).
//!
//! The shape that matters for cost is upstream's: `service-ips` / `service-nodeports` /
//! `no-endpoint-*` / `firewall-ips` verdict maps whose elements `goto` one chain per Service
//! port (`service-`, `local-`, `external-`, `firewall-`); in each Service chain one rule
//! `meta l4proto tcp dnat ip addr . port to numgen random mod N map { 0 : a . p, ... }` with
//! its own anonymous map; session affinity as one chain and one dynamic set per endpoint;
//! the masquerade rule in `services`, the `hairpin-connections` set. Partial syncs
//! (`Layout::sync`) rewrite the chains of every changed Service port as kube-proxy does
//! (`add chain` + `flush chain` + every rule again) and send only the element difference.
//!
//! Simplified (none of it changes the number of chains, rules or maps per Service):
//! - LoadBalancer IPs are not added to the firewall's allowed ranges when a range holds the
//!   node IP; LB ingress `ipMode: Proxy` is not told apart.
//! - Stale chains are deleted in the same transaction (upstream deletes them about a second
//!   later, in a second transaction).
//! - No table comment per element beyond the `no-endpoint-*` ones; no `add`+`delete` of the
//!   base chains on the first sync; no "unallocated ClusterIP" drop unless Service CIDRs
//!   are known (as upstream).
//! - No two Services may claim the same IP and port or NodePort (the API server forbids
//!   it; upstream and our render keep the first, this text would not load).
//! - When the node-level settings change, `sync` replaces the tables (upstream does a full
//!   sync that keeps unchanged elements).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use data_encoding::BASE32;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::model::{self, categorize, Endpoint, Family, Model, NodePortIps, ServicePort};
use crate::ruleset::names;

/// The table name, in both families.
pub const TABLE: &str = "kube-proxy-upstream";

/// One set or map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Elem {
    set: &'static str,
    key: String,
    value: Option<String>,
    comment: Option<String>,
}

/// What one Service port owns in one family's table.
#[derive(Debug, Clone, Default)]
struct SvcObjs {
    /// Affinity sets: name, declaration body.
    sets: Vec<(String, String)>,
    /// Chains and their rules, in order.
    chains: Vec<(String, Vec<String>)>,
    elements: Vec<Elem>,
}

/// The node-level settings the per-Service text depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ctx {
    family: Family,
    pod_cidrs: Vec<IpNet>,
    mark: u32,
    zone: Option<String>,
}

#[derive(Debug, Clone)]
struct FamilyLayout {
    ctx: Ctx,
    skeleton: String,
    /// By `ns/name/proto/port`: the model's port and what it owns.
    services: BTreeMap<String, (ServicePort, SvcObjs)>,
    /// How many Service ports ask for each element (a multi-port Service shares its
    /// `cluster-ips` element): removed only when the last one lets go.
    refs: HashMap<Elem, u32>,
}

/// The upstream-style layout of one model, kept so later models can be synced partially.
#[derive(Debug, Clone)]
pub struct Layout {
    families: Vec<FamilyLayout>,
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn service_key(sp: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        sp.namespace,
        sp.name,
        sp.protocol.name(),
        sp.port_name
    )
}

/// Upstream's `hashAndTruncate` for endpoint chain and affinity set names.
fn endpoint_base(sp: &ServicePort, ep: &Endpoint) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    let raw = format!("{}__{}/{}", service_key(sp), ip, ep.port);
    let hash = BASE32.encode(&Sha256::digest(raw.as_bytes()));
    let mut out = format!("{}-{}", &hash[..8], raw);
    if out.len() > 240 {
        out.truncate(237);
        out.push_str("...");
    }
    out
}

/// `{ a, b }` for several, `a` for one.
fn anon(items: &[String]) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

impl Layout {
    pub fn new(m: &Model) -> Layout {
        let families = m
            .families
            .iter()
            .map(|&f| {
                let ctx = Ctx {
                    family: f,
                    pod_cidrs: m
                        .cluster_cidrs
                        .iter()
                        .filter(|c| {
                            matches!(
                                (c, f),
                                (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
                            )
                        })
                        .copied()
                        .collect(),
                    mark: m.masquerade_mark,
                    zone: m.node_zone.clone(),
                };
                let mut fl = FamilyLayout {
                    skeleton: skeleton(m, &ctx),
                    ctx,
                    services: BTreeMap::new(),
                    refs: HashMap::new(),
                };
                for sp in m.services.iter().filter(|sp| sp.cluster_ip(f).is_some()) {
                    let objs = service_objects(sp, &fl.ctx);
                    for e in &objs.elements {
                        *fl.refs.entry(e.clone()).or_default() += 1;
                    }
                    fl.services.insert(service_key(sp), (sp.clone(), objs));
                }
                fl
            })
            .collect();
        Layout { families }
    }

    /// The whole ruleset as one `nft -f` script (a cold start; the tables must not exist).
    pub fn script(&self) -> String {
        self.script_chunks(usize::MAX).concat()
    }

    /// The same ruleset as several `nft -f` scripts to load one after the other: the
    /// skeletons, then `chunk` Service ports per script. Loads a table too large for one
    /// `nft -f` within the benchmark's cap, so partial syncs can still be timed on it.
    pub fn script_chunks(&self, chunk: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        for fl in &self.families {
            out[0].push_str(&fl.skeleton);
        }
        for fl in &self.families {
            let (f, t) = (fam(fl.ctx.family), TABLE);
            // Each element once, however many Service ports ask for it.
            let mut seen = HashSet::new();
            let services: Vec<&SvcObjs> = fl.services.values().map(|(_, o)| o).collect();
            for group in services.chunks(chunk.max(1)) {
                let mut o = String::new();
                for objs in group {
                    for (name, body) in &objs.sets {
                        let _ = writeln!(o, "add set {f} {t} {name} {{ {body} }}");
                    }
                    for (name, _) in &objs.chains {
                        let _ = writeln!(o, "add chain {f} {t} {name}");
                    }
                    for (name, rules) in &objs.chains {
                        for r in rules {
                            let _ = writeln!(o, "add rule {f} {t} {name} {r}");
                        }
                    }
                }
                for objs in group {
                    for e in &objs.elements {
                        if seen.insert(e) {
                            add_element(&mut o, fl.ctx.family, e);
                        }
                    }
                }
                if chunk == usize::MAX {
                    out[0].push_str(&o);
                } else {
                    out.push(o);
                }
            }
        }
        out
    }

    /// How many chains the tables hold (both families).
    pub fn chain_count(&self) -> usize {
        self.families
            .iter()
            .map(|fl| {
                fl.skeleton.matches("add chain ").count()
                    + fl.services
                        .values()
                        .map(|(_, o)| o.chains.len())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Moves the layout to `m` and returns the `nft -f` script that moves the kernel along,
    /// as kube-proxy's partial sync does: every chain of each changed Service port is
    /// re-added, flushed and refilled; elements change only where they differ.
    pub fn sync(&mut self, m: &Model) -> String {
        let next = Layout::new_ctx_only(m);
        if next
            .iter()
            .map(|fl| &fl.ctx)
            .ne(self.families.iter().map(|fl| &fl.ctx))
            || next
                .iter()
                .map(|fl| &fl.skeleton)
                .ne(self.families.iter().map(|fl| &fl.skeleton))
        {
            let mut out = String::new();
            for fl in &self.families {
                let _ = writeln!(out, "delete table {} {TABLE}", fam(fl.ctx.family));
            }
            *self = Layout::new(m);
            out.push_str(&self.script());
            return out;
        }
        let mut out = String::new();
        for fl in &mut self.families {
            fl.sync(m, &mut out);
        }
        out
    }

    /// The per-family contexts and skeletons of `m`, without the Services.
    fn new_ctx_only(m: &Model) -> Vec<FamilyLayout> {
        let mut bare = m.clone();
        bare.services.clear();
        Layout::new(&bare).families
    }
}

/// A Service port that is new, changed or gone: its key, what it owned, what it owns now.
type Change = (String, Option<SvcObjs>, Option<(ServicePort, SvcObjs)>);

impl FamilyLayout {
    fn sync(&mut self, m: &Model, out: &mut String) {
        let f = self.ctx.family;
        let (ff, t) = (fam(f), TABLE);
        let mut seen = HashSet::new();
        // (old, new) for every Service port that is new, changed or gone.
        let mut changes: Vec<Change> = Vec::new();
        for sp in m.services.iter().filter(|sp| sp.cluster_ip(f).is_some()) {
            let key = service_key(sp);
            seen.insert(key.clone());
            match self.services.get(&key) {
                Some((old, _)) if old == sp => {}
                _ => {
                    let objs = service_objects(sp, &self.ctx);
                    let old = self.services.get(&key).map(|(_, o)| o.clone());
                    changes.push((key, old, Some((sp.clone(), objs))));
                }
            }
        }
        for (key, (_, objs)) in &self.services {
            if !seen.contains(key) {
                changes.push((key.clone(), Some(objs.clone()), None));
            }
        }
        if changes.is_empty() {
            return;
        }
        let empty = SvcObjs::default();
        let mut stale_chains = Vec::new();
        let mut stale_sets = Vec::new();
        for (_, old, new) in &changes {
            let old = old.as_ref().unwrap_or(&empty);
            let new = new.as_ref().map(|(_, o)| o).unwrap_or(&empty);
            for (name, body) in &new.sets {
                if !old.sets.iter().any(|(n, _)| n == name) {
                    let _ = writeln!(out, "add set {ff} {t} {name} {{ {body} }}");
                }
            }
            for (name, _) in &new.chains {
                let _ = writeln!(out, "add chain {ff} {t} {name}");
            }
            for (name, _) in &old.chains {
                if !new.chains.iter().any(|(n, _)| n == name) {
                    stale_chains.push(name.clone());
                }
            }
            for (name, _) in &old.sets {
                if !new.sets.iter().any(|(n, _)| n == name) {
                    stale_sets.push(name.clone());
                }
            }
        }
        for (_, _, new) in &changes {
            for (name, rules) in new.iter().flat_map(|(_, o)| &o.chains) {
                let _ = writeln!(out, "flush chain {ff} {t} {name}");
                for r in rules {
                    let _ = writeln!(out, "add rule {ff} {t} {name} {r}");
                }
            }
        }
        for name in &stale_chains {
            let _ = writeln!(out, "flush chain {ff} {t} {name}");
        }
        // Element difference, counted over every Service port that asks for an element.
        let mut touched: HashMap<Elem, u32> = HashMap::new();
        let mut order = Vec::new();
        for (_, old, new) in &changes {
            for e in old.iter().flat_map(|o| &o.elements) {
                let before = *self.refs.get(e).unwrap_or(&0);
                if let std::collections::hash_map::Entry::Vacant(v) = touched.entry(e.clone()) {
                    v.insert(before);
                    order.push(e.clone());
                }
                let c = self.refs.entry(e.clone()).or_default();
                *c = c.saturating_sub(1);
            }
            for e in new.iter().flat_map(|(_, o)| &o.elements) {
                let before = *self.refs.get(e).unwrap_or(&0);
                if let std::collections::hash_map::Entry::Vacant(v) = touched.entry(e.clone()) {
                    v.insert(before);
                    order.push(e.clone());
                }
                *self.refs.entry(e.clone()).or_default() += 1;
            }
        }
        for e in &order {
            if touched[e] > 0 && self.refs.get(e).copied().unwrap_or(0) == 0 {
                let _ = writeln!(out, "delete element {ff} {t} {} {{ {} }}", e.set, e.key);
            }
        }
        for e in &order {
            if touched[e] == 0 && self.refs.get(e).copied().unwrap_or(0) > 0 {
                add_element(out, f, e);
            }
        }
        self.refs.retain(|_, c| *c > 0);
        for name in &stale_chains {
            let _ = writeln!(out, "delete chain {ff} {t} {name}");
        }
        for name in &stale_sets {
            let _ = writeln!(out, "delete set {ff} {t} {name}");
        }
        for (key, _, new) in changes {
            match new {
                Some(n) => {
                    self.services.insert(key, n);
                }
                None => {
                    self.services.remove(&key);
                }
            }
        }
    }
}

fn add_element(out: &mut String, f: Family, e: &Elem) {
    let comment = e
        .comment
        .as_ref()
        .map(|c| format!(" comment \"{c}\""))
        .unwrap_or_default();
    let value = e
        .value
        .as_ref()
        .map(|v| format!(" : {v}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "add element {} {TABLE} {} {{ {}{comment}{value} }}",
        fam(f),
        e.set,
        e.key
    );
}

/// Tables, base chains, fixed chains, sets and maps, and the node's own elements.
fn skeleton(m: &Model, ctx: &Ctx) -> String {
    let f = ctx.family;
    let (ff, t, a) = (fam(f), TABLE, addr_type(f));
    let mark = format!("{:#x}", ctx.mark);
    let no_localhost = match f {
        Family::V4 => "ip daddr != 127.0.0.0/8",
        Family::V6 => "ip6 daddr != ::1",
    };
    let nodeport_ips = model::nodeport_ips(m, f);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "add table {ff} {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    let _ = writeln!(
        o,
        "add set {ff} {t} cluster-ips {{ type {a} ; comment \"Active ClusterIPs\" ; }}"
    );
    if let NodePortIps::List(_) = nodeport_ips {
        let _ = writeln!(o, "add set {ff} {t} nodeport-ips {{ type {a} ; comment \"IPs that accept NodePort traffic\" ; }}");
    }
    let _ = writeln!(o, "add set {ff} {t} hairpin-connections {{ type {a} . {a} . inet_proto . inet_service ; comment \"service hairpin connections\" ; }}");
    for (name, key, comment) in [
        (
            "firewall-ips",
            format!("{a} . inet_proto . inet_service"),
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service".into(),
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            "no-endpoint-services",
            format!("{a} . inet_proto . inet_service"),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            "service-ips",
            format!("{a} . inet_proto . inet_service"),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            "service-nodeports",
            "inet_proto . inet_service".into(),
            "NodePort traffic",
        ),
    ] {
        let _ = writeln!(
            o,
            "add map {ff} {t} {name} {{ type {key} : verdict ; comment \"{comment}\" ; }}"
        );
    }
    for (name, hook) in [
        ("cluster-ips-check", ""),
        (
            "filter-prerouting-pre-dnat",
            "type filter hook prerouting priority -110",
        ),
        (
            "filter-output-pre-dnat",
            "type filter hook output priority -110",
        ),
        ("filter-forward", "type filter hook forward priority 0"),
        ("filter-input", "type filter hook input priority 0"),
        ("filter-output", "type filter hook output priority 0"),
        ("firewall-check", ""),
        ("masquerading", ""),
        ("nat-output", "type nat hook output priority -100"),
        ("nat-postrouting", "type nat hook postrouting priority 100"),
        ("nat-prerouting", "type nat hook prerouting priority -100"),
        ("nodeport-endpoints-check", ""),
        (
            "reject-chain",
            "comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\"",
        ),
        ("services", ""),
        ("service-endpoints-check", ""),
    ] {
        if hook.is_empty() {
            let _ = writeln!(o, "add chain {ff} {t} {name}");
        } else {
            let _ = writeln!(o, "add chain {ff} {t} {name} {{ {hook} ; }}");
        }
    }
    let mut rule = |chain: &str, r: &str| {
        let _ = writeln!(o, "add rule {ff} {t} {chain} {r}");
    };
    rule("cluster-ips-check", &format!("{ff} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""));
    let service_cidrs: Vec<String> = m
        .service_cidrs
        .iter()
        .filter(|c| {
            matches!(
                (c, f),
                (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
            )
        })
        .map(|c| c.to_string())
        .collect();
    if !service_cidrs.is_empty() {
        rule(
            "cluster-ips-check",
            &format!(
                "{ff} daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                service_cidrs.join(", ")
            ),
        );
    }
    rule(
        "filter-prerouting-pre-dnat",
        "ct state new jump firewall-check",
    );
    rule(
        "filter-forward",
        "ct state new jump service-endpoints-check",
    );
    rule("filter-forward", "ct state new jump cluster-ips-check");
    rule("filter-input", "ct state new jump nodeport-endpoints-check");
    rule("filter-input", "ct state new jump service-endpoints-check");
    rule("filter-output", "ct state new jump service-endpoints-check");
    rule("filter-output-pre-dnat", "ct state new jump firewall-check");
    rule("filter-output", "ct state new jump cluster-ips-check");
    rule(
        "firewall-check",
        &format!("{ff} daddr . meta l4proto . th dport vmap @firewall-ips"),
    );
    rule(
        "masquerading",
        &format!("mark and {mark} != 0 mark set mark xor {mark} masquerade fully-random"),
    );
    rule("masquerading", &format!("ct status dnat {ff} saddr . {ff} daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random"));
    rule("nat-output", "jump services");
    rule("nat-postrouting", "jump masquerading");
    rule("nat-prerouting", "jump services");
    let nodeport_match = match &nodeport_ips {
        NodePortIps::List(_) => format!("{ff} daddr @nodeport-ips"),
        NodePortIps::AllLocal => format!("fib daddr type local {no_localhost}"),
    };
    rule(
        "nodeport-endpoints-check",
        &format!("{nodeport_match} meta l4proto . th dport vmap @no-endpoint-nodeports"),
    );
    rule("reject-chain", "reject");
    let pods: Vec<String> = ctx.pod_cidrs.iter().map(|c| c.to_string()).collect();
    if m.masquerade_all {
        rule("services", &format!("{ff} daddr @cluster-ips mark set mark or {mark} comment \"masquerade all clusterIP traffic\""));
    } else if !pods.is_empty() {
        rule("services", &format!("{ff} daddr @cluster-ips {ff} saddr != {} mark set mark or {mark} comment \"masquerade clusterIP traffic from outside cluster\"", anon(&pods)));
    }
    rule(
        "services",
        &format!("{ff} daddr . meta l4proto . th dport vmap @service-ips"),
    );
    rule(
        "services",
        &format!("{nodeport_match} meta l4proto . th dport vmap @service-nodeports"),
    );
    rule(
        "service-endpoints-check",
        &format!("{ff} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    );
    if let NodePortIps::List(ips) = nodeport_ips {
        if !ips.is_empty() {
            let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            let _ = writeln!(
                o,
                "add element {ff} {t} nodeport-ips {{ {} }}",
                ips.join(", ")
            );
        }
    }
    o
}

/// The chains, sets and elements of one Service port in one family (upstream's
/// `syncProxyRules` loop body).
fn service_objects(sp: &ServicePort, ctx: &Ctx) -> SvcObjs {
    let f = ctx.family;
    let ff = fam(f);
    let mut o = SvcObjs::default();
    let Some(cip) = sp.cluster_ip(f) else {
        return o;
    };
    let base = names::base(sp);
    let svc_chain = names::service_chain(&base);
    let local_chain = names::local_chain(&base);
    let ext_chain = names::external_chain(&base);
    let fw_chain = names::firewall_chain(&base);
    let proto = sp.protocol.name();
    let mark = format!("{:#x}", ctx.mark);
    let cat = categorize(sp, f, ctx.zone.as_deref());
    let uses_cluster_chain = !cat.cluster.is_empty();
    let uses_local_chain = !cat.local.is_empty();
    let has_internal = if sp.internal_policy_local {
        uses_local_chain
    } else {
        uses_cluster_chain
    };
    let has_external = if sp.external_policy_local {
        uses_local_chain
    } else {
        uses_cluster_chain
    };
    let internal_chain = if sp.internal_policy_local {
        &local_chain
    } else {
        &svc_chain
    };
    let verdict = |has: bool| {
        if !cat.has_any {
            "goto reject-chain".to_string()
        } else if !has {
            "drop".to_string()
        } else {
            String::new()
        }
    };
    let id = sp.id();
    let key = |ip: IpAddr| format!("{ip} . {proto} . {}", sp.port);
    let elem = |set, key: String, value: String, comment: Option<String>| Elem {
        set,
        key,
        value: Some(value),
        comment,
    };

    o.elements.push(Elem {
        set: "cluster-ips",
        key: cip.to_string(),
        value: None,
        comment: None,
    });
    if has_internal {
        o.elements.push(elem(
            "service-ips",
            key(cip),
            format!("goto {internal_chain}"),
            None,
        ));
    } else {
        o.elements.push(elem(
            "no-endpoint-services",
            key(cip),
            verdict(has_internal),
            Some(id.clone()),
        ));
    }
    let external_ips: Vec<IpAddr> = sp
        .external_ips
        .iter()
        .chain(&sp.load_balancer_ips)
        .copied()
        .filter(|ip| Family::of(ip) == f)
        .collect();
    let uses_external_chain = cat.has_any && sp.externally_accessible();
    for ip in &external_ips {
        if uses_external_chain {
            o.elements.push(elem(
                "service-ips",
                key(*ip),
                format!("goto {ext_chain}"),
                None,
            ));
        }
        if !has_external {
            o.elements.push(elem(
                "no-endpoint-services",
                key(*ip),
                verdict(has_external),
                Some(id.clone()),
            ));
        }
    }
    if let Some(np) = sp.node_port {
        let k = format!("{proto} . {np}");
        if uses_external_chain {
            o.elements.push(elem(
                "service-nodeports",
                k.clone(),
                format!("goto {ext_chain}"),
                None,
            ));
        }
        if !has_external {
            o.elements.push(elem(
                "no-endpoint-nodeports",
                k,
                verdict(has_external),
                Some(id.clone()),
            ));
        }
    }
    let ranges: Vec<String> = sp
        .load_balancer_source_ranges
        .iter()
        .filter(|c| {
            matches!(
                (c, f),
                (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
            )
        })
        .map(|c| c.to_string())
        .collect();
    let lb_ips: Vec<IpAddr> = sp
        .load_balancer_ips
        .iter()
        .copied()
        .filter(|ip| Family::of(ip) == f)
        .collect();
    if !ranges.is_empty() && !lb_ips.is_empty() {
        for ip in &lb_ips {
            o.elements.push(elem(
                "firewall-ips",
                key(*ip),
                format!("goto {fw_chain}"),
                None,
            ));
        }
        o.chains.push((
            fw_chain.clone(),
            vec![format!("{ff} saddr != {{ {} }} drop", ranges.join(", "))],
        ));
    }
    // Hairpin: local endpoints only (G4).
    let mut hairpin = HashSet::new();
    for ep in cat.cluster.iter().chain(&cat.local).filter(|e| e.local) {
        if hairpin.insert((ep.ip, ep.port)) {
            o.elements.push(Elem {
                set: "hairpin-connections",
                key: format!("{} . {} . {proto} . {}", ep.ip, ep.ip, ep.port),
                value: None,
                comment: None,
            });
        }
    }

    let mut endpoint_chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut endpoint_rules = |eps: &[&Endpoint], o: &mut SvcObjs| -> Vec<String> {
        if eps.is_empty() {
            return Vec::new();
        }
        let n = eps.len();
        match sp.affinity_timeout {
            None => {
                let map: Vec<String> = eps
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("{i} : {} . {}", e.ip, e.port))
                    .collect();
                vec![format!(
                    "meta l4proto {proto} dnat {ff} addr . port to numgen random mod {n} map {{ {} }}",
                    map.join(" , ")
                )]
            }
            Some(timeout) => {
                let mut rules = Vec::new();
                let mut vmap = Vec::new();
                for (i, e) in eps.iter().enumerate() {
                    let b = endpoint_base(sp, e);
                    let (set, chain) = (format!("affinity-{b}"), format!("endpoint-{b}"));
                    rules.push(format!("{ff} saddr @{set} goto {chain}"));
                    vmap.push(format!("{i} : goto {chain}"));
                    if !endpoint_chains.iter().any(|(c, _)| *c == chain) {
                        o.sets.push((
                            set.clone(),
                            format!(
                                "type {} ; flags dynamic,timeout ; timeout {timeout}s ;",
                                addr_type(f)
                            ),
                        ));
                        let to = match e.ip {
                            IpAddr::V4(a) => format!("{a}:{}", e.port),
                            IpAddr::V6(a) => format!("[{a}]:{}", e.port),
                        };
                        endpoint_chains.push((
                            chain,
                            vec![
                                format!("update @{set} {{ {ff} saddr }}"),
                                format!("meta l4proto {proto} dnat {ff} to {to}"),
                            ],
                        ));
                    }
                }
                rules.push(format!(
                    "numgen random mod {n} vmap {{ {} }}",
                    vmap.join(" , ")
                ));
                rules
            }
        }
    };
    if uses_cluster_chain {
        let rules = endpoint_rules(&cat.cluster, &mut o);
        o.chains.push((svc_chain.clone(), rules));
    }
    if uses_local_chain {
        let rules = endpoint_rules(&cat.local, &mut o);
        o.chains.push((local_chain.clone(), rules));
    }
    if uses_external_chain {
        let mut rules = Vec::new();
        if sp.external_policy_local {
            if uses_cluster_chain {
                if !ctx.pod_cidrs.is_empty() {
                    let pods: Vec<String> = ctx.pod_cidrs.iter().map(|c| c.to_string()).collect();
                    rules.push(format!(
                        "{ff} saddr {} goto {svc_chain} comment \"short-circuit pod traffic\"",
                        anon(&pods)
                    ));
                }
                rules.push(format!("fib saddr type local mark set mark or {mark} comment \"masquerade local traffic\""));
                rules.push(format!(
                    "fib saddr type local goto {svc_chain} comment \"short-circuit local traffic\""
                ));
            }
            if uses_local_chain {
                rules.push(format!("goto {local_chain}"));
            }
        } else {
            rules.push(format!("mark set mark or {mark} comment \"masquerade\""));
            if uses_cluster_chain {
                rules.push(format!("goto {svc_chain}"));
            }
        }
        o.chains.push((ext_chain, rules));
    }
    o.chains.extend(endpoint_chains);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::options::Options;
    use crate::nft::testns::in_netns;
    use crate::objects::input::ClusterObjects;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.0.10}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  type: NodePort
  clusterIP: 10.96.0.1
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.1], conditions: {ready: true}, nodeName: node-a}
- {addresses: [10.244.2.1], conditions: {ready: true}, nodeName: node-b}
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.2
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  loadBalancerSourceRanges: [203.0.113.0/25]
  ports:
  - {name: https, port: 443, protocol: TCP, targetPort: 8443, nodePort: 30443}
status: {loadBalancer: {ingress: [{ip: 172.16.0.1}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-1, namespace: ns, labels: {kubernetes.io/service-name: sticky}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.2], conditions: {ready: true}, nodeName: node-a}
- {addresses: [10.244.3.2], conditions: {ready: true}, nodeName: node-c}
ports:
- {name: https, port: 8443, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns}
spec:
  clusterIP: 10.96.0.3
  ports:
  - {name: http, port: 80, protocol: TCP}
"#;

    fn model_of(yaml: &str) -> Model {
        let mut objects = ClusterObjects::default();
        objects.add_text("t.yaml", yaml, &mut Vec::new()).unwrap();
        objects.sort();
        let opts = Options {
            hostname: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Options::default()
        };
        model::build(&objects, &opts).0
    }

    /// Loads the scripts one after the other into a fresh namespace; the listing of the
    /// table and of its chains, or `None` where the kernel tests cannot run.
    fn load(scripts: &[&str]) -> Option<(String, String)> {
        in_netns(|ns| {
            for (i, s) in scripts.iter().enumerate() {
                let path = std::env::temp_dir().join(format!(
                    "kntp-upstream-{}-{i}-{:?}.nft",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::write(&path, s).unwrap();
                let listing = std::panic::catch_unwind(|| ns.nft(&["-f", path.to_str().unwrap()]));
                let _ = std::fs::remove_file(&path);
                if let Err(e) = listing {
                    std::panic::resume_unwind(e);
                }
            }
            (
                ns.nft(&["list", "table", "ip", TABLE]),
                ns.nft(&["list", "chains", "ip"]),
            )
        })
    }

    /// A listing as a sorted multiset of its items: the kernel lists chains in creation
    /// order and elements in hash order, which a partial sync changes.
    fn items(listing: &str) -> Vec<String> {
        let mut v: Vec<String> = listing
            .split(['\n', ','])
            .map(|s| {
                s.trim()
                    .trim_start_matches("elements = {")
                    .trim()
                    .to_string()
            })
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn loads_with_nft_f_with_one_chain_per_service_port() {
        let m = model_of(CLUSTER);
        let script = Layout::new(&m).script();
        let Some((table, chains)) = load(&[&script]) else {
            return;
        };
        let service_chains: Vec<&str> = chains
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("chain service-") && l.contains('/'))
            .collect();
        // web:http, web:dns and sticky:https have endpoints; empty has none (no chain).
        assert_eq!(service_chains.len(), 3, "{chains}");
        for p in ["ns/web/tcp/http", "ns/web/udp/dns", "ns/sticky/tcp/https"] {
            assert!(
                service_chains.iter().any(|c| c.contains(p)),
                "{p}: {chains}"
            );
        }
        // The kernel lists upstream's anonymous DNAT map back.
        assert!(
            table.contains("meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.244.1.1 . 8080, 1 : 10.244.2.1 . 8080 }"),
            "{table}"
        );
        // Affinity: one chain and one set per endpoint; eTP=Local: local and external chains.
        assert_eq!(table.matches("chain endpoint-").count(), 2, "{table}");
        assert_eq!(table.matches("flags dynamic,timeout").count(), 2, "{table}");
        assert!(table.contains("chain local-") && table.contains("chain external-"));
        assert!(
            table.contains("10.96.0.3 . tcp . 80 comment \"ns/empty:http\" : goto reject-chain"),
            "{table}"
        );
        assert!(
            table.contains("10.244.1.1 . 10.244.1.1 . tcp . 8080"),
            "{table}"
        );
    }

    #[test]
    fn loading_in_chunks_makes_the_same_table() {
        let layout = Layout::new(&model_of(CLUSTER));
        let chunks = layout.script_chunks(1);
        assert_eq!(
            chunks.len(),
            1 + 4,
            "the skeleton, then one script per Service port"
        );
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let Some((chunked, _)) = load(&refs) else {
            return;
        };
        let (whole, _) = load(&[&layout.script()]).unwrap();
        assert_eq!(items(&chunked), items(&whole));
    }

    #[test]
    fn a_partial_sync_leaves_what_a_fresh_load_makes() {
        let before = model_of(CLUSTER);
        // One endpoint moves in each Service; `empty` gets an endpoint; a new Service.
        let changed = CLUSTER
            .replace("10.244.2.1", "10.244.2.9")
            .replace("10.244.3.2", "10.244.3.9")
            + r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: empty-1, namespace: ns, labels: {kubernetes.io/service-name: empty}}
addressType: IPv4
endpoints:
- {addresses: [10.244.4.1], conditions: {ready: true}}
ports:
- {name: http, port: 80, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: added, namespace: ns}
spec:
  clusterIP: 10.96.0.4
  ports:
  - {name: http, port: 80, protocol: TCP}
"#;
        let after = model_of(&changed);
        let mut layout = Layout::new(&before);
        let cold = layout.script();
        let partial = layout.sync(&after);
        // Elements that stay are not sent again (web's ClusterIP, shared by its two ports).
        assert!(!partial.contains("cluster-ips { 10.96.0.1 }"), "{partial}");
        assert!(partial.contains("add element ip kube-proxy-upstream cluster-ips { 10.96.0.4 }"));
        assert!(partial.contains("flush chain ip kube-proxy-upstream service-"));
        assert!(partial.contains("delete chain ip kube-proxy-upstream endpoint-"));
        assert_eq!(
            layout.sync(&after),
            "",
            "a second sync of the same model is empty"
        );
        let Some((synced, _)) = load(&[&cold, &partial]) else {
            return;
        };
        let (fresh, _) = load(&[&Layout::new(&after).script()]).unwrap();
        assert_eq!(
            items(&synced),
            items(&fresh),
            "synced:\n{synced}\nfresh:\n{fresh}"
        );
        assert!(synced.contains("10.244.2.9 . 8080") && !synced.contains("10.244.2.1 "));
    }
}
