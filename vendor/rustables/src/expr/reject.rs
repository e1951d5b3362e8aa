use rustables_macros::{nfnetlink_enum, nfnetlink_struct};

use crate::sys;

use super::Expression;

impl Expression for Reject {
    fn get_name() -> &'static str {
        "reject"
    }
}

#[derive(Clone, PartialEq, Eq, Default, Debug)]
#[nfnetlink_struct]
/// A reject expression that defines the type of rejection message sent when discarding a packet.
pub struct Reject {
    #[field(sys::NFTA_REJECT_TYPE, name_in_functions = "type")]
    reject_type: RejectType,
    /// An ICMP code for `RejectType::IcmpUnreach` (e.g. [`ICMP_PORT_UNREACH`]), or an
    /// [`IcmpCode`] (converted with `.into()`) for `RejectType::IcmpxUnreach`. Kept as a raw u8
    /// because ICMP and ICMPx codes overlap (3 is port-unreachable in ICMP, admin-prohibited in
    /// ICMPx), so any value decodes.
    #[field(sys::NFTA_REJECT_ICMP_CODE)]
    icmp_code: u8,
}

/// ICMP (v4) `port-unreachable` code, for `RejectType::IcmpUnreach` in an `ip` table.
pub const ICMP_PORT_UNREACH: u8 = 3;
/// ICMP (v4) `host-unreachable` code.
pub const ICMP_HOST_UNREACH: u8 = 1;
/// ICMP (v4) `admin-prohibited` code.
pub const ICMP_ADMIN_PROHIBITED: u8 = 13;
/// ICMPv6 `port-unreachable` code, for `RejectType::IcmpUnreach` in an `ip6` table.
pub const ICMPV6_PORT_UNREACH: u8 = 4;
/// ICMPv6 `admin-prohibited` code.
pub const ICMPV6_ADMIN_PROHIBITED: u8 = 1;

impl Reject {
    /// `reject with icmp|icmpv6 type <code>` (the family's own ICMP), e.g.
    /// `Reject::icmp(ICMP_PORT_UNREACH)`, which is what a bare `reject` means in an `ip` table.
    pub fn icmp(code: u8) -> Self {
        Reject::default()
            .with_type(RejectType::IcmpUnreach)
            .with_icmp_code(code)
    }

    /// `reject with icmpx type <code>` (family-independent, for `inet` tables).
    pub fn icmpx(code: IcmpCode) -> Self {
        Reject::default()
            .with_type(RejectType::IcmpxUnreach)
            .with_icmp_code(code)
    }

    /// `reject with tcp reset`.
    pub fn tcp_reset() -> Self {
        Reject::default().with_type(RejectType::TcpRst)
    }
}

impl From<IcmpCode> for u8 {
    fn from(c: IcmpCode) -> u8 {
        c as u8
    }
}

/// An ICMP reject code.
#[derive(Debug, Clone, Copy, Eq, PartialEq, Hash)]
#[nfnetlink_enum(u32)]
pub enum RejectType {
    IcmpUnreach = sys::NFT_REJECT_ICMP_UNREACH,
    TcpRst = sys::NFT_REJECT_TCP_RST,
    IcmpxUnreach = sys::NFT_REJECT_ICMPX_UNREACH,
}

/// An ICMP reject code.
#[derive(Debug, Clone, Copy, Eq, PartialEq, Hash)]
#[nfnetlink_enum(u8)]
pub enum IcmpCode {
    NoRoute = sys::NFT_REJECT_ICMPX_NO_ROUTE,
    PortUnreach = sys::NFT_REJECT_ICMPX_PORT_UNREACH,
    HostUnreach = sys::NFT_REJECT_ICMPX_HOST_UNREACH,
    AdminProhibited = sys::NFT_REJECT_ICMPX_ADMIN_PROHIBITED,
}
