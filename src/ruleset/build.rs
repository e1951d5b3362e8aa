//! Model -> IR. The layout (documented in rules/README.md) keeps a fixed set of base
//! chains, sets and maps whatever the cluster size: Services only add map elements and
//! regular chains, never sets, because the kernel looks sets up by a linear scan.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use std::sync::OnceLock;

use super::ir::*;
use super::names;
use crate::input::Skipped;
use crate::model::{categorize, nodeport_ips, Endpoint, Model, NodePortIps, ServicePort};
use crate::nft::parse;

pub const TABLE_NAME: &str = "kube-nftproxy";

// Set and map names.
const CLUSTER_IPS: &str = "cluster-ips";
const NODEPORT_IPS: &str = "nodeport-ips";
const HAIRPIN: &str = "hairpin-connections";
const AFFINITY: &str = "affinity";
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_EP_SERVICES: &str = "no-endpoint-services";
const NO_EP_NODEPORTS: &str = "no-endpoint-nodeports";
const FIREWALL_IPS: &str = "firewall-ips";

// Fixed regular chains.
const SERVICES: &str = "services";
const MASQUERADING: &str = "masquerading";
const NODEPORT_EP_CHECK: &str = "nodeport-endpoints-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const REJECT_CHAIN: &str = "reject-chain";

const SKELETON: &str = include_str!("../../rules/skeleton.nft");

/// The parsed `rules/skeleton.nft`. It is part of the binary and a unit test parses it, so
/// failing here would be a build defect, not bad input.
pub fn skeleton() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let rs = parse::parse_script(SKELETON).expect("rules/skeleton.nft parses");
        rs.tables
            .into_iter()
            .next()
            .expect("rules/skeleton.nft has a table")
    })
}

/// Builds one table per family the node proxies, plus the notes for anything dropped.
pub fn build(m: &Model) -> (Ruleset, Vec<Skipped>) {
    let mut notes = Vec::new();
    let tables = m
        .families
        .iter()
        .map(|f| TableBuilder::new(m, *f).build(&mut notes))
        .collect();
    (Ruleset { tables }, notes)
}

struct TableBuilder<'a> {
    m: &'a Model,
    f: Family,
    mark: u32,
    /// Elements per set name, kept sorted and unique by key.
    elements: BTreeMap<&'static str, BTreeMap<Vec<Value>, Option<ElementData>>>,
    chains: Vec<Chain>,
}

fn regular(name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        rules,
        ..Chain::regular(name)
    }
}

fn cmp(field: Field, op: CmpOp, net: IpNet) -> Expr {
    Expr::AddrCmp {
        field,
        op,
        addr: net.network(),
        prefix_len: net.prefix_len(),
    }
}

fn host(field: Field, ip: IpAddr) -> Expr {
    cmp(field, CmpOp::Eq, IpNet::from(ip))
}

fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.into())
}

const PORT_KEY: [Field; 2] = [Field::L4Proto, Field::Dport];
const CONN_KEY: [Field; 4] = [Field::Saddr, Field::Daddr, Field::L4Proto, Field::Dport];

impl<'a> TableBuilder<'a> {
    fn new(m: &'a Model, f: Family) -> Self {
        TableBuilder {
            m,
            f,
            mark: m.masquerade_mark,
            elements: BTreeMap::new(),
            chains: Vec::new(),
        }
    }

