//! The static part of each table (documented, as nft text, in `rules/skeleton.nft`): the
//! sets and maps, the base chains and the fixed regular chains with their fixed rules. The
//! builder fills in set elements, per-Service chains and the cluster-dependent rules.
//!
//! It is written here as IR rather than parsed from the text at run time, so that the
//! ruleset layer needs no nft reader; a test in `nft::parse` checks that
//! `rules/skeleton.nft` reads back as exactly this table.

use std::sync::OnceLock;

use super::ir::{
    BaseChain, Chain, ChainType, Elements, Expr, Family, FibAddr, Field, Hook, KeyType, MapData,
    Rule, Set, SetFlags, Table, Verdict,
};

pub const TABLE_NAME: &str = "kube-nftproxy";

// Set and map names.
pub(super) const CLUSTER_IPS: &str = "cluster-ips";
pub(super) const NODEPORT_IPS: &str = "nodeport-ips";
pub(super) const HAIRPIN: &str = "hairpin-connections";
pub(super) const SERVICE_IPS: &str = "service-ips";
pub(super) const SERVICE_NODEPORTS: &str = "service-nodeports";
pub(super) const NO_EP_SERVICES: &str = "no-endpoint-services";
pub(super) const NO_EP_NODEPORTS: &str = "no-endpoint-nodeports";
pub(super) const FIREWALL_IPS: &str = "firewall-ips";
// Endpoint maps: one per kind and endpoint count N in use, named `<kind>-N` (see
// `build::count_map`), each looked up by one rule in its own chain `select-<kind>-N`.
pub(super) const SERVICE_EPS: &str = "service-endpoints";
pub(super) const NODEPORT_EPS: &str = "nodeport-endpoints";
pub(super) const LOCAL_SERVICE_EPS: &str = "local-service-endpoints";
pub(super) const LOCAL_NODEPORT_EPS: &str = "local-nodeport-endpoints";
// Dispatch: Service IP . proto . port (or proto . NodePort) to `goto select-<kind>-N`.
pub(super) const SERVICE_SELECT: &str = "service-select";
pub(super) const NODEPORT_SELECT: &str = "nodeport-select";
pub(super) const LOCAL_SERVICE_SELECT: &str = "local-service-select";
pub(super) const LOCAL_NODEPORT_SELECT: &str = "local-nodeport-select";

// Fixed regular chains.
pub(super) const SERVICES: &str = "services";
pub(super) const MASQUERADING: &str = "masquerading";
pub(super) const SERVICE_EP_CHECK: &str = "service-endpoints-check";
pub(super) const NODEPORT_EP_CHECK: &str = "nodeport-endpoints-check";
pub(super) const FIREWALL_CHECK: &str = "firewall-check";
pub(super) const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub(super) const REJECT_CHAIN: &str = "reject-chain";
pub(super) const ENDPOINTS: &str = "endpoints";
pub(super) const LOCAL_ENDPOINTS: &str = "local-endpoints";
pub(super) const EXTERNAL_ENDPOINTS: &str = "external-endpoints";
pub(super) const EXTERNAL_LOCAL_ENDPOINTS: &str = "external-local-endpoints";

/// `meta l4proto . th dport`: a NodePort.
pub(super) const PORT_KEY: [Field; 2] = [Field::L4Proto, Field::Dport];
/// `ip daddr . meta l4proto . th dport`: a Service IP and port.
pub(super) const VIP_KEY: [Field; 3] = [Field::Daddr, Field::L4Proto, Field::Dport];
/// `ip saddr . ip daddr . meta l4proto . th dport`: a connection.
pub(super) const CONN_KEY: [Field; 4] = [Field::Saddr, Field::Daddr, Field::L4Proto, Field::Dport];

// Base chain priorities, as nft names them.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;

/// The skeleton table (written for `ip`; the builder sets the family, and every field
/// follows the table's family).
pub fn skeleton() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(table)
}

