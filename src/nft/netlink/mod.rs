//! The IR over netlink: a [`Transaction`] becomes one rustables [`Batch`] (one kernel
//! transaction, all or nothing), and our tables are read back into plain data
//! ([`KernelTable`]) to check that the kernel holds what we programmed, or as IR
//! ([`read_ruleset`], for `trace --live`).
//!
//! Every expression is encoded the way nft itself encodes it, so `nft list table` prints
//! exactly the text `nft::text` renders for the same IR (the tests check this for every
//! golden scenario in a throwaway network namespace). Notes on the encoding:
//! - addresses are loaded with explicit payload expressions (never `Rule::saddr()`, which
//!   adds a `meta nfproto` that makes nft 1.0.6 abort when listing an `ip` table);
//! - concatenations are loaded into consecutive 32-bit registers, each field padded to
//!   4 bytes (the first field in `reg 1`, as nft does);
//! - `ct`, `meta mark`, `fib` and `numgen` values are host-endian u32s;
//! - a DNAT with a port always follows a `meta l4proto` match (nft refuses to parse it
//!   otherwise).
//!
//! Everything here blocks on netlink sockets; call it from a blocking thread.

mod batch;
mod decl;
mod elements;
mod error;
mod listing;
mod readback;
mod rule;
#[cfg(test)]
mod tests;

// The submodules are one file each of one encoder; they share their helpers through here.
use batch::*;
use decl::*;
use elements::*;
use error::*;
use rule::*;

pub use batch::{apply, apply_with, to_batch, to_batch_with, ApplyStats, Desc};
pub use decl::SetDecls;
pub use error::NetlinkError;
pub use listing::{
    delete_tables, differences, obsolete_tables, present, present_all, read_table, summarize,
    tables_present, KernelBaseChain, KernelChain, KernelData, KernelElement, KernelSet,
    KernelTable,
};
pub use readback::{read_ir_table, read_ruleset};

use rustables::data_type::NftType;
use rustables::{Chain as NlChain, ProtocolFamily, Table as NlTable};

use super::text;
use crate::ruleset::ir::{Family, KeyType, Set};

pub(super) fn nl_family(f: Family) -> ProtocolFamily {
    match f {
        Family::V4 => ProtocolFamily::Ipv4,
        Family::V6 => ProtocolFamily::Ipv6,
    }
}

pub(super) fn nl_table(f: Family, name: &str) -> NlTable {
    NlTable::new(nl_family(f)).with_name(name)
}

pub(super) fn nl_chain(f: Family, table: &str, chain: &str) -> NlChain {
    NlChain::new(&nl_table(f, table)).with_name(chain)
}

pub(super) fn addr_len(f: Family) -> u32 {
    match f {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

pub(super) fn nft_type(f: Family, k: KeyType) -> NftType {
    match (k, f) {
        (KeyType::Addr, Family::V4) => NftType::IPV4_ADDR,
        (KeyType::Addr, Family::V6) => NftType::IPV6_ADDR,
        (KeyType::Proto, _) => NftType::INET_PROTO,
        (KeyType::Service, _) => NftType::INET_SERVICE,
        (KeyType::Slot, _) => NftType::INTEGER,
    }
}

pub(super) fn nft_types(f: Family, ks: &[KeyType]) -> Vec<NftType> {
    ks.iter().map(|k| nft_type(f, *k)).collect()
}

pub(super) fn set_kind(s: &Set) -> &'static str {
    if s.is_map() {
        "map"
    } else {
        "set"
    }
}
