use std::process::ExitCode;

use clap::Parser;

use kube_nftproxy::cli::{self, Cli};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustables=warn")),
        )
        .init();
    match cli::main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-nftproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
