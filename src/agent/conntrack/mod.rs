//! Stale UDP conntrack cleanup, as upstream kube-proxy does (`pkg/proxy/conntrack`).
//!
//! UDP has no connection teardown: a conntrack entry that was DNATed to an endpoint which
//! has gone away (or created before a Service port had endpoints, when nothing was
//! DNATed) keeps matching the client's packets until it times out, black-holing them.
//!
//! Two parts:
//! * [`stale_flows`] (pure) compares two [`Model`]s and says which flows are stale;
//! * [`delete_flows`] (kernel) deletes the matching entries over ctnetlink: one
//!   `IPCTNL_MSG_CT_GET` dump per family, filtering in user space, then one
//!   `IPCTNL_MSG_CT_DELETE` per matching entry, addressed by its original tuple (and its
//!   zone and id, so an entry re-created in the meantime is left alone).
//!
//! Call [`delete_flows`] after the new ruleset is in place (new packets must hit the new
//! DNAT rules), from a blocking context; it acts on the calling thread's network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

use crate::model::{Family, Model, Proto, ServicePort};

/// Which conntrack entries to delete: every `Some` field must match; `None` matches all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowFilter {
    pub family: Family,
    pub proto: Proto,
    /// Destination address in the original direction (the Service VIP).
    pub orig_dst: Option<IpAddr>,
    /// Destination port in the original direction (the Service port or NodePort).
    pub orig_dst_port: Option<u16>,
    /// Source address in the reply direction (the endpoint, after DNAT).
    pub reply_src: Option<IpAddr>,
}

impl std::fmt::Display for FlowFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fam = match self.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        write!(f, "{fam} proto {}", self.proto.number())?;
        if let Some(ip) = self.orig_dst {
            write!(f, " orig-dst {ip}")?;
        }
        if let Some(p) = self.orig_dst_port {
            write!(f, " orig-dport {p}")?;
        }
        if let Some(ip) = self.reply_src {
            write!(f, " reply-src {ip}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Pure part
// ---------------------------------------------------------------------------------------

/// What a UDP Service port is reachable at, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// ClusterIP, external IP or load-balancer IP, with the Service port.
    Vip(IpAddr, u16),
    /// A NodePort, on any node address of the family.
    NodePort(u16),
}

type PortKey<'a> = (&'a str, &'a str, &'a str, Proto);

#[derive(Default)]
struct Side {
    targets: BTreeSet<Target>,
    /// Serving endpoints (`IP`, port) of the family.
    endpoints: BTreeSet<(IpAddr, u16)>,
}

fn sides(sp: &ServicePort) -> BTreeMap<Family, Side> {
    let mut out: BTreeMap<Family, Side> = BTreeMap::new();
    let vips = sp
        .cluster_ips
        .iter()
        .chain(&sp.external_ips)
        .chain(&sp.load_balancer_ips);
    for ip in vips {
        let side = out.entry(Family::of(ip)).or_default();
        side.targets.insert(Target::Vip(*ip, sp.port));
    }
    if let Some(np) = sp.node_port {
        // A NodePort is served in each family the Service has a ClusterIP in.
        for ip in &sp.cluster_ips {
            out.entry(Family::of(ip))
                .or_default()
                .targets
                .insert(Target::NodePort(np));
        }
    }
    // Like upstream, every serving endpoint counts, whatever traffic policies and topology
    // say: a change of policy must not break flows to endpoints that still serve.
    for e in sp.endpoints.iter().filter(|e| e.ready || e.serving) {
        if let Some(side) = out.get_mut(&Family::of(&e.ip)) {
            side.endpoints.insert((e.ip, e.port));
        }
    }
    out
}

fn udp_ports(m: &Model) -> BTreeMap<PortKey<'_>, &ServicePort> {
    m.services
        .iter()
        .filter(|sp| sp.protocol == Proto::Udp)
        .map(|sp| {
            let key = (
                sp.namespace.as_str(),
                sp.name.as_str(),
                sp.port_name.as_str(),
                sp.protocol,
            );
            (key, sp)
        })
        .collect()
}

