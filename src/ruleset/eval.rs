//! A pure evaluator of the IR: follows one new connection through the tables hook by hook,
//! in the kernel's order, and returns every way it can go with its probability.
//!
//! It interprets the IR generically (base chains by hook and priority, rules, expressions,
//! verdicts, sets and maps); it knows no chain or set name of our layout, so it keeps
//! working when the layout changes. What it cannot evaluate it refuses with an
//! [`EvalError`] naming the chain and rule, rather than guessing.
//!
//! Randomness (`numgen random mod N`) is a choice point. A map lookup whose key holds a
//! `numgen` slot enumerates the N slots: each slot that finds an element is one branch
//! with probability 1/N, the slots that miss are one branch together (they leave the
//! packet unchanged and evaluation goes on to the next rule). The evaluator runs once per
//! combination of choices (an odometer over the choice points met), so each [`Path`] is a
//! straight line of [`Step`]s.
//!
//! The model of the kernel:
//! - from a pod or an external client the packet enters at `prerouting`; after it, the
//!   routing decision sends it to `input` when its (possibly DNATed) destination is a
//!   local address, else to `forward` and `postrouting`;
//! - from the node itself it enters at `output`, then `postrouting`, then `input` when the
//!   destination is local;
//! - at each hook the base chains of every table of the packet's family run in priority
//!   order; `accept` (and a NAT statement) ends one base chain, `drop` and `reject` end
//!   the packet;
//! - NAT chains run once per connection and kind: destination NAT at `prerouting` /
//!   `output`, source NAT at `input` / `postrouting`; after the first hook of a kind the
//!   connection has its binding and later NAT chains of that kind are skipped, as the
//!   kernel's `nf_nat_inet_fn` does;
//! - `ct state new` is true (a new connection); `ct status dnat` is true once a DNAT
//!   happened; `fib ... type local` is true for the given local addresses and loopback;
//!   dynamic maps (session affinity) are empty, as for a client not seen before.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::ir::{
    BaseChain, Chain, ChainType, CmpOp, ElementData, Expr, Family, FibAddr, Field, Hook, Proto,
    Rule, Ruleset, Set, Table, Value, Verdict,
};

/// Where the packet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A pod (on this node or routed to it): enters at prerouting.
    Pod,
    /// This node's own stack: enters at output.
    Node,
    /// A client outside the cluster: enters at prerouting.
    External,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Pod => "pod",
            Origin::Node => "node",
            Origin::External => "external",
        }
    }
}

/// The first packet of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub proto: Proto,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

#[derive(Debug, Clone)]
pub struct Query {
    pub packet: Packet,
    pub origin: Origin,
    /// The node's own addresses (besides loopback): `fib ... type local` and the routing
    /// decision.
    pub local_addrs: Vec<IpAddr>,
    /// The interface the packet arrives on (`iifname`). A packet the node sends itself
    /// has none, whatever this says.
    pub in_interface: Option<String>,
}

impl Query {
    pub fn is_local(&self, a: &IpAddr) -> bool {
        a.is_loopback() || self.local_addrs.contains(a)
    }
}

/// A rule: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// 0-based position in the chain.
    pub index: usize,
    pub rule: Rule,
}

/// How a chain was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A base chain, from its hook.
    Hook,
    Jump,
    Goto,
}

/// One branch of a choice point.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceOption {
    /// e.g. `slot 0`, `slots 3..4 (no element)`, `numgen random mod 3 = 0`.
    pub label: String,
    /// Probability of this branch at this point (not cumulative).
    pub probability: f64,
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The packet reaches a netfilter hook.
    Hook(Hook),
    /// The routing decision after prerouting or output.
    Route {
        daddr: IpAddr,
        local: bool,
    },
    /// A chain is entered.
    Chain {
        family: Family,
        table: String,
        chain: String,
        base: Option<BaseChain>,
        via: Via,
    },
    /// NAT chains of this hook are skipped: the connection already has its binding.
    NatSkipped {
        chain: String,
    },
    /// A rule whose matches all held (its statements ran, its verdict applies unless it
    /// is a map lookup that misses, see `Miss`).
    Rule(RuleRef),
    /// The rule just before does not match after all (after a random choice).
    NoMatch,
    /// A map element found by the rule just before.
    Element {
        set: String,
        key: Vec<Value>,
        data: Option<ElementData>,
    },
    /// The rule just before looked a key up and found nothing: evaluation goes on.
    Miss {
        set: String,
        key: Vec<Value>,
    },
    /// A random choice; `chosen` is the branch this path took.
    Choice {
        what: String,
        options: Vec<ChoiceOption>,
        chosen: usize,
    },
    /// The packet's mark after a `meta mark set`.
    Mark(u32),
    /// `update @set { ... }`: the datapath would remember this client (in the set of the
    /// endpoint the rule picks; `data` is empty for a set).
    Remember {
        map: String,
        key: Vec<Value>,
        data: Vec<Value>,
    },
    Dnat {
        addr: IpAddr,
        port: u16,
    },
    Masquerade,
    /// A chain ends (end of its rules or `return`); for a base chain, its policy accept.
    Return {
        chain: String,
    },
    /// `accept` or a NAT statement ends this base chain.
    Accept {
        chain: String,
    },
}

