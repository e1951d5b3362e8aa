//! Network-programming latency of the agent (issue figures, not a pass/fail test; run with
//! `cargo test --release --test latency -- --ignored --nocapture`).
//!
//! The agent's own code (watchers, reflectors, reconcile loop, netlink sink) runs in this
//! process against the fake API server; its kernel writes happen on a thread that entered a
//! network namespace made for the run. A driver changes one EndpointSlice every 10 ms
//! (100 changes per second); each change's latency is measured from its arrival at the
//! watcher to the end of the kernel transaction that carried it.

mod support;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_nftproxy::agent::reconcile::{self, Sink, Timing};
use kube_nftproxy::agent::watch::{self, Changes, EndpointsApi};
use kube_nftproxy::model::options::Options;
use kube_nftproxy::nft::{monitor, netlink};
use kube_nftproxy::ruleset::ir::Ruleset;
use kube_nftproxy::ruleset::tx::{Op, Transaction};
use serde_json::{json, Value};
use support::fakeapi::FakeApi;
use support::*;

type Job = (
    Transaction,
    netlink::SetDecls,
    // the ruleset a full sync's `FillSet`s read their elements from
    Option<Ruleset>,
    mpsc::Sender<Result<Option<Instant>, String>>,
);

/// Applies transactions on a thread inside the test namespace, and reports for each the
/// instant the kernel committed it: the NEWGEN notification nftables multicasts from its
/// commit path. The kernel acknowledges a batch that deletes anything only after an RCU
/// grace period that follows the commit (10-20 ms here), so the acknowledgement comes
/// later than the moment packets see the new rules; both are reported.
struct NetnsSink {
    jobs: mpsc::Sender<Job>,
    commits: Arc<std::sync::Mutex<Vec<Option<Instant>>>>,
}

impl NetnsSink {
    fn new(ns: &Netns) -> NetnsSink {
        let (tx, rx) = mpsc::channel::<Job>();
        let ns = ns.clone();
        std::thread::spawn(move || {
            ns.run_in(move || {
                // Listening from the second transaction on: a listener makes the kernel
                // build a notification per object, which would slow the full first sync.
                let mut commits: Option<monitor::Commits> = None;
                for (t, decls, source, reply) in rx {
                    let started = Instant::now();
                    let r = netlink::apply_with(&t, &[], &decls, source.as_ref()).map(|_| {
                        commits
                            .as_ref()
                            .and_then(|c| c.first_since(started, Duration::from_millis(20)))
                    });
                    if commits.is_none() {
                        commits = Some(monitor::Commits::listen().expect("nftables notifications"));
                    }
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                }
            })
        });
        NetnsSink {
            jobs: tx,
            commits: Arc::default(),
        }
    }
}

impl Sink for NetnsSink {
    fn apply(&mut self, tx: &Transaction, desired: &Ruleset) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        let fills = tx.ops.iter().any(|o| matches!(o, Op::FillSet { .. }));
        self.jobs
            .send((
                tx.clone(),
                netlink::SetDecls::from_ruleset(desired),
                fills.then(|| desired.clone()),
                reply,
            ))
            .map_err(|e| e.to_string())?;
        let commit = rx.recv().map_err(|e| e.to_string())??;
        self.commits.lock().unwrap().push(commit);
        Ok(())
    }
}

fn slice(i: usize, round: usize) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": format!("ns-{}", i % 100),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": (0..10).map(|e| json!({
            "addresses": [format!("10.{}.{}.{}", 128 + (round % 100), (i >> 8) & 0xff, (i & 0xff) ^ e)],
            "conditions": {"ready": true}, "nodeName": "node-b"
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// A fake API server holding node-a and `services` Services with 10 endpoints each.
fn preloaded(services: usize) -> FakeApi {
    preloaded_in(services, None)
}

/// `preloaded`, with the server listening in network namespace `netns` when given.
fn preloaded_in(services: usize, netns: Option<&str>) -> FakeApi {
    let api = match netns {
        Some(n) => FakeApi::start_in_netns(n),
        None => FakeApi::start(),
    };
    api.apply(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}}),
    );
    for i in 0..services {
        api.apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100)},
            "spec": {"clusterIP": format!("10.96.{}.{}", (i + 1) >> 8, (i + 1) & 0xff),
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        api.apply(&slice(i, 0));
    }
    api
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The agent's code against a preloaded fake API server, programming a namespace of its
/// own; dropped, it stops the agent and removes the namespace.
struct Running {
    rt: tokio::runtime::Runtime,
    api: FakeApi,
    reports: mpsc::Receiver<reconcile::SyncReport>,
    commits: Arc<std::sync::Mutex<Vec<Option<Instant>>>>,
    first: reconcile::SyncReport,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: Option<tokio::task::JoinHandle<()>>,
    ns: Netns,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(agent) = self.agent.take() {
            let _ = self.rt.block_on(agent);
        }
        // The sink's thread keeps a handle until it notices the agent is gone: remove the
        // namespace here, also on a panic.
        self.ns.destroy();
    }
}

