//! End-to-end tests of the node agent: `kube-nftproxy run` runs inside the node network
//! namespace of the harness topology (see `integration/support/cluster.rs`), watches the
//! fake API server (`integration/support/fakeapi.rs`) and programs the node's kernel; pods
//! and the harness's clients check with real connections that the node serves what the
//! API says, across Service and endpoint changes, UDP conntrack cleanup, API server
//! outages, agent restarts, startup gating, `--dry-run` and the v1 Endpoints fallback.
//!
//! Reaching the API server: the fake is started with [`FakeApi::start_in_netns`], so its
//! listener is `127.0.0.1:<port>` inside the node namespace (bound by a thread that
//! entered the namespace); the agent, also in that namespace, reaches it through the
//! fake's kubeconfig, while the test drives it through the in-process back door.
//!
//! Needs root, `ip` and `nft`; skipped otherwise (panics instead if CI=true).

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kube_nftproxy::nft::normalize::normalize_slots;

/// `nft::normalize::normalize`, and the slots under each endpoint map key in value order:
/// the agent keeps endpoints in stable slots (a replaced endpoint's slot is reused, a
/// removed one's taken by the last), render numbers them in address order, so what is
/// compared is the endpoints under every key. The slots still must be 0..N-1: a key with
/// a hole is not renumbered, so it differs from render's.
fn normalize(text: &str) -> String {
    normalize_slots(&kube_nftproxy::nft::normalize::normalize(text))
}
use serde_json::{json, Value};
use support::fakeapi::FakeApi;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nftproxy");
const BASE_ARGS: [&str; 2] = ["--hostname-override=node-a", "--cluster-cidr=10.244.0.0/16"];
const TABLE: &str = "kube-nftproxy";

const POD_A: &str = "10.244.0.11";
const POD_B: &str = "10.244.0.12";
const POD_C: &str = "10.244.0.50";
const SVC_IP: &str = "10.96.0.10";
const SVC2_IP: &str = "10.96.0.20";
const DNS_IP: &str = "10.96.0.53";

// ---------------------------------------------------------------------------
// polling
// ---------------------------------------------------------------------------

/// Polls `cond` every 50 ms until it holds; panics with `what` (and the diagnostics
/// `why` returns) once `within` has passed.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// cluster objects (JSON through the back door)
// ---------------------------------------------------------------------------

fn node_a() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}},
        "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": "node-a"}
        ]}
    })
}

/// A ClusterIP Service with one port `p`: `proto` `port` -> `target`.
fn service(name: &str, ip: &str, proto: &str, port: u16, target: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": name},
            "ports": [{"name": "p", "protocol": proto, "port": port, "targetPort": target}]
        },
        "status": {"loadBalancer": {}}
    })
}

/// The EndpointSlice of Service `svc`: ready endpoints on node-a, port `p`.
fn slice(svc: &str, proto: &str, port: u16, eps: &[&str]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|ip| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-a"
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{svc}-abcde"), "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            }
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "p", "protocol": proto, "port": port}]
    })
}

/// The v1 Endpoints object of Service `svc`.
fn endpoints(svc: &str, proto: &str, port: u16, eps: &[&str]) -> Value {
    let addresses: Vec<Value> = eps
        .iter()
        .map(|ip| json!({"ip": ip, "nodeName": "node-a"}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": svc, "namespace": "default"},
        "subsets": [{
            "addresses": addresses,
            "ports": [{"name": "p", "protocol": proto, "port": port}]
        }]
    })
}

/// Service `name` on `ip`:80/TCP -> 8080 and its slice.
fn apply_http_service(api: &FakeApi, name: &str, ip: &str, eps: &[&str]) {
    api.apply(&service(name, ip, "TCP", 80, 8080));
    api.apply(&slice(name, "TCP", 8080, eps));
}

// ---------------------------------------------------------------------------
// the agent process
// ---------------------------------------------------------------------------

