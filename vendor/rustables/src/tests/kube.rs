//! Tests for the additions of the vendored copy (maps, concatenations, numgen, fib, dynset,
//! userdata comments, batch ACK handling, tolerant decoding). See PATCHES.md.

use std::net::Ipv4Addr;

use crate::{
    Batch, MsgType, ProtocolFamily, Rule,
    data_type::{NftType, concat_bytes},
    error::QueryError,
    expr::{
        Bitwise, ConnTrackStatus, Conntrack, ConntrackKey, Dynset, DynsetOp, ExpressionRaw,
        ExpressionVariant, Fib, FibResult, ICMP_PORT_UNREACH, IcmpCode, Lookup, Masquerade,
        NF_NAT_RANGE_PERSISTENT, NF_NAT_RANGE_PROTO_RANDOM_FULLY, Nat, NatType, Numgen, NumgenType,
        Payload, RawExpression, Register, Reject, RejectType, Verdict, VerdictKind,
    },
    nlmsg::{NfNetlinkAttribute, NfNetlinkDeserializable},
    set::{Set, SetElement, SetElementList, split_set_elements},
    sys::*,
    userdata::UserData,
};

use super::{
    CHAIN_NAME, NetlinkExpr, SET_NAME, TABLE_NAME, get_test_nlmsg, get_test_rule, get_test_table,
};

/// Expected attributes of a rule in the test chain holding one expression.
fn one_expr_rule(name: &str, data: Vec<NetlinkExpr>) -> Vec<u8> {
    NetlinkExpr::List(vec![
        NetlinkExpr::Final(NFTA_RULE_TABLE, TABLE_NAME.as_bytes().to_vec()),
        NetlinkExpr::Final(NFTA_RULE_CHAIN, CHAIN_NAME.as_bytes().to_vec()),
        NetlinkExpr::Nested(
            NFTA_RULE_EXPRESSIONS,
            vec![NetlinkExpr::Nested(
                NFTA_LIST_ELEM,
                vec![
                    NetlinkExpr::Final(NFTA_EXPR_NAME, name.as_bytes().to_vec()),
                    NetlinkExpr::Nested(NFTA_EXPR_DATA, data),
                ],
            )],
        ),
    ])
    .to_raw()
}

fn serialize_rule(rule: &mut Rule) -> Vec<u8> {
    let mut buf = Vec::new();
    let (_hdr, _nfgenmsg, raw) = get_test_nlmsg(&mut buf, rule);
    raw.to_vec()
}

/// Top-level attributes (type, whole attribute bytes), sorted by type: for objects whose field
/// order differs from the attribute type order.
fn sorted_attrs(mut buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]);
        let padded = (len + 3) & !3;
        out.push((ty, buf[..padded.min(buf.len())].to_vec()));
        buf = &buf[padded.min(buf.len())..];
    }
    out.sort();
    out
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[test]
fn numgen_expr_is_valid() {
    let mut rule = get_test_rule().with_expr(Numgen::random(3).with_offset(1u32));
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "numgen",
            vec![
                NetlinkExpr::Final(NFTA_NG_DREG, be32(NFT_REG_1)),
                NetlinkExpr::Final(NFTA_NG_MODULUS, be32(3)),
                NetlinkExpr::Final(NFTA_NG_TYPE, be32(NFT_NG_RANDOM)),
                NetlinkExpr::Final(NFTA_NG_OFFSET, be32(1)),
            ]
        )
    );
    assert_eq!(
        Numgen::incremental(2).get_type(),
        Some(&NumgenType::Incremental)
    );
}

#[test]
fn fib_expr_is_valid() {
    let mut rule = get_test_rule().with_expr(Fib::daddr_type());
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "fib",
            vec![
                NetlinkExpr::Final(NFTA_FIB_DREG, be32(NFT_REG_1)),
                NetlinkExpr::Final(NFTA_FIB_RESULT, be32(NFT_FIB_RESULT_ADDRTYPE)),
                NetlinkExpr::Final(NFTA_FIB_FLAGS, be32(NFTA_FIB_F_DADDR)),
            ]
        )
    );
    assert_eq!(Fib::saddr_type().get_flags(), Some(&NFTA_FIB_F_SADDR));
    assert_eq!(
        Fib::new(FibResult::Oif, NFTA_FIB_F_DADDR).get_result(),
        Some(&FibResult::Oif)
    );
}

