//! From IRs to transactions: `full` replaces our tables wholesale in one transaction;
//! `diff` computes the smallest transaction from the previous desired IR to the new one
//! without reading the kernel (upstream lists the whole table every sync, which alone took
//! over a minute at 44k Services).

use std::collections::{BTreeMap, BTreeSet};

use super::ir::{Chain, Element, ElementData, Elements, Family, Ruleset, Set, Table, Value};
use super::tx::{Op, Transaction};

/// Replaces every table of `rs` atomically: create-if-missing, delete, recreate. There is
/// no moment in which packets find no rules, because the kernel commits it as one.
pub fn full(rs: &Ruleset) -> Transaction {
    full_with(rs, true)
}

/// `full`, with each set's elements as a [`Op::FillSet`] that the netlink layer reads from
/// `rs` itself: the agent's full sync, which would otherwise copy every element.
pub fn full_by_reference(rs: &Ruleset) -> Transaction {
    full_with(rs, false)
}

fn full_with(rs: &Ruleset, copy_elements: bool) -> Transaction {
    // Sized up front: at 10,000 Services this is 100,000+ operations, and a vector grown
    // by doubling would hold up to twice that while the first sync is sent.
    let count: usize = rs
        .tables
        .iter()
        .map(|t| {
            3 + t.chains.len()
                + t.sets.len()
                + t.sets.iter().filter(|s| !s.elements.is_empty()).count()
                + t.chains.iter().map(|c| c.rules.len()).sum::<usize>()
        })
        .sum();
    let mut ops = Vec::with_capacity(count);
    for t in &rs.tables {
        replace_table(t, &mut ops, copy_elements);
    }
    Transaction { ops }
}

/// `t` created afresh: added (so the delete cannot fail), deleted with all it holds, and
/// built again, in one transaction.
fn replace_table(t: &Table, ops: &mut Vec<Op>, copy_elements: bool) {
    ops.push(Op::AddTable {
        family: t.family,
        name: t.name.clone(),
        comment: t.comment.clone(),
    });
    ops.push(Op::DeleteTable {
        family: t.family,
        name: t.name.clone(),
    });
    create_table(t, ops, copy_elements);
}

/// What one of our tables holds in the kernel, by name: the input of [`full_keeping`],
/// read by the caller (the ruleset layer does not read the kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    /// Every chain, base chains included.
    pub chains: BTreeSet<String>,
    /// Every set and map, with whether it is declared exactly as the table being
    /// programmed declares a set of that name (`false` for one the table does not want).
    pub sets: BTreeMap<String, bool>,
}

/// A full sync that keeps what the datapath learned: like [`full_by_reference`], except
/// that a table the kernel already holds (`present`, found by family and name; the
/// caller passes `None` when its base chains or comment differ, and that table is
/// recreated) is rewritten in place: every chain is flushed and refilled, every
/// non-dynamic set flushed and refilled, what is no longer wanted deleted, and the
/// dynamic sets declared as wanted (session affinity) left alone with their elements. One
/// transaction, so the kernel never sees a half-programmed table.
pub fn full_keeping(rs: &Ruleset, present: &[(Family, String, Option<Present>)]) -> Transaction {
    full_keeping_with(rs, present, false)
}

/// [`full_keeping`], with every set's elements copied into the transaction (for callers
/// that apply it without the ruleset at hand, as `apply` does).
pub fn full_keeping_with(
    rs: &Ruleset,
    present: &[(Family, String, Option<Present>)],
    copy_elements: bool,
) -> Transaction {
    let mut ops = Vec::new();
    for t in &rs.tables {
        let found = present
            .iter()
            .find(|(f, name, _)| *f == t.family && *name == t.name)
            .and_then(|(_, _, p)| p.as_ref());
        match found {
            Some(p) => rewrite_table(t, p, &mut ops, copy_elements),
            None => replace_table(t, &mut ops, copy_elements),
        }
    }
    Transaction { ops }
}

