//! A kube-proxy shaped ruleset written through rustables, then read back, to check the vendored
//! additions against a real kernel.
//!
//! Run ONLY inside a throwaway network namespace, never on a host:
//!   unshare -n sh -c 'target/debug/examples/kube_shape && nft list ruleset'
//!
//! It builds `table ip kube-nftproxy-test` (concat verdict map with 20,001 elements in one
//! batch, anonymous numgen vmap, fib, ct status, dynset map with data, masquerade fully-random,
//! inverted lookup, reject, comments) and a same-named `table ip6 kube-nftproxy-test`, then:
//! - lists everything back (tables with family, chains per family, rules, sets, elements),
//! - sends a batch that fails on a known message and checks the reported (seq, errno) and that
//!   nothing was applied,
//! - replaces one map element (Del + Add in one batch) and deletes another.
//! It exits non-zero when a check fails.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use rustables::data_type::{NftType, concat_bytes};
use rustables::expr::{
    Bitwise, Cmp, CmpOp, ConnTrackStatus, Conntrack, ConntrackKey, Counter, Dynset,
    ExpressionVariant, Fib, ICMP_PORT_UNREACH, ICMPV6_PORT_UNREACH, Immediate, Lookup, Masquerade,
    Meta, MetaType, NF_NAT_RANGE_PERSISTENT, Nat, Numgen, Payload, Register, Reject, VerdictKind,
};
use rustables::set::{
    Set, SetElement, SetElementList, list_set_elements, list_sets_for_table, split_set_elements,
};
use rustables::sys;
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, NfNetlinkObject,
    ProtocolFamily, Rule, Table, list_chains_for_table, list_rules_for_chain, list_tables,
};

type R<T> = Result<T, Box<dyn std::error::Error>>;

const TABLE: &str = "kube-nftproxy-test";
const MASQ_MARK: u32 = 0x4000;
const BIG_MAP_ELEMENTS: u32 = 20_000;
const TCP: u8 = libc::IPPROTO_TCP as u8;

fn table(family: ProtocolFamily) -> Table {
    Table::new(family).with_name(TABLE)
}

fn chain(family: ProtocolFamily, name: &str) -> Chain {
    Chain::new(&table(family)).with_name(name)
}

fn base_chain(
    family: ProtocolFamily,
    name: &str,
    ty: ChainType,
    hook: HookClass,
    prio: i32,
) -> Chain {
    chain(family, name)
        .with_hook(Hook::new(hook, prio))
        .with_type(ty)
        .with_policy(ChainPolicy::Accept)
}

/// `ip daddr . meta l4proto . th dport` into Reg1 (= Reg32_00), Reg32_01, Reg32_02
fn v4_daddr_proto_port() -> Vec<rustables::expr::RawExpression> {
    vec![
        Payload::default()
            .with_base(sys::NFT_PAYLOAD_NETWORK_HEADER)
            .with_offset(16u32)
            .with_len(4u32)
            .with_dreg(Register::Reg1)
            .into(),
        Meta::default()
            .with_key(MetaType::L4Proto)
            .with_dreg(Register::Reg32_01)
            .into(),
        th_dport(Register::Reg32_02).into(),
    ]
}

fn th_dport(reg: Register) -> Payload {
    Payload::default()
        .with_base(sys::NFT_PAYLOAD_TRANSPORT_HEADER)
        .with_offset(2u32)
        .with_len(2u32)
        .with_dreg(reg)
}

fn svc_key(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    concat_bytes(&[&ip.octets(), &[TCP], &port.to_be_bytes()])
}

fn goto(c: &str) -> VerdictKind {
    VerdictKind::Goto {
        chain: c.to_string(),
    }
}

fn jump(c: &str) -> VerdictKind {
    VerdictKind::Jump {
        chain: c.to_string(),
    }
}

fn rule_with(c: &Chain, exprs: Vec<rustables::expr::RawExpression>) -> R<Rule> {
    let mut r = Rule::new(c)?;
    for e in exprs {
        r.add_expr(e);
    }
    Ok(r)
}

fn service_map() -> R<Set> {
    Ok(Set::new("service-ips", &table(ProtocolFamily::Ipv4))?
        .with_key(&[
            NftType::IPV4_ADDR,
            NftType::INET_PROTO,
            NftType::INET_SERVICE,
        ])
        .with_verdict_data()
        .with_comment("ClusterIP, ExternalIP and LoadBalancer IP traffic"))
}

