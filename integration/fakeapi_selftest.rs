//! Self-tests of the fake API server (`support::fakeapi`), driven by kube's
//! real `watcher` + `reflector` so the fake is pinned to what kube 5.0 needs.

#[allow(unused_imports)]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;
use support::fakeapi::{FakeApi, Verb};

/// Constant 50 ms backoff so recovery tests stay fast.
struct Fast;
impl Iterator for Fast {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}
impl Backoff for Fast {
    fn reset(&mut self) {}
}

fn svc(ns: &str, name: &str, labels: &[(&str, &str)]) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name,
                     "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    }))
    .unwrap()
}

/// Runs reflector(watcher(api, cfg)) in the background; returns the store and
/// a counter of `Init` events (one per full (re)list).
fn run_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> (Store<K>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let inits = Arc::new(AtomicUsize::new(0));
    let i2 = inits.clone();
    let stream = reflector::reflector(writer, watcher(api, cfg))
        .inspect(move |ev| {
            if matches!(ev, Ok(watcher::Event::Init)) {
                i2.fetch_add(1, Ordering::SeqCst);
            }
        })
        .backoff(Fast);
    let h = tokio::spawn(stream.for_each(|_| async {}));
    (reader, inits, h)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names<K: kube::Resource + Clone>(s: &Store<K>) -> Vec<String>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut v: Vec<String> = s
        .state()
        .iter()
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    v.sort();
    v
}

fn svc_ref(ns: &str, name: &str) -> ObjectRef<Service> {
    ObjectRef::new(name).within(ns)
}

#[tokio::test]
async fn reflector_sees_initial_objects_and_changes() {
    let fake = FakeApi::start();
    fake.apply(&svc("a", "one", &[]));
    fake.apply(&svc("b", "two", &[]));
    let client = fake.client();
    let all: Api<Service> = Api::all(client.clone());
    let (store, inits, _h) = run_reflector(all, watcher::Config::default());
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&store), ["a/one", "b/two"]);

    // Create / update / patch / delete over HTTP with kube::Api.
    let ns_a: Api<Service> = Api::namespaced(client.clone(), "a");
    let created = ns_a
        .create(&PostParams::default(), &svc("a", "three", &[]))
        .await
        .unwrap();
    assert!(created.resource_version().is_some());
    assert!(created.uid().is_some());
    let err = ns_a
        .create(&PostParams::default(), &svc("a", "three", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
    wait_for("three added", || {
        store.get(&svc_ref("a", "three")).is_some()
    })
    .await;

    let mut upd = ns_a.get("one").await.unwrap();
    upd.labels_mut().insert("x".into(), "y".into());
    let stale = upd.clone();
    ns_a.replace("one", &PostParams::default(), &upd)
        .await
        .unwrap();
    // Optimistic concurrency: replacing with the old resourceVersion conflicts.
    let err = ns_a
        .replace("one", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    wait_for("label x on one", || {
        store
            .get(&svc_ref("a", "one"))
            .is_some_and(|s| s.labels().get("x").map(String::as_str) == Some("y"))
    })
    .await;

    let patch = json!({"spec": {"clusterIP": "10.96.0.99"}});
    ns_a.patch("three", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("three patched", || {
        store
            .get(&svc_ref("a", "three"))
            .is_some_and(|s| s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some("10.96.0.99"))
    })
    .await;

    ns_a.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(fake.delete("Service", "b", "two"));
    assert!(!fake.delete("services", "b", "two"));
    wait_for("deletions", || names(&store) == ["a/three"]).await;

    // All of it came through one list + one watch stream.
    assert_eq!(fake.lists("services"), 1);
    assert_eq!(fake.watches("services"), 1);
    assert_eq!(inits.load(Ordering::SeqCst), 1);
    assert!(fake.count(Verb::Create, "services") >= 2);

    // The other resource types round-trip through k8s-openapi types.
    fake.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                       "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}));
    fake.apply(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"namespace": "a", "name": "three-abc",
                                    "labels": {"kubernetes.io/service-name": "three"}},
                       "addressType": "IPv4",
                       "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}],
                       "ports": [{"port": 8080, "protocol": "TCP"}]}),
    );
    fake.apply(&json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"namespace": "a", "name": "three"},
                       "subsets": [{"addresses": [{"ip": "10.244.0.5"}], "ports": [{"port": 8080}]}]}));
    fake.apply(
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                       "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}),
    );
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 1);
    let node = Api::<Node>::all(client.clone())
        .list(&ListParams::default().fields("metadata.name=n1"))
        .await
        .unwrap();
    assert_eq!(node.items[0].name_any(), "n1");
    let none = Api::<Node>::all(client.clone())
        .list(&ListParams::default().fields("metadata.name=n2"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "a")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(slices.items[0].endpoints[0].addresses, ["10.244.0.5"]);
    assert_eq!(
        Api::<EndpointSlice>::namespaced(client.clone(), "b")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    let eps = Api::<Endpoints>::all(client.clone()).get_opt("three").await;
    assert!(
        matches!(eps, Ok(None)),
        "namespaced object not found on the cluster path: {eps:?}"
    );
    let eps = Api::<Endpoints>::namespaced(client.clone(), "a")
        .get("three")
        .await
        .unwrap();
    assert_eq!(
        eps.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
        "10.244.0.5"
    );
    let cidrs = Api::<ServiceCIDR>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        cidrs.items[0]
            .spec
            .as_ref()
            .unwrap()
            .cidrs
            .as_ref()
            .unwrap()[0],
        "10.96.0.0/16"
    );
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
}

