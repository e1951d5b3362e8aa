use std::process::ExitCode;

use kube_nftproxy::cli;

fn main() -> ExitCode {
    let cli = cli::parse();
    // RUST_LOG wins; else kube-proxy's --v: 0-2 info, 3-4 debug, 5+ trace.
    let (verbosity, _format) = cli::log_settings(&cli);
    let default_filter = match verbosity.unwrap_or(0) {
        0..=2 => "info,rustables=warn",
        3..=4 => "debug,rustables=warn,hyper=info,h2=info,rustls=info,tower=info",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match cli::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-nftproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
