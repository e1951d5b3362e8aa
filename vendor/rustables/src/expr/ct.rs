use rustables_macros::{nfnetlink_enum, nfnetlink_struct};

use crate::sys::{
    NFT_CT_MARK, NFT_CT_STATE, NFTA_CT_DIRECTION, NFTA_CT_DREG, NFTA_CT_KEY, NFTA_CT_SREG,
};

use super::{Expression, Register};

bitflags::bitflags! {
    pub struct ConnTrackState: u32 {
        const INVALID = 1;
        const ESTABLISHED = 2;
        const RELATED = 4;
        const NEW = 8;
        const UNTRACKED = 64;
    }
}

bitflags::bitflags! {
    /// `ct status` bits (`enum ip_conntrack_status`), a host-endian u32 in the register:
    /// `ct status dnat` is `Conntrack::new(ConntrackKey::Status)`,
    /// `Bitwise::new(ConnTrackStatus::DNAT.bits().to_ne_bytes(), 0u32.to_ne_bytes())`,
    /// `Cmp::new(CmpOp::Neq, 0u32.to_ne_bytes())`.
    pub struct ConnTrackStatus: u32 {
        const EXPECTED = 1;
        const SEEN_REPLY = 2;
        const ASSURED = 4;
        const CONFIRMED = 8;
        const SNAT = 0x10;
        const DNAT = 0x20;
        const DYING = 0x200;
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[nfnetlink_enum(u32, nested = true)]
pub enum ConntrackKey {
    State = NFT_CT_STATE,
    Direction = crate::sys::NFT_CT_DIRECTION,
    Status = crate::sys::NFT_CT_STATUS,
    Mark = NFT_CT_MARK,
    Expiration = crate::sys::NFT_CT_EXPIRATION,
    L3Protocol = crate::sys::NFT_CT_L3PROTOCOL,
    Src = crate::sys::NFT_CT_SRC,
    Dst = crate::sys::NFT_CT_DST,
    Protocol = crate::sys::NFT_CT_PROTOCOL,
    ProtoSrc = crate::sys::NFT_CT_PROTO_SRC,
    ProtoDst = crate::sys::NFT_CT_PROTO_DST,
    Zone = crate::sys::NFT_CT_ZONE,
    SrcIp = crate::sys::NFT_CT_SRC_IP,
    DstIp = crate::sys::NFT_CT_DST_IP,
    SrcIp6 = crate::sys::NFT_CT_SRC_IP6,
    DstIp6 = crate::sys::NFT_CT_DST_IP6,
    Id = crate::sys::NFT_CT_ID,
}

#[derive(Default, Clone, Debug, PartialEq, Eq)]
#[nfnetlink_struct(nested = true)]
pub struct Conntrack {
    #[field(NFTA_CT_DREG)]
    pub dreg: Register,
    #[field(NFTA_CT_KEY)]
    pub key: ConntrackKey,
    #[field(NFTA_CT_DIRECTION)]
    pub direction: u8,
    #[field(NFTA_CT_SREG)]
    pub sreg: Register,
}

impl Expression for Conntrack {
    fn get_name() -> &'static str {
        "ct"
    }
}

impl Conntrack {
    pub fn new(key: ConntrackKey) -> Self {
        Self::default().with_dreg(Register::Reg1).with_key(key)
    }

    pub fn set_mark_value(&mut self, reg: Register) {
        self.set_sreg(reg);
        self.set_key(ConntrackKey::Mark);
    }

    pub fn with_mark_value(mut self, reg: Register) -> Self {
        self.set_mark_value(reg);
        self
    }

    pub fn retrieve_value(&mut self, key: ConntrackKey) {
        self.set_key(key);
        self.set_dreg(Register::Reg1);
    }

    pub fn with_retrieve_value(mut self, key: ConntrackKey) -> Self {
        self.retrieve_value(key);
        self
    }
}
