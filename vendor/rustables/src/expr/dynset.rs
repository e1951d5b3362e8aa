use rustables_macros::{nfnetlink_enum, nfnetlink_struct};

use super::{Expression, Register};
use crate::error::BuilderError;
use crate::set::Set;
use crate::sys;

/// The operation of a [`Dynset`] expression.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[nfnetlink_enum(u32)]
pub enum DynsetOp {
    /// `add @set { ... }`: insert if missing, leave an existing element alone.
    Add = sys::NFT_DYNSET_OP_ADD,
    /// `update @set { ... }`: insert, or refresh the timeout of an existing element.
    Update = sys::NFT_DYNSET_OP_UPDATE,
    /// `delete @set { ... }`.
    Delete = sys::NFT_DYNSET_OP_DELETE,
}

/// `add|update|delete @set { key [timeout T] [: data] }` from the packet path.
///
/// The set must have `NFT_SET_EVAL` (nft's `flags dynamic`), `NFT_SET_TIMEOUT` for a timeout,
/// and `NFT_SET_MAP` (with a non-verdict data type) when `sreg_data` is used. E.g.
/// `update @affinity { ip saddr . ip daddr . meta l4proto . th dport timeout 3h : 10.1.0.2 . 8080 }`
/// loads the key into `Reg32_00..Reg32_03`, the data into `Reg32_04..Reg32_05`, then
/// `Dynset::update(&set, Register::Reg32_00).with_sreg_data(Register::Reg32_04).with_timeout(3 * 3600 * 1000u64)`.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
#[nfnetlink_struct]
pub struct Dynset {
    #[field(sys::NFTA_DYNSET_SET_NAME)]
    set_name: String,
    #[field(sys::NFTA_DYNSET_SET_ID)]
    set_id: u32,
    #[field(sys::NFTA_DYNSET_OP)]
    op: DynsetOp,
    #[field(sys::NFTA_DYNSET_SREG_KEY)]
    sreg_key: Register,
    #[field(sys::NFTA_DYNSET_SREG_DATA)]
    sreg_data: Register,
    /// Element timeout in milliseconds (0 or unset: the set's default timeout).
    #[field(sys::NFTA_DYNSET_TIMEOUT)]
    timeout: u64,
    /// `NFT_DYNSET_F_*` flags.
    #[field(sys::NFTA_DYNSET_FLAGS)]
    flags: u32,
}

impl Dynset {
    /// A dynset on `set` (by name, and by set id when the set has one, so that a set added in the
    /// same batch is found), reading the key from `sreg_key`.
    pub fn new(set: &Set, op: DynsetOp, sreg_key: Register) -> Result<Self, BuilderError> {
        let mut res = Dynset::default()
            .with_set_name(set.get_name().ok_or(BuilderError::MissingSetName)?)
            .with_op(op)
            .with_sreg_key(sreg_key);
        if let Some(id) = set.get_id() {
            res.set_set_id(*id);
        }
        Ok(res)
    }

    /// `update @set { key }`, see [`Dynset::new`].
    pub fn update(set: &Set, sreg_key: Register) -> Result<Self, BuilderError> {
        Self::new(set, DynsetOp::Update, sreg_key)
    }

    /// `add @set { key }`, see [`Dynset::new`].
    pub fn add(set: &Set, sreg_key: Register) -> Result<Self, BuilderError> {
        Self::new(set, DynsetOp::Add, sreg_key)
    }
}

impl Expression for Dynset {
    fn get_name() -> &'static str {
        "dynset"
    }
}
