//! `kube-nftproxy bench`: the figures the project publishes, reproducible in one command.
//! It moves itself into a fresh network namespace first (unshare), so it never touches the
//! machine's own rules, and the namespace disappears with the process.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod upstream;

use crate::cli::synthetic;
use crate::model::options::Options;
use crate::nft::{netlink, text};
use crate::objects::input::ClusterObjects;
use crate::ruleset::diff;
use crate::ruleset::ir::Family;
use crate::ruleset::TABLE_NAME;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot enter a private network namespace (needs root): {0}")]
    Unshare(std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] netlink::NetlinkError),
    #[error("nft -f: {0}")]
    Nft(String),
    #[error("generated input: {0}")]
    Input(String),
    #[error("listening for nftables commits: {0}")]
    Monitor(std::io::Error),
}

/// Puts the whole process into a new, empty network namespace. Must run before any other
/// thread exists, so that every thread and child shares it.
pub fn enter_private_netns() -> Result<(), BenchError> {
    // SAFETY: unshare has no memory-safety preconditions; it changes this process's netns.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(BenchError::Unshare(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn nft_load(script: &str) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Nft(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| BenchError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(BenchError::Nft(String::from_utf8_lossy(&out.stderr).into()));
    }
    Ok(start.elapsed())
}

fn delete_ours() -> Result<(), BenchError> {
    netlink::delete_tables(&[(Family::V4, TABLE_NAME), (Family::V6, TABLE_NAME)])?;
    Ok(())
}

/// Times single transactions of each kind against the table `rs` already loaded: what the
/// kernel charges for a change depends on its kind far more than on its size.
fn kernel_costs(rs: &crate::ruleset::ir::Ruleset) -> Result<String, BenchError> {
    use crate::ruleset::ir::{
        CmpOp, Element, ElementData, Expr, Field, Proto, Rule, Value, Verdict,
    };
    use crate::ruleset::tx::{Op, Transaction};
    let decls = netlink::SetDecls::from_ruleset(rs);
    let probe = |ops: Vec<Op>| -> Result<f64, BenchError> {
        Ok(ms(netlink::apply(&Transaction { ops }, &decls)?.send))
    };
    let (family, table) = (Family::V4, TABLE_NAME.to_string());
    let ip: IpAddr = IpAddr::from([10, 99, 0, 1]);
    let chains = &rs
        .tables
        .first()
        .ok_or_else(|| BenchError::Input("no table".into()))?
        .chains;
    let svc = chains
        .iter()
        .find(|c| c.name == "endpoints")
        .ok_or_else(|| BenchError::Input("no endpoints chain".into()))?;
    let endpoint_map = rs
        .tables
        .first()
        .and_then(|t| {
            t.sets
                .iter()
                .find(|s| s.name.starts_with("service-endpoints-") && !s.elements.is_empty())
        })
        .ok_or_else(|| BenchError::Input("no endpoint map".into()))?;
    let endpoint = endpoint_map
        .element_list()
        .into_iter()
        .next()
        .ok_or_else(|| BenchError::Input("no endpoint map element".into()))?;
    let endpoint_map = endpoint_map.name.clone();
    let elements = |set: &str, e: Element| Op::AddElements {
        family,
        table: table.clone(),
        set: set.into(),
        elements: vec![e],
    };
    let rule = |chain: &str, r: Rule| Op::AddRule {
        family,
        table: table.clone(),
        chain: chain.into(),
        rule: r,
    };
    let drop_rule = || {
        rule(
            "cluster-ips-check",
            Rule::new(
                vec![Expr::AddrCmp {
                    field: Field::Saddr,
                    op: CmpOp::Eq,
                    addr: ip,
                    prefix_len: 32,
                }],
                Some(Verdict::Drop),
            ),
        )
    };
    let flush = || Op::FlushChain {
        family,
        table: table.clone(),
        chain: svc.name.clone(),
    };
    let plain = probe(vec![elements(
        "cluster-ips",
        Element {
            key: vec![Value::Addr(ip)],
            data: None,
        },
    )])?;
    let verdict = probe(vec![elements(
        "service-ips",
        Element {
            key: vec![Value::Addr(ip), Value::Proto(Proto::Tcp), Value::Port(80)],
            data: Some(ElementData::Verdict(Verdict::Goto(svc.name.clone()))),
        },
    )])?;
    let plain_del = probe(vec![Op::DeleteElements {
        family,
        table: table.clone(),
        set: "cluster-ips".into(),
        elements: vec![Element {
            key: vec![Value::Addr(ip)],
            data: None,
        }],
    }])?;
    let replaced = Element {
        data: Some(ElementData::Values(
            vec![Value::Addr(ip), Value::Port(8080)].into(),
        )),
        ..endpoint.clone()
    };
    let endpoint_swap = probe(vec![
        Op::DeleteElements {
            family,
            table: table.clone(),
            set: endpoint_map.clone(),
            elements: vec![endpoint],
        },
        elements(&endpoint_map, replaced),
    ])?;
    let one = probe(vec![drop_rule()])?;
    let ten = probe((0..10).map(|_| drop_rule()).collect())?;
    let flushed_plain = probe(vec![Op::FlushChain {
        family,
        table: table.clone(),
        chain: "cluster-ips-check".into(),
    }])?;
    let flushed = probe(vec![flush()])?;
    let mut rewrite = vec![flush()];
    rewrite.extend(svc.rules.iter().map(|r| rule(&svc.name, r.clone())));
    let rewritten = probe(rewrite)?;
    Ok(format!(
        "plain element {plain:.2} ms (delete {plain_del:.2} ms), endpoint replaced (delete + add) {endpoint_swap:.2} ms, \
         verdict element {verdict:.2} ms, one rule {one:.2} ms, \
         ten rules {ten:.2} ms, flush of 12 drop/reject rules {flushed_plain:.2} ms, \
         flush of the selection chain {flushed:.2} ms, \
         flush + its {} rules {rewritten:.2} ms",
        svc.rules.len()
    ))
}