fn rewrite_table(t: &Table, p: &Present, ops: &mut Vec<Op>, copy_elements: bool) {
    let (family, table) = (t.family, &t.name);
    // 1. Empty every chain: no rule refers to a chain or set any more.
    for c in &p.chains {
        ops.push(Op::FlushChain {
            family,
            table: table.clone(),
            chain: c.clone(),
        });
    }
    // 2. Chains the kernel does not have yet, before map elements jump to them.
    for c in t.chains.iter().filter(|c| !p.chains.contains(&c.name)) {
        ops.push(add_chain(t, c));
    }
    // 3. Sets: unwanted or differently declared ones go (nothing refers to them now);
    // wanted ones are refilled, except dynamic ones declared as wanted, kept as they are.
    for (name, _) in p
        .sets
        .iter()
        .filter(|(name, same)| !**same || t.set(name).is_none())
    {
        ops.push(Op::DeleteSet {
            family,
            table: table.clone(),
            set: name.clone(),
        });
    }
    for s in &t.sets {
        match p.sets.get(&s.name) {
            Some(true) if s.flags.dynamic => continue,
            Some(true) => ops.push(Op::FlushSet {
                family,
                table: table.clone(),
                set: s.name.clone(),
            }),
            _ => ops.push(Op::AddSet {
                family,
                table: table.clone(),
                set: declaration(s),
            }),
        }
        match (s.elements.is_empty(), copy_elements) {
            (true, _) => {}
            (false, true) => ops.push(Op::AddElements {
                family,
                table: table.clone(),
                set: s.name.clone(),
                elements: s.element_list(),
            }),
            (false, false) => ops.push(Op::FillSet {
                family,
                table: table.clone(),
                set: s.name.clone(),
            }),
        }
    }
    // 4. Rules, which may look up any set and jump to any chain.
    for c in &t.chains {
        add_rules(t, c, ops);
    }
    // 5. Chains no longer wanted: empty since step 1, and no map element refers to them.
    for c in p.chains.iter().filter(|c| t.chain(c).is_none()) {
        ops.push(Op::DeleteChain {
            family,
            table: table.clone(),
            chain: c.clone(),
        });
    }
}

fn create_table(t: &Table, ops: &mut Vec<Op>, copy_elements: bool) {
    ops.push(Op::AddTable {
        family: t.family,
        name: t.name.clone(),
        comment: t.comment.clone(),
    });
    // Chains first: rules and map elements may refer to any of them.
    for c in &t.chains {
        ops.push(add_chain(t, c));
    }
    for s in &t.sets {
        ops.push(Op::AddSet {
            family: t.family,
            table: t.name.clone(),
            set: declaration(s),
        });
        match (s.elements.is_empty(), copy_elements) {
            (true, _) => {}
            (false, true) => ops.push(Op::AddElements {
                family: t.family,
                table: t.name.clone(),
                set: s.name.clone(),
                elements: s.element_list(),
            }),
            (false, false) => ops.push(Op::FillSet {
                family: t.family,
                table: t.name.clone(),
                set: s.name.clone(),
            }),
        }
    }
    for c in &t.chains {
        add_rules(t, c, ops);
    }
}

fn declaration(s: &Set) -> Set {
    s.declaration()
}

fn add_chain(t: &Table, c: &Chain) -> Op {
    Op::AddChain {
        family: t.family,
        table: t.name.clone(),
        chain: Chain {
            rules: Vec::new(),
            ..c.clone()
        },
    }
}

fn add_rules(t: &Table, c: &Chain, ops: &mut Vec<Op>) {
    for r in &c.rules {
        ops.push(Op::AddRule {
            family: t.family,
            table: t.name.clone(),
            chain: c.name.clone(),
            rule: r.clone(),
        });
    }
}

/// Whether two tables have the same skeleton: the same base chains and set declarations.
/// Only then can a partial transaction get from one to the other.
fn same_skeleton(a: &Table, b: &Table) -> bool {
    let bases = |t: &Table| -> Vec<(String, Option<String>)> {
        t.chains
            .iter()
            .filter(|c| c.base.is_some())
            .map(|c| (c.name.clone(), Some(format!("{:?}{:?}", c.base, c.comment))))
            .collect()
    };
    // Sets of the same name must be declared alike; sets in one table only (the per-count
    // endpoint maps) are added or deleted by the partial transaction.
    let b_sets: BTreeMap<&str, &Set> = b.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    a.family == b.family
        && a.name == b.name
        && a.comment == b.comment
        && bases(a) == bases(b)
        && a.sets.iter().all(|x| {
            b_sets
                .get(x.name.as_str())
                .is_none_or(|y| declaration(x) == declaration(y))
        })
}

