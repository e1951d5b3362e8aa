//! Golden files for `trace`, `explain` and `render --diff`: each case runs the binary on a
//! `testdata/<scenario>/` with the scenario's own `args` and compares stdout with
//! `testdata/<scenario>/trace-<name>.txt` (or `.json`). `UPDATE_GOLDEN=1 cargo test --test
//! trace_golden` rewrites them; read every diff before committing it.

use std::path::Path;
use std::process::Command;

mod support;
use support::scenario_args;

/// (scenario, golden file, subcommand and its arguments before the scenario's args).
/// `{}` in the arguments stands for the scenario's cluster.yaml.
const CASES: &[(&str, &str, &[&str])] = &[
    // ClusterIP from a pod on the node: 3 endpoints, hairpin for the local one
    (
        "clusterip-basic",
        "trace-pod.txt",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.96.0.20",
            "--port",
            "80",
        ],
    ),
    (
        "clusterip-basic",
        "trace-pod.json",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.96.0.20",
            "--port",
            "80",
            "--output",
            "json",
        ],
    ),
    // ClusterIP from the node: masqueraded
    (
        "clusterip-basic",
        "trace-node.txt",
        &[
            "trace",
            "--src",
            "192.168.0.10",
            "--dst",
            "10.96.0.20",
            "--port",
            "80",
        ],
    ),
    // A port the ClusterIP lacks
    (
        "clusterip-basic",
        "trace-wrong-port.txt",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.96.0.20",
            "--port",
            "81",
        ],
    ),
    // NodePort from outside: both endpoints, masqueraded
    (
        "nodeport",
        "trace-nodeport.txt",
        &[
            "trace",
            "--src",
            "192.168.0.100",
            "--dst",
            "192.168.0.10",
            "--port",
            "30080",
        ],
    ),
    // No endpoints: rejected
    (
        "no-endpoints",
        "trace-reject.txt",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.96.0.31",
            "--port",
            "80",
        ],
    ),
    (
        "no-endpoints",
        "trace-reject.json",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.96.0.31",
            "--port",
            "80",
            "--output",
            "json",
        ],
    ),
    // Load-balancer IP from outside loadBalancerSourceRanges: dropped
    (
        "lb-source-ranges",
        "trace-drop.txt",
        &[
            "trace",
            "--src",
            "192.168.0.100",
            "--dst",
            "203.0.113.30",
            "--port",
            "443",
        ],
    ),
    // Session affinity: a new client, one numgen rule per endpoint
    (
        "session-affinity",
        "trace-affinity.txt",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.96.0.46",
            "--port",
            "80",
        ],
    ),
    // Not a Service at all: untouched
    (
        "clusterip-basic",
        "trace-untouched.txt",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.244.1.5",
            "--port",
            "80",
            "--from",
            "pod",
        ],
    ),
    // IPv6: the ip6 table
    (
        "dual-stack",
        "trace-ipv6.txt",
        &[
            "trace",
            "--src",
            "fd00:244::7",
            "--dst",
            "fd00:96::50",
            "--port",
            "80",
        ],
    ),
    // Slot fall-through: a 2-endpoint Service meets the `mod 3` rule first
    (
        "demo",
        "trace-fallthrough.txt",
        &[
            "trace",
            "--src",
            "10.244.0.7",
            "--dst",
            "10.96.0.10",
            "--port",
            "53",
            "--proto",
            "udp",
        ],
    ),
    (
        "topology-hints",
        "trace-explain.txt",
        &["explain", "default/zoned"],
    ),
    (
        "topology-hints",
        "trace-explain.json",
        &["explain", "default/zoned", "--output", "json"],
    ),
    (
        "bad-input",
        "trace-explain.txt",
        &["explain", "default/big-port"],
    ),
    (
        "bad-input",
        "trace-explain.json",
        &["explain", "default/big-port", "--output", "json"],
    ),
    (
        "etp-local",
        "trace-explain.txt",
        &["explain", "default/local-lb"],
    ),
    (
        "etp-local",
        "trace-explain.json",
        &["explain", "default/local-lb", "--output", "json"],
    ),
    (
        "terminating",
        "trace-explain.txt",
        &["explain", "default/rolling"],
    ),
    (
        "terminating",
        "trace-explain.json",
        &["explain", "default/rolling", "--output", "json"],
    ),
    (
        "clusterip-basic",
        "trace-diff.txt",
        &[
            "render",
            "--diff",
            "{}",
            "testdata/clusterip-basic/trace-diff-new.yaml",
        ],
    ),
];

#[test]
fn trace_explain_and_diff_match_their_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (scenario, golden, cmd) in CASES {
        let dir = root.join("testdata").join(scenario);
        let cluster = format!("testdata/{scenario}/cluster.yaml");
        let mut args: Vec<String> = Vec::new();
        let mut cluster_given = false;
        for a in cmd.iter() {
            if *a == "{}" {
                args.push(cluster.clone());
                cluster_given = true;
            } else {
                args.push(a.to_string());
            }
        }
        args.extend(scenario_args(&dir));
        if !cluster_given {
            args.push(cluster.clone());
        }
        let out = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy"))
            .args(&args)
            .current_dir(root)
            .env("RUST_LOG", "off")
            .output()
            .expect("run kube-nftproxy");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            failures.push(format!(
                "{scenario}/{golden}: {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        if golden.ends_with(".json") {
            let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON parses");
            let schema = format!("kube-nftproxy.{}/v1", cmd[0]);
            assert_eq!(v["schema"], schema.as_str(), "{scenario}/{golden}");
        }
        let path = dir.join(golden);
        if update {
            // docs/debugging.md quotes some of these files: keep the quotes in step
            let before = std::fs::read_to_string(&path).unwrap_or_default();
            let doc_path = root.join("docs/debugging.md");
            let doc = std::fs::read_to_string(&doc_path).unwrap();
            let (b, a) = (before.trim_end(), stdout.trim_end());
            if !b.is_empty() && b != a && doc.contains(b) {
                std::fs::write(&doc_path, doc.replace(b, a)).unwrap();
            }
            std::fs::write(&path, &stdout).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != stdout {
            failures.push(format!(
                "{scenario}/{golden} differs (UPDATE_GOLDEN=1 to rewrite):\n--- want ---\n{want}\n--- got ---\n{stdout}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The examples in docs/debugging.md are real: each is one of the golden files, whole.
#[test]
fn debugging_doc_quotes_the_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/debugging.md")).unwrap();
    for f in [
        "demo/trace-fallthrough.txt",
        "lb-source-ranges/trace-drop.txt",
        "no-endpoints/trace-reject.txt",
        "etp-local/trace-explain.txt",
        "terminating/trace-explain.txt",
        "clusterip-basic/trace-diff.txt",
    ] {
        let text = std::fs::read_to_string(root.join("testdata").join(f)).unwrap();
        assert!(
            doc.contains(text.trim_end()),
            "docs/debugging.md no longer quotes testdata/{f} (UPDATE_GOLDEN=1 keeps it in step)"
        );
    }
}