#[test]
fn dynset_expr_is_valid() {
    let set = Set::new(SET_NAME, &get_test_table()).unwrap();
    let id = *set.get_id().unwrap();
    let dynset = Dynset::update(&set, Register::Reg32_00)
        .unwrap()
        .with_sreg_data(Register::Reg32_04)
        .with_timeout(10_800_000u64);
    let mut rule = get_test_rule().with_expr(dynset);
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "dynset",
            vec![
                NetlinkExpr::Final(NFTA_DYNSET_SET_NAME, SET_NAME.as_bytes().to_vec()),
                NetlinkExpr::Final(NFTA_DYNSET_SET_ID, be32(id)),
                NetlinkExpr::Final(NFTA_DYNSET_OP, be32(NFT_DYNSET_OP_UPDATE)),
                NetlinkExpr::Final(NFTA_DYNSET_SREG_KEY, be32(NFT_REG32_00)),
                NetlinkExpr::Final(NFTA_DYNSET_SREG_DATA, be32(NFT_REG32_04)),
                NetlinkExpr::Final(NFTA_DYNSET_TIMEOUT, 10_800_000u64.to_be_bytes().to_vec()),
            ]
        )
    );
    assert_eq!(
        Dynset::add(&set, Register::Reg1).unwrap().get_op(),
        Some(&DynsetOp::Add)
    );
}

#[test]
fn lookup_inverted_and_vmap_are_valid() {
    let set = Set::new(SET_NAME, &get_test_table()).unwrap();
    let id = *set.get_id().unwrap();
    let mut rule = get_test_rule().with_expr(Lookup::new(&set).unwrap().inverted());
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "lookup",
            vec![
                NetlinkExpr::Final(NFTA_LOOKUP_SET, SET_NAME.as_bytes().to_vec()),
                NetlinkExpr::Final(NFTA_LOOKUP_SREG, be32(NFT_REG_1)),
                NetlinkExpr::Final(NFTA_LOOKUP_SET_ID, be32(id)),
                NetlinkExpr::Final(NFTA_LOOKUP_FLAGS, be32(NFT_LOOKUP_F_INV)),
            ]
        )
    );
    let mut rule = get_test_rule().with_expr(Lookup::new(&set).unwrap().with_verdict_dreg());
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "lookup",
            vec![
                NetlinkExpr::Final(NFTA_LOOKUP_SET, SET_NAME.as_bytes().to_vec()),
                NetlinkExpr::Final(NFTA_LOOKUP_SREG, be32(NFT_REG_1)),
                NetlinkExpr::Final(NFTA_LOOKUP_DREG, be32(NFT_REG_VERDICT)),
                NetlinkExpr::Final(NFTA_LOOKUP_SET_ID, be32(id)),
            ]
        )
    );
}

#[test]
fn ct_status_expr_is_valid() {
    let mut rule = get_test_rule().with_expr(Conntrack::new(ConntrackKey::Status));
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "ct",
            vec![
                NetlinkExpr::Final(NFTA_CT_DREG, be32(NFT_REG_1)),
                NetlinkExpr::Final(NFTA_CT_KEY, be32(NFT_CT_STATUS)),
            ]
        )
    );
    // ct status dnat: host-endian mask
    let mut rule = get_test_rule().with_expr(
        Bitwise::new(
            ConnTrackStatus::DNAT.bits().to_ne_bytes(),
            0u32.to_ne_bytes(),
        )
        .unwrap(),
    );
    let raw = serialize_rule(&mut rule);
    assert!(
        raw.windows(4)
            .any(|w| w == 0x20u32.to_ne_bytes().as_slice())
    );
}

