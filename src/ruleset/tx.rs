//! A transaction as data: the ordered operations that turn the kernel's copy of our tables
//! into the desired IR. `diff` produces it, the netlink layer sends it as one batch, and
//! `--dry-run` prints it. Order matters: the kernel checks references as it goes.

use super::ir::{Chain, Element, Elements, Family, Rule, Ruleset, Set, Table, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the table if missing (no error when it exists).
    AddTable {
        family: Family,
        name: String,
        comment: Option<String>,
    },
    DeleteTable {
        family: Family,
        name: String,
    },
    /// Declares a chain; its rules are separate `AddRule`s. `chain.rules` is ignored.
    AddChain {
        family: Family,
        table: String,
        chain: Chain,
    },
    /// Removes every rule of a chain.
    FlushChain {
        family: Family,
        table: String,
        chain: String,
    },
    /// Deletes an empty, unreferenced chain.
    DeleteChain {
        family: Family,
        table: String,
        chain: String,
    },
    /// Appends a rule at the end of a chain.
    AddRule {
        family: Family,
        table: String,
        chain: String,
        rule: Rule,
    },
    /// Declares a set or map; `set.elements` is ignored (see `AddElements`).
    AddSet {
        family: Family,
        table: String,
        set: Set,
    },
    /// Deletes a set or map (its elements with it); nothing may refer to it any more.
    DeleteSet {
        family: Family,
        table: String,
        set: String,
    },
    AddElements {
        family: Family,
        table: String,
        set: String,
        elements: Vec<Element>,
    },
    DeleteElements {
        family: Family,
        table: String,
        set: String,
        elements: Vec<Element>,
    },
    /// Adds every element the desired ruleset holds for `set`: what a full sync of the
    /// agent sends. The elements are read from the ruleset when the batch is encoded
    /// instead of being copied into the transaction (20+ MB at 10,000 Services).
    FillSet {
        family: Family,
        table: String,
        set: String,
    },
    /// Removes every element of a set (used for the datapath-filled affinity map).
    FlushSet {
        family: Family,
        table: String,
        set: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether this is a full sync: it replaces a table, or rewrites one in place
    /// (`diff::full_keeping` flushes the base chains, which a partial sync never touches:
    /// their rules are fixed by the skeleton).
    pub fn is_full(&self) -> bool {
        self.ops.iter().any(|o| match o {
            Op::DeleteTable { .. } => true,
            Op::FlushChain { chain, .. } => super::skeleton::skeleton()
                .chain(chain)
                .is_some_and(|c| c.base.is_some()),
            _ => false,
        })
    }
}

/// Why a transaction does not fit the ruleset it is replayed on: the kernel would refuse
/// it the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(pub String);

/// Plays `tx` on `rs` as the kernel would, checking what the kernel checks (existing
/// tables, chains, sets and keys). Chains keep the builder's order: the skeleton's first,
/// then the rest by name, so a replayed ruleset equals a freshly built one.
pub fn replay(rs: &mut Ruleset, tx: &Transaction) -> Result<(), ReplayError> {
    for op in &tx.ops {
        replay_op(rs, op)?;
    }
    Ok(())
}

fn err<T>(what: String) -> Result<T, ReplayError> {
    Err(ReplayError(what))
}

fn table_mut<'a>(
    rs: &'a mut Ruleset,
    family: Family,
    name: &str,
) -> Result<&'a mut Table, ReplayError> {
    match rs
        .tables
        .iter_mut()
        .find(|t| t.family == family && t.name == name)
    {
        Some(t) => Ok(t),
        None => err(format!("no table {family:?} {name}")),
    }
}

/// Where chain `name` is, or where it belongs (`Err`).
fn chain_position(t: &Table, name: &str) -> Result<usize, usize> {
    let fixed = t.chains.iter().take_while(|c| is_fixed(&c.name)).count();
    if is_fixed(name) {
        return t.chains[..fixed]
            .iter()
            .position(|c| c.name == name)
            .ok_or(fixed);
    }
    t.chains[fixed..]
        .binary_search_by(|c| c.name.as_str().cmp(name))
        .map(|i| i + fixed)
        .map_err(|i| i + fixed)
}

/// Where the existing chain `name` is; `what` names the operation for the error.
fn existing_chain(t: &Table, name: &str, what: &str) -> Result<usize, ReplayError> {
    chain_position(t, name).map_err(|_| ReplayError(format!("{what} missing chain {name}")))
}

fn is_fixed(name: &str) -> bool {
    super::skeleton::skeleton().chain(name).is_some()
}

fn set_mut<'a>(t: &'a mut Table, name: &str) -> Result<&'a mut Set, ReplayError> {
    match t.sets.iter_mut().find(|s| s.name == name) {
        Some(s) => Ok(s),
        None => err(format!("no set {name}")),
    }
}

