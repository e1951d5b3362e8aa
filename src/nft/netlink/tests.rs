//! Kernel tests of the netlink layer, each in a network namespace it creates.

use std::net::Ipv4Addr;
use std::path::Path;

use std::net::IpAddr;
use std::time::Instant;

use super::*;
use crate::nft::testns::{in_netns, list_table};
use crate::ruleset::diff;
use crate::ruleset::ir::{Chain, Proto, Rule, SetFlags, Table};
use crate::ruleset::ir::{Element, ElementData, Expr, MapData, Ruleset, Value, Verdict};
use crate::ruleset::tx::{Op, Transaction};

/// testdata/demo as `render --hostname-override=node-a --cluster-cidr=10.244.0.0/16` gives it.
fn demo() -> Ruleset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo/cluster.yaml");
    let text = std::fs::read_to_string(&dir).unwrap();
    let objects = crate::ruleset::render::read_sources([("demo", text.as_str())], &mut Vec::new())
        .expect("demo reads");
    let opts = crate::model::Options {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    crate::ruleset::render::ruleset(&objects, &opts).0
}

#[test]
fn a_kernel_error_names_the_failing_rule_and_changes_nothing() {
    let rs = demo();
    let t = &rs.tables[0];
    let decls = SetDecls::from_ruleset(&rs);
    in_netns(|ns| {
        apply(&diff::full(&rs), &decls).expect("initial apply");
        let before = list_table(ns, t);
        let bad_rule = Rule::new(
            vec![Expr::L4Proto(Proto::Tcp)],
            Some(Verdict::Jump("missing-chain".into())),
        );
        let tx = Transaction {
            ops: vec![
                Op::FlushChain {
                    family: t.family,
                    table: t.name.clone(),
                    chain: "services".into(),
                },
                Op::AddChain {
                    family: t.family,
                    table: t.name.clone(),
                    chain: Chain::regular("would-be-new"),
                },
                Op::AddRule {
                    family: t.family,
                    table: t.name.clone(),
                    chain: "services".into(),
                    rule: bad_rule,
                },
                Op::DeleteTable {
                    family: t.family,
                    name: t.name.clone(),
                },
            ],
        };
        match apply(&tx, &decls) {
            Err(NetlinkError::Kernel { seq, errno, object }) => {
                assert_eq!(seq, 3);
                assert_eq!(errno, 2, "ENOENT");
                assert!(
                    object.contains("services") && object.contains("jump missing-chain"),
                    "{object}"
                );
                let e = NetlinkError::Kernel { seq, errno, object };
                eprintln!("{e}");
            }
            other => panic!("expected a kernel error, got {other:?}"),
        }
        assert_eq!(
            list_table(ns, t),
            before,
            "the failed batch changed the table"
        );
        assert_eq!(read_table(t.family, &t.name).unwrap(), Some(summarize(t)));
    });
}

#[test]
fn a_hundred_thousand_elements_in_one_batch() {
    const N: u32 = 100_000;
    let elements: Vec<Element> = (0..N)
        .map(|i| Element {
            key: vec![
                Value::Addr(IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))),
                Value::Proto(Proto::Tcp),
                Value::Port(80),
            ],
            data: Some(ElementData::Verdict(Verdict::Goto("target".into()))),
        })
        .collect();
    let table = Table {
        family: Family::V4,
        name: "kube-nftproxy".into(),
        comment: None,
        sets: vec![Set {
            name: "service-ips".into(),
            key: vec![KeyType::Addr, KeyType::Proto, KeyType::Service],
            data: Some(MapData::Verdict),
            flags: SetFlags::default(),
            timeout: None,
            comment: None,
            elements: elements.into_iter().map(|e| (e.key, e.data)).collect(),
        }],
        chains: vec![Chain::regular("target")],
    };
    let rs = Ruleset {
        tables: vec![table],
    };
    let decls = SetDecls::from_ruleset(&rs);
    let tx = diff::full(&rs);
    in_netns(|_ns| {
        let st = apply(&tx, &decls).expect("apply 100k elements");
        eprintln!(
            "100k elements: {} messages, {} bytes, build {:?}, send {:?}",
            st.messages, st.bytes, st.build, st.send
        );
        assert!(st.messages > 50, "elements were split: {}", st.messages);
        let t0 = Instant::now();
        let k = read_table(Family::V4, "kube-nftproxy").unwrap().unwrap();
        eprintln!("read back in {:?}", t0.elapsed());
        let els = k.sets[0].elements.as_ref().unwrap();
        assert_eq!(els.len(), N as usize);
        assert_eq!(k, summarize(&rs.tables[0]));
    });
}