#[test]
fn masquerade_fully_random_is_valid() {
    let mut rule = get_test_rule().with_expr(Masquerade::fully_random());
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "masq",
            vec![NetlinkExpr::Final(NFTA_MASQ_FLAGS, be32(0x10))]
        )
    );
    assert_eq!(NF_NAT_RANGE_PROTO_RANDOM_FULLY, 0x10);
}

#[test]
fn nat_with_flags_is_valid() {
    let nat = Nat::dnat(ProtocolFamily::Ipv4, Register::Reg1, Some(Register::Reg2))
        .with_flags(NF_NAT_RANGE_PERSISTENT);
    assert_eq!(
        Nat::snat(ProtocolFamily::Ipv4, Register::Reg1, None).get_nat_type(),
        Some(&NatType::SNat)
    );
    let mut rule = get_test_rule().with_expr(nat);
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "nat",
            vec![
                NetlinkExpr::Final(NFTA_NAT_TYPE, (NFT_NAT_DNAT as i32).to_be_bytes().to_vec()),
                NetlinkExpr::Final(
                    NFTA_NAT_FAMILY,
                    (libc::NFPROTO_IPV4 as i32).to_be_bytes().to_vec()
                ),
                NetlinkExpr::Final(NFTA_NAT_REG_ADDR_MIN, be32(NFT_REG_1)),
                NetlinkExpr::Final(NFTA_NAT_REG_PROTO_MIN, be32(NFT_REG_2)),
                NetlinkExpr::Final(NFTA_NAT_FLAGS, be32(NF_NAT_RANGE_PERSISTENT)),
            ]
        )
    );
}

#[test]
fn reject_icmp_port_unreachable_is_valid() {
    let mut rule = get_test_rule().with_expr(Reject::icmp(ICMP_PORT_UNREACH));
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "reject",
            vec![
                NetlinkExpr::Final(NFTA_REJECT_TYPE, be32(NFT_REJECT_ICMP_UNREACH)),
                NetlinkExpr::Final(NFTA_REJECT_ICMP_CODE, vec![3]),
            ]
        )
    );
    let icmpx = Reject::icmpx(IcmpCode::PortUnreach);
    assert_eq!(icmpx.get_type(), Some(&RejectType::IcmpxUnreach));
    assert_eq!(
        icmpx.get_icmp_code(),
        Some(&(NFT_REJECT_ICMPX_PORT_UNREACH as u8))
    );
}

#[test]
fn reg32_registers() {
    assert_eq!(Register::reg32(0), Some(Register::Reg32_00));
    assert_eq!(Register::reg32(15), Some(Register::Reg32_15));
    assert_eq!(Register::reg32(16), None);
    // ipv6 address in Reg1 (= Reg32_00..03): next field goes to Reg32_04
    assert_eq!(Register::Reg1.next_after(16), Some(Register::Reg32_04));
    assert_eq!(Register::Reg32_01.next_after(1), Some(Register::Reg32_02));
    assert_eq!(Register::Reg2.reg32_index(), Some(4));

    let payload = Payload::default()
        .with_base(NFT_PAYLOAD_TRANSPORT_HEADER)
        .with_offset(2u32)
        .with_len(2u32)
        .with_dreg(Register::Reg32_02);
    let mut rule = get_test_rule().with_expr(payload);
    assert_eq!(
        serialize_rule(&mut rule),
        one_expr_rule(
            "payload",
            vec![
                NetlinkExpr::Final(NFTA_PAYLOAD_DREG, be32(NFT_REG32_02)),
                NetlinkExpr::Final(NFTA_PAYLOAD_BASE, be32(NFT_PAYLOAD_TRANSPORT_HEADER)),
                NetlinkExpr::Final(NFTA_PAYLOAD_OFFSET, be32(2)),
                NetlinkExpr::Final(NFTA_PAYLOAD_LEN, be32(2)),
            ]
        )
    );
}

