use std::fmt::Debug;

use libc::{NF_ACCEPT, NF_DROP, NF_QUEUE};
use rustables_macros::{nfnetlink_enum, nfnetlink_struct};

use crate::sys::{
    NFT_BREAK, NFT_CONTINUE, NFT_GOTO, NFT_JUMP, NFT_RETURN, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
};

#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
#[nfnetlink_enum(i32)]
pub enum VerdictType {
    Drop = NF_DROP,
    Accept = NF_ACCEPT,
    Queue = NF_QUEUE,
    Continue = NFT_CONTINUE,
    Break = NFT_BREAK,
    Jump = NFT_JUMP,
    Goto = NFT_GOTO,
    Return = NFT_RETURN,
}

#[nfnetlink_struct(nested = true)]
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Verdict {
    #[field(NFTA_VERDICT_CODE)]
    code: VerdictType,
    #[field(NFTA_VERDICT_CHAIN)]
    chain: String,
    #[field(optional = true, crate::sys::NFTA_VERDICT_CHAIN_ID)]
    chain_id: u32,
}

impl Verdict {
    /// The verdict as a [`VerdictKind`]; `None` without a code, or for a jump/goto without a
    /// chain name.
    pub fn kind(&self) -> Option<VerdictKind> {
        Some(match self.code? {
            VerdictType::Drop => VerdictKind::Drop,
            VerdictType::Accept => VerdictKind::Accept,
            VerdictType::Queue => VerdictKind::Queue,
            VerdictType::Continue => VerdictKind::Continue,
            VerdictType::Break => VerdictKind::Break,
            VerdictType::Return => VerdictKind::Return,
            VerdictType::Jump => VerdictKind::Jump {
                chain: self.chain.clone()?,
            },
            VerdictType::Goto => VerdictKind::Goto {
                chain: self.chain.clone()?,
            },
        })
    }
}

impl From<VerdictKind> for Verdict {
    fn from(kind: VerdictKind) -> Self {
        let code = match kind {
            VerdictKind::Drop => VerdictType::Drop,
            VerdictKind::Accept => VerdictType::Accept,
            VerdictKind::Queue => VerdictType::Queue,
            VerdictKind::Continue => VerdictType::Continue,
            VerdictKind::Break => VerdictType::Break,
            VerdictKind::Jump { .. } => VerdictType::Jump,
            VerdictKind::Goto { .. } => VerdictType::Goto,
            VerdictKind::Return => VerdictType::Return,
        };
        let mut v = Verdict::default().with_code(code);
        if let VerdictKind::Jump { chain } | VerdictKind::Goto { chain } = kind {
            v.set_chain(chain);
        }
        v
    }
}

#[derive(Debug, Clone, Eq, PartialEq, Hash)]
pub enum VerdictKind {
    /// Silently drop the packet.
    Drop,
    /// Accept the packet and let it pass.
    Accept,
    Queue,
    Continue,
    Break,
    Jump {
        chain: String,
    },
    Goto {
        chain: String,
    },
    Return,
}