fn filter(family: Family, target: Target, reply_src: Option<IpAddr>) -> FlowFilter {
    let (orig_dst, port) = match target {
        Target::Vip(ip, port) => (Some(ip), port),
        Target::NodePort(port) => (None, port),
    };
    FlowFilter {
        family,
        proto: Proto::Udp,
        orig_dst,
        orig_dst_port: Some(port),
        reply_src,
    }
}

/// The UDP conntrack entries made stale by going from `old` to `new`; sorted, no
/// duplicates.
///
/// * An endpoint (`IP:port`) that served a Service port and no longer does: flows to each
///   of the port's VIPs (`VIP:port`) and to its NodePort whose reply source is that IP.
/// * A Service port that goes from no serving endpoint (in a family) to some, and any
///   VIP or NodePort newly served with endpoints: every flow to it (created while nothing
///   DNATed it).
/// * A VIP or NodePort no longer served (Service deleted, ClusterIP or NodePort changed,
///   external IP removed): every flow to it.
///
/// TCP and SCTP flows are never listed, as upstream.
pub fn stale_flows(old: &Model, new: &Model) -> Vec<FlowFilter> {
    let old_ports = udp_ports(old);
    let new_ports = udp_ports(new);
    let keys: BTreeSet<PortKey<'_>> = old_ports.keys().chain(new_ports.keys()).copied().collect();
    let mut out = BTreeSet::new();
    for key in keys {
        let mut old_sides = old_ports.get(&key).map(|sp| sides(sp)).unwrap_or_default();
        let new_sides = new_ports.get(&key).map(|sp| sides(sp)).unwrap_or_default();
        for family in [Family::V4, Family::V6] {
            let o = old_sides.remove(&family).unwrap_or_default();
            let empty = Side::default();
            let n = new_sides.get(&family).unwrap_or(&empty);
            for &t in o.targets.difference(&n.targets) {
                out.insert(filter(family, t, None));
            }
            let gone: BTreeSet<IpAddr> = o
                .endpoints
                .difference(&n.endpoints)
                .map(|(ip, _)| *ip)
                .collect();
            for &t in o.targets.intersection(&n.targets) {
                for &ip in &gone {
                    out.insert(filter(family, t, Some(ip)));
                }
            }
            if !n.endpoints.is_empty() {
                for &t in &n.targets {
                    if o.endpoints.is_empty() || !o.targets.contains(&t) {
                        out.insert(filter(family, t, None));
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------------------------------
// Kernel part: ctnetlink over a raw netlink socket
// ---------------------------------------------------------------------------------------

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

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNETLINK_V0: u8 = 0;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
#[cfg(test)]
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const RECV_BUF: usize = 64 * 1024;

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

/// A conntrack entry as listed by the kernel, with what deleting it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    family: u8,
    orig: Tuple,
    reply: Tuple,
    /// The `CTA_TUPLE_ORIG` attribute as received (header included), sent back verbatim.
    orig_raw: Vec<u8>,
    zone: Option<u16>,
    id: Option<u32>,
}

impl FlowFilter {
    fn matches(&self, e: &Entry) -> bool {
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
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8], &[u8]), ConntrackError>> {
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

fn be16(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

fn ip4(p: &[u8]) -> Option<IpAddr> {
    let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(b)))
}

fn ip6(p: &[u8]) -> Option<IpAddr> {
    let b: [u8; 16] = p.get(..16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(b)))
}

fn parse_tuple(payload: &[u8]) -> Result<Tuple, ConntrackError> {
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
fn parse_entry(payload: &[u8]) -> Result<Option<Entry>, ConntrackError> {
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

fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// A complete ctnetlink request: nlmsghdr, nfgenmsg, then `attrs` (already encoded).
fn request(msg: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
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

fn delete_request(seq: u32, e: &Entry) -> Vec<u8> {
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
fn tuple_attr(ty: u16, t: &Tuple) -> Vec<u8> {
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
type Msg<'a> = (u16, u16, u32, &'a [u8]);

fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, ConntrackError>> {
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
fn error_code(payload: &[u8]) -> Result<i32, ConntrackError> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ConntrackError::Malformed("short NLMSG_ERROR".into()))?;
    Ok(-i32::from_ne_bytes(b))
}

struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    fn open() -> Result<Socket, ConntrackError> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(ConntrackError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(ConntrackError::Socket(io::Error::last_os_error()));
        }
        // Never block forever on a kernel that does not answer.
        let tv = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval of the given length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(ConntrackError::Socket(io::Error::last_os_error()));
        }
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket {
            fd,
            seq,
            buf: vec![0; RECV_BUF],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> Result<(), ConntrackError> {
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `msg` and `addr` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return if n as usize == msg.len() {
                    Ok(())
                } else {
                    Err(ConntrackError::Send(io::Error::other("short send")))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ConntrackError::Send(e));
            }
        }
    }

    /// Receives one datagram into `self.buf`, returning its length.
    fn recv(&mut self) -> Result<usize, ConntrackError> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > self.buf.len() {
                    return Err(ConntrackError::Recv(io::Error::other(format!(
                        "netlink message of {n} bytes truncated"
                    ))));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(ConntrackError::Recv(e));
            }
        }
    }

    /// Every entry of `family` that any of `filters` matches.
    fn dump_matching(
        &mut self,
        family: Family,
        filters: &[&FlowFilter],
    ) -> Result<Vec<Entry>, ConntrackError> {
        let seq = self.next_seq();
        self.send(&request(
            IPCTNL_MSG_CT_GET,
            NLM_F_DUMP,
            seq,
            af(family),
            &[],
        ))?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n]) {
                let (ty, _flags, mseq, payload) = m?;
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => {
                        // The payload may carry a negative errno when the dump failed.
                        let code = error_code(payload).unwrap_or(0);
                        return if code > 0 {
                            Err(ConntrackError::Dump {
                                family,
                                source: io::Error::from_raw_os_error(code),
                            })
                        } else {
                            Ok(out)
                        };
                    }
                    NLMSG_ERROR => {
                        let code = error_code(payload)?;
                        if code != 0 {
                            return Err(ConntrackError::Dump {
                                family,
                                source: io::Error::from_raw_os_error(code),
                            });
                        }
                    }
                    _ if ty >> 8 == NFNL_SUBSYS_CTNETLINK => {
                        if let Some(e) = parse_entry(payload)? {
                            if filters.iter().any(|f| f.matches(&e)) {
                                out.push(e);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Deletes one entry: `Ok(Ok(true))` when deleted, `Ok(Ok(false))` when it was already
    /// gone, `Ok(Err(_))` when the kernel refused.
    fn delete(&mut self, e: &Entry) -> Result<io::Result<bool>, ConntrackError> {
        let seq = self.next_seq();
        self.send(&delete_request(seq, e))?;
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n]) {
                let (ty, _, mseq, payload) = m?;
                if mseq != seq || ty != NLMSG_ERROR {
                    continue;
                }
                return Ok(match error_code(payload)? {
                    0 => Ok(true),
                    libc::ENOENT => Ok(false),
                    code => Err(io::Error::from_raw_os_error(code)),
                });
            }
        }
    }
}

/// Deletes the conntrack entries that any of `filters` matches, in the calling thread's
/// network namespace; returns how many were deleted. Entries that vanish meanwhile are
/// not errors. Blocking.
pub fn delete_flows(filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
    if filters.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::open()?;
    let mut entries = Vec::new();
    for family in [Family::V4, Family::V6] {
        let fs: Vec<&FlowFilter> = filters.iter().filter(|f| f.family == family).collect();
        if fs.is_empty() {
            continue;
        }
        // Dump first, delete afterwards: the socket cannot take requests mid-dump.
        entries.extend(sock.dump_matching(family, &fs)?);
    }
    delete_entries(&mut sock, &entries)
}

/// The full check for a start-up, when no previous model is known (the agent restarted
/// while endpoints changed): deletes every UDP flow to a Service VIP or NodePort of `m`
/// whose reply source is not one of that port's serving endpoints now, including flows
/// never DNATed because the port had no endpoint when they began. Returns the count.
pub fn delete_stale_flows(m: &Model) -> Result<usize, ConntrackError> {
    let mut serving: BTreeMap<(Family, Target), BTreeSet<IpAddr>> = BTreeMap::new();
    for sp in udp_ports(m).into_values() {
        for (family, side) in sides(sp) {
            if side.endpoints.is_empty() {
                continue;
            }
            for t in side.targets {
                serving
                    .entry((family, t))
                    .or_default()
                    .extend(side.endpoints.iter().map(|(ip, _)| *ip));
            }
        }
    }
    if serving.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::open()?;
    let mut stale = Vec::new();
    for family in [Family::V4, Family::V6] {
        let all_udp = FlowFilter {
            family,
            proto: Proto::Udp,
            orig_dst: None,
            orig_dst_port: None,
            reply_src: None,
        };
        for e in sock.dump_matching(family, &[&all_udp])? {
            let Some(port) = e.orig.dst_port else {
                continue;
            };
            let allowed = e
                .orig
                .dst
                .and_then(|ip| serving.get(&(family, Target::Vip(ip, port))))
                .or_else(|| serving.get(&(family, Target::NodePort(port))));
            if let Some(allowed) = allowed {
                if !e.reply.src.is_some_and(|src| allowed.contains(&src)) {
                    stale.push(e);
                }
            }
        }
    }
    delete_entries(&mut sock, &stale)
}

fn delete_entries(sock: &mut Socket, entries: &[Entry]) -> Result<usize, ConntrackError> {
    let mut deleted = 0;
    let mut failed = 0;
    let mut first = None;
    for e in entries {
        match sock.delete(e)? {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(err) => {
                failed += 1;
                first.get_or_insert(err);
            }
        }
    }
    match first {
        None => Ok(deleted),
        Some(first) => Err(ConntrackError::Delete {
            deleted,
            failed,
            first,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::options::NodePortAddresses;
    use crate::model::{fixtures, Endpoint};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ep(addr: &str, port: u16) -> Endpoint {
        fixtures::endpoint(addr, port)
    }

    fn svc(proto: Proto, eps: Vec<Endpoint>) -> ServicePort {
        fixtures::service_port("dns", "udp", proto, "10.96.0.10", 53, eps)
    }

    fn model(services: Vec<ServicePort>) -> Model {
        Model {
            node_name: "n".into(),
            node_zone: None,
            node_ips: vec![ip("192.168.0.1")],
            families: vec![Family::V4, Family::V6],
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            nodeport_addresses: NodePortAddresses::Primary,
            masquerade_all: false,
            masquerade_mark: 0x4000,
            services,
        }
    }

    fn ff(family: Family, dst: Option<&str>, port: Option<u16>, reply: Option<&str>) -> FlowFilter {
        FlowFilter {
            family,
            proto: Proto::Udp,
            orig_dst: dst.map(ip),
            orig_dst_port: port,
            reply_src: reply.map(ip),
        }
    }

    #[test]
    fn endpoint_removed() {
        let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
        old.node_port = Some(30053);
        old.external_ips = vec![ip("203.0.113.7")];
        let mut new = old.clone();
        new.endpoints.remove(0);
        let got = stale_flows(&model(vec![old]), &model(vec![new]));
        let mut want = vec![
            ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.1.5")),
            ff(
                Family::V4,
                Some("203.0.113.7"),
                Some(53),
                Some("10.244.1.5"),
            ),
            ff(Family::V4, None, Some(30053), Some("10.244.1.5")),
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn endpoint_no_longer_serving_is_removed_but_terminating_serving_is_not() {
        let old = svc(Proto::Udp, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
        let mut new = old.clone();
        new.endpoints[0].ready = false;
        new.endpoints[0].serving = false;
        new.endpoints[1].ready = false;
        new.endpoints[1].terminating = true;
        let got = stale_flows(&model(vec![old]), &model(vec![new]));
        assert_eq!(
            got,
            vec![ff(
                Family::V4,
                Some("10.96.0.10"),
                Some(53),
                Some("10.244.1.5")
            )]
        );
    }

    #[test]
    fn scaled_to_zero() {
        let old = svc(Proto::Udp, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
        let new = svc(Proto::Udp, vec![]);
        let got = stale_flows(&model(vec![old]), &model(vec![new]));
        assert_eq!(
            got,
            vec![
                ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.1.5")),
                ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.2.6")),
            ]
        );
    }

    #[test]
    fn first_endpoint_added() {
        let mut old = svc(Proto::Udp, vec![]);
        old.node_port = Some(30053);
        old.load_balancer_ips = vec![ip("198.51.100.1")];
        let mut new = old.clone();
        new.endpoints = vec![ep("10.244.1.5", 53)];
        let got = stale_flows(&model(vec![old.clone()]), &model(vec![new.clone()]));
        let mut want = vec![
            ff(Family::V4, Some("10.96.0.10"), Some(53), None),
            ff(Family::V4, Some("198.51.100.1"), Some(53), None),
            ff(Family::V4, None, Some(30053), None),
        ];
        want.sort();
        assert_eq!(got, want);
        // A second endpoint is not a first one.
        let mut newer = new.clone();
        newer.endpoints.push(ep("10.244.2.6", 53));
        assert!(stale_flows(&model(vec![new]), &model(vec![newer])).is_empty());
        // A new Service with endpoints: its VIP may have flows from before it existed.
        let got = stale_flows(
            &model(vec![]),
            &model(vec![svc(Proto::Udp, vec![ep("10.244.1.5", 53)])]),
        );
        assert_eq!(
            got,
            vec![ff(Family::V4, Some("10.96.0.10"), Some(53), None)]
        );
        // A new Service without endpoints: nothing yet.
        assert!(stale_flows(&model(vec![]), &model(vec![old])).is_empty());
    }

    #[test]
    fn first_endpoint_per_family() {
        let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
        old.cluster_ips.push(ip("fd00:96::10"));
        let mut new = old.clone();
        new.endpoints.push(ep("fd00:244::5", 53));
        let got = stale_flows(&model(vec![old]), &model(vec![new]));
        assert_eq!(
            got,
            vec![ff(Family::V6, Some("fd00:96::10"), Some(53), None)]
        );
    }

    #[test]
    fn cluster_ip_changed() {
        let old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
        let mut new = old.clone();
        new.cluster_ips = vec![ip("10.96.0.11")];
        let got = stale_flows(&model(vec![old]), &model(vec![new]));
        assert_eq!(
            got,
            vec![
                ff(Family::V4, Some("10.96.0.10"), Some(53), None),
                ff(Family::V4, Some("10.96.0.11"), Some(53), None),
            ]
        );
    }

    #[test]
    fn node_port_changed() {
        let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
        old.node_port = Some(30053);
        let mut new = old.clone();
        new.node_port = Some(30054);
        let got = stale_flows(&model(vec![old]), &model(vec![new]));
        assert_eq!(
            got,
            vec![
                ff(Family::V4, None, Some(30053), None),
                ff(Family::V4, None, Some(30054), None),
            ]
        );
    }

    #[test]
    fn service_deleted() {
        let mut old = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
        old.node_port = Some(30053);
        let got = stale_flows(&model(vec![old]), &model(vec![]));
        assert_eq!(
            got,
            vec![
                ff(Family::V4, None, Some(30053), None),
                ff(Family::V4, Some("10.96.0.10"), Some(53), None),
            ]
        );
    }

    #[test]
    fn tcp_and_sctp_changes_produce_nothing() {
        for proto in [Proto::Tcp, Proto::Sctp] {
            let mut old = svc(proto, vec![ep("10.244.1.5", 53), ep("10.244.2.6", 53)]);
            old.node_port = Some(30053);
            let mut new = svc(proto, vec![]);
            new.cluster_ips = vec![ip("10.96.0.11")];
            new.node_port = Some(30054);
            let (a, b) = (model(vec![old]), model(vec![new]));
            assert!(stale_flows(&a, &b).is_empty());
            assert!(stale_flows(&b, &a).is_empty());
            assert!(stale_flows(&model(vec![]), &a).is_empty());
        }
    }

    #[test]
    fn unchanged_model_produces_nothing() {
        let mut s = svc(Proto::Udp, vec![ep("10.244.1.5", 53)]);
        s.node_port = Some(30053);
        let m = model(vec![s]);
        assert!(stale_flows(&m, &m).is_empty());
    }

    fn fake_entry_msg(family: u8, orig: &Tuple, reply: &Tuple, zone: Option<u16>) -> Vec<u8> {
        let mut a = tuple_attr(CTA_TUPLE_ORIG, orig);
        a.extend(tuple_attr(CTA_TUPLE_REPLY, reply));
        push_attr(&mut a, CTA_ID, &0xdead_beefu32.to_be_bytes());
        if let Some(z) = zone {
            push_attr(&mut a, CTA_ZONE, &z.to_be_bytes());
        }
        request(IPCTNL_MSG_CT_GET, 0, 7, family, &a)
    }

    fn tuple(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: Some(ip(src)),
            dst: Some(ip(dst)),
            proto: Some(17),
            src_port: Some(sport),
            dst_port: Some(dport),
        }
    }

    #[test]
    fn parses_and_matches_entries() {
        let orig = tuple("10.0.0.1", "10.96.0.10", 4000, 53);
        let reply = tuple("10.244.1.5", "10.0.0.1", 53, 4000);
        let msg = fake_entry_msg(libc::AF_INET as u8, &orig, &reply, Some(3));
        let mut it = messages(&msg);
        let (_, _, seq, payload) = it.next().unwrap().unwrap();
        assert!(it.next().is_none());
        assert_eq!(seq, 7);
        let e = parse_entry(payload).unwrap().unwrap();
        assert_eq!(e.orig, orig);
        assert_eq!(e.reply, reply);
        assert_eq!(e.zone, Some(3));
        assert_eq!(e.id, Some(0xdead_beef));
        assert!(ff(Family::V4, Some("10.96.0.10"), Some(53), Some("10.244.1.5")).matches(&e));
        assert!(ff(Family::V4, None, Some(53), None).matches(&e));
        assert!(!ff(Family::V4, Some("10.96.0.10"), Some(54), None).matches(&e));
        assert!(!ff(Family::V4, None, None, Some("10.244.2.6")).matches(&e));
        assert!(!ff(Family::V6, None, None, None).matches(&e));
        let mut tcp = ff(Family::V4, None, None, None);
        tcp.proto = Proto::Tcp;
        assert!(!tcp.matches(&e));

        // The delete request echoes the original tuple, zone and id.
        let del = delete_request(9, &e);
        let (ty, flags, seq, payload) = messages(&del).next().unwrap().unwrap();
        assert_eq!(ty, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(seq, 9);
        let back = parse_entry(payload).unwrap();
        assert!(back.is_none(), "no reply tuple is sent");
        let types: Vec<u16> = attrs(&payload[4..]).map(|a| a.unwrap().0).collect();
        assert_eq!(types, vec![CTA_TUPLE_ORIG, CTA_ZONE, CTA_ID]);
        let (_, p, _) = attrs(&payload[4..]).next().unwrap().unwrap();
        assert_eq!(parse_tuple(p).unwrap(), orig);
    }

    #[test]
    fn parses_ipv6_entries() {
        let orig = tuple("fd00::1", "fd00:96::10", 4000, 53);
        let reply = tuple("fd00:244::5", "fd00::1", 53, 4000);
        let msg = fake_entry_msg(libc::AF_INET6 as u8, &orig, &reply, None);
        let (_, _, _, payload) = messages(&msg).next().unwrap().unwrap();
        let e = parse_entry(payload).unwrap().unwrap();
        assert_eq!(
            (e.orig.clone(), e.reply.clone(), e.zone),
            (orig, reply, None)
        );
        assert!(ff(
            Family::V6,
            Some("fd00:96::10"),
            Some(53),
            Some("fd00:244::5")
        )
        .matches(&e));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let orig = tuple("10.0.0.1", "10.96.0.10", 4000, 53);
        let msg = fake_entry_msg(libc::AF_INET as u8, &orig, &orig, None);
        // Every truncation and every single-byte corruption: no panic.
        for cut in 0..msg.len() {
            let _ = messages(&msg[..cut]).count();
            let _ = parse_entry(msg.get(NLMSG_HDRLEN..cut).unwrap_or(&[]));
        }
        for i in 0..msg.len() {
            for v in [0u8, 1, 2, 3, 0x7f, 0xff] {
                let mut bad = msg.clone();
                bad[i] = v;
                let _ = messages(&bad).count();
                let _ = parse_entry(&bad[NLMSG_HDRLEN..]);
            }
        }
        assert!(parse_entry(&[]).is_err());
        assert!(error_code(&[1, 2]).is_err());
        let mut bad = msg.clone();
        bad[NLMSG_HDRLEN + NFGENMSG_LEN] = 2; // attribute length 2 < 4
        bad[NLMSG_HDRLEN + NFGENMSG_LEN + 1] = 0;
        assert!(parse_entry(&bad[NLMSG_HDRLEN..]).is_err());
        let mut bad = msg.clone();
        bad[0] = 0xff; // message longer than the buffer
        assert!(messages(&bad).next().unwrap().is_err());
    }

    #[test]
    fn no_filters_touch_nothing() {
        assert_eq!(delete_flows(&[]).unwrap(), 0);
    }
}

/// Real-kernel test, confined to a network namespace it creates and deletes.
#[cfg(test)]
mod netns_tests {
    use super::*;
    use std::process::Command;

    /// Skips (or, with `CI=true`, fails) when the test cannot run here.
    fn skip(why: &str) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("conntrack namespace test cannot run: {why}");
        }
        eprintln!("SKIP conntrack namespace test: {why}");
    }

    fn tool(name: &str) -> bool {
        let flag = if name == "ip" { "-V" } else { "--version" };
        Command::new(name)
            .arg(flag)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The namespace; deleted on drop, also when the test fails.
    struct Netns(String);

    impl Netns {
        fn exec(&self, args: &[&str]) -> String {
            let mut all = vec!["ip", "netns", "exec", self.0.as_str()];
            all.extend_from_slice(args);
            run(&all)
        }

        /// Runs `f` on a thread that has entered the namespace (the test's own thread,
        /// and so the host's namespace, is never touched).
        fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/var/run/netns/{}", self.0);
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: a valid namespace descriptor; only this thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn insert(ns: &Netns, proto: &str, orig: (&str, &str, u16, u16), reply: (&str, &str)) {
        let (src, dst, sport, dport) = orig;
        let (rsrc, rdst) = reply;
        let (sport, dport) = (sport.to_string(), dport.to_string());
        let mut args = vec![
            "conntrack",
            "-I",
            "-p",
            proto,
            "-s",
            src,
            "-d",
            dst,
            "--sport",
            &sport,
            "--dport",
            &dport,
            "-r",
            rsrc,
            "-q",
            rdst,
            "--reply-port-src",
            "53",
            "--reply-port-dst",
            &sport,
            "-t",
            "300",
        ];
        if proto == "tcp" {
            args.extend(["--state", "ESTABLISHED"]);
        }
        ns.exec(&args);
    }

    #[test]
    fn deletes_exactly_the_matching_entries_in_a_namespace() {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return skip("not root");
        }
        for t in ["ip", "conntrack", "nft"] {
            if !tool(t) {
                return skip(&format!("`{t}` not installed"));
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("kntp-ct-{}-{nanos:x}", std::process::id());
        if Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return skip("cannot create a network namespace");
        }
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // Addresses on the namespace's own loopback: no dummy/veth kernel module needed.
        ns.exec(&["ip", "addr", "add", "10.0.0.1/24", "dev", "lo"]);
        ns.exec(&["ip", "addr", "add", "fd00::1/64", "dev", "lo", "nodad"]);
        ns.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", "lo"]);

        // A real flow: a UDP packet to a "ClusterIP", DNATed by an nft rule to a local
        // listener.
        let rules = "table ip kntp_ct_test {\n\
             chain out { type nat hook output priority -100; \
             ip daddr 10.96.0.20 udp dport 53 dnat to 10.0.0.1:5353; }\n}\n";
        let path = std::env::temp_dir().join(format!("{}.nft", ns.0));
        std::fs::write(&path, rules).unwrap();
        let nft = ns.exec(&["nft", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        assert!(nft.is_empty(), "{nft}");
        let got = ns.within(|| {
            let listener = std::net::UdpSocket::bind("10.0.0.1:5353").unwrap();
            listener
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let client = std::net::UdpSocket::bind("10.0.0.1:40001").unwrap();
            client.send_to(b"ping", "10.96.0.20:53").unwrap();
            let mut buf = [0u8; 16];
            let (n, _) = listener.recv_from(&mut buf).unwrap();
            buf[..n].to_vec()
        });
        assert_eq!(got, b"ping");

        // Entries made with conntrack -I (setup only).
        let v4 = "10.0.0.1";
        insert(
            &ns,
            "udp",
            (v4, "10.96.0.10", 40002, 53),
            ("10.244.1.5", v4),
        ); // deleted
        insert(
            &ns,
            "udp",
            (v4, "10.96.0.10", 40003, 53),
            ("10.244.2.6", v4),
        ); // kept
        insert(
            &ns,
            "udp",
            (v4, "10.96.0.10", 40004, 54),
            ("10.244.1.5", v4),
        ); // kept
        insert(
            &ns,
            "tcp",
            (v4, "10.96.0.10", 40005, 53),
            ("10.244.1.5", v4),
        ); // kept
        insert(
            &ns,
            "udp",
            ("10.0.0.9", v4, 40006, 30053),
            ("10.244.1.5", v4),
        ); // deleted
        insert(
            &ns,
            "udp",
            ("10.0.0.9", v4, 40007, 30053),
            ("10.244.2.6", v4),
        ); // kept
           // The same tuple as 40002 in another zone: deleting it needs its zone sent back.
        let zoned = "conntrack -I -p udp -s 10.0.0.1 -d 10.96.0.10 --sport 40002 --dport 53 \
                     -r 10.244.1.5 -q 10.0.0.1 --reply-port-src 53 --reply-port-dst 40002 \
                     -t 300 --zone 7";
        ns.exec(&zoned.split_whitespace().collect::<Vec<_>>());
        let v6 = "fd00::1";
        insert(
            &ns,
            "udp",
            (v6, "fd00:96::10", 40008, 53),
            ("fd00:244::5", v6),
        ); // deleted
        insert(
            &ns,
            "udp",
            (v6, "fd00:96::10", 40009, 53),
            ("fd00:244::6", v6),
        ); // deleted
        insert(
            &ns,
            "udp",
            (v6, "fd00:96::11", 40010, 53),
            ("fd00:244::5", v6),
        ); // kept
        let before = ns.exec(&["conntrack", "-L"]);
        assert!(before.contains("dst=10.96.0.20"), "{before}");
        let count = |s: &str| s.lines().filter(|l| l.contains("sport=400")).count();
        assert_eq!(count(&before), 11, "{before}");
        assert!(before.contains("zone=7"), "{before}");

        let filters = vec![
            FlowFilter {
                family: Family::V4,
                proto: Proto::Udp,
                orig_dst: Some(ip("10.96.0.10")),
                orig_dst_port: Some(53),
                reply_src: Some(ip("10.244.1.5")),
            },
            FlowFilter {
                family: Family::V4,
                proto: Proto::Udp,
                orig_dst: None,
                orig_dst_port: Some(30053),
                reply_src: Some(ip("10.244.1.5")),
            },
            FlowFilter {
                family: Family::V4,
                proto: Proto::Udp,
                orig_dst: Some(ip("10.96.0.20")),
                orig_dst_port: Some(53),
                reply_src: Some(ip("10.0.0.1")),
            },
            FlowFilter {
                family: Family::V6,
                proto: Proto::Udp,
                orig_dst: Some(ip("fd00:96::10")),
                orig_dst_port: Some(53),
                reply_src: None,
            },
        ];
        let f = filters.clone();
        let deleted = ns.within(move || delete_flows(&f)).unwrap();
        assert_eq!(deleted, 6);

        let after = ns.exec(&["conntrack", "-L"]);
        let mut remaining: Vec<&str> = after
            .lines()
            .filter(|l| l.contains("sport=400"))
            .filter_map(|l| l.split("sport=").nth(1)?.split_whitespace().next())
            .collect();
        remaining.sort();
        assert_eq!(
            remaining,
            vec!["40003", "40004", "40005", "40007", "40010"],
            "{after}"
        );
        // A second run finds nothing left to delete.
        let f = filters.clone();
        assert_eq!(ns.within(move || delete_flows(&f)).unwrap(), 0);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
}
