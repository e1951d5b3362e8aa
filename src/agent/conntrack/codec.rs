//! The ctnetlink wire format: request messages, and parsing the kernel's entries and
//! replies. No I/O.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::model::Family;

use super::*;

#[derive(Debug, Error)]
pub enum ConntrackError {
    #[error("opening the ctnetlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("sending a ctnetlink request: {0}")]
    Send(#[source] io::Error),
    #[error("receiving from ctnetlink: {0}")]
    Recv(#[source] io::Error),
    #[error("listing conntrack entries ({family:?}): {source}")]
    Dump {
        family: Family,
        #[source]
        source: io::Error,
    },
    #[error("malformed ctnetlink message: {0}")]
    Malformed(String),
    #[error("deleted {deleted} conntrack entries, {failed} deletions failed, first: {first}")]
    Delete {
        deleted: usize,
        failed: usize,
        #[source]
        first: io::Error,
    },
}

pub(super) const NETLINK_NETFILTER: libc::c_int = 12;
pub(super) const NFNL_SUBSYS_CTNETLINK: u16 = 1;
pub(super) const IPCTNL_MSG_CT_GET: u16 = 1;
pub(super) const IPCTNL_MSG_CT_DELETE: u16 = 2;
pub(super) const NFNETLINK_V0: u8 = 0;

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NFGENMSG_LEN: usize = 4;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
#[cfg(test)]
pub(super) const NLA_F_NESTED: u16 = 0x8000;
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;

pub(super) const CTA_TUPLE_ORIG: u16 = 1;
pub(super) const CTA_TUPLE_REPLY: u16 = 2;
pub(super) const CTA_ID: u16 = 12;
pub(super) const CTA_ZONE: u16 = 18;
pub(super) const CTA_TUPLE_IP: u16 = 1;
pub(super) const CTA_TUPLE_PROTO: u16 = 2;
pub(super) const CTA_IP_V4_SRC: u16 = 1;
pub(super) const CTA_IP_V4_DST: u16 = 2;
pub(super) const CTA_IP_V6_SRC: u16 = 3;
pub(super) const CTA_IP_V6_DST: u16 = 4;
pub(super) const CTA_PROTO_NUM: u16 = 1;
pub(super) const CTA_PROTO_SRC_PORT: u16 = 2;
pub(super) const CTA_PROTO_DST_PORT: u16 = 3;

pub(super) const RECV_BUF: usize = 64 * 1024;

pub(super) fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tuple {
    pub(super) src: Option<IpAddr>,
    pub(super) dst: Option<IpAddr>,
    pub(super) proto: Option<u8>,
    pub(super) src_port: Option<u16>,
    pub(super) dst_port: Option<u16>,
}

/// A conntrack entry as listed by the kernel, with what deleting it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) family: u8,
    pub(super) orig: Tuple,
    pub(super) reply: Tuple,
    /// The `CTA_TUPLE_ORIG` attribute as received (header included), sent back verbatim.
    pub(super) orig_raw: Vec<u8>,
    pub(super) zone: Option<u16>,
    pub(super) id: Option<u32>,
}

impl FlowFilter {
    pub(super) fn matches(&self, e: &Entry) -> bool {
        e.family == af(self.family)
            && e.orig.proto == Some(self.proto.number())
            && self.orig_dst.is_none_or(|ip| e.orig.dst == Some(ip))
            && self
                .orig_dst_port
                .is_none_or(|p| e.orig.dst_port == Some(p))
            && self.reply_src.is_none_or(|ip| e.reply.src == Some(ip))
    }
}

/// Netlink attributes in `buf`: (type without flags, payload, whole attribute).
pub(super) fn attrs(
    mut buf: &[u8],
) -> impl Iterator<Item = Result<(u16, &[u8], &[u8]), ConntrackError>> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return Some(Err(ConntrackError::Malformed(format!(
                "attribute length {len}"
            ))));
        }
        let whole = &buf[..len];
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, &whole[4..], whole)))
    })
}

pub(super) fn be16(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

pub(super) fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

pub(super) fn ip4(p: &[u8]) -> Option<IpAddr> {
    let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(b)))
}

pub(super) fn ip6(p: &[u8]) -> Option<IpAddr> {
    let b: [u8; 16] = p.get(..16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(b)))
}

