use rustables_macros::{nfnetlink_enum, nfnetlink_struct};

use super::{Expression, Register};
use crate::{
    ProtocolFamily,
    sys::{self, NFT_NAT_DNAT, NFT_NAT_SNAT},
};

#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[nfnetlink_enum(i32)]
pub enum NatType {
    /// Source NAT. Changes the source address of a packet.
    SNat = NFT_NAT_SNAT,
    /// Destination NAT. Changes the destination address of a packet.
    DNat = NFT_NAT_DNAT,
}

/// A source or destination NAT statement. Modifies the source or destination address (and possibly
/// port) of packets.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
#[nfnetlink_struct(nested = true)]
pub struct Nat {
    #[field(sys::NFTA_NAT_TYPE)]
    pub nat_type: NatType,
    #[field(sys::NFTA_NAT_FAMILY)]
    pub family: ProtocolFamily,
    #[field(sys::NFTA_NAT_REG_ADDR_MIN)]
    pub ip_register: Register,
    #[field(sys::NFTA_NAT_REG_PROTO_MIN)]
    pub port_register: Register,
    /// Upper end of an address range (`dnat to 10.0.0.1-10.0.0.9`).
    #[field(sys::NFTA_NAT_REG_ADDR_MAX)]
    pub ip_register_max: Register,
    /// Upper end of a port range.
    #[field(sys::NFTA_NAT_REG_PROTO_MAX)]
    pub port_register_max: Register,
    /// `NF_NAT_RANGE_*` flags (`persistent`, `random`, `fully-random`, ...). The kernel sets
    /// `NF_NAT_RANGE_MAP_IPS`/`NF_NAT_RANGE_PROTO_SPECIFIED` itself from the registers.
    #[field(sys::NFTA_NAT_FLAGS)]
    pub flags: u32,
}

impl Nat {
    /// `dnat to <addr in addr_reg>[:<port in port_reg>]` for `family` (Ipv4/Ipv6).
    /// A port requires a transport protocol match earlier in the rule (`meta l4proto tcp`),
    /// or `nft list` output will not parse back.
    pub fn dnat(family: ProtocolFamily, addr_reg: Register, port_reg: Option<Register>) -> Self {
        let mut nat = Nat::default()
            .with_nat_type(NatType::DNat)
            .with_family(family)
            .with_ip_register(addr_reg);
        if let Some(p) = port_reg {
            nat.set_port_register(p);
        }
        nat
    }

    /// `snat to <addr in addr_reg>[:<port in port_reg>]` for `family` (Ipv4/Ipv6).
    pub fn snat(family: ProtocolFamily, addr_reg: Register, port_reg: Option<Register>) -> Self {
        Nat::dnat(family, addr_reg, port_reg).with_nat_type(NatType::SNat)
    }
}

impl Expression for Nat {
    fn get_name() -> &'static str {
        "nat"
    }
}
