use rustables_macros::{nfnetlink_enum, nfnetlink_struct};

use super::{Expression, Register};
use crate::sys;

/// What a [`Fib`] lookup returns into its destination register.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[nfnetlink_enum(u32)]
pub enum FibResult {
    /// Output interface index (`fib ... oif`).
    Oif = sys::NFT_FIB_RESULT_OIF,
    /// Output interface name (`fib ... oifname`).
    OifName = sys::NFT_FIB_RESULT_OIFNAME,
    /// Address type, an `RTN_*` value as a host-endian u32 (`fib ... type`).
    AddrType = sys::NFT_FIB_RESULT_ADDRTYPE,
}

/// `fib <flags> <result>`, e.g. `fib daddr type local`, which is [`Fib::daddr_type`] followed
/// by `Cmp::new(CmpOp::Eq, (libc::RTN_LOCAL as u32).to_ne_bytes())`.
///
/// `flags` is a combination of `sys::NFTA_FIB_F_SADDR`, `NFTA_FIB_F_DADDR`, `NFTA_FIB_F_MARK`,
/// `NFTA_FIB_F_IIF`, `NFTA_FIB_F_OIF`, `NFTA_FIB_F_PRESENT`.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
#[nfnetlink_struct]
pub struct Fib {
    #[field(sys::NFTA_FIB_DREG)]
    dreg: Register,
    #[field(sys::NFTA_FIB_RESULT)]
    result: FibResult,
    #[field(sys::NFTA_FIB_FLAGS)]
    flags: u32,
}

impl Fib {
    /// A fib lookup with the result in `Reg1`.
    pub fn new(result: FibResult, flags: u32) -> Self {
        Fib::default()
            .with_dreg(Register::Reg1)
            .with_result(result)
            .with_flags(flags)
    }

    /// `fib daddr type`: address type of the destination address, in `Reg1`.
    pub fn daddr_type() -> Self {
        Fib::new(FibResult::AddrType, sys::NFTA_FIB_F_DADDR)
    }

    /// `fib saddr type`: address type of the source address, in `Reg1`.
    pub fn saddr_type() -> Self {
        Fib::new(FibResult::AddrType, sys::NFTA_FIB_F_SADDR)
    }
}

impl Expression for Fib {
    fn get_name() -> &'static str {
        "fib"
    }
}
