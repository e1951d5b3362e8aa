use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use kube_nftproxy::config::{self, RenderArgs};
use kube_nftproxy::nft::text;
use kube_nftproxy::render;
use kube_nftproxy::synthetic;

/// A kube-proxy replacement that programs nftables.
#[derive(Parser, Debug)]
#[command(name = "kube-nftproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
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
        Command::Render { args, files } => render_cmd(&args, &files),
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

fn render_cmd(args: &RenderArgs, files: &[String]) -> Result<()> {
    let opts = config::resolve(args)?;
    let texts = files
        .iter()
        .map(|f| Ok((f.as_str(), read_file(f)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut notes = Vec::new();
    let objects = render::read_sources(texts.iter().map(|(n, t)| (*n, t.as_str())), &mut notes)?;
    let (rs, more) = render::ruleset(&objects, &opts);
    notes.extend(more);
    let script = text::script(&rs);
    let mut err = std::io::stderr().lock();
    for n in &notes {
        let _ = writeln!(err, "{n}");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(script.as_bytes())?;
    Ok(out.flush()?)
}