/// How the connection ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// Passed every hook: delivered to `daddr:dport` (after any DNAT), on this node when
    /// `local`, else forwarded.
    Delivered {
        addr: IpAddr,
        port: u16,
        local: bool,
    },
    Rejected,
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Outcome {
    pub fate: Fate,
    /// The DNAT target, if any.
    pub dnat: Option<(IpAddr, u16)>,
    /// The rule that masqueraded the connection, if any.
    pub masquerade: Option<(String, usize)>,
    /// The rule that rejected or dropped it.
    pub by: Option<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub probability: f64,
    /// The branch taken at each choice point, in order.
    pub choices: Vec<usize>,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub paths: Vec<Path>,
}

impl Trace {
    /// Distinct outcomes with their total probability, most likely first (ties in outcome
    /// order).
    pub fn outcomes(&self) -> Vec<(Outcome, f64)> {
        let mut m: BTreeMap<Outcome, f64> = BTreeMap::new();
        for p in &self.paths {
            *m.entry(p.outcome.clone()).or_default() += p.probability;
        }
        let mut v: Vec<(Outcome, f64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// What the evaluator refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// Paths beyond this many are refused (the layout keeps them linear in the number of
/// endpoints; this only guards against a ruleset that multiplies them).
const MAX_PATHS: usize = 100_000;
const MAX_DEPTH: usize = 64;

/// Every way the connection can go through `rs`.
pub fn trace(rs: &Ruleset, q: &Query) -> Result<Trace, EvalError> {
    let mut paths = Vec::new();
    let mut choices: Vec<usize> = Vec::new();
    loop {
        let mut run = Run::new(rs, q, choices.clone());
        let outcome = run.all()?;
        paths.push(Path {
            probability: run.probability,
            choices: run.taken.clone(),
            steps: run.steps,
            outcome,
        });
        if paths.len() > MAX_PATHS {
            return Err(EvalError(format!(
                "more than {MAX_PATHS} paths; refusing to enumerate them"
            )));
        }
        // The next combination: advance the last choice point that has branches left.
        let mut next = run.taken;
        let arity = run.arity;
        loop {
            match next.pop() {
                None => return Ok(Trace { paths }),
                Some(c) if c + 1 < arity[next.len()] => {
                    next.push(c + 1);
                    break;
                }
                Some(_) => {}
            }
        }
        choices = next;
    }
}

struct Run<'a> {
    rs: &'a Ruleset,
    q: &'a Query,
    pkt: Packet,
    mark: u32,
    dnat: Option<(IpAddr, u16)>,
    masquerade: Option<(String, usize)>,
    dst_nat_done: bool,
    src_nat_done: bool,
    preset: Vec<usize>,
    taken: Vec<usize>,
    arity: Vec<usize>,
    probability: f64,
    steps: Vec<Step>,
}

/// How a base chain ended.
enum Flow {
    Continue,
    Stop(Fate, (String, usize)),
}

/// What one rule did.
enum RuleResult {
    NoMatch,
    Next,
    Verdict(Verdict),
    /// A NAT statement ran: the base chain ends (accept).
    Nat,
}

impl<'a> Run<'a> {
    fn new(rs: &'a Ruleset, q: &'a Query, preset: Vec<usize>) -> Run<'a> {
        Run {
            rs,
            q,
            pkt: q.packet,
            mark: 0,
            dnat: None,
            masquerade: None,
            dst_nat_done: false,
            src_nat_done: false,
            preset,
            taken: Vec::new(),
            arity: Vec::new(),
            probability: 1.0,
            steps: Vec::new(),
        }
    }

    fn choose(&mut self, what: String, options: Vec<ChoiceOption>) -> usize {
        if options.len() == 1 {
            return 0;
        }
        let i = self.taken.len();
        let c = self.preset.get(i).copied().unwrap_or(0);
        self.taken.push(c);
        self.arity.push(options.len());
        self.probability *= options[c].probability;
        self.steps.push(Step::Choice {
            what,
            options,
            chosen: c,
        });
        c
    }

    fn outcome(&self, fate: Fate, by: Option<(String, usize)>) -> Outcome {
        Outcome {
            fate,
            dnat: self.dnat,
            masquerade: self.masquerade.clone(),
            by,
        }
    }

    fn all(&mut self) -> Result<Outcome, EvalError> {
        let first = match self.q.origin {
            Origin::Node => vec![Hook::Output, Hook::Postrouting],
            Origin::Pod | Origin::External => vec![Hook::Prerouting],
        };
        for h in first {
            if let Flow::Stop(f, by) = self.hook(h)? {
                return Ok(self.outcome(f, Some(by)));
            }
        }
        let local = self.q.is_local(&self.pkt.daddr);
        self.steps.push(Step::Route {
            daddr: self.pkt.daddr,
            local,
        });
        let rest = match (self.q.origin, local) {
            (Origin::Node, true) => vec![Hook::Input],
            (Origin::Node, false) => vec![],
            (_, true) => vec![Hook::Input],
            (_, false) => vec![Hook::Forward, Hook::Postrouting],
        };
        for h in rest {
            if let Flow::Stop(f, by) = self.hook(h)? {
                return Ok(self.outcome(f, Some(by)));
            }
        }
        Ok(self.outcome(
            Fate::Delivered {
                addr: self.pkt.daddr,
                port: self.pkt.dport,
                local,
            },
            None,
        ))
    }

    fn hook(&mut self, hook: Hook) -> Result<Flow, EvalError> {
        let family = Family::of(&self.pkt.saddr);
        let mut chains: Vec<(&'a Table, &'a Chain, BaseChain)> = Vec::new();
        for t in self.rs.tables.iter().filter(|t| t.family == family) {
            for c in &t.chains {
                if let Some(b) = c.base.filter(|b| b.hook == hook) {
                    chains.push((t, c, b));
                }
            }
        }
        // stable: equal priorities keep table and chain order
        chains.sort_by_key(|(_, _, b)| b.priority);
        self.steps.push(Step::Hook(hook));
        let dst_hook = matches!(hook, Hook::Prerouting | Hook::Output);
        let src_hook = matches!(hook, Hook::Postrouting | Hook::Input);
        let mut flow = Flow::Continue;
        for (t, c, b) in chains {
            if b.kind == ChainType::Nat
                && ((dst_hook && self.dst_nat_done) || (src_hook && self.src_nat_done))
            {
                self.steps.push(Step::NatSkipped {
                    chain: c.name.clone(),
                });
                continue;
            }
            if let Flow::Stop(f, by) = self.base_chain(t, c, b)? {
                flow = Flow::Stop(f, by);
                break;
            }
        }
        // The connection now has its binding of this kind (a null one if no rule NATed).
        if dst_hook {
            self.dst_nat_done = true;
        }
        if src_hook {
            self.src_nat_done = true;
        }
        Ok(flow)
    }

    fn enter(&mut self, t: &Table, c: &Chain, via: Via) {
        self.steps.push(Step::Chain {
            family: t.family,
            table: t.name.clone(),
            chain: c.name.clone(),
            base: c.base,
            via,
        });
    }

    fn base_chain(&mut self, t: &'a Table, c: &'a Chain, b: BaseChain) -> Result<Flow, EvalError> {
        self.enter(t, c, Via::Hook);
        let nat = b.kind == ChainType::Nat;
        let mut stack: Vec<(&'a Chain, usize)> = vec![(c, 0)];
        loop {
            let Some(&(chain, idx)) = stack.last() else {
                return Ok(Flow::Continue);
            };
            if idx >= chain.rules.len() {
                self.steps.push(Step::Return {
                    chain: chain.name.clone(),
                });
                stack.pop();
                continue;
            }
            stack.last_mut().expect("not empty").1 += 1;
            let rule = &chain.rules[idx];
            let at = (chain.name.clone(), idx);
            match self.rule(t, chain, idx, rule, nat)? {
                RuleResult::NoMatch | RuleResult::Next => {}
                RuleResult::Nat => {
                    self.steps.push(Step::Accept {
                        chain: c.name.clone(),
                    });
                    return Ok(Flow::Continue);
                }
                RuleResult::Verdict(v) => match v {
                    Verdict::Accept => {
                        self.steps.push(Step::Accept {
                            chain: c.name.clone(),
                        });
                        return Ok(Flow::Continue);
                    }
                    Verdict::Drop => return Ok(Flow::Stop(Fate::Dropped, at)),
                    Verdict::Reject => return Ok(Flow::Stop(Fate::Rejected, at)),
                    Verdict::Return => {
                        self.steps.push(Step::Return {
                            chain: chain.name.clone(),
                        });
                        stack.pop();
                    }
                    Verdict::Jump(ref to) | Verdict::Goto(ref to) => {
                        let goto = matches!(v, Verdict::Goto(_));
                        let target = t.chain(to).ok_or_else(|| {
                            refuse(t, chain, idx, &format!("chain {to} does not exist"))
                        })?;
                        if target.base.is_some() {
                            return Err(refuse(t, chain, idx, "jump to a base chain"));
                        }
                        if stack.len() >= MAX_DEPTH {
                            return Err(refuse(t, chain, idx, "chains nest too deep (a loop?)"));
                        }
                        if goto {
                            stack.pop();
                        }
                        stack.push((target, 0));
                        self.enter(t, target, if goto { Via::Goto } else { Via::Jump });
                    }
                    #[allow(unreachable_patterns)]
                    other => {
                        return Err(refuse(
                            t,
                            chain,
                            idx,
                            &format!("verdict {other:?} from a map element"),
                        ))
                    }
                },
            }
        }
    }

    fn field(&self, f: Field) -> Result<Value, String> {
        Ok(match f {
            Field::Saddr => Value::Addr(self.pkt.saddr),
            Field::Daddr => Value::Addr(self.pkt.daddr),
            Field::L4Proto => Value::Proto(self.pkt.proto),
            Field::Dport => Value::Port(self.pkt.dport),
            Field::Random(_) => return Err("numgen outside a map key".into()),
            #[allow(unreachable_patterns)]
            other => return Err(format!("field {other:?}")),
        })
    }

    /// Looks a key up in `set`; a `numgen` component makes it a choice point. Returns the
    /// key and the element's data, or the key with `None` data and `false` on a miss.
    #[allow(clippy::type_complexity)]
    fn lookup(
        &mut self,
        set: &Set,
        key: &[Field],
    ) -> Result<(Vec<Value>, Option<Option<ElementData>>), String> {
        let randoms: Vec<usize> = (key.iter().enumerate())
            .filter(|(_, f)| matches!(f, Field::Random(_)))
            .map(|(i, _)| i)
            .collect();
        let mut base = Vec::with_capacity(key.len());
        for f in key {
            base.push(match f {
                Field::Random(_) => Value::Slot(0),
                f => self.field(*f)?,
            });
        }
        match randoms.as_slice() {
            [] => {
                let found = set.elements.get(&base).cloned();
                Ok((base, found))
            }
            [i] => {
                let Field::Random(n) = key[*i] else {
                    unreachable!()
                };
                if n == 0 {
                    return Err("numgen random mod 0".into());
                }
                let mut hits = Vec::new();
                let mut misses = Vec::new();
                for slot in 0..n {
                    let mut k = base.clone();
                    k[*i] = Value::Slot(slot);
                    match set.elements.get(&k) {
                        Some(d) => hits.push((slot, k, d.clone())),
                        None => misses.push(slot),
                    }
                }
                let p = 1.0 / f64::from(n);
                let mut options: Vec<ChoiceOption> = (hits.iter())
                    .map(|(s, _, _)| ChoiceOption {
                        label: format!("slot {s}"),
                        probability: p,
                    })
                    .collect();
                if !misses.is_empty() {
                    options.push(ChoiceOption {
                        label: format!("{} (no element)", slots_label(&misses)),
                        probability: p * misses.len() as f64,
                    });
                }
                let c = self.choose(format!("numgen random mod {n} in @{}", set.name), options);
                match hits.into_iter().nth(c) {
                    Some((_, k, d)) => Ok((k, Some(d))),
                    None => {
                        let mut k = base;
                        k[*i] = Value::Slot(misses[0]);
                        Ok((k, None))
                    }
                }
            }
            _ => Err("more than one numgen in a key".into()),
        }
    }

    fn expr(&mut self, t: &Table, e: &Expr) -> Result<bool, String> {
        Ok(match e {
            Expr::AddrCmp {
                field,
                op,
                addr,
                prefix_len,
            } => {
                let Value::Addr(a) = self.field(*field)? else {
                    return Err("address comparison on a non-address field".into());
                };
                let inside = in_prefix(&a, addr, *prefix_len);
                match op {
                    CmpOp::Eq => inside,
                    CmpOp::Neq => !inside,
                }
            }
            Expr::Iifname { op, name, prefix } => {
                let iif =
                    match (self.q.origin, &self.q.in_interface) {
                        // Locally generated: the kernel compares an empty name.
                        (Origin::Node, _) => "",
                        (_, Some(i)) => i.as_str(),
                        (_, None) => return Err(
                            "the rule matches the input interface (iifname); give the packet's \
                             interface (--in-interface)"
                                .into(),
                        ),
                    };
                let hit = if *prefix {
                    iif.starts_with(name.as_str())
                } else {
                    iif == name
                };
                match op {
                    CmpOp::Eq => hit,
                    CmpOp::Neq => !hit,
                }
            }
            Expr::L4Proto(p) => self.pkt.proto == *p,
            Expr::Lookup { key, set } => {
                let s = t.set(set).ok_or(format!("set {set} does not exist"))?;
                self.lookup(s, key)?.1.is_some()
            }
            Expr::CtStateNew => true,
            Expr::CtStatusDnat => self.dnat.is_some(),
            Expr::FibLocal(FibAddr::Saddr) => self.q.is_local(&self.pkt.saddr),
            Expr::FibLocal(FibAddr::Daddr) => self.q.is_local(&self.pkt.daddr),
            Expr::Numgen { modulus, value } => {
                if *modulus <= 1 {
                    *value == 0
                } else {
                    let p = 1.0 / f64::from(*modulus);
                    let c = self.choose(
                        format!("numgen random mod {modulus}"),
                        vec![
                            ChoiceOption {
                                label: format!("= {value}"),
                                probability: p,
                            },
                            ChoiceOption {
                                label: format!("!= {value}"),
                                probability: 1.0 - p,
                            },
                        ],
                    );
                    c == 0
                }
            }
            Expr::MarkSet(m) => self.mark & m != 0,
            // Counts, matches every packet.
            Expr::Counter => true,
            Expr::MarkOr(m) => {
                self.mark |= m;
                self.steps.push(Step::Mark(self.mark));
                true
            }
            Expr::MarkXor(m) => {
                self.mark ^= m;
                self.steps.push(Step::Mark(self.mark));
                true
            }
            Expr::Update { set, key } => {
                let key = (key.iter().map(|f| self.field(*f))).collect::<Result<Vec<_>, _>>()?;
                self.steps.push(Step::Remember {
                    map: set.clone(),
                    key,
                    data: Vec::new(),
                });
                true
            }
            #[allow(unreachable_patterns)]
            other => return Err(format!("expression {other:?}")),
        })
    }

    fn rule(
        &mut self,
        t: &Table,
        chain: &Chain,
        idx: usize,
        rule: &Rule,
        nat: bool,
    ) -> Result<RuleResult, EvalError> {
        let err = |m: String| refuse(t, chain, idx, &m);
        // Statements (mark set, update) print before the rule, so record the rule first
        // and take it back if a later match fails.
        let mark = self.steps.len();
        self.steps.push(Step::Rule(RuleRef {
            family: t.family,
            table: t.name.clone(),
            chain: chain.name.clone(),
            index: idx,
            rule: rule.clone(),
        }));
        for e in &rule.exprs {
            if !self.expr(t, e).map_err(err)? {
                // a failed match undoes nothing a statement did: statements only run
                // after the matches before them held, and no match follows a statement
                // in our IR; a choice taken stays recorded
                // (paths must share every step before a choice, so a rule that drew a
                // number stays recorded up to its choice, then `NoMatch`)
                match (self.steps[mark..].iter()).rposition(|s| matches!(s, Step::Choice { .. })) {
                    Some(i) => {
                        self.steps.truncate(mark + i + 1);
                        self.steps.push(Step::NoMatch);
                    }
                    None => self.steps.truncate(mark),
                }
                return Ok(RuleResult::NoMatch);
            }
        }
        let Some(v) = &rule.verdict else {
            return Ok(RuleResult::Next);
        };
        let proto_ok = |p: &Option<Proto>, pkt: &Packet| p.is_none_or(|p| p == pkt.proto);
        match v {
            Verdict::Vmap { key, map } => {
                let s = t
                    .set(map)
                    .ok_or_else(|| err(format!("map {map} does not exist")))?;
                let (k, found) = self.lookup(s, key).map_err(err)?;
                match found {
                    Some(Some(ElementData::Verdict(v))) => {
                        self.steps.push(Step::Element {
                            set: map.clone(),
                            key: k,
                            data: Some(ElementData::Verdict(v.clone())),
                        });
                        Ok(RuleResult::Verdict(v))
                    }
                    Some(_) => Err(err(format!("element of {map} is not a verdict"))),
                    None => {
                        self.steps.push(Step::Miss {
                            set: map.clone(),
                            key: k,
                        });
                        Ok(RuleResult::Next)
                    }
                }
            }
            Verdict::DnatMap { proto, key, map } => {
                if !nat {
                    return Err(err("dnat outside a nat chain".into()));
                }
                if !proto_ok(proto, &self.pkt) {
                    self.steps.truncate(mark);
                    return Ok(RuleResult::NoMatch);
                }
                let s = t
                    .set(map)
                    .ok_or_else(|| err(format!("map {map} does not exist")))?;
                let (k, found) = self.lookup(s, key).map_err(err)?;
                match found {
                    Some(Some(ElementData::Values(vals))) => {
                        let (addr, port) = match vals.as_slice() {
                            [Value::Addr(a), Value::Port(p)] => (*a, *p),
                            [Value::Addr(a)] => (*a, self.pkt.dport),
                            _ => return Err(err(format!("element data {vals:?} of {map}"))),
                        };
                        self.steps.push(Step::Element {
                            set: map.clone(),
                            key: k,
                            data: Some(ElementData::Values(vals)),
                        });
                        self.do_dnat(addr, port);
                        Ok(RuleResult::Nat)
                    }
                    Some(_) => Err(err(format!("element of {map} is not an address"))),
                    None => {
                        self.steps.push(Step::Miss {
                            set: map.clone(),
                            key: k,
                        });
                        Ok(RuleResult::Next)
                    }
                }
            }
            Verdict::Dnat { proto, addr, port } => {
                if !nat {
                    return Err(err("dnat outside a nat chain".into()));
                }
                if *proto != self.pkt.proto {
                    self.steps.truncate(mark);
                    return Ok(RuleResult::NoMatch);
                }
                self.do_dnat(*addr, *port);
                Ok(RuleResult::Nat)
            }
            Verdict::Masquerade => {
                if !nat {
                    return Err(err("masquerade outside a nat chain".into()));
                }
                self.masquerade = Some((chain.name.clone(), idx));
                self.steps.push(Step::Masquerade);
                Ok(RuleResult::Nat)
            }
            Verdict::Accept
            | Verdict::Drop
            | Verdict::Return
            | Verdict::Reject
            | Verdict::Jump(_)
            | Verdict::Goto(_) => Ok(RuleResult::Verdict(v.clone())),
            #[allow(unreachable_patterns)]
            other => Err(err(format!("verdict {other:?}"))),
        }
    }

    fn do_dnat(&mut self, addr: IpAddr, port: u16) {
        self.dnat = Some((addr, port));
        self.pkt.daddr = addr;
        self.pkt.dport = port;
        self.steps.push(Step::Dnat { addr, port });
    }
}

fn refuse(t: &Table, c: &Chain, idx: usize, what: &str) -> EvalError {
    EvalError(format!(
        "cannot evaluate rule {} of chain {} in table {}: {what}",
        idx + 1,
        c.name,
        t.name
    ))
}

/// `slot 3`, `slots 3..5`, `slots 1, 4`.
fn slots_label(s: &[u32]) -> String {
    if s.len() == 1 {
        return format!("slot {}", s[0]);
    }
    let contiguous = s.windows(2).all(|w| w[1] == w[0] + 1);
    if contiguous {
        format!("slots {}..{}", s[0], s[s.len() - 1])
    } else {
        let v: Vec<String> = s.iter().map(u32::to_string).collect();
        format!("slots {}", v.join(", "))
    }
}

pub fn in_prefix(a: &IpAddr, net: &IpAddr, len: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(*a) & mask == u32::from(*n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(*a) & mask == u128::from(*n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::ir::{Elements, KeyType, MapData, SetFlags, Values};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn base(name: &str, kind: ChainType, hook: Hook, priority: i32, rules: Vec<Rule>) -> Chain {
        Chain {
            base: Some(BaseChain {
                kind,
                hook,
                priority,
            }),
            rules,
            ..Chain::regular(name)
        }
    }

    /// A DNAT map keyed by `daddr . slot` with `n` endpoints for 10.0.0.1, and a chain
    /// with one lookup rule per modulus in `mods`.
    fn table(n: u32, mods: &[u32], extra: Vec<Chain>) -> Ruleset {
        let mut elements = Elements::new();
        for s in 0..n {
            elements.insert(
                vec![Value::Addr(ip("10.0.0.1")), Value::Slot(s)],
                Some(ElementData::Values(Values::from(vec![
                    Value::Addr(ip(&format!("10.1.0.{}", s + 1))),
                    Value::Port(8080),
                ]))),
            );
        }
        let eps = Set {
            name: "eps".into(),
            key: vec![KeyType::Addr, KeyType::Slot],
            data: Some(MapData::Values(vec![KeyType::Addr, KeyType::Service])),
            flags: SetFlags::default(),
            timeout: None,
            comment: None,
            elements,
        };
        let rules = (mods.iter())
            .map(|m| {
                Rule::new(
                    vec![],
                    Some(Verdict::DnatMap {
                        proto: None,
                        key: vec![Field::Daddr, Field::Random(*m)],
                        map: "eps".into(),
                    }),
                )
            })
            .collect();
        let mut chains = vec![
            base(
                "pre",
                ChainType::Nat,
                Hook::Prerouting,
                -100,
                vec![Rule::new(vec![], Some(Verdict::Jump("sel".into())))],
            ),
            Chain {
                rules,
                ..Chain::regular("sel")
            },
        ];
        chains.extend(extra);
        Ruleset {
            tables: vec![Table {
                family: Family::V4,
                name: "t".into(),
                comment: None,
                sets: vec![eps],
                chains,
            }],
        }
    }

    fn query(dst: &str) -> Query {
        Query {
            packet: Packet {
                proto: Proto::Tcp,
                saddr: ip("10.2.0.1"),
                sport: 1000,
                daddr: ip(dst),
                dport: 80,
            },
            origin: Origin::Pod,
            local_addrs: vec![ip("192.168.0.10")],
            in_interface: None,
        }
    }

    #[test]
    fn slot_misses_fall_through_and_every_endpoint_gets_an_equal_share() {
        let rs = table(2, &[5, 4, 3, 2], vec![]);
        let t = trace(&rs, &query("10.0.0.1")).unwrap();
        let o = t.outcomes();
        assert_eq!(o.len(), 2, "{o:?}");
        for (oc, p) in &o {
            assert!((p - 0.5).abs() < 1e-12, "{oc:?} {p}");
            assert!(matches!(oc.fate, Fate::Delivered { local: false, .. }));
        }
        // 2 hits per rule, one grouped miss per rule but the last: 2+2+2+2 paths
        assert_eq!(t.paths.len(), 8);
    }

    #[test]
    fn not_a_service_is_untouched_and_a_miss_leaves_the_packet_alone() {
        let rs = table(2, &[2], vec![]);
        let t = trace(&rs, &query("10.9.9.9")).unwrap();
        assert_eq!(t.paths.len(), 1);
        let (oc, p) = &t.outcomes()[0];
        assert_eq!(*p, 1.0);
        assert_eq!(oc.dnat, None);
        assert!(t.paths[0]
            .steps
            .iter()
            .any(|s| matches!(s, Step::Miss { set, .. } if set == "eps")));
    }

    #[test]
    fn filter_verdicts_end_the_packet_and_nat_runs_once_per_kind() {
        let reject = base(
            "fwd",
            ChainType::Filter,
            Hook::Forward,
            0,
            vec![Rule::new(
                vec![Expr::AddrCmp {
                    field: Field::Daddr,
                    op: CmpOp::Eq,
                    addr: ip("10.1.0.0"),
                    prefix_len: 16,
                }],
                Some(Verdict::Reject),
            )],
        );
        let rs = table(1, &[1], vec![reject]);
        let t = trace(&rs, &query("10.0.0.1")).unwrap();
        let (oc, _) = &t.outcomes()[0];
        assert_eq!(oc.fate, Fate::Rejected);
        assert_eq!(oc.by, Some(("fwd".into(), 0)));
        assert_eq!(oc.dnat, Some((ip("10.1.0.1"), 8080)));

        // a second DNAT hook for the same connection is skipped
        let out = base(
            "out",
            ChainType::Nat,
            Hook::Output,
            -100,
            vec![Rule::new(vec![], Some(Verdict::Jump("sel".into())))],
        );
        let rs = table(1, &[1], vec![out]);
        let mut q = query("10.0.0.1");
        q.origin = Origin::Node;
        let t = trace(&rs, &q).unwrap();
        assert_eq!(t.outcomes()[0].0.dnat, Some((ip("10.1.0.1"), 8080)));
        assert!(!t.paths[0]
            .steps
            .iter()
            .any(|s| matches!(s, Step::Hook(Hook::Prerouting))));
    }

    /// `detectLocalMode: InterfaceNamePrefix`: whether a packet from a pod address counts
    /// as local traffic depends on the interface it arrives on, not its address.
    #[test]
    fn iifname_rules_follow_the_input_interface() {
        use std::collections::BTreeSet;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/etp-local");
        let yaml = std::fs::read_to_string(dir.join("cluster.yaml")).unwrap();
        let objects =
            crate::ruleset::render::read_sources([("etp-local", yaml.as_str())], &mut Vec::new())
                .unwrap();
        let opts = crate::model::Options {
            hostname: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            detect_local: crate::model::LocalDetect::InterfaceNamePrefix("veth".into()),
            ..Default::default()
        };
        let (rs, _) = crate::ruleset::render::ruleset(&objects, &opts);
        let q = |dst: &str, port: u16, iif: Option<&str>| Query {
            packet: Packet {
                proto: Proto::Tcp,
                saddr: ip("10.244.0.9"),
                sport: 40000,
                daddr: ip(dst),
                dport: port,
            },
            origin: Origin::Pod,
            local_addrs: vec![ip("192.168.0.10")],
            in_interface: iif.map(String::from),
        };
        let targets = |q: &Query| -> BTreeSet<(IpAddr, bool)> {
            let t = trace(&rs, q).unwrap();
            (t.outcomes().into_iter())
                .map(|(o, _)| (o.dnat.unwrap().0, o.masquerade.is_some()))
                .collect()
        };
        let both_unmasqueraded: BTreeSet<_> =
            [(ip("10.244.0.48"), false), (ip("10.244.1.48"), false)].into();
        // From a pod's veth to the eTP=Local VIP: short-circuited to every endpoint.
        assert_eq!(
            targets(&q("203.0.113.40", 443, Some("veth1a2b"))),
            both_unmasqueraded
        );
        // The same address arriving on eth0 is external: local endpoint only.
        assert_eq!(
            targets(&q("203.0.113.40", 443, Some("eth0"))),
            [(ip("10.244.0.48"), false)].into()
        );
        // ClusterIP: masqueraded only when not from a pod interface.
        assert_eq!(
            targets(&q("10.96.0.48", 443, Some("veth0"))),
            both_unmasqueraded
        );
        assert!(targets(&q("10.96.0.48", 443, Some("ens3")))
            .iter()
            .all(|(_, masq)| *masq));
        // Without the interface, the rule cannot be evaluated: refused, not guessed.
        let e = trace(&rs, &q("10.96.0.48", 443, None)).unwrap_err();
        assert!(e.0.contains("--in-interface"), "{e}");
    }

    #[test]
    fn what_cannot_be_evaluated_is_refused_with_the_rule_named() {
        let bad_jump = Chain {
            rules: vec![Rule::new(vec![], Some(Verdict::Jump("nowhere".into())))],
            ..Chain::regular("sel")
        };
        let mut rs = table(1, &[1], vec![]);
        rs.tables[0].chains[1] = bad_jump;
        let e = trace(&rs, &query("10.0.0.1")).unwrap_err();
        assert!(e.0.contains("rule 1 of chain sel"), "{e}");
        assert!(e.0.contains("nowhere"), "{e}");

        // DNAT in a filter chain
        let mut rs = table(1, &[1], vec![]);
        rs.tables[0].chains[0].base.as_mut().unwrap().kind = ChainType::Filter;
        let e = trace(&rs, &query("10.0.0.1")).unwrap_err();
        assert!(e.0.contains("dnat outside a nat chain"), "{e}");
    }
}
