//! A wire-compatible fake Kubernetes API server for end-to-end tests of the
//! `kube-nftproxy run` agent (kube 5.0 `watcher` + `reflector`).
//!
//! Specified by `/work/shared/research/apiserver.md` ("a wire-compatible fake
//! API server"). Plain HTTP/1.1 on `127.0.0.1:<random port>`, JSON only.
//!
//! ```ignore
//! let api = FakeApi::start();                       // sync or async context
//! api.apply(&service);                              // back door: upsert, returns stored JSON
//! let client = api.client();                        // async context only (kube::Client)
//! // or: kube-nftproxy run --kubeconfig <api.kubeconfig_file()>
//! api.force_expire(); api.drop_streams();           // watcher must relist
//! assert_eq!(api.lists("services"), 2);
//! ```
//!
//! What it serves
//! * Resources: see [`RESOURCES`] (services, endpoints, nodes, namespaces, pods,
//!   configmaps, core/v1 and events.k8s.io/v1 events, discovery.k8s.io/v1
//!   endpointslices, networking.k8s.io/v1 servicecidrs). Namespaced resources
//!   on `/…/namespaces/{ns}/{plural}` and on the all-namespaces path.
//! * GET (list / get / watch), POST (create, `generateName`), PUT (update,
//!   optimistic concurrency on `metadata.resourceVersion` -> 409), PATCH
//!   (merge, strategic-merge approximated as merge, apply-patch = merge with
//!   create-if-missing; JSON patch -> 415), DELETE (returns the deleted
//!   object). `/status` subresources behave like the main resource.
//! * List: `limit` + `continue` (consistent snapshot at the first page's RV,
//!   rebuilt from the event history; a token older than the history -> HTTP
//!   410 `Expired`), `resourceVersion` + `resourceVersionMatch=Exact` served
//!   the same way. Items carry no `kind`/`apiVersion` (like the real server).
//! * Label selectors: `=`, `==`, `!=`, `key`, `!key`, `in`, `notin`.
//!   Field selectors: `=`, `==`, `!=` on ANY dotted JSON path (a missing field
//!   is ""); the real server only allows a few fields per resource.
//! * Watch: HTTP 200 chunked, one JSON event per line; history replay for
//!   `resourceVersion=N`; `""`/`"0"` sends synthetic ADDED for the current
//!   state; `sendInitialEvents=true` (needs `resourceVersionMatch=NotOlderThan`
//!   and `allowWatchBookmarks=true`, else 422) sends ADDED for the current
//!   state and a BOOKMARK annotated `k8s.io/initial-events-end: "true"`.
//!   Label/namespace filtering is transition-aware (an object whose labels
//!   stop matching yields DELETED, start matching yields ADDED). BOOKMARKs
//!   every [`FakeApi::set_bookmark_interval`] (default 1 s) when
//!   `allowWatchBookmarks=true`; the stream ends after `timeoutSeconds`.
//!   RV older than the retained history -> HTTP 200 + in-stream `ERROR` 410.
//! * `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}/{v}` (classic and
//!   aggregated v2 discovery), `/healthz`, `/livez`, `/readyz`.
//!
//! Known gaps versus a real kube-apiserver: no authn/authz, no TLS, no
//! admission/validation/defaulting (no ClusterIP allocation, namespaces need
//! not exist, no finalizers or graceful deletion, `deletecollection`
//! unsupported), no protobuf/CBOR, no "too large resource version" handling
//! (a watch from a future RV just waits), `resourceVersionMatch` on lists is
//! only honoured for `Exact`, strategic merge patch is a plain merge patch,
//! `generation` is bumped whenever `spec` changes.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Map, Value};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One served resource type.
#[derive(Debug)]
pub struct ResDef {
    /// API group, "" for core.
    pub group: &'static str,
    pub version: &'static str,
    /// URL plural, e.g. `services`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl ResDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn res(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResDef {
    ResDef {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
    }
}

/// The resource types this server knows.
pub const RESOURCES: &[ResDef] = &[
    res("", "services", "service", "Service", true),
    res("", "endpoints", "endpoints", "Endpoints", true),
    res("", "nodes", "node", "Node", false),
    res("", "namespaces", "namespace", "Namespace", false),
    res("", "pods", "pod", "Pod", true),
    res("", "configmaps", "configmap", "ConfigMap", true),
    res("", "events", "event", "Event", true),
    res(
        "discovery.k8s.io",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
    ),
    res(
        "networking.k8s.io",
        "servicecidrs",
        "servicecidr",
        "ServiceCIDR",
        false,
    ),
    res("events.k8s.io", "events", "event", "Event", true),
];

const ENDPOINTSLICES: usize = 7;

/// Request categories counted by the server (see [`FakeApi::count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    List,
    Watch,
    Get,
    Create,
    Update,
    Patch,
    Delete,
    /// `/version`, `/api…`, `/apis…`, health endpoints.
    Discovery,
    /// Anything that was not understood (404/405).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EvType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
struct Ev {
    rv: u64,
    ty: EvType,
    /// New state (for DELETED: last state, stamped with the deletion RV).
    obj: Value,
    /// State before the change (None for ADDED).
    prev: Option<Value>,
}

type Key = (String, String);

#[derive(Default)]
struct Store {
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Ev>,
    /// Every event with `rv > min_rv` is in `history`; watches/continues from
    /// an RV below this get 410 Expired.
    min_rv: u64,
    /// RV of the newest event dropped from `history`; an open stream that
    /// has not sent up to here yet lost events and gets 410.
    lost_rv: u64,
}

