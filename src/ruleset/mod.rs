//! The desired ruleset: the IR types and the builder that turns a `Model` into them.

mod build;
pub mod ir;
pub mod names;
pub mod tx;
pub mod diff;

pub use build::{build, TABLE_NAME};