#[tokio::test]
async fn pagination_with_page_size_one_and_consistent_continue() {
    let fake = FakeApi::start();
    for i in 0..5 {
        fake.apply(&svc("default", &format!("s{i}"), &[]));
    }
    let api: Api<Service> = Api::all(fake.client());
    let (store, _inits, _h) = run_reflector(api.clone(), watcher::Config::default().page_size(1));
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.state().len(), 5);
    assert_eq!(fake.lists("services"), 5, "one request per page");
    assert!(fake.request_log().iter().any(|l| l.contains("continue=")));

    // A continued list is a snapshot at the first page's resourceVersion.
    let p1 = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(p1.items.len(), 2);
    let tok = p1.metadata.continue_.clone().unwrap();
    fake.delete("Service", "default", "s4");
    fake.apply(&svc("default", "s5", &[]));
    let p2 = api
        .list(&ListParams::default().limit(10).continue_token(&tok))
        .await
        .unwrap();
    let got: Vec<_> = p2.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(got, ["s2", "s3", "s4"]);
    assert_eq!(p2.metadata.resource_version, p1.metadata.resource_version);
    assert!(p2.metadata.continue_.is_none());
    // ...and the reflector saw the changes.
    wait_for("s4 gone, s5 there", || {
        store.get(&svc_ref("default", "s5")).is_some()
            && store.get(&svc_ref("default", "s4")).is_none()
    })
    .await;
    // A continue token older than the history is 410 Expired.
    fake.force_expire();
    let err = api
        .list(&ListParams::default().limit(2).continue_token(&tok))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 410 && s.reason == "Expired"),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_history_forces_relist_and_store_stays_correct() {
    let fake = FakeApi::start();
    fake.apply(&svc("default", "keep", &[]));
    fake.apply(&svc("default", "gone", &[]));
    let api: Api<Service> = Api::all(fake.client());
    let (store, inits, _h) = run_reflector(api.clone(), watcher::Config::default());
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.lists("services"), 1);
    wait_for("watch open", || fake.open_watches() == 1).await;

    // Compaction + stream drop: the resume watch gets an in-stream 410.
    fake.force_expire();
    fake.drop_streams();
    wait_for("relist after 410", || fake.lists("services") == 2).await;
    wait_for("re-watch", || {
        fake.watches("services") == 3 && fake.open_watches() == 1
    })
    .await;
    assert_eq!(inits.load(Ordering::SeqCst), 2);
    assert_eq!(names(&store), ["default/gone", "default/keep"]);

    // Changes after the relist still flow, and an in-stream 410 on the open
    // stream (expire_streams) relists again.
    fake.delete("Service", "default", "gone");
    fake.apply(&svc("default", "new", &[]));
    wait_for("changes after relist", || {
        names(&store) == ["default/keep", "default/new"]
    })
    .await;
    fake.expire_streams();
    wait_for("relist after in-stream 410", || fake.lists("services") == 3).await;
    wait_for("third init", || inits.load(Ordering::SeqCst) == 3).await;
    assert_eq!(names(&store), ["default/keep", "default/new"]);

    // Raw wire check: a watch from a compacted RV is HTTP 200 + ERROR 410.
    let mut s = api
        .watch(&WatchParams::default().timeout(2), "1")
        .await
        .expect("watch starts with HTTP 200")
        .boxed();
    match s.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(
        s.try_next().await.unwrap().is_none(),
        "stream ends after the error"
    );
}