pub(super) fn parse_tuple(payload: &[u8]) -> Result<Tuple, ConntrackError> {
    let mut t = Tuple::default();
    for a in attrs(payload) {
        let (ty, p, _) = a?;
        match ty {
            CTA_TUPLE_IP => {
                for a in attrs(p) {
                    let (ty, p, _) = a?;
                    match ty {
                        CTA_IP_V4_SRC => t.src = ip4(p),
                        CTA_IP_V4_DST => t.dst = ip4(p),
                        CTA_IP_V6_SRC => t.src = ip6(p),
                        CTA_IP_V6_DST => t.dst = ip6(p),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attrs(p) {
                    let (ty, p, _) = a?;
                    match ty {
                        CTA_PROTO_NUM => t.proto = p.first().copied(),
                        CTA_PROTO_SRC_PORT => t.src_port = be16(p),
                        CTA_PROTO_DST_PORT => t.dst_port = be16(p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

/// Parses the payload of a ctnetlink message (nfgenmsg + attributes).
pub(super) fn parse_entry(payload: &[u8]) -> Result<Option<Entry>, ConntrackError> {
    let Some(&family) = payload.first() else {
        return Err(ConntrackError::Malformed("short nfgenmsg".into()));
    };
    let Some(rest) = payload.get(NFGENMSG_LEN..) else {
        return Err(ConntrackError::Malformed("short nfgenmsg".into()));
    };
    let (mut orig, mut reply, mut orig_raw, mut zone, mut id) = (None, None, None, None, None);
    for a in attrs(rest) {
        let (ty, p, whole) = a?;
        match ty {
            CTA_TUPLE_ORIG => {
                orig = Some(parse_tuple(p)?);
                orig_raw = Some(whole.to_vec());
            }
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(p)?),
            CTA_ZONE => zone = be16(p),
            CTA_ID => id = be32(p),
            _ => {}
        }
    }
    Ok(match (orig, reply, orig_raw) {
        (Some(orig), Some(reply), Some(orig_raw)) => Some(Entry {
            family,
            orig,
            reply,
            orig_raw,
            zone,
            id,
        }),
        _ => None,
    })
}

pub(super) fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// A complete ctnetlink request: nlmsghdr, nfgenmsg, then `attrs` (already encoded).
pub(super) fn request(msg: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    b.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]); // res_id 0
    b.extend_from_slice(attrs);
    b
}

pub(super) fn delete_request(seq: u32, e: &Entry) -> Vec<u8> {
    let mut a = e.orig_raw.clone();
    a.resize(align4(a.len()), 0);
    if let Some(z) = e.zone {
        push_attr(&mut a, CTA_ZONE, &z.to_be_bytes());
    }
    if let Some(id) = e.id {
        push_attr(&mut a, CTA_ID, &id.to_be_bytes());
    }
    request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, e.family, &a)
}

/// Builds a tuple attribute; used by tests to fake kernel messages.
#[cfg(test)]
pub(super) fn tuple_attr(ty: u16, t: &Tuple) -> Vec<u8> {
    let mut ip = Vec::new();
    for (v4, v6, addr) in [
        (CTA_IP_V4_SRC, CTA_IP_V6_SRC, t.src),
        (CTA_IP_V4_DST, CTA_IP_V6_DST, t.dst),
    ] {
        match addr {
            Some(IpAddr::V4(a)) => push_attr(&mut ip, v4, &a.octets()),
            Some(IpAddr::V6(a)) => push_attr(&mut ip, v6, &a.octets()),
            None => {}
        }
    }
    let mut proto = Vec::new();
    if let Some(n) = t.proto {
        push_attr(&mut proto, CTA_PROTO_NUM, &[n]);
    }
    if let Some(p) = t.src_port {
        push_attr(&mut proto, CTA_PROTO_SRC_PORT, &p.to_be_bytes());
    }
    if let Some(p) = t.dst_port {
        push_attr(&mut proto, CTA_PROTO_DST_PORT, &p.to_be_bytes());
    }
    let mut inner = Vec::new();
    push_attr(&mut inner, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    push_attr(&mut inner, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut out = Vec::new();
    push_attr(&mut out, ty | NLA_F_NESTED, &inner);
    out
}

/// One netlink message: (type, flags, seq, payload).
pub(super) type Msg<'a> = (u16, u16, u32, &'a [u8]);

pub(super) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, ConntrackError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let len = word(0) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let seq = word(8);
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(ConntrackError::Malformed(format!(
                "netlink message length {len}"
            ))));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, flags, seq, payload)))
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 for an ack).
pub(super) fn error_code(payload: &[u8]) -> Result<i32, ConntrackError> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ConntrackError::Malformed("short NLMSG_ERROR".into()))?;
    Ok(-i32::from_ne_bytes(b))
}
