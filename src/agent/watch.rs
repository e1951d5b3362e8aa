//! The API edge: kube-rs watchers and reflectors for every kind the proxy uses. Events only
//! mark that something changed (`Changes`); the reconcile loop reads the stores when it
//! syncs, so a sync never waits on the API server.
//!
//! Each watcher decodes its kind's list pages and watch events into `objects::api` types
//! (only the fields the proxy reads; the rest is skipped while decoding) and converts every
//! object to the proxy's slim type (`objects`) before the reflector stores it: the stores
//! hold only what the model reads.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::ListParams;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::objects::input::ClusterObjects;
use crate::objects::{api, EndpointSlice, Endpoints, Node, Object, Service, ServiceCidr};

/// kube-proxy's selectors: Services served by another proxy, and headless ones, are not ours.
pub const PROXY_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Which API carries endpoints (`--endpoints-api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointsApi {
    /// EndpointSlices when the server serves discovery.k8s.io/v1, else v1 Endpoints.
    Auto,
    Endpointslices,
    Endpoints,
}

/// What happened since the last sync. Each event records when it arrived, so a sync can
/// report how long its changes waited (network programming latency).
#[derive(Default)]
pub struct Changes {
    notify: Notify,
    pending: Mutex<Vec<Instant>>,
    dirty: Mutex<Dirty>,
    /// The host's interface addresses, when they changed since the last sync.
    host_addresses: Mutex<Option<Vec<std::net::IpAddr>>>,
}

/// Which objects changed since the last sync, so that it can refresh its copy of the caches
/// object by object instead of copying and sorting all of them (9 ms at 10,000 Services).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Unknown (a relist replaced a whole store, or too many changes to list): refresh all.
    pub all: bool,
    /// (kind, namespace, name)
    pub objects: BTreeSet<(String, Option<String>, String)>,
}

/// More changed objects than this between two syncs: a full copy is as cheap.
const DIRTY_MAX: usize = 4096;

impl Changes {
    /// The host's addresses changed: the next sync rebuilds everything with them.
    pub fn set_host_addresses(&self, addrs: Vec<std::net::IpAddr>) {
        if let Ok(mut h) = self.host_addresses.lock() {
            *h = Some(addrs);
        }
        self.mark();
    }

    /// The host's addresses, if they changed since the last call.
    pub fn take_host_addresses(&self) -> Option<Vec<std::net::IpAddr>> {
        self.host_addresses.lock().ok().and_then(|mut h| h.take())
    }

    /// Something changed, but not one known object: the next sync reads every store.
    pub fn mark(&self) {
        if let Ok(mut d) = self.dirty.lock() {
            d.all = true;
        }
        self.arrived();
    }

    /// Object `kind` `namespace/name` was added, changed or deleted.
    pub fn mark_object(&self, kind: &str, namespace: Option<&str>, name: &str) {
        if let Ok(mut d) = self.dirty.lock() {
            if d.objects.len() < DIRTY_MAX {
                (d.objects).insert((kind.into(), namespace.map(Into::into), name.into()));
            } else {
                d.all = true;
            }
        }
        self.arrived();
    }

    fn arrived(&self) {
        if let Ok(mut p) = self.pending.lock() {
            // Bounded: under a storm only the oldest arrival matters for the latency.
            if p.len() < 4096 {
                p.push(Instant::now());
            }
        }
        self.notify.notify_one();
    }

    /// Takes the objects changed since the last call.
    pub fn take_dirty(&self) -> Dirty {
        self.dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or(Dirty {
                all: true,
                objects: BTreeSet::new(),
            })
    }

    /// Waits for the next change (returns at once if one is pending).
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Puts back the arrivals of a sync that failed: their changes are still not applied.
    pub fn restore(&self, arrivals: Vec<Instant>) {
        if let Ok(mut p) = self.pending.lock() {
            p.extend(arrivals);
        }
    }

    /// Takes the arrival times of the changes a sync is about to apply.
    pub fn take(&self) -> Vec<Instant> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// The reflector stores, read at each sync.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub endpoint_slices: Option<Store<EndpointSlice>>,
    pub endpoints: Option<Store<Endpoints>>,
    pub nodes: Store<Node>,
    pub service_cidrs: Option<Store<ServiceCidr>>,
}

impl Stores {
    /// A consistent-enough view of the caches: each store is read once, without copying
    /// objects.
    pub fn snapshot(&self) -> ClusterObjects {
        let mut o = ClusterObjects {
            services: self.services.state(),
            endpoint_slices: self
                .endpoint_slices
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
            endpoints: self
                .endpoints
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
            nodes: self.nodes.state(),
            service_cidrs: self
                .service_cidrs
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
        };
        o.sort();
        o
    }

    /// Brings `objects`, a snapshot taken earlier, up to date for the objects in `dirty`:
    /// each is looked up in its store and put in, replaced or removed at its place in the
    /// sorted lists. Takes a full snapshot when there is none yet or `dirty.all` is set.
    /// A change that arrives while this runs is marked again, so the next sync sees it.
    pub fn refresh<'a>(
        &self,
        objects: &'a mut Option<ClusterObjects>,
        dirty: &Dirty,
    ) -> &'a ClusterObjects {
        if dirty.all {
            *objects = None;
        }
        let o = objects.get_or_insert_with(|| self.snapshot());
        if dirty.all {
            return o;
        }
        for (kind, ns, name) in &dirty.objects {
            let ns = ns.as_deref();
            match kind.as_str() {
                "Service" => patch(&self.services, &mut o.services, ns, name),
                "EndpointSlice" => {
                    if let Some(s) = &self.endpoint_slices {
                        patch(s, &mut o.endpoint_slices, ns, name)
                    }
                }
                "Endpoints" => {
                    if let Some(s) = &self.endpoints {
                        patch(s, &mut o.endpoints, ns, name)
                    }
                }
                "Node" => patch(&self.nodes, &mut o.nodes, ns, name),
                "ServiceCIDR" => {
                    if let Some(s) = &self.service_cidrs {
                        patch(s, &mut o.service_cidrs, ns, name)
                    }
                }
                _ => {}
            }
        }
        o
    }

    /// Resolves once every watched kind has delivered its first complete list: before
    /// that, the caches could be empty and programming them would drop every Service.
    pub async fn ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        if let Some(s) = &self.endpoint_slices {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.endpoints {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.service_cidrs {
            let _ = s.wait_until_ready().await;
        }
    }
}

/// Whether the server serves this kind and lets us list it (a 404 or 403 on a one-item list
/// means no; other errors mean the server is not answering yet and are retried).
async fn served<K>(client: &Client) -> bool
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    served_api(Api::<K>::all(client.clone())).await
}

async fn served_api<K>(api: Api<K>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return true,
            // Not served, or not allowed by our RBAC: either way not usable.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
                tracing::info!(code = e.code, reason = %e.reason, "API not usable; not watching it");
                return false;
            }
            Err(e) => {
                // The server is not answering yet; the agent must not start without knowing.
                // One line per attempt, with the cause (`client error (Connect)` alone says
                // nothing), and exponential backoff.
                tracing::warn!(
                    error = %error_chain(&e),
                    retry_in_s = wait.as_secs(),
                    "cannot reach the API server; retrying"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

/// An error and its causes on one line: `client error (Connect): tcp connect error:
/// Connection refused (os error 111)`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// Puts the store's current copy of `namespace/name` (or its absence) into `list`, which
/// is sorted as `ClusterObjects::sort` sorts.
fn patch<K>(store: &Store<K>, list: &mut Vec<Arc<K>>, namespace: Option<&str>, name: &str)
where
    K: Lookup<DynamicType = ()> + Object + Clone + 'static,
{
    let mut r = ObjectRef::<K>::new_with(name, ());
    if let Some(ns) = namespace {
        r = r.within(ns);
    }
    let now = store.get(&r);
    let key = (namespace, Some(name));
    let at = list.binary_search_by(|o| {
        let m = o.metadata();
        (m.namespace.as_deref(), m.name.as_deref()).cmp(&key)
    });
    match (at, now) {
        (Ok(i), Some(o)) => list[i] = o,
        (Ok(i), None) => {
            list.remove(i);
        }
        (Err(i), Some(o)) => list.insert(i, o),
        (Err(_), None) => {}
    }
}

/// Watches kind `K` and stores its objects converted to `S`.
fn watch<K, S>(api: Api<K>, config: watcher::Config, changes: Arc<Changes>) -> Store<S>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    S: From<K> + Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, config)
        .default_backoff()
        .map_ok(|ev| slim(ev, S::from));
    let stream = reflector::reflector(writer, stream);
    tokio::spawn(async move {
        stream
            .for_each(|ev| {
                match ev {
                    Ok(watcher::Event::Init) | Ok(watcher::Event::InitApply(_)) => {}
                    // A relist replaced the store wholesale.
                    Ok(watcher::Event::InitDone) => changes.mark(),
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::Delete(o)) => {
                        let name = o.name().unwrap_or_default();
                        changes.mark_object(&kind, o.namespace().as_deref(), &name)
                    }
                    Err(e) => {
                        tracing::warn!(%kind, error = %error_chain(&e), "watch failed; retrying with backoff")
                    }
                }
                futures::future::ready(())
            })
            .await;
    });
    reader
}

