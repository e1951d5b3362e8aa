//! Model -> IR. The layout (documented in rules/README.md) keeps a fixed set of base
//! chains, sets and maps whatever the cluster size: Services only add map elements and
//! regular chains, never sets, because the kernel looks sets up by a linear scan.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::ir::*;
use super::names;
use crate::input::Skipped;
use crate::model::{categorize, nodeport_ips, Endpoint, Model, NodePortIps, ServicePort};

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
const SERVICE_EP_CHECK: &str = "service-endpoints-check";
const NODEPORT_EP_CHECK: &str = "nodeport-endpoints-check";
const FIREWALL_CHECK: &str = "firewall-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const REJECT_CHAIN: &str = "reject-chain";

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

fn set(name: &str, key: &[KeyType], data: Option<MapData>, comment: &str) -> Set {
    Set {
        name: name.into(),
        key: key.to_vec(),
        data,
        flags: SetFlags::default(),
        timeout: None,
        comment: Some(comment.into()),
        elements: vec![],
    }
}

fn base(name: &str, kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: Some(BaseChain {
            kind,
            hook,
            priority,
        }),
        comment: None,
        rules,
    }
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

fn jump_new(chain: &str) -> Rule {
    Rule::new(vec![Expr::CtStateNew], Some(Verdict::Jump(chain.into())))
}

fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.into())
}

