//! Reading our tables back from the kernel as IR ([`read_ruleset`]): the exact inverse of
//! the encoders (`decl.rs` for sets and chains, `elements.rs` for keys and data, `rule.rs`
//! for expressions), so `trace --live` interprets what the kernel really holds.
//!
//! A rule is decoded in two steps: each netlink expression becomes an [`Atom`] (registers
//! normalised to 32-bit units, because the kernel dumps `NFT_REG32_04` as `NFT_REG_2`),
//! then the atoms are matched against the shapes `rule.rs` writes, one match arm per IR
//! expression or verdict. A sequence no arm recognises is an error naming the chain and the
//! rule's position: a tracer that guessed would explain rules the kernel does not run.
//!
//! What the kernel holds but the IR does not: elements of dynamic sets (the datapath adds
//! them, e.g. session affinity entries, each with its own expiry). They are not read; the
//! IR's dynamic sets are empty, which is also how the evaluator treats them (a client not
//! seen before).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustables::expr::{
    CmpOp as NlCmpOp, ConnTrackState, ConnTrackStatus, ConntrackKey, DynsetOp, ExpressionVariant,
    FibResult, MetaType, NatType, NumgenType, RawExpression, Register, RejectType, VerdictKind,
    ICMPV6_PORT_UNREACH, ICMP_PORT_UNREACH, NF_NAT_RANGE_PROTO_RANDOM_FULLY,
};
use rustables::set::list_sets_for_table;
use rustables::{
    list_chains_for_table, list_tables, sys, ChainPolicy, ChainType as NlChainType, HookClass,
    NfNetlinkObject, Rule as NlRule, Set as NlSet,
};

use super::listing::read_elements;
use super::text;
use super::*;
use crate::ruleset::ir::{
    self, BaseChain, Chain, ChainType, CmpOp, ElementData, Expr, Family, FibAddr, Field, Hook,
    KeyType, MapData, Proto, Rule, Ruleset, Set, SetFlags, Value, Verdict,
};
use crate::ruleset::TABLE_NAME;

/// Our tables (`ip` and `ip6` `kube-nftproxy`) as the kernel of the current network
/// namespace holds them, as IR; a family without the table is left out.
pub fn read_ruleset() -> Result<Ruleset, NetlinkError> {
    let mut rs = Ruleset::default();
    for f in [Family::V4, Family::V6] {
        if let Some(t) = read_ir_table(f, TABLE_NAME)? {
            rs.tables.push(t);
        }
    }
    Ok(rs)
}

fn unreadable(object: impl Into<String>, reason: impl Into<String>) -> NetlinkError {
    NetlinkError::Unreadable {
        object: object.into(),
        reason: reason.into(),
    }
}

