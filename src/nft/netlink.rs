//! The IR over netlink: a [`Transaction`] becomes one rustables [`Batch`] (one kernel
//! transaction, all or nothing), and our tables are read back into plain data
//! ([`KernelTable`]) to check that the kernel holds what we programmed.
//!
//! Every expression is encoded the way nft itself encodes it, so `nft list table` prints
//! exactly the text `nft::text` renders for the same IR (the tests check this for every
//! golden scenario in a throwaway network namespace). Notes on the encoding:
//! - addresses are loaded with explicit payload expressions (never `Rule::saddr()`, which
//!   adds a `meta nfproto` that makes nft 1.0.6 abort when listing an `ip` table);
//! - concatenations are loaded into consecutive 32-bit registers, each field padded to
//!   4 bytes (the first field in `reg 1`, as nft does);
//! - `ct`, `meta mark`, `fib` and `numgen` values are host-endian u32s;
//! - a DNAT with a port always follows a `meta l4proto` match (nft refuses to parse it
//!   otherwise).
//!
//! Everything here blocks on netlink sockets; call it from a blocking thread.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rustables::data_type::NftType;
use rustables::error::QueryError;
use rustables::expr::{
    Bitwise, Cmp, CmpOp as NlCmpOp, ConnTrackState, ConnTrackStatus, Conntrack, ConntrackKey,
    Dynset, Fib, Immediate, Lookup, Masquerade, Meta, MetaType, Nat, Numgen, Payload,
    RawExpression, Register, Reject, VerdictKind, ICMPV6_PORT_UNREACH, ICMP_PORT_UNREACH,
};
use rustables::nlmsg::{pad_netlink_object_with_variable_size, NfNetlinkAttribute};
use rustables::set::{
    list_set_elements, list_sets_for_table, SetElement, SetElementList, MAX_SET_ELEM_LIST_BYTES,
};
use rustables::{
    list_chains_for_table, list_tables, sys, Batch, Chain as NlChain, ChainPolicy,
    ChainType as NlChainType, Hook as NlHook, HookClass, MsgType, NfNetlinkObject, ProtocolFamily,
    Rule as NlRule, Set as NlSet, Table as NlTable,
};

use super::text;
use crate::ruleset::ir::{
    self, ChainType, CmpOp, Element, ElementData, Expr, Family, FibAddr, Field, Hook, KeyType,
    MapData, Ruleset, Set, Value, Verdict,
};
use crate::ruleset::tx::{Op, Transaction};

/// `RTN_LOCAL` from `<linux/rtnetlink.h>`: what `fib ... type` returns for a local address.
const RTN_LOCAL: u32 = 2;
/// The size nft gives a dynamic set that declares none (and lists as `size 65535`).
const DYNAMIC_SET_SIZE: u32 = 65535;
/// Registers hold 16 32-bit units (64 bytes) in all.
const REG32_UNITS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The IR cannot be expressed (a bug in whoever built it), e.g. an IPv6 address in an
    /// `ip` table or a key longer than the registers.
    #[error("cannot encode {object}: {reason}")]
    Encode { object: String, reason: String },
    /// An element operation names a set that neither the transaction nor the given
    /// declarations declare, so its key and data types are unknown.
    #[error("{object}: set {set} is not declared")]
    UnknownSet { object: String, set: String },
    /// The kernel refused message `seq` of the batch; nothing of the batch was applied.
    #[error("the kernel refused message {seq} ({object}): {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        seq: u32,
        errno: i32,
        object: String,
    },
    /// Every dump of a set's elements repeated some key (see `read_elements`).
    #[error(
        "the kernel's element dump of set {set} stayed inconsistent after {attempts} attempts"
    )]
    InconsistentDump { set: String, attempts: u32 },
    /// Talking to netlink failed otherwise (socket, decoding a dump, ...).
    #[error("netlink: {0}")]
    Query(#[from] QueryError),
}

fn encode_err(object: &str, reason: impl Into<String>) -> NetlinkError {
    NetlinkError::Encode {
        object: object.to_string(),
        reason: reason.into(),
    }
}

/// Set and map declarations (key and data types, flags) by (family, table, set name):
/// element messages need them to encode keys and data.
#[derive(Debug, Clone, Default)]
pub struct SetDecls {
    sets: HashMap<(Family, String, String), Set>,
}

impl SetDecls {
    pub fn new() -> SetDecls {
        SetDecls::default()
    }

    /// The declarations of every set of every table of `rs` (elements are not kept).
    pub fn from_ruleset(rs: &Ruleset) -> SetDecls {
        let mut d = SetDecls::default();
        for t in &rs.tables {
            for s in &t.sets {
                d.insert(t.family, &t.name, s);
            }
        }
        d
    }

    /// Adds (or replaces) one declaration; `set.elements` is ignored.
    pub fn insert(&mut self, family: Family, table: &str, set: &Set) {
        let decl = set.declaration();
        self.sets
            .insert((family, table.to_string(), set.name.clone()), decl);
    }

    /// Adds the sets the transaction itself declares (`Op::AddSet`).
    pub fn add_transaction(&mut self, tx: &Transaction) {
        for op in &tx.ops {
            if let Op::AddSet { family, table, set } = op {
                self.insert(*family, table, set);
            }
        }
    }

