//! `render`: flags and files to the desired IR, printed as an nft script; the notes about
//! skipped objects go to stderr.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::config::{self, RenderArgs};
use crate::objects::input::summary;
use crate::ruleset::ir::Ruleset;
use crate::ruleset::render;

fn read_file(name: &str) -> Result<String> {
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

/// Flags and files to the desired IR; skip notes go to stderr.
pub fn desired(args: &RenderArgs, files: &[String]) -> Result<Ruleset> {
    desired_checked(args, files, true)
}

/// [`desired`], refusing (unless `allow_empty`) an input that holds no object the proxy
/// reads: an empty file or stdin would otherwise program a node with no Services.
pub fn desired_checked(args: &RenderArgs, files: &[String], allow_empty: bool) -> Result<Ruleset> {
    let opts = config::resolve(args)?;
    let texts = files
        .iter()
        .map(|f| Ok((f.as_str(), read_file(f)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut notes = Vec::new();
    let objects = render::read_sources(texts.iter().map(|(n, t)| (*n, t.as_str())), &mut notes)?;
    let total: usize = summary(&objects).values().sum();
    if total == 0 && !allow_empty {
        for n in &notes {
            eprintln!("{n}");
        }
        anyhow::bail!(
            "{} hold no Service, EndpointSlice, Endpoints, Node or ServiceCIDR; nothing changed \
             (--allow-empty programs an empty ruleset)",
            files.join(", ")
        );
    }
    let (rs, more) = render::ruleset(&objects, &opts);
    notes.extend(more);
    let mut err = std::io::stderr().lock();
    for n in &notes {
        let _ = writeln!(err, "{n}");
    }
    Ok(rs)
}
