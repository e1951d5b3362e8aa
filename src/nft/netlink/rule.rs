//! Rules: each IR expression encoded as the register-level expressions nft itself writes,
//! so that `nft list` prints the text `nft::text` renders.

use std::net::IpAddr;

use rustables::expr::{
    Bitwise, Cmp, CmpOp as NlCmpOp, ConnTrackState, ConnTrackStatus, Conntrack, ConntrackKey,
    Counter, Dynset, Fib, Immediate, Lookup, Masquerade, Meta, MetaType, Nat, Numgen, Payload,
    RawExpression, Register, Reject, ICMPV6_PORT_UNREACH, ICMP_PORT_UNREACH,
};
use rustables::{sys, Rule as NlRule};

use super::*;
use crate::ruleset::ir::{self, CmpOp, Expr, Family, FibAddr, Field, KeyType, Value, Verdict};

/// `RTN_LOCAL` from `<linux/rtnetlink.h>`: what `fib ... type` returns for a local address.
pub(super) const RTN_LOCAL: u32 = 2;
/// `IFNAMSIZ` from `<linux/if.h>`: an interface name with its NUL.
pub(super) const IFNAMSIZ: usize = 16;
/// Registers hold 16 32-bit units (64 bytes) in all.
pub(super) const REG32_UNITS: u32 = 16;

/// The register holding 32-bit unit `unit` of the register file (`reg 1` for unit 0, as nft
/// writes it, else `NFT_REG32_<unit>`).
pub(super) fn reg_at(unit: u32) -> Option<Register> {
    if unit == 0 {
        Some(Register::Reg1)
    } else {
        Register::reg32(unit)
    }
}

pub(super) fn field_len(f: Family, fl: Field) -> u32 {
    match fl {
        Field::Saddr | Field::Daddr => addr_len(f),
        Field::L4Proto => 1,
        Field::Dport => 2,
        Field::Random(_) => 4,
    }
}

pub(super) fn payload(base: u32, offset: u32, len: u32, reg: Register) -> Payload {
    Payload::default()
        .with_base(base)
        .with_offset(offset)
        .with_len(len)
        .with_dreg(reg)
}

pub(super) fn load_field(f: Family, fl: Field, reg: Register) -> RawExpression {
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
pub(super) struct RuleBuilder<'a> {
    pub(super) f: Family,
    pub(super) rule: NlRule,
    /// Formatting a rule is costly at 100k rules, so it happens only for an error.
    pub(super) object: &'a dyn Fn() -> String,
}

impl RuleBuilder<'_> {
    pub(super) fn push(&mut self, e: impl Into<RawExpression>) {
        self.rule.add_expr(e);
    }

    pub(super) fn err(&self, reason: impl Into<String>) -> NetlinkError {
        encode_err(&(self.object)(), reason)
    }

    pub(super) fn reg(&self, unit: u32) -> Result<Register, NetlinkError> {
        reg_at(unit).ok_or_else(|| self.err(format!("register unit {unit} out of range")))
    }

    /// Loads `key` into consecutive 32-bit registers from `start`; returns the next free unit.
    pub(super) fn load_key(&mut self, key: &[Field], start: u32) -> Result<u32, NetlinkError> {
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

    pub(super) fn l4proto(&mut self, p: ir::Proto) {
        self.push(Meta::new(MetaType::L4Proto));
        self.push(Cmp::new(NlCmpOp::Eq, [p.number()]));
    }

    pub(super) fn addr_bytes(&self, a: &IpAddr) -> Result<Vec<u8>, NetlinkError> {
        value_bytes(self.f, KeyType::Addr, &Value::Addr(*a)).map_err(|r| self.err(r))
    }

    pub(super) fn bitwise(&mut self, mask: Vec<u8>, xor: Vec<u8>) -> Result<(), NetlinkError> {
        let b = Bitwise::new(mask, xor).map_err(|e| self.err(e.to_string()))?;
        self.push(b);
        Ok(())
    }

    pub(super) fn expr(&mut self, e: &Expr, sets: &mut SetCache) -> Result<(), NetlinkError> {
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
            Expr::Iifname { op, name, prefix } => {
                if name.is_empty() || name.len() >= IFNAMSIZ {
                    return Err(self.err(format!("invalid interface name {name:?}")));
                }
                self.push(Meta::new(MetaType::IifName));
                // As nft writes it: a whole name is compared with its NUL padding to
                // IFNAMSIZ; a `*` wildcard compares only the prefix's bytes.
                let mut bytes = name.as_bytes().to_vec();
                if !prefix {
                    bytes.resize(IFNAMSIZ, 0);
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
            // nft sends both counts, zero, with a new counter.
            Expr::Counter => {
                self.push(Counter::default().with_nb_bytes(0u64).with_nb_packets(0u64))
            }
            Expr::Update { set, key } => {
                // No timeout of its own: the kernel then refreshes an existing element with
                // the set's default timeout, as upstream's `update @affinity-… { ip saddr }`.
                self.load_key(key, 0)?;
                let s = sets.lookup_target(f, set, self.object)?;
                let d = Dynset::update(s, Register::Reg1).map_err(|e| self.err(e.to_string()))?;
                self.push(d);
            }
        }
        Ok(())
    }

    /// `meta mark set meta mark & mask ^ xor`
    pub(super) fn mark_set(&mut self, mask: u32, xor: u32) -> Result<(), NetlinkError> {
        self.push(Meta::new(MetaType::Mark));
        self.bitwise(mask.to_ne_bytes().to_vec(), xor.to_ne_bytes().to_vec())?;
        self.push(
            Meta::default()
                .with_key(MetaType::Mark)
                .with_sreg(Register::Reg1),
        );
        Ok(())
    }

    pub(super) fn verdict(&mut self, v: &Verdict, sets: &mut SetCache) -> Result<(), NetlinkError> {
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

pub(super) fn prefix_mask(len: usize, prefix_len: u8) -> Vec<u8> {
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
