//! The operator-facing HTTP endpoints over real sockets on 127.0.0.1 (ports chosen by the
//! kernel): `/healthz` and `/livez`, healthCheckNodePorts, `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kube_nftproxy::agent::health::{serve_health, ProxyHealth};
use kube_nftproxy::agent::metrics::{self, serve_metrics, Metrics, SyncKind};
use kube_nftproxy::agent::service_health::{NamespacedName, ServiceHealthServer};
use kube_nftproxy::vocab::Family as IpFamily;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn any_port() -> SocketAddr {
    SocketAddr::new(LOCALHOST, 0)
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection; the server's answer.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect timed out")?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("read timed out")?;
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn counter(metrics: &Metrics, sample: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn healthz_and_livez_follow_syncs_and_node_eligibility() {
    let metrics = Arc::new(Metrics::new(&[IpFamily::V4]));
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(1)));
    let server = serve_health(any_port(), health.clone(), Some(metrics.clone()))
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    // Starting up: healthy.
    let r = get(addr, "/healthz").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    let v = r.json();
    assert_eq!(v["nodeEligible"], true);
    assert_eq!(v["healthy"], true);

    // After a sync.
    health.queued_update(IpFamily::V4);
    health.updated(IpFamily::V4);
    let r = get(addr, "/healthz").await.unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["status"]["IPv4"]["healthy"], true);
    assert_eq!(v["lastUpdated"], v["currentTime"]);

    // A change queued and not programmed within the timeout.
    health.queued_update(IpFamily::V4);
    let r = get(addr, "/healthz").await.unwrap();
    assert_eq!(r.status, 200, "not late yet");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get(addr, "/healthz").await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    let v = r.json();
    assert_eq!(v["healthy"], false);
    assert_eq!(v["status"]["IPv4"]["healthy"], false);
    assert_eq!(v["lastUpdated"], v["status"]["IPv4"]["lastUpdated"]);
    assert_ne!(v["lastUpdated"], v["currentTime"]);
    let r = get(addr, "/livez").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.json().get("nodeEligible").is_none());

    // Programmed: healthy again.
    health.updated(IpFamily::V4);
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);

    // The node is being drained: /healthz fails, /livez does not.
    health.set_node_eligible(false);
    let r = get(addr, "/healthz").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["nodeEligible"], false);
    assert_eq!(r.json()["healthy"], true);
    let r = get(addr, "/livez").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));

    let r = get(addr, "/nothing").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "404 page not found\n");

    assert_eq!(
        counter(&metrics, "kubeproxy_proxy_healthz_total{code=\"200\"}"),
        4.0
    );
    assert_eq!(
        counter(&metrics, "kubeproxy_proxy_healthz_total{code=\"503\"}"),
        2.0
    );
    assert_eq!(
        counter(&metrics, "kubeproxy_proxy_livez_total{code=\"503\"}"),
        1.0
    );
    assert_eq!(
        counter(&metrics, "kubeproxy_proxy_livez_total{code=\"200\"}"),
        1.0
    );

    server.shutdown().await;
    assert!(
        get(addr, "/healthz").await.is_err(),
        "closed after shutdown"
    );
}

