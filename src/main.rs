use std::process::ExitCode;

use kube_nftproxy::cli;

fn main() -> ExitCode {
    let cli = cli::parse();
    // RUST_LOG wins; else kube-proxy's --v: 0-2 info, 3-4 debug, 5+ trace.
    let (verbosity, format) = cli::log_settings(&cli);
    let default_filter = match verbosity.unwrap_or(0) {
        // kube-client logs every failed connection at error level; the agent logs one line
        // per attempt with its cause and backoff instead.
        0..=2 => "info,rustables=warn,kube_client::client::builder=off",
        3..=4 => "debug,rustables=warn,hyper=info,h2=info,rustls=info,tower=info,kube_client::client::builder=off",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    // --logging-format json: one JSON object per line, as kube-proxy's JSON logger writes.
    match format {
        cli::config::LogFormat::Json => logs.json().flatten_event(true).init(),
        cli::config::LogFormat::Text => logs.init(),
    }
    match cli::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-nftproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