/// A scratch directory under the temp dir, removed on drop.
/// `kube-nftproxy run` inside the node namespace; stdout and stderr go to files. Killed
/// on drop; when the test is failing (or `KNTP_AGENT_LOG` is set), its output is printed
/// first.
struct Agent {
    name: String,
    proc: Option<NsProcess>,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Agent {
    fn start(name: &str, node: &Netns, api: &FakeApi, extra: &[&str]) -> Agent {
        let mut args: Vec<String> = vec!["run".into(), "--kubeconfig".into()];
        args.push(api.kubeconfig_file().to_string_lossy().into_owned());
        args.extend(BASE_ARGS.iter().map(|a| a.to_string()));
        args.push("--min-sync-period=0".into());
        args.extend(extra.iter().map(|a| a.to_string()));
        Agent::spawn(name, node, &args, &[])
    }

    /// The agent binary with exactly `args`, and `env` added.
    fn spawn(name: &str, node: &Netns, args: &[String], env: &[(&str, &str)]) -> Agent {
        let dir = TempDir::new(name);
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut cmd = node.command(BIN);
        cmd.args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,rustables=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let proc = node
            .spawn_process(cmd)
            .unwrap_or_else(|e| panic!("starting the agent in {}: {e}", node.name()));
        Agent {
            name: name.to_string(),
            proc: Some(proc),
            stdout,
            stderr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Log lines reporting a finished sync.
    fn syncs(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("sync complete"))
            .map(String::from)
            .collect()
    }

    /// Waits until the agent reported at least `n` finished syncs.
    fn wait_syncs(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.syncs().len() < n {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "agent {}: fewer than {n} syncs after {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            if let Ok(Some(status)) = p.child().try_wait() {
                panic!("agent {} exited early: {status}", self.name);
            }
        }
    }

    /// SIGTERM, then waits (up to 5 s) for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let mut p = self.proc.take().expect("agent running");
        let pid = p.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = p.child().try_wait().expect("wait for the agent") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} ignored SIGTERM for 5 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.proc.take());
        // KNTP_AGENT_LOG=1 prints the log of passing tests too (with --nocapture).
        if std::thread::panicking() || std::env::var_os("KNTP_AGENT_LOG").is_some() {
            eprintln!(
                "==== agent {} stderr ====\n{}\n==== agent {} stdout ====\n{}",
                self.name,
                self.log(),
                self.name,
                self.stdout()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// kernel state
// ---------------------------------------------------------------------------

fn has_table(node: &Netns) -> bool {
    node.exec_ok(["nft", "list", "tables"])
        .lines()
        .any(|l| l.trim() == format!("table ip {TABLE}"))
}

/// `nft list table ip kube-nftproxy` in `node`, or "" when there is none.
fn listing(node: &Netns) -> String {
    let out = node.nft(["list", "table", "ip", TABLE]);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    }
}

/// The handle of our table (changes when the table is replaced).
fn table_handle(node: &Netns) -> Option<u64> {
    let out = node.nft(["-a", "list", "table", "ip", TABLE]);
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    first.split("# handle ").nth(1)?.trim().parse().ok()
}

/// An endpoint as the data of an endpoint map element (`... . slot : <ip> . <port>`), in a
/// listing or in `--dry-run`'s element lines.
fn dnat_to(ip: &str) -> String {
    format!(": {ip} . ")
}

/// Lines only in `want` (-) or only in `got` (+).
fn line_diff(want: &str, got: &str) -> String {
    let w: std::collections::BTreeSet<&str> = want.lines().collect();
    let g: std::collections::BTreeSet<&str> = got.lines().collect();
    let mut s = String::new();
    for l in want.lines().filter(|l| !g.contains(l)) {
        s += &format!("- {l}\n");
    }
    for l in got.lines().filter(|l| !w.contains(l)) {
        s += &format!("+ {l}\n");
    }
    if s.is_empty() {
        s = "(same lines, different order or count)\n".into();
    }
    s
}

/// What the node should hold for the objects the fake serves now: `kube-nftproxy render`
/// of the fake's Services, EndpointSlices (or Endpoints) and Nodes, loaded with `nft -f`
/// into a scratch namespace and listed back, normalized.
fn expected_listing(api: &FakeApi, slices: bool) -> String {
    let kinds: &[&str] = if slices {
        &["services", "endpointslices", "nodes"]
    } else {
        &["services", "endpoints", "nodes"]
    };
    let dir = TempDir::new("expected");
    let script = render_script(&BASE_ARGS, dir.path(), &api.documents(kinds));
    let scratch = Netns::create(&format!("kntp-{}-expect", random_id()), "expect").unwrap();
    scratch
        .nft_apply(&script)
        .unwrap_or_else(|e| panic!("nft -f of the rendered script: {e}\n{script}"));
    normalize(&listing(&scratch))
}

/// Waits until the node's table is exactly what render produces for the fake's objects.
fn wait_converged(node: &Netns, api: &FakeApi, slices: bool, within: Duration) -> String {
    let want = expected_listing(api, slices);
    let deadline = Instant::now() + within;
    loop {
        let got = normalize(&listing(node));
        if got == want {
            return got;
        }
        if Instant::now() >= deadline {
            panic!(
                "node {} did not converge within {within:?}:\n{}",
                node.name(),
                line_diff(&want, &got)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// traffic
// ---------------------------------------------------------------------------

fn tcp_once(dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&dst, timeout)?;
    s.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    if buf.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty reply"));
    }
    Ok(buf.trim_end().to_string())
}

/// The serving role of one successful reply.
fn server_of(r: &io::Result<String>) -> Option<String> {
    r.as_ref().ok().map(|s| Identity::parse(s).server)
}

/// Each attempt of a [`Stream`]: when it started, and its reply.
type Attempts = Arc<Mutex<Vec<(Instant, io::Result<String>)>>>;

/// One request every `every` from `ns` on a background thread, until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    results: Attempts,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    /// TCP connections to `dst:port`, one every `every`, each with a 1 s timeout.
    fn tcp(ns: &Netns, dst: &str, port: u16, every: Duration) -> Stream {
        let dst = sa(dst, port);
        Stream::start(ns, every, move || {
            Box::new(move || tcp_once(dst, Duration::from_secs(1)))
        })
    }

    /// UDP datagrams to `dst:port`, all from the same socket `src` (fixed source port),
    /// each waiting up to 300 ms for the reply.
    fn udp_fixed_source(ns: &Netns, src: SocketAddr, dst: &str, port: u16) -> Stream {
        let dst = sa(dst, port);
        Stream::start(ns, Duration::from_millis(50), move || {
            let s = UdpSocket::bind(src).expect("bind the fixed UDP source port");
            s.connect(dst).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            Box::new(move || {
                s.send(b"ping\n")?;
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
            })
        })
    }

    fn start(
        ns: &Netns,
        every: Duration,
        make: impl FnOnce() -> Box<dyn FnMut() -> io::Result<String>> + Send + 'static,
    ) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (st, rs, ns) = (stop.clone(), results.clone(), ns.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            ns.run_in(move || {
                let mut once = make();
                let _ = ready_tx.send(());
                while !st.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    let r = once();
                    rs.lock().unwrap().push((t, r));
                    std::thread::sleep(every.saturating_sub(t.elapsed()));
                }
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("stream thread started");
        Stream {
            stop,
            results,
            thread: Some(thread),
        }
    }

    fn len(&self) -> usize {
        self.results.lock().unwrap().len()
    }

    /// Servers of the results from index `from` on; errors as `Err(text)`.
    fn outcomes(&self, from: usize) -> Vec<Result<String, String>> {
        self.results.lock().unwrap()[from..]
            .iter()
            .map(|(_, r)| match r {
                Ok(s) => Ok(Identity::parse(s).server),
                Err(e) => Err(format!("{:?}: {e}", e.kind())),
            })
            .collect()
    }

    fn failures(&self) -> Vec<String> {
        self.outcomes(0)
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Waits until the stream made `n` more attempts than it had made at the call.
    fn wait_more(&self, n: usize, within: Duration) {
        let target = self.len() + n;
        wait_for(&format!("{n} more requests in the stream"), within, || {
            self.len() >= target
        });
    }

    fn stop(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("stream thread");
        }
        self.outcomes(0)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn counts(outcomes: &[Result<String, String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        let k = match o {
            Ok(s) => s.clone(),
            Err(e) => format!("error {e}"),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// Requests from `client` to `ip:port` until one is served by `server`.
fn wait_served_by(client: &Netns, ip: &str, port: u16, server: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = Vec::new();
    loop {
        let r = client.tcp_request(ip, port, Duration::from_millis(500));
        if server_of(&r).as_deref() == Some(server) {
            return;
        }
        last.push(format!("{r:?}"));
        if last.len() > 5 {
            last.remove(0);
        }
        if Instant::now() >= deadline {
            panic!("{ip}:{port} not served by {server} within {within:?}; last results: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The standard topology: pods a and b with TCP servers on 8080 (and UDP on 5353), pod
/// c as the client, all on node-a; a fake API server inside the node namespace holding
/// node-a.
struct Setup {
    // Field order is drop order: the agent first, then the API server, then namespaces.
    api: FakeApi,
    cluster: Cluster,
    client: Netns,
}

fn setup() -> Setup {
    let mut cluster = Cluster::new();
    let a = cluster.add_pod("a", POD_A);
    let b = cluster.add_pod("b", POD_B);
    let client = cluster.add_pod("c", POD_C);
    for p in [&a, &b] {
        p.spawn_tcp_server(p_ip(p), 8080).unwrap();
        p.spawn_udp_server(p_ip(p), 5353).unwrap();
    }
    let api = FakeApi::start_in_netns(cluster.node().name());
    api.apply(&node_a());
    Setup {
        api,
        cluster,
        client,
    }
}

fn p_ip(p: &Netns) -> &'static str {
    match p.role() {
        "a" => POD_A,
        "b" => POD_B,
        _ => POD_C,
    }
}

const SYNC: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------
// 1. a new Service
// ---------------------------------------------------------------------------

#[test]
fn new_service_is_served() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let mut agent = Agent::start("new-service", node, &s.api, &[]);
    // The first sync programs an empty cluster (just node-a).
    agent.wait_syncs(1, SYNC);
    assert!(has_table(node), "first sync created no table");
    assert!(
        s.client
            .tcp_request(SVC_IP, 80, Duration::from_millis(500))
            .is_err(),
        "{SVC_IP} answered before the Service existed"
    );

    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
    wait_converged(node, &s.api, true, SYNC);
    let ids: Vec<_> = s
        .client
        .tcp_requests(SVC_IP, 80, 10, TIMEOUT)
        .iter()
        .map(server_of)
        .collect();
    assert!(
        ids.iter().all(|i| i.as_deref() == Some("a")),
        "requests to {SVC_IP}: {ids:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. scale up and down
// ---------------------------------------------------------------------------

#[test]
fn endpoints_added_and_removed() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let _agent = Agent::start("scale", node, &s.api, &[]);
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);

    // Scale up: b gets traffic.
    s.api.apply(&slice("web", "TCP", 8080, &[POD_A, POD_B]));
    wait_served_by(&s.client, SVC_IP, 80, "b", SYNC);
    wait_converged(node, &s.api, true, SYNC);

    // Scale down: once the kernel dropped a, a gets nothing.
    s.api.apply(&slice("web", "TCP", 8080, &[POD_B]));
    wait_for("a's DNAT to leave the node's table", SYNC, || {
        !listing(node).contains(&dnat_to(POD_A))
    });
    wait_converged(node, &s.api, true, SYNC);
    let results = s.client.tcp_requests(SVC_IP, 80, 30, TIMEOUT);
    let (c, errors) = tally(&results);
    assert!(errors.is_empty(), "requests failed: {errors:?}");
    assert_eq!(
        c,
        BTreeMap::from([("b".to_string(), 30)]),
        "after removing a"
    );
}

// ---------------------------------------------------------------------------
// 3. a deleted Service
// ---------------------------------------------------------------------------

#[test]
fn deleted_service_is_no_longer_served() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    apply_http_service(&s.api, "other", SVC2_IP, &[POD_B]);
    let _agent = Agent::start("delete", node, &s.api, &[]);
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);

    assert!(s.api.delete("Service", "default", "web"));
    wait_for("the ClusterIP to leave the node's table", SYNC, || {
        !listing(node).contains(SVC_IP)
    });
    wait_converged(node, &s.api, true, SYNC);
    for _ in 0..5 {
        let r = s.client.tcp_request(SVC_IP, 80, Duration::from_millis(500));
        assert!(r.is_err(), "deleted Service {SVC_IP} still served: {r:?}");
    }
    // The other Service is untouched.
    wait_served_by(&s.client, SVC2_IP, 80, "b", Duration::from_secs(2));
}

// ---------------------------------------------------------------------------
// 4. UDP conntrack cleanup
// ---------------------------------------------------------------------------

#[test]
fn udp_flow_moves_to_the_new_endpoint() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    s.api.apply(&service("dns", DNS_IP, "UDP", 53, 5353));
    s.api.apply(&slice("dns", "UDP", 5353, &[POD_A]));
    let _agent = Agent::start("udp", node, &s.api, &[]);
    wait_for("the UDP Service in the node's table", SYNC, || {
        listing(node).contains(&dnat_to(POD_A))
    });

    let src = sa(POD_C, 40000);
    let stream = Stream::udp_fixed_source(&s.client, src, DNS_IP, 53);
    wait_for("a UDP reply from a", SYNC, || {
        stream.outcomes(0).iter().any(|o| o.as_deref() == Ok("a"))
    });
    // The flow is established: several more datagrams all answered by a.
    let mark = stream.len();
    stream.wait_more(5, Duration::from_secs(5));
    let before = stream.outcomes(mark);
    assert!(
        before.iter().all(|o| o.as_deref() == Ok("a")),
        "before the change: {before:?}"
    );

    // Replace a with b. a keeps running: without the conntrack cleanup the flow's
    // entry (refreshed every 50 ms) would keep sending every datagram to a.
    let changed = stream.len();
    s.api.apply(&slice("dns", "UDP", 5353, &[POD_B]));
    let deadline = Instant::now() + SYNC;
    let first_b = loop {
        let o = stream.outcomes(changed);
        if let Some(i) = o.iter().position(|o| o.as_deref() == Ok("b")) {
            break changed + i;
        }
        assert!(
            Instant::now() < deadline,
            "datagrams from {src} still not answered by b {SYNC:?} after the change: {:?}",
            counts(&o)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stream.wait_more(10, Duration::from_secs(5));
    let ct = node.exec(["conntrack", "-L", "-p", "udp", "--orig-port-src", "40000"]);
    let outcomes = stream.stop();
    let after = &outcomes[first_b..];
    assert!(
        after.iter().all(|o| o.as_deref() == Ok("b")),
        "after the first reply from b, the same flow went elsewhere: {:?}",
        counts(after)
    );
    // The kernel path: the flow's conntrack entry now points at b.
    if ct.status.success() {
        let text = String::from_utf8_lossy(&ct.stdout);
        assert!(
            text.contains(&format!("src={POD_B} dst={POD_C} sport=5353 dport=40000")),
            "conntrack entry of the flow does not reply from b:\n{text}"
        );
        assert!(
            !text.contains(&format!("src={POD_A} ")),
            "a stale conntrack entry to a survived:\n{text}"
        );
    } else {
        eprintln!(
            "conntrack -L unavailable ({}); kernel check skipped",
            String::from_utf8_lossy(&ct.stderr).trim()
        );
    }
}

// ---------------------------------------------------------------------------
// 5. API server outage and relist
// ---------------------------------------------------------------------------

#[test]
fn api_server_outage_keeps_rules_and_relists() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let mut agent = Agent::start("outage", node, &s.api, &[]);
    agent.wait_syncs(1, SYNC);
    let before = wait_converged(node, &s.api, true, SYNC);
    let stream = Stream::tcp(&s.client, SVC_IP, 80, Duration::from_millis(20));
    stream.wait_more(5, Duration::from_secs(5));

    s.api.stop();
    // ~2 s down, checking the kernel all along.
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            normalize(&listing(node)),
            before,
            "the ruleset changed while the API server was down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.log().contains("watch failed"),
        "the agent did not notice the outage"
    );
    let failures = stream.failures();
    assert!(
        failures.is_empty(),
        "traffic failed during the outage: {failures:?}"
    );

    // History compacted while down: resuming gets 410 and relists.
    let lists: Vec<u64> = ["services", "endpointslices", "nodes"]
        .iter()
        .map(|k| s.api.lists(k))
        .collect();
    let syncs = agent.syncs().len();
    s.api.force_expire();
    s.api.restart();
    let unchanged = || {
        assert_eq!(
            normalize(&listing(node)),
            before,
            "the kernel changed before the change arrived"
        );
        true
    };
    wait_for(
        "the agent to relist every kind",
        Duration::from_secs(10),
        || {
            unchanged()
                && ["services", "endpointslices", "nodes"]
                    .iter()
                    .zip(&lists)
                    .all(|(k, n)| s.api.lists(k) > *n)
        },
    );
    // The relists of unchanged objects trigger syncs that must change nothing.
    wait_for("a sync after the relist", SYNC, || {
        unchanged() && agent.syncs().len() > syncs
    });
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        unchanged();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent.log().contains("Expired"),
        "the agent did not see the 410 on resume"
    );

    // A change after the relist arrives and is programmed.
    s.api.apply(&slice("web", "TCP", 8080, &[POD_B]));
    wait_converged(node, &s.api, true, SYNC);
    let mark = stream.len();
    stream.wait_more(10, Duration::from_secs(5));
    let after = stream.outcomes(mark);
    assert!(
        after.iter().all(|o| o.as_deref() == Ok("b")),
        "after the change: {:?}",
        counts(&after)
    );
    let all = stream.stop();
    let failed: Vec<_> = all.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.is_empty(), "connections failed: {failed:?}");
}

// ---------------------------------------------------------------------------
// 6. agent restart
// ---------------------------------------------------------------------------

#[test]
fn agent_restart_is_hitless() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A, POD_B]);
    let mut first = Agent::start("restart-1", node, &s.api, &[]);
    first.wait_syncs(1, SYNC);
    let before = wait_converged(node, &s.api, true, SYNC);
    let handle = table_handle(node).expect("table handle");

    // The table must never be missing: watch it from another thread.
    let missing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (node, missing, stop) = (node.clone(), missing.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if !has_table(&node) {
                    missing.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let stream = Stream::tcp(&s.client, SVC_IP, 80, Duration::from_millis(20));
    stream.wait_more(5, Duration::from_secs(5));

    let status = first.terminate();
    assert!(status.success(), "agent exited with {status} on SIGTERM");
    assert!(
        first.log().contains("leaving the rules in place"),
        "no shutdown message"
    );
    drop(first);
    assert!(has_table(node), "the table went away with the agent");
    assert_eq!(normalize(&listing(node)), before, "rules changed on exit");
    // Served with no agent at all.
    stream.wait_more(10, Duration::from_secs(5));

    let mut second = Agent::start("restart-2", node, &s.api, &[]);
    second.wait_syncs(1, SYNC);
    let sync = &second.syncs()[0];
    assert!(
        sync.contains("full=true"),
        "the new agent's first sync was not a full one: {sync}"
    );
    // The full sync rewrites our table in place (so the datapath's affinity sets survive
    // the restart), it does not delete and recreate it.
    let new_handle = table_handle(node).expect("table handle");
    assert_eq!(
        handle, new_handle,
        "the new agent's first sync recreated the table instead of rewriting it"
    );
    assert_eq!(normalize(&listing(node)), before, "new agent, other rules");
    stream.wait_more(10, Duration::from_secs(5));
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let all = stream.stop();
    let c = counts(&all);
    assert!(
        all.iter().all(|o| o.is_ok()),
        "connections failed across the restart: {c:?}"
    );
    assert!(
        !missing.load(Ordering::SeqCst),
        "the table was missing at some point"
    );
    eprintln!("{} connections across the restart: {c:?}", all.len());
}

/// Which endpoint each client reaches on `SVC_IP`:80 (each must be served within `SYNC`).
fn endpoints_of(clients: &[Netns]) -> BTreeMap<String, String> {
    clients
        .iter()
        .map(|c| {
            let deadline = Instant::now() + SYNC;
            loop {
                let r = c.tcp_request(SVC_IP, 80, Duration::from_millis(500));
                if let Some(server) = server_of(&r) {
                    return (c.role().to_string(), server);
                }
                assert!(Instant::now() < deadline, "{} not served: {r:?}", c.role());
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .collect()
}

#[test]
fn affinity_survives_periodic_full_syncs_and_agent_restarts() {
    if !require_root_and_tools() {
        return;
    }
    let mut s = setup();
    // Six clients: without kept affinity each would be drawn again among two endpoints at
    // every full sync, and all six keeping theirs by chance is 1 in 64.
    let mut clients = vec![s.client.clone()];
    for i in 0..5 {
        clients.push(
            s.cluster
                .add_pod(&format!("k{i}"), format!("10.244.0.{}", 60 + i)),
        );
    }
    let node = s.cluster.node();
    let mut svc = service("sticky", SVC_IP, "TCP", 80, 8080);
    svc["spec"]["sessionAffinity"] = json!("ClientIP");
    s.api.apply(&svc);
    s.api.apply(&slice("sticky", "TCP", 8080, &[POD_A, POD_B]));

    let mut first = Agent::start("affinity-1", node, &s.api, &["--sync-period=1s"]);
    first.wait_syncs(1, SYNC);
    let picked = endpoints_of(&clients);
    // Periodic full syncs (every second) rewrite the table in place.
    first.wait_syncs(4, SYNC);
    let full = first.syncs()[1..]
        .iter()
        .filter(|l| l.contains("full=true"))
        .count();
    assert!(full >= 2, "no periodic full syncs: {:?}", first.syncs());
    assert_eq!(endpoints_of(&clients), picked, "after periodic full syncs");

    // A restart: the new agent's first (full) sync keeps them too.
    let status = first.terminate();
    assert!(status.success(), "agent exited with {status}");
    drop(first);
    let mut second = Agent::start("affinity-2", node, &s.api, &[]);
    second.wait_syncs(1, SYNC);
    assert!(
        second.syncs()[0].contains("full=true"),
        "{:?}",
        second.syncs()
    );
    assert_eq!(endpoints_of(&clients), picked, "after an agent restart");
    let listed = listing(node);
    assert!(
        listed.contains("set affinity-") && listed.contains("elements = {"),
        "the affinity sets hold the clients:\n{listed}"
    );
}

// ---------------------------------------------------------------------------
// 7. startup gating
// ---------------------------------------------------------------------------

#[test]
fn old_rules_serve_until_the_first_complete_list() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    // A previous run's rules: `apply` of web -> a.
    let old = TempDir::new("old");
    let file = old.path().join("old.yaml");
    let objects = [
        node_a(),
        service("web", SVC_IP, "TCP", 80, 8080),
        slice("web", "TCP", 8080, &[POD_A]),
    ];
    let yaml: String = objects
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string(o).unwrap()))
        .collect();
    std::fs::write(&file, yaml).unwrap();
    let out = node
        .command(BIN)
        .arg("apply")
        .args(BASE_ARGS)
        .arg(&file)
        .env("KUBE_NFTPROXY_STATE_DIR", old.path().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_served_by(&s.client, SVC_IP, 80, "a", Duration::from_secs(2));
    let old_rules = normalize(&listing(node));

    // The API says web -> b now, but lists fail for a while.
    apply_http_service(&s.api, "web", SVC_IP, &[POD_B]);
    let unchanged = |what: &str| {
        let r = s.client.tcp_request(SVC_IP, 80, TIMEOUT);
        assert_eq!(
            server_of(&r).as_deref(),
            Some("a"),
            "{what}: the old rules must serve: {r:?}"
        );
        assert_eq!(
            normalize(&listing(node)),
            old_rules,
            "{what}: the kernel changed before every kind was listed"
        );
    };
    // Phase 1: every list fails (the agent cannot even discover the APIs).
    s.api.fail_lists(1_000_000);
    s.api.fail_lists_of("endpointslices", 1_000_000);
    let mut agent = Agent::start("gating", node, &s.api, &["--endpoints-api=endpointslices"]);
    let phase = Instant::now();
    while phase.elapsed() < Duration::from_secs(2) {
        agent.assert_running();
        unchanged("while every list fails");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.api.request_log().iter().any(|l| l.starts_with("GET ")),
        "the agent never reached the API server"
    );
    // Phase 2: Services and Nodes list fine, EndpointSlices still fail: programming now
    // would leave web without endpoints.
    s.api.fail_lists(0);
    wait_for("Services and Nodes listed", Duration::from_secs(5), || {
        s.api.lists("services") > 0 && s.api.lists("nodes") > 0
    });
    let phase = Instant::now();
    while phase.elapsed() < Duration::from_secs(2) {
        agent.assert_running();
        unchanged("while EndpointSlice lists fail");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.api.lists("endpointslices") > 0,
        "the EndpointSlice list was never tried"
    );
    assert!(agent.syncs().is_empty(), "synced without a complete list");

    s.api.fail_lists_of("endpointslices", 0);
    agent.wait_syncs(1, Duration::from_secs(10));
    wait_converged(node, &s.api, true, SYNC);
    let results = s.client.tcp_requests(SVC_IP, 80, 10, TIMEOUT);
    let (c, errors) = tally(&results);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(c, BTreeMap::from([("b".to_string(), 10)]));
}

// ---------------------------------------------------------------------------
// 8. --dry-run
// ---------------------------------------------------------------------------

#[test]
fn dry_run_prints_and_touches_nothing() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let mut agent = Agent::start("dry-run", node, &s.api, &["--dry-run"]);
    agent.wait_syncs(1, SYNC);
    let out = agent.stdout();
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.starts_with("full sync")),
        "first output is not a full sync:\n{out}"
    );

    // An endpoint more moves the Service to the map of its new count.
    s.api.apply(&slice("web", "TCP", 8080, &[POD_A, POD_B]));
    let added = format!(
        "+ element service-endpoints-2 {{ {SVC_IP} . tcp . 80 . 1 {}",
        dnat_to(POD_B)
    );
    wait_for("web's new endpoint in the dry-run output", SYNC, || {
        agent.stdout().lines().any(|l| l.starts_with(&added))
    });
    let out = agent.stdout();
    let at = out.lines().position(|l| l.starts_with(&added)).unwrap();
    assert!(
        out.lines()
            .take(at)
            .filter(|l| !l.starts_with(['+', '-', '~']))
            .last()
            .is_some_and(|l| l.starts_with("partial sync")),
        "the new endpoint is not part of a partial sync:\n{out}"
    );
    // A new Service adds elements.
    apply_http_service(&s.api, "other", SVC2_IP, &[POD_B]);
    wait_for(
        "the new Service's element in the dry-run output",
        SYNC,
        || {
            agent
                .stdout()
                .lines()
                .any(|l| l.starts_with(&format!("+ element service-ips {{ {SVC2_IP} . tcp . 80 :")))
        },
    );
    assert!(
        !has_table(node),
        "--dry-run created a table:\n{}",
        node.nft_list_ruleset()
    );
    assert!(
        node.nft_list_ruleset().trim().is_empty(),
        "--dry-run touched the node's ruleset"
    );
    drop(agent);

    // --dry-run=full prints the whole ruleset, which nft accepts.
    let mut full = Agent::start("dry-run-full", node, &s.api, &["--dry-run=full"]);
    full.wait_syncs(1, SYNC);
    let script = full.stdout();
    assert!(
        script.contains(&format!("table ip {TABLE} {{")),
        "no table in --dry-run=full output:\n{script}"
    );
    let check = TempDir::new("check");
    let file = check.path().join("ruleset.nft");
    std::fs::write(&file, &script).unwrap();
    let out = node.nft([Path::new("-c"), Path::new("-f"), file.as_path()]);
    assert!(
        out.status.success(),
        "nft -c -f refused the --dry-run=full ruleset: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!has_table(node), "--dry-run=full created a table");
}

// ---------------------------------------------------------------------------
// 9. v1 Endpoints fallback
// ---------------------------------------------------------------------------

#[test]
fn endpoints_api_auto_falls_back_to_v1_endpoints() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    s.api.serve_endpointslices(false);
    s.api.apply(&service("web", SVC_IP, "TCP", 80, 8080));
    s.api.apply(&endpoints("web", "TCP", 8080, &[POD_A]));
    let mut agent = Agent::start("endpoints", node, &s.api, &["--endpoints-api=auto"]);
    agent.wait_syncs(1, SYNC);
    assert!(
        agent.log().contains("v1 Endpoints"),
        "the agent did not choose v1 Endpoints"
    );
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
    wait_converged(node, &s.api, false, SYNC);

    // Changes to Endpoints are followed too.
    s.api.apply(&endpoints("web", "TCP", 8080, &[POD_B]));
    wait_converged(node, &s.api, false, SYNC);
    let results = s.client.tcp_requests(SVC_IP, 80, 10, TIMEOUT);
    let (c, errors) = tally(&results);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(c, BTreeMap::from([("b".to_string(), 10)]));
    assert_eq!(
        s.api.watches("endpointslices"),
        0,
        "the agent watched EndpointSlices the server does not serve"
    );
    assert!(s.api.watches("endpoints") > 0, "no Endpoints watch");
}

// ---------------------------------------------------------------------------
// 10. UDP conntrack across an agent restart
// ---------------------------------------------------------------------------

/// The endpoint of a UDP flow goes away while no agent runs; the next agent's first sync
/// must still delete the flow's stale conntrack entry (upstream kube-proxy reconciles the
/// conntrack table against the current endpoints on every sync since v1.31). Without it
/// the flow keeps going to the removed endpoint for as long as the client keeps sending.
#[test]
fn udp_flow_moves_after_an_agent_restart() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    s.api.apply(&service("dns", DNS_IP, "UDP", 53, 5353));
    s.api.apply(&slice("dns", "UDP", 5353, &[POD_A]));
    let mut first = Agent::start("udp-restart-1", node, &s.api, &[]);
    first.wait_syncs(1, SYNC);
    wait_converged(node, &s.api, true, SYNC);

    let stream = Stream::udp_fixed_source(&s.client, sa(POD_C, 40001), DNS_IP, 53);
    wait_for("a UDP reply from a", SYNC, || {
        stream.outcomes(0).iter().any(|o| o.as_deref() == Ok("a"))
    });
    assert!(first.terminate().success());
    drop(first);

    // While no agent runs, a is replaced by b (a keeps answering).
    s.api.apply(&slice("dns", "UDP", 5353, &[POD_B]));
    let mut second = Agent::start("udp-restart-2", node, &s.api, &[]);
    second.wait_syncs(1, SYNC);
    wait_converged(node, &s.api, true, SYNC);
    let changed = stream.len();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let o = stream.outcomes(changed);
        if o.iter().any(|o| o.as_deref() == Ok("b")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 s after the new agent's first sync the flow still goes to the removed \
             endpoint: {:?}",
            counts(&o)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// 10. Tables removed behind the agent's back
// ---------------------------------------------------------------------------

#[test]
fn flushed_ruleset_is_restored_without_any_api_change() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let _agent = Agent::start("flush", node, &s.api, &["--verify-period=200ms"]);
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
    let before = wait_converged(node, &s.api, true, SYNC);

    // Someone flushes everything; no Kubernetes object changes.
    node.exec_ok(["nft", "flush", "ruleset"]);
    assert!(!has_table(node), "nft flush ruleset left our table");
    wait_for("the agent to re-create its table", SYNC, || has_table(node));
    let after = wait_converged(node, &s.api, true, SYNC);
    assert_eq!(before, after, "the restored ruleset differs");
    wait_served_by(&s.client, SVC_IP, 80, "a", Duration::from_secs(2));
}

// ---------------------------------------------------------------------------
// operating it like kube-proxy: metrics, health, healthCheckNodePort
// ---------------------------------------------------------------------------

/// `GET path` from inside `ns`: (status, body), or the connection error.
fn http_get(ns: &Netns, addr: &str, path: &str) -> io::Result<(u16, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let path = path.to_string();
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Ok((status, body))
    })
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

#[test]
fn metrics_health_and_health_check_node_ports() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    // A short sync period makes the health timeout (2 x sync period, as upstream) 4 s.
    let mut agent = Agent::start("operate", node, &s.api, &["--sync-period=2s"]);
    agent.wait_syncs(1, SYNC);
    wait_for("/healthz 200 after the first sync", SYNC, || {
        matches!(http_get(node, "127.0.0.1:10256", "/healthz"), Ok((200, _)))
    });
    let (_, body) = http_get(node, "127.0.0.1:10256", "/healthz").unwrap();
    assert!(body.contains("\"nodeEligible\":true"), "{body}");
    assert!(body.contains("\"lastUpdated\""), "{body}");
    let (code, metrics) = http_get(node, "127.0.0.1:10249", "/metrics").unwrap();
    assert_eq!(code, 200);
    let count = metrics
        .lines()
        .find(|l| l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no sync histogram:\n{metrics}"));
    assert!(
        count >= 1.0 && count <= agent.syncs().len() as f64 + 1.0,
        "{count} syncs observed, {} logged",
        agent.syncs().len()
    );
    assert!(sample(&metrics, "process_start_time_seconds").is_some());
    // node-a's table holds at least its node IP in nodeport-ips.
    assert!(
        sample(&metrics, "kube_nftproxy_set_elements").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    // network_programming_duration runs from the slice's last-change-trigger-time.
    let mut web = slice("timed", "TCP", 8080, &[POD_A]);
    let trigger =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(2);
    web["metadata"]["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": trigger.to_string()});
    s.api.apply(&service("timed", SVC2_IP, "TCP", 80, 8080));
    s.api.apply(&web);
    wait_for("network programming observed", SYNC, || {
        let (_, m) = http_get(node, "127.0.0.1:10249", "/metrics").unwrap();
        // Observed once, at about 2 s: in the (2, 3] bucket.
        let bucket = |le: &str| {
            m.lines()
                .find(|l| {
                    l.starts_with("kubeproxy_network_programming_duration_seconds_bucket")
                        && l.contains("IPv4")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .and_then(|l| l.rsplit_once(' '))
                .and_then(|(_, v)| v.parse::<f64>().ok())
        };
        let ok =
            bucket("2") == Some(0.0) && bucket("3") == Some(1.0) && bucket("+Inf") == Some(1.0);
        if !ok {
            eprintln!(
                "{}",
                m.lines()
                    .filter(|l| l.contains("network_programming") && l.contains("IPv4"))
                    .take(12)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        ok
    });

    // The autoscaler is draining this node: /healthz fails so load balancers move away,
    // /livez does not (the proxy itself is fine).
    let mut drained = node_a();
    drained["spec"]["taints"] =
        json!([{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]);
    s.api.apply(&drained);
    wait_for(
        "/healthz 503 on a draining node",
        SYNC,
        || matches!(http_get(node, "127.0.0.1:10256", "/healthz"), Ok((503, b)) if b.contains("\"nodeEligible\":false")),
    );
    assert!(matches!(
        http_get(node, "127.0.0.1:10256", "/livez"),
        Ok((200, _))
    ));
    s.api.apply(&node_a());
    wait_for("/healthz 200 once the taint is gone", SYNC, || {
        matches!(http_get(node, "127.0.0.1:10256", "/healthz"), Ok((200, _)))
    });

    // An externalTrafficPolicy: Local Service with one endpoint on this node.
    let mut svc = service("local", SVC_IP, "TCP", 80, 8080);
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["spec"]["healthCheckNodePort"] = json!(32100);
    svc["spec"]["ports"][0]["nodePort"] = json!(30100);
    // A second address that is not a nodeport address (the default is the node's primary
    // IP): upstream listens on the nodeport addresses only, so it must not answer.
    node.ip("addr add 192.168.0.20/24 dev eth0");
    s.api.apply(&svc);
    s.api.apply(&slice("local", "TCP", 8080, &[POD_A]));
    let hc = format!("{NODE_IP}:32100");
    wait_for(
        "healthCheckNodePort 200 with one local endpoint",
        SYNC,
        || matches!(http_get(node, &hc, "/"), Ok((200, b)) if b.contains("\"localEndpoints\": 1")),
    );
    for other in ["192.168.0.20:32100", "127.0.0.1:32100"] {
        let r = http_get(node, other, "/");
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused),
            "{other} is not a nodeport address: {r:?}"
        );
    }
    s.api.apply(&slice("local", "TCP", 8080, &[]));
    wait_for(
        "healthCheckNodePort 503 without local endpoints",
        SYNC,
        || matches!(http_get(node, &hc, "/"), Ok((503, _))),
    );
    // That sync deleted elements: the kernel acknowledged it an RCU grace period after it
    // took effect (NEWGEN), and the agent reports the gap.
    wait_for("a commit-vs-ack delay after a partial sync", SYNC, || {
        let (_, m) = http_get(node, "127.0.0.1:10249", "/metrics").unwrap();
        let d = sample(&m, "kube_nftproxy_commit_ack_delay_seconds");
        eprintln!("kube_nftproxy_commit_ack_delay_seconds {d:?}");
        d.is_some_and(|d| d > 0.0 && d < 1.0)
    });
    s.api.delete("Service", "default", "local");
    wait_for("healthCheckNodePort closed with the Service", SYNC, || {
        http_get(node, &hc, "/").is_err()
    });

    // The kernel refuses every batch: another program owns our table (deleted behind the
    // agent's back and taken over before it re-creates it).
    node.exec_ok(["nft", "delete", "table", "ip", "kube-nftproxy"]);
    let holder = node
        .hold_owned_table("ip", "kube-nftproxy")
        .expect("hold ip kube-nftproxy");
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    wait_for(
        "/healthz 503 while syncs fail",
        Duration::from_secs(15),
        || matches!(http_get(node, "127.0.0.1:10256", "/healthz"), Ok((503, _))),
    );
    assert!(
        matches!(http_get(node, "127.0.0.1:10256", "/livez"), Ok((503, _))),
        "livez follows proxy health as upstream's does"
    );
    let (_, metrics) = http_get(node, "127.0.0.1:10249", "/metrics").unwrap();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("kubeproxy_sync_proxy_rules_nftables_sync_failures_total"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "no sync failure counted:\n{metrics}");
    wait_for("a SyncFailed Event on the Node", SYNC, || {
        s.api.objects("events.k8s.io/events").iter().any(|e| {
            e["reason"] == "SyncFailed"
                && e["regarding"]["kind"] == "Node"
                && e["regarding"]["name"] == "node-a"
        })
    });
    drop(holder);
    wait_for("/healthz 200 once syncs succeed again", SYNC, || {
        matches!(http_get(node, "127.0.0.1:10256", "/healthz"), Ok((200, _)))
    });
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);

    // A Service the proxy skips gets a Warning Event naming why.
    s.api
        .apply(&service("broken", "10.96.0.999", "TCP", 80, 8080));
    wait_for("a ServiceSkipped Event on the Service", SYNC, || {
        s.api.objects("events.k8s.io/events").iter().any(|e| {
            e["reason"] == "ServiceSkipped"
                && e["regarding"]["name"] == "broken"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("10.96.0.999"))
        })
    });
}

// ---------------------------------------------------------------------------
// NodePorts on the host's own addresses
// ---------------------------------------------------------------------------

/// With `--nodeport-addresses` CIDRs the agent serves NodePorts on every address of the
/// node's interfaces inside them (not only the Node object's InternalIP), and follows the
/// addresses as they change.
#[test]
fn nodeports_follow_the_host_addresses_in_the_cidrs() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let client = s.cluster.client();
    // Two addresses in two CIDRs; a third CIDR whose address comes later; .40 in none.
    node.ip("addr add 192.168.0.20/24 dev eth0");
    let mut agent = Agent::start(
        "host-addresses",
        node,
        &s.api,
        &["--nodeport-addresses=192.168.0.10/32,192.168.0.20/32,192.168.0.30/32"],
    );
    agent.wait_syncs(1, SYNC);
    let mut svc = service("np", SVC_IP, "TCP", 80, 8080);
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    s.api.apply(&svc);
    s.api.apply(&slice("np", "TCP", 8080, &[POD_A]));
    wait_served_by(client, "192.168.0.10", 30080, "a", SYNC);
    wait_served_by(client, "192.168.0.20", 30080, "a", SYNC);

    node.ip("addr add 192.168.0.30/24 dev eth0");
    node.ip("addr add 192.168.0.40/24 dev eth0");
    wait_served_by(client, "192.168.0.30", 30080, "a", SYNC);
    assert!(
        client
            .tcp_request("192.168.0.40", 30080, Duration::from_millis(800))
            .map(|r| server_of(&Ok(r)) != Some("a".into()))
            .unwrap_or(true),
        "192.168.0.40 is in none of the CIDRs and must not serve the NodePort"
    );
    let listing = listing(node);
    for want in ["192.168.0.10", "192.168.0.20", "192.168.0.30"] {
        assert!(
            listing.contains(want),
            "{want} missing from nodeport-ips:\n{listing}"
        );
    }
    assert!(!listing.contains("192.168.0.40"), "{listing}");
}

// ---------------------------------------------------------------------------
// detectLocalMode NodeCIDR
// ---------------------------------------------------------------------------

/// As upstream: with NodeCIDR the agent programs nothing until its Node has podCIDRs, then
/// tells pod traffic by them (not by --cluster-cidr), and follows a change.
#[test]
fn node_cidr_mode_waits_for_the_pod_cidrs_and_uses_them() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let mut bare = node_a();
    bare["spec"] = json!({});
    s.api.apply(&bare);
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let mut agent = Agent::start("nodecidr", node, &s.api, &["--detect-local-mode=NodeCIDR"]);
    std::thread::sleep(Duration::from_secs(2));
    agent.assert_running();
    assert!(!has_table(node), "programmed before the Node had podCIDRs");
    assert!(agent.syncs().is_empty());

    s.api.apply(&node_a());
    wait_for("the first sync once podCIDRs are set", SYNC, || {
        has_table(node)
    });
    wait_for("the masquerade rule by the node's pod CIDR", SYNC, || {
        listing(node).contains(&format!("ip saddr != {POD_CIDR} meta mark set"))
    });
    assert!(
        !listing(node).contains("10.244.0.0/16"),
        "{}",
        listing(node)
    );
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);

    let mut moved = node_a();
    moved["spec"] = json!({"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]});
    s.api.apply(&moved);
    wait_for("the rule follows the new podCIDR", SYNC, || {
        listing(node).contains("ip saddr != 10.244.7.0/24 meta mark set")
    });
}

// ---------------------------------------------------------------------------
// clientConnection.qps / burst
// ---------------------------------------------------------------------------

/// With `--kube-api-qps=1 --kube-api-burst=1` the API server sees at most one request (not
/// counting watches, which client-go does not limit) per second after the first: five
/// skipped Services make five Events that leave a second apart, not at once.
#[test]
fn kube_api_qps_and_burst_limit_the_requests() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let started = Instant::now();
    let mut agent = Agent::start(
        "qps",
        node,
        &s.api,
        &["--kube-api-qps=1", "--kube-api-burst=1"],
    );
    agent.wait_syncs(1, Duration::from_secs(30));
    for i in 0..5 {
        s.api.apply(&service(
            &format!("broken{i}"),
            &format!("10.96.0.99{i}"),
            "TCP",
            80,
            8080,
        ));
    }
    wait_for(
        "five ServiceSkipped Events",
        Duration::from_secs(30),
        || {
            (s.api.objects("events.k8s.io/events").iter())
                .filter(|e| e["reason"] == "ServiceSkipped")
                .count()
                == 5
        },
    );
    let limited: Vec<(f64, String)> = (s.api.request_log_timed().into_iter())
        .filter(|(at, r)| *at >= started && !r.contains("watch=true") && !r.contains("watch=1"))
        .map(|(at, r)| ((at - started).as_secs_f64(), r))
        .collect();
    let posts = limited
        .iter()
        .filter(|(_, r)| r.starts_with("POST") && r.contains("events"))
        .count();
    assert!(posts >= 5, "{limited:#?}");
    // A token bucket of rate 1 and burst 1: any k+1 consecutive requests span at least
    // k seconds (less a little for the network and timer rounding).
    for (i, (ti, _)) in limited.iter().enumerate() {
        for (j, (tj, _)) in limited.iter().enumerate().skip(i + 1) {
            let k = (j - i) as f64;
            assert!(
                tj - ti >= k - 0.25,
                "requests {i} and {j} are {:.3} s apart, under {k} s:\n{limited:#?}",
                tj - ti
            );
        }
    }
    // Counted per second: never more than two (one on each edge of a window).
    let last = limited.last().map_or(0.0, |(t, _)| *t);
    let mut w = 0.0;
    while w <= last {
        let n = limited
            .iter()
            .filter(|(t, _)| *t >= w && *t < w + 1.0)
            .count();
        assert!(n <= 2, "{n} requests in [{w}, {w}+1) s:\n{limited:#?}");
        w += 0.25;
    }
    eprintln!(
        "{} rate-limited requests over {:.2} s (qps 1, burst 1)",
        limited.len(),
        last - limited.first().map_or(0.0, |(t, _)| *t)
    );
}

