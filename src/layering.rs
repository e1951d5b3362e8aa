//! The layer order of `lib.rs`, enforced: every module under `src/` may use its own layer
//! and the layers before it, never one after it. Test modules are held to the same rule, so
//! a test that needs a higher layer lives in that layer or in `integration/`.
//!
//! The check reads the source text: every `crate::<module>` path (in `use` lines, in nested
//! `use crate::{a, b}` groups and inline in code) and every `super::` chain that climbs to
//! the crate root. Comments are ignored.

use std::path::{Path, PathBuf};

/// The layers, lowest first. A module's layer is the first component of its path.
const LAYERS: &[&str] = &[
    "vocab", "objects", "model", "ruleset", "nft", "agent", "cli",
];

/// Files that are not in a layer: the crate root, which declares the layers, and this check.
const OUTSIDE: &[&str] = &["lib.rs", "main.rs", "layering.rs"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The module path of a source file relative to `src/`: `nft/netlink/mod.rs` is
/// `["nft", "netlink"]`, `nft/text.rs` is `["nft", "text"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// The code of a line, without its `//` comment (doc comments included).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a file's code names: `crate::x`, the members of `crate::{x, y}`,
/// and `super::super::x` chains that climb out of the file's own layer.
fn referenced_layers(module: &[String], text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = code(line);
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // `crate::{a, b::c}`: the group may span lines; the first line is enough for
                // the modules on it, and a split group is caught line by line below.
                for item in group.split(',') {
                    let id = ident_at(item.trim());
                    if !id.is_empty() {
                        found.push((n + 1, id.to_string()));
                    }
                }
            } else {
                found.push((n + 1, ident_at(after).to_string()));
            }
            rest = after;
        }
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            // Only a chain that starts here (not the tail of a longer one).
            let before = rest[..i].chars().last();
            let chain_start = !matches!(before, Some(':'));
            let mut after = &rest[i..];
            let mut ups = 0;
            while let Some(a) = after.strip_prefix("super::") {
                ups += 1;
                after = a;
            }
            if chain_start && ups >= module.len() {
                found.push((n + 1, ident_at(after).to_string()));
            }
            rest = &rest[i + "super::".len()..];
        }
    }
    found
}

/// Every upward import in `files` (path relative to `src/`, text), one line each.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in files {
        if OUTSIDE.iter().any(|o| rel == Path::new(o)) {
            continue;
        }
        let module = module_path(rel);
        let Some(own) = module.first().and_then(|l| rank(l)) else {
            out.push(format!(
                "{}: not in a layer (add it to LAYERS in src/layering.rs)",
                rel.display()
            ));
            continue;
        };
        for (line, target) in referenced_layers(&module, text) {
            match rank(&target) {
                Some(r) if r > own => out.push(format!(
                    "{}:{line}: layer `{}` uses `{target}`, a higher layer",
                    rel.display(),
                    LAYERS[own]
                )),
                _ => {}
            }
        }
    }
    out
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("src/ entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).expect("source is UTF-8");
            let rel = p.strip_prefix(root).expect("under src/").to_path_buf();
            out.push((rel, text));
        }
    }
}

#[test]
fn no_layer_imports_a_higher_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    assert!(files.len() > 20, "read the whole tree");
    let bad = violations(&files);
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn lib_declares_the_layers_in_order() {
    let lib = include_str!("lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(declared, LAYERS);
}

#[test]
fn upward_imports_are_found_in_every_form() {
    let file = |path: &str, text: &str| vec![(PathBuf::from(path), text.to_string())];
    let one = |path: &str, text: &str| violations(&file(path, text));
    // Downward and sideways are fine.
    assert!(one(
        "ruleset/build.rs",
        "use crate::model::Model;\nuse super::ir::*;"
    )
    .is_empty());
    assert!(one("nft/netlink/batch.rs", "use super::super::text;").is_empty());
    assert!(one("model/mod.rs", "// see crate::agent::desired").is_empty());
    // Upward, in each form the check reads.
    assert_eq!(
        one("model/build.rs", "use crate::ruleset::ir::Rule;"),
        ["model/build.rs:1: layer `model` uses `ruleset`, a higher layer"]
    );
    assert_eq!(one("objects/mod.rs", "use crate::{vocab, nft};").len(), 1);
    assert_eq!(
        one("nft/text.rs", "fn f() { crate::cli::config::resolve(); }").len(),
        1
    );
    assert_eq!(
        one("ruleset/diff.rs", "use super::super::agent::x;").len(),
        1
    );
    assert_eq!(one("stray.rs", "").len(), 1, "a file outside every layer");
}