/// The transaction from `old` (what the kernel holds, as we last programmed it) to `new`.
/// Falls back to `full` when the tables' skeletons differ.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Transaction {
    let same_tables = old.tables.len() == new.tables.len()
        && old
            .tables
            .iter()
            .zip(&new.tables)
            .all(|(a, b)| same_skeleton(a, b));
    if !same_tables {
        return full(new);
    }
    let mut tx = Transaction::default();
    for (o, n) in old.tables.iter().zip(&new.tables) {
        diff_table(o, n, &mut tx.ops);
    }
    tx
}

/// Both maps iterate in key order, so one merge walk finds what to delete (gone, or data
/// changed) and what to add (new, or data changed).
fn element_changes(old: &Elements, new: &Elements) -> (Vec<Element>, Vec<Element>) {
    use std::cmp::Ordering;
    let el = |(key, data): (&Vec<Value>, &Option<ElementData>)| Element {
        key: key.clone(),
        data: data.clone(),
    };
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match x.0.cmp(y.0) {
                Ordering::Less => removed.extend(a.next().map(el)),
                Ordering::Greater => added.extend(b.next().map(el)),
                Ordering::Equal => {
                    let (x, y) = (a.next(), b.next());
                    if let (Some(x), Some(y)) = (x, y) {
                        if x.1 != y.1 {
                            removed.push(el(x));
                            added.push(el(y));
                        }
                    }
                }
            },
            (Some(_), None) => removed.extend(a.next().map(el)),
            (None, Some(_)) => added.extend(b.next().map(el)),
            (None, None) => break,
        }
    }
    (removed, added)
}

