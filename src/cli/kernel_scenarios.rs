//! Every golden scenario, rendered with its own flags, programmed into a throwaway network
//! namespace over netlink: the kernel lists it back as the render text and reads it back as
//! the IR's summary, and transactions between any two scenarios apply cleanly.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::nft::netlink::{apply, differences, read_ruleset, read_table, summarize, SetDecls};
use crate::nft::normalize::normalize;
use crate::nft::testns::{in_netns, list_table};
use crate::nft::text;
use crate::ruleset::diff;
use crate::ruleset::ir::Ruleset;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: super::config::RenderArgs,
}

fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("testdata exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("cluster.yaml").is_file() && p.join("expected.nft").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn render_scenario(dir: &Path) -> Ruleset {
    let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
    let cli = Cli::try_parse_from(
        std::iter::once("render").chain(args.lines().map(str::trim).filter(|l| !l.is_empty())),
    )
    .expect("scenario args parse");
    let opts = super::config::resolve(&cli.args).expect("scenario args resolve");
    let path = dir.join("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut notes = Vec::new();
    let name = path.to_string_lossy().into_owned();
    let objects =
        crate::ruleset::render::read_sources([(name.as_str(), text.as_str())], &mut notes)
            .expect("scenario input reads");
    crate::ruleset::render::ruleset(&objects, &opts).0
}

#[test]
fn every_scenario_lists_back_as_rendered_and_reads_back_as_summarized() {
    let dirs = scenarios();
    assert!(dirs.len() >= 20, "found {} scenarios", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let scenario = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rs = render_scenario(dir);
        let decls = SetDecls::from_ruleset(&rs);
        let tx = diff::full(&rs);
        let Some(res) = in_netns(|ns| {
            let mut out = Vec::new();
            // twice: the second full transaction replaces the first atomically
            for round in 0..2 {
                match apply(&tx, &decls) {
                    Ok(st) => eprintln!(
                        "{scenario} round {round}: {} messages, {} bytes, build {:?}, send {:?}",
                        st.messages, st.bytes, st.build, st.send
                    ),
                    Err(e) => {
                        out.push(format!("{scenario}: apply failed: {e}"));
                        return out;
                    }
                }
            }
            for t in &rs.tables {
                let listed = list_table(ns, t);
                let want = text::table_text(t);
                if normalize(&listed) != normalize(&want) {
                    out.push(format!(
                        "{scenario}: nft list table {} {} differs\n--- listed ---\n{listed}\n--- rendered ---\n{want}",
                        text::family_name(t.family),
                        t.name
                    ));
                }
                match read_table(t.family, &t.name) {
                    Ok(Some(k)) if k == summarize(t) => {}
                    Ok(Some(k)) => out.push(format!(
                        "{scenario}: read_table differs from summarize:\n{}",
                        differences(&k, &summarize(t)).join("\n")
                    )),
                    Ok(None) => out.push(format!("{scenario}: read_table found no table")),
                    Err(e) => out.push(format!("{scenario}: read_table failed: {e}")),
                }
            }
            out
        }) else {
            return;
        };
        failures.extend(res);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Walks through every scenario in one namespace with `diff::diff` transactions (full
/// replacements where the skeletons differ): each step must list back as rendered.
#[test]
fn incremental_transactions_walk_through_all_scenarios() {
    let rulesets: Vec<(String, Ruleset)> = scenarios()
        .iter()
        .map(|d| {
            (
                d.file_name().unwrap().to_string_lossy().into_owned(),
                render_scenario(d),
            )
        })
        .collect();
    in_netns(|ns| {
        let mut prev = Ruleset::default();
        let mut failures = Vec::new();
        for (scenario, rs) in &rulesets {
            let tx = if prev.tables.is_empty() {
                diff::full(rs)
            } else {
                diff::diff(&prev, rs)
            };
            let mut decls = SetDecls::from_ruleset(&prev);
            for t in &rs.tables {
                for s in &t.sets {
                    decls.insert(t.family, &t.name, s);
                }
            }
            match apply(&tx, &decls) {
                Ok(st) => eprintln!(
                    "diff to {scenario}: {} ops, {} messages",
                    tx.ops.len(),
                    st.messages
                ),
                Err(e) => {
                    failures.push(format!("diff to {scenario}: {e}"));
                    break;
                }
            }
            // tables the previous scenario had and this one lacks are not ours to check
            for t in &rs.tables {
                let listed = list_table(ns, t);
                // chains (and sets) list in creation order, which incremental updates
                // change: compare blocks regardless of order
                let (have, want) = (
                    blocks(&normalize(&listed)),
                    blocks(&normalize(&text::table_text(t))),
                );
                if have != want {
                    let only = |a: &str, b: &str| -> Vec<String> {
                        a.lines()
                            .filter(|l| !b.lines().any(|x| x == *l))
                            .map(String::from)
                            .collect()
                    };
                    failures.push(format!(
                        "diff to {scenario}: {} table differs\nonly listed: {:#?}\nonly rendered: {:#?}",
                        text::family_name(t.family),
                        only(&have, &want),
                        only(&want, &have)
                    ));
                }
                let k = read_table(t.family, &t.name).unwrap();
                if k.as_ref() != Some(&summarize(t)) {
                    failures.push(format!(
                        "diff to {scenario}: read_table differs: {:?}",
                        k.map(|k| differences(&k, &summarize(t)))
                    ));
                }
            }
            prev = rs.clone();
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    });
}

/// Normalized nft text as its set/map/chain blocks, sorted.
fn blocks(normalized: &str) -> String {
    let mut blocks: Vec<String> = vec![String::new()];
    let lines: Vec<&str> = normalized.lines().collect();
    // the last line closes the table, not the last block
    let (body, end) = lines.split_at(lines.len().saturating_sub(1));
    for l in body {
        if ["set ", "map ", "chain "].iter().any(|p| l.starts_with(p)) {
            blocks.push(String::new());
        }
        let b = blocks.last_mut().unwrap();
        b.push_str(l);
        b.push('\n');
    }
    blocks.sort();
    blocks.concat() + &end.concat()
}

/// Every scenario programmed into a namespace (twice, the second a full replacement) reads
/// back over netlink as exactly the rendered IR: chains, rules, sets, elements, comments,
/// in order. The one thing not compared is what the kernel does not keep as IR: dynamic
/// sets' elements, which the datapath adds (none here: no traffic flows).
#[test]
fn every_scenario_reads_back_as_the_rendered_ir() {
    let dirs = scenarios();
    assert!(dirs.len() >= 20, "found {} scenarios", dirs.len());
    let mut failures = Vec::new();
    let mut rules = 0;
    for dir in &dirs {
        let scenario = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rs = render_scenario(dir);
        let decls = SetDecls::from_ruleset(&rs);
        let tx = diff::full(&rs);
        let Some(res) = in_netns(|_ns| {
            for _ in 0..2 {
                apply(&tx, &decls).map_err(|e| e.to_string())?;
            }
            read_ruleset().map_err(|e| e.to_string())
        }) else {
            return;
        };
        match res {
            Ok(got) if got == rs => {
                rules += (rs.tables.iter())
                    .flat_map(|t| &t.chains)
                    .map(|c| c.rules.len())
                    .sum::<usize>()
            }
            Ok(got) => failures.push(format!("{scenario}: {}", ruleset_difference(&got, &rs))),
            Err(e) => failures.push(format!("{scenario}: {e}")),
        }
    }
    eprintln!(
        "{} scenarios, {rules} rules read back as rendered",
        dirs.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The first thing that differs between two rulesets, for a failure message.
fn ruleset_difference(have: &Ruleset, want: &Ruleset) -> String {
    if have.tables.len() != want.tables.len() {
        return format!("{} tables, want {}", have.tables.len(), want.tables.len());
    }
    for (h, w) in have.tables.iter().zip(&want.tables) {
        let what = format!("table {} {}", text::family_name(w.family), w.name);
        if (h.family, &h.name, &h.comment) != (w.family, &w.name, &w.comment) {
            return format!("{what}: have {:?} {} {:?}", h.family, h.name, h.comment);
        }
        let names = |cs: &[crate::ruleset::ir::Chain]| -> Vec<String> {
            cs.iter().map(|c| c.name.clone()).collect()
        };
        if names(&h.chains) != names(&w.chains) {
            return format!(
                "{what}: chains {:?}, want {:?}",
                names(&h.chains),
                names(&w.chains)
            );
        }
        for (hc, wc) in h.chains.iter().zip(&w.chains) {
            if hc != wc {
                return format!("{what} chain {}:\nhave {hc:#?}\nwant {wc:#?}", wc.name);
            }
        }
        let snames: Vec<&String> = h.sets.iter().map(|s| &s.name).collect();
        let wnames: Vec<&String> = w.sets.iter().map(|s| &s.name).collect();
        if snames != wnames {
            return format!("{what}: sets {snames:?}, want {wnames:?}");
        }
        for (hs, ws) in h.sets.iter().zip(&w.sets) {
            if hs.declaration() != ws.declaration() {
                return format!(
                    "{what} set {}: have {:?}, want {:?}",
                    ws.name,
                    hs.declaration(),
                    ws.declaration()
                );
            }
            if hs.elements != ws.elements {
                let missing = ws.elements.iter().find(|e| !hs.elements.contains_key(e.0));
                let extra = hs
                    .elements
                    .iter()
                    .find(|e| ws.elements.get(e.0) != Some(e.1));
                return format!(
                    "{what} set {}: {} elements, want {}; first missing {missing:?}, first other {extra:?}",
                    ws.name,
                    hs.elements.len(),
                    ws.elements.len()
                );
            }
        }
    }
    "equal".into()
}

/// `trace --live`: every scenario programmed into a namespace and read back over netlink
/// (what `--live` does) traces every Service IP and port of the
/// rendered IR to the same outcomes as the rendered IR itself.
#[test]
fn live_tables_trace_as_the_rendered_ruleset() {
    use crate::ruleset::eval::{self, Origin, Packet, Query};
    use crate::ruleset::ir::{ElementData, Family, Value};
    let mut failures = Vec::new();
    let mut flows = 0;
    for dir in scenarios() {
        let scenario = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rs = render_scenario(&dir);
        let decls = SetDecls::from_ruleset(&rs);
        let Some(res) = in_netns(|_ns| {
            apply(&diff::full(&rs), &decls).map_err(|e| e.to_string())?;
            super::trace::live_ruleset().map_err(|e| e.to_string())
        }) else {
            return;
        };
        let live = match res {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{scenario}: {e}"));
                continue;
            }
        };
        for t in &rs.tables {
            let src = match t.family {
                Family::V4 => "10.244.0.7".parse().unwrap(),
                Family::V6 => "fd00:244::7".parse().unwrap(),
            };
            for s in &t.sets {
                for (key, data) in &s.elements {
                    let (
                        [Value::Addr(a), Value::Proto(p), Value::Port(n)],
                        Some(ElementData::Verdict(_)),
                    ) = (key.as_slice(), data)
                    else {
                        continue;
                    };
                    // Both sides of the detectLocalMode interface scenarios' iifname
                    // rules (a bridge, a veth); the others do not look at it.
                    for iif in ["cni0", "veth7"] {
                        let q = Query {
                            packet: Packet {
                                proto: *p,
                                saddr: src,
                                sport: 40000,
                                daddr: *a,
                                dport: *n,
                            },
                            origin: Origin::Pod,
                            local_addrs: vec![],
                            in_interface: Some(iif.into()),
                        };
                        flows += 1;
                        let (want, got) = (eval::trace(&rs, &q), eval::trace(&live, &q));
                        match (want, got) {
                            (Ok(w), Ok(g)) if w.outcomes() == g.outcomes() => {}
                            (w, g) => failures.push(format!(
                                "{scenario}: {a} {} {n} on {iif}: rendered {:?}, live {:?}",
                                p.name(),
                                w.map(|t| t.outcomes()),
                                g.map(|t| t.outcomes())
                            )),
                        }
                    }
                }
            }
        }
    }
    eprintln!("{flows} flows traced on rendered and live tables");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
