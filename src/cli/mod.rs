//! The subcommands: their flags and the work each does at the binary's edge (errors are
//! `anyhow` here; the layers below return typed errors).

pub mod apply;
pub mod bench;
pub mod config;
#[cfg(test)]
mod kernel_scenarios;
pub mod render;
pub mod run;
pub mod synthetic;

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::nft::text;
use config::RenderArgs;

/// A kube-proxy replacement that programs nftables.
#[derive(Parser, Debug)]
#[command(name = "kube-nftproxy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRunMode {
    /// Print each sync's transaction as a readable diff.
    Diff,
    /// Print the whole ruleset after each sync.
    Full,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    Run(run::RunArgs),
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

/// Runs one subcommand to completion.
pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Render { args, files } => {
            let script = text::script(&render::desired(&args, &files)?);
            let mut out = std::io::stdout().lock();
            out.write_all(script.as_bytes())?;
            Ok(out.flush()?)
        }
        Command::Apply { args, files } => {
            let rs = render::desired(&args, &files)?;
            let done = apply::apply(&rs).context("applying the ruleset")?;
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
        Command::Run(args) => run::main(args),
        Command::Bench {
            services,
            endpoints,
            rounds,
        } => {
            bench::enter_private_netns()?;
            for n in services {
                print!("{}", bench::run_one(n, endpoints, rounds.max(1))?);
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
