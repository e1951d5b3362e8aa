//! Model -> IR. The layout (documented in rules/README.md) keeps a fixed set of base
//! chains, sets and maps whatever the cluster size: Services only add map elements and
//! regular chains, never sets, because the kernel looks sets up by a linear scan.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use ipnet::IpNet;

use super::ir::*;
use super::names;
use super::skeleton::*;
use crate::model::{
    categorize, nodeport_ips, Endpoint, LocalTraffic, Model, NodePortIps, ServicePort,
};
use crate::vocab::Note;

/// The four kinds of endpoint map: (kind, dispatch map, packet fields keyed before the
/// slot).
const KINDS: [(&str, &str, &[Field]); 4] = [
    (SERVICE_EPS, SERVICE_SELECT, &VIP_KEY),
    (NODEPORT_EPS, NODEPORT_SELECT, &PORT_KEY),
    (LOCAL_SERVICE_EPS, LOCAL_SERVICE_SELECT, &VIP_KEY),
    (LOCAL_NODEPORT_EPS, LOCAL_NODEPORT_SELECT, &PORT_KEY),
];

/// Endpoint counts in use, per endpoint map kind: each count has a map and a chain.
pub type SlotCounts = BTreeMap<&'static str, BTreeSet<u32>>;

/// Which endpoint list of a Service port a slot order is for: protocol, port, and whether
/// it is the node-local list (Local traffic policies) rather than the cluster-wide one.
/// Every entry key of the port (ClusterIP, external and load-balancer IPs, NodePort) uses
/// the same list, so one order serves all of them.
pub type SlotOrderKey = (Proto, u16, bool);

/// Where one Service's endpoints sit in the endpoint maps, per port and list: the
/// endpoints (address, port) in slot order. The agent keeps these between syncs and hands
/// them back to `fragment`, so an endpoint keeps its slot while it exists (see
/// `stable_order`); `render` has none and numbers slots in endpoint address order. A
/// vector, not a map: a Service has a list or two per port, and the agent keeps one of
/// these per Service (a `BTreeMap` node per Service cost 2 MiB more at 10,000 Services;
/// as it is, the orders add 3 MiB to the agent's kept state there, `memory` benchmark).
pub type SlotOrders = Vec<(SlotOrderKey, Box<[(IpAddr, u16)]>)>;

/// The slot order of `eps` (sorted by address) given the previous order `prev`: an
/// endpoint still present keeps its slot; new endpoints fill the holes removed ones left
/// (lowest first, in address order) and then append; when more were removed than added,
/// each remaining hole takes the last slot's endpoint. So one endpoint replaced changes one
/// slot, one removed changes two (the hole and the last), one added appends one, and the
/// order of an unchanged list is `prev` itself. Without `prev`: address order.
pub fn stable_order<'e>(prev: Option<&[(IpAddr, u16)]>, eps: &[&'e Endpoint]) -> Vec<&'e Endpoint> {
    let Some(prev) = prev else {
        return eps.to_vec();
    };
    let index: std::collections::HashMap<(IpAddr, u16), usize> = (eps.iter().enumerate())
        .map(|(i, e)| ((e.ip, e.port), i))
        .collect();
    let mut taken = vec![false; eps.len()];
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(prev.len().max(eps.len()));
    for id in prev {
        let at = index.get(id).copied().filter(|i| !taken[*i]);
        if let Some(i) = at {
            taken[i] = true;
        }
        slots.push(at);
    }
    let mut fresh = (0..eps.len()).filter(|i| !taken[*i]);
    for s in slots.iter_mut().filter(|s| s.is_none()) {
        *s = fresh.next();
    }
    slots.extend(fresh.map(Some));
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            while matches!(slots.last(), Some(None)) {
                slots.pop();
            }
            if i < slots.len() {
                slots.swap_remove(i);
            }
        }
        i += 1;
    }
    slots.into_iter().flatten().map(|i| eps[i]).collect()
}