    pub fn get(&self, family: Family, table: &str, set: &str) -> Option<&Set> {
        self.sets.get(&(family, table.to_string(), set.to_string()))
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// What one `apply` cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Messages in the batch (without the begin/end markers); 0 when nothing was sent.
    pub messages: usize,
    /// Encoded batch size.
    pub bytes: usize,
    /// Time to translate the transaction into the batch.
    pub build: Duration,
    /// Time to send it and get the kernel's verdict (the kernel validates and commits in it).
    pub send: Duration,
}

fn nl_family(f: Family) -> ProtocolFamily {
    match f {
        Family::V4 => ProtocolFamily::Ipv4,
        Family::V6 => ProtocolFamily::Ipv6,
    }
}

fn nl_table(f: Family, name: &str) -> NlTable {
    NlTable::new(nl_family(f)).with_name(name)
}

fn nl_chain(f: Family, table: &str, chain: &str) -> NlChain {
    NlChain::new(&nl_table(f, table)).with_name(chain)
}

fn addr_len(f: Family) -> u32 {
    match f {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

fn nft_type(f: Family, k: KeyType) -> NftType {
    match (k, f) {
        (KeyType::Addr, Family::V4) => NftType::IPV4_ADDR,
        (KeyType::Addr, Family::V6) => NftType::IPV6_ADDR,
        (KeyType::Proto, _) => NftType::INET_PROTO,
        (KeyType::Service, _) => NftType::INET_SERVICE,
        (KeyType::Slot, _) => NftType::INTEGER,
    }
}

fn nft_types(f: Family, ks: &[KeyType]) -> Vec<NftType> {
    ks.iter().map(|k| nft_type(f, *k)).collect()
}

fn set_kind(s: &Set) -> &'static str {
    if s.is_map() {
        "map"
    } else {
        "set"
    }
}

/// The netlink declaration of a set or map (a fresh `NFTA_SET_ID` each time).
fn nl_set(f: Family, table: &str, s: &Set) -> Result<NlSet, NetlinkError> {
    let object = || {
        format!(
            "{} {} {table} {}",
            set_kind(s),
            text::family_name(f),
            s.name
        )
    };
    if s.key.is_empty() {
        return Err(encode_err(&object(), "empty key"));
    }
    let mut set = NlSet::new(s.name.as_str(), &nl_table(f, table))
        .map_err(|e| encode_err(&object(), e.to_string()))?
        .with_key(&nft_types(f, &s.key));
    match &s.data {
        None => {}
        Some(MapData::Verdict) => set = set.with_verdict_data(),
        Some(MapData::Values(v)) => {
            if v.is_empty() {
                return Err(encode_err(&object(), "empty map data type"));
            }
            set = set.with_map_data(&nft_types(f, v));
        }
    }
    if s.flags.dynamic {
        set = set.with_added_flags(sys::NFT_SET_EVAL);
        let mut desc = set.desc.take().unwrap_or_default();
        desc.set_elem_count(DYNAMIC_SET_SIZE);
        set.desc = Some(desc);
    }
    if s.flags.timeout {
        set = set.with_added_flags(sys::NFT_SET_TIMEOUT);
    }
    if let Some(t) = s.timeout {
        set = set.with_default_timeout(u64::from(t) * 1000);
    }
    if text::uses_typeof(s) {
        for (attr, value) in typeof_udata(f, s) {
            set = set.with_userdata_attr(attr, &value);
        }
    }
    if let Some(c) = &s.comment {
        set = set.with_comment(c);
    }
    Ok(set)
}

/// libnftnl userdata of a set declared with `typeof`, as nft writes it: without it `nft
/// list` cannot name the slot's type and prints no `typeof` line. Each key component is
/// stored as the expression it stands for (a nest per component: the expression's nft type
/// id and its own attributes), e.g. `ip daddr` as payload (7) of protocol description
/// 12 (ip), field 12 (daddr).
fn typeof_udata(f: Family, s: &Set) -> Vec<(u8, Vec<u8>)> {
    const EXPR_PAYLOAD: u32 = 7;
    const EXPR_META: u32 = 9;
    const EXPR_CONCAT: u32 = 13;
    const EXPR_NUMGEN: u32 = 23;
    fn tlv(out: &mut Vec<u8>, t: u8, v: &[u8]) {
        out.push(t);
        out.push(v.len() as u8);
        out.extend_from_slice(v);
    }
    fn u32s(attrs: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, v) in attrs.iter().enumerate() {
            tlv(&mut out, i as u8, &v.to_ne_bytes());
        }
        out
    }
    // (expression type, its attributes) for each component
    let component = |k: KeyType| -> (u32, Vec<u8>) {
        match (k, f) {
            (KeyType::Addr, Family::V4) => (EXPR_PAYLOAD, u32s(&[12, 12])),
            (KeyType::Addr, Family::V6) => (EXPR_PAYLOAD, u32s(&[13, 9])),
            (KeyType::Proto, _) => (EXPR_META, u32s(&[sys::NFT_META_L4PROTO])),
            (KeyType::Service, _) => (EXPR_PAYLOAD, u32s(&[11, 2])),
            // type random, modulus 1, offset 0
            (KeyType::Slot, _) => (EXPR_NUMGEN, u32s(&[sys::NFT_NG_RANDOM, 1, 0])),
        }
    };
    let concat = |ks: &[KeyType]| -> Vec<u8> {
        let mut parts = Vec::new();
        for (i, k) in ks.iter().enumerate() {
            let (etype, data) = component(*k);
            let mut nest = Vec::new();
            tlv(&mut nest, 0, &etype.to_ne_bytes());
            tlv(&mut nest, 1, &data);
            tlv(&mut parts, i as u8, &nest);
        }
        let mut out = Vec::new();
        tlv(&mut out, 0, &EXPR_CONCAT.to_ne_bytes());
        tlv(&mut out, 1, &parts);
        out
    };
    let zero = 0u32.to_ne_bytes().to_vec();
    let mut out = vec![
        (
            rustables::userdata::NFTNL_UDATA_SET_KEYBYTEORDER,
            zero.clone(),
        ),
        (
            rustables::userdata::NFTNL_UDATA_SET_DATABYTEORDER,
            zero.clone(),
        ),
        (3, concat(&s.key)),
    ];
    if let Some(MapData::Values(v)) = &s.data {
        out.push((4, concat(v)));
        out.push((6, zero));
    }
    out
}

fn value_bytes(f: Family, k: KeyType, v: &Value) -> Result<Vec<u8>, String> {
    match (k, v) {
        (KeyType::Addr, Value::Addr(a)) => match (f, a) {
            (Family::V4, IpAddr::V4(a)) => Ok(a.octets().to_vec()),
            (Family::V6, IpAddr::V6(a)) => Ok(a.octets().to_vec()),
            _ => Err(format!("address {a} in an {} table", text::family_name(f))),
        },
        (KeyType::Proto, Value::Proto(p)) => Ok(vec![p.number()]),
        (KeyType::Service, Value::Port(p)) => Ok(p.to_be_bytes().to_vec()),
        (KeyType::Slot, Value::Slot(n)) => Ok(n.to_ne_bytes().to_vec()),
        (k, v) => Err(format!("value {v:?} for a field of type {k:?}")),
    }
}

/// A key or data value as the kernel stores it: a single field as is, a concatenation with
/// every field padded to 4 bytes.
fn encode_values(f: Family, types: &[KeyType], vals: &[Value]) -> Result<Vec<u8>, String> {
    if types.len() != vals.len() {
        return Err(format!(
            "{} values for a type of {} fields",
            vals.len(),
            types.len()
        ));
    }
    let mut out = Vec::new();
    for (k, v) in types.iter().zip(vals) {
        out.extend(value_bytes(f, *k, v)?);
        if types.len() > 1 {
            out.resize(out.len().div_ceil(4) * 4, 0);
        }
    }
    Ok(out)
}

fn verdict_kind(v: &Verdict) -> Option<VerdictKind> {
    Some(match v {
        Verdict::Accept => VerdictKind::Accept,
        Verdict::Drop => VerdictKind::Drop,
        Verdict::Return => VerdictKind::Return,
        Verdict::Jump(c) => VerdictKind::Jump { chain: c.clone() },
        Verdict::Goto(c) => VerdictKind::Goto { chain: c.clone() },
        _ => return None,
    })
}

/// The key bytes and, for a map, the data of one element.
fn encode_element(
    f: Family,
    decl: &Set,
    key: &[Value],
    data: Option<&ElementData>,
    with_data: bool,
) -> Result<(Vec<u8>, Option<KernelData>), String> {
    let key = encode_values(f, &decl.key, key)?;
    if !with_data {
        return Ok((key, None));
    }
    let data = match (&decl.data, data) {
        (None, None) => None,
        (Some(MapData::Verdict), Some(ElementData::Verdict(v))) => Some(KernelData::Verdict(
            verdict_kind(v).ok_or_else(|| format!("verdict {v:?} in a verdict map"))?,
        )),
        (Some(MapData::Values(types)), Some(ElementData::Values(vals))) => {
            Some(KernelData::Value(encode_values(f, types, vals)?))
        }
        (d, ed) => return Err(format!("element data {ed:?} for set data {d:?}")),
    };
    Ok((key, data))
}

fn nl_element(key: Vec<u8>, data: Option<KernelData>) -> SetElement {
    let e = SetElement::new(key);
    match data {
        None => e,
        Some(KernelData::Verdict(v)) => e.with_verdict(v),
        Some(KernelData::Value(v)) => e.with_value(v),
    }
}

/// The register holding 32-bit unit `unit` of the register file (`reg 1` for unit 0, as nft
/// writes it, else `NFT_REG32_<unit>`).
fn reg_at(unit: u32) -> Option<Register> {
    if unit == 0 {
        Some(Register::Reg1)
    } else {
        Register::reg32(unit)
    }
}

fn field_len(f: Family, fl: Field) -> u32 {
    match fl {
        Field::Saddr | Field::Daddr => addr_len(f),
        Field::L4Proto => 1,
        Field::Dport => 2,
        Field::Random(_) => 4,
    }
}

fn payload(base: u32, offset: u32, len: u32, reg: Register) -> Payload {
    Payload::default()
        .with_base(base)
        .with_offset(offset)
        .with_len(len)
        .with_dreg(reg)
}

fn load_field(f: Family, fl: Field, reg: Register) -> RawExpression {
    match fl {
        Field::Saddr | Field::Daddr => {
            let offset = match (f, fl) {
                (Family::V4, Field::Saddr) => 12,
                (Family::V4, _) => 16,
                (Family::V6, Field::Saddr) => 8,
                (Family::V6, _) => 24,
            };
            payload(sys::NFT_PAYLOAD_NETWORK_HEADER, offset, addr_len(f), reg).into()
        }
        Field::L4Proto => Meta::default()
            .with_key(MetaType::L4Proto)
            .with_dreg(reg)
            .into(),
        Field::Dport => payload(sys::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg).into(),
        Field::Random(n) => Numgen::random(n).with_dreg(reg).into(),
    }
}

/// One rule being built: the netlink rule plus what to say when it cannot be encoded.
struct RuleBuilder<'a> {
    f: Family,
    rule: NlRule,
    /// Formatting a rule is costly at 100k rules, so it happens only for an error.
    object: &'a dyn Fn() -> String,
}

