//! The API edge: kube-rs watchers and reflectors for every kind the proxy uses. Events only
//! mark that something changed (`Changes`); the reconcile loop reads the stores when it
//! syncs, so a sync never waits on the API server.
//!
//! Each watcher decodes its kind's list pages and watch events into `objects::api` types
//! (only the fields the proxy reads; the rest is skipped while decoding) and converts every
//! object to the proxy's slim type (`objects`) before the reflector stores it: the stores
//! hold only what the model reads.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::ListParams;
use kube::runtime::reflector::{self, Lookup, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::input::ClusterObjects;
use crate::objects::{api, EndpointSlice, Endpoints, Node, Service, ServiceCidr};

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
}

impl Changes {
    pub fn mark(&self) {
        if let Ok(mut p) = self.pending.lock() {
            // Bounded: under a storm only the oldest arrival matters for the latency.
            if p.len() < 4096 {
                p.push(Instant::now());
            }
        }
        self.notify.notify_one();
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
                tracing::warn!(error = %e, "discovery request failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
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
                    Ok(_) => changes.mark(),
                    Err(e) => {
                        tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff")
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
    let selected = || watcher::Config::default().labels(PROXY_SELECTOR);
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
            watcher::Config::default().labels("!service.kubernetes.io/headless"),
            changes.clone(),
        )
    });
    let nodes = watch::<_, Node>(
        Api::<api::Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        changes.clone(),
    );
    let service_cidrs = with_cidrs.then(|| {
        watch::<_, ServiceCidr>(
            Api::<api::ServiceCIDR>::all(client.clone()),
            watcher::Config::default(),
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