#[test]
fn concat_types_and_keys() {
    let fields = [
        NftType::IPV4_ADDR,
        NftType::INET_PROTO,
        NftType::INET_SERVICE,
    ];
    assert_eq!(NftType::concat_type(&fields), 7 << 12 | 12 << 6 | 13);
    assert_eq!(NftType::concat_len(&fields), 12);
    assert_eq!(
        NftType::concat_len(&[NftType::IPV6_ADDR, NftType::INET_SERVICE]),
        20
    );
    assert_eq!(NftType::concat_len(&[NftType::INET_SERVICE]), 2);
    assert_eq!(
        concat_bytes(&[&[10, 96, 0, 10], &[6], &80u16.to_be_bytes()]),
        vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]
    );
    assert_eq!(concat_bytes(&[&80u16.to_be_bytes()]), vec![0, 80]);
}

#[test]
fn verdict_map_set_is_valid() {
    let mut set = Set::new(SET_NAME, &get_test_table())
        .unwrap()
        .with_key(&[
            NftType::IPV4_ADDR,
            NftType::INET_PROTO,
            NftType::INET_SERVICE,
        ])
        .with_verdict_data()
        .with_comment("svc");
    assert_eq!(set.family, ProtocolFamily::Inet);
    let id = *set.get_id().unwrap();
    let mut buf = Vec::new();
    let (_hdr, _nfgenmsg, raw) = get_test_nlmsg(&mut buf, &mut set);
    assert_eq!(
        sorted_attrs(raw),
        sorted_attrs(
            &NetlinkExpr::List(vec![
                NetlinkExpr::Final(NFTA_SET_TABLE, TABLE_NAME.as_bytes().to_vec()),
                NetlinkExpr::Final(NFTA_SET_NAME, SET_NAME.as_bytes().to_vec()),
                NetlinkExpr::Final(NFTA_SET_FLAGS, be32(NFT_SET_MAP)),
                NetlinkExpr::Final(NFTA_SET_KEY_TYPE, be32(7 << 12 | 12 << 6 | 13)),
                NetlinkExpr::Final(NFTA_SET_KEY_LEN, be32(12)),
                NetlinkExpr::Final(NFTA_SET_ID, be32(id)),
                // NFTNL_UDATA_SET_COMMENT (7), length 4, "svc\0"
                NetlinkExpr::Final(NFTA_SET_USERDATA, vec![7, 4, b's', b'v', b'c', 0]),
                NetlinkExpr::Final(NFTA_SET_DATA_TYPE, be32(NFT_DATA_VERDICT)),
            ])
            .to_raw()
        )
    );
    assert_eq!(set.get_comment().as_deref(), Some("svc"));

    let value_map = Set::new("affinity", &get_test_table())
        .unwrap()
        .with_map_data(&[NftType::IPV4_ADDR, NftType::INET_SERVICE])
        .with_added_flags(NFT_SET_EVAL)
        .with_default_timeout(1000);
    assert_eq!(value_map.data_type, Some(7 << 6 | 13));
    assert_eq!(value_map.data_len, Some(8));
    assert_eq!(
        value_map.flags,
        Some(NFT_SET_MAP | NFT_SET_EVAL | NFT_SET_TIMEOUT)
    );
    // a host-endian integer key for numgen maps: KEYBYTEORDER (0), length 4, u32 1
    let numgen_map = Set::new("__map%d", &get_test_table())
        .unwrap()
        .with_host_endian_key();
    let mut expected = vec![0u8, 4];
    expected.extend_from_slice(&1u32.to_ne_bytes());
    assert_eq!(numgen_map.userdata, Some(expected));
}

