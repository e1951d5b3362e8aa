//! The agent's kernel sink: what a sync does to the kernel of the agent's network namespace.

use std::time::{Duration, Instant};

use crate::model::Model;
use crate::nft::generation::generation;
use crate::nft::monitor::Commits;
use crate::nft::netlink;
use crate::ruleset::diff;
use crate::ruleset::ir::Ruleset;
use crate::ruleset::tx::Transaction;

/// The agent's kernel sink: one netlink transaction per sync, then conntrack cleanup for
/// UDP flows the change made stale.
#[derive(Default)]
pub struct KernelSink {
    /// The nftables generation once our last transaction (or our last full check) was
    /// done: while the kernel still reports it, nothing changed our tables.
    generation: Option<u32>,
    /// For the last transaction, NEWGEN to acknowledgement (partial syncs only).
    commit_ack_delay: Option<Duration>,
}

/// The full sync of `desired` as a rewrite of what the kernel holds now.
fn keep_what_is_there(desired: &Ruleset) -> Result<Transaction, netlink::NetlinkError> {
    Ok(diff::full_keeping(desired, &netlink::present_all(desired)?))
}

impl super::reconcile::Sink for KernelSink {
    fn apply(&mut self, tx: &Transaction, desired: &Ruleset) -> Result<(), String> {
        // Appended in the same batch, without copying the (possibly full-sync) transaction.
        let extra = if tx.is_full() {
            netlink::obsolete_tables(desired)
        } else {
            Vec::new()
        };
        // A full sync over tables the kernel already holds (the periodic sync, a Node
        // change, an agent restart) rewrites them in place, keeping the dynamic sets: what
        // session affinity remembered survives it (see rules/README.md).
        let keeping;
        let tx = if !tx.is_full() {
            tx
        } else {
            match keep_what_is_there(desired) {
                Ok(t) => {
                    keeping = t;
                    &keeping
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read our tables; full sync recreates them");
                    tx
                }
            }
        };
        let decls = netlink::SetDecls::from_ruleset(desired);
        // The commit notification is listened for around partial syncs only: while a
        // listener exists the kernel builds a notification for every object a transaction
        // touches, which a full sync of 10,000 Services would pay for.
        let full = tx.is_full();
        let commits = if full { None } else { Commits::listen().ok() };
        let before = generation().ok();
        let sent = Instant::now();
        let done = netlink::apply_with(tx, &extra, &decls, Some(desired))
            .map(|_| ())
            .map_err(|e| e.to_string());
        let acked = Instant::now();
        self.commit_ack_delay = match (&done, commits) {
            // NEWGEN is queued before the acknowledgement; the wait only covers the
            // listener thread catching up.
            (Ok(()), Some(c)) => c
                .first_since(sent, Duration::from_millis(20))
                .map(|effective| acked.saturating_duration_since(effective)),
            _ => None,
        };
        let after = done.as_ref().ok().and_then(|_| generation().ok());
        // The generation after our commit vouches for our tables only if ours was the one
        // commit since `before`, and `before` was itself known to be ours (or this was a
        // full sync, which rewrites every chain and static set). Otherwise another program
        // committed in between (say, deleted one of our rules just before a partial sync),
        // and the next check reads the tables back: taking `after` as ours would hide that
        // for good.
        self.generation = match (before, after) {
            (Some(b), Some(a))
                if a == b.wrapping_add(1) && (full || self.generation == Some(b)) =>
            {
                Some(a)
            }
            _ => None,
        };
        done
    }

    /// Whether the kernel still holds exactly what we programmed. Cheap while nothing
    /// committed anything since our last transaction (the generation is unchanged); after
    /// any other commit, ours are read back and compared with what we wrote (rules, chains,
    /// set elements; not the datapath's own dynamic sets), so a rule, chain or element
    /// deleted or added behind our back is repaired by a full sync, not only a lost table.
    fn intact(&mut self, applied: &Ruleset) -> bool {
        let now = generation().ok();
        if now.is_some() && now == self.generation {
            return true;
        }
        // A failed check is not evidence of tampering: assume intact and try again later.
        match netlink::tables_present(applied) {
            Ok(false) => return false,
            Err(_) => return true,
            Ok(true) => {}
        }
        for t in &applied.tables {
            let want = netlink::summarize(t);
            match netlink::read_table(t.family, &t.name) {
                Ok(Some(have)) if have == want => {}
                Ok(Some(have)) => {
                    let diff = netlink::differences(&have, &want);
                    tracing::warn!(
                        table = %t.name,
                        differences = diff.len(),
                        first = %diff.first().map(String::as_str).unwrap_or(""),
                        "our table was changed behind our back; full sync"
                    );
                    return false;
                }
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
        // Someone else's commit: ours are intact; no need to read them again until the next.
        self.generation = now;
        true
    }

    fn commit_ack_delay(&self) -> Option<Duration> {
        self.commit_ack_delay
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
