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

/// Which generated cluster `run_one` measures.
#[derive(Debug, Clone, Copy)]
pub enum BenchMix {
    /// `synthetic --mix uniform`: one-port ClusterIPs with this many endpoints each.
    Uniform(usize),
    /// `synthetic --mix realistic` (issue 18's mix), by seed.
    Realistic(u64),
    /// Issue 16's endpoint-count mix (`synthetic::selection_mix`), by seed.
    Selection(u64),
}

impl BenchMix {
    fn name(self) -> &'static str {
        match self {
            BenchMix::Uniform(_) => "uniform",
            BenchMix::Realistic(_) => "realistic",
            BenchMix::Selection(_) => "selection",
        }
    }
}

/// No single step may take longer than this; it is reported as `>120 s` instead.
const CAP: Duration = Duration::from_secs(120);

/// How one timed step ended.
#[derive(Debug, Clone)]
pub enum Timed {
    Done(Duration),
    /// Killed at `CAP`.
    Capped,
    Failed(String),
    /// Not attempted (the upstream layout's cold start did not finish).
    NotRun,
}

impl Timed {
    fn ms(&self) -> Option<f64> {
        match self {
            Timed::Done(d) => Some(ms(*d)),
            _ => None,
        }
    }
    /// For the report: milliseconds, `>120 s`, or why it failed.
    fn show(&self) -> String {
        match self {
            Timed::Done(d) => format!("{:.2} ms", ms(*d)),
            Timed::Capped => format!(">{} s", CAP.as_secs()),
            Timed::Failed(e) => format!("failed: {}", e.lines().next().unwrap_or("")),
            Timed::NotRun => "not run".into(),
        }
    }
    /// For the CSV: milliseconds, `>120000` or `failed`.
    fn csv(&self) -> String {
        match self {
            Timed::Done(d) => format!("{:.3}", ms(*d)),
            Timed::Capped => format!(">{}", CAP.as_millis()),
            Timed::Failed(_) => "failed".into(),
            Timed::NotRun => String::new(),
        }
    }
}

/// The median of several timed runs; capped or failed if any run was.
fn median_timed(v: Vec<Timed>) -> Timed {
    let mut done = Vec::new();
    for t in v {
        match t {
            Timed::Done(d) => done.push(d),
            other => return other,
        }
    }
    if done.is_empty() {
        return Timed::Failed("no run".into());
    }
    Timed::Done(median(done))
}

/// `nft -f -` of `script`, killed after `CAP`.
fn nft_load_capped(script: &str) -> Timed {
    let start = Instant::now();
    let mut child = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Timed::Failed(e.to_string()),
    };
    let pid = child.id();
    let stdin = child.stdin.take();
    let script = script.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A write error shows as nft's own failure below.
            let _ = stdin.write_all(script.as_bytes());
        }
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CAP) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; pid is our unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = rx.recv();
            return Timed::Capped;
        }
    };
    let elapsed = start.elapsed();
    match out {
        Ok(o) if o.status.success() => Timed::Done(elapsed),
        Ok(o) => Timed::Failed(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Timed::Failed(e.to_string()),
    }
}

fn delete_upstream(families: &[Family]) {
    for f in families {
        let fam = match f {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        // Absent after a failed or capped load: nothing to delete then.
        let _ = nft_load(&format!("delete table {fam} {}", upstream::TABLE));
    }
}

/// One step of the partial-sync plan: `n` endpoint changes, or a new Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Endpoints(usize),
    NewService,
}

impl Step {
    fn label(self) -> String {
        match self {
            Step::Endpoints(1) => "1 endpoint change".into(),
            Step::Endpoints(n) => format!("{n} endpoint changes"),
            Step::NewService => "one new Service".into(),
        }
    }
}

/// The partial syncs timed at every size, with their repetitions.
fn plan(rounds: usize) -> Vec<(Step, usize)> {
    vec![
        (Step::Endpoints(1), rounds),
        (Step::Endpoints(100), rounds.min(5)),
        (Step::Endpoints(1000), rounds.min(3)),
        (Step::NewService, rounds.min(3)),
    ]
}

