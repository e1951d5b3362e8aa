//! Reading our tables back: chains with rule counts, sets and their elements, as plain
//! data comparable with what the IR wants ([`summarize`]); deleting whole tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rustables::expr::VerdictKind;
use rustables::set::{list_set_elements, list_sets_for_table};
use rustables::{
    list_chains_for_table, list_tables, sys, Batch, ChainPolicy, ChainType as NlChainType, MsgType,
    NfNetlinkObject, Rule as NlRule, Set as NlSet,
};

use super::text;
use super::*;
use crate::ruleset::diff::Present;
use crate::ruleset::ir::{self, Family, Ruleset};
use crate::ruleset::tx::{Op, Transaction};
use crate::ruleset::TABLE_NAME;

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

pub(super) const SET_FLAGS_COMPARED: u32 = sys::NFT_SET_MAP
    | sys::NFT_SET_TIMEOUT
    | sys::NFT_SET_EVAL
    | sys::NFT_SET_ANONYMOUS
    | sys::NFT_SET_CONSTANT
    | sys::NFT_SET_INTERVAL
    | sys::NFT_SET_CONCAT;

pub(super) fn nl_chain_type_name(t: &NlChainType) -> &'static str {
    match t {
        NlChainType::Filter => "filter",
        NlChainType::Nat => "nat",
        NlChainType::Route => "route",
    }
}

pub(super) fn kernel_set(nl: &NlSet) -> KernelSet {
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

pub(super) fn sort_elements(els: &mut [KernelElement]) {
    els.sort_by(|a, b| a.key.cmp(&b.key));
}

/// How often [`read_table`] re-reads a set whose element dump was inconsistent.
pub(super) const ELEMENT_DUMP_ATTEMPTS: u32 = 5;

/// The elements of `set`, sorted by key.
///
/// A set-element dump spans several netlink messages, and each continues the kernel's hash
/// table walk by skipping the elements already sent. While the kernel resizes the hash table
/// (asynchronously, e.g. right after a large insert), the walk order changes between
/// messages, so a dump can repeat some elements and miss others. A repeated key gives that
/// away: the dump is retried after a pause (the resize finishes within milliseconds).
pub(super) fn read_elements(set: &NlSet, name: &str) -> Result<Vec<KernelElement>, NetlinkError> {
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

/// What a full sync may keep of our table `t` as the kernel holds it (for
/// [`crate::ruleset::diff::full_keeping`]): its chains, and its sets with whether each is
/// declared as `t` declares it. Chains and sets only (no rules or elements), so it is cheap
/// at any size. `None` when there is no such table, or when its comment or a base chain
/// differs from `t`'s (another version's skeleton: the full sync recreates the table).
pub fn present(t: &ir::Table) -> Result<Option<Present>, NetlinkError> {
    let pf = nl_family(t.family);
    let Some(table) = list_tables()?
        .into_iter()
        .find(|k| k.get_family() == pf && k.get_name().map(String::as_str) == Some(&t.name))
    else {
        return Ok(None);
    };
    if table.get_comment() != t.comment {
        return Ok(None);
    }
    let want = |name: &str| t.chain(name);
    let mut chains = BTreeSet::new();
    for c in list_chains_for_table(&table)? {
        let name = c.get_name().cloned().unwrap_or_default();
        let base = c.get_hook().map(|h| {
            (
                c.get_type().map(nl_chain_type_name).unwrap_or(""),
                h.get_class().copied().unwrap_or(u32::MAX),
                h.get_priority().map(|p| *p as i32).unwrap_or(0),
            )
        });
        let wanted_base = want(&name).map(|w| {
            w.base.map(|b| {
                (
                    nl_chain_type_name(&nl_chain_type(b.kind)),
                    hook_class(b.hook) as u32,
                    b.priority,
                )
            })
        });
        let same_comment = want(&name).is_none_or(|w| w.comment == c.get_comment());
        match wanted_base {
            Some(w) if w != base || !same_comment => return Ok(None),
            None if base.is_some() => return Ok(None),
            _ => {}
        }
        chains.insert(name);
    }
    if (t.chains.iter()).any(|c| c.base.is_some() && !chains.contains(&c.name)) {
        return Ok(None);
    }
    let mut sets = BTreeMap::new();
    for nl in list_sets_for_table(&table)? {
        let have = kernel_set(&nl);
        let same = match t.set(&have.name) {
            Some(w) => nl_set(t.family, &t.name, w).is_ok_and(|w| kernel_set(&w) == have),
            None => false,
        };
        sets.insert(have.name, same);
    }
    Ok(Some(Present { chains, sets }))
}

/// [`present`] for every table of `rs`, as [`crate::ruleset::diff::full_keeping`] takes it.
pub fn present_all(rs: &Ruleset) -> Result<Vec<(Family, String, Option<Present>)>, NetlinkError> {
    (rs.tables.iter())
        .map(|t| Ok((t.family, t.name.clone(), present(t)?)))
        .collect()
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

/// Deletes of our table of each family `desired` no longer has, for the same batch as the
/// sync that drops the family.
pub fn obsolete_tables(desired: &Ruleset) -> Vec<Op> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| !desired.tables.iter().any(|t| t.family == *f))
        .filter(|f| matches!(read_table(*f, TABLE_NAME), Ok(Some(_))))
        .map(|family| Op::DeleteTable {
            family,
            name: TABLE_NAME.into(),
        })
        .collect()
}