#[test]
fn set_element_with_verdict_and_timeout_is_valid() {
    let set = Set::new(SET_NAME, &get_test_table()).unwrap();
    let id = *set.get_id().unwrap();
    let key = concat_bytes(&[&[10, 96, 0, 10], &[6], &80u16.to_be_bytes()]);
    let mut list = SetElementList::new(&set).with_element(
        SetElement::new(key.clone())
            .with_verdict(VerdictKind::Goto {
                chain: "svc-a".to_string(),
            })
            .with_timeout(60_000u64),
    );
    let mut buf = Vec::new();
    let (hdr, _nfgenmsg, raw) = get_test_nlmsg(&mut buf, &mut list);
    assert_eq!(
        raw,
        NetlinkExpr::List(vec![
            NetlinkExpr::Final(NFTA_SET_ELEM_LIST_TABLE, TABLE_NAME.as_bytes().to_vec()),
            NetlinkExpr::Final(NFTA_SET_ELEM_LIST_SET, SET_NAME.as_bytes().to_vec()),
            NetlinkExpr::Final(NFTA_SET_ELEM_LIST_SET_ID, be32(id)),
            NetlinkExpr::Nested(
                NFTA_SET_ELEM_LIST_ELEMENTS,
                vec![NetlinkExpr::Nested(
                    NFTA_LIST_ELEM,
                    vec![
                        NetlinkExpr::Nested(
                            NFTA_SET_ELEM_KEY,
                            vec![NetlinkExpr::Final(NFTA_DATA_VALUE, key.clone())]
                        ),
                        NetlinkExpr::Nested(
                            NFTA_SET_ELEM_DATA,
                            vec![NetlinkExpr::Nested(
                                NFTA_DATA_VERDICT,
                                vec![
                                    NetlinkExpr::Final(
                                        NFTA_VERDICT_CODE,
                                        NFT_GOTO.to_be_bytes().to_vec()
                                    ),
                                    NetlinkExpr::Final(NFTA_VERDICT_CHAIN, b"svc-a".to_vec()),
                                ]
                            )]
                        ),
                        NetlinkExpr::Final(NFTA_SET_ELEM_TIMEOUT, 60_000u64.to_be_bytes().to_vec()),
                    ]
                )]
            ),
        ])
        .to_raw()
    );

    // and it decodes back (as the kernel sends it when listing)
    let (decoded, _) = SetElementList::deserialize(&buf[..hdr.nlmsg_len as usize]).unwrap();
    let e = decoded.iter_elements().next().unwrap();
    assert_eq!(e.key_bytes(), Some(&key));
    assert_eq!(
        e.verdict(),
        Some(VerdictKind::Goto {
            chain: "svc-a".to_string()
        })
    );
    assert_eq!(e.timeout, Some(60_000));
    assert_eq!(decoded.family, ProtocolFamily::Inet);
}

#[test]
fn value_map_element_is_valid() {
    let e = SetElement::new(vec![1, 2, 3, 4])
        .with_value(concat_bytes(&[&[10, 1, 0, 2], &8080u16.to_be_bytes()]))
        .with_comment("x");
    assert_eq!(e.value_bytes(), Some(&vec![10, 1, 0, 2, 0x1f, 0x90, 0, 0]));
    assert_eq!(e.verdict(), None);
    assert_eq!(e.get_comment().as_deref(), Some("x"));
}

#[test]
fn split_set_elements_stays_under_64k() {
    let set = Set::new(SET_NAME, &get_test_table()).unwrap();
    let elements = (0..20_000u32).map(|i| {
        SetElement::new(concat_bytes(&[
            &Ipv4Addr::from(0x0a64_0000 + i).octets(),
            &[6],
            &443u16.to_be_bytes(),
        ]))
        .with_verdict(VerdictKind::Jump {
            chain: "svc-0123456789abcdef".to_string(),
        })
    });
    let lists = split_set_elements(&set, elements);
    assert!(lists.len() > 1);
    let mut total = 0;
    for l in &lists {
        let elems = l.elements.as_ref().unwrap();
        // the NFTA_SET_ELEM_LIST_ELEMENTS attribute (header + payload) must fit a u16
        assert!(4 + elems.get_size() <= u16::MAX as usize);
        assert_eq!(l.set_id, set.id);
        total += elems.iter().count();
    }
    assert_eq!(total, 20_000);
    assert!(split_set_elements(&set, Vec::new()).is_empty());
}