/// Applies step `step` (round `round`) to `objects`: the first endpoint of `n` different
/// EndpointSlices (so `n` Services) gets a new address of its family, or one new
/// ClusterIP Service with three endpoints appears. Deterministic, so both layouts see the
/// same changes. `counter` numbers the new addresses.
fn mutate(objects: &mut ClusterObjects, step: Step, round: usize, counter: &mut usize) {
    match step {
        Step::Endpoints(n) => {
            let len = objects.endpoint_slices.len();
            let n = n.min(len);
            let mut changed = 0;
            let mut probe = round * n;
            // 7919 is prime: walks every slice before repeating one (unless len is a
            // multiple of it).
            while changed < n && probe < round * n + 4 * len {
                let i = (probe * 7919) % len;
                probe += 1;
                let mut slice = (*objects.endpoint_slices[i]).clone();
                let Some(ep) = slice.endpoints.first_mut() else {
                    continue;
                };
                let Some(crate::objects::Address::Ip(old)) = ep.address.clone() else {
                    continue;
                };
                *counter += 1;
                let c = *counter;
                let new_ip: IpAddr = match old {
                    IpAddr::V4(_) => {
                        IpAddr::from([10, 250 + (c >> 16) as u8, (c >> 8) as u8, c as u8])
                    }
                    IpAddr::V6(_) => {
                        IpAddr::from([0xfd00, 0x250, 0, 0, 0, 0, (c >> 16) as u16, c as u16])
                    }
                };
                ep.address = Some(crate::objects::Address::Ip(new_ip));
                objects.endpoint_slices[i] = std::sync::Arc::new(slice);
                changed += 1;
            }
        }
        Step::NewService => {
            *counter += 1;
            let c = *counter;
            let yaml = format!(
                r#"
apiVersion: v1
kind: Service
metadata: {{name: bench-new-{c}, namespace: zz-bench}}
spec:
  clusterIP: 10.95.{}.{}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: bench-new-{c}-x, namespace: zz-bench, labels: {{kubernetes.io/service-name: bench-new-{c}}}}}
addressType: IPv4
endpoints:
- {{addresses: [10.251.{}.1], conditions: {{ready: true}}, nodeName: node-b}}
- {{addresses: [10.251.{}.2], conditions: {{ready: true}}, nodeName: node-b}}
- {{addresses: [10.251.{}.3], conditions: {{ready: true}}, nodeName: node-b}}
ports: [{{name: http, port: 8080, protocol: TCP}}]
"#,
                (c >> 8) & 0xff,
                c & 0xff,
                c & 0xff,
                c & 0xff,
                c & 0xff
            );
            let _ = objects.add_text("bench-new", &yaml, &mut Vec::new());
            objects.sort();
        }
    }
}

/// The generated cluster as JSON text, written one object at a time.
fn cluster_json(services: usize, mix: BenchMix) -> Result<String, BenchError> {
    let mut buf = Vec::new();
    let res = match mix {
        BenchMix::Uniform(endpoints) => {
            let spec = synthetic::Spec {
                services,
                endpoints,
                node: "node-a".into(),
            };
            synthetic::write_list(synthetic::items(&spec), &mut buf)
        }
        BenchMix::Realistic(seed) => {
            let spec = synthetic::realistic::Spec {
                services,
                seed,
                node: "node-a".into(),
            };
            synthetic::write_list(synthetic::realistic::items(&spec), &mut buf)
        }
        BenchMix::Selection(seed) => serde_json::to_writer(
            &mut buf,
            &synthetic::selection_mix(services, seed, "node-a"),
        )
        .map_err(std::io::Error::other),
    };
    res.map_err(|e| BenchError::Input(e.to_string()))?;
    String::from_utf8(buf).map_err(|e| BenchError::Input(e.to_string()))
}

/// One CSV line per layout and cluster (see `CSV_HEADER`).
pub const CSV_HEADER: &str =
    "layout,mix,services,endpoints,cold_start_ms,sync_1_ms,sync_100_ms,sync_1000_ms,new_service_ms";