#[tokio::test]
async fn stop_and_restart_resumes_from_history_or_relists_when_expired() {
    let fake = FakeApi::start();
    fake.apply(&svc("default", "a", &[]));
    fake.apply(&svc("default", "b", &[]));
    let client = fake.client();
    let api: Api<Service> = Api::all(client.clone());
    let (store, inits, _h) = run_reflector(api.clone(), watcher::Config::default());
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    wait_for("watch open", || fake.open_watches() == 1).await;

    fake.stop();
    assert!(
        api.list(&ListParams::default()).await.is_err(),
        "server is down"
    );
    fake.apply(&svc("default", "c", &[]));
    fake.delete("Service", "default", "a");
    fake.apply(&svc("default", "b", &[("changed", "yes")]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        names(&store),
        ["default/a", "default/b"],
        "no changes while down"
    );
    fake.restart();
    wait_for("changes made while down", || {
        names(&store) == ["default/b", "default/c"]
    })
    .await;
    assert!(store
        .get(&svc_ref("default", "b"))
        .unwrap()
        .labels()
        .contains_key("changed"));
    assert_eq!(fake.lists("services"), 1, "resumed from history, no relist");
    assert_eq!(inits.load(Ordering::SeqCst), 1);

    // Down again, and the history is compacted meanwhile: relist.
    wait_for("watch open", || fake.open_watches() == 1).await;
    fake.stop();
    fake.delete("Service", "default", "b");
    fake.apply(&svc("default", "d", &[]));
    fake.force_expire();
    fake.restart();
    wait_for("relist after restart", || {
        names(&store) == ["default/c", "default/d"]
    })
    .await;
    assert_eq!(fake.lists("services"), 2);
    assert_eq!(inits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn label_selector_not_exists_filters_and_tracks_transitions() {
    let fake = FakeApi::start();
    fake.apply(&svc("default", "plain", &[]));
    fake.apply(&svc(
        "default",
        "other-proxy",
        &[("service.kubernetes.io/service-proxy-name", "x")],
    ));
    fake.apply(&svc(
        "default",
        "headless",
        &[("service.kubernetes.io/headless", "")],
    ));
    let api: Api<Service> = Api::all(fake.client());
    let cfg = watcher::Config::default()
        .labels("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless");
    let (store, _inits, _h) = run_reflector(api.clone(), cfg);
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&store), ["default/plain"]);
    assert!(fake
        .request_log()
        .iter()
        .any(|l| l.contains("labelSelector=%21service.kubernetes.io%2Fservice-proxy-name")));

    // Gains the label -> DELETED for this watch; loses it -> ADDED.
    fake.apply(&svc(
        "default",
        "plain",
        &[("service.kubernetes.io/service-proxy-name", "x")],
    ));
    fake.apply(&svc("default", "other-proxy", &[]));
    wait_for("transitions", || names(&store) == ["default/other-proxy"]).await;
    assert_eq!(fake.lists("services"), 1);

    // The other operators, through plain lists.
    fake.apply(&svc("default", "e1", &[("env", "a"), ("tier", "web")]));
    fake.apply(&svc("default", "e2", &[("env", "b")]));
    fake.apply(&svc("default", "e3", &[("env", "c")]));
    let sel = |s: &'static str| {
        let api = api.clone();
        async move {
            let mut v: Vec<String> = api
                .list(&ListParams::default().labels(s))
                .await
                .unwrap()
                .items
                .iter()
                .map(|o| o.name_any())
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(sel("env=a").await, ["e1"]);
    assert_eq!(sel("env==b").await, ["e2"]);
    assert_eq!(sel("env,env!=a").await, ["e2", "e3"]);
    assert_eq!(sel("env in (a, c)").await, ["e1", "e3"]);
    assert_eq!(sel("env notin (a,c),env").await, ["e2"]);
    assert_eq!(sel("tier").await, ["e1"]);
    assert_eq!(sel("env,!tier").await, ["e2", "e3"]);
    let err = api
        .list(&ListParams::default().labels("env in a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
}

#[tokio::test]
async fn failed_lists_and_watches_are_retried() {
    let fake = FakeApi::start();
    fake.apply(&svc("default", "a", &[]));
    fake.fail_lists(2);
    fake.fail_watches(1);
    let api: Api<Service> = Api::all(fake.client());
    fake.set_delay(Duration::from_millis(200));
    let t0 = Instant::now();
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "set_delay slows responses"
    );
    fake.set_delay(Duration::ZERO);
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 500),
        "{err:?}"
    );
    let (store, inits, _h) = run_reflector(api, watcher::Config::default());
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&store), ["default/a"]);
    assert_eq!(
        fake.lists("services"),
        3,
        "1 manual failure + 1 watcher failure + 1 success"
    );
    // The failed watch start is retried from the same RV, without a relist.
    wait_for("watch open", || fake.open_watches() == 1).await;
    assert_eq!(fake.watches("services"), 2);
    fake.apply(&svc("default", "b", &[]));
    wait_for("b", || names(&store) == ["default/a", "default/b"]).await;
    assert_eq!(fake.lists("services"), 3);
    assert_eq!(
        inits.load(Ordering::SeqCst),
        2,
        "Init, then failed list, then Init again"
    );
}