#[test]
fn delete_tables_removes_only_ours() {
    let rs = demo();
    let decls = SetDecls::from_ruleset(&rs);
    in_netns(|ns| {
        assert!(!delete_tables(&[(Family::V4, "kube-nftproxy")]).unwrap());
        apply(&diff::full(&rs), &decls).unwrap();
        ns.nft(&["add", "table", "ip", "someone-else"]);
        let names = [(Family::V4, "kube-nftproxy"), (Family::V6, "kube-nftproxy")];
        assert!(delete_tables(&names).unwrap());
        assert_eq!(read_table(Family::V4, "kube-nftproxy").unwrap(), None);
        assert!(!delete_tables(&names).unwrap());
        assert!(ns
            .nft(&["list", "tables"])
            .contains("table ip someone-else"));
    });
}

#[test]
fn empty_transaction_sends_nothing() {
    // no kernel needed: nothing is sent
    let st = apply(&Transaction::default(), &SetDecls::new()).unwrap();
    assert_eq!(st, ApplyStats::default());
}

#[test]
fn descriptions_follow_batch_sequence_numbers() {
    let rs = demo();
    let decls = SetDecls::from_ruleset(&rs);
    let tx = diff::full(&rs);
    let (batch, descs) = to_batch(&tx, &decls).unwrap();
    assert_eq!(descs.len(), batch.len() + 1);
    let descs: Vec<String> = descs.iter().map(|d| d.text(&tx)).collect();
    assert_eq!(descs[1], "add table ip kube-nftproxy");
    assert_eq!(descs[2], "delete table ip kube-nftproxy");
    assert!(descs
        .iter()
        .any(|d| d.starts_with("add rule to chain ip kube-nftproxy services: ")));
    assert!(descs.iter().any(
        |d| d.starts_with("add elements 1..") && d.contains("map ip kube-nftproxy service-ips")
    ));
}

#[test]
fn elements_are_packed_into_messages_as_split_set_elements_packs_them() {
    let map = Set {
        name: "m".into(),
        key: vec![KeyType::Addr, KeyType::Proto, KeyType::Service],
        data: Some(MapData::Verdict),
        flags: SetFlags::default(),
        timeout: None,
        comment: None,
        elements: Default::default(),
    };
    let elements: Vec<Element> = (0..25_000u32)
        .map(|i| Element {
            key: vec![
                Value::Addr(IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))),
                Value::Proto(Proto::Tcp),
                Value::Port(80),
            ],
            data: Some(ElementData::Verdict(Verdict::Goto(format!("service-{i}")))),
        })
        .collect();
    let mut decls = SetDecls::new();
    decls.insert(Family::V4, "t", &map);
    let tx = Transaction {
        ops: vec![Op::AddElements {
            family: Family::V4,
            table: "t".into(),
            set: "m".into(),
            elements: elements.clone(),
        }],
    };
    let delete = [Op::DeleteTable {
        family: Family::V4,
        name: "old".into(),
    }];
    let (batch, descs) = to_batch_with(&tx, &delete, &decls, None).unwrap();
    assert_eq!(descs.len(), batch.len() + 1);
    // The reference packing, from every encoded element at once.
    let nl = nl_set(Family::V4, "t", &map).unwrap();
    let encoded = elements.iter().map(|e| {
        let (k, d) = encode_element(Family::V4, &map, &e.key, e.data.as_ref(), true).unwrap();
        nl_element(k, d)
    });
    let want: Vec<usize> = rustables::set::split_set_elements(&nl, encoded)
        .iter()
        .map(|l| l.iter_elements().count())
        .collect();
    assert!(want.len() > 5, "{want:?}");
    let mut got = Vec::new();
    let mut next = 0;
    for d in &descs[1..descs.len() - 1] {
        let Desc::Elements {
            op: 0,
            first,
            n,
            map: true,
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(*first, next);
        next += n;
        got.push(*n);
    }
    assert_eq!(got, want);
    assert_eq!(next, elements.len());
    let texts: Vec<String> = descs.iter().map(|d| d.text_with(&tx, &delete)).collect();
    assert_eq!(texts[0], "(batch begin)");
    assert_eq!(
        texts[2],
        format!(
            "add elements {}..{} (of 25000) to map ip t m (first: 10.96.{}.{} . tcp . 80 : goto service-{})",
            want[0] + 1,
            want[0] + want[1],
            want[0] >> 8,
            want[0] & 0xff,
            want[0]
        )
    );
    assert_eq!(texts.last().unwrap(), "delete table ip old");
}

