//! End-to-end scale of the agent (issue 18, item 3): a benchmark, not a pass/fail test. Run
//! `cargo test --release --test scale -- --ignored --nocapture --test-threads=1`
//! (`SCALE=uniform-10k` etc. picks one cluster; see `CLUSTERS`).
//!
//! For each cluster the fake API server, in a network namespace made for the run, holds the
//! whole cluster before the agent starts; the agent binary is then started in that
//! namespace exactly as the DaemonSet starts it (kubeconfig, `--hostname-override`, JSON
//! logs) and measured from the outside:
//! - exec → the first full sync logged ("sync complete", full=true): every Service
//!   programmed. The kernel's tables are then read back over netlink and compared with
//!   what `render` makes of the same objects (chains, rule counts, every set element), so
//!   the figure cannot stop at a half-programmed table;
//! - 20 single-endpoint changes, one every 200 ms: from the API write to the kernel's commit
//!   (its NEWGEN notification, heard in the node's namespace: from then on packets see the
//!   change), and to the "sync complete" line of the sync that carried it (which waits for
//!   the kernel's acknowledgement, 5-20 ms after a commit that deletes anything: an RCU
//!   grace period); and the sync's own time as the agent logs it (`elapsed_ms`);
//! - the agent's peak RSS (`VmHWM`) at the end.

mod support;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kube_nftproxy::cli::config::RenderArgs;
use kube_nftproxy::cli::render;
use kube_nftproxy::cli::synthetic::{self, realistic};
use kube_nftproxy::nft::monitor;
use kube_nftproxy::nft::netlink::{differences, read_table, summarize};
use kube_nftproxy::ruleset::TABLE_NAME;
use serde_json::Value;
use support::fakeapi::FakeApi;
use support::*;

const NODE: &str = "node-a";

/// (name, mix, Services, endpoints per Service for the uniform mix)
const CLUSTERS: [(&str, &str, usize, usize); 4] = [
    ("uniform-1k", "uniform", 1_000, 10),
    ("uniform-10k", "uniform", 10_000, 10),
    ("uniform-45k-x1", "uniform", 45_000, 1),
    ("realistic-10k", "realistic", 10_000, 0),
];

fn items(mix: &str, services: usize, endpoints: usize) -> Vec<Value> {
    match mix {
        "uniform" => synthetic::items(&synthetic::Spec {
            services,
            endpoints,
            node: NODE.into(),
        })
        .collect(),
        _ => realistic::items(&realistic::Spec {
            services,
            seed: 1,
            node: NODE.into(),
        })
        .collect(),
    }
}

/// One line of the agent's JSON log that says a sync completed.
struct Synced {
    at: Instant,
    full: bool,
    elapsed_ms: f64,
    /// Operations in the sync's transaction (0: nothing to change in the kernel).
    ops: u64,
}

fn synced(line: &str) -> Option<(bool, f64, u64)> {
    let v: Value = serde_json::from_str(line).ok()?;
    // `--logging-format=json` flattens the event's fields into the line.
    let f = &v;
    (f["message"] == "sync complete").then(|| {
        (
            f["full"].as_bool().unwrap_or(false),
            f["elapsed_ms"].as_f64().unwrap_or(f64::NAN),
            f["ops"].as_u64().unwrap_or(0),
        )
    })
}

