//! The subcommands: their flags and the work each does at the binary's edge (errors are
//! `anyhow` here; the layers below return typed errors).

pub mod apply;
pub mod bench;
pub mod config;
pub mod explain;
#[cfg(test)]
mod kernel_scenarios;
pub mod render;
pub mod run;
pub mod synthetic;
pub mod trace;

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::agent::watch::EndpointsApi;
use crate::nft::text;
use config::RenderArgs;

/// A kube-proxy replacement that programs nftables.
#[derive(Parser, Debug)]
#[command(name = "kube-nftproxy", version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What `synthetic` generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mix {
    Uniform,
    Realistic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRunMode {
    /// Print each sync's transaction as a readable diff.
    Diff,
    /// Print the whole ruleset after each sync.
    Full,
}

/// The `run` flags: kube-proxy's own (in [`RenderArgs`]) plus kube-nftproxy's.
#[derive(clap::Args, Debug, Clone)]
pub struct RunFlags {
    #[command(flatten)]
    pub args: RenderArgs,
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
    /// At startup, remove what kube-proxy left in the node's kernel (its `ip`/`ip6
    /// kube-proxy` tables and `KUBE-*` iptables chains), exactly as `kube-proxy --cleanup`
    /// does; `--cleanup-kube-proxy=false` leaves them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub cleanup_kube_proxy: bool,
}

