//! Transactions to batches: one kernel transaction per [`Transaction`], all or nothing,
//! with a description of every message so a refusal names the object it refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rustables::error::QueryError;
use rustables::nlmsg::{pad_netlink_object_with_variable_size, NfNetlinkAttribute};
use rustables::set::{SetElementList, MAX_SET_ELEM_LIST_BYTES};
use rustables::{Batch, ChainPolicy, Hook as NlHook, MsgType, Rule as NlRule, Set as NlSet};

use super::text;
use super::*;
use crate::ruleset::ir::{Element, ElementData, Family, Ruleset, Value};
use crate::ruleset::tx::{Op, Transaction};

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
            Op::DeleteSet { family, table, set } => {
                let nl = NlSet::new(set.as_str(), &nl_table(*family, table))
                    .map_err(|e| encode_err(&op_text(op), e.to_string()))?;
                let seq = batch.add(&nl, MsgType::Del);
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
pub(super) fn op_text(op: &Op) -> String {
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
        Op::DeleteSet { family, table, set } => {
            format!("delete set {} {table} {set}", fam(family))
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

pub(super) fn kernel_error(
    e: QueryError,
    descs: &[Desc],
    tx: &Transaction,
    extra: &[Op],
) -> NetlinkError {
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

#[cfg(test)]
mod fill_tests {
    use super::*;
    use crate::ruleset::diff;

    /// The agent's full sync reads elements from the ruleset; its batch must be the one a
    /// transaction with copied elements gives.
    #[test]
    fn a_full_sync_by_reference_encodes_like_a_copying_one() {
        let yaml = std::fs::read_to_string("testdata/etp-local/cluster.yaml").unwrap();
        let mut objects = crate::objects::input::ClusterObjects::default();
        objects.add_text("t", &yaml, &mut Vec::new()).unwrap();
        objects.sort();
        let opts = crate::model::options::Options {
            hostname: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let (rs, _) = crate::ruleset::render::ruleset(&objects, &opts);
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