struct State {
    rv: u64,
    next_uid: u64,
    stores: Vec<Store>,
    history_limit: usize,
    delay: Duration,
    fail_lists: u32,
    fail_lists_code: u16,
    /// Per-resource list failures (plural -> remaining), HTTP 500.
    fail_lists_of: HashMap<String, u32>,
    fail_watches: u32,
    bookmark_interval: Option<Duration>,
    serve_endpointslices: bool,
    drop_gen: u64,
    expire_gen: u64,
    open_watches: usize,
    counters: HashMap<(Verb, String), u64>,
    log: Vec<String>,
    /// When each `log` entry arrived.
    log_at: Vec<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change that open watches must look at.
    signal: tokio::sync::watch::Sender<u64>,
    port: u16,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn notify(&self) {
        self.signal.send_modify(|v| *v += 1);
    }
}

struct ServerThread {
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// The fake API server. Dropping it stops the server and removes the
/// kubeconfig file.
pub struct FakeApi {
    shared: Arc<Shared>,
    server: Mutex<Option<ServerThread>>,
    kubeconfig: Mutex<Option<PathBuf>>,
    /// Network namespace (harness name) the listener lives in; None: the
    /// test process's own.
    netns: Option<String>,
}

/// Binds `127.0.0.1:port` in the named network namespace (None: the calling
/// thread's). A socket stays in the namespace it was created in, so only the
/// bind happens on a thread that entered the namespace; the server thread
/// itself and the back door stay in the test process's namespace.
fn bind_loopback(netns: Option<&str>, port: u16) -> std::io::Result<std::net::TcpListener> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match netns {
        None => std::net::TcpListener::bind(addr),
        Some(name) => std::thread::scope(|s| {
            s.spawn(|| {
                super::sys::enter_netns(name)?;
                std::net::TcpListener::bind(addr)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
    }
}

impl FakeApi {
    /// Starts the server on `127.0.0.1:0` in its own thread + tokio runtime,
    /// so it works from sync and async tests alike.
    pub fn start() -> FakeApi {
        FakeApi::start_with(None)
    }

    /// Like [`Self::start`], but the listener is `127.0.0.1:<port>` inside
    /// the harness network namespace `netns` (e.g. `cluster.node().name()`),
    /// so a process running in that namespace (the agent) reaches it through
    /// [`Self::kubeconfig_file`]; the test process itself cannot connect
    /// (use the back door). [`Self::restart`] rebinds in the same namespace.
    pub fn start_in_netns(netns: &str) -> FakeApi {
        FakeApi::start_with(Some(netns.to_string()))
    }

    fn start_with(netns: Option<String>) -> FakeApi {
        let listener = bind_loopback(netns.as_deref(), 0)
            .unwrap_or_else(|e| panic!("fakeapi: bind 127.0.0.1:0 (netns {netns:?}): {e}"));
        let port = listener.local_addr().unwrap().port();
        let (signal, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                next_uid: 1,
                stores: RESOURCES.iter().map(|_| Store::default()).collect(),
                history_limit: 1000,
                delay: Duration::ZERO,
                fail_lists: 0,
                fail_lists_code: 500,
                fail_lists_of: HashMap::new(),
                fail_watches: 0,
                bookmark_interval: Some(Duration::from_secs(1)),
                serve_endpointslices: true,
                drop_gen: 0,
                expire_gen: 0,
                open_watches: 0,
                counters: HashMap::new(),
                log: Vec::new(),
                log_at: Vec::new(),
            }),
            signal,
            port,
        });
        let server = spawn_server(shared.clone(), listener);
        FakeApi {
            shared,
            server: Mutex::new(Some(server)),
            kubeconfig: Mutex::new(None),
            netns,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Writes (once) a kubeconfig pointing at [`Self::url`] (no auth,
    /// namespace `default`) and returns its path. Removed on drop.
    pub fn kubeconfig_file(&self) -> PathBuf {
        let mut kc = self.kubeconfig.lock().unwrap();
        if let Some(p) = &*kc {
            return p.clone();
        }
        // Servers in different namespaces can share a port number: the name
        // also carries a random part.
        let path = std::env::temp_dir().join(format!(
            "kntp-fakeapi-{}-{}-{}.kubeconfig",
            std::process::id(),
            self.shared.port,
            super::random_id()
        ));
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        );
        std::fs::write(&path, yaml).expect("write kubeconfig");
        *kc = Some(path.clone());
        path
    }

    /// A `kube::Client` for this server. Must be called inside a tokio
    /// runtime (kube spawns its buffer task).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).expect("kube client")
    }

    // ---- back door -------------------------------------------------------

    /// Create-or-replace `obj` (anything serializing to a Kubernetes object
    /// with `apiVersion`, `kind`, `metadata.name`), like a controller would.
    /// Assigns resourceVersion/uid/creationTimestamp, notifies watches and
    /// returns the stored object. Panics on unknown kinds or missing names.
    pub fn apply<T: Serialize>(&self, obj: &T) -> Value {
        let obj = serde_json::to_value(obj).expect("serialize object");
        let av = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let idx = RESOURCES
            .iter()
            .position(|r| r.api_version() == av && r.kind == kind)
            .unwrap_or_else(|| panic!("fakeapi: unknown apiVersion/kind {av:?}/{kind:?}"));
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let ns = if RESOURCES[idx].namespaced {
            Some(ns.unwrap_or_else(|| "default".to_string()))
        } else {
            None
        };
        let mut st = self.shared.lock();
        let out = st
            .write(idx, ns.as_deref(), obj, WriteMode::Upsert)
            .unwrap_or_else(|(c, m)| panic!("fakeapi apply failed: {c} {m}"));
        drop(st);
        self.shared.notify();
        out
    }

    /// Deletes an object. `kind` is a kind (`Service`) or plural
    /// (`services`), case-insensitive; `ns` is "" for cluster-scoped objects.
    /// Returns false if it did not exist.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> bool {
        let idx = resolve_kind(kind);
        let mut st = self.shared.lock();
        let ok = st.remove(idx, &key(ns, name)).is_some();
        drop(st);
        self.shared.notify();
        ok
    }

    /// The stored object (with `kind`/`apiVersion`), if any.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let idx = resolve_kind(kind);
        self.shared.lock().stores[idx]
            .objects
            .get(&key(ns, name))
            .cloned()
    }

