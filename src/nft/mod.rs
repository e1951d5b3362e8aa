//! Turning the IR into something the kernel or a person reads: nft text here, netlink later.

pub mod generation;
pub mod monitor;
pub mod netlink;
pub mod normalize;
pub mod parse;
#[cfg(test)]
pub(crate) mod testns;
pub mod text;