/// The event with its object converted (a delete carries the last state of the object,
/// converted the same way: the store finds it by name and namespace).
fn slim<K, S>(ev: watcher::Event<K>, f: impl Fn(K) -> S) -> watcher::Event<S> {
    use watcher::Event;
    match ev {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// Starts every watcher and returns the stores they fill.
pub async fn start(
    client: &Client,
    node_name: &str,
    endpoints_api: EndpointsApi,
    changes: Arc<Changes>,
) -> Stores {
    // Lists at resourceVersion 0, as client-go's reflector lists: the API server answers
    // from its watch cache, whole (the cache ignores `limit`), instead of 500-object pages
    // read from etcd; at 10,000 Services that is one request per kind instead of 20, which
    // the client's qps limit (5/s by default, as kube-proxy's) spread over 7 seconds. No
    // page size: kube leaves out `resourceVersion=0` when a list has a limit.
    let config = || {
        let mut c = watcher::Config::default().any_semantic();
        c.page_size = None;
        c
    };
    let selected = || config().labels(PROXY_SELECTOR);
    let use_slices = match endpoints_api {
        EndpointsApi::Endpointslices => true,
        EndpointsApi::Endpoints => false,
        EndpointsApi::Auto => served::<discovery::EndpointSlice>(client).await,
    };
    tracing::info!(
        api = if use_slices {
            "discovery.k8s.io/v1 EndpointSlice"
        } else {
            "v1 Endpoints"
        },
        "watching endpoints"
    );
    let with_cidrs = served_api(Api::<api::ServiceCIDR>::all(client.clone())).await;
    let services = watch::<_, Service>(
        Api::<api::Service>::all(client.clone()),
        selected(),
        changes.clone(),
    );
    let endpoint_slices = use_slices.then(|| {
        watch::<_, EndpointSlice>(
            Api::<api::EndpointSlice>::all(client.clone()),
            selected(),
            changes.clone(),
        )
    });
    let endpoints = (!use_slices).then(|| {
        watch::<_, Endpoints>(
            Api::<api::Endpoints>::all(client.clone()),
            config().labels("!service.kubernetes.io/headless"),
            changes.clone(),
        )
    });
    let nodes = watch::<_, Node>(
        Api::<api::Node>::all(client.clone()),
        config().fields(&format!("metadata.name={node_name}")),
        changes.clone(),
    );
    let service_cidrs = with_cidrs.then(|| {
        watch::<_, ServiceCidr>(
            Api::<api::ServiceCIDR>::all(client.clone()),
            config(),
            changes.clone(),
        )
    });
    Stores {
        services,
        endpoint_slices,
        endpoints,
        nodes,
        service_cidrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str) -> Service {
        let k: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip}
        }))
        .unwrap();
        Service::from(k)
    }

    fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
    }

    #[test]
    fn refresh_patches_only_what_changed_and_matches_a_full_snapshot() {
        use kube::runtime::watcher::Event;
        let (services, mut sw) = reflector::store::<Service>();
        let (nodes, _nw) = reflector::store::<Node>();
        for (ns, n) in [("b", "s2"), ("a", "s1"), ("c", "s3"), ("a", "s0")] {
            sw.apply_watcher_event(&Event::Apply(svc(ns, n, "10.96.0.1")));
        }
        let stores = Stores {
            services,
            endpoint_slices: None,
            endpoints: None,
            nodes,
            service_cidrs: None,
        };
        let mut objects = None;
        stores.refresh(&mut objects, &Dirty::default());
        let first = objects.clone().unwrap();
        assert_eq!(first.services.len(), 4);

        // one changed, one added, one deleted, one marked that did not change at all
        sw.apply_watcher_event(&Event::Apply(svc("a", "s1", "10.96.0.9")));
        sw.apply_watcher_event(&Event::Apply(svc("b", "s9", "10.96.0.8")));
        sw.apply_watcher_event(&Event::Delete(svc("c", "s3", "10.96.0.1")));
        let changes = Changes::default();
        for (ns, n) in [("a", "s1"), ("b", "s9"), ("c", "s3"), ("a", "s0")] {
            changes.mark_object("Service", Some(ns), n);
        }
        stores.refresh(&mut objects, &changes.take_dirty());
        let patched = objects.clone().unwrap();
        assert!(same(&patched.services, &stores.snapshot().services));
        let names: Vec<_> = (patched.services.iter())
            .map(|s| s.metadata.name.as_deref().unwrap().to_string())
            .collect();
        assert_eq!(names, ["s0", "s1", "s2", "s9"]);
        // untouched objects are the very same Arcs, so `Desired` sees them as unchanged
        assert!(Arc::ptr_eq(&first.services[0], &patched.services[0]));
        assert!(!Arc::ptr_eq(&first.services[1], &patched.services[1]));
        assert_eq!(changes.take_dirty(), Dirty::default(), "taken");

        changes.mark();
        assert!(
            changes.take_dirty().all,
            "an unknown change asks for a full snapshot"
        );
    }
}
