//! `run`: the node agent. Resolves the flags and the config file, connects to the API
//! server, and hands the watches to the sync loop until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::config::{self, ClientSettings};
use super::{DryRunMode, RunFlags};
use crate::agent::addresses;
use crate::agent::events::Events;
use crate::agent::health::{health_timeout_for, serve_health, ProxyHealth};
use crate::agent::metrics::{serve_metrics, Metrics};
use crate::agent::migrate;
use crate::agent::node;
use crate::agent::observe::Observe;
use crate::agent::ratelimit::{RateLimitLayer, TokenBucket};
use crate::agent::reconcile::{self, DryRun, Timing};
use crate::agent::service_health::ServiceHealthServer;
use crate::agent::sink::KernelSink;
use crate::agent::watch::{self, Changes, EndpointsApi};
use crate::agent::HttpServer;
use crate::model::{LocalDetect, Options};
use crate::vocab::Family;

/// The agent is long-running and its few threads take turns building and freeing large
/// structures; glibc gives each thread its own arena and keeps what one freed away from the
/// others (measured: 5 MiB of peak RSS at 10,000 Services). Two arenas keep contention low.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before the agent's
    // threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Resolves the flags and runs the agent until SIGTERM / SIGINT.
pub fn main(a: RunFlags) -> Result<()> {
    limit_malloc_arenas();
    let resolved = config::resolve_all(&a.args)?;
    for w in &resolved.warnings {
        tracing::warn!("{w}");
    }
    let duration = |flag: &str, v: Option<String>, default: Duration| -> Result<Duration> {
        match v {
            Some(s) => config::parse_go_duration(&s)
                .map_err(|e| anyhow::anyhow!("--{flag}: invalid value {s:?}: {e}")),
            None => Ok(default),
        }
    };
    let timing = Timing {
        min_sync_period: duration(
            "min-sync-period",
            a.min_sync_period,
            resolved.sync.min_sync_period,
        )?,
        sync_period: duration("sync-period", a.sync_period, resolved.sync.sync_period)?,
        verify_period: duration(
            "verify-period",
            Some(a.verify_period),
            Duration::from_secs(10),
        )?,
    };
    let servers = Servers {
        metrics: resolved.metrics_bind_address,
        healthz: resolved.healthz_bind_address,
    };
    if a.dry_run.is_none() {
        prepare_node(&resolved, a.cleanup_kube_proxy);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(agent(
        resolved.options,
        timing,
        resolved.client,
        a.dry_run,
        a.endpoints_api,
        servers,
    ))
}

/// What kube-proxy does to the node before it starts syncing: its OOM score, the conntrack
/// sysctls, and (ours) removing what a kube-proxy left behind. Each failure is logged and
/// the agent starts anyway, as kube-proxy does.
fn prepare_node(resolved: &config::Resolved, cleanup_kube_proxy: bool) {
    if let Some(score) = resolved.oom_score_adj {
        if let Err(e) = node::set_oom_score_adj(score) {
            tracing::warn!(score, error = %e, "cannot set oom_score_adj");
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (sysctl, value, e) in
        node::apply_sysctls(&node::conntrack_sysctls(&resolved.conntrack, cpus))
    {
        tracing::warn!(sysctl, value, error = %e, "cannot set conntrack sysctl");
    }
    if cleanup_kube_proxy {
        match migrate::remove_kube_proxy_leftovers() {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => tracing::info!("removed kube-proxy's leftovers: {removed}"),
            Err(e) => tracing::warn!("removing kube-proxy's leftovers: {e}"),
        }
    }
}

/// The API client: `--kubeconfig` / `clientConnection.kubeconfig`, else in-cluster, else
/// $KUBECONFIG or ~/.kube/config; `--master` overrides the server URL.
async fn client(settings: &ClientSettings) -> Result<(kube::Client, String)> {
    let mut config = match &settings.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        // --master alone: that server, without credentials, as kube-proxy allows.
        None if settings.master.as_deref().is_some_and(|m| !m.is_empty()) => {
            kube::Config::new("http://localhost".parse().expect("a valid placeholder URL"))
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig: not in a cluster, and neither --kubeconfig nor KUBECONFIG")?,
    };
    if let Some(master) = settings.master.as_deref().filter(|m| !m.is_empty()) {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master: invalid URL {master:?}"))?;
    }
    if settings.kubeconfig.is_none() && settings.master.is_none() {
        if let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") {
            // kubeadm gives kube-proxy a kubeconfig for this reason: the `kubernetes`
            // Service's ClusterIP is only reachable once a proxy has programmed it.
            tracing::warn!(
                server = %config.cluster_url,
                service_host = %host,
                "no kubeconfig: using the in-cluster address, the kubernetes Service IP, which \
                 only a running proxy makes reachable; on a fresh node give a kubeconfig that \
                 points at the control-plane endpoint (see deploy/)"
            );
        }
    }
    tracing::info!(server = %config.cluster_url, "API server");
    let url = config.cluster_url.to_string();
    let builder = kube::client::ClientBuilder::try_from(config)?;
    let client = match TokenBucket::new(settings.qps, settings.burst) {
        // The limiter defers a request's call until its token is due, so it needs a
        // clonable stack below it: a buffer (kube's own sits above, in Client).
        Some(bucket) => builder
            .with_layer(&tower::buffer::BufferLayer::<
                http::Request<kube::client::Body>,
            >::new(1024))
            .with_layer(&RateLimitLayer::new(bucket))
            .build(),
        None => builder.build(),
    };
    Ok((client, url))
}

/// Where the agent's HTTP servers listen; `None` is disabled.
struct Servers {
    metrics: Option<SocketAddr>,
    healthz: Option<SocketAddr>,
}

/// Starts the metrics and health servers; a port that cannot be bound is logged, and the
/// agent runs on without that server (as kube-proxy logs and retries).
async fn start_servers(
    servers: &Servers,
    observe: &mut Observe,
    sync_period: Duration,
) -> Vec<HttpServer> {
    let mut running = Vec::new();
    let metrics = Arc::new(Metrics::new(&observe.families));
    let health = Arc::new(ProxyHealth::new(health_timeout_for(sync_period)));
    if let Some(addr) = servers.metrics {
        match serve_metrics(addr, metrics.clone()).await {
            Ok(s) => {
                tracing::info!(addr = %s.local_addr(), "serving /metrics");
                running.push(s);
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot serve metrics"),
        }
    }
    if let Some(addr) = servers.healthz {
        match serve_health(addr, health.clone(), Some(metrics.clone())).await {
            Ok(s) => {
                tracing::info!(addr = %s.local_addr(), "serving /healthz and /livez");
                running.push(s);
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot serve health checks"),
        }
    }
    // Every address until a sync tells the nodeport addresses (`Observe::services`); no
    // port is open before that.
    observe.service_health = Some(Arc::new(ServiceHealthServer::new(
        Vec::new(),
        health.clone(),
        Some(metrics.clone()),
    )));
    observe.metrics = Some(metrics);
    observe.health = Some(health);
    running
}

/// Waits until the API server answers, saying at each failed attempt which URL was tried
/// and why, with exponential backoff (1 s to 30 s): a fresh node whose only route to the
/// server is broken shows one clear line per attempt, not a stream of connection errors.
async fn wait_for_api_server(client: &kube::Client, server: &str) {
    let mut wait = Duration::from_secs(1);
    loop {
        match client.apiserver_version().await {
            Ok(v) => {
                tracing::info!(%server, version = %v.git_version, "API server reachable");
                return;
            }
            // It answered (e.g. 403 for /version under a strict RBAC): reachable.
            Err(kube::Error::Api(_)) => return,
            Err(e) => {
                tracing::warn!(
                    %server,
                    error = %watch::error_chain(&e),
                    retry_in_s = wait.as_secs(),
                    "cannot reach the API server; retrying"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// As upstream's `platformSetup` with `detectLocalMode: NodeCIDR` (`waitForPodCIDR`):
/// nothing is programmed until this Node has `spec.podCIDRs`, and after five minutes
/// without them the agent exits with an error. Later changes are followed at each sync
/// (upstream restarts instead).
async fn wait_for_pod_cidrs(stores: &watch::Stores, node: &str) -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(5 * 60);
    tracing::info!(
        hostname = node,
        "watching for node, awaiting podCIDR allocation"
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let nodes = stores.nodes.state();
        let this = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node));
        if let Some(n) = this.filter(|n| !n.pod_cidrs.is_empty()) {
            tracing::info!(pod_cidrs = ?n.pod_cidrs, "node info");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "timeout waiting for PodCIDR allocation to configure detect-local-mode NodeCIDR \
                 (Node {node} has no spec.podCIDRs after {} s)",
                TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM or SIGINT: stop watching and exit, leaving the rules in place as kube-proxy does.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received; exiting and leaving the rules in place");
}

async fn agent(
    opts: Options,
    timing: Timing,
    client_settings: ClientSettings,
    dry_run: Option<DryRunMode>,
    endpoints_api: EndpointsApi,
    servers: Servers,
) -> Result<()> {
    let mut observe = Observe::new(vec![Family::V4, Family::V6]);
    // A preview beside a running kube-proxy must not take its ports.
    let _servers = match dry_run {
        Some(_) => Vec::new(),
        None => start_servers(&servers, &mut observe, timing.sync_period).await,
    };
    let (client, server) = client(&client_settings).await?;
    wait_for_api_server(&client, &server).await;
    let changes = Arc::new(Changes::default());
    let mut opts = opts;
    match addresses::host_addresses() {
        Ok(a) => opts.host_addresses = a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the host's addresses; NodePorts use the node IPs")
        }
    }
    {
        let changes = changes.clone();
        std::thread::Builder::new()
            .name("host-addresses".into())
            .spawn(move || {
                let r = addresses::watch_host_addresses(|a| {
                    changes.set_host_addresses(a);
                    true
                });
                if let Err(e) = r {
                    tracing::warn!(error = %e, "stopped watching the host's addresses");
                }
            })?;
    }
    if dry_run.is_none() {
        observe.events = Some(Events::start(client.clone(), &opts.hostname));
    }
    observe.node_name = opts.hostname.clone();
    let stores = watch::start(&client, &opts.hostname, endpoints_api, changes.clone()).await;
    if opts.detect_local == LocalDetect::NodeCidr {
        wait_for_pod_cidrs(&stores, &opts.hostname).await?;
    }
    let log_sync = |r: &reconcile::SyncReport| {
        if let Some(max) = r.latencies.iter().max() {
            tracing::debug!(
                changes = r.latencies.len(),
                max_latency_ms = max.as_secs_f64() * 1000.0,
                "programmed"
            );
        }
    };
    let sink: Box<dyn reconcile::Sink> = match dry_run {
        Some(mode) => Box::new(DryRun {
            full_ruleset: mode == DryRunMode::Full,
        }),
        None => Box::new(KernelSink::default()),
    };
    reconcile::run(
        stores,
        changes,
        opts,
        timing,
        sink,
        observe,
        shutdown_signal(),
        log_sync,
    )
    .await;
    Ok(())
}