/// `rs` with the slots of every key in every endpoint map renumbered so that the values
/// are in sorted order: two tables that put the same endpoints under each key, in any slot
/// order, become equal. Fails when a key of `…-endpoints-N` does not hold exactly slots
/// 0..N-1, the property selection relies on (every draw of `numgen random mod N` hits).
/// For tests comparing the agent's kept IR (stable slots) with a fresh render.
pub fn canonical_slots(rs: &Ruleset) -> Result<Ruleset, String> {
    let mut out = rs.clone();
    for t in &mut out.tables {
        for s in &mut t.sets {
            let Some(n) = KINDS.iter().find_map(|(kind, _, _)| {
                let rest = s.name.strip_prefix(kind)?.strip_prefix('-')?;
                rest.parse::<u32>().ok()
            }) else {
                continue;
            };
            let mut by_key: BTreeMap<Vec<Value>, Vec<(u32, Option<ElementData>)>> = BTreeMap::new();
            for (k, data) in std::mem::take(&mut s.elements) {
                let Some((Value::Slot(slot), key)) = k.split_last() else {
                    return Err(format!("{}: element {k:?} has no slot", s.name));
                };
                by_key.entry(key.to_vec()).or_default().push((*slot, data));
            }
            for (key, mut vals) in by_key {
                let mut slots: Vec<u32> = vals.iter().map(|v| v.0).collect();
                slots.sort_unstable();
                if slots != (0..n).collect::<Vec<_>>() {
                    return Err(format!(
                        "{}: key {} has slots {slots:?}",
                        s.name,
                        concat_text(&key)
                    ));
                }
                vals.sort_by(|a, b| a.1.cmp(&b.1));
                for (i, (_, data)) in vals.into_iter().enumerate() {
                    let mut k = key.clone();
                    k.push(Value::Slot(i as u32));
                    s.elements.insert(k, data);
                }
            }
        }
    }
    Ok(out)
}

/// Interned names, so claims can keep naming sets with `&'static str`: one string per
/// (kind, count) ever used by this process, a few hundred at most in practice.
fn interned(prefix: &'static str, kind: &'static str, n: u32) -> &'static str {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Names = HashMap<(&'static str, &'static str, u32), &'static str>;
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    names
        .entry((prefix, kind, n))
        .or_insert_with(|| Box::leak(format!("{prefix}{kind}-{n}").into_boxed_str()))
}

/// The endpoint map of `kind` for entries with `n` endpoints: `service-endpoints-3`.
pub fn count_map(kind: &'static str, n: u32) -> &'static str {
    interned("", kind, n)
}

/// The chain that picks among `n` endpoints in `count_map(kind, n)`.
pub fn select_chain(kind: &'static str, n: u32) -> &'static str {
    interned("select-", kind, n)
}

/// The per-count chains: one `dnat ... numgen random mod N map @<kind>-N` each, then the
/// miss rule marking the packet with `miss` for the filter chains to reject (an entry
/// always has all N slots, so that is never reached unless the maps are inconsistent).
/// Each endpoint map is bound by exactly one rule, so the kernel validates its elements
/// once (see rules/README.md).
pub fn selection_chains(counts: &SlotCounts, miss: u32) -> Vec<Chain> {
    let mut out = Vec::new();
    for (kind, _, key) in KINDS {
        for n in counts.get(kind).into_iter().flatten() {
            let mut k = key.to_vec();
            k.push(Field::Random(*n));
            out.push(regular(
                select_chain(kind, *n),
                vec![
                    Rule::new(
                        vec![],
                        Some(Verdict::DnatMap {
                            proto: None,
                            key: k,
                            map: count_map(kind, *n).to_string(),
                        }),
                    ),
                    reject_miss(miss),
                ],
            ));
        }
    }
    out.sort_by(|x, y| x.name.cmp(&y.name));
    out
}

/// The dynamic set of one endpoint's clients (session affinity), with the Service's
/// timeout.
fn affinity_set(name: String, timeout: u32) -> Set {
    Set {
        name,
        key: vec![KeyType::Addr],
        data: None,
        flags: SetFlags {
            dynamic: true,
            timeout: true,
        },
        timeout: Some(timeout),
        comment: None,
        elements: Elements::new(),
    }
}

/// The declarations of the per-count endpoint maps, in table order (by name).
pub fn count_sets(counts: &SlotCounts) -> Vec<Set> {
    let mut out: Vec<Set> = KINDS
        .iter()
        .flat_map(|(kind, _, _)| {
            counts
                .get(kind)
                .into_iter()
                .flatten()
                .map(|n| endpoint_map(kind, count_map(kind, *n)))
        })
        .collect();
    out.sort_by(|x, y| x.name.cmp(&y.name));
    out
}

/// Every set of a table with these counts: the skeleton's, then the per-count maps.
pub fn table_sets(counts: &SlotCounts) -> Vec<Set> {
    let mut out: Vec<Set> = skeleton().sets.iter().map(Set::declaration).collect();
    out.extend(count_sets(counts));
    out
}

/// Puts the sets after the skeleton's in name order (per-count endpoint maps and
/// per-endpoint affinity sets together), the order `tx::replay` inserts them in.
pub fn sort_sets(sets: &mut [Set]) {
    let fixed = sets
        .iter()
        .take_while(|s| skeleton().set(&s.name).is_some())
        .count();
    sets[fixed..].sort_by(|x, y| x.name.cmp(&y.name));
}

/// Builds one table per family the node proxies, plus the notes for anything dropped.
pub fn build(m: &Model) -> (Ruleset, Vec<Note>) {
    let mut notes = Vec::new();
    let tables = m
        .families
        .iter()
        .map(|f| {
            let fragments = m
                .services
                .chunk_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name))
                .map(|ports| fragment(m, *f, ports, None))
                .collect();
            assemble(m, *f, fragments, &mut notes).table
        })
        .collect();
    (Ruleset { tables }, notes)
}

