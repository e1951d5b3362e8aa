//! `apply` and `cleanup`: program the kernel of the current network namespace from a
//! rendered IR, as one transaction, partially when the kernel still holds what we last
//! applied there.

use std::path::PathBuf;

use crate::nft::{netlink, parse, text};
use crate::ruleset::ir::{Family, Ruleset};
use crate::ruleset::tx::{Op, Transaction};
use crate::ruleset::{diff, TABLE_NAME};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    #[error("state file {path}: {message}")]
    State { path: String, message: String },
}

/// Where the last applied IR of this network namespace is kept: keyed by the namespace's
/// inode, so namespaces never see each other's state.
fn state_path() -> PathBuf {
    let dir = std::env::var_os("KUBE_NFTPROXY_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kube-nftproxy"));
    let ns = std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            s.strip_prefix("net:[")?.strip_suffix(']').map(String::from)
        })
        .unwrap_or_else(|| "default".into());
    dir.join(format!("applied-netns-{ns}.nft"))
}

/// The IR we applied last, if the kernel provably still holds exactly it.
fn previous_in_kernel() -> Option<Ruleset> {
    let text = std::fs::read_to_string(state_path()).ok()?;
    let prev = parse::parse_script(&text).ok()?;
    for t in &prev.tables {
        match netlink::read_table(t.family, &t.name) {
            Ok(Some(k)) if k == netlink::summarize(t) => {}
            _ => return None,
        }
    }
    Some(prev)
}

/// Deletes our table of a family the node no longer proxies, in the same transaction.
fn obsolete_tables(desired: &Ruleset) -> Vec<Op> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| !desired.tables.iter().any(|t| t.family == *f))
        .filter(|f| matches!(netlink::read_table(*f, TABLE_NAME), Ok(Some(_))))
        .map(|family| Op::DeleteTable {
            family,
            name: TABLE_NAME.into(),
        })
        .collect()
}

pub struct Applied {
    pub transaction: Transaction,
    pub partial: bool,
}

/// Programs `desired` into the kernel. `inject_invalid` appends an operation the kernel
/// refuses (a test hook proving a refused batch changes nothing).
pub fn apply(desired: &Ruleset, inject_invalid: bool) -> Result<Applied, ApplyError> {
    let previous = previous_in_kernel();
    let mut tx = match &previous {
        Some(prev) => diff::diff(prev, desired),
        None => diff::full(desired),
    };
    tx.ops.extend(obsolete_tables(desired));
    if inject_invalid {
        if let Some(t) = desired.tables.first() {
            tx.ops.push(Op::AddRule {
                family: t.family,
                table: t.name.clone(),
                chain: "services".into(),
                rule: crate::ruleset::ir::Rule::new(
                    vec![],
                    Some(crate::ruleset::ir::Verdict::Jump(
                        "test-hook-missing-chain".into(),
                    )),
                ),
            });
        }
    }
    let decls = netlink::SetDecls::from_ruleset(desired);
    let path = state_path();
    // Forget the old state first: if we die between the kernel commit and the write, the
    // next run does a full sync instead of diffing against a stale copy.
    let _ = std::fs::remove_file(&path);
    netlink::apply(&tx, &decls)?;
    let state_err = |e: std::io::Error| ApplyError::State {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(state_err)?;
    }
    std::fs::write(&path, text::script(desired)).map_err(state_err)?;
    Ok(Applied {
        partial: previous.is_some(),
        transaction: tx,
    })
}

/// Removes our tables (both families) and nothing else.
pub fn cleanup() -> Result<bool, ApplyError> {
    let _ = std::fs::remove_file(state_path());
    Ok(netlink::delete_tables(&[
        (Family::V4, TABLE_NAME),
        (Family::V6, TABLE_NAME),
    ])?)
}

/// The agent's kernel sink: one netlink transaction per sync, then conntrack cleanup for
/// UDP flows the change made stale.
#[derive(Default)]
pub struct KernelSink;

impl crate::reconcile::Sink for KernelSink {
    fn apply(&mut self, tx: &Transaction, desired: &Ruleset) -> Result<(), String> {
        // Appended in the same batch, without copying the (possibly full-sync) transaction.
        let extra = if tx.ops.iter().any(|o| matches!(o, Op::DeleteTable { .. })) {
            obsolete_tables(desired)
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

    fn after_apply(&mut self, old: Option<&crate::model::Model>, new: &crate::model::Model) {
        let Some(old) = old else {
            // First sync of this process: endpoints may have changed while no agent ran.
            match crate::conntrack::delete_stale_flows(new) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, "removed stale UDP conntrack entries at start")
                }
                Err(e) => tracing::warn!(error = %e, "conntrack cleanup at start failed"),
            }
            return;
        };
        let flows = crate::conntrack::stale_flows(old, new);
        if flows.is_empty() {
            return;
        }
        match crate::conntrack::delete_flows(&flows) {
            Ok(n) => tracing::info!(
                deleted = n,
                filters = flows.len(),
                "removed stale UDP conntrack entries"
            ),
            Err(e) => tracing::warn!(error = %e, "conntrack cleanup failed"),
        }
    }
}
