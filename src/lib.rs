//! kube-nftproxy: Kubernetes Service objects to an nftables ruleset, and the node agent that
//! keeps the kernel in step with the API server.
//!
//! Data flows one way, and so do the module dependencies: a layer uses only the layers
//! listed before it (`layering` checks this in a test).
//!
//! 1. [`vocab`]: address families, protocols, notes about skipped objects.
//! 2. [`objects`]: the slim Kubernetes objects the rest reads, and reading them from
//!    YAML/JSON.
//! 3. [`model`]: the pure model of one node's Service ports and endpoints, and its options.
//! 4. [`ruleset`]: the IR (tables, sets, chains, rules), the builder from a model, diffs and
//!    transactions.
//! 5. [`nft`]: the IR as nft text, the reader of that text, and the IR over netlink
//!    (batches, read-back, the commit monitor).
//! 6. [`agent`]: the running node agent: watches, the state kept between syncs, the sync
//!    loop, conntrack cleanup.
//! 7. [`cli`]: the subcommands and their flags; `main.rs` only dispatches to them.
//!
//! Everything up to `nft::text` is pure and deterministic; kernel and API-server I/O happen
//! in `nft::netlink`, `nft::monitor`, `agent` and `cli`.

pub mod vocab;

pub mod objects;

pub mod model;

pub mod ruleset;

pub mod nft;

pub mod agent;

pub mod cli;

#[cfg(test)]
mod layering;
