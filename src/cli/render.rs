//! `render`: flags and files to the desired IR, printed as an nft script; the notes about
//! skipped objects go to stderr.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::config::{self, RenderArgs};
use crate::objects::input::summary;
use crate::ruleset::ir::Ruleset;
use crate::ruleset::render;
use crate::vocab::Note;

pub(crate) fn read_file(name: &str) -> Result<String> {
    if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(PathBuf::from(name)).with_context(|| format!("reading {name}"))
    }
}

/// The model and ruleset of some files and options, and the notes.
pub struct Loaded {
    pub model: crate::model::Model,
    pub ruleset: Ruleset,
    pub notes: Vec<Note>,
    /// How many objects the proxy reads were in the files.
    pub objects: usize,
}

pub fn load(args: &RenderArgs, files: &[String]) -> Result<Loaded> {
    let opts = config::resolve(args)?;
    let texts = files
        .iter()
        .map(|f| Ok((f.as_str(), read_file(f)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut notes = Vec::new();
    let objects = render::read_sources(texts.iter().map(|(n, t)| (*n, t.as_str())), &mut notes)?;
    let total: usize = summary(&objects).values().sum();
    let (m, more) = crate::model::build(&objects, &opts);
    notes.extend(more);
    let (rs, more) = crate::ruleset::build(&m);
    notes.extend(more);
    Ok(Loaded {
        model: m,
        ruleset: rs,
        notes,
        objects: total,
    })
}

/// Flags and files to the desired IR; skip notes go to stderr.
pub fn desired(args: &RenderArgs, files: &[String]) -> Result<Ruleset> {
    desired_checked(args, files, true)
}

/// [`desired`], refusing (unless `allow_empty`) an input that holds no object the proxy
/// reads: an empty file or stdin would otherwise program a node with no Services.
pub fn desired_checked(args: &RenderArgs, files: &[String], allow_empty: bool) -> Result<Ruleset> {
    let loaded = load(args, files)?;
    if loaded.objects == 0 && !allow_empty {
        for n in &loaded.notes {
            eprintln!("{n}");
        }
        anyhow::bail!(
            "{} hold no Service, EndpointSlice, Endpoints, Node or ServiceCIDR; nothing changed \
             (--allow-empty programs an empty ruleset)",
            files.join(", ")
        );
    }
    let mut err = std::io::stderr().lock();
    for n in &loaded.notes {
        let _ = writeln!(err, "{n}");
    }
    Ok(loaded.ruleset)
}

/// `render --diff OLD NEW`: the transaction the agent would send to go from OLD's
/// ruleset to NEW's (as `apply` and `run --dry-run` describe it), then the same changes
/// grouped by the Service they belong to.
pub fn diff_report(args: &RenderArgs, old: &str, new: &str) -> Result<String> {
    use crate::nft::text;
    use crate::ruleset::tx::Op;
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    let a = load(args, &[old.to_string()])?;
    let b = load(args, &[new.to_string()])?;
    let tx = crate::ruleset::diff::diff(&a.ruleset, &b.ruleset);
    let mut out = format!("transaction from {old} to {new}:\n");
    out.push_str(&text::describe(&tx));
    let (oa, ob) = (
        super::trace::Owners::new(&a.model),
        super::trace::Owners::new(&b.model),
    );
    let owner_of_key = |k: &[crate::ruleset::ir::Value]| {
        let mut v = ob.services_of_key(k);
        if v.is_empty() {
            v = oa.services_of_key(k);
        }
        v
    };
    let owner_of_chain = |c: &str| ob.of_chain(c).or(oa.of_chain(c)).cloned();
    let svc = |s: &str| s.split(' ').next().unwrap_or(s).to_string();
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let full = tx.ops.iter().any(|o| matches!(o, Op::DeleteTable { .. }));
    if full {
        out.push_str(
            "(a full replace: the tables are rewritten wholesale, so no per-Service view)\n",
        );
        return Ok(out);
    }
    for o in &tx.ops {
        let (owner, line) = match o {
            Op::AddChain { chain, .. } => (
                owner_of_chain(&chain.name),
                format!("+ chain {}", chain.name),
            ),
            Op::FlushChain { chain, .. } => (
                owner_of_chain(chain),
                format!("~ chain {chain} (rules replaced)"),
            ),
            Op::DeleteChain { chain, .. } => (owner_of_chain(chain), format!("- chain {chain}")),
            Op::AddRule {
                family,
                chain,
                rule,
                ..
            } => (
                owner_of_chain(chain),
                format!("+ rule {chain}: {}", text::rule_text(*family, rule)),
            ),
            Op::AddElements { set, elements, .. } | Op::DeleteElements { set, elements, .. } => {
                let sign = if matches!(o, Op::AddElements { .. }) {
                    '+'
                } else {
                    '-'
                };
                for e in elements {
                    let owners = owner_of_key(&e.key);
                    let line = format!("{sign} element {set} {{ {} }}", text::element_text(e));
                    let key = if owners.is_empty() {
                        "(no Service)".to_string()
                    } else {
                        owners.join(", ")
                    };
                    by.entry(key).or_default().push(line);
                }
                continue;
            }
            Op::FillSet { set, .. } => (None, format!("+ every element of {set}")),
            Op::FlushSet { set, .. } => (None, format!("~ set {set} flushed")),
            Op::AddTable { .. }
            | Op::DeleteTable { .. }
            | Op::AddSet { .. }
            | Op::DeleteSet { .. } => continue,
        };
        by.entry(
            owner
                .map(|s| svc(&s))
                .unwrap_or_else(|| "(no Service)".into()),
        )
        .or_default()
        .push(line);
    }
    out.push_str("\nper Service:\n");
    for (s, lines) in by {
        let _ = writeln!(out, "{s}:");
        for l in lines {
            let _ = writeln!(out, "  {l}");
        }
    }
    Ok(out)
}
