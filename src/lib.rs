//! kube-nftproxy: Kubernetes Service objects to an nftables ruleset.
//!
//! Data flows one way: `input` (objects) -> `model` (service ports, endpoints) ->
//! `ruleset` (the IR) -> `nft` (text, and later netlink). Everything here up to the kernel
//! layer is pure and deterministic.

pub mod agent;
pub mod apply;
pub mod bench;
pub mod config;
pub mod conntrack;
pub mod desired;
pub mod input;
pub mod model;
pub mod nft;
pub mod objects;
pub mod options;
pub mod reconcile;
pub mod render;
pub mod ruleset;
pub mod synthetic;
pub mod watch;