    fn loopback(&self) -> IpNet {
        match self.f {
            Family::V4 => {
                IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).unwrap_or_default()
            }
            Family::V6 => IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }
    }

    fn cluster_cidrs(&self) -> Vec<IpNet> {
        self.m
            .cluster_cidrs
            .iter()
            .copied()
            .filter(|c| Family::of(&c.addr()) == self.f)
            .collect()
    }

    /// Adds an element; a key already taken by an earlier Service wins and the later one
    /// is noted, since a map holds one verdict per key.
    fn add(
        &mut self,
        set: &'static str,
        key: Vec<Value>,
        data: Option<ElementData>,
        who: &ServicePort,
        notes: &mut Vec<Skipped>,
    ) {
        let entry = self.elements.entry(set).or_default();
        if let Some(old) = entry.get(&key) {
            if old != &data {
                notes.push(Skipped {
                    object: format!("Service {}/{}", who.namespace, who.name),
                    reason: format!(
                        "{set} entry {} is already used by another Service; ignored",
                        crate::nft::text::element_text(&Element { key, data: None })
                    ),
                });
            }
            return;
        }
        entry.insert(key, data);
    }

    fn build(mut self, notes: &mut Vec<Skipped>) -> Table {
        let services: Vec<&ServicePort> = self
            .m
            .services
            .iter()
            .filter(|s| s.cluster_ip(self.f).is_some())
            .collect();
        let nodeports = nodeport_ips(self.m, self.f);
        if let NodePortIps::List(ips) = &nodeports {
            for ip in ips {
                self.elements
                    .entry(NODEPORT_IPS)
                    .or_default()
                    .insert(vec![Value::Addr(*ip)], None);
            }
        }
        for sp in services {
            self.service_port(sp, notes);
        }
        self.finish(&nodeports)
    }

    /// Fills the embedded skeleton: elements into its sets, the cluster-dependent rules
    /// into its fixed chains.
    fn finish(&mut self, nodeports: &NodePortIps) -> Table {
        let mut t = skeleton().clone();
        t.family = self.f;
        for s in &mut t.sets {
            if let Some(elems) = self.elements.remove(s.name.as_str()) {
                s.elements = elems
                    .into_iter()
                    .map(|(key, data)| Element { key, data })
                    .collect();
            }
        }
        let mark = self.mark;
        let not_loopback = cmp(Field::Daddr, CmpOp::Neq, self.loopback());
        let nodeport_match = |v: Verdict| match nodeports {
            NodePortIps::List(_) => Rule::new(
                vec![Expr::Lookup {
                    key: vec![Field::Daddr],
                    set: NODEPORT_IPS.into(),
                }],
                Some(v),
            ),
            NodePortIps::AllLocal => Rule::new(
                vec![Expr::FibLocal(FibAddr::Daddr), not_loopback.clone()],
                Some(v),
            ),
        };
        let vmap = |key: &[Field], map: &str| Verdict::Vmap {
            key: key.to_vec(),
            map: map.into(),
        };
        let in_cluster_ips = Expr::Lookup {
            key: vec![Field::Daddr],
            set: CLUSTER_IPS.into(),
        };
        let masquerade_mark = if self.m.masquerade_all {
            Some(
                Rule::new(vec![in_cluster_ips, Expr::MarkOr(mark)], None)
                    .with_comment("masquerade all clusterIP traffic"),
            )
        } else if !self.cluster_cidrs().is_empty() {
            let mut exprs = vec![in_cluster_ips];
            exprs.extend(
                self.cluster_cidrs()
                    .into_iter()
                    .map(|c| cmp(Field::Saddr, CmpOp::Neq, c)),
            );
            exprs.push(Expr::MarkOr(mark));
            Some(
                Rule::new(exprs, None)
                    .with_comment("masquerade clusterIP traffic from outside the cluster"),
            )
        } else {
            None
        };
        let service_cidrs: Vec<IpNet> = self
            .m
            .service_cidrs
            .iter()
            .copied()
            .filter(|c| Family::of(&c.addr()) == self.f)
            .collect();
        for c in &mut t.chains {
            match c.name.as_str() {
                SERVICES => {
                    if let Some(r) = masquerade_mark.clone() {
                        c.rules.insert(0, r);
                    }
                    c.rules
                        .push(nodeport_match(vmap(&PORT_KEY, SERVICE_NODEPORTS)));
                }
                MASQUERADING => c.rules.insert(
                    0,
                    Rule::new(
                        vec![Expr::MarkSet(mark), Expr::MarkXor(mark)],
                        Some(Verdict::Masquerade),
                    ),
                ),
                NODEPORT_EP_CHECK => c
                    .rules
                    .push(nodeport_match(vmap(&PORT_KEY, NO_EP_NODEPORTS))),
                CLUSTER_IPS_CHECK => {
                    for cidr in &service_cidrs {
                        c.rules.push(
                            Rule::new(
                                vec![cmp(Field::Daddr, CmpOp::Eq, *cidr)],
                                Some(Verdict::Drop),
                            )
                            .with_comment("drop traffic to unallocated ClusterIPs"),
                        );
                    }
                }
                _ => {}
            }
        }
        t.chains.append(&mut self.chains);
        t
    }

    fn service_port(&mut self, sp: &ServicePort, notes: &mut Vec<Skipped>) {
        let f = self.f;
        let Some(cip) = sp.cluster_ip(f) else { return };
        let cat = categorize(sp, f, self.m.node_zone.as_deref());
        let of_family = |v: &[IpAddr]| -> Vec<IpAddr> {
            v.iter().copied().filter(|ip| Family::of(ip) == f).collect()
        };
        let external_ips = of_family(&sp.external_ips);
        let lb_ips = of_family(&sp.load_balancer_ips);
        let externally_accessible =
            sp.node_port.is_some() || !external_ips.is_empty() || !lb_ips.is_empty();
        let etp_local = sp.external_policy_local && externally_accessible;

        let base = names::base(sp);
        let cluster_chain = names::service_chain(&base);
        let local_chain = names::local_chain(&base);
        let external_chain = names::external_chain(&base);
        let firewall_chain = names::firewall_chain(&base);
        let has_cluster = !cat.cluster.is_empty();
        let has_local = !cat.local.is_empty();
        let (internal_chain, has_internal) = if sp.internal_policy_local {
            (&local_chain, has_local)
        } else {
            (&cluster_chain, has_cluster)
        };
        let has_external = if etp_local { has_local } else { has_cluster };
        let uses_external_chain = cat.has_any && externally_accessible;

        let reject = goto(REJECT_CHAIN);
        let internal_filter = if cat.has_any {
            Verdict::Drop
        } else {
            reject.clone()
        };
        let external_filter = internal_filter.clone();

        let proto = Value::Proto(sp.protocol);
        let port = Value::Port(sp.port);
        let vip = |ip: IpAddr| vec![Value::Addr(ip), proto, port];

        self.add(CLUSTER_IPS, vec![Value::Addr(cip)], None, sp, notes);
        if has_internal {
            let v = Some(ElementData::Verdict(goto(internal_chain)));
            self.add(SERVICE_IPS, vip(cip), v, sp, notes);
        } else {
            let v = Some(ElementData::Verdict(internal_filter));
            self.add(NO_EP_SERVICES, vip(cip), v, sp, notes);
        }
        for ip in external_ips.iter().chain(lb_ips.iter()) {
            if uses_external_chain {
                let v = Some(ElementData::Verdict(goto(&external_chain)));
                self.add(SERVICE_IPS, vip(*ip), v, sp, notes);
            }
            if !has_external {
                let v = Some(ElementData::Verdict(external_filter.clone()));
                self.add(NO_EP_SERVICES, vip(*ip), v, sp, notes);
            }
        }
        let ranges: Vec<IpNet> = sp
            .load_balancer_source_ranges
            .iter()
            .copied()
            .filter(|r| Family::of(&r.addr()) == f)
            .collect();
        let uses_firewall = !lb_ips.is_empty() && !ranges.is_empty();
        if uses_firewall {
            for ip in &lb_ips {
                let v = Some(ElementData::Verdict(goto(&firewall_chain)));
                self.add(FIREWALL_IPS, vip(*ip), v, sp, notes);
            }
        }
        if let Some(np) = sp.node_port {
            let key = vec![proto, Value::Port(np)];
            if uses_external_chain {
                let v = Some(ElementData::Verdict(goto(&external_chain)));
                self.add(SERVICE_NODEPORTS, key.clone(), v, sp, notes);
            }
            if !has_external {
                let v = Some(ElementData::Verdict(external_filter));
                self.add(NO_EP_NODEPORTS, key, v, sp, notes);
            }
        }
        for ep in cat
            .cluster
            .iter()
            .chain(cat.local.iter())
            .filter(|e| e.local)
        {
            let key = vec![
                Value::Addr(ep.ip),
                Value::Addr(ep.ip),
                proto,
                Value::Port(ep.port),
            ];
            self.elements.entry(HAIRPIN).or_default().insert(key, None);
        }

        if has_cluster {
            let rules = self.endpoint_rules(sp, &cat.cluster);
            self.chains.push(regular(&cluster_chain, rules));
        }
        if has_local {
            let rules = self.endpoint_rules(sp, &cat.local);
            self.chains.push(regular(&local_chain, rules));
        }
        if uses_external_chain {
            let mut rules = Vec::new();
            if !etp_local {
                rules.push(
                    Rule::new(vec![Expr::MarkOr(self.mark)], None).with_comment("masquerade"),
                );
                rules.push(Rule::new(vec![], Some(goto(&cluster_chain))));
            } else {
                // Traffic from pods and from the node itself is not subject to the external
                // policy: it behaves as if it went out to the load balancer and came back.
                if has_cluster {
                    for c in self.cluster_cidrs() {
                        rules.push(
                            Rule::new(
                                vec![cmp(Field::Saddr, CmpOp::Eq, c)],
                                Some(goto(&cluster_chain)),
                            )
                            .with_comment("short-circuit pod traffic"),
                        );
                    }
                }
                rules.push(
                    Rule::new(
                        vec![Expr::FibLocal(FibAddr::Saddr), Expr::MarkOr(self.mark)],
                        None,
                    )
                    .with_comment("masquerade local traffic"),
                );
                if has_cluster {
                    rules.push(
                        Rule::new(
                            vec![Expr::FibLocal(FibAddr::Saddr)],
                            Some(goto(&cluster_chain)),
                        )
                        .with_comment("short-circuit local traffic"),
                    );
                }
                if has_local {
                    rules.push(Rule::new(vec![], Some(goto(&local_chain))));
                }
            }
            self.chains.push(regular(&external_chain, rules));
        }
        if uses_firewall {
            let mut rules: Vec<Rule> = ranges
                .iter()
                .map(|r| {
                    Rule::new(
                        vec![cmp(Field::Saddr, CmpOp::Eq, *r)],
                        Some(Verdict::Return),
                    )
                })
                .collect();
            // A node reaching a VIP-style load balancer often loops back with the VIP as
            // source; allow that when the node itself is inside the allowed ranges.
            let primary = self.m.node_ips.iter().find(|ip| Family::of(ip) == f);
            if primary.is_some_and(|p| ranges.iter().any(|r| r.contains(p))) {
                for ip in &lb_ips {
                    rules.push(Rule::new(
                        vec![host(Field::Saddr, *ip)],
                        Some(Verdict::Return),
                    ));
                }
            }
            rules.push(
                Rule::new(vec![], Some(Verdict::Drop))
                    .with_comment("source not in loadBalancerSourceRanges"),
            );
            self.chains.push(regular(&firewall_chain, rules));
        }
    }

    /// Equal-probability choice without a map: rule i of n matches with probability
    /// 1/(n-i) among the packets that reach it, which gives every endpoint 1/n overall.
    fn endpoint_rules(&self, sp: &ServicePort, eps: &[&Endpoint]) -> Vec<Rule> {
        let mut rules = Vec::new();
        if sp.affinity_timeout.is_some() {
            rules.push(
                Rule::new(
                    vec![],
                    Some(Verdict::DnatMap {
                        proto: sp.protocol,
                        key: CONN_KEY.to_vec(),
                        map: AFFINITY.into(),
                    }),
                )
                .with_comment("session affinity"),
            );
        }
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let left = (n - i) as u32;
            let mut exprs = Vec::new();
            if left > 1 {
                exprs.push(Expr::Numgen {
                    modulus: left,
                    value: 0,
                });
            }
            if let Some(t) = sp.affinity_timeout {
                exprs.push(Expr::UpdateAffinity {
                    map: AFFINITY.into(),
                    key: CONN_KEY.to_vec(),
                    timeout: t,
                    addr: ep.ip,
                    port: ep.port,
                });
            }
            rules.push(Rule::new(
                exprs,
                Some(Verdict::Dnat {
                    proto: sp.protocol,
                    addr: ep.ip,
                    port: ep.port,
                }),
            ));
        }
        rules
    }
}
