//! The ruleset as data: what the node's nftables tables must hold. Both the nft text
//! (`nft::text`) and the netlink batch come from these types, so nothing here is a string
//! of nft syntax; every rule is a list of typed expressions and a verdict.

use std::net::IpAddr;

pub use crate::vocab::{Family, Proto};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub comment: Option<String>,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// One component of a set key or of map data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr` / `ipv6_addr`, following the table's family.
    Addr,
    /// `inet_proto`
    Proto,
    /// `inet_service`
    Service,
    /// The endpoint slot of an endpoint map: a 32-bit number in host byte order, as
    /// `numgen` writes it. nft has no type name for it, so a set whose key holds one is
    /// declared with `typeof` (see `nft::text`).
    Slot,
}

/// What a map maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MapData {
    Verdict,
    /// A concatenation of values, e.g. `ipv4_addr . inet_service` for DNAT targets.
    Values(Vec<KeyType>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SetFlags {
    /// Elements are added by the datapath (`update @set`).
    pub dynamic: bool,
    /// Elements expire.
    pub timeout: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: Vec<KeyType>,
    /// `Some` for a map.
    pub data: Option<MapData>,
    pub flags: SetFlags,
    /// Default element timeout in seconds.
    pub timeout: Option<u32>,
    pub comment: Option<String>,
    /// By key, so sets compare and diff in order and the agent's kept IR takes a change
    /// in O(log n) (a 100,000-element vector moved its tail for every change).
    pub elements: Elements,
}

impl Set {
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }

    /// The set without its elements. Field by field: `..self.clone()` would copy every
    /// element first (100,000+ at 10,000 Services).
    pub fn declaration(&self) -> Set {
        Set {
            name: self.name.clone(),
            key: self.key.clone(),
            data: self.data.clone(),
            flags: self.flags,
            timeout: self.timeout,
            comment: self.comment.clone(),
            elements: Elements::new(),
        }
    }

    /// The elements as `Element`s, in key order.
    pub fn element_list(&self) -> Vec<Element> {
        (self.elements.iter())
            .map(|(key, data)| Element {
                key: key.clone(),
                data: data.clone(),
            })
            .collect()
    }
}

/// A set's elements: key to data (`None` for a plain set).
pub type Elements = std::collections::BTreeMap<Vec<Value>, Option<ElementData>>;

/// A constant value inside a set element or a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Addr(IpAddr),
    Proto(Proto),
    Port(u16),
    Slot(u32),
}

/// As nft prints a value: an address, a protocol name, a port or slot number.
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Addr(a) => write!(f, "{a}"),
            Value::Proto(p) => f.write_str(p.name()),
            Value::Port(p) => write!(f, "{p}"),
            Value::Slot(n) => write!(f, "{n}"),
        }
    }
}

/// Writes a key or data concatenation as nft prints it: `10.0.0.1 . tcp . 80`.
pub fn write_concat(out: &mut impl std::fmt::Write, vs: &[Value]) -> std::fmt::Result {
    for (i, v) in vs.iter().enumerate() {
        if i > 0 {
            out.write_str(" . ")?;
        }
        write!(out, "{v}")?;
    }
    Ok(())
}

/// [`write_concat`] into a new string.
pub fn concat_text(vs: &[Value]) -> String {
    let mut out = String::new();
    let _ = write_concat(&mut out, vs);
    out
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Vec<Value>,
    pub data: Option<ElementData>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElementData {
    Verdict(Verdict),
    Values(Values),
}

/// The values of a map element's data. Endpoint maps hold `addr . port` in 110,000+
/// elements at 10,000 Services, so up to two values are kept inline (a vector allocation
/// each cost 6 MB); longer data goes to the heap. Compares, orders and hashes as the slice.
#[derive(Clone)]
pub enum Values {
    Inline { values: [Value; 2], len: u8 },
    Heap(Box<[Value]>),
}

impl Values {
    pub fn as_slice(&self) -> &[Value] {
        match self {
            Values::Inline { values, len } => &values[..usize::from(*len)],
            Values::Heap(v) => v,
        }
    }
}

impl std::ops::Deref for Values {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        self.as_slice()
    }
}

impl From<Vec<Value>> for Values {
    fn from(v: Vec<Value>) -> Values {
        let pad = Value::Port(0);
        match v.as_slice() {
            [] => Values::Inline {
                values: [pad; 2],
                len: 0,
            },
            [a] => Values::Inline {
                values: [*a, pad],
                len: 1,
            },
            [a, b] => Values::Inline {
                values: [*a, *b],
                len: 2,
            },
            _ => Values::Heap(v.into_boxed_slice()),
        }
    }
}