// ---------------------------------------------------------------------------
// started as the DaemonSet starts it
// ---------------------------------------------------------------------------

/// The shipped ConfigMap's `config.conf` and `kubeconfig.conf` and the DaemonSet's command
/// line, unchanged but for paths and the server URL (the fake API server, on an address
/// outside the Service CIDR). The kubelet's `KUBERNETES_SERVICE_HOST` points at the
/// `kubernetes` Service IP, which nothing serves: the agent must not need it.
#[test]
fn starts_as_the_daemonset_starts_it() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = TempDir::new("daemonset");
    let d = dir.path();

    let cm: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("deploy/base/configmap.yaml")).unwrap(),
    )
    .unwrap();
    let ds: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("deploy/base/daemonset.yaml")).unwrap(),
    )
    .unwrap();
    let sa = d.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    let ca = sa.join("ca.crt");
    let key = sa.join("ca.key");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "openssl could not make a test CA");
    std::fs::write(sa.join("token"), "test-token").unwrap();

    let mounted = "/var/lib/kube-proxy";
    let conf_dir = d.join("var-lib-kube-proxy");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let config = cm["data"]["config.conf"]
        .as_str()
        .unwrap()
        .replace(mounted, &conf_dir.to_string_lossy());
    let kubeconfig = cm["data"]["kubeconfig.conf"].as_str().unwrap();
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("kubeconfig.conf names a server")
        .to_string();
    let kubeconfig = kubeconfig.replace(&server, &s.api.url()).replace(
        "/var/run/secrets/kubernetes.io/serviceaccount",
        &sa.to_string_lossy(),
    );
    std::fs::write(conf_dir.join("config.conf"), config).unwrap();
    std::fs::write(conf_dir.join("kubeconfig.conf"), kubeconfig).unwrap();

    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().into_iter().flatten())
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("$(NODE_NAME)", "node-a")
                .replace(mounted, &conf_dir.to_string_lossy())
        })
        .collect();
    assert!(command[0].ends_with("/kube-nftproxy"), "{command:?}");
    let mut agent = Agent::spawn(
        "daemonset",
        node,
        &command[1..],
        &[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ],
    );
    agent.wait_syncs(1, SYNC);
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
    let log = agent.log();
    assert!(!log.contains("client error (Connect)"), "{log}");
}