impl RuleBuilder<'_> {
    fn push(&mut self, e: impl Into<RawExpression>) {
        self.rule.add_expr(e);
    }

    fn err(&self, reason: impl Into<String>) -> NetlinkError {
        encode_err(&(self.object)(), reason)
    }

    fn reg(&self, unit: u32) -> Result<Register, NetlinkError> {
        reg_at(unit).ok_or_else(|| self.err(format!("register unit {unit} out of range")))
    }

    /// Loads `key` into consecutive 32-bit registers from `start`; returns the next free unit.
    fn load_key(&mut self, key: &[Field], start: u32) -> Result<u32, NetlinkError> {
        if key.is_empty() {
            return Err(self.err("empty key"));
        }
        let mut unit = start;
        for fl in key {
            let reg = self.reg(unit)?;
            self.push(load_field(self.f, *fl, reg));
            unit += field_len(self.f, *fl).div_ceil(4);
        }
        if unit > REG32_UNITS {
            return Err(self.err("key longer than the registers"));
        }
        Ok(unit)
    }

    fn l4proto(&mut self, p: ir::Proto) {
        self.push(Meta::new(MetaType::L4Proto));
        self.push(Cmp::new(NlCmpOp::Eq, [p.number()]));
    }

    fn addr_bytes(&self, a: &IpAddr) -> Result<Vec<u8>, NetlinkError> {
        value_bytes(self.f, KeyType::Addr, &Value::Addr(*a)).map_err(|r| self.err(r))
    }

    fn bitwise(&mut self, mask: Vec<u8>, xor: Vec<u8>) -> Result<(), NetlinkError> {
        let b = Bitwise::new(mask, xor).map_err(|e| self.err(e.to_string()))?;
        self.push(b);
        Ok(())
    }

    fn expr(&mut self, e: &Expr, sets: &mut SetCache) -> Result<(), NetlinkError> {
        let f = self.f;
        match e {
            Expr::AddrCmp {
                field,
                op,
                addr,
                prefix_len,
            } => {
                if !matches!(field, Field::Saddr | Field::Daddr) {
                    return Err(self.err(format!("address comparison on {field:?}")));
                }
                self.push(load_field(f, *field, Register::Reg1));
                let mut bytes = self.addr_bytes(addr)?;
                let bits = addr_len(f) * 8;
                if u32::from(*prefix_len) < bits {
                    let mask = prefix_mask(bytes.len(), *prefix_len);
                    for (b, m) in bytes.iter_mut().zip(&mask) {
                        *b &= m;
                    }
                    self.bitwise(mask, vec![0; bytes.len()])?;
                }
                let op = match op {
                    CmpOp::Eq => NlCmpOp::Eq,
                    CmpOp::Neq => NlCmpOp::Neq,
                };
                self.push(Cmp::new(op, bytes));
            }
            Expr::L4Proto(p) => self.l4proto(*p),
            Expr::Lookup { key, set } => {
                self.load_key(key, 0)?;
                let s = sets.lookup_target(f, set, self.object)?;
                let l = Lookup::new(s).map_err(|e| self.err(e.to_string()))?;
                self.push(l);
            }
            Expr::CtStateNew => {
                self.push(Conntrack::new(ConntrackKey::State));
                self.bitwise(
                    ConnTrackState::NEW.bits().to_ne_bytes().to_vec(),
                    vec![0; 4],
                )?;
                self.push(Cmp::new(NlCmpOp::Neq, 0u32.to_ne_bytes()));
            }
            Expr::CtStatusDnat => {
                self.push(Conntrack::new(ConntrackKey::Status));
                self.bitwise(
                    ConnTrackStatus::DNAT.bits().to_ne_bytes().to_vec(),
                    vec![0; 4],
                )?;
                self.push(Cmp::new(NlCmpOp::Neq, 0u32.to_ne_bytes()));
            }
            Expr::FibLocal(a) => {
                self.push(match a {
                    FibAddr::Saddr => Fib::saddr_type(),
                    FibAddr::Daddr => Fib::daddr_type(),
                });
                self.push(Cmp::new(NlCmpOp::Eq, RTN_LOCAL.to_ne_bytes()));
            }
            Expr::Numgen { modulus, value } => {
                self.push(Numgen::random(*modulus));
                self.push(Cmp::new(NlCmpOp::Eq, value.to_ne_bytes()));
            }
            Expr::MarkSet(m) => {
                self.push(Meta::new(MetaType::Mark));
                self.bitwise(m.to_ne_bytes().to_vec(), vec![0; 4])?;
                self.push(Cmp::new(NlCmpOp::Neq, 0u32.to_ne_bytes()));
            }
            Expr::MarkOr(m) => self.mark_set(!m, *m)?,
            Expr::MarkXor(m) => self.mark_set(u32::MAX, *m)?,
            Expr::UpdateAffinity {
                map,
                key,
                timeout,
                addr,
                port,
            } => {
                let data = self.load_key(key, 0)?;
                let port_unit = data + addr_len(f).div_ceil(4);
                if port_unit >= REG32_UNITS {
                    return Err(self.err("key and data longer than the registers"));
                }
                let (addr_reg, port_reg) = (self.reg(data)?, self.reg(port_unit)?);
                let addr = self.addr_bytes(addr)?;
                self.push(Immediate::new_data(addr, addr_reg));
                self.push(Immediate::new_data(port.to_be_bytes().to_vec(), port_reg));
                let s = sets.lookup_target(f, map, self.object)?;
                let d = Dynset::update(s, Register::Reg1)
                    .map_err(|e| self.err(e.to_string()))?
                    .with_sreg_data(addr_reg)
                    .with_timeout(u64::from(*timeout) * 1000);
                self.push(d);
            }
        }
        Ok(())
    }

    /// `meta mark set meta mark & mask ^ xor`
    fn mark_set(&mut self, mask: u32, xor: u32) -> Result<(), NetlinkError> {
        self.push(Meta::new(MetaType::Mark));
        self.bitwise(mask.to_ne_bytes().to_vec(), xor.to_ne_bytes().to_vec())?;
        self.push(
            Meta::default()
                .with_key(MetaType::Mark)
                .with_sreg(Register::Reg1),
        );
        Ok(())
    }

    fn verdict(&mut self, v: &Verdict, sets: &mut SetCache) -> Result<(), NetlinkError> {
        let f = self.f;
        if let Some(k) = verdict_kind(v) {
            self.push(Immediate::new_verdict(k));
            return Ok(());
        }
        match v {
            Verdict::Reject => self.push(Reject::icmp(match f {
                Family::V4 => ICMP_PORT_UNREACH,
                Family::V6 => ICMPV6_PORT_UNREACH,
            })),
            Verdict::Masquerade => self.push(Masquerade::fully_random()),
            Verdict::Vmap { key, map } => {
                self.load_key(key, 0)?;
                let s = sets.lookup_target(f, map, self.object)?;
                let l = Lookup::new(s).map_err(|e| self.err(e.to_string()))?;
                self.push(l.with_verdict_dreg());
            }
            Verdict::Dnat { proto, addr, port } => {
                self.l4proto(*proto);
                let addr = self.addr_bytes(addr)?;
                self.push(Immediate::new_data(addr, Register::Reg1));
                self.push(Immediate::new_data(
                    port.to_be_bytes().to_vec(),
                    Register::Reg2,
                ));
                self.push(Nat::dnat(
                    nl_family(f),
                    Register::Reg1,
                    Some(Register::Reg2),
                ));
            }
            Verdict::DnatMap { proto, key, map } => {
                if let Some(p) = proto {
                    self.l4proto(*p);
                }
                self.load_key(key, 0)?;
                let s = sets.lookup_target(f, map, self.object)?;
                let l = Lookup::new(s).map_err(|e| self.err(e.to_string()))?;
                self.push(l.with_dreg(Register::Reg1));
                let port_reg = self.reg(addr_len(f).div_ceil(4))?;
                self.push(Nat::dnat(nl_family(f), Register::Reg1, Some(port_reg)));
            }
            Verdict::Accept
            | Verdict::Drop
            | Verdict::Return
            | Verdict::Jump(_)
            | Verdict::Goto(_) => unreachable!("immediate verdicts are handled above"),
        }
        Ok(())
    }
}

fn prefix_mask(len: usize, prefix_len: u8) -> Vec<u8> {
    let mut left = u32::from(prefix_len);
    (0..len)
        .map(|_| {
            let bits = left.min(8);
            left -= bits;
            if bits == 0 {
                0
            } else {
                0xffu8 << (8 - bits)
            }
        })
        .collect()
}

/// The netlink sets of one batch: those declared by the transaction (with the set id of
/// their `NEWSET` message) and, lazily, those from the caller's declarations.
struct SetCache<'a> {
    decls: &'a SetDecls,
    /// The table of the rule being built.
    table: String,
    built: HashMap<(Family, String, String), (Set, NlSet)>,
    /// Name-only stand-ins for sets a rule names but nobody declared (the kernel decides).
    bare: HashMap<(Family, String, String), NlSet>,
}

impl SetCache<'_> {
    fn declare(&mut self, f: Family, table: &str, s: &Set) -> Result<&NlSet, NetlinkError> {
        let nl = nl_set(f, table, s)?;
        let decl = s.declaration();
        let key = (f, table.to_string(), s.name.clone());
        self.built.insert(key.clone(), (decl, nl));
        Ok(&self.built[&key].1)
    }

    fn get(
        &mut self,
        f: Family,
        table: &str,
        name: &str,
    ) -> Result<Option<(&Set, &NlSet)>, NetlinkError> {
        let key = (f, table.to_string(), name.to_string());
        if !self.built.contains_key(&key) {
            let Some(decl) = self.decls.get(f, table, name) else {
                return Ok(None);
            };
            let nl = nl_set(f, table, decl)?;
            self.built.insert(key.clone(), (decl.clone(), nl));
        }
        Ok(self.built.get(&key).map(|(d, n)| (d, n)))
    }

    /// The set a rule of the current table refers to.
    fn lookup_target(
        &mut self,
        f: Family,
        name: &str,
        object: &dyn Fn() -> String,
    ) -> Result<&NlSet, NetlinkError> {
        let table = self.table.clone();
        let key = (f, table.clone(), name.to_string());
        if self.get(f, &table, name)?.is_some() {
            return Ok(&self.built[&key].1);
        }
        if !self.bare.contains_key(&key) {
            let s = NlSet::new(name, &nl_table(f, &table))
                .map_err(|e| encode_err(&object(), e.to_string()))?;
            self.bare.insert(key.clone(), s);
        }
        Ok(&self.bare[&key])
    }
}

fn chain_desc(f: Family, table: &str, chain: &str) -> String {
    format!("chain {} {table} {chain}", text::family_name(f))
}

fn hook_class(h: Hook) -> HookClass {
    match h {
        Hook::Prerouting => HookClass::PreRouting,
        Hook::Input => HookClass::In,
        Hook::Forward => HookClass::Forward,
        Hook::Output => HookClass::Out,
        Hook::Postrouting => HookClass::PostRouting,
    }
}

fn nl_chain_type(k: ChainType) -> NlChainType {
    match k {
        ChainType::Filter => NlChainType::Filter,
        ChainType::Nat => NlChainType::Nat,
    }
}

/// Translates `tx` into one batch, op by op in order. Returns the batch and, indexed by
/// batch sequence number, a description of the IR object of each message (index 0 is the
/// batch-begin marker), so that a kernel error can name what it refused.
pub fn to_batch(tx: &Transaction, sets: &SetDecls) -> Result<(Batch, Vec<Desc>), NetlinkError> {
    to_batch_with(tx, &[], sets, None)
}