/// Endpoint chain: meta l4proto tcp dnat to ip:port
fn add_endpoint_v4(b: &mut Batch, name: &str, ip: Ipv4Addr, port: u16, flags: u32) -> R<()> {
    let c = chain(ProtocolFamily::Ipv4, name)
        .with_comment(&format!("endpoint {ip}:{port}"))
        .add_to_batch(b);
    let mut nat = Nat::dnat(ProtocolFamily::Ipv4, Register::Reg1, Some(Register::Reg2));
    if flags != 0 {
        nat.flags = Some(flags);
    }
    Rule::new(&c)?
        .with_expr(Meta::new(MetaType::L4Proto))
        .with_expr(Cmp::new(CmpOp::Eq, [TCP]))
        .with_expr(Immediate::new_data(ip.octets().to_vec(), Register::Reg1))
        .with_expr(Immediate::new_data(
            port.to_be_bytes().to_vec(),
            Register::Reg2,
        ))
        .with_expr(nat)
        .with_comment(&format!("endpoint {ip}:{port}"))
        .add_to_batch(b);
    Ok(())
}

fn initial() -> R<(Batch, usize)> {
    let v4 = ProtocolFamily::Ipv4;
    let t = table(v4);
    let mut b = Batch::new();
    // "add; delete; add" = start from scratch whether or not the table existed
    b.add(&t, MsgType::Add);
    b.add(&t, MsgType::Del);
    b.add(&t.clone_named(), MsgType::Add);

    // chains first: verdicts (in rules and in map elements) must name existing chains
    let services = chain(v4, "services").add_to_batch(&mut b);
    let nodeports = chain(v4, "nodeports").add_to_batch(&mut b);
    let svc_a = chain(v4, "svc-a")
        .with_comment("ns1/svc-a:http")
        .add_to_batch(&mut b);
    let reject_chain = chain(v4, "reject-chain").add_to_batch(&mut b);
    add_endpoint_v4(&mut b, "ep-1", Ipv4Addr::new(10, 1, 0, 2), 8080, 0)?;
    add_endpoint_v4(
        &mut b,
        "ep-2",
        Ipv4Addr::new(10, 1, 0, 3),
        8080,
        NF_NAT_RANGE_PERSISTENT,
    )?;

    // map service-ips { type ipv4_addr . inet_proto . inet_service : verdict }, 20,001 elements
    let map = service_map()?;
    b.add(&map, MsgType::Add);
    let mut elements = vec![
        SetElement::new(svc_key(Ipv4Addr::new(10, 96, 0, 10), 80)).with_verdict(goto("svc-a")),
    ];
    for i in 0..BIG_MAP_ELEMENTS {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i);
        elements.push(SetElement::new(svc_key(ip, 443)).with_verdict(jump("svc-a")));
    }
    let lists = split_set_elements(&map, elements);
    let nb_lists = lists.len();
    for l in &lists {
        b.add(l, MsgType::Add);
    }

    // map no-endpoint-services { ... : verdict } with drop / goto reject-chain
    let no_ep = Set::new("no-endpoint-services", &t)?
        .with_key(&[
            NftType::IPV4_ADDR,
            NftType::INET_PROTO,
            NftType::INET_SERVICE,
        ])
        .with_verdict_data();
    b.add(&no_ep, MsgType::Add);
    b.add(
        &SetElementList::new(&no_ep)
            .with_element(
                SetElement::new(svc_key(Ipv4Addr::new(10, 96, 0, 11), 80))
                    .with_verdict(goto("reject-chain")),
            )
            .with_element(
                SetElement::new(svc_key(Ipv4Addr::new(10, 96, 0, 12), 80))
                    .with_verdict(VerdictKind::Drop),
            ),
        MsgType::Add,
    );

    // set local-addrs { type ipv4_addr } for `ip daddr != @local-addrs return`
    let local = Set::new("local-addrs", &t)?
        .with_key(&[NftType::IPV4_ADDR])
        .with_comment("node addresses");
    b.add(&local, MsgType::Add);
    b.add(
        &SetElementList::new(&local)
            .with_element(SetElement::new(Ipv4Addr::new(10, 0, 0, 1).octets())),
        MsgType::Add,
    );

    // map affinity { type ipv4_addr . ipv4_addr . inet_proto . inet_service :
    //                ipv4_addr . inet_service; flags dynamic,timeout; timeout 3h }
    let affinity = Set::new("affinity", &t)?
        .with_key(&[
            NftType::IPV4_ADDR,
            NftType::IPV4_ADDR,
            NftType::INET_PROTO,
            NftType::INET_SERVICE,
        ])
        .with_map_data(&[NftType::IPV4_ADDR, NftType::INET_SERVICE])
        .with_added_flags(sys::NFT_SET_EVAL)
        .with_default_timeout(3 * 3600 * 1000);
    b.add(&affinity, MsgType::Add);
    // one element with its own timeout
    b.add(
        &SetElementList::new(&affinity).with_element(
            SetElement::new(concat_bytes(&[
                &Ipv4Addr::new(10, 0, 1, 2).octets(),
                &Ipv4Addr::new(10, 96, 0, 10).octets(),
                &[TCP],
                &80u16.to_be_bytes(),
            ]))
            .with_value(concat_bytes(&[
                &Ipv4Addr::new(10, 1, 0, 2).octets(),
                &8080u16.to_be_bytes(),
            ]))
            .with_timeout(60_000u64),
        ),
        MsgType::Add,
    );

    // services: ip daddr . meta l4proto . th dport vmap @service-ips
    rule_with(&services, v4_daddr_proto_port())?
        .with_expr(Lookup::new(&map)?.with_verdict_dreg())
        .with_comment("service dispatch")
        .add_to_batch(&mut b);
    // services: fib daddr type local counter jump nodeports
    Rule::new(&services)?
        .with_expr(Fib::daddr_type())
        .with_expr(Cmp::new(CmpOp::Eq, (libc::RTN_LOCAL as u32).to_ne_bytes()))
        .with_expr(Counter::default())
        .with_expr(Immediate::new_verdict(jump("nodeports")))
        .add_to_batch(&mut b);
    // nodeports: ip daddr != @local-addrs return
    Rule::new(&nodeports)?
        .with_expr(
            Payload::default()
                .with_base(sys::NFT_PAYLOAD_NETWORK_HEADER)
                .with_offset(16u32)
                .with_len(4u32)
                .with_dreg(Register::Reg1),
        )
        .with_expr(Lookup::new(&local)?.inverted())
        .with_expr(Immediate::new_verdict(VerdictKind::Return))
        .add_to_batch(&mut b);

    // svc-a: meta mark set meta mark | 0x4000
    Rule::new(&svc_a)?
        .with_expr(Meta::new(MetaType::Mark))
        .with_expr(Bitwise::new(
            (!MASQ_MARK).to_ne_bytes(),
            MASQ_MARK.to_ne_bytes(),
        )?)
        .with_expr(
            Meta::default()
                .with_key(MetaType::Mark)
                .with_sreg(Register::Reg1),
        )
        .add_to_batch(&mut b);
    // svc-a: update @affinity { ip saddr . ip daddr . meta l4proto . th dport timeout 3h :
    //                           10.1.0.2 . 8080 }
    Rule::new(&svc_a)?
        .with_expr(Meta::new(MetaType::L4Proto))
        .with_expr(Cmp::new(CmpOp::Eq, [TCP]))
        .with_expr(
            Payload::default()
                .with_base(sys::NFT_PAYLOAD_NETWORK_HEADER)
                .with_offset(12u32)
                .with_len(4u32)
                .with_dreg(Register::Reg32_00),
        )
        .with_expr(
            Payload::default()
                .with_base(sys::NFT_PAYLOAD_NETWORK_HEADER)
                .with_offset(16u32)
                .with_len(4u32)
                .with_dreg(Register::Reg32_01),
        )
        .with_expr(
            Meta::default()
                .with_key(MetaType::L4Proto)
                .with_dreg(Register::Reg32_02),
        )
        .with_expr(th_dport(Register::Reg32_03))
        .with_expr(Immediate::new_data(
            Ipv4Addr::new(10, 1, 0, 2).octets().to_vec(),
            Register::Reg32_04,
        ))
        .with_expr(Immediate::new_data(
            8080u16.to_be_bytes().to_vec(),
            Register::Reg32_05,
        ))
        .with_expr(
            Dynset::update(&affinity, Register::Reg32_00)?
                .with_sreg_data(Register::Reg32_04)
                .with_timeout(3 * 3600 * 1000u64),
        )
        .add_to_batch(&mut b);
    // svc-a: numgen random mod 2 vmap { 0 : goto ep-1, 1 : goto ep-2 }
    let anon = Set::new("__map%d", &t)?
        .with_added_flags(sys::NFT_SET_ANONYMOUS | sys::NFT_SET_CONSTANT)
        .with_key(&[NftType::INTEGER])
        .with_verdict_data()
        .with_host_endian_key();
    b.add(&anon, MsgType::Add);
    b.add(
        &SetElementList::new(&anon)
            .with_element(SetElement::new(0u32.to_ne_bytes()).with_verdict(goto("ep-1")))
            .with_element(SetElement::new(1u32.to_ne_bytes()).with_verdict(goto("ep-2"))),
        MsgType::Add,
    );
    Rule::new(&svc_a)?
        .with_expr(Numgen::random(2))
        .with_expr(Lookup::new(&anon)?.with_verdict_dreg())
        .add_to_batch(&mut b);

    // reject-chain: reject (icmp port-unreachable)
    Rule::new(&reject_chain)?
        .with_expr(Reject::icmp(ICMP_PORT_UNREACH))
        .add_to_batch(&mut b);

    // filter-forward: ct status dnat counter; ip daddr . meta l4proto . th dport vmap @no-endpoint-services
    let fwd = base_chain(
        v4,
        "filter-forward",
        ChainType::Filter,
        HookClass::Forward,
        0,
    )
    .add_to_batch(&mut b);
    Rule::new(&fwd)?
        .with_expr(Conntrack::new(ConntrackKey::Status))
        .with_expr(Bitwise::new(
            ConnTrackStatus::DNAT.bits().to_ne_bytes(),
            0u32.to_ne_bytes(),
        )?)
        .with_expr(Cmp::new(CmpOp::Neq, 0u32.to_ne_bytes()))
        .with_expr(Counter::default())
        .add_to_batch(&mut b);
    rule_with(&fwd, v4_daddr_proto_port())?
        .with_expr(Lookup::new(&no_ep)?.with_verdict_dreg())
        .add_to_batch(&mut b);

    for (name, hook) in [
        ("nat-prerouting", HookClass::PreRouting),
        ("nat-output", HookClass::Out),
    ] {
        let c = base_chain(v4, name, ChainType::Nat, hook, -100).add_to_batch(&mut b);
        Rule::new(&c)?
            .with_expr(Counter::default())
            .with_expr(Immediate::new_verdict(jump("services")))
            .add_to_batch(&mut b);
    }
    let post = base_chain(
        v4,
        "nat-postrouting",
        ChainType::Nat,
        HookClass::PostRouting,
        100,
    )
    .add_to_batch(&mut b);
    Rule::new(&post)?
        .with_expr(Meta::new(MetaType::Mark))
        .with_expr(Bitwise::new(MASQ_MARK.to_ne_bytes(), 0u32.to_ne_bytes())?)
        .with_expr(Cmp::new(CmpOp::Eq, 0u32.to_ne_bytes()))
        .with_expr(Immediate::new_verdict(VerdictKind::Return))
        .add_to_batch(&mut b);
    Rule::new(&post)?
        .with_expr(Meta::new(MetaType::Mark))
        .with_expr(Bitwise::new(
            0xffff_ffffu32.to_ne_bytes(),
            MASQ_MARK.to_ne_bytes(),
        )?)
        .with_expr(
            Meta::default()
                .with_key(MetaType::Mark)
                .with_sreg(Register::Reg1),
        )
        .add_to_batch(&mut b);
    Rule::new(&post)?
        .with_expr(Counter::default())
        .with_expr(Masquerade::fully_random())
        .add_to_batch(&mut b);

    add_ip6(&mut b)?;
    Ok((b, nb_lists))
}

