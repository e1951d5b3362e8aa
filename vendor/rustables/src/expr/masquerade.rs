use rustables_macros::nfnetlink_struct;

use super::{Expression, Register};
use crate::sys;

/// `NF_NAT_RANGE_PROTO_RANDOM` (`random`), from `linux/netfilter/nf_nat.h`.
pub const NF_NAT_RANGE_PROTO_RANDOM: u32 = 0x04;
/// `NF_NAT_RANGE_PERSISTENT` (`persistent`).
pub const NF_NAT_RANGE_PERSISTENT: u32 = 0x08;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY` (`fully-random`).
pub const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

/// Sets the source IP to that of the output interface.
/// `masquerade fully-random` is `Masquerade::default().with_flags(NF_NAT_RANGE_PROTO_RANDOM_FULLY)`
/// (or [`Masquerade::fully_random`]).
#[derive(Default, Debug, Clone, PartialEq, Eq)]
#[nfnetlink_struct(nested = true)]
pub struct Masquerade {
    /// `NF_NAT_RANGE_*` flags.
    #[field(sys::NFTA_MASQ_FLAGS)]
    flags: u32,
    #[field(sys::NFTA_MASQ_REG_PROTO_MIN)]
    proto_min: Register,
    #[field(sys::NFTA_MASQ_REG_PROTO_MAX)]
    proto_max: Register,
}

impl Masquerade {
    /// `masquerade fully-random`.
    pub fn fully_random() -> Self {
        Masquerade::default().with_flags(NF_NAT_RANGE_PROTO_RANDOM_FULLY)
    }
}

impl Expression for Masquerade {
    fn get_name() -> &'static str {
        "masq"
    }
}
