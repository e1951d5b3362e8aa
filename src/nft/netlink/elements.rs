//! Set and map elements: key and data values encoded as the kernel stores them, and the
//! sets a batch's element messages refer to.

use std::collections::HashMap;
use std::net::IpAddr;

use rustables::expr::VerdictKind;
use rustables::set::SetElement;
use rustables::Set as NlSet;

use super::text;
use super::*;
use crate::ruleset::ir::{ElementData, Family, KeyType, MapData, Set, Value, Verdict};

pub(super) fn value_bytes(f: Family, k: KeyType, v: &Value) -> Result<Vec<u8>, String> {
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
pub(super) fn encode_values(
    f: Family,
    types: &[KeyType],
    vals: &[Value],
) -> Result<Vec<u8>, String> {
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

pub(super) fn verdict_kind(v: &Verdict) -> Option<VerdictKind> {
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
pub(super) fn encode_element(
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

pub(super) fn nl_element(key: Vec<u8>, data: Option<KernelData>) -> SetElement {
    let e = SetElement::new(key);
    match data {
        None => e,
        Some(KernelData::Verdict(v)) => e.with_verdict(v),
        Some(KernelData::Value(v)) => e.with_value(v),
    }
}

/// The netlink sets of one batch: those declared by the transaction (with the set id of
/// their `NEWSET` message) and, lazily, those from the caller's declarations.
pub(super) struct SetCache<'a> {
    pub(super) decls: &'a SetDecls,
    /// The table of the rule being built.
    pub(super) table: String,
    pub(super) built: HashMap<(Family, String, String), (Set, NlSet)>,
    /// Name-only stand-ins for sets a rule names but nobody declared (the kernel decides).
    pub(super) bare: HashMap<(Family, String, String), NlSet>,
}

impl SetCache<'_> {
    pub(super) fn declare(
        &mut self,
        f: Family,
        table: &str,
        s: &Set,
    ) -> Result<&NlSet, NetlinkError> {
        let nl = nl_set(f, table, s)?;
        let decl = s.declaration();
        let key = (f, table.to_string(), s.name.clone());
        self.built.insert(key.clone(), (decl, nl));
        Ok(&self.built[&key].1)
    }

    pub(super) fn get(
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
    pub(super) fn lookup_target(
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