/// Runs every measurement for one cluster size and returns a report paragraph and its CSV
/// lines.
pub fn run_one(
    services: usize,
    rounds: usize,
    mix: BenchMix,
) -> Result<(String, Vec<String>), BenchError> {
    let mut out = String::new();
    let json = cluster_json(services, mix)?;
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
    let json_kb = json.len() / 1024;
    drop(json);
    let families: Vec<Family> = rs.tables.iter().map(|t| t.family).collect();

    // Cold start: netlink from empty, then the same text through nft -f from empty.
    delete_ours()?;
    let t = Instant::now();
    let tx = diff::full(&rs);
    let plan_time = t.elapsed();
    let stats = netlink::apply(&tx, &netlink::SetDecls::from_ruleset(&rs))?;
    let cold_netlink = t.elapsed();
    delete_ours()?;
    let cold_nft = nft_load_capped(&script);
    delete_ours()?;
    netlink::apply(&tx, &netlink::SetDecls::from_ruleset(&rs))?;

    // Kernel commit cost by kind of change, on the loaded table.
    let costs = kernel_costs(&rs)?;
    delete_ours()?;
    netlink::apply(&tx, &netlink::SetDecls::from_ruleset(&rs))?;
    drop(tx);

    // Partial syncs through the agent's path: the kept state rebuilds the changed
    // Services, diffs them, and the kernel applies the transaction over netlink.
    let objects0 = objects.clone();
    let commits = crate::nft::monitor::Commits::listen().map_err(BenchError::Monitor)?;
    let mut desired = crate::agent::desired::Desired::new(opts.clone());
    let first = desired.update(&objects, true);
    if desired.ruleset() != &rs || !first.full {
        return Err(BenchError::Input(
            "the kept state differs from render".into(),
        ));
    }
    drop(first);
    let mut counter = 0;
    let mut ours_sync = Vec::new();
    let mut compute = Vec::new();
    let mut kernel = Vec::new();
    let mut committed = Vec::new();
    let mut fulls = 0;
    let mut empty = 0;
    for (step, reps) in plan(rounds) {
        let mut times = Vec::new();
        for round in 0..reps {
            mutate(&mut objects, step, round, &mut counter);
            let t = Instant::now();
            let update = desired.update(&objects, false);
            if update.full {
                fulls += 1;
            }
            let c = t.elapsed();
            let decls = netlink::SetDecls::from_ruleset(desired.ruleset());
            let sent = Instant::now();
            let st = netlink::apply(&update.tx, &decls)?;
            let total = t.elapsed();
            times.push(Timed::Done(total));
            if update.tx.ops.is_empty() {
                // The changed endpoint is one the ruleset does not use (not ready, or of a
                // Service without a ClusterIP): nothing reaches the kernel, no commit.
                empty += 1;
            } else if step == Step::Endpoints(1) {
                compute.push(c);
                kernel.push(st.send);
                let commit = commits
                    .first_since(sent, Duration::from_millis(50))
                    .ok_or_else(|| BenchError::Input("no commit notification".into()))?;
                committed.push(commit - t);
            }
        }
        ours_sync.push((step, reps, median_timed(times)));
    }
    drop(commits);
    let check = netlink::read_table(Family::V4, TABLE_NAME)?;
    let consistent = desired
        .ruleset()
        .tables
        .first()
        .map(|t| check.as_ref() == Some(&netlink::summarize(t)))
        .unwrap_or(false);
    let sets = desired
        .ruleset()
        .tables
        .first()
        .map(|t| t.sets.len())
        .unwrap_or(0);
    drop(desired);
    delete_ours()?;
    drop(objects);

    // The upstream layout from the same model: cold start with nft -f, then the same
    // partial syncs, each an nft -f script like kube-proxy's.
    let (model0, _) = crate::model::build(&objects0, &opts);
    let mut layout = upstream::Layout::new(&model0);
    drop(model0);
    let up_script = layout.script();
    let up_chains = up_script.matches("\nadd chain ").count();
    let up_rules = up_script.matches("\nadd rule ").count();
    let up_kb = up_script.len() / 1024;
    let up_cold = nft_load_capped(&up_script);
    drop(up_script);
    // Too large for one nft -f within the cap: load it in parts (not timed) so that the
    // partial syncs can still be measured on the full table.
    let mut chunked = false;
    if let Timed::Capped = up_cold {
        delete_upstream(&families);
        chunked = layout
            .script_chunks(5_000)
            .iter()
            .all(|s| matches!(nft_load_capped(s), Timed::Done(_)));
    }
    let mut objects = objects0;
    let mut counter = 0;
    let mut up_sync = Vec::new();
    let mut up_consistent = None;
    if matches!(up_cold, Timed::Done(_)) || chunked {
        for (step, reps) in plan(rounds) {
            let mut times = Vec::new();
            for round in 0..reps {
                mutate(&mut objects, step, round, &mut counter);
                let (m, _) = crate::model::build(&objects, &opts);
                let partial = layout.sync(&m);
                let t = nft_load_capped(&partial);
                let stop = !matches!(t, Timed::Done(_));
                times.push(t);
                if stop {
                    break;
                }
            }
            up_sync.push(median_timed(times));
        }
        // The kernel holds as many chains as the layout says (a cheap check that the
        // partial scripts did what they meant to).
        let listed = Command::new("nft")
            .args(["list", "chains"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.trim_start().starts_with("chain "))
                    .count()
            })
            .unwrap_or(0);
        up_consistent = Some(listed == layout.chain_count());
    }
    delete_upstream(&families);
    drop(layout);

    let label = match mix {
        BenchMix::Uniform(e) => format!("{e} endpoints"),
        BenchMix::Realistic(seed) => format!("the realistic mix (seed {seed})"),
        BenchMix::Selection(seed) => format!("issue 16's selection mix (seed {seed})"),
    };
    let _ = writeln!(
        out,
        "{services} Services x {label} ({json_kb} KB of JSON, {} KB of nft text, {sets} sets/maps):",
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
        ms(plan_time),
        ms(stats.build),
        ms(stats.send)
    );
    let vs = match cold_nft.ms() {
        Some(n) => format!(" (netlink is {:.1}x faster)", n / ms(cold_netlink)),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  cold start with nft -f of the same text: {}{vs}",
        cold_nft.show()
    );
    let _ = writeln!(
        out,
        "  one-endpoint change as a partial sync, median of {rounds}: {:.2} ms until the kernel commits it (NEWGEN), {:.2} ms until it acknowledges it (model + IR + diff {:.2} ms, netlink {:.2} ms)",
        ms(median(committed)),
        ours_sync[0].2.ms().unwrap_or(f64::NAN),
        ms(median(compute)),
        ms(median(kernel))
    );
    let _ = writeln!(
        out,
        "  kernel state after the partial syncs equals the last IR: {consistent}{}",
        if fulls > 0 {
            format!(" ({fulls} of the changes needed a full sync)")
        } else {
            String::new()
        } + &if empty > 0 {
            format!(
                " ({empty} of the steps changed nothing in our ruleset: the endpoint was not used)"
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  upstream layout: {up_kb} KB of nft text, {up_chains} chains, {up_rules} rules{}; chains in the kernel after its partial syncs as expected: {}",
        if chunked {
            " (its cold start hit the cap: loaded in parts of 5,000 Service ports, untimed, for the partial syncs)"
        } else {
            ""
        },
        match up_consistent {
            Some(b) => b.to_string(),
            None => "not run".into(),
        }
    );
    let _ = writeln!(
        out,
        "  both layouts (ours: netlink, to the acknowledgement, model + IR + diff included; upstream: nft -f of its script, generating it not counted):"
    );
    let ratio = |a: &Timed, b: &Timed| match (a.ms(), b.ms()) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:.1}x", b / a),
        _ => "-".into(),
    };
    let ours_cold = Timed::Done(cold_netlink);
    let _ = writeln!(
        out,
        "    {:<34} {:>14} {:>18} {:>8}",
        "", "ours", "upstream layout", "ratio"
    );
    let _ = writeln!(
        out,
        "    {:<34} {:>14} {:>18} {:>8}",
        "cold start",
        ours_cold.show(),
        up_cold.show(),
        ratio(&ours_cold, &up_cold)
    );
    let skipped = Timed::NotRun;
    for (i, (step, reps, ours_t)) in ours_sync.iter().enumerate() {
        let up_t = up_sync.get(i).unwrap_or(&skipped);
        let _ = writeln!(
            out,
            "    {:<34} {:>14} {:>18} {:>8}",
            format!("{} (median of {reps})", step.label()),
            ours_t.show(),
            up_t.show(),
            ratio(ours_t, up_t)
        );
    }
    let _ = writeln!(out, "  peak RSS so far: {:.0} MiB", peak_rss_mib());

    let endpoints = match mix {
        BenchMix::Uniform(e) => e.to_string(),
        _ => String::new(),
    };
    let row = |layout: &str, cold: &Timed, syncs: &[Timed]| {
        let mut cols = vec![
            layout.to_string(),
            mix.name().to_string(),
            services.to_string(),
            endpoints.clone(),
            cold.csv(),
        ];
        for i in 0..4 {
            cols.push(syncs.get(i).map(Timed::csv).unwrap_or_default());
        }
        cols.join(",")
    };
    let ours_syncs: Vec<Timed> = ours_sync.iter().map(|(_, _, t)| t.clone()).collect();
    let csv = vec![
        row("ours-netlink", &ours_cold, &ours_syncs),
        row("ours-nft-f", &cold_nft, &[]),
        row("upstream-nft-f", &up_cold, &up_sync),
    ];
    Ok((out, csv))
}