    /// The stored objects of `kinds`, as one multi-document YAML file (each document the
    /// object's JSON): what `kube-nftproxy render` reads.
    pub fn documents(&self, kinds: &[&str]) -> String {
        let mut docs = String::new();
        for kind in kinds {
            for o in self.objects(kind) {
                docs += "---\n";
                docs += &serde_json::to_string(&o).unwrap();
                docs += "\n";
            }
        }
        docs
    }

    /// All stored objects of a kind, sorted by namespace/name.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let idx = resolve_kind(kind);
        self.shared.lock().stores[idx]
            .objects
            .values()
            .cloned()
            .collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    // ---- fault knobs ----------------------------------------------------

    /// Ends every open watch stream now (cleanly, like a server-side
    /// timeout); clients re-watch from their last RV.
    pub fn drop_streams(&self) {
        self.shared.lock().drop_gen += 1;
        self.shared.notify();
    }

    /// Compacts all history: bumps the RV and forgets every event, so any
    /// later watch or `continue` from an older RV gets 410 Expired. Open
    /// streams keep running (combine with [`Self::drop_streams`]).
    pub fn force_expire(&self) {
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        for s in &mut st.stores {
            if let Some(e) = s.history.back() {
                s.lost_rv = e.rv;
            }
            s.history.clear();
            s.min_rv = rv;
        }
    }

    /// [`Self::force_expire`] and send an in-stream ERROR 410 on every open
    /// watch (then close it), forcing an immediate relist.
    pub fn expire_streams(&self) {
        self.force_expire();
        self.shared.lock().expire_gen += 1;
        self.shared.notify();
    }

    /// The next `n` list requests fail with HTTP 500 and a Status body.
    pub fn fail_lists(&self, n: u32) {
        self.fail_lists_with(n, 500);
    }

    /// The next `n` list requests fail with HTTP `code` (e.g. 403, 500).
    pub fn fail_lists_with(&self, n: u32, code: u16) {
        let mut st = self.shared.lock();
        st.fail_lists = n;
        st.fail_lists_code = code;
    }

    /// The next `n` list requests on resource `plural` (e.g.
    /// `endpointslices`) fail with HTTP 500; lists of other resources are
    /// unaffected. `0` ends an earlier setting.
    pub fn fail_lists_of(&self, plural: &str, n: u32) {
        self.shared
            .lock()
            .fail_lists_of
            .insert(plural.to_string(), n);
    }

    /// The next `n` watch requests fail with HTTP 500 before the stream
    /// starts (kube: `WatchStartFailed`, retried without relist).
    pub fn fail_watches(&self, n: u32) {
        self.shared.lock().fail_watches = n;
    }

    /// Delay every request by `d` before handling it.
    pub fn set_delay(&self, d: Duration) {
        self.shared.lock().delay = d;
    }

    /// Bookmark period for watches that allow bookmarks (None: never).
    /// Applies to watches started afterwards.
    pub fn set_bookmark_interval(&self, d: Option<Duration>) {
        self.shared.lock().bookmark_interval = d;
    }

    /// Events kept per resource (default 1000); older ones are compacted.
    pub fn set_history_limit(&self, n: usize) {
        let mut st = self.shared.lock();
        st.history_limit = n.max(1);
        for i in 0..st.stores.len() {
            st.trim(i);
        }
    }

    /// `false`: 404 for discovery.k8s.io/v1 EndpointSlices (and hide them
    /// from discovery), like a server without that API.
    pub fn serve_endpointslices(&self, on: bool) {
        self.shared.lock().serve_endpointslices = on;
        self.drop_streams();
    }