fn table() -> Table {
    use KeyType::{Addr, Proto, Service};
    let vip = || vec![Addr, Proto, Service];
    let port = || vec![Proto, Service];
    let verdicts = || Some(MapData::Verdict);
    Table {
        family: Family::V4,
        name: TABLE_NAME.into(),
        comment: Some("rules for kube-nftproxy".into()),
        sets: vec![
            set(CLUSTER_IPS, vec![Addr], None, "Active ClusterIPs"),
            set(
                NODEPORT_IPS,
                vec![Addr],
                None,
                "IPs that accept NodePort traffic",
            ),
            set(
                HAIRPIN,
                vec![Addr, Addr, Proto, Service],
                None,
                "local endpoints reaching themselves through a Service",
            ),
            set(
                SERVICE_IPS,
                vip(),
                verdicts(),
                "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            set(SERVICE_NODEPORTS, port(), verdicts(), "NodePort traffic"),
            set(
                NO_EP_SERVICES,
                vip(),
                verdicts(),
                "vmap to drop or reject packets to services with no endpoints",
            ),
            set(
                NO_EP_NODEPORTS,
                port(),
                verdicts(),
                "vmap to drop or reject packets to service nodeports with no endpoints",
            ),
            set(
                FIREWALL_IPS,
                vip(),
                verdicts(),
                "destinations that are subject to LoadBalancerSourceRanges",
            ),
            set(
                SERVICE_SELECT,
                vip(),
                verdicts(),
                "Service IP . proto . port to the chain picking among its N endpoints",
            ),
            set(
                NODEPORT_SELECT,
                port(),
                verdicts(),
                "NodePort to the chain picking among its N endpoints",
            ),
            set(
                LOCAL_SERVICE_SELECT,
                vip(),
                verdicts(),
                "the same over node-local endpoints (traffic policy Local)",
            ),
            set(
                LOCAL_NODEPORT_SELECT,
                port(),
                verdicts(),
                "the same for NodePorts over node-local endpoints (traffic policy Local)",
            ),
        ],
        chains: vec![
            base(
                "filter-prerouting-pre-dnat",
                ChainType::Filter,
                Hook::Prerouting,
                DSTNAT - 10,
                vec![new_conn(Verdict::Jump(FIREWALL_CHECK.into()))],
            ),
            base(
                "filter-output-pre-dnat",
                ChainType::Filter,
                Hook::Output,
                DSTNAT - 10,
                vec![new_conn(Verdict::Jump(FIREWALL_CHECK.into()))],
            ),
            base(
                "filter-input",
                ChainType::Filter,
                Hook::Input,
                FILTER,
                vec![
                    new_conn(Verdict::Jump(NODEPORT_EP_CHECK.into())),
                    new_conn(Verdict::Jump(SERVICE_EP_CHECK.into())),
                    miss_reject(MISS_MARK),
                ],
            ),
            base(
                "filter-forward",
                ChainType::Filter,
                Hook::Forward,
                FILTER,
                vec![
                    new_conn(Verdict::Jump(SERVICE_EP_CHECK.into())),
                    new_conn(Verdict::Jump(CLUSTER_IPS_CHECK.into())),
                    miss_reject(MISS_MARK),
                ],
            ),
            base(
                "filter-output",
                ChainType::Filter,
                Hook::Output,
                FILTER,
                vec![
                    new_conn(Verdict::Jump(SERVICE_EP_CHECK.into())),
                    new_conn(Verdict::Jump(CLUSTER_IPS_CHECK.into())),
                    miss_reject(MISS_MARK),
                ],
            ),
            base(
                "nat-prerouting",
                ChainType::Nat,
                Hook::Prerouting,
                DSTNAT,
                vec![Rule::new(vec![], Some(Verdict::Jump(SERVICES.into())))],
            ),
            base(
                "nat-output",
                ChainType::Nat,
                Hook::Output,
                DSTNAT,
                vec![Rule::new(vec![], Some(Verdict::Jump(SERVICES.into())))],
            ),
            base(
                "nat-postrouting",
                ChainType::Nat,
                Hook::Postrouting,
                SRCNAT,
                vec![Rule::new(vec![], Some(Verdict::Jump(MASQUERADING.into())))],
            ),
            regular(SERVICES, None, vec![vmap(&VIP_KEY, SERVICE_IPS)]),
            regular(
                MASQUERADING,
                None,
                vec![Rule::new(
                    vec![
                        Expr::CtStatusDnat,
                        Expr::Lookup {
                            key: CONN_KEY.to_vec(),
                            set: HAIRPIN.into(),
                        },
                    ],
                    Some(Verdict::Masquerade),
                )],
            ),
            regular(SERVICE_EP_CHECK, None, vec![vmap(&VIP_KEY, NO_EP_SERVICES)]),
            regular(NODEPORT_EP_CHECK, None, vec![]),
            regular(FIREWALL_CHECK, None, vec![vmap(&VIP_KEY, FIREWALL_IPS)]),
            regular(
                CLUSTER_IPS_CHECK,
                None,
                vec![Rule::new(
                    vec![Expr::Lookup {
                        key: vec![Field::Daddr],
                        set: CLUSTER_IPS.into(),
                    }],
                    Some(Verdict::Reject),
                )
                .with_comment("reject traffic to invalid ports of ClusterIPs")],
            ),
            regular(
                REJECT_CHAIN,
                Some("helper for @no-endpoint-services / @no-endpoint-nodeports"),
                vec![Rule::new(vec![], Some(Verdict::Reject))],
            ),
            regular(
                ENDPOINTS,
                Some("DNAT to a random endpoint of the Service IP or NodePort addressed"),
                vec![
                    vmap(&VIP_KEY, SERVICE_SELECT),
                    vmap(&PORT_KEY, NODEPORT_SELECT),
                    reject_miss(MISS_MARK),
                ],
            ),
            regular(
                LOCAL_ENDPOINTS,
                Some("the same over this node's endpoints (traffic policy Local)"),
                vec![
                    vmap(&VIP_KEY, LOCAL_SERVICE_SELECT),
                    vmap(&PORT_KEY, LOCAL_NODEPORT_SELECT),
                    reject_miss(MISS_MARK),
                ],
            ),
            regular(
                EXTERNAL_ENDPOINTS,
                Some("external traffic with externalTrafficPolicy Cluster"),
                vec![Rule::new(vec![], Some(Verdict::Goto(ENDPOINTS.into())))],
            ),
            regular(
                EXTERNAL_LOCAL_ENDPOINTS,
                Some("external traffic with externalTrafficPolicy Local"),
                vec![
                    Rule::new(
                        vec![Expr::FibLocal(FibAddr::Saddr)],
                        Some(Verdict::Goto(ENDPOINTS.into())),
                    )
                    .with_comment("short-circuit local traffic"),
                    Rule::new(vec![], Some(Verdict::Goto(LOCAL_ENDPOINTS.into()))),
                ],
            ),
        ],
    }
}

fn set(name: &str, key: Vec<KeyType>, data: Option<MapData>, comment: &str) -> Set {
    Set {
        name: name.into(),
        key,
        data,
        flags: SetFlags::default(),
        timeout: None,
        comment: Some(comment.into()),
        elements: Elements::new(),
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

fn regular(name: &str, comment: Option<&str>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: None,
        comment: comment.map(String::from),
        rules,
    }
}

/// `ct state new <verdict>`
fn new_conn(verdict: Verdict) -> Rule {
    Rule::new(vec![Expr::CtStateNew], Some(verdict))
}

/// The comment of the rules that handle a selection miss.
pub(super) const MISS: &str = "no endpoint selected";

/// The packet mark bit a selection miss sets (`miss_mark`): kube-proxy's old drop bit.
pub(super) const MISS_MARK: u32 = 0x8000;

/// The mark a selection miss sets: bit 15, or bit 14 when the masquerade mark is bit 15
/// (the two must differ).
pub fn miss_mark(masquerade_mark: u32) -> u32 {
    if masquerade_mark == MISS_MARK {
        MISS_MARK >> 1
    } else {
        MISS_MARK
    }
}

/// The last rule of every selection chain: nothing may leave un-NATed, and the client is
/// answered. These are nat chains, where a reject does not answer the client (the
/// real-kernel NodePort test saw a `goto reject-chain` here time out, not refuse; upstream
/// too rejects only from filter chains), so the miss marks the packet and accepts it
/// un-NATed, and the filter chains (priority 0, after DNAT, on every path a packet can
/// take: input, forward, output) reject what carries the mark after their no-endpoint
/// checks (`miss_reject`). The counter makes a miss visible (`nft list chain ...`): an entry
/// always has all its slots, so a selection chain's should stay at zero (the one in
/// `local-endpoints` also counts Local-policy traffic without a local endpoint, which the
/// no-endpoint checks drop).
pub(super) fn reject_miss(mark: u32) -> Rule {
    Rule::new(
        vec![Expr::Counter, Expr::MarkOr(mark)],
        Some(Verdict::Accept),
    )
    .with_comment(MISS)
}

/// The last rule of the filter chains on the input, forward and output hooks: a packet a
/// selection chain marked as a miss is rejected. Last, because a Local traffic policy
/// without endpoints on this node reaches the miss of `local-endpoints` by design, and
/// must be dropped (`no-endpoint-…` says `drop`, as upstream does, so a load balancer's
/// health check moves traffic elsewhere), not rejected. Only a new connection's packet
/// can be a miss (nat chains see nothing else), so the bit set by anyone else on other
/// packets is left alone.
pub(super) fn miss_reject(mark: u32) -> Rule {
    Rule::new(
        vec![Expr::MarkSet(mark), Expr::CtStateNew],
        Some(Verdict::Reject),
    )
    .with_comment(MISS)
}

/// `<key> vmap @map`
pub(super) fn vmap(key: &[Field], map: &str) -> Rule {
    Rule::new(
        vec![],
        Some(Verdict::Vmap {
            key: key.to_vec(),
            map: map.into(),
        }),
    )
}

/// The endpoint map of `kind` (one of the four endpoint map kinds) for the Service IPs or
/// NodePorts with exactly `n` endpoints: `key . slot : endpoint`, slots 0..n-1.
pub(super) fn endpoint_map(kind: &str, name: &str) -> Set {
    use KeyType::{Addr, Proto, Service, Slot};
    let (key, comment) = match kind {
        NODEPORT_EPS => (
            vec![Proto, Service, Slot],
            "endpoint number N of each NodePort",
        ),
        LOCAL_NODEPORT_EPS => (
            vec![Proto, Service, Slot],
            "node-local endpoint number N of each NodePort (traffic policy Local)",
        ),
        LOCAL_SERVICE_EPS => (
            vec![Addr, Proto, Service, Slot],
            "node-local endpoint number N of each Service IP and port (traffic policy Local)",
        ),
        _ => (
            vec![Addr, Proto, Service, Slot],
            "endpoint number N of each Service IP and port",
        ),
    };
    set(
        name,
        key,
        Some(MapData::Values(vec![Addr, Service])),
        comment,
    )
}