/// [`to_batch`] of `tx` followed by `extra` (e.g. deletes of tables the node no longer
/// needs), without copying either. [`Desc`] indexes count `tx.ops` first, then `extra`.
/// `source` is the ruleset [`Op::FillSet`] takes its elements from.
pub fn to_batch_with(
    tx: &Transaction,
    extra: &[Op],
    sets: &SetDecls,
    source: Option<&Ruleset>,
) -> Result<(Batch, Vec<Desc>), NetlinkError> {
    let filled = |family: Family, table: &str, set: &str| {
        source
            .and_then(|rs| {
                rs.tables
                    .iter()
                    .find(|t| t.family == family && t.name == table)
            })
            .and_then(|t| t.set(set))
            .map(|s| &s.elements)
    };
    // Measured sizes: a rule is 300-400 bytes, an element 40-60; reserving avoids copying
    // a 40 MB cold-start batch again and again as it grows.
    let estimate: usize = tx
        .ops
        .iter()
        .chain(extra)
        .map(|op| match op {
            Op::AddElements { elements, .. } | Op::DeleteElements { elements, .. } => {
                256 + elements.len() * 64
            }
            Op::FillSet { family, table, set } => {
                256 + filled(*family, table, set).map_or(0, |e| e.len() * 64)
            }
            _ => 400,
        })
        .sum();
    let mut batch = Batch::with_capacity(estimate);
    let mut descs = Vec::with_capacity(tx.ops.len() + extra.len() + 1);
    descs.push(Desc::Begin);
    let mut cache = SetCache {
        decls: sets,
        table: String::new(),
        built: HashMap::new(),
        bare: HashMap::new(),
    };
    let mut add = |batch: &mut Batch, seq: u32, desc: Desc| {
        debug_assert_eq!(seq as usize, descs.len());
        descs.push(desc);
        debug_assert_eq!(batch.next_seq() as usize, descs.len());
    };
    for (op_index, op) in tx.ops.iter().chain(extra).enumerate() {
        let this = Desc::Op(op_index);
        match op {
            Op::AddTable {
                family,
                name,
                comment,
            } => {
                let mut t = nl_table(*family, name);
                if let Some(c) = comment {
                    t = t.with_comment(c);
                }
                let seq = batch.add(&t, MsgType::Add);
                add(&mut batch, seq, this);
            }
            Op::DeleteTable { family, name } => {
                let seq = batch.add(&nl_table(*family, name), MsgType::Del);
                add(&mut batch, seq, this);
            }
            Op::AddChain {
                family,
                table,
                chain,
            } => {
                let mut c = nl_chain(*family, table, &chain.name);
                if let Some(b) = &chain.base {
                    c = c
                        .with_hook(NlHook::new(hook_class(b.hook), b.priority))
                        .with_type(nl_chain_type(b.kind))
                        .with_policy(ChainPolicy::Accept);
                }
                if let Some(cm) = &chain.comment {
                    c = c.with_comment(cm);
                }
                let seq = batch.add(&c, MsgType::Add);
                add(&mut batch, seq, this);
            }
            Op::FlushChain {
                family,
                table,
                chain,
            } => {
                let r = NlRule::new(&nl_chain(*family, table, chain))
                    .map_err(|e| encode_err(&op_text(op), e.to_string()))?;
                let seq = batch.add(&r, MsgType::Del);
                add(&mut batch, seq, this);
            }
            Op::DeleteChain {
                family,
                table,
                chain,
            } => {
                let seq = batch.add(&nl_chain(*family, table, chain), MsgType::Del);
                add(&mut batch, seq, this);
            }
            Op::AddRule {
                family,
                table,
                chain,
                rule,
            } => {
                let object = || op_text(op);
                cache.table.clone_from(table);
                let r = NlRule::new(&nl_chain(*family, table, chain))
                    .map_err(|e| encode_err(&object(), e.to_string()))?;
                let mut b = RuleBuilder {
                    f: *family,
                    rule: r,
                    object: &object,
                };
                for e in &rule.exprs {
                    b.expr(e, &mut cache)?;
                }
                if let Some(v) = &rule.verdict {
                    b.verdict(v, &mut cache)?;
                }
                let mut r = b.rule;
                if let Some(c) = &rule.comment {
                    r = r.with_comment(c);
                }
                let seq = batch.add(&r, MsgType::Add);
                add(&mut batch, seq, this);
            }
            Op::AddSet { family, table, set } => {
                let nl = cache.declare(*family, table, set)?;
                let seq = batch.add(nl, MsgType::Add);
                add(&mut batch, seq, this);
            }
            Op::FlushSet { family, table, set } => {
                // An element list without elements deletes them all.
                let l = SetElementList {
                    family: nl_family(*family),
                    table: Some(table.clone()),
                    set: Some(set.clone()),
                    elements: None,
                    set_id: None,
                };
                let seq = batch.add(&l, MsgType::Del);
                add(&mut batch, seq, this);
            }
            Op::AddElements {
                family, table, set, ..
            }
            | Op::DeleteElements {
                family, table, set, ..
            }
            | Op::FillSet { family, table, set } => {
                let adding = !matches!(op, Op::DeleteElements { .. });
                let elements: Box<dyn Iterator<Item = (&[Value], Option<&ElementData>)>> = match op
                {
                    Op::AddElements { elements, .. } | Op::DeleteElements { elements, .. } => {
                        Box::new(elements.iter().map(|e| (e.key.as_slice(), e.data.as_ref())))
                    }
                    _ => {
                        let Some(els) = filled(*family, table, set) else {
                            return Err(encode_err(
                                &format!("fill {} {table} {set}", text::family_name(*family)),
                                "no ruleset to take the elements from",
                            ));
                        };
                        Box::new(els.iter().map(|(k, d)| (k.as_slice(), d.as_ref())))
                    }
                };
                let object = || {
                    format!(
                        "{} elements of {} {table} {set}",
                        if adding { "add" } else { "delete" },
                        text::family_name(*family)
                    )
                };
                let Some((decl, nl)) = cache.get(*family, table, set)? else {
                    return Err(NetlinkError::UnknownSet {
                        object: object(),
                        set: set.clone(),
                    });
                };
                let map = decl.is_map();
                let msg_type = if adding { MsgType::Add } else { MsgType::Del };
                // Encoded straight into messages of at most MAX_SET_ELEM_LIST_BYTES (the
                // packing of `split_set_elements`), each added to the batch as soon as it is
                // full: the encoded elements of a 100k-element map never exist all at once.
                let mut list = SetElementList::new(nl);
                let (mut bytes, mut first) = (0usize, 0usize);
                let mut flush = |batch: &mut Batch, list: &SetElementList, first, end| {
                    let seq = batch.add(list, msg_type);
                    add(
                        batch,
                        seq,
                        Desc::Elements {
                            op: op_index,
                            first,
                            n: end - first,
                            map,
                        },
                    );
                };
                let mut count = 0;
                for (i, (key, data)) in elements.enumerate() {
                    count = i + 1;
                    let (k, d) = encode_element(*family, decl, key, data, adding).map_err(|r| {
                        let e = Element {
                            key: key.to_vec(),
                            data: data.cloned(),
                        };
                        encode_err(&format!("{}: {}", object(), text::element_text(&e)), r)
                    })?;
                    let el = nl_element(k, d);
                    let size = 4 + pad_netlink_object_with_variable_size(el.get_size());
                    if bytes > 0 && bytes + size > MAX_SET_ELEM_LIST_BYTES {
                        flush(&mut batch, &list, first, i);
                        list = SetElementList::new(nl);
                        bytes = 0;
                        first = i;
                    }
                    list.add_element(el);
                    bytes += size;
                }
                if bytes > 0 {
                    flush(&mut batch, &list, first, count);
                }
            }
        }
    }
    Ok((batch, descs))
}

/// What one batch message carries, for error messages. Built lazily from the operations
/// only when the kernel refuses a message: formatting 100k rules (or even the names of 10k
/// chains) would cost more than encoding them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desc {
    /// The batch-begin marker.
    Begin,
    Text(String),
    /// The operation at this index (of `tx.ops`, then of the extra operations).
    Op(usize),
    /// Elements `first..first + n` of the element operation at index `op`; `map`: whether
    /// the set is a map.
    Elements {
        op: usize,
        first: usize,
        n: usize,
        map: bool,
    },
}

/// The description of a single-message operation, as error messages name it.
fn op_text(op: &Op) -> String {
    let fam = |f: &Family| text::family_name(*f);
    match op {
        Op::AddTable { family, name, .. } => format!("add table {} {name}", fam(family)),
        Op::DeleteTable { family, name } => format!("delete table {} {name}", fam(family)),
        Op::AddChain {
            family,
            table,
            chain,
        } => format!("add {}", chain_desc(*family, table, &chain.name)),
        Op::FlushChain {
            family,
            table,
            chain,
        } => format!("flush {}", chain_desc(*family, table, chain)),
        Op::DeleteChain {
            family,
            table,
            chain,
        } => format!("delete {}", chain_desc(*family, table, chain)),
        Op::AddRule {
            family,
            table,
            chain,
            rule,
        } => format!(
            "add rule to {}: {}",
            chain_desc(*family, table, chain),
            text::rule_text(*family, rule)
        ),
        Op::AddSet { family, table, set } => {
            format!("add {} {} {table} {}", set_kind(set), fam(family), set.name)
        }
        Op::FlushSet { family, table, set } => {
            format!("flush set {} {table} {set}", fam(family))
        }
        Op::AddElements {
            family, table, set, ..
        } => format!("add elements of {} {table} {set}", fam(family)),
        Op::DeleteElements {
            family, table, set, ..
        } => format!("delete elements of {} {table} {set}", fam(family)),
        Op::FillSet { family, table, set } => {
            format!("add the elements of {} {table} {set}", fam(family))
        }
    }
}