#[test]
fn rule_and_chain_comments() {
    let rule = get_test_rule().with_comment("endpoint 10.1.0.2:8080");
    let mut expected = vec![0u8, 23];
    expected.extend_from_slice(b"endpoint 10.1.0.2:8080\0");
    assert_eq!(rule.get_userdata(), Some(&expected));
    assert_eq!(
        rule.get_comment().as_deref(),
        Some("endpoint 10.1.0.2:8080")
    );

    let chain = super::get_test_chain().with_comment("c");
    assert_eq!(chain.get_userdata(), Some(&vec![0u8, 2, b'c', 0]));
    assert_eq!(chain.get_comment().as_deref(), Some("c"));

    // comments are truncated to what nft accepts
    let long = "é".repeat(100);
    let udata = UserData::new().with_comment(0, &long);
    assert_eq!(udata.comment(0).unwrap().len(), 128);
}

#[test]
fn undecodable_expressions_do_not_fail_the_rule() {
    // a lookup with a register this crate does not know, and an unknown expression
    let mut bad_lookup = Vec::new();
    bad_lookup.extend(
        NetlinkExpr::List(vec![
            NetlinkExpr::Final(NFTA_LOOKUP_SET, b"s".to_vec()),
            NetlinkExpr::Final(NFTA_LOOKUP_SREG, be32(99)),
        ])
        .to_raw(),
    );
    let mut rule = get_test_rule()
        .with_expr(RawExpression::default().with_name("lookup").with_data(
            ExpressionVariant::ExpressionRaw(ExpressionRaw::new(bad_lookup.clone())),
        ))
        .with_expr(
            RawExpression::default()
                .with_name("quota")
                .with_data(ExpressionVariant::ExpressionRaw(ExpressionRaw::new(vec![]))),
        )
        .with_expr(Numgen::random(2));
    let mut buf = Vec::new();
    let (hdr, _, _) = get_test_nlmsg(&mut buf, &mut rule);
    let (decoded, _) = Rule::deserialize(&buf[..hdr.nlmsg_len as usize]).unwrap();
    let exprs: Vec<_> = decoded.get_expressions().unwrap().iter().cloned().collect();
    assert_eq!(exprs.len(), 3);
    assert_eq!(exprs[0].get_name().map(String::as_str), Some("lookup"));
    assert_eq!(
        exprs[0].get_data(),
        Some(&ExpressionVariant::ExpressionRaw(ExpressionRaw::new(
            bad_lookup
        )))
    );
    assert_eq!(exprs[1].get_name().map(String::as_str), Some("quota"));
    assert_eq!(
        exprs[2].get_data(),
        Some(&ExpressionVariant::Numgen(Numgen::random(2)))
    );
}

#[test]
fn verdict_kind_round_trip() {
    for k in [
        VerdictKind::Drop,
        VerdictKind::Accept,
        VerdictKind::Return,
        VerdictKind::Jump {
            chain: "a".to_string(),
        },
        VerdictKind::Goto {
            chain: "b".to_string(),
        },
    ] {
        assert_eq!(Verdict::from(k.clone()).kind(), Some(k));
    }
}

#[test]
fn batch_requests_only_the_last_ack() {
    let mut batch = Batch::new();
    assert!(batch.is_empty());
    let seqs: Vec<u32> = (0..3)
        .map(|_| batch.add(&get_test_table(), MsgType::Add))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(batch.len(), 3);
    let mut buf = batch.finalize();
    crate::batch::keep_only_last_ack(&mut buf);
    let mut flags = Vec::new();
    let mut o = 0;
    while o < buf.len() {
        let len = u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap()) as usize;
        flags.push(u16::from_ne_bytes([buf[o + 6], buf[o + 7]]) & NLM_F_ACK as u16 != 0);
        o += (len + 3) & !3;
    }
    // begin (untouched), 3 messages, end
    assert_eq!(flags, vec![true, false, false, true, false]);
}

#[test]
fn kernel_error_reports_seq_and_errno() {
    let mut err: nlmsgerr = unsafe { std::mem::zeroed() };
    err.error = libc::ENOENT;
    err.msg.nlmsg_seq = 42;
    let e = QueryError::NetlinkError(err);
    assert_eq!(e.kernel_error(), Some((42, nix::errno::Errno::ENOENT)));
    let text = e.to_string();
    assert!(text.contains("seq 42"), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
}
