//! `render`: flags and files to the desired IR, printed as an nft script; the notes about
//! skipped objects go to stderr.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::config::{self, RenderArgs};
use crate::ruleset::ir::Ruleset;
use crate::ruleset::render;

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

/// Flags and files to the desired IR; skip notes go to stderr.
pub fn desired(args: &RenderArgs, files: &[String]) -> Result<Ruleset> {
    let opts = config::resolve(args)?;
    let texts = files
        .iter()
        .map(|f| Ok((f.as_str(), read_file(f)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut notes = Vec::new();
    let objects = render::read_sources(texts.iter().map(|(n, t)| (*n, t.as_str())), &mut notes)?;
    let (rs, more) = render::ruleset(&objects, &opts);
    notes.extend(more);
    let mut err = std::io::stderr().lock();
    for n in &notes {
        let _ = writeln!(err, "{n}");
    }
    Ok(rs)
}