impl Desc {
    pub fn text(&self, tx: &Transaction) -> String {
        self.text_with(tx, &[])
    }

    /// The description of a message of [`to_batch_with`]`(tx, extra, ..)`.
    pub fn text_with(&self, tx: &Transaction, extra: &[Op]) -> String {
        let op_at = |i: usize| {
            tx.ops
                .get(i)
                .or_else(|| i.checked_sub(tx.ops.len()).and_then(|j| extra.get(j)))
        };
        match self {
            Desc::Begin => "(batch begin)".to_string(),
            Desc::Text(t) => t.clone(),
            Desc::Op(i) => op_at(*i).map_or_else(|| format!("operation {i}"), op_text),
            Desc::Elements { op, first, n, map } => match op_at(*op) {
                Some(
                    o @ (Op::AddElements {
                        family,
                        table,
                        set,
                        elements,
                    }
                    | Op::DeleteElements {
                        family,
                        table,
                        set,
                        elements,
                    }),
                ) => {
                    let (verb, dir) = match o {
                        Op::AddElements { .. } => ("add", "to"),
                        _ => ("delete", "from"),
                    };
                    format!(
                        "{verb} elements {}..{} (of {}) {dir} {} {} {table} {set} (first: {})",
                        first + 1,
                        first + n,
                        elements.len(),
                        if *map { "map" } else { "set" },
                        text::family_name(*family),
                        elements
                            .get(*first)
                            .map(text::element_text)
                            .unwrap_or_default()
                    )
                }
                Some(Op::FillSet { family, table, set }) => format!(
                    "add elements {}..{} to {} {} {table} {set}",
                    first + 1,
                    first + n,
                    if *map { "map" } else { "set" },
                    text::family_name(*family),
                ),
                _ => format!("operation {op}"),
            },
        }
    }
}

fn kernel_error(e: QueryError, descs: &[Desc], tx: &Transaction, extra: &[Op]) -> NetlinkError {
    match e.kernel_error() {
        Some((seq, errno)) => NetlinkError::Kernel {
            seq,
            errno: errno as i32,
            object: descs
                .get(seq as usize)
                .map(|d| d.text_with(tx, extra))
                .unwrap_or_else(|| format!("unknown message {seq}")),
        },
        None => NetlinkError::Query(e),
    }
}

/// Sends `tx` as one batch: the kernel applies all of it or, on an error, nothing.
/// An empty transaction sends nothing.
pub fn apply(tx: &Transaction, sets: &SetDecls) -> Result<ApplyStats, NetlinkError> {
    apply_with(tx, &[], sets, None)
}

/// [`apply`] of `tx` followed by `extra` in the same batch (the caller need not copy a
/// 10k-Service transaction to append a few operations).
/// `source` is the ruleset [`Op::FillSet`] takes its elements from.
pub fn apply_with(
    tx: &Transaction,
    extra: &[Op],
    sets: &SetDecls,
    source: Option<&Ruleset>,
) -> Result<ApplyStats, NetlinkError> {
    if tx.is_empty() && extra.is_empty() {
        return Ok(ApplyStats::default());
    }
    let t0 = Instant::now();
    let (batch, descs) = to_batch_with(tx, extra, sets, source)?;
    let build = t0.elapsed();
    let (messages, bytes) = (batch.len(), batch.size_bytes());
    let t1 = Instant::now();
    batch
        .send()
        .map_err(|e| kernel_error(e, &descs, tx, extra))?;
    Ok(ApplyStats {
        messages,
        bytes,
        build,
        send: t1.elapsed(),
    })
}