/// One table as IR: chains, sets and rules in the kernel's order (creation order, which a
/// full transaction makes the IR's order), `None` when the kernel has no such table.
pub fn read_ir_table(f: Family, name: &str) -> Result<Option<ir::Table>, NetlinkError> {
    let pf = nl_family(f);
    let Some(table) = list_tables()?
        .into_iter()
        .find(|t| t.get_family() == pf && t.get_name().map(String::as_str) == Some(name))
    else {
        return Ok(None);
    };
    let fam = text::family_name(f);

    // One rule dump for the whole table, grouped by chain in dump order.
    let mut rules: BTreeMap<String, Vec<NlRule>> = BTreeMap::new();
    let filter = NlRule::default().with_family(pf).with_table(name);
    rustables::query::list_objects_with_data(
        sys::NFT_MSG_GETRULE as u16,
        &|r: NlRule, rules: &mut BTreeMap<String, Vec<NlRule>>| {
            if r.get_family() == pf && r.get_table().map(String::as_str) == Some(name) {
                if let Some(c) = r.get_chain() {
                    rules.entry(c.clone()).or_default().push(r);
                }
            }
            Ok(())
        },
        Some(&filter),
        &mut rules,
    )?;

    let mut sets = Vec::new();
    for nl in list_sets_for_table(&table)? {
        sets.push(read_set(f, name, &nl)?);
    }

    let mut chains = Vec::new();
    for c in list_chains_for_table(&table)? {
        let cname = c.get_name().cloned().unwrap_or_default();
        let object = format!("chain {fam} {name} {cname}");
        let base = match c.get_hook() {
            None => None,
            Some(h) => {
                if c.get_policy().is_some_and(|p| *p != ChainPolicy::Accept) {
                    return Err(unreadable(&object, "policy other than accept"));
                }
                let kind = match c.get_type() {
                    Some(NlChainType::Filter) => ChainType::Filter,
                    Some(NlChainType::Nat) => ChainType::Nat,
                    other => return Err(unreadable(&object, format!("chain type {other:?}"))),
                };
                let class = h.get_class().copied().unwrap_or(u32::MAX);
                let hook = [
                    (HookClass::PreRouting, Hook::Prerouting),
                    (HookClass::In, Hook::Input),
                    (HookClass::Forward, Hook::Forward),
                    (HookClass::Out, Hook::Output),
                    (HookClass::PostRouting, Hook::Postrouting),
                ]
                .into_iter()
                .find(|(k, _)| *k as u32 == class)
                .map(|(_, h)| h)
                .ok_or_else(|| unreadable(&object, format!("hook number {class}")))?;
                Some(BaseChain {
                    kind,
                    hook,
                    priority: h.get_priority().map(|p| *p as i32).unwrap_or(0),
                })
            }
        };
        let mut ir_rules = Vec::new();
        let nl_rules = rules.remove(&cname).unwrap_or_default();
        for (i, r) in nl_rules.iter().enumerate() {
            let exprs: Vec<&RawExpression> = match r.get_expressions() {
                Some(l) => l.iter().collect(),
                None => Vec::new(),
            };
            let (exprs, verdict) = decode_rule(f, &exprs).map_err(|reason| {
                unreadable(
                    format!("{object}, rule {} of {}", i + 1, nl_rules.len()),
                    reason,
                )
            })?;
            ir_rules.push(Rule {
                exprs,
                verdict,
                comment: r.get_comment(),
            });
        }
        chains.push(Chain {
            name: cname,
            base,
            comment: c.get_comment(),
            rules: ir_rules,
        });
    }
    if let Some(orphan) = rules.keys().next() {
        return Err(unreadable(
            format!("table {fam} {name}"),
            format!("rules of chain {orphan}, which the chain listing did not have"),
        ));
    }

    Ok(Some(ir::Table {
        family: f,
        name: name.to_string(),
        comment: table.get_comment(),
        sets,
        chains,
    }))
}

/// The key or data types of a set: the nft type id of a concatenation holds one 6-bit id
/// per field (`NftType::concat_type`); the length must be the one those fields give.
fn key_types(f: Family, mut id: u32, len: u32) -> Result<Vec<KeyType>, String> {
    let mut out = Vec::new();
    while id != 0 {
        let part = id & ((1 << rustables::data_type::NftType::TYPE_BITS) - 1);
        let k = [
            KeyType::Addr,
            KeyType::Proto,
            KeyType::Service,
            KeyType::Slot,
        ]
        .into_iter()
        .find(|k| nft_type(f, *k).id == part)
        .ok_or_else(|| format!("key type id {part}"))?;
        out.push(k);
        id >>= rustables::data_type::NftType::TYPE_BITS;
    }
    out.reverse();
    let want = rustables::data_type::NftType::concat_len(&nft_types(f, &out));
    if out.is_empty() || want != len {
        return Err(format!("type {out:?} with length {len}"));
    }
    Ok(out)
}

