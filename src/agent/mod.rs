//! The node agent: watches the API server, keeps the desired state between syncs, and
//! programs the kernel (`run`).

pub mod conntrack;
pub mod desired;
pub mod migrate;
pub mod reconcile;
pub mod sink;
pub mod watch;
