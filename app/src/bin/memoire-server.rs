//! `memoire-server`: parse configuration, initialise tracing, run the server (or a subcommand).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use memoire_app::{Config, Flags, Listeners};

/// Mémoire: long-term memory for LLM applications, as a gRPC sidecar.
#[derive(Debug, Parser)]
#[command(name = "memoire-server", version, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC and HTTP (the default).
    Serve,
    /// Apply database migrations and create the vector indexes, then exit.
    Migrate,
    /// Print the effective configuration (secrets hidden) and exit.
    CheckConfig,
    /// Ask the server at `grpc_addr` for its gRPC health; exit 0 when SERVING (for container
    /// health checks).
    Probe,
    /// Write a tenant's data (or one user's) as JSON Lines, read from Postgres in one snapshot
    /// (docs/export.md). Progress goes to stderr.
    Export {
        /// The tenant's id.
        #[arg(long)]
        tenant: uuid::Uuid,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only these namespaces (repeat the flag; none: all).
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// The file to write (default: stdout).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Import JSON Lines written by `export` into a tenant, in one transaction: an error names
    /// its line and writes nothing; records already stored are skipped.
    Import {
        /// The tenant's id (every record must belong to it).
        #[arg(long)]
        tenant: uuid::Uuid,
        /// Check and count everything, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The file to read (default: stdin).
        input: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, telemetry) = match memoire_app::start("memoire-server", &cli.flags) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{}", config.redacted());
            Ok(())
        }
        Command::Probe => memoire_app::probe(&config).await,
        Command::Migrate => {
            let config = Config {
                migrate_on_start: true,
                ..config
            };
            memoire_app::connect(&config)
                .await
                .map(|_| tracing::info!("migrations applied"))
        }
        Command::Export {
            tenant,
            user,
            namespaces,
            output,
        } => memoire_app::transfer::export(&config, tenant, user, namespaces, output).await,
        Command::Import {
            tenant,
            dry_run,
            input,
        } => memoire_app::transfer::import(&config, tenant, input, dry_run).await,
        Command::Serve => match Listeners::bind(&config).await {
            Ok(listeners) => {
                memoire_app::run_server(config, listeners, memoire_app::shutdown_signal()).await
            }
            Err(e) => Err(e),
        },
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