/// Runs every measurement for one cluster size and returns a report paragraph.
/// `realistic`: the seed of the realistic mix (`synthetic --mix realistic`) instead of
/// `endpoints` for every Service.
pub fn run_one(
    services: usize,
    endpoints: usize,
    rounds: usize,
    realistic: Option<u64>,
) -> Result<String, BenchError> {
    let mut out = String::new();
    let cluster = match realistic {
        Some(seed) => synthetic::selection_mix(services, seed, "node-a"),
        None => synthetic::cluster(&synthetic::Spec {
            services,
            endpoints,
            node: "node-a".into(),
        }),
    };
    let json = serde_json::to_string(&cluster).map_err(|e| BenchError::Input(e.to_string()))?;
    let opts = Options {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16"
            .parse()
            .map_err(|_| BenchError::Input("cidr".into()))?],
        ..Options::default()
    };

    let t = Instant::now();
    let mut notes = Vec::new();
    let mut objects = ClusterObjects::default();
    objects
        .add_text("synthetic", &json, &mut notes)
        .map_err(|e| BenchError::Input(e.to_string()))?;
    objects.sort();
    let (rs, _) = crate::ruleset::render::ruleset(&objects, &opts);
    let script = text::script(&rs);
    let render = t.elapsed();

    // Cold start: netlink from empty, then the same text through nft -f from empty.
    delete_ours()?;
    let t = Instant::now();
    let tx = diff::full(&rs);
    let plan = t.elapsed();
    let stats = netlink::apply(&tx, &netlink::SetDecls::from_ruleset(&rs))?;
    let cold_netlink = t.elapsed();
    delete_ours()?;
    let cold_nft = nft_load(&script)?;
    delete_ours()?;
    netlink::apply(&tx, &netlink::SetDecls::from_ruleset(&rs))?;

    // Kernel commit cost by kind of change, on the loaded table.
    let costs = kernel_costs(&rs)?;
    delete_ours()?;
    netlink::apply(&tx, &netlink::SetDecls::from_ruleset(&rs))?;

    // One endpoint changes in one Service, repeatedly, through the agent's path: the kept
    // state rebuilds that Service, diffs it and replays it; then the kernel applies it.
    let commits = crate::nft::monitor::Commits::listen().map_err(BenchError::Monitor)?;
    let mut desired = crate::agent::desired::Desired::new(opts.clone());
    let first = desired.update(&objects, true);
    if desired.ruleset() != &rs || !first.full {
        return Err(BenchError::Input(
            "the kept state differs from render".into(),
        ));
    }
    let mut compute = Vec::new();
    let mut kernel = Vec::new();
    let mut committed = Vec::new();
    let mut total = Vec::new();
    for round in 0..rounds {
        let i = (round * 7919) % objects.endpoint_slices.len();
        let mut slice = (*objects.endpoint_slices[i]).clone();
        if let Some(ep) = slice.endpoints.first_mut() {
            let new_ip: IpAddr = format!("10.250.{}.{}", round / 250, round % 250 + 1)
                .parse()
                .map_err(|_| BenchError::Input("ip".into()))?;
            ep.address = Some(crate::objects::Address::Ip(new_ip));
        }
        objects.endpoint_slices[i] = std::sync::Arc::new(slice);
        let t = Instant::now();
        let update = desired.update(&objects, false);
        if update.full {
            return Err(BenchError::Input(
                "a one-endpoint change needed a full sync".into(),
            ));
        }
        compute.push(t.elapsed());
        let decls = netlink::SetDecls::from_ruleset(desired.ruleset());
        let sent = Instant::now();
        let st = netlink::apply(&update.tx, &decls)?;
        total.push(t.elapsed());
        kernel.push(st.send);
        let commit = commits
            .first_since(sent, Duration::from_millis(50))
            .ok_or_else(|| BenchError::Input("no commit notification".into()))?;
        committed.push(commit - t);
    }
    drop(commits);
    let prev = desired.ruleset().clone();
    let check = netlink::read_table(Family::V4, TABLE_NAME)?;
    let consistent = prev
        .tables
        .first()
        .map(|t| check.as_ref() == Some(&netlink::summarize(t)))
        .unwrap_or(false);
    delete_ours()?;

    let sets = prev.tables.first().map(|t| t.sets.len()).unwrap_or(0);
    let _ = writeln!(
        out,
        "{services} Services x {} ({} KB of JSON, {} KB of nft text, {sets} sets/maps):",
        match realistic {
            Some(seed) => format!("the realistic mix (seed {seed})"),
            None => format!("{endpoints} endpoints"),
        },
        json.len() / 1024,
        script.len() / 1024
    );
    let _ = writeln!(
        out,
        "  render (parse + model + IR + text): {:.1} ms",
        ms(render)
    );
    let _ = writeln!(out, "  kernel commit by kind of change: {costs}");
    let _ = writeln!(
        out,
        "  cold start over netlink: {:.1} ms ({} messages, {} KB; transaction {:.1} ms, build {:.1} ms, kernel {:.1} ms)",
        ms(cold_netlink),
        stats.messages,
        stats.bytes / 1024,
        ms(plan),
        ms(stats.build),
        ms(stats.send)
    );
    let _ = writeln!(
        out,
        "  cold start with nft -f of the same text: {:.1} ms (netlink is {:.1}x faster)",
        ms(cold_nft),
        cold_nft.as_secs_f64() / cold_netlink.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  one-endpoint change as a partial sync, median of {rounds}: {:.2} ms until the kernel commits it (NEWGEN), {:.2} ms until it acknowledges it (model + IR + diff {:.2} ms, netlink {:.2} ms)",
        ms(median(committed)),
        ms(median(total)),
        ms(median(compute)),
        ms(median(kernel))
    );
    let _ = writeln!(
        out,
        "  kernel state after the partial syncs equals the last IR: {consistent}"
    );
    let _ = writeln!(out, "  peak RSS so far: {:.0} MiB", peak_rss_mib());
    Ok(out)
}
