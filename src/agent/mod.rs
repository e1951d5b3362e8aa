//! The node agent's parts that act on the node itself.

pub mod migrate;