fn read_set(f: Family, table: &str, nl: &NlSet) -> Result<Set, NetlinkError> {
    let name = nl.name.clone().unwrap_or_default();
    let object = format!("set {} {table} {name}", text::family_name(f));
    let err = |r: String| unreadable(&object, r);
    let flags = nl.flags.unwrap_or(0);
    let known = sys::NFT_SET_MAP | sys::NFT_SET_TIMEOUT | sys::NFT_SET_EVAL;
    if flags & !known != 0 {
        return Err(err(format!("flags {flags:#x}")));
    }
    let key = key_types(f, nl.key_type.unwrap_or(0), nl.key_len.unwrap_or(0)).map_err(err)?;
    let data = if flags & sys::NFT_SET_MAP == 0 {
        None
    } else if nl.data_type == Some(sys::NFT_DATA_VERDICT) {
        Some(MapData::Verdict)
    } else {
        let t = key_types(f, nl.data_type.unwrap_or(0), nl.data_len.unwrap_or(0));
        Some(MapData::Values(
            t.map_err(|r| err(format!("map data: {r}")))?,
        ))
    };
    let timeout = match nl.timeout.filter(|t| *t != 0) {
        None => None,
        Some(ms) if ms % 1000 == 0 && ms / 1000 <= u64::from(u32::MAX) => Some((ms / 1000) as u32),
        Some(ms) => return Err(err(format!("timeout of {ms} ms"))),
    };
    let mut set = Set {
        name: name.clone(),
        key,
        data,
        flags: SetFlags {
            dynamic: flags & sys::NFT_SET_EVAL != 0,
            timeout: flags & sys::NFT_SET_TIMEOUT != 0,
        },
        timeout,
        comment: nl.get_comment(),
        elements: Default::default(),
    };
    if set.flags.dynamic {
        return Ok(set); // the datapath's elements (see the module docs)
    }
    for e in read_elements(nl, &name)? {
        let key = decode_values(f, &set.key, &e.key)
            .map_err(|r| err(format!("element key {:02x?}: {r}", e.key)))?;
        let data = match (&set.data, e.data) {
            (None, None) => None,
            (Some(MapData::Verdict), Some(KernelData::Verdict(v))) => Some(ElementData::Verdict(
                verdict_of(&v).map_err(|r| err(format!("element {key:?}: {r}")))?,
            )),
            (Some(MapData::Values(types)), Some(KernelData::Value(bytes))) => {
                let vals = decode_values(f, types, &bytes)
                    .map_err(|r| err(format!("element {key:?} data {bytes:02x?}: {r}")))?;
                Some(ElementData::Values(vals.into()))
            }
            (d, ed) => return Err(err(format!("element {key:?}: data {ed:?} in a {d:?} set"))),
        };
        set.elements.insert(key, data);
    }
    Ok(set)
}

/// The inverse of `encode_values`.
fn decode_values(f: Family, types: &[KeyType], bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    for k in types {
        let len = nft_type(f, *k).len as usize;
        let padded = if types.len() > 1 {
            len.div_ceil(4) * 4
        } else {
            len
        };
        if rest.len() < padded {
            return Err(format!("{} bytes for {types:?}", bytes.len()));
        }
        let (v, tail) = rest.split_at(padded);
        out.push(decode_value(f, *k, &v[..len])?);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes for {types:?}", bytes.len()));
    }
    Ok(out)
}

fn decode_value(f: Family, k: KeyType, b: &[u8]) -> Result<Value, String> {
    Ok(match k {
        KeyType::Addr => Value::Addr(addr_of(f, b).ok_or("address length")?),
        KeyType::Proto => Value::Proto(proto_of(b).ok_or_else(|| format!("protocol {b:?}"))?),
        KeyType::Service => Value::Port(u16::from_be_bytes(b.try_into().map_err(|_| "port")?)),
        KeyType::Slot => Value::Slot(u32::from_ne_bytes(b.try_into().map_err(|_| "slot")?)),
    })
}

fn addr_of(f: Family, b: &[u8]) -> Option<IpAddr> {
    match f {
        Family::V4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| Ipv4Addr::from(a).into()),
        Family::V6 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| Ipv6Addr::from(a).into()),
    }
}

fn proto_of(b: &[u8]) -> Option<Proto> {
    [Proto::Tcp, Proto::Udp, Proto::Sctp]
        .into_iter()
        .find(|p| [p.number()] == b)
}

fn verdict_of(v: &VerdictKind) -> Result<Verdict, String> {
    Ok(match v {
        VerdictKind::Accept => Verdict::Accept,
        VerdictKind::Drop => Verdict::Drop,
        VerdictKind::Return => Verdict::Return,
        VerdictKind::Jump { chain } => Verdict::Jump(chain.clone()),
        VerdictKind::Goto { chain } => Verdict::Goto(chain.clone()),
        other => return Err(format!("verdict {other:?}")),
    })
}