/// One of our tables as the kernel holds it (from [`read_table`]) or as the IR wants it
/// (from [`summarize`]): compare the two with `==`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTable {
    pub family: Family,
    pub name: String,
    pub comment: Option<String>,
    /// Sorted by name.
    pub chains: Vec<KernelChain>,
    /// Sorted by name.
    pub sets: Vec<KernelSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelChain {
    pub name: String,
    pub comment: Option<String>,
    pub base: Option<KernelBaseChain>,
    pub rules: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBaseChain {
    /// `filter`, `nat` or `route`.
    pub kind: String,
    /// `NF_INET_*` hook number.
    pub hook: u32,
    pub priority: i32,
    pub policy_accept: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSet {
    pub name: String,
    /// nft type id (a concatenation's ids shifted by 6 bits each) and length.
    pub key_type: u32,
    pub key_len: u32,
    /// For maps: `NFT_DATA_VERDICT` or an nft type id, and the data length (0 for verdicts).
    pub data: Option<(u32, u32)>,
    /// `NFT_SET_MAP | NFT_SET_TIMEOUT | NFT_SET_EVAL | NFT_SET_ANONYMOUS | NFT_SET_CONSTANT |
    /// NFT_SET_INTERVAL | NFT_SET_CONCAT` bits (others are the kernel's business).
    pub flags: u32,
    /// Default element timeout, milliseconds.
    pub timeout_ms: Option<u64>,
    pub comment: Option<String>,
    /// Sorted by key; `None` for dynamic sets (the datapath owns their elements).
    pub elements: Option<Vec<KernelElement>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelElement {
    /// As the kernel stores it (see the module docs for the layout).
    pub key: Vec<u8>,
    pub data: Option<KernelData>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelData {
    Verdict(VerdictKind),
    Value(Vec<u8>),
}

const SET_FLAGS_COMPARED: u32 = sys::NFT_SET_MAP
    | sys::NFT_SET_TIMEOUT
    | sys::NFT_SET_EVAL
    | sys::NFT_SET_ANONYMOUS
    | sys::NFT_SET_CONSTANT
    | sys::NFT_SET_INTERVAL
    | sys::NFT_SET_CONCAT;

fn nl_chain_type_name(t: &NlChainType) -> &'static str {
    match t {
        NlChainType::Filter => "filter",
        NlChainType::Nat => "nat",
        NlChainType::Route => "route",
    }
}

fn kernel_set(nl: &NlSet) -> KernelSet {
    let flags = nl.flags.unwrap_or(0);
    KernelSet {
        name: nl.name.clone().unwrap_or_default(),
        key_type: nl.key_type.unwrap_or(0),
        key_len: nl.key_len.unwrap_or(0),
        data: (flags & sys::NFT_SET_MAP != 0).then(|| {
            let ty = nl.data_type.unwrap_or(0);
            // the kernel reports the size of its verdict struct; we send none
            let len = if ty == sys::NFT_DATA_VERDICT {
                0
            } else {
                nl.data_len.unwrap_or(0)
            };
            (ty, len)
        }),
        flags: flags & SET_FLAGS_COMPARED,
        timeout_ms: nl.timeout.filter(|t| *t != 0),
        comment: nl.get_comment(),
        elements: None,
    }
}

fn sort_elements(els: &mut [KernelElement]) {
    els.sort_by(|a, b| a.key.cmp(&b.key));
}

/// How often [`read_table`] re-reads a set whose element dump was inconsistent.
const ELEMENT_DUMP_ATTEMPTS: u32 = 5;

/// The elements of `set`, sorted by key.
///
/// A set-element dump spans several netlink messages, and each continues the kernel's hash
/// table walk by skipping the elements already sent. While the kernel resizes the hash table
/// (asynchronously, e.g. right after a large insert), the walk order changes between
/// messages, so a dump can repeat some elements and miss others. A repeated key gives that
/// away: the dump is retried after a pause (the resize finishes within milliseconds).
fn read_elements(set: &NlSet, name: &str) -> Result<Vec<KernelElement>, NetlinkError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut els: Vec<KernelElement> = list_set_elements(set)?
            .into_iter()
            .map(|e| KernelElement {
                key: e.key_bytes().cloned().unwrap_or_default(),
                data: match (e.verdict(), e.value_bytes()) {
                    (Some(v), _) => Some(KernelData::Verdict(v)),
                    (None, Some(v)) => Some(KernelData::Value(v.clone())),
                    (None, None) => None,
                },
            })
            .collect();
        sort_elements(&mut els);
        let repeated = els.windows(2).any(|w| w[0].key == w[1].key);
        if !repeated {
            return Ok(els);
        }
        if attempt >= ELEMENT_DUMP_ATTEMPTS {
            return Err(NetlinkError::InconsistentDump {
                set: name.to_string(),
                attempts: attempt,
            });
        }
        tracing::debug!(set = name, attempt, "inconsistent element dump, retrying");
        std::thread::sleep(Duration::from_millis(20 << attempt));
    }
}

/// Reads our table `family name` back from the kernel (current network namespace): its
/// chains with their rule counts, its sets and the elements of every non-dynamic set.
/// `None` when there is no such table.
pub fn read_table(family: Family, name: &str) -> Result<Option<KernelTable>, NetlinkError> {
    let pf = nl_family(family);
    let Some(table) = list_tables()?
        .into_iter()
        .find(|t| t.get_family() == pf && t.get_name().map(String::as_str) == Some(name))
    else {
        return Ok(None);
    };

    // One rule dump for the whole table, counted per chain.
    let mut counts: HashMap<String, usize> = HashMap::new();
    let filter = NlRule::default().with_family(pf).with_table(name);
    rustables::query::list_objects_with_data(
        sys::NFT_MSG_GETRULE as u16,
        &|r: NlRule, counts: &mut HashMap<String, usize>| {
            if r.get_family() == pf && r.get_table().map(String::as_str) == Some(name) {
                if let Some(c) = r.get_chain() {
                    *counts.entry(c.clone()).or_default() += 1;
                }
            }
            Ok(())
        },
        Some(&filter),
        &mut counts,
    )?;

    let mut chains: Vec<KernelChain> = list_chains_for_table(&table)?
        .iter()
        .map(|c| {
            let name = c.get_name().cloned().unwrap_or_default();
            let base = c.get_hook().map(|h| KernelBaseChain {
                kind: c
                    .get_type()
                    .map(nl_chain_type_name)
                    .unwrap_or("")
                    .to_string(),
                hook: h.get_class().copied().unwrap_or(u32::MAX),
                priority: h.get_priority().map(|p| *p as i32).unwrap_or(0),
                policy_accept: c.get_policy() == Some(&ChainPolicy::Accept),
            });
            KernelChain {
                rules: counts.get(&name).copied().unwrap_or(0),
                name,
                comment: c.get_comment(),
                base,
            }
        })
        .collect();
    chains.sort_by(|a, b| a.name.cmp(&b.name));

    let mut sets = Vec::new();
    for nl in list_sets_for_table(&table)? {
        let mut s = kernel_set(&nl);
        if s.flags & sys::NFT_SET_EVAL == 0 {
            s.elements = Some(read_elements(&nl, &s.name)?);
        }
        sets.push(s);
    }
    sets.sort_by(|a, b| a.name.cmp(&b.name));

    Ok(Some(KernelTable {
        family,
        name: name.to_string(),
        comment: table.get_comment(),
        chains,
        sets,
    }))
}

/// What [`read_table`] returns once `table` is programmed (dynamic sets' elements left
/// out). Parts the netlink layer cannot encode (an address of the other family, ...) come
/// out as values no kernel listing has, so the comparison fails rather than panics.
pub fn summarize(table: &ir::Table) -> KernelTable {
    let f = table.family;
    let mut chains: Vec<KernelChain> = table
        .chains
        .iter()
        .map(|c| KernelChain {
            name: c.name.clone(),
            comment: c.comment.clone(),
            base: c.base.map(|b| KernelBaseChain {
                kind: nl_chain_type_name(&nl_chain_type(b.kind)).to_string(),
                hook: hook_class(b.hook) as u32,
                priority: b.priority,
                policy_accept: true,
            }),
            rules: c.rules.len(),
        })
        .collect();
    chains.sort_by(|a, b| a.name.cmp(&b.name));

    let mut sets: Vec<KernelSet> = table
        .sets
        .iter()
        .map(|s| {
            let mut ks = match nl_set(f, &table.name, s) {
                Ok(nl) => kernel_set(&nl),
                // An unencodable declaration cannot be in the kernel: make it differ.
                Err(_) => KernelSet {
                    name: s.name.clone(),
                    key_type: u32::MAX,
                    key_len: u32::MAX,
                    data: None,
                    flags: 0,
                    timeout_ms: None,
                    comment: s.comment.clone(),
                    elements: None,
                },
            };
            if !s.flags.dynamic {
                let mut els: Vec<KernelElement> = (s.elements.iter())
                    .map(|(k, d)| match encode_element(f, s, k, d.as_ref(), true) {
                        Ok((key, data)) => KernelElement { key, data },
                        Err(_) => KernelElement {
                            key: Vec::new(),
                            data: Some(KernelData::Verdict(VerdictKind::Break)),
                        },
                    })
                    .collect();
                sort_elements(&mut els);
                ks.elements = Some(els);
            }
            ks
        })
        .collect();
    sets.sort_by(|a, b| a.name.cmp(&b.name));

    KernelTable {
        family: f,
        name: table.name.clone(),
        comment: table.comment.clone(),
        chains,
        sets,
    }
}

/// What differs between two summaries (e.g. `read_table` vs `summarize`), one line per
/// difference, for logs; empty when they are equal.
pub fn differences(have: &KernelTable, want: &KernelTable) -> Vec<String> {
    let mut out = Vec::new();
    if (have.family, &have.name, &have.comment) != (want.family, &want.name, &want.comment) {
        out.push(format!(
            "table: have {:?} {} {:?}, want {:?} {} {:?}",
            have.family, have.name, have.comment, want.family, want.name, want.comment
        ));
    }
    let chains = |t: &KernelTable| -> HashMap<String, KernelChain> {
        t.chains
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect()
    };
    let (hc, wc) = (chains(have), chains(want));
    for c in &want.chains {
        match hc.get(&c.name) {
            None => out.push(format!("chain {} missing", c.name)),
            Some(h) if h != c => out.push(format!("chain {}: have {h:?}, want {c:?}", c.name)),
            Some(_) => {}
        }
    }
    for c in &have.chains {
        if !wc.contains_key(&c.name) {
            out.push(format!("chain {} unexpected", c.name));
        }
    }
    let sets = |t: &KernelTable| -> HashMap<String, KernelSet> {
        t.sets.iter().map(|s| (s.name.clone(), s.clone())).collect()
    };
    let (hs, ws) = (sets(have), sets(want));
    for s in &want.sets {
        let Some(h) = hs.get(&s.name) else {
            out.push(format!("set {} missing", s.name));
            continue;
        };
        let decl = |k: &KernelSet| KernelSet {
            elements: None,
            ..k.clone()
        };
        if decl(h) != decl(s) {
            out.push(format!(
                "set {}: have {:?}, want {:?}",
                s.name,
                decl(h),
                decl(s)
            ));
        }
        if h.elements != s.elements {
            let (he, we) = (
                h.elements.as_deref().unwrap_or(&[]),
                s.elements.as_deref().unwrap_or(&[]),
            );
            let missing = we.iter().filter(|e| !he.contains(e)).count();
            let extra = he.iter().filter(|e| !we.contains(e)).count();
            out.push(format!(
                "set {}: elements differ ({missing} missing, {extra} unexpected, first missing {:?}, first unexpected {:?})",
                s.name,
                we.iter().find(|e| !he.contains(e)),
                he.iter().find(|e| !we.contains(e)),
            ));
        }
    }
    for s in &have.sets {
        if !ws.contains_key(&s.name) {
            out.push(format!("set {} unexpected", s.name));
        }
    }
    out
}

/// Whether every table of `rs` exists in the kernel: a cheap check (tables only, no rules
/// or elements) that catches `nft flush ruleset` or a deleted table between syncs.
pub fn tables_present(rs: &Ruleset) -> Result<bool, NetlinkError> {
    let existing = list_tables()?;
    Ok(rs.tables.iter().all(|t| {
        let pf = nl_family(t.family);
        existing
            .iter()
            .any(|k| k.get_family() == pf && k.get_name().map(String::as_str) == Some(&t.name))
    }))
}

/// Deletes those of the tables `names` that exist (for `kube-nftproxy cleanup`), in one
/// batch, and nothing else. Returns whether any was deleted.
pub fn delete_tables(names: &[(Family, &str)]) -> Result<bool, NetlinkError> {
    let existing = list_tables()?;
    let mut batch = Batch::new();
    let mut descs = vec![Desc::Begin];
    for (f, name) in names {
        let pf = nl_family(*f);
        let found = existing
            .iter()
            .any(|t| t.get_family() == pf && t.get_name().map(String::as_str) == Some(*name));
        if found {
            batch.add(&nl_table(*f, name), MsgType::Del);
            descs.push(Desc::Text(format!(
                "delete table {} {name}",
                text::family_name(*f)
            )));
        }
    }
    if batch.is_empty() {
        return Ok(false);
    }
    batch
        .send()
        .map_err(|e| kernel_error(e, &descs, &Transaction::default(), &[]))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::net::Ipv4Addr;
    use std::os::fd::AsRawFd;
    use std::os::raw::c_int;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use clap::Parser;

    use super::*;
    use crate::nft::normalize::normalize;
    use crate::ruleset::diff;
    use crate::ruleset::ir::{Chain, Proto, Rule, SetFlags, Table};

    const CLONE_NEWNET: c_int = 0x4000_0000;

    extern "C" {
        fn setns(fd: c_int, nstype: c_int) -> c_int;
        fn geteuid() -> u32;
    }

    /// A network namespace made with `ip netns add`, deleted on drop (also when a test
    /// panics). Never the machine's own namespace.
    struct Netns {
        name: String,
    }

    impl Netns {
        fn create() -> Netns {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "kntp-nl-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .expect("run ip netns add");
            assert!(
                out.status.success(),
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Netns { name }
        }

        /// Moves the calling thread into this namespace and checks that it arrived.
        fn enter(&self) {
            use std::os::unix::fs::MetadataExt;
            let path = format!("/var/run/netns/{}", self.name);
            let f = File::open(&path).expect("open netns file");
            // SAFETY: a valid fd owned by `f` for the duration of the call.
            let rc = unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let want = f.metadata().unwrap();
            let have = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
            assert!(
                want.dev() == have.dev() && want.ino() == have.ino(),
                "setns into {path} did not take effect"
            );
        }

        /// `nft <args>` inside this namespace.
        fn nft(&self, args: &[&str]) -> String {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name, "nft"])
                .args(args)
                .output()
                .expect("run ip netns exec nft");
            assert!(
                out.status.success(),
                "nft {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn kernel_tests_possible() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { geteuid() } == 0;
        let tools = ["ip", "nft"]
            .iter()
            .all(|t| Command::new(t).arg("-V").output().is_ok());
        if !(root && tools) {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI must run the netlink kernel tests: they need root, ip and nft");
            }
            eprintln!("skipping netlink kernel test: needs root, ip and nft");
            return false;
        }
        true
    }

    /// Runs `body` on a thread that lives in a fresh network namespace (deleted afterwards);
    /// `None` when the test cannot run here.
    fn in_netns<T: Send>(body: impl FnOnce(&Netns) -> T + Send) -> Option<T> {
        if !kernel_tests_possible() {
            return None;
        }
        let ns = Netns::create();
        let res = std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter();
                body(&ns)
            })
            .join()
        });
        drop(ns);
        match res {
            Ok(v) => Some(v),
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: crate::config::RenderArgs,
    }

    fn scenarios() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .expect("testdata exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("cluster.yaml").is_file() && p.join("expected.nft").is_file())
            .collect();
        dirs.sort();
        dirs
    }

    fn render_scenario(dir: &Path) -> Ruleset {
        let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
        let cli = Cli::try_parse_from(
            std::iter::once("render").chain(args.lines().map(str::trim).filter(|l| !l.is_empty())),
        )
        .expect("scenario args parse");
        let opts = crate::config::resolve(&cli.args).expect("scenario args resolve");
        let path = dir.join("cluster.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut notes = Vec::new();
        let name = path.to_string_lossy().into_owned();
        let objects = crate::render::read_sources([(name.as_str(), text.as_str())], &mut notes)
            .expect("scenario input reads");
        crate::render::ruleset(&objects, &opts).0
    }

    fn list_table(ns: &Netns, t: &Table) -> String {
        ns.nft(&["list", "table", text::family_name(t.family), &t.name])
    }

    #[test]
    fn every_scenario_lists_back_as_rendered_and_reads_back_as_summarized() {
        let dirs = scenarios();
        assert!(dirs.len() >= 20, "found {} scenarios", dirs.len());
        let mut failures = Vec::new();
        for dir in &dirs {
            let scenario = dir.file_name().unwrap().to_string_lossy().into_owned();
            let rs = render_scenario(dir);
            let decls = SetDecls::from_ruleset(&rs);
            let tx = diff::full(&rs);
            let Some(res) = in_netns(|ns| {
                let mut out = Vec::new();
                // twice: the second full transaction replaces the first atomically
                for round in 0..2 {
                    match apply(&tx, &decls) {
                        Ok(st) => eprintln!(
                            "{scenario} round {round}: {} messages, {} bytes, build {:?}, send {:?}",
                            st.messages, st.bytes, st.build, st.send
                        ),
                        Err(e) => {
                            out.push(format!("{scenario}: apply failed: {e}"));
                            return out;
                        }
                    }
                }
                for t in &rs.tables {
                    let listed = list_table(ns, t);
                    let want = text::table_text(t);
                    if normalize(&listed) != normalize(&want) {
                        out.push(format!(
                            "{scenario}: nft list table {} {} differs\n--- listed ---\n{listed}\n--- rendered ---\n{want}",
                            text::family_name(t.family),
                            t.name
                        ));
                    }
                    match read_table(t.family, &t.name) {
                        Ok(Some(k)) if k == summarize(t) => {}
                        Ok(Some(k)) => out.push(format!(
                            "{scenario}: read_table differs from summarize:\n{}",
                            differences(&k, &summarize(t)).join("\n")
                        )),
                        Ok(None) => out.push(format!("{scenario}: read_table found no table")),
                        Err(e) => out.push(format!("{scenario}: read_table failed: {e}")),
                    }
                }
                out
            }) else {
                return;
            };
            failures.extend(res);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    /// Walks through every scenario in one namespace with `diff::diff` transactions (full
    /// replacements where the skeletons differ): each step must list back as rendered.
    #[test]
    fn incremental_transactions_walk_through_all_scenarios() {
        let rulesets: Vec<(String, Ruleset)> = scenarios()
            .iter()
            .map(|d| {
                (
                    d.file_name().unwrap().to_string_lossy().into_owned(),
                    render_scenario(d),
                )
            })
            .collect();
        in_netns(|ns| {
            let mut prev = Ruleset::default();
            let mut failures = Vec::new();
            for (scenario, rs) in &rulesets {
                let tx = if prev.tables.is_empty() {
                    diff::full(rs)
                } else {
                    diff::diff(&prev, rs)
                };
                let mut decls = SetDecls::from_ruleset(&prev);
                for t in &rs.tables {
                    for s in &t.sets {
                        decls.insert(t.family, &t.name, s);
                    }
                }
                match apply(&tx, &decls) {
                    Ok(st) => eprintln!(
                        "diff to {scenario}: {} ops, {} messages",
                        tx.ops.len(),
                        st.messages
                    ),
                    Err(e) => {
                        failures.push(format!("diff to {scenario}: {e}"));
                        break;
                    }
                }
                // tables the previous scenario had and this one lacks are not ours to check
                for t in &rs.tables {
                    let listed = list_table(ns, t);
                    // chains (and sets) list in creation order, which incremental updates
                    // change: compare blocks regardless of order
                    let (have, want) = (
                        blocks(&normalize(&listed)),
                        blocks(&normalize(&text::table_text(t))),
                    );
                    if have != want {
                        let only = |a: &str, b: &str| -> Vec<String> {
                            a.lines()
                                .filter(|l| !b.lines().any(|x| x == *l))
                                .map(String::from)
                                .collect()
                        };
                        failures.push(format!(
                            "diff to {scenario}: {} table differs\nonly listed: {:#?}\nonly rendered: {:#?}",
                            text::family_name(t.family),
                            only(&have, &want),
                            only(&want, &have)
                        ));
                    }
                    let k = read_table(t.family, &t.name).unwrap();
                    if k.as_ref() != Some(&summarize(t)) {
                        failures.push(format!(
                            "diff to {scenario}: read_table differs: {:?}",
                            k.map(|k| differences(&k, &summarize(t)))
                        ));
                    }
                }
                prev = rs.clone();
            }
            assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        });
    }

    /// Normalized nft text as its set/map/chain blocks, sorted.
    fn blocks(normalized: &str) -> String {
        let mut blocks: Vec<String> = vec![String::new()];
        let lines: Vec<&str> = normalized.lines().collect();
        // the last line closes the table, not the last block
        let (body, end) = lines.split_at(lines.len().saturating_sub(1));
        for l in body {
            if ["set ", "map ", "chain "].iter().any(|p| l.starts_with(p)) {
                blocks.push(String::new());
            }
            let b = blocks.last_mut().unwrap();
            b.push_str(l);
            b.push('\n');
        }
        blocks.sort();
        blocks.concat() + &end.concat()
    }

    fn demo() -> Ruleset {
        render_scenario(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo"))
    }

    #[test]
    fn a_kernel_error_names_the_failing_rule_and_changes_nothing() {
        let rs = demo();
        let t = &rs.tables[0];
        let decls = SetDecls::from_ruleset(&rs);
        in_netns(|ns| {
            apply(&diff::full(&rs), &decls).expect("initial apply");
            let before = list_table(ns, t);
            let bad_rule = Rule::new(
                vec![Expr::L4Proto(Proto::Tcp)],
                Some(Verdict::Jump("missing-chain".into())),
            );
            let tx = Transaction {
                ops: vec![
                    Op::FlushChain {
                        family: t.family,
                        table: t.name.clone(),
                        chain: "services".into(),
                    },
                    Op::AddChain {
                        family: t.family,
                        table: t.name.clone(),
                        chain: Chain::regular("would-be-new"),
                    },
                    Op::AddRule {
                        family: t.family,
                        table: t.name.clone(),
                        chain: "services".into(),
                        rule: bad_rule,
                    },
                    Op::DeleteTable {
                        family: t.family,
                        name: t.name.clone(),
                    },
                ],
            };
            match apply(&tx, &decls) {
                Err(NetlinkError::Kernel { seq, errno, object }) => {
                    assert_eq!(seq, 3);
                    assert_eq!(errno, 2, "ENOENT");
                    assert!(
                        object.contains("services") && object.contains("jump missing-chain"),
                        "{object}"
                    );
                    let e = NetlinkError::Kernel { seq, errno, object };
                    eprintln!("{e}");
                }
                other => panic!("expected a kernel error, got {other:?}"),
            }
            assert_eq!(
                list_table(ns, t),
                before,
                "the failed batch changed the table"
            );
            assert_eq!(read_table(t.family, &t.name).unwrap(), Some(summarize(t)));
        });
    }

    #[test]
    fn a_hundred_thousand_elements_in_one_batch() {
        const N: u32 = 100_000;
        let elements: Vec<Element> = (0..N)
            .map(|i| Element {
                key: vec![
                    Value::Addr(IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))),
                    Value::Proto(Proto::Tcp),
                    Value::Port(80),
                ],
                data: Some(ElementData::Verdict(Verdict::Goto("target".into()))),
            })
            .collect();
        let table = Table {
            family: Family::V4,
            name: "kube-nftproxy".into(),
            comment: None,
            sets: vec![Set {
                name: "service-ips".into(),
                key: vec![KeyType::Addr, KeyType::Proto, KeyType::Service],
                data: Some(MapData::Verdict),
                flags: SetFlags::default(),
                timeout: None,
                comment: None,
                elements: elements.into_iter().map(|e| (e.key, e.data)).collect(),
            }],
            chains: vec![Chain::regular("target")],
        };
        let rs = Ruleset {
            tables: vec![table],
        };
        let decls = SetDecls::from_ruleset(&rs);
        let tx = diff::full(&rs);
        in_netns(|_ns| {
            let st = apply(&tx, &decls).expect("apply 100k elements");
            eprintln!(
                "100k elements: {} messages, {} bytes, build {:?}, send {:?}",
                st.messages, st.bytes, st.build, st.send
            );
            assert!(st.messages > 50, "elements were split: {}", st.messages);
            let t0 = Instant::now();
            let k = read_table(Family::V4, "kube-nftproxy").unwrap().unwrap();
            eprintln!("read back in {:?}", t0.elapsed());
            let els = k.sets[0].elements.as_ref().unwrap();
            assert_eq!(els.len(), N as usize);
            assert_eq!(k, summarize(&rs.tables[0]));
        });
    }

    #[test]
    fn delete_tables_removes_only_ours() {
        let rs = demo();
        let decls = SetDecls::from_ruleset(&rs);
        in_netns(|ns| {
            assert!(!delete_tables(&[(Family::V4, "kube-nftproxy")]).unwrap());
            apply(&diff::full(&rs), &decls).unwrap();
            ns.nft(&["add", "table", "ip", "someone-else"]);
            let names = [(Family::V4, "kube-nftproxy"), (Family::V6, "kube-nftproxy")];
            assert!(delete_tables(&names).unwrap());
            assert_eq!(read_table(Family::V4, "kube-nftproxy").unwrap(), None);
            assert!(!delete_tables(&names).unwrap());
            assert!(ns
                .nft(&["list", "tables"])
                .contains("table ip someone-else"));
        });
    }

    #[test]
    fn empty_transaction_sends_nothing() {
        // no kernel needed: nothing is sent
        let st = apply(&Transaction::default(), &SetDecls::new()).unwrap();
        assert_eq!(st, ApplyStats::default());
    }

    #[test]
    fn descriptions_follow_batch_sequence_numbers() {
        let rs = demo();
        let decls = SetDecls::from_ruleset(&rs);
        let tx = diff::full(&rs);
        let (batch, descs) = to_batch(&tx, &decls).unwrap();
        assert_eq!(descs.len(), batch.len() + 1);
        let descs: Vec<String> = descs.iter().map(|d| d.text(&tx)).collect();
        assert_eq!(descs[1], "add table ip kube-nftproxy");
        assert_eq!(descs[2], "delete table ip kube-nftproxy");
        assert!(descs
            .iter()
            .any(|d| d.starts_with("add rule to chain ip kube-nftproxy services: ")));
        assert!(descs
            .iter()
            .any(|d| d.starts_with("add elements 1..")
                && d.contains("map ip kube-nftproxy service-ips")));
    }

    #[test]
    fn elements_are_packed_into_messages_as_split_set_elements_packs_them() {
        let map = Set {
            name: "m".into(),
            key: vec![KeyType::Addr, KeyType::Proto, KeyType::Service],
            data: Some(MapData::Verdict),
            flags: SetFlags::default(),
            timeout: None,
            comment: None,
            elements: Default::default(),
        };
        let elements: Vec<Element> = (0..25_000u32)
            .map(|i| Element {
                key: vec![
                    Value::Addr(IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))),
                    Value::Proto(Proto::Tcp),
                    Value::Port(80),
                ],
                data: Some(ElementData::Verdict(Verdict::Goto(format!("service-{i}")))),
            })
            .collect();
        let mut decls = SetDecls::new();
        decls.insert(Family::V4, "t", &map);
        let tx = Transaction {
            ops: vec![Op::AddElements {
                family: Family::V4,
                table: "t".into(),
                set: "m".into(),
                elements: elements.clone(),
            }],
        };
        let delete = [Op::DeleteTable {
            family: Family::V4,
            name: "old".into(),
        }];
        let (batch, descs) = to_batch_with(&tx, &delete, &decls, None).unwrap();
        assert_eq!(descs.len(), batch.len() + 1);
        // The reference packing, from every encoded element at once.
        let nl = nl_set(Family::V4, "t", &map).unwrap();
        let encoded = elements.iter().map(|e| {
            let (k, d) = encode_element(Family::V4, &map, &e.key, e.data.as_ref(), true).unwrap();
            nl_element(k, d)
        });
        let want: Vec<usize> = rustables::set::split_set_elements(&nl, encoded)
            .iter()
            .map(|l| l.iter_elements().count())
            .collect();
        assert!(want.len() > 5, "{want:?}");
        let mut got = Vec::new();
        let mut next = 0;
        for d in &descs[1..descs.len() - 1] {
            let Desc::Elements {
                op: 0,
                first,
                n,
                map: true,
            } = d
            else {
                panic!("{d:?}");
            };
            assert_eq!(*first, next);
            next += n;
            got.push(*n);
        }
        assert_eq!(got, want);
        assert_eq!(next, elements.len());
        let texts: Vec<String> = descs.iter().map(|d| d.text_with(&tx, &delete)).collect();
        assert_eq!(texts[0], "(batch begin)");
        assert_eq!(
            texts[2],
            format!(
                "add elements {}..{} (of 25000) to map ip t m (first: 10.96.{}.{} . tcp . 80 : goto service-{})",
                want[0] + 1,
                want[0] + want[1],
                want[0] >> 8,
                want[0] & 0xff,
                want[0]
            )
        );
        assert_eq!(texts.last().unwrap(), "delete table ip old");
    }

    #[test]
    fn elements_of_an_undeclared_set_or_of_the_wrong_family_are_refused() {
        let el = Element {
            key: vec![Value::Addr("fd00::1".parse().unwrap())],
            data: None,
        };
        let tx = Transaction {
            ops: vec![Op::AddElements {
                family: Family::V4,
                table: "t".into(),
                set: "s".into(),
                elements: vec![el.clone()],
            }],
        };
        assert!(matches!(
            to_batch(&tx, &SetDecls::new()),
            Err(NetlinkError::UnknownSet { .. })
        ));
        let mut decls = SetDecls::new();
        decls.insert(
            Family::V4,
            "t",
            &Set {
                name: "s".into(),
                key: vec![KeyType::Addr],
                data: None,
                flags: SetFlags::default(),
                timeout: None,
                comment: None,
                elements: Default::default(),
            },
        );
        let err = to_batch(&tx, &decls)
            .err()
            .expect("v6 address in an ip set");
        assert!(matches!(err, NetlinkError::Encode { .. }), "{err}");
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(4, 16), vec![255, 255, 0, 0]);
        assert_eq!(prefix_mask(4, 12), vec![255, 240, 0, 0]);
        assert_eq!(prefix_mask(4, 0), vec![0, 0, 0, 0]);
        assert_eq!(prefix_mask(16, 64)[7..9], [255, 0]);
    }
}

