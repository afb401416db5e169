//! `memoire-worker`: the background worker on its own, for scaling it apart from the server
//! (which runs one in-process by default, `worker_embedded`).

use std::process::ExitCode;

use clap::Parser;
use memoire_app::Flags;

/// Mémoire's background worker.
#[derive(Debug, Parser)]
#[command(name = "memoire-worker", version, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, telemetry) = match memoire_app::start("memoire-worker", &cli.flags) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let code = match memoire_app::run_worker(config, memoire_app::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start the worker");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