/// One netlink expression, with registers as 32-bit units (`reg 1` is unit 0, `reg 2`
/// unit 4). Only what the encoder writes has a variant; anything else is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    /// A packet field into a register: payload, `meta l4proto`, `numgen random`.
    Load(Field, u32),
    /// `ct state` / `ct status` into a register.
    Ct(CtKey, u32),
    /// `meta mark` into a register.
    Mark(u32),
    /// `meta iifname` into a register.
    Iifname(u32),
    /// `meta mark set` from a register.
    SetMark(u32),
    /// `fib saddr|daddr type` into a register.
    FibType(FibAddr, u32),
    Cmp {
        unit: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `reg = (reg & mask) ^ xor`, in place.
    Bitwise {
        unit: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// A set lookup from `unit`: plain (`dreg` None), into a register, or a verdict map.
    Lookup {
        unit: u32,
        set: String,
        dreg: Option<LookupDreg>,
    },
    ImmData(u32, Vec<u8>),
    ImmVerdict(VerdictKind),
    /// `update @set { key }` with no data and no timeout of its own (the set's applies).
    DynsetUpdate {
        set: String,
        key: u32,
    },
    /// `dnat` of this table's family to the address in `addr` and the port in `port`.
    Dnat {
        addr: u32,
        port: u32,
    },
    /// `reject` with an ICMP code.
    RejectIcmp(u8),
    MasqueradeFullyRandom,
    /// `counter` (its packet and byte counts are the kernel's, not the rule's; the IR
    /// holds none).
    Counter,
    /// Anything else, described for the error.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CtKey {
    State,
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LookupDreg {
    Verdict,
    Unit(u32),
}

/// The 32-bit unit of a register as the kernel dumps it (the inverse of `reg_at`).
fn unit(r: Option<&Register>) -> Option<u32> {
    match r {
        Some(Register::Verdict) | None => None,
        Some(r) => r.reg32_index(),
    }
}

fn atom(f: Family, e: &RawExpression) -> Atom {
    let other = || {
        Atom::Other(format!(
            "{} {:?}",
            e.get_name().map(String::as_str).unwrap_or("?"),
            e.get_data()
        ))
    };
    let Some(data) = e.get_data() else {
        return other();
    };
    let a = match data {
        ExpressionVariant::Payload(p) => {
            let (base, off, len) = (p.get_base(), p.get_offset(), p.get_len());
            let (Some(&base), Some(&off), Some(&len), None) = (base, off, len, p.get_sreg()) else {
                return other();
            };
            let field = if base == sys::NFT_PAYLOAD_NETWORK_HEADER && len == addr_len(f) {
                match (f, off) {
                    (Family::V4, 12) | (Family::V6, 8) => Some(Field::Saddr),
                    (Family::V4, 16) | (Family::V6, 24) => Some(Field::Daddr),
                    _ => None,
                }
            } else if base == sys::NFT_PAYLOAD_TRANSPORT_HEADER && (off, len) == (2, 2) {
                Some(Field::Dport)
            } else {
                None
            };
            field
                .zip(unit(p.get_dreg()))
                .map(|(fl, u)| Atom::Load(fl, u))
        }
        ExpressionVariant::Meta(m) => match (m.get_key(), unit(m.get_dreg()), unit(m.get_sreg())) {
            (Some(MetaType::L4Proto), Some(u), None) => Some(Atom::Load(Field::L4Proto, u)),
            (Some(MetaType::Mark), Some(u), None) => Some(Atom::Mark(u)),
            (Some(MetaType::IifName), Some(u), None) => Some(Atom::Iifname(u)),
            (Some(MetaType::Mark), None, Some(u)) => Some(Atom::SetMark(u)),
            _ => None,
        },
        ExpressionVariant::Numgen(n) => {
            match (
                n.get_type(),
                n.get_modulus(),
                n.get_offset(),
                unit(n.get_dreg()),
            ) {
                (Some(NumgenType::Random), Some(&m), None | Some(0), Some(u)) => {
                    Some(Atom::Load(Field::Random(m), u))
                }
                _ => None,
            }
        }
        ExpressionVariant::Conntrack(c) => {
            let key = match c.get_key() {
                Some(ConntrackKey::State) => Some(CtKey::State),
                Some(ConntrackKey::Status) => Some(CtKey::Status),
                _ => None,
            };
            match (key, unit(c.get_dreg()), c.get_direction(), c.get_sreg()) {
                (Some(k), Some(u), None, None) => Some(Atom::Ct(k, u)),
                _ => None,
            }
        }
        ExpressionVariant::Fib(x) => {
            let addr = match x.get_flags() {
                Some(&fl) if fl == sys::NFTA_FIB_F_SADDR => Some(FibAddr::Saddr),
                Some(&fl) if fl == sys::NFTA_FIB_F_DADDR => Some(FibAddr::Daddr),
                _ => None,
            };
            match (x.get_result(), addr, unit(x.get_dreg())) {
                (Some(FibResult::AddrType), Some(a), Some(u)) => Some(Atom::FibType(a, u)),
                _ => None,
            }
        }
        ExpressionVariant::Cmp(c) => {
            let op = match c.get_op() {
                Some(NlCmpOp::Eq) => Some(CmpOp::Eq),
                Some(NlCmpOp::Neq) => Some(CmpOp::Neq),
                _ => None,
            };
            let data = c.get_data().and_then(|d| d.get_value()).cloned();
            match (op, data, unit(c.get_sreg())) {
                (Some(op), Some(data), Some(unit)) => Some(Atom::Cmp { unit, op, data }),
                _ => None,
            }
        }
        ExpressionVariant::Bitwise(b) => {
            let (s, d) = (unit(b.get_sreg()), unit(b.get_dreg()));
            let mask = b.get_mask().and_then(|m| m.get_value());
            let xor = b.get_xor().and_then(|x| x.get_value());
            match (s, d, b.get_len(), mask, xor) {
                (Some(s), Some(d), Some(&len), Some(mask), Some(xor))
                    if s == d && mask.len() == len as usize && xor.len() == len as usize =>
                {
                    Some(Atom::Bitwise {
                        unit: s,
                        mask: mask.clone(),
                        xor: xor.clone(),
                    })
                }
                _ => None,
            }
        }
        ExpressionVariant::Lookup(l) => {
            let inverted = l.get_flags().is_some_and(|fl| *fl != 0);
            let dreg = match l.get_dreg() {
                None => Some(None),
                Some(Register::Verdict) => Some(Some(LookupDreg::Verdict)),
                r => unit(r).map(|u| Some(LookupDreg::Unit(u))),
            };
            match (l.get_set(), unit(l.get_sreg()), dreg, inverted) {
                (Some(set), Some(unit), Some(dreg), false) => Some(Atom::Lookup {
                    unit,
                    set: set.clone(),
                    dreg,
                }),
                _ => None,
            }
        }
        ExpressionVariant::Immediate(i) => {
            let d = i.get_data();
            match (i.get_dreg(), d.and_then(|d| d.get_value()), d) {
                (Some(Register::Verdict), None, Some(d)) => {
                    d.get_verdict().and_then(|v| v.kind()).map(Atom::ImmVerdict)
                }
                (r, Some(v), _) => unit(r).map(|u| Atom::ImmData(u, v.clone())),
                _ => None,
            }
        }
        ExpressionVariant::Dynset(d) => {
            let (k, dt) = (unit(d.get_sreg_key()), unit(d.get_sreg_data()));
            let flags = d.get_flags().copied().unwrap_or(0);
            // The kernel dumps a timeout of 0 for "the set's own".
            let own_timeout = d.get_timeout().is_some_and(|t| *t != 0);
            match (d.get_op(), d.get_set_name(), k, dt, own_timeout, flags) {
                (Some(DynsetOp::Update), Some(set), Some(key), None, false, 0) => {
                    Some(Atom::DynsetUpdate {
                        set: set.clone(),
                        key,
                    })
                }
                _ => None,
            }
        }
        ExpressionVariant::Nat(n) => {
            // The kernel fills in the range's maximum registers (equal to the minimum) and
            // the flags saying an address and a port are mapped; nothing else is ours.
            let (amin, pmin) = (unit(n.ip_register.as_ref()), unit(n.port_register.as_ref()));
            let same_max = unit(n.ip_register_max.as_ref()).is_none_or(|u| Some(u) == amin)
                && unit(n.port_register_max.as_ref()).is_none_or(|u| Some(u) == pmin);
            let flags_ok =
                n.flags.unwrap_or(0) & !(NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED) == 0;
            match (n.nat_type, n.family, amin, pmin) {
                (Some(NatType::DNat), Some(fam), Some(addr), Some(port))
                    if fam == nl_family(f) && same_max && flags_ok =>
                {
                    Some(Atom::Dnat { addr, port })
                }
                _ => None,
            }
        }
        ExpressionVariant::Reject(r) => match (r.get_type(), r.get_icmp_code()) {
            (Some(RejectType::IcmpUnreach), Some(&c)) => Some(Atom::RejectIcmp(c)),
            _ => None,
        },
        ExpressionVariant::Counter(_) => Some(Atom::Counter),
        ExpressionVariant::Masquerade(m) => {
            let plain = m.get_proto_min().is_none() && m.get_proto_max().is_none();
            (plain && m.get_flags() == Some(&NF_NAT_RANGE_PROTO_RANDOM_FULLY))
                .then_some(Atom::MasqueradeFullyRandom)
        }
        _ => None,
    };
    a.unwrap_or_else(other)
}

/// `NF_NAT_RANGE_MAP_IPS` and `NF_NAT_RANGE_PROTO_SPECIFIED` (`<linux/netfilter/nf_nat.h>`).
const NF_NAT_RANGE_MAP_IPS: u32 = 0x01;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x02;

/// A rule's expressions as IR, or why they are not a shape the encoder writes.
fn decode_rule(
    f: Family,
    exprs: &[&RawExpression],
) -> Result<(Vec<Expr>, Option<Verdict>), String> {
    let atoms: Vec<Atom> = exprs.iter().map(|e| atom(f, e)).collect();
    let mut out = Vec::new();
    let mut rest = atoms.as_slice();
    while !rest.is_empty() {
        // A verdict ends the rule: only a shape that takes every remaining atom is one.
        if let Some(v) = verdict_shape(f, rest) {
            return Ok((out, Some(v)));
        }
        let Some((e, n)) = expr_shape(f, rest) else {
            let at = atoms.len() - rest.len();
            return Err(format!(
                "expressions {}.. are no shape this program writes: {rest:?}",
                at + 1
            ));
        };
        out.push(e);
        rest = &rest[n..];
    }
    Ok((out, None))
}

/// Consecutive loads into units 0, 1, ... (each field padded to 4 bytes): a key. Returns
/// the fields, the atoms taken and the next free unit.
fn key_shape(f: Family, atoms: &[Atom]) -> Option<(Vec<Field>, usize, u32)> {
    let mut key = Vec::new();
    let mut next = 0;
    for a in atoms {
        match a {
            Atom::Load(fl, u) if *u == next => {
                key.push(*fl);
                next += field_len(f, *fl).div_ceil(4);
            }
            _ => break,
        }
    }
    (!key.is_empty()).then(|| (key.clone(), key.len(), next))
}

fn u32_data(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.try_into().ok()?))
}

