use std::fmt::Debug;

use rustables_macros::nfnetlink_enum;

use crate::sys::{
    NFT_REG_1, NFT_REG_2, NFT_REG_3, NFT_REG_4, NFT_REG_VERDICT, NFT_REG32_00, NFT_REG32_01,
    NFT_REG32_02, NFT_REG32_03, NFT_REG32_04, NFT_REG32_05, NFT_REG32_06, NFT_REG32_07,
    NFT_REG32_08, NFT_REG32_09, NFT_REG32_10, NFT_REG32_11, NFT_REG32_12, NFT_REG32_13,
    NFT_REG32_14, NFT_REG32_15,
};

/// A netfilter data register. The expressions store and read data to and from these when
/// evaluating rule statements.
///
/// `Reg1`..`Reg4` are the legacy 16-byte registers. The `Reg32_*` registers address the same
/// storage in 4-byte units (`Reg1` overlaps `Reg32_00`..`Reg32_03`, `Reg2` overlaps
/// `Reg32_04`..`Reg32_07`, ...). Concatenations (`ip daddr . meta l4proto . th dport`) are built
/// by loading each field into consecutive 32-bit registers, every field padded to 4 bytes; a data
/// item longer than 4 bytes (an IPv6 address) spans several consecutive 32-bit registers.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[nfnetlink_enum(u32)]
pub enum Register {
    Verdict = NFT_REG_VERDICT,
    Reg1 = NFT_REG_1,
    Reg2 = NFT_REG_2,
    Reg3 = NFT_REG_3,
    Reg4 = NFT_REG_4,
    Reg32_00 = NFT_REG32_00,
    Reg32_01 = NFT_REG32_01,
    Reg32_02 = NFT_REG32_02,
    Reg32_03 = NFT_REG32_03,
    Reg32_04 = NFT_REG32_04,
    Reg32_05 = NFT_REG32_05,
    Reg32_06 = NFT_REG32_06,
    Reg32_07 = NFT_REG32_07,
    Reg32_08 = NFT_REG32_08,
    Reg32_09 = NFT_REG32_09,
    Reg32_10 = NFT_REG32_10,
    Reg32_11 = NFT_REG32_11,
    Reg32_12 = NFT_REG32_12,
    Reg32_13 = NFT_REG32_13,
    Reg32_14 = NFT_REG32_14,
    Reg32_15 = NFT_REG32_15,
}

impl Register {
    /// The 32-bit register `NFT_REG32_<index>` (index 0..=15), `None` when out of range.
    pub fn reg32(index: u32) -> Option<Register> {
        if index > 15 {
            return None;
        }
        Register::try_from(NFT_REG32_00 + index).ok()
    }

    /// Index (0..=15) of the first 4-byte unit this register addresses; `None` for `Verdict`.
    pub fn reg32_index(&self) -> Option<u32> {
        match *self {
            Register::Verdict => None,
            Register::Reg1 | Register::Reg2 | Register::Reg3 | Register::Reg4 => {
                Some((*self as u32 - NFT_REG_1) * 4)
            }
            r => Some(r as u32 - NFT_REG32_00),
        }
    }

    /// The 32-bit register right after the `len`-byte value stored in `self`: where the next
    /// field of a concatenation goes (each field is padded to 4 bytes).
    pub fn next_after(&self, len: u32) -> Option<Register> {
        Register::reg32(self.reg32_index()? + len.div_ceil(4))
    }
}
