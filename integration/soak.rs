//! Chaos soak: the agent (`kube-nftproxy run`, in a node network namespace this test
//! creates) against the fake API server, under 100 Service/EndpointSlice changes per
//! second, with faults injected at random between checks.
//!
//! Each round: churn for about a second, inject one fault (chosen by a seeded PRNG, every
//! kind in turn before any repeats), keep churning through it, end the fault and the churn,
//! then measure how long the node takes to hold exactly what `kube-nftproxy render` makes
//! of the fake's current objects (loaded with `nft -f` into a scratch namespace and
//! listed back, as `integration/agent.rs` compares). Checked after every round: converged
//! within the limit, a foreign table untouched, the agent's RSS bounded, no panic in its
//! log, and for SIGTERM a clean exit.
//!
//! Faults: the API server drops every watch; answers 410 Gone (expired history, in-stream
//! ERROR); 500s on lists; slow answers (a 3 s delay on every request, longer than the
//! agent's verify period); stops then comes back (connection refused, then relists);
//! `nft flush ruleset`; `nft delete table` of ours; another program adding its own table;
//! the kernel refusing batches (another process owns `table ip kube-nftproxy`); SIGKILL of
//! the agent and restart; SIGTERM and restart.
//!
//! Short variant (CI, about 60 s): `cargo test --test soak`. Long:
//! `SOAK_MINUTES=30 cargo test --release --test soak -- --ignored --nocapture`.
//! `SOAK_SEED` picks the fault order. Needs root, `ip`, `nft`.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_nftproxy::nft::normalize::{normalize, normalize_slots};
use serde_json::{json, Value};
use support::fakeapi::FakeApi;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nftproxy");
const BASE_ARGS: [&str; 2] = ["--hostname-override=node-a", "--cluster-cidr=10.244.0.0/16"];
const TABLE: &str = "kube-nftproxy";
const VERIFY: &str = "--verify-period=1s";
/// Services the churn plays with.
const POOL: usize = 40;
/// Converged within this after a fault ends (the verify period, a sync, and the relist
/// backoff of kube's watcher after server errors).
const CONVERGE_LIMIT: Duration = Duration::from_secs(10);
/// Agent RSS bound (a few dozen Services).
const RSS_LIMIT_KIB: u64 = 150 * 1024;
const FOREIGN: &str = "table inet soak-foreign {\n\tchain c {\n\t\ttype filter hook input priority 10; policy accept;\n\t\tip saddr 192.0.2.1 counter accept\n\t}\n}\n";

/// Another program's table, added during the soak.
fn other_table(k: usize) -> String {
    format!("table ip soak-other-{k} {{\n\tset s {{\n\t\ttype ipv4_addr\n\t\telements = {{ 192.0.2.{k} }}\n\t}}\n}}\n")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn node_obj() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}})
}

fn service(i: usize, v: u64) -> Value {
    let proto = ["TCP", "UDP", "TCP", "SCTP"][(v % 4) as usize];
    let np = v % 3 == 0;
    let mut port =
        json!({"name": "p", "protocol": proto, "port": 80 + (v % 2), "targetPort": 8080});
    if np {
        port["nodePort"] = json!(30000 + i);
    }
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "soak"},
        "spec": {"type": if np { "NodePort" } else { "ClusterIP" },
                 "clusterIP": format!("10.96.1.{}", i + 1), "clusterIPs": [format!("10.96.1.{}", i + 1)],
                 "ports": [port],
                 "sessionAffinity": if v % 7 == 0 { "ClientIP" } else { "None" }},
        "status": {"loadBalancer": {}}})
}

fn slice(i: usize, v: u64) -> Value {
    let n = (v % 5) as usize;
    let proto = ["TCP", "UDP", "TCP", "SCTP"][(v % 4) as usize];
    let eps: Vec<Value> = (0..n)
        .map(|e| {
            json!({"addresses": [format!("10.244.{}.{}", i, 1 + e + (v as usize >> 8) % 200)],
               "conditions": {"ready": e != 3, "serving": true, "terminating": e == 3},
               "nodeName": if e % 2 == 0 { "node-a" } else { "node-b" }})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-x"), "namespace": "soak",
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "p", "protocol": proto, "port": 8080}]})
}

