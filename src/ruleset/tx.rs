//! A transaction as data: the ordered operations that turn the kernel's copy of our tables
//! into the desired IR. `diff` produces it, the netlink layer sends it as one batch, and
//! `--dry-run` prints it. Order matters: the kernel checks references as it goes.

use super::ir::{Chain, Element, Family, Rule, Set};

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
}