fn replay_op(rs: &mut Ruleset, op: &Op) -> Result<(), ReplayError> {
    match op {
        Op::AddTable {
            family,
            name,
            comment,
        } => {
            if !rs
                .tables
                .iter()
                .any(|t| t.family == *family && &t.name == name)
            {
                rs.tables.push(Table {
                    family: *family,
                    name: name.clone(),
                    comment: comment.clone(),
                    sets: vec![],
                    chains: vec![],
                });
            }
        }
        Op::DeleteTable { family, name } => {
            table_mut(rs, *family, name)?;
            rs.tables
                .retain(|t| !(t.family == *family && &t.name == name));
        }
        Op::AddChain {
            family,
            table,
            chain,
        } => {
            let t = table_mut(rs, *family, table)?;
            match chain_position(t, &chain.name) {
                Ok(_) => return err(format!("chain {} added twice", chain.name)),
                Err(at) => t.chains.insert(
                    at,
                    Chain {
                        rules: Vec::new(),
                        ..chain.clone()
                    },
                ),
            }
        }
        Op::FlushChain {
            family,
            table,
            chain,
        } => {
            let t = table_mut(rs, *family, table)?;
            let i = existing_chain(t, chain, "flush of")?;
            t.chains[i].rules.clear();
        }
        Op::DeleteChain {
            family,
            table,
            chain,
        } => {
            let t = table_mut(rs, *family, table)?;
            let i = existing_chain(t, chain, "deleting")?;
            if !t.chains[i].rules.is_empty() {
                return err(format!("deleting non-empty chain {chain}"));
            }
            t.chains.remove(i);
        }
        Op::AddRule {
            family,
            table,
            chain,
            rule,
        } => {
            let t = table_mut(rs, *family, table)?;
            let i = existing_chain(t, chain, "rule for")?;
            t.chains[i].rules.push(rule.clone());
        }
        Op::AddSet { family, table, set } => {
            let t = table_mut(rs, *family, table)?;
            if t.sets.iter().any(|s| s.name == set.name) {
                return err(format!("set {} added twice", set.name));
            }
            // The skeleton's sets first, in its order; the per-count maps after, by name.
            let fixed = t
                .sets
                .iter()
                .take_while(|s| super::skeleton::skeleton().set(&s.name).is_some())
                .count();
            let at = if super::skeleton::skeleton().set(&set.name).is_some() {
                fixed
            } else {
                t.sets[fixed..].partition_point(|s| s.name < set.name) + fixed
            };
            t.sets.insert(at, set.declaration());
        }
        Op::DeleteSet { family, table, set } => {
            let t = table_mut(rs, *family, table)?;
            let Some(i) = t.sets.iter().position(|s| &s.name == set) else {
                return err(format!("deleting missing set {set}"));
            };
            t.sets.remove(i);
        }
        Op::AddElements {
            family,
            table,
            set,
            elements,
        } => {
            let s = set_mut(table_mut(rs, *family, table)?, set)?;
            add_elements(&mut s.elements, elements)
                .map_err(|_| ReplayError(format!("EEXIST: element added twice to {set}")))?;
        }
        Op::DeleteElements {
            family,
            table,
            set,
            elements,
        } => {
            let s = set_mut(table_mut(rs, *family, table)?, set)?;
            delete_elements(&mut s.elements, elements)
                .map_err(|_| ReplayError(format!("ENOENT: element missing from {set}")))?;
        }
        Op::FlushSet { family, table, set } => {
            set_mut(table_mut(rs, *family, table)?, set)?
                .elements
                .clear();
        }
        Op::FillSet { set, .. } => {
            return err(format!(
                "{set} is filled from a ruleset the replay does not have"
            ))
        }
    }
    Ok(())
}

/// Adds `new` to `into`. Fails, leaving `into` as it was, if a key is present already (or
/// twice in `new`), as the kernel refuses it.
fn add_elements(into: &mut Elements, new: &[Element]) -> Result<(), ()> {
    let mut keys: Vec<&Vec<Value>> = new.iter().map(|e| &e.key).collect();
    keys.sort();
    if keys.windows(2).any(|w| w[0] == w[1]) || keys.iter().any(|k| into.contains_key(*k)) {
        return Err(());
    }
    for e in new {
        into.insert(e.key.clone(), e.data.clone());
    }
    Ok(())
}

/// Removes the elements with `gone`'s keys. Fails, leaving `from` as it was, if one is
/// missing (or listed twice: the kernel would find it missing the second time).
fn delete_elements(from: &mut Elements, gone: &[Element]) -> Result<(), ()> {
    let mut keys: Vec<&Vec<Value>> = gone.iter().map(|e| &e.key).collect();
    keys.sort();
    if keys.windows(2).any(|w| w[0] == w[1]) || keys.iter().any(|k| !from.contains_key(*k)) {
        return Err(());
    }
    for k in keys {
        from.remove(k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::ir::Value;

    fn els(keys: &[u16]) -> Vec<Element> {
        keys.iter()
            .map(|k| Element {
                key: vec![Value::Port(*k)],
                data: None,
            })
            .collect()
    }

    fn set(keys: &[u16]) -> Elements {
        els(keys).into_iter().map(|e| (e.key, e.data)).collect()
    }

    #[test]
    fn bulk_element_changes_keep_the_set_sorted_and_refuse_what_the_kernel_refuses() {
        let mut s = set(&[2, 4, 6]);
        add_elements(&mut s, &els(&[7, 1, 5])).unwrap();
        assert_eq!(s, set(&[1, 2, 4, 5, 6, 7]));
        assert!(add_elements(&mut s, &els(&[3, 4])).is_err(), "4 exists");
        assert!(add_elements(&mut s, &els(&[3, 3])).is_err(), "3 twice");
        delete_elements(&mut s, &els(&[7, 1, 4])).unwrap();
        assert_eq!(s, set(&[2, 5, 6]));
        assert!(delete_elements(&mut s, &els(&[2, 9])).is_err(), "9 missing");
        assert!(delete_elements(&mut s, &els(&[5, 5])).is_err(), "5 twice");
        assert_eq!(
            s,
            set(&[2, 5, 6]),
            "a refused change leaves the set as it was"
        );
    }
}