#[cfg(test)]
mod typeof_tests {
    use super::*;
    use crate::ruleset::ir::SetFlags;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn endpoint_map(key: Vec<KeyType>, comment: Option<&str>) -> Set {
        Set {
            name: "m".into(),
            key,
            data: Some(MapData::Values(vec![KeyType::Addr, KeyType::Service])),
            flags: SetFlags::default(),
            timeout: None,
            comment: comment.map(str::to_string),
            elements: Default::default(),
        }
    }

    /// The userdata must be byte for byte what nft 1.0.6 writes for the same `typeof`
    /// declaration (captured with `nft --debug=mnl`), or `nft list` prints another type.
    #[test]
    fn typeof_userdata_is_what_nft_writes() {
        use KeyType::*;
        let cases = [
            (
                Family::V4,
                vec![Addr, Proto, Service, Slot],
                Some("x"),
                "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b0000000104020000000604000000000702 7800",
            ),
            (
                Family::V4,
                vec![Proto, Service, Slot],
                None,
                "000400000000010400000000034a00040d0000000142000e00040900000001060004100000000114000407000000010c00040b000000010402000000021a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000",
            ),
            (
                Family::V6,
                vec![Addr, Proto, Service, Slot],
                None,
                "000400000000010400000000036000040d00000001580014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010401000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000",
            ),
        ];
        for (f, key, comment, want) in cases {
            let set = nl_set(f, "t", &endpoint_map(key, comment)).unwrap();
            assert_eq!(set.userdata.clone().unwrap(), hex(&want.replace(' ', "")));
        }
    }
}