/// `--logging-format=json` (kube-proxy's flag): every log line is one JSON object.
#[test]
fn logging_format_json_writes_json_lines() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let args: Vec<String> = [
        "--logging-format=json",
        "--hostname-override=node-a",
        "--dry-run",
        "--kubeconfig",
        &s.api.kubeconfig_file().to_string_lossy(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut agent = Agent::spawn("json-logs", node, &args, &[]);
    agent.wait_syncs(1, SYNC);
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

// ---------------------------------------------------------------------------
// switching a node over from kube-proxy
// ---------------------------------------------------------------------------

/// What kube-proxy (iptables mode) leaves on a node: its chains and jumps, DNATing the
/// Service IP to the wrong pod (b), beside a foreign chain that must survive.
const KUBE_PROXY_NAT: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-LEFTOVER0000000 - [0:0]
:KUBE-SEP-LEFTOVER0000000 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:FOREIGN-KEEP - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A PREROUTING -j FOREIGN-KEEP
-A FOREIGN-KEEP -s 203.0.113.99/32 -j RETURN
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:p cluster IP\" -m tcp --dport 80 -j KUBE-SVC-LEFTOVER0000000
-A KUBE-SVC-LEFTOVER0000000 -j KUBE-SEP-LEFTOVER0000000
-A KUBE-SEP-LEFTOVER0000000 -p tcp -m tcp -j DNAT --to-destination 10.244.0.12:8080
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
";

/// The agent started on a node kube-proxy ran on removes exactly kube-proxy's leftovers
/// (its iptables chains and jumps, its `ip kube-proxy` table), keeps foreign rules, and the
/// Service is then served by our rules alone.
#[test]
fn startup_removes_kube_proxys_leftovers() {
    if !require_root_and_tools() {
        return;
    }
    let have = |p: &str| Command::new(p).arg("--version").output().is_ok();
    if !have("iptables-nft-restore") {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but iptables-nft-restore is missing"
        );
        eprintln!("skipping: needs iptables-nft-restore (Debian package iptables)");
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let mut restore = node.command("iptables-nft-restore");
    restore.arg("--noflush").stdin(Stdio::piped());
    let mut child = restore.spawn().unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(KUBE_PROXY_NAT.as_bytes())
            .unwrap();
    }
    assert!(
        child.wait().unwrap().success(),
        "loading kube-proxy's leftovers"
    );
    node.nft_apply("table ip kube-proxy {\n\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n}\ntable inet keepme {\n\tchain c {\n\t\ttype filter hook input priority 10; policy accept;\n\t}\n}\n")
        .unwrap();
    let save = || node.exec_ok(["iptables-nft-save", "-t", "nat"]);
    assert!(save().contains("KUBE-SVC-LEFTOVER"));

    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let mut agent = Agent::start("migrate", node, &s.api, &[]);
    agent.wait_syncs(1, SYNC);
    let nat = save();
    assert!(
        !nat.contains("KUBE-"),
        "kube-proxy's chains are left:\n{nat}"
    );
    assert!(
        nat.contains("-A PREROUTING -j FOREIGN-KEEP") && nat.contains("203.0.113.99"),
        "a foreign chain was touched:\n{nat}"
    );
    assert!(!node
        .nft(["list", "table", "ip", "kube-proxy"])
        .status
        .success());
    assert!(node
        .nft(["list", "table", "inet", "keepme"])
        .status
        .success());
    assert!(
        agent.log().contains("removed kube-proxy's leftovers"),
        "{}",
        agent.log()
    );
    // Only our rules DNAT now: every connection reaches a, none the leftover's b.
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
    let ids: Vec<_> = s
        .client
        .tcp_requests(SVC_IP, 80, 10, TIMEOUT)
        .iter()
        .map(server_of)
        .collect();
    assert!(ids.iter().all(|i| i.as_deref() == Some("a")), "{ids:?}");
}

/// A Service or EndpointSlice the watcher cannot decode (`ports: "eighty"`, `addresses`
/// not a list) is skipped with a note naming it; the other objects of the same list page
/// are still programmed.
#[test]
fn an_undecodable_service_does_not_fail_its_list() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    let mut bad = service("bad", SVC2_IP, "TCP", 80, 8080);
    bad["spec"]["ports"] = json!("eighty");
    s.api.apply(&bad);
    let mut bad_slice = slice("bad", "TCP", 8080, &[POD_B]);
    bad_slice["endpoints"][0]["addresses"] = json!("10.244.0.12");
    s.api.apply(&bad_slice);
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let mut agent = Agent::start("undecodable", node, &s.api, &[]);
    agent.wait_syncs(1, SYNC);
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
    let log = agent.log();
    assert!(
        log.contains("Service default/bad") && log.contains("does not decode"),
        "{log}"
    );
    assert!(log.contains("EndpointSlice default/bad-abcde"), "{log}");
}