/// One set element a Service asks for. Two Services may ask for the same key: with the same
/// data (two Services over one pod give the same hairpin entry) both are satisfied; with
/// different data the first Service in order wins and the other is noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub set: &'static str,
    pub key: Vec<Value>,
    pub data: Option<ElementData>,
}

/// What one Service adds to one family's table: set elements, its own chains, and the
/// endpoint counts its entries in the endpoint maps have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// `namespace/name`, for notes.
    pub service: String,
    pub claims: Vec<Claim>,
    pub chains: Vec<Chain>,
    /// Its own sets: one dynamic set per endpoint of a port with session affinity.
    pub sets: Vec<Set>,
    /// One (endpoint map, endpoint count) per Service IP or NodePort entered in one.
    pub slots: Vec<(&'static str, u32)>,
    /// The slot order of each endpoint list entered in the endpoint maps.
    pub orders: SlotOrders,
}

/// The fragment of one Service: `ports` are all its ports (one `ServicePort` each).
/// `prev` is the slot order the Service's endpoints had (the agent's; `None` numbers
/// slots in address order): given the orders this returned for the same ports, the
/// fragment is the same again.
pub fn fragment(
    m: &Model,
    f: Family,
    ports: &[ServicePort],
    prev: Option<&SlotOrders>,
) -> Fragment {
    let mut b = TableBuilder::new(m, f);
    b.prev = prev;
    for sp in ports {
        b.service_port(sp);
    }
    Fragment {
        service: ports
            .first()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .unwrap_or_default(),
        claims: b.claims,
        chains: b.chains,
        sets: b.sets,
        slots: b.slots,
        orders: {
            let mut o = b.orders;
            o.shrink_to_fit();
            o
        },
    }
}