#[test]
fn elements_of_an_undeclared_set_or_of_the_wrong_family_are_refused() {
    let el = Element {
        key: vec![Value::Addr("fd00::1".parse().unwrap())],
        data: None,
    };
    let tx = Transaction {
        ops: vec![Op::AddElements {
            family: Family::V4,
            table: "t".into(),
            set: "s".into(),
            elements: vec![el.clone()],
        }],
    };
    assert!(matches!(
        to_batch(&tx, &SetDecls::new()),
        Err(NetlinkError::UnknownSet { .. })
    ));
    let mut decls = SetDecls::new();
    decls.insert(
        Family::V4,
        "t",
        &Set {
            name: "s".into(),
            key: vec![KeyType::Addr],
            data: None,
            flags: SetFlags::default(),
            timeout: None,
            comment: None,
            elements: Default::default(),
        },
    );
    let err = to_batch(&tx, &decls)
        .err()
        .expect("v6 address in an ip set");
    assert!(matches!(err, NetlinkError::Encode { .. }), "{err}");
}

#[test]
fn prefix_masks() {
    assert_eq!(prefix_mask(4, 16), vec![255, 255, 0, 0]);
    assert_eq!(prefix_mask(4, 12), vec![255, 240, 0, 0]);
    assert_eq!(prefix_mask(4, 0), vec![0, 0, 0, 0]);
    assert_eq!(prefix_mask(16, 64)[7..9], [255, 0]);
}

/// `read_ruleset` gives back the programmed IR, and refuses (naming the chain and the
/// rule's position) rules it has no shape for, even near misses of ours: a plain
/// `masquerade` (ours is fully-random), a port match, a log statement, an inverted lookup.
#[test]
fn read_back_refuses_rule_shapes_it_does_not_write() {
    let rs = demo();
    let t = &rs.tables[0];
    // a regular chain reached from nat postrouting only, so `masquerade` is allowed there
    let n = t.chain("masquerading").expect("demo has it").rules.len();
    let decls = SetDecls::from_ruleset(&rs);
    in_netns(|ns| {
        for bad in [
            "masquerade",
            "tcp dport 80 accept",
            "log accept",
            "ip daddr != @cluster-ips drop",
            "meta mark 0x5 accept",
        ] {
            apply(&diff::full(&rs), &decls).expect("apply");
            assert_eq!(read_ruleset().expect("read back"), rs);
            ns.nft(&["add", "rule", "ip", &t.name, "masquerading", bad]);
            let err = read_ruleset().expect_err(bad).to_string();
            let want = format!(
                "cannot read back chain ip {} masquerading, rule {} of {}",
                t.name,
                n + 1,
                n + 1
            );
            assert!(err.starts_with(&want), "{bad}: {err}");
        }
    });
}
