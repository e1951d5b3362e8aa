//! The agent's kernel sink: what a sync does to the kernel of the agent's network namespace.

use crate::model::Model;
use crate::nft::netlink;
use crate::ruleset::ir::Ruleset;
use crate::ruleset::tx::{Op, Transaction};

/// The agent's kernel sink: one netlink transaction per sync, then conntrack cleanup for
/// UDP flows the change made stale.
#[derive(Default)]
pub struct KernelSink;

impl super::reconcile::Sink for KernelSink {
    fn apply(&mut self, tx: &Transaction, desired: &Ruleset) -> Result<(), String> {
        // Appended in the same batch, without copying the (possibly full-sync) transaction.
        let extra = if tx.ops.iter().any(|o| matches!(o, Op::DeleteTable { .. })) {
            netlink::obsolete_tables(desired)
        } else {
            Vec::new()
        };
        let decls = netlink::SetDecls::from_ruleset(desired);
        netlink::apply_with(tx, &extra, &decls, Some(desired))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn intact(&mut self, applied: &Ruleset) -> bool {
        // A failed check is not evidence of tampering: assume intact and try again later.
        netlink::tables_present(applied).unwrap_or(true)
    }

    fn after_apply(&mut self, old: Option<&Model>, new: &Model) {
        let Some(old) = old else {
            // First sync of this process: endpoints may have changed while no agent ran.
            match super::conntrack::delete_stale_flows(new) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, "removed stale UDP conntrack entries at start")
                }
                Err(e) => tracing::warn!(error = %e, "conntrack cleanup at start failed"),
            }
            return;
        };
        let flows = super::conntrack::stale_flows(old, new);
        if flows.is_empty() {
            return;
        }
        match super::conntrack::delete_flows(&flows) {
            Ok(n) => tracing::info!(
                deleted = n,
                filters = flows.len(),
                "removed stale UDP conntrack entries"
            ),
            Err(e) => tracing::warn!(error = %e, "conntrack cleanup failed"),
        }
    }
}