#[tokio::test]
async fn streaming_list_and_bookmarks() {
    let fake = FakeApi::start();
    fake.set_bookmark_interval(Some(Duration::from_millis(100)));
    fake.apply(&svc("default", "a", &[]));
    fake.apply(&svc("kube-system", "b", &[]));
    let api: Api<Service> = Api::all(fake.client());
    let (store, _inits, _h) =
        run_reflector(api.clone(), watcher::Config::default().streaming_lists());
    tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&store), ["default/a", "kube-system/b"]);
    assert_eq!(fake.lists("services"), 0);
    assert!(fake
        .request_log()
        .iter()
        .any(|l| l.contains("sendInitialEvents=true")));
    fake.delete("Service", "default", "a");
    wait_for("a deleted", || names(&store) == ["kube-system/b"]).await;

    // Raw watch: bookmarks carry kind/apiVersion and the stream ends at timeoutSeconds.
    let rv = fake.resource_version().to_string();
    let start = Instant::now();
    let mut s = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    let mut bookmarks = 0;
    let mut added = BTreeMap::new();
    fake.apply(&svc("default", "z", &[]));
    while let Some(ev) = s.try_next().await.unwrap() {
        match ev {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.types.kind, "Service");
                assert_eq!(b.types.api_version, "v1");
                assert!(
                    b.metadata.resource_version.parse::<u64>().unwrap()
                        > rv.parse::<u64>().unwrap()
                );
                bookmarks += 1;
            }
            WatchEvent::Added(o) => {
                added.insert(o.name_any(), o.resource_version().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(bookmarks >= 3, "got {bookmarks} bookmarks");
    assert_eq!(added.keys().collect::<Vec<_>>(), ["z"]);
}

#[tokio::test]
async fn endpointslices_can_be_switched_off_and_discovery_follows() {
    let fake = FakeApi::start();
    let client = fake.client();
    let groups = client.list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "discovery.k8s.io"));
    let d = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    assert!(d.has_group("discovery.k8s.io"));
    assert!(d.has_group("networking.k8s.io"));
    let d = kube::discovery::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(d.has_group("discovery.k8s.io"));
    assert!(d
        .get("")
        .is_some_and(|g| g.recommended_kind("Service").is_some()));

    fake.serve_endpointslices(false);
    let err = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
    let groups = client.list_api_groups().await.unwrap();
    assert!(!groups.groups.iter().any(|g| g.name == "discovery.k8s.io"));
    Api::<Endpoints>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(fake.count(Verb::Other, "endpointslices"), 1);
}

#[test]
fn kubeconfig_file_and_sync_use() {
    let fake = FakeApi::start();
    let stored = fake.apply(&svc("default", "a", &[]));
    assert_eq!(stored["metadata"]["resourceVersion"], "2");
    assert_eq!(
        fake.get("Service", "default", "a").unwrap()["metadata"]["uid"],
        stored["metadata"]["uid"]
    );
    let path = fake.kubeconfig_file();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        assert_eq!(cfg.default_namespace, "default");
        let client = kube::Client::try_from(cfg).unwrap();
        let list = Api::<Service>::default_namespaced(client)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert_eq!(list.items.len(), 1);
    });
    drop(fake);
    assert!(!path.exists(), "kubeconfig removed on drop");
}