/// What `assemble` gives.
#[derive(Debug)]
pub struct Assembled {
    pub table: Table,
    /// Two fragments claimed one key with different data (the first won, with a note).
    pub conflicted: bool,
    /// The keys claimed with different data (the winner's and the losers' claims meet
    /// there): a later change touching one of them needs a full rebuild to stay exact.
    pub conflicts: Vec<(&'static str, Vec<Value>)>,
    /// A key for each claim of a key that was claimed already with the same data.
    pub shared: Vec<(&'static str, Vec<Value>)>,
}

/// The table of family `f`: the skeleton, filled with the fragments' elements (in order, so
/// the first claim of a key wins) and chains. Chains the fragments add follow the
/// skeleton's, sorted by name, so a table has one order however it was reached.
pub fn assemble(
    m: &Model,
    f: Family,
    fragments: Vec<Fragment>,
    notes: &mut Vec<Note>,
) -> Assembled {
    let mut b = TableBuilder::new(m, f);
    let nodeports = nodeport_ips(m, f);
    if let NodePortIps::List(ips) = &nodeports {
        for ip in ips {
            b.elements
                .entry(NODEPORT_IPS)
                .or_default()
                .insert(vec![Value::Addr(*ip)], None);
        }
    }
    let mut conflicted = false;
    let mut conflicts = Vec::new();
    let mut shared = Vec::new();
    for fr in fragments {
        for (map, n) in &fr.slots {
            b.slot_counts.entry(map).or_default().insert(*n);
        }
        // One note per set and Service: a Service whose VIP is taken would otherwise get
        // one for every endpoint slot as well.
        let mut noted = BTreeSet::new();
        for c in fr.claims {
            let entry = b.elements.entry(c.set).or_default();
            match entry.get(&c.key) {
                Some(old) if old != &c.data => {
                    conflicted = true;
                    conflicts.push((c.set, c.key.clone()));
                    if !noted.insert(c.set) {
                        continue;
                    }
                    notes.push(Note {
                        object: format!("Service {}", fr.service),
                        reason: format!(
                            "{} entry {} is already used by another Service; ignored",
                            c.set,
                            concat_text(&c.key)
                        ),
                    });
                }
                Some(_) => shared.push((c.set, c.key)),
                None => {
                    entry.insert(c.key, c.data);
                }
            }
        }
        b.chains.extend(fr.chains);
        b.sets.extend(fr.sets);
    }
    b.selection();
    b.chains.sort_by(|x, y| x.name.cmp(&y.name));
    // The agent keeps this table between syncs: vectors grown by pushing hold up to twice
    // what they use (25 of 45 MB at 10,000 Services).
    for c in &mut b.chains {
        c.rules.shrink_to_fit();
        for r in &mut c.rules {
            r.exprs.shrink_to_fit();
        }
    }
    Assembled {
        table: b.finish(&nodeports),
        conflicted,
        conflicts,
        shared,
    }
}

struct TableBuilder<'a> {
    m: &'a Model,
    f: Family,
    mark: u32,
    /// Elements per set name, kept sorted and unique by key.
    elements: BTreeMap<&'static str, BTreeMap<Vec<Value>, Option<ElementData>>>,
    claims: Vec<Claim>,
    chains: Vec<Chain>,
    sets: Vec<Set>,
    slots: Vec<(&'static str, u32)>,
    slot_counts: SlotCounts,
    prev: Option<&'a SlotOrders>,
    orders: SlotOrders,
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

fn iifname(op: CmpOp, name: &str, prefix: bool) -> Expr {
    Expr::Iifname {
        op,
        name: name.to_string(),
        prefix,
    }
}

fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.into())
}

impl<'a> TableBuilder<'a> {
    fn new(m: &'a Model, f: Family) -> Self {
        TableBuilder {
            m,
            f,
            mark: m.masquerade_mark,
            elements: BTreeMap::new(),
            claims: Vec::new(),
            chains: Vec::new(),
            sets: Vec::new(),
            slots: Vec::new(),
            slot_counts: SlotCounts::new(),
            prev: None,
            orders: SlotOrders::new(),
        }
    }

    /// The slot order of one endpoint list of `sp` (see `stable_order`), remembered for
    /// the next sync. A second port with the same protocol and port (the API forbids it)
    /// gets address order and is not remembered, so rebuilding with the returned orders
    /// gives the same fragment.
    fn ordered<'e>(
        &mut self,
        sp: &ServicePort,
        local: bool,
        eps: &[&'e Endpoint],
    ) -> Vec<&'e Endpoint> {
        let key = (sp.protocol, sp.port, local);
        if eps.is_empty() || self.orders.iter().any(|(k, _)| *k == key) {
            return eps.to_vec();
        }
        let prev = (self.prev.into_iter().flatten())
            .find(|(k, _)| *k == key)
            .map(|(_, o)| &o[..]);
        let out = stable_order(prev, eps);
        self.orders
            .push((key, out.iter().map(|e| (e.ip, e.port)).collect()));
        out
    }

