use rustables_macros::{nfnetlink_enum, nfnetlink_struct};

use super::{Expression, Register};
use crate::sys;

/// The kind of number generator of a [`Numgen`] expression.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[nfnetlink_enum(u32)]
pub enum NumgenType {
    /// `numgen inc`: round robin.
    Incremental = sys::NFT_NG_INCREMENTAL,
    /// `numgen random`.
    Random = sys::NFT_NG_RANDOM,
}

/// `numgen random|inc mod N [offset O]`: writes a number in `[offset, offset + N)` into `dreg`
/// as a host-endian u32 (so map keys compared against it must be `n.to_ne_bytes()`, and an
/// anonymous map needs the `NFTNL_UDATA_SET_KEYBYTEORDER` host-endian hint for `nft list`).
#[derive(Clone, PartialEq, Eq, Default, Debug)]
#[nfnetlink_struct]
pub struct Numgen {
    #[field(sys::NFTA_NG_DREG)]
    dreg: Register,
    #[field(sys::NFTA_NG_MODULUS)]
    modulus: u32,
    #[field(sys::NFTA_NG_TYPE, name_in_functions = "type")]
    ng_type: NumgenType,
    #[field(sys::NFTA_NG_OFFSET)]
    offset: u32,
}

impl Numgen {
    /// `numgen random mod modulus`, result in `Reg1`.
    pub fn random(modulus: u32) -> Self {
        Numgen::default()
            .with_dreg(Register::Reg1)
            .with_modulus(modulus)
            .with_type(NumgenType::Random)
    }

    /// `numgen inc mod modulus`, result in `Reg1`.
    pub fn incremental(modulus: u32) -> Self {
        Numgen::default()
            .with_dreg(Register::Reg1)
            .with_modulus(modulus)
            .with_type(NumgenType::Incremental)
    }
}

impl Expression for Numgen {
    fn get_name() -> &'static str {
        "numgen"
    }
}