#[tokio::test]
async fn health_server_bind_error_is_returned() {
    let taken = std::net::TcpListener::bind(any_port()).unwrap();
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let err = serve_health(taken.local_addr().unwrap(), health, None)
        .await
        .expect_err("port in use");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

fn svc(name: &str) -> NamespacedName {
    NamespacedName::new("ns", name)
}

#[tokio::test]
async fn health_check_node_ports_open_answer_and_close() {
    let metrics = Arc::new(Metrics::new(&[IpFamily::V4]));
    let proxy = Arc::new(ProxyHealth::new(Duration::from_millis(200)));
    let hc = ServiceHealthServer::new(vec![LOCALHOST], proxy.clone(), Some(metrics.clone()));

    let errors = hc.sync_services(&HashMap::from([(svc("a"), 0)])).await;
    assert!(errors.is_empty(), "{errors:?}");
    let addrs = hc.local_addrs(&svc("a"));
    assert_eq!(addrs.len(), 1);
    let a = addrs[0];
    assert_eq!(a.ip(), LOCALHOST);

    // No local endpoint yet.
    let r = get(a, "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["localEndpoints"], 0);
    assert_eq!(r.json()["serviceProxyHealthy"], true);

    // One local endpoint; any path answers.
    hc.sync_endpoints(&HashMap::from([(svc("a"), 1), (svc("unknown"), 4)]));
    let r = get(a, "/healthz").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"a\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("1"));
    assert!(!hc.services().contains_key(&svc("unknown")));

    // The proxy is unhealthy: 503, with the endpoint count and serviceProxyHealthy false.
    proxy.updated(IpFamily::V4);
    proxy.queued_update(IpFamily::V4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(a, "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["localEndpoints"], 1);
    assert_eq!(r.json()["serviceProxyHealthy"], false);
    proxy.updated(IpFamily::V4);
    // A node being drained does not matter here.
    proxy.set_node_eligible(false);
    assert_eq!(get(a, "/").await.unwrap().status, 200);

    // The endpoint goes away (absent from the map means 0).
    hc.sync_endpoints(&HashMap::new());
    let r = get(a, "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["localEndpoints"], 0);
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("0"));

    // Another Service comes, the first goes: its port is closed on return.
    let errors = hc.sync_services(&HashMap::from([(svc("b"), 0)])).await;
    assert!(errors.is_empty());
    let err = get(a, "/")
        .await
        .expect_err("port of a removed Service is closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(hc.local_addrs(&svc("a")).is_empty());
    let b = hc.local_addrs(&svc("b"))[0];
    let r = get(b, "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["service"]["name"], "b");

    // Same Service, same port: left alone (the same socket keeps serving).
    hc.sync_endpoints(&HashMap::from([(svc("b"), 2)]));
    hc.sync_services(&HashMap::from([(svc("b"), 0)])).await;
    assert_eq!(hc.local_addrs(&svc("b")), vec![b]);
    assert_eq!(get(b, "/").await.unwrap().status, 200);

    hc.shutdown().await;
    assert!(get(b, "/").await.is_err());
    assert_eq!(metrics.healthcheck_bind_errors(), 0);
}

#[tokio::test]
async fn an_occupied_health_check_port_is_an_error_and_a_metric_and_is_retried() {
    let metrics = Arc::new(Metrics::new(&[IpFamily::V4]));
    let proxy = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let hc = ServiceHealthServer::new(vec![LOCALHOST], proxy, Some(metrics.clone()));

    let taken = std::net::TcpListener::bind(any_port()).unwrap();
    let port = taken.local_addr().unwrap().port();
    let services = HashMap::from([(svc("busy"), port), (svc("free"), 0)]);
    let errors = hc.sync_services(&services).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].service, svc("busy"));
    assert_eq!(errors[0].port, port);
    assert_eq!(errors[0].error.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(metrics.healthcheck_bind_errors(), 1);
    assert_eq!(
        counter(&metrics, "kube_nftproxy_healthcheck_bind_errors_total"),
        1.0
    );
    // The other Service is served regardless.
    assert_eq!(hc.services().len(), 1);
    assert_eq!(
        get(hc.local_addrs(&svc("free"))[0], "/")
            .await
            .unwrap()
            .status,
        503
    );

    // Still taken at the next sync: tried again, counted again.
    assert_eq!(hc.sync_services(&services).await.len(), 1);
    assert_eq!(metrics.healthcheck_bind_errors(), 2);

    // Freed: the next sync opens it.
    drop(taken);
    assert!(hc.sync_services(&services).await.is_empty());
    let addr = SocketAddr::new(LOCALHOST, port);
    assert_eq!(hc.local_addrs(&svc("busy")), vec![addr]);
    let r = get(addr, "/").await.unwrap();
    assert_eq!(r.json()["service"]["name"], "busy");
    hc.shutdown().await;
}

#[tokio::test]
async fn metrics_are_scraped_and_parse() {
    let metrics = Arc::new(Metrics::new(&[IpFamily::V4, IpFamily::V6]));
    metrics.observe_sync(SyncKind::Full, Duration::from_millis(12), true);
    metrics.observe_sync(SyncKind::Partial, Duration::from_millis(2), true);
    let server = serve_metrics(any_port(), metrics.clone()).await.unwrap();
    let addr = server.local_addr();

    let r = get(addr, "/metrics").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(metrics::CONTENT_TYPE));
    assert_eq!(
        metrics::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let scrape = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses");
    let count = |name: &str, family: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("ip_family") == Some(family))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => b.last().unwrap().count,
                v => panic!("{v:?}"),
            })
    };
    assert_eq!(
        count("kubeproxy_sync_proxy_rules_duration_seconds", "IPv4"),
        Some(2.0)
    );
    assert_eq!(
        count("kubeproxy_sync_full_proxy_rules_duration_seconds", "IPv6"),
        Some(1.0)
    );
    assert_eq!(
        count(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "IPv6"
        ),
        Some(1.0)
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "process_cpu_seconds_total"
            && matches!(s.value, prometheus_parse::Value::Counter(_))));

    let r = get(addr, "/proxyMode").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "nftables"));
    let r = get(addr, "/healthz").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(get(addr, "/other").await.unwrap().status, 404);
    server.shutdown().await;
}

/// Binding the unspecified address gives one dual-stack socket, as Go's `net.Listen("tcp",
/// "0.0.0.0:…")`. It listens on every address of the network namespace, so it is ignored by
/// default: run it in a private one, e.g.
/// `unshare -n sh -c 'ip link set lo up && exec TEST_BINARY --ignored --exact all_addresses_means_both_families'`.
#[tokio::test]
#[ignore]
async fn all_addresses_means_both_families() {
    let proxy = Arc::new(ProxyHealth::new(Duration::from_secs(60)));
    let hc = ServiceHealthServer::new(vec![], proxy, None);
    assert!(hc
        .sync_services(&HashMap::from([(svc("a"), 0)]))
        .await
        .is_empty());
    let addr = hc.local_addrs(&svc("a"))[0];
    assert!(addr.ip().is_unspecified(), "{addr}");
    let v4 = SocketAddr::new(LOCALHOST, addr.port());
    assert_eq!(get(v4, "/").await.unwrap().status, 503);
    let has_ipv6_loopback = std::net::TcpListener::bind("[::1]:0").is_ok();
    if addr.is_ipv6() && has_ipv6_loopback {
        let v6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port());
        assert_eq!(get(v6, "/").await.unwrap().status, 503);
    }
    hc.shutdown().await;
}