/// Tampering inside our table (a rule deleted, a chain flushed, an element deleted), not
/// only a lost table, is found at the next verify tick and repaired by a full sync; a
/// foreign table added meanwhile is left alone and does not cause a resync by itself.
/// Found by the 30-minute soak: a rule deleted behind our back just before one of our own
/// partial syncs was never repaired. The sync's commit followed the tampering one, so the
/// generation it recorded vouched for a table it had not checked. Here the tampering is
/// followed at once by an API change (the agent commits within milliseconds, long before
/// its 2 s verify tick); the table must still be repaired within a few ticks.
#[test]
fn tampering_just_before_our_own_commit_is_repaired() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let mut agent = Agent::start("tamper2", node, &s.api, &["--verify-period=2s"]);
    agent.wait_syncs(1, SYNC);
    wait_converged(node, &s.api, true, SYNC);
    let syncs = agent.syncs().len();
    let out = node.nft(["flush", "chain", "ip", TABLE, "services"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply_http_service(&s.api, "other", "10.96.0.11", &[POD_A]);
    agent.wait_syncs(syncs + 1, SYNC);
    wait_converged(node, &s.api, true, Duration::from_secs(7));
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
}

#[test]
fn tampering_inside_our_table_is_repaired() {
    if !require_root_and_tools() {
        return;
    }
    let s = setup();
    let node = s.cluster.node();
    apply_http_service(&s.api, "web", SVC_IP, &[POD_A]);
    let mut agent = Agent::start("tamper", node, &s.api, &["--verify-period=300ms"]);
    agent.wait_syncs(1, SYNC);
    wait_converged(node, &s.api, true, SYNC);

    // Another program's commit: our tables are read back once, found intact, no full sync.
    let syncs = agent.syncs().len();
    node.nft_apply("table inet someone-else {\n}\n").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(agent.syncs().len(), syncs, "a foreign commit caused a sync");

    for tamper in [
        vec![
            "delete",
            "element",
            "ip",
            TABLE,
            "service-ips",
            "{ 10.96.0.10 . tcp . 80 }",
        ],
        vec!["flush", "chain", "ip", TABLE, "services"],
        vec![
            "add",
            "rule",
            "ip",
            TABLE,
            "services",
            "ip",
            "daddr",
            "10.96.0.10",
            "drop",
        ],
    ] {
        let out = node.nft(&tamper);
        assert!(
            out.status.success(),
            "{tamper:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_converged(node, &s.api, true, Duration::from_secs(5));
    }
    wait_served_by(&s.client, SVC_IP, 80, "a", SYNC);
    assert!(node
        .nft(["list", "table", "inet", "someone-else"])
        .status
        .success());
}
