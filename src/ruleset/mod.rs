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
    assemble, build, count_map, count_sets, fragment, select_chain, selection_chains, sort_sets,
    table_sets, Assembled, Claim, Fragment, SlotCounts,
};
pub use skeleton::{skeleton, TABLE_NAME};
