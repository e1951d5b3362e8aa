//! The agent against a real kube-apiserver (v1.20.2, built from Debian's source package by
//! integration/real-apiserver/build.sh and run on loopback by start.sh). 1.20 does not serve
//! discovery.k8s.io/v1, so this exercises `--endpoints-api auto` falling back to v1
//! Endpoints, and pins the fake API server's list/watch behaviour to a real one. The agent
//! runs with `--dry-run=full`, which touches no kernel, so it can run in this namespace.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/real-apiserver");

fn cache_binary() -> PathBuf {
    let cache = std::env::var_os("KUBE_NFTPROXY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/kube-nftproxy")
        });
    cache.join("kube-apiserver-v1.20.2")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// etcd + kube-apiserver on loopback, stopped on drop (also when a test panics).
struct RealApiserver {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl RealApiserver {
    fn start() -> Option<RealApiserver> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        if !is_root() {
            assert!(!ci, "CI must run the real-apiserver tests as root");
            eprintln!("skipping: the real kube-apiserver tests need root");
            return None;
        }
        if !cache_binary().exists() {
            if !ci {
                eprintln!(
                    "skipping: no cached kube-apiserver; run integration/real-apiserver/build.sh (about 7 minutes)"
                );
                return None;
            }
            let st = Command::new(format!("{SCRIPTS}/build.sh"))
                .status()
                .expect("run build.sh");
            assert!(st.success(), "build.sh failed");
        }
        let dir = std::env::temp_dir().join(format!(
            "kntp-apiserver-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let out = Command::new(format!("{SCRIPTS}/start.sh"))
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run start.sh");
        let guard = RealApiserver {
            kubeconfig: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            dir,
        };
        assert!(
            out.status.success(),
            "start.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(guard)
    }
}

impl Drop for RealApiserver {
    fn drop(&mut self) {
        let _ = Command::new(format!("{SCRIPTS}/stop.sh"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

/// The agent process with its stdout collected; killed on drop.
struct Agent {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    fn start(kubeconfig: &Path) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy"))
            .args([
                "run",
                "--dry-run=full",
                "--kubeconfig",
                &kubeconfig.to_string_lossy(),
                "--hostname-override=node-a",
                "--cluster-cidr=10.244.0.0/16",
                "--min-sync-period=0",
            ])
            .env("RUST_LOG", "info,rustables=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut b = b.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Agent {
            child,
            stdout,
            stderr,
        }
    }

    /// The last complete ruleset the agent printed.
    fn latest(&self) -> String {
        let out = self.stdout.lock().unwrap().clone();
        let start = out.rfind("table ip kube-nftproxy {}").unwrap_or(0);
        out[start..].to_string()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if pred(&self.latest()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\n--- latest ruleset ---\n{}\n--- agent stderr ---\n{}",
            self.latest(),
            self.stderr.lock().unwrap()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

#[test]
fn agent_follows_services_and_endpoints_on_a_real_apiserver() {
    let Some(server) = RealApiserver::start() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    });
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PostParams::default();
    rt.block_on(async {
        nodes
            .create(
                &pp,
                &obj(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": "node-a"},
                    "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}
                })),
            )
            .await
            .unwrap();
        services
            .create(
                &pp,
                &obj(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"clusterIP": "10.96.7.7", "type": "NodePort",
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
                })),
            )
            .await
            .unwrap();
        endpoints
            .create(
                &pp,
                &obj(json!({
                    "apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": "web", "namespace": "default"},
                    "subsets": [{"addresses": [{"ip": "10.244.0.5", "nodeName": "node-a"}],
                                 "ports": [{"name": "http", "port": 8080}]}]
                })),
            )
            .await
            .unwrap();
    });

    let agent = Agent::start(&server.kubeconfig);
    agent.wait_for("the Service and its endpoint", |r| {
        r.contains("10.96.7.7 . tcp . 80 : goto endpoints")
            && r.contains("10.96.7.7 . tcp . 80 . 0 : 10.244.0.5 . 8080")
            && r.contains("tcp . 30080 : goto external-endpoints")
            && r.contains("elements = { 192.168.0.10 }")
    });
    assert!(
        agent.stderr.lock().unwrap().contains("v1 Endpoints"),
        "1.20 has no discovery.k8s.io/v1, so the agent must fall back to v1 Endpoints"
    );

    // A second endpoint: an equal-probability choice between two.
    rt.block_on(async {
        let mut e = endpoints.get("web").await.unwrap();
        e.subsets = Some(obj(json!([{
            "addresses": [{"ip": "10.244.0.5", "nodeName": "node-a"}, {"ip": "10.244.1.6", "nodeName": "node-b"}],
            "ports": [{"name": "http", "port": 8080}]
        }])));
        endpoints.replace("web", &pp, &e).await.unwrap();
    });
    agent.wait_for("two endpoints", |r| {
        r.contains("10.96.7.7 . tcp . 80 . 0 : 10.244.0.5 . 8080")
            && r.contains("10.96.7.7 . tcp . 80 . 1 : 10.244.1.6 . 8080")
            && r.contains("numgen random mod 2 map @service-endpoints")
    });

    // Not ready: the endpoint leaves the rotation; none left means reject.
    rt.block_on(async {
        let mut e = endpoints.get("web").await.unwrap();
        e.subsets = Some(obj(json!([{
            "notReadyAddresses": [{"ip": "10.244.0.5", "nodeName": "node-a"}],
            "ports": [{"name": "http", "port": 8080}]
        }])));
        endpoints.replace("web", &pp, &e).await.unwrap();
    });
    agent.wait_for("reject for a Service without ready endpoints", |r| {
        r.contains("10.96.7.7 . tcp . 80 : goto reject-chain") && !r.contains(": 10.244.")
    });

    // Deleted: gone from every map.
    rt.block_on(async {
        services
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
    });
    agent.wait_for("the Service to disappear", |r| {
        r.contains("table ip kube-nftproxy {") && !r.contains("10.96.7.7")
    });

    // SIGTERM: a clean exit.
    let pid = agent.child.id() as i32;
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut agent = agent;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            assert!(st.success(), "agent exited with {st} on SIGTERM");
            break;
        }
        assert!(Instant::now() < deadline, "agent did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