fn start(services: usize, min_sync_period: Duration) -> Running {
    let ns = Netns::create(&format!("kntp-{}-latency", random_id()), "latency").unwrap();
    let api = preloaded(services);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async { api.client() });
    let changes = Arc::new(Changes::default());
    let opts = Options {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Options::default()
    };
    let timing = Timing {
        min_sync_period,
        sync_period: Duration::from_secs(3600),
        verify_period: Duration::from_secs(10),
    };
    let (report_tx, reports) = mpsc::channel::<reconcile::SyncReport>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sink = NetnsSink::new(&ns);
    let commits = sink.commits.clone();
    let agent = rt.spawn(async move {
        let stores = watch::start(&client, "node-a", EndpointsApi::Auto, changes.clone()).await;
        reconcile::run(
            stores,
            changes,
            opts,
            timing,
            sink,
            kube_nftproxy::agent::observe::Observe::default(),
            async {
                let _ = stop_rx.await;
            },
            move |r| {
                let _ = report_tx.send(r.clone());
            },
        )
        .await;
    });
    let first = reports
        .recv_timeout(Duration::from_secs(120))
        .expect("first sync");
    Running {
        rt,
        api,
        reports,
        commits,
        first,
        stop: Some(stop_tx),
        agent: Some(agent),
        ns,
    }
}

fn measure(services: usize) {
    if !require_root_and_tools() {
        return;
    }
    let run = start(services, Duration::ZERO);
    let (api, report_rx, commits, first) = (&run.api, &run.reports, &run.commits, &run.first);
    println!(
        "{services} Services x 10 endpoints: first (full) sync {:.0} ms",
        first.elapsed.as_secs_f64() * 1000.0
    );
    let churn = 1000;
    let start = Instant::now();
    for round in 0..churn {
        let due = start + Duration::from_millis(10 * round as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        api.apply(&slice((round * 7919) % services, round + 1));
    }
    let mut latencies = Vec::new();
    let mut committed = Vec::new();
    let mut syncs = 0;
    // The sink records one commit per apply, in order; the first sync applied one.
    let mut applied = usize::from(first.ops > 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < churn && Instant::now() < deadline {
        if let Ok(r) = report_rx.recv_timeout(Duration::from_secs(1)) {
            syncs += 1;
            let commit = if r.ops > 0 {
                applied += 1;
                commits.lock().unwrap().get(applied - 1).copied().flatten()
            } else {
                None
            };
            for l in &r.latencies {
                let arrival = r.finished - *l;
                committed.push(commit.map_or(*l, |c| c.saturating_duration_since(arrival)));
            }
            latencies.extend(r.latencies);
        }
    }
    latencies.sort();
    committed.sort();
    assert!(!latencies.is_empty(), "no change was programmed");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {} changes at 100/s in {} syncs:\n    to the kernel's commit (NEWGEN): median {:.1} ms, p99 {:.1} ms, max {:.1} ms\n    to the acknowledgement:         median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        syncs,
        ms(percentile(&committed, 0.5)),
        ms(percentile(&committed, 0.99)),
        ms(*committed.last().unwrap()),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
    );
}

/// A new Service and its EndpointSlice, written 5 ms apart as the API server and the
/// EndpointSlice controller write them, at the default `--min-sync-period` of 1 s: from the
/// Service's write to the end of the transaction that carries its endpoints.
fn measure_add_service(services: usize) {
    if !require_root_and_tools() {
        return;
    }
    let run = start(services, Duration::from_secs(1));
    let mut took = Vec::new();
    for round in 0..10 {
        // Far enough apart that each addition starts with the burst available, as a new
        // Service does in a cluster that is not churning.
        std::thread::sleep(Duration::from_millis(2100));
        let i = services + round;
        let t0 = Instant::now();
        run.api.apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100)},
            "spec": {"clusterIP": format!("10.96.{}.{}", (i + 1) >> 8, (i + 1) & 0xff),
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        std::thread::sleep(Duration::from_millis(5));
        let slice_written = Instant::now();
        run.api.apply(&slice(i, 1));
        let done = loop {
            let r = run
                .reports
                .recv_timeout(Duration::from_secs(10))
                .expect("a sync carrying the new endpoints");
            // The sync that started after the slice arrived carries it.
            if r.finished - r.elapsed >= slice_written {
                break r.finished;
            }
        };
        took.push(done - t0);
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{services} Services: add a Service and its endpoints (min-sync-period 1 s): median {:.1} ms, max {:.1} ms over {} additions",
        ms(percentile(&took, 0.5)),
        ms(*took.last().unwrap()),
        took.len()
    );
}

