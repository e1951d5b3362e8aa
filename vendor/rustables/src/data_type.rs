use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub trait DataType {
    const TYPE: u32;
    const LEN: u32;

    fn data(&self) -> Vec<u8>;
}

impl DataType for Ipv4Addr {
    const TYPE: u32 = 7;
    const LEN: u32 = 4;

    fn data(&self) -> Vec<u8> {
        self.octets().to_vec()
    }
}

impl DataType for Ipv6Addr {
    const TYPE: u32 = 8;
    const LEN: u32 = 16;

    fn data(&self) -> Vec<u8> {
        self.octets().to_vec()
    }
}

impl<const N: usize> DataType for [u8; N] {
    const TYPE: u32 = 5;
    const LEN: u32 = N as u32;

    fn data(&self) -> Vec<u8> {
        self.to_vec()
    }
}

pub fn ip_to_vec(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(x) => x.octets().to_vec(),
        IpAddr::V6(x) => x.octets().to_vec(),
    }
}

/// An nft (userspace) data type as stored in a set's `NFTA_SET_KEY_TYPE`/`NFTA_SET_DATA_TYPE`:
/// the id from nftables' `enum datatypes` plus the length in bytes of one value.
/// `nft list` uses the id to print keys and data (`ipv4_addr`, `inet_service`, ...).
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
pub struct NftType {
    pub id: u32,
    pub len: u32,
}

impl NftType {
    /// `TYPE_BITS` in nftables: a concatenation type is the field ids shifted by 6 bits each.
    pub const TYPE_BITS: u32 = 6;

    pub const INTEGER: NftType = NftType { id: 4, len: 4 };
    pub const IPV4_ADDR: NftType = NftType { id: 7, len: 4 };
    pub const IPV6_ADDR: NftType = NftType { id: 8, len: 16 };
    pub const ETHER_ADDR: NftType = NftType { id: 9, len: 6 };
    pub const INET_PROTO: NftType = NftType { id: 12, len: 1 };
    pub const INET_SERVICE: NftType = NftType { id: 13, len: 2 };
    pub const MARK: NftType = NftType { id: 19, len: 4 };
    pub const IFNAME: NftType = NftType { id: 41, len: 16 };

    pub const fn new(id: u32, len: u32) -> Self {
        NftType { id, len }
    }

    /// Key/data type of a concatenation, e.g. `ipv4_addr . inet_proto . inet_service` is
    /// `7 << 12 | 12 << 6 | 13`. A single field gives its own id.
    pub fn concat_type(fields: &[NftType]) -> u32 {
        fields
            .iter()
            .fold(0, |acc, f| (acc << Self::TYPE_BITS) | f.id)
    }

    /// Key/data length of a concatenation: every field padded to 4 bytes (a register).
    /// A single field keeps its exact length (`inet_service` alone is 2 bytes).
    pub fn concat_len(fields: &[NftType]) -> u32 {
        if fields.len() == 1 {
            return fields[0].len;
        }
        fields.iter().map(|f| f.len.div_ceil(4) * 4).sum()
    }
}

/// Builds the bytes of a concatenated key or data value: each field is copied and zero-padded
/// to a multiple of 4 bytes, as the kernel lays them out in consecutive 32-bit registers.
/// `concat_bytes(&[&ip.octets(), &[libc::IPPROTO_TCP as u8], &80u16.to_be_bytes()])`.
/// A single field is returned unpadded (matching [`NftType::concat_len`]).
pub fn concat_bytes(fields: &[&[u8]]) -> Vec<u8> {
    if fields.len() == 1 {
        return fields[0].to_vec();
    }
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len().div_ceil(4) * 4).sum());
    for f in fields {
        out.extend_from_slice(f);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }
    out
}
