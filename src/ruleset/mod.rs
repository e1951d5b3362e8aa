//! The desired ruleset: the IR types and the builder that turns a `Model` into them.

mod build;
pub mod diff;
pub mod eval;
pub mod ir;
pub mod names;
pub mod render;
mod skeleton;
pub mod tx;

pub use build::{
    assemble, build, canonical_slots, count_map, count_sets, fragment, select_chain,
    selection_chains, sort_sets, stable_order, table_sets, Assembled, Claim, Fragment, SlotCounts,
    SlotOrderKey, SlotOrders,
};
pub use skeleton::{miss_mark, skeleton, TABLE_NAME};