/// 100 changes per second until `stop`: Services and slices added, changed, deleted.
fn churn(api: Arc<FakeApi>, stop: Arc<AtomicBool>, seed: u64, count: Arc<AtomicU64>) {
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(POOL);
        let v = rng.next();
        match rng.below(10) {
            0 => {
                api.delete("services", "soak", &format!("s{i}"));
            }
            1 => {
                api.delete("endpointslices", "soak", &format!("s{i}-x"));
            }
            2 | 3 => {
                api.apply(&service(i, v));
            }
            _ => {
                api.apply(&slice(i, v));
            }
        }
        n += 1;
        count.fetch_add(1, Ordering::Relaxed);
        let due = start + Duration::from_millis(n * 10);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

/// A normalized listing with its chain, set and map blocks sorted: the kernel lists chains
/// in creation order, so a table built by partial syncs lists them in another order than a
/// fresh `nft -f` of the same ruleset (rule order inside a chain is kept).
fn canonical(listing: &str) -> String {
    // The agent keeps endpoints in stable slots where `render` numbers them in address
    // order: compared with the slots under each key renumbered, as the agent tests do.
    let text = normalize_slots(&normalize(listing));
    let mut head = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut cur: Option<String> = None;
    for l in text.lines() {
        match cur.as_mut() {
            Some(b) => {
                b.push_str(l);
                b.push('\n');
                if l == "}" {
                    blocks.push(cur.take().unwrap());
                }
            }
            None if l.starts_with("chain ") || l.starts_with("set ") || l.starts_with("map ") => {
                cur = Some(format!("{l}\n"))
            }
            None => head.push(l),
        }
    }
    blocks.extend(cur);
    blocks.sort();
    format!("{}\n{}", head.join("\n"), blocks.concat())
}

fn listing(node: &Netns) -> String {
    let out = node.nft(["list", "table", "ip", TABLE]);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    }
}

/// What the node should hold for the fake's objects now (see the module doc).
fn expected(api: &FakeApi, scratch: &Netns, dir: &std::path::Path) -> String {
    let docs = api.documents(&["services", "endpointslices", "nodes"]);
    let script = render_script(&BASE_ARGS, dir, &docs);
    let _ = scratch.nft(["flush", "ruleset"]);
    scratch
        .nft_apply(&script)
        .expect("nft -f of the rendered script");
    canonical(&listing(scratch))
}

struct Agent {
    proc: Option<NsProcess>,
    stderr: PathBuf,
    starts: usize,
}

impl Agent {
    fn start(&mut self, node: &Netns, api: &FakeApi) {
        self.starts += 1;
        let mut cmd = node.command(BIN);
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(api.kubeconfig_file())
            .args(BASE_ARGS)
            .args([
                "--min-sync-period=0",
                VERIFY,
                "--metrics-bind-address=127.0.0.1:0",
                "--healthz-bind-address=0.0.0.0:0",
            ])
            .env("RUST_LOG", "info,rustables=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&self.stderr)
                    .unwrap(),
            );
        self.proc = Some(node.spawn_process(cmd).expect("start the agent"));
    }

    fn pid(&mut self) -> i32 {
        self.proc.as_mut().expect("agent running").id() as i32
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        let pid = self.pid();
        // SAFETY: signalling our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let mut p = self.proc.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = p.child().try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored signal {sig} for 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| matches!(p.child().try_wait(), Ok(None)))
    }