/// The prefix length of a mask of leading ones, e.g. `ff.ff.00.00` is 16.
fn prefix_of(mask: &[u8]) -> Option<u8> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    (u8::try_from(ones).ok()).filter(|n| prefix_mask(mask.len(), *n) == mask)
}

/// A statement or match at the start of `a`, with the number of atoms it takes. One arm
/// per IR expression, in the order `RuleBuilder::expr` encodes them.
fn expr_shape(f: Family, a: &[Atom]) -> Option<(Expr, usize)> {
    use Atom::*;
    let zero = 0u32.to_ne_bytes().to_vec();
    let bits = (addr_len(f) * 8) as u8;
    Some(match a {
        [Load(fl @ (Field::Saddr | Field::Daddr), 0), Bitwise { unit: 0, mask, xor }, Cmp { unit: 0, op, data }, ..]
            if xor.iter().all(|b| *b == 0) =>
        {
            let prefix_len = prefix_of(mask).filter(|p| *p < bits)?;
            let addr = addr_of(f, data)?;
            let e = Expr::AddrCmp {
                field: *fl,
                op: *op,
                addr,
                prefix_len,
            };
            (e, 3)
        }
        [Load(fl @ (Field::Saddr | Field::Daddr), 0), Cmp { unit: 0, op, data }, ..] => {
            let e = Expr::AddrCmp {
                field: *fl,
                op: *op,
                addr: addr_of(f, data)?,
                prefix_len: bits,
            };
            (e, 2)
        }
        [Load(Field::L4Proto, 0), Cmp {
            unit: 0,
            op: CmpOp::Eq,
            data,
        }, ..] => (Expr::L4Proto(proto_of(data)?), 2),
        // A whole name is compared with its NUL padding to IFNAMSIZ; a `*` prefix with
        // its own bytes only (as `RuleBuilder::expr` writes them).
        [Iifname(0), Cmp { unit: 0, op, data }, ..] => {
            let (name, prefix) = if data.len() == IFNAMSIZ {
                let end = data.iter().position(|b| *b == 0)?;
                if data[end..].iter().any(|b| *b != 0) {
                    return None;
                }
                (&data[..end], false)
            } else {
                (&data[..], true)
            };
            if name.is_empty() || name.contains(&0) {
                return None;
            }
            let e = Expr::Iifname {
                op: *op,
                name: String::from_utf8(name.to_vec()).ok()?,
                prefix,
            };
            (e, 2)
        }
        [Load(Field::Random(m), 0), Cmp {
            unit: 0,
            op: CmpOp::Eq,
            data,
        }, ..] => {
            let e = Expr::Numgen {
                modulus: *m,
                value: u32_data(data)?,
            };
            (e, 2)
        }
        [Ct(k, 0), Bitwise { unit: 0, mask, xor }, Cmp {
            unit: 0,
            op: CmpOp::Neq,
            data,
        }, ..]
            if *xor == zero && *data == zero =>
        {
            let m = u32_data(mask)?;
            let e = match k {
                CtKey::State if m == ConnTrackState::NEW.bits() => Expr::CtStateNew,
                CtKey::Status if m == ConnTrackStatus::DNAT.bits() => Expr::CtStatusDnat,
                _ => return None,
            };
            (e, 3)
        }
        [FibType(addr, 0), Cmp {
            unit: 0,
            op: CmpOp::Eq,
            data,
        }, ..]
            if u32_data(data) == Some(RTN_LOCAL) =>
        {
            (Expr::FibLocal(*addr), 2)
        }
        [Mark(0), Bitwise { unit: 0, mask, xor }, Cmp {
            unit: 0,
            op: CmpOp::Neq,
            data,
        }, ..]
            if *xor == zero && *data == zero =>
        {
            (Expr::MarkSet(u32_data(mask)?), 3)
        }
        [Counter, ..] => (Expr::Counter, 1),
        [Mark(0), Bitwise { unit: 0, mask, xor }, SetMark(0), ..] => {
            let (mask, xor) = (u32_data(mask)?, u32_data(xor)?);
            // `mark_set(!m, m)` and `mark_set(MAX, m)`; for m = 0 both are the same no-op
            let e = if mask == !xor && xor != 0 {
                Expr::MarkOr(xor)
            } else if mask == u32::MAX {
                Expr::MarkXor(xor)
            } else {
                return None;
            };
            (e, 3)
        }
        _ => return keyed_expr_shape(f, a),
    })
}