#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn add_service_1k_services() {
    measure_add_service(1000);
}

#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn add_service_10k_services() {
    measure_add_service(10_000);
}

#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn latency_1k_services() {
    measure(1000);
}

#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn latency_10k_services() {
    measure(10_000);
}

/// Peak RSS of the agent binary holding 10,000 Services × 10 endpoints (dry-run, so it can
/// run in this namespace; the kernel sink adds only the transaction being sent).
#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn agent_rss_10k_services() {
    agent_rss(false);
}

/// The same with the kernel sink: the agent programs a network namespace made for the run.
#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn agent_rss_10k_services_kernel() {
    if require_root_and_tools() {
        agent_rss(true);
    }
}

/// Runs the agent binary at 10,000 Services, with `--dry-run` or programming a namespace
/// of its own, through a first full sync and 200 changes, and prints its peak RSS.
fn agent_rss(kernel: bool) {
    use std::io::{BufRead, BufReader};
    let services = 10_000;
    let ns = kernel.then(|| Netns::create(&format!("kntp-{}-rss", random_id()), "rss").unwrap());
    struct RemoveOnExit(Option<Netns>);
    impl Drop for RemoveOnExit {
        fn drop(&mut self) {
            if let Some(ns) = &self.0 {
                ns.destroy();
            }
        }
    }
    let ns = RemoveOnExit(ns);
    let api = match &ns.0 {
        Some(n) => preloaded_in(services, Some(n.name())),
        None => preloaded(services),
    };
    let kc = api.kubeconfig_file();
    let mut cmd = match &ns.0 {
        Some(n) => n.command(env!("CARGO_BIN_EXE_kube-nftproxy")),
        None => std::process::Command::new(env!("CARGO_BIN_EXE_kube-nftproxy")),
    };
    cmd.args(["run", "--hostname-override=node-a", "--min-sync-period=0"])
        .arg("--kubeconfig")
        .arg(&kc);
    if kernel {
        // The first full sync is logged at info; that is what the run waits for.
        cmd.env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
    } else {
        cmd.arg("--dry-run")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    let out: Box<dyn std::io::Read + Send> = if kernel {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let mut lines = BufReader::new(out).lines();
    let first_sync = |l: &str| {
        if kernel {
            // The log may be coloured: drop the escape sequences before matching.
            let mut plain = String::new();
            let mut escape = false;
            for c in l.chars() {
                match (escape, c) {
                    (false, '\x1b') => escape = true,
                    (true, 'm') => escape = false,
                    (false, c) => plain.push(c),
                    (true, _) => {}
                }
            }
            plain.contains("sync complete") && plain.contains("full=true")
        } else {
            l.starts_with("full sync")
        }
    };
    loop {
        let l = lines.next().expect("agent output ended").unwrap();
        if first_sync(&l) {
            break;
        }
    }
    // Some churn, so the figure includes steady-state syncs, not just the first one.
    std::thread::spawn(move || for _ in lines {});
    for round in 0..200 {
        api.apply(&slice((round * 7919) % services, round + 1));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    if let Some(n) = &ns.0 {
        let listing = n.nft_list_table("ip", "kube-nftproxy");
        assert!(
            listing.contains("map service-endpoints"),
            "the agent did not program its namespace"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l.to_string())
            .unwrap_or_default()
    };
    println!(
        "agent at {services} Services x 10 endpoints{}: {} / {}",
        if kernel {
            ", programming the kernel"
        } else {
            ", --dry-run"
        },
        field("VmHWM"),
        field("VmRSS")
    );
}