/// A same-named ip6 table: concat vmap over a 16-byte address, dnat to [fd00::2]:8080, and a
/// policy-drop base chain with reject icmpv6 port-unreachable.
fn add_ip6(b: &mut Batch) -> R<()> {
    let v6 = ProtocolFamily::Ipv6;
    let t = table(v6).add_to_batch(b);
    let services = chain(v6, "services").add_to_batch(b);
    let ep = chain(v6, "ep-6").add_to_batch(b);
    Rule::new(&ep)?
        .with_expr(Meta::new(MetaType::L4Proto))
        .with_expr(Cmp::new(CmpOp::Eq, [TCP]))
        .with_expr(Immediate::new_data(
            "fd00::2".parse::<Ipv6Addr>()?.octets().to_vec(),
            Register::Reg1,
        ))
        .with_expr(Immediate::new_data(
            8080u16.to_be_bytes().to_vec(),
            Register::Reg2,
        ))
        .with_expr(Nat::dnat(v6, Register::Reg1, Some(Register::Reg2)))
        .add_to_batch(b);
    let map = Set::new("service-ips", &t)?
        .with_key(&[
            NftType::IPV6_ADDR,
            NftType::INET_PROTO,
            NftType::INET_SERVICE,
        ])
        .with_verdict_data();
    b.add(&map, MsgType::Add);
    let key = concat_bytes(&[
        &"fd00:96::10".parse::<Ipv6Addr>()?.octets(),
        &[TCP],
        &80u16.to_be_bytes(),
    ]);
    b.add(
        &SetElementList::new(&map).with_element(SetElement::new(key).with_verdict(goto("ep-6"))),
        MsgType::Add,
    );
    // ip6 daddr . meta l4proto . th dport vmap @service-ips: 16 bytes span Reg32_00..03
    Rule::new(&services)?
        .with_expr(
            Payload::default()
                .with_base(sys::NFT_PAYLOAD_NETWORK_HEADER)
                .with_offset(24u32)
                .with_len(16u32)
                .with_dreg(Register::Reg1),
        )
        .with_expr(
            Meta::default()
                .with_key(MetaType::L4Proto)
                .with_dreg(Register::Reg1.next_after(16).unwrap()),
        )
        .with_expr(th_dport(Register::Reg32_05))
        .with_expr(Lookup::new(&map)?.with_verdict_dreg())
        .add_to_batch(b);
    let nat = base_chain(
        v6,
        "nat-prerouting",
        ChainType::Nat,
        HookClass::PreRouting,
        -100,
    )
    .add_to_batch(b);
    Rule::new(&nat)?
        .with_expr(Immediate::new_verdict(jump("services")))
        .add_to_batch(b);
    let input = base_chain(v6, "filter-input", ChainType::Filter, HookClass::In, 0)
        .with_policy(ChainPolicy::Drop)
        .add_to_batch(b);
    Rule::new(&input)?
        .with_expr(Meta::new(MetaType::L4Proto))
        .with_expr(Cmp::new(CmpOp::Eq, [TCP]))
        .with_expr(Reject::icmp(ICMPV6_PORT_UNREACH))
        .add_to_batch(b);
    Ok(())
}