const VIP_KEY: [Field; 3] = [Field::Daddr, Field::L4Proto, Field::Dport];
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
            Family::V4 => IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).unwrap_or_default(),
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
        let mut chains = self.static_chains(&nodeports);
        chains.append(&mut self.chains);
        let sets = self.sets();
        Table {
            family: self.f,
            name: TABLE_NAME.into(),
            comment: Some("rules for kube-nftproxy".into()),
            sets,
            chains,
        }
    }

    fn sets(&mut self) -> Vec<Set> {
        use KeyType::*;
        let mut sets = vec![
            set(CLUSTER_IPS, &[Addr], None, "Active ClusterIPs"),
            set(NODEPORT_IPS, &[Addr], None, "IPs that accept NodePort traffic"),
            set(
                HAIRPIN,
                &[Addr, Addr, Proto, Service],
                None,
                "local endpoints reaching themselves through a Service",
            ),
            Set {
                flags: SetFlags {
                    dynamic: true,
                    timeout: true,
                },
                ..set(
                    AFFINITY,
                    &[Addr, Addr, Proto, Service],
                    Some(MapData::Values(vec![Addr, Service])),
                    "ClientIP session affinity: client . VIP . proto . port to endpoint",
                )
            },
            set(
                SERVICE_IPS,
                &[Addr, Proto, Service],
                Some(MapData::Verdict),
                "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            set(
                SERVICE_NODEPORTS,
                &[Proto, Service],
                Some(MapData::Verdict),
                "NodePort traffic",
            ),
            set(
                NO_EP_SERVICES,
                &[Addr, Proto, Service],
                Some(MapData::Verdict),
                "vmap to drop or reject packets to services with no endpoints",
            ),
            set(
                NO_EP_NODEPORTS,
                &[Proto, Service],
                Some(MapData::Verdict),
                "vmap to drop or reject packets to service nodeports with no endpoints",
            ),
            set(
                FIREWALL_IPS,
                &[Addr, Proto, Service],
                Some(MapData::Verdict),
                "destinations that are subject to LoadBalancerSourceRanges",
            ),
        ];
        for s in &mut sets {
            if let Some(elems) = self.elements.remove(s.name.as_str()) {
                s.elements = elems
                    .into_iter()
                    .map(|(key, data)| Element { key, data })
                    .collect();
            }
        }
        sets
    }

    fn static_chains(&self, nodeports: &NodePortIps) -> Vec<Chain> {
        use ChainType::*;
        use Hook::*;
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

        let mut services = Vec::new();
        let in_cluster_ips = Expr::Lookup {
            key: vec![Field::Daddr],
            set: CLUSTER_IPS.into(),
        };
        if self.m.masquerade_all {
            services.push(
                Rule::new(vec![in_cluster_ips.clone(), Expr::MarkOr(mark)], None)
                    .with_comment("masquerade all clusterIP traffic"),
            );
        } else if !self.cluster_cidrs().is_empty() {
            let mut exprs = vec![in_cluster_ips.clone()];
            exprs.extend(
                self.cluster_cidrs()
                    .into_iter()
                    .map(|c| cmp(Field::Saddr, CmpOp::Neq, c)),
            );
            exprs.push(Expr::MarkOr(mark));
            services.push(
                Rule::new(exprs, None)
                    .with_comment("masquerade clusterIP traffic from outside the cluster"),
            );
        }
        services.push(Rule::new(vec![], Some(vmap(&VIP_KEY, SERVICE_IPS))));
        services.push(nodeport_match(vmap(&PORT_KEY, SERVICE_NODEPORTS)));

        let mut cluster_check = vec![Rule::new(vec![in_cluster_ips], Some(Verdict::Reject))
            .with_comment("reject traffic to invalid ports of ClusterIPs")];
        for c in self
            .m
            .service_cidrs
            .iter()
            .filter(|c| Family::of(&c.addr()) == self.f)
        {
            cluster_check.push(
                Rule::new(vec![cmp(Field::Daddr, CmpOp::Eq, *c)], Some(Verdict::Drop))
                    .with_comment("drop traffic to unallocated ClusterIPs"),
            );
        }

        vec![
            base(
                "filter-prerouting-pre-dnat",
                Filter,
                Prerouting,
                -110,
                vec![jump_new(FIREWALL_CHECK)],
            ),
            base(
                "filter-output-pre-dnat",
                Filter,
                Output,
                -110,
                vec![jump_new(FIREWALL_CHECK)],
            ),
            base(
                "filter-input",
                Filter,
                Input,
                0,
                vec![jump_new(NODEPORT_EP_CHECK), jump_new(SERVICE_EP_CHECK)],
            ),
            base(
                "filter-forward",
                Filter,
                Forward,
                0,
                vec![jump_new(SERVICE_EP_CHECK), jump_new(CLUSTER_IPS_CHECK)],
            ),
            base(
                "filter-output",
                Filter,
                Output,
                0,
                vec![jump_new(SERVICE_EP_CHECK), jump_new(CLUSTER_IPS_CHECK)],
            ),
            base(
                "nat-prerouting",
                Nat,
                Prerouting,
                -100,
                vec![Rule::new(vec![], Some(Verdict::Jump(SERVICES.into())))],
            ),
            base(
                "nat-output",
                Nat,
                Output,
                -100,
                vec![Rule::new(vec![], Some(Verdict::Jump(SERVICES.into())))],
            ),
            base(
                "nat-postrouting",
                Nat,
                Postrouting,
                100,
                vec![Rule::new(vec![], Some(Verdict::Jump(MASQUERADING.into())))],
            ),
            regular(SERVICES, services),
            regular(
                MASQUERADING,
                vec![
                    Rule::new(
                        vec![Expr::MarkSet(mark), Expr::MarkXor(mark)],
                        Some(Verdict::Masquerade),
                    ),
                    Rule::new(
                        vec![
                            Expr::CtStatusDnat,
                            Expr::Lookup {
                                key: CONN_KEY.to_vec(),
                                set: HAIRPIN.into(),
                            },
                        ],
                        Some(Verdict::Masquerade),
                    ),
                ],
            ),
            regular(
                SERVICE_EP_CHECK,
                vec![Rule::new(vec![], Some(vmap(&VIP_KEY, NO_EP_SERVICES)))],
            ),
            regular(
                NODEPORT_EP_CHECK,
                vec![nodeport_match(vmap(&PORT_KEY, NO_EP_NODEPORTS))],
            ),
            regular(
                FIREWALL_CHECK,
                vec![Rule::new(vec![], Some(vmap(&VIP_KEY, FIREWALL_IPS)))],
            ),
            regular(CLUSTER_IPS_CHECK, cluster_check),
            Chain {
                comment: Some("helper for @no-endpoint-services / @no-endpoint-nodeports".into()),
                ..regular(REJECT_CHAIN, vec![Rule::new(vec![], Some(Verdict::Reject))])
            },
        ]
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
        let externally_accessible = sp.node_port.is_some() || !external_ips.is_empty() || !lb_ips.is_empty();
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
        let internal_filter = if cat.has_any { Verdict::Drop } else { reject.clone() };
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
        for ep in cat.cluster.iter().chain(cat.local.iter()).filter(|e| e.local) {
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
                rules.push(Rule::new(vec![Expr::MarkOr(self.mark)], None).with_comment("masquerade"));
                rules.push(Rule::new(vec![], Some(goto(&cluster_chain))));
            } else {
                // Traffic from pods and from the node itself is not subject to the external
                // policy: it behaves as if it went out to the load balancer and came back.
                if has_cluster {
                    for c in self.cluster_cidrs() {
                        rules.push(
                            Rule::new(vec![cmp(Field::Saddr, CmpOp::Eq, c)], Some(goto(&cluster_chain)))
                                .with_comment("short-circuit pod traffic"),
                        );
                    }
                }
                rules.push(
                    Rule::new(vec![Expr::FibLocal(FibAddr::Saddr), Expr::MarkOr(self.mark)], None)
                        .with_comment("masquerade local traffic"),
                );
                if has_cluster {
                    rules.push(
                        Rule::new(vec![Expr::FibLocal(FibAddr::Saddr)], Some(goto(&cluster_chain)))
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
                .map(|r| Rule::new(vec![cmp(Field::Saddr, CmpOp::Eq, *r)], Some(Verdict::Return)))
                .collect();
            // A node reaching a VIP-style load balancer often loops back with the VIP as
            // source; allow that when the node itself is inside the allowed ranges.
            let primary = self.m.node_ips.iter().find(|ip| Family::of(ip) == f);
            if primary.is_some_and(|p| ranges.iter().any(|r| r.contains(p))) {
                for ip in &lb_ips {
                    rules.push(Rule::new(vec![host(Field::Saddr, *ip)], Some(Verdict::Return)));
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