#[cfg(test)]
mod fill_tests {
    use super::*;
    use crate::ruleset::diff;

    /// The agent's full sync reads elements from the ruleset; its batch must be the one a
    /// transaction with copied elements gives.
    #[test]
    fn a_full_sync_by_reference_encodes_like_a_copying_one() {
        let yaml = std::fs::read_to_string("testdata/etp-local/cluster.yaml").unwrap();
        let mut objects = crate::input::ClusterObjects::default();
        objects.add_text("t", &yaml, &mut Vec::new()).unwrap();
        objects.sort();
        let opts = crate::options::Options {
            hostname: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let (rs, _) = crate::render::ruleset(&objects, &opts);
        let decls = SetDecls::from_ruleset(&rs);
        let (copied, _) = to_batch(&diff::full(&rs), &decls).unwrap();
        let by_ref = diff::full_by_reference(&rs);
        assert!(by_ref.ops.iter().any(|o| matches!(o, Op::FillSet { .. })));
        let (filled, _) = to_batch_with(&by_ref, &[], &decls, Some(&rs)).unwrap();
        assert_eq!(
            (filled.len(), filled.size_bytes()),
            (copied.len(), copied.size_bytes())
        );
        match to_batch(&by_ref, &decls) {
            Err(e) => assert!(e.to_string().contains("no ruleset"), "{e}"),
            Ok(_) => panic!("a fill without a ruleset encoded"),
        }
    }
}