impl PartialEq for Values {
    fn eq(&self, other: &Values) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Values {}

impl PartialOrd for Values {
    fn partial_cmp(&self, other: &Values) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Values {
    fn cmp(&self, other: &Values) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::hash::Hash for Values {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_slice().hash(h)
    }
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `Some` for a base chain attached to a netfilter hook (policy is always accept).
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn regular(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
            comment: None,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Matches and statements, in evaluation order.
    pub exprs: Vec<Expr>,
    pub verdict: Option<Verdict>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(exprs: Vec<Expr>, verdict: Option<Verdict>) -> Rule {
        Rule {
            exprs,
            verdict,
            comment: None,
        }
    }
    pub fn with_comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
}

/// A packet field a rule can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `ip saddr` / `ip6 saddr`
    Saddr,
    /// `ip daddr` / `ip6 daddr`
    Daddr,
    /// `meta l4proto`
    L4Proto,
    /// `th dport`
    Dport,
    /// `numgen random mod N`: a random number below N, the endpoint slot in a key.
    Random(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Neq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FibAddr {
    Saddr,
    Daddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `ip saddr 10.0.0.0/8`, `ip daddr != 127.0.0.0/8`: an address field against a prefix
    /// (a full-length prefix prints as a plain address).
    AddrCmp {
        field: Field,
        op: CmpOp,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// `iifname "cni0"`, `iifname != "veth*"`: the input interface's name, whole or (with
    /// `prefix`) its start, as nft's `*` wildcard.
    Iifname {
        op: CmpOp,
        name: String,
        prefix: bool,
    },
    /// `meta l4proto tcp`
    L4Proto(Proto),
    /// `ip daddr @cluster-ips`, `ip saddr . ip daddr . meta l4proto . th dport @hairpin`
    Lookup { key: Vec<Field>, set: String },
    /// `ct state new`
    CtStateNew,
    /// `ct status dnat`
    CtStatusDnat,
    /// `fib saddr type local`
    FibLocal(FibAddr),
    /// `numgen random mod N V`: true with probability 1/N for V < N.
    Numgen { modulus: u32, value: u32 },
    /// `meta mark & M != 0`
    MarkSet(u32),
    /// `meta mark set meta mark | M`
    MarkOr(u32),
    /// `meta mark set meta mark ^ M`
    MarkXor(u32),
    /// `counter`: counts the packets (and bytes) that reach it. The IR holds no counts:
    /// render prints `counter packets 0 bytes 0`, and comparisons with `nft list` zero the
    /// live counts (`nft::normalize`).
    Counter,
    /// `update @set { key }`: add the packet's key to a dynamic set, or refresh the timeout
    /// of the element already there (the set's default timeout): session affinity
    /// remembers a client in its endpoint's set (see rules/README.md).
    Update { set: String, key: Vec<Field> },
}

/// How a rule ends. Statements that end evaluation (NAT, reject) are verdicts here because
/// nothing may follow them in a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// `reject` (ICMP port unreachable / TCP reset as the kernel chooses).
    Reject,
    /// `<key> vmap @map`
    Vmap {
        key: Vec<Field>,
        map: String,
    },
    /// `meta l4proto P dnat to addr:port`
    Dnat {
        proto: Proto,
        addr: IpAddr,
        port: u16,
    },
    /// `dnat ip to <key> map @map`. With a protocol, the rule matches it first (nft lists
    /// that as `tcp dport` in the key); without one the key's `th dport` is enough.
    DnatMap {
        proto: Option<Proto>,
        key: Vec<Field>,
        map: String,
    },
    /// `masquerade fully-random`
    Masquerade,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_behave_as_their_slice_inline_or_not() {
        let v = |xs: &[u16]| -> Values {
            xs.iter()
                .map(|p| Value::Port(*p))
                .collect::<Vec<_>>()
                .into()
        };
        assert!(matches!(v(&[1, 2]), Values::Inline { len: 2, .. }));
        assert!(matches!(v(&[1, 2, 3]), Values::Heap(_)));
        assert_eq!(v(&[]).len(), 0);
        assert_eq!(&*v(&[7]), &[Value::Port(7)]);
        assert_eq!(v(&[1, 2]), v(&[1, 2]));
        assert_ne!(v(&[1]), v(&[1, 0]), "padding is not a value");
        assert!(v(&[1, 2]) < v(&[1, 2, 0]) && v(&[1, 2, 0]) < v(&[1, 3]));
        let hash = |x: &Values| {
            use std::hash::{BuildHasher, RandomState};
            let s = RandomState::new();
            (s.hash_one(x), s.hash_one(x.as_slice()))
        };
        let (a, b) = hash(&v(&[4, 5]));
        assert_eq!(a, b);
    }
}
