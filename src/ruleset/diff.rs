//! From IRs to transactions: `full` replaces our tables wholesale in one transaction;
//! `diff` computes the smallest transaction from the previous desired IR to the new one
//! without reading the kernel (upstream lists the whole table every sync, which alone took
//! over a minute at 44k Services).

use std::collections::{BTreeMap, BTreeSet};

use super::ir::{Chain, Element, ElementData, Elements, Expr, Ruleset, Set, Table, Value};
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
        ops.push(Op::AddTable {
            family: t.family,
            name: t.name.clone(),
            comment: t.comment.clone(),
        });
        ops.push(Op::DeleteTable {
            family: t.family,
            name: t.name.clone(),
        });
        create_table(t, &mut ops, copy_elements);
    }
    Transaction { ops }
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
    a.family == b.family
        && a.name == b.name
        && a.comment == b.comment
        && bases(a) == bases(b)
        && a.sets.iter().all(|x| {
            b.set(&x.name)
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

    // 0. New sets (per-count endpoint maps), with their elements, before the rules that
    // look them up.
    for s in n.sets.iter().filter(|s| o.set(&s.name).is_none()) {
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
    // A rewritten or removed chain that remembered endpoints may leave affinity entries
    // pointing at an endpoint that is gone; forget them all rather than pin clients to it.
    // A rewrite that keeps every remembered endpoint (a scale-up) keeps what clients have.
    let remembered = |c: &Chain| -> BTreeSet<(std::net::IpAddr, u16)> {
        c.rules
            .iter()
            .flat_map(|r| &r.exprs)
            .filter_map(|e| match e {
                Expr::UpdateAffinity { addr, port, .. } => Some((*addr, *port)),
                _ => None,
            })
            .collect()
    };
    let affinity_touched = rewrite
        .iter()
        .filter_map(|c| old_chains.get(c.name.as_str()).map(|old| (old, c)))
        .any(|(old, new)| !remembered(old).is_subset(&remembered(new)))
        || o.chains
            .iter()
            .any(|c| !new_names.contains(c.name.as_str()) && !remembered(c).is_empty());
    if affinity_touched {
        for s in n.sets.iter().filter(|s| s.flags.dynamic) {
            ops.push(Op::FlushSet {
                family: n.family,
                table: n.name.clone(),
                set: s.name.clone(),
            });
        }
    }
    // 3. Set elements: delete what went away or changed its data, then add. A changed
    // element cannot be overwritten in place (the kernel answers EEXIST).
    for (os, ns) in o
        .sets
        .iter()
        .filter_map(|os| n.set(&os.name).map(|ns| (os, ns)))
    {
        if ns.flags.dynamic || os.elements == ns.elements {
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
    for s in o.sets.iter().filter(|s| n.set(&s.name).is_none()) {
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

    #[test]
    fn affinity_is_kept_on_scale_up_and_forgotten_when_an_endpoint_goes() {
        let affinity = |eps: &[&str]| {
            cluster(eps, 1).replace(
                "ports: [{name: p, port: 80}]}",
                "ports: [{name: p, port: 80}], sessionAffinity: ClientIP}",
            )
        };
        let two = render(&affinity(&["10.244.0.2", "10.244.0.3"]));
        let three = render(&affinity(&["10.244.0.2", "10.244.0.3", "10.244.0.4"]));
        let flushes = |tx: &Transaction| {
            tx.ops
                .iter()
                .filter(|o| matches!(o, Op::FlushSet { set, .. } if set == "affinity"))
                .count()
        };
        let up = diff(&two, &three);
        assert!(!up.is_empty());
        assert_eq!(
            flushes(&up),
            0,
            "scale-up keeps remembered clients: {up:#?}"
        );
        assert_eq!(simulate(&two, &up), three);
        let down = diff(&three, &two);
        assert_eq!(flushes(&down), 1, "a gone endpoint is forgotten: {down:#?}");
        assert_eq!(simulate(&three, &down), two);
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
