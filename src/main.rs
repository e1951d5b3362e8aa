use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use kube_nftproxy::apply;
use kube_nftproxy::config::{self, RenderArgs};
use kube_nftproxy::nft::text;
use kube_nftproxy::reconcile::{self, DryRun, Timing};
use kube_nftproxy::render;
use kube_nftproxy::ruleset::ir::Ruleset;
use kube_nftproxy::synthetic;
use kube_nftproxy::watch::{self, Changes, EndpointsApi};

/// A kube-proxy replacement that programs nftables.
#[derive(Parser, Debug)]
#[command(name = "kube-nftproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DryRunMode {
    /// Print each sync's transaction as a readable diff.
    Diff,
    /// Print the whole ruleset after each sync.
    Full,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the nftables script for a cluster dump (dry run; touches nothing).
    Render {
        #[command(flatten)]
        args: RenderArgs,
        /// YAML or JSON files as `kubectl get svc,endpointslices,nodes -A -o yaml` prints
        /// them; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Render, then program the kernel of the current network namespace in one transaction
    /// (partial when the tables of a previous apply are still intact). Prints the change.
    Apply {
        #[command(flatten)]
        args: RenderArgs,
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Remove kube-nftproxy's tables (ip and ip6 kube-nftproxy) and nothing else.
    Cleanup,
    /// Run as the node agent: watch the API server and keep the kernel in step.
    Run {
        #[command(flatten)]
        args: RenderArgs,
        /// Kubeconfig file; default: in-cluster service account, then $KUBECONFIG, then
        /// ~/.kube/config.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Touch no kernel; print what each sync would apply (`--dry-run=full`: the whole
        /// ruleset).
        #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "diff")]
        dry_run: Option<DryRunMode>,
        /// Which API carries endpoints.
        #[arg(long, value_enum, default_value = "auto")]
        endpoints_api: EndpointsApi,
        /// At most one sync per this period (Go duration, e.g. 1s, 500ms, 0).
        #[arg(long)]
        min_sync_period: Option<String>,
        /// A full sync at least this often (Go duration; default 1h).
        #[arg(long)]
        sync_period: Option<String>,
        /// How often to check that our tables still exist in the kernel; a missing table
        /// (e.g. after `nft flush ruleset`) is re-created at once by a full sync.
        #[arg(long, default_value = "10s")]
        verify_period: String,
    },
    /// Measure render, cold start (netlink vs nft -f) and one-endpoint partial syncs on
    /// generated clusters, inside a private network namespace it creates for itself.
    Bench {
        /// Cluster sizes (Services), comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
        services: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// One-endpoint changes to time per size.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// Print a generated cluster (JSON, as `kubectl get -o json`) for benchmarks.
    Synthetic {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        #[arg(long, default_value = "node-a")]
        node: String,
    },
}

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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustables=warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-nftproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Render { args, files } => {
            let script = text::script(&desired(&args, &files)?);
            let mut out = std::io::stdout().lock();
            out.write_all(script.as_bytes())?;
            Ok(out.flush()?)
        }
        Command::Apply { args, files } => {
            let rs = desired(&args, &files)?;
            let inject = std::env::var_os("KUBE_NFTPROXY_TEST_INJECT_INVALID").is_some();
            let done = apply::apply(&rs, inject).context("applying the ruleset")?;
            print!("{}", text::describe(&done.transaction));
            Ok(())
        }
        Command::Cleanup => {
            let removed = apply::cleanup()?;
            println!(
                "{}",
                if removed {
                    "removed kube-nftproxy tables"
                } else {
                    "no kube-nftproxy tables present"
                }
            );
            Ok(())
        }
        Command::Run {
            args,
            kubeconfig,
            dry_run,
            endpoints_api,
            min_sync_period,
            sync_period,
            verify_period,
        } => {
            limit_malloc_arenas();
            let resolved = config::resolve_all(&args)?;
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
                    min_sync_period,
                    resolved.sync.min_sync_period,
                )?,
                sync_period: duration("sync-period", sync_period, resolved.sync.sync_period)?,
                verify_period: duration(
                    "verify-period",
                    Some(verify_period),
                    Duration::from_secs(10),
                )?,
            };
            let kubeconfig = kubeconfig.or_else(|| {
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
            rt.block_on(agent(
                resolved.options,
                timing,
                kubeconfig,
                dry_run,
                endpoints_api,
            ))
        }
        Command::Bench {
            services,
            endpoints,
            rounds,
        } => {
            kube_nftproxy::bench::enter_private_netns()?;
            for n in services {
                print!(
                    "{}",
                    kube_nftproxy::bench::run_one(n, endpoints, rounds.max(1))?
                );
            }
            Ok(())
        }
        Command::Synthetic {
            services,
            endpoints,
            node,
        } => {
            let c = synthetic::cluster(&synthetic::Spec {
                services,
                endpoints,
                node,
            });
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            serde_json::to_writer(&mut out, &c)?;
            out.write_all(b"\n")?;
            Ok(out.flush()?)
        }
    }
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
    opts: kube_nftproxy::options::Options,
    timing: Timing,
    kubeconfig: Option<PathBuf>,
    dry_run: Option<DryRunMode>,
    endpoints_api: EndpointsApi,
) -> Result<()> {
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
        None => Box::new(apply::KernelSink),
    };
    reconcile::run(
        stores,
        changes,
        opts,
        timing,
        sink,
        shutdown_signal(),
        log_sync,
    )
    .await;
    Ok(())
}

fn read_file(name: &str) -> Result<String> {
    if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(PathBuf::from(name)).with_context(|| format!("reading {name}"))
    }
}

/// Flags and files to the desired IR; skip notes go to stderr.
fn desired(args: &RenderArgs, files: &[String]) -> Result<Ruleset> {
    let opts = config::resolve(args)?;
    let texts = files
        .iter()
        .map(|f| Ok((f.as_str(), read_file(f)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut notes = Vec::new();
    let objects = render::read_sources(texts.iter().map(|(n, t)| (*n, t.as_str())), &mut notes)?;
    let (rs, more) = render::ruleset(&objects, &opts);
    notes.extend(more);
    let mut err = std::io::stderr().lock();
    for n in &notes {
        let _ = writeln!(err, "{n}");
    }
    Ok(rs)
}