/// The expressions that start by loading a key.
fn keyed_expr_shape(f: Family, a: &[Atom]) -> Option<(Expr, usize)> {
    let (key, n, _) = key_shape(f, a)?;
    match &a[n..] {
        [Atom::Lookup {
            unit: 0,
            set,
            dreg: None,
        }, ..] => Some((
            Expr::Lookup {
                key,
                set: set.clone(),
            },
            n + 1,
        )),
        [Atom::DynsetUpdate { set, key: 0 }, ..] => Some((
            Expr::Update {
                set: set.clone(),
                key,
            },
            n + 1,
        )),
        _ => None,
    }
}

/// A verdict that takes all of `a`. One arm per IR verdict, as `RuleBuilder::verdict`
/// encodes them.
fn verdict_shape(f: Family, a: &[Atom]) -> Option<Verdict> {
    use Atom::*;
    let addr_units = addr_len(f).div_ceil(4);
    let reject_code = match f {
        Family::V4 => ICMP_PORT_UNREACH,
        Family::V6 => ICMPV6_PORT_UNREACH,
    };
    match a {
        [ImmVerdict(k)] => verdict_of(k).ok(),
        [RejectIcmp(c)] if *c == reject_code => Some(Verdict::Reject),
        [MasqueradeFullyRandom] => Some(Verdict::Masquerade),
        [Load(Field::L4Proto, 0), Cmp {
            unit: 0,
            op: CmpOp::Eq,
            data: p,
        }, ImmData(0, addr), ImmData(4, port), Dnat { addr: 0, port: 4 }] => Some(Verdict::Dnat {
            proto: proto_of(p)?,
            addr: addr_of(f, addr)?,
            port: u16::from_be_bytes(port.as_slice().try_into().ok()?),
        }),
        // `meta l4proto P` then a DNAT map: the encoding of `DnatMap { proto: Some(P) }`,
        // and also of an `L4Proto(P)` match before `DnatMap { proto: None }`; the builder
        // only writes the first.
        [Load(Field::L4Proto, 0), Cmp {
            unit: 0,
            op: CmpOp::Eq,
            data: p,
        }, rest @ ..] => match dnat_map_shape(f, rest, addr_units)? {
            Verdict::DnatMap {
                proto: None,
                key,
                map,
            } => Some(Verdict::DnatMap {
                proto: Some(proto_of(p)?),
                key,
                map,
            }),
            _ => None,
        },
        _ => {
            let (key, n, _) = key_shape(f, a)?;
            match &a[n..] {
                [Lookup {
                    unit: 0,
                    set,
                    dreg: Some(LookupDreg::Verdict),
                }] => Some(Verdict::Vmap {
                    key,
                    map: set.clone(),
                }),
                _ => dnat_map_shape(f, a, addr_units),
            }
        }
    }
}

