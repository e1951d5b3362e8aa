//! Declarations: sets and maps (key and data types, flags, the `typeof` userdata nft
//! writes) and chains (hooks, types), as netlink objects.

use std::collections::HashMap;

use rustables::{sys, ChainType as NlChainType, HookClass, Set as NlSet};

use super::text;
use super::*;
use crate::ruleset::ir::{ChainType, Family, Hook, KeyType, MapData, Ruleset, Set};
use crate::ruleset::tx::{Op, Transaction};

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

/// The netlink declaration of a set or map (a fresh `NFTA_SET_ID` each time).
pub(super) fn nl_set(f: Family, table: &str, s: &Set) -> Result<NlSet, NetlinkError> {
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
        // No size, as upstream declares its affinity sets: a declared size is also the
        // kernel's initial hash table size, and 65,535 cost 1.5 MB of kernel memory per
        // empty set (3.6 GB for the 2,312 affinity sets of the realistic 10,000-Service
        // mix). Undeclared, the table grows with its elements, and the kernel still caps
        // a set that `update` writes at its default of 65,535 (and lists that size).
        set = set.with_added_flags(sys::NFT_SET_EVAL);
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
pub(super) fn typeof_udata(f: Family, s: &Set) -> Vec<(u8, Vec<u8>)> {
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

pub(super) fn chain_desc(f: Family, table: &str, chain: &str) -> String {
    format!("chain {} {table} {chain}", text::family_name(f))
}

pub(super) fn hook_class(h: Hook) -> HookClass {
    match h {
        Hook::Prerouting => HookClass::PreRouting,
        Hook::Input => HookClass::In,
        Hook::Forward => HookClass::Forward,
        Hook::Output => HookClass::Out,
        Hook::Postrouting => HookClass::PostRouting,
    }
}

pub(super) fn nl_chain_type(k: ChainType) -> NlChainType {
    match k {
        ChainType::Filter => NlChainType::Filter,
        ChainType::Nat => NlChainType::Nat,
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