fn diff_table(o: &Table, n: &Table, ops: &mut Vec<Op>) {
    let old_chains: BTreeMap<&str, &Chain> =
        o.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_names: BTreeSet<&str> = n.chains.iter().map(|c| c.name.as_str()).collect();
    // Sets by name: `Table::set` is a linear search, and a table has thousands of sets
    // when session affinity has one per endpoint (a partial sync spent most of its 37 ms
    // in those searches at the realistic 10,000-Service mix).
    let old_sets: BTreeMap<&str, &Set> = o.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_sets: BTreeMap<&str, &Set> = n.sets.iter().map(|s| (s.name.as_str(), s)).collect();

    // 0. New sets (per-count endpoint maps), with their elements, before the rules that
    // look them up.
    for s in n
        .sets
        .iter()
        .filter(|s| !old_sets.contains_key(s.name.as_str()))
    {
        ops.push(Op::AddSet {
            family: n.family,
            table: n.name.clone(),
            set: declaration(s),
        });
        if !s.elements.is_empty() {
            ops.push(Op::AddElements {
                family: n.family,
                table: n.name.clone(),
                set: s.name.clone(),
                elements: s.element_list(),
            });
        }
    }
    // 1. New chains exist before anything refers to them.
    let mut rewrite = Vec::new();
    for c in &n.chains {
        match old_chains.get(c.name.as_str()) {
            None => {
                ops.push(add_chain(n, c));
                rewrite.push(c);
            }
            // Regular chains' comments are fixed by the layout, so only rules can change.
            Some(old) if old.rules != c.rules => rewrite.push(c),
            Some(_) => {}
        }
    }
    // 2. Rewrite changed chains (flush + re-add) and fill new ones.
    for c in &rewrite {
        if old_chains.contains_key(c.name.as_str()) {
            ops.push(Op::FlushChain {
                family: n.family,
                table: n.name.clone(),
                chain: c.name.clone(),
            });
        }
        add_rules(n, c, ops);
    }
    // 3. Set elements: delete what went away or changed its data, then add. A changed
    // element cannot be overwritten in place (the kernel answers EEXIST).
    for (os, ns) in o
        .sets
        .iter()
        .filter_map(|os| new_sets.get(os.name.as_str()).map(|ns| (os, *ns)))
    {
        if ns.flags.dynamic || os.elements == ns.elements {
            // A set of a gone endpoint is deleted below (step 5), so only that
            // endpoint's clients are forgotten; the other endpoints' sets stay as they are.
            continue; // dynamic sets are filled by the datapath
        }
        let (removed, added) = element_changes(&os.elements, &ns.elements);
        if !removed.is_empty() {
            ops.push(Op::DeleteElements {
                family: n.family,
                table: n.name.clone(),
                set: ns.name.clone(),
                elements: removed,
            });
        }
        if !added.is_empty() {
            ops.push(Op::AddElements {
                family: n.family,
                table: n.name.clone(),
                set: ns.name.clone(),
                elements: added,
            });
        }
    }
    // 4. Chains nobody needs any more: empty them all first, so chains that jumped to each
    // other release their references, then delete them.
    let gone: Vec<&str> = o
        .chains
        .iter()
        .map(|c| c.name.as_str())
        .filter(|name| !new_names.contains(name))
        .collect();
    for name in &gone {
        if old_chains.get(name).is_some_and(|c| !c.rules.is_empty()) {
            ops.push(Op::FlushChain {
                family: n.family,
                table: n.name.clone(),
                chain: name.to_string(),
            });
        }
    }
    for name in gone {
        ops.push(Op::DeleteChain {
            family: n.family,
            table: n.name.clone(),
            chain: name.to_string(),
        });
    }
    // 5. Sets nobody looks up any more (their chains are gone).
    for s in o
        .sets
        .iter()
        .filter(|s| !new_sets.contains_key(s.name.as_str()))
    {
        ops.push(Op::DeleteSet {
            family: n.family,
            table: n.name.clone(),
            set: s.name.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::options::Options;
    use crate::objects::input::ClusterObjects;

    fn render(yaml: &str) -> Ruleset {
        let mut o = ClusterObjects::default();
        o.add_text("t", yaml, &mut vec![]).unwrap();
        o.sort();
        let opts = Options {
            hostname: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Options::default()
        };
        crate::ruleset::render::ruleset(&o, &opts).0
    }

    fn cluster(endpoints: &[&str], services: usize) -> String {
        let mut s = String::new();
        for i in 0..services {
            s.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec: {{clusterIP: 10.96.0.{}, ports: [{{name: p, port: 80}}]}}\n",
                i + 1
            ));
            let eps: Vec<String> = endpoints
                .iter()
                .map(|e| format!("{{addresses: [\"{e}\"]}}"))
                .collect();
            s.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-x, namespace: ns, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: p, port: 8080}}]\n",
                eps.join(", ")
            ));
        }
        s
    }

    /// Applies a transaction to an IR the way the kernel would, so diffs can be checked
    /// without a kernel.
    fn simulate(start: &Ruleset, tx: &Transaction) -> Ruleset {
        let mut rs = start.clone();
        crate::ruleset::tx::replay(&mut rs, tx).unwrap();
        rs
    }

    #[test]
    fn full_from_nothing_builds_the_ruleset() {
        let rs = render(&cluster(&["10.244.0.2", "10.244.1.3"], 3));
        let got = simulate(&Ruleset::default(), &full(&rs));
        assert_eq!(got, rs);
    }

    #[test]
    fn one_endpoint_change_touches_one_map_element_only() {
        let a = render(&cluster(&["10.244.0.2", "10.244.1.3"], 50));
        let mut yaml = cluster(&["10.244.0.2", "10.244.1.3"], 50);
        yaml = yaml.replacen("[\"10.244.1.3\"]", "[\"10.244.1.9\"]", 1);
        let b = render(&yaml);
        let tx = diff(&a, &b);
        let one = |o: &Op| match o {
            Op::DeleteElements { set, elements, .. } | Op::AddElements { set, elements, .. } => {
                set.starts_with("service-endpoints-") && elements.len() == 1
            }
            _ => false,
        };
        assert!(tx.ops.len() == 2 && tx.ops.iter().all(one), "{tx:#?}");
        assert_eq!(simulate(&a, &tx), b);
    }

    #[test]
    fn removing_and_adding_services_round_trips() {
        let a = render(&cluster(&["10.244.0.2"], 5));
        let b = render(&cluster(&["10.244.0.2", "10.244.0.3"], 3));
        let c = render(&cluster(&[], 4));
        for (x, y) in [(&a, &b), (&b, &c), (&c, &a), (&a, &a)] {
            let tx = diff(x, y);
            assert_eq!(&simulate(x, &tx), y);
        }
        assert!(diff(&a, &a).is_empty());
    }

    fn affinity(eps: &[&str], services: usize) -> String {
        cluster(eps, services).replace(
            "ports: [{name: p, port: 80}]}",
            "ports: [{name: p, port: 80}], sessionAffinity: ClientIP}",
        )
    }

    fn affinity_sets(rs: &Ruleset) -> BTreeSet<String> {
        (rs.tables[0].sets.iter())
            .filter(|s| s.flags.dynamic)
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn affinity_sets_are_per_endpoint_and_only_a_gone_endpoints_set_goes() {
        let two = render(&affinity(&["10.244.0.2", "10.244.0.3"], 2));
        let three = render(&affinity(&["10.244.0.2", "10.244.0.3", "10.244.0.4"], 2));
        // One set per Service and endpoint: two Services never share one.
        assert_eq!(affinity_sets(&two).len(), 4, "{:?}", affinity_sets(&two));
        assert_eq!(affinity_sets(&three).len(), 6);
        let touched = |tx: &Transaction| -> Vec<String> {
            (tx.ops.iter())
                .filter_map(|o| match o {
                    Op::DeleteSet { set, .. } | Op::FlushSet { set, .. } => Some(set.clone()),
                    Op::DeleteElements { set, .. } if set.starts_with("affinity-") => {
                        Some(set.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        let up = diff(&two, &three);
        assert!(touched(&up).is_empty(), "scale-up keeps every set: {up:#?}");
        assert_eq!(simulate(&two, &up), three);
        let down = diff(&three, &two);
        let gone: Vec<String> = affinity_sets(&three)
            .difference(&affinity_sets(&two))
            .cloned()
            .collect();
        assert_eq!(
            touched(&down),
            gone,
            "only the gone endpoint's sets: {down:#?}"
        );
        assert!(
            gone.iter().all(|s| s.contains("__10.244.0.4/8080")),
            "{gone:?}"
        );
        assert_eq!(simulate(&three, &down), two);
    }

    /// What the kernel holds after programming `rs`, as `full_keeping` sees it.
    fn present_of(rs: &Ruleset, wanted: &Ruleset) -> Vec<(Family, String, Option<Present>)> {
        (rs.tables.iter())
            .map(|t| {
                let w = wanted.tables.iter().find(|w| w.family == t.family);
                let p = Present {
                    chains: t.chains.iter().map(|c| c.name.clone()).collect(),
                    sets: (t.sets.iter())
                        .map(|s| {
                            let same = w
                                .and_then(|w| w.set(&s.name))
                                .is_some_and(|x| x.declaration() == s.declaration());
                            (s.name.clone(), same)
                        })
                        .collect(),
                };
                (t.family, t.name.clone(), Some(p))
            })
            .collect()
    }

    #[test]
    fn a_full_sync_over_our_table_keeps_dynamic_sets_and_their_clients() {
        // Plain Services beside the affinity ones, under other names and IPs.
        let plain = |eps: &[&str], n| {
            (cluster(eps, n).replace("name: s", "name: q")).replace("10.96.0.", "10.96.1.")
        };
        let old =
            render(&(affinity(&["10.244.0.2", "10.244.0.3"], 2) + &plain(&["10.244.0.9"], 3)));
        // The datapath remembered a client of every endpoint.
        let mut kernel = old.clone();
        for s in kernel.tables[0].sets.iter_mut().filter(|s| s.flags.dynamic) {
            s.elements
                .insert(vec![Value::Addr("192.0.2.7".parse().unwrap())], None);
        }
        // The new state drops one endpoint of each affinity Service and changes the plain
        // Services' endpoint count: sets, chains and maps come and go.
        let new =
            render(&(affinity(&["10.244.0.2"], 2) + &plain(&["10.244.0.9", "10.244.0.8"], 2)));
        let tx = full_keeping_with(&new, &present_of(&kernel, &new), true);
        assert!(!tx.ops.iter().any(|o| matches!(o, Op::DeleteTable { .. })));
        let got = simulate(&kernel, &tx);
        let mut want = new.clone();
        for s in want.tables[0].sets.iter_mut().filter(|s| s.flags.dynamic) {
            s.elements
                .insert(vec![Value::Addr("192.0.2.7".parse().unwrap())], None);
        }
        assert_eq!(got, want, "the new table, with the kept endpoint's clients");
        assert_eq!(affinity_sets(&got).len(), 2);
        // From nothing (or a table that is not ours to keep) it is the plain full sync.
        let fresh = full_keeping_with(&new, &[], true);
        assert_eq!(simulate(&Ruleset::default(), &fresh), new);
    }

    #[test]
    fn changed_skeleton_falls_back_to_full() {
        let a = render(&cluster(&["10.244.0.2"], 2));
        let mut b = a.clone();
        b.tables[0].chains[0].base.as_mut().unwrap().priority = -120;
        let tx = diff(&a, &b);
        assert!(matches!(tx.ops[1], Op::DeleteTable { .. }));
        assert_eq!(simulate(&a, &tx), b);
    }
}