    fn rss_kib(&mut self) -> u64 {
        let pid = self.pid();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

const FAULTS: [&str; 11] = [
    "drop-watches",
    "410-gone",
    "500-lists",
    "slow-api",
    "api-outage",
    "flush-ruleset",
    "delete-our-table",
    "foreign-table",
    "kernel-refuses",
    "sigkill",
    "sigterm",
];

/// Tampering inside our table behind the agent's back: the rules of one Service chain
/// flushed; one element of the Service-IP map deleted.
const TAMPER: [&str; 2] = ["flush-our-chain", "delete-our-element"];

fn soak(duration: Duration) {
    if !require_root_and_tools() {
        return;
    }
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let id = random_id();
    let node = Netns::create(&format!("kntp-{id}-node"), "node").unwrap();
    let scratch = Netns::create(&format!("kntp-{id}-expect"), "expect").unwrap();
    let dir = TempDir::new("soak");
    let api = Arc::new(FakeApi::start_in_netns(node.name()));
    api.apply(&node_obj());
    for i in 0..POOL / 2 {
        api.apply(&service(i, i as u64));
        api.apply(&slice(i, i as u64 * 7));
    }
    node.nft_apply(FOREIGN).unwrap();
    let foreign = node.nft_list_table("inet", "soak-foreign");
    let mut agent = Agent {
        proc: None,
        stderr: dir.path().join("agent.log"),
        starts: 0,
    };
    agent.start(&node, &api);

    // SOAK_FAULTS=a,b restricts the kinds. Tampering inside our table is in by default (the
    // verify tick repairs it: agent/sink.rs `intact`); SOAK_TAMPER=0 leaves it out.
    let mut faults: Vec<&str> = FAULTS.to_vec();
    if std::env::var("SOAK_TAMPER").as_deref() != Ok("0") {
        faults.extend(TAMPER);
    }
    if let Ok(only) = std::env::var("SOAK_FAULTS") {
        faults.retain(|f| only.split(',').any(|o| o == *f));
        assert!(
            !faults.is_empty(),
            "SOAK_FAULTS names no fault of {FAULTS:?} {TAMPER:?}"
        );
    }
    let mut rng = Rng(seed);
    let changes = Arc::new(AtomicU64::new(0));
    // Per fault: (from the end of the fault and of the churn, from the injection).
    let mut converge: BTreeMap<&str, Vec<(Duration, Duration)>> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut max_rss = 0;
    let mut extra_tables = 0;
    let t0 = Instant::now();
    let mut order: Vec<&str> = Vec::new();
    let mut round = 0;
    while t0.elapsed() < duration {
        if order.is_empty() {
            order = faults.clone();
            for k in (1..order.len()).rev() {
                order.swap(k, rng.below(k + 1));
            }
        }
        let fault = order.pop().unwrap();
        round += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let churner = {
            let (api, stop, c) = (api.clone(), stop.clone(), changes.clone());
            let s = rng.next();
            std::thread::spawn(move || churn(api, stop, s, c))
        };
        std::thread::sleep(Duration::from_millis(1000));
        let mut holder = None;
        let mut sigterm_status = None;
        let injected = Instant::now();
        match fault {
            "drop-watches" => api.drop_streams(),
            "410-gone" => api.expire_streams(),
            "500-lists" => {
                api.fail_lists(3);
                api.drop_streams();
            }
            "slow-api" => {
                api.set_delay(Duration::from_secs(3));
                api.drop_streams();
                std::thread::sleep(Duration::from_secs(2));
                api.set_delay(Duration::ZERO);
            }
            "api-outage" => {
                api.stop();
                std::thread::sleep(Duration::from_secs(2));
                api.restart();
            }
            "flush-ruleset" => {
                node.exec_ok(["nft", "flush", "ruleset"]);
                // The foreign tables were the test's to flush here; put them back.
                node.nft_apply(FOREIGN).unwrap();
                for k in 1..=extra_tables {
                    node.nft_apply(&other_table(k)).unwrap();
                }
            }
            "delete-our-table" => drop(node.nft(["delete", "table", "ip", TABLE])),
            "foreign-table" => {
                extra_tables += 1;
                node.nft_apply(&other_table(extra_tables)).unwrap();
            }
            "kernel-refuses" => {
                drop(node.nft(["delete", "table", "ip", TABLE]));
                holder = node.hold_owned_table("ip", TABLE).ok();
                std::thread::sleep(Duration::from_secs(2));
                if !agent.alive() {
                    failures.push(format!(
                        "round {round}: agent exited while the kernel refused"
                    ));
                }
            }
            "flush-our-chain" => {
                let l = listing(&node);
                if let Some(chain) = l
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("chain service-"))
                    .map(|c| c.trim_end_matches(" {"))
                    .next()
                {
                    let name = format!("service-{chain}");
                    node.exec_ok(["nft", "flush", "chain", "ip", TABLE, &name]);
                }
            }
            "delete-our-element" => {
                // The first element of the ClusterIP map, as `nft -j` gives it.
                let out = node.exec_ok(["nft", "-j", "list", "map", "ip", TABLE, "service-ips"]);
                let v: Value = serde_json::from_str(&out).unwrap_or_default();
                let key = v["nftables"]
                    .as_array()
                    .and_then(|a| a.iter().find_map(|o| o["map"]["elem"].as_array()))
                    .and_then(|e| e.first())
                    .map(|e| e[0].clone());
                if let Some(key) = key {
                    let del = json!({"nftables": [{"delete": {"element": {
                        "family": "ip", "table": TABLE, "name": "service-ips", "elem": [key]}}}]});
                    let mut c = node.command("nft");
                    c.args(["-j", "-f", "-"])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null());
                    if let Ok(mut ch) = c.spawn() {
                        use std::io::Write;
                        let _ = ch
                            .stdin
                            .take()
                            .unwrap()
                            .write_all(del.to_string().as_bytes());
                        let _ = ch.wait();
                    }
                }
            }
            "sigkill" => {
                agent.signal(libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(300));
                agent.start(&node, &api);
            }
            "sigterm" => {
                sigterm_status = Some(agent.signal(libc::SIGTERM));
                std::thread::sleep(Duration::from_millis(300));
                agent.start(&node, &api);
            }
            _ => unreachable!(),
        }
        std::thread::sleep(Duration::from_millis(500));
        let refused = holder.is_some();
        drop(holder);
        stop.store(true, Ordering::Relaxed);
        churner.join().unwrap();
        // The fault is over and the API is quiet: converge to the current state.
        let ended = Instant::now();
        let want = expected(&api, &scratch, dir.path());
        let mut got;
        let converged = loop {
            got = canonical(&listing(&node));
            if got == want {
                break Some(ended.elapsed());
            }
            if ended.elapsed() > CONVERGE_LIMIT || !agent.alive() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match converged {
            Some(d) => converge
                .entry(fault)
                .or_default()
                .push((d, ended.duration_since(injected) + d)),
            None => {
                let w: std::collections::BTreeSet<&str> = want.lines().collect();
                let g: std::collections::BTreeSet<&str> = got.lines().collect();
                let mut diff: Vec<String> = w
                    .difference(&g)
                    .map(|l| format!("- {l}"))
                    .chain(g.difference(&w).map(|l| format!("+ {l}")))
                    .take(20)
                    .collect();
                if diff.is_empty() {
                    // Same lines: show where the order or the count differs.
                    diff = want
                        .lines()
                        .zip(got.lines())
                        .enumerate()
                        .filter(|(_, (a, b))| a != b)
                        .take(6)
                        .map(|(n, (a, b))| format!("line {n}: want {a:?} got {b:?}"))
                        .collect();
                    diff.push(format!(
                        "lines: want {} got {}",
                        want.lines().count(),
                        got.lines().count()
                    ));
                }
                failures.push(format!(
                    "round {round} ({fault}{}): not converged within {CONVERGE_LIMIT:?} (agent alive: {}):\n{}",
                    if refused { ", refused" } else { "" },
                    agent.alive(),
                    diff.join("\n")
                ));
            }
        }
        if node.nft_list_table("inet", "soak-foreign") != foreign {
            failures.push(format!(
                "round {round} ({fault}): the foreign table changed"
            ));
        }
        for k in 1..=extra_tables {
            if !node
                .nft(["list", "table", "ip", &format!("soak-other-{k}")])
                .status
                .success()
            {
                failures.push(format!(
                    "round {round} ({fault}): foreign table soak-other-{k} gone"
                ));
            }
        }
        if let Some(s) = sigterm_status {
            if !s.success() {
                failures.push(format!("round {round}: SIGTERM exit status {s}"));
            }
        }
        if agent.alive() {
            let rss = agent.rss_kib();
            max_rss = max_rss.max(rss);
            if rss > RSS_LIMIT_KIB {
                failures.push(format!("round {round}: agent RSS {rss} KiB"));
            }
        } else {
            failures.push(format!(
                "round {round} ({fault}): the agent died; restarting it"
            ));
            agent.start(&node, &api);
        }
        if failures.len() > 20 {
            break;
        }
    }
    let log = agent.log();
    if log.contains("panicked") {
        failures.push("a panic in the agent's log".into());
    }
    if agent.alive() {
        agent.signal(libc::SIGTERM);
    }
    let mut all: Vec<Duration> = converge.values().flatten().map(|d| d.0).collect();
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "soak: {:.0} s, {round} faults injected, {} survived (converged), {} changes applied, {} agent starts, max agent RSS {} KiB",
        t0.elapsed().as_secs_f64(),
        all.len(),
        changes.load(Ordering::Relaxed),
        agent.starts,
        max_rss
    );
    if !all.is_empty() {
        eprintln!(
            "soak: time to converge after a fault and the churn end: median {:.0} ms, max {:.0} ms",
            ms(all[all.len() / 2]),
            ms(*all.last().unwrap())
        );
    }
    eprintln!(
        "soak:   fault               n   after the end: median/max   from injection: median/max"
    );
    for (f, ds) in &converge {
        let mut a: Vec<Duration> = ds.iter().map(|d| d.0).collect();
        let mut b: Vec<Duration> = ds.iter().map(|d| d.1).collect();
        a.sort();
        b.sort();
        eprintln!(
            "soak:   {f:<18} {:>3}   {:>6.0} / {:>6.0} ms             {:>6.0} / {:>6.0} ms",
            ds.len(),
            ms(a[a.len() / 2]),
            ms(*a.last().unwrap()),
            ms(b[b.len() / 2]),
            ms(*b.last().unwrap())
        );
    }
    api.stop();
    node.destroy();
    scratch.destroy();
    if !failures.is_empty() {
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "{} failures:\n{}\n--- agent log (tail)\n{tail}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// CI: about a minute (every fault kind at least once).
#[test]
fn soak_short() {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    soak(Duration::from_secs(secs));
}

/// `SOAK_MINUTES=30 cargo test --release --test soak -- --ignored --nocapture`
#[test]
#[ignore = "long; run explicitly"]
fn soak_long() {
    let mins: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    soak(Duration::from_secs(mins * 60));
}