/// kube-proxy's command line has no subcommand: when the first argument is absent or a
/// flag (other than help and version), `run` is meant. Returns the arguments with `run`
/// inserted where needed.
pub fn with_default_subcommand<I, T>(argv: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString>,
{
    let mut argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let first = argv.get(1).map(|a| a.to_string_lossy().into_owned());
    let implicit_run = match first.as_deref() {
        None => true,
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(a) => a.starts_with('-'),
    };
    if implicit_run {
        argv.insert(1.min(argv.len()), "run".into());
    }
    argv
}

/// Parses the process's arguments, kube-proxy's no-subcommand form included.
pub fn parse() -> Cli {
    Cli::parse_from(with_default_subcommand(std::env::args_os()))
}

/// The log verbosity and format asked for, best effort, before logging starts: the
/// flags, else the `--config` file's `logging` section (errors are reported later).
pub fn log_settings(cli: &Cli) -> (Option<u8>, config::LogFormat) {
    let (Command::Run { flags } | Command::Config { flags }) = &cli.command else {
        return (None, config::LogFormat::Text);
    };
    match config::resolve_all(&flags.args) {
        Ok(r) => (Some(r.verbosity), r.logging_format),
        Err(_) => (
            flags
                .args
                .kube
                .v
                .as_deref()
                .and_then(|v| v.trim().parse().ok()),
            config::LogFormat::Text,
        ),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the nftables script for a cluster dump (dry run; touches nothing).
    Render {
        #[command(flatten)]
        args: RenderArgs,
        /// `render --diff OLD NEW`: print the transaction that turns OLD's ruleset into
        /// NEW's, as the agent would send it, and its changes per Service.
        #[arg(long)]
        diff: bool,
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
        /// Apply even when the input holds no object the proxy reads (an empty cluster);
        /// without it such input is an error and nothing changes.
        #[arg(long)]
        allow_empty: bool,
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Follow one new connection through the ruleset hook by hook: chains, rules, map
    /// elements, DNAT candidates with probabilities, masquerade, final verdict.
    Trace {
        #[command(flatten)]
        trace: trace::TraceArgs,
    },
    /// Explain a Service: its VIPs and ports, which endpoints this node uses and why the
    /// others are not used, the notes about it, and the rules and elements implementing it.
    Explain {
        #[command(flatten)]
        explain: explain::ExplainArgs,
    },
    /// Remove kube-nftproxy's tables (ip and ip6 kube-nftproxy) and nothing else.
    Cleanup {
        /// Instead, remove what upstream kube-proxy left in this node's kernel (its `ip`/`ip6
        /// kube-proxy` tables, its `KUBE-*` iptables chains and their jump rules on both
        /// iptables backends), exactly as `kube-proxy --cleanup` does, and nothing else.
        #[arg(long)]
        kube_proxy: bool,
    },
    /// Run as the node agent: watch the API server and keep the kernel in step. This is
    /// also what the binary does when given no subcommand (kube-proxy's command line).
    Run {
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Print the effective configuration (defaults, then the --config file, then the flags)
    /// as a KubeProxyConfiguration YAML; fails with the errors `run` would.
    Config {
        #[command(flatten)]
        flags: RunFlags,
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
        /// `uniform` (--endpoints each), `realistic` (issue 18's mix, as `synthetic --mix
        /// realistic` prints it) or `selection` (issue 16's endpoint-count mix).
        #[arg(long, default_value = "uniform", value_parser = ["uniform", "realistic", "selection"])]
        mix: String,
        /// Seed of the realistic and selection mixes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Append one CSV line per layout and size to this file (a header first when the
        /// file is new): cold start and partial-sync times in ms.
        #[arg(long)]
        csv: Option<std::path::PathBuf>,
    },
    /// Print a generated cluster (JSON, as `kubectl get -o json`) for benchmarks.
    Synthetic {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Endpoints per Service (`--mix uniform` only).
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// `uniform`: every Service a one-port ClusterIP (every tenth a NodePort) with
        /// `--endpoints` endpoints; `realistic`: a mix of types, ports, protocols, skewed
        /// endpoint counts, policies and families (see `cli/synthetic/realistic.rs`).
        #[arg(long, value_enum, default_value_t = Mix::Uniform)]
        mix: Mix,
        /// The seed of `--mix realistic`; the same seed gives the same cluster.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "node-a")]
        node: String,
    },
}

/// `--cleanup`, `--write-config-to` and `--init-only` are kube-proxy's ways of not
/// running; they mean nothing to `render` and `apply`, so they are refused there.
fn only_with_run(args: &RenderArgs) -> Result<()> {
    let k = &args.kube;
    for (given, flag) in [
        (k.cleanup.is_some(), "--cleanup"),
        (k.write_config_to.is_some(), "--write-config-to"),
        (k.init_only.is_some(), "--init-only"),
    ] {
        if given {
            anyhow::bail!("{flag} applies to `run` (or no subcommand), not to render/apply");
        }
    }
    Ok(())
}

/// `cleanup` and `--cleanup`: remove our tables (and only ours).
fn cleanup() -> Result<()> {
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

fn cleanup_kube_proxy() -> Result<()> {
    let removed = crate::agent::migrate::remove_kube_proxy_leftovers()
        .context("removing kube-proxy's leftovers")?;
    if removed.is_empty() {
        println!("no kube-proxy leftovers present");
    } else {
        println!("removed kube-proxy's leftovers: {removed}");
    }
    Ok(())
}

/// Runs one subcommand to completion.
pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Render { args, files, diff } => {
            only_with_run(&args)?;
            if diff {
                let [old, new] = files.as_slice() else {
                    anyhow::bail!("render --diff takes exactly two files: OLD NEW");
                };
                print!("{}", render::diff_report(&args, old, new)?);
                return Ok(());
            }
            let script = text::script(&render::desired(&args, &files)?);
            let mut out = std::io::stdout().lock();
            out.write_all(script.as_bytes())?;
            Ok(out.flush()?)
        }
        Command::Apply {
            args,
            allow_empty,
            files,
        } => {
            only_with_run(&args)?;
            let rs = render::desired_checked(&args, &files, allow_empty)?;
            let done = apply::apply(&rs).context("applying the ruleset")?;
            print!("{}", text::describe(&done.transaction));
            Ok(())
        }
        Command::Trace { trace } => {
            only_with_run(&trace.args)?;
            print!("{}", trace::run(&trace)?);
            Ok(())
        }
        Command::Explain { explain } => {
            only_with_run(&explain.args)?;
            print!("{}", explain::run(&explain)?);
            Ok(())
        }
        Command::Cleanup { kube_proxy: false } => cleanup(),
        Command::Cleanup { kube_proxy: true } => cleanup_kube_proxy(),
        Command::Run { flags } => {
            let kube = &flags.args.kube;
            if kube.cleanup.unwrap_or(false) {
                // As kube-proxy --cleanup: check the configuration, clean up, exit.
                config::resolve_all(&flags.args)?;
                return cleanup();
            }
            if let Some(path) = &kube.write_config_to {
                let r = config::resolve_all(&flags.args)?;
                std::fs::write(path, config::effective_config_yaml(&r))
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(());
            }
            if kube.init_only.unwrap_or(false) {
                let r = config::resolve_all(&flags.args)?;
                for w in &r.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!("--init-only: configuration checked; nothing to initialise");
                return Ok(());
            }
            run::main(flags)
        }
        Command::Config { flags } => {
            let r = config::resolve_all(&flags.args)?;
            for w in &r.warnings {
                tracing::warn!("{w}");
            }
            let mut out = std::io::stdout().lock();
            out.write_all(config::effective_config_yaml(&r).as_bytes())?;
            Ok(out.flush()?)
        }
        Command::Bench {
            services,
            endpoints,
            rounds,
            mix,
            seed,
            csv,
        } => {
            bench::enter_private_netns()?;
            let mix = match mix.as_str() {
                "realistic" => bench::BenchMix::Realistic(seed),
                "selection" => bench::BenchMix::Selection(seed),
                _ => bench::BenchMix::Uniform(endpoints),
            };
            for n in services {
                let (report, lines) = bench::run_one(n, rounds.max(1), mix)?;
                print!("{report}");
                std::io::stdout().flush()?;
                if let Some(path) = &csv {
                    let new = std::fs::metadata(path)
                        .map(|m| m.len() == 0)
                        .unwrap_or(true);
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?;
                    if new {
                        writeln!(f, "{}", bench::CSV_HEADER)?;
                    }
                    for l in lines {
                        writeln!(f, "{l}")?;
                    }
                }
            }
            Ok(())
        }
        Command::Synthetic {
            services,
            endpoints,
            mix,
            seed,
            node,
        } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match mix {
                Mix::Uniform => {
                    let spec = synthetic::Spec {
                        services,
                        endpoints,
                        node,
                    };
                    synthetic::write_list(synthetic::items(&spec), &mut out)?;
                }
                Mix::Realistic => {
                    let spec = synthetic::realistic::Spec {
                        services,
                        seed,
                        node,
                    };
                    synthetic::write_list(synthetic::realistic::items(&spec), &mut out)?;
                }
            }
            out.write_all(b"\n")?;
            Ok(out.flush()?)
        }
    }
}