/// `<key> map @m` into `reg 1` and a DNAT to the address and port there: all of `a`.
fn dnat_map_shape(f: Family, a: &[Atom], addr_units: u32) -> Option<Verdict> {
    let (key, n, _) = key_shape(f, a)?;
    match &a[n..] {
        [Atom::Lookup {
            unit: 0,
            set,
            dreg: Some(LookupDreg::Unit(0)),
        }, Atom::Dnat { addr: 0, port }]
            if *port == addr_units =>
        {
            Some(Verdict::DnatMap {
                proto: None,
                key,
                map: set.clone(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustables::expr::{Counter, Log, Meta};

    #[test]
    fn key_types_invert_the_concat_type_and_check_the_length() {
        use KeyType::*;
        for (f, key) in [
            (Family::V4, vec![Addr, Proto, Service, Slot]),
            (Family::V6, vec![Addr, Addr, Proto, Service]),
            (Family::V4, vec![Service]),
        ] {
            let types = nft_types(f, &key);
            let (id, len) = (
                rustables::data_type::NftType::concat_type(&types),
                rustables::data_type::NftType::concat_len(&types),
            );
            assert_eq!(key_types(f, id, len), Ok(key.clone()));
            assert!(key_types(f, id, len + 4).is_err());
        }
        assert!(
            key_types(Family::V4, 9, 6).is_err(),
            "ether_addr is not ours"
        );
        assert!(key_types(Family::V4, 0, 0).is_err());
    }

    #[test]
    fn values_decode_as_encoded() {
        use KeyType::*;
        let f = Family::V6;
        let types = [Addr, Proto, Service, Slot];
        let vals = vec![
            Value::Addr("fd00::1".parse().unwrap()),
            Value::Proto(ir::Proto::Sctp),
            Value::Port(8443),
            Value::Slot(3),
        ];
        let bytes = encode_values(f, &types, &vals).unwrap();
        assert_eq!(decode_values(f, &types, &bytes), Ok(vals));
        assert!(decode_values(f, &types, &bytes[..bytes.len() - 1]).is_err());
        assert!(
            decode_values(f, &[Proto], &[47]).is_err(),
            "gre is not ours"
        );
    }

    #[test]
    fn prefixes_are_leading_ones_only() {
        assert_eq!(prefix_of(&[0xff, 0xf0, 0, 0]), Some(12));
        assert_eq!(prefix_of(&[0, 0, 0, 0]), Some(0));
        assert_eq!(prefix_of(&[0xff, 0x0f, 0, 0]), None);
    }

    /// Unknown expressions and half shapes are errors that say where, never a panic.
    #[test]
    fn unknown_expressions_are_errors_with_their_position() {
        let l4 = RawExpression::from(Meta::new(MetaType::L4Proto));
        let counter = RawExpression::from(Counter::default());
        let err = decode_rule(Family::V4, &[&l4, &counter]).unwrap_err();
        assert!(err.starts_with("expressions 1.. are no shape"), "{err}");
        // `log` is nothing the encoder writes.
        let log = RawExpression::from(Log::default());
        let err = decode_rule(Family::V4, &[&counter, &log]).unwrap_err();
        assert!(err.contains("expressions 2.."), "{err}");
        assert_eq!(
            decode_rule(Family::V4, &[&counter]),
            Ok((vec![Expr::Counter], None))
        );
        assert_eq!(decode_rule(Family::V4, &[]), Ok((vec![], None)));
    }
}
