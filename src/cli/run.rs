//! `run`: the node agent. Resolves the flags and the config file, connects to the API
//! server, and hands the watches to the sync loop until SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::config::{self, RenderArgs};
use super::DryRunMode;
use crate::agent::health::{health_timeout_for, serve_health, ProxyHealth};
use crate::agent::metrics::{serve_metrics, Metrics};
use crate::agent::observe::Observe;
use crate::agent::reconcile::{self, DryRun, Timing};
use crate::agent::service_health::ServiceHealthServer;
use crate::agent::sink::KernelSink;
use crate::agent::watch::{self, Changes, EndpointsApi};
use crate::agent::HttpServer;
use crate::model::Options;
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

/// The `run` subcommand's flags.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub args: RenderArgs,
    /// Kubeconfig file; default: in-cluster service account, then $KUBECONFIG, then
    /// ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Touch no kernel; print what each sync would apply (`--dry-run=full`: the whole
    /// ruleset).
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "diff")]
    pub dry_run: Option<DryRunMode>,
    /// Which API carries endpoints.
    #[arg(long, value_enum, default_value = "auto")]
    pub endpoints_api: EndpointsApi,
    /// At most one sync per this period (Go duration, e.g. 1s, 500ms, 0).
    #[arg(long)]
    pub min_sync_period: Option<String>,
    /// A full sync at least this often (Go duration; default 1h).
    #[arg(long)]
    pub sync_period: Option<String>,
    /// How often to check that our tables still exist in the kernel; a missing table
    /// (e.g. after `nft flush ruleset`) is re-created at once by a full sync.
    #[arg(long, default_value = "10s")]
    pub verify_period: String,
}

/// Resolves the flags and runs the agent until SIGTERM / SIGINT.
pub fn main(a: RunArgs) -> Result<()> {
    limit_malloc_arenas();
    let resolved = config::resolve_all(&a.args)?;
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
    let kubeconfig = a.kubeconfig.or_else(|| {
        resolved
            .file
            .as_ref()
            .and_then(|f| f.client_connection.as_ref())
            .and_then(|c| c.kubeconfig.clone())
            .filter(|k| !k.is_empty())
            .map(PathBuf::from)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let file = resolved.file.as_ref();
    let servers = Servers {
        metrics: bind_address(
            "metricsBindAddress",
            file.and_then(|f| f.metrics_bind_address.as_deref()),
            DEFAULT_METRICS,
        )?,
        healthz: bind_address(
            "healthzBindAddress",
            file.and_then(|f| f.healthz_bind_address.as_deref()),
            DEFAULT_HEALTHZ,
        )?,
    };
    rt.block_on(agent(
        resolved.options,
        timing,
        kubeconfig,
        a.dry_run,
        a.endpoints_api,
        servers,
    ))
}

async fn client(kubeconfig: Option<PathBuf>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig: not in a cluster, and neither --kubeconfig nor KUBECONFIG")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// kube-proxy's `metricsBindAddress` default.
const DEFAULT_METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10249);
/// kube-proxy's `healthzBindAddress` default.
const DEFAULT_HEALTHZ: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10256);

/// Where the agent's HTTP servers listen; `None` is disabled.
struct Servers {
    metrics: Option<SocketAddr>,
    healthz: Option<SocketAddr>,
}

/// A kube-proxy bind address: `IP:PORT`, or a bare IP (the default port); unset or empty
/// means the default; port 0 disables the server.
fn bind_address(
    field: &str,
    value: Option<&str>,
    default: SocketAddr,
) -> Result<Option<SocketAddr>> {
    let value = value.map(str::trim).unwrap_or("");
    let addr = if value.is_empty() {
        default
    } else if let Ok(a) = value.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = value
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        SocketAddr::new(ip, default.port())
    } else {
        anyhow::bail!("{field}: invalid value {value:?}: want IP:PORT");
    };
    Ok((addr.port() != 0).then_some(addr))
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
    observe.service_health = Some(Arc::new(ServiceHealthServer::new(
        Vec::new(),
        health.clone(),
        Some(metrics.clone()),
    )));
    observe.metrics = Some(metrics);
    observe.health = Some(health);
    running
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
    kubeconfig: Option<PathBuf>,
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
    let client = client(kubeconfig).await?;
    let changes = Arc::new(Changes::default());
    let stores = watch::start(&client, &opts.hostname, endpoints_api, changes.clone()).await;
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
        None => Box::new(KernelSink),
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