    fn loopback(&self) -> IpNet {
        match self.f {
            Family::V4 => {
                IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).unwrap_or_default()
            }
            Family::V6 => IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }
    }

    /// The matches that each say "from a local pod" (upstream's `IfLocalNFT`), one rule
    /// each; empty when this family has no detector (e.g. no CIDR of the family).
    fn if_local(&self) -> Vec<Expr> {
        match &self.m.local_traffic {
            LocalTraffic::Cidrs(cidrs) => cidrs
                .iter()
                .filter(|c| Family::of(&c.addr()) == self.f)
                .map(|c| cmp(Field::Saddr, CmpOp::Eq, *c))
                .collect(),
            LocalTraffic::InterfacePrefix(p) => vec![iifname(CmpOp::Eq, p, true)],
            LocalTraffic::Interface(i) => vec![iifname(CmpOp::Eq, i, false)],
        }
    }

    /// The matches that together say "not from a local pod" (`IfNotLocalNFT`); `None`
    /// without a detector.
    fn if_not_local(&self) -> Option<Vec<Expr>> {
        let v: Vec<Expr> = match &self.m.local_traffic {
            LocalTraffic::Cidrs(cidrs) => cidrs
                .iter()
                .filter(|c| Family::of(&c.addr()) == self.f)
                .map(|c| cmp(Field::Saddr, CmpOp::Neq, *c))
                .collect(),
            LocalTraffic::InterfacePrefix(p) => vec![iifname(CmpOp::Neq, p, true)],
            LocalTraffic::Interface(i) => vec![iifname(CmpOp::Neq, i, false)],
        };
        (!v.is_empty()).then_some(v)
    }

    fn add(&mut self, set: &'static str, key: Vec<Value>, data: Option<ElementData>) {
        self.claims.push(Claim { set, key, data });
    }

    /// Fills the embedded skeleton: elements into its sets, the cluster-dependent rules
    /// into its fixed chains.
    fn finish(&mut self, nodeports: &NodePortIps) -> Table {
        let mut t = skeleton().clone();
        t.family = self.f;
        let miss = miss_mark(self.mark);
        if miss != MISS_MARK {
            // The skeleton's miss rules carry the default bit, which is the masquerade
            // bit here.
            for r in (t.chains.iter_mut())
                .flat_map(|c| c.rules.iter_mut())
                .filter(|r| r.comment.as_deref() == Some(MISS))
            {
                for e in &mut r.exprs {
                    if let Expr::MarkOr(m) | Expr::MarkSet(m) = e {
                        *m = miss;
                    }
                }
            }
        }
        t.sets.extend(count_sets(&self.slot_counts));
        t.sets.append(&mut self.sets);
        sort_sets(&mut t.sets);
        for s in &mut t.sets {
            if let Some(elems) = self.elements.remove(s.name.as_str()) {
                s.elements = elems;
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
        } else if let Some(not_local) = self.if_not_local() {
            let mut exprs = vec![in_cluster_ips];
            exprs.extend(not_local);
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
        let pod_short_circuit: Vec<Rule> = self
            .if_local()
            .into_iter()
            .map(|m| {
                Rule::new(vec![m], Some(goto(ENDPOINTS))).with_comment("short-circuit pod traffic")
            })
            .collect();
        for c in &mut t.chains {
            match c.name.as_str() {
                EXTERNAL_ENDPOINTS => c.rules.insert(
                    0,
                    Rule::new(vec![Expr::MarkOr(mark)], None).with_comment("masquerade"),
                ),
                EXTERNAL_LOCAL_ENDPOINTS => {
                    let mut rules = pod_short_circuit.clone();
                    rules.push(
                        Rule::new(
                            vec![Expr::FibLocal(FibAddr::Saddr), Expr::MarkOr(mark)],
                            None,
                        )
                        .with_comment("masquerade local traffic"),
                    );
                    rules.append(&mut c.rules);
                    c.rules = rules;
                }
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

    /// The per-count selection chains, with the Service chains (sorted with them).
    fn selection(&mut self) {
        let miss = miss_mark(self.mark);
        self.chains
            .extend(selection_chains(&self.slot_counts, miss));
    }

    fn service_port(&mut self, sp: &ServicePort) {
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
        let firewall_chain = names::firewall_chain(&base);
        let has_cluster = !cat.cluster.is_empty();
        let has_local = !cat.local.is_empty();
        let has_internal = if sp.internal_policy_local {
            has_local
        } else {
            has_cluster
        };
        let has_external = if etp_local { has_local } else { has_cluster };
        let uses_external_chain = cat.has_any && externally_accessible;
        // Session affinity remembers the endpoint each rule picks, so those Services keep
        // chains of their own with one rule per endpoint; every other Service shares the
        // selection chains and only adds map elements (see rules/README.md).
        let shared = sp.affinity_timeout.is_none();
        let (internal_chain, external_chain) = match (shared, sp.internal_policy_local) {
            (true, local) => (
                if local { LOCAL_ENDPOINTS } else { ENDPOINTS }.to_string(),
                if etp_local {
                    EXTERNAL_LOCAL_ENDPOINTS
                } else {
                    EXTERNAL_ENDPOINTS
                }
                .to_string(),
            ),
            (false, local) => (
                if local { &local_chain } else { &cluster_chain }.clone(),
                names::external_chain(&base),
            ),
        };
        let internal_chain = &internal_chain;

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

        self.add(CLUSTER_IPS, vec![Value::Addr(cip)], None);
        if has_internal {
            let v = Some(ElementData::Verdict(goto(internal_chain)));
            self.add(SERVICE_IPS, vip(cip), v);
        } else {
            let v = Some(ElementData::Verdict(internal_filter));
            self.add(NO_EP_SERVICES, vip(cip), v);
        }
        for ip in external_ips.iter().chain(lb_ips.iter()) {
            if uses_external_chain {
                let v = Some(ElementData::Verdict(goto(&external_chain)));
                self.add(SERVICE_IPS, vip(*ip), v);
            }
            if !has_external {
                let v = Some(ElementData::Verdict(external_filter.clone()));
                self.add(NO_EP_SERVICES, vip(*ip), v);
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
                self.add(FIREWALL_IPS, vip(*ip), v);
            }
        }
        if let Some(np) = sp.node_port {
            let key = vec![proto, Value::Port(np)];
            if uses_external_chain {
                let v = Some(ElementData::Verdict(goto(&external_chain)));
                self.add(SERVICE_NODEPORTS, key.clone(), v);
            }
            if !has_external {
                let v = Some(ElementData::Verdict(external_filter));
                self.add(NO_EP_NODEPORTS, key, v);
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
            self.add(HAIRPIN, key, None);
        }

        if shared {
            // The Service IPs whose traffic `endpoints` serves, and those `local-endpoints`
            // serves (Local policies; eTP=Local traffic from pods uses both).
            let outside: Vec<IpAddr> = if externally_accessible {
                external_ips.iter().chain(lb_ips.iter()).copied().collect()
            } else {
                Vec::new()
            };
            let mut local_vips = if etp_local {
                outside.clone()
            } else {
                Vec::new()
            };
            let mut cluster_vips = outside;
            if sp.internal_policy_local {
                local_vips.push(cip);
            } else {
                cluster_vips.push(cip);
            }
            // Every key of one list shares its slot order, so an endpoint sits in the
            // same slot under the ClusterIP, the external IPs and the NodePort.
            let cluster = if !cluster_vips.is_empty() || sp.node_port.is_some() {
                self.ordered(sp, false, &cat.cluster)
            } else {
                Vec::new()
            };
            let local = if !local_vips.is_empty() || (etp_local && sp.node_port.is_some()) {
                self.ordered(sp, true, &cat.local)
            } else {
                Vec::new()
            };
            for ip in cluster_vips {
                self.slots(SERVICE_EPS, vip(ip), &cluster);
            }
            for ip in local_vips {
                self.slots(LOCAL_SERVICE_EPS, vip(ip), &local);
            }
            if let Some(np) = sp.node_port {
                let key = vec![proto, Value::Port(np)];
                self.slots(NODEPORT_EPS, key.clone(), &cluster);
                if etp_local {
                    self.slots(LOCAL_NODEPORT_EPS, key, &local);
                }
            }
        }
        // Chains of its own, for session affinity (shared Services have only the firewall
        // chain below).
        if !shared && has_cluster {
            let rules = self.endpoint_rules(sp, &cat.cluster);
            self.chains.push(regular(&cluster_chain, rules));
        }
        if !shared && has_local {
            let rules = self.endpoint_rules(sp, &cat.local);
            self.chains.push(regular(&local_chain, rules));
        }
        if let (false, Some(timeout)) = (shared, sp.affinity_timeout) {
            // One set per endpoint the chains above pick from (the local chain's endpoints
            // share the cluster chain's sets, as upstream's endpoint chains are shared).
            let used = (has_cluster.then_some(&cat.cluster).into_iter())
                .chain(has_local.then_some(&cat.local))
                .flatten();
            let names: BTreeSet<String> = used
                .map(|ep| names::affinity_set(sp, ep.ip, ep.port))
                .collect();
            self.sets
                .extend(names.into_iter().map(|name| affinity_set(name, timeout)));
        }
        if !shared && uses_external_chain {
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
                    for m in self.if_local() {
                        rules.push(
                            Rule::new(vec![m], Some(goto(&cluster_chain)))
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

    /// The endpoint map elements of one Service IP or NodePort, `key . slot : endpoint`
    /// in the map for its endpoint count, and its dispatch element `key : goto select-…`.
    fn slots(&mut self, kind: &'static str, key: Vec<Value>, eps: &[&Endpoint]) {
        if eps.is_empty() {
            return;
        }
        let n = eps.len() as u32;
        let map = count_map(kind, n);
        for (i, ep) in eps.iter().enumerate() {
            let mut k = key.clone();
            k.push(Value::Slot(i as u32));
            let data = ElementData::Values(vec![Value::Addr(ep.ip), Value::Port(ep.port)].into());
            self.add(map, k, Some(data));
        }
        let dispatch = KINDS
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, d, _)| *d)
            .unwrap_or(SERVICE_SELECT);
        let v = Some(ElementData::Verdict(goto(select_chain(kind, n))));
        self.add(dispatch, key, v);
        self.slots.push((kind, n));
    }

    /// Equal-probability choice without a map: rule i of n matches with probability
    /// 1/(n-i) among the packets that reach it, which gives every endpoint 1/n overall.
    /// With session affinity (always, for these chains) each endpoint has a dynamic set of
    /// the clients it served: first a rule per endpoint sends a remembered client back to
    /// it, refreshing its timeout; a client picked at random is added to the set of the
    /// endpoint it got. As upstream's nftables mode, with the endpoint chain's statements
    /// folded into the rules (see rules/README.md).
    fn endpoint_rules(&self, sp: &ServicePort, eps: &[&Endpoint]) -> Vec<Rule> {
        let mut rules = Vec::new();
        let remember = |ep: &Endpoint| {
            sp.affinity_timeout.map(|_| {
                let set = names::affinity_set(sp, ep.ip, ep.port);
                (
                    Expr::Lookup {
                        key: vec![Field::Saddr],
                        set: set.clone(),
                    },
                    Expr::Update {
                        set,
                        key: vec![Field::Saddr],
                    },
                )
            })
        };
        let dnat = |ep: &Endpoint| Verdict::Dnat {
            proto: sp.protocol,
            addr: ep.ip,
            port: ep.port,
        };
        for ep in eps {
            if let Some((lookup, update)) = remember(ep) {
                rules.push(Rule::new(vec![lookup, update], Some(dnat(ep))));
            }
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
            if let Some((_, update)) = remember(ep) {
                exprs.push(update);
            }
            rules.push(Rule::new(exprs, Some(dnat(ep))));
        }
        // `update` fails when the endpoint's set is full (the kernel's default cap of
        // 65,535 clients) and its rule then does not match: a client the draw leads past
        // the last endpoint is served by it without being remembered, rather than leaving
        // the chain un-NATed.
        if let (Some(_), Some(last)) = (sp.affinity_timeout, eps.last()) {
            rules.push(Rule::new(vec![], Some(dnat(last))).with_comment("not remembered"));
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::options::Options;
    use crate::objects::input::ClusterObjects;

    /// The miss mark never equals the masquerade mark: with masqueradeBit 15 (the miss
    /// mark's default bit) the miss rules and their rejects use bit 14.
    #[test]
    fn the_miss_mark_moves_off_the_masquerade_bit() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: ns}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: p, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-x, namespace: ns, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5], conditions: {ready: true}}]
ports: [{name: p, port: 8080, protocol: TCP}]
"#;
        let mut o = ClusterObjects::default();
        o.add_text("t", yaml, &mut vec![]).unwrap();
        o.sort();
        let misses = |bit: u8| -> Vec<Vec<Expr>> {
            let opts = Options {
                hostname: "n".into(),
                masquerade_bit: bit,
                ..Options::default()
            };
            let (rs, _) = crate::ruleset::render::ruleset(&o, &opts);
            (rs.tables[0].chains.iter())
                .flat_map(|c| &c.rules)
                .filter(|r| r.comment.as_deref() == Some(MISS))
                .map(|r| r.exprs.clone())
                .collect()
        };
        for (bit, want) in [(14, 0x8000), (15, 0x4000)] {
            let rules = misses(bit);
            // endpoints, local-endpoints, select-service-endpoints-1, and the three
            // filter chains' rejects
            assert_eq!(rules.len(), 6, "{rules:?}");
            for exprs in &rules {
                assert!(
                    exprs.iter().any(|e| matches!(
                        e,
                        Expr::MarkOr(m) | Expr::MarkSet(m) if *m == want
                    )),
                    "bit {bit}: {exprs:?}"
                );
            }
        }
    }
}