/// CPU time (user + system) a process used so far, from `/proc/PID/stat` (clock ticks of
/// 10 ms).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15: indexes 11 and 12 here.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) * 10.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(name: &str, mix: &str, services: usize, endpoints: usize) {
    let ns = Netns::create(&format!("kntp-{}-scale", random_id()), "scale").unwrap();
    let objects = items(mix, services, endpoints);
    let api = FakeApi::start_in_netns(ns.name());
    for o in &objects {
        api.apply(o);
    }
    // What the node must hold: `render` of the same objects, with the agent's options.
    let dir = std::env::temp_dir().join(format!("kntp-scale-{}", random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.json");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    synthetic::write_list(objects.iter().cloned(), &mut out).unwrap();
    drop(out);
    let args = RenderArgs {
        hostname_override: Some(NODE.into()),
        ..Default::default()
    };
    let want = render::load(&args, &[file.to_string_lossy().into_owned()])
        .unwrap()
        .ruleset;
    let _ = std::fs::remove_dir_all(&dir);
    let slices: Vec<Value> = objects
        .into_iter()
        .filter(|o| {
            o["kind"] == "EndpointSlice" && o["endpoints"].as_array().is_some_and(|e| !e.is_empty())
        })
        .collect();

    let kc = api.kubeconfig_file();
    let started = Instant::now();
    let mut child = ns
        // SCALE_BIN: another build of the agent, e.g. target/profiling/kube-nftproxy (with
        // symbols, for SCALE_PERF).
        .command(std::env::var("SCALE_BIN").unwrap_or(env!("CARGO_BIN_EXE_kube-nftproxy").into()))
        .args([
            "--hostname-override=node-a",
            "--logging-format=json",
            "--v=2",
            "--min-sync-period=0",
        ])
        .arg("--kubeconfig")
        .arg(&kc)
        // SCALE_ARGS: more flags for the agent, e.g. `--kube-api-qps=50`.
        .args(
            std::env::var("SCALE_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SCALE_PERF=FILE samples the agent's stacks until the first sync, and
    // SCALE_PERF_CHANGES=FILE during the endpoint changes (`perf report -i FILE`).
    let pid = child.id();
    let record = |f: std::ffi::OsString| {
        std::process::Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(f)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf")
    };
    let stop = |mut p: std::process::Child| {
        // SIGINT makes perf write its file.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    };
    let perf = std::env::var_os("SCALE_PERF").map(record);
    let (tx, rx) = mpsc::channel::<Synced>();
    let stderr = child.stderr.take().unwrap();
    // SCALE_LOG=FILE keeps the agent's log, to see where the time goes.
    let mut keep = std::env::var_os("SCALE_LOG").map(|f| std::fs::File::create(f).unwrap());
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{:?} {l}", started.elapsed());
            }
            if let Some((full, elapsed_ms, ops)) = synced(&l) {
                let _ = tx.send(Synced {
                    at: Instant::now(),
                    full,
                    elapsed_ms,
                    ops,
                });
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the agent's first sync");
    assert!(first.full, "the first sync is a full one");
    let to_programmed = first.at - started;
    let cpu_at_programmed = cpu_ms(child.id());
    if std::env::var_os("SCALE_REQUESTS").is_some() {
        for r in api.request_log() {
            eprintln!("request: {r}");
        }
    }
    if let Some(p) = perf {
        stop(p);
    }

    // Every Service is there: the kernel's tables equal the render, element for element.
    let got = ns.run_in(|| {
        want.tables
            .iter()
            .map(|t| (t.family, read_table(t.family, TABLE_NAME)))
            .collect::<Vec<_>>()
    });
    for (t, (family, have)) in want.tables.iter().zip(got) {
        let have = have
            .unwrap()
            .unwrap_or_else(|| panic!("no {family:?} table"));
        let diff = differences(&have, &summarize(t));
        assert!(
            diff.is_empty(),
            "{name}: the kernel differs from render: {diff:?}"
        );
    }

    // Single endpoint changes, one every 200 ms. The commit moment is the kernel's NEWGEN
    // notification, heard in the node's namespace (listening only now: a listener makes
    // the kernel build a notification per object, which would slow the first sync).
    let commits = ns.run_in(|| monitor::Commits::listen().expect("nftables notifications"));
    std::thread::sleep(Duration::from_millis(500));
    while rx.try_recv().is_ok() {} // syncs that followed the first one
    let (mut to_commit, mut e2e, mut sync) = (Vec::new(), Vec::new(), Vec::new());
    let mut unused = 0;
    let perf = std::env::var_os("SCALE_PERF_CHANGES").map(record);
    for k in 0..20usize {
        let mut s = slices[(k * 7919) % slices.len()].clone();
        s["endpoints"][0]["addresses"][0] =
            Value::String(format!("10.250.{}.{}", k / 250, k % 250 + 1));
        let t0 = Instant::now();
        api.apply(&s);
        // No sync at all: the slice is one the agent does not watch (a headless Service's).
        let done = loop {
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok(r) if !r.full => break Some(r),
                Ok(_) => {}
                Err(_) => break None,
            }
        };
        let Some(done) = done else {
            unused += 1;
            continue;
        };
        // A changed endpoint the node does not use (another zone's, under topology hints;
        // another node's, under a Local policy) changes nothing in the kernel.
        if done.ops == 0 {
            unused += 1;
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let commit = commits
            .first_since(t0, Duration::from_millis(100))
            .expect("a commit after the change");
        to_commit.push(ms(commit - t0));
        e2e.push(ms(done.at - t0));
        sync.push(done.elapsed_ms);
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(p) = perf {
        stop(p);
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0;
    println!(
        "{name:>16}: exec -> programmed {:7.0} ms (agent CPU {cpu_at_programmed:6.0} ms, first sync {:6.0} ms); one endpoint change: \
         API write -> kernel commit median {:5.1} ms (max {:5.1}), -> sync logged median {:5.1} ms \
         (max {:5.1}), the sync itself median {:5.2} ms (max {:5.2}); agent peak RSS {hwm:5.0} MiB{}",
        ms(to_programmed),
        first.elapsed_ms,
        median(to_commit.clone()),
        to_commit.iter().cloned().fold(0.0, f64::max),
        median(e2e.clone()),
        e2e.iter().cloned().fold(0.0, f64::max),
        median(sync.clone()),
        sync.iter().cloned().fold(0.0, f64::max),
        if unused > 0 {
            format!(" ({unused} of 20 changes changed nothing this node programs)")
        } else {
            String::new()
        },
    );
    ns.destroy();
}

#[test]
#[ignore = "a benchmark; run explicitly with --release --ignored --nocapture"]
fn agent_end_to_end_at_scale() {
    if !require_root_and_tools() {
        return;
    }
    let only = std::env::var("SCALE").ok();
    for (name, mix, services, endpoints) in CLUSTERS {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == name))
        {
            continue;
        }
        run(name, mix, services, endpoints);
    }
}