    /// Stops listening and closes every connection abruptly (open watches
    /// see EOF mid-stream). State is kept. No-op if already stopped.
    pub fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some(s) = server {
            let _ = s.shutdown.send(());
            let _ = s.thread.join();
        }
    }

    /// Listens again on the same port (in the same network namespace) with
    /// the same state. No-op if running.
    pub fn restart(&self) {
        let mut server = self.server.lock().unwrap();
        if server.is_some() {
            return;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.shared.port));
        let mut tries = 0;
        let listener = loop {
            match bind_loopback(self.netns.as_deref(), self.shared.port) {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("fakeapi: rebind {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("fakeapi: cannot rebind {addr}: {e}"),
            }
        };
        *server = Some(spawn_server(self.shared.clone(), listener));
    }

    pub fn is_running(&self) -> bool {
        self.server.lock().unwrap().is_some()
    }

    // ---- counters -------------------------------------------------------

    /// Requests of `verb` on resource `plural` so far (`""` for discovery).
    pub fn count(&self, verb: Verb, plural: &str) -> u64 {
        let st = self.shared.lock();
        st.counters
            .get(&(verb, plural.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// List requests (each page counts) on `plural`.
    pub fn lists(&self, plural: &str) -> u64 {
        self.count(Verb::List, plural)
    }

    /// Watch requests on `plural`.
    pub fn watches(&self, plural: &str) -> u64 {
        self.count(Verb::Watch, plural)
    }

    /// Watch streams currently open (all resources).
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// Every request so far as `METHOD path?query`.
    pub fn request_log(&self) -> Vec<String> {
        self.shared.lock().log.clone()
    }

    /// `request_log` with the moment each request arrived.
    pub fn request_log_timed(&self) -> Vec<(Instant, String)> {
        let st = self.shared.lock();
        st.log_at
            .iter()
            .copied()
            .zip(st.log.iter().cloned())
            .collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
        if let Some(p) = self.kubeconfig.lock().unwrap().take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn resolve_kind(kind: &str) -> usize {
    // `group/plural` picks a kind that two groups serve (`events.k8s.io/events`).
    if let Some((group, plural)) = kind.split_once('/') {
        return RESOURCES
            .iter()
            .position(|r| r.group == group && r.plural == plural)
            .unwrap_or_else(|| panic!("fakeapi: unknown resource {kind:?}"));
    }
    RESOURCES
        .iter()
        .position(|r| r.kind.eq_ignore_ascii_case(kind) || r.plural.eq_ignore_ascii_case(kind))
        .unwrap_or_else(|| panic!("fakeapi: unknown kind {kind:?}"))
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

// ---- server plumbing -------------------------------------------------------

fn spawn_server(shared: Arc<Shared>, listener: std::net::TcpListener) -> ServerThread {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::Builder::new()
        .name(format!("fakeapi-{}", shared.port))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fakeapi runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        acc = listener.accept() => {
                            let Ok((stream, _)) = acc else { continue };
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let shared = shared.clone();
                                    async move { Ok::<_, Infallible>(handle(shared, req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
            // Dropping the runtime drops every connection and watch task:
            // sockets close abruptly, like a dying API server.
            drop(rt);
        })
        .expect("spawn fakeapi thread");
    ServerThread {
        shutdown: tx,
        thread,
    }
}

fn full(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed_unsync())
        .unwrap()
}

fn json_resp(code: u16, v: &Value) -> Response<Body> {
    full(code, "application/json", serde_json::to_vec(v).unwrap())
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn status_resp(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_resp(code, &status_json(code, reason, message))
}

type Fail = (u16, String);

fn fail_resp((code, msg): Fail) -> Response<Body> {
    let reason = match code {
        400 => "BadRequest",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 if msg.contains("already exists") => "AlreadyExists",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        403 => "Forbidden",
        _ => "InternalError",
    };
    status_resp(code, reason, &msg)
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

// ---- request routing ---------------------------------------------------------

struct Target {
    idx: usize,
    ns: Option<String>,
    name: Option<String>,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let delay = {
        let mut st = shared.lock();
        st.log.push(format!("{method} {}", req.uri()));
        st.log_at.push(Instant::now());
        st.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status_resp(400, "BadRequest", &format!("reading body: {e}")),
    };

    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Discovery and health.
    if let Some(resp) = discovery(&shared, &method, &segs, &accept) {
        count(&shared, Verb::Discovery, "");
        return resp;
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            count(&shared, Verb::Other, "");
            return status_resp(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !(tail.is_empty() && *plural == "status") => (
            Some(*ns),
            *plural,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => (None, "", None, None),
    };
    let serve_es = shared.lock().serve_endpointslices;
    let idx = RESOURCES.iter().position(|r| {
        r.group == group
            && r.version == version
            && r.plural == plural
            && (r.namespaced || ns.is_none())
    });
    let Some(idx) = idx.filter(|&i| i != ENDPOINTSLICES || serve_es) else {
        count(&shared, Verb::Other, plural);
        return status_resp(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if sub.is_some_and(|s| s != "status") || rest.len() > 5 {
        count(&shared, Verb::Other, plural);
        return status_resp(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let t = Target {
        idx,
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
    };
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, t.name.is_some()) {
        (&Method::GET, false) if is_watch => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::GET, true) => Verb::Get,
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        _ => Verb::Other,
    };
    count(&shared, verb, plural);
    let res = match verb {
        Verb::Watch => return watch(&shared, &t, &query),
        Verb::List => list(&shared, &t, &query),
        Verb::Get => get(&shared, &t),
        Verb::Create | Verb::Update | Verb::Patch => write(&shared, &t, verb, &content_type, &body),
        Verb::Delete => delete(&shared, &t),
        _ => Err((405, format!("method {method} not allowed on {path}"))),
    };
    match res {
        Ok((code, v)) => json_resp(code, &v),
        Err(f) => fail_resp(f),
    }
}

fn count(shared: &Shared, verb: Verb, plural: &str) {
    *shared
        .lock()
        .counters
        .entry((verb, plural.to_string()))
        .or_default() += 1;
}

fn discovery(
    shared: &Shared,
    method: &Method,
    segs: &[&str],
    accept: &str,
) -> Option<Response<Body>> {
    if method != Method::GET {
        return None;
    }
    let serve_es = shared.lock().serve_endpointslices;
    let visible = |i: usize| i != ENDPOINTSLICES || serve_es;
    let aggregated = accept.contains("apidiscovery.k8s.io");
    let groups: Vec<&str> = {
        let mut g: Vec<&str> = Vec::new();
        for (i, r) in RESOURCES.iter().enumerate() {
            if !r.group.is_empty() && visible(i) && !g.contains(&r.group) {
                g.push(r.group);
            }
        }
        g
    };
    let res_list = |group: &str| -> Vec<(usize, &ResDef)> {
        RESOURCES
            .iter()
            .enumerate()
            .filter(|(i, r)| r.group == group && visible(*i))
            .collect()
    };
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    let resource_list = |group: &str, version: &str| {
        let resources: Vec<Value> = res_list(group)
            .into_iter()
            .flat_map(|(_, r)| {
                [
                    json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                           "kind": r.kind, "verbs": verbs}),
                    json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                           "kind": r.kind, "verbs": ["get", "patch", "update"]}),
                ]
            })
            .collect();
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    };
    let agg_group = |group: &str| {
        let resources: Vec<Value> = res_list(group)
            .into_iter()
            .map(|(_, r)| {
                json!({"resource": r.plural, "singularResource": r.singular,
                       "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                       "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                       "verbs": verbs,
                       "subresources": [{"subresource": "status",
                           "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                           "verbs": ["get", "patch", "update"]}]})
            })
            .collect();
        json!({"metadata": {"name": group},
               "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
    };
    let agg_resp = |items: Vec<Value>| {
        let v = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
                       "metadata": {}, "items": items});
        full(
            200,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            serde_json::to_vec(&v).unwrap(),
        )
    };
    Some(match segs {
        ["version"] => json_resp(
            200,
            &json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-fakeapi",
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc",
                    "platform": "linux/amd64"}),
        ),
        ["healthz" | "livez" | "readyz"] => full(200, "text/plain", "ok"),
        ["api"] if aggregated => agg_resp(vec![agg_group("")]),
        ["api"] => json_resp(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                        "serverAddress": format!("127.0.0.1:{}", shared.port)}]}),
        ),
        ["api", "v1"] => json_resp(200, &resource_list("", "v1")),
        ["apis"] if aggregated => agg_resp(groups.iter().map(|g| agg_group(g)).collect()),
        ["apis"] => {
            let gs: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            json_resp(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
            )
        }
        ["apis", g] if groups.contains(g) => {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json_resp(
                200,
                &json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
                        "versions": [gv.clone()], "preferredVersion": gv}),
            )
        }
        ["apis", g, "v1"] if groups.contains(g) => json_resp(200, &resource_list(g, "v1")),
        _ => return None,
    })
}

// ---- selectors -------------------------------------------------------------

#[derive(Debug, Clone)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default)]
struct Filter {
    ns: Option<String>,
    labels: Vec<Req>,
    fields: Vec<Req>,
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected (values) in selector, got {s:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn parse_selector(s: &str, fields: bool) -> Result<Vec<Req>, Fail> {
    let bad = |m: String| (400u16, format!("unable to parse requirement: {m}"));
    let mut out = Vec::new();
    for term in split_top(s) {
        if let Some(k) = term.strip_prefix('!') {
            if fields {
                return Err(bad(format!("invalid field selector {term:?}")));
            }
            out.push(Req::NotExists(k.trim().to_string()));
            continue;
        }
        let end = term
            .find(|c: char| c.is_whitespace() || c == '=' || c == '!' || c == '(')
            .unwrap_or(term.len());
        let (k, rest) = (term[..end].to_string(), term[end..].trim());
        if k.is_empty() {
            return Err(bad(format!("empty key in {term:?}")));
        }
        let req = if let Some(v) = rest.strip_prefix("!=") {
            Req::NotEq(k, v.trim().to_string())
        } else if let Some(v) = rest.strip_prefix("==") {
            Req::Eq(k, v.trim().to_string())
        } else if let Some(v) = rest.strip_prefix('=') {
            Req::Eq(k, v.trim().to_string())
        } else if fields {
            return Err(bad(format!("invalid field selector {term:?}")));
        } else if let Some(v) = rest.strip_prefix("notin") {
            Req::NotIn(k, parse_set(v).map_err(bad)?)
        } else if let Some(v) = rest.strip_prefix("in") {
            Req::In(k, parse_set(v).map_err(bad)?)
        } else if rest.is_empty() {
            Req::Exists(k)
        } else {
            return Err(bad(format!("invalid selector term {term:?}")));
        };
        out.push(req);
    }
    Ok(out)
}

fn field_value(obj: &Value, path: &str) -> String {
    let mut v = obj;
    for p in path.split('.') {
        match v.get(p) {
            Some(x) => v = x,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn req_matches(r: &Req, get: &dyn Fn(&str) -> Option<String>) -> bool {
    match r {
        Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
        Req::NotEq(k, v) => get(k).as_deref() != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(&x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    }
}

impl Filter {
    fn from_query(t: &Target, q: &HashMap<String, String>) -> Result<Filter, Fail> {
        Ok(Filter {
            ns: t.ns.clone(),
            labels: parse_selector(q.get("labelSelector").map_or("", String::as_str), false)?,
            fields: parse_selector(q.get("fieldSelector").map_or("", String::as_str), true)?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.ns {
            if obj["metadata"]["namespace"].as_str() != Some(ns.as_str()) {
                return false;
            }
        }
        let labels = &obj["metadata"]["labels"];
        let lget = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
        let fget = |k: &str| Some(field_value(obj, k));
        self.labels.iter().all(|r| req_matches(r, &lget))
            && self.fields.iter().all(|r| req_matches(r, &fget))
    }
}

// ---- store operations --------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Create,
    Update,
    Upsert,
}

fn obj_key(obj: &Value) -> Key {
    (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn obj_rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl State {
    fn push(&mut self, idx: usize, ev: Ev) {
        self.stores[idx].history.push_back(ev);
        self.trim(idx);
    }

    fn trim(&mut self, idx: usize) {
        let limit = self.history_limit;
        let s = &mut self.stores[idx];
        while s.history.len() > limit {
            let e = s.history.pop_front().unwrap();
            s.min_rv = e.rv;
            s.lost_rv = e.rv;
        }
    }

    /// Normalizes and stores `obj` under namespace `ns`.
    fn write(
        &mut self,
        idx: usize,
        ns: Option<&str>,
        mut obj: Value,
        mode: WriteMode,
    ) -> Result<Value, Fail> {
        let r = &RESOURCES[idx];
        if !obj.is_object() {
            return Err((400, "body is not a JSON object".into()));
        }
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let meta = obj["metadata"].as_object_mut().unwrap();
        if r.namespaced {
            let ns = ns.unwrap_or("default");
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err((
                        400,
                        format!("the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"),
                    ))
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let has_name = meta
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(g) if mode == WriteMode::Create => {
                    let n = format!("{g}{:05x}", (self.next_uid * 7919) % 0xfffff);
                    meta.insert("name".into(), json!(n));
                }
                _ => {
                    return Err((
                        422,
                        format!("{} is invalid: metadata.name: Required value", r.kind),
                    ))
                }
            }
        }
        let k = obj_key(&obj);
        let prev = self.stores[idx].objects.get(&k).cloned();
        match (&prev, mode) {
            (Some(_), WriteMode::Create) => {
                return Err((409, format!("{} \"{}\" already exists", r.plural, k.1)));
            }
            (None, WriteMode::Update) => {
                return Err((404, format!("{} \"{}\" not found", r.plural, k.1)));
            }
            (Some(p), WriteMode::Update) => {
                let want = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !want.is_empty()
                    && want != p["metadata"]["resourceVersion"].as_str().unwrap_or("")
                {
                    return Err((
                        409,
                        format!(
                            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                             please apply your changes to the latest version and try again",
                            r.plural, k.1
                        ),
                    ));
                }
            }
            _ => {}
        }
        self.rv += 1;
        let rv = self.rv;
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        match &prev {
            Some(p) => {
                for f in ["uid", "creationTimestamp"] {
                    meta.insert(f.into(), p["metadata"][f].clone());
                }
                let gen = p["metadata"]["generation"].as_i64().unwrap_or(1);
                let bump = i64::from(p.get("spec") != obj.get("spec"));
                obj["metadata"]["generation"] = json!(gen + bump);
            }
            None => {
                if meta
                    .get("uid")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    meta.insert(
                        "uid".into(),
                        json!(format!("fakeapi-uid-{}", self.next_uid)),
                    );
                    self.next_uid += 1;
                }
                if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                }
                meta.insert("generation".into(), json!(1));
            }
        }
        let ty = if prev.is_some() {
            EvType::Modified
        } else {
            EvType::Added
        };
        self.stores[idx].objects.insert(k, obj.clone());
        self.push(
            idx,
            Ev {
                rv,
                ty,
                obj: obj.clone(),
                prev,
            },
        );
        Ok(obj)
    }

    fn remove(&mut self, idx: usize, k: &Key) -> Option<Value> {
        let prev = self.stores[idx].objects.remove(k)?;
        self.rv += 1;
        let mut obj = prev.clone();
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let rv = self.rv;
        self.push(
            idx,
            Ev {
                rv,
                ty: EvType::Deleted,
                obj: obj.clone(),
                prev: Some(prev),
            },
        );
        Some(obj)
    }

    /// The objects of resource `idx` changed since `rv`, each as it was at `rv` (`None`:
    /// it did not exist then), or None if the history no longer reaches back that far.
    fn changed_since(&self, idx: usize, rv: u64) -> Option<BTreeMap<Key, Option<Value>>> {
        let s = &self.stores[idx];
        if rv < s.min_rv {
            return None;
        }
        let mut past = BTreeMap::new();
        // Newest first, so the oldest change after `rv` has the last word.
        for ev in s.history.iter().rev().take_while(|e| e.rv > rv) {
            match (&ev.ty, &ev.prev) {
                (EvType::Added, _) => {
                    past.insert(obj_key(&ev.obj), None);
                }
                (_, Some(p)) => {
                    past.insert(obj_key(&ev.obj), Some(p.clone()));
                }
                (_, None) => {}
            }
        }
        Some(past)
    }
}

fn strip_type(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    v
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Continue token: `<rv>.<hex(ns)>.<hex(name)>` of the last item returned.
fn decode_continue(tok: &str) -> Option<(u64, Key)> {
    let mut it = tok.split('.');
    let rv = it.next()?.parse().ok()?;
    let ns = unhex(it.next()?)?;
    let name = unhex(it.next()?)?;
    Some((rv, (ns, name)))
}

fn list(shared: &Shared, t: &Target, q: &HashMap<String, String>) -> Result<(u16, Value), Fail> {
    let filter = Filter::from_query(t, q)?;
    let mut st = shared.lock();
    if st.fail_lists > 0 {
        st.fail_lists -= 1;
        return Err((st.fail_lists_code, "fakeapi: injected list failure".into()));
    }
    if let Some(n) = st.fail_lists_of.get_mut(RESOURCES[t.idx].plural) {
        if *n > 0 {
            *n -= 1;
            return Err((500, "fakeapi: injected list failure".into()));
        }
    }
    let limit: usize = match q.get("limit").map(|l| l.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n as usize,
        Some(_) => return Err((400, "invalid limit".into())),
    };
    // As the API server's watch cache does: a list at resourceVersion 0 (any version not
    // older than 0) is answered whole, `limit` ignored (client-go's reflector, and kube's
    // watcher with `any_semantic`, list this way).
    let exact = q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    let from_cache = q.get("resourceVersion").map(String::as_str) == Some("0")
        && !exact
        && q.get("continue").is_none_or(|c| c.is_empty());
    let limit = if from_cache { 0 } else { limit };
    let (snap_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rv, k) = decode_continue(c).ok_or((400, "invalid continue token".to_string()))?;
            (rv, Some(k))
        }
        None => match q.get("resourceVersion").map(|r| r.parse::<u64>()) {
            Some(Ok(rv)) if exact => (rv, None),
            Some(Err(_)) if exact => return Err((400, "invalid resourceVersion".into())),
            _ => (st.rv, None),
        },
    };
    // The store as it was at `snap_rv`: the current objects, overlaid with the state at
    // `snap_rv` of those changed since (usually none, or a few: an Event the client wrote
    // while listing). Only the page is copied: copying the whole store per page made
    // listing 45,000 objects in pages of 500 take half a minute.
    let overlay = if snap_rv >= st.rv {
        BTreeMap::new()
    } else {
        st.changed_since(t.idx, snap_rv).ok_or_else(|| {
            (
                410,
                if after.is_some() {
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter."
                        .to_string()
                } else {
                    format!("too old resource version: {snap_rv} ({})", st.rv)
                },
            )
        })?
    };
    let lower = || {
        (
            after
                .as_ref()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            std::ops::Bound::Unbounded,
        )
    };
    let mut now = st.stores[t.idx].objects.range::<Key, _>(lower()).peekable();
    let mut then = overlay.range::<Key, _>(lower()).peekable();
    // Both in key order; a key in both takes the overlay's (past) state.
    let objs = std::iter::from_fn(|| loop {
        let (k, v) = match (now.peek(), then.peek()) {
            (None, None) => return None,
            (Some((a, _)), Some((b, _))) if a < b => now.next().map(|(k, v)| (k, Some(v)))?,
            (Some((a, _)), Some((b, _))) if a == b => {
                now.next();
                then.next().map(|(k, v)| (k, v.as_ref()))?
            }
            (_, Some(_)) => then.next().map(|(k, v)| (k, v.as_ref()))?,
            (Some(_), None) => now.next().map(|(k, v)| (k, Some(v)))?,
        };
        if let Some(v) = v {
            return Some((k, v));
        }
    });
    let mut items = Vec::new();
    let mut cont = None;
    let mut matching = objs.filter(|(_, o)| filter.matches(o)).peekable();
    while let Some((k, o)) = matching.next() {
        items.push(strip_type(o.clone()));
        if limit > 0 && items.len() == limit {
            if matching.peek().is_some() {
                cont = Some(format!("{snap_rv}.{}.{}", hex(&k.0), hex(&k.1)));
            }
            break;
        }
    }
    let r = &RESOURCES[t.idx];
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(snap_rv.to_string()));
    if let Some(c) = cont {
        meta.insert("continue".into(), json!(c));
    }
    Ok((
        200,
        json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta, "items": items}),
    ))
}

fn get(shared: &Shared, t: &Target) -> Result<(u16, Value), Fail> {
    let k = key(t.ns.as_deref().unwrap_or(""), t.name.as_deref().unwrap());
    let st = shared.lock();
    st.stores[t.idx]
        .objects
        .get(&k)
        .cloned()
        .map(|o| (200, o))
        .ok_or_else(|| {
            (
                404,
                format!("{} \"{}\" not found", RESOURCES[t.idx].plural, k.1),
            )
        })
}

fn delete(shared: &Shared, t: &Target) -> Result<(u16, Value), Fail> {
    let k = key(t.ns.as_deref().unwrap_or(""), t.name.as_deref().unwrap());
    let out = shared.lock().remove(t.idx, &k);
    shared.notify();
    out.map(|o| (200, o)).ok_or_else(|| {
        (
            404,
            format!("{} \"{}\" not found", RESOURCES[t.idx].plural, k.1),
        )
    })
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn write(
    shared: &Shared,
    t: &Target,
    verb: Verb,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), Fail> {
    let parse = || -> Result<Value, Fail> {
        serde_json::from_slice::<Value>(body)
            .or_else(|_| serde_yaml::from_slice::<Value>(body))
            .map_err(|e| (400, format!("cannot parse body: {e}")))
    };
    let mut body = parse()?;
    if let Some(name) = &t.name {
        let bn = body["metadata"]["name"].as_str().unwrap_or("");
        if verb == Verb::Update && !bn.is_empty() && bn != name {
            return Err((
                400,
                format!(
                    "the name of the object ({bn}) does not match the name on the URL ({name})"
                ),
            ));
        }
    }
    let mut st = shared.lock();
    let ns = t.ns.as_deref();
    let out = match verb {
        Verb::Create => {
            if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            st.write(t.idx, ns, body, WriteMode::Create)
                .map(|o| (201, o))
        }
        Verb::Update => {
            body["metadata"]["name"] = json!(t.name.clone().unwrap());
            st.write(t.idx, ns, body, WriteMode::Update)
                .map(|o| (200, o))
        }
        _ => {
            let name = t.name.clone().unwrap();
            let k = key(ns.unwrap_or(""), &name);
            let apply = content_type.contains("apply-patch");
            if !(apply || content_type.contains("merge-patch")) {
                return Err((415, format!("the body of the request was in an unsupported content type {content_type:?}")));
            }
            let current = st.stores[t.idx].objects.get(&k).cloned();
            let (mut base, mode) = match current {
                Some(c) => (c, WriteMode::Update),
                None if apply => (json!({"metadata": {"name": name}}), WriteMode::Upsert),
                None => {
                    return Err((
                        404,
                        format!("{} \"{name}\" not found", RESOURCES[t.idx].plural),
                    ))
                }
            };
            if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            merge_patch(&mut base, &body);
            let created = mode == WriteMode::Upsert;
            st.write(t.idx, ns, base, mode)
                .map(|o| (if created { 201 } else { 200 }, o))
        }
    };
    drop(st);
    shared.notify();
    out
}

// ---- watch -----------------------------------------------------------------

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap();
    s.push(b'\n');
    Bytes::from(s)
}

fn expired_line(rv: u64, cur: u64) -> Bytes {
    event_line(
        "ERROR",
        &status_json(
            410,
            "Expired",
            &format!("too old resource version: {rv} ({cur})"),
        ),
    )
}

fn bookmark_line(r: &ResDef, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": meta}),
    )
}

/// Maps a stored event to what a watch with `filter` sees (transition-aware).
fn filter_event<'a>(ev: &'a Ev, f: &Filter) -> Option<(&'static str, &'a Value)> {
    let now = f.matches(&ev.obj);
    match ev.ty {
        EvType::Added => now.then_some(("ADDED", &ev.obj)),
        EvType::Deleted => now.then_some(("DELETED", &ev.obj)),
        EvType::Modified => {
            let before = ev.prev.as_ref().is_some_and(|p| f.matches(p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", &ev.obj)),
                (false, true) => Some(("ADDED", &ev.obj)),
                (true, false) => Some(("DELETED", &ev.obj)),
                (false, false) => None,
            }
        }
    }
}

struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.lock().open_watches -= 1;
    }
}

fn watch(shared: &Arc<Shared>, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let filter = match Filter::from_query(t, q) {
        Ok(f) => f,
        Err(e) => return fail_resp(e),
    };
    let flag = |k: &str| matches!(q.get(k).map(String::as_str), Some("true" | "1"));
    let bookmarks = flag("allowWatchBookmarks");
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true" || v == "1");
    let rv_match = q.get("resourceVersionMatch").map(String::as_str);
    if send_initial == Some(true) && (rv_match != Some("NotOlderThan") || !bookmarks) {
        return fail_resp((
            422,
            "sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true".into(),
        ));
    }
    if rv_match.is_some() && send_initial.is_none() {
        return fail_resp((
            422,
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                .into(),
        ));
    }
    let timeout = match q.get("timeoutSeconds").map(|s| s.parse::<u64>()) {
        None => Duration::from_secs(1800),
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => return fail_resp((400, "invalid timeoutSeconds".into())),
    };
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let r = &RESOURCES[t.idx];
    let mut rx = shared.signal.subscribe();
    let mut initial: Vec<Bytes> = Vec::new();
    let (sent_rv, drop_gen, expire_gen, bookmark_every, expired) = {
        let mut st = shared.lock();
        if st.fail_watches > 0 {
            st.fail_watches -= 1;
            return fail_resp((500, "fakeapi: injected watch failure".into()));
        }
        let store = &st.stores[t.idx];
        let current = || {
            store
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .map(|o| event_line("ADDED", o))
                .collect::<Vec<_>>()
        };
        let mut expired = false;
        let start = if send_initial == Some(true) {
            initial = current();
            initial.push(bookmark_line(r, st.rv, true));
            st.rv
        } else if rv_param.is_empty() || rv_param == "0" {
            if send_initial.is_none() {
                initial = current();
            }
            st.rv
        } else {
            match rv_param.parse::<u64>() {
                Ok(rv) if rv < store.min_rv => {
                    initial.push(expired_line(rv, st.rv));
                    expired = true;
                    rv
                }
                Ok(rv) => rv,
                Err(_) => {
                    return fail_resp((400, format!("invalid resource version {rv_param:?}")))
                }
            }
        };
        st.open_watches += 1;
        (
            start,
            st.drop_gen,
            st.expire_gen,
            st.bookmark_interval,
            expired,
        )
    };
    let guard = OpenWatch(shared.clone());
    let (tx, mut body_rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let shared = shared.clone();
    let idx = t.idx;
    tokio::spawn(async move {
        let _guard = guard;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let period = bookmark_every.filter(|_| bookmarks);
        let mut ticker =
            period.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
        let mut sent_rv = sent_rv;
        let mut want_bookmark = false;
        loop {
            let mut lines = Vec::new();
            let mut done = false;
            {
                let st = shared.lock();
                let store = &st.stores[idx];
                if st.expire_gen != expire_gen || sent_rv < store.lost_rv {
                    lines.push(expired_line(sent_rv, st.rv));
                    done = true;
                } else if st.drop_gen != drop_gen {
                    done = true;
                } else {
                    for ev in store.history.iter().filter(|e| e.rv > sent_rv) {
                        if let Some((ty, obj)) = filter_event(ev, &filter) {
                            lines.push(event_line(ty, obj));
                        }
                    }
                    sent_rv = sent_rv.max(st.rv);
                    if want_bookmark {
                        lines.push(bookmark_line(&RESOURCES[idx], sent_rv, false));
                        want_bookmark = false;
                    }
                }
            }
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = async { ticker.as_mut().unwrap().tick().await }, if ticker.is_some() => want_bookmark = true,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| {
        body_rx
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .unwrap()
}
