//! `apply` and `cleanup`: program the kernel of the current network namespace from a
//! rendered IR, as one transaction, partially when the kernel still holds what we last
//! applied there.

use std::path::PathBuf;

use crate::nft::{netlink, parse, text};
use crate::ruleset::ir::{Family, Ruleset};
use crate::ruleset::tx::Transaction;
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

pub struct Applied {
    pub transaction: Transaction,
    pub partial: bool,
}

/// Programs `desired` into the kernel.
pub fn apply(desired: &Ruleset) -> Result<Applied, ApplyError> {
    let previous = previous_in_kernel();
    let mut tx = match &previous {
        Some(prev) => diff::diff(prev, desired),
        // Over tables already there, keep what the datapath learned (session affinity).
        None => diff::full_keeping_with(desired, &netlink::present_all(desired)?, true),
    };
    tx.ops.extend(netlink::obsolete_tables(desired));
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