trait CloneNamed {
    fn clone_named(&self) -> Self;
}

impl CloneNamed for Table {
    fn clone_named(&self) -> Self {
        Table::new(self.get_family()).with_name(self.get_name().unwrap().as_str())
    }
}

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str) {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.failed += 1;
        }
    }
}

fn count_raw(rules: &[Rule]) -> usize {
    rules
        .iter()
        .flat_map(|r| r.get_expressions().into_iter().flat_map(|l| l.iter()))
        .filter(|e| matches!(e.get_data(), Some(ExpressionVariant::ExpressionRaw(_))))
        .count()
}

fn main() -> R<()> {
    let mut c = Checks { failed: 0 };

    // 1. the whole ruleset in one batch
    let t0 = Instant::now();
    let (batch, nb_lists) = initial()?;
    let (n, size) = (batch.len(), batch.size_bytes());
    let t_build = t0.elapsed();
    let t1 = Instant::now();
    batch.send()?;
    println!(
        "initial batch: {n} messages ({nb_lists} element lists), {size} bytes; built in {t_build:?}, sent+committed in {:?}",
        t1.elapsed()
    );

    // 2. read back
    let tables: Vec<Table> = list_tables()?
        .into_iter()
        .filter(|t| t.get_name().map(String::as_str) == Some(TABLE))
        .collect();
    let fams: Vec<ProtocolFamily> = tables.iter().map(|t| t.get_family()).collect();
    c.check(
        fams.contains(&ProtocolFamily::Ipv4) && fams.contains(&ProtocolFamily::Ipv6),
        &format!("list_tables shows families {fams:?}"),
    );
    let t4 = table(ProtocolFamily::Ipv4);
    let t6 = table(ProtocolFamily::Ipv6);
    let chains4 = list_chains_for_table(&t4)?;
    let chains6 = list_chains_for_table(&t6)?;
    c.check(
        chains4.len() == 10
            && chains4
                .iter()
                .all(|ch| ch.get_family() == ProtocolFamily::Ipv4),
        &format!("ip chains: {} (expected 10, all ip)", chains4.len()),
    );
    c.check(
        chains6.len() == 4
            && chains6
                .iter()
                .all(|ch| ch.get_family() == ProtocolFamily::Ipv6),
        &format!("ip6 chains: {} (expected 4, all ip6)", chains6.len()),
    );
    let input6 = chains6
        .iter()
        .find(|ch| ch.get_name().map(String::as_str) == Some("filter-input"));
    c.check(
        input6.and_then(|ch| ch.get_policy()) == Some(&ChainPolicy::Drop),
        "ip6 filter-input policy decodes as Drop",
    );
    let svc_a = chains4
        .iter()
        .find(|ch| ch.get_name().map(String::as_str) == Some("svc-a"));
    c.check(
        svc_a.and_then(|ch| ch.get_comment()).as_deref() == Some("ns1/svc-a:http"),
        "chain comment reads back",
    );
    let mut all_rules4 = Vec::new();
    for ch in &chains4 {
        all_rules4.extend(list_rules_for_chain(ch)?);
    }
    let mut all_rules6 = Vec::new();
    for ch in &chains6 {
        all_rules6.extend(list_rules_for_chain(ch)?);
    }
    c.check(
        all_rules4.len() == 16,
        &format!("ip rules listed: {} (expected 16)", all_rules4.len()),
    );
    c.check(
        all_rules6.len() == 4,
        &format!("ip6 rules listed: {} (expected 4)", all_rules6.len()),
    );
    c.check(
        count_raw(&all_rules4) + count_raw(&all_rules6) == 0,
        "every expression decodes to a typed variant (no ExpressionRaw)",
    );
    let names: Vec<String> = all_rules4
        .iter()
        .flat_map(|r| r.get_expressions().into_iter().flat_map(|l| l.iter()))
        .filter_map(|e| e.get_name().cloned())
        .collect();
    for n in [
        "numgen", "fib", "dynset", "lookup", "masq", "ct", "reject", "nat",
    ] {
        c.check(
            names.iter().any(|x| x == n),
            &format!("expression {n} listed"),
        );
    }
    c.check(
        all_rules4
            .iter()
            .any(|r| r.get_comment().as_deref() == Some("service dispatch")),
        "rule comment reads back",
    );

    let sets4 = list_sets_for_table(&t4)?;
    let sets6 = list_sets_for_table(&t6)?;
    c.check(
        sets4.len() == 5 && sets6.len() == 1,
        &format!(
            "sets: ip {} (expected 5), ip6 {} (expected 1)",
            sets4.len(),
            sets6.len()
        ),
    );
    let find = |name: &str| {
        sets4
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .cloned()
            .unwrap()
    };
    let map = find("service-ips");
    c.check(
        map.get_comment().as_deref() == Some("ClusterIP, ExternalIP and LoadBalancer IP traffic")
            && map.key_type == Some(7 << 12 | 12 << 6 | 13)
            && map.key_len == Some(12)
            && map.data_type == Some(sys::NFT_DATA_VERDICT),
        "service-ips: comment, key type/len, data type read back",
    );
    let t2 = Instant::now();
    let els = list_set_elements(&map)?;
    println!("listed {} elements in {:?}", els.len(), t2.elapsed());
    c.check(
        els.len() == BIG_MAP_ELEMENTS as usize + 1,
        &format!("service-ips has {} elements", els.len()),
    );
    let first = els
        .iter()
        .find(|e| e.key_bytes() == Some(&svc_key(Ipv4Addr::new(10, 96, 0, 10), 80)));
    c.check(
        first.and_then(|e| e.verdict()) == Some(goto("svc-a")),
        "element 10.96.0.10 . tcp . 80 : goto svc-a reads back",
    );
    let aff = find("affinity");
    c.check(
        aff.timeout == Some(3 * 3600 * 1000)
            && aff.data_len == Some(8)
            && aff.flags.unwrap_or(0)
                & (sys::NFT_SET_EVAL | sys::NFT_SET_TIMEOUT | sys::NFT_SET_MAP)
                == sys::NFT_SET_EVAL | sys::NFT_SET_TIMEOUT | sys::NFT_SET_MAP,
        "affinity: flags map|timeout|dynamic, timeout 3h, data len 8",
    );
    let aff_els = list_set_elements(&aff)?;
    c.check(
        aff_els.len() == 1
            && aff_els[0].timeout == Some(60_000)
            && aff_els[0].expiration.is_some_and(|e| e <= 60_000)
            && aff_els[0].value_bytes()
                == Some(&concat_bytes(&[&[10, 1, 0, 2], &8080u16.to_be_bytes()])),
        &format!(
            "affinity element: value and timeout 60s, expiration {:?}",
            aff_els.first().and_then(|e| e.expiration)
        ),
    );
    let no_ep = list_set_elements(&find("no-endpoint-services"))?;
    c.check(
        no_ep.iter().any(|e| e.verdict() == Some(VerdictKind::Drop)),
        "drop verdict element reads back",
    );

    // 3. a failing batch: the third message jumps to a missing chain
    let mut bad = Batch::new();
    let chain_seq = bad.add(&chain(ProtocolFamily::Ipv4, "would-be-new"), MsgType::Add);
    let del_seq = bad.add(
        &SetElementList::new(&map)
            .with_element(SetElement::new(svc_key(Ipv4Addr::new(10, 96, 0, 10), 80))),
        MsgType::Del,
    );
    let bad_seq = bad.add(
        &Rule::new(&chain(ProtocolFamily::Ipv4, "services"))?
            .with_expr(Immediate::new_verdict(goto("missing-chain"))),
        MsgType::Add,
    );
    for _ in 0..300 {
        // many messages after the failing one: with per-message ACKs this used to overflow
        Rule::new(&chain(ProtocolFamily::Ipv4, "nodeports"))?
            .with_expr(Counter::default())
            .add_to_batch(&mut bad);
    }
    match bad.send() {
        Ok(()) => c.check(false, "failing batch reported an error"),
        Err(e) => {
            println!("failing batch: {e}");
            let ke = e.kernel_error();
            c.check(
                ke == Some((bad_seq, nix::errno::Errno::ENOENT)),
                &format!("kernel error is (seq {bad_seq}, ENOENT): got {ke:?}"),
            );
            c.check(
                e.to_string().contains("No such file or directory"),
                "Display includes the errno text",
            );
        }
    }
    let _ = (chain_seq, del_seq);
    let after = list_chains_for_table(&t4)?;
    c.check(
        after.len() == 10 && list_set_elements(&map)?.len() == BIG_MAP_ELEMENTS as usize + 1,
        "failed batch applied nothing (atomic)",
    );

    // 4. replace an element's verdict (Del + Add) and delete another
    let mut upd = Batch::new();
    let k = svc_key(Ipv4Addr::new(10, 96, 0, 10), 80);
    upd.add(
        &SetElementList::new(&map).with_element(SetElement::new(k.clone())),
        MsgType::Del,
    );
    upd.add(
        &SetElementList::new(&map)
            .with_element(SetElement::new(k.clone()).with_verdict(goto("ep-1"))),
        MsgType::Add,
    );
    upd.add(
        &SetElementList::new(&map)
            .with_element(SetElement::new(svc_key(Ipv4Addr::new(10, 100, 0, 0), 443))),
        MsgType::Del,
    );
    upd.send()?;
    let els = list_set_elements(&map)?;
    c.check(
        els.len() == BIG_MAP_ELEMENTS as usize
            && els
                .iter()
                .find(|e| e.key_bytes() == Some(&k))
                .and_then(|e| e.verdict())
                == Some(goto("ep-1")),
        "element replaced (Del+Add) and deleted",
    );

    if c.failed > 0 {
        return Err(format!("{} check(s) failed", c.failed).into());
    }
    println!("all checks passed");
    Ok(())
}
